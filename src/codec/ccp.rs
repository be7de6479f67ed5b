//! CCP, the connector-to-connector route protocol as ilp-connector 23.0.2 and interledger-rs
//! speak it (`shared/spec/CCP.md` §2): the Route Control Request (`peer.route.control`) and the
//! Route Update Request (`peer.route.update`), carried as the `data` of a Prepare with the
//! peer-protocol condition and answered with a Fulfill of 32 zero bytes.
//!
//! Decoding borrows every string and byte field from the input (the lists are `Vec`s of
//! views: updates are control traffic, not the packet path). Strict about structure — every
//! length, exactly 32 bytes of `auth`, counts no larger than the bytes left can hold, no
//! trailing bytes — and lenient about values (any mode byte, any prop meta bits), as the
//! JS decoder is. Encoding writes the same canonical form the JS encoder writes, except that
//! prop meta bits are written as given.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, DecodeErrorKind};
use super::oer::{put_var_octets, put_var_uint, Reader};

pub const ROUTE_CONTROL_DESTINATION: &[u8] = b"peer.route.control";
pub const ROUTE_UPDATE_DESTINATION: &[u8] = b"peer.route.update";

/// A routing table id (a UUID, 16 raw bytes).
pub type TableId = [u8; 16];

/// Route control modes.
pub const MODE_IDLE: u8 = 0;
pub const MODE_SYNC: u8 = 1;

/// `peer.route.control`: the sender wants (SYNC) or no longer wants (IDLE) route updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteControl<'a> {
    pub mode: u8,
    pub last_known_table_id: TableId,
    /// The next epoch the sender needs.
    pub last_known_epoch: u32,
    pub features: Vec<&'a str>,
}

/// One route property (none are defined; kept to be skipped or passed on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop<'a> {
    pub meta: u8,
    pub id: u16,
    pub value: &'a [u8],
}

/// One advertised route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub prefix: &'a str,
    /// Addresses of the connectors the route passes through, the speaker first.
    pub path: Vec<&'a str>,
    pub auth: [u8; 32],
    pub props: Vec<Prop<'a>>,
}

/// `peer.route.update`: epochs `from..to` of the speaker's routing table log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate<'a> {
    pub table_id: TableId,
    pub current_epoch: u32,
    pub from_epoch: u32,
    pub to_epoch: u32,
    pub hold_down_ms: u32,
    pub speaker: &'a str,
    pub new_routes: Vec<Route<'a>>,
    pub withdrawn: Vec<&'a str>,
}

fn ascii<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let at = r.offset();
    let bytes = r.read_var_octets()?;
    if !bytes.is_ascii() {
        return Err(DecodeError::new(DecodeErrorKind::NotAscii(field), at));
    }
    // ASCII is UTF-8.
    core::str::from_utf8(bytes).map_err(|_| DecodeError::new(DecodeErrorKind::NotAscii(field), at))
}

fn utf8<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let at = r.offset();
    core::str::from_utf8(r.read_var_octets()?)
        .map_err(|_| DecodeError::new(DecodeErrorKind::InvalidUtf8(field), at))
}

/// A sequence count, refused when the remaining bytes cannot hold that many items of at
/// least `min_item` bytes each (so a forged count never makes us allocate).
fn count(r: &mut Reader<'_>, min_item: usize) -> Result<usize, DecodeError> {
    let at = r.offset();
    let n = r.read_var_uint()?;
    if n > (r.remaining() / min_item.max(1)) as u64 {
        return Err(DecodeError::new(DecodeErrorKind::TooManyEntries(n), at));
    }
    Ok(n as usize)
}

fn end(r: &Reader<'_>) -> Result<(), DecodeError> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(r.err(DecodeErrorKind::TrailingBytes(r.remaining())))
    }
}

impl<'a> RouteControl<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let mode = r.read_u8()?;
        let last_known_table_id = *r.read_array::<16>()?;
        let last_known_epoch = r.read_u32()?;
        let n = count(&mut r, 1)?;
        let features = (0..n)
            .map(|_| utf8(&mut r, "feature"))
            .collect::<Result<_, _>>()?;
        end(&r)?;
        Ok(RouteControl {
            mode,
            last_known_table_id,
            last_known_epoch,
            features,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.mode);
        out.put_slice(&self.last_known_table_id);
        out.put_u32(self.last_known_epoch);
        put_var_uint(out, self.features.len() as u64);
        for f in &self.features {
            put_var_octets(out, f.as_bytes());
        }
    }
}

impl<'a> Route<'a> {
    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let prefix = ascii(r, "route prefix")?;
        let n = count(r, 1)?;
        let path = (0..n)
            .map(|_| ascii(r, "route path"))
            .collect::<Result<_, _>>()?;
        let auth = *r.read_array::<32>()?;
        // meta u8 + id u16 + at least a length byte.
        let n = count(r, 4)?;
        let props = (0..n)
            .map(|_| {
                let meta = r.read_u8()?;
                let id = u16::from_be_bytes(*r.read_array::<2>()?);
                let value = r.read_var_octets()?;
                Ok(Prop { meta, id, value })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Route {
            prefix,
            path,
            auth,
            props,
        })
    }

    fn encode(&self, out: &mut BytesMut) {
        put_var_octets(out, self.prefix.as_bytes());
        put_var_uint(out, self.path.len() as u64);
        for p in &self.path {
            put_var_octets(out, p.as_bytes());
        }
        out.put_slice(&self.auth);
        put_var_uint(out, self.props.len() as u64);
        for p in &self.props {
            out.put_u8(p.meta);
            out.put_u16(p.id);
            put_var_octets(out, p.value);
        }
    }
}

