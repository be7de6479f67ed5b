//! The node's lifecycle: [`ConnectorNode::start`] spawns one glommio executor per shard, binds
//! the BTP port on every shard (SO_REUSEPORT; port 0 is resolved on shard 0 and the others bind
//! the same port), dials peers, and starts the admin HTTP port; [`ConnectorNode::stop`] stops
//! accepting, lets in-flight packets finish within a bound and closes links.
//!
//! [`NodeShared`] is the only state shared between shards: configuration, the routing table
//! (RCU), per-peer link counts and each shard's metrics — nothing written per packet by more
//! than one thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use super::metrics::{PeerStatus, ShardMetrics};
use super::shard::Shard;
use crate::codec::Address;
use crate::config::{Config, Relation};
use crate::routing::RoutingTable;

pub struct NodeShared {
    pub config: Config,
    pub address: Address,
    pub routing: RoutingTable,
    pub peers: PeerStatus,
    pub metrics: Vec<Arc<ShardMetrics>>,
    pub stopping: AtomicBool,
    started: Instant,
    ready: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot start shard executors: {0}")]
    Executor(String),
    #[error("cannot bind BTP port {port}: {reason}")]
    Bind { port: u16, reason: String },
    #[error("cannot bind admin port {port}: {reason}")]
    Admin { port: u16, reason: String },
}

/// Health as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
    pub connected_peers: usize,
    pub uptime_ms: u64,
    pub peers: std::collections::BTreeMap<String, bool>,
}

/// A running connector.
pub struct ConnectorNode {
    shared: Arc<NodeShared>,
    threads: Option<PoolThreadHandles<()>>,
    btp_port: u16,
    admin: Option<super::super::admin::AdminServer>,
}

impl ConnectorNode {
    pub fn start(config: Config) -> Result<ConnectorNode, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let address = Address::new(config.ilp_address.clone())
            .map_err(|e| StartError::Config(e.to_string()))?;
        let routing = RoutingTable::new();
        let mut routes: Vec<(String, String)> = config
            .routes
            .iter()
            .map(|r| (r.prefix.clone(), r.next_hop.clone()))
            .collect();
        // Children get `<our address>.<child id>` without a configured route.
        for p in config
            .peers
            .iter()
            .filter(|p| p.relation == Relation::Child)
        {
            let prefix = format!("{}.{}", address, p.id);
            if !routes.iter().any(|(pre, _)| *pre == prefix) {
                routes.push((prefix, p.id.clone()));
            }
        }
        routing
            .replace_all(
                routes.iter().map(|(p, h)| (p.as_str(), h.as_str())),
                config.default_route.as_deref(),
            )
            .map_err(|e| StartError::Config(e.to_string()))?;
        let n = config.shard_count();
        let shared = Arc::new(NodeShared {
            peers: PeerStatus::new(config.peers.iter().map(|p| p.id.clone())),
            metrics: (0..n).map(|_| Arc::new(ShardMetrics::default())).collect(),
            address,
            routing,
            stopping: AtomicBool::new(false),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            config,
        });
        tracing::info!(node_id = %shared.config.node_id, component = "connector", event = "connector_starting", shards = n, address = %shared.address);

