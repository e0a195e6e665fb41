//! Idempotency keys: replaying a key returns the first outcome without performing
//! the call again. A key is claimed before any stage runs, so two concurrent
//! requests with the same key cannot both go through.
//!
//! A claim whose request never finished (its process died) is settled on the next
//! use of the key once `stale_after` has passed — the call cannot still be running:
//! if the audit log has no intent for it, nothing was performed and the retry takes
//! the key over; if it has one, the call may have reached the upstream, so it is not
//! performed again and the key answers `502` "interrupted" (with the intent's and,
//! if any, the outcome's audit seq) from then on.
//!
//! Answers are stored bounded, hashed and sealed ([`crate::approvals::answer`]): a
//! replay of an answer whose upstream body was longer than
//! [`answer::MAX_STORED_BODY_BYTES`] gives the first status, headers and 64 KiB of
//! the body with `upstream.body_truncated: true`, `upstream.body_bytes` and
//! `upstream.body_sha256` (of the whole body). Records are deleted
//! [`answer::IDEMPOTENCY_RETENTION`] (24 h) after the key's first use; the key can
//! then be used afresh.

use std::time::Duration;

use app::error::AppError;
use entity::idempotency_records;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use crate::approvals::answer;
use crate::audit::query::seq_of;
use crate::call::outcome::{ProxyResult, Render};
use crate::db::{internal, now};
use crate::secrets::vault::Vault;

/// Marks a claimed key whose outcome is not known yet.
const IN_PROGRESS: i32 = 0;

pub enum Claim {
    /// This request owns the key and must record its outcome.
    Claimed,
    /// The key was used before for the same request: here is what it answered.
    Replay { status: u16, body: serde_json::Value },
}

fn context(agent_id: Uuid, key: &str) -> String {
    format!("aegis-idempotency:v1:{agent_id}:{key}")
}

/// One request's attempt at an idempotency key.
pub struct Attempt<'a> {
    pub agent_id: Uuid,
    pub key: &'a str,
    pub request_id: &'a str,
    pub request_hash: &'a str,
}

/// Claims the key for this request, or says what became of the request that holds
/// it. A claim older than `stale_after` without an answer was cut short by its
/// process: taken over if it performed nothing, otherwise answered (as `render`
/// answers an interrupted call) without performing it again.
pub async fn claim(
    db: &DatabaseConnection,
    vault: &Vault,
    attempt: Attempt<'_>,
    stale_after: Duration,
    render: Render,
) -> Result<Claim, AppError> {
    let Attempt { agent_id, key, request_id, request_hash } = attempt;
    match try_claim(db, vault, agent_id, key, request_id, request_hash).await? {
        Tried::Done(claim) => Ok(claim),
        Tried::Running(existing) => {
            let cutoff = now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
            if existing.created_at >= cutoff {
                return Err(in_progress());
            }
            settle_stale(db, vault, existing, request_id, request_hash, render).await
        }
    }
}

fn in_progress() -> AppError {
    AppError::conflict("idempotency_in_progress", "a request with this idempotency_key is still running")
}

enum Tried {
    Done(Claim),
    /// Claimed by a request that has not recorded its answer.
    Running(idempotency_records::Model),
}

