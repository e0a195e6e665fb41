//! Stage `settle`: after the upstream, the hold is settled at the cost (or released
//! when nothing was performed) in one transaction with the `proxy.outcome` audit
//! record; then trust, the breaker's windows and the events feed learn how the call
//! went. Tested over HTTP in `tests/api/budget.rs`, `trust.rs`, `breaker.rs` and
//! `events.rs`; what counts for trust and the breaker is tested below.

use serde_json::json;

use super::super::Pipeline;
use super::super::breaker::windows::{Kind, Observation};
use super::super::context::Call;
use super::{adjust_trust, denied_event, upstream};
use crate::call::outcome::{Answer, Outcome, ProxyResult};
use crate::call::request::Origin;
use crate::call::upstream::UpstreamError;
use crate::trust::{self, TrustEvent};

pub async fn settle(p: &Pipeline, call: &mut Call<'_>, answer: Result<Answer, UpstreamError>) -> ProxyResult {
    let status = answer.as_ref().ok().map(Answer::status);
    let outcome = upstream::outcome_of(answer, call.estimate());
    let (stage, decision) = match &outcome {
        Outcome::Denied { stage, .. } => (Some(*stage), "deny"),
        Outcome::Failed { stage, .. } => (Some(*stage), "error"),
        _ => (None, "allow"),
    };
    let charge = match &outcome {
        Outcome::Performed { cost_micros, .. } => Some(*cost_micros),
        _ => None,
    };
    let detail = json!({"reasons": call.reasons, "stages": call.record.stages, "label": call.request.label,
                        "policy": call.policy_verdict});
    let mut entry = call.entry("proxy.outcome", stage, decision, detail);
    entry.status = status.map(i32::from);
    entry.cost_micros = charge.unwrap_or(0);
    entry.duration_us = call.record.elapsed_micros();
    let appended = match p.commit.outcome(call.agent.agent.id, &call.request_id, charge, entry).await {
        Ok(done) => {
            if done.resolved
                && let Some(charged) = charge
            {
                p.metrics.settled(charged);
            }
            Ok(done.appended)
        }
        Err(e) => {
            settle_alone(p, &call.request_id, charge).await;
            Err(e)
        }
    };
    adjust_trust(p, call, trust_event(&outcome, status, vouched(call))).await;
    let performed_host = matches!(outcome, Outcome::Performed { .. }).then(|| call.host.clone()).flatten();
    let observation = Observation {
        request_id: call.request_id.clone(),
        kind: breaker_kind(&outcome, status),
        spend_micros: charge.unwrap_or(0),
        host: performed_host,
    };
    p.breaker.observe(&call.agent.agent, observation, call.admission).await;
    if let (Ok(a), Outcome::Denied { stage, reason, .. }) = (&appended, &outcome) {
        p.events.publish(denied_event(call, *stage, reason, a.seq));
    }
    let audit_seq = match appended {
        Ok(appended) => Some(appended.seq),
        Err(e) => {
            // The call happened and its intent is on record; report it, flag the gap.
            tracing::error!(request = %call.request_id, error = %e.message, "outcome could not be audited");
            None
        }
    };
    let reasons = std::mem::take(&mut call.reasons);
    ProxyResult { request_id: call.request_id.clone(), audit_seq, reasons, outcome }
}

/// The outcome's transaction failed, but the call happened: still charge it (or
/// release the hold) on its own; a hold left behind would expire uncharged.
async fn settle_alone(p: &Pipeline, request_id: &str, charge: Option<i64>) {
    let resolved = match charge {
        Some(charged) => p.wallets.settle(request_id, charged).await,
        None => p.wallets.release(request_id).await,
    };
    match resolved {
        Ok(true) => p.metrics.settled(charge.unwrap_or(0)),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(request = %request_id, error = %e.message, "settlement failed; the hold expires")
        }
    }
}

