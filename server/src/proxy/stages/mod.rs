//! The stages, one file each, in the order `proxy/mod.rs` runs them. Each takes the
//! call's context ([`super::context::Call`]) and answers `Continue(what the next
//! stage needs)` or `Break(`[`Stop`]`)`; [`stop`] turns a stop into the answer.
//! The machinery they use sits beside them in `proxy/` (the breaker's windows, the
//! egress guard, the policy input, secret injection and scrubbing, the upstream
//! client, the group commit).

pub mod approval;
pub mod arguments;
pub mod breaker;
pub mod budget;
pub mod door;
pub mod egress;
pub mod idempotency;
pub mod meter;
pub mod policy;
pub mod rate;
pub mod reads;
pub mod secret;
pub mod settle;
pub mod stop;
pub mod target;
pub mod upstream;

use serde_json::json;

use super::Pipeline;
use super::context::Call;
use crate::call::Stage;
use crate::events::{self, Event};
use crate::trust::TrustEvent;

#[cfg(doc)]
use super::context::Stop;

/// Applies a trust event, if any. Trust is bookkeeping after the fact: a failure
/// is logged and never changes the answer. (A tier change is announced by the
/// trust service itself.)
async fn adjust_trust(p: &Pipeline, call: &Call<'_>, event: Option<TrustEvent>) {
    let Some(event) = event else { return };
    if let Err(e) = p.trust.record(&call.agent.agent, event, Some(&call.request_id)).await {
        tracing::error!(request = %call.request_id, error = %e.message, "trust update failed");
    }
}

/// The `proxy.denied` event: where and why, never the request's headers or body.
fn denied_event(call: &Call<'_>, stage: Stage, reason: &str, audit_seq: i64) -> Event {
    let data = json!({"stage": stage, "reason": reason, "request_id": call.request_id,
                      "method": call.request.method.as_str(), "host": call.host, "label": call.request.label});
    let agent = &call.agent.agent;
    Event::new(events::PROXY_DENIED, agent.sponsor_id, Some(agent.id), data).audit_seq(audit_seq)
}
