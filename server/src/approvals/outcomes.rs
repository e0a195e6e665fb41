//! What an approved call answered, kept on its approval for the agent to collect:
//! recorded bounded, hashed and sealed ([`answer`]), given an "interrupted" answer
//! when the process performing it stopped first, and emptied after
//! [`answer::OUTCOME_RETENTION`].

use std::time::Duration;

use app::error::AppError;
use app::model::ApprovalStatus;
use entity::approvals;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use serde_json::{Value, json};
use uuid::Uuid;

use super::decide::decision_entry;
use super::sealed::outcome_context;
use super::summary::{Summary, summaries};
use super::{APPROVAL_PERFORMED, ApprovalService, answer};
use crate::audit::query::seq_of;
use crate::call::outcome::{ProxyResult, Render};
use crate::db::{internal, now};
use crate::events::Event;

impl ApprovalService {
    /// Keeps what happened when the approved request was performed: bounded,
    /// hashed and sealed ([`answer::seal`]), then wakes the agent's long-poll.
    pub async fn record_outcome(&self, id: Uuid, status: u16, body: &Value, audit_seq: Option<i64>) {
        let outcome = answer::seal(&self.vault, &outcome_context(id), status, body);
        let stored = approvals::Entity::update_many()
            .col_expr(approvals::Column::OutcomeJson, Expr::value(outcome))
            .col_expr(approvals::Column::OutcomeAuditSeq, Expr::value(audit_seq))
            .filter(approvals::Column::Id.eq(id))
            .exec(&self.db)
            .await;
        if let Err(e) = stored {
            tracing::error!(approval = %id, error = %e, "could not store an approval's outcome (it is in the audit log)");
            return;
        }
        self.announce_performed(id, status).await;
    }

    async fn announce_performed(&self, id: Uuid, status: u16) {
        let owners: Option<(Uuid, Uuid)> = approvals::Entity::find_by_id(id)
            .select_only()
            .column(approvals::Column::SponsorId)
            .column(approvals::Column::AgentId)
            .into_tuple()
            .one(&self.db)
            .await
            .ok()
            .flatten();
        if let Some((sponsor_id, agent_id)) = owners {
            let event = Event::new(
                APPROVAL_PERFORMED,
                sponsor_id,
                Some(agent_id),
                json!({"approval_id": id, "status": "approved", "outcome_status": status}),
            )
            .approval(id);
            self.events.publish(event);
        }
    }

    /// Gives an outcome to approved calls whose performing replica stopped before
    /// keeping one (a crash mid-call; a caller hanging up no longer does it). Once
    /// `stale_after` (the reservation TTL: the call's budget hold, if it got one, has
    /// expired too) has passed since the approval, the call cannot still be running:
    /// the approval's outcome says it was interrupted, with what the audit log knows
    /// (its intent and outcome records, if any), audited as `approval.interrupted`.
    /// The agent polling it gets an answer instead of `approved` for ever. Returns
    /// how many were closed. `render`: how the interrupted answer is stored (the
    /// HTTP layer's rule).
    pub async fn close_interrupted(&self, stale_after: Duration, render: Render) -> Result<u64, AppError> {
        let cutoff = now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let stale = summaries()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::OutcomeJson.is_null())
            .filter(approvals::Column::DecidedAt.lt(cutoff))
            .limit(100)
            .into_model::<Summary>()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let mut closed = 0;
        for row in stale {
            let Ok(request_id) = self.request_id_of(&row).await else { continue };
            let intent = seq_of(&self.db, &request_id, "proxy.intent").await?;
            let performed = seq_of(&self.db, &request_id, "proxy.outcome").await?;
            let reason = "interrupted: the AEGIS process performing this approved call stopped before \
                          keeping its answer; intent_audit_seq and outcome_audit_seq say how far it got";
            let detail =
                json!({"approval_id": row.id, "intent_audit_seq": intent, "outcome_audit_seq": performed});
            let mut txn = self.audit.begin().await?;
            // Claimed only if still without an outcome (a late answer from a live
            // replica wins), the row first and the chain after, like every decision.
            let answered = |audit_seq: Option<i64>| {
                render(&ProxyResult::interrupted(&request_id, audit_seq, intent, performed, reason))
            };
            let status = answered(None).0;
            let outcome = |audit_seq: Option<i64>| {
                let (status, body) = answered(audit_seq);
                answer::seal(&self.vault, &outcome_context(row.id), status, &body)
            };
            let store = |audit_seq: Option<i64>| {
                approvals::Entity::update_many()
                    .col_expr(approvals::Column::OutcomeJson, Expr::value(outcome(audit_seq)))
                    .col_expr(approvals::Column::OutcomeAuditSeq, Expr::value(audit_seq))
                    .filter(approvals::Column::Id.eq(row.id))
            };
            let won = store(None)
                .filter(approvals::Column::OutcomeJson.is_null())
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if !won {
                continue;
            }
            let appended = txn
                .append(decision_entry(&row, &request_id, "approval.interrupted", "error", detail))
                .await?;
            store(Some(appended.seq)).exec(txn.conn()).await.map_err(internal)?;
            txn.commit().await?;
            tracing::warn!(approval = %row.id, request = %request_id, "an approved call was interrupted; its approval now says so");
            self.announce_performed(row.id, status).await;
            closed += 1;
        }
        Ok(closed)
    }

    /// Retention of approval outcomes ([`answer`]): drops the bodies of outcomes
    /// decided more than [`answer::OUTCOME_RETENTION`] ago (status and hash stay).
    /// Bounded work per call. Returns how many rows it changed. (With the
    /// idempotency records' retention: `Services::prune_stored_answers`.)
    pub async fn prune_outcomes(&self) -> Result<u64, AppError> {
        let mut changed = 0;
        let cutoff = now() - chrono::Duration::from_std(answer::OUTCOME_RETENTION).unwrap_or_default();
        let due: Vec<(Uuid, Option<String>)> = approvals::Entity::find()
            .select_only()
            .column(approvals::Column::Id)
            .column(approvals::Column::OutcomeJson)
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::DecidedAt.lt(cutoff))
            .filter(approvals::Column::OutcomeJson.is_not_null())
            .filter(approvals::Column::OutcomeJson.not_like("%\"pruned\":true%"))
            .limit(500)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(internal)?;
        for (id, stored) in due {
            let Some(stored) = stored else { continue };
            let stub = match answer::open(&self.vault, &outcome_context(id), &stored) {
                answer::Opened::Legacy(v) => {
                    let status = v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
                    answer::pruned(&answer::seal(&self.vault, &outcome_context(id), status, &v["body"]))
                }
                _ => answer::pruned(&stored),
            };
            approvals::Entity::update_many()
                .col_expr(approvals::Column::OutcomeJson, Expr::value(stub))
                .filter(approvals::Column::Id.eq(id))
                .exec(&self.db)
                .await
                .map_err(internal)?;
            changed += 1;
        }
        Ok(changed)
    }
}
