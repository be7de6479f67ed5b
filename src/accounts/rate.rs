//! Per-peer rate limits shared by every shard: `rateLimit: {packetsPerSecond, burst}` (T05)
//! and `throughput: {amountPerSecond}` (T04, a burst of one second's amount).
//!
//! Each is a token bucket in GCRA form: one atomic "theoretical arrival time" in nanoseconds
//! on the node's monotonic clock; a packet costs `cost` ns of it and is allowed while the TAT
//! stays within `tolerance` of now. Integers only (u128 for `amount × 1e9 / rate`), one
//! compare-and-swap per packet, and only for peers that have a limit configured. A packet
//! that is refused costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};

const NS: u128 = 1_000_000_000;

/// One bucket.
#[derive(Debug)]
pub struct Bucket {
    tat: AtomicU64,
    /// Nanoseconds of TAT per unit (packet or amount), as a fraction `num / den`.
    per_unit: (u128, u128),
    /// How far ahead of now the TAT may run.
    tolerance: u64,
}

impl Bucket {
    /// `rate` units per second, with room for `burst` units at once.
    pub fn new(rate: u64, burst: u64) -> Bucket {
        let rate = rate.max(1);
        Bucket {
            tat: AtomicU64::new(0),
            per_unit: (NS, u128::from(rate)),
            tolerance: u64::try_from(NS * u128::from(burst.max(1)) / u128::from(rate))
                .unwrap_or(u64::MAX),
        }
    }

    /// Takes `units` at `now_ns`; `false` (and nothing taken) when the bucket lacks them.
    pub fn take(&self, units: u64, now_ns: u64) -> bool {
        let cost = u128::from(units) * self.per_unit.0 / self.per_unit.1;
        let Ok(cost) = u64::try_from(cost) else {
            return false;
        };
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = tat.max(now_ns).saturating_add(cost);
            if next - now_ns > self.tolerance {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn packets_per_second_with_a_burst() {
        let b = Bucket::new(100, 10); // 100/s, 10 at once
        let t0 = 1_000 * MS;
        for i in 0..10 {
            assert!(b.take(1, t0), "burst packet {i}");
        }
        assert!(!b.take(1, t0));
        // One packet's worth (10 ms) later, one more.
        assert!(!b.take(1, t0 + 9 * MS));
        assert!(b.take(1, t0 + 10 * MS));
        assert!(!b.take(1, t0 + 10 * MS));
        // A full second later the whole burst is back, no more.
        let t1 = t0 + 2_000 * MS;
        assert_eq!((0..20).filter(|_| b.take(1, t1)).count(), 10);
    }

    #[test]
    fn amount_per_second() {
        let b = Bucket::new(1_000, 1_000); // 1000 units/s, a second's worth at once
        let t0 = 5_000 * MS;
        assert!(b.take(600, t0));
        assert!(!b.take(600, t0), "refused, and costs nothing");
        assert!(b.take(400, t0));
        assert!(!b.take(1, t0));
        assert!(b.take(500, t0 + 500 * MS));
        assert!(!b.take(u64::MAX, t0 + 10_000 * MS));
        assert!(b.take(1_000, t0 + 10_000 * MS));
    }

    #[test]
    fn threads_never_exceed_the_rate() {
        use std::sync::Arc;
        let b = Arc::new(Bucket::new(1_000, 50));
        let now = 77 * MS;
        let taken: usize = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1_000).filter(|_| b.take(1, now)).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 50);
    }
}
