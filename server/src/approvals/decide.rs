//! The life of an approval: parked ([`ApprovalService::park`]), then decided once —
//! approved, rejected or expired, each one conditional UPDATE from `pending`, so of
//! two sponsors, two replicas or a sponsor and the expiry janitor racing, exactly
//! one wins — and the audit record of each decision ([`decision_entry`]).

use app::error::AppError;
use app::model::{ApprovalStatus, ApprovalView, ApproveRequest, RejectRequest};
use chrono::{DateTime, Utc};
use entity::{agents, approvals};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use super::sealed::ParkedRequest;
use super::summary::{Summary, summaries};
use super::{ApprovalService, Claimed, MAX_PARKED_BODY_BYTES, Parked, grants};
use crate::actor::Actor;
use crate::audit::{Appended, AuditEntry};
use crate::call::request::ProxyRequest;
use crate::db::{internal, now};
use crate::digest::canonical_json;
use crate::events::{self, Event};
use crate::trust::TrustEvent;

const MAX_REASON_CHARS: usize = 500;

impl ApprovalService {
    /// Parks `request` and writes `entry` (the pipeline's `approval.requested`
    /// record) in the same transaction. A body over [`MAX_PARKED_BODY_BYTES`] is
    /// refused (413 `approval_body_too_large`) before anything is written.
    pub async fn park(
        &self,
        agent: &agents::Model,
        request: &ProxyRequest,
        request_id: &str,
        estimate_micros: i64,
        reasons: &[String],
        entry: AuditEntry,
    ) -> Result<Parked, AppError> {
        if request.body.len() > MAX_PARKED_BODY_BYTES {
            return Err(AppError::new(
                413,
                "approval_body_too_large",
                format!(
                    "this call needs approval and its body ({} bytes) is larger than an approval can hold ({MAX_PARKED_BODY_BYTES} bytes)",
                    request.body.len()
                ),
            ));
        }
        let id = Uuid::now_v7();
        let at = now();
        let expires_at = self.ttl.map(|ttl| at + chrono::Duration::from_std(ttl).unwrap_or_default());
        let mut header_names: Vec<String> =
            request.headers.iter().map(|(k, _)| k.as_str().to_ascii_lowercase()).collect();
        header_names.sort();
        header_names.dedup();
        let approvers =
            super::rule::approvers_for(&self.db, agent.sponsor_id, estimate_micros, reasons).await?;
        let mut txn = self.audit.begin().await?;
        approvals::ActiveModel {
            id: Set(id),
            sponsor_id: Set(agent.sponsor_id),
            agent_id: Set(agent.id),
            status: Set(ApprovalStatus::Pending.as_str().into()),
            request_hash: Set(request.request_hash()),
            request_json: Set(self.seal(id, &ParkedRequest::of(request, request_id))),
            method: Set(request.method.as_str().to_owned()),
            url: Set(request.url.clone()),
            action_label: Set(request.label.clone()),
            secret_name: Set(request.secret.clone()),
            cost_micros: Set(estimate_micros),
            policy_reasons: Set(serde_json::to_string(reasons).unwrap_or_else(|_| "[]".into())),
            trust_at_request: Set(agent.trust_score),
            created_at: Set(at),
            expires_at: Set(expires_at),
            decided_at: Set(None),
            decided_by: Set(None),
            delivered_at: Set(None),
            decision_reason: Set(None),
            outcome_json: Set(None),
            outcome_audit_seq: Set(None),
            grant_max_actions: Set(None),
            grant_used_actions: Set(0),
            grant_until: Set(None),
            grant_max_micros: Set(None),
            grant_spent_micros: Set(0),
            request_id: Set(Some(request_id.to_owned())),
            header_names: Set(Some(serde_json::to_string(&header_names).unwrap_or_else(|_| "[]".into()))),
            body_bytes: Set(request.body.len() as i64),
            grant_path_prefix: Set(None),
            approvers_required: Set(approvers as i32),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        let mut detail: Value =
            entry.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(json!({}));
        detail["approval_id"] = json!(id);
        detail["expires_at"] = json!(expires_at);
        if approvers > 1 {
            detail["approvers_required"] = json!(approvers);
        }
        let appended = txn.append(AuditEntry { detail: Some(canonical_json(&detail)), ..entry }).await?;
        txn.commit().await?;
        let event = Event::new(
            events::APPROVAL_REQUESTED,
            agent.sponsor_id,
            Some(agent.id),
            json!({"approval_id": id, "agent_name": agent.name, "method": request.method.as_str(),
                   "host": host_of(&request.url), "label": request.label, "cost_micros": estimate_micros,
                   "reasons": reasons, "expires_at": expires_at, "approvers_required": approvers}),
        )
        .audit_seq(appended.seq)
        .approval(id);
        self.events.publish(event);
        Ok(Parked { approval_id: id, expires_at, audit_seq: appended.seq })
    }

    /// Moves a pending approval to `approved` (if it is still pending and not
    /// expired) and hands back the exact request for the caller to perform. Under
    /// the two-person rule, an approval before the N-th distinct member's is a vote:
    /// recorded, and `None` (nothing to perform yet).
    pub async fn approve(
        &self,
        approver: &Actor,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<Option<Claimed>, AppError> {
        let grant = input.grant.as_ref().map(grants::checked).transpose()?;
        let reason = bounded_reason(input.reason);
        let row = self.owned(approver.org, id).await?;
        let path_prefix = grant.as_ref().map(|g| grants::prefix_for(g, &row.url)).transpose()?;
        let parked = self.open(&row)?;
        let request_id = parked.request_id.clone();
        // What runs is what was parked: checked before the approval is spent.
        let request = parked.into_request().map_err(|e| {
            tracing::error!(approval = %id, error = e, "parked request is unusable");
            AppError::internal()
        })?;
        if request.request_hash() != row.request_hash {
            tracing::error!(approval = %id, "parked request does not match its hash; refusing to perform it");
            return Err(AppError::conflict(
                "approval_tampered",
                "the stored request does not match its hash",
            ));
        }
        let mut approvers = Vec::new();
        if row.approvers_required > 1 {
            let votes = self.vote(&row, &request_id, approver, reason.as_deref()).await?;
            if i64::from(votes) < i64::from(row.approvers_required) {
                return Ok(None);
            }
            approvers = self.votes(id).await?;
        }
        let at = now();
        let until = grant.as_ref().map(|g| at + chrono::Duration::minutes(i64::from(g.minutes)));
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Approved, at, approver.member, reason.clone())
            .col_expr(approvals::Column::GrantMaxActions, Expr::value(grant.as_ref().map(|g| g.max_actions)))
            .col_expr(approvals::Column::GrantUntil, Expr::value(until))
            .col_expr(
                approvals::Column::GrantMaxMicros,
                Expr::value(grant.as_ref().and_then(|g| g.max_micros)),
            )
            .col_expr(approvals::Column::GrantPathPrefix, Expr::value(path_prefix.clone()));
        let mut txn = self.claim(txn, update, approver.org, id, at).await?;
        let approvers: Vec<Value> = approvers
            .iter()
            .map(|v| json!({"member": v.member, "role": v.role.as_str(), "at": v.at}))
            .collect();
        let detail = json!({"approval_id": id, "approver": approver.member, "approver_role": approver.role.as_str(), "reason": reason,
                            "approvers": approvers,
                            "waited_ms": (at - row.created_at).num_milliseconds(),
                            "grant": grant.as_ref().map(|g| json!({"max_actions": g.max_actions, "until": until, "max_micros": g.max_micros,
                                                                   "path_prefix": path_prefix, "secret": row.secret_name}))});
        let appended =
            txn.append(decision_entry(&row, &request_id, "approval.approved", "allow", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Approved, reason.as_deref(), &appended);
        Ok(Some(Claimed { approval: row, request_id, request }))
    }

    pub async fn reject(
        &self,
        approver: &Actor,
        id: Uuid,
        input: RejectRequest,
    ) -> Result<ApprovalView, AppError> {
        let reason = bounded_reason(input.reason);
        let row = self.owned(approver.org, id).await?;
        let request_id = self.request_id_of(&Summary::from(&row)).await?;
        let at = now();
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Rejected, at, approver.member, reason.clone());
        let mut txn = self.claim(txn, update, approver.org, id, at).await?;
        let detail = json!({"approval_id": id, "approver": approver.member, "approver_role": approver.role.as_str(), "reason": reason,
                            "waited_ms": (at - row.created_at).num_milliseconds()});
        let appended =
            txn.append(decision_entry(&row, &request_id, "approval.rejected", "deny", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Rejected, reason.as_deref(), &appended);
        if let Some(agent) = agents::Entity::find_by_id(row.agent_id).one(&self.db).await.map_err(internal)?
            && let Err(e) = self.trust.record(&agent, TrustEvent::ApprovalRejected, Some(&request_id)).await
        {
            tracing::error!(approval = %id, error = %e.message, "trust update after a rejection failed");
        }
        self.get(approver.org, id).await
    }

    /// Applies a decision in `txn` if the approval is still pending and live, and
    /// hands the transaction back; otherwise ends it first (finding out why may
    /// expire the approval, which writes) and says why not.
    async fn claim(
        &self,
        txn: crate::audit::AuditTxn,
        update: sea_orm::UpdateMany<approvals::Entity>,
        sponsor_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<crate::audit::AuditTxn, AppError> {
        let won =
            update.filter(pending_and_live(id, at)).exec(txn.conn()).await.map_err(internal)?.rows_affected
                == 1;
        if won {
            return Ok(txn);
        }
        drop(txn);
        Err(self.not_pending(sponsor_id, id).await)
    }

    /// Why a decision did not apply: it was already decided or has expired.
    pub(super) async fn not_pending(&self, sponsor_id: Uuid, id: Uuid) -> AppError {
        match self.owned(sponsor_id, id).await {
            Ok(row) if row.status == ApprovalStatus::Expired.as_str() => {
                AppError::conflict("approval_expired", "this approval has expired")
            }
            Ok(row) => {
                AppError::conflict("approval_decided", format!("this approval is already {}", row.status))
            }
            Err(e) => e,
        }
    }

    /// Marks pending approvals past their expiry as `expired` (audited and
    /// announced). `scope` narrows the sweep. Returns how many expired.
    pub async fn expire_due(&self, scope: Option<sea_orm::sea_query::SimpleExpr>) -> Result<u64, AppError> {
        let at = now();
        let mut find = summaries()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
            .filter(approvals::Column::ExpiresAt.lte(at));
        if let Some(scope) = scope {
            find = find.filter(scope);
        }
        let due = find.limit(500).into_model::<Summary>().all(&self.db).await.map_err(internal)?;
        let mut expired = 0;
        for row in due {
            let request_id = self.request_id_of(&row).await?;
            let mut txn = self.audit.begin().await?;
            let won = approvals::Entity::update_many()
                .col_expr(approvals::Column::Status, Expr::value(ApprovalStatus::Expired.as_str()))
                .col_expr(approvals::Column::DecidedAt, Expr::value(at))
                .filter(approvals::Column::Id.eq(row.id))
                .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if !won {
                continue;
            }
            let detail = json!({"approval_id": row.id, "expires_at": row.expires_at,
                                "waited_ms": (at - row.created_at).num_milliseconds()});
            let appended =
                txn.append(decision_entry(&row, &request_id, "approval.expired", "deny", detail)).await?;
            txn.commit().await?;
            let event = Event::new(
                events::APPROVAL_EXPIRED,
                row.sponsor_id,
                Some(row.agent_id),
                json!({"approval_id": row.id, "status": "expired"}),
            )
            .audit_seq(appended.seq)
            .approval(row.id);
            self.events.publish(event);
            expired += 1;
        }
        Ok(expired)
    }

    fn announce_resolved(
        &self,
        row: &approvals::Model,
        status: ApprovalStatus,
        reason: Option<&str>,
        appended: &Appended,
    ) {
        let event = Event::new(
            events::APPROVAL_RESOLVED,
            row.sponsor_id,
            Some(row.agent_id),
            json!({"approval_id": row.id, "status": status.as_str(), "reason": reason}),
        )
        .audit_seq(appended.seq)
        .approval(row.id);
        self.events.publish(event);
    }
}

fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
}

fn bounded_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>()).filter(|r| !r.is_empty())
}

