//! The session revision of MCP (2025-11-25): a session (`Mcp-Session-Id`) belongs
//! to the agent that opened it. Its owner — and, for the SDK, its `initialize`
//! parameters ([`rmcp`]'s `SessionStore`) — live in Redis when `REDIS_URL` is set,
//! so any replica serves any request of the session; otherwise in this process.
//! Another agent presenting the id is refused as if the session did not exist.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::transport::streamable_http_server::session::{SessionState, SessionStore, SessionStoreError};
use uuid::Uuid;

use crate::digest::sha256_hex;
use crate::redis_link::RedisLink;

/// A session unused this long is forgotten (its owner and state).
pub const TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct SessionBindings {
    redis: Option<Arc<RedisLink>>,
    memory: Arc<Mutex<HashMap<String, (Uuid, Instant)>>>,
}

/// Keys name a session by its hash: the id itself is a bearer of the session.
fn key(kind: &str, session: &str) -> String {
    format!("aegis:mcp:{kind}:{}", sha256_hex(session.as_bytes()))
}

impl SessionBindings {
    pub fn from_config(redis_url: Option<&str>) -> Self {
        let redis = redis_url.and_then(|url| match RedisLink::new(url, "MCP sessions") {
            Ok(link) => Some(Arc::new(link)),
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL is invalid: MCP sessions are kept in this process");
                None
            }
        });
        Self { redis, memory: Arc::default() }
    }

    /// Whether sessions are shared by every replica (Redis).
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Records that `agent` opened `session`.
    pub async fn bind(&self, session: &str, agent: Uuid) {
        if let Some(redis) = &self.redis {
            let mut pipe = redis::pipe();
            pipe.set_ex(key("owner", session), agent.to_string(), TTL.as_secs()).ignore();
            if let Err(e) = redis.run::<()>(&pipe).await {
                tracing::warn!(error = %e, "MCP session owner not stored in Redis; kept in this process");
            } else {
                return;
            }
        }
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.retain(|_, (_, at)| at.elapsed() < TTL);
        memory.insert(key("owner", session), (agent, Instant::now()));
    }

    /// The agent that opened `session`, if any is known (unknown: the session is refused).
    pub async fn owner(&self, session: &str) -> Option<Uuid> {
        let k = key("owner", session);
        if let Some(redis) = &self.redis {
            let mut pipe = redis::pipe();
            pipe.get(&k).expire(&k, TTL.as_secs() as i64).ignore();
            if let Ok((Some(owner),)) = redis.run::<(Option<String>,)>(&pipe).await {
                return owner.parse().ok();
            }
        }
        let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        memory.get(&k).filter(|(_, at)| at.elapsed() < TTL).map(|(agent, _)| *agent)
    }

    /// The SDK's session store (Redis only; without it the SDK keeps sessions in memory).
    pub fn store(&self) -> Option<Arc<dyn SessionStore>> {
        self.redis.clone().map(|redis| Arc::new(RedisSessions { redis }) as Arc<dyn SessionStore>)
    }
}

/// A session's `initialize` parameters in Redis, for a replica that did not see its handshake.
struct RedisSessions {
    redis: Arc<RedisLink>,
}

#[async_trait::async_trait]
impl SessionStore for RedisSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        let mut pipe = redis::pipe();
        pipe.get(key("state", session_id));
        let (state,): (Option<String>,) = self.redis.run(&pipe).await?;
        Ok(match state {
            Some(s) => Some(serde_json::from_str(&s)?),
            None => None,
        })
    }

    async fn store(&self, session_id: &str, state: &SessionState) -> Result<(), SessionStoreError> {
        let mut pipe = redis::pipe();
        pipe.set_ex(key("state", session_id), serde_json::to_string(state)?, TTL.as_secs()).ignore();
        Ok(self.redis.run::<()>(&pipe).await?)
    }

    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        let mut pipe = redis::pipe();
        pipe.del(key("state", session_id)).ignore().del(key("owner", session_id)).ignore();
        Ok(self.redis.run::<()>(&pipe).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_belongs_to_the_agent_that_opened_it() {
        let bindings = SessionBindings::from_config(None);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(bindings.owner("s1").await, None);
        bindings.bind("s1", a).await;
        bindings.bind("s2", b).await;
        assert_eq!(bindings.owner("s1").await, Some(a));
        assert_eq!(bindings.owner("s2").await, Some(b));
        assert_eq!(bindings.owner("s3").await, None);
    }

    /// With Redis, a binding made by one replica is seen by another.
    #[tokio::test]
    async fn replicas_share_sessions_through_redis() {
        let Ok(url) = std::env::var("AEGIS_TEST_REDIS_URL") else { return };
        let (one, two) = (SessionBindings::from_config(Some(&url)), SessionBindings::from_config(Some(&url)));
        let (agent, session) = (Uuid::now_v7(), Uuid::now_v7().to_string());
        one.bind(&session, agent).await;
        assert_eq!(two.owner(&session).await, Some(agent));
        assert!(two.memory.lock().unwrap().is_empty(), "read from Redis, not memory");
        let store = two.store().unwrap();
        store.delete(&session).await.unwrap();
        assert_eq!(one.owner(&session).await, None);
    }
}
