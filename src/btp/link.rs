//! A [`Link`]: one authenticated BTP WebSocket, whichever side dialled.
//!
//! One task ([`run`]) owns the socket. Everyone else talks to it through a bounded queue of
//! encoded frames ([`Link::request`], [`Link::send`]). The task handles, in a loop, whichever
//! comes first:
//! 1. an incoming frame: a RESPONSE/ERROR completes *our* pending request with that id
//!    (unknown ids are dropped and logged); a MESSAGE goes to the [`IncomingHandler`]; a
//!    TRANSFER is refused (no settlement here); an unparsable request gets a BTP ERROR, any
//!    other unparsable frame closes the link;
//! 2. queued outgoing frames: fed to the socket as a batch, then flushed once;
//! 3. the keep-alive tick: ping after `ping_interval` of silence; no pong (or any frame)
//!    within `pong_timeout` closes the link.
//!
//! When the task ends, every request still pending completes at once with
//! [`LinkError::LinkLost`]. Request ids are ours alone: the peer's MESSAGE ids are only echoed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_util::{SinkExt, StreamExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::deadlines::Deadlines;
use super::LinkError;
use crate::codec::btp::{self, set_request_id, BtpType};
use crate::codec::{BtpPacket, GeneralizedTime, Timestamp};

/// Per-link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Our node id, for log lines.
    pub node_id: std::sync::Arc<str>,
    /// Longest wait for an answer to a request (the caller may pass an earlier deadline).
    pub send_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Frames waiting to be written.
    pub queue_capacity: usize,
    /// Our requests in flight on this link; more are refused with [`LinkError::QueueFull`]
    /// (a full write queue only makes the caller wait).
    pub max_pending: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            node_id: "".into(),
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            queue_capacity: 4096,
            max_pending: 65_536,
        }
    }
}

/// Called for every MESSAGE that arrives on a link. It must not block: spawn the work.
pub type IncomingHandler = Rc<dyn Fn(Link, BtpPacket)>;

/// What the link task writes.
pub enum Outbound {
    Frame(Bytes),
    Close,
}

struct Pending {
    at: Instant,
    tx: oneshot::Sender<Result<BtpPacket, LinkError>>,
}

pub(crate) struct LinkInner {
    id: u64,
    peer_id: Rc<str>,
    out: LocalSender<Outbound>,
    /// Our requests awaiting RESPONSE/ERROR, by request id.
    pending: RefCell<HashMap<u32, Pending, ahash::RandomState>>,
    next_id: Cell<u32>,
    /// Set when the link task ends; requests are refused from then on.
    closed: Cell<bool>,
    deadlines: Rc<Deadlines>,
    cfg: LinkConfig,
}

impl LinkInner {
    fn take_pending(&self, id: u32) -> Option<Pending> {
        let p = self.pending.borrow_mut().remove(&id);
        if p.is_some() {
            self.deadlines.done();
        }
        p
    }

    pub(crate) fn is_pending(&self, id: u32, at: Instant) -> bool {
        self.pending.borrow().get(&id).is_some_and(|p| p.at == at)
    }

    /// The deadline for request `id` (set at `at`) passed.
    pub(crate) fn expire(&self, id: u32, at: Instant) {
        if !self.is_pending(id, at) {
            return;
        }
        if let Some(p) = self.take_pending(id) {
            let _ = p.tx.send(Err(LinkError::Timeout));
        }
    }

    fn fail_all(&self) {
        let drained: Vec<Pending> = self.pending.borrow_mut().drain().map(|(_, p)| p).collect();
        for p in drained {
            self.deadlines.done();
            let _ = p.tx.send(Err(LinkError::LinkLost));
        }
    }
}

/// A cheap, shard-local handle to a link.
#[derive(Clone)]
pub struct Link(Rc<LinkInner>);

