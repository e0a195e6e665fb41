//! Human-in-the-loop approvals over real HTTP: park, poll, approve (exactly once),
//! reject, expire, scoped grants, and who may see what.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock::MockUpstream;
use crate::support::{Sponsor, TestServer};

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

/// Every call needs a human, with a reason.
pub const ASK_ALWAYS: &str = "package aegis\nimport rego.v1\ndefault decision := \"require_approval\"\nreasons contains \"every call needs a human\"\n";

/// An agent under a policy that asks for approval on every call.
pub async fn asking_agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> (String, String) {
    let policy = format!("ask-{name}");
    let r =
        s.post("/api/policies", Some(&sponsor.access), json!({"name": policy, "source": ASK_ALWAYS})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = s.post("/api/agents", Some(&sponsor.access), json!({"name": name, "policy": policy})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned())
}

async fn kinds_for(s: &TestServer, sponsor: &Sponsor, request_id: &str) -> Vec<String> {
    let r = s.get(&format!("/api/audit?request_id={request_id}&limit=50"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut kinds: Vec<(i64, String)> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["seq"].as_i64().unwrap(), i["kind"].as_str().unwrap().to_owned()))
        .collect();
    kinds.sort();
    kinds.into_iter().map(|(_, k)| k).collect()
}

#[tokio::test]
async fn a_parked_request_is_performed_exactly_once_after_approval() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("approver").await;
    let sponsor_id: uuid::Uuid = sponsor.id.parse().unwrap();
    let mut feed = s.running.services.events.subscribe(sponsor_id, None);
    let (agent_id, key) = asking_agent(&s, &sponsor, "careful").await;

    let call = json!({"method": "POST", "url": mock.url("/counted"), "headers": {"X-Trace": "t-1", "Authorization": "Bearer agent-own-token"},
                      "body": "{\"title\":\"hello\"}", "cost_micros": 1234, "action": "issues.create"});
    let r = s.post("/api/proxy/execute", Some(&key), call.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(r.body["decision"], "pending_approval");
    assert_eq!(r.body["reasons"], json!(["every call needs a human"]));
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let request_id = r.body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["poll_url"], format!("/api/proxy/approvals/{approval_id}"));
    let expires: chrono::DateTime<chrono::Utc> = r.body["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - chrono::Utc::now();
    assert!(ttl > chrono::Duration::minutes(14) && ttl <= chrono::Duration::minutes(15), "default 15 min");
    assert_eq!(mock.hits(), 0, "nothing performed while pending");

    // The sponsor hears of it at once.
    let event = loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(5), feed.next()).await.unwrap().unwrap();
        if e.kind != "agent.created" {
            break e;
        }
    };
    assert_eq!(event.kind, "approval.requested");
    assert_eq!(event.link.approval_id.map(|i| i.to_string()), Some(approval_id.clone()));

    // The agent polls; the sponsor sees the request without header values.
    let poll = format!("/api/proxy/approvals/{approval_id}");
    let r = s.get(&poll, &key).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("pending")), "{}", r.text);
    let r = s.get("/api/approvals?status=pending", &sponsor.access).await;
    let item = &r.body["items"][0];
    assert_eq!(item["id"], approval_id.as_str());
    assert_eq!((item["method"].as_str(), item["agent_name"].as_str()), (Some("POST"), Some("careful")));
    assert_eq!(item["header_names"], json!(["authorization", "x-trace"]));
    assert_eq!(item["body_preview"], "{\"title\":\"hello\"}");
    assert_eq!((item["cost_micros"].as_i64(), item["trust_at_request"].as_i64()), (Some(1234), Some(500)));
    assert!(!r.text.contains("agent-own-token") && !r.text.contains("t-1"), "header values are not shown");
    let raw: Vec<String> = {
        use sea_orm::{EntityTrait, QuerySelect};
        entity::approvals::Entity::find()
            .select_only()
            .column(entity::approvals::Column::RequestJson)
            .into_tuple()
            .all(&s.running.services.db)
            .await
            .unwrap()
    };
    assert!(!raw[0].contains("agent-own-token") && !raw[0].contains("hello"), "the parked request is sealed");

    // Other sponsors and other agents cannot see or decide it.
    let other = s.sponsor("stranger").await;
    assert_eq!(
        s.get(&format!("/api/approvals/{approval_id}"), &other.access).await.status,
        StatusCode::NOT_FOUND
    );
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&other.access), json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let (_, other_key) = s.agent(&sponsor, "nosy").await;
    assert_eq!(s.get(&poll, &other_key).await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/api/approvals?status=maybe", &sponsor.access).await.code(), "invalid_status");

    // A long-poll waiting while two approvals race: exactly one performs the call.
    let waiter = {
        let (http, url, key) = (s.http.clone(), s.url(&format!("{poll}?wait=20")), key.clone());
        tokio::spawn(async move {
            crate::support::read(http.get(url).bearer_auth(key).send().await.unwrap()).await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let approve = |reason: &'static str| {
        let (http, url, token) =
            (s.http.clone(), s.url(&format!("/api/approvals/{approval_id}/approve")), sponsor.access.clone());
        async move {
            crate::support::read(
                http.post(url).bearer_auth(token).json(&json!({"reason": reason})).send().await.unwrap(),
            )
            .await
        }
    };
    let (a, b) = tokio::join!(approve("ship it"), approve("me too"));
    let (won, lost) = if a.status == StatusCode::OK { (a, b) } else { (b, a) };
    assert_eq!(won.status, StatusCode::OK, "{}", won.text);
    assert_eq!(lost.code(), "approval_decided", "{}", lost.text);
    assert_eq!(mock.hits(), 1, "performed exactly once");
    assert_eq!(won.body["status"], "approved");
    assert_eq!(won.body["decided_by"], sponsor.id.as_str());
    let outcome = &won.body["outcome"];
    assert_eq!(
        (outcome["status"].as_u64(), outcome["body"]["decision"].as_str()),
        (Some(200), Some("allow"))
    );
    assert_eq!(outcome["body"]["request_id"], request_id.as_str(), "performed under the original request id");

    let r = waiter.await.unwrap();
    assert_eq!(r.body["status"], "approved", "{}", r.text);
    assert_eq!(r.body["outcome"]["body"]["upstream"]["status"], 200);

    // The audit tells the whole story under one request id, and still verifies.
    assert_eq!(
        kinds_for(&s, &sponsor, &request_id).await,
        ["approval.requested", "approval.approved", "proxy.intent", "proxy.outcome", "trust.changed"]
    );
    let r =
        s.get(&format!("/api/audit?request_id={request_id}&kind=approval.approved"), &sponsor.access).await;
    let detail: Value = serde_json::from_str(r.body["items"][0]["detail"].as_str().unwrap_or("{}"))
        .unwrap_or_else(|_| r.body["items"][0]["detail"].clone());
    assert_eq!(detail["approver"], sponsor.id.as_str(), "{}", r.text);
    assert!(detail["waited_ms"].as_i64().unwrap() >= 300);
    assert_eq!(s.get("/api/audit/verify", &sponsor.access).await.body["valid"], true);
    let _ = agent_id;
}

#[tokio::test]
async fn rejected_requests_are_never_performed_and_cost_trust() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("rejecter").await;
    let (agent_id, key) = asking_agent(&s, &sponsor, "pushy").await;
    let r = s
        .post("/api/proxy/execute", Some(&key), json!({"method": "DELETE", "url": mock.url("/counted")}))
        .await;
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();

    let r = s
        .post(
            &format!("/api/approvals/{approval_id}/reject"),
            Some(&sponsor.access),
            json!({"reason": "not today"}),
        )
        .await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("rejected")), "{}", r.text);
    let r = s.get(&format!("/api/proxy/approvals/{approval_id}?wait=5"), &key).await;
    assert_eq!((r.body["status"].as_str(), r.body["reason"].as_str()), (Some("rejected"), Some("not today")));
    assert!(r.body["outcome"].is_null());
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&sponsor.access), json!({})).await;
    assert_eq!(r.code(), "approval_decided");
    assert_eq!(mock.hits(), 0);
    let trust = s.get(&format!("/api/agents/{agent_id}/trust"), &sponsor.access).await;
    assert_eq!(trust.body["score"], 470, "{}", trust.text);
    assert_eq!(trust.body["history"][0]["reason"], "approval_rejected");
}

