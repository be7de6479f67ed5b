//! Long-lived timers that glommio's reactor does not see.
//!
//! Whenever a glommio executor goes to sleep while any of its timers is pending, it arms a
//! timeout on its latency ring, and it cancels that timeout when it wakes: two more
//! `io_uring_enter` calls per wake-up (measured at concurrency 1: 8.9 instead of 7.0 per
//! wake-up, +8 % CPU per packet). A shard always has such timers (the deadline driver, the
//! keep-alive sweep, and, when configured, the CCP, accounts and ILDCP ticks), so they sleep
//! here instead: one thread for the whole process (`ilp-alarm`) keeps their due times and
//! wakes each sleeper's task when its time has come. A glommio task woken from another
//! thread is queued to its executor, which its eventfd wakes if it sleeps; so a shard pays
//! for a timer only when it fires, not on every wake-up. Short-lived bounds (handshakes,
//! dials, requests) stay glommio timers.
//!
//! Invariants: a [`Sleep`] is never ready before its due time; the thread wakes it at or
//! after that time (by the OS's timer slack, ~50 µs); a `Sleep` dropped early leaves nothing
//! behind (its entry is removed at once). The thread holds no task, only wakers.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The due times of every pending [`Sleep`] in the process.
struct Alarms {
    state: Mutex<State>,
    /// Signalled when an entry becomes the earliest (the thread may have to wake sooner).
    earlier: Condvar,
}

#[derive(Default)]
struct State {
    /// By due time, then by registration (ids are never reused).
    due: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

fn alarms() -> &'static Alarms {
    static ALARMS: OnceLock<&'static Alarms> = OnceLock::new();
    ALARMS.get_or_init(|| {
        let alarms: &'static Alarms = Box::leak(Box::new(Alarms {
            state: Mutex::new(State::default()),
            earlier: Condvar::new(),
        }));
        // Without this thread nothing would ever wake a sleeper: fail loudly at first use
        // (process start) rather than hang every deadline.
        std::thread::Builder::new()
            .name("ilp-alarm".into())
            .spawn(move || alarms.run())
            .expect("cannot start the alarm thread");
        alarms
    })
}

impl Alarms {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if one ever did, the map is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The thread: sleeps until the earliest due time (or until an earlier one arrives),
    /// then wakes every sleeper that is due.
    fn run(&self) {
        let mut state = self.lock();
        loop {
            let now = Instant::now();
            let mut woken = Vec::new();
            while let Some(entry) = state.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                woken.push(entry.remove());
            }
            if !woken.is_empty() {
                // Wake outside the lock: a woken task may register again at once.
                drop(state);
                woken.into_iter().for_each(Waker::wake);
                state = self.lock();
                continue;
            }
            state = match state.due.first_key_value().map(|((at, _), _)| *at) {
                None => self.earlier.wait(state).unwrap_or_else(|e| e.into_inner()),
                Some(at) => {
                    let left = at.saturating_duration_since(now);
                    self.earlier
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

/// Resolves at `at` (see the module doc).
pub fn sleep_until(at: Instant) -> Sleep {
    Sleep { at, key: None }
}

/// Resolves after `dur` (see the module doc).
pub fn sleep(dur: Duration) -> Sleep {
    sleep_until(Instant::now() + dur)
}

/// Runs `fut` until `dur` has passed; `None` when the time came first.
pub async fn within<T>(dur: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        sleep(dur).await;
        None
    })
    .await
}

/// A sleep until a due time, registered with the alarm thread while it is pending.
#[must_use = "a Sleep does nothing unless awaited"]
pub struct Sleep {
    at: Instant,
    /// Its entry in the alarm thread's map, once polled.
    key: Option<(Instant, u64)>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            self.unregister();
            return Poll::Ready(());
        }
        let alarms = alarms();
        let mut state = alarms.lock();
        if let Some(key) = self.key {
            match state.due.get_mut(&key) {
                Some(w) => {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                    return Poll::Pending;
                }
                // Fired between our clock reading and the lock: it is time.
                None => {
                    self.key = None;
                    return Poll::Ready(());
                }
            }
        }
        let key = (self.at, state.next_id);
        state.next_id += 1;
        let earliest = state.due.first_key_value().is_none_or(|(k, _)| key < *k);
        state.due.insert(key, cx.waker().clone());
        drop(state);
        self.key = Some(key);
        if earliest {
            alarms.earlier.notify_one();
        }
        Poll::Pending
    }
}

impl Sleep {
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            alarms().lock().due.remove(&key);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A glommio task sleeping here is woken by the alarm thread, and not before its time.
    #[test]
    fn wakes_a_shard_task_at_its_time() {
        let slept = crate::testkit::run_local(|| async {
            let start = Instant::now();
            sleep(Duration::from_millis(30)).await;
            start.elapsed()
        });
        assert!(slept >= Duration::from_millis(30), "woke early: {slept:?}");
        assert!(slept < Duration::from_secs(2), "woke late: {slept:?}");
    }

    /// Sleepers wake in due order, and one registered later but due earlier is not held
    /// back by the one the thread was already waiting for.
    #[test]
    fn an_earlier_sleeper_is_not_held_back() {
        let order = crate::testkit::run_local(|| async {
            let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let long = {
                let order = order.clone();
                glommio::spawn_local(async move {
                    sleep(Duration::from_millis(1500)).await;
                    order.borrow_mut().push("long");
                })
            };
            // Let the long sleeper register first.
            glommio::executor().yield_task_queue_now().await;
            let start = Instant::now();
            sleep(Duration::from_millis(20)).await;
            order.borrow_mut().push("short");
            let short_took = start.elapsed();
            long.await;
            let order = order.borrow().clone();
            (order, short_took)
        });
        assert_eq!(order.0, vec!["short", "long"]);
        assert!(
            order.1 < Duration::from_millis(1000),
            "held back: {:?}",
            order.1
        );
    }

    /// A sleep dropped before its time leaves no entry; `within` gives the future's output
    /// when it is first and `None` when the time is.
    #[test]
    fn dropped_sleeps_leave_nothing_and_within_bounds() {
        let (first, late, left) = crate::testkit::run_local(|| async {
            let first = within(Duration::from_secs(5), async { 7 }).await;
            let late = within(
                Duration::from_millis(10),
                futures_lite::future::pending::<u8>(),
            )
            .await;
            let left = {
                let mut s = Box::pin(sleep(Duration::from_secs(60)));
                let _ = futures_lite::future::poll_once(s.as_mut()).await;
                let key = s.key.expect("registered");
                let registered = alarms().lock().due.contains_key(&key);
                drop(s);
                (registered, alarms().lock().due.contains_key(&key))
            };
            (first, late, left)
        });
        assert_eq!(first, Some(7));
        assert_eq!(late, None);
        assert_eq!(left, (true, false));
    }
}