static NEXT_LINK_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Link {
    /// A new link handle and the receiving end of its outgoing queue (for [`run`]).
    pub fn new(
        peer_id: &str,
        cfg: LinkConfig,
        deadlines: Rc<Deadlines>,
    ) -> (Link, LocalReceiver<Outbound>) {
        let (out, rx) = local_channel::new_bounded(cfg.queue_capacity);
        let inner = LinkInner {
            id: NEXT_LINK_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            peer_id: peer_id.into(),
            out,
            pending: RefCell::new(HashMap::default()),
            next_id: Cell::new(1),
            closed: Cell::new(false),
            deadlines,
            cfg,
        };
        (Link(Rc::new(inner)), rx)
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn peer_id(&self) -> &str {
        &self.0.peer_id
    }

    pub fn is_open(&self) -> bool {
        !self.0.closed.get()
    }

    pub fn pending_count(&self) -> usize {
        self.0.pending.borrow().len()
    }

    fn alloc_id(&self) -> u32 {
        let pending = self.0.pending.borrow();
        loop {
            let id = self.0.next_id.get();
            self.0.next_id.set(id.wrapping_add(1));
            if !pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Sends a request frame (its request id is overwritten with one of ours) and waits for
    /// the answer until `deadline` or the send timeout, whichever is earlier.
    ///
    /// A BTP ERROR answer becomes [`LinkError::Remote`].
    pub async fn request(
        &self,
        mut frame: BytesMut,
        deadline: Option<Instant>,
    ) -> Result<BtpPacket, LinkError> {
        let inner = &self.0;
        if inner.closed.get() {
            return Err(LinkError::LinkLost);
        }
        if inner.pending.borrow().len() >= inner.cfg.max_pending {
            return Err(LinkError::QueueFull);
        }
        let id = self.alloc_id();
        set_request_id(&mut frame, id);
        let limit = Instant::now() + inner.cfg.send_timeout;
        let at = deadline.map_or(limit, |d| d.min(limit));
        let (tx, rx) = oneshot::channel();
        // Register before queueing: the answer may be read before this task runs again.
        inner.pending.borrow_mut().insert(id, Pending { at, tx });
        inner.deadlines.add(at, Rc::downgrade(inner), id);
        // A full queue makes the caller wait (back-pressure); the deadline still applies.
        if inner
            .out
            .send(Outbound::Frame(frame.freeze()))
            .await
            .is_err()
        {
            inner.take_pending(id);
            return Err(LinkError::LinkLost);
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(LinkError::LinkLost),
        }
    }

    /// Queues a frame (an answer to the peer's request), waiting for room in the queue.
    pub async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        if self.0.closed.get() {
            return Err(LinkError::LinkLost);
        }
        self.0
            .out
            .send(Outbound::Frame(frame))
            .await
            .map_err(|_| LinkError::LinkLost)
    }

    /// Queues a frame without waiting; [`LinkError::QueueFull`] when the queue has no room.
    pub fn try_send(&self, frame: Bytes) -> Result<(), LinkError> {
        if self.0.closed.get() {
            return Err(LinkError::LinkLost);
        }
        self.0
            .out
            .try_send(Outbound::Frame(frame))
            .map_err(|e| match e {
                glommio::GlommioError::Closed(_) => LinkError::LinkLost,
                _ => LinkError::QueueFull,
            })
    }

    /// Asks the link task to close the socket.
    pub fn close(&self) {
        let _ = self.0.out.try_send(Outbound::Close);
        self.0.closed.set(true);
    }
}

fn error_frame(request_id: u32, code: &[u8; 3], data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    btp::encode_error(
        &mut out,
        request_id,
        code,
        GeneralizedTime::from(Timestamp::now()),
        data,
    );
    out.freeze()
}

enum Event {
    In(Option<Result<Message, async_tungstenite::tungstenite::Error>>),
    Out(Option<Outbound>),
    Tick,
}

/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// The link task: owns `ws` until the link ends. Returns when the socket closes, fails, the
/// keep-alive times out, or [`Link::close`] is called.
pub async fn run<S>(
    mut ws: WebSocketStream<S>,
    link: Link,
    rx: LocalReceiver<Outbound>,
    handler: IncomingHandler,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let inner = link.0.clone();
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    'outer: loop {
        let tick_at = match ping_sent {
            Some(t) => t + inner.cfg.pong_timeout,
            None => last_heard + inner.cfg.ping_interval,
        };
        let wait = tick_at.saturating_duration_since(Instant::now());
        let ev = futures_lite::future::or(
            futures_lite::future::or(async { Event::In(ws.next().await) }, async {
                Event::Out(rx.recv().await)
            }),
            async {
                glommio::timer::sleep(wait).await;
                Event::Tick
            },
        )
        .await;
        match ev {
            Event::In(None) | Event::In(Some(Err(_))) => break,
            Event::In(Some(Ok(msg))) => {
                last_heard = Instant::now();
                ping_sent = None;
                match msg {
                    Message::Binary(data) => {
                        if let Some(reply) = handle_frame(&link, data, &handler) {
                            if reply.is_empty() || ws.send(Message::Binary(reply)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Message::Ping(_) => {
                        // tungstenite queued the pong; get it out.
                        if ws.flush().await.is_err() {
                            break;
                        }
                    }
                    Message::Close(_) => break,
                    Message::Pong(_) | Message::Text(_) | Message::Frame(_) => {}
                }
            }
            Event::Out(None) => break,
            Event::Out(Some(first)) => {
                let mut next = Some(first);
                let mut fed = 0;
                while let Some(item) = next.take() {
                    match item {
                        Outbound::Frame(f) => {
                            if ws.feed(Message::Binary(f)).await.is_err() {
                                break 'outer;
                            }
                        }
                        Outbound::Close => {
                            let _ = ws.flush().await;
                            break 'outer;
                        }
                    }
                    fed += 1;
                    if fed < MAX_BATCH {
                        next = futures_lite::future::poll_once(rx.recv()).await.flatten();
                    }
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            Event::Tick => {
                if ping_sent.is_some() {
                    tracing::debug!(
                        nodeId = %inner.cfg.node_id,
                        component = "btp_link",
                        event = "pong_timeout",
                        peer = %inner.peer_id
                    );
                    break;
                }
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
                ping_sent = Some(Instant::now());
            }
        }
    }
    inner.closed.set(true);
    inner.fail_all();
    let _ = ws.close(None).await;
}

/// Handles one incoming binary frame; returns a frame to write at once, an empty `Bytes` to
/// close the link, or `None`.
fn handle_frame(link: &Link, data: Bytes, handler: &IncomingHandler) -> Option<Bytes> {
    let raw_type = data.first().copied();
    let raw_id = data
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let packet = match BtpPacket::decode(data) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(nodeId = %link.0.cfg.node_id, component = "btp_link", event = "btp_error", peer = %link.peer_id(), error = %e, "unparsable BTP frame");
            return match (raw_type, raw_id) {
                (Some(6 | 7), Some(id)) => Some(error_frame(id, b"F01", e.to_string().as_bytes())),
                _ => Some(Bytes::new()),
            };
        }
    };
    match packet.kind() {
        BtpType::Response | BtpType::Error => {
            let Some(p) = link.0.take_pending(packet.request_id()) else {
                tracing::debug!(nodeId = %link.0.cfg.node_id, component = "btp_link", event = "unknown_response", peer = %link.peer_id(), request_id = packet.request_id());
                return None;
            };
            let result = match packet.error() {
                Some(e) => Err(LinkError::Remote {
                    code: String::from_utf8_lossy(e.code).into_owned(),
                    message: String::from_utf8_lossy(e.data).into_owned(),
                }),
                None => Ok(packet),
            };
            let _ = p.tx.send(result);
            None
        }
        BtpType::Message => {
            handler(link.clone(), packet);
            None
        }
        BtpType::Transfer => Some(error_frame(
            packet.request_id(),
            b"F00",
            b"settlement (TRANSFER) is not supported",
        )),
    }
}
