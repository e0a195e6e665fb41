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

    /// Undoes [`Self::add`] for an entry that slid out of the window.
    fn remove(&mut self, kind: Kind, spend: i64, new_host: bool) {
        self.total -= 1;
        match kind {
            Kind::Ok => self.performed -= 1,
            Kind::UpstreamError => {
                self.performed -= 1;
                self.upstream_errors -= 1
            }
            Kind::Denied => self.denied -= 1,
        }
        self.spend_micros = self.spend_micros.saturating_sub(spend);
        self.new_hosts -= u64::from(new_host);
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

/// The entries in the window and their running totals: an observation costs
/// O(1) amortised however busy the agent, not a walk over its whole window.
#[derive(Default)]
struct AgentWindow {
    entries: VecDeque<(Instant, Kind, i64, bool)>,
    totals: Stats,
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
        w.totals.add(obs.kind, obs.spend_micros, new_host);
        while w.entries.len() > MAX_ENTRIES
            || w.entries.front().is_some_and(|(at, ..)| now.duration_since(*at) > window)
        {
            if let Some((_, kind, spend, new_host)) = w.entries.pop_front() {
                w.totals.remove(kind, spend, new_host);
            }
        }
        w.totals.clone()
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
            w.totals = Stats::default();
        }
        Ok(())
    }
}

/// Redis: per agent, a sorted set of recent calls (score: milliseconds; members
/// encode `kind|spend|new_host|request_id`), a hash of their running totals and a
/// set of the hosts it has called. One Lua script records a call, drops what slid
/// out of the window (subtracting it from the totals) and answers the totals, so a
/// call is one round trip and costs the same however busy the agent — never a read
/// of its whole window — and replicas update one agent atomically.
pub struct RedisWindows {
    link: RedisLink,
    observe: redis::Script,
}

/// KEYS: calls (zset), totals (hash), hosts (set).
/// ARGV: now ms, cutoff ms (entries at or before it slid out), calls ttl ms, kind
/// code, spend, request id, host ('' for none), hosts ttl s.
/// Returns [total, o, e, d, spend, new_hosts].
const OBSERVE_LUA: &str = r#"
local calls, totals, hosts = KEYS[1], KEYS[2], KEYS[3]
local function count(member, sign)
  local kind, spend, new_host = string.match(member, '^(%a)|(%d+)|(%d)|')
  if not kind then return end
  local minus = sign < 0 and '-' or ''
  redis.call('HINCRBY', totals, 'total', sign)
  redis.call('HINCRBY', totals, kind, sign)
  if spend ~= '0' then redis.call('HINCRBY', totals, 'spend', minus .. spend) end
  if new_host == '1' then redis.call('HINCRBY', totals, 'new_hosts', sign) end
end
local new_host = '0'
if ARGV[7] ~= '' then
  if redis.call('SADD', hosts, ARGV[7]) == 1 then new_host = '1' end
  redis.call('EXPIRE', hosts, ARGV[8])
end
local member = ARGV[4] .. '|' .. ARGV[5] .. '|' .. new_host .. '|' .. ARGV[6]
if redis.call('ZADD', calls, 'NX', ARGV[1], member) == 1 then count(member, 1) end
local gone = redis.call('ZRANGEBYSCORE', calls, '-inf', ARGV[2])
for _, m in ipairs(gone) do count(m, -1) end
if #gone > 0 then redis.call('ZREMRANGEBYSCORE', calls, '-inf', ARGV[2]) end
redis.call('PEXPIRE', calls, ARGV[3])
redis.call('PEXPIRE', totals, ARGV[3])
return redis.call('HMGET', totals, 'total', 'o', 'e', 'd', 'spend', 'new_hosts')
"#;

impl RedisWindows {
    pub fn new(url: &str) -> Result<Self, String> {
        Ok(Self { link: RedisLink::new(url, "breaker windows")?, observe: redis::Script::new(OBSERVE_LUA) })
    }
}

fn keys(agent: Uuid) -> [String; 3] {
    ["calls", "totals", "hosts"].map(|k| format!("aegis:breaker:{agent}:{k}"))
}

#[async_trait::async_trait]
impl Windows for RedisWindows {
    async fn observe(&self, agent: Uuid, obs: &Observation, window: Duration) -> Result<Stats, String> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let window_ms = window.as_millis() as i64;
        let mut call = self.observe.prepare_invoke();
        call.key(&keys(agent))
            .arg(now_ms)
            .arg(now_ms - window_ms)
            .arg(window_ms + 1000)
            .arg(obs.kind.code().to_string())
            .arg(obs.spend_micros.max(0))
            .arg(&obs.request_id)
            .arg(obs.host.as_deref().unwrap_or(""))
            .arg(30 * 24 * 3600);
        let [total, ok, errors, denied, spend, new_hosts]: [Option<i64>; 6] = self.link.invoke(&call).await?;
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Ok(Stats {
            total: n(total),
            denied: n(denied),
            upstream_errors: n(errors),
            performed: n(ok) + n(errors),
            spend_micros: spend.unwrap_or(0),
            new_hosts: n(new_hosts),
        })
    }

    async fn clear(&self, agent: Uuid) -> Result<(), String> {
        let [calls, totals, _hosts] = keys(agent);
        let mut p = redis::pipe();
        p.del(&[calls, totals]).ignore();
        self.link.run::<()>(&p).await
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
        assert_eq!((s.total, s.denied, s.performed, s.spend_micros), (1, 0, 1, 10));
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

    /// The running totals in Redis lose what slid out of the window.
    #[tokio::test]
    async fn redis_windows_forget_what_slid_out() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else {
            eprintln!("SKIPPED redis_windows_forget_what_slid_out: AEGIS_TEST_REDIS_URL is not set");
            return;
        };
        let w = RedisWindows::new(&url).unwrap();
        let agent = Uuid::now_v7();
        let win = Duration::from_millis(300);
        let first = Observation {
            spend_micros: 1_000_000_000_000_000,
            ..obs(Kind::UpstreamError, Some("h.example"))
        };
        w.observe(agent, &first, win).await.unwrap();
        let s = w.observe(agent, &obs(Kind::Ok, Some("h.example")), win).await.unwrap();
        assert_eq!(
            (s.total, s.performed, s.upstream_errors, s.spend_micros, s.new_hosts),
            (2, 2, 1, 1_000_000_000_000_010, 1)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let s = w.observe(agent, &obs(Kind::Denied, Some("h.example")), win).await.unwrap();
        assert_eq!(
            s,
            Stats { total: 1, denied: 1, upstream_errors: 0, performed: 0, spend_micros: 10, new_hosts: 0 },
            "the first call slid out of the totals; its host stays known"
        );
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
