//! A [`Link`]: one authenticated BTP WebSocket, whichever side dialled.
//!
//! One task ([`run`]) owns the socket. Everyone else talks to it through the link's outgoing
//! queue ([`Link::request`], [`Link::send`]): a plain `VecDeque` on this shard, with the link
//! task's waker beside it, so closing a link or giving up on a request never depends on a
//! channel waking someone. The task handles, in a loop, whichever comes first:
//! 1. an incoming frame: a RESPONSE/ERROR completes *our* pending request with that id
//!    (unknown ids are dropped; a late Fulfill is logged with its amount and counted); a
//!    MESSAGE goes to the [`IncomingHandler`]; a TRANSFER is refused (no settlement here); an
//!    unparsable request gets a BTP ERROR, any other unparsable frame closes the link;
//! 2. queued outgoing frames: fed to the socket as a batch, then flushed once. A request
//!    frame whose request is no longer pending (answered, timed out) is not written.
//!
//! Invariants (every one bounded, whatever the peer does):
//! - **No write outlives `write_timeout`**: a feed or flush that makes no progress for that
//!   long kills the link, and link death fails every pending and queued request at once
//!   ([`LinkError::LinkLost`]).
//! - **Our requests never wait for room**: beyond `queue_capacity` unwritten requests or
//!   `max_pending` in flight, a request fails at once with [`LinkError::QueueFull`].
//! - **A peer cannot make us buffer without bound**: the task stops reading the socket while
//!   the peer's requests handed on and not yet answered on the wire exceed
//!   `max_unanswered_in`, or unwritten bytes exceed `max_queued_bytes` (back-pressure: TCP
//!   then slows the peer down). Answers ([`Link::send`]) are therefore always accepted.
//! - **Closing always works**: [`Link::close`] sets a flag and wakes the task, which writes
//!   what is queued (bounded by the write timeout) and closes; keep-alive closes a link that
//!   stops answering pings the same way.
//!
//! Keep-alive runs in one sweeper task per shard thread for all its links (the hot loop arms
//! no timer and reads no clock; an idle shard wakes once per tick, not once per link): once
//! per tick (≤ 1 s) it looks whether any frame arrived on each link since its last look; after
//! `ping_interval` of silence it sends a ping, and if nothing arrives within `pong_timeout`
//! after that, it closes the link. It also keeps [`Link::idle_for`] (coarse, tick-grained).
//!
//! The socket ([`Socket`]) hands over every message one read brought; the task handles them
//! all, then writes what they produced for this peer before reading again, so a peer that
//! keeps sending cannot hold back its own answers; and after [`FRAMES_PER_TURN`] frames
//! without once waiting for its socket it yields, so such a peer cannot keep the shard's
//! other links (its next hops among them) from running.
//!
//! Frame buffers are recycled: the link task keeps a handle to each frame it writes, and once
//! the socket has copied it into its write buffer the handle is the only one left, so the
//! buffer goes back to the link's spare list ([`Link::frame_buf`]). In steady state, frames
//! cost no allocation.
//!
//! A pending request is a slot in the link's map (no channel is allocated per request). Either
//! a task awaits it ([`Link::request_until`]: the answer is stored in the slot and the task
//! woken; the waiter removes the slot), or nobody does ([`Link::relay`]: the slot names an
//! [`AnswerSink`] and a key, and whichever task resolves it, by answer, deadline or link
//! failure, removes it and calls the sink, exactly once). Request ids are ours alone: the
//! peer's MESSAGE ids are only echoed.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};

use super::deadlines::{Deadlines, Expire, Ticket};
use super::socket::{Incoming, Socket, SocketError};
use super::{within, LinkError};
use crate::codec::btp::{self, set_request_id, BtpType};
use crate::codec::{BtpPacket, GeneralizedTime, Packet, Timestamp};

/// Counters shared by every link of a node (read by `/metrics`).
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Fulfills that arrived after we had stopped waiting for them.
    pub late_fulfills: AtomicU64,
    /// Amount (in the next hop's units) of those Fulfills: what the late answers put at risk.
    pub late_fulfill_amount: AtomicU64,
    /// Links killed because a write made no progress within the write timeout.
    pub write_timeouts: AtomicU64,
    /// Frames from peers that could not be parsed.
    pub bad_frames: AtomicU64,
    /// Connections opened to ILP-over-HTTP peers.
    pub http_connections_opened: Arc<AtomicU64>,
}

