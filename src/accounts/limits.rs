//! Balance limits shared by every shard without a lock or a message per packet.
//!
//! One limit (a peer's `maximum`, or its `minimum`) is a [`Pool`]: the headroom not yet
//! handed to any shard, an atomic. Each shard holds a [`Lease`] of headroom taken from the
//! pool in chunks and reserves packets against it with plain arithmetic on its own thread.
//! Invariant (per limit): `pool + Σ leases + Σ reserved = headroom of the limit`, so the
//! limit is never overshot however the shards interleave: a reservation only ever spends
//! headroom some shard took out of the pool. A committed packet turns its reservation into
//! balance (the headroom stays used); a released one gives it back to the shard's lease; a
//! committed packet on the *other* side of the account frees headroom here, which the shard
//! credits to its own lease. Leases go back to the pool when a shard finds it short (another
//! shard could not reserve: it sets `short`) and on every idle tick, so headroom parked on a
//! quiet shard returns within one tick.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// The headroom of one limit not leased to any shard.
#[derive(Debug)]
pub struct Pool {
    avail: AtomicI64,
    /// Set when a shard could not reserve: the others return their leases.
    short: AtomicBool,
}

impl Pool {
    pub fn new(headroom: i64) -> Pool {
        Pool {
            avail: AtomicI64::new(headroom),
            short: AtomicBool::new(false),
        }
    }

