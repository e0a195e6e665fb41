//! Human-in-the-loop approvals: a request the policy marks `require_approval` is
//! parked here, exactly as the agent sent it, until its sponsor approves, rejects
//! or lets it expire.
//!
//! **Exact and sealed.** The parked request (method, URL, headers with their
//! values, body, secret name, cost) is serialised and sealed with the vault's
//! AES-256-GCM key under the approval's id, so nothing an agent sent — its own
//! credentials included — is stored in clear, and a row copied elsewhere does not
//! open. Its SHA-256 (the pipeline's request hash) is stored beside it and checked
//! again before the approved call is performed: what runs is what was approved.
//!
//! **Exactly once.** Every transition is one conditional UPDATE from `pending`
//! (`approve`, `reject`, `expire`), so of two sponsors, two replicas or a sponsor
//! and the expiry janitor racing, exactly one wins; only the approving winner
//! performs the call.
//!
//! **Grants.** An approval may carry a scoped grant: up to N more calls with the
//! same method and host within T minutes, for at most X micro-units in total.
//! Using one is also a single conditional UPDATE, so a grant cannot be overdrawn.

use std::collections::HashMap;
use std::time::Duration;

use app::error::AppError;
use app::model::{
    AgentApprovalView, ApprovalOutcome, ApprovalQuery, ApprovalStatus, ApprovalView, ApproveRequest,
    GrantView, Page, RejectRequest,
};
use app::money::MAX_MICROS;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::{agents, approvals};
use http::{HeaderName, HeaderValue, Method};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::query::seq_of;
use crate::audit::{Appended, AuditEntry, AuditLog};
use crate::events::{self, Event, EventBus};
use crate::proxy::interrupted_answer;
use crate::proxy::request::{Origin, ProxyRequest};
use crate::secrets::vault::Vault;
use crate::storage::{canonical_json, internal, now};
use crate::trust::{TrustEvent, TrustService};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// How much of a text body the sponsor sees before deciding.
pub const BODY_PREVIEW_BYTES: usize = 2048;
pub const MAX_GRANT_ACTIONS: i32 = 1000;
pub const MAX_GRANT_MINUTES: i32 = 24 * 60;
const MAX_REASON_CHARS: usize = 500;

/// The parked request: everything needed to perform it again, byte for byte.
/// (No `Debug`: it holds the agent's header values.)
#[derive(Clone, Serialize, Deserialize)]
struct ParkedRequest {
    request_id: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body_base64: String,
    secret: Option<String>,
    declared_cost_micros: i64,
    minimum_cost_micros: i64,
    label: Option<String>,
    follow_redirects: bool,
    connection: Option<String>,
}

impl ParkedRequest {
    fn of(request: &ProxyRequest, request_id: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            method: request.method.as_str().to_owned(),
            url: request.url.clone(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body_base64: B64.encode(&request.body),
            secret: request.secret.clone(),
            declared_cost_micros: request.declared_cost_micros,
            minimum_cost_micros: request.minimum_cost_micros,
            label: request.label.clone(),
            follow_redirects: request.follow_redirects,
            connection: match &request.origin {
                Origin::Gateway { connection } => Some(connection.clone()),
                Origin::Execute => None,
            },
        }
    }

    fn body(&self) -> Vec<u8> {
        B64.decode(&self.body_base64).unwrap_or_default()
    }

    /// The request to perform. Answers are always read whole: the agent collects
    /// them later from the approval, even for a gateway call.
    fn into_request(self) -> Result<ProxyRequest, String> {
        let method = Method::from_bytes(self.method.as_bytes()).map_err(|_| "stored method is invalid")?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| "stored header name is invalid")?;
            let value = HeaderValue::from_str(v).map_err(|_| "stored header value is invalid")?;
            headers.push((name, value));
        }
        let body = Bytes::from(self.body());
        Ok(ProxyRequest {
            method,
            url: self.url,
            headers,
            body,
            secret: self.secret,
            declared_cost_micros: self.declared_cost_micros,
            minimum_cost_micros: self.minimum_cost_micros,
            idempotency_key: None,
            label: self.label,
            follow_redirects: self.follow_redirects,
            stream_response: false,
            origin: match self.connection {
                Some(connection) => Origin::Gateway { connection },
                None => Origin::Execute,
            },
        })
    }
}