/// Per-link settings.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Our node id, for log lines.
    pub node_id: Arc<str>,
    /// Longest wait for an answer to a request (the caller may pass an earlier deadline).
    pub send_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// A write (feed or flush) that makes no progress this long kills the link.
    pub write_timeout: Duration,
    /// Our request frames waiting to be written; more (or more than `max_queued_bytes`
    /// unwritten) are refused with [`LinkError::QueueFull`].
    pub queue_capacity: usize,
    /// Our requests in flight on this link; more are refused with [`LinkError::QueueFull`].
    pub max_pending: usize,
    /// The peer's requests handed to the handler and not yet answered on the wire, beyond
    /// which the link stops reading.
    pub max_unanswered_in: usize,
    /// Unwritten bytes beyond which the link stops reading.
    pub max_queued_bytes: usize,
    pub counters: Arc<LinkCounters>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            node_id: "".into(),
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(5),
            queue_capacity: 4096,
            max_pending: 65_536,
            max_unanswered_in: usize::MAX,
            max_queued_bytes: 16 << 20,
            counters: Arc::default(),
        }
    }
}

/// Called for every MESSAGE that arrives on a link, on the link's task. It must not wait:
/// it answers at once, or forwards with [`Link::relay`], or hands the work to another task.
/// Whoever ends up with the answer sends it with [`Link::send`].
pub type IncomingHandler = Rc<dyn Fn(&Link, BtpPacket)>;

/// Takes the answer to a request sent with [`Link::relay`]: called by whichever task learns
/// it (the link task that read the RESPONSE, the deadline driver, a link failing), with the
/// key the request was relayed under. It must not wait.
pub trait AnswerSink {
    fn answered(&self, key: usize, result: Result<BtpPacket, LinkError>);
}

/// What waits in the outgoing queue.
enum Outbound {
    /// Our request `id` (written only while it is still pending).
    Request { frame: Bytes, id: u32, at: Instant },
    /// An answer to one of the peer's requests.
    Answer(Bytes),
    /// Any other frame (BTP ERROR for a bad frame, TRANSFER refusal).
    Other(Bytes),
}

impl Outbound {
    fn len(&self) -> usize {
        match self {
            Outbound::Request { frame, .. } | Outbound::Answer(frame) | Outbound::Other(frame) => {
                frame.len()
            }
        }
    }
}

enum Slot {
    /// A task awaits the answer ([`Link::request_until`]).
    Waiting(Option<Waker>),
    /// Boxed so that every slot, relayed ones included, stays small (a decoded packet is
    /// ~170 bytes); only awaited requests, which are off the relay path, pay for the box.
    Done(Box<Result<BtpPacket, LinkError>>),
    /// The answer goes to `sink` under `key` ([`Link::relay`]); nobody waits.
    Relayed {
        sink: std::rc::Weak<dyn AnswerSink>,
        key: usize,
    },
}

impl Slot {
    /// Still waiting for its answer.
    fn open(&self) -> bool {
        !matches!(self, Slot::Done(_))
    }
}

struct Pending {
    at: Instant,
    /// Its deadline's record, dropped when it is answered.
    ticket: Ticket,
    /// The Prepare's amount, reported if its Fulfill comes after we gave up.
    amount: u64,
    slot: Slot,
}

/// Requests we gave up on, remembered so a late Fulfill can be reported with its amount.
const LATE_MEMORY: usize = 1024;

