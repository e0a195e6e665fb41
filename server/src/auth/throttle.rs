//! Login throttling: failed sign-ins per email and attempts per client address are
//! counted in fixed windows; past the limit the answer is 429 with `Retry-After`.
//!
//! Counters sit behind [`WindowCounter`] because this is state that really differs
//! between one process ([`MemoryCounter`]) and several replicas ([`SharedCounter`]:
//! Redis when `REDIS_URL` is set, so an attacker cannot multiply the limits by the
//! number of replicas; memory while Redis is unreachable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::error::AppError;

#[async_trait::async_trait]
pub trait WindowCounter: Send + Sync {
    /// Adds one to `key` and returns the new count and the time left in its window.
    async fn hit(&self, key: &str, window: Duration) -> (u64, Duration);
    /// The current count and time left, without adding.
    async fn peek(&self, key: &str) -> (u64, Duration);
    async fn clear(&self, key: &str);
}

#[derive(Default)]
pub struct MemoryCounter {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

const PRUNE_ABOVE: usize = 10_000;

impl MemoryCounter {
    fn hit_now(&self, key: &str, window: Duration) -> (u64, Duration) {
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

    fn peek_now(&self, key: &str) -> (u64, Duration) {
        let now = Instant::now();
        let map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((count, ends)) if *ends > now => (*count, *ends - now),
            _ => (0, Duration::ZERO),
        }
    }

    fn clear_now(&self, key: &str) {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[async_trait::async_trait]
impl WindowCounter for MemoryCounter {
    async fn hit(&self, key: &str, window: Duration) -> (u64, Duration) {
        self.hit_now(key, window)
    }

    async fn peek(&self, key: &str) -> (u64, Duration) {
        self.peek_now(key)
    }

    async fn clear(&self, key: &str) {
        self.clear_now(key)
    }
}

/// Redis when configured and reachable, else this replica's memory. Keys are
/// hashed, so no email address is stored in Redis.
pub struct SharedCounter {
    redis: Option<crate::redis_link::RedisLink>,
    memory: MemoryCounter,
}

impl SharedCounter {
    pub fn new(redis_url: Option<&str>) -> Self {
        let redis = redis_url.and_then(|url| match crate::redis_link::RedisLink::new(url, "sign-in throttling") {
            Ok(link) => Some(link),
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL unusable for sign-in throttling; using local state");
                None
            }
        });
        Self { redis, memory: MemoryCounter::default() }
    }

    fn redis_key(key: &str) -> String {
        format!("aegis:throttle:{}", crate::storage::sha256_hex(key.as_bytes()))
    }
}

fn left(pttl_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(pttl_ms).unwrap_or(0))
}

#[async_trait::async_trait]
impl WindowCounter for SharedCounter {
    async fn hit(&self, key: &str, window: Duration) -> (u64, Duration) {
        if let Some(redis) = &self.redis {
            let k = Self::redis_key(key);
            let mut p = redis::pipe();
            // The first hit of a window creates the key with its expiry; INCR keeps it.
            p.cmd("SET").arg(&k).arg(0).arg("PX").arg(window.as_millis() as u64).arg("NX").ignore();
            p.incr(&k, 1u64).pttl(&k);
            if let Ok((count, ttl)) = redis.run::<(u64, i64)>(&p).await {
                return (count, left(ttl));
            }
        }
        self.memory.hit_now(key, window)
    }

    async fn peek(&self, key: &str) -> (u64, Duration) {
        if let Some(redis) = &self.redis {
            let k = Self::redis_key(key);
            let mut p = redis::pipe();
            p.get(&k).pttl(&k);
            if let Ok((count, ttl)) = redis.run::<(Option<u64>, i64)>(&p).await {
                return (count.unwrap_or(0), left(ttl));
            }
        }
        self.memory.peek_now(key)
    }