/// A stale claim: taken over if its request performed nothing, otherwise answered
/// as interrupted. Each step is conditional on the claim still being the stale one,
/// so of two retries racing only one proceeds.
async fn settle_stale(
    db: &DatabaseConnection,
    vault: &Vault,
    stale: idempotency_records::Model,
    request_id: &str,
    request_hash: &str,
    render: Render,
) -> Result<Claim, AppError> {
    let still_stale = |q: sea_orm::UpdateMany<idempotency_records::Entity>| {
        q.filter(idempotency_records::Column::AgentId.eq(stale.agent_id))
            .filter(idempotency_records::Column::IdempotencyKey.eq(stale.idempotency_key.clone()))
            .filter(idempotency_records::Column::RequestId.eq(stale.request_id.clone()))
            .filter(idempotency_records::Column::ResponseStatus.eq(IN_PROGRESS))
    };
    let Some(intent) = seq_of(db, &stale.request_id, "proxy.intent").await? else {
        // Never performed: this request takes the key over.
        let taken = still_stale(idempotency_records::Entity::update_many())
            .col_expr(idempotency_records::Column::RequestId, Expr::value(request_id))
            .col_expr(idempotency_records::Column::RequestHash, Expr::value(request_hash))
            .col_expr(idempotency_records::Column::CreatedAt, Expr::value(now()))
            .exec(db)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        return if taken { Ok(Claim::Claimed) } else { Err(in_progress()) };
    };
    let outcome = seq_of(db, &stale.request_id, "proxy.outcome").await?;
    let (status, body) = render(&ProxyResult::interrupted(
        &stale.request_id,
        Some(outcome.unwrap_or(intent)),
        Some(intent),
        outcome,
        "interrupted: the AEGIS process performing the first request with this idempotency_key \
         stopped before answering; it is not performed again (intent_audit_seq and \
         outcome_audit_seq say how far it got)",
    ));
    still_stale(idempotency_records::Entity::update_many())
        .col_expr(idempotency_records::Column::ResponseStatus, Expr::value(i32::from(status)))
        .col_expr(
            idempotency_records::Column::ResponseJson,
            Expr::value(answer::seal(vault, &context(stale.agent_id, &stale.idempotency_key), status, &body)),
        )
        .exec(db)
        .await
        .map_err(internal)?;
    // Whoever recorded the answer — this retry or a racing one — it is the key's now.
    match try_claim(db, vault, stale.agent_id, &stale.idempotency_key, request_id, request_hash).await? {
        Tried::Done(claim) => Ok(claim),
        Tried::Running(_) => Err(in_progress()),
    }
}

async fn try_claim(
    db: &DatabaseConnection,
    vault: &Vault,
    agent_id: Uuid,
    key: &str,
    request_id: &str,
    request_hash: &str,
) -> Result<Tried, AppError> {
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
        return Ok(Tried::Done(Claim::Claimed));
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
        return Ok(Tried::Running(existing));
    }
    let status = existing.response_status as u16;
    let body = match answer::open(vault, &context(agent_id, key), &existing.response_json) {
        answer::Opened::Answer { body, .. } | answer::Opened::Pruned { body, .. } => body,
        // Stored in clear before answers were sealed: the answer itself.
        answer::Opened::Legacy(body) => body,
        answer::Opened::Broken => {
            tracing::error!("a stored idempotent answer could not be opened (wrong key or tampered row)");
            return Err(AppError::internal());
        }
    };
    Ok(Tried::Done(Claim::Replay { status, body }))
}

/// Records the key's answer: bounded, hashed and sealed ([`answer::seal`]); the
/// whole answer is hashed as it is serialised, never copied into another string.
pub async fn record(
    db: &DatabaseConnection,
    vault: &Vault,
    agent_id: Uuid,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), AppError> {
    let stored = answer::seal(vault, &context(agent_id, key), status, body);
    idempotency_records::Entity::update_many()
        .col_expr(idempotency_records::Column::ResponseStatus, Expr::value(i32::from(status)))
        .col_expr(idempotency_records::Column::ResponseJson, Expr::value(stored))
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

/// Deletes records whose key was first used more than `retention` ago (finished or
/// not: a claim that old cannot still be running). One indexed DELETE (the janitor
/// runs it every few seconds, so each removes only what just passed the line);
/// returns how many were deleted.
pub async fn prune(db: &DatabaseConnection, retention: Duration) -> Result<u64, AppError> {
    let cutoff = now() - chrono::Duration::from_std(retention).unwrap_or_default();
    Ok(idempotency_records::Entity::delete_many()
        .filter(idempotency_records::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await
        .map_err(internal)?
        .rows_affected)
}
