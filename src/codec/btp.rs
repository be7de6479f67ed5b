//! BTP 2.0 packets (RFC-0023): RESPONSE (1), ERROR (2), MESSAGE (6), TRANSFER (7).
//!
//! Layout: `type u8 | requestId u32 | length determinant | content`. Every type ends with
//! protocolData: a var-uint count, then `name (var octets) | contentType u8 | data (var octets)`.
//!
//! [`BtpPacket::decode`] validates the whole frame and returns a view over its `Bytes`: the
//! `ilp` entry's place is kept, so it can be handed on as a zero-copy slice
//! ([`BtpPacket::ilp`]) or patched in place ([`BtpPacket::ilp_span`], [`set_request_id`]);
//! the other entries and an ERROR's fields are read again from the (validated) frame when
//! asked for. That keeps the view at 64 bytes: it is moved several times per packet, from the
//! decoder to the link's handler and on. Types 3-5 (BTP/1.0) and unknown types are refused.
//!
//! An ERROR's `triggeredAt` must be a valid GeneralizedTime; its raw bytes are kept so a decoded
//! frame re-encodes byte for byte. Frames we create use `.fffZ`.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{DecodeError, DecodeErrorKind};
use super::oer::{
    length_prefix_len, put_length, put_var_octets, put_var_uint, write_length, Reader, Span,
};
use super::time::GeneralizedTime;

/// BTP ERROR `data` limit (ASN.1 `SIZE (0..8192)`).
pub const MAX_ERROR_DATA_LEN: usize = 8192;

pub const CONTENT_OCTET_STREAM: u8 = 0;
pub const CONTENT_TEXT_UTF8: u8 = 1;
pub const CONTENT_JSON: u8 = 2;

/// The BTP packet types of BTP 2.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BtpType {
    Response = 1,
    Error = 2,
    Message = 6,
    Transfer = 7,
}

impl BtpType {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(BtpType::Response),
            2 => Some(BtpType::Error),
            6 => Some(BtpType::Message),
            7 => Some(BtpType::Transfer),
            _ => None,
        }
    }

    /// MESSAGE and TRANSFER are requests; RESPONSE and ERROR answer them.
    pub fn is_request(self) -> bool {
        matches!(self, BtpType::Message | BtpType::Transfer)
    }
}

/// One protocolData entry to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolData<'a> {
    pub name: &'a [u8],
    pub content_type: u8,
    pub data: &'a [u8],
}

/// A decoded BTP packet: a view over the frame.
#[derive(Clone, PartialEq, Eq)]
pub struct BtpPacket {
    buf: Bytes,
    /// TRANSFER amount; 0 for other types.
    amount: u64,
    request_id: u32,
    /// Where the protocolData entries start (after their count) and how many there are.
    entries_at: u32,
    entries: u32,
    /// The first `ilp` entry's data; `start == end == 0` if there is none (an entry's data
    /// never starts at offset 0).
    ilp: Span,
    kind: BtpType,
}

/// The ERROR fields of a decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BtpErrorRef<'a> {
    pub code: &'a [u8; 3],
    pub name: &'a [u8],
    /// Raw GeneralizedTime bytes, validated at decode.
    pub triggered_at: &'a [u8],
    pub data: &'a [u8],
}

impl BtpErrorRef<'_> {
    pub fn triggered_at_time(&self) -> Option<GeneralizedTime> {
        GeneralizedTime::parse(self.triggered_at)
    }
}

