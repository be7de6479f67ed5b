//! Routing: a segment-aware longest-prefix trie ([`trie`]) published RCU-style to every shard
//! ([`table`]), and the route protocol's state ([`ccp`], sans-IO).
//!
//! A [`Route`] maps a prefix (a valid ILP address, or a bare scheme such as `g` or `test`) to
//! the id of the next-hop peer. Invalid prefixes are refused when the route is made.

pub mod ccp;
pub mod table;
pub mod trie;

use std::sync::Arc;

use crate::codec::{validate_prefix, AddressError};

pub use table::{RoutingTable, RoutingView};
pub use trie::Trie;

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("invalid route prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        prefix: String,
        reason: AddressError,
    },
    #[error("route for {prefix:?} has an empty next hop")]
    EmptyNextHop { prefix: String },
}

/// One routing entry. Room for CCP data (path, auth, epoch) is left for the route protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    prefix: Arc<str>,
    next_hop: Arc<str>,
}

impl Route {
    pub fn new(prefix: &str, next_hop: &str) -> Result<Self, RouteError> {
        validate_prefix(prefix.as_bytes()).map_err(|reason| RouteError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        })?;
        Self::with_prefix(prefix, next_hop)
    }

    /// The default route: it has no prefix of its own.
    pub fn default_to(next_hop: &str) -> Result<Self, RouteError> {
        Self::with_prefix("", next_hop)
    }

    fn with_prefix(prefix: &str, next_hop: &str) -> Result<Self, RouteError> {
        if next_hop.is_empty() {
            return Err(RouteError::EmptyNextHop {
                prefix: prefix.to_owned(),
            });
        }
        Ok(Route {
            prefix: prefix.into(),
            next_hop: next_hop.into(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn next_hop(&self) -> &str {
        &self.next_hop
    }

    /// Shared handle to the next-hop id (no copy of the string).
    pub fn next_hop_arc(&self) -> &Arc<str> {
        &self.next_hop
    }

    fn heap_bytes(&self) -> usize {
        // Arc<str> header (two counters) plus the bytes, for prefix and next hop.
        2 * 16 + self.prefix.len() + self.next_hop.len()
    }
}

/// The naive reference: a linear scan with segment-aware matching. Used by tests and the
/// benchmark baseline; never on the hot path.
pub fn naive_lookup<'a>(
    routes: &'a [Route],
    default_route: Option<&'a Route>,
    destination: &[u8],
) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| {
            let p = r.prefix().as_bytes();
            destination == p
                || (destination.len() > p.len()
                    && destination.starts_with(p)
                    && destination[p.len()] == b'.')
        })
        .max_by_key(|r| r.prefix().len())
        .or(default_route)
}
