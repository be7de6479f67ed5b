//! ILPv4 packets (RFC-0027): Prepare (12), Fulfill (13), Reject (14).
//!
//! Decoding returns *views*: each holds the packet's `Bytes` (trimmed to the envelope, so
//! trailing bytes after a packet are tolerated but never carried on) plus the offsets of its
//! variable fields. Accessors return slices of that buffer; nothing is copied.
//!
//! Encoders write the canonical form into a caller-owned, reusable `BytesMut`.
//! [`rewrite_prepare`] patches amount and expiry of an encoded Prepare in place: both are fixed
//! width, so forwarding never re-encodes a packet.
//!
//! Limits checked on decode: destination is a valid address; `data` is at most 32 767 bytes;
//! a Reject's `message` at most 8 191 bytes and its `triggeredBy` empty or at most 1023 bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::address::{validate_address, MAX_ADDRESS_LEN};
use super::error::{DecodeError, DecodeErrorKind};
use super::error_code::ErrorCode;
use super::oer::{length_prefix_len, put_length, put_var_octets, Reader, Span};
use super::time::{Timestamp, ILP_TIMESTAMP_LEN};

pub const TYPE_PREPARE: u8 = 12;
pub const TYPE_FULFILL: u8 = 13;
pub const TYPE_REJECT: u8 = 14;

/// Largest `data` field in any ILP packet.
pub const MAX_DATA_LEN: usize = 32_767;
/// Largest Reject `message`.
pub const MAX_MESSAGE_LEN: usize = 8_191;

/// Offsets of the fixed Prepare fields relative to the start of the content.
const AMOUNT_OFF: usize = 0;
const EXPIRY_OFF: usize = 8;
const CONDITION_OFF: usize = 25;

/// Reads the envelope: checks the type byte and returns a reader bounded to the content.
fn open_envelope<'a>(r: &mut Reader<'a>, expected: u8) -> Result<Reader<'a>, DecodeError> {
    let at = r.offset();
    let found = r.read_u8()?;
    if found != expected {
        let kind = match found {
            TYPE_PREPARE | TYPE_FULFILL | TYPE_REJECT => {
                DecodeErrorKind::UnexpectedIlpType { expected, found }
            }
            other => DecodeErrorKind::UnknownIlpType(other),
        };
        return Err(DecodeError::new(kind, at));
    }
    r.read_var_reader()
}

fn check_max(span: Span, max: usize, field: &'static str) -> Result<(), DecodeError> {
    if span.len() > max {
        return Err(DecodeError::new(
            DecodeErrorKind::TooLong {
                field,
                len: span.len(),
                max,
            },
            span.start as usize,
        ));
    }
    Ok(())
}

/// Refuses inputs whose offsets would not fit the `u32` spans.
fn check_buffer_size(buf: &Bytes) -> Result<(), DecodeError> {
    if buf.len() > u32::MAX as usize {
        return Err(DecodeError::new(
            DecodeErrorKind::TooLong {
                field: "packet",
                len: buf.len(),
                max: u32::MAX as usize,
            },
            0,
        ));
    }
    Ok(())
}

/// A decoded ILP Prepare: a view over its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Prepare {
    buf: Bytes,
    /// Where the content (and so the amount) starts: 1 + length-prefix length.
    content_at: u8,
    expires_at: Timestamp,
    destination: Span,
    data: Span,
}