/// Whether the sponsor vouched for the host: its secret, its connection, or its
/// approval of this very call.
fn vouched(call: &Call<'_>) -> bool {
    call.request.secret.is_some()
        || matches!(call.request.origin, Origin::Gateway { .. })
        || call.approved.is_some()
}

/// A performed call is a success only when it meant something — a 2xx on a host
/// the sponsor vouched for (`trust::counts_as_success`); other answers, timeouts
/// and unreachable upstreams change nothing; a blocked redirect hop is an egress
/// denial.
fn trust_event(outcome: &Outcome, status: Option<u16>, vouched: bool) -> Option<TrustEvent> {
    match (outcome, status) {
        (Outcome::Performed { .. }, Some(code)) if trust::counts_as_success(code, vouched) => {
            Some(TrustEvent::Success)
        }
        (Outcome::Denied { stage, .. }, _) => TrustEvent::for_denial(*stage),
        _ => None,
    }
}

/// How the breaker counts the call: an answer below 500 is fine, a denial is a
/// denial, anything else an upstream error.
fn breaker_kind(outcome: &Outcome, status: Option<u16>) -> Kind {
    match (outcome, status) {
        (Outcome::Performed { .. }, Some(code)) if code < 500 => Kind::Ok,
        (Outcome::Denied { .. }, _) => Kind::Denied,
        _ => Kind::UpstreamError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Stage;
    use crate::call::outcome::Failure;
    use crate::call::upstream::UpstreamResponse;

    fn performed(status: u16) -> Outcome {
        let r = UpstreamResponse { status, headers: Default::default(), body: Default::default() };
        Outcome::Performed { upstream: Answer::Whole(r), cost_micros: 0 }
    }

    #[test]
    fn trust_grows_only_from_a_2xx_the_sponsor_vouched_for() {
        assert_eq!(trust_event(&performed(200), Some(200), true), Some(TrustEvent::Success));
        assert_eq!(trust_event(&performed(200), Some(200), false), None, "an unvouched host earns nothing");
        assert_eq!(trust_event(&performed(404), Some(404), true), None, "a 404 means nothing");
        let timeout =
            Outcome::Failed { stage: Stage::Upstream, reason: "t".into(), failure: Failure::Timeout };
        assert_eq!(trust_event(&timeout, None, true), None);
        let blocked = Outcome::Denied { stage: Stage::Egress, reason: "hop".into(), extra: json!({}) };
        assert_eq!(trust_event(&blocked, None, true), TrustEvent::for_denial(Stage::Egress));
    }

    #[test]
    fn the_breaker_counts_5xx_and_failures_as_upstream_errors() {
        assert_eq!(breaker_kind(&performed(404), Some(404)), Kind::Ok);
        assert_eq!(breaker_kind(&performed(503), Some(503)), Kind::UpstreamError);
        let unreachable =
            Outcome::Failed { stage: Stage::Upstream, reason: "u".into(), failure: Failure::BadUpstream };
        assert_eq!(breaker_kind(&unreachable, None), Kind::UpstreamError);
        let blocked = Outcome::Denied { stage: Stage::Egress, reason: "hop".into(), extra: json!({}) };
        assert_eq!(breaker_kind(&blocked, None), Kind::Denied);
    }

    #[test]
    fn a_sponsor_vouches_by_secret_connection_or_approval() {
        let agent = crate::proxy::context::testing::agent();
        let plain = crate::proxy::context::testing::request("https://api.example.com/");
        assert!(!vouched(&Call::new(&agent, plain.clone(), "r".into(), None)));
        let with_secret = crate::call::request::ProxyRequest { secret: Some("k".into()), ..plain.clone() };
        assert!(vouched(&Call::new(&agent, with_secret, "r".into(), None)));
        let gateway = crate::call::request::ProxyRequest {
            origin: Origin::Gateway { connection: "c".into() },
            ..plain.clone()
        };
        assert!(vouched(&Call::new(&agent, gateway, "r".into(), None)));
        assert!(vouched(&Call::new(&agent, plain, "r".into(), Some(uuid::Uuid::now_v7()))));
    }
}
