//! One shard: its own links (by peer), pending-request deadlines, routing view and metrics.
//! Everything here lives on one glommio executor thread (`Rc`, `RefCell`, no locks).
//!
//! Tasks per shard: the accept loop, one dial loop per peer with a `url` (the peer's home
//! shard dials it; the other shards too only if the peer's auth answer offers more links, or
//! `links: N` says so — a peer that keeps one socket per account, like the JS reference,
//! would evict all but one), one task per link, a pool of packet workers (grown when
//! every worker is busy, shrunk when many are idle: no task is spawned per packet), the
//! deadline driver, the peer watcher (runtime add/remove), the accounts task (journal writes,
//! lease returns; only when a peer has `balance`) and one receiver per other shard for
//! packets handed over.
//!
//! A packet goes out on a link of this shard when there is one; only when the next hop has no
//! link here (a peer that dialled in and landed on another shard) is the encoded frame handed
//! to a shard that has one, and that shard sends the answer back through a oneshot channel.
//! No link anywhere → T01 at once. More than `maxInFlightPerShard` Prepares at once → T03;
//! more than `maxInFlightPerPeer` from one peer → T05 (that peer only); a Prepare routed back
//! to the peer it came from → F02.
//!
//! Stopping ([`Shard::run`]): new Prepares are answered T03 at once; in-flight ones get until
//! `drainTimeoutMs`; then every request still pending on this shard's links is failed (so its
//! Prepare is answered T01/R00), and only once every Prepare is answered and every queued
//! answer written are the links closed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};

use super::accounting::ShardAccounts;
use super::connector::NodeShared;
use super::metrics::ShardMetrics;
use super::peers::PeerEntry;
use super::rules::{self, Decision, Refusal, Timing};
use crate::btp::auth::Credential;
use crate::btp::client::{dial_with_ca, parse_url};
use crate::btp::deadlines::Deadlines;
use crate::btp::link::{self, Link, LinkConfig};
use crate::btp::server::accept_peer;
use crate::btp::throttle::AuthThrottle;
use crate::btp::{IncomingHandler, LinkError};
use crate::codec::btp::{self as btpc, BtpBody, ProtocolData, CONTENT_OCTET_STREAM};
use crate::codec::ilp::rewrite_prepare;
use crate::codec::{BtpPacket, ErrorCode, Packet, Prepare, Timestamp};
use crate::config::Relation;
use crate::http::client::HttpPeerClient;
use crate::routing::RoutingView;

/// BTP entry that carries the correlation id from hop to hop (secondary, so peers that do
/// not know it ignore it).
const CORRELATION_ENTRY: &[u8] = b"correlationId";

/// A packet handed to the shard that holds a link to its next hop.
pub struct Handoff {
    next_hop: Arc<str>,
    /// The BTP MESSAGE, ready to send (its request id is set by the link).
    frame: BytesMut,
    /// Already bounded by the send timeout (see `process`).
    deadline: Instant,
    amount: u64,
    reply: oneshot::Sender<Result<BtpPacket, LinkError>>,
}

/// The shard's ends of the node's channel mesh (absent with one shard).
pub type Mesh = (Senders<Handoff>, Receivers<Handoff>);

/// Keep-alive connections each shard keeps at most to one ILP-over-HTTP peer (HTTP/1.1 does
/// not pipeline, so this bounds the requests in flight to it per shard; more → T02).
const HTTP_CONNECTIONS_PER_PEER: usize = 64;

/// The window of `maxAuthFailuresPerIp`.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Idle workers beyond this many end (the pool shrinks back after a burst).
const MAX_IDLE_WORKERS: usize = 256;

/// A MESSAGE to answer, the link it came on and its peer's in-flight count on this shard.
type Job = (Link, BtpPacket, Rc<Cell<usize>>);

/// The shard's packet workers: jobs in an unbounded local queue, `idle` workers waiting on
/// it, `queued` jobs not yet taken (a worker is spawned when jobs outnumber idle workers).
struct Workers {
    tx: LocalSender<Job>,
    rx: LocalReceiver<Job>,
    idle: Cell<usize>,
    queued: Cell<usize>,
}

/// A live link and the peer entry it was counted on.
struct PeerLink {
    link: Link,
    entry: Arc<PeerEntry>,
}

/// What the shard knows about the peer set, rebuilt when its generation changes.
#[derive(Default)]
struct PeerView {
    generation: Option<u64>,
    /// Tokens of peers that dial us.
    creds: Rc<Vec<Credential>>,
    /// Ids of peers with relation `child` (ILDCP is served only to them), looked up per packet.
    children: ahash::AHashSet<String>,
    /// Peers this shard runs a dial loop for.
    dialing: Vec<Arc<PeerEntry>>,
    /// Tokens of every peer, for ILP-over-HTTP requests (the token names the peer).
    http_creds: Rc<Vec<Credential>>,
    /// This shard's client for each ILP-over-HTTP peer.
    http: HashMap<String, Rc<HttpPeerClient>>,
}

