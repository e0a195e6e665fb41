//! Sign-in and registration throttling, counted in fixed windows; past a limit the
//! answer is 429 with `Retry-After`.
//!
//! Every sign-in attempt is counted *before* any password work, atomically, so
//! parallel attempts cannot slip past a limit while earlier ones are still hashing:
//! - per client address (`login-ip`): every attempt;
//! - per (email, client address) (`login-user`): locks that email for that client
//!   after `max_failures_per_email` attempts without a success;
//! - per email (`login-email`): locks the email for everyone only after
//!   [`EMAIL_WIDE_FACTOR`] times as many, so one client cannot lock an owner out.
//!
//! A success clears the email's counters. Input that is not a valid email is never
//! counted against any email. Registration has its own per-address bucket
//! (`register-ip`). Client addresses are keyed by [`client_key`]: IPv6 on its /64.
//!
//! Counters sit behind [`WindowCounter`] because this is state that really differs
//! between one process ([`MemoryCounter`]) and several replicas ([`SharedCounter`]:
//! Redis when `REDIS_URL` is set, so an attacker cannot multiply the limits by the
//! number of replicas; memory while Redis is unreachable).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::error::AppError;

/// How many more attempts than a single client may make lock an email for everyone.
pub const EMAIL_WIDE_FACTOR: u64 = 10;

#[async_trait::async_trait]
pub trait WindowCounter: Send + Sync {
    /// Adds one to `key` and returns the new count and the time left in its window.
    /// Atomic: of concurrent hits each sees a distinct count.
    async fn hit(&self, key: &str, window: Duration) -> (u64, Duration);
    /// The current count and time left, without adding.
    async fn peek(&self, key: &str) -> (u64, Duration);
    async fn clear(&self, key: &str);
}

/// Shards of the in-memory counter: each has its own lock, so no operation takes a
/// lock over the whole map.
const SHARDS: usize = 64;
/// Most keys one process remembers (about 100 bytes each). A full shard first drops
/// its expired windows, then the window that ends soonest; shard choice is keyed by
/// a per-process random hasher, so no one can aim a flood of keys at one shard.
pub const MEMORY_CAPACITY: usize = 65_536;
const SHARD_CAPACITY: usize = MEMORY_CAPACITY / SHARDS;

type Shard = HashMap<String, (u64, Instant)>;

pub struct MemoryCounter {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
}

impl Default for MemoryCounter {
    fn default() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::default()).collect(), hasher: RandomState::new() }
    }
}

