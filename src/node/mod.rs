//! The connector: forwarding rules ([`rules`], sans-IO), the per-shard runtime ([`shard`]:
//! peer links, packet handling), metrics ([`metrics`]) and the node's lifecycle
//! ([`connector`]: start, stop, health).

pub mod connector;
pub mod metrics;
pub mod rules;
pub mod shard;