pub(crate) struct LinkInner {
    id: u64,
    peer_id: Rc<str>,
    /// Frames waiting for the link task.
    queue: RefCell<VecDeque<Outbound>>,
    queued_bytes: Cell<usize>,
    queued_requests: Cell<usize>,
    /// The link task, parked until there is something to write (or to read again), or
    /// until its write is aborted.
    task: RefCell<Option<Waker>>,
    /// A socket write is in progress / writes completed so far (read by the watchdog in
    /// the keep-alive task) / the watchdog gave up on the write in progress.
    writing: Cell<bool>,
    writes_done: Cell<u64>,
    write_aborted: Cell<bool>,
    ping_wanted: Cell<bool>,
    /// The peer's requests handed to the handler and not yet answered on the wire.
    unanswered_in: Cell<usize>,
    /// Our requests awaiting RESPONSE/ERROR, by request id.
    pending: RefCell<HashMap<u32, Pending, ahash::RandomState>>,
    /// Requests that timed out (id, amount), most recent last.
    given_up: RefCell<VecDeque<(u32, u64)>>,
    next_id: Cell<u32>,
    /// Close requested: no new requests; the task writes what is queued and ends.
    closing: Cell<bool>,
    /// Set when the link task ends.
    closed: Cell<bool>,
    /// Set by every incoming frame, cleared by the keep-alive task.
    heard: Cell<bool>,
    /// When keep-alive last saw a frame (tick-grained).
    last_heard: Cell<Instant>,
    /// Written frames' buffers, ready for reuse.
    spare: RefCell<Vec<BytesMut>>,
    /// Last time a bad frame was logged, and how many were not logged since.
    bad_frame_log: Cell<(Option<Instant>, u64)>,
    deadlines: Rc<Deadlines>,
    cfg: LinkConfig,
}

impl LinkInner {
    /// Completes request `id` if it is still waiting; else hands `result` back.
    fn complete(
        &self,
        id: u32,
        result: Result<BtpPacket, LinkError>,
    ) -> Option<Result<BtpPacket, LinkError>> {
        let mut pending = self.pending.borrow_mut();
        let Entry::Occupied(mut p) = pending.entry(id) else {
            return Some(result);
        };
        match &mut p.get_mut().slot {
            Slot::Done(_) => Some(result),
            Slot::Waiting(waker) => {
                let waker = waker.take();
                let p = p.get_mut();
                p.slot = Slot::Done(Box::new(result));
                let ticket = p.ticket;
                drop(pending);
                self.deadlines.done(ticket);
                if let Some(w) = waker {
                    w.wake();
                }
                None
            }
            Slot::Relayed { .. } => {
                let Pending {
                    slot: Slot::Relayed { sink, key },
                    ticket,
                    ..
                } = p.remove()
                else {
                    return None;
                };
                // No borrow held: the sink writes to other links (or this one).
                drop(pending);
                self.deadlines.done(ticket);
                if let Some(sink) = sink.upgrade() {
                    sink.answered(key, result);
                }
                None
            }
        }
    }

    fn fail_all(&self) {
        let waiting: Vec<u32> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, p)| p.slot.open())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            let _ = self.complete(id, Err(LinkError::LinkLost));
        }
    }

    fn wake_task(&self) {
        if let Some(w) = self.task.borrow_mut().take() {
            w.wake();
        }
    }

    fn push(&self, item: Outbound) {
        self.queued_bytes.set(self.queued_bytes.get() + item.len());
        if matches!(item, Outbound::Request { .. }) {
            self.queued_requests.set(self.queued_requests.get() + 1);
        }
        self.queue.borrow_mut().push_back(item);
        self.wake_task();
    }

    fn pop(&self) -> Option<Outbound> {
        let item = self.queue.borrow_mut().pop_front()?;
        self.queued_bytes
            .set(self.queued_bytes.get().saturating_sub(item.len()));
        if matches!(item, Outbound::Request { .. }) {
            self.queued_requests
                .set(self.queued_requests.get().saturating_sub(1));
        }
        Some(item)
    }

    /// Whether the link task may read the next frame now (see the module doc).
    fn may_read(&self) -> bool {
        !self.closing.get()
            && self.unanswered_in.get() < self.cfg.max_unanswered_in
            && self.queued_bytes.get() < self.cfg.max_queued_bytes
    }

    /// A response arrived for an id nobody waits for: report it if it is a late Fulfill.
    fn unknown_response(&self, id: u32, packet: &BtpPacket) {
        let amount = self
            .given_up
            .borrow()
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, a)| *a);
        let is_fulfill = matches!(
            packet.ilp().map(Packet::decode),
            Some(Ok(Packet::Fulfill(_)))
        );
        match amount {
            Some(amount) if is_fulfill => {
                let c = &self.cfg.counters;
                c.late_fulfills.fetch_add(1, Relaxed);
                c.late_fulfill_amount.fetch_add(amount, Relaxed);
                tracing::warn!(nodeId = %self.cfg.node_id, component = "btp_link", event = "late_fulfill", peer = %self.peer_id, request_id = id, amount,
                    "the next hop fulfilled after we stopped waiting; the amount is at risk");
            }
            _ => {
                tracing::debug!(nodeId = %self.cfg.node_id, component = "btp_link", event = "unknown_response", peer = %self.peer_id, request_id = id);
            }
        }
    }

    /// Logs a bad frame from the peer: the first at once, then at most one line per second
    /// with the number left out (a flood of garbage must not become a flood of log lines).
    fn log_bad_frame(&self, error: &dyn std::fmt::Display) {
        self.cfg.counters.bad_frames.fetch_add(1, Relaxed);
        let (last, skipped) = self.bad_frame_log.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.bad_frame_log.set((last, skipped + 1));
            return;
        }
        self.bad_frame_log.set((Some(now), 0));
        tracing::warn!(nodeId = %self.cfg.node_id, component = "btp_link", event = "btp_error", peer = %self.peer_id,
            error = %error, not_logged_since_last = skipped, "unparsable BTP frame");
    }
}