        let placement = match &shared.config.cores {
            Some(cores) => PoolPlacement::Custom(
                cores
                    .iter()
                    .map(|c| glommio::CpuSet::online().map(|s| s.filter(|l| l.cpu == *c)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StartError::Executor(e.to_string()))?,
            ),
            None => PoolPlacement::Unbound(n),
        };
        let host = shared
            .config
            .btp_server_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let configured_port = shared.config.btp_server_port;
        let (port_tx, port_rx) = mpsc::channel::<Result<u16, String>>();
        let resolved = Arc::new(std::sync::OnceLock::<u16>::new());
        let shard_counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = shared.clone();
        let threads = LocalExecutorPoolBuilder::new(placement)
            .on_all_shards(move || {
                let shared = s2.clone();
                let port_tx = port_tx.clone();
                let resolved = resolved.clone();
                let host = host.clone();
                let index = shard_counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    let port = if index == 0 {
                        configured_port
                    } else {
                        // Wait for shard 0 to pick the port (bounded).
                        let until = Instant::now() + Duration::from_secs(10);
                        loop {
                            if let Some(p) = resolved.get() {
                                break *p;
                            }
                            if Instant::now() > until {
                                return;
                            }
                            glommio::timer::sleep(Duration::from_millis(5)).await;
                        }
                    };
                    let listener = match glommio::net::TcpListener::bind((host.as_str(), port)) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = port_tx.send(Err(e.to_string()));
                            shared.stopping.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    let actual = listener.local_addr().map(|a| a.port()).unwrap_or(port);
                    if index == 0 {
                        let _ = resolved.set(actual);
                    }
                    let _ = port_tx.send(Ok(actual));
                    drop(port_tx);
                    Shard::new(index, shared).run(listener).await;
                }
            })
            .map_err(|e| StartError::Executor(e.to_string()))?;
        let mut port = None;
        for _ in 0..n {
            match port_rx.recv_timeout(Duration::from_secs(15)) {
                Ok(Ok(p)) => port = Some(p),
                Ok(Err(reason)) => {
                    shared.stopping.store(true, Ordering::SeqCst);
                    let _ = threads.join_all();
                    return Err(StartError::Bind {
                        port: configured_port,
                        reason,
                    });
                }
                Err(_) => {
                    shared.stopping.store(true, Ordering::SeqCst);
                    return Err(StartError::Executor("shards did not start in time".into()));
                }
            }
        }
        let btp_port = port.unwrap_or(configured_port);
        let mut node = ConnectorNode {
            shared: shared.clone(),
            threads: Some(threads),
            btp_port,
            admin: None,
        };
        if let Some(admin_port) = shared.config.health_check_port {
            match super::super::admin::AdminServer::start(admin_port, shared.clone()) {
                Ok(a) => node.admin = Some(a),
                Err(reason) => {
                    node.stop();
                    return Err(StartError::Admin {
                        port: admin_port,
                        reason,
                    });
                }
            }
        }
        tracing::info!(node_id = %shared.config.node_id, component = "connector", event = "connector_listening", btp_port, admin_port = node.admin_port());
        Ok(node)
    }

    pub fn btp_port(&self) -> u16 {
        self.btp_port
    }

    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|a| a.port)
    }

    pub fn routing_table(&self) -> &RoutingTable {
        &self.shared.routing
    }

    pub fn health(&self) -> Health {
        health(&self.shared)
    }

    /// Waits (bounded) until `health().status == "ready"`.
    pub fn wait_ready(&self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if self.health().status == "ready" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops accepting, drains in-flight packets (bounded), closes links, joins the shards.
    pub fn stop(&mut self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(t) = self.threads.take() {
            let _ = t.join_all();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        tracing::info!(node_id = %self.shared.config.node_id, component = "connector", event = "connector_stopped");
    }
}

impl Drop for ConnectorNode {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn health(shared: &NodeShared) -> Health {
    let peers: std::collections::BTreeMap<String, bool> = shared
        .peers
        .iter()
        .map(|(id, n)| (id.to_owned(), n > 0))
        .collect();
    let connected_peers = peers.values().filter(|c| **c).count();
    let status = if shared.stopping.load(Ordering::Relaxed) {
        "stopping"
    } else if shared.ready.load(Ordering::Relaxed) {
        "ready"
    } else {
        let dialled_all = shared
            .config
            .peers
            .iter()
            .filter(|p| p.url.is_some())
            .all(|p| shared.peers.is_connected(&p.id));
        let waited =
            shared.started.elapsed() >= Duration::from_millis(shared.config.ready_timeout_ms);
        if dialled_all || waited {
            if !shared.ready.swap(true, Ordering::Relaxed) {
                tracing::info!(node_id = %shared.config.node_id, component = "connector", event = "connector_ready", connected_peers);
            }
            "ready"
        } else {
            "starting"
        }
    };
    Health {
        status,
        connected_peers,
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        peers,
    }
}
