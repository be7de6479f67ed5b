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
//!
//! Keep-alive runs in a task of its own, so the hot loop arms no timer and reads no clock:
//! every `ping_interval` it checks whether any frame arrived since its last look; if none
//! did, it queues a ping, and if nothing arrives within `pong_timeout` after that, it closes
//! the link. (So a ping goes out after between one and two intervals of silence.)
//!
//! Frame buffers are recycled: the link task keeps a handle to each frame it writes, and once
//! tungstenite has copied it into the socket buffer the handle is the only one left, so the
//! buffer goes back to the link's spare list ([`Link::frame_buf`]). In steady state, frames
//! cost no allocation.
//!
//! A pending request is a slot in the link's map (no channel is allocated per request): the
//! answer is stored in the slot and the waiting task woken; the waiter removes the slot.
//! When the task ends, every request still pending completes at once with
//! [`LinkError::LinkLost`]. Request ids are ours alone: the peer's MESSAGE ids are only echoed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
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
    Ping,
    Close,
}

enum Slot {
    Waiting(Option<Waker>),
    Done(Result<BtpPacket, LinkError>),
}

struct Pending {
    at: Instant,
    slot: Slot,
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
    /// Set by every incoming frame, cleared by the keep-alive task.
    heard: Cell<bool>,
    /// Written frames' buffers, ready for reuse.
    spare: RefCell<Vec<BytesMut>>,
    deadlines: Rc<Deadlines>,
    cfg: LinkConfig,
}

