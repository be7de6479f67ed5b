//! The connector: forwarding rules ([`rules`], sans-IO), the peer manager ([`peers`]), the
//! per-shard runtime ([`shard`]: peer links and their lifecycle; the packet path in
//! `forward`, run to completion on the link task that read the packet; `handover` between
//! shards),
//! metrics ([`metrics`]), our own address and asset ([`identity`], configured or learned from
//! the parent by ILDCP), accounts per shard ([`accounting`]), the routing table's sources
//! ([`routes`]) and the route protocol at run time ([`ccp`]), and the node's lifecycle
//! ([`connector`]: start, stop, health, runtime add/remove of peers).

pub mod accounting;
pub mod ccp;
pub mod connector;
mod forward;
mod handover;
pub mod identity;
pub mod metrics;
pub mod peers;
pub mod routes;
pub mod rules;
pub mod shard;
pub mod signal;
