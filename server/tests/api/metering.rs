//! Metered cost (issue #19): LLM calls under a priced connection are held at a
//! ceiling and settled from the provider's `usage` — whole and streamed, through
//! gateway mode and `POST /api/proxy/execute` — against the mock providers of
//! `mock_llm.rs` on loopback.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock_llm::{self, MockLlm};
use crate::support::{Sponsor, TestServer};

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");
/// The spend-velocity breaker is not under test here.
const NO_SPEND_BREAKER: (&str, &str) = ("AEGIS_BREAKER_SPEND_MICROS", "0");

/// Prices chosen so costs are easy to compute: a micro-unit a token in, two out,
/// half a micro-unit a cached token, three a cache-write token.
fn price() -> Value {
    json!({"input_per_mtok_micros": 1_000_000, "output_per_mtok_micros": 2_000_000,
           "cached_input_per_mtok_micros": 500_000, "cache_write_per_mtok_micros": 3_000_000})
}

struct Llm {
    s: TestServer,
    mock: MockLlm,
    sponsor: Sponsor,
    agent_id: String,
    key: String,
}

/// A server, the mock provider, a sponsor with an `openai` connection (under
/// `/v1`, model `gpt-test` only, output capped at 100) and a `claude` one, and a
/// permissive agent with the secret both inject.
async fn setup(policy: &str) -> Llm {
    let mock = MockLlm::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, NO_SPEND_BREAKER]).await;
    let sponsor = s.sponsor("meter").await;
    let policy_name = if policy == "permissive" {
        "permissive".to_owned()
    } else {
        let r = s
            .post("/api/policies", Some(&sponsor.access), json!({"name": "llm-rules", "source": policy}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        "llm-rules".to_owned()
    };
    let r =
        s.post("/api/agents", Some(&sponsor.access), json!({"name": "llm-bot", "policy": policy_name})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let agent_id = r.body["agent"]["id"].as_str().unwrap().to_owned();
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "provider-key", "value": "sk-real-provider-key", "allowed_hosts": ["http://127.0.0.1:*"],
                   "inject": {"header": "authorization", "format": "Bearer {secret}"}, "agents": [agent_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "openai", "base_url": mock.url("/v1"), "secret": "provider-key",
                   "pricing": {"provider": "openai", "models": {"gpt-test": price()}, "max_output_tokens": 100}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "claude", "base_url": mock.url("/anthropic"),
                   "pricing": {"provider": "anthropic", "models": {"claude-test": price()}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    Llm { s, mock, sponsor, agent_id, key }
}

impl Llm {
    async fn wallet(&self) -> Value {
        let r = self.s.get(&format!("/api/agents/{}/wallet", self.agent_id), &self.sponsor.access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body
    }

    /// The wallet once nothing is held any more (streams settle when they end).
    async fn settled_wallet(&self) -> Value {
        for _ in 0..200 {
            let w = self.wallet().await;
            if w["reserved_micros"] == 0 {
                return w;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("holds never settled: {}", self.wallet().await);
    }

    async fn set_daily_limit(&self, micros: i64) {
        let r = self
            .s
            .send(
                reqwest::Method::PUT,
                &format!("/api/agents/{}/wallet", self.agent_id),
                Some(&self.sponsor.access),
                Some(json!({"daily_limit_micros": micros, "monthly_limit_micros": micros})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }

    fn gw(&self, path: &str) -> reqwest::RequestBuilder {
        self.s.http.post(self.s.url(path)).bearer_auth(&self.key).header("content-type", "application/json")
    }

    /// The `metering` object of the call's outcome record.
    async fn metering(&self, request_id: &str) -> Value {
        for _ in 0..200 {
            let r = self
                .s
                .get(&format!("/api/audit?request_id={request_id}&kind=proxy.outcome"), &self.sponsor.access)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            if let Some(item) = r.body["items"].as_array().and_then(|i| i.first()) {
                let detail: Value = serde_json::from_str(item["detail"].as_str().unwrap()).unwrap();
                assert_eq!(item["cost_micros"], detail["metering"]["charged_micros"], "{item}");
                return detail["metering"].clone();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no outcome record for {request_id}");
    }
}

/// What the mock bills for a chat/messages body: its prompt tokens at 1, its reply at 2.
fn usage_cost(body: &Value) -> i64 {
    mock_llm::prompt_tokens(body) as i64 + 2 * mock_llm::reply_tokens(body) as i64
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-aegis-request-id"].to_str().unwrap().to_owned()
}

/// Reads an SSE answer to its end; the data payloads that parse as JSON.
async fn events(r: reqwest::Response) -> Vec<Value> {
    let text = r.text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test]
async fn pricing_is_checked_completed_from_the_default_table_and_editable() {
    let mock = MockLlm::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("prices").await;
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "oa", "base_url": mock.url("/v1"),
                   "pricing": {"provider": "openai", "models": {"gpt-4o-mini": {}}}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let model = &r.body["pricing"]["models"]["gpt-4o-mini"];
    assert_eq!(model["input_per_mtok_micros"], 150_000, "from server/prices/default.json: {}", r.text);
    assert_eq!(model["cached_input_per_mtok_micros"], 75_000);
    let id = r.body["id"].as_str().unwrap().to_owned();

    let bad = [
        (json!({"provider": "openai", "models": {"my-model": {}}}), "my-model"),
        (
            json!({"provider": "openai", "models": {"m": {"input_per_mtok_micros": -1, "output_per_mtok_micros": 1}}}),
            "input_per_mtok_micros",
        ),
        (json!({"provider": "anthropic", "models": {}}), "deny every call"),
        (json!({"provider": "flat", "max_output_tokens": 5}), "flat"),
    ];
    for (pricing, names) in bad {
        let r = s
            .post(
                "/api/connections",
                Some(&sponsor.access),
                json!({"name": "x", "base_url": mock.url(""), "pricing": pricing}),
            )
            .await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_pricing"), "{}", r.text);
        assert!(r.body["error"]["message"].as_str().unwrap().contains(names), "{}", r.text);
    }
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "x", "base_url": mock.url(""), "pricing": {"provider": "gemini"}}),
        )
        .await;
    assert!(r.status.is_client_error() && r.status != StatusCode::NOT_FOUND, "{}", r.text);

    // PATCH changes only what it names; null makes the connection flat again.
    let path = format!("/api/connections/{id}");
    let patch = |body: Value| s.send(reqwest::Method::PATCH, &path, Some(&sponsor.access), Some(body));
    let r = patch(json!({"cost_micros": 7})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["cost_micros"].clone(), r.body["pricing"]["provider"].clone()),
        (json!(7), json!("openai"))
    );
    let r = patch(json!({"pricing": null})).await;
    assert_eq!((r.status, r.body["pricing"].clone()), (StatusCode::OK, Value::Null), "{}", r.text);
    let r = patch(json!({"pricing": {"provider": "anthropic"}})).await;
    assert!(
        r.body["pricing"]["models"]["claude-sonnet-4-5"].is_object(),
        "omitted models: the whole default table: {}",
        r.text
    );
    // PUT replaces it whole.
    let r = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/connections/{id}"),
            Some(&sponsor.access),
            Some(json!({"name": "renamed", "base_url": mock.url("/v2")})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["name"].clone(), r.body["pricing"].clone(), r.body["cost_micros"].clone()),
        (json!("renamed"), Value::Null, json!(0))
    );
    // Another sponsor's connection is not found.
    let other = s.sponsor("prices-other").await;
    let r = s
        .send(
            reqwest::Method::PATCH,
            &format!("/api/connections/{id}"),
            Some(&other.access),
            Some(json!({"cost_micros": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = patch(json!({"surprise": 1})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
}

#[tokio::test]
async fn a_call_declaring_nothing_is_charged_its_usage_whole_and_streamed() {
    let t = setup("permissive").await;
    let messages = json!([{"role": "user", "content": "how much does this cost?"}]);
    let mut expected = 0i64;

    // Whole, gateway: no declared cost at all.
    let body = json!({"model": "gpt-test", "messages": messages, "max_tokens": 5});
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = request_id(&r);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    expected += usage_cost(&body);
    let m = t.metering(&id).await;
    assert_eq!(
        (m["source"].clone(), m["tokens_out"].clone(), m["model"].clone()),
        (json!("usage"), json!(5), json!("gpt-test")),
        "{m}"
    );
    assert_eq!(m["charged_micros"], usage_cost(&body));
    assert!(m["ceiling_micros"].as_i64().unwrap() > usage_cost(&body), "{m}");
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // Streamed, without asking for usage: AEGIS asks, reads it, and hides it.
    let body = json!({"model": "gpt-test", "messages": messages, "max_tokens": 8, "stream": true});
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = request_id(&r);
    let chunks = events(r).await;
    assert_eq!(chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].is_string()).count(), 8);
    assert!(
        chunks.iter().all(|c| c["usage"].is_null()),
        "no usage chunk the agent did not ask for: {chunks:?}"
    );
    let forwarded = t.mock.requests().last().unwrap().body.clone();
    assert_eq!(forwarded["stream_options"], json!({"include_usage": true}), "AEGIS asked for it");
    expected += usage_cost(&body);
    assert_eq!(t.metering(&id).await["source"], "usage");
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // Streamed, asking for usage: the agent sees the chunk.
    let body = json!({"model": "gpt-test", "messages": messages, "max_tokens": 3, "stream": true,
                      "stream_options": {"include_usage": true}});
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    let chunks = events(r).await;
    assert_eq!(chunks.iter().filter(|c| c["usage"].is_object()).count(), 1, "{chunks:?}");
    expected += usage_cost(&body);
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // Anthropic, streamed, with cache reads and writes: message_start + message_delta.
    let body = json!({"model": "claude-test", "messages": messages, "max_tokens": 6, "stream": true});
    let r = t
        .gw("/api/gw/claude/v1/messages")
        .header("x-mock-cached", "2")
        .header("x-mock-cache-write", "1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let id = request_id(&r);
    let got = events(r).await;
    assert!(got.iter().any(|e| e["type"] == "message_stop"), "the whole stream passed");
    let prompt = mock_llm::prompt_tokens(&body) as i64;
    // Uncached input at 1, 2 cached at 0.5, 1 written at 3, 6 out at 2.
    let cost = (prompt - 3) + 1 + 3 + 12;
    let m = t.metering(&id).await;
    assert_eq!(
        (
            m["tokens_in"].clone(),
            m["tokens_cached"].clone(),
            m["tokens_cache_write"].clone(),
            m["tokens_out"].clone()
        ),
        (json!(prompt - 3), json!(2), json!(1), json!(6)),
        "{m}"
    );
    assert_eq!(m["charged_micros"], cost);
    expected += cost;
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // A declared cost raises the charge, never lowers it.
    let body = json!({"model": "claude-test", "messages": messages, "max_tokens": 6});
    let r = t
        .gw("/api/gw/claude/v1/messages")
        .header("x-aegis-cost-micros", "100000")
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = request_id(&r);
    assert_eq!(r.status(), StatusCode::OK);
    let m = t.metering(&id).await;
    assert_eq!(
        (m["source"].clone(), m["charged_micros"].clone()),
        (json!("declared"), json!(100_000)),
        "{m}"
    );
    expected += 100_000;
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // The provider got the sponsor's key, never the agent's.
    for got in t.mock.requests() {
        assert!(!format!("{:?}", got.headers).contains(&t.key), "the AEGIS key never leaves");
    }
    assert_eq!(t.mock.requests()[0].header("authorization"), Some("Bearer sk-real-provider-key"));

    // /metrics counts tokens and cost by connection and price-table model.
    let metrics = crate::observability::scrape(&t.s).await;
    assert!(
        metrics
            .contains("aegis_llm_tokens_total{connection=\"openai\",model=\"gpt-test\",kind=\"output\"} 16"),
        "{metrics}"
    );
    assert!(metrics.contains("aegis_llm_cost_micros_total{connection=\"claude\",model=\"claude-test\",source=\"declared\"} 100000"), "{metrics}");
}

#[tokio::test]
async fn execute_mode_calls_under_a_priced_base_url_are_metered_too() {
    let t = setup("permissive").await;
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let r = t
        .s
        .execute(&t.key, json!({"method": "POST", "url": t.mock.url("/v1/chat/completions"), "secret": "provider-key",
                                "headers": {"content-type": "application/json"}, "body": body.to_string(), "cost_micros": 0}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["cost_micros"], usage_cost(&body), "{}", r.text);
    let m = t.metering(r.body["request_id"].as_str().unwrap()).await;
    assert_eq!((m["connection"].clone(), m["source"].clone()), (json!("openai"), json!("usage")));
    // An encoded path is the same path: still metered, still allow-listed.
    let r =
        t.s.execute(
            &t.key,
            json!({"method": "POST", "url": t.mock.url("/%76%31/chat/completions"),
                                "body": json!({"model": "gpt-4o", "max_tokens": 1}).to_string()}),
        )
        .await;
    assert_eq!((r.status, r.body["stage"].clone()), (StatusCode::FORBIDDEN, json!("policy")), "{}", r.text);
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], usage_cost(&body));
}

#[tokio::test]
async fn what_cannot_be_priced_is_denied_before_anything_leaves_and_the_cap_is_written() {
    let t = setup("permissive").await;
    let cases =
        [(json!({"model": "gpt-4o", "max_tokens": 1}), "not allowed"), (json!({"messages": []}), "no model")];
    for (body, says) in cases {
        let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            (answer["decision"].clone(), answer["stage"].clone()),
            (json!("deny"), json!("policy")),
            "{answer}"
        );
        assert!(answer["reason"].as_str().unwrap().contains(says), "{answer}");
    }
    let r =
        t.gw("/api/gw/openai/images/generations").json(&json!({"model": "gpt-test"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "an endpoint AEGIS cannot meter");
    assert!(t.mock.requests().is_empty(), "nothing was sent upstream");
    // Reads are not generations: they pass at the connection's flat price (0).
    let r = t.s.http.get(t.s.url("/api/gw/openai/models")).bearer_auth(&t.key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // max_tokens above the connection's cap is capped in the forwarded request,
    // and a request without one gets the cap written in.
    let r = t
        .gw("/api/gw/openai/chat/completions")
        .json(&json!({"model": "gpt-test", "messages": [], "max_tokens": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r2 = t
        .gw("/api/gw/openai/chat/completions")
        .json(&json!({"model": "gpt-test", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r2.status(), StatusCode::OK);
    let sent: Vec<Value> = t
        .mock
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body)
        .collect();
    assert_eq!(sent[0]["max_tokens"], 100);
    assert_eq!(sent[1]["max_completion_tokens"], 100);
    assert_eq!(t.settled_wallet().await["reserved_micros"], 0);
}

#[tokio::test]
async fn unreadable_or_unfinished_answers_settle_at_the_ceiling_and_errors_cost_nothing() {
    let t = setup("permissive").await;
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10,
                      "stream": true, "stream_options": {"include_usage": true}});
    let mut expected = 0;
    for behaviour in ["no-usage", "malformed-usage"] {
        for stream in [true, false] {
            let mut b = body.clone();
            b["stream"] = json!(stream);
            let r = t
                .gw("/api/gw/openai/chat/completions")
                .header("x-mock-behaviour", behaviour)
                .json(&b)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let id = request_id(&r);
            let _ = r.bytes().await.unwrap();
            let m = t.metering(&id).await;
            assert_eq!(m["source"], "ceiling", "{behaviour} stream={stream}: {m}");
            assert_eq!(m["charged_micros"], m["ceiling_micros"]);
            assert!(m["note"].as_str().is_some(), "{m}");
            expected += m["ceiling_micros"].as_i64().unwrap();
        }
    }
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);

    // The agent goes away mid-stream: the ceiling, and the record says why.
    let r = t
        .gw("/api/gw/openai/chat/completions")
        .header("x-mock-behaviour", "slow")
        .json(&body)
        .send()
        .await
        .unwrap();
    let id = request_id(&r);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(stream);
    let m = t.metering(&id).await;
    assert_eq!(m["source"], "ceiling", "{m}");
    assert!(m["note"].as_str().unwrap().contains("went away"), "{m}");
    expected += m["ceiling_micros"].as_i64().unwrap();

    // Errors before generation cost nothing.
    for status in ["status-429", "status-500"] {
        let r = t
            .gw("/api/gw/claude/v1/messages")
            .header("x-mock-behaviour", status)
            .json(&json!({"model": "claude-test", "messages": [], "max_tokens": 5}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error() || r.status().is_server_error());
        let m = t.metering(&request_id(&r)).await;
        assert_eq!(m["charged_micros"], 0, "{m}");
    }
    assert_eq!(t.settled_wallet().await["daily_spent_micros"], expected);
}

/// Every stream is slow (3.6 s), so all 200 are admitted or refused while the
/// admitted ones still hold their ceilings: exactly the 50 that fit go through.
#[tokio::test]
async fn concurrent_streams_admit_exactly_the_ceilings_that_fit_and_settle_their_usage() {
    let t = setup("permissive").await;
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "count"}], "max_tokens": 12,
                      "stream": true, "stream_options": {"include_usage": true}});
    // Nothing rewritten: the ceiling is the body's bytes at 1 plus 12 at 2.
    let ceiling = body.to_string().len() as i64 + 24;
    t.set_daily_limit(50 * ceiling).await;
    let calls = (0..200).map(|_| {
        let req = t.gw("/api/gw/openai/chat/completions").header("x-mock-behaviour", "slow").json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status();
            let chunks = if status == StatusCode::OK { events(r).await.len() } else { 0 };
            (status, chunks)
        }
    });
    let results = futures::future::join_all(calls).await;
    let admitted = results.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let refused = results.iter().filter(|(s, _)| *s == StatusCode::FORBIDDEN).count();
    assert_eq!((admitted, refused), (50, 150), "exactly the ceilings that fit");
    assert!(
        results.iter().filter(|(s, _)| *s == StatusCode::OK).all(|(_, n)| *n >= 12),
        "every admitted stream finished"
    );
    let w = t.settled_wallet().await;
    assert_eq!(w["daily_spent_micros"], 50 * usage_cost(&body), "the sum of their real usage: {w}");
}

#[tokio::test]
async fn policies_see_input_llm() {
    let rules = "package aegis\nimport rego.v1\ndefault decision := \"allow\"\n\
                 decision := \"deny\" if input.llm.stream\nreasons contains \"no streaming\" if input.llm.stream\n";
    let t = setup(rules).await;
    let body = json!({"model": "gpt-test", "messages": [], "max_tokens": 2});
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = t.gw("/api/gw/openai/chat/completions").json(&streamed).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["reason"], "no streaming", "{answer}");
    // The playground sees the same input.
    let r =
        t.s.post(
            "/api/policies/evaluate",
            Some(&t.sponsor.access),
            json!({"agent_id": t.agent_id, "method": "POST", "url": t.mock.url("/v1/chat/completions"),
                   "body": streamed.to_string()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(
        input["llm"],
        json!({"provider": "openai", "model": "gpt-test", "max_tokens": 2, "stream": true})
    );
    assert_eq!(r.body["decision"], "deny");
}

#[tokio::test]
async fn rate_limits_deny_at_budget_with_retry_after_and_count_real_tokens() {
    let t = setup("permissive").await;
    let conns = t.s.get("/api/connections", &t.sponsor.access).await;
    let openai = conns.body.as_array().unwrap().iter().find(|c| c["name"] == "openai").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The connection: 3 requests a minute, whoever calls.
    let r =
        t.s.send(
            reqwest::Method::PATCH,
            &format!("/api/connections/{openai}"),
            Some(&t.sponsor.access),
            Some(json!({"rate_limits": {"requests_per_minute": 3}})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["rate_limits"]["requests_per_minute"].clone()),
        (StatusCode::OK, json!(3)),
        "{}",
        r.text
    );
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    for _ in 0..3 {
        let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "{retry}");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(
        (answer["stage"].clone(), answer["retry_after_secs"].clone()),
        (json!("budget"), json!(retry)),
        "{answer}"
    );
    assert!(answer["reason"].as_str().unwrap().contains("3 requests per minute"), "{answer}");
    // Execute mode counts against the same connection window.
    let r =
        t.s.execute(
            &t.key,
            json!({"method": "POST", "url": t.mock.url("/v1/chat/completions"), "body": body.to_string()}),
        )
        .await;
    assert_eq!((r.status, r.body["stage"].clone()), (StatusCode::FORBIDDEN, json!("budget")), "{}", r.text);
    let r =
        t.s.send(
            reqwest::Method::PATCH,
            &format!("/api/connections/{openai}"),
            Some(&t.sponsor.access),
            Some(json!({"rate_limits": null})),
        )
        .await;
    assert_eq!(r.body["rate_limits"], Value::Null, "{}", r.text);

    // The agent: tokens per minute. A call takes its bound while it runs and its
    // usage once settled, so the second call fits only because the first was corrected.
    let bound = body.to_string().len() as i64 + 4;
    let usage = mock_llm::prompt_tokens(&body) as i64 + 4;
    let r =
        t.s.send(
            reqwest::Method::PATCH,
            &format!("/api/agents/{}", t.agent_id),
            Some(&t.sponsor.access),
            Some(json!({"rate_limits": {"tokens_per_minute": bound + usage}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["rate_limits"]["tokens_per_minute"], bound + usage);
    for _ in 0..2 {
        let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "corrected to usage, the window has room");
        let _ = r.bytes().await;
    }
    let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "2 × usage + bound > the limit");
    // A call alone bigger than the limit can never fit: no retry.
    let big = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "x".repeat(2000)}], "max_tokens": 4});
    let r = t.gw("/api/gw/openai/chat/completions").json(&big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("retry-after").is_none());
    let answer: Value = r.json().await.unwrap();
    assert!(answer["reason"].as_str().unwrap().contains("alone"), "{answer}");
    // Bad limits are a 422, not a 500.
    let r =
        t.s.send(
            reqwest::Method::PATCH,
            &format!("/api/agents/{}", t.agent_id),
            Some(&t.sponsor.access),
            Some(json!({"rate_limits": {"tokens_per_minute": 0}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
}

/// Two replicas sharing Redis (and the database) share one window: of 60
/// concurrent calls split between them, exactly the limit is admitted.
#[tokio::test]
async fn rate_limits_are_exact_across_two_replicas_sharing_redis() {
    let Ok(redis) = std::env::var("AEGIS_TEST_REDIS_URL") else {
        eprintln!(
            "SKIPPED rate_limits_are_exact_across_two_replicas_sharing_redis: needs AEGIS_TEST_REDIS_URL"
        );
        return;
    };
    let mock = MockLlm::start().await;
    let vars = [ALLOW_LOOPBACK, NO_SPEND_BREAKER, ("REDIS_URL", redis.as_str())];
    let a = TestServer::start_with(&vars).await;
    let b = TestServer::start_sharing(&a, &vars).await;
    let sponsor = a.sponsor("rl-fleet").await;
    let r = a
        .post("/api/agents", Some(&sponsor.access), json!({"name": "fleet-bot", "policy": "permissive"}))
        .await;
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let r = a
        .post("/api/connections", Some(&sponsor.access),
              json!({"name": "openai", "base_url": mock.url("/v1"), "rate_limits": {"requests_per_minute": 17},
                     "pricing": {"provider": "openai", "models": {"gpt-test": price()}, "max_output_tokens": 10}}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body = json!({"model": "gpt-test", "messages": [], "max_tokens": 2});
    let calls = (0..60).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        let req = s.http.post(s.url("/api/gw/openai/chat/completions")).bearer_auth(&key).json(&body);
        async move { req.send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::FORBIDDEN).count();
    assert_eq!((ok, limited), (17, 43), "{statuses:?}");
}

/// `GET /api/usage` sums what was settled — by model, connection, agent and day —
/// and equals the wallet's spend exactly; the wallet history shows each call's
/// ceiling (held) against what it settled at; another sponsor sees none of it.
#[tokio::test]
async fn usage_and_wallet_history_show_what_was_held_and_settled() {
    let t = setup("permissive").await;
    let messages = json!([{"role": "user", "content": "usage please"}]);
    let mut ids = Vec::new();
    for (path, body, behaviour) in [
        (
            "/api/gw/openai/chat/completions",
            json!({"model": "gpt-test", "messages": messages, "max_tokens": 4}),
            "",
        ),
        (
            "/api/gw/openai/chat/completions",
            json!({"model": "gpt-test", "messages": messages, "max_tokens": 7, "stream": true}),
            "",
        ),
        (
            "/api/gw/openai/chat/completions",
            json!({"model": "gpt-test", "messages": messages, "max_tokens": 3}),
            "no-usage",
        ),
        (
            "/api/gw/claude/v1/messages",
            json!({"model": "claude-test", "messages": messages, "max_tokens": 5}),
            "",
        ),
    ] {
        let r = t.gw(path).header("x-mock-behaviour", behaviour).json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        ids.push(request_id(&r));
        let _ = r.bytes().await.unwrap();
    }
    // A model outside the allow-list: denied before any hold, counted nowhere.
    let r = t
        .gw("/api/gw/openai/chat/completions")
        .json(&json!({"model": "gpt-other", "messages": messages, "max_tokens": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let spent = t.settled_wallet().await["daily_spent_micros"].as_i64().unwrap();
    let mut meterings = Vec::new();
    for id in &ids {
        meterings.push(t.metering(id).await);
    }

    let r = t.s.get("/api/usage?days=7", &t.sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let u = r.body;
    assert_eq!(u["totals"]["cost_micros"], spent, "the sum of the settled calls: {u}");
    assert_eq!(u["totals"]["requests"], 4);
    assert_eq!(u["totals"]["at_ceiling"], 1, "the answer without usage");
    let held: i64 = meterings.iter().map(|m| m["ceiling_micros"].as_i64().unwrap()).sum();
    assert_eq!(u["totals"]["held_micros"], held);
    let out: i64 = meterings.iter().map(|m| m["tokens_out"].as_i64().unwrap()).sum();
    assert_eq!(u["totals"]["tokens_out"], out);
    let gpt = meterings[..3].iter().map(|m| m["charged_micros"].as_i64().unwrap()).sum::<i64>();
    let claude = meterings[3]["charged_micros"].as_i64().unwrap();
    let by_model: Vec<(Value, Value, Value, Value)> = u["by_model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["connection"].clone(),
                m["model"].clone(),
                m["totals"]["requests"].clone(),
                m["totals"]["cost_micros"].clone(),
            )
        })
        .collect();
    let mut expected = vec![
        (json!("openai"), json!("gpt-test"), json!(3), json!(gpt)),
        (json!("claude"), json!("claude-test"), json!(1), json!(claude)),
    ];
    expected.sort_by_key(|e| -e.3.as_i64().unwrap());
    assert_eq!(by_model, expected, "dearest first: {u}");
    assert_eq!(u["by_connection"].as_array().unwrap().len(), 2);
    assert_eq!(u["by_agent"][0]["agent_name"], "llm-bot");
    assert_eq!(u["by_agent"][0]["totals"]["tokens_out"], out);
    let days = u["by_day"].as_array().unwrap();
    assert_eq!(days.len(), 7, "every day of the period");
    assert_eq!(days.last().unwrap()["day"], u["to"]);
    assert_eq!(days.last().unwrap()["totals"]["cost_micros"], spent, "today holds it all");
    // Folding again counts nothing twice; one agent's filter sees the same.
    let again = t.s.get(&format!("/api/usage?agent_id={}", t.agent_id), &t.sponsor.access).await;
    assert_eq!(again.body["totals"], u["totals"]);
    assert_eq!(again.body["by_day"].as_array().unwrap().len(), 30, "30 days by default");

    // The wallet history: newest first, each metered hold at its ceiling, settled at its charge.
    let r = t.s.get(&format!("/api/agents/{}/wallet/history", t.agent_id), &t.sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.body["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 4, "no hold for the denied call: {}", r.text);
    for (item, (id, m)) in items.iter().rev().zip(ids.iter().zip(&meterings)) {
        assert_eq!(item["request_id"], json!(id));
        assert_eq!(item["status"], "settled");
        assert_eq!(item["held_micros"], m["ceiling_micros"]);
        assert_eq!(item["settled_micros"], m["charged_micros"]);
    }
    let page =
        t.s.get(&format!("/api/agents/{}/wallet/history?limit=3", t.agent_id), &t.sponsor.access).await;
    let cursor = page.body["next_cursor"].as_str().expect("a second page").to_owned();
    let rest = t
        .s
        .get(&format!("/api/agents/{}/wallet/history?limit=3&cursor={cursor}", t.agent_id), &t.sponsor.access)
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["items"][0]["request_id"], json!(ids[0]));
    assert!(rest.body["next_cursor"].is_null());

    // Bad input: a clear 400 with a code.
    for (path, code) in [
        ("/api/usage?days=0".to_owned(), "invalid_days"),
        ("/api/usage?days=91".to_owned(), "invalid_days"),
        (format!("/api/agents/{}/wallet/history?limit=0", t.agent_id), "invalid_limit"),
        (format!("/api/agents/{}/wallet/history?cursor=nope", t.agent_id), "invalid_cursor"),
    ] {
        let r = t.s.get(&path, &t.sponsor.access).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, code), "{path}: {}", r.text);
    }

    // Another sponsor: nothing of it.
    let other = t.s.sponsor("usage-other").await;
    let r = t.s.get("/api/usage", &other.access).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["totals"]["requests"], 0);
    assert_eq!(r.body["by_model"], json!([]));
    let r = t.s.get(&format!("/api/agents/{}/wallet/history", t.agent_id), &other.access).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t.s.get(&format!("/api/usage?agent_id={}", t.agent_id), &other.access).await;
    assert_eq!(r.body["totals"]["requests"], 0, "another sponsor's agent id finds nothing");
}

/// Folders racing — two replicas' janitors, reports — count each outcome exactly
/// once: the cursor moves only from where a folder started.
#[tokio::test]
async fn racing_usage_folders_count_each_outcome_once() {
    use sea_orm::ConnectionTrait;
    let t = setup("permissive").await;
    let body =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "race"}], "max_tokens": 2});
    for _ in 0..12 {
        let r = t.gw("/api/gw/openai/chat/completions").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let spent = t.settled_wallet().await["daily_spent_micros"].as_i64().unwrap();
    assert_eq!(spent, 12 * usage_cost(&body));
    let config = &t.s.running.services.config;
    let url = server::db::resolve_url(config.database_url.as_deref(), &config.data_dir);
    let mut folders = Vec::new();
    for _ in 0..3 {
        folders
            .push(server::usage::UsageService::new(server::db::connect_with(&url, Some(4)).await.unwrap()));
    }
    for round in 0..5 {
        // Start over: no rollups, nothing folded (the server's own janitor may race too).
        let db = &t.s.running.services.db;
        let txn = server::db::begin_write(db).await.unwrap();
        txn.execute_unprepared("DELETE FROM usage_daily").await.unwrap();
        txn.execute_unprepared("UPDATE usage_cursor SET seq = 0").await.unwrap();
        txn.commit().await.unwrap();
        let (a, b, c) = tokio::join!(folders[0].catch_up(), folders[1].catch_up(), folders[2].catch_up());
        let folded = a.unwrap() + b.unwrap() + c.unwrap();
        assert!(folded <= 12, "round {round}: {folded} folded");
        let r = t.s.get("/api/usage", &t.sponsor.access).await;
        assert_eq!(r.body["totals"]["requests"], 12, "round {round}: {}", r.text);
        assert_eq!(r.body["totals"]["cost_micros"], spent, "round {round}");
    }
}
