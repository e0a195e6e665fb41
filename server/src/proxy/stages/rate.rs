//! Stage `rate` (answers as stage `budget`): the agent's and the connection's
//! tokens-per-minute and requests-per-minute windows ([`crate::rate_limits`]). Every
//! window that applies is taken from at once — one request, and a metered call's
//! token bound — or the call is denied with `retry_after_secs`, before anything is
//! held or sent. What the call took is kept on it: settle corrects the tokens to
//! the provider's usage, and a call that is not performed gives everything back.
//! Tested below and over HTTP in `tests/api/metering.rs`.

use std::ops::ControlFlow::{Break, Continue};

use serde_json::json;

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use crate::call::Stage;
use crate::rate_limits::{self, Admit, Take, Ticket};

pub async fn take(p: &Pipeline, call: &mut Call<'_>) -> Flow<()> {
    let takes = match takes_of(call) {
        Ok(takes) => takes,
        Err(reason) => return Break(Stop::deny(Stage::Budget, reason)),
    };
    if takes.is_empty() {
        return Continue(());
    }
    match p.rates.admit(&call.request_id, &takes).await {
        Admit::Admitted => {
            call.record.note("rate", format!("{} window(s) taken", takes.len()));
            call.rate = Some(Ticket::of(&takes));
            Continue(())
        }
        Admit::Refused { key, limit, retry_after } => {
            let what = if key.ends_with(":tpm") { "tokens" } else { "requests" };
            let whose = if key.starts_with("agent:") { "the agent's" } else { "the connection's" };
            let reason = match retry_after {
                Some(_) => format!("rate limit: {whose} {limit} {what} per minute"),
                None => {
                    format!("rate limit: the call alone needs more than {whose} {limit} {what} per minute")
                }
            };
            let retry = retry_after.map(|d| d.as_millis().div_ceil(1000).max(1) as u64);
            let extra = json!({"retry_after_secs": retry, "limit": limit, "limit_kind": format!("{what}_per_minute")});
            Break(Stop::Deny { stage: Stage::Budget, reason, extra })
        }
    }
}

/// The windows this call takes from: the agent's, then its connection's.
fn takes_of(call: &Call<'_>) -> Result<Vec<Take>, String> {
    let tokens =
        call.meter.as_ref().map_or(0, |m| m.llm.input_bound + m.llm.max_tokens.saturating_mul(m.llm.choices));
    let mut takes = Vec::new();
    let agent = &call.agent.agent;
    let limits = rate_limits::parse(agent.rate_limits.as_deref())?;
    rate_limits::takes(&format!("agent:{}", agent.id), &limits, tokens, &mut takes);
    if let Some((connection, saved)) = &call.connection_limits {
        let limits = rate_limits::parse(Some(saved))?;
        rate_limits::takes(&format!("conn:{}:{connection}", agent.sponsor_id), &limits, tokens, &mut takes);
    }
    Ok(takes)
}

/// Gives back what a call that was not performed took.
pub async fn give_back(p: &Pipeline, call: &mut Call<'_>) {
    if let Some(ticket) = call.rate.take() {
        p.rates.release(&call.request_id, &ticket.keys).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::context::testing;

    #[test]
    fn the_agent_and_the_connection_windows_apply_and_unreadable_limits_fail_closed() {
        let mut agent = testing::agent();
        agent.agent.rate_limits = Some(r#"{"requests_per_minute":5}"#.into());
        let mut call = Call::new(&agent, testing::request("https://a.example/"), "r".into(), None);
        call.connection_limits =
            Some(("llm".into(), r#"{"requests_per_minute":9,"tokens_per_minute":100}"#.into()));
        let takes = takes_of(&call).unwrap();
        let keys: Vec<&str> = takes.iter().map(|t| t.key.as_str()).collect();
        let conn = format!("conn:{}:llm:rpm", agent.agent.sponsor_id);
        assert_eq!(
            keys,
            vec![format!("agent:{}:rpm", agent.agent.id).as_str(), conn.as_str()],
            "no tokens unmetered"
        );
        call.connection_limits = Some(("llm".into(), "garbage".into()));
        assert!(takes_of(&call).is_err());
    }
}
