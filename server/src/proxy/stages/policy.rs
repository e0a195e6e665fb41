//! Stage `policy`: the agent's Rego policy decides `allow`, `deny` or
//! `require_approval` on the documented input document (`proxy/policy.rs` builds
//! it). The reads the call needs are made here together, as one
//! [`crate::store::CallStore::call_rows`] (wallet, the policy's current version, the
//! named secret with its grant): none depends on another. Fetching the secret has no effect; the secret stage decides
//! whether it may be used. Tested over HTTP in `tests/api/policies.rs`.

use std::ops::ControlFlow::{Break, Continue};

use serde_json::json;

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use super::super::policy::input;
use crate::call::Stage;
use crate::db::now;
use crate::digest::canonical_json;
use crate::policies::PolicyService;
use crate::policies::engine::Decision;
use crate::store::CallRows;

/// What the policy decided that later stages act on.
pub struct Verdict {
    /// `require_approval`, and this call is not the approved one: the approval stage asks.
    pub needs_approval: bool,
    /// The policy lets the agent's own `Authorization`/`Cookie` through.
    pub forward_credentials: bool,
    /// The named secret's row, if it exists and is granted to this agent.
    pub granted_secret: Option<entity::secrets::Model>,
}

pub async fn decide(p: &Pipeline, call: &mut Call<'_>, target: &url::Url, rows: CallRows) -> Flow<Verdict> {
    let agent = &call.agent.agent;
    let policy_id = PolicyService::decides_with(agent.policy_id);
    let CallRows { wallet, policy_version, granted_secret, .. } = rows;
    let version = match p.policies.source_at(policy_id, policy_version).await {
        Ok(version) => version,
        Err(e) => return Break(Stop::Storage(e)),
    };
    let llm = call.meter.as_ref().map(|m| m.llm.policy_input());
    let input = input(agent, &call.request, target, call.estimate(), wallet.as_ref(), llm, now());
    let canonical_input = canonical_json(&input);
    let evaluation = p.engine.evaluate_contained(version.source, input).await;
    call.policy_hash = Some(evaluation.policy_sha256.clone());
    call.policy_input = Some(canonical_input);
    call.reasons = evaluation.reasons.clone();
    call.policy_verdict =
        json!({"decision": evaluation.decision, "reasons": evaluation.reasons, "error": evaluation.error});
    let mut verdict = Verdict {
        needs_approval: false,
        forward_credentials: evaluation.forward_credentials,
        granted_secret,
    };
    match evaluation.decision {
        Decision::Allow => call.record.note("policy", "allow"),
        Decision::Deny => {
            let reason = evaluation
                .error
                .or_else(|| (!call.reasons.is_empty()).then(|| call.reasons.join("; ")))
                .unwrap_or_else(|| "denied by policy".into());
            return Break(Stop::deny(Stage::Policy, reason));
        }
        Decision::RequireApproval => match call.approved {
            Some(id) => call.record.note("policy", format!("require_approval: approved ({id})")),
            None => {
                verdict.needs_approval = true;
                call.record.note("policy", "require_approval")
            }
        },
    }
    Continue(verdict)
}