impl Prepare {
    /// Decodes a Prepare from the front of `buf`; bytes after the packet are ignored.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        check_buffer_size(&buf)?;
        let mut r = Reader::new(&buf);
        let mut c = open_envelope(&mut r, TYPE_PREPARE)?;
        let content_at = c.offset();
        c.read_u64()?;
        let ts_at = c.offset();
        let expires_at = Timestamp::parse_ilp(c.read_slice(ILP_TIMESTAMP_LEN)?)
            .ok_or(DecodeError::new(DecodeErrorKind::InvalidTimestamp, ts_at))?;
        c.read_slice(32)?;
        let destination = c.read_var_span()?;
        validate_address(&buf[destination.range()]).map_err(|e| {
            DecodeError::new(
                DecodeErrorKind::InvalidAddress(e),
                destination.start as usize,
            )
        })?;
        let data = c.read_var_span()?;
        check_max(data, MAX_DATA_LEN, "data")?;
        let end = r.offset();
        buf.truncate(end);
        Ok(Prepare {
            buf,
            content_at: content_at as u8,
            expires_at,
            destination,
            data,
        })
    }

    pub fn amount(&self) -> u64 {
        let at = self.content_at as usize + AMOUNT_OFF;
        u64::from_be_bytes(self.buf[at..at + 8].try_into().unwrap_or([0; 8]))
    }

    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    pub fn execution_condition(&self) -> &[u8; 32] {
        let at = self.content_at as usize + CONDITION_OFF;
        self.buf[at..at + 32]
            .try_into()
            .unwrap_or_else(|_| unreachable!("condition span checked at decode"))
    }

    pub fn destination(&self) -> &[u8] {
        &self.buf[self.destination.range()]
    }

    /// The destination as text (validated ASCII at decode).
    pub fn destination_str(&self) -> &str {
        core::str::from_utf8(self.destination()).unwrap_or("")
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.data.range()]
    }

    /// The packet exactly as encoded (without any trailing bytes that followed it).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    pub fn to_fields(&self) -> PrepareFields<'_> {
        PrepareFields {
            amount: self.amount(),
            expires_at: self.expires_at,
            execution_condition: self.execution_condition(),
            destination: self.destination(),
            data: self.data(),
        }
    }
}

impl core::fmt::Debug for Prepare {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Prepare")
            .field("amount", &self.amount())
            .field("expires_at", &self.expires_at.to_string())
            .field("destination", &self.destination_str())
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Overwrites amount and expiry of an encoded Prepare in place (forwarding).
///
/// `packet` must start with a Prepare envelope; only the length prefix is re-read to find the
/// fixed fields, so this costs a few byte writes.
pub fn rewrite_prepare(
    packet: &mut [u8],
    amount: u64,
    expires_at: Timestamp,
) -> Result<(), DecodeError> {
    let content_at = {
        let mut r = Reader::new(packet);
        open_envelope(&mut r, TYPE_PREPARE)?.offset()
    };
    let need = content_at + CONDITION_OFF;
    if packet.len() < need {
        return Err(DecodeError::new(
            DecodeErrorKind::UnexpectedEof {
                needed: need,
                available: packet.len(),
            },
            packet.len(),
        ));
    }
    packet[content_at..content_at + 8].copy_from_slice(&amount.to_be_bytes());
    let ts: &mut [u8; ILP_TIMESTAMP_LEN] = (&mut packet
        [content_at + EXPIRY_OFF..content_at + EXPIRY_OFF + ILP_TIMESTAMP_LEN])
        .try_into()
        .unwrap_or_else(|_| unreachable!("length checked above"));
    expires_at.write_ilp(ts);
    Ok(())
}

/// Fields of a Prepare to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareFields<'a> {
    pub amount: u64,
    pub expires_at: Timestamp,
    pub execution_condition: &'a [u8; 32],
    pub destination: &'a [u8],
    pub data: &'a [u8],
}

impl PrepareFields<'_> {
    fn content_len(&self) -> usize {
        8 + ILP_TIMESTAMP_LEN
            + 32
            + length_prefix_len(self.destination.len())
            + self.destination.len()
            + length_prefix_len(self.data.len())
            + self.data.len()
    }

    /// Total encoded length.
    pub fn encoded_len(&self) -> usize {
        let n = self.content_len();
        1 + length_prefix_len(n) + n
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let n = self.content_len();
        out.reserve(1 + length_prefix_len(n) + n);
        out.put_u8(TYPE_PREPARE);
        put_length(out, n);
        out.put_u64(self.amount);
        out.put_slice(&self.expires_at.to_ilp_bytes());
        out.put_slice(self.execution_condition);
        put_var_octets(out, self.destination);
        put_var_octets(out, self.data);
    }
}

