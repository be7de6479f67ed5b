//! Wire formats: pure encoders and decoders, no I/O, no clock, no `unsafe`.
//!
//! Layout:
//! - [`oer`]: canonical OER primitives and the bounded [`oer::Reader`];
//! - [`time`]: the 17-digit ILP timestamp and BTP GeneralizedTime;
//! - [`address`]: RFC-0015 address and route-prefix validation;
//! - [`error_code`]: the RFC-0027 error-code table;
//! - [`ilp`]: ILPv4 Prepare / Fulfill / Reject views and encoders;
//! - [`btp`]: BTP 2.0 packets;
//! - [`ildcp`]: the ILDCP response payload and the peer-protocol condition;
//! - [`ccp`]: the route protocol's control and update requests;
//! - [`websocket`]: WebSocket frame headers and masking (the data phase of a BTP link);
//! - [`error`]: the one decode error type (what and where).
//!
//! Decoders take a `bytes::Bytes` and return views that borrow nothing but share that buffer;
//! they never panic and never allocate in proportion to an unchecked length.
#![forbid(unsafe_code)]

pub mod address;
pub mod btp;
pub mod ccp;
pub mod error;
pub mod error_code;
pub mod ildcp;
pub mod ilp;
pub mod oer;
pub mod time;
pub mod websocket;

pub use address::{validate_address, validate_prefix, Address, AddressError};
pub use btp::{BtpBody, BtpPacket, BtpType, ProtocolData};
pub use error::{DecodeError, DecodeErrorKind};
pub use error_code::{ErrorClass, ErrorCode};
pub use ilp::{Fulfill, FulfillFields, Packet, Prepare, PrepareFields, Reject, RejectFields};
pub use time::{GeneralizedTime, Timestamp};
