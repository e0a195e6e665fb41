//! One Redis connection for state that several replicas share (breaker windows,
//! sign-in throttling), and the bookkeeping of an outage: callers fall back to
//! local state while Redis is unreachable, it is tried again at most once a second
//! (so a black-holed Redis costs one request a timeout, not every request), and
//! the outage is logged loudly once when it starts and once when it ends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct RedisLink {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// What this link is for, in log lines.
    purpose: &'static str,
    down: AtomicBool,
    retry_at: Mutex<Option<Instant>>,
}

impl RedisLink {
    pub fn new(url: &str, purpose: &'static str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            purpose,
            down: AtomicBool::new(false),
            retry_at: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `pipe`; `Err` while Redis is (or has just been found) unreachable, in
    /// which case the caller uses its local state.
    pub async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, String> {
        self.guarded(move |mut c| async move { pipe.query_async::<T>(&mut c).await }).await
    }

    /// Invokes a Lua script (EVALSHA, loading it first if Redis does not know it);
    /// the same outage handling as [`Self::run`].
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        self.guarded(move |mut c| async move { script.invoke_async::<T>(&mut c).await }).await
    }

    async fn guarded<T, F, Fut>(&self, call: F) -> Result<T, String>
    where
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        {
            let mut retry_at = self.retry_at.lock().unwrap_or_else(|p| p.into_inner());
            match *retry_at {
                Some(at) if Instant::now() < at => return Err("Redis unavailable (waiting to retry)".into()),
                _ => *retry_at = None,
            }
        }
        let result = match self.connection().await {
            Ok(c) => match tokio::time::timeout(COMMAND_TIMEOUT, call(c)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("command timed out".into()),
            },
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(purpose = self.purpose, "Redis is back: shared state restored");
                }
            }
            Err(e) => {
                // Drop the connection so the next try reconnects.
                *self.conn.lock().await = None;
                *self.retry_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + RETRY_EVERY);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        purpose = self.purpose,
                        error = %e,
                        "REDIS UNAVAILABLE: falling back to this replica's local state \
                         (budgets are unaffected: they live in the database)"
                    );
                }
            }
        }
        result
    }
}
