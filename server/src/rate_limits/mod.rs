//! Token and request rate limits: sliding one-minute windows per agent and per
//! connection (issue #19), checked at stage `budget` before the hold.
//!
//! A call takes one unit from each requests-per-minute window that applies and, when
//! metered, its token bound (prompt bound + output bound) from each tokens-per-minute
//! window; once settled its tokens become what the provider reported. All windows a
//! call touches are checked and taken together, atomically: of concurrent calls, no
//! more are admitted than fit (exact, like the wallet). A call that was admitted but
//! then not performed (refused by the wallet, failed before the upstream answered)
//! gives its units back.
//!
//! The windows live in Redis when `REDIS_URL` is set, so every replica shares them
//! ([`redis::RedisWindows`], one Lua script per operation, Redis's clock); otherwise
//! in this process ([`memory::MemoryWindows`]). While Redis is unreachable a replica
//! counts in its own memory (logged): the wallet, in the database, still bounds
//! spend exactly; only the rate limits are then per replica.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use app::error::AppError;
use app::model::RateLimits;

/// The window every limit is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The largest limit accepted.
pub const MAX_LIMIT: i64 = 1_000_000_000_000;

/// One window a call takes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// `agent:<id>:tpm`, `conn:<sponsor>:<name>:rpm`, …
    pub key: String,
    pub limit: i64,
    pub amount: i64,
}

/// What one admitted call took, to adjust or give back when it settles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticket {
    /// Every window taken from.
    pub keys: Vec<String>,
    /// The tokens-per-minute ones.
    pub token_keys: Vec<String>,
}

impl Ticket {
    pub fn of(takes: &[Take]) -> Ticket {
        Ticket {
            keys: takes.iter().map(|t| t.key.clone()).collect(),
            token_keys: takes.iter().filter(|t| t.key.ends_with(":tpm")).map(|t| t.key.clone()).collect(),
        }
    }
}

/// Whether a call fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    Admitted,
    /// `key`'s window is full; `retry_after` is when enough of it frees (`None`:
    /// never — the call alone asks more than the limit).
    Refused {
        key: String,
        limit: i64,
        retry_after: Option<Duration>,
    },
}

#[async_trait::async_trait]
pub trait Windows: Send + Sync {
    /// Takes every `take` for `member` (a request id), or none of them.
    async fn admit(&self, member: &str, takes: &[Take]) -> Admit;
    /// Sets `member`'s amount in `key` to `amount` (its real usage).
    async fn adjust(&self, member: &str, key: &str, amount: i64);
    /// Gives `member`'s units back in every `key`.
    async fn release(&self, member: &str, keys: &[String]);
}

/// The limiter the pipeline uses: Redis's windows when configured (memory while it
/// is unreachable), else memory.
#[derive(Clone)]
pub struct RateLimiter(Arc<dyn Windows>);

impl RateLimiter {
    pub fn from_config(redis_url: Option<&str>) -> Self {
        let memory = Arc::new(memory::MemoryWindows::default());
        match redis_url.map(|url| redis::RedisWindows::new(url, memory.clone())) {
            Some(Ok(shared)) => RateLimiter(Arc::new(shared)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "REDIS_URL does not parse: rate limits count per replica");
                RateLimiter(memory)
            }
            None => RateLimiter(memory),
        }
    }

    pub async fn admit(&self, member: &str, takes: &[Take]) -> Admit {
        if takes.is_empty() {
            return Admit::Admitted;
        }
        self.0.admit(member, takes).await
    }

    pub async fn adjust(&self, member: &str, key: &str, amount: i64) {
        self.0.adjust(member, key, amount).await
    }

    pub async fn release(&self, member: &str, keys: &[String]) {
        if !keys.is_empty() {
            self.0.release(member, keys).await
        }
    }
}

/// Checks limits a sponsor sets: each present one between 1 and [`MAX_LIMIT`].
pub fn check(limits: &RateLimits) -> Result<(), AppError> {
    for (name, v) in
        [("tokens_per_minute", limits.tokens_per_minute), ("requests_per_minute", limits.requests_per_minute)]
    {
        if let Some(v) = v
            && !(1..=MAX_LIMIT).contains(&v)
        {
            return Err(AppError::validation(format!(
                "rate_limits.{name} must be between 1 and {MAX_LIMIT}"
            )));
        }
    }
    Ok(())
}

/// The limits as saved (JSON), `None` when there are none.
pub fn saved(limits: Option<RateLimits>) -> Result<Option<String>, AppError> {
    match limits {
        Some(l) if l.tokens_per_minute.is_some() || l.requests_per_minute.is_some() => {
            check(&l)?;
            Ok(Some(serde_json::to_string(&l).map_err(|_| AppError::internal())?))
        }
        _ => Ok(None),
    }
}

/// Limits read back; unreadable ones are `Err` (the caller fails closed).
pub fn parse(saved: Option<&str>) -> Result<RateLimits, String> {
    match saved {
        None => Ok(RateLimits::default()),
        Some(s) => serde_json::from_str(s).map_err(|_| "rate limits are unreadable".into()),
    }
}

/// The windows one call takes from: `scope`'s limits, one request and `tokens`.
pub fn takes(scope: &str, limits: &RateLimits, tokens: i64, out: &mut Vec<Take>) {
    if let Some(limit) = limits.requests_per_minute {
        out.push(Take { key: format!("{scope}:rpm"), limit, amount: 1 });
    }
    if let Some(limit) = limits.tokens_per_minute
        && tokens > 0
    {
        out.push(Take { key: format!("{scope}:tpm"), limit, amount: tokens });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_and_only_present_ones_take() {
        assert!(check(&RateLimits { tokens_per_minute: Some(0), requests_per_minute: None }).is_err());
        assert!(
            check(&RateLimits { tokens_per_minute: None, requests_per_minute: Some(MAX_LIMIT + 1) }).is_err()
        );
        assert_eq!(saved(Some(RateLimits::default())).unwrap(), None, "no limits, nothing saved");
        let l = RateLimits { tokens_per_minute: Some(100), requests_per_minute: Some(2) };
        assert_eq!(parse(saved(Some(l.clone())).unwrap().as_deref()).unwrap(), l);
        let mut out = vec![];
        takes("agent:a", &l, 0, &mut out);
        assert_eq!(
            out,
            vec![Take { key: "agent:a:rpm".into(), limit: 2, amount: 1 }],
            "no tokens, no token take"
        );
        takes("conn:s:c", &l, 40, &mut out);
        assert_eq!(out.len(), 3);
        assert!(parse(Some("nope")).is_err());
    }
}
