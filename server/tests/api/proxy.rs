//! The execution proxy end to end: real AEGIS, real mock upstream on loopback.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock::MockUpstream;
use crate::support::{Sponsor, TestServer};

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

async fn permissive_agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> (Value, String) {
    let r = s.post("/api/agents", Some(&sponsor.access), json!({"name": name, "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (r.body["agent"].clone(), r.body["api_key"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn allowed_calls_are_performed_with_aegis_headers_only() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("p").await;
    let (_, key) = permissive_agent(&s, &sponsor, "bot").await;

    let r = s.execute(&key, json!({
        "method": "POST", "url": mock.url("/echo/items?page=2"),
        "headers": {"content-type": "application/json", "authorization": "Bearer agent-own", "cookie": "a=b", "x-trace": "t1"},
        "body": "{\"n\":1}", "action": "items.create"
    })).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["decision"], "allow");
    assert!(r.body["audit_seq"].as_i64().unwrap() > 0);
    assert!(r.body["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(r.headers["x-request-id"].to_str().unwrap(), r.body["request_id"].as_str().unwrap());
    let up = &r.body["upstream"];
    assert_eq!(up["status"], 200);
    let echoed: Value = serde_json::from_str(up["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (echoed["method"].as_str(), echoed["path"].as_str(), echoed["query"].as_str()),
        (Some("POST"), Some("/echo/items"), Some("page=2"))
    );
    assert_eq!(echoed["body"], "{\"n\":1}");
    assert_eq!(echoed["headers"]["x-trace"], "t1");
    assert!(echoed["headers"].get("authorization").is_none(), "agent credentials are dropped");
    assert!(echoed["headers"].get("cookie").is_none());
    assert!(echoed["headers"]["user-agent"].as_str().unwrap().starts_with("AEGIS/"));

    // An upstream error is still a performed call.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/status/503")})).await;
    assert_eq!((r.status, r.body["upstream"]["status"].as_i64()), (StatusCode::OK, Some(503)));
    // Binary bodies come back as base64.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/binary")})).await;
    assert_eq!(r.body["upstream"]["body_base64"], "AJ+Slv8=");
}

#[tokio::test]
async fn agents_must_authenticate() {
    let s = TestServer::start().await;
    let r = s.post("/api/proxy/execute", None, json!({"method": "GET", "url": "https://example.com"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body["request_id"].as_str().unwrap().starts_with("req_"));
    assert_eq!(r.headers["x-request-id"].to_str().unwrap(), r.body["request_id"].as_str().unwrap());
    assert_eq!((r.body["decision"].as_str(), r.body["stage"].as_str()), (Some("deny"), Some("auth")));
    let r = s
        .post(
            "/api/proxy/execute",
            Some("aegis_0000"),
            json!({"method": "GET", "url": "https://example.com"}),
        )
        .await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::UNAUTHORIZED, Some("auth")));
}

#[tokio::test]
async fn egress_guard_blocks_internal_targets() {
    let mock = MockUpstream::start().await;
    // No allow list: loopback is off limits like any internal address. (The denial
    // storm below would trip the breaker; that is tested in breaker.rs.)
    let s = TestServer::start_with(&[("AEGIS_BREAKER_DENIAL_RATE_PCT", "0")]).await;
    let sponsor = s.sponsor("e").await;
    let (_, key) = permissive_agent(&s, &sponsor, "bot").await;
    for url in [
        mock.url("/echo"),
        "http://localhost/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[::1]/".to_owned(),
        "http://2130706433/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "file:///etc/passwd".to_owned(),
        "gopher://example.com/".to_owned(),
        "http://example.com:22/".to_owned(),
        "http://user:pass@example.com/".to_owned(),
        "not a url".to_owned(),
        "http://".to_owned(),
    ] {
        let r = s.execute(&key, json!({"method": "GET", "url": url})).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}: {}", r.text);
        assert_eq!(
            (r.body["decision"].as_str(), r.body["stage"].as_str()),
            (Some("deny"), Some("egress")),
            "{url}"
        );
        assert!(r.body["audit_seq"].as_i64().is_some(), "denials are audited: {url}");
    }
}

#[tokio::test]
async fn policies_decide_and_bad_policies_are_refused() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("pol").await;
    let (agent, key) = s.agent(&sponsor, "default-bot").await; // the default policy

    // Default policy: reads by agents in good standing pass...
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);
    // ...writes by a standard-trust agent wait for approval...
    let r = s.execute(&key, json!({"method": "DELETE", "url": mock.url("/echo")})).await;
    assert_eq!(
        (r.status, r.body["decision"].as_str()),
        (StatusCode::ACCEPTED, Some("pending_approval")),
        "{}",
        r.text
    );
    // ...and so do expensive reads.
    let r =
        s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 2_000_000})).await;
    assert_eq!(r.body["stage"], "approval");

    let bad = s
        .post(
            "/api/policies",
            Some(&sponsor.access),
            json!({"name": "broken", "source": "package aegis\ndecision := ("}),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"));
    assert!(bad.body["error"]["message"].as_str().unwrap().len() > 10, "the compiler's message is returned");

    let source = "package aegis\nimport rego.v1\ndefault decision := \"deny\"\ndecision := \"allow\" if input.action.path == \"/echo/ok\"\nreasons contains \"only /echo/ok\" if decision == \"deny\"\n";
    let created =
        s.post("/api/policies", Some(&sponsor.access), json!({"name": "narrow", "source": source})).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let policy_id = created.body["id"].as_str().unwrap().to_owned();
    let id = agent["id"].as_str().unwrap();
    let r = s
        .send(
            reqwest::Method::PATCH,
            &format!("/api/agents/{id}"),
            Some(&sponsor.access),
            Some(json!({"policy": "narrow"})),
        )
        .await;
    assert_eq!(r.body["policy"], "narrow");

    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo/no")})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("policy")));
    assert_eq!(r.body["reasons"], json!(["only /echo/ok"]));
    let denied_seq = r.body["audit_seq"].as_i64().unwrap();
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo/ok")})).await;
    assert_eq!(r.body["decision"], "allow");

    // A new version takes effect at once; built-ins are read-only; others' policies invisible.
    let v2 = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/policies/{policy_id}"),
            Some(&sponsor.access),
            Some(json!({"source": "package aegis\ndecision := \"deny\"\n"})),
        )
        .await;
    assert_eq!((v2.status, v2.body["version"].as_i64()), (StatusCode::OK, Some(2)), "{}", v2.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo/ok")})).await;
    assert_eq!(r.body["stage"], "policy");

    // Replay: the old decision is re-made with the version and input it cited.
    let replay = s.get(&format!("/api/audit/{denied_seq}/replay"), &sponsor.access).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(
        (
            replay.body["matches"].as_bool(),
            replay.body["recorded"].as_str(),
            replay.body["replayed"].as_str()
        ),
        (Some(true), Some("deny"), Some("deny"))
    );
    assert_ne!(replay.body["policy_sha256"], v2.body["sha256"], "the version in force then, not now");
    let other_replay =
        s.get(&format!("/api/audit/{denied_seq}/replay"), &s.sponsor("nosy").await.access).await;
    assert_eq!(other_replay.status, StatusCode::NOT_FOUND, "another sponsor's records are not replayable");
    // Rewriting the stored policy source is caught.
    {
        use sea_orm::sea_query::Expr;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        let sha = replay.body["policy_sha256"].as_str().unwrap();
        entity::policy_versions::Entity::update_many()
            .col_expr(
                entity::policy_versions::Column::Source,
                Expr::value("package aegis\ndecision := \"allow\"\n"),
            )
            .filter(entity::policy_versions::Column::Sha256.eq(sha))
            .exec(&s.running.services.db)
            .await
            .unwrap();
    }
    let tampered = s.get(&format!("/api/audit/{denied_seq}/replay"), &sponsor.access).await;
    assert_eq!(
        (tampered.body["matches"].as_bool(), tampered.body["replayed"].as_str()),
        (Some(false), Some("allow")),
        "{}",
        tampered.text
    );
    let list = s.get("/api/policies", &sponsor.access).await;
    let builtin = list.body.as_array().unwrap().iter().find(|p| p["name"] == "default").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/policies/{builtin}"),
            Some(&sponsor.access),
            Some(json!({"source": "package aegis\ndecision := \"allow\""})),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "builtin_policy"));
    let other = s.sponsor("other").await;
    assert_eq!(
        s.get(&format!("/api/policies/{policy_id}"), &other.access).await.status,
        StatusCode::NOT_FOUND
    );
    let r = s.post("/api/agents", Some(&other.access), json!({"name": "x", "policy": "narrow"})).await;
    assert_eq!(r.code(), "unknown_policy", "another sponsor's policy is not usable");
}

