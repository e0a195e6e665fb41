//! The policy playground (`POST /api/policies/evaluate`): the proxy's own policy input,
//! a decision and its reasons, and nothing performed or recorded.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

async fn evaluate(s: &TestServer, sponsor: &Sponsor, body: Value) -> crate::support::Response {
    s.post("/api/policies/evaluate", Some(&sponsor.access), body).await
}

async fn audit_count(s: &TestServer, sponsor: &Sponsor) -> usize {
    let r = s.get("/api/audit?limit=200", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().len()
}

async fn policy_id(s: &TestServer, sponsor: &Sponsor, name: &str) -> String {
    let r = s.get("/api/policies", &sponsor.access).await;
    let list = r.body.as_array().unwrap();
    let p = list.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} in {}", r.text));
    p["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_playground_decides_without_performing_anything() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("play").await;
    let (agent, _key) = s.agent(&sponsor, "play-bot").await; // the default policy, trust 500
    let agent_id = agent["id"].as_str().unwrap();
    let before = audit_count(&s, &sponsor).await;

    // The built-in default: reads pass, writes at standard trust wait, costly reads wait.
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/x"}),
    )
    .await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    assert!(r.body["error"].is_null(), "{}", r.text);
    // The input is the proxy's policy input document.
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["action"]["host"], "api.example.com");
    assert_eq!(input["agent"]["id"], agent_id);
    assert_eq!(input["agent"]["tier"], "standard");
    assert!(input["wallet"].is_object() && input["time"]["hour"].is_number(), "{input}");

    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "post", "url": "https://api.example.com/x", "body": "{}"}),
    )
    .await;
    assert_eq!(r.body["decision"], "require_approval", "{}", r.text);
    assert_eq!(r.body["reasons"], json!(["writes need approval below trust 700"]));
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/x", "cost_micros": 2_000_000}),
    )
    .await;
    assert_eq!(r.body["decision"], "require_approval", "{}", r.text);
    assert_eq!(r.body["reasons"], json!(["cost above 1.00 needs approval"]));

    // Another stored policy, by id: the built-in permissive one allows even a DELETE.
    let permissive = policy_id(&s, &sponsor, "permissive").await;
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "policy_id": permissive, "method": "DELETE", "url": "https://api.example.com/x"}),
    )
    .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["reasons"]),
        (Some("allow"), &json!(["permissive policy"]))
    );

    // Unsaved source: an edit tried before it is saved.
    let hosts = "package aegis\nimport rego.v1\ndefault decision := \"deny\"\n\
        decision := \"allow\" if input.action.host == \"api.github.com\"\n\
        reasons contains \"host not allowed\" if decision == \"deny\"\n";
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "source": hosts, "method": "POST", "url": "https://evil.example/x"}),
    )
    .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["reasons"]),
        (Some("deny"), &json!(["host not allowed"]))
    );
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "source": hosts, "method": "POST", "url": "https://api.github.com/x"}),
    )
    .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);

    // Nothing was performed, audited or reserved.
    assert_eq!(audit_count(&s, &sponsor).await, before, "the playground wrote to the audit log");
    let wallet = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
    assert_eq!(
        (wallet.body["reserved_micros"].as_i64(), wallet.body["daily_spent_micros"].as_i64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn the_playground_refuses_bad_input_and_other_sponsors() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("play-bad").await;
    let (agent, _) = s.agent(&sponsor, "bot").await;
    let agent_id = agent["id"].as_str().unwrap();
    let get = |extra: Value| {
        let mut body = json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };

    // A compile error: 422 with the compiler's message, pointing at the line.
    let r = evaluate(&s, &sponsor, get(json!({"source": "package aegis\nimport rego.v1\ndecision := )\n"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"), "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("policy.rego:3:"), "line info in {message:?}");
    let r = evaluate(&s, &sponsor, get(json!({"source": "package other\ndecision := \"allow\""}))).await;
    assert_eq!(r.code(), "policy_invalid");

    for (extra, code) in [
        (json!({"method": "TRACE"}), "invalid_request"),
        (json!({"url": "not a url"}), "invalid_request"),
        (json!({"cost_micros": -1}), "invalid_request"),
    ] {
        let r = evaluate(&s, &sponsor, get(extra.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{extra}: {}", r.text);
    }
    let r = evaluate(&s, &sponsor, get(json!({"surprise": true}))).await;
    assert!(r.status.is_client_error(), "{}", r.text);

    // Another sponsor's agent or policy is not found; so is an unknown one.
    let other = s.sponsor("play-other").await;
    let r = evaluate(&s, &other, get(json!({}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let mine = s
        .post(
            "/api/policies",
            Some(&sponsor.access),
            json!({"name": "mine", "source": "package aegis\ndecision := \"allow\""}),
        )
        .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.text);
    let (theirs, _) = s.agent(&other, "their-bot").await;
    let r = evaluate(
        &s,
        &other,
        json!({"agent_id": theirs["id"], "policy_id": mine.body["id"], "method": "GET", "url": "https://a.example/"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let r = evaluate(&s, &sponsor, get(json!({"agent_id": uuid::Uuid::new_v4()}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.post("/api/policies/evaluate", None, get(json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}
