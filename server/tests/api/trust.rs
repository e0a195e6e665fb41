//! The trust engine over HTTP: calls through the proxy move the score, the history
//! endpoint shows why, and concurrent calls lose no update.

use chrono::{DateTime, Timelike, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock::MockUpstream;
use crate::support::{Sponsor, TestServer};

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

/// Allows everything but paths under `/forbidden`; paths under `/tiered` only to
/// agents of standard tier or better (the tier is part of the policy input).
const TIERED: &str = r#"package aegis
import rego.v1
default decision := "deny"
good_standing if input.agent.tier in {"standard", "trusted", "verified"}
decision := "allow" if {
	not startswith(input.action.path, "/forbidden")
	not startswith(input.action.path, "/tiered")
}
decision := "allow" if {
	startswith(input.action.path, "/tiered")
	good_standing
}
reasons contains "below standard tier" if {
	startswith(input.action.path, "/tiered")
	not good_standing
}
reasons contains "forbidden path" if startswith(input.action.path, "/forbidden")
"#;

async fn trust(s: &TestServer, sponsor: &Sponsor, agent: &str) -> Value {
    let r = s.get(&format!("/api/agents/{agent}/trust"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

fn history(view: &Value) -> Vec<(String, i64, i64)> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap().to_owned(),
                e["delta"].as_i64().unwrap(),
                e["score_after"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn calls_raise_and_denials_lower_trust_with_a_history() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("trust").await;
    let r = s.post("/api/policies", Some(&sponsor.access), json!({"name": "tiered", "source": TIERED})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (id, key) =
        s.agent_with(&sponsor, json!({"name": "bot", "policy": "tiered", "daily_limit_micros": 1000})).await;

    let fresh = trust(&s, &sponsor, &id).await;
    assert_eq!((fresh["score"].as_i64(), fresh["tier"].as_str()), (Some(500), Some("standard")));
    assert_eq!(fresh["agent_id"], id.as_str());
    assert!(history(&fresh).is_empty());

    // Three successes: +2 each.
    for _ in 0..3 {
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})).await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    // An upstream 5xx and a 4xx: the 5xx changes nothing, the 4xx is a success.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/status/503")})).await;
    assert_eq!(r.body["upstream"]["status"], 503);
    assert_eq!(trust(&s, &sponsor, &id).await["score"], 506);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/status/404")})).await;
    assert_eq!(r.body["upstream"]["status"], 404);
    assert_eq!(trust(&s, &sponsor, &id).await["score"], 508);

    // Egress block −40, policy deny −25, budget hit −15.
    let r = s.execute(&key, json!({"method": "GET", "url": "http://10.0.0.1/x"})).await;
    assert_eq!(r.body["stage"], "egress", "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/forbidden")})).await;
    assert_eq!(r.body["stage"], "policy", "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 5000})).await;
    assert_eq!(r.body["stage"], "budget", "{}", r.text);

    let view = trust(&s, &sponsor, &id).await;
    assert_eq!((view["score"].as_i64(), view["tier"].as_str()), (Some(428), Some("probation")));
    let expected: Vec<(String, i64, i64)> = [
        ("budget_hit", -15, 428),
        ("policy_deny", -25, 443),
        ("egress_block", -40, 468),
        ("success", 2, 508),
        ("success", 2, 506),
        ("success", 2, 504),
        ("success", 2, 502),
    ]
    .iter()
    .map(|(r, d, a)| (r.to_string(), *d, *a))
    .collect();
    assert_eq!(history(&view), expected);
    let times: Vec<DateTime<Utc>> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");

    // The agent view carries the tier; the policy sees it too: below standard,
    // the tiered policy denies `/tiered` (another −25).
    let agent = s.get(&format!("/api/agents/{id}"), &sponsor.access).await;
    assert_eq!(
        (agent.body["trust_score"].as_i64(), agent.body["tier"].as_str()),
        (Some(428), Some("probation"))
    );
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/tiered")})).await;
    assert_eq!(
        (r.body["stage"].as_str(), r.body["reason"].as_str()),
        (Some("policy"), Some("below standard tier"))
    );
    assert_eq!(trust(&s, &sponsor, &id).await["score"], 403);

    // Each change is audited, and the chain still verifies.
    let r = s.get(&format!("/api/audit?kind=trust.changed&agent={id}&limit=200"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 8, "{}", r.text);
    let newest: Value = serde_json::from_str(items[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            newest["delta"].as_i64(),
            newest["score"].as_i64(),
            newest["tier"].as_str(),
            newest["reason"].as_str()
        ),
        (Some(-25), Some(403), Some("probation"), Some("policy_deny"))
    );
    assert!(items[0]["request_id"].as_str().unwrap().starts_with("req_"));
    let verify = s.get("/api/audit/verify", &sponsor.access).await;
    assert_eq!(verify.body["valid"], true, "{}", verify.text);
}

#[tokio::test]
async fn only_the_sponsor_sees_an_agents_trust() {
    let s = TestServer::start().await;
    let (a, b) = (s.sponsor("a").await, s.sponsor("b").await);
    let (agent, _) = s.agent(&a, "mine").await;
    let id = agent["id"].as_str().unwrap();
    assert_eq!(agent["tier"], "standard");
    assert_eq!(trust(&s, &a, id).await["score"], 500);
    let r = s.get(&format!("/api/agents/{id}/trust"), &b.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = s.get(&format!("/api/agents/{}/trust", uuid::Uuid::now_v7()), &a.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = s.send(reqwest::Method::GET, &format!("/api/agents/{id}/trust"), None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn concurrent_successes_lose_no_update_and_respect_the_hourly_cap() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("conc").await;
    let (id, key) = s.agent_with(&sponsor, json!({"name": "busy", "policy": "permissive"})).await;

    let calls = (0..20).map(|_| s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    // 20 × +2 = +40: exactly the hourly cap, however the calls interleave.
    let view = trust(&s, &sponsor, &id).await;
    assert_eq!(view["score"], 540, "{}", view);
    let h = history(&view);
    assert_eq!(h.len(), 20);
    let mut afters: Vec<i64> = h.iter().map(|(_, _, a)| *a).collect();
    afters.sort();
    assert_eq!(afters, (0..20).map(|i| 502 + 2 * i).collect::<Vec<_>>(), "every step is distinct");

    // The 21st success in the same clock hour adds nothing.
    let first: DateTime<Utc> = view["history"][19]["at"].as_str().unwrap().parse().unwrap();
    s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})).await;
    let same_hour =
        Utc::now().with_minute(0).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap() <= first;
    if same_hour {
        assert_eq!(trust(&s, &sponsor, &id).await["score"], 540);
    }
    let verify = s.get("/api/audit/verify", &sponsor.access).await;
    assert_eq!(verify.body["valid"], true, "{}", verify.text);
}
