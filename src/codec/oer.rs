//! Canonical OER primitives (RFC-0030): a bounded [`Reader`] and the matching writers.
//!
//! The reader never copies: it returns slices of its input or [`Span`]s (absolute offsets into
//! the original buffer), so callers can build views over a `bytes::Bytes` frame. It never
//! allocates and never trusts a length before checking that many bytes are present.
//!
//! Invariants enforced here:
//! - length determinants are canonical: `80`, long forms below 128 and leading zeros are refused;
//! - var uints are minimal (no leading zero, at least one byte) and fit a u64;
//! - writers always produce the canonical form.

use bytes::BufMut;

use super::error::{DecodeError, DecodeErrorKind};

/// A half-open byte range `[start, end)` into the buffer a decoder was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    #[inline(always)]
    pub fn range(self) -> core::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    #[inline(always)]
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
    #[inline(always)]
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// A cursor over a byte slice that knows its absolute position in the outer buffer.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Absolute offset of `buf[0]` in the buffer the top-level decoder was given, so that
    /// errors and spans from nested readers point into the original input.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            base: 0,
        }
    }

    /// A reader of `buf` from `pos` on (offsets and spans stay relative to `buf`).
    pub fn at(buf: &'a [u8], pos: usize) -> Self {
        Self {
            buf,
            pos: pos.min(buf.len()),
            base: 0,
        }
    }

    /// Absolute offset of the next byte to be read.
    #[inline(always)]
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    #[inline(always)]
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    #[inline(always)]
    pub fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError::new(kind, self.offset())
    }

    #[inline(always)]
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.remaining() < n {
            Err(self.err(DecodeErrorKind::UnexpectedEof {
                needed: n,
                available: self.remaining(),
            }))
        } else {
            Ok(())
        }
    }

    #[inline(always)]
    pub fn read_u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        let v = self.buf[self.pos];
        self.pos += 1;
        Ok(v)
    }

    #[inline(always)]
    pub fn read_array<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeError> {
        let s = self.read_slice(N)?;
        // The slice has exactly N bytes, so the conversion cannot fail.
        Ok(s.try_into().unwrap_or_else(|_| unreachable!()))
    }

    #[inline(always)]
    pub fn read_u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(*self.read_array::<4>()?))
    }

    #[inline(always)]
    pub fn read_u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(*self.read_array::<8>()?))
    }

    /// Reads exactly `n` bytes.
    #[inline(always)]
    pub fn read_slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads exactly `n` bytes and returns where they are.
    #[inline(always)]
    pub fn read_span(&mut self, n: usize) -> Result<Span, DecodeError> {
        let start = self.offset();
        self.read_slice(n)?;
        Ok(Span {
            start: start as u32,
            end: (start + n) as u32,
        })
    }

    /// Reads a canonical OER length determinant.
    #[inline(always)]
    pub fn read_length(&mut self) -> Result<usize, DecodeError> {
        let at = self.offset();
        let first = self.read_u8()?;
        if first < 0x80 {
            return Ok(first as usize);
        }
        let n = first & 0x7f;
        if n == 0 {
            return Err(DecodeError::new(DecodeErrorKind::IndefiniteLength, at));
        }
        if n > 8 {
            return Err(DecodeError::new(
                DecodeErrorKind::LengthOfLengthTooLarge(n),
                at,
            ));
        }
        let bytes = self.read_slice(n as usize)?;
        if bytes[0] == 0 {
            return Err(DecodeError::new(DecodeErrorKind::NonCanonicalLength, at));
        }
        let value = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        if value < 0x80 {
            return Err(DecodeError::new(DecodeErrorKind::NonCanonicalLength, at));
        }
        // A length that does not fit usize can never be satisfied by the input anyway.
        Ok(usize::try_from(value).unwrap_or(usize::MAX))
    }

    /// Reads a length-prefixed octet string and returns its content.
    #[inline(always)]
    pub fn read_var_octets(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.read_length()?;
        self.read_slice(len)
    }

    /// Reads a length-prefixed octet string and returns where its content is.
    #[inline(always)]
    pub fn read_var_span(&mut self) -> Result<Span, DecodeError> {
        let len = self.read_length()?;
        self.read_span(len)
    }

    /// Reads a length-prefixed octet string and returns a reader bounded to its content.
    #[inline(always)]
    pub fn read_var_reader(&mut self) -> Result<Reader<'a>, DecodeError> {
        let len = self.read_length()?;
        let base = self.offset();
        let buf = self.read_slice(len)?;
        Ok(Reader { buf, pos: 0, base })
    }

    /// Reads a canonical variable-length unsigned integer (at most 8 content bytes).
    #[inline(always)]
    pub fn read_var_uint(&mut self) -> Result<u64, DecodeError> {
        let at = self.offset();
        let bytes = self.read_var_octets()?;
        match bytes.len() {
            0 => Err(DecodeError::new(DecodeErrorKind::EmptyVarUint, at)),
            n if n > 8 => Err(DecodeError::new(DecodeErrorKind::VarUintTooLarge(n), at)),
            n if n > 1 && bytes[0] == 0 => {
                Err(DecodeError::new(DecodeErrorKind::VarUintLeadingZero, at))
            }
            _ => Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))),
        }
    }
}

