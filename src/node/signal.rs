//! [`Signal`]: tells the shards that something they watch changed (the peer set, the stop
//! flag), so their watchers sleep until then instead of polling on a timer. `notify` may be
//! called from any thread (the admin thread, the caller of `stop`); a glommio task's waker
//! woken from another thread is queued to its executor, which is woken if it sleeps.
//!
//! Invariant: a waiter never misses a notify: it registers its waker and then re-reads the
//! sequence number before it sleeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

#[derive(Debug, Default)]
pub struct Signal {
    seq: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl Signal {
    /// The current sequence number (pass it to [`Signal::changed`]).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Something changed: wakes every waiter.
    pub fn notify(&self) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves with the new sequence number once it differs from `seen`.
    pub async fn changed(&self, seen: u64) -> u64 {
        std::future::poll_fn(|cx| {
            let now = self.seq();
            if now != seen {
                return Poll::Ready(now);
            }
            {
                let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
            }
            // A notify between the first read and the registration is seen here.
            let now = self.seq();
            if now != seen {
                Poll::Ready(now)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// A glommio task asleep in `changed` is woken by a notify from a plain thread.
    #[test]
    fn wakes_a_shard_task_from_another_thread() {
        let signal = Arc::new(Signal::default());
        let s2 = signal.clone();
        let notifier = std::thread::spawn(move || {
            // Notify only once the task has registered (it is asleep, not merely late).
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while s2.wakers.lock().unwrap().is_empty() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            s2.notify();
        });
        let woke = crate::testkit::run_local(move || async move {
            let seen = signal.seq();
            crate::btp::within(Duration::from_secs(5), signal.changed(seen)).await
        });
        notifier.join().unwrap();
        assert_eq!(woke, Some(1));
    }
}
