//! The shard's one timer structure for pending requests: a min-heap of deadlines driven by a
//! single glommio timer task (not one glommio timer per packet).
//!
//! Entries are `(deadline, link, request id)`. Answered requests are not removed from the heap
//! (that would cost a search); their entry is skipped when it comes due. To keep memory
//! proportional to what is really in flight, the heap is rebuilt from the live entries when
//! dead ones outnumber them.
//!
//! Order of events: [`Deadlines::add`] pushes an entry and, when it is the new earliest, pokes
//! the driver; the driver sleeps until the earliest deadline (or a poke), then pops every due
//! entry and calls [`link::expire`](super::link) for it.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

/// What holds the requests whose deadlines are queued here (a link). Keeps this module free
/// of any link type: dependencies point from the link to the deadlines, not back.
pub trait Expire {
    /// Whether request `id`, registered with deadline `at`, still waits for its answer.
    fn is_pending(&self, id: u32, at: Instant) -> bool;
    /// The deadline `at` of request `id` passed: fail it if it still waits.
    fn expire(&self, id: u32, at: Instant);
}

struct Entry {
    at: Instant,
    request_id: u32,
    link: Weak<dyn Expire>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.at.cmp(&o.at)
    }
}

/// Per-shard deadline queue. Shared by every link on the shard through an `Rc`.
pub struct Deadlines {
    heap: RefCell<BinaryHeap<Reverse<Entry>>>,
    /// Requests still pending on this shard's links (answered ones are subtracted by the link).
    live: Cell<usize>,
    poke: LocalSender<()>,
    wake: RefCell<Option<LocalReceiver<()>>>,
}

impl Deadlines {
    pub fn new() -> Rc<Self> {
        let (poke, wake) = local_channel::new_bounded(1);
        Rc::new(Deadlines {
            heap: RefCell::new(BinaryHeap::new()),
            live: Cell::new(0),
            poke,
            wake: RefCell::new(Some(wake)),
        })
    }

    pub fn add(&self, at: Instant, link: Weak<dyn Expire>, request_id: u32) {
        self.live.set(self.live.get() + 1);
        let mut heap = self.heap.borrow_mut();
        let earliest = heap.peek().is_none_or(|Reverse(e)| at < e.at);
        heap.push(Reverse(Entry {
            at,
            request_id,
            link,
        }));
        if heap.len() > 4096 && heap.len() > 2 * self.live.get() {
            let entries = std::mem::take(&mut *heap).into_vec();
            *heap = entries
                .into_iter()
                .filter(|Reverse(e)| {
                    e.link
                        .upgrade()
                        .is_some_and(|l| l.is_pending(e.request_id, e.at))
                })
                .collect();
        }
        drop(heap);
        if earliest {
            let _ = self.poke.try_send(());
        }
    }

    /// A pending request was answered (or failed) before its deadline.
    pub fn done(&self) {
        self.live.set(self.live.get().saturating_sub(1));
    }

    /// Requests currently pending on this shard.
    pub fn in_flight(&self) -> usize {
        self.live.get()
    }

    /// The driver: run once per shard as a task; ends when `stop` returns true.
    pub async fn run(self: Rc<Self>, stop: impl Fn() -> bool) {
        let Some(wake) = self.wake.borrow_mut().take() else {
            return;
        };
        // Poll the stop flag at least this often while idle (an earlier deadline pokes).
        const IDLE: Duration = Duration::from_secs(1);
        // Shortest sleep: deadlines closer together than this fire together, up to this
        // late, so a stalled next hop with many requests in flight wakes the shard at most
        // a thousand times a second (each wake comes from the alarm thread).
        const MIN_SLEEP: Duration = Duration::from_millis(1);
        while !stop() {
            let next = self.heap.borrow().peek().map(|Reverse(e)| e.at);
            let now = Instant::now();
            let sleep = next.map_or(IDLE, |at| at.saturating_duration_since(now).min(IDLE));
            if !sleep.is_zero() {
                let _ = crate::alarm::within(sleep.max(MIN_SLEEP), wake.recv()).await;
            }
            self.fire_due(Instant::now());
        }
    }

    fn fire_due(&self, now: Instant) {
        loop {
            let entry = {
                let mut heap = self.heap.borrow_mut();
                match heap.peek() {
                    Some(Reverse(e)) if e.at <= now => heap.pop().map(|Reverse(e)| e),
                    _ => None,
                }
            };
            let Some(e) = entry else { break };
            if let Some(link) = e.link.upgrade() {
                link.expire(e.request_id, e.at);
            }
        }
    }
}
