//! The one decode error type for every wire format.
//!
//! A [`DecodeError`] says *what* was wrong ([`DecodeErrorKind`]) and *where*: the byte offset,
//! from the start of the buffer handed to the decoder, at which the offending item begins.
//! It is `Copy` and allocation-free so the hot path can return it without cost.

use super::address::AddressError;

/// What was wrong with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    #[error("unexpected end of input: needed {needed} bytes, {available} available")]
    UnexpectedEof { needed: usize, available: usize },
    #[error("length determinant 0x80 (indefinite form) is not allowed")]
    IndefiniteLength,
    #[error("length determinant is not canonical (long form for a short value or leading zero)")]
    NonCanonicalLength,
    #[error("length determinant uses {0} length bytes; at most 8 are supported")]
    LengthOfLengthTooLarge(u8),
    #[error("variable-length integer has no content bytes")]
    EmptyVarUint,
    #[error("variable-length integer has a leading zero byte")]
    VarUintLeadingZero,
    #[error("variable-length integer is {0} bytes long; at most 8 fit in a u64")]
    VarUintTooLarge(usize),
    #[error("unknown ILP packet type {0}")]
    UnknownIlpType(u8),
    #[error("expected ILP packet type {expected}, found {found}")]
    UnexpectedIlpType { expected: u8, found: u8 },
    #[error("unknown BTP packet type {0}")]
    UnknownBtpType(u8),
    #[error("invalid ILP timestamp (17 digits YYYYMMDDHHmmssfff expected)")]
    InvalidTimestamp,
    #[error("invalid GeneralizedTime (YYYYMMDDHHmmss[.f{{1,3}}]Z expected)")]
    InvalidGeneralizedTime,
    #[error("invalid ILP address: {0}")]
    InvalidAddress(AddressError),
    #[error("{field} is {len} bytes long; the maximum is {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("{0} is not ASCII")]
    NotAscii(&'static str),
    #[error("entry count {0} exceeds what the remaining bytes can hold")]
    TooManyEntries(u64),
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
}

/// A decode failure: what went wrong and at which byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset})")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    /// Offset from the start of the buffer given to the decoder.
    pub offset: usize,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }
}
