//! Stage `upstream`: the call itself (`proxy/upstream.rs`: pinned addresses,
//! timeouts, size cap, redirects judged hop by hop). The answer is scrubbed of the
//! injected secret as it arrives; gateway answers stream through, execute answers
//! are read whole. A metered call forwards the body metering planned (its output
//! cap, the stream's usage option) and its answer passes through the usage tap
//! ([`crate::metering::tap`]) after the scrubber. Tested over HTTP in
//! `tests/api/proxy.rs`, `exfiltration.rs` (redirects, scrubbed encodings) and
//! `metering.rs`. An MCP server that speaks only the session revision is called in a
//! session of the call's own (`proxy/upstream_mcp.rs`; tested in `tests/api/mcp.rs`).

use serde_json::json;

use super::super::Pipeline;
use super::super::context::Call;
use super::super::secret::{self, Scrubber};
use super::super::upstream_mcp;
use super::secret::Prepared;
use crate::call::Stage;
use crate::call::mcp::Revision;
use crate::call::outcome::{Answer, Failure, Outcome};
use crate::call::request::Origin;
use crate::call::upstream::UpstreamError;
use crate::metering::tap::{TapSpec, tap};

pub async fn perform(p: &Pipeline, call: &mut Call<'_>, prepared: Prepared) -> Result<Answer, UpstreamError> {
    let Prepared { url, headers, secret } = prepared;
    let request = &call.request;
    let body = match call.meter.as_ref().and_then(|m| m.llm.forward_body.clone()) {
        Some(planned) => planned,
        None => request.body.clone(),
    };
    // The strategy: one exchange, or (an MCP server of the session revision) a
    // session of the call's own (`proxy/upstream_mcp.rs`).
    let called = match &request.origin {
        Origin::Mcp(mcp) if mcp.revision == Revision::Sessions => {
            upstream_mcp::session_exchange(&p.upstream, url, headers, mcp, secret.as_ref()).await
        }
        _ => {
            p.upstream
                .call_streaming(
                    request.method.clone(),
                    url,
                    headers,
                    body,
                    request.follow_redirects,
                    secret.as_ref(),
                )
                .await
        }
    };
    let answer = match called {
        Ok(mut r) => {
            if let Some(s) = &secret {
                secret::scrub_headers(s, &mut r.headers);
                r.body = secret::scrub_stream(r.body, Scrubber::new(s));
            }
            if let Some(m) = call.meter.as_mut() {
                let spec = TapSpec {
                    provider: m.llm.provider,
                    sse: TapSpec::is_sse(&r.headers),
                    hide_usage_chunk: m.llm.hide_usage_chunk,
                };
                let (body, reading) =
                    tap(std::mem::replace(&mut r.body, Box::pin(futures::stream::empty())), spec);
                r.body = body;
                m.reading = Some(reading);
            }
            if call.request.stream_response {
                Ok(Answer::Streaming(r))
            } else {
                r.read_whole().await.map(Answer::Whole)
            }
        }
        Err(e) => Err(e),
    };
    drop(secret);
    match &answer {
        Ok(a) => call.record.note("upstream", format!("status {}", a.status())),
        Err(e) => call.record.note("upstream", e.reason()),
    }
    answer
}

/// What a call that reached the upstream came to: performed at `estimate`, or not
/// performed (a blocked redirect hop is an egress denial; a timeout or failure is
/// an error), nothing charged.
pub fn outcome_of(answer: Result<Answer, UpstreamError>, estimate: i64) -> Outcome {
    match answer {
        Ok(upstream) => Outcome::Performed { upstream, cost_micros: estimate },
        Err(UpstreamError::Egress(reason)) => {
            Outcome::Denied { stage: Stage::Egress, reason, extra: json!({}) }
        }
        Err(e) => {
            let failure = if e == UpstreamError::Timeout { Failure::Timeout } else { Failure::BadUpstream };
            Outcome::Failed { stage: Stage::Upstream, reason: e.reason(), failure }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::upstream::UpstreamResponse;

    #[test]
    fn only_an_answer_is_performed_and_a_refused_hop_is_an_egress_denial() {
        let whole = UpstreamResponse { status: 404, headers: Default::default(), body: Default::default() };
        match outcome_of(Ok(Answer::Whole(whole)), 7) {
            Outcome::Performed { upstream, cost_micros } => {
                assert_eq!(
                    (upstream.status(), cost_micros),
                    (404, 7),
                    "any answer is performed, at the estimate"
                )
            }
            other => panic!("{other:?}"),
        }
        match outcome_of(Err(UpstreamError::Egress("redirect refused: private".into())), 7) {
            Outcome::Denied { stage: Stage::Egress, reason, .. } => {
                assert!(reason.contains("redirect refused"))
            }
            other => panic!("{other:?}"),
        }
        let failed = |e| match outcome_of(Err(e), 7) {
            Outcome::Failed { stage: Stage::Upstream, failure, .. } => failure,
            other => panic!("{other:?}"),
        };
        assert_eq!(failed(UpstreamError::Timeout), Failure::Timeout);
        assert_eq!(failed(UpstreamError::Unreachable("refused".into())), Failure::BadUpstream);
        assert_eq!(failed(UpstreamError::TooLarge(10)), Failure::BadUpstream);
        assert_eq!(failed(UpstreamError::Encoded("gzip".into())), Failure::BadUpstream);
    }
}