impl LinkInner {
    /// Whether request `id`, registered with deadline `at`, still waits for its answer.
    fn is_pending(&self, id: u32, at: Instant) -> bool {
        self.pending
            .borrow()
            .get(&id)
            .is_some_and(|p| p.at == at && p.slot.open())
    }
}

impl Expire for LinkInner {
    fn expire(&self, id: u32, at: Instant) {
        let amount = match self.pending.borrow().get(&id) {
            Some(p) if p.at == at && p.slot.open() => p.amount,
            _ => return,
        };
        let mut given_up = self.given_up.borrow_mut();
        if given_up.len() >= LATE_MEMORY {
            given_up.pop_front();
        }
        given_up.push_back((id, amount));
        drop(given_up);
        let _ = self.complete(id, Err(LinkError::Timeout));
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
            ticket,
            ..
        }) = removed
        {
            // Given up before an answer: it no longer counts as live.
            self.inner.deadlines.done(ticket);
        }
    }
}

/// A cheap, shard-local handle to a link.
#[derive(Clone)]
pub struct Link(Rc<LinkInner>);

static NEXT_LINK_ID: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// A new link handle; [`run`] then drives its socket.
    pub fn new(peer_id: &str, cfg: LinkConfig, deadlines: Rc<Deadlines>) -> Link {
        let inner = LinkInner {
            id: NEXT_LINK_ID.fetch_add(1, Relaxed),
            peer_id: peer_id.into(),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            queued_requests: Cell::new(0),
            task: RefCell::new(None),
            writing: Cell::new(false),
            writes_done: Cell::new(0),
            write_aborted: Cell::new(false),
            ping_wanted: Cell::new(false),
            unanswered_in: Cell::new(0),
            pending: RefCell::new(HashMap::default()),
            given_up: RefCell::new(VecDeque::new()),
            next_id: Cell::new(1),
            closing: Cell::new(false),
            closed: Cell::new(false),
            heard: Cell::new(false),
            last_heard: Cell::new(Instant::now()),
            spare: RefCell::new(Vec::new()),
            bad_frame_log: Cell::new((None, 0)),
            deadlines,
            cfg,
        };
        Link(Rc::new(inner))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn peer_id(&self) -> &str {
        &self.0.peer_id
    }

    /// Open for new requests: not closed, not closing.
    pub fn is_open(&self) -> bool {
        !self.0.closed.get() && !self.0.closing.get()
    }

    pub fn pending_count(&self) -> usize {
        self.0.pending.borrow().len()
    }

    /// How long no frame has arrived (granularity: the keep-alive tick, ≤ 1 s).
    pub fn idle_for(&self) -> Duration {
        if self.0.heard.get() {
            Duration::ZERO
        } else {
            self.0.last_heard.get().elapsed()
        }
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

    /// Registers a request under the next request id not in use (one probe of the map per
    /// id tried), with its deadline `at` in the shard's [`Deadlines`], and returns the id.
    fn register(&self, at: Instant, amount: u64, slot: Slot) -> u32 {
        let inner = &*self.0;
        let mut pending = inner.pending.borrow_mut();
        let (id, vacant) = loop {
            let id = inner.next_id.get();
            inner.next_id.set(id.wrapping_add(1));
            if let Entry::Vacant(v) = pending.entry(id) {
                break (id, v);
            }
        };
        let weak: std::rc::Weak<dyn Expire> = Rc::downgrade(&self.0) as _;
        let ticket = inner.deadlines.add(at, weak, id);
        vacant.insert(Pending {
            at,
            ticket,
            amount,
            slot,
        });
        id
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
        self.request_until(frame, deadline.map_or(limit, |d| d.min(limit)), 0)
            .await
    }

    /// As [`Link::request`], with the final deadline `at` computed by the caller (who has
    /// already applied the send timeout; saves reading the clock). `amount` is reported if a
    /// Fulfill arrives after `at`.
    pub async fn request_until(
        &self,
        frame: BytesMut,
        at: Instant,
        amount: u64,
    ) -> Result<BtpPacket, LinkError> {
        let inner = &*self.0;
        let id = self.enqueue(frame, at, amount, Slot::Waiting(None))?;
        let _guard = SlotGuard { inner, id };
        std::future::poll_fn(|cx| {
            let mut pending = inner.pending.borrow_mut();
            let Some(p) = pending.get_mut(&id) else {
                return Poll::Ready(Err(LinkError::LinkLost));
            };
            match &mut p.slot {
                Slot::Waiting(w) => {
                    park(w, cx);
                    Poll::Pending
                }
                Slot::Relayed { .. } => Poll::Ready(Err(LinkError::LinkLost)),
                Slot::Done(_) => match pending.remove(&id) {
                    Some(Pending {
                        slot: Slot::Done(r),
                        ..
                    }) => Poll::Ready(*r),
                    _ => Poll::Ready(Err(LinkError::LinkLost)),
                },
            }
        })
        .await
    }

    /// Sends a request frame as [`Link::request_until`] does, but nobody waits: the answer
    /// (or the timeout at `at`, or the link's failure) is handed to `sink` under `key`, by
    /// whichever task learns it. An error here means the request was not sent and `sink`
    /// will not be called.
    pub fn relay(
        &self,
        frame: BytesMut,
        at: Instant,
        amount: u64,
        sink: std::rc::Weak<dyn AnswerSink>,
        key: usize,
    ) -> Result<(), LinkError> {
        self.enqueue(frame, at, amount, Slot::Relayed { sink, key })
            .map(drop)
    }

    /// Registers a request with `slot` and queues its frame (with one of our request ids),
    /// unless the link is closing or full.
    fn enqueue(
        &self,
        mut frame: BytesMut,
        at: Instant,
        amount: u64,
        slot: Slot,
    ) -> Result<u32, LinkError> {
        let inner = &*self.0;
        if !self.is_open() {
            return Err(LinkError::LinkLost);
        }
        if inner.pending.borrow().len() >= inner.cfg.max_pending
            || inner.queued_requests.get() >= inner.cfg.queue_capacity
            || inner.queued_bytes.get() >= inner.cfg.max_queued_bytes
        {
            return Err(LinkError::QueueFull);
        }
        // Register before queueing: the answer may be read before the caller runs again.
        let id = self.register(at, amount, slot);
        set_request_id(&mut frame, id);
        inner.push(Outbound::Request {
            frame: frame.freeze(),
            id,
            at,
        });
        Ok(id)
    }

    /// Queues the answer to one of the peer's requests. Never waits: the link bounds what
    /// it holds by reading less (see the module doc).
    pub fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        if self.0.closed.get() {
            return Err(LinkError::LinkLost);
        }
        self.0.push(Outbound::Answer(frame));
        Ok(())
    }

    /// Fails every request still waiting for an answer on this link ([`LinkError::LinkLost`]);
    /// their queued frames are then not written. The link stays up.
    pub fn fail_pending(&self) {
        self.0.fail_all();
    }

    /// Asks the link task to write what is queued and close the socket. Requests are
    /// refused from now on; the ones pending fail when the task ends.
    pub fn close(&self) {
        self.0.closing.set(true);
        self.0.wake_task();
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
    In(Result<Incoming, SocketError>),
    Out,
}

/// Most frames written before one flush.
const MAX_BATCH: usize = 64;

/// Frames a link task handles without ever waiting for its socket before it lets the shard's
/// other tasks run. While its peer keeps the socket full, every read finds data at once and
/// the task would never wait: the other links of the shard (among them the one its Prepares
/// go out on) would not run, and the Prepares would pile up in that link's queue (T02).
const FRAMES_PER_TURN: usize = 256;

/// Smallest new frame buffer (a typical Prepare frame fits, so recycled buffers rarely grow).
const MIN_FRAME_BUF: usize = 512;

/// Most spare buffers a link keeps, and the largest one it keeps (bigger ones, e.g. after a
/// long Reject, are freed): at most 1 MiB held per link.
const MAX_SPARE: usize = 256;
const MAX_SPARE_CAPACITY: usize = 4096;

/// Longest keep-alive tick (so [`Link::idle_for`] is accurate to about a second).
const MAX_TICK: Duration = Duration::from_secs(1);

/// Keep-alive state of one link, kept by its thread's sweeper.
struct KeepAlive {
    link: std::rc::Weak<LinkInner>,
    /// How often this link is looked at.
    tick: Duration,
    next: Instant,
    ping_sent: Option<Instant>,
    /// Writes completed when the current stall was first seen, and when.
    stall: Option<(u64, Instant)>,
    /// It closed the link: nothing more to look at.
    done: bool,
}

/// The links of this thread (one shard) and the executor whose sweeper task looks after
/// them (a thread may run one executor after another).
#[derive(Default)]
struct Sweep {
    links: Vec<KeepAlive>,
    sweeper: Option<usize>,
}

thread_local! {
    static SWEEP: RefCell<Sweep> = RefCell::new(Sweep::default());
}

/// Puts `link` under keep-alive: one sweeper task per thread looks at every link of the
/// thread in turn (see the module doc), so an idle shard with many links wakes once per tick,
/// not once per link. The sweeper ends when its thread has no links left.
fn keep_alive(link: &Rc<LinkInner>) {
    let cfg = &link.cfg;
    let tick = cfg
        .ping_interval
        .min(cfg.pong_timeout)
        .min(cfg.write_timeout / 2)
        .min(MAX_TICK)
        .max(Duration::from_millis(1));
    let spawn = SWEEP.with(|s| {
        let mut s = s.borrow_mut();
        s.links.push(KeepAlive {
            link: Rc::downgrade(link),
            tick,
            next: Instant::now() + tick,
            ping_sent: None,
            stall: None,
            done: false,
        });
        let executor = glommio::executor().id();
        s.sweeper.replace(executor) != Some(executor)
    });
    if spawn {
        glommio::spawn_local(sweep()).detach();
    }
}

/// The sweeper: every shortest tick, checks each link that is due; drops ended links.
async fn sweep() {
    loop {
        let Some(tick) = SWEEP.with(|s| {
            let mut s = s.borrow_mut();
            s.links
                .retain(|k| k.link.upgrade().is_some_and(|i| !i.closed.get()));
            if s.links.is_empty() {
                s.sweeper = None;
                return None;
            }
            s.links.iter().map(|k| k.tick).min()
        }) else {
            return;
        };
        crate::alarm::sleep(tick).await;
        let now = Instant::now();
        SWEEP.with(|s| {
            for k in s.borrow_mut().links.iter_mut().filter(|k| k.next <= now) {
                k.next = now + k.tick;
                if let Some(inner) = k.link.upgrade().filter(|i| !i.closed.get()) {
                    k.look(&inner, now);
                }
            }
        });
    }
}

impl KeepAlive {
    /// One look at a live link: the write watchdog (a write in progress that completes
    /// nothing for `write_timeout` is aborted: no timer is armed per write, so writing costs
    /// no allocation), then pings and the pong timeout.
    fn look(&mut self, inner: &LinkInner, now: Instant) {
        let cfg = &inner.cfg;
        if self.done {
            return;
        }
        if inner.writing.get() {
            let done = inner.writes_done.get();
            match self.stall {
                Some((n, since)) if n == done => {
                    if now.duration_since(since) >= cfg.write_timeout {
                        cfg.counters.write_timeouts.fetch_add(1, Relaxed);
                        tracing::warn!(nodeId = %cfg.node_id, component = "btp_link", event = "write_timeout", peer = %inner.peer_id,
                            timeout_ms = cfg.write_timeout.as_millis() as u64, "peer stopped reading; closing the link");
                        inner.write_aborted.set(true);
                        inner.close_now();
                        self.done = true;
                        return;
                    }
                }
                _ => self.stall = Some((done, now)),
            }
        } else {
            self.stall = None;
        }
        if inner.heard.replace(false) {
            inner.last_heard.set(now);
            self.ping_sent = None;
            return;
        }
        match self.ping_sent {
            None if now.duration_since(inner.last_heard.get()) >= cfg.ping_interval => {
                self.ping_sent = Some(now);
                inner.ping_wanted.set(true);
                inner.wake_task();
            }
            Some(t) if now.duration_since(t) >= cfg.pong_timeout => {
                tracing::debug!(nodeId = %cfg.node_id, component = "btp_link", event = "pong_timeout", peer = %inner.peer_id);
                inner.close_now();
                self.done = true;
            }
            _ => {}
        }
    }
}

impl LinkInner {
    /// Closes without writing what is queued (the peer stopped answering).
    fn close_now(&self) {
        for item in self.queue.borrow_mut().drain(..) {
            drop(item);
        }
        self.queued_bytes.set(0);
        self.queued_requests.set(0);
        self.closing.set(true);
        self.wake_task();
    }
}

/// Stores the waker of the task polling `cx` in `slot`, unless the stored one already wakes it
/// (no clone on the usual repeated poll).
fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// Resolves when the link task has something to write, or may read again, or must close.
fn outbound_ready(inner: &LinkInner, reading: bool) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        if !inner.queue.borrow().is_empty()
            || inner.ping_wanted.get()
            || inner.closing.get()
            || (!reading && inner.may_read())
        {
            return Poll::Ready(());
        }
        park(&mut inner.task.borrow_mut(), cx);
        Poll::Pending
    })
}