pub struct Shard {
    pub index: usize,
    node: Arc<NodeShared>,
    routing: RefCell<RoutingView>,
    links: RefCell<HashMap<String, Vec<PeerLink>>>,
    peers: RefCell<PeerView>,
    deadlines: Rc<Deadlines>,
    metrics: Arc<ShardMetrics>,
    link_cfg: LinkConfig,
    handoff: Option<Senders<Handoff>>,
    workers: Workers,
    /// Prepares in flight per source peer on this shard (shared by the peer's links).
    peer_load: RefCell<HashMap<String, Rc<Cell<usize>>>>,
    /// Accepted connections not yet authenticated.
    unauthenticated: Cell<usize>,
    /// Failed logins per remote address.
    auth_throttle: RefCell<AuthThrottle>,
    /// Amounts, limits and balances (see `accounting`).
    accounts: Rc<ShardAccounts>,
}

impl Shard {
    pub fn new(
        index: usize,
        node: Arc<NodeShared>,
        handoff: Option<Senders<Handoff>>,
    ) -> Rc<Shard> {
        let c = &node.config;
        let auth_throttle = AuthThrottle::new(c.max_auth_failures_per_ip, AUTH_FAILURE_WINDOW);
        let link_cfg = LinkConfig {
            node_id: c.node_id.as_str().into(),
            send_timeout: Duration::from_millis(c.send_timeout_ms),
            ping_interval: Duration::from_millis(c.ping_interval_ms),
            pong_timeout: Duration::from_millis(c.pong_timeout_ms),
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            queue_capacity: 4096,
            max_pending: c.max_in_flight_per_link,
            // Answers past the peer's share are quick T05s; stop reading well after that.
            max_unanswered_in: c.max_in_flight_per_peer.saturating_mul(2).max(1024),
            max_queued_bytes: 16 << 20,
            counters: node.link_counters.clone(),
        };
        let shard = Rc::new(Shard {
            index,
            routing: RefCell::new(node.routing.view()),
            links: RefCell::new(HashMap::new()),
            peers: RefCell::new(PeerView::default()),
            deadlines: Deadlines::new(),
            metrics: node.metrics[index].clone(),
            link_cfg,
            handoff,
            workers: {
                let (tx, rx) = local_channel::new_unbounded();
                Workers {
                    tx,
                    rx,
                    idle: Cell::new(0),
                    queued: Cell::new(0),
                }
            },
            accounts: Rc::new(ShardAccounts::new(node.clone(), index)),
            node,
            peer_load: RefCell::new(HashMap::new()),
            unauthenticated: Cell::new(0),
            auth_throttle: RefCell::new(auth_throttle),
        });
        shard.refresh_peers();
        shard
    }

    /// Re-reads the peer set if it changed: credentials, children, dial loops for new peers
    /// with a `url`, and closes links to removed peers.
    fn refresh_peers(self: &Rc<Self>) {
        let generation = self.node.peers.generation();
        if self.peers.borrow().generation == Some(generation) {
            return;
        }
        let all = self.node.peers.list();
        self.accounts.peers_changed();
        let mut view = self.peers.borrow_mut();
        view.generation = Some(generation);
        view.creds = Rc::new(
            all.iter()
                .filter(|p| p.config.url.is_none())
                .filter_map(|p| {
                    let token = p.config.auth_token.as_deref()?;
                    Some(Credential::new(p.id(), token))
                })
                .collect(),
        );
        view.children = all
            .iter()
            .filter(|p| p.config.relation == Relation::Child)
            .map(|p| p.id().to_owned())
            .collect();
        view.http_creds = Rc::new(
            all.iter()
                .filter_map(|p| Some(Credential::new(p.id(), p.config.auth_token.as_deref()?)))
                .collect(),
        );
        view.http.retain(|id, _| all.iter().any(|p| p.id() == id));
        for p in all.iter().filter(|p| p.config.is_http()) {
            if view.http.contains_key(p.id()) {
                continue;
            }
            let target = p.config.url.as_deref().map(crate::http::client::parse_url);
            let token = p
                .config
                .outgoing_auth_token
                .as_deref()
                .or(p.config.auth_token.as_deref())
                .unwrap_or("");
            let client = match target {
                Some(Ok(t)) => HttpPeerClient::new(
                    t,
                    token,
                    HTTP_CONNECTIONS_PER_PEER,
                    Duration::from_millis(self.node.config.connect_timeout_ms),
                    self.node.config.tls_ca_file.clone(),
                    self.node.link_counters.http_connections_opened.clone(),
                    p.config.http2,
                ),
                Some(Err(e)) => Err(e),
                None => continue,
            };
            match client {
                Ok(c) => {
                    view.http.insert(p.id().to_owned(), Rc::new(c));
                }
                Err(e) => {
                    tracing::error!(nodeId = %self.node.config.node_id, component = "http", event = "http_peer_refused", peer = %p.id(), error = %e);
                }
            }
        }
        view.dialing.retain(|p| !p.is_removed());
        for p in all.iter().filter(|p| p.config.btp_url().is_some()) {
            if !view.dialing.iter().any(|d| Arc::ptr_eq(d, p)) {
                view.dialing.push(p.clone());
                let (me, entry) = (self.clone(), p.clone());
                glommio::spawn_local(async move { me.dial_loop(entry).await }).detach();
            }
        }
        drop(view);
        for l in self.links.borrow().values().flatten() {
            if l.entry.is_removed() {
                l.link.close();
            }
        }
        self.node.peers.mark_applied(self.index, generation);
    }