/// Number of bytes the length determinant for `len` occupies.
#[inline]
pub fn length_prefix_len(len: usize) -> usize {
    if len < 0x80 {
        1
    } else {
        1 + byte_len(len as u64)
    }
}

/// Minimal number of big-endian bytes needed for `v` (at least 1).
#[inline]
fn byte_len(v: u64) -> usize {
    (8 - (v.leading_zeros() as usize / 8)).max(1)
}

/// Writes a canonical length determinant.
#[inline]
pub fn put_length(out: &mut impl BufMut, len: usize) {
    let mut det = [0u8; 9];
    let n = write_length(&mut det, len);
    out.put_slice(&det[..n]);
}

/// Writes a canonical length determinant at the front of `out` (at least 9 bytes) and returns
/// how many bytes it took.
#[inline]
pub fn write_length(out: &mut [u8], len: usize) -> usize {
    if len < 0x80 {
        out[0] = len as u8;
        1
    } else {
        let n = byte_len(len as u64);
        out[0] = 0x80 | n as u8;
        out[1..=n].copy_from_slice(&(len as u64).to_be_bytes()[8 - n..]);
        1 + n
    }
}

/// Writes a length-prefixed octet string.
#[inline]
pub fn put_var_octets(out: &mut impl BufMut, data: &[u8]) {
    put_length(out, data.len());
    out.put_slice(data);
}

/// Writes a minimal variable-length unsigned integer.
#[inline]
pub fn put_var_uint(out: &mut impl BufMut, v: u64) {
    let n = byte_len(v);
    out.put_u8(n as u8);
    out.put_slice(&v.to_be_bytes()[8 - n..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_round_trip_boundaries() {
        for len in [0usize, 1, 127, 128, 255, 256, 65535, 65536, 1 << 40] {
            let mut out = Vec::new();
            put_length(&mut out, len);
            assert_eq!(out.len(), length_prefix_len(len));
            let mut r = Reader::new(&out);
            assert_eq!(r.read_length().unwrap(), len);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn sub_reader_reports_absolute_offsets() {
        let buf = [0x02, 0xaa, 0x81];
        let mut r = Reader::new(&buf);
        let mut sub = r.read_var_reader().unwrap();
        assert_eq!(sub.offset(), 1);
        sub.read_u8().unwrap();
        let e = sub.read_length().unwrap_err();
        assert_eq!(e.offset, 3, "the missing byte after 0x81 is at 3");
        assert!(matches!(e.kind, DecodeErrorKind::UnexpectedEof { .. }));
    }
}
