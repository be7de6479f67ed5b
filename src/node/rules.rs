//! The forwarding rules, sans-IO: every function takes `now` and touches no socket or clock,
//! so each rule is tested with fixed times. This is also the one place that maps failures to
//! ILP error codes (the DESIGN table).
//!
//! Per Prepare, in order: `peer.*` handled locally (ILDCP for children, else F02) → expired on
//! arrival R00 → route lookup F02 → outgoing expiry
//! `min(in − margin, now + send_timeout, now + max_hold)`, R02 when less than `margin` would be
//! left → forward. Answers: Fulfill checked against the condition
//! (F05 when wrong), Rejects passed through unchanged, link failures mapped by
//! [`reject_for_link_error`].

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::btp::LinkError;
use crate::codec::ildcp::{IldcpResponse, ILDCP_DESTINATION, PEER_PROTOCOL_CONDITION};
use crate::codec::{ErrorCode, Fulfill, FulfillFields, Prepare, RejectFields, Timestamp};

/// Timing rules (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub margin_ms: i64,
    pub max_hold_ms: i64,
    /// How long we wait for the next hop's answer: the outgoing expiry is never later, so
    /// a Fulfill cannot arrive after we gave up and answered upstream.
    pub send_timeout_ms: i64,
}

impl Timing {
    /// How long past the outgoing expiry we still wait for an answer (a Fulfill sent just
    /// before the expiry is still on the wire): half the margin, at most 500 ms. The
    /// incoming Prepare expires a full margin after the outgoing one, so upstream still gets
    /// its answer in time.
    pub fn grace_ms(&self) -> i64 {
        (self.margin_ms / 2).min(500)
    }
}

/// A Reject this node creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// The Reject's `data` (e.g. F08's amounts); usually empty.
    pub data: Bytes,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Refusal {
            code,
            message: message.into(),
            data: Bytes::new(),
        }
    }

    pub fn with_data(self, data: Bytes) -> Self {
        Refusal { data, ..self }
    }

    /// Encodes the Reject with `triggeredBy` = our address.
    pub fn encode(&self, our_address: &[u8]) -> Bytes {
        RejectFields {
            code: self.code,
            triggered_by: our_address,
            message: self.message.as_bytes(),
            data: &self.data,
        }
        .to_bytes()
    }
}

/// What to do with an incoming Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<H> {
    /// Answer with this Reject.
    Refuse(Refusal),
    /// Answer an ILDCP request from a child with its address.
    Ildcp,
    /// A route protocol message (`peer.route.control` / `peer.route.update`) for the CCP
    /// endpoint; condition and expiry already checked.
    Ccp,
    /// Forward to `next_hop` with this expiry (amount unchanged).
    Forward { next_hop: H, expires_at: Timestamp },
}

