//! One shard's runtime: its links (by peer), the deadline driver, the routing view, the
//! peer view, metrics, and their lifecycle. Everything here lives on one glommio executor
//! thread (`Rc`, `RefCell`, no locks). The packet path itself is in `forward` (and its
//! cross-shard fallback in `handover`).
//!
//! Tasks per shard: the accept loop, one dial loop per peer with a `url` (the peer's home
//! shard dials it; the other shards too only if the peer's auth answer offers more links, or
//! `links: N` says so — a peer that keeps one socket per account, like the JS reference,
//! would evict all but one), one task per link (which also runs the packets it reads), the
//! pooled workers of `forward` for packets that must wait, the deadline driver, the peer
//! watcher (runtime add/remove), the accounts task (journal writes, lease returns; only when
//! a peer has `balance`) and one receiver per other shard for packets handed over.
//!
//! Stopping ([`Shard::run`]): new Prepares are answered T03 at once; in-flight ones get until
//! `drainTimeoutMs`; then every request still pending on this shard's links is failed (so its
//! Prepare is answered T01/R00), and only once every Prepare is answered and every queued
//! answer written are the links closed.

use ahash::AHashMap as HashMap;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::net::{TcpListener, TcpStream};
use slab::Slab;

use super::accounting::ShardAccounts;
use super::connector::NodeShared;
use super::forward::{Relayed, Source, Workers};
use super::handover::Handoff;
use super::metrics::ShardMetrics;
use super::peers::PeerEntry;
use crate::btp::auth::Credential;
use crate::btp::client::{dial_with_ca, parse_url};
use crate::btp::deadlines::Deadlines;
use crate::btp::link::{self, AnswerSink, Link, LinkConfig};
use crate::btp::server::accept_peer;
use crate::btp::throttle::AuthThrottle;
use crate::btp::LinkError;
use crate::http::client::HttpPeerClient;
use crate::routing::RoutingView;

/// Keep-alive connections each shard keeps at most to one ILP-over-HTTP peer (HTTP/1.1 does
/// not pipeline, so this bounds the requests in flight to it per shard; more → T02).
const HTTP_CONNECTIONS_PER_PEER: usize = 64;

/// The window of `maxAuthFailuresPerIp`.
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// A live link and the peer entry it was counted on.
struct PeerLink {
    link: Link,
    entry: Arc<PeerEntry>,
}

/// What the shard knows about the peer set, rebuilt when its generation changes.
#[derive(Default)]
pub(super) struct PeerView {
    generation: Option<u64>,
    /// Tokens of peers that dial us.
    creds: Rc<Vec<Credential>>,
    /// Peers this shard runs a dial loop for.
    dialing: Vec<Arc<PeerEntry>>,
    /// Tokens of every peer, for ILP-over-HTTP requests (the token names the peer).
    http_creds: Rc<Vec<Credential>>,
    /// This shard's client for each ILP-over-HTTP peer.
    pub(super) http: HashMap<String, Rc<HttpPeerClient>>,
}

pub struct Shard {
    pub index: usize,
    /// This shard, as the sink of its relayed Prepares' answers.
    me: Weak<Shard>,
    pub(super) node: Arc<NodeShared>,
    pub(super) routing: RefCell<RoutingView>,
    links: RefCell<HashMap<String, Vec<PeerLink>>>,
    pub(super) peers: RefCell<PeerView>,
    deadlines: Rc<Deadlines>,
    pub(super) metrics: Arc<ShardMetrics>,
    link_cfg: LinkConfig,
    pub(super) handoff: Option<Senders<Handoff>>,
    /// Prepares that must wait for their answer (see `forward`).
    pub(super) workers: Workers,
    /// Prepares relayed on a link of this shard, awaiting their answer (see `forward`).
    pub(super) relayed: RefCell<Slab<Relayed>>,
    /// Per source peer on this shard (shared by the peer's links and HTTP requests).
    sources: RefCell<HashMap<String, Rc<Source>>>,
    /// Accepted connections not yet authenticated.
    unauthenticated: Cell<usize>,
    /// Failed logins per remote address.
    auth_throttle: RefCell<AuthThrottle>,
    /// Amounts, limits and balances (see `accounting`).
    pub(super) accounts: Rc<ShardAccounts>,
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
        let shard = Rc::new_cyclic(|me| Shard {
            index,
            me: me.clone(),
            routing: RefCell::new(node.routing.view()),
            links: RefCell::new(HashMap::default()),
            peers: RefCell::new(PeerView::default()),
            deadlines: Deadlines::new(),
            metrics: node.metrics[index].clone(),
            link_cfg,
            handoff,
            workers: Workers::new(),
            relayed: RefCell::new(Slab::new()),
            accounts: Rc::new(ShardAccounts::new(node.clone(), index)),
            node,
            sources: RefCell::new(HashMap::default()),
            unauthenticated: Cell::new(0),
            auth_throttle: RefCell::new(auth_throttle),
        });
        shard.refresh_peers();
        shard
    }

    /// Re-reads the peer set if it changed: credentials, dial loops for new peers
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

    /// Watches the peer set until the node stops: sleeps until `add_peer`/`remove_peer` (or
    /// a stop) signal a change, with no timer.
    async fn watch_peers(self: Rc<Self>) {
        let mut seen = self.node.changed.seq();
        while !self.stopping() {
            self.refresh_peers();
            seen = self.node.changed.changed(seen).await;
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.node.stopping.load(Ordering::Relaxed)
    }

    async fn until_stopping(&self) {
        let mut seen = self.node.changed.seq();
        while !self.stopping() {
            seen = self.node.changed.changed(seen).await;
        }
    }

    /// Every incoming MESSAGE becomes a job for the shard's workers; a worker is added only
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
        if let Some(receivers) = handed {
            self.serve_handed(receivers);
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
        ws: crate::btp::socket::Socket<S>,
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
        let signal = &self.node.changed;
        let mut seen = signal.seq();
        while !done() {
            // Only the peer's home shard dials until the peer says it takes more links
            // (a peer that keeps one socket per account would evict the others' links); the
            // home shard signals when it learns that.
            if !entry.shard_dials(self.index) {
                seen = signal.changed(seen).await;
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
                        signal.notify();
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
            // The backoff, cut short by a stop or the peer's removal.
            let until = Instant::now() + Duration::from_millis(delay);
            while Instant::now() < until && !done() {
                let left = until.saturating_duration_since(Instant::now());
                if let Some(now) = crate::alarm::within(left, signal.changed(seen)).await {
                    seen = now;
                }
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
                crate::alarm::sleep(Duration::from_millis(every)).await;
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
                    crate::alarm::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }

    pub(super) fn pick_link(&self, peer: &str) -> Option<Link> {
        let links = self.links.borrow();
        links
            .get(peer)?
            .iter()
            .map(|l| &l.link)
            .filter(|l| l.is_open())
            .min_by_key(|l| l.pending_count())
            .cloned()
    }

    /// What the packet path keeps about `peer` as a source on this shard.
    pub(super) fn source(&self, peer: &str) -> Rc<Source> {
        self.sources
            .borrow_mut()
            .entry(peer.to_owned())
            .or_default()
            .clone()
    }

    /// Where relayed Prepares' answers go (see `forward`).
    pub(super) fn sink(&self) -> Weak<dyn AnswerSink> {
        self.me.clone()
    }
}

/// Polls `done` every 10 ms until it holds or `bound` passes.
async fn wait_until(bound: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < bound {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}
