//! Stage `approval`: a call the policy wants approved either uses a standing grant
//! the sponsor gave (bound to agent, method, origin, path prefix and secret) or is
//! parked for the sponsor (`approvals`), sealed, and answered `pending_approval`.
//! It runs after egress and secret, so a sponsor is only ever asked about calls
//! that could actually be performed. Tested over HTTP in `tests/api/approvals.rs`.

use std::ops::ControlFlow::{Break, Continue};

use serde_json::json;
use uuid::Uuid;

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use super::policy::Verdict;
use super::secret::Prepared;
use crate::audit::AuditEntry;
use crate::call::Stage;

/// Goes on with the prepared request (and the grant used, if any), or parks it.
pub async fn ask(
    p: &Pipeline,
    call: &mut Call<'_>,
    verdict: &Verdict,
    prepared: Prepared,
) -> Flow<(Prepared, Option<Uuid>)> {
    if !verdict.needs_approval {
        return Continue((prepared, None));
    }
    if call.request.mcp().is_some_and(|m| m.method == "tools/list") {
        // AEGIS lists an MCP server's tools for the agent; nobody waits on that listing.
        let reason = "listing an MCP server's tools is not parked for approval (allow input.mcp.method \"tools/list\")";
        return Break(Stop::deny(Stage::Approval, reason));
    }
    let estimate = call.estimate();
    let grant = p
        .approvals
        .use_grant(
            call.agent.agent.id,
            call.request.method.as_str(),
            &call.request.url,
            call.request.secret.as_deref(),
            estimate,
        )
        .await;
    match grant {
        Ok(Some(id)) => {
            call.record.note("approval", format!("grant {id}"));
            Continue((prepared, Some(id)))
        }
        Ok(None) => {
            // The opened secret is not kept while the sponsor decides.
            drop(prepared);
            Break(park(p, call, estimate).await)
        }
        Err(e) => Break(Stop::Storage(e)),
    }
}

async fn park(p: &Pipeline, call: &mut Call<'_>, estimate: i64) -> Stop {
    call.record.note("approval", "parked");
    let detail = json!({"reasons": call.reasons, "stages": call.record.stages, "label": call.request.label,
                        "estimate_micros": estimate, "policy": call.policy_verdict});
    let entry = AuditEntry {
        cost_micros: estimate,
        duration_us: call.record.elapsed_micros(),
        ..call.entry("approval.requested", Some(Stage::Approval), "pending", detail)
    };
    let parked = p
        .approvals
        .park(&call.agent.agent, &call.request, &call.request_id, estimate, &call.reasons, entry)
        .await;
    match parked {
        Ok(parked) => Stop::Parked {
            approval_id: parked.approval_id,
            approval_seq: parked.audit_seq,
            expires_at: parked.expires_at,
        },
        // Too large to park (`approvals::MAX_PARKED_BODY_BYTES`): refused, nothing kept.
        Err(e) if e.status == 413 => {
            Stop::Deny { stage: Stage::Approval, reason: e.message, extra: json!({"code": e.code}) }
        }
        Err(e) => Stop::Storage(e),
    }
}
