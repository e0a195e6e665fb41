//! Stage `budget`, with the intent: the hold on the agent's wallet and the
//! `proxy.intent` audit record commit in one transaction (group-committed with
//! other calls', `store/batch.rs`), durable before anything leaves AEGIS. Over a
//! limit, nothing is held or recorded and the call is denied with what remains.
//! Tested over HTTP in `tests/api/budget.rs`, `group_commit.rs` and `store.rs`.

use std::ops::ControlFlow::{Break, Continue};

use app::error::AppError;
use serde_json::json;
use uuid::Uuid;

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use crate::audit::AuditEntry;
use crate::call::Stage;
use crate::events::{self, Event};
use crate::store::Intent;
use crate::wallets::Reservation;

pub async fn hold(p: &Pipeline, call: &mut Call<'_>, grant: Option<Uuid>) -> Flow<()> {
    let estimate = call.estimate();
    // Noted before the intent is written, so the intent's stages end with it.
    call.record.note("budget", format!("reserving {estimate}"));
    let detail = json!({"reasons": call.reasons, "stages": call.record.stages, "label": call.request.label,
                        "estimate_micros": estimate, "policy": call.policy_verdict,
                        "approval_id": call.approved, "grant_id": grant,
                        "metering": call.meter.as_ref().map(|m| json!({"connection": m.connection,
                            "provider": m.llm.provider.as_str(), "model": m.llm.model, "max_tokens": m.llm.max_tokens,
                            "input_bound_tokens": m.llm.input_bound, "ceiling_micros": m.llm.ceiling_micros}))});
    let intent = AuditEntry { cost_micros: estimate, ..call.entry("proxy.intent", None, "allow", detail) };
    match p.commit.intent(call.agent.agent.id, &call.request_id, estimate, intent).await {
        Ok(Intent::Recorded(_)) => {
            call.record.note("intent", format!("reserved {estimate}, recorded"));
            Continue(())
        }
        Ok(Intent::Refused(Reservation::Refused { daily_remaining_micros, monthly_remaining_micros })) => {
            // The denial answers instead of the optimistic note above.
            call.record.stages.pop();
            let remaining = json!({"daily_remaining_micros": daily_remaining_micros,
                                   "monthly_remaining_micros": monthly_remaining_micros, "cost_micros": estimate});
            super::rate::give_back(p, call).await;
            let agent = &call.agent.agent;
            let mut data = remaining.clone();
            data["request_id"] = json!(call.request_id);
            p.events.publish(Event::new(events::BUDGET_EXHAUSTED, agent.sponsor_id, Some(agent.id), data));
            Break(Stop::Deny { stage: Stage::Budget, reason: "budget exceeded".into(), extra: remaining })
        }
        // `Refused` always carries a refusal; anything else is a bug, refused safely.
        Ok(Intent::Refused(Reservation::Held)) => {
            super::rate::give_back(p, call).await;
            Break(Stop::Storage(AppError::internal()))
        }
        // Rolled back: no hold, no intent, nothing performed.
        Err(e) => {
            super::rate::give_back(p, call).await;
            Break(Stop::Storage(e))
        }
    }
}
