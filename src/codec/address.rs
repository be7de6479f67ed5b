//! ILP addresses (RFC-0015), validated by hand: no regex, no allocation.
//!
//! Grammar: `scheme ("." segment)+`, 1..=1023 bytes, where scheme is one of `g`, `private`,
//! `example`, `peer`, `self`, `test`, `test1`..`test3`, `local`, and a segment is one or more of
//! `A-Z a-z 0-9 _ ~ -`. Routing prefixes may additionally be a bare scheme (`g`, `test`):
//! see [`validate_prefix`].

use core::fmt;

/// Longest legal address in bytes.
pub const MAX_ADDRESS_LEN: usize = 1023;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address is longer than 1023 bytes")]
    TooLong,
    #[error("unknown allocation scheme")]
    UnknownScheme,
    #[error("address needs at least one segment after the scheme")]
    NoSegment,
    #[error("empty segment at byte {0}")]
    EmptySegment(usize),
    #[error("character not allowed at byte {0}")]
    BadCharacter(usize),
}

/// Byte classes for the segment scan: 0 = not allowed, 1 = segment character, 2 = '.'.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'~' || c == b'-' {
            t[b] = 1;
        }
        b += 1;
    }
    t[b'.' as usize] = 2;
    t
};

#[inline]
fn is_scheme(s: &[u8]) -> bool {
    matches!(
        s,
        b"g" | b"private"
            | b"example"
            | b"peer"
            | b"self"
            | b"test"
            | b"test1"
            | b"test2"
            | b"test3"
            | b"local"
    )
}

/// Checks the segments after the scheme; `addr[scheme_len]` is the first '.'.
///
/// One pass that stops at the first problem; its branches go the same way for every byte of
/// a valid address (a segment character, now and then one '.'), so they cost next to
/// nothing. The precise error is located by a second pass that runs only for bad input.
#[inline]
fn validate_segments(addr: &[u8], scheme_len: usize) -> Result<(), AddressError> {
    let mut after_dot = true; // addr[scheme_len] is a '.'
    for &b in &addr[scheme_len + 1..] {
        match CLASS[b as usize] {
            1 => after_dot = false,
            2 if !after_dot => after_dot = true,
            _ => return Err(locate_error(addr, scheme_len)),
        }
    }
    if after_dot {
        return Err(AddressError::EmptySegment(addr.len()));
    }
    Ok(())
}

/// Where a bad address (by [`validate_segments`]) first goes wrong.
#[cold]
fn locate_error(addr: &[u8], scheme_len: usize) -> AddressError {
    let mut prev = 2u8;
    for (i, &b) in addr.iter().enumerate().skip(scheme_len + 1) {
        match CLASS[b as usize] {
            0 => return AddressError::BadCharacter(i),
            2 if prev == 2 => return AddressError::EmptySegment(i),
            c => prev = c,
        }
    }
    AddressError::EmptySegment(addr.len())
}

#[inline]
fn check(addr: &[u8], allow_bare_scheme: bool) -> Result<(), AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    if addr.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    // The longest scheme is 7 bytes, so the first '.' is within the first 8.
    let head = &addr[..addr.len().min(8)];
    let scheme_len = head.iter().position(|&b| b == b'.').unwrap_or(addr.len());
    if !is_scheme(&addr[..scheme_len]) {
        return Err(AddressError::UnknownScheme);
    }
    if scheme_len == addr.len() {
        return if allow_bare_scheme {
            Ok(())
        } else {
            Err(AddressError::NoSegment)
        };
    }
    validate_segments(addr, scheme_len)
}

/// Validates a full ILP address.
pub fn validate_address(addr: &[u8]) -> Result<(), AddressError> {
    check(addr, false)
}

/// Validates a routing prefix: a full address or a bare scheme such as `g` or `test`.
pub fn validate_prefix(prefix: &[u8]) -> Result<(), AddressError> {
    check(prefix, true)
}

/// An owned, validated ILP address (config values, our own address).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(String);

impl Address {
    pub fn new(s: impl Into<String>) -> Result<Self, AddressError> {
        let s = s.into();
        validate_address(s.as_bytes())?;
        Ok(Address(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// `self` + "." + `segment`; fails if the segment is not a valid segment.
    pub fn child(&self, segment: &str) -> Result<Self, AddressError> {
        Address::new(format!("{}.{}", self.0, segment))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

impl core::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_allow_bare_scheme() {
        assert!(validate_prefix(b"g").is_ok());
        assert!(validate_prefix(b"test3").is_ok());
        assert_eq!(validate_prefix(b"test4"), Err(AddressError::UnknownScheme));
        assert_eq!(validate_address(b"g"), Err(AddressError::NoSegment));
        assert_eq!(
            validate_address(b"g..a"),
            Err(AddressError::EmptySegment(2))
        );
        assert_eq!(
            validate_address(b"g.a!"),
            Err(AddressError::BadCharacter(3))
        );
    }

    /// The one-pass check agrees with the grammar read literally (split on '.'), and reports
    /// the first bad byte, over every tail of up to 7 bytes from a small alphabet.
    #[test]
    fn agrees_with_the_grammar_on_every_short_tail() {
        fn literal(addr: &[u8]) -> bool {
            let mut parts = addr.split(|&b| b == b'.');
            is_scheme(parts.next().unwrap_or_default())
                && addr.contains(&b'.')
                && parts.all(|seg| {
                    !seg.is_empty()
                        && seg
                            .iter()
                            .all(|&b| b.is_ascii_alphanumeric() || b"_~-".contains(&b))
                })
        }
        let alphabet = b"a.-!~";
        for len in 0..=7u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut addr = b"test.".to_vec();
                for _ in 0..len {
                    addr.push(alphabet[n % alphabet.len()]);
                    n /= alphabet.len();
                }
                let got = validate_address(&addr);
                assert_eq!(
                    got.is_ok(),
                    literal(&addr),
                    "{:?}",
                    String::from_utf8_lossy(&addr)
                );
                if let Err(AddressError::BadCharacter(i)) = got {
                    assert_eq!(addr[i], b'!');
                    assert!(!addr[..i].contains(&b'!'));
                }
            }
        }
    }

    #[test]
    fn child_address() {
        let a = Address::new("test.a").unwrap();
        assert_eq!(a.child("b").unwrap().as_str(), "test.a.b");
        assert!(a.child("b c").is_err());
    }
}
