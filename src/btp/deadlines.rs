//! The shard's one timer structure for pending requests: a min-heap of deadlines driven by a
//! single timer task (not one glommio timer per packet).
//!
//! Each request gets a *record* (its link and request id) in a slab and a heap entry
//! `(deadline, record key, sequence number)`; [`Deadlines::add`] returns the [`Ticket`] that
//! names the record. An answered request's record is removed at once ([`Deadlines::done`],
//! O(1)); its heap entry stays (removing it would cost a search) and is skipped when it
//! comes due, because its record is gone or (key reused) carries another sequence number.
//! To keep memory proportional to what is really in flight, the heap is rebuilt from the
//! entries whose record is alive when dead ones outnumber them: a slab look-up per entry,
//! no call into the links.
//!
//! Order of events: [`Deadlines::add`] pushes an entry and, when it is the new earliest, pokes
//! the driver; the driver sleeps until the earliest deadline (or a poke), then pops every due
//! entry, removes its record and calls [`Expire::expire`] on its link.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use slab::Slab;

/// What holds the requests whose deadlines are queued here (a link). Keeps this module free
/// of any link type: dependencies point from the link to the deadlines, not back.
pub trait Expire {
    /// The deadline `at` of request `id` passed: fail it if it still waits.
    fn expire(&self, id: u32, at: Instant);
}

/// Names a request's record; give it back to [`Deadlines::done`] when the request is
/// answered or given up.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    key: u32,
    seq: u32,
}

struct Entry {
    at: Instant,
    key: u32,
    seq: u32,
}

struct Record {
    seq: u32,
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
    /// The requests still pending on this shard's links.
    records: RefCell<Slab<Record>>,
    next_seq: Cell<u32>,
    poke: LocalSender<()>,
    wake: RefCell<Option<LocalReceiver<()>>>,
}

impl Deadlines {
    pub fn new() -> Rc<Self> {
        let (poke, wake) = local_channel::new_bounded(1);
        Rc::new(Deadlines {
            heap: RefCell::new(BinaryHeap::new()),
            records: RefCell::new(Slab::new()),
            next_seq: Cell::new(0),
            poke,
            wake: RefCell::new(Some(wake)),
        })
    }

    /// Request `request_id` of `link` is failed at `at` unless [`done`](Self::done) is
    /// called with the returned ticket first.
    pub fn add(&self, at: Instant, link: Weak<dyn Expire>, request_id: u32) -> Ticket {
        let seq = self.next_seq.get();
        self.next_seq.set(seq.wrapping_add(1));
        let mut records = self.records.borrow_mut();
        let key = records.insert(Record {
            seq,
            request_id,
            link,
        }) as u32;
        let mut heap = self.heap.borrow_mut();
        let earliest = heap.peek().is_none_or(|Reverse(e)| at < e.at);
        heap.push(Reverse(Entry { at, key, seq }));
        if heap.len() > 4096 && heap.len() > 2 * records.len() {
            let live = |e: &Entry| records.get(e.key as usize).is_some_and(|r| r.seq == e.seq);
            heap.retain(|Reverse(e)| live(e));
        }
        drop((heap, records));
        if earliest {
            let _ = self.poke.try_send(());
        }
        Ticket { key, seq }
    }

    /// The request of `ticket` was answered (or failed, or given up) before its deadline.
    /// Idempotent: a ticket whose record is gone (or reused) changes nothing.
    pub fn done(&self, ticket: Ticket) {
        let mut records = self.records.borrow_mut();
        if records
            .get(ticket.key as usize)
            .is_some_and(|r| r.seq == ticket.seq)
        {
            records.remove(ticket.key as usize);
        }
    }

    /// Requests currently pending on this shard.
    pub fn in_flight(&self) -> usize {
        self.records.borrow().len()
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
            let record = {
                let mut records = self.records.borrow_mut();
                match records.get(e.key as usize) {
                    Some(r) if r.seq == e.seq => Some(records.remove(e.key as usize)),
                    _ => None,
                }
            };
            let Some(r) = record else { continue };
            if let Some(link) = r.link.upgrade() {
                link.expire(r.request_id, e.at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records which requests it was asked to expire.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<u32>>);

    impl Expire for Recorder {
        fn expire(&self, id: u32, _at: Instant) {
            self.0.borrow_mut().push(id);
        }
    }

    /// Only requests not marked done expire; done entries are dropped from the heap once
    /// they outnumber live ones; a stale ticket (its key reused) does not cancel the new
    /// request.
    #[test]
    fn only_live_requests_expire_and_dead_entries_are_dropped() {
        let dl = Deadlines::new();
        let link = Rc::new(Recorder::default());
        let weak = || Rc::downgrade(&link) as Weak<dyn Expire>;
        let t0 = Instant::now();
        let mut tickets = Vec::new();
        for id in 0..10_000u32 {
            let ticket = dl.add(t0 + Duration::from_millis(u64::from(id)), weak(), id);
            if id % 1000 == 7 {
                continue; // stays pending
            }
            dl.done(ticket);
            dl.done(ticket); // twice: harmless
            tickets.push(ticket);
        }
        assert_eq!(dl.in_flight(), 10);
        assert!(
            dl.heap.borrow().len() < 4200,
            "dead entries were not dropped: {}",
            dl.heap.borrow().len()
        );
        // A stale ticket whose key a new request now uses does not cancel that request.
        let fresh = dl.add(t0, weak(), 99_999);
        let stale = tickets
            .iter()
            .find(|t| t.key == fresh.key)
            .copied()
            .expect("a freed key is reused");
        dl.done(stale);
        assert_eq!(dl.in_flight(), 11);
        dl.fire_due(t0 + Duration::from_secs(60));
        let mut expired = link.0.borrow().clone();
        expired.sort_unstable();
        let mut want: Vec<u32> = (0..10).map(|k| k * 1000 + 7).collect();
        want.push(99_999);
        assert_eq!(expired, want);
        assert_eq!(dl.in_flight(), 0);
        assert!(dl.heap.borrow().is_empty());
    }
}
