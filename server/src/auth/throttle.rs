//! Login throttling: failed sign-ins per email and attempts per client address are
//! counted in fixed windows; past the limit the answer is 429 with `Retry-After`.
//!
//! Counters sit behind [`WindowCounter`] because this is state that really differs
//! between one process (memory) and several replicas (Redis, added with fan-out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::error::AppError;

pub trait WindowCounter: Send + Sync {
    /// Adds one to `key` and returns the new count and the time left in its window.
    fn hit(&self, key: &str, window: Duration) -> (u64, Duration);
    /// The current count and time left, without adding.
    fn peek(&self, key: &str) -> (u64, Duration);
    fn clear(&self, key: &str);
}

#[derive(Default)]
pub struct MemoryCounter {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

const PRUNE_ABOVE: usize = 10_000;

impl WindowCounter for MemoryCounter {
    fn hit(&self, key: &str, window: Duration) -> (u64, Duration) {
        let now = Instant::now();
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, (_, ends)| *ends > now);
        }
        let entry = map.entry(key.to_owned()).or_insert((0, now + window));
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        (entry.0, entry.1 - now)
    }

    fn peek(&self, key: &str) -> (u64, Duration) {
        let now = Instant::now();
        let map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((count, ends)) if *ends > now => (*count, *ends - now),
            _ => (0, Duration::ZERO),
        }
    }

    fn clear(&self, key: &str) {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    counter: Arc<dyn WindowCounter>,
    max_failures_per_email: u64,
    max_attempts_per_ip: u64,
    window: Duration,
}

impl LoginThrottle {
    pub fn new(
        counter: Arc<dyn WindowCounter>,
        max_failures_per_email: u64,
        max_attempts_per_ip: u64,
        window: Duration,
    ) -> Self {
        Self { counter, max_failures_per_email, max_attempts_per_ip, window }
    }

    /// Called before any password work: counts the attempt against the client
    /// address and refuses when either the address or the email is over its limit.
    pub fn admit(&self, email: &str, ip: Option<&str>) -> Result<(), AppError> {
        if let Some(ip) = ip {
            let (count, left) = self.counter.hit(&format!("login-ip:{ip}"), self.window);
            if count > self.max_attempts_per_ip {
                return Err(AppError::rate_limited(left.as_secs() + 1));
            }
        }
        let (failures, left) = self.counter.peek(&format!("login-email:{email}"));
        if failures >= self.max_failures_per_email {
            return Err(AppError::rate_limited(left.as_secs() + 1));
        }
        Ok(())
    }

    pub fn failed(&self, email: &str) {
        self.counter.hit(&format!("login-email:{email}"), self.window);
    }

    pub fn succeeded(&self, email: &str) {
        self.counter.clear(&format!("login-email:{email}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(window: Duration) -> LoginThrottle {
        LoginThrottle::new(Arc::new(MemoryCounter::default()), 3, 5, window)
    }

    #[test]
    fn email_locks_after_max_failures_and_success_clears() {
        let t = throttle(Duration::from_secs(60));
        for _ in 0..3 {
            t.admit("a@x.io", None).unwrap();
            t.failed("a@x.io");
        }
        let err = t.admit("a@x.io", None).unwrap_err();
        assert_eq!(err.status, 429);
        assert!((1..=61).contains(&err.retry_after_secs.unwrap()));
        assert!(t.admit("b@x.io", None).is_ok(), "other emails unaffected");
        t.succeeded("a@x.io");
        assert!(t.admit("a@x.io", None).is_ok());
    }

    #[test]
    fn ip_limit_counts_every_attempt() {
        let t = throttle(Duration::from_secs(60));
        for i in 0..5 {
            t.admit(&format!("u{i}@x.io"), Some("10.0.0.1")).unwrap();
        }
        assert_eq!(t.admit("new@x.io", Some("10.0.0.1")).unwrap_err().status, 429);
        assert!(t.admit("new@x.io", Some("10.0.0.2")).is_ok());
    }

    #[test]
    fn windows_expire() {
        let t = throttle(Duration::from_millis(50));
        for _ in 0..3 {
            t.failed("a@x.io");
        }
        assert!(t.admit("a@x.io", None).is_err());
        std::thread::sleep(Duration::from_millis(70));
        assert!(t.admit("a@x.io", None).is_ok());
    }
}
