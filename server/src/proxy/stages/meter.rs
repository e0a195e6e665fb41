//! Stage `meter`: whether the call is an LLM call AEGIS must meter, and what it may
//! cost at most ([`crate::metering`]). The sponsor's connections (read by stage
//! `reads`) are matched against the target; a target
//! under a priced one is planned ([`crate::metering::request::plan`]): the model
//! checked against the connection's table, the output capped, the ceiling computed
//! (the budget stage holds it). What cannot be priced is denied here, as stage
//! `policy`, before anything leaves AEGIS. A target under no priced connection
//! passes untouched (under a flat one, that connection's per-call price is its least
//! cost, whichever door the call came through). Tested below and over HTTP in
//! `tests/api/metering.rs`.

use std::ops::ControlFlow::{Break, Continue};

use super::super::context::{Call, Flow, Stop};
use crate::call::Stage;
use crate::metering::{Metered, Route, assess};

pub fn price(call: &mut Call<'_>, routes: &[Route], target: &url::Url) -> Flow<()> {
    match decide(routes, call, target) {
        Ok(()) => Continue(()),
        Err(reason) => Break(Stop::deny(Stage::Policy, reason)),
    }
}

/// The assessment of the connections read, kept on the call.
fn decide(routes: &[Route], call: &mut Call<'_>, target: &url::Url) -> Result<(), String> {
    let assessment = assess(routes, &call.request.method, &call.request.body, target)?;
    if assessment.connection.is_none() {
        return Ok(());
    }
    call.record.note("meter", assessment.note());
    call.request.minimum_cost_micros = call.request.minimum_cost_micros.max(assessment.least_micros);
    if let (Some(connection), Some(limits)) = (&assessment.connection, &assessment.rate_limits) {
        call.connection_limits = Some((connection.clone(), limits.clone()));
    }
    if let (Some(connection), Some(llm)) = (assessment.connection, assessment.llm) {
        call.meter = Some(Metered { connection, llm, reading: None });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use app::model::{Pricing, PricingProvider};

    use super::*;
    use crate::metering::prices::resolve;
    use crate::proxy::context::testing;

    fn routes() -> Vec<Route> {
        let pricing = resolve(Pricing {
            provider: PricingProvider::Openai,
            models: None,
            max_output_tokens: Some(50),
            fallback: None,
        })
        .unwrap();
        vec![
            Route {
                name: "llm".into(),
                base_url: "https://api.openai.com/v1".into(),
                cost_micros: 3,
                pricing: Some(serde_json::to_string(&pricing).unwrap()),
                rate_limits: None,
                mcp: false,
            },
            Route {
                name: "flat".into(),
                base_url: "https://api.example.com".into(),
                cost_micros: 9,
                pricing: None,
                rate_limits: None,
                mcp: false,
            },
        ]
    }

    fn post(url: &str, body: &str) -> crate::call::request::ProxyRequest {
        crate::call::request::ProxyRequest {
            method: http::Method::POST,
            body: bytes::Bytes::copy_from_slice(body.as_bytes()),
            ..testing::request(url)
        }
    }

    #[test]
    fn a_call_under_a_priced_connection_is_metered_whichever_door() {
        let agent = testing::agent();
        let url = "https://api.openai.com/v1/chat/completions";
        let mut call =
            Call::new(&agent, post(url, r#"{"model":"gpt-4o-mini","messages":[]}"#), "r".into(), None);
        decide(&routes(), &mut call, &url::Url::parse(url).unwrap()).unwrap();
        let metered = call.meter.as_ref().expect("metered");
        assert_eq!((metered.connection.as_str(), metered.llm.max_tokens), ("llm", 50));
        assert!(call.estimate() >= metered.llm.ceiling_micros && metered.llm.ceiling_micros > 0);
        assert_eq!(call.request.minimum_cost_micros, 3, "the connection's per-call price is the least");
    }

    #[test]
    fn unpriceable_calls_are_refused_and_others_pass_flat() {
        let agent = testing::agent();
        let url = "https://api.openai.com/v1/chat/completions";
        let mut call = Call::new(&agent, post(url, r#"{"model":"gpt-nope"}"#), "r".into(), None);
        let e = decide(&routes(), &mut call, &url::Url::parse(url).unwrap()).unwrap_err();
        assert!(e.contains("not allowed"), "{e}");
        let flat = "https://api.example.com/x";
        let mut call = Call::new(&agent, post(flat, "{}"), "r".into(), None);
        decide(&routes(), &mut call, &url::Url::parse(flat).unwrap()).unwrap();
        assert!(call.meter.is_none());
        assert_eq!(call.estimate(), 9, "a flat connection's price holds through execute too");
        let elsewhere = "https://elsewhere.example/v1/chat/completions";
        let mut call = Call::new(&agent, post(elsewhere, "{}"), "r".into(), None);
        decide(&routes(), &mut call, &url::Url::parse(elsewhere).unwrap()).unwrap();
        assert_eq!((call.meter.is_none(), call.estimate()), (true, 0));
    }
}