/// Where a freshly parked request waits.
#[derive(Debug, Clone)]
pub struct Parked {
    pub approval_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub audit_seq: i64,
}

/// An approved request, claimed for performing by the caller that won the race.
pub struct Claimed {
    pub approval: approvals::Model,
    pub request_id: String,
    pub request: ProxyRequest,
}

#[derive(Clone)]
pub struct ApprovalService {
    db: sea_orm::DatabaseConnection,
    audit: AuditLog,
    events: EventBus,
    vault: Vault,
    trust: TrustService,
    ttl: Option<Duration>,
}

fn context(id: Uuid) -> String {
    format!("aegis-approval:v1:{id}")
}

fn not_found() -> AppError {
    AppError::not_found("approval")
}

fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
}

fn bounded_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>()).filter(|r| !r.is_empty())
}

impl ApprovalService {
    pub fn new(
        db: sea_orm::DatabaseConnection,
        audit: AuditLog,
        events: EventBus,
        vault: Vault,
        trust: TrustService,
        ttl: Option<Duration>,
    ) -> Self {
        Self { db, audit, events, vault, trust, ttl }
    }

    fn seal(&self, id: Uuid, parked: &ParkedRequest) -> String {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(parked).unwrap_or_default());
        let (nonce, sealed) = self.vault.seal_bytes(&context(id), &plain);
        canonical_json(&json!({"v": 1, "nonce": hex::encode(nonce), "sealed": B64.encode(sealed)}))
    }

    fn open(&self, row: &approvals::Model) -> Result<ParkedRequest, AppError> {
        let fail = || {
            tracing::error!(approval = %row.id, "a parked request could not be opened (wrong key or tampered row)");
            AppError::internal()
        };
        let stored: Value = serde_json::from_str(&row.request_json).map_err(|_| fail())?;
        let nonce = stored["nonce"].as_str().and_then(|n| hex::decode(n).ok()).ok_or_else(fail)?;
        let sealed = stored["sealed"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(fail)?;
        let plain = self.vault.open_bytes(&context(row.id), &nonce, &sealed).map_err(|_| fail())?;
        serde_json::from_slice(&plain).map_err(|_| fail())
    }

    /// Parks `request` and writes `entry` (the pipeline's `approval.requested`
    /// record) in the same transaction.
    pub async fn park(
        &self,
        agent: &agents::Model,
        request: &ProxyRequest,
        request_id: &str,
        estimate_micros: i64,
        reasons: &[String],
        entry: AuditEntry,
    ) -> Result<Parked, AppError> {
        let id = Uuid::now_v7();
        let at = now();
        let expires_at = self.ttl.map(|ttl| at + chrono::Duration::from_std(ttl).unwrap_or_default());
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
            decision_reason: Set(None),
            outcome_json: Set(None),
            outcome_audit_seq: Set(None),
            grant_max_actions: Set(None),
            grant_used_actions: Set(0),
            grant_until: Set(None),
            grant_max_micros: Set(None),
            grant_spent_micros: Set(0),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        let mut detail: Value =
            entry.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(json!({}));
        detail["approval_id"] = json!(id);
        detail["expires_at"] = json!(expires_at);
        let appended = txn.append(AuditEntry { detail: Some(canonical_json(&detail)), ..entry }).await?;
        txn.commit().await?;
        let event = Event::new(
            events::APPROVAL_REQUESTED,
            agent.sponsor_id,
            Some(agent.id),
            json!({"approval_id": id, "agent_name": agent.name, "method": request.method.as_str(),
                   "host": host_of(&request.url), "label": request.label, "cost_micros": estimate_micros,
                   "reasons": reasons, "expires_at": expires_at}),
        )
        .audit_seq(appended.seq)
        .approval(id);
        self.events.publish(event);
        Ok(Parked { approval_id: id, expires_at, audit_seq: appended.seq })
    }

    /// Uses one action of a live grant covering this call (same agent, method and
    /// host, time left, actions left, and money left if capped). Returns its id.
    pub async fn use_grant(
        &self,
        agent_id: Uuid,
        method: &str,
        host: &str,
        estimate_micros: i64,
    ) -> Result<Option<Uuid>, AppError> {
        let at = now();
        let candidates = approvals::Entity::find()
            .filter(approvals::Column::AgentId.eq(agent_id))
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::GrantUntil.gt(at))
            .filter(approvals::Column::Method.eq(method))
            .order_by_asc(approvals::Column::GrantUntil)
            .all(&self.db)
            .await
            .map_err(internal)?;
        for grant in candidates.into_iter().filter(|g| host_of(&g.url).as_deref() == Some(host)) {
            let used = approvals::Entity::update_many()
                .col_expr(
                    approvals::Column::GrantUsedActions,
                    Expr::col(approvals::Column::GrantUsedActions).add(1),
                )
                .col_expr(
                    approvals::Column::GrantSpentMicros,
                    Expr::col(approvals::Column::GrantSpentMicros).add(estimate_micros),
                )
                .filter(approvals::Column::Id.eq(grant.id))
                .filter(approvals::Column::GrantUntil.gt(at))
                .filter(
                    Expr::col(approvals::Column::GrantUsedActions)
                        .lt(Expr::col(approvals::Column::GrantMaxActions)),
                )
                .filter(
                    Condition::any().add(approvals::Column::GrantMaxMicros.is_null()).add(
                        Expr::col(approvals::Column::GrantSpentMicros)
                            .add(estimate_micros)
                            .lte(Expr::col(approvals::Column::GrantMaxMicros)),
                    ),
                )
                .exec(&self.db)
                .await
                .map_err(internal)?;
            if used.rows_affected == 1 {
                return Ok(Some(grant.id));
            }
        }
        Ok(None)
    }

    async fn owned(&self, sponsor_id: Uuid, id: Uuid) -> Result<approvals::Model, AppError> {
        self.expire_due(Some(approvals::Column::Id.eq(id))).await?;
        approvals::Entity::find_by_id(id)
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)
    }

    pub async fn get(&self, sponsor_id: Uuid, id: Uuid) -> Result<ApprovalView, AppError> {
        let row = self.owned(sponsor_id, id).await?;
        let names = self.agent_names(&[row.agent_id]).await?;
        self.view(row, &names)
    }

    pub async fn list(&self, sponsor_id: Uuid, query: ApprovalQuery) -> Result<Page<ApprovalView>, AppError> {
        let limit = match query.limit {
            Some(n) if !(1..=MAX_PAGE).contains(&n) => {
                return Err(AppError::bad_request("invalid_limit", format!("limit must be 1 to {MAX_PAGE}")));
            }
            limit => limit.unwrap_or(DEFAULT_PAGE),
        };
        self.expire_due(Some(approvals::Column::SponsorId.eq(sponsor_id))).await?;
        let mut find = approvals::Entity::find()
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .order_by_desc(approvals::Column::Id)
            .limit(u64::from(limit) + 1);
        if let Some(status) = query.status.as_deref().filter(|s| !s.is_empty()) {
            let status = ApprovalStatus::parse(status).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_status",
                    "status must be pending, approved, rejected or expired",
                )
            })?;
            find = find.filter(approvals::Column::Status.eq(status.as_str()));
        }
        if let Some(agent_id) = query.agent_id {
            find = find.filter(approvals::Column::AgentId.eq(agent_id));
        }
        if let Some(cursor) = query.cursor.as_deref().filter(|c| !c.is_empty()) {
            let after: Uuid = cursor.parse().map_err(|_| {
                AppError::bad_request("invalid_cursor", "cursor is not one this API returned")
            })?;
            find = find.filter(approvals::Column::Id.lt(after));
        }
        let mut rows = find.all(&self.db).await.map_err(internal)?;
        let next_cursor = (rows.len() > limit as usize).then(|| {
            rows.truncate(limit as usize);
            rows.last().map(|a| a.id.to_string())
        });
        let agent_ids: Vec<Uuid> = rows.iter().map(|r| r.agent_id).collect();
        let names = self.agent_names(&agent_ids).await?;
        let items = rows.into_iter().map(|r| self.view(r, &names)).collect::<Result<_, _>>()?;
        Ok(Page { items, next_cursor: next_cursor.flatten() })
    }

    /// The agent's own view of an approval it asked for (404 for anyone else's).
    pub async fn for_agent(&self, agent_id: Uuid, id: Uuid) -> Result<AgentApprovalView, AppError> {
        self.expire_due(Some(approvals::Column::Id.eq(id))).await?;
        let row = approvals::Entity::find_by_id(id)
            .filter(approvals::Column::AgentId.eq(agent_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        let parked = self.open(&row)?;
        Ok(AgentApprovalView {
            approval_id: row.id,
            status: status_of(&row)?,
            request_id: parked.request_id,
            created_at: row.created_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            outcome: outcome_of(&row),
            reason: (row.status == ApprovalStatus::Rejected.as_str())
                .then_some(row.decision_reason)
                .flatten(),
        })
    }

    /// Moves a pending approval to `approved` (if it is still pending and not
    /// expired) and hands back the exact request for the caller to perform.
    pub async fn approve(
        &self,
        sponsor_id: Uuid,
        approver: Uuid,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<Claimed, AppError> {
        let grant = match &input.grant {
            None => None,
            Some(g) => {
                if !(1..=MAX_GRANT_ACTIONS).contains(&g.max_actions) {
                    return Err(AppError::validation(format!(
                        "grant.max_actions must be 1 to {MAX_GRANT_ACTIONS}"
                    )));
                }
                if !(1..=MAX_GRANT_MINUTES).contains(&g.minutes) {
                    return Err(AppError::validation(format!(
                        "grant.minutes must be 1 to {MAX_GRANT_MINUTES}"
                    )));
                }
                if g.max_micros.is_some_and(|m| !(0..=MAX_MICROS).contains(&m)) {
                    return Err(AppError::validation("grant.max_micros must be 0 or more"));
                }
                Some(g.clone())
            }
        };
        let reason = bounded_reason(input.reason);
        let row = self.owned(sponsor_id, id).await?;
        let parked = self.open(&row)?;
        let request_id = parked.request_id.clone();
        // What runs is what was parked: checked before the approval is spent.
        let request = parked.clone().into_request().map_err(|e| {
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
        let at = now();
        let until = grant.as_ref().map(|g| at + chrono::Duration::minutes(i64::from(g.minutes)));
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Approved, at, approver, reason.clone())
            .col_expr(approvals::Column::GrantMaxActions, Expr::value(grant.as_ref().map(|g| g.max_actions)))
            .col_expr(approvals::Column::GrantUntil, Expr::value(until))
            .col_expr(
                approvals::Column::GrantMaxMicros,
                Expr::value(grant.as_ref().and_then(|g| g.max_micros)),
            );
        let mut txn = self.claim(txn, update, sponsor_id, id, at).await?;
        let detail = json!({"approval_id": id, "approver": approver, "reason": reason,
                            "waited_ms": (at - row.created_at).num_milliseconds(),
                            "grant": grant.as_ref().map(|g| json!({"max_actions": g.max_actions, "until": until, "max_micros": g.max_micros}))});
        let appended =
            txn.append(decision_entry(&row, &parked, "approval.approved", "allow", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Approved, reason.as_deref(), &appended);
        Ok(Claimed { approval: row, request_id, request })
    }

    /// Keeps what happened when the approved request was performed.
    pub async fn record_outcome(&self, id: Uuid, status: u16, body: &Value, audit_seq: Option<i64>) {
        let outcome = canonical_json(&json!({"status": status, "body": body}));
        let stored = approvals::Entity::update_many()
            .col_expr(approvals::Column::OutcomeJson, Expr::value(outcome))
            .col_expr(approvals::Column::OutcomeAuditSeq, Expr::value(audit_seq))
            .filter(approvals::Column::Id.eq(id))
            .exec(&self.db)
            .await;
        if let Err(e) = stored {
            tracing::error!(approval = %id, error = %e, "could not store an approval's outcome (it is in the audit log)");
        }
    }

    /// Gives an outcome to approved calls whose performing replica stopped before
    /// keeping one (a crash mid-call; a caller hanging up no longer does it). Once
    /// `stale_after` (the reservation TTL: the call's budget hold, if it got one, has
    /// expired too) has passed since the approval, the call cannot still be running:
    /// the approval's outcome says it was interrupted, with what the audit log knows
    /// (its intent and outcome records, if any), audited as `approval.interrupted`.
    /// The agent polling it gets an answer instead of `approved` for ever. Returns
    /// how many were closed.
    pub async fn close_interrupted(&self, stale_after: Duration) -> Result<u64, AppError> {
        let cutoff = now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let stale = approvals::Entity::find()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::OutcomeJson.is_null())
            .filter(approvals::Column::DecidedAt.lt(cutoff))
            .limit(100)
            .all(&self.db)
            .await
            .map_err(internal)?;
        let mut closed = 0;
        for row in stale {
            let Ok(parked) = self.open(&row) else { continue };
            let intent = seq_of(&self.db, &parked.request_id, "proxy.intent").await?;
            let performed = seq_of(&self.db, &parked.request_id, "proxy.outcome").await?;
            let reason = "interrupted: the AEGIS process performing this approved call stopped before \
                          keeping its answer; intent_audit_seq and outcome_audit_seq say how far it got";
            let detail =
                json!({"approval_id": row.id, "intent_audit_seq": intent, "outcome_audit_seq": performed});
            let mut txn = self.audit.begin().await?;
            // Claimed only if still without an outcome (a late answer from a live
            // replica wins), the row first and the chain after, like every decision.
            let outcome = |audit_seq: Option<i64>| {
                let body = interrupted_answer(&parked.request_id, audit_seq, intent, performed, reason);
                canonical_json(&json!({"status": 502, "body": body}))
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
            let appended =
                txn.append(decision_entry(&row, &parked, "approval.interrupted", "error", detail)).await?;
            store(Some(appended.seq)).exec(txn.conn()).await.map_err(internal)?;
            txn.commit().await?;
            tracing::warn!(approval = %row.id, request = %parked.request_id, "an approved call was interrupted; its approval now says so");
            closed += 1;
        }
        Ok(closed)
    }

    pub async fn reject(
        &self,
        sponsor_id: Uuid,
        approver: Uuid,
        id: Uuid,
        input: RejectRequest,
    ) -> Result<ApprovalView, AppError> {
        let reason = bounded_reason(input.reason);
        let row = self.owned(sponsor_id, id).await?;
        let parked = self.open(&row)?;
        let at = now();
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Rejected, at, approver, reason.clone());
        let mut txn = self.claim(txn, update, sponsor_id, id, at).await?;
        let detail = json!({"approval_id": id, "approver": approver, "reason": reason,
                            "waited_ms": (at - row.created_at).num_milliseconds()});
        let appended = txn.append(decision_entry(&row, &parked, "approval.rejected", "deny", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Rejected, reason.as_deref(), &appended);
        if let Some(agent) = agents::Entity::find_by_id(row.agent_id).one(&self.db).await.map_err(internal)?
            && let Err(e) =
                self.trust.record(&agent, TrustEvent::ApprovalRejected, Some(&parked.request_id)).await
        {
            tracing::error!(approval = %id, error = %e.message, "trust update after a rejection failed");
        }
        self.get(sponsor_id, id).await
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
    async fn not_pending(&self, sponsor_id: Uuid, id: Uuid) -> AppError {
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
        let mut find = approvals::Entity::find()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
            .filter(approvals::Column::ExpiresAt.lte(at));
        if let Some(scope) = scope {
            find = find.filter(scope);
        }
        let due = find.limit(500).all(&self.db).await.map_err(internal)?;
        let mut expired = 0;
        for row in due {
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
            let parked = self.open(&row)?;
            let detail = json!({"approval_id": row.id, "expires_at": row.expires_at,
                                "waited_ms": (at - row.created_at).num_milliseconds()});
            let appended =
                txn.append(decision_entry(&row, &parked, "approval.expired", "deny", detail)).await?;
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

    pub async fn pending_count(&self, sponsor_id: Uuid) -> Result<u64, AppError> {
        use sea_orm::PaginatorTrait;
        approvals::Entity::find()
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
            .count(&self.db)
            .await
            .map_err(internal)
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

    async fn agent_names(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, AppError> {
        let rows: Vec<(Uuid, String)> = agents::Entity::find()
            .select_only()
            .column(agents::Column::Id)
            .column(agents::Column::Name)
            .filter(agents::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows.into_iter().collect())
    }

    fn view(&self, row: approvals::Model, names: &HashMap<Uuid, String>) -> Result<ApprovalView, AppError> {
        let parked = self.open(&row)?;
        let body = parked.body();
        let preview = std::str::from_utf8(&body[..body.len().min(BODY_PREVIEW_BYTES)])
            .ok()
            .or_else(|| {
                // A preview cut inside a multi-byte character is still text.
                let cut = &body[..body.len().min(BODY_PREVIEW_BYTES)];
                std::str::from_utf8(&cut[..cut.len().saturating_sub(3)]).ok()
            })
            .filter(|_| !body.is_empty())
            .map(str::to_owned);
        let mut header_names: Vec<String> = parked.headers.iter().map(|(k, _)| k.clone()).collect();
        header_names.sort();
        header_names.dedup();
        let grant = match (row.grant_max_actions, row.grant_until) {
            (Some(max_actions), Some(until)) => Some(GrantView {
                max_actions,
                used_actions: row.grant_used_actions,
                until,
                max_micros: row.grant_max_micros,
                spent_micros: row.grant_spent_micros,
            }),
            _ => None,
        };
        Ok(ApprovalView {
            id: row.id,
            agent_id: row.agent_id,
            agent_name: names.get(&row.agent_id).cloned().unwrap_or_default(),
            status: status_of(&row)?,
            method: row.method.clone(),
            url: row.url.clone(),
            header_names,
            body_preview: preview,
            body_bytes: body.len() as u64,
            action_label: row.action_label.clone(),
            secret_name: row.secret_name.clone(),
            cost_micros: row.cost_micros,
            policy_reasons: serde_json::from_str(&row.policy_reasons).unwrap_or_default(),
            trust_at_request: row.trust_at_request,
            request_hash: row.request_hash.clone(),
            request_id: parked.request_id,
            created_at: row.created_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            decided_by: row.decided_by,
            decision_reason: row.decision_reason.clone(),
            outcome: outcome_of(&row),
            grant,
        })
    }
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
fn pending_and_live(id: Uuid, at: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(approvals::Column::Id.eq(id))
        .add(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
        .add(
            Condition::any()
                .add(approvals::Column::ExpiresAt.is_null())
                .add(approvals::Column::ExpiresAt.gt(at)),
        )
}

fn status_of(row: &approvals::Model) -> Result<ApprovalStatus, AppError> {
    ApprovalStatus::parse(&row.status).ok_or_else(|| {
        tracing::error!(approval = %row.id, status = %row.status, "unknown approval status");
        AppError::internal()
    })
}

fn outcome_of(row: &approvals::Model) -> Option<ApprovalOutcome> {
    let stored: Value = serde_json::from_str(row.outcome_json.as_deref()?).ok()?;
    Some(ApprovalOutcome {
        status: stored["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
        body: stored["body"].clone(),
        audit_seq: row.outcome_audit_seq,
    })
}

/// The audit record of a decision on an approval (never the request's headers or body).
fn decision_entry(
    row: &approvals::Model,
    parked: &ParkedRequest,
    kind: &str,
    decision: &str,
    detail: Value,
) -> AuditEntry {
    let url = url::Url::parse(&row.url).ok();
    AuditEntry {
        sponsor_id: Some(row.sponsor_id),
        agent_id: Some(row.agent_id),
        request_id: Some(parked.request_id.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ProxyRequest {
        let input: crate::proxy::request::ExecuteRequest = serde_json::from_value(json!({
            "method": "post", "url": "https://api.example.com/v1/things?x=1",
            "headers": {"Authorization": "Bearer agent-own", "X-Trace": "7"},
            "body_base64": B64.encode([0u8, 1, 2, 255]), "secret": "gh", "cost_micros": 42,
            "action": "things.create", "follow_redirects": true
        }))
        .unwrap();
        input.into_proxy_request(1 << 20).unwrap()
    }

    #[test]
    fn a_parked_request_comes_back_exactly() {
        let original = request();
        let parked = ParkedRequest::of(&original, "req_1");
        let json = serde_json::to_vec(&parked).unwrap();
        let back: ParkedRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.request_id, "req_1");
        let restored = back.into_request().unwrap();
        assert_eq!(restored.request_hash(), original.request_hash(), "hash-bound: nothing changed");
        assert_eq!(restored.body, original.body);
        assert!(!restored.stream_response);
    }

    #[test]
    fn sealed_requests_open_only_under_their_own_id() {
        let vault = Vault::new(&[9u8; 32]).unwrap();
        let parked = ParkedRequest::of(&request(), "req_1");
        let plain = serde_json::to_vec(&parked).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (nonce, sealed) = vault.seal_bytes(&context(a), &plain);
        assert!(!sealed.windows(9).any(|w| w == b"agent-own"), "the agent's credential is not in clear");
        assert!(vault.open_bytes(&context(a), &nonce, &sealed).is_ok());
        assert!(
            vault.open_bytes(&context(b), &nonce, &sealed).is_err(),
            "a row moved to another id does not open"
        );
    }
}