    async fn clear(&self, key: &str) {
        if let Some(redis) = &self.redis {
            let mut p = redis::pipe();
            p.del(Self::redis_key(key)).ignore();
            let _ = redis.run::<()>(&p).await;
        }
        self.memory.clear_now(key);
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
    pub async fn admit(&self, email: &str, ip: Option<&str>) -> Result<(), AppError> {
        if let Some(ip) = ip {
            let (count, left) = self.counter.hit(&format!("login-ip:{ip}"), self.window).await;
            if count > self.max_attempts_per_ip {
                return Err(AppError::rate_limited(left.as_secs() + 1));
            }
        }
        let (failures, left) = self.counter.peek(&format!("login-email:{email}")).await;
        if failures >= self.max_failures_per_email {
            return Err(AppError::rate_limited(left.as_secs() + 1));
        }
        Ok(())
    }

    pub async fn failed(&self, email: &str) {
        self.counter.hit(&format!("login-email:{email}"), self.window).await;
    }

    pub async fn succeeded(&self, email: &str) {
        self.counter.clear(&format!("login-email:{email}")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(window: Duration) -> LoginThrottle {
        LoginThrottle::new(Arc::new(MemoryCounter::default()), 3, 5, window)
    }

    /// Two replicas' counters on one Redis count together (`AEGIS_TEST_REDIS_URL`).
    #[tokio::test]
    async fn redis_counters_are_shared_by_replicas() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else {
            eprintln!("SKIPPED redis_counters_are_shared_by_replicas: AEGIS_TEST_REDIS_URL is not set");
            return;
        };
        let window = Duration::from_secs(60);
        let a = LoginThrottle::new(Arc::new(SharedCounter::new(Some(&url))), 3, 5, window);
        let b = LoginThrottle::new(Arc::new(SharedCounter::new(Some(&url))), 3, 5, window);
        let email = format!("{}@x.io", uuid::Uuid::now_v7());
        a.failed(&email).await;
        b.failed(&email).await;
        a.failed(&email).await;
        let err = b.admit(&email, None).await.unwrap_err();
        assert_eq!(err.status, 429, "three failures across two replicas lock the email");
        assert!((1..=61).contains(&err.retry_after_secs.unwrap()));
        a.succeeded(&email).await;
        assert!(b.admit(&email, None).await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_memory() {
        let t = LoginThrottle::new(
            Arc::new(SharedCounter::new(Some("redis://127.0.0.1:1"))),
            3,
            5,
            Duration::from_secs(60),
        );
        for _ in 0..3 {
            t.failed("a@x.io").await;
        }
        assert_eq!(t.admit("a@x.io", None).await.unwrap_err().status, 429);
    }

    #[tokio::test]
    async fn email_locks_after_max_failures_and_success_clears() {
        let t = throttle(Duration::from_secs(60));
        for _ in 0..3 {
            t.admit("a@x.io", None).await.unwrap();
            t.failed("a@x.io").await;
        }
        let err = t.admit("a@x.io", None).await.unwrap_err();
        assert_eq!(err.status, 429);
        assert!((1..=61).contains(&err.retry_after_secs.unwrap()));
        assert!(t.admit("b@x.io", None).await.is_ok(), "other emails unaffected");
        t.succeeded("a@x.io").await;
        assert!(t.admit("a@x.io", None).await.is_ok());
    }

    #[tokio::test]
    async fn ip_limit_counts_every_attempt() {
        let t = throttle(Duration::from_secs(60));
        for i in 0..5 {
            t.admit(&format!("u{i}@x.io"), Some("10.0.0.1")).await.unwrap();
        }
        assert_eq!(t.admit("new@x.io", Some("10.0.0.1")).await.unwrap_err().status, 429);
        assert!(t.admit("new@x.io", Some("10.0.0.2")).await.is_ok());
    }

    #[tokio::test]
    async fn windows_expire() {
        let t = throttle(Duration::from_millis(50));
        for _ in 0..3 {
            t.failed("a@x.io").await;
        }
        assert!(t.admit("a@x.io", None).await.is_err());
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert!(t.admit("a@x.io", None).await.is_ok());
    }
}