impl<'a> RouteUpdate<'a> {
    pub fn decode(data: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        let table_id = *r.read_array::<16>()?;
        let current_epoch = r.read_u32()?;
        let from_epoch = r.read_u32()?;
        let to_epoch = r.read_u32()?;
        let hold_down_ms = r.read_u32()?;
        let speaker = ascii(&mut r, "speaker")?;
        // prefix length byte + path count (2) + auth (32) + props count (2).
        let n = count(&mut r, 37)?;
        let new_routes = (0..n)
            .map(|_| Route::decode(&mut r))
            .collect::<Result<_, _>>()?;
        let n = count(&mut r, 1)?;
        let withdrawn = (0..n)
            .map(|_| utf8(&mut r, "withdrawn prefix"))
            .collect::<Result<_, _>>()?;
        end(&r)?;
        Ok(RouteUpdate {
            table_id,
            current_epoch,
            from_epoch,
            to_epoch,
            hold_down_ms,
            speaker,
            new_routes,
            withdrawn,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&self.table_id);
        out.put_u32(self.current_epoch);
        out.put_u32(self.from_epoch);
        out.put_u32(self.to_epoch);
        out.put_u32(self.hold_down_ms);
        put_var_octets(out, self.speaker.as_bytes());
        put_var_uint(out, self.new_routes.len() as u64);
        for route in &self.new_routes {
            route.encode(out);
        }
        put_var_uint(out, self.withdrawn.len() as u64);
        for w in &self.withdrawn {
            put_var_octets(out, w.as_bytes());
        }
    }

    /// Bytes [`encode`](Self::encode) writes (to keep an update under the 32 767-byte limit
    /// of a Prepare's data).
    pub fn encoded_len(&self) -> usize {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9.~_-]{0,20}"
    }

    /// prefix, path, auth, props (meta, id, value)
    type OwnedRoute = (String, Vec<String>, Vec<u8>, Vec<(u8, u16, Vec<u8>)>);
    /// table id, current, from, to, hold-down, speaker, routes, withdrawn
    type OwnedUpdate = (
        Vec<u8>,
        u32,
        u32,
        u32,
        u32,
        String,
        Vec<OwnedRoute>,
        Vec<String>,
    );

    fn owned_update() -> impl Strategy<Value = OwnedUpdate> {
        (
            proptest::collection::vec(any::<u8>(), 16),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            word(),
            proptest::collection::vec(
                (
                    word(),
                    proptest::collection::vec(word(), 0..4),
                    proptest::collection::vec(any::<u8>(), 32),
                    proptest::collection::vec(
                        (
                            any::<u8>(),
                            any::<u16>(),
                            proptest::collection::vec(any::<u8>(), 0..200),
                        ),
                        0..3,
                    ),
                ),
                0..6,
            ),
            proptest::collection::vec(word(), 0..6),
        )
    }

    proptest! {
        #[test]
        fn update_round_trip((id, cur, from, to, hold, speaker, routes, withdrawn) in owned_update()) {
            let update = RouteUpdate {
                table_id: id.try_into().unwrap(),
                current_epoch: cur,
                from_epoch: from,
                to_epoch: to,
                hold_down_ms: hold,
                speaker: &speaker,
                new_routes: routes
                    .iter()
                    .map(|(p, path, auth, props)| Route {
                        prefix: p,
                        path: path.iter().map(String::as_str).collect(),
                        auth: auth.clone().try_into().unwrap(),
                        props: props.iter().map(|(m, i, v)| Prop { meta: *m, id: *i, value: v }).collect(),
                    })
                    .collect(),
                withdrawn: withdrawn.iter().map(String::as_str).collect(),
            };
            let mut out = BytesMut::new();
            update.encode(&mut out);
            prop_assert_eq!(out.len(), update.encoded_len());
            prop_assert_eq!(RouteUpdate::decode(&out).unwrap(), update);
        }

        #[test]
        fn control_round_trip(mode: u8, id in proptest::collection::vec(any::<u8>(), 16), epoch: u32, features in proptest::collection::vec(word(), 0..4)) {
            let c = RouteControl {
                mode,
                last_known_table_id: id.try_into().unwrap(),
                last_known_epoch: epoch,
                features: features.iter().map(String::as_str).collect(),
            };
            let mut out = BytesMut::new();
            c.encode(&mut out);
            prop_assert_eq!(RouteControl::decode(&out).unwrap(), c);
        }

        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = RouteControl::decode(&data);
            let _ = RouteUpdate::decode(&data);
        }
    }

    #[test]
    fn forged_counts_are_refused_before_allocating() {
        // An update whose route count claims 2^56 routes.
        let mut b = BytesMut::new();
        b.put_slice(&[0; 32]);
        put_var_octets(&mut b, b"test.a");
        b.put_slice(&[0x08, 0x01, 0, 0, 0, 0, 0, 0, 0]);
        let e = RouteUpdate::decode(&b).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::TooManyEntries(_)), "{e}");
        // Trailing bytes after a valid control.
        let mut b = BytesMut::new();
        RouteControl {
            mode: 1,
            last_known_table_id: [0; 16],
            last_known_epoch: 0,
            features: vec![],
        }
        .encode(&mut b);
        b.put_u8(0);
        assert!(matches!(
            RouteControl::decode(&b).unwrap_err().kind,
            DecodeErrorKind::TrailingBytes(1)
        ));
    }
}
