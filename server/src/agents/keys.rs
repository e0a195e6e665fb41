//! An agent's API keys: storing and revoking them, and authenticating a presented
//! key — parsed, looked up through the hot-path store, compared in constant time
//! ([`super::api_keys::matches`]), with a bound on look-ups in flight.

use std::sync::Arc;

use app::error::AppError;
use entity::agent_keys;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::{AgentPrincipal, api_keys};
use crate::db::{internal, now};
use crate::store::CallStore;

/// Key look-ups in flight at once, at most (as many as agent calls may be performed
/// at once by default). A caller past it waits up to [`KEY_CHECK_WAIT`] for a place,
/// then is answered 503 `overloaded` (with `Retry-After`) before anything else happens.
pub const MAX_KEY_CHECKS_IN_FLIGHT: usize = 1024;
pub const KEY_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Authenticates presented keys. Cheap to clone.
#[derive(Clone)]
pub struct KeyChecks {
    store: Arc<dyn CallStore>,
    /// Key look-ups under way (callers not yet authenticated): bounded, so a flood of
    /// made-up keys cannot queue unbounded work on the database.
    checks: Arc<tokio::sync::Semaphore>,
}

impl KeyChecks {
    pub fn new(store: Arc<dyn CallStore>) -> Self {
        Self { store, checks: Arc::new(tokio::sync::Semaphore::new(MAX_KEY_CHECKS_IN_FLIGHT)) }
    }

    /// Finds the agent a presented API key belongs to. Unknown, malformed, revoked and
    /// wrong keys are all the same `None`.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AgentPrincipal>, AppError> {
        let Some(key_id) = api_keys::key_id(presented) else {
            return Ok(None);
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(KEY_CHECK_WAIT, self.checks.acquire()).await else {
            return Err(AppError::new(503, "overloaded", "too many key checks in flight; retry shortly"));
        };
        let found = self.store.live_key(key_id).await?;
        Ok(match found {
            Some((key, Some(agent)))
                if api_keys::matches(presented, &key.key_hash) && agent.deleted_at.is_none() =>
            {
                Some(AgentPrincipal { agent, key_id: key.key_id })
            }
            _ => None,
        })
    }
}

/// Stores a new key's row (its id and hash; the plaintext is never stored).
pub(super) async fn insert(
    db: &impl ConnectionTrait,
    agent_id: Uuid,
    key: &api_keys::NewKey,
) -> Result<(), AppError> {
    agent_keys::ActiveModel {
        id: Set(Uuid::now_v7()),
        agent_id: Set(agent_id),
        key_id: Set(key.key_id.clone()),
        key_hash: Set(key.hash.clone()),
        created_at: Set(now()),
        revoked_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    Ok(())
}

/// Revokes every live key of the agent.
pub(super) async fn revoke_all(db: &impl ConnectionTrait, agent_id: Uuid) -> Result<(), AppError> {
    agent_keys::Entity::update_many()
        .col_expr(agent_keys::Column::RevokedAt, Expr::value(now()))
        .filter(agent_keys::Column::AgentId.eq(agent_id))
        .filter(agent_keys::Column::RevokedAt.is_null())
        .exec(db)
        .await
        .map_err(internal)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::AgentService;
    use super::*;
    use crate::audit::AuditLog;
    use crate::events::EventBus;
    use crate::policies::PolicyService;

    /// Key checks past [`MAX_KEY_CHECKS_IN_FLIGHT`] wait [`KEY_CHECK_WAIT`], then are
    /// told `overloaded` (503) without touching the database; once places free up,
    /// keys are checked again.
    #[tokio::test]
    async fn key_checks_past_the_cap_wait_then_are_told_overloaded() {
        use migration::MigratorTrait;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("keys.db").display());
        let db = crate::db::connect(&url).await.unwrap();
        migration::Migrator::up(&db, None).await.unwrap();
        let signer = crate::audit::checkpoint::CheckpointSigner::from_seed(&[7; 32]).unwrap();
        let audit = AuditLog::new(db.clone(), signer, 1000);
        let store =
            crate::store::open(&db, &audit, std::sync::Arc::new(crate::metrics::Metrics::new()), false);
        let service = AgentService::new(
            db.clone(),
            store.clone(),
            PolicyService::new(db.clone(), store),
            audit,
            EventBus::from_config(None),
        );
        let key = api_keys::generate().plaintext;
        assert!(service.authenticate(&key).await.unwrap().is_none(), "an unknown key is no agent");

        let all =
            service.keys.checks.clone().acquire_many_owned(MAX_KEY_CHECKS_IN_FLIGHT as u32).await.unwrap();
        let started = std::time::Instant::now();
        let e = service.authenticate(&key).await.unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (503, "overloaded"), "{}", e.message);
        assert!(started.elapsed() >= KEY_CHECK_WAIT, "it waited for a place first");
        // A malformed key needs no place: refused at once.
        assert!(service.authenticate("not-a-key").await.unwrap().is_none());
        drop(all);
        assert!(service.authenticate(&key).await.unwrap().is_none());
    }
}
