//! The node's lifecycle: [`ConnectorNode::start`] spawns one glommio executor per shard, binds
//! the BTP port on every shard (SO_REUSEPORT; port 0 is resolved on shard 0 and the others bind
//! the same port), dials peers, and starts the admin HTTP port; [`ConnectorNode::stop`] stops
//! accepting, lets in-flight packets finish within a bound, answers the rest, and closes links
//! once every answer is written (see `shard`). One node per BTP port: see `PortLock`.
//!
//! [`NodeShared`] is the only state shared between shards: configuration, the routing table
//! (RCU), the peer manager (per-peer, per-shard link counts) and each shard's metrics —
//! nothing written per packet by more than one thread. With more than one shard, the shards
//! are joined by a glommio channel mesh for handing packets over (see `shard`).
//!
//! Peers are added and removed at runtime with [`add_peer`] / [`remove_peer`] (also on the
//! admin port); the shards pick the change up within ~20 ms.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement, PoolThreadHandles};

use glommio::channels::channel_mesh::MeshBuilder;

use super::handover::Handoff;
use super::identity::{Identity, Learned, Own, DEFAULT_ASSET_CODE, DEFAULT_ASSET_SCALE};
use super::metrics::ShardMetrics;
use super::peers::{PeerEntry, PeerError, Peers};
use super::shard::Shard;
use crate::accounts::Book;
use crate::btp::link::LinkCounters;
use crate::codec::Address;
use crate::config::{Config, PeerConfig};
use crate::routing::RoutingTable;

pub struct NodeShared {
    pub config: Config,
    /// Accounted peers: balances, limits, journal (see `crate::accounts`).
    pub book: Book,
    /// Our address and asset (configured, or learned from the parent).
    pub identity: Identity,
    /// TLS for the BTP port (`btpServerTls`), if it serves `wss`; replaced by
    /// [`reload_tls`] (new connections use the new one, open ones keep theirs).
    pub btp_tls: arc_swap::ArcSwapOption<futures_rustls::rustls::ServerConfig>,
    /// TLS for the HTTP port (`httpServerTls`), loaded at start.
    pub http_tls: Option<Arc<futures_rustls::rustls::ServerConfig>>,
    pub routing: RoutingTable,
    pub peers: Peers,
    pub metrics: Vec<Arc<ShardMetrics>>,
    /// Counters every link of the node adds to (late Fulfills, write timeouts, bad frames).
    pub link_counters: Arc<LinkCounters>,
    pub stopping: AtomicBool,
    /// Wakes the shards' watchers when the peer set changes or the node stops.
    pub changed: super::signal::Signal,
    /// The route protocol's state, once our address is known (see `ccp`).
    pub ccp: std::sync::Mutex<Option<crate::routing::ccp::Ccp>>,
    /// Learned routes in the published table (`ilp_routes_learned`).
    pub routes_learned: std::sync::atomic::AtomicUsize,
    pub(crate) started: Instant,
    ready: AtomicBool,
}

impl NodeShared {
    /// Tells the shards to stop (they drain, then end); whether they had been told already.
    pub(crate) fn stop_shards(&self) -> bool {
        let already = self.stopping.swap(true, Ordering::SeqCst);
        self.changed.notify();
        already
    }
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
    #[error("cannot open the balance journal: {0}")]
    Journal(String),
}

/// Health as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
    pub connected_peers: usize,
    pub uptime_ms: u64,
    /// Our address, once known (configured, or learned from the parent).
    pub address: Option<String>,
    pub asset_code: Option<String>,
    pub asset_scale: Option<u8>,
    /// The parent's latest answer, when it differs from the address we kept (restart to take it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_mismatch: Option<String>,
    pub peers: std::collections::BTreeMap<String, bool>,
}

/// A running connector.
pub struct ConnectorNode {
    shared: Arc<NodeShared>,
    /// Held while the node runs: no second node may serve this BTP port.
    port_lock: Option<PortLock>,
    threads: Option<PoolThreadHandles<()>>,
    btp_port: u16,
    /// The ILP-over-HTTP port, if `httpServerPort` is set.
    http_port: Option<u16>,
    admin: Option<Box<dyn Sidecar>>,
}

/// A server started with the node on its `healthCheckPort` (the admin port, which lives
/// above the node: `crate::admin::start_node`), stopped with it.
pub trait Sidecar: Send + Sync {
    fn port(&self) -> u16;
    fn stop(self: Box<Self>);
}

