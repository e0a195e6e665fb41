//! Rate windows in Redis, shared by every replica. Each window is three keys — a
//! sorted set of members by the time they were taken (Redis's own clock, so
//! replicas' clocks do not matter), a hash of each member's amount, and the running
//! total — changed only by the Lua scripts below, each atomic: a call's takes are
//! checked and made together. While Redis is unreachable, the replica's own memory
//! windows count instead ([`crate::redis_link`] logs the outage).

use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryWindows;
use super::{Admit, Take, WINDOW, Windows};
use crate::redis_link::RedisLink;

const PREFIX: &str = "aegis:rl:";

/// KEYS: per window (zset, hash, total); ARGV: member, window ms, then per window
/// (limit, amount). Returns {0, 0} when admitted, else {window index, ms until it
/// frees enough (-1: never)}.
const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[1]
local window = tonumber(ARGV[2])
local n = #KEYS / 3
for i = 1, n do
  local z, h, tot = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - window)
  for _, m in ipairs(old) do
    local v = tonumber(redis.call('HGET', h, m) or '0')
    redis.call('HDEL', h, m)
    redis.call('DECRBY', tot, v)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - window)
  local limit = tonumber(ARGV[1 + 2*i])
  local amount = tonumber(ARGV[2 + 2*i])
  local total = tonumber(redis.call('GET', tot) or '0')
  if total + amount > limit then
    if amount > limit then return {i, -1} end
    local need = total + amount - limit
    local freed = 0
    local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', h, entries[j]) or '0')
      if freed >= need then return {i, tonumber(entries[j+1]) + window - now} end
    end
    return {i, window}
  end
end
for i = 1, n do
  local z, h, tot = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local amount = tonumber(ARGV[2 + 2*i])
  redis.call('ZADD', z, now, member)
  redis.call('HSET', h, member, amount)
  redis.call('INCRBY', tot, amount)
  for _, k in ipairs({z, h, tot}) do redis.call('PEXPIRE', k, window + 5000) end
end
return {0, 0}
"#;

/// KEYS: zset, hash, total; ARGV: member, amount (-1: release). Returns 1 if the
/// member was there.
const ADJUST_LUA: &str = r#"
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
local amount = tonumber(ARGV[2])
if amount < 0 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DECRBY', KEYS[3], tonumber(old))
else
  redis.call('HSET', KEYS[2], ARGV[1], amount)
  redis.call('INCRBY', KEYS[3], amount - tonumber(old))
end
return 1
"#;

pub struct RedisWindows {
    link: RedisLink,
    admit: redis::Script,
    adjust: redis::Script,
    local: Arc<MemoryWindows>,
}

fn keys(key: &str) -> [String; 3] {
    [format!("{PREFIX}{key}:z"), format!("{PREFIX}{key}:h"), format!("{PREFIX}{key}:t")]
}

impl RedisWindows {
    pub fn new(url: &str, local: Arc<MemoryWindows>) -> Result<Self, String> {
        Ok(Self {
            link: RedisLink::new(url, "rate limits")?,
            admit: redis::Script::new(ADMIT_LUA),
            adjust: redis::Script::new(ADJUST_LUA),
            local,
        })
    }

    async fn change(&self, member: &str, key: &str, amount: i64) -> Result<i64, String> {
        let mut call = self.adjust.prepare_invoke();
        for k in keys(key) {
            call.key(k);
        }
        call.arg(member).arg(amount);
        self.link.invoke(&call).await
    }
}

#[async_trait::async_trait]
impl Windows for RedisWindows {
    async fn admit(&self, member: &str, takes: &[Take]) -> Admit {
        let mut call = self.admit.prepare_invoke();
        for take in takes {
            for k in keys(&take.key) {
                call.key(k);
            }
        }
        call.arg(member).arg(WINDOW.as_millis() as i64);
        for take in takes {
            call.arg(take.limit).arg(take.amount);
        }
        match self.link.invoke::<(i64, i64)>(&call).await {
            Ok((0, _)) => Admit::Admitted,
            Ok((i, wait)) => {
                let take = &takes[(i as usize).saturating_sub(1).min(takes.len() - 1)];
                let retry_after = (wait >= 0).then(|| Duration::from_millis(wait as u64));
                Admit::Refused { key: take.key.clone(), limit: take.limit, retry_after }
            }
            Err(_) => self.local.admit(member, takes).await,
        }
    }

    async fn adjust(&self, member: &str, key: &str, amount: i64) {
        if self.change(member, key, amount.max(0)).await.is_err() {
            self.local.adjust(member, key, amount).await
        }
    }

    async fn release(&self, member: &str, keys: &[String]) {
        for key in keys {
            if self.change(member, key, -1).await.is_err() {
                self.local.release(member, std::slice::from_ref(key)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `AEGIS_TEST_REDIS_URL`: concurrent admissions from two limiters (two
    /// replicas) on one Redis admit exactly the limit.
    #[tokio::test]
    async fn two_replicas_share_one_exact_window() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else {
            eprintln!("skipped: AEGIS_TEST_REDIS_URL is not set");
            return;
        };
        let a = Arc::new(RedisWindows::new(&url, Arc::default()).unwrap());
        let b = Arc::new(RedisWindows::new(&url, Arc::default()).unwrap());
        let key = format!("test:{}", uuid::Uuid::new_v4().simple());
        let calls = (0..100).map(|i| {
            let (w, key) = (if i % 2 == 0 { a.clone() } else { b.clone() }, key.clone());
            tokio::spawn(
                async move { w.admit(&format!("m{i}"), &[Take { key, limit: 30, amount: 1 }]).await },
            )
        });
        let results = futures::future::join_all(calls).await;
        let admitted = results.iter().filter(|r| matches!(r.as_ref().unwrap(), Admit::Admitted)).count();
        assert_eq!(admitted, 30);
        match a.admit("late", &[Take { key: key.clone(), limit: 30, amount: 1 }]).await {
            Admit::Refused { retry_after: Some(d), .. } => {
                assert!(d <= WINDOW && d > Duration::from_secs(50), "{d:?}")
            }
            other => panic!("{other:?}"),
        }
        // Releasing gives units back (releasing a member never admitted changes nothing).
        for i in 0..100 {
            a.release(&format!("m{i}"), std::slice::from_ref(&key)).await;
        }
        let mut again = 0;
        for i in 0..31 {
            if b.admit(&format!("n{i}"), &[Take { key: key.clone(), limit: 30, amount: 1 }]).await
                == Admit::Admitted
            {
                again += 1;
            }
        }
        assert_eq!(again, 30, "the whole window is free again");
        // Tokens: an adjustment moves the total both ways.
        let tpm = format!("{key}:tpm");
        assert_eq!(a.admit("x", &[Take { key: tpm.clone(), limit: 100, amount: 90 }]).await, Admit::Admitted);
        assert!(matches!(
            b.admit("y", &[Take { key: tpm.clone(), limit: 100, amount: 20 }]).await,
            Admit::Refused { .. }
        ));
        b.adjust("x", &tpm, 10).await;
        assert_eq!(a.admit("y", &[Take { key: tpm, limit: 100, amount: 20 }]).await, Admit::Admitted);
    }
}