impl BtpPacket {
    /// Decodes one BTP packet from the front of `buf`; trailing bytes are ignored.
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        if buf.len() > u32::MAX as usize {
            return Err(DecodeError::new(
                DecodeErrorKind::TooLong {
                    field: "frame",
                    len: buf.len(),
                    max: u32::MAX as usize,
                },
                0,
            ));
        }
        let mut r = Reader::new(&buf);
        let raw_type = r.read_u8()?;
        let kind = BtpType::from_u8(raw_type).ok_or(DecodeError::new(
            DecodeErrorKind::UnknownBtpType(raw_type),
            0,
        ))?;
        let request_id = r.read_u32()?;
        let mut c = r.read_var_reader()?;
        let mut amount = 0;
        match kind {
            BtpType::Error => {
                let e = read_error(&mut c)?;
                if GeneralizedTime::parse(&buf[e.triggered_at.range()]).is_none() {
                    return Err(DecodeError::new(
                        DecodeErrorKind::InvalidGeneralizedTime,
                        e.triggered_at.start as usize,
                    ));
                }
                if e.data.len() > MAX_ERROR_DATA_LEN {
                    return Err(DecodeError::new(
                        DecodeErrorKind::TooLong {
                            field: "error data",
                            len: e.data.len(),
                            max: MAX_ERROR_DATA_LEN,
                        },
                        e.data.start as usize,
                    ));
                }
            }
            BtpType::Transfer => amount = c.read_u64()?,
            BtpType::Response | BtpType::Message => {}
        }
        let count_at = c.offset();
        let count = c.read_var_uint()?;
        // Each entry takes at least 3 bytes; refuse counts the input cannot hold before
        // looping.
        if count > (c.remaining() / 3) as u64 {
            return Err(DecodeError::new(
                DecodeErrorKind::TooManyEntries(count),
                count_at,
            ));
        }
        let entries_at = c.offset() as u32;
        let mut ilp = Span { start: 0, end: 0 };
        for _ in 0..count {
            let e = read_entry(&mut c)?;
            if ilp.end == 0 && &buf[e.name.range()] == b"ilp" {
                ilp = e.data;
            }
        }
        let end = r.offset();
        let mut buf = buf;
        buf.truncate(end);
        Ok(BtpPacket {
            buf,
            amount,
            request_id,
            entries_at,
            // At most a third of the frame's length, which fits in u32 (checked above).
            entries: count as u32,
            ilp,
            kind,
        })
    }

    pub fn kind(&self) -> BtpType {
        self.kind
    }

    pub fn request_id(&self) -> u32 {
        self.request_id
    }

    /// TRANSFER amount (0 for other types).
    pub fn amount(&self) -> u64 {
        self.amount
    }

    pub fn error(&self) -> Option<BtpErrorRef<'_>> {
        if self.kind != BtpType::Error {
            return None;
        }
        // Validated by `decode`: these reads cannot fail.
        let mut r = Reader::new(&self.buf);
        r.read_array::<5>().ok()?;
        let mut c = r.read_var_reader().ok()?;
        let e = read_error(&mut c).ok()?;
        Some(BtpErrorRef {
            code: e.code,
            name: &self.buf[e.name.range()],
            triggered_at: &self.buf[e.triggered_at.range()],
            data: &self.buf[e.data.range()],
        })
    }

    pub fn len_entries(&self) -> usize {
        self.entries as usize
    }

    /// The protocolData entries in order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = ProtocolData<'_>> + '_ {
        Entries {
            buf: &self.buf,
            r: Reader::at(&self.buf, self.entries_at as usize),
            left: self.entries as usize,
        }
    }

    /// The primary (first) entry's name.
    pub fn primary_name(&self) -> Option<&[u8]> {
        self.entries().next().map(|e| e.name)
    }

    /// The first entry with this name.
    pub fn entry(&self, name: &[u8]) -> Option<ProtocolData<'_>> {
        // The usual MESSAGE has one entry, `ilp`: nothing else to look for.
        if self.entries == 1 && self.ilp_span().is_some() && name != b"ilp" {
            return None;
        }
        self.entries().find(|e| e.name == name)
    }

    /// Where the `ilp` entry's data is in the frame.
    pub fn ilp_span(&self) -> Option<Span> {
        (self.ilp.end != 0).then_some(self.ilp)
    }

    /// The `ilp` entry's data as a zero-copy slice of the frame.
    pub fn ilp(&self) -> Option<Bytes> {
        self.ilp_span().map(|s| self.buf.slice(s.range()))
    }

    /// The `ilp` entry's data, keeping the frame's buffer handle (no reference count taken
    /// or dropped, unlike [`ilp`](Self::ilp) followed by dropping the packet).
    pub fn into_ilp(self) -> Option<Bytes> {
        let span = self.ilp_span()?.range();
        let mut buf = self.buf;
        buf.truncate(span.end);
        bytes::Buf::advance(&mut buf, span.start);
        Some(buf)
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }
}

