//! The node's own ILP address and asset: configured (`ilpAddress`), or learned from the parent
//! by ILDCP (RFC-0031, `peer.config`) and then kept until restart.
//!
//! Invariants: the address is set at most once ([`Identity::learn`] never replaces it: changing
//! the address under live children is worse than a restart, so a different answer from the
//! parent later is only recorded as a mismatch); until it is set the node forwards nothing
//! (Prepares get T01, see `shard`). Read per packet: one atomic load ([`OnceLock`]).

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::BytesMut;

use crate::btp::link::Link;
use crate::codec::btp::{self as btpc, BtpType};
use crate::codec::ildcp::{IldcpResponse, ILDCP_DESTINATION, PEER_PROTOCOL_CONDITION};
use crate::codec::{Address, Packet, PrepareFields, Timestamp};

pub use crate::accounts::convert::{DEFAULT_ASSET_CODE, DEFAULT_ASSET_SCALE};

/// Our address and asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Own {
    pub address: Address,
    pub asset_code: String,
    pub asset_scale: u8,
}

/// What [`Identity::learn`] made of an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Learned {
    /// Our address from now on.
    First,
    /// The address we already have.
    Same,
    /// Not the address we have: kept ours, recorded the mismatch.
    Different,
}

pub struct Identity {
    own: OnceLock<Own>,
    /// The parent the address comes from (None when configured).
    parent: Option<String>,
    /// The latest answer from the parent that differed from our address.
    mismatch: Mutex<Option<Own>>,
}

impl Identity {
    pub fn configured(own: Own) -> Identity {
        Identity {
            own: OnceLock::from(own),
            parent: None,
            mismatch: Mutex::new(None),
        }
    }

    /// Not known yet: to be learned from `parent`.
    pub fn from_parent(parent: &str) -> Identity {
        Identity {
            own: OnceLock::new(),
            parent: Some(parent.to_owned()),
            mismatch: Mutex::new(None),
        }
    }

    pub fn get(&self) -> Option<&Own> {
        self.own.get()
    }

    pub fn address(&self) -> Option<&Address> {
        self.own.get().map(|o| &o.address)
    }

    /// Our address as bytes for a Reject's `triggeredBy` (empty while unknown).
    pub fn triggered_by(&self) -> &[u8] {
        self.address().map_or(&[][..], Address::as_bytes)
    }

    /// The parent the address is learned from; None when it is configured.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    /// Takes an answer from the parent: the first one becomes our identity for good.
    pub fn learn(&self, answer: Own) -> Learned {
        let mut first = false;
        let own = self.own.get_or_init(|| {
            first = true;
            answer.clone()
        });
        if first {
            Learned::First
        } else if *own == answer {
            Learned::Same
        } else {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(answer);
            }
            Learned::Different
        }
    }

    /// The parent's latest answer that differed from the address we kept.
    pub fn mismatch(&self) -> Option<Own> {
        self.mismatch.lock().ok().and_then(|m| m.clone())
    }
}

/// Why asking the parent failed.
#[derive(Debug, thiserror::Error)]
pub enum IldcpError {
    #[error("no answer: {0}")]
    Link(#[from] crate::btp::LinkError),
    #[error("rejected with {code}: {message}")]
    Rejected { code: String, message: String },
    #[error("invalid answer: {0}")]
    Invalid(String),
}

/// Asks the peer at the other end of `link` (our parent) for our address and asset, waiting
/// at most `bound`.
pub async fn ask(link: &Link, bound: Duration) -> Result<Own, IldcpError> {
    let mut ilp = BytesMut::with_capacity(64);
    PrepareFields {
        amount: 0,
        expires_at: Timestamp::now().add_millis(bound.as_millis() as i64),
        execution_condition: &PEER_PROTOCOL_CONDITION,
        destination: ILDCP_DESTINATION,
        data: &[],
    }
    .encode(&mut ilp);
    let mut frame = link.frame_buf(ilp.len() + 32);
    btpc::encode_ilp(&mut frame, BtpType::Message, 0, &ilp);
    let answer = link
        .request(frame, Some(std::time::Instant::now() + bound))
        .await?;
    let ilp = answer
        .ilp()
        .ok_or_else(|| IldcpError::Invalid("answer without an ilp entry".into()))?;
    match Packet::decode(ilp).map_err(|e| IldcpError::Invalid(e.to_string()))? {
        Packet::Fulfill(f) => {
            let r =
                IldcpResponse::decode(f.data()).map_err(|e| IldcpError::Invalid(e.to_string()))?;
            let address = std::str::from_utf8(r.client_address)
                .ok()
                .and_then(|a| Address::new(a).ok())
                .ok_or_else(|| IldcpError::Invalid("client address".into()))?;
            Ok(Own {
                address,
                asset_code: r.asset_code.to_owned(),
                asset_scale: r.asset_scale,
            })
        }
        Packet::Reject(r) => Err(IldcpError::Rejected {
            code: r.code().as_str().to_owned(),
            message: String::from_utf8_lossy(r.message()).into_owned(),
        }),
        Packet::Prepare(_) => Err(IldcpError::Invalid("a Prepare as the answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(a: &str) -> Own {
        Own {
            address: Address::new(a).unwrap(),
            asset_code: "USD".into(),
            asset_scale: 2,
        }
    }

    #[test]
    fn first_answer_is_kept_and_a_different_one_is_only_recorded() {
        let id = Identity::from_parent("up");
        assert_eq!(id.address(), None);
        assert!(id.triggered_by().is_empty());
        assert_eq!(id.learn(own("test.b.c")), Learned::First);
        assert_eq!(id.learn(own("test.b.c")), Learned::Same);
        assert_eq!(id.mismatch(), None);
        assert_eq!(id.learn(own("test.x.c")), Learned::Different);
        assert_eq!(id.address().unwrap().as_str(), "test.b.c");
        assert_eq!(id.mismatch().unwrap().address.as_str(), "test.x.c");
        assert_eq!(id.parent(), Some("up"));
    }

    #[test]
    fn configured_identity_is_known_from_the_start() {
        let id = Identity::configured(own("test.a"));
        assert_eq!(id.triggered_by(), b"test.a");
        assert_eq!(id.parent(), None);
    }
}
