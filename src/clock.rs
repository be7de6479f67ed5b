//! The time as one batch of packets sees it.
//!
//! A link task handles everything one socket read brought as a batch ([`batch`]); inside it,
//! [`instant`] and [`timestamp`] read the clock once each and give that reading to every
//! packet of the batch (a clock read costs ~30 ns on this VM, and a forwarded packet needs
//! three or four). Outside a batch they read the clock.
//!
//! Invariant: a reading handed out in a batch was taken during that batch (at most one read's
//! worth of frames earlier: ~100 µs at saturation), so it is never later than the true time:
//! deadlines derived from it come early, never late, and expiry checks are in milliseconds.

use std::cell::Cell;
use std::time::Instant;

use crate::codec::Timestamp;

thread_local! {
    static IN_BATCH: Cell<bool> = const { Cell::new(false) };
    static INSTANT: Cell<Option<Instant>> = const { Cell::new(None) };
    static STAMP: Cell<Option<Timestamp>> = const { Cell::new(None) };
}

/// Marks a batch on this thread until dropped (it holds no reading across an `.await`: drop
/// it before awaiting).
pub struct Batch(());

/// Starts a batch: readings are cached until the returned guard is dropped.
pub fn batch() -> Batch {
    IN_BATCH.with(|b| b.set(true));
    Batch(())
}

impl Drop for Batch {
    fn drop(&mut self) {
        IN_BATCH.with(|b| b.set(false));
        INSTANT.with(|c| c.set(None));
        STAMP.with(|c| c.set(None));
    }
}

/// Monotonic time: the batch's reading, or the clock's.
pub fn instant() -> Instant {
    cached(&INSTANT, Instant::now)
}

/// Wall-clock time (ILP expiries): the batch's reading, or the clock's.
pub fn timestamp() -> Timestamp {
    cached(&STAMP, Timestamp::now)
}

fn cached<T: Copy + 'static>(
    cell: &'static std::thread::LocalKey<Cell<Option<T>>>,
    read: fn() -> T,
) -> T {
    if !IN_BATCH.with(Cell::get) {
        return read();
    }
    cell.with(|c| {
        c.get().unwrap_or_else(|| {
            let now = read();
            c.set(Some(now));
            now
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_per_batch() {
        let outside = instant();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            instant() > outside,
            "outside a batch every call reads the clock"
        );
        let b = batch();
        let (first, stamp) = (instant(), timestamp());
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(instant(), first);
        assert_eq!(timestamp(), stamp);
        drop(b);
        assert!(instant() > first);
        let _b = batch();
        assert!(instant() > first, "a new batch takes a new reading");
    }
}