/// The link is dead: the socket failed, or the watchdog aborted a stalled write.
struct Dead;

/// Writes up to [`MAX_BATCH`] queued frames (skipping requests no longer pending) and a
/// requested ping, then flushes.
async fn write_batch<S>(ws: &mut Socket<S>, inner: &LinkInner) -> Result<(), Dead>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut fed = 0;
    while fed < MAX_BATCH {
        let Some(item) = inner.pop() else { break };
        let (frame, answer) = match item {
            Outbound::Request { frame, id, at } => {
                if !inner.is_pending(id, at) {
                    continue;
                }
                (frame, false)
            }
            Outbound::Answer(frame) => (frame, true),
            Outbound::Other(frame) => (frame, false),
        };
        ws.send_binary(&frame);
        if answer {
            inner
                .unanswered_in
                .set(inner.unanswered_in.get().saturating_sub(1));
        }
        // The socket copied the frame: ours is the last handle, reuse the buffer.
        if let Ok(mut buf) = frame.try_into_mut() {
            let mut spare = inner.spare.borrow_mut();
            if spare.len() < MAX_SPARE && buf.capacity() <= MAX_SPARE_CAPACITY {
                buf.clear();
                spare.push(buf);
            }
        }
        fed += 1;
    }
    if inner.ping_wanted.replace(false) {
        ws.send_ping();
    }
    watched_write(inner, ws.flush()).await
}