    /// Watches the peer set until the node stops.
    async fn watch_peers(self: Rc<Self>) {
        while !self.stopping() {
            self.refresh_peers();
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stopping(&self) -> bool {
        self.node.stopping.load(Ordering::Relaxed)
    }

    async fn until_stopping(&self) {
        while !self.stopping() {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every incoming MESSAGE becomes a job for the shard's workers; a worker is added only
    /// when none is free, so in steady state no task is spawned per packet.
    fn handler(self: &Rc<Self>, peer: &str) -> IncomingHandler {
        let shard = self.clone();
        let load = self
            .peer_load
            .borrow_mut()
            .entry(peer.to_owned())
            .or_default()
            .clone();
        Rc::new(move |link: Link, packet: BtpPacket| {
            let w = &shard.workers;
            // The queue is unbounded, but each link stops reading while too many of its
            // MESSAGEs are unanswered, so it is bounded by links × that. Fails only once the
            // shard is gone.
            if w.tx.try_send((link, packet, load.clone())).is_err() {
                return;
            }
            w.queued.set(w.queued.get() + 1);
            if w.queued.get() > w.idle.get() {
                w.idle.set(w.idle.get() + 1);
                glommio::spawn_local(shard.clone().worker()).detach();
            }
        })
    }

    /// Takes jobs until there are more than enough idle workers.
    async fn worker(self: Rc<Self>) {
        while let Some((link, packet, load)) = self.workers.rx.recv().await {
            let w = &self.workers;
            w.queued.set(w.queued.get().saturating_sub(1));
            w.idle.set(w.idle.get().saturating_sub(1));
            let reply = self.handle_message(&link, &packet, &load).await;
            let _ = link.send(reply);
            drop((link, packet, load));
            let w = &self.workers;
            if w.idle.get() >= MAX_IDLE_WORKERS {
                return;
            }
            w.idle.set(w.idle.get() + 1);
        }
    }

    /// Runs the shard until the node stops: serve, dial, then drain and close.
    pub async fn run(
        self: Rc<Self>,
        listener: TcpListener,
        http: Option<TcpListener>,
        handed: Option<Receivers<Handoff>>,
    ) {
        if let Some(http) = http {
            let (me, creds_of, stop) = (self.clone(), self.clone(), self.clone());
            let handler: crate::http::server::Handler = Rc::new(move |peer, body| {
                let me = me.clone();
                Box::pin(async move { me.answer_http(peer, body).await })
            });
            let creds: crate::http::server::Credentials =
                Rc::new(move || creds_of.peers.borrow().http_creds.clone());
            let idle = Duration::from_millis(self.node.config.http_idle_timeout_ms);
            glommio::spawn_local(crate::http::server::serve(
                http,
                self.node.http_tls.clone(),
                handler,
                creds,
                idle,
                async move { stop.until_stopping().await },
            ))
            .detach();
        }
        let dl = self.deadlines.clone();
        let me = self.clone();
        glommio::spawn_local(async move {
            dl.run(move || me.stopping() && me.links.borrow().is_empty())
                .await
        })
        .detach();
        glommio::spawn_local(self.clone().watch_peers()).detach();
        if let Some(parent) = self.node.identity.parent() {
            glommio::spawn_local(self.clone().ask_parent(parent.to_owned())).detach();
        }
        if let Some(mut receivers) = handed {
            for (_, rx) in receivers.streams() {
                let me = self.clone();
                glommio::spawn_local(async move {
                    while let Some(h) = rx.recv().await {
                        let me = me.clone();
                        glommio::spawn_local(async move { me.send_handed(h).await }).detach();
                    }
                })
                .detach();
            }
        }
        let accounts = glommio::spawn_local(self.accounts.clone().run());
        let (me, stop) = (self.clone(), self.clone());
        glommio::spawn_local(super::ccp::run(
            self.node.clone(),
            self.index,
            move |peer| me.pick_link(peer),
            move || stop.stopping(),
        ))
        .detach();
        let me = self.clone();
        let accept = glommio::spawn_local(async move { me.accept_loop(listener).await });
        self.until_stopping().await;
        accept.await;
        self.drain().await;
        // Every Prepare is answered: the journal writes what is left and ends.
        self.accounts.finish();
        accounts.await;
    }

    /// The graceful stop (see the module doc). New Prepares are already refused (T03) by
    /// [`Shard::handle_message`] once the node is stopping.
    async fn drain(&self) {
        let bound = Instant::now() + Duration::from_millis(self.node.config.drain_timeout_ms);
        wait_until(bound, || self.metrics.in_flight() <= 0).await;
        // Leftovers: fail what this shard still waits for, so each Prepare gets T01/R00.
        for l in self.links.borrow().values().flatten() {
            l.link.fail_pending();
        }
        // Their answers are computed by the workers (and hand-overs answered by the other
        // shards, which drain with the same bound).
        let bound = Instant::now() + Duration::from_secs(2);
        wait_until(bound, || self.metrics.in_flight() <= 0).await;
        // Every link writes what it has queued, then closes.
        for l in self.links.borrow().values().flatten() {
            l.link.close();
        }
        let bound = Instant::now()
            + Duration::from_millis(self.node.config.write_timeout_ms)
            + Duration::from_secs(1);
        wait_until(bound, || self.links.borrow().is_empty()).await;
    }

    /// Accepts until the node stops. Accept errors (e.g. EMFILE) back off, doubling up to
    /// 1 s, and are logged at most once a second.
    async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let mut backoff = Duration::ZERO;
        let mut last_log: Option<Instant> = None;
        loop {
            let next = futures_lite::future::or(async { Some(listener.accept().await) }, async {
                self.until_stopping().await;
                None
            })
            .await;
            match next {
                None => return,
                Some(Ok(stream)) => {
                    backoff = Duration::ZERO;
                    let cap = self.node.config.max_unauthenticated_per_shard;
                    if self.unauthenticated.get() >= cap {
                        // Too many half-done handshakes: close this one at once.
                        drop(stream);
                        continue;
                    }
                    let me = self.clone();
                    glommio::spawn_local(async move { me.serve_inbound(stream).await }).detach();
                }
                Some(Err(e)) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        last_log = Some(Instant::now());
                        tracing::warn!(nodeId = %self.node.config.node_id, component = "btp_server", event = "accept_error", error = %e, backoff_ms = backoff.as_millis() as u64);
                    }
                    glommio::timer::sleep(backoff).await;
                }
            }
        }
    }

    async fn serve_inbound(self: Rc<Self>, stream: TcpStream) {
        let addr = stream.peer_addr().ok();
        let remote = addr.map_or_else(|| "?".to_owned(), |a| a.to_string());
        let ip = addr.map(|a| a.ip());
        if let Some(ip) = ip {
            if !self.auth_throttle.borrow().allowed(ip, Instant::now()) {
                return; // Closed before the handshake; logged once when it was blocked.
            }
        }
        let auth_timeout = Duration::from_millis(self.node.config.auth_timeout_ms);
        let creds = self.peers.borrow().creds.clone();
        self.unauthenticated.set(self.unauthenticated.get() + 1);
        let tls = self.node.btp_tls.load_full();
        let accepted =
            accept_peer(stream, tls, &creds, auth_timeout, |peer| self.admit(peer)).await;
        self.unauthenticated
            .set(self.unauthenticated.get().saturating_sub(1));
        let (peer, ws) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Only wrong credentials count (not timeouts or connection limits).
                let blocked = matches!(e, LinkError::BadCredentials(_))
                    && ip.is_some_and(|ip| {
                        self.auth_throttle.borrow_mut().failed(ip, Instant::now())
                    });
                tracing::info!(nodeId = %self.node.config.node_id, component = "btp_server", event = "btp_auth_failed", remote = %remote, error = %e);
                if blocked {
                    tracing::warn!(nodeId = %self.node.config.node_id, component = "btp_server", event = "btp_auth_blocked", remote = %remote,
                        failures = self.node.config.max_auth_failures_per_ip, for_s = AUTH_FAILURE_WINDOW.as_secs(),
                        "too many failed logins from this address: its connections are refused until the window ends");
                }
                return;
            }
        };
        // `admit` found the entry; removed since → the link closes at once in `run_link`.
        let Some(entry) = self.node.peers.get(&peer) else {
            return;
        };
        self.run_link(
            entry,
            ws,
            "btp_server_peer_connected",
            "btp_server_peer_disconnected",
        )
        .await;
    }

    /// Decides, after a peer authenticated and before it is told so, whether it may have
    /// another link. At `maxConnectionsPerPeer` it may only replace its link on this shard
    /// that has been silent longest, if silent for `replaceSilentLinkMs` (a half-open
    /// leftover of a peer that crashed and reconnects); otherwise it gets a BTP ERROR.
    fn admit(&self, peer: &str) -> Result<Option<usize>, String> {
        let cfg = &self.node.config;
        let Some(entry) = self.node.peers.get(peer) else {
            return Err("unknown account".into());
        };
        // Our dialling peers may open a link per shard, up to the limit.
        let offer = Some(cfg.max_connections_per_peer);
        if entry.link_count() < cfg.max_connections_per_peer {
            return Ok(offer);
        }
        let links = self.links.borrow();
        let stale = links
            .get(peer)
            .into_iter()
            .flatten()
            .map(|l| &l.link)
            .filter(|l| l.is_open())
            .max_by_key(|l| l.idle_for());
        match stale {
            Some(l) if l.idle_for() >= Duration::from_millis(cfg.replace_silent_link_ms) => {
                tracing::warn!(nodeId = %cfg.node_id, component = "btp_server", event = "stale_link_replaced", peer = %peer,
                    silent_ms = l.idle_for().as_millis() as u64, shard = self.index);
                l.close();
                Ok(offer)
            }
            _ => {
                tracing::warn!(nodeId = %cfg.node_id, component = "btp_server", event = "too_many_connections", peer = %peer, limit = cfg.max_connections_per_peer);
                Err(format!(
                    "too many connections for this account (limit {})",
                    cfg.max_connections_per_peer
                ))
            }
        }
    }

    async fn run_link<S>(
        self: &Rc<Self>,
        entry: Arc<PeerEntry>,
        ws: async_tungstenite::WebSocketStream<S>,
        up: &str,
        down: &str,
    ) where
        S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
    {
        let peer = entry.id();
        let link = Link::new(peer, self.link_cfg.clone(), self.deadlines.clone());
        self.links
            .borrow_mut()
            .entry(peer.to_owned())
            .or_default()
            .push(PeerLink {
                link: link.clone(),
                entry: entry.clone(),
            });
        entry.link_up(self.index);
        tracing::info!(nodeId = %self.node.config.node_id, component = "btp", event = up, peer = %peer, shard = self.index);
        if entry.is_removed() {
            link.close();
        }
        link::run(ws, link.clone(), self.handler(peer)).await;
        if let Some(v) = self.links.borrow_mut().get_mut(peer) {
            v.retain(|l| l.link.id() != link.id());
        }
        self.links.borrow_mut().retain(|_, v| !v.is_empty());
        entry.link_down(self.index);
        tracing::info!(nodeId = %self.node.config.node_id, component = "btp", event = down, peer = %peer, shard = self.index);
    }

    /// Dials `entry` and keeps a link to it, reconnecting with backoff, until the node stops
    /// or the peer is removed (an explicit disconnect: no more retries).
    async fn dial_loop(self: Rc<Self>, entry: Arc<PeerEntry>) {
        let cfg = &self.node.config;
        let peer_id = entry.id();
        let Some(Ok(target)) = entry.config.url.as_deref().map(parse_url) else {
            return;
        };
        let token = entry.config.auth_token.clone().unwrap_or_default();
        let timeout = Duration::from_millis(cfg.connect_timeout_ms);
        let mut failures: u32 = 0;
        let done = || self.stopping() || entry.is_removed();
        while !done() {
            // Only the peer's home shard dials until the peer says it takes more links
            // (a peer that keeps one socket per account would evict the others' links).
            if !entry.shard_dials(self.index) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let dialled = dial_with_ca(
                &target,
                &cfg.node_id,
                &token,
                timeout,
                cfg.tls_ca_file.as_deref(),
            )
            .await;
            match dialled {
                Ok((ws, offered)) => {
                    failures = 0;
                    if self.index == entry.home_shard() {
                        entry.set_offered_links(offered);
                    }
                    self.run_link(
                        entry.clone(),
                        ws,
                        "btp_client_connected",
                        "btp_client_disconnected",
                    )
                    .await;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(nodeId = %cfg.node_id, component = "btp_client", event = "btp_client_connect_failed", peer = %peer_id, attempt = failures, error = %e);
                    if cfg.reconnect_max_attempts.is_some_and(|m| failures >= m) {
                        tracing::error!(nodeId = %cfg.node_id, component = "btp_client", event = "btp_client_gave_up", peer = %peer_id);
                        return;
                    }
                }
            }
            let steps = &cfg.reconnect_backoff_ms;
            let delay = steps[(failures.max(1) as usize - 1).min(steps.len() - 1)];
            let until = Instant::now() + Duration::from_millis(delay);
            while Instant::now() < until && !done() {
                glommio::timer::sleep(Duration::from_millis(20).min(until - Instant::now())).await;
            }
        }
    }

    /// Asks the parent for our address (ILDCP) on every new link this shard has to it: the
    /// first answer gives the node its address; later ones are checked against it (see
    /// `connector::learned`). Failed asks are retried with the reconnect backoff.
    async fn ask_parent(self: Rc<Self>, parent: String) {
        let backoff = self.node.config.reconnect_backoff_ms.clone();
        let mut failures = 0usize;
        let mut asked: Option<u64> = None;
        while !self.stopping() {
            let link = self.pick_link(&parent).filter(|l| asked != Some(l.id()));
            let Some(link) = link else {
                // Often while we have no address (a parent that comes up is used within
                // 50 ms), rarely after.
                let every = if self.node.identity.get().is_none() {
                    50
                } else {
                    500
                };
                glommio::timer::sleep(Duration::from_millis(every)).await;
                continue;
            };
            let bound = Duration::from_millis(self.node.config.send_timeout_ms);
            match super::identity::ask(&link, bound).await {
                Ok(own) => {
                    asked = Some(link.id());
                    failures = 0;
                    super::connector::learned(&self.node, own);
                }
                Err(e) => {
                    let wait = backoff[failures.min(backoff.len() - 1)];
                    failures += 1;
                    tracing::warn!(nodeId = %self.node.config.node_id, component = "connector", event = "ildcp_failed",
                        parent = %parent, error = %e, retry_in_ms = wait);
                    glommio::timer::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    fn pick_link(&self, peer: &str) -> Option<Link> {
        let links = self.links.borrow();
        links
            .get(peer)?
            .iter()
            .map(|l| &l.link)
            .filter(|l| l.is_open())
            .min_by_key(|l| l.pending_count())
            .cloned()
    }

    /// Sends a packet another shard handed over on a link of this shard; the answer (or the
    /// failure) goes back through the oneshot channel.
    async fn send_handed(&self, h: Handoff) {
        let result = match self.pick_link(&h.next_hop) {
            Some(link) => link.request_until(h.frame, h.deadline, h.amount).await,
            None => Err(LinkError::LinkLost),
        };
        let _ = h.reply.send(result);
    }

    /// Sends `frame` on a link of `shard` and waits for the answer.
    async fn hand_over(
        &self,
        shard: usize,
        next_hop: Arc<str>,
        frame: BytesMut,
        deadline: Instant,
        amount: u64,
    ) -> Result<BtpPacket, LinkError> {
        let Some(senders) = &self.handoff else {
            return Err(LinkError::LinkLost);
        };
        let (reply, answer) = oneshot::channel();
        let h = Handoff {
            next_hop,
            frame,
            deadline,
            amount,
            reply,
        };
        // Both waits bounded: a shard that is gone or stuck must not hold the packet.
        let left = deadline.saturating_duration_since(Instant::now());
        match crate::btp::within(left, senders.send_to(shard, h)).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Err(LinkError::LinkLost),
            None => return Err(LinkError::Timeout),
        }
        self.metrics.handed_over();
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        match crate::btp::within(left, answer).await {
            Some(r) => r.unwrap_or(Err(LinkError::LinkLost)),
            None => Err(LinkError::Timeout),
        }
    }

    /// Answers one MESSAGE: returns the RESPONSE frame to send.
    async fn handle_message(
        &self,
        link: &Link,
        packet: &BtpPacket,
        peer_load: &Cell<usize>,
    ) -> Bytes {
        let source = link.peer_id();
        let Some(ilp) = packet.ilp() else {
            let mut out = BytesMut::with_capacity(16);
            btpc::encode(&mut out, packet.request_id(), BtpBody::Response, &[]);
            return out.freeze();
        };
        let cid = packet.entry(CORRELATION_ENTRY).map(|e| {
            let mut c = [b'0'; 16];
            let n = e.data.len().min(16);
            c[..n].copy_from_slice(&e.data[..n]);
            c
        });
        let answer = self.answer_ilp(source, ilp, cid, peer_load).await;
        let mut out = link.frame_buf(answer.len() + 32);
        btpc::encode_ilp(
            &mut out,
            btpc::BtpType::Response,
            packet.request_id(),
            &answer,
        );
        out.freeze()
    }

    /// Answers one ILP packet from `source`, whatever carried it (a BTP MESSAGE or an HTTP
    /// POST): admission, forwarding, metrics. `cid`: the correlation id it came with.
    async fn answer_ilp(
        &self,
        source: &str,
        ilp: Bytes,
        cid: Option<[u8; 16]>,
        peer_load: &Cell<usize>,
    ) -> Bytes {
        let started = Instant::now();
        self.metrics.packet_started();
        let cid = cid.or_else(|| {
            tracing::enabled!(tracing::Level::DEBUG).then(|| rules::correlation_id(&ilp))
        });
        let cfg = &self.node.config;
        let answer = if self.stopping() {
            self.refuse(Refusal::new(
                ErrorCode::T03_CONNECTOR_BUSY,
                "connector is shutting down",
            ))
        } else if self.node.identity.get().is_none() {
            self.refuse(Refusal::new(
                ErrorCode::T01_PEER_UNREACHABLE,
                "connector is starting: its address is not known yet (asking the parent)",
            ))
        } else if self.metrics.in_flight() > cfg.max_in_flight_per_shard as i64 {
            self.refuse(Refusal::new(
                ErrorCode::T03_CONNECTOR_BUSY,
                "too many packets in flight on this shard",
            ))
        } else if peer_load.get() >= cfg.max_in_flight_per_peer {
            self.refuse(Refusal::new(
                ErrorCode::T05_RATE_LIMITED,
                "too many of your packets in flight",
            ))
        } else {
            peer_load.set(peer_load.get() + 1);
            let a = self.process(source, ilp, cid.as_ref(), started).await;
            peer_load.set(peer_load.get().saturating_sub(1));
            a
        };
        let latency_us = started.elapsed().as_micros() as u64;
        if answer.ccp {
            self.metrics.ccp_message_done();
        } else {
            self.metrics.packet_done(answer.reject, latency_us);
            if let Some(code) = answer.reject {
                self.accounts.count_reject(source, code);
            }
        }
        if let Some(c) = &cid {
            tracing::debug!(nodeId = %self.node.config.node_id, component = "handler", event = "packet_response",
                correlationId = %std::str::from_utf8(c).unwrap_or("?"), result = answer.reject.as_ref().map_or("fulfilled", ErrorCode::as_str),
                latency_us);
        }
        answer.ilp
    }

    /// An ILP-over-HTTP request from `peer` (see `crate::http::server`).
    async fn answer_http(&self, peer: String, body: Bytes) -> Bytes {
        let load = self
            .peer_load
            .borrow_mut()
            .entry(peer.clone())
            .or_default()
            .clone();
        self.answer_ilp(&peer, body, None, &load).await
    }

    fn refuse(&self, r: Refusal) -> Answer {
        Answer {
            ilp: r.encode(self.node.identity.triggered_by()),
            reject: Some(r.code),
            ccp: false,
        }
    }

    /// The ILP answer (Fulfill or Reject) for one incoming ILP packet received at `started`.
    async fn process(
        &self,
        source: &str,
        ilp: Bytes,
        cid: Option<&[u8; 16]>,
        started: Instant,
    ) -> Answer {
        let node = &self.node;
        let prepare = match Prepare::decode(ilp) {
            Ok(p) => p,
            Err(e) => {
                return self.refuse(Refusal::new(
                    ErrorCode::F01_INVALID_PACKET,
                    format!("invalid ILP Prepare: {e}"),
                ))
            }
        };
        // Borrowed, not copied: a propagated id must cost nothing when DEBUG logs are off.
        let cid_str = cid.map(|c| std::str::from_utf8(c).unwrap_or("?"));
        if let Some(c) = &cid_str {
            tracing::debug!(nodeId = %node.config.node_id, component = "handler", event = "packet_received",
                correlationId = %c, from = %source, destination = %prepare.destination_str(), amount = prepare.amount());
        }
        let now = Timestamp::now();
        let timing = Timing {
            margin_ms: node.config.expiry_margin_ms as i64,
            max_hold_ms: node.config.max_hold_time_ms as i64,
            send_timeout_ms: node.config.send_timeout_ms as i64,
        };
        let source_is_child = self.peers.borrow().children.contains(source);
        let decision = {
            let mut view = self.routing.borrow_mut();
            rules::decide(&prepare, now, timing, source_is_child, |d| {
                view.lookup(d).map(|r| r.next_hop_arc().clone())
            })
        };
        let (next_hop, expires_at) = match decision {
            Decision::Refuse(r) => return self.refuse(r),
            Decision::Ccp => {
                return match super::ccp::answer(node, source, &prepare) {
                    Ok(ilp) => Answer {
                        ilp,
                        reject: None,
                        ccp: true,
                    },
                    Err(r) => Answer {
                        ccp: true,
                        ..self.refuse(r)
                    },
                }
            }
            Decision::Ildcp => {
                // Known: `handle_message` answers nothing else until it is.
                let Some(own) = node.identity.get() else {
                    return self.refuse(Refusal::new(
                        ErrorCode::T01_PEER_UNREACHABLE,
                        "our address is not known yet",
                    ));
                };
                let p = node.peers.get(source);
                let p = p.as_ref().map(|p| &p.config);
                return Answer {
                    ilp: rules::ildcp_fulfill(
                        &format!("{}.{source}", own.address),
                        p.and_then(|p| p.asset_scale).unwrap_or(own.asset_scale),
                        p.and_then(|p| p.asset_code.as_deref())
                            .unwrap_or(&own.asset_code),
                    ),
                    reject: None,
                    ccp: false,
                };
            }
            Decision::Forward {
                next_hop,
                expires_at,
            } => (next_hop, expires_at),
        };
        if let Some(c) = &cid_str {
            tracing::debug!(nodeId = %node.config.node_id, component = "handler", event = "route_lookup", correlationId = %c, next_hop = %next_hop);
        }
        if *next_hop == *source {
            return self.refuse(Refusal::new(
                ErrorCode::F02_UNREACHABLE,
                "route loops back to the sender",
            ));
        }
        // Amount checks, conversion and both balance reservations, before anything goes out;
        // released when `reserved` is dropped on any path below unless committed.
        let reserved = match self.accounts.reserve(source, &next_hop, prepare.amount()) {
            Ok(r) => r,
            Err(r) => return self.refuse(r),
        };
        let out_amount = reserved.out_amount;
        // A link on this shard, else the shard that has one, else T01 now.
        // Until the outgoing expiry (already capped by the send timeout) and a short grace
        // for a Fulfill still on the wire: we never give up on a Prepare that can still be
        // fulfilled.
        let wait_ms = (expires_at.unix_millis() - now.unix_millis()).max(0) + timing.grace_ms();
        let deadline = started + Duration::from_millis(wait_ms as u64);
        // An ILP-over-HTTP peer: POST the patched Prepare.
        let http = self.peers.borrow().http.get(&*next_hop).cloned();
        if let Some(client) = http {
            let mut body = BytesMut::from(&prepare.as_bytes()[..]);
            if rewrite_prepare(&mut body, out_amount, expires_at).is_err() {
                return self.refuse(Refusal::new(
                    ErrorCode::T00_INTERNAL_ERROR,
                    "cannot rewrite Prepare",
                ));
            }
            let result = client.send(body.freeze(), deadline).await.map(Some);
            return self
                .answer_from_next_hop(result, &prepare, reserved, expires_at)
                .await;
        }
        let via = match self.pick_link(&next_hop) {
            Some(link) => Ok(link),
            None => match node.peers.shard_with_link(&next_hop, self.index) {
                Some(shard) if self.handoff.is_some() => Err(shard),
                _ => {
                    return self.refuse(Refusal::new(
                        ErrorCode::T01_PEER_UNREACHABLE,
                        format!("no live link to next hop {next_hop}"),
                    ))
                }
            },
        };
        // The Prepare goes last in the frame, so it is patched in place there (no copy).
        let prepare_bytes = prepare.as_bytes();
        let frame_len = prepare_bytes.len() + 64;
        let mut frame = match &via {
            Ok(link) => link.frame_buf(frame_len),
            Err(_) => BytesMut::with_capacity(frame_len),
        };
        let ilp_entry = ProtocolData {
            name: b"ilp",
            content_type: CONTENT_OCTET_STREAM,
            data: prepare_bytes,
        };
        match cid {
            Some(c) => btpc::encode(
                &mut frame,
                0,
                BtpBody::Message,
                &[
                    ProtocolData {
                        name: CORRELATION_ENTRY,
                        content_type: btpc::CONTENT_TEXT_UTF8,
                        data: c,
                    },
                    ilp_entry,
                ],
            ),
            None => btpc::encode(&mut frame, 0, BtpBody::Message, &[ilp_entry]),
        }
        let at = frame.len() - prepare_bytes.len();
        if rewrite_prepare(&mut frame[at..], out_amount, expires_at).is_err() {
            return self.refuse(Refusal::new(
                ErrorCode::T00_INTERNAL_ERROR,
                "cannot rewrite Prepare",
            ));
        }
        if let Some(c) = &cid_str {
            tracing::debug!(nodeId = %node.config.node_id, component = "handler", event = "packet_forwarded", correlationId = %c, next_hop = %next_hop, expires_at = %expires_at);
        }
        let result = match via {
            Ok(link) => link.request_until(frame, deadline, out_amount).await,
            Err(shard) => {
                self.hand_over(shard, next_hop, frame, deadline, out_amount)
                    .await
            }
        };
        let result = result.map(|resp| resp.ilp());
        self.answer_from_next_hop(result, &prepare, reserved, expires_at)
            .await
    }

    /// The answer upstream from what the next hop said (its ILP answer, if any) or why it
    /// said nothing: a valid Fulfill commits the reservation (and waits for the journal in
    /// strict mode), a Reject passes through, the rest maps to our Reject.
    async fn answer_from_next_hop(
        &self,
        result: Result<Option<Bytes>, LinkError>,
        prepare: &Prepare,
        reserved: super::accounting::Reserved<'_>,
        expires_at: Timestamp,
    ) -> Answer {
        match result {
            Ok(ilp) => match ilp.map(Packet::decode) {
                Some(Ok(Packet::Fulfill(f))) => {
                    match rules::check_fulfill(prepare.execution_condition(), &f) {
                        Ok(()) => {
                            if let Some(seq) = reserved.commit() {
                                self.until_durable(seq, prepare.expires_at()).await;
                            }
                            Answer {
                                ilp: f.into_bytes(),
                                reject: None,
                                ccp: false,
                            }
                        }
                        Err(r) => self.refuse(r),
                    }
                }
                Some(Ok(Packet::Reject(r))) => Answer {
                    reject: Some(r.code()),
                    ilp: r.into_bytes(),
                    ccp: false,
                },
                _ => self.refuse(Refusal::new(
                    ErrorCode::T00_INTERNAL_ERROR,
                    "next hop answered without a valid Fulfill or Reject",
                )),
            },
            Err(e) => self.refuse(rules::reject_for_link_error(
                &e,
                Timestamp::now(),
                expires_at,
            )),
        }
    }
}

impl Shard {
    /// Strict durability: holds a Fulfill until its balance change is on disk, at most
    /// until the incoming Prepare expires (then it goes anyway, logged: the next hop has
    /// been paid, so withholding the Fulfill would only lose the money).
    async fn until_durable(&self, seq: u64, expires: Timestamp) {
        if !self.accounts.strict() {
            return;
        }
        let left = (expires.unix_millis() - Timestamp::now().unix_millis()).max(0) as u64;
        if !self
            .accounts
            .durable(seq, Duration::from_millis(left))
            .await
        {
            tracing::error!(nodeId = %self.node.config.node_id, component = "accounts", event = "journal_too_slow",
                "a Fulfill went upstream before its balance change was durable");
        }
    }
}

/// Polls `done` every 10 ms until it holds or `bound` passes.
async fn wait_until(bound: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < bound {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// What a Prepare is answered with: the ILP Fulfill or Reject, and the Reject's code.
struct Answer {
    ilp: Bytes,
    reject: Option<ErrorCode>,
    /// A route protocol message (counted apart from forwarded packets).
    ccp: bool,
}
