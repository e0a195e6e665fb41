//! Idempotency keys: replaying a key returns the first outcome without performing
//! the call again. A key is claimed before any stage runs, so two concurrent
//! requests with the same key cannot both go through.

use app::error::AppError;
use entity::idempotency_records;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::storage::{internal, now};

/// Marks a claimed key whose outcome is not known yet.
const IN_PROGRESS: i32 = 0;

pub enum Claim {
    /// This request owns the key and must record its outcome.
    Claimed,
    /// The key was used before for the same request: here is what it answered.
    Replay { status: u16, body: serde_json::Value },
}

pub async fn claim(
    db: &DatabaseConnection,
    agent_id: Uuid,
    key: &str,
    request_id: &str,
    request_hash: &str,
) -> Result<Claim, AppError> {
    let inserted = idempotency_records::ActiveModel {
        agent_id: Set(agent_id),
        idempotency_key: Set(key.to_owned()),
        request_id: Set(request_id.to_owned()),
        request_hash: Set(request_hash.to_owned()),
        response_status: Set(IN_PROGRESS),
        response_json: Set(String::new()),
        created_at: Set(now()),
    }
    .insert(db)
    .await;
    if inserted.is_ok() {
        return Ok(Claim::Claimed);
    }
    let existing = idempotency_records::Entity::find_by_id((agent_id, key.to_owned()))
        .one(db)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            tracing::error!("idempotency record could be neither inserted nor read");
            AppError::internal()
        })?;
    if existing.request_hash != request_hash {
        return Err(AppError::new(
            422,
            "idempotency_key_reused",
            "this idempotency_key was used for a different request",
        ));
    }
    if existing.response_status == IN_PROGRESS {
        return Err(AppError::conflict(
            "idempotency_in_progress",
            "a request with this idempotency_key is still running",
        ));
    }
    let body = serde_json::from_str(&existing.response_json).map_err(|_| AppError::internal())?;
    Ok(Claim::Replay { status: existing.response_status as u16, body })
}

pub async fn record(
    db: &DatabaseConnection,
    agent_id: Uuid,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), AppError> {
    idempotency_records::Entity::update_many()
        .col_expr(idempotency_records::Column::ResponseStatus, Expr::value(i32::from(status)))
        .col_expr(idempotency_records::Column::ResponseJson, Expr::value(body.to_string()))
        .filter(idempotency_records::Column::AgentId.eq(agent_id))
        .filter(idempotency_records::Column::IdempotencyKey.eq(key))
        .exec(db)
        .await
        .map_err(internal)?;
    Ok(())
}

/// Frees a claim whose request ended before an outcome worth replaying (e.g. a
/// storage failure), so the agent can retry with the same key.
pub async fn abandon(db: &DatabaseConnection, agent_id: Uuid, key: &str) {
    let _ = idempotency_records::Entity::delete_many()
        .filter(idempotency_records::Column::AgentId.eq(agent_id))
        .filter(idempotency_records::Column::IdempotencyKey.eq(key))
        .filter(idempotency_records::Column::ResponseStatus.eq(IN_PROGRESS))
        .exec(db)
        .await;
}
