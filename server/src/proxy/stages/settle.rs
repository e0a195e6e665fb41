//! Stage `settle`: after the upstream, the hold is settled at the cost (or released
//! when nothing was performed) in one transaction with the `proxy.outcome` audit
//! record; then trust, the breaker's windows and the events feed learn how the call
//! went. Tested over HTTP in `tests/api/budget.rs`, `trust.rs`, `breaker.rs` and
//! `events.rs`; what counts for trust and the breaker is tested below.

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::super::Pipeline;
use super::super::breaker::windows::{Kind, Observation};
use super::super::context::Call;
use super::{adjust_trust, denied_event, upstream};
use crate::call::outcome::{Answer, Outcome, ProxyResult};
use crate::call::request::Origin;
use crate::call::upstream::UpstreamError;
use crate::digest::canonical_json;
use crate::metering::bill::bill;
use crate::metering::{Bill, Metered, Reading};
use crate::trust::{self, TrustEvent};

pub async fn settle(p: &Pipeline, call: &mut Call<'_>, answer: Result<Answer, UpstreamError>) -> ProxyResult {
    let status = answer.as_ref().ok().map(Answer::status);
    let reading = call.meter.as_mut().and_then(|m| m.reading.take());
    let streaming = matches!(answer, Ok(Answer::Streaming(_)));
    let failed_after_answer = reading.is_some() && answer.is_err();
    let outcome = upstream::outcome_of(answer, call.estimate());
    let (stage, decision) = match &outcome {
        Outcome::Denied { stage, .. } => (Some(*stage), "deny"),
        Outcome::Failed { stage, .. } => (Some(*stage), "error"),
        _ => (None, "allow"),
    };
    // What the call is charged: an unmetered call its estimate; a metered one by
    // its usage once the answer has ended (a stream: later, on its own task).
    let performed = match &outcome {
        Outcome::Performed { cost_micros, .. } => Some(*cost_micros),
        _ => None,
    };
    let charge = match (performed, reading) {
        (Some(_), Some(reading)) if streaming => Charge::Later(reading),
        (Some(_), Some(reading)) => Charge::Metered(metered(call, status, reading.await)),
        // The upstream answered, then broke off before the answer was whole: it may
        // have generated; charged at the ceiling.
        (_, Some(_)) if failed_after_answer => Charge::Metered(metered(
            call,
            Some(200),
            Ok(Reading { cut: Some("the answer broke off before it was read".into()), ..Default::default() }),
        )),
        (estimate, _) => Charge::Flat(estimate),
    };
    let mut detail = json!({"reasons": call.reasons, "stages": call.record.stages, "label": call.request.label,
                            "policy": call.policy_verdict});
    if let Some(mcp) = call.request.mcp() {
        // What the tool answered, by hash and size: never the result itself.
        let mut m = mcp.audit_detail();
        if let Outcome::Performed { upstream: Answer::Whole(r), .. } = &outcome {
            m["result_sha256"] = json!(crate::digest::sha256_hex(&r.body));
            m["result_bytes"] = json!(r.body.len());
        }
        detail["mcp"] = m;
    }
    let mut entry = call.entry("proxy.outcome", stage, decision, Value::Null);
    entry.status = status.map(i32::from);
    entry.duration_us = call.record.elapsed_micros();
    let mut outcome = outcome;
    let (charged, appended) = match charge {
        Charge::Later(reading) => {
            let ceiling = call.estimate();
            let rate = call.rate.take();
            let later = Later {
                request_id: call.request_id.clone(),
                agent_id: call.agent.agent.id,
                status,
                least: call.least_cost(),
                rate,
                detail,
                entry,
            };
            let meter = call.meter.take().expect("a reading comes from a metered call");
            let pipeline = p.clone();
            drop(p.in_flight.spawn(async move { later.settle(&pipeline, meter, reading).await }));
            (Some(ceiling), None)
        }
        Charge::Metered((bill, metering)) => {
            if let Some(m) = &call.meter {
                count(p, m, &bill);
            }
            correct_tokens(p, &call.request_id, call.rate.as_ref(), &bill).await;
            detail["metering"] = metering;
            entry.cost_micros = bill.micros;
            if let Outcome::Performed { cost_micros, .. } = &mut outcome {
                *cost_micros = bill.micros;
            }
            entry.detail = Some(canonical_json(&detail));
            let appended =
                commit_outcome(p, &call.request_id, call.agent.agent.id, Some(bill.micros), entry).await;
            (Some(bill.micros), Some(appended))
        }
        Charge::Flat(charge) => {
            if charge.is_none() {
                // Not performed: the rate windows get their units back.
                super::rate::give_back(p, call).await;
            }
            entry.detail = Some(canonical_json(&detail));
            entry.cost_micros = charge.unwrap_or(0);
            (charge, Some(commit_outcome(p, &call.request_id, call.agent.agent.id, charge, entry).await))
        }
    };
    adjust_trust(p, call, trust_event(&outcome, status, vouched(call))).await;
    let performed_host = matches!(outcome, Outcome::Performed { .. }).then(|| call.host.clone()).flatten();
    let observation = Observation {
        request_id: call.request_id.clone(),
        kind: breaker_kind(&outcome, status),
        spend_micros: charged.unwrap_or(0),
        host: performed_host,
    };
    p.breaker.observe(&call.agent.agent, observation, call.admission).await;
    if let (Some(Ok(a)), Outcome::Denied { stage, reason, .. }) = (&appended, &outcome) {
        p.events.publish(denied_event(call, *stage, reason, a.seq));
    }
    let audit_seq = match appended {
        Some(Ok(appended)) => Some(appended.seq),
        Some(Err(e)) => {
            // The call happened and its intent is on record; report it, flag the gap.
            tracing::error!(request = %call.request_id, error = %e.message, "outcome could not be audited");
            None
        }
        // Settled when the stream ends; its record is written then.
        None => None,
    };
    let reasons = std::mem::take(&mut call.reasons);
    ProxyResult { request_id: call.request_id.clone(), audit_seq, reasons, outcome }
}