impl MemoryCounter {
    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys held across all shards (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn hit_now(&self, key: &str, window: Duration) -> (u64, Duration) {
        let now = Instant::now();
        let mut map = self.shard(key);
        if !map.contains_key(key) && map.len() >= SHARD_CAPACITY {
            // Bounded work: one shard of at most SHARD_CAPACITY entries.
            map.retain(|_, (_, ends)| *ends > now);
            if map.len() >= SHARD_CAPACITY
                && let Some(oldest) = map.iter().min_by_key(|(_, (_, ends))| *ends).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
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
        match self.shard(key).get(key) {
            Some((count, ends)) if *ends > now => (*count, *ends - now),
            _ => (0, Duration::ZERO),
        }
    }

    fn clear_now(&self, key: &str) {
        self.shard(key).remove(key);
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

/// One atomic step: count, start the window on the first hit (or heal a key that
/// somehow lost its expiry), report count and time left.
static HIT_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"local c = redis.call('INCR', KEYS[1])
if c == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {c, redis.call('PTTL', KEYS[1])}",
    )
});

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
        format!("aegis:throttle:{}", crate::digest::sha256_hex(key.as_bytes()))
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
            let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
            if let Ok((count, ttl)) = redis.invoke::<(u64, i64)>(HIT_SCRIPT.key(&k).arg(ms)).await {
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

/// The throttling key of a client address: IPv4 as is (an IPv4-mapped IPv6 address
/// as its IPv4), IPv6 by its /64, since one subscriber usually holds a whole /64.
pub fn client_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
        Err(_) => ip.to_owned(),
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

    async fn count(&self, key: &str, limit: u64) -> Result<(), AppError> {
        let (count, left) = self.counter.hit(key, self.window).await;
        if count > limit {
            return Err(AppError::rate_limited(left.as_secs() + 1));
        }
        Ok(())
    }

    fn user_key(email: &str, ip: Option<&str>) -> String {
        format!("login-user:{}|{email}", ip.map(client_key).unwrap_or_default())
    }

    /// Called before any password work, and counts this attempt at once. `email` is
    /// `None` when the input is not a valid address: then only the client is counted.
    pub async fn admit_login(&self, email: Option<&str>, ip: Option<&str>) -> Result<(), AppError> {
        if let Some(ip) = ip {
            self.count(&format!("login-ip:{}", client_key(ip)), self.max_attempts_per_ip).await?;
        }
        if let Some(email) = email {
            self.count(&Self::user_key(email, ip), self.max_failures_per_email).await?;
            let email_wide = self.max_failures_per_email.saturating_mul(EMAIL_WIDE_FACTOR);
            self.count(&format!("login-email:{email}"), email_wide).await?;
        }
        Ok(())
    }

    /// A successful sign-in: the email's counters start over.
    pub async fn succeeded(&self, email: &str, ip: Option<&str>) {
        self.counter.clear(&Self::user_key(email, ip)).await;
        self.counter.clear(&format!("login-email:{email}")).await;
    }

    /// Registration hashes a password too: its own budget per client address.
    pub async fn admit_registration(&self, ip: Option<&str>) -> Result<(), AppError> {
        match ip {
            Some(ip) => {
                self.count(&format!("register-ip:{}", client_key(ip)), self.max_attempts_per_ip).await
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(window: Duration) -> LoginThrottle {
        LoginThrottle::new(Arc::new(MemoryCounter::default()), 3, 5, window)
    }

    async fn attempts(t: &LoginThrottle, email: Option<&str>, ip: Option<&str>, n: usize) -> Vec<u16> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(t.admit_login(email, ip).await.err().map_or(200, |e| e.status));
        }
        out
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
        let ip = Some("10.9.8.7");
        a.admit_login(Some(&email), ip).await.unwrap();
        b.admit_login(Some(&email), ip).await.unwrap();
        a.admit_login(Some(&email), ip).await.unwrap();
        let err = b.admit_login(Some(&email), ip).await.unwrap_err();
        assert_eq!(err.status, 429, "three attempts across two replicas lock the email for this client");
        assert!((1..=61).contains(&err.retry_after_secs.unwrap()));
        a.succeeded(&email, ip).await;
        assert!(b.admit_login(Some(&email), ip).await.is_ok());
    }

    /// The Redis counter is atomic: of many parallel hits, each sees its own count.
    #[tokio::test]
    async fn redis_hits_are_atomic() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else {
            eprintln!("SKIPPED redis_hits_are_atomic: AEGIS_TEST_REDIS_URL is not set");
            return;
        };
        let c = Arc::new(SharedCounter::new(Some(&url)));
        let key = format!("atomic-{}", uuid::Uuid::now_v7());
        let hits = (0..40).map(|_| {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { c.hit(&key, Duration::from_secs(60)).await })
        });
        let mut counts: Vec<u64> =
            futures::future::join_all(hits).await.into_iter().map(|r| r.unwrap().0).collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=40).collect::<Vec<u64>>());
        let (_, left) = c.peek(&key).await;
        assert!(left > Duration::ZERO && left <= Duration::from_secs(60), "window set: {left:?}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_memory() {
        let t = LoginThrottle::new(
            Arc::new(SharedCounter::new(Some("redis://127.0.0.1:1"))),
            3,
            5,
            Duration::from_secs(60),
        );
        assert_eq!(attempts(&t, Some("a@x.io"), None, 4).await, [200, 200, 200, 429]);
    }

    #[tokio::test]
    async fn email_locks_after_max_attempts_and_success_clears() {
        let t = throttle(Duration::from_secs(60));
        assert_eq!(attempts(&t, Some("a@x.io"), None, 3).await, [200, 200, 200]);
        let err = t.admit_login(Some("a@x.io"), None).await.unwrap_err();
        assert_eq!(err.status, 429);
        assert!((1..=61).contains(&err.retry_after_secs.unwrap()));
        assert!(t.admit_login(Some("b@x.io"), None).await.is_ok(), "other emails unaffected");
        t.succeeded("a@x.io", None).await;
        assert!(t.admit_login(Some("a@x.io"), None).await.is_ok());
    }

    /// One client's failures lock the email for that client only; the owner elsewhere
    /// can still sign in until many clients together pass the email-wide limit.
    #[tokio::test]
    async fn one_client_cannot_lock_an_owner_out() {
        let t = LoginThrottle::new(Arc::new(MemoryCounter::default()), 3, 1000, Duration::from_secs(60));
        let victim = Some("victim@x.io");
        assert_eq!(attempts(&t, victim, Some("203.0.113.9"), 4).await, [200, 200, 200, 429]);
        assert!(t.admit_login(victim, Some("198.51.100.1")).await.is_ok(), "owner's own client unaffected");
        // Spread over many clients, the email-wide limit (3 × factor) still holds.
        let mut refused = 0;
        for i in 0..(3 * EMAIL_WIDE_FACTOR + 5) {
            if t.admit_login(victim, Some(&format!("192.0.2.{}", i % 250))).await.is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 5, "email-wide limit applies: {refused}");
    }

    /// Malformed emails count against the client only, never against any email, and
    /// registration has a bucket of its own.
    #[tokio::test]
    async fn invalid_emails_and_registration_have_their_own_buckets() {
        let t = throttle(Duration::from_secs(60));
        for _ in 0..5 {
            t.admit_login(None, Some("10.0.0.1")).await.unwrap();
        }
        assert_eq!(t.admit_login(None, Some("10.0.0.1")).await.unwrap_err().status, 429);
        assert!(t.admit_login(Some("a@x.io"), Some("10.0.0.2")).await.is_ok());
        for _ in 0..5 {
            t.admit_registration(Some("10.0.0.1")).await.unwrap();
        }
        assert_eq!(t.admit_registration(Some("10.0.0.1")).await.unwrap_err().status, 429);
        assert!(t.admit_registration(Some("10.0.0.3")).await.is_ok());
    }

    #[tokio::test]
    async fn ip_limit_counts_every_attempt() {
        let t = throttle(Duration::from_secs(60));
        for i in 0..5 {
            t.admit_login(Some(&format!("u{i}@x.io")), Some("10.0.0.1")).await.unwrap();
        }
        assert_eq!(t.admit_login(Some("new@x.io"), Some("10.0.0.1")).await.unwrap_err().status, 429);
        assert!(t.admit_login(Some("new@x.io"), Some("10.0.0.2")).await.is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_on_their_64() {
        assert_eq!(client_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(client_key("2001:db8:1:2:bbbb:cccc:dddd:eeee"), "2001:db8:1:2::/64");
        assert_ne!(client_key("2001:db8:1:3::1"), client_key("2001:db8:1:2::1"));
        assert_eq!(client_key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(client_key("192.0.2.7"), "192.0.2.7");
    }

    #[tokio::test]
    async fn ipv6_addresses_in_one_64_share_a_budget() {
        let t = throttle(Duration::from_secs(60));
        for i in 1..=5 {
            t.admit_login(None, Some(&format!("2001:db8:7:7::{i:x}"))).await.unwrap();
        }
        assert_eq!(t.admit_login(None, Some("2001:db8:7:7:ffff::1")).await.unwrap_err().status, 429);
        assert!(t.admit_login(None, Some("2001:db8:7:8::1")).await.is_ok());
    }

    /// Parallel attempts each count before any password work: of 50 at once, exactly
    /// the limit are admitted.
    #[tokio::test]
    async fn parallel_attempts_cannot_pass_the_limit() {
        let t = Arc::new(throttle(Duration::from_secs(60)));
        let tasks = (0..50).map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.admit_login(Some("a@x.io"), None).await.is_ok() })
        });
        let admitted =
            futures::future::join_all(tasks).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(admitted, 3);
    }

    /// Memory stays bounded however many distinct keys arrive, and a shard that is
    /// full drops expired windows first.
    #[test]
    fn memory_is_bounded() {
        let c = MemoryCounter::default();
        for i in 0..(MEMORY_CAPACITY * 2) {
            c.hit_now(&format!("k{i}"), Duration::from_secs(60));
        }
        assert!(c.len() <= MEMORY_CAPACITY, "{}", c.len());
        let short = MemoryCounter::default();
        for i in 0..MEMORY_CAPACITY {
            short.hit_now(&format!("k{i}"), Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(5));
        short.hit_now("fresh", Duration::from_secs(60));
        assert_eq!(short.peek_now("fresh").0, 1);
    }

    #[tokio::test]
    async fn windows_expire() {
        let t = throttle(Duration::from_millis(50));
        attempts(&t, Some("a@x.io"), None, 3).await;
        assert!(t.admit_login(Some("a@x.io"), None).await.is_err());
        tokio::time::sleep(Duration::from_millis(70)).await;
        assert!(t.admit_login(Some("a@x.io"), None).await.is_ok());
    }
}
