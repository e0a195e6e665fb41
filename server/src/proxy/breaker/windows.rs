//! Sliding windows of what each agent did recently, for the breaker's detectors.
//!
//! Two stores behind [`Windows`]: [`MemoryWindows`] (one process) and
//! [`RedisWindows`] (every replica sees the whole fleet's traffic, chosen by
//! `REDIS_URL`). [`Resilient`] puts Redis first and falls back to memory while
//! Redis is unreachable — logged loudly once per outage — so detectors keep
//! working on local traffic. Money never depends on this: budgets live in the
//! database.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::redis_link::RedisLink;

/// What one finished call counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Performed, upstream answered below 500.
    Ok,
    /// Performed, upstream answered 5xx, timed out or was unreachable.
    UpstreamError,
    /// Denied by policy, egress, secret or budget.
    Denied,
}

impl Kind {
    fn code(self) -> char {
        match self {
            Kind::Ok => 'o',
            Kind::UpstreamError => 'e',
            Kind::Denied => 'd',
        }
    }

    fn from_code(c: char) -> Option<Self> {
        match c {
            'o' => Some(Kind::Ok),
            'e' => Some(Kind::UpstreamError),
            'd' => Some(Kind::Denied),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Observation {
    pub request_id: String,
    pub kind: Kind,
    pub spend_micros: i64,
    /// The host called (performed calls only).
    pub host: Option<String>,
}

/// Totals over the window, the observation just recorded included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub total: u64,
    pub denied: u64,
    pub upstream_errors: u64,
    pub performed: u64,
    pub spend_micros: i64,
    /// Hosts this agent had never called before, first called within the window.
    pub new_hosts: u64,
}

impl Stats {
    fn add(&mut self, kind: Kind, spend: i64, new_host: bool) {
        self.total += 1;
        match kind {
            Kind::Ok => self.performed += 1,
            Kind::UpstreamError => {
                self.performed += 1;
                self.upstream_errors += 1
            }
            Kind::Denied => self.denied += 1,
        }
        self.spend_micros = self.spend_micros.saturating_add(spend);
        self.new_hosts += u64::from(new_host);
    }
}

#[async_trait::async_trait]
pub trait Windows: Send + Sync {
    /// Records `obs` for `agent` and returns the window's totals.
    async fn observe(&self, agent: Uuid, obs: &Observation, window: Duration) -> Result<Stats, String>;
    /// Forgets the agent's window (after a trip, so a cool-down starts clean).
    async fn clear(&self, agent: Uuid) -> Result<(), String>;
}

/// Entries kept per agent at most; beyond that the oldest go (the burst detector
/// has long fired by then).
const MAX_ENTRIES: usize = 100_000;
/// Hosts remembered per agent as "seen".
const MAX_KNOWN_HOSTS: usize = 10_000;

#[derive(Default)]
struct AgentWindow {
    entries: VecDeque<(Instant, Kind, i64, bool)>,
    known_hosts: HashSet<String>,
}

#[derive(Default)]
pub struct MemoryWindows {
    agents: Mutex<HashMap<Uuid, AgentWindow>>,
}

impl MemoryWindows {
    fn observe_now(&self, agent: Uuid, obs: &Observation, window: Duration) -> Stats {
        let now = Instant::now();
        let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        let w = agents.entry(agent).or_default();
        let new_host = match &obs.host {
            Some(h) if w.known_hosts.len() < MAX_KNOWN_HOSTS => w.known_hosts.insert(h.clone()),
            _ => false,
        };
        w.entries.push_back((now, obs.kind, obs.spend_micros, new_host));
        while w.entries.len() > MAX_ENTRIES
            || w.entries.front().is_some_and(|(at, ..)| now.duration_since(*at) > window)
        {
            w.entries.pop_front();
        }
        let mut stats = Stats::default();
        for (_, kind, spend, new_host) in &w.entries {
            stats.add(*kind, *spend, *new_host);
        }
        stats
    }
}

#[async_trait::async_trait]
impl Windows for MemoryWindows {
    async fn observe(&self, agent: Uuid, obs: &Observation, window: Duration) -> Result<Stats, String> {
        Ok(self.observe_now(agent, obs, window))
    }

    async fn clear(&self, agent: Uuid) -> Result<(), String> {
        if let Some(w) = self.agents.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&agent) {
            w.entries.clear();
        }
        Ok(())
    }
}

/// Redis: a sorted set of recent calls per agent (score: milliseconds) and a set
/// of the hosts it has called. Members encode `kind|spend|new_host|request_id`.
pub struct RedisWindows {
    link: RedisLink,
}

impl RedisWindows {
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self { link: RedisLink::new(url, "breaker windows")? })
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, String> {
        self.link.run(pipe).await
    }
}

fn keys(agent: Uuid) -> (String, String) {
    (format!("aegis:breaker:{agent}:calls"), format!("aegis:breaker:{agent}:hosts"))
}

