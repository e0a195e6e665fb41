//! The trust engine over HTTP: calls through the proxy move the score, the history
//! endpoint shows why, and concurrent calls lose no update. Only meaningful
//! outcomes earn trust: a 2xx on a host the sponsor vouched for (here: through a
//! secret of theirs), ten a UTC day at most.

use chrono::{DateTime, Utc};
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

/// A secret of the sponsor's for the mock upstream (plain http, any port), granted
/// to `agent`: calls that carry it are on a host the sponsor vouched for.
async fn vouch(s: &TestServer, sponsor: &Sponsor, agent: &str) -> &'static str {
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "mock", "value": "v-1", "allowed_hosts": ["http://127.0.0.1:*"],
                   "inject": {"header": "x-api-key"}, "agents": [agent]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    "mock"
}

fn utc_day() -> chrono::NaiveDate {
    Utc::now().date_naive()
}

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

    // Three successes on a vouched-for host: +2 each.
    let secret = vouch(&s, &sponsor, &id).await;
    for _ in 0..3 {
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": secret})).await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    // An upstream 5xx, a 4xx, and a 2xx without the secret change nothing.
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/status/503"), "secret": secret})).await;
    assert_eq!(r.body["upstream"]["status"], 503);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/status/404"), "secret": secret})).await;
    assert_eq!(r.body["upstream"]["status"], 404);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})).await;
    assert_eq!(r.body["upstream"]["status"], 200);
    assert_eq!(trust(&s, &sponsor, &id).await["score"], 506);

    // Egress block −40, policy deny −25, budget hit −15.
    let r = s.execute(&key, json!({"method": "GET", "url": "http://10.0.0.1/x"})).await;
    assert_eq!(r.body["stage"], "egress", "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/forbidden")})).await;
    assert_eq!(r.body["stage"], "policy", "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 5000})).await;
    assert_eq!(r.body["stage"], "budget", "{}", r.text);

    let view = trust(&s, &sponsor, &id).await;
    assert_eq!((view["score"].as_i64(), view["tier"].as_str()), (Some(426), Some("probation")));
    let expected: Vec<(String, i64, i64)> = [
        ("budget_hit", -15, 426),
        ("policy_deny", -25, 441),
        ("egress_block", -40, 466),
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
        (Some(426), Some("probation"))
    );
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/tiered")})).await;
    assert_eq!(
        (r.body["stage"].as_str(), r.body["reason"].as_str()),
        (Some("policy"), Some("below standard tier"))
    );
    assert_eq!(trust(&s, &sponsor, &id).await["score"], 401);

    // Each change is audited, and the chain still verifies.
    let r = s.get(&format!("/api/audit?kind=trust.changed&agent={id}&limit=200"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 7, "{}", r.text);
    let newest: Value = serde_json::from_str(items[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(
        (
            newest["delta"].as_i64(),
            newest["score"].as_i64(),
            newest["tier"].as_str(),
            newest["reason"].as_str()
        ),
        (Some(-25), Some(401), Some("probation"), Some("policy_deny"))
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
async fn concurrent_successes_lose_no_update_and_respect_the_daily_count() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("conc").await;
    let (id, key) = s.agent_with(&sponsor, json!({"name": "busy", "policy": "permissive"})).await;
    let secret = vouch(&s, &sponsor, &id).await;
    let day = utc_day();

    let calls = (0..20)
        .map(|_| s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": secret})));
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    if utc_day() != day {
        return; // the UTC day turned mid-test: the count started over
    }
    // Only the first ten of a UTC day count, +2 each, however the calls interleave.
    let view = trust(&s, &sponsor, &id).await;
    assert_eq!(view["score"], 520, "{}", view);
    let h = history(&view);
    assert_eq!(h.len(), 10);
    let mut afters: Vec<i64> = h.iter().map(|(_, _, a)| *a).collect();
    afters.sort();
    assert_eq!(afters, (0..10).map(|i| 502 + 2 * i).collect::<Vec<_>>(), "every step is distinct");
    let verify = s.get("/api/audit/verify", &sponsor.access).await;
    assert_eq!(verify.body["valid"], true, "{}", verify.text);
}

/// Farming: 400 cheap calls answered 404 (and 2xx from a host nobody vouched for)
/// earn nothing, so they cannot lift an agent into the next tier.
#[tokio::test]
async fn cheap_calls_do_not_farm_trust() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("farm").await;
    let (id, key) = s.agent_with(&sponsor, json!({"name": "farmer", "policy": "permissive"})).await;
    let secret = vouch(&s, &sponsor, &id).await;
    // One egress block puts it just below the standard tier: 460, probation.
    let r = s.execute(&key, json!({"method": "GET", "url": "http://10.0.0.1/x"})).await;
    assert_eq!(r.body["stage"], "egress", "{}", r.text);
    assert_eq!(trust(&s, &sponsor, &id).await["tier"], "probation");

    for chunk in 0..20 {
        let calls = (0..20).map(|i| {
            // 404s, half of them even on the vouched-for host with the secret.
            let mut body = json!({"method": "GET", "url": mock.url("/status/404")});
            if (chunk + i) % 2 == 0 {
                body["secret"] = json!(secret);
            }
            s.execute(&key, body)
        });
        for r in futures::future::join_all(calls).await {
            assert_eq!(r.body["upstream"]["status"], 404, "{}", r.text);
        }
    }
    for _ in 0..20 {
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo")})).await;
        assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
    }
    let view = trust(&s, &sponsor, &id).await;
    assert_eq!((view["score"].as_i64(), view["tier"].as_str()), (Some(460), Some("probation")), "{view}");
    assert_eq!(history(&view), vec![("egress_block".to_owned(), -40, 460)]);
}

/// What does earn trust, as documented: a 2xx on a host the sponsor vouched for,
/// +2 each (+1 from 700), the first ten of each UTC day.
#[tokio::test]
async fn vouched_successes_earn_trust_as_documented() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("earn").await;
    let (id, key) = s.agent_with(&sponsor, json!({"name": "earner", "policy": "permissive"})).await;
    let secret = vouch(&s, &sponsor, &id).await;
    let day = utc_day();
    for n in 1..=15i64 {
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": secret})).await;
        assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
        if utc_day() == day {
            assert_eq!(trust(&s, &sponsor, &id).await["score"], 500 + 2 * n.min(10), "after {n}");
        }
    }
}