    /// Takes between `at_least` and `want` (as much as there is), or nothing.
    fn take(&self, at_least: i64, want: i64) -> i64 {
        let mut cur = self.avail.load(Ordering::Acquire);
        loop {
            if cur < at_least {
                return 0;
            }
            let got = want.min(cur);
            match self.avail.compare_exchange_weak(
                cur,
                cur - got,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return got,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives headroom back (or adds new headroom: a settlement).
    pub fn give(&self, n: i64) {
        if n != 0 {
            self.avail.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Unleased headroom (may be negative after a settlement moved the balance past a limit).
    pub fn available(&self) -> i64 {
        self.avail.load(Ordering::Acquire)
    }
}

/// One shard's lease on a [`Pool`] and what it has reserved against it. Single-threaded.
#[derive(Debug, Default)]
pub struct Lease {
    held: Cell<i64>,
    reserved: Cell<i64>,
}

/// How many shards share a pool: a shard takes at most `1 / (2 × shards)` of what is left
/// beyond its own need, so one busy shard cannot park the headroom the others need.
#[derive(Debug, Clone, Copy)]
pub struct Sharing {
    pub shards: u32,
}

impl Lease {
    /// Reserves `amount` against the limit; `false` when the headroom is not there.
    #[inline]
    pub fn reserve(&self, pool: &Pool, amount: i64, sharing: Sharing) -> bool {
        let held = self.held.get();
        if pool.short.load(Ordering::Relaxed) && held > 0 {
            // Another shard ran short: hand back what we hold first.
            pool.give(held);
            self.held.set(0);
            pool.short.store(false, Ordering::Relaxed);
            return self.reserve_from_pool(pool, amount, sharing);
        }
        if held >= amount {
            self.held.set(held - amount);
            self.reserved.set(self.reserved.get() + amount);
            return true;
        }
        self.reserve_from_pool(pool, amount, sharing)
    }

    #[cold]
    fn reserve_from_pool(&self, pool: &Pool, amount: i64, sharing: Sharing) -> bool {
        let held = self.held.get();
        let need = amount - held;
        let spare = (pool.available() - need).max(0) / (2 * i64::from(sharing.shards.max(1)));
        let got = pool.take(
            need,
            need.saturating_add(spare.min(amount.saturating_mul(64))),
        );
        if got < need {
            pool.short.store(true, Ordering::Relaxed);
            return false;
        }
        self.held.set(held + got - amount);
        self.reserved.set(self.reserved.get() + amount);
        true
    }

    /// A reserved packet was fulfilled: its reservation becomes balance.
    #[inline]
    pub fn commit(&self, amount: i64) {
        self.reserved.set(self.reserved.get() - amount);
    }

    /// A reserved packet was rejected, timed out or lost: its headroom is free again.
    #[inline]
    pub fn release(&self, amount: i64) {
        self.reserved.set(self.reserved.get() - amount);
        self.held.set(self.held.get() + amount);
    }

    /// The balance moved away from this limit (a commit on the account's other side).
    #[inline]
    pub fn credit(&self, amount: i64) {
        self.held.set(self.held.get() + amount);
    }

    /// Returns the whole lease to the pool (idle tick).
    pub fn return_to(&self, pool: &Pool) {
        let held = self.held.replace(0);
        pool.give(held);
    }

    pub fn reserved(&self) -> i64 {
        self.reserved.get()
    }

    pub fn held(&self) -> i64 {
        self.held.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ONE: Sharing = Sharing { shards: 1 };

    #[test]
    fn reserves_up_to_the_limit_exactly() {
        let pool = Pool::new(1000);
        let l = Lease::default();
        for _ in 0..10 {
            assert!(l.reserve(&pool, 100, ONE));
        }
        assert!(!l.reserve(&pool, 1, ONE));
        l.release(100);
        assert!(l.reserve(&pool, 100, ONE));
        assert!(!l.reserve(&pool, 100, ONE));
        l.commit(100);
        assert!(
            !l.reserve(&pool, 100, ONE),
            "a commit keeps the headroom used"
        );
        l.credit(100);
        assert!(l.reserve(&pool, 100, ONE));
    }

    #[test]
    fn a_short_shard_gets_the_others_lease_back() {
        let sharing = Sharing { shards: 2 };
        let pool = Pool::new(1000);
        let (a, b) = (Lease::default(), Lease::default());
        assert!(a.reserve(&pool, 10, sharing)); // a leases a chunk beyond its need
        assert!(a.held() > 0);
        a.release(10);
        // b needs more than the pool has left: refused once, then a returns its lease.
        let big = 1000 - a.held() + 1;
        assert!(!b.reserve(&pool, big, sharing));
        assert!(a.reserve(&pool, 1, sharing));
        a.release(1);
        a.return_to(&pool);
        assert!(b.reserve(&pool, 1000, sharing));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve {
            shard: usize,
            amount: i64,
        },
        /// Finish the oldest packet of a shard: 0 fulfil, 1 reject, 2 timeout.
        Finish {
            shard: usize,
            how: u8,
        },
        Tick {
            shard: usize,
        },
    }

    fn op(shards: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..shards, 1i64..400).prop_map(|(shard, amount)| Op::Reserve { shard, amount }),
            (0..shards, 0u8..3).prop_map(|(shard, how)| Op::Finish { shard, how }),
            (0..shards).prop_map(|shard| Op::Tick { shard }),
        ]
    }

    proptest! {
        /// Random fulfil/reject/timeout interleavings on several shards of one account with
        /// both limits: the balance plus every reservation stays within [minimum, maximum],
        /// and the pool invariant holds after every step.
        #[test]
        fn no_limit_is_ever_overshot(ops in proptest::collection::vec(op(4), 1..400), max in 0i64..3000, min in -3000i64..=0) {
            let sharing = Sharing { shards: 4 };
            // Incoming packets (from the peer) against `maximum`; outgoing (to it) against `minimum`.
            let max_pool = Pool::new(max);
            let min_pool = Pool::new(-min);
            let ins: Vec<Lease> = (0..4).map(|_| Lease::default()).collect();
            let outs: Vec<Lease> = (0..4).map(|_| Lease::default()).collect();
            let mut pending: Vec<std::collections::VecDeque<(bool, i64)>> = vec![Default::default(); 4];
            let mut balance = 0i64;
            for (i, o) in ops.into_iter().enumerate() {
                match o {
                    Op::Reserve { shard, amount } => {
                        let incoming = i % 2 == 0;
                        let ok = if incoming {
                            ins[shard].reserve(&max_pool, amount, sharing)
                        } else {
                            outs[shard].reserve(&min_pool, amount, sharing)
                        };
                        if ok { pending[shard].push_back((incoming, amount)); }
                    }
                    Op::Finish { shard, how } => {
                        if let Some((incoming, amount)) = pending[shard].pop_front() {
                            match (how, incoming) {
                                (0, true) => { ins[shard].commit(amount); outs[shard].credit(amount); balance += amount; }
                                (0, false) => { outs[shard].commit(amount); ins[shard].credit(amount); balance -= amount; }
                                (_, true) => ins[shard].release(amount),
                                (_, false) => outs[shard].release(amount),
                            }
                        }
                    }
                    Op::Tick { shard } => {
                        ins[shard].return_to(&max_pool);
                        outs[shard].return_to(&min_pool);
                    }
                }
                let reserved_in: i64 = ins.iter().map(Lease::reserved).sum();
                let reserved_out: i64 = outs.iter().map(Lease::reserved).sum();
                prop_assert!(balance + reserved_in <= max, "max overshot: {balance} + {reserved_in} > {max}");
                prop_assert!(balance - reserved_out >= min, "min overshot: {balance} - {reserved_out} < {min}");
                let held_in: i64 = ins.iter().map(Lease::held).sum();
                let held_out: i64 = outs.iter().map(Lease::held).sum();
                prop_assert_eq!(max_pool.available() + held_in + reserved_in, max - balance);
                prop_assert_eq!(min_pool.available() + held_out + reserved_out, balance - min);
            }
        }
    }

    /// The same on real threads: four threads reserve, fulfil and release against one
    /// account at once; the limit holds at every commit and the pool adds up at the end.
    #[test]
    fn threads_never_overshoot() {
        use std::sync::atomic::AtomicI64;
        use std::sync::Arc;
        let max = 10_000i64;
        let pool = Arc::new(Pool::new(max));
        let balance = Arc::new(AtomicI64::new(0));
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let (pool, balance) = (pool.clone(), balance.clone());
                std::thread::spawn(move || {
                    let lease = Lease::default();
                    let sharing = Sharing { shards: 4 };
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..20_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let amount = (x % 50 + 1) as i64;
                        if lease.reserve(&pool, amount, sharing) {
                            if x % 3 == 0 {
                                lease.commit(amount);
                                let b = balance.fetch_add(amount, Ordering::SeqCst) + amount;
                                assert!(b <= max, "balance {b} over {max}");
                            } else {
                                lease.release(amount);
                            }
                        }
                        if x % 97 == 0 {
                            lease.return_to(&pool);
                        }
                    }
                    lease.return_to(&pool);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let b = balance.load(Ordering::SeqCst);
        assert!(b <= max);
        assert_eq!(pool.available(), max - b);
    }
}
