//! [`Summary`]: an approval without its sealed request. Lists, polls, grants and
//! the expiry janitor read only these plain columns ([`summaries`]); the sealed
//! request is opened only to perform it and to show one approval in full.

use chrono::{DateTime, Utc};
use entity::approvals;
use sea_orm::{EntityTrait, FromQueryResult, QuerySelect};
use uuid::Uuid;

/// Every column but the sealed request: what lists, polls and the janitor read.
#[derive(Debug, Clone, FromQueryResult)]
pub(super) struct Summary {
    pub(super) id: Uuid,
    pub(super) sponsor_id: Uuid,
    pub(super) agent_id: Uuid,
    pub(super) status: String,
    pub(super) request_hash: String,
    pub(super) method: String,
    pub(super) url: String,
    pub(super) action_label: Option<String>,
    pub(super) secret_name: Option<String>,
    pub(super) cost_micros: i64,
    pub(super) policy_reasons: String,
    pub(super) trust_at_request: i32,
    pub(super) created_at: DateTime<Utc>,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) decided_at: Option<DateTime<Utc>>,
    pub(super) decided_by: Option<Uuid>,
    pub(super) decision_reason: Option<String>,
    pub(super) outcome_json: Option<String>,
    pub(super) outcome_audit_seq: Option<i64>,
    pub(super) grant_max_actions: Option<i32>,
    pub(super) grant_used_actions: i32,
    pub(super) grant_until: Option<DateTime<Utc>>,
    pub(super) grant_max_micros: Option<i64>,
    pub(super) grant_spent_micros: i64,
    pub(super) request_id: Option<String>,
    pub(super) header_names: Option<String>,
    pub(super) body_bytes: i64,
    pub(super) grant_path_prefix: Option<String>,
    pub(super) approvers_required: i32,
}

impl From<&approvals::Model> for Summary {
    fn from(m: &approvals::Model) -> Self {
        Self {
            id: m.id,
            sponsor_id: m.sponsor_id,
            agent_id: m.agent_id,
            status: m.status.clone(),
            request_hash: m.request_hash.clone(),
            method: m.method.clone(),
            url: m.url.clone(),
            action_label: m.action_label.clone(),
            secret_name: m.secret_name.clone(),
            cost_micros: m.cost_micros,
            policy_reasons: m.policy_reasons.clone(),
            trust_at_request: m.trust_at_request,
            created_at: m.created_at,
            expires_at: m.expires_at,
            decided_at: m.decided_at,
            decided_by: m.decided_by,
            decision_reason: m.decision_reason.clone(),
            outcome_json: m.outcome_json.clone(),
            outcome_audit_seq: m.outcome_audit_seq,
            grant_max_actions: m.grant_max_actions,
            grant_used_actions: m.grant_used_actions,
            grant_until: m.grant_until,
            grant_max_micros: m.grant_max_micros,
            grant_spent_micros: m.grant_spent_micros,
            request_id: m.request_id.clone(),
            header_names: m.header_names.clone(),
            body_bytes: m.body_bytes,
            grant_path_prefix: m.grant_path_prefix.clone(),
            approvers_required: m.approvers_required,
        }
    }
}

/// Rows as [`Summary`]: the sealed request is never read.
pub(super) fn summaries() -> sea_orm::Select<approvals::Entity> {
    use approvals::Column as C;
    approvals::Entity::find().select_only().columns([
        C::Id,
        C::SponsorId,
        C::AgentId,
        C::Status,
        C::RequestHash,
        C::Method,
        C::Url,
        C::ActionLabel,
        C::SecretName,
        C::CostMicros,
        C::PolicyReasons,
        C::TrustAtRequest,
        C::CreatedAt,
        C::ExpiresAt,
        C::DecidedAt,
        C::DecidedBy,
        C::DecisionReason,
        C::OutcomeJson,
        C::OutcomeAuditSeq,
        C::GrantMaxActions,
        C::GrantUsedActions,
        C::GrantUntil,
        C::GrantMaxMicros,
        C::GrantSpentMicros,
        C::RequestId,
        C::HeaderNames,
        C::BodyBytes,
        C::GrantPathPrefix,
        C::ApproversRequired,
    ])
}