/// A decoded ILP Fulfill: a view over its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Fulfill {
    buf: Bytes,
    content_at: u8,
    data: Span,
}

impl Fulfill {
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        check_buffer_size(&buf)?;
        let mut r = Reader::new(&buf);
        let mut c = open_envelope(&mut r, TYPE_FULFILL)?;
        let content_at = c.offset();
        c.read_slice(32)?;
        let data = c.read_var_span()?;
        check_max(data, MAX_DATA_LEN, "data")?;
        let end = r.offset();
        buf.truncate(end);
        Ok(Fulfill {
            buf,
            content_at: content_at as u8,
            data,
        })
    }

    pub fn fulfillment(&self) -> &[u8; 32] {
        let at = self.content_at as usize;
        self.buf[at..at + 32]
            .try_into()
            .unwrap_or_else(|_| unreachable!("fulfillment span checked at decode"))
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.data.range()]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    pub fn to_fields(&self) -> FulfillFields<'_> {
        FulfillFields {
            fulfillment: self.fulfillment(),
            data: self.data(),
        }
    }
}

impl core::fmt::Debug for Fulfill {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fulfill")
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Fields of a Fulfill to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FulfillFields<'a> {
    pub fulfillment: &'a [u8; 32],
    pub data: &'a [u8],
}

impl FulfillFields<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        let n = 32 + length_prefix_len(self.data.len()) + self.data.len();
        out.reserve(1 + length_prefix_len(n) + n);
        out.put_u8(TYPE_FULFILL);
        put_length(out, n);
        out.put_slice(self.fulfillment);
        put_var_octets(out, self.data);
    }
}

/// A decoded ILP Reject: a view over its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Reject {
    buf: Bytes,
    code: ErrorCode,
    triggered_by: Span,
    message: Span,
    data: Span,
}

impl Reject {
    /// Decodes a Reject. `triggeredBy` may be empty (the JS reference allows it) and is not
    /// otherwise validated, and `message` need not be UTF-8: Rejects are passed through as
    /// received, and refusing a peer's odd Reject would only replace its answer with ours.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        check_buffer_size(&buf)?;
        let mut r = Reader::new(&buf);
        let mut c = open_envelope(&mut r, TYPE_REJECT)?;
        let code = ErrorCode(*c.read_array::<3>()?);
        let triggered_by = c.read_var_span()?;
        check_max(triggered_by, MAX_ADDRESS_LEN, "triggeredBy")?;
        let message = c.read_var_span()?;
        check_max(message, MAX_MESSAGE_LEN, "message")?;
        let data = c.read_var_span()?;
        check_max(data, MAX_DATA_LEN, "data")?;
        let end = r.offset();
        buf.truncate(end);
        Ok(Reject {
            buf,
            code,
            triggered_by,
            message,
            data,
        })
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn triggered_by(&self) -> &[u8] {
        &self.buf[self.triggered_by.range()]
    }

    pub fn message(&self) -> &[u8] {
        &self.buf[self.message.range()]
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.data.range()]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    pub fn to_fields(&self) -> RejectFields<'_> {
        RejectFields {
            code: self.code,
            triggered_by: self.triggered_by(),
            message: self.message(),
            data: self.data(),
        }
    }
}

impl core::fmt::Debug for Reject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reject")
            .field("code", &self.code)
            .field(
                "triggered_by",
                &String::from_utf8_lossy(self.triggered_by()),
            )
            .field("message", &String::from_utf8_lossy(self.message()))
            .finish()
    }
}