/// Applies the rules to a parsed Prepare. `lookup` is the routing table; `source_is_child`
/// says whether the sending peer is our child (ILDCP is served only to children).
pub fn decide<H>(
    prepare: &Prepare,
    now: Timestamp,
    timing: Timing,
    source_is_child: bool,
    lookup: impl FnOnce(&[u8]) -> Option<H>,
) -> Decision<H> {
    let dest = prepare.destination();
    if dest.starts_with(b"peer.") {
        if dest == ILDCP_DESTINATION && source_is_child {
            if prepare.execution_condition() != &PEER_PROTOCOL_CONDITION {
                return Decision::Refuse(Refusal::new(
                    ErrorCode::F01_INVALID_PACKET,
                    "condition must be the peer protocol condition",
                ));
            }
            if prepare.expires_at() <= now {
                return Decision::Refuse(Refusal::new(
                    ErrorCode::R00_TRANSFER_TIMED_OUT,
                    "IL-DCP request packet is expired",
                ));
            }
            return Decision::Ildcp;
        }
        if dest.starts_with(b"peer.route.") {
            // As JS answers CCP (shared/spec/CCP.md §1): F01 for the condition, F00 when expired.
            if prepare.execution_condition() != &PEER_PROTOCOL_CONDITION {
                return Decision::Refuse(Refusal::new(
                    ErrorCode::F01_INVALID_PACKET,
                    "condition must be peer protocol condition.",
                ));
            }
            if prepare.expires_at() <= now {
                return Decision::Refuse(Refusal::new(
                    ErrorCode::F00_BAD_REQUEST,
                    "CCP request packet is expired.",
                ));
            }
            return Decision::Ccp;
        }
        return Decision::Refuse(Refusal::new(
            ErrorCode::F02_UNREACHABLE,
            "peer.* destinations are not forwarded",
        ));
    }
    let expires = prepare.expires_at();
    if expires <= now {
        return Decision::Refuse(Refusal::new(
            ErrorCode::R00_TRANSFER_TIMED_OUT,
            "packet already expired on arrival",
        ));
    }
    let Some(next_hop) = lookup(dest) else {
        return Decision::Refuse(Refusal::new(ErrorCode::F02_UNREACHABLE, "no route found"));
    };
    let from_incoming = expires.add_millis(-timing.margin_ms);
    if from_incoming.unix_millis() - now.unix_millis() < timing.margin_ms {
        return Decision::Refuse(Refusal::new(
            ErrorCode::R02_INSUFFICIENT_TIMEOUT,
            "not enough time left to forward the packet",
        ));
    }
    let out = from_incoming.min(now.add_millis(timing.max_hold_ms.min(timing.send_timeout_ms)));
    Decision::Forward {
        next_hop,
        expires_at: out,
    }
}

/// Checks a downstream Fulfill: `sha256(fulfillment)` must equal the condition.
pub fn check_fulfill(condition: &[u8; 32], fulfill: &Fulfill) -> Result<(), Refusal> {
    let h: [u8; 32] = Sha256::digest(fulfill.fulfillment()).into();
    if &h == condition {
        Ok(())
    } else {
        Err(Refusal::new(
            ErrorCode::F05_WRONG_CONDITION,
            "fulfillment from the next hop does not match the condition",
        ))
    }
}

/// Maps a failed forward to the Reject we send upstream. `out_expiry` is the expiry we
/// forwarded with: a timeout at or after it is R00, an earlier one is the send deadline (T00).
pub fn reject_for_link_error(err: &LinkError, now: Timestamp, out_expiry: Timestamp) -> Refusal {
    match err {
        LinkError::Timeout if now >= out_expiry => Refusal::new(
            ErrorCode::R00_TRANSFER_TIMED_OUT,
            "packet expired before the next hop answered",
        ),
        LinkError::Timeout => Refusal::new(
            ErrorCode::T00_INTERNAL_ERROR,
            "send deadline passed before the next hop answered",
        ),
        LinkError::QueueFull => Refusal::new(
            ErrorCode::T02_PEER_BUSY,
            "too many packets in flight to the next hop",
        ),
        LinkError::Remote { code, message } => {
            // A BTP ERROR is about the link (e.g. a peer evicting an old socket), not a
            // final verdict on the packet, unless its code says the packet itself is bad.
            let c = match code.as_str() {
                "F01" => ErrorCode::F01_INVALID_PACKET,
                "F06" => ErrorCode::F06_UNEXPECTED_PAYMENT,
                "F08" => ErrorCode::F08_AMOUNT_TOO_LARGE,
                _ => ErrorCode::T01_PEER_UNREACHABLE,
            };
            Refusal::new(c, format!("next hop answered BTP error {code}: {message}"))
        }
        LinkError::Protocol(m) => Refusal::new(
            ErrorCode::T00_INTERNAL_ERROR,
            format!("bad answer from the next hop: {m}"),
        ),
        LinkError::LinkLost
        | LinkError::Connect(_)
        | LinkError::Auth(_)
        | LinkError::BadCredentials(_) => Refusal::new(
            ErrorCode::T01_PEER_UNREACHABLE,
            "link to the next hop was lost",
        ),
    }
}