impl ConnectorNode {
    /// Starts the node; `admin` starts the server for `healthCheckPort` (if set) once the
    /// shards run.
    pub fn start_with(
        config: Config,
        admin: impl FnOnce(u16, Arc<NodeShared>) -> Result<Box<dyn Sidecar>, String>,
    ) -> Result<ConnectorNode, StartError> {
        config
            .validate()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let parent = config
            .ildcp_parent()
            .map_err(|e| StartError::Config(e.to_string()))?
            .map(str::to_owned);
        let identity = match (&config.ilp_address, &parent) {
            (Some(a), _) => Identity::configured(Own {
                address: Address::new(a.clone()).map_err(|e| StartError::Config(e.to_string()))?,
                asset_code: config
                    .asset_code
                    .clone()
                    .unwrap_or_else(|| DEFAULT_ASSET_CODE.into()),
                asset_scale: config.asset_scale.unwrap_or(DEFAULT_ASSET_SCALE),
            }),
            (None, Some(p)) => Identity::from_parent(p),
            (None, None) => return Err(StartError::Config("ilpAddress missing".into())),
        };
        let routing = RoutingTable::new();
        let btp_tls = match &config.btp_server_tls {
            Some(t) => Some(
                crate::btp::tls::server_config(&t.cert_file, &t.key_file)
                    .map_err(|e| StartError::Config(format!("btpServerTls: {e}")))?,
            ),
            None => None,
        };
        let http_tls = match &config.http_server_tls {
            Some(t) => {
                let c = crate::btp::tls::server_config(&t.cert_file, &t.key_file)
                    .map_err(|e| StartError::Config(format!("httpServerTls: {e}")))?;
                // HTTP/2 or HTTP/1.1, as the client prefers (ALPN).
                let mut c = (*c).clone();
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(Arc::new(c))
            }
            None => None,
        };
        let n = config.shard_count();
        let book = Book::open(&config, n).map_err(|e| StartError::Journal(e.to_string()))?;
        log_accounts(&config, &book);
        let shared = Arc::new(NodeShared {
            book,
            btp_tls: arc_swap::ArcSwapOption::new(btp_tls),
            http_tls,
            peers: Peers::new(config.peers.iter().cloned(), n),
            metrics: (0..n).map(|_| Arc::new(ShardMetrics::default())).collect(),
            link_counters: Arc::default(),
            identity,
            routing,
            ccp: std::sync::Mutex::new(None),
            routes_learned: Default::default(),
            stopping: AtomicBool::new(false),
            changed: super::signal::Signal::default(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            config,
        });
        if let Some(address) = shared.identity.address() {
            let ccp = super::ccp::create(&shared, address);
            *shared.ccp.lock().unwrap_or_else(|e| e.into_inner()) = Some(ccp);
        }
        super::routes::rebuild(&shared).map_err(|e| StartError::Config(e.to_string()))?;
        tracing::info!(nodeId = %shared.config.node_id, component = "connector", event = "connector_starting", shards = n,
            address = shared.identity.address().map_or("(from the parent, by ILDCP)", Address::as_str));

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
        let port_lock = match configured_port {
            0 => None,
            port => Some(PortLock::take(port).map_err(|reason| StartError::Bind { port, reason })?),
        };
        let (port_tx, port_rx) = mpsc::channel::<Result<(u16, Option<u16>), String>>();
        let resolved = Arc::new(std::sync::OnceLock::<u16>::new());
        let http_resolved = Arc::new(std::sync::OnceLock::<u16>::new());
        let http_host = shared
            .config
            .http_server_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        // Handing packets between shards: one bounded SPSC channel per ordered pair.
        let mesh = (n > 1).then(|| MeshBuilder::<Handoff, _>::full(n, 1024));
        let s2 = shared.clone();
        // Shard threads are named `ilp-shard-<n>` (visible in top -H, perf, /proc).
        let mut builder = LocalExecutorPoolBuilder::new(placement).name("ilp-shard");
        if shared.config.spin_before_park_us > 0 {
            builder =
                builder.spin_before_park(Duration::from_micros(shared.config.spin_before_park_us));
        }
        let threads = builder
            .on_all_shards(move || {
                let shared = s2.clone();
                let port_tx = port_tx.clone();
                let resolved = resolved.clone();
                let http_resolved = http_resolved.clone();
                let http_host = http_host.clone();
                let host = host.clone();
                let mesh = mesh.clone();
                async move {
                    // The mesh numbers the shards 0..n; with one shard there is no mesh.
                    let (index, senders, receivers) = match mesh {
                        Some(m) => match m.join().await {
                            Ok((s, r)) => (s.peer_id(), Some(s), Some(r)),
                            Err(e) => {
                                let _ =
                                    port_tx.send(Err(format!("cannot join the shard mesh: {e}")));
                                return;
                            }
                        },
                        None => (0, None, None),
                    };
                    let port = if index == 0 {
                        configured_port
                    } else {
                        // Wait for shard 0 to pick the port (bounded).
                        match wait_for_port(&resolved).await {
                            Some(p) => p,
                            None => return,
                        }
                    };
                    let listener = match glommio::net::TcpListener::bind((host.as_str(), port)) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = port_tx.send(Err(e.to_string()));
                            shared.stop_shards();
                            return;
                        }
                    };
                    let actual = listener.local_addr().map(|a| a.port()).unwrap_or(port);
                    if index == 0 {
                        let _ = resolved.set(actual);
                    }
                    // The ILP-over-HTTP port, bound the same way.
                    let http = match shared.config.http_server_port {
                        None => None,
                        Some(p) => {
                            let p = if index == 0 || p != 0 {
                                p
                            } else {
                                match wait_for_port(&http_resolved).await {
                                    Some(p) => p,
                                    None => return,
                                }
                            };
                            match glommio::net::TcpListener::bind((http_host.as_str(), p)) {
                                Ok(l) => {
                                    if index == 0 {
                                        let _ = http_resolved
                                            .set(l.local_addr().map(|a| a.port()).unwrap_or(p));
                                    }
                                    Some(l)
                                }
                                Err(e) => {
                                    let _ = port_tx.send(Err(format!("HTTP port {p}: {e}")));
                                    shared.stop_shards();
                                    return;
                                }
                            }
                        }
                    };
                    let http_port = http
                        .as_ref()
                        .and_then(|l| l.local_addr().ok().map(|a| a.port()));
                    let _ = port_tx.send(Ok((actual, http_port)));
                    drop(port_tx);
                    Shard::new(index, shared, senders)
                        .run(listener, http, receivers)
                        .await;
                }
            })
            .map_err(|e| StartError::Executor(e.to_string()))?;
        let mut port = None;
        let mut http_port = None;
        for _ in 0..n {
            match port_rx.recv_timeout(Duration::from_secs(15)) {
                Ok(Ok((p, h))) => {
                    port = Some(p);
                    http_port = http_port.or(h);
                }
                Ok(Err(reason)) => {
                    shared.stop_shards();
                    let _ = threads.join_all();
                    return Err(StartError::Bind {
                        port: configured_port,
                        reason,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // A shard thread ended before binding: its executor could not start
                    // (e.g. RLIMIT_MEMLOCK below what io_uring needs). Report why.
                    shared.stop_shards();
                    let reason = threads
                        .join_all()
                        .into_iter()
                        .find_map(|r| r.err().map(|e| e.to_string()))
                        .unwrap_or_else(|| "a shard exited during start".into());
                    return Err(StartError::Executor(reason));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    shared.stop_shards();
                    return Err(StartError::Executor("shards did not start in time".into()));
                }
            }
        }
        let btp_port = port.unwrap_or(configured_port);
        // A port the kernel picked is locked now, so no node asking for it explicitly can
        // join it later (an explicit port was locked before binding, above).
        let port_lock = match port_lock {
            Some(l) => Some(l),
            None => match PortLock::take(btp_port) {
                Ok(l) => Some(l),
                Err(reason) => {
                    shared.stop_shards();
                    let _ = threads.join_all();
                    return Err(StartError::Bind {
                        port: btp_port,
                        reason,
                    });
                }
            },
        };
        let mut node = ConnectorNode {
            shared: shared.clone(),
            port_lock,
            threads: Some(threads),
            btp_port,
            http_port,
            admin: None,
        };
        if let Some(admin_port) = shared.config.health_check_port {
            match admin(admin_port, shared.clone()) {
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
        tracing::info!(nodeId = %shared.config.node_id, component = "connector", event = "connector_listening", btp_port, admin_port = node.admin_port());
        Ok(node)
    }

    /// See [`reload_tls`].
    pub fn reload_tls(&self) -> Result<(), String> {
        reload_tls(&self.shared)
    }

    pub fn btp_port(&self) -> u16 {
        self.btp_port
    }

    pub fn http_port(&self) -> Option<u16> {
        self.http_port
    }

    pub fn admin_port(&self) -> Option<u16> {
        self.admin.as_ref().map(|a| a.port())
    }

    pub fn routing_table(&self) -> &RoutingTable {
        &self.shared.routing
    }

    pub fn health(&self) -> Health {
        health(&self.shared)
    }

    /// Adds a peer at runtime (see [`add_peer`]).
    pub fn add_peer(&self, peer: PeerConfig) -> Result<(), PeerError> {
        add_peer(&self.shared, peer)
    }

    /// Removes a peer at runtime (see [`remove_peer`]).
    pub fn remove_peer(&self, id: &str) -> Result<(), PeerError> {
        remove_peer(&self.shared, id)
    }

    /// Prepares received and not yet answered, over all shards.
    pub fn in_flight(&self) -> i64 {
        self.shared.metrics.iter().map(|m| m.in_flight()).sum()
    }

    /// The peer's live links by shard index, if the peer exists.
    pub fn peer_links(&self, id: &str) -> Option<Vec<usize>> {
        self.shared.peers.get(id).map(|p| p.links_per_shard())
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
        if self.shared.stop_shards() {
            return;
        }
        if let Some(t) = self.threads.take() {
            let _ = t.join_all();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        self.port_lock = None;
        tracing::info!(nodeId = %self.shared.config.node_id, component = "connector", event = "connector_stopped");
    }
}

impl Drop for ConnectorNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (10 s at most) for shard 0 to pick a port the kernel chose.
async fn wait_for_port(resolved: &std::sync::OnceLock<u16>) -> Option<u16> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = resolved.get() {
            return Some(*p);
        }
        if Instant::now() > until {
            return None;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// One node per BTP port. The shards share the port with SO_REUSEPORT, which would just as
/// well let a second node (same user) bind it and silently take a share of the connections.
/// So a node binds the abstract Unix socket `@ilp-connector-btp-<port>` while it runs: one
/// per network namespace, like the port itself, and the kernel drops it when the process
/// ends, however it ends, leaving no file behind (a lock file per port would pile up in
/// the temp directory).
struct PortLock(#[allow(dead_code)] std::os::unix::net::UnixListener);

impl PortLock {
    fn take(port: u16) -> Result<PortLock, String> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ilp-connector-btp-{port}");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| format!("cannot name the lock @{name}: {e}"))?;
        match std::os::unix::net::UnixListener::bind_addr(&addr) {
            Ok(listener) => Ok(PortLock(listener)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
                "another node is running on this port (it holds the abstract socket @{name})"
            )),
            Err(e) => Err(format!("cannot bind the lock @{name}: {e}")),
        }
    }
}

/// How long [`add_peer`] and [`remove_peer`] wait for every shard to act on the change.
const PEER_CHANGE_BOUND: Duration = Duration::from_secs(1);

/// Adds a peer (returns once every shard knows, bounded): shards start dialling it (if it has a `url`) or accept its token; a child
/// gets the route `<our address>.<id>`.
pub(crate) fn add_peer(shared: &NodeShared, peer: PeerConfig) -> Result<(), PeerError> {
    if peer.balance.is_some() {
        // Balances are recovered from the journal at start, for the peers configured then.
        return Err(PeerError::Invalid(crate::config::ConfigError::Invalid {
            key: "balance".into(),
            reason: "balance limits are set at start: add the peer to the config file and restart"
                .into(),
        }));
    }
    let entry = shared.peers.add(peer)?;
    super::ccp::peer_added(shared, &entry.config);
    // A child gets its route (once our address is known).
    if let Err(e) = super::routes::rebuild(shared) {
        let _ = shared.peers.remove(entry.id());
        super::ccp::peer_removed(shared, entry.id());
        shared.changed.notify();
        return Err(PeerError::Invalid(crate::config::ConfigError::Invalid {
            key: "id".into(),
            reason: e.to_string(),
        }));
    }
    log_peer_change(shared, &entry, "peer_added");
    shared.changed.notify();
    shared.peers.wait_applied(PEER_CHANGE_BOUND);
    Ok(())
}

/// Removes a peer: its links close (requests pending on them complete with T01), nobody dials
/// it again, and every route through it goes.
pub(crate) fn remove_peer(shared: &NodeShared, id: &str) -> Result<(), PeerError> {
    let entry = shared.peers.remove(id)?;
    super::ccp::peer_removed(shared, id);
    if let Err(e) = super::routes::rebuild(shared) {
        tracing::warn!(nodeId = %shared.config.node_id, component = "peers", event = "routes_not_rebuilt", error = %e);
    }
    log_peer_change(shared, &entry, "peer_removed");
    shared.changed.notify();
    shared.peers.wait_applied(PEER_CHANGE_BOUND);
    Ok(())
}

/// Logs once at start what is accounted and what is not.
fn log_accounts(config: &Config, book: &Book) {
    for a in &book.accounts {
        tracing::info!(nodeId = %config.node_id, component = "accounts", event = "account_opened", peer = %a.id,
            balance = a.balance(), minimum = ?a.limits.minimum, maximum = ?a.limits.maximum);
    }
    let unlimited: Vec<&str> = config
        .peers
        .iter()
        .filter(|p| p.balance.is_none())
        .map(|p| p.id.as_str())
        .collect();
    if !unlimited.is_empty() {
        tracing::info!(nodeId = %config.node_id, component = "accounts", event = "peers_unlimited", peers = ?unlimited,
            "these peers have no balance limits (no `balance` in the config)");
    }
}

fn log_peer_change(shared: &NodeShared, entry: &PeerEntry, event: &str) {
    tracing::info!(nodeId = %shared.config.node_id, component = "peers", event, peer = %entry.id(),
        relation = ?entry.config.relation, url = ?entry.config.url.as_deref().map(crate::config::redact_url));
}

/// Re-reads `btpServerTls`'s certificate and key (SIGHUP, or `POST /tls/reload`): on success
/// new connections are served with them; on an error the old ones stay and the error is
/// returned (and logged).
pub(crate) fn reload_tls(shared: &NodeShared) -> Result<(), String> {
    let Some(files) = &shared.config.btp_server_tls else {
        return Err("no btpServerTls configured".into());
    };
    let node = &shared.config.node_id;
    match crate::btp::tls::server_config(&files.cert_file, &files.key_file) {
        Ok(c) => {
            shared.btp_tls.store(Some(c));
            tracing::info!(nodeId = %node, component = "connector", event = "tls_reloaded", certFile = %files.cert_file);
            Ok(())
        }
        Err(e) => {
            tracing::error!(nodeId = %node, component = "connector", event = "tls_reload_failed", error = %e,
                "kept the certificate in use");
            Err(e)
        }
    }
}

/// Takes the parent's ILDCP answer: the first gives us our address (and our children their
/// routes); a later different one is logged loudly and kept aside (see `identity`).
pub(crate) fn learned(shared: &NodeShared, answer: Own) {
    let node = &shared.config.node_id;
    match shared.identity.learn(answer.clone()) {
        Learned::First => {
            tracing::info!(nodeId = %node, component = "connector", event = "ildcp_address_learned",
                address = %answer.address, assetCode = %answer.asset_code, assetScale = answer.asset_scale,
                parent = shared.identity.parent().unwrap_or(""));
            let ccp = super::ccp::create(shared, &answer.address);
            *shared.ccp.lock().unwrap_or_else(|e| e.into_inner()) = Some(ccp);
            if let Err(e) = super::routes::rebuild(shared) {
                tracing::warn!(nodeId = %node, component = "connector", event = "child_routes_refused", error = %e);
            }
        }
        Learned::Same => {}
        Learned::Different => {
            tracing::error!(nodeId = %node, component = "connector", event = "ildcp_address_changed",
                kept = %shared.identity.address().map_or("", Address::as_str), offered = %answer.address,
                "the parent now assigns a different address; keeping ours until restart");
        }
    }
}

pub(crate) fn health(shared: &NodeShared) -> Health {
    let peers: std::collections::BTreeMap<String, bool> = shared
        .peers
        .list()
        .iter()
        .map(|p| (p.id().to_owned(), p.link_count() > 0))
        .collect();
    let connected_peers = peers.values().filter(|c| **c).count();
    let own = shared.identity.get();
    let status = if shared.stopping.load(Ordering::Relaxed) {
        "stopping"
    } else if own.is_none() {
        "starting"
    } else if shared.ready.load(Ordering::Relaxed) {
        "ready"
    } else {
        let dialled_all = shared
            .peers
            .list()
            .iter()
            .filter(|p| p.config.btp_url().is_some())
            .all(|p| p.link_count() > 0);
        let waited =
            shared.started.elapsed() >= Duration::from_millis(shared.config.ready_timeout_ms);
        if dialled_all || waited {
            if !shared.ready.swap(true, Ordering::Relaxed) {
                tracing::info!(nodeId = %shared.config.node_id, component = "connector", event = "connector_ready", connected_peers);
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
        address: own.map(|o| o.address.to_string()),
        asset_code: own.map(|o| o.asset_code.clone()),
        asset_scale: own.map(|o| o.asset_scale),
        address_mismatch: shared.identity.mismatch().map(|m| m.address.to_string()),
        peers,
    }
}