/// One socket write, under the watchdog's eye: it ends with [`Dead`] if the socket fails or
/// the watchdog aborts it (no progress for the write timeout).
async fn watched_write<E>(
    inner: &LinkInner,
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), Dead> {
    if inner.write_aborted.get() {
        return Err(Dead);
    }
    inner.writing.set(true);
    let aborted = std::future::poll_fn(|cx| {
        if inner.write_aborted.get() {
            return Poll::Ready(Err(Dead));
        }
        park(&mut inner.task.borrow_mut(), cx);
        Poll::Pending
    });
    let result = futures_lite::future::or(async { fut.await.map_err(|_| Dead) }, aborted).await;
    inner.writing.set(false);
    inner.writes_done.set(inner.writes_done.get() + 1);
    result
}

/// The link task: owns `ws` until the link ends. Returns when the socket closes, fails, a
/// write times out, the keep-alive times out, or [`Link::close`] is called (after writing
/// what was queued).
pub async fn run<S>(mut ws: Socket<S>, link: Link, handler: IncomingHandler)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let inner = link.0.clone();
    keep_alive(&inner);
    let mut this_turn = 0;
    'run: loop {
        if inner.closing.get() {
            // Write what is queued (answers the peer is owed), then close.
            while !inner.queue.borrow().is_empty() {
                if write_batch(&mut ws, &inner).await.is_err() {
                    break;
                }
            }
            break;
        }
        let ev = if inner.may_read() {
            let mut next = std::pin::pin!(futures_lite::future::or(
                async { Event::In(ws.next().await) },
                async {
                    outbound_ready(&inner, true).await;
                    Event::Out
                }
            ));
            // Had to wait: the shard's other tasks ran meanwhile.
            std::future::poll_fn(|cx| {
                let ev = std::future::Future::poll(next.as_mut(), cx);
                if ev.is_pending() {
                    this_turn = 0;
                }
                ev
            })
            .await
        } else {
            outbound_ready(&inner, false).await;
            Event::Out
        };
        let mut incoming = match ev {
            Event::Out => {
                if write_batch(&mut ws, &inner).await.is_err() {
                    break;
                }
                continue;
            }
            Event::In(incoming) => incoming,
        };
        inner.heard.set(true);
        // This message, then every other one the same read brought, while reading is allowed:
        // one batch, one clock reading.
        let batch = crate::clock::batch();
        loop {
            this_turn += 1;
            match incoming {
                Ok(Incoming::Binary(data)) => match handle_frame(&link, data, &handler) {
                    FrameOutcome::Done => {}
                    FrameOutcome::Reply(reply) => inner.push(Outbound::Other(reply)),
                    FrameOutcome::Close => break 'run,
                },
                Ok(Incoming::Close) | Err(_) => break 'run,
            }
            if !inner.may_read() {
                break;
            }
            incoming = match ws.next_buffered().transpose() {
                Some(next) => next,
                None => break,
            };
        }
        drop(batch);
        // What that batch produced for this peer (answers, a pong the socket queued) goes out
        // before the next read: a peer that keeps sending cannot hold back its own answers.
        if (ws.unflushed() || !inner.queue.borrow().is_empty())
            && write_batch(&mut ws, &inner).await.is_err()
        {
            break;
        }
        if this_turn >= FRAMES_PER_TURN {
            this_turn = 0;
            futures_lite::future::yield_now().await;
        }
    }
    inner.closed.set(true);
    inner.fail_all();
    inner.close_now();
    if !inner.write_aborted.get() {
        let _ = within(Duration::from_secs(1), ws.close()).await;
    }
}

