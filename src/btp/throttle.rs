//! Failed BTP logins per remote IP (one per shard, sans-IO: the caller passes `now`).
//!
//! An address with `max_failures` failed logins within a window is refused at once (its
//! connections are closed before the handshake) until that window ends. The table is bounded:
//! expired windows are dropped when it is full, and then the oldest window, so a flood of
//! addresses cannot grow it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Addresses tracked at most (per shard).
const MAX_TRACKED: usize = 4096;

pub struct AuthThrottle {
    max_failures: u32,
    window: Duration,
    /// Failures and the start of their window, per address.
    seen: HashMap<IpAddr, (u32, Instant)>,
}

impl AuthThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        AuthThrottle {
            max_failures,
            window,
            seen: HashMap::new(),
        }
    }

    /// Whether `ip` may try to log in now.
    pub fn allowed(&self, ip: IpAddr, now: Instant) -> bool {
        match self.seen.get(&ip) {
            Some((n, since)) => *n < self.max_failures || now.duration_since(*since) >= self.window,
            None => true,
        }
    }

    /// Counts a failed login; true when this failure blocks the address (log that once).
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.seen.contains_key(&ip) && self.seen.len() >= MAX_TRACKED {
            let window = self.window;
            self.seen
                .retain(|_, (_, since)| now.duration_since(*since) < window);
            if self.seen.len() >= MAX_TRACKED {
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (_, s))| *s)
                    .map(|(k, _)| *k)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        let e = self.seen.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 += 1;
        e.0 == self.max_failures
    }

    pub fn tracked(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let mut t = AuthThrottle::new(3, Duration::from_secs(60));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(!t.failed(ip, t0));
        assert!(!t.failed(ip, t0));
        assert!(t.allowed(ip, t0));
        assert!(t.failed(ip, t0), "the third failure blocks");
        assert!(!t.allowed(ip, t0 + Duration::from_secs(59)));
        assert!(t.allowed(other, t0), "others are not affected");
        assert!(t.allowed(ip, t0 + Duration::from_secs(60)));
        assert!(!t.failed(ip, t0 + Duration::from_secs(61)), "a new window");
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = AuthThrottle::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.failed(
                IpAddr::from(i.to_be_bytes()),
                t0 + Duration::from_millis(u64::from(i)),
            );
        }
        assert!(t.tracked() <= MAX_TRACKED);
    }
}
