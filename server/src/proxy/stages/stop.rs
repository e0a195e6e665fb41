//! The end of a call that stopped before the upstream: a denial is audited
//! (`proxy.denied`), counted by trust and the breaker and announced; a call that
//! ended without a verdict (storage unavailable, parked for approval) gives the
//! breaker's half-open probe back, so the next call can probe instead.
//!
//! Tested over HTTP: every `tests/api/proxy.rs`, `policies.rs`, `breaker.rs` and
//! `approvals.rs` denial checks the answer, the audit record and the event.

use serde_json::json;

use super::super::Pipeline;
use super::super::breaker::Admission;
use super::super::breaker::windows::{Kind, Observation};
use super::super::context::{Call, Stop};
use super::{adjust_trust, denied_event};
use crate::audit::AuditEntry;
use crate::call::Stage;
use crate::call::outcome::{Outcome, ProxyResult};
use crate::trust::TrustEvent;

pub async fn finish(p: &Pipeline, call: &mut Call<'_>, stop: Stop) -> ProxyResult {
    match stop {
        Stop::Deny { stage, reason, extra } => deny(p, call, stage, reason, extra).await,
        Stop::Storage(e) => {
            give_back_probe(p, call).await;
            ProxyResult::storage_failure(call.request_id.clone(), &e)
        }
        Stop::Parked { approval_id, approval_seq, expires_at } => {
            give_back_probe(p, call).await;
            ProxyResult {
                request_id: call.request_id.clone(),
                audit_seq: Some(approval_seq),
                reasons: std::mem::take(&mut call.reasons),
                outcome: Outcome::Pending { approval_id, expires_at },
            }
        }
    }
}

async fn give_back_probe(p: &Pipeline, call: &Call<'_>) {
    if call.admission == Admission::Probe {
        p.breaker.return_probe(&call.agent.agent).await;
    }
}

async fn deny(
    p: &Pipeline,
    call: &mut Call<'_>,
    stage: Stage,
    reason: String,
    extra: serde_json::Value,
) -> ProxyResult {
    call.record.note(stage.as_str(), format!("deny: {reason}"));
    let detail = json!({"reason": reason, "reasons": call.reasons, "stages": call.record.stages,
                        "label": call.request.label, "policy": call.policy_verdict});
    let entry = AuditEntry {
        duration_us: call.record.elapsed_micros(),
        ..call.entry("proxy.denied", Some(stage), "deny", detail)
    };
    let appended = p.audit.append(entry).await;
    if appended.is_ok() {
        adjust_trust(p, call, TrustEvent::for_denial(stage)).await;
    }
    // A breaker denial is the breaker's own answer, not a call for it to count.
    if stage != Stage::Breaker {
        let observation = Observation {
            request_id: call.request_id.clone(),
            kind: Kind::Denied,
            spend_micros: 0,
            host: None,
        };
        p.breaker.observe(&call.agent.agent, observation, call.admission).await;
    }
    match appended {
        Ok(appended) => {
            p.events.publish(denied_event(call, stage, &reason, appended.seq));
            ProxyResult {
                request_id: call.request_id.clone(),
                audit_seq: Some(appended.seq),
                reasons: std::mem::take(&mut call.reasons),
                outcome: Outcome::Denied { stage, reason, extra },
            }
        }
        Err(e) => ProxyResult::storage_failure(call.request_id.clone(), &e),
    }
}