#[async_trait::async_trait]
impl Windows for RedisWindows {
    async fn observe(&self, agent: Uuid, obs: &Observation, window: Duration) -> Result<Stats, String> {
        let (calls, hosts) = keys(agent);
        let new_host = match &obs.host {
            Some(h) => {
                let mut p = redis::pipe();
                p.sadd(&hosts, h).expire(&hosts, 30 * 24 * 3600).ignore();
                let (added,): (i64,) = self.run(&p).await?;
                added == 1
            }
            None => false,
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let window_ms = window.as_millis() as i64;
        let member =
            format!("{}|{}|{}|{}", obs.kind.code(), obs.spend_micros, u8::from(new_host), obs.request_id);
        let mut p = redis::pipe();
        p.zadd(&calls, member, now_ms)
            .ignore()
            .zrembyscore(&calls, "-inf", now_ms - window_ms)
            .ignore()
            .pexpire(&calls, window_ms + 1000)
            .ignore()
            .zrangebyscore(&calls, now_ms - window_ms, "+inf");
        let (members,): (Vec<String>,) = self.run(&p).await?;
        let mut stats = Stats::default();
        for m in members {
            let mut parts = m.splitn(4, '|');
            let kind = parts.next().and_then(|k| k.chars().next()).and_then(Kind::from_code);
            let spend = parts.next().and_then(|s| s.parse::<i64>().ok());
            let new_host = parts.next() == Some("1");
            if let (Some(kind), Some(spend)) = (kind, spend) {
                stats.add(kind, spend, new_host);
            }
        }
        Ok(stats)
    }

    async fn clear(&self, agent: Uuid) -> Result<(), String> {
        let mut p = redis::pipe();
        p.del(keys(agent).0).ignore();
        self.run::<()>(&p).await
    }
}

/// Redis first; memory while Redis is unreachable (see [`RedisLink`]).
pub struct Resilient {
    redis: Option<RedisWindows>,
    memory: MemoryWindows,
}

impl Resilient {
    pub fn new(redis_url: Option<&str>) -> Self {
        let redis = redis_url.and_then(|url| match RedisWindows::new(url) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL unusable for breaker windows; using local state");
                None
            }
        });
        Self { redis, memory: MemoryWindows::default() }
    }
}

#[async_trait::async_trait]
impl Windows for Resilient {
    async fn observe(&self, agent: Uuid, obs: &Observation, window: Duration) -> Result<Stats, String> {
        let local = self.memory.observe_now(agent, obs, window);
        let Some(redis) = &self.redis else { return Ok(local) };
        // Local traffic is part of the fleet's, so the larger view wins.
        Ok(match redis.observe(agent, obs, window).await {
            Ok(shared) if shared.total >= local.total => shared,
            _ => local,
        })
    }

    async fn clear(&self, agent: Uuid) -> Result<(), String> {
        self.memory.clear(agent).await?;
        if let Some(redis) = &self.redis
            && let Err(e) = redis.clear(agent).await
        {
            tracing::warn!(error = %e, "could not clear an agent's breaker window in Redis");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(kind: Kind, host: Option<&str>) -> Observation {
        Observation {
            request_id: Uuid::now_v7().to_string(),
            kind,
            spend_micros: 10,
            host: host.map(Into::into),
        }
    }

    #[tokio::test]
    async fn memory_windows_count_kinds_spend_and_new_hosts() {
        let w = MemoryWindows::default();
        let agent = Uuid::now_v7();
        let win = Duration::from_secs(60);
        w.observe(agent, &obs(Kind::Ok, Some("a.example")), win).await.unwrap();
        w.observe(agent, &obs(Kind::Ok, Some("a.example")), win).await.unwrap();
        w.observe(agent, &obs(Kind::UpstreamError, Some("b.example")), win).await.unwrap();
        let s = w.observe(agent, &obs(Kind::Denied, None), win).await.unwrap();
        assert_eq!(
            s,
            Stats { total: 4, denied: 1, upstream_errors: 1, performed: 3, spend_micros: 40, new_hosts: 2 }
        );
        let other = w.observe(Uuid::now_v7(), &obs(Kind::Denied, None), win).await.unwrap();
        assert_eq!(other.total, 1, "agents have separate windows");
        w.clear(agent).await.unwrap();
        let s = w.observe(agent, &obs(Kind::Ok, Some("a.example")), win).await.unwrap();
        assert_eq!((s.total, s.new_hosts), (1, 0), "cleared calls, but known hosts stay known");
    }

    #[tokio::test]
    async fn memory_windows_forget_what_slid_out() {
        let w = MemoryWindows::default();
        let agent = Uuid::now_v7();
        w.observe(agent, &obs(Kind::Denied, None), Duration::from_millis(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let s = w.observe(agent, &obs(Kind::Ok, None), Duration::from_millis(30)).await.unwrap();
        assert_eq!((s.total, s.denied), (1, 0));
    }

    /// Runs against the Redis at `AEGIS_TEST_REDIS_URL` (CI sets it).
    #[tokio::test]
    async fn redis_windows_share_state_between_instances() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else {
            eprintln!("SKIPPED redis_windows_share_state_between_instances: AEGIS_TEST_REDIS_URL is not set");
            return;
        };
        let (a, b) = (RedisWindows::new(&url).unwrap(), RedisWindows::new(&url).unwrap());
        let agent = Uuid::now_v7();
        let win = Duration::from_secs(60);
        a.observe(agent, &obs(Kind::Denied, None), win).await.unwrap();
        a.observe(agent, &obs(Kind::Ok, Some("x.example")), win).await.unwrap();
        let s = b.observe(agent, &obs(Kind::Ok, Some("x.example")), win).await.unwrap();
        assert_eq!((s.total, s.denied, s.new_hosts), (3, 1, 1), "replica b sees replica a's calls");
        b.clear(agent).await.unwrap();
        let s = a.observe(agent, &obs(Kind::Ok, None), win).await.unwrap();
        assert_eq!(s.total, 1);
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_local_state() {
        // Nothing listens on port 1.
        let w = Resilient::new(Some("redis://127.0.0.1:1"));
        let agent = Uuid::now_v7();
        let win = Duration::from_secs(60);
        w.observe(agent, &obs(Kind::Denied, None), win).await.unwrap();
        let s = w.observe(agent, &obs(Kind::Denied, None), win).await.unwrap();
        assert_eq!((s.total, s.denied), (2, 2));
    }
}