impl LinkInner {
    /// Completes request `id` if it is still waiting; returns whether it was.
    fn complete(&self, id: u32, result: Result<BtpPacket, LinkError>) -> bool {
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.get_mut(&id) else {
            return false;
        };
        let Slot::Waiting(waker) = &mut p.slot else {
            return false;
        };
        let waker = waker.take();
        p.slot = Slot::Done(result);
        drop(pending);
        self.deadlines.done();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    pub(crate) fn is_pending(&self, id: u32, at: Instant) -> bool {
        self.pending
            .borrow()
            .get(&id)
            .is_some_and(|p| p.at == at && matches!(p.slot, Slot::Waiting(_)))
    }

    /// The deadline for request `id` (set at `at`) passed.
    pub(crate) fn expire(&self, id: u32, at: Instant) {
        if self.is_pending(id, at) {
            self.complete(id, Err(LinkError::Timeout));
        }
    }

    fn fail_all(&self) {
        let waiting: Vec<u32> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, p)| matches!(p.slot, Slot::Waiting(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.complete(id, Err(LinkError::LinkLost));
        }
    }
}

/// Removes a request's slot when its waiter goes away, answered or not.
struct SlotGuard<'a> {
    inner: &'a LinkInner,
    id: u32,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let removed = self.inner.pending.borrow_mut().remove(&self.id);
        if let Some(Pending {
            slot: Slot::Waiting(_),
            ..
        }) = removed
        {
            // Given up before an answer: it no longer counts as live.
            self.inner.deadlines.done();
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
            heard: Cell::new(true),
            spare: RefCell::new(Vec::new()),
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

    /// An empty buffer for a frame to send on this link (recycled when there is one).
    pub fn frame_buf(&self, capacity: usize) -> BytesMut {
        match self.0.spare.borrow_mut().pop() {
            Some(mut b) => {
                b.reserve(capacity);
                b
            }
            None => {
                let mut b = BytesMut::with_capacity(capacity.max(MIN_FRAME_BUF));
                // Make it a shared buffer now (one allocation, once): then handing it to the
                // socket as `Bytes`, keeping a clone and taking it back costs no allocation.
                drop(b.split_to(0));
                b
            }
        }
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
        frame: BytesMut,
        deadline: Option<Instant>,
    ) -> Result<BtpPacket, LinkError> {
        let limit = Instant::now() + self.0.cfg.send_timeout;
        self.request_until(frame, deadline.map_or(limit, |d| d.min(limit)))
            .await
    }

    /// As [`Link::request`], with the final deadline computed by the caller (who has already
    /// applied the send timeout); saves reading the clock.
    pub async fn request_until(
        &self,
        mut frame: BytesMut,
        at: Instant,
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
        // Register before queueing: the answer may be read before this task runs again.
        inner.pending.borrow_mut().insert(
            id,
            Pending {
                at,
                slot: Slot::Waiting(None),
            },
        );
        inner.deadlines.add(at, Rc::downgrade(inner), id);
        let _guard = SlotGuard { inner, id };
        // A full queue makes the caller wait (back-pressure); the deadline still applies.
        if inner
            .out
            .send(Outbound::Frame(frame.freeze()))
            .await
            .is_err()
        {
            return Err(LinkError::LinkLost);
        }
        std::future::poll_fn(|cx| {
            let mut pending = inner.pending.borrow_mut();
            let Some(p) = pending.get_mut(&id) else {
                return Poll::Ready(Err(LinkError::LinkLost));
            };
            match &mut p.slot {
                Slot::Waiting(w) => {
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                    Poll::Pending
                }
                Slot::Done(_) => match pending.remove(&id) {
                    Some(Pending {
                        slot: Slot::Done(r),
                        ..
                    }) => Poll::Ready(r),
                    _ => Poll::Ready(Err(LinkError::LinkLost)),
                },
            }
        })
        .await
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
}

/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// Smallest new frame buffer (a typical Prepare frame fits, so recycled buffers rarely grow).
const MIN_FRAME_BUF: usize = 512;

/// Most spare buffers a link keeps, and the largest one it keeps (bigger ones, e.g. after a
/// long Reject, are freed): at most 1 MiB held per link.
const MAX_SPARE: usize = 256;
const MAX_SPARE_CAPACITY: usize = 4096;

/// The keep-alive task: see the module doc. Ends when the link does.
async fn keep_alive(
    link: std::rc::Weak<LinkInner>,
    ping_interval: Duration,
    pong_timeout: Duration,
) {
    loop {
        glommio::timer::sleep(ping_interval).await;
        let Some(inner) = link.upgrade().filter(|i| !i.closed.get()) else {
            return;
        };
        if inner.heard.replace(false) {
            continue;
        }
        let _ = inner.out.try_send(Outbound::Ping);
        drop(inner);
        glommio::timer::sleep(pong_timeout).await;
        let Some(inner) = link.upgrade().filter(|i| !i.closed.get()) else {
            return;
        };
        if !inner.heard.replace(false) {
            tracing::debug!(nodeId = %inner.cfg.node_id, component = "btp_link", event = "pong_timeout", peer = %inner.peer_id);
            if inner.out.try_send(Outbound::Close).is_ok() {
                return;
            }
        }
    }
}

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
    glommio::spawn_local(keep_alive(
        Rc::downgrade(&inner),
        inner.cfg.ping_interval,
        inner.cfg.pong_timeout,
    ))
    .detach();
    'outer: loop {
        // `Link::close` also queues a Close, but a full queue may not take it.
        if inner.closed.get() {
            let _ = ws.flush().await;
            break;
        }
        let ev = futures_lite::future::or(async { Event::In(ws.next().await) }, async {
            Event::Out(rx.recv().await)
        })
        .await;
        match ev {
            Event::In(None) | Event::In(Some(Err(_))) => break,
            Event::In(Some(Ok(msg))) => {
                inner.heard.set(true);
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
                    let (msg, written) = match item {
                        Outbound::Frame(f) => (Message::Binary(f.clone()), Some(f)),
                        Outbound::Ping => (Message::Ping(Bytes::new()), None),
                        Outbound::Close => {
                            let _ = ws.flush().await;
                            break 'outer;
                        }
                    };
                    if ws.feed(msg).await.is_err() {
                        break 'outer;
                    }
                    // tungstenite copied the frame: ours is the last handle, reuse the buffer.
                    if let Some(Ok(mut buf)) = written.map(Bytes::try_into_mut) {
                        let mut spare = inner.spare.borrow_mut();
                        if spare.len() < MAX_SPARE && buf.capacity() <= MAX_SPARE_CAPACITY {
                            buf.clear();
                            spare.push(buf);
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
            let id = packet.request_id();
            let result = match packet.error() {
                Some(e) => Err(LinkError::Remote {
                    code: String::from_utf8_lossy(e.code).into_owned(),
                    message: String::from_utf8_lossy(e.data).into_owned(),
                }),
                None => Ok(packet),
            };
            if !link.0.complete(id, result) {
                tracing::debug!(nodeId = %link.0.cfg.node_id, component = "btp_link", event = "unknown_response", peer = %link.peer_id(), request_id = id);
            }
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