impl core::fmt::Debug for BtpPacket {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BtpPacket")
            .field("kind", &self.kind)
            .field("request_id", &self.request_id)
            .field("entries", &self.entries)
            .finish()
    }
}

/// An entry's parts, as spans into the frame.
struct EntrySpans {
    name: Span,
    content_type: u8,
    data: Span,
}

fn read_entry(c: &mut Reader<'_>) -> Result<EntrySpans, DecodeError> {
    Ok(EntrySpans {
        name: c.read_var_span()?,
        content_type: c.read_u8()?,
        data: c.read_var_span()?,
    })
}

/// The ERROR fields, as spans into the frame.
struct ErrorSpans<'a> {
    code: &'a [u8; 3],
    name: Span,
    triggered_at: Span,
    data: Span,
}

fn read_error<'a>(c: &mut Reader<'a>) -> Result<ErrorSpans<'a>, DecodeError> {
    Ok(ErrorSpans {
        code: c.read_array::<3>()?,
        name: c.read_var_span()?,
        triggered_at: c.read_var_span()?,
        data: c.read_var_span()?,
    })
}

/// The entries of a decoded (so validated) frame, read again in order.
struct Entries<'a> {
    buf: &'a [u8],
    r: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = ProtocolData<'a>;

    fn next(&mut self) -> Option<ProtocolData<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let e = read_entry(&mut self.r).ok()?;
        Some(ProtocolData {
            name: &self.buf[e.name.range()],
            content_type: e.content_type,
            data: &self.buf[e.data.range()],
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Entries<'_> {}

/// Overwrites the request id of an encoded BTP packet in place.
pub fn set_request_id(frame: &mut [u8], request_id: u32) -> bool {
    match frame.get_mut(1..5) {
        Some(slot) => {
            slot.copy_from_slice(&request_id.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Type-specific fields of a packet to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BtpBody<'a> {
    Response,
    Error {
        code: &'a [u8; 3],
        name: &'a [u8],
        /// Raw GeneralizedTime; use [`GeneralizedTime::to_bytes`] for a fresh one.
        triggered_at: &'a [u8],
        data: &'a [u8],
    },
    Message,
    Transfer {
        amount: u64,
    },
}

impl BtpBody<'_> {
    fn kind(&self) -> BtpType {
        match self {
            BtpBody::Response => BtpType::Response,
            BtpBody::Error { .. } => BtpType::Error,
            BtpBody::Message => BtpType::Message,
            BtpBody::Transfer { .. } => BtpType::Transfer,
        }
    }
}

fn var_len(n: usize) -> usize {
    length_prefix_len(n) + n
}

fn var_uint_len(v: u64) -> usize {
    1 + (8 - (v.leading_zeros() as usize / 8)).max(1)
}

/// Encodes a whole BTP packet into `out`.
pub fn encode(out: &mut BytesMut, request_id: u32, body: BtpBody<'_>, entries: &[ProtocolData]) {
    let body_len = match body {
        BtpBody::Error {
            name,
            triggered_at,
            data,
            ..
        } => 3 + var_len(name.len()) + var_len(triggered_at.len()) + var_len(data.len()),
        BtpBody::Transfer { .. } => 8,
        BtpBody::Response | BtpBody::Message => 0,
    };
    let entries_len: usize = entries
        .iter()
        .map(|e| var_len(e.name.len()) + 1 + var_len(e.data.len()))
        .sum();
    let n = body_len + var_uint_len(entries.len() as u64) + entries_len;
    out.reserve(5 + length_prefix_len(n) + n);
    out.put_u8(body.kind() as u8);
    out.put_u32(request_id);
    put_length(out, n);
    match body {
        BtpBody::Error {
            code,
            name,
            triggered_at,
            data,
        } => {
            out.put_slice(code);
            put_var_octets(out, name);
            put_var_octets(out, triggered_at);
            put_var_octets(out, data);
        }
        BtpBody::Transfer { amount } => out.put_u64(amount),
        BtpBody::Response | BtpBody::Message => {}
    }
    put_var_uint(out, entries.len() as u64);
    for e in entries {
        put_var_octets(out, e.name);
        out.put_u8(e.content_type);
        put_var_octets(out, e.data);
    }
}

/// A MESSAGE or RESPONSE whose only entry is `ilp` (the hot path: Prepares and their answers):
/// the same bytes as [`encode`] with that one entry, written as one header and the packet
/// (two copies instead of one per field).
pub fn encode_ilp(out: &mut BytesMut, kind: BtpType, request_id: u32, ilp_packet: &[u8]) {
    debug_assert!(matches!(kind, BtpType::Message | BtpType::Response));
    /// Entry count 1 (var uint), name `ilp` (var octets), content type.
    const ENTRY: [u8; 7] = [1, 1, 3, b'i', b'l', b'p', CONTENT_OCTET_STREAM];
    let d = ilp_packet.len();
    let n = ENTRY.len() + length_prefix_len(d) + d;
    // type, request id, two length determinants (at most 9 bytes each), the entry's head.
    let mut head = [0u8; 5 + 9 + ENTRY.len() + 9];
    head[0] = kind as u8;
    head[1..5].copy_from_slice(&request_id.to_be_bytes());
    let mut at = 5 + write_length(&mut head[5..], n);
    head[at..at + ENTRY.len()].copy_from_slice(&ENTRY);
    at += ENTRY.len();
    at += write_length(&mut head[at..], d);
    out.reserve(at + d);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(ilp_packet);
}

/// The auth MESSAGE a dialler sends first: `auth`, `auth_username`, `auth_token` (as the JS
/// plugin sends them: text entries for username and token).
pub fn encode_auth(out: &mut BytesMut, request_id: u32, username: &[u8], token: &[u8]) {
    encode(
        out,
        request_id,
        BtpBody::Message,
        &[
            ProtocolData {
                name: b"auth",
                content_type: CONTENT_OCTET_STREAM,
                data: b"",
            },
            ProtocolData {
                name: b"auth_username",
                content_type: CONTENT_TEXT_UTF8,
                data: username,
            },
            ProtocolData {
                name: b"auth_token",
                content_type: CONTENT_TEXT_UTF8,
                data: token,
            },
        ],
    );
}

/// A BTP ERROR with the standard name for `code`, stamped `now`, no protocolData.
pub fn encode_error(
    out: &mut BytesMut,
    request_id: u32,
    code: &[u8; 3],
    now: GeneralizedTime,
    data: &[u8],
) {
    encode(
        out,
        request_id,
        BtpBody::Error {
            code,
            name: error_name(code).as_bytes(),
            triggered_at: &now.to_bytes(),
            data,
        },
        &[],
    );
}

/// The RFC-0023 name of a BTP error code.
pub fn error_name(code: &[u8; 3]) -> &'static str {
    match code {
        b"T00" => "UnreachableError",
        b"F00" => "NotAcceptedError",
        b"F01" => "InvalidFieldsError",
        b"F03" => "TransferNotFoundError",
        b"F04" => "InvalidFulfillmentError",
        b"F05" => "DuplicateIdError",
        b"F06" => "AlreadyRolledBackError",
        b"F07" => "AlreadyFulfilledError",
        b"F08" => "InsufficientBalanceError",
        _ => "UnknownError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hot-path encoder writes exactly what the general one does, across the lengths
    /// where the determinants change size.
    #[test]
    fn encode_ilp_matches_encode() {
        for len in [
            0usize, 1, 120, 121, 127, 128, 255, 256, 65_535, 65_536, 70_000,
        ] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for (kind, body) in [
                (BtpType::Message, BtpBody::Message),
                (BtpType::Response, BtpBody::Response),
            ] {
                let mut fast = BytesMut::new();
                encode_ilp(&mut fast, kind, 0xdead_beef, &data);
                let mut general = BytesMut::new();
                let entry = ProtocolData {
                    name: b"ilp",
                    content_type: CONTENT_OCTET_STREAM,
                    data: &data,
                };
                encode(&mut general, 0xdead_beef, body, &[entry]);
                assert_eq!(fast, general, "length {len}");
            }
        }
    }

    /// The view is moved from the decoder to the handler and on several times per packet:
    /// keep it to one cache line.
    #[test]
    fn decoded_packet_fits_a_cache_line() {
        assert!(std::mem::size_of::<BtpPacket>() <= 64);
    }

    /// Entries and ERROR fields read again from the frame give what was encoded.
    #[test]
    fn entries_and_error_fields_read_back() {
        let entries = [
            ProtocolData {
                name: b"correlationId",
                content_type: CONTENT_TEXT_UTF8,
                data: b"abc",
            },
            ProtocolData {
                name: b"ilp",
                content_type: CONTENT_OCTET_STREAM,
                data: b"\x0c\x01\x02",
            },
            ProtocolData {
                name: b"ilp",
                content_type: CONTENT_OCTET_STREAM,
                data: b"second",
            },
        ];
        let mut out = BytesMut::new();
        encode(&mut out, 9, BtpBody::Message, &entries);
        let p = BtpPacket::decode(out.freeze()).unwrap();
        assert_eq!(p.len_entries(), 3);
        assert_eq!(p.entries().len(), 3);
        assert_eq!(p.entries().collect::<Vec<_>>(), entries);
        assert_eq!(p.primary_name(), Some(&b"correlationId"[..]));
        assert_eq!(p.entry(b"ilp").unwrap().data, b"\x0c\x01\x02");
        assert_eq!(p.entry(b"correlationId").unwrap().data, b"abc");
        assert_eq!(&p.ilp().unwrap()[..], b"\x0c\x01\x02");
        assert!(p.error().is_none());
        // Only the `ilp` entry: found, and nothing else is (answered without a scan).
        for only in [&entries[1], &entries[0]] {
            let mut out = BytesMut::new();
            encode(&mut out, 9, BtpBody::Message, std::slice::from_ref(only));
            let p = BtpPacket::decode(out.freeze()).unwrap();
            assert_eq!(p.entry(only.name).unwrap(), *only);
            let other: &[u8] = if only.name == b"ilp" {
                b"correlationId"
            } else {
                b"ilp"
            };
            assert!(p.entry(other).is_none());
        }
        let mut out = BytesMut::new();
        encode(&mut out, 9, BtpBody::Response, &[]);
        let p = BtpPacket::decode(out.freeze()).unwrap();
        assert!(p.ilp_span().is_none() && p.entries().next().is_none());
    }

    #[test]
    fn huge_entry_count_is_refused_before_looping() {
        // MESSAGE, id 1, content: var uint 0xffffffff entries and nothing else.
        let frame = Bytes::from_static(&[6, 0, 0, 0, 1, 5, 4, 0xff, 0xff, 0xff, 0xff]);
        let e = BtpPacket::decode(frame).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::TooManyEntries(0xffff_ffff));
        assert_eq!(e.offset, 6);
    }

    #[test]
    fn ilp_helper_and_request_id_patch() {
        let mut out = BytesMut::new();
        encode_ilp(&mut out, BtpType::Message, 7, b"\x0d\x00");
        assert!(set_request_id(&mut out, 9));
        let p = BtpPacket::decode(out.freeze()).unwrap();
        assert_eq!(p.request_id(), 9);
        assert_eq!(p.ilp().unwrap().as_ref(), b"\x0d\x00");
        assert_eq!(p.primary_name(), Some(&b"ilp"[..]));
    }

    #[test]
    fn error_frame_round_trip() {
        let mut out = BytesMut::new();
        let t = GeneralizedTime::parse(b"20180831025324.899Z").unwrap();
        encode_error(&mut out, 123, b"F00", t, b"invalid auth_token");
        let p = BtpPacket::decode(out.freeze()).unwrap();
        let e = p.error().unwrap();
        assert_eq!(e.code, b"F00");
        assert_eq!(e.name, b"NotAcceptedError");
        assert_eq!(e.triggered_at, b"20180831025324.899Z");
        assert_eq!(p.len_entries(), 0);
    }
}