enum FrameOutcome {
    Done,
    /// Write this frame back.
    Reply(Bytes),
    /// Close the link.
    Close,
}

/// Handles one incoming binary frame.
fn handle_frame(link: &Link, data: Bytes, handler: &IncomingHandler) -> FrameOutcome {
    let inner = &*link.0;
    let raw_type = data.first().copied();
    let raw_id = data
        .get(1..5)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let packet = match BtpPacket::decode(data) {
        Ok(p) => p,
        Err(e) => {
            inner.log_bad_frame(&e);
            return match (raw_type, raw_id) {
                (Some(6 | 7), Some(id)) => {
                    FrameOutcome::Reply(error_frame(id, b"F01", e.to_string().as_bytes()))
                }
                _ => FrameOutcome::Close,
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
            if let Some(Ok(packet)) = inner.complete(id, result) {
                inner.unknown_response(id, &packet);
            }
            FrameOutcome::Done
        }
        BtpType::Message => {
            inner.unanswered_in.set(inner.unanswered_in.get() + 1);
            handler(link, packet);
            FrameOutcome::Done
        }
        BtpType::Transfer => FrameOutcome::Reply(error_frame(
            packet.request_id(),
            b"F00",
            b"settlement (TRANSFER) is not supported",
        )),
    }
}