/// How a call is charged.
enum Charge {
    /// Unmetered: its estimate when performed, else nothing (the hold released).
    Flat(Option<i64>),
    /// Metered, and its answer has ended: the bill and the audit record's `metering`.
    Metered((Bill, Value)),
    /// A metered stream still passing to the agent: charged when it ends.
    Later(oneshot::Receiver<Reading>),
}

/// `/metrics`: the settled call's tokens and cost.
fn count(p: &Pipeline, m: &Metered, bill: &Bill) {
    let u = bill.usage.unwrap_or_default();
    let tokens = [
        ("input", u.input),
        ("cached_input", u.cached_input),
        ("cache_write", u.cache_write),
        ("output", u.output),
    ];
    p.metrics.metered(&m.connection, &m.llm.priced.entry, tokens, bill.source.as_str(), bill.micros);
}

/// A metered call's tokens-per-minute takes become the tokens the provider
/// reported (they stay at the bound when usage could not be read).
async fn correct_tokens(
    p: &Pipeline,
    request_id: &str,
    rate: Option<&crate::rate_limits::Ticket>,
    bill: &Bill,
) {
    let (Some(ticket), Some(u)) = (rate, bill.usage) else { return };
    let tokens = u.input + u.cached_input + u.cache_write + u.output;
    for key in &ticket.token_keys {
        p.rates.adjust(request_id, key, tokens).await;
    }
}

/// A metered call's bill, from what its answer said.
fn metered(
    call: &Call<'_>,
    status: Option<u16>,
    reading: Result<Reading, oneshot::error::RecvError>,
) -> (Bill, Value) {
    let m = call.meter.as_ref().expect("metered calls have a meter");
    bill_of(m, status, reading, call.least_cost())
}

fn bill_of(
    m: &Metered,
    status: Option<u16>,
    reading: Result<Reading, oneshot::error::RecvError>,
    least: i64,
) -> (Bill, Value) {
    let reading = reading
        .unwrap_or_else(|_| Reading { cut: Some("the answer was never read".into()), ..Default::default() });
    let bill = bill(status.unwrap_or(200), &reading, &m.llm.priced.price, m.llm.ceiling_micros, least);
    let detail = bill.detail(&m.llm, &m.connection);
    (bill, detail)
}

/// Settles and records the outcome; on failure still settles alone.
async fn commit_outcome(
    p: &Pipeline,
    request_id: &str,
    agent_id: uuid::Uuid,
    charge: Option<i64>,
    entry: crate::audit::AuditEntry,
) -> Result<crate::audit::Appended, app::error::AppError> {
    match p.commit.outcome(agent_id, request_id, charge, entry).await {
        Ok(done) => {
            if done.resolved
                && let Some(charged) = charge
            {
                p.metrics.settled(charged);
            }
            Ok(done.appended)
        }
        Err(e) => {
            settle_alone(p, request_id, charge).await;
            Err(e)
        }
    }
}

/// A metered stream's settlement, made when the stream has ended (or broke off, or
/// the agent went away), on a task the shutdown waits for.
struct Later {
    request_id: String,
    agent_id: uuid::Uuid,
    status: Option<u16>,
    /// What the agent declared, at least the connection's per-call price.
    least: i64,
    /// The rate windows the call took from.
    rate: Option<crate::rate_limits::Ticket>,
    detail: Value,
    entry: crate::audit::AuditEntry,
}

impl Later {
    async fn settle(mut self, p: &Pipeline, meter: Metered, reading: oneshot::Receiver<Reading>) {
        let (bill, metering) = bill_of(&meter, self.status, reading.await, self.least);
        count(p, &meter, &bill);
        correct_tokens(p, &self.request_id, self.rate.as_ref(), &bill).await;
        self.detail["metering"] = metering;
        self.entry.detail = Some(canonical_json(&self.detail));
        self.entry.cost_micros = bill.micros;
        let recorded =
            commit_outcome(p, &self.request_id, self.agent_id, Some(bill.micros), self.entry).await;
        if let Err(e) = recorded {
            tracing::error!(request = %self.request_id, error = %e.message, "outcome could not be audited");
        }
    }
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