/// Fields of a Reject to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectFields<'a> {
    pub code: ErrorCode,
    pub triggered_by: &'a [u8],
    pub message: &'a [u8],
    pub data: &'a [u8],
}

impl RejectFields<'_> {
    pub fn encode(&self, out: &mut BytesMut) {
        let n = 3
            + length_prefix_len(self.triggered_by.len())
            + self.triggered_by.len()
            + length_prefix_len(self.message.len())
            + self.message.len()
            + length_prefix_len(self.data.len())
            + self.data.len();
        out.reserve(1 + length_prefix_len(n) + n);
        out.put_u8(TYPE_REJECT);
        put_length(out, n);
        out.put_slice(self.code.as_bytes());
        put_var_octets(out, self.triggered_by);
        put_var_octets(out, self.message);
        put_var_octets(out, self.data);
    }

    /// Encodes into a fresh buffer (for Rejects built off the hot path).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

/// Any ILP packet, chosen by the type byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Prepare(Prepare),
    Fulfill(Fulfill),
    Reject(Reject),
}

impl Packet {
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        match buf.first() {
            Some(&TYPE_PREPARE) => Prepare::decode(buf).map(Packet::Prepare),
            Some(&TYPE_FULFILL) => Fulfill::decode(buf).map(Packet::Fulfill),
            Some(&TYPE_REJECT) => Reject::decode(buf).map(Packet::Reject),
            Some(&other) => Err(DecodeError::new(DecodeErrorKind::UnknownIlpType(other), 0)),
            None => Err(DecodeError::new(
                DecodeErrorKind::UnexpectedEof {
                    needed: 1,
                    available: 0,
                },
                0,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BytesMut {
        let cond = [7u8; 32];
        let mut out = BytesMut::new();
        PrepareFields {
            amount: 5,
            expires_at: Timestamp::from_unix_millis(1_000),
            execution_condition: &cond,
            destination: b"test.x",
            data: &[1u8; 100],
        }
        .encode(&mut out);
        out
    }

    #[test]
    fn rewrite_in_place_with_long_form_envelope() {
        let mut buf = sample();
        assert_eq!(buf[1], 0x81, "content >= 128 uses the two-byte length form");
        rewrite_prepare(&mut buf, 99, Timestamp::from_unix_millis(5_000)).unwrap();
        let p = Prepare::decode(buf.freeze()).unwrap();
        assert_eq!(p.amount(), 99);
        assert_eq!(p.expires_at().unix_millis(), 5_000);
        assert_eq!(p.destination(), b"test.x");
        assert_eq!(p.execution_condition(), &[7u8; 32]);
    }

    #[test]
    fn rewrite_refuses_non_prepare_and_short_input() {
        let mut f = [TYPE_FULFILL, 0];
        assert!(rewrite_prepare(&mut f, 1, Timestamp::from_unix_millis(0)).is_err());
        let mut short = [TYPE_PREPARE, 3, 0, 0, 0];
        assert!(rewrite_prepare(&mut short, 1, Timestamp::from_unix_millis(0)).is_err());
    }

    #[test]
    fn trailing_bytes_are_dropped_from_the_view() {
        let mut buf = sample();
        let len = buf.len();
        buf.extend_from_slice(b"junk");
        let p = Prepare::decode(buf.freeze()).unwrap();
        assert_eq!(p.as_bytes().len(), len);
    }

    #[test]
    fn oversized_data_is_refused() {
        let cond = [0u8; 32];
        let data = vec![0u8; MAX_DATA_LEN + 1];
        let mut out = BytesMut::new();
        PrepareFields {
            amount: 0,
            expires_at: Timestamp::from_unix_millis(0),
            execution_condition: &cond,
            destination: b"test.x",
            data: &data,
        }
        .encode(&mut out);
        let e = Prepare::decode(out.freeze()).unwrap_err();
        assert!(matches!(
            e.kind,
            DecodeErrorKind::TooLong { field: "data", .. }
        ));
    }
}