/// The ILDCP Fulfill for a child: address `<ours>.<child id>`.
pub fn ildcp_fulfill(child_address: &str, asset_scale: u8, asset_code: &str) -> Bytes {
    let mut data = BytesMut::new();
    IldcpResponse {
        client_address: child_address.as_bytes(),
        asset_scale,
        asset_code,
    }
    .encode(&mut data);
    let mut out = BytesMut::new();
    FulfillFields {
        fulfillment: &[0; 32],
        data: &data,
    }
    .encode(&mut out);
    out.freeze()
}

/// First 16 hex chars of sha256 of the serialized Prepare: the id that follows one packet
/// through every hop's logs (the first hop computes it and passes it on in BTP).
pub fn correlation_id(prepare_bytes: &[u8]) -> [u8; 16] {
    let h = Sha256::digest(prepare_bytes);
    let mut out = [0u8; 16];
    hex::encode_to_slice(&h[..8], &mut out).unwrap_or_default();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::PrepareFields;

    const T: Timing = Timing {
        margin_ms: 1_000,
        max_hold_ms: 30_000,
        send_timeout_ms: 60_000,
    };
    const NOW: i64 = 1_800_000_000_000;

    fn prepare(dest: &str, expires_in_ms: i64, cond: [u8; 32]) -> Prepare {
        let mut out = BytesMut::new();
        PrepareFields {
            amount: 10,
            expires_at: Timestamp::from_unix_millis(NOW + expires_in_ms),
            execution_condition: &cond,
            destination: dest.as_bytes(),
            data: b"",
        }
        .encode(&mut out);
        Prepare::decode(out.freeze()).unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(NOW)
    }

    fn route(d: &[u8]) -> Option<&'static str> {
        d.starts_with(b"test.c").then_some("b")
    }

    fn code(d: Decision<&str>) -> &'static str {
        match d {
            Decision::Refuse(r) => match r.code.as_str() {
                "F00" => "F00",
                "F01" => "F01",
                "F02" => "F02",
                "R00" => "R00",
                "R02" => "R02",
                other => panic!("unexpected {other}"),
            },
            Decision::Ildcp => "ildcp",
            Decision::Ccp => "ccp",
            Decision::Forward { .. } => "forward",
        }
    }

    /// What `decide` does with a Prepare for `dest` expiring in `expires_in_ms`.
    fn outcome(dest: &str, expires_in_ms: i64, cond: [u8; 32], from_child: bool) -> &'static str {
        code(decide(
            &prepare(dest, expires_in_ms, cond),
            now(),
            T,
            from_child,
            route,
        ))
    }

    /// The expiry (unix ms) `decide` gives a Prepare that expires `expires_in` ms from now.
    fn forwarded_expiry(timing: Timing, expires_in: i64) -> i64 {
        match decide(
            &prepare("test.c.x", expires_in, [0; 32]),
            now(),
            timing,
            false,
            route,
        ) {
            Decision::Forward { expires_at, .. } => expires_at.unix_millis(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn expiry_arithmetic() {
        // Plenty of time: out = in - margin.
        match decide(&prepare("test.c.x", 5_000, [0; 32]), now(), T, false, route) {
            Decision::Forward {
                next_hop,
                expires_at,
            } => {
                assert_eq!(next_hop, "b");
                assert_eq!(expires_at.unix_millis(), NOW + 4_000);
            }
            other => panic!("{other:?}"),
        }
        // Far future: capped at now + max hold.
        assert_eq!(forwarded_expiry(T, 120_000), NOW + 30_000);
        // The send timeout caps it too (we never wait less than the expiry we set).
        let t = Timing {
            send_timeout_ms: 10_000,
            ..T
        };
        assert_eq!(forwarded_expiry(t, 120_000), NOW + 10_000);
        assert_eq!(t.grace_ms(), 500);
        // Exactly 2 × margin left: out - now == margin, still enough.
        assert_eq!(outcome("test.c.x", 2_000, [0; 32], false), "forward");
        // Just under: R02.
        assert_eq!(outcome("test.c.x", 1_999, [0; 32], false), "R02");
        // Already expired (or expiring now): R00.
        assert_eq!(outcome("test.c.x", 0, [0; 32], false), "R00");
        assert_eq!(outcome("test.c.x", -5, [0; 32], false), "R00");
    }

    #[test]
    fn routing_and_peer_protocol() {
        assert_eq!(outcome("test.z", 5_000, [0; 32], false), "F02");
        assert_eq!(
            outcome("peer.config", 5_000, PEER_PROTOCOL_CONDITION, true),
            "ildcp"
        );
        assert_eq!(
            outcome("peer.config", 5_000, PEER_PROTOCOL_CONDITION, false),
            "F02"
        );
        assert_eq!(outcome("peer.config", 5_000, [1; 32], true), "F01");
        assert_eq!(
            outcome("peer.config", -1, PEER_PROTOCOL_CONDITION, true),
            "R00"
        );
        // CCP goes to its endpoint once condition and expiry are right (F01 / F00 as JS).
        assert_eq!(
            outcome("peer.route.update", 5_000, PEER_PROTOCOL_CONDITION, false),
            "ccp"
        );
        assert_eq!(outcome("peer.route.control", 5_000, [1; 32], false), "F01");
        assert_eq!(
            outcome("peer.route.control", -1, PEER_PROTOCOL_CONDITION, false),
            "F00"
        );
        assert_eq!(
            outcome("peer.other", 5_000, PEER_PROTOCOL_CONDITION, false),
            "F02"
        );
    }

    #[test]
    fn link_error_mapping() {
        let out = Timestamp::from_unix_millis(NOW + 4_000);
        let c = |e: LinkError, t: i64| {
            reject_for_link_error(&e, Timestamp::from_unix_millis(t), out).code
        };
        assert_eq!(
            c(LinkError::Timeout, NOW + 10),
            ErrorCode::T00_INTERNAL_ERROR
        );
        assert_eq!(
            c(LinkError::Timeout, NOW + 4_000),
            ErrorCode::R00_TRANSFER_TIMED_OUT
        );
        assert_eq!(c(LinkError::LinkLost, NOW), ErrorCode::T01_PEER_UNREACHABLE);
        assert_eq!(c(LinkError::QueueFull, NOW), ErrorCode::T02_PEER_BUSY);
        let remote = |code: &str| LinkError::Remote {
            code: code.into(),
            message: "x".into(),
        };
        assert_eq!(c(remote("T00"), NOW), ErrorCode::T01_PEER_UNREACHABLE);
        assert_eq!(c(remote("F00"), NOW), ErrorCode::T01_PEER_UNREACHABLE);
        assert_eq!(c(remote("F01"), NOW), ErrorCode::F01_INVALID_PACKET);
        assert_eq!(c(remote("F08"), NOW), ErrorCode::F08_AMOUNT_TOO_LARGE);
        assert_eq!(c(remote("F02"), NOW), ErrorCode::T01_PEER_UNREACHABLE);
        assert_eq!(
            c(LinkError::Protocol("x".into()), NOW),
            ErrorCode::T00_INTERNAL_ERROR
        );
    }

    #[test]
    fn fulfill_check_and_reject_encoding() {
        let mut out = BytesMut::new();
        FulfillFields {
            fulfillment: &[0; 32],
            data: b"",
        }
        .encode(&mut out);
        let f = Fulfill::decode(out.freeze()).unwrap();
        assert!(check_fulfill(&PEER_PROTOCOL_CONDITION, &f).is_ok());
        assert_eq!(
            check_fulfill(&[0; 32], &f).unwrap_err().code,
            ErrorCode::F05_WRONG_CONDITION
        );
        let r = crate::codec::Reject::decode(
            Refusal::new(ErrorCode::F02_UNREACHABLE, "no route").encode(b"test.a"),
        )
        .unwrap();
        assert_eq!(r.triggered_by(), b"test.a");
        assert_eq!(r.message(), b"no route");
        let cid = correlation_id(b"abc");
        assert_eq!(&cid, b"ba7816bf8f01cfea");
    }
}