/// The columns every sponsor decision sets.
fn decided(
    status: ApprovalStatus,
    at: DateTime<Utc>,
    approver: Uuid,
    reason: Option<String>,
) -> sea_orm::UpdateMany<approvals::Entity> {
    approvals::Entity::update_many()
        .col_expr(approvals::Column::Status, Expr::value(status.as_str()))
        .col_expr(approvals::Column::DecidedAt, Expr::value(at))
        .col_expr(approvals::Column::DecidedBy, Expr::value(approver))
        .col_expr(approvals::Column::DecisionReason, Expr::value(reason))
}

/// `id` is still pending and (if it expires) not yet expired at `at`.
pub(super) fn pending_and_live(id: Uuid, at: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(approvals::Column::Id.eq(id))
        .add(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
        .add(
            Condition::any()
                .add(approvals::Column::ExpiresAt.is_null())
                .add(approvals::Column::ExpiresAt.gt(at)),
        )
}

/// The audit record of a decision on an approval (never the request's headers or body).
pub(super) fn decision_entry(
    row: &impl DecisionRow,
    request_id: &str,
    kind: &str,
    decision: &str,
    detail: Value,
) -> AuditEntry {
    let row = row.decision_row();
    let url = url::Url::parse(&row.url).ok();
    AuditEntry {
        sponsor_id: Some(row.sponsor_id),
        agent_id: Some(row.agent_id),
        request_id: Some(request_id.to_owned()),
        kind: kind.to_owned(),
        stage: Some("approval".into()),
        decision: Some(decision.to_owned()),
        method: Some(row.method.clone()),
        host: url.as_ref().and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase())),
        path: url.as_ref().map(|u| u.path().to_owned()),
        cost_micros: row.cost_micros,
        request_hash: Some(row.request_hash.clone()),
        detail: Some(canonical_json(&detail)),
        ..AuditEntry::default()
    }
}

/// A full row or its summary, for [`decision_entry`].
pub(super) trait DecisionRow {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary>;
}

impl DecisionRow for Summary {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl DecisionRow for approvals::Model {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary> {
        std::borrow::Cow::Owned(Summary::from(self))
    }
}