#[tokio::test]
async fn suspended_agents_are_stopped_by_the_breaker() {
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("b").await;
    let (agent, key) = permissive_agent(&s, &sponsor, "bot").await;
    let id = agent["id"].as_str().unwrap();
    s.post(&format!("/api/agents/{id}/suspend"), Some(&sponsor.access), json!({"reason": "odd"})).await;
    let r = s.execute(&key, json!({"method": "GET", "url": "https://example.com/"})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("breaker")));
    assert!(r.body["reason"].as_str().unwrap().contains("odd"));
}

async fn secret(s: &TestServer, sponsor: &Sponsor, body: Value) -> crate::support::Response {
    s.post("/api/secrets", Some(&sponsor.access), body).await
}

#[tokio::test]
async fn secrets_are_injected_just_in_time_and_never_leak() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("sec").await;
    let (agent, key) = permissive_agent(&s, &sponsor, "bot").await;
    let (other_agent, other_key) = permissive_agent(&s, &sponsor, "other-bot").await;
    let id = agent["id"].as_str().unwrap();
    let value = "sk-live-SUPERSECRET-123";

    let created = secret(
        &s,
        &sponsor,
        json!({
            "name": "mock-api", "value": value, "allowed_hosts": ["http://127.0.0.1:*"],
            "inject": {"header": "Authorization", "format": "Bearer {secret}"}, "agents": [id]
        }),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert!(!created.text.contains(value));
    assert_eq!(created.body["agents"], json!([id]));

    // Injected (the upstream saw a credential) and scrubbed (the agent never sees it).
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/leak"), "secret": "mock-api"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["upstream"]["body"], "you sent: Bearer [REDACTED] / ");
    assert_eq!(r.body["upstream"]["headers"]["x-echo-auth"], "Bearer [REDACTED]");
    assert!(!r.text.contains(value));
    // An agent cannot override the injected header with its own.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": "mock-api", "headers": {"authorization": "Bearer mine"}})).await;
    let echoed: Value = serde_json::from_str(r.body["upstream"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["headers"]["authorization"], "Bearer [REDACTED]");

    // Not granted, unknown, wrong host: denied at stage secret.
    let r =
        s.execute(&other_key, json!({"method": "GET", "url": mock.url("/leak"), "secret": "mock-api"})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("secret")));
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/leak"), "secret": "nope"})).await;
    assert_eq!(r.body["stage"], "secret");
    // A public address (no DNS needed here): allowed by egress, but not a host the secret may visit.
    let r =
        s.execute(&key, json!({"method": "GET", "url": "http://93.184.216.34/", "secret": "mock-api"})).await;
    assert_eq!(r.body["stage"], "secret", "{}", r.text);

    // Query-parameter injection, granted through an update; rotation takes effect.
    let q = secret(&s, &sponsor, json!({
        "name": "q", "value": "first-value", "allowed_hosts": ["http://127.0.0.1:*"], "inject": {"query_param": "api_key"}
    })).await;
    let qid = q.body["id"].as_str().unwrap();
    let other_id = other_agent["id"].as_str().unwrap();
    let updated = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/secrets/{qid}"),
            Some(&sponsor.access),
            Some(json!({"value": "second&value", "agents": [other_id]})),
        )
        .await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.text);
    assert!(updated.body["rotated_at"].is_string());
    let r = s
        .execute(
            &other_key,
            json!({"method": "GET", "url": mock.url("/leak?x=1&api_key=forged"), "secret": "q"}),
        )
        .await;
    assert_eq!(r.body["upstream"]["body"], "you sent:  / x=1&api_key=[REDACTED]", "{}", r.text);

    // The value is nowhere: not in listings, not in the audit log, not in clear in the database.
    let listed = s.get("/api/secrets", &sponsor.access).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
    assert!(!listed.text.contains(value) && !listed.text.contains("second"));
    use sea_orm::{ConnectionTrait, Statement};
    let db = &s.running.services.db;
    let backend = db.get_database_backend();
    for table in ["audit_events", "secrets", "idempotency_records", "ledger_entries"] {
        let rows = db
            .query_all_raw(Statement::from_string(backend, format!("SELECT * FROM {table}")))
            .await
            .unwrap();
        let dump = format!("{rows:?}");
        assert!(!dump.contains("SUPERSECRET") && !dump.contains("second&value"), "secret found in {table}");
    }

    // Another sponsor can neither see the secret nor grant it to its agents.
    let stranger = s.sponsor("stranger").await;
    let sid = created.body["id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/api/secrets/{sid}"), &stranger.access).await.status, StatusCode::NOT_FOUND);
    let r = secret(&s, &stranger, json!({"name": "x", "value": "v", "allowed_hosts": ["a.example.com"], "inject": {"header": "x-key"}, "agents": [id]})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_agent"));
    let r =
        s.send(reqwest::Method::DELETE, &format!("/api/secrets/{sid}"), Some(&stranger.access), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Bad secret definitions.
    for (body, why) in [
        (json!({"name": "a", "value": "v", "allowed_hosts": [], "inject": {"header": "x"}}), "no hosts"),
        (
            json!({"name": "a", "value": "v", "allowed_hosts": ["*.com"], "inject": {"header": "x"}}),
            "too broad",
        ),
        (
            json!({"name": "a", "value": "v", "allowed_hosts": ["a.com"], "inject": {"header": "Host"}}),
            "forbidden header",
        ),
        (
            json!({"name": "a", "value": "v", "allowed_hosts": ["a.com"], "inject": {"header": "x", "format": "no placeholder"}}),
            "format",
        ),
        (
            json!({"name": "mock-api", "value": "v", "allowed_hosts": ["a.com"], "inject": {"header": "x"}}),
            "duplicate",
        ),
    ] {
        let r = secret(&s, &sponsor, body).await;
        assert!(r.status.is_client_error(), "{why}: {}", r.text);
    }
    let r =
        s.send(reqwest::Method::DELETE, &format!("/api/secrets/{sid}"), Some(&sponsor.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/leak"), "secret": "mock-api"})).await;
    assert_eq!(r.body["stage"], "secret", "deleted secrets are gone");
}

#[tokio::test]
async fn grants_are_one_row_each_so_simultaneous_grants_all_land() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("grants").await;
    let mut agents = Vec::new();
    for i in 0..8 {
        let (agent, key) = permissive_agent(&s, &sponsor, &format!("bot-{i}")).await;
        agents.push((agent["id"].as_str().unwrap().to_owned(), key));
    }
    let created = secret(
        &s,
        &sponsor,
        json!({"name": "shared", "value": "v-123", "allowed_hosts": ["http://127.0.0.1:*"],
        "inject": {"header": "authorization"}}),
    )
    .await;
    let sid = created.body["id"].as_str().unwrap().to_owned();
    let grant = |agent: &str| {
        let path = format!("/api/secrets/{sid}/agents/{agent}");
        let (s, access) = (&s, &sponsor.access);
        async move { s.send(reqwest::Method::PUT, &path, Some(access), None).await }
    };

    // Eight grants at once: a read-modify-write of the list would keep only some.
    let answers = futures::future::join_all(agents.iter().map(|(id, _)| grant(id))).await;
    assert!(
        answers.iter().all(|r| r.status == StatusCode::OK),
        "{:?}",
        answers.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    let mut expected: Vec<String> = agents.iter().map(|(id, _)| id.clone()).collect();
    expected.sort();
    let view = s.get(&format!("/api/secrets/{sid}"), &sponsor.access).await;
    assert_eq!(view.body["agents"], json!(expected), "{}", view.text);
    // Idempotent.
    assert_eq!(grant(&agents[0].0).await.body["agents"], json!(expected));

    // Revoking one leaves the others; the revoked agent is refused at once.
    let (gone, gone_key) = &agents[3];
    let r = s
        .send(
            reqwest::Method::DELETE,
            &format!("/api/secrets/{sid}/agents/{gone}"),
            Some(&sponsor.access),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["agents"].as_array().unwrap().len(), 7);
    let call = json!({"method": "GET", "url": mock.url("/echo"), "secret": "shared"});
    assert_eq!(s.execute(gone_key, call.clone()).await.body["stage"], "secret");
    assert_eq!(s.execute(&agents[4].1, call).await.body["decision"], "allow");

    // Someone else's secret or agent: 404 / 422, nothing changes.
    let stranger = s.sponsor("grants-stranger").await;
    let (theirs, _) = permissive_agent(&s, &stranger, "theirs").await;
    let theirs = theirs["id"].as_str().unwrap();
    let r = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/secrets/{sid}/agents/{}", agents[3].0),
            Some(&stranger.access),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{}",
        r.text
    );
    let r = grant(theirs).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_agent"))
    );
    let r = s
        .send(
            reqwest::Method::PUT,
            &format!("/api/secrets/{sid}/agents/not-a-uuid"),
            Some(&sponsor.access),
            None,
        )
        .await;
    assert_eq!(r.status.as_u16() / 100, 4, "{}", r.text);
    assert_eq!(
        s.get(&format!("/api/secrets/{sid}"), &sponsor.access).await.body["agents"].as_array().unwrap().len(),
        7
    );
}

#[tokio::test]
async fn budgets_hold_and_replays_do_not_repeat_calls() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("money").await;
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "spender", "policy": "permissive", "daily_limit_micros": 250_000}),
        )
        .await;
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    for i in 0..2 {
        let r =
            s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 100_000})).await;
        assert_eq!(r.body["decision"], "allow", "call {i}: {}", r.text);
        assert_eq!(r.body["cost_micros"], 100_000);
    }
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 100_000})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("budget")));
    assert_eq!(r.body["daily_remaining_micros"], 50_000);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 50_000})).await;
    assert_eq!(r.body["decision"], "allow", "exactly the remainder fits");

    // Idempotency: the second request with the key is answered from the record.
    let (_, key2) = permissive_agent(&s, &sponsor, "idem").await;
    let call = json!({"method": "POST", "url": mock.url("/counted"), "idempotency_key": "order-42"});
    let first = s.execute(&key2, call.clone()).await;
    let second = s.execute(&key2, call.clone()).await;
    assert_eq!(mock.hits(), 1, "performed once");
    assert_eq!(first.body["request_id"], second.body["request_id"]);
    assert_eq!(first.body["upstream"], second.body["upstream"]);
    assert_eq!(second.body["replayed"], true);
    let mut changed = call.clone();
    changed["body"] = json!("different");
    let r = s.execute(&key2, changed).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused"));
}

