//! The connector: forwarding rules ([`rules`], sans-IO), the peer manager ([`peers`]), the
//! per-shard runtime ([`shard`]: peer links, packet handling, hand-over between shards),
//! metrics ([`metrics`]), our own address and asset ([`identity`], configured or learned from
//! the parent by ILDCP), accounts per shard ([`accounting`]), the routing table's sources
//! ([`routes`]) and the route protocol at run time ([`ccp`]), and the node's lifecycle
//! ([`connector`]: start, stop, health, runtime add/remove of peers).

pub mod accounting;
pub mod ccp;
pub mod connector;
pub mod identity;
pub mod metrics;
pub mod peers;
pub mod routes;
pub mod rules;
pub mod shard;
