//! Where a call stopped, named the same in answers, audit records, events and metrics.

use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Auth,
    Breaker,
    Policy,
    Egress,
    Secret,
    Budget,
    Approval,
    Upstream,
    Storage,
    /// Shed before any stage ran: too many calls in flight.
    Overload,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Breaker => "breaker",
            Stage::Policy => "policy",
            Stage::Egress => "egress",
            Stage::Secret => "secret",
            Stage::Budget => "budget",
            Stage::Approval => "approval",
            Stage::Upstream => "upstream",
            Stage::Storage => "storage",
            Stage::Overload => "overload",
        }
    }
}

/// The answer (HTTP 502) for a call whose process died before answering it (see
/// `approvals::close_interrupted` and `idempotency`): `reason` says what was cut,
/// the two audit seqs how far the call got (the outcome's, if any, means it
/// completed; the intent alone, that it may have reached the upstream).
pub fn interrupted_answer(
    request_id: &str,
    audit_seq: Option<i64>,
    intent_audit_seq: Option<i64>,
    outcome_audit_seq: Option<i64>,
    reason: &str,
) -> Value {
    json!({"request_id": request_id, "audit_seq": audit_seq, "decision": "error", "stage": Stage::Upstream,
           "reason": reason, "intent_audit_seq": intent_audit_seq, "outcome_audit_seq": outcome_audit_seq})
}