#[tokio::test]
async fn unanswered_approvals_expire_and_cannot_be_approved_late() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_APPROVAL_TTL_SECS", "1")]).await;
    let sponsor = s.sponsor("slowpoke").await;
    let (_, key) = asking_agent(&s, &sponsor, "waiting").await;
    let r =
        s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": mock.url("/counted")})).await;
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let request_id = r.body["request_id"].as_str().unwrap().to_owned();

    // The long-poll returns once it expires, well before its own 10 s.
    let started = std::time::Instant::now();
    let r = s.get(&format!("/api/proxy/approvals/{approval_id}?wait=10"), &key).await;
    assert_eq!(r.body["status"], "expired", "{}", r.text);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&sponsor.access), json!({})).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "approval_expired"));
    let r = s.get("/api/approvals?status=expired", &sponsor.access).await;
    assert_eq!(r.body["items"][0]["id"], approval_id.as_str());
    assert_eq!(kinds_for(&s, &sponsor, &request_id).await, ["approval.requested", "approval.expired"]);
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn a_scoped_grant_allows_a_bounded_number_of_similar_calls() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("granter").await;
    let (_, key) = asking_agent(&s, &sponsor, "repeat").await;
    let call =
        |path: &str, method: &str| json!({"method": method, "url": mock.url(path), "cost_micros": 100});
    let r = s.post("/api/proxy/execute", Some(&key), call("/counted", "POST")).await;
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();

    let bad = s
        .post(
            &format!("/api/approvals/{approval_id}/approve"),
            Some(&sponsor.access),
            json!({"grant": {"max_actions": 0, "minutes": 5}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    let r = s
        .post(
            &format!("/api/approvals/{approval_id}/approve"),
            Some(&sponsor.access),
            json!({"grant": {"max_actions": 3, "minutes": 5, "max_micros": 200}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["grant"]["max_actions"], 3);

    // Same method and host: allowed until the money cap (200 = two calls of 100).
    for _ in 0..2 {
        let r = s.post("/api/proxy/execute", Some(&key), call("/echo/again", "POST")).await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    let r = s.post("/api/proxy/execute", Some(&key), call("/echo/again", "POST")).await;
    assert_eq!(r.body["decision"], "pending_approval", "the grant's money cap is spent");
    let r = s.post("/api/proxy/execute", Some(&key), call("/echo/again", "GET")).await;
    assert_eq!(r.body["decision"], "pending_approval", "another method is not covered");
    let g = s.get(&format!("/api/approvals/{approval_id}"), &sponsor.access).await;
    assert_eq!(
        (g.body["grant"]["used_actions"].as_i64(), g.body["grant"]["spent_micros"].as_i64()),
        (Some(2), Some(200))
    );
}