#[tokio::test]
async fn slow_huge_and_redirecting_upstreams_are_bounded() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[
        ALLOW_LOOPBACK,
        ("AEGIS_UPSTREAM_TIMEOUT_SECS", "1"),
        ("AEGIS_UPSTREAM_MAX_BYTES", "4096"),
    ])
    .await;
    let sponsor = s.sponsor("limits").await;
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "b", "policy": "permissive", "daily_limit_micros": 1_000_000}),
        )
        .await;
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let agent_id: uuid::Uuid = r.body["agent"]["id"].as_str().unwrap().parse().unwrap();

    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/slow"), "cost_micros": 300_000})).await;
    assert_eq!(
        (r.status, r.body["decision"].as_str(), r.body["stage"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("error"), Some("upstream")),
        "{}",
        r.text
    );
    let r = s
        .execute(&key, json!({"method": "GET", "url": mock.url("/big?bytes=10000"), "cost_micros": 300_000}))
        .await;
    assert_eq!(
        (r.status, r.body["stage"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream")),
        "{}",
        r.text
    );
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/big?bytes=100")})).await;
    assert_eq!(r.body["decision"], "allow");
    let wallet = s.running.services.wallets.get(agent_id).await.unwrap().unwrap();
    assert_eq!(
        (wallet.reserved_micros, wallet.daily_spent_micros),
        (0, 0),
        "failed calls release their holds"
    );

    // Redirects: off by default, each hop checked when followed.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/redirect?to=/echo")})).await;
    assert_eq!(r.body["upstream"]["status"], 307);
    let r = s
        .execute(
            &key,
            json!({"method": "GET", "url": mock.url("/redirect?to=/echo/after"), "follow_redirects": true}),
        )
        .await;
    assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/redirect?to=http://169.254.169.254/latest"), "follow_redirects": true})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("egress")), "{}", r.text);
}

#[tokio::test]
async fn gateway_mode_is_a_transparent_proxy_for_unmodified_sdks() {
    let mock = MockUpstream::start().await;
    // Costs below are deliberately huge; the spend-velocity detector is not under test.
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_BREAKER_SPEND_MICROS", "0")]).await;
    let sponsor = s.sponsor("gw").await;
    let (agent, key) = permissive_agent(&s, &sponsor, "sdk-bot").await;
    let id = agent["id"].as_str().unwrap();
    let secret_value = "sk-gateway-VALUE";
    let r = secret(
        &s,
        &sponsor,
        json!({"name": "mockkey", "value": secret_value, "allowed_hosts": ["http://127.0.0.1:*"],
        "inject": {"header": "authorization", "format": "Bearer {secret}"}, "agents": [id]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let conn = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "mock", "base_url": mock.url("/echo"), "secret": "mockkey", "cost_micros": 10}),
        )
        .await;
    assert_eq!(conn.status, StatusCode::CREATED, "{}", conn.text);
    assert_eq!(conn.body["gateway_path"], "/api/gw/mock");

    // A stock HTTP client, the AEGIS key where the SDK would put its API key.
    let resp = s
        .http
        .post(s.url("/api/gw/mock/v1/chat/completions?stream=false"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .header("openai-organization", "org-1")
        .body(r#"{"model":"m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-aegis-request-id"));
    assert_eq!(resp.headers()["content-type"], "application/json");
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["path"], "/echo/v1/chat/completions");
    assert_eq!(echoed["query"], "stream=false");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["body"], r#"{"model":"m"}"#);
    assert_eq!(echoed["headers"]["openai-organization"], "org-1");
    assert_eq!(echoed["headers"]["authorization"], "Bearer [REDACTED]", "the real secret was swapped in");
    assert!(!echoed.to_string().contains(&key), "the AEGIS key never leaves");

    let via_x_api_key =
        s.http.get(s.url("/api/gw/mock/models")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(via_x_api_key.status(), StatusCode::OK);
    let echoed: Value = via_x_api_key.json().await.unwrap();
    assert!(echoed["headers"].get("x-api-key").is_none());

    // The connection's base URL itself; a trailing slash is kept (and the mock has
    // no such route, so its 404 passes through untouched).
    let r = s.http.get(s.url("/api/gw/mock")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "/echo");
    let r = s.http.get(s.url("/api/gw/mock/")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers().contains_key("x-aegis-request-id"), "performed by AEGIS, answered by upstream");
    let trace = s
        .http
        .request(reqwest::Method::TRACE, s.url("/api/gw/mock/x"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(trace.status(), StatusCode::METHOD_NOT_ALLOWED);
    let bad_cost = s
        .http
        .get(s.url("/api/gw/mock/x"))
        .bearer_auth(&key)
        .header("x-aegis-cost-micros", "-5")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_cost.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Denials carry AEGIS's request id too.
    let denied = s
        .http
        .get(s.url("/api/gw/mock/x"))
        .bearer_auth(&key)
        .header("x-aegis-cost-micros", "999999999999")
        .send()
        .await
        .unwrap();
    assert!(denied.headers().contains_key("x-aegis-request-id"));
    // The connection's secret cannot be deleted from under it.
    let sid = s.get("/api/secrets", &sponsor.access).await.body[0]["id"].as_str().unwrap().to_owned();
    let r =
        s.send(reqwest::Method::DELETE, &format!("/api/secrets/{sid}"), Some(&sponsor.access), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "secret_in_use"));

    // Answers stream through as they arrive, scrubbed even where the secret is split
    // across chunks. (The mock's base URL is /echo, so reach /stream-auth through a
    // second connection.)
    let c2 = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "root", "base_url": mock.url(""), "secret": "mockkey"}),
        )
        .await;
    assert_eq!(c2.status, StatusCode::CREATED, "{}", c2.text);
    let started = std::time::Instant::now();
    let mut resp = s.http.get(s.url("/api/gw/root/stream-auth")).bearer_auth(&key).send().await.unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    let first_after = started.elapsed();
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(&first[..], b"first\n");
    assert!(
        first_after < std::time::Duration::from_millis(600),
        "first chunk after {first_after:?}: not streamed"
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(700));
    assert_eq!(String::from_utf8(rest).unwrap(), "Bearer [REDACTED]\n");

    let missing = s.http.get(s.url("/api/gw/nope/x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let anonymous = s.http.get(s.url("/api/gw/mock/x")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let list = s.get("/api/connections", &sponsor.access).await;
    assert_eq!(list.body[0]["secret"], "mockkey");
    let bad = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "evil", "base_url": "https://evil.example.com", "secret": "mockkey"}),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (StatusCode::UNPROCESSABLE_ENTITY, "secret_host_mismatch"));
    let bad = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "meta", "base_url": "http://169.254.169.254"}),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_base_url"));
}
