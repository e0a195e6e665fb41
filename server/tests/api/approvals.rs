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

    // The agent polls; the sponsor's list shows the request without header values or body.
    let poll = format!("/api/proxy/approvals/{approval_id}");
    let r = s.get(&poll, &key).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("pending")), "{}", r.text);
    assert_eq!(r.body["request_id"], request_id.as_str());
    let r = s.get("/api/approvals?status=pending", &sponsor.access).await;
    let item = &r.body["items"][0];
    assert_eq!(item["id"], approval_id.as_str());
    assert_eq!((item["method"].as_str(), item["agent_name"].as_str()), (Some("POST"), Some("careful")));
    assert_eq!(item["header_names"], json!(["authorization", "x-trace"]));
    assert_eq!((item["body_bytes"].as_u64(), &item["body"]), (Some(17), &Value::Null));
    assert_eq!(item["request_id"], request_id.as_str());
    assert_eq!((item["cost_micros"].as_i64(), item["trust_at_request"].as_i64()), (Some(1234), Some(500)));
    assert!(!r.text.contains("agent-own-token") && !r.text.contains("t-1"), "header values are not listed");
    // One approval shows it all: the whole body and every header, credentials masked.
    let r = s.get(&format!("/api/approvals/{approval_id}"), &sponsor.access).await;
    assert_eq!(r.body["body"], "{\"title\":\"hello\"}", "{}", r.text);
    assert_eq!(
        r.body["headers"],
        json!([{"name": "authorization", "value": "••••••", "masked": true, "injected": false},
               {"name": "x-trace", "value": "t-1", "masked": false, "injected": false}])
    );
    assert!(!r.text.contains("agent-own-token"));
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
    assert_eq!(detail["approver_role"], "owner", "{}", r.text);
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

/// p99 (the 99th percentile, nearest rank) of `samples`, in milliseconds.
fn p99(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() * 99).div_ceil(100)).saturating_sub(1)]
}

/// `n` sequential execute calls by `key`, each timed.
async fn execute_latencies(s: &TestServer, key: &str, url: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let r = s.post("/api/proxy/execute", Some(key), json!({"method": "GET", "url": url})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

/// Item 6: a hundred long-polls held on one approval (with a large parked body)
/// wait on a notification: another tenant's execute p99 measured before and while
/// they wait stays within a generous ratio (the old 200 ms re-read-and-decrypt loop
/// kept both cores busy), and every waiter hears of the decision at once.
#[tokio::test]
async fn a_hundred_waits_on_one_approval_do_not_slow_another_tenant() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_APPROVAL_MAX_WAITS", "100")]).await;
    let alice = s.sponsor("waiting-tenant").await;
    let (_, asking) = asking_agent(&s, &alice, "asker").await;
    let bob = s.sponsor("busy-tenant").await;
    let (_, busy) = s.agent_with(&bob, json!({"name": "worker", "policy": "permissive"})).await;
    let echo = mock.url("/echo/fast");

    // A parked request with a large body (under the 1 MiB cap).
    let body = "b".repeat(900 * 1024);
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&asking),
            json!({"method": "POST", "url": mock.url("/counted"), "body": body}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();

    execute_latencies(&s, &busy, &echo, 10).await; // warm up
    let before = p99(execute_latencies(&s, &busy, &echo, 60).await);

    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let (http, url, key) = (
                s.http.clone(),
                s.url(&format!("/api/proxy/approvals/{approval_id}?wait=60")),
                asking.clone(),
            );
            tokio::spawn(async move {
                crate::support::read(http.get(url).bearer_auth(key).send().await.unwrap()).await
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let during = p99(execute_latencies(&s, &busy, &echo, 60).await);
    // Every one of the other tenant's calls was answered (execute_latencies asserts
    // 200). How much the waits cost it in time is a benchmark's number, printed here
    // and by `make bench-isolation`, never asserted: one storage stall on a noisy VM
    // moves a p99 more than any regression would.
    eprintln!(
        "[isolation] approvals: other tenant's execute p99 {before:.1} ms before, {during:.1} ms while 100 polls wait"
    );

    assert!(waiters.iter().all(|w| !w.is_finished()), "the waits are held");
    let decided = std::time::Instant::now();
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&alice.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for w in waiters {
        let r = w.await.unwrap();
        assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("approved")), "{}", r.text);
        assert_eq!(r.body["outcome"]["status"], 200, "{}", r.text);
    }
    assert!(decided.elapsed() < std::time::Duration::from_secs(4), "woken by the decision, not a timer");
    assert_eq!(mock.hits(), 1);
}

/// Item 6: an agent holds at most `AEGIS_APPROVAL_MAX_WAITS` long-polls; past that,
/// 429 `approval_waits_exceeded` with `Retry-After` (a plain poll still answers),
/// and a freed place can be taken again.
#[tokio::test]
async fn waits_are_capped_per_agent() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_APPROVAL_MAX_WAITS", "3")]).await;
    let sponsor = s.sponsor("capped").await;
    let (_, key) = asking_agent(&s, &sponsor, "eager").await;
    let (_, other) = asking_agent(&s, &sponsor, "patient").await;
    let park = |key: String| {
        let s = &s;
        let url = mock.url("/counted");
        async move {
            let r = s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": url})).await;
            r.body["approval_id"].as_str().unwrap().to_owned()
        }
    };
    let id = park(key.clone()).await;
    let other_id = park(other.clone()).await;
    let wait = |key: &str, id: &str, secs: u64| {
        let (http, url, key) =
            (s.http.clone(), s.url(&format!("/api/proxy/approvals/{id}?wait={secs}")), key.to_owned());
        tokio::spawn(async move {
            crate::support::read(http.get(url).bearer_auth(key).send().await.unwrap()).await
        })
    };
    let held: Vec<_> = (0..3).map(|_| wait(&key, &id, 3)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = wait(&key, &id, 3).await.unwrap();
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "approval_waits_exceeded"),
        "{}",
        r.text
    );
    assert!(r.headers.get("retry-after").is_some(), "Retry-After is set");
    let r = s.get(&format!("/api/proxy/approvals/{id}"), &key).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("pending")), "no wait, no cap");
    // Another agent has places of its own.
    let r = wait(&other, &other_id, 1).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for h in held {
        assert_eq!(h.await.unwrap().body["status"], "pending");
    }
    let r = wait(&key, &id, 1).await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "places are given back: {}", r.text);
}

/// Item 6: the list and the agent's poll read plain columns only — a row whose
/// sealed request no longer opens is still listed and polled (only performing or
/// showing it in full needs it); and a body over 1 MiB is not parked.
#[tokio::test]
async fn lists_and_polls_never_open_the_sealed_request_and_parked_bodies_are_capped() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("plain").await;
    let (_, key) = asking_agent(&s, &sponsor, "sealed").await;
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "PUT", "url": mock.url("/counted"), "body": "x"}),
        )
        .await;
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let request_id = r.body["request_id"].as_str().unwrap().to_owned();
    {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
        entity::approvals::Entity::update_many()
            .col_expr(
                entity::approvals::Column::RequestJson,
                Expr::value("{\"v\":1,\"nonce\":\"00\",\"sealed\":\"AA==\"}"),
            )
            .filter(entity::approvals::Column::Id.eq(approval_id.parse::<uuid::Uuid>().unwrap()))
            .exec(&s.running.services.db)
            .await
            .unwrap();
    }
    let r = s.get("/api/approvals", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["items"][0]["request_id"], request_id.as_str());
    assert_eq!(r.body["items"][0]["body_bytes"], 1);
    let r = s.get(&format!("/api/proxy/approvals/{approval_id}?wait=1"), &key).await;
    assert_eq!(
        (r.status, r.body["request_id"].as_str()),
        (StatusCode::OK, Some(request_id.as_str())),
        "{}",
        r.text
    );
    // Performing it needs the sealed request: refused, nothing performed.
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&sponsor.access), json!({})).await;
    assert!(r.status.is_server_error(), "{}", r.text);
    assert_eq!(mock.hits(), 0);

    let big = "y".repeat((1 << 20) + 1);
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "POST", "url": mock.url("/counted"), "body": big}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["stage"].as_str(), r.body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("approval"), Some("approval_body_too_large")),
        "{}",
        &r.text[..r.text.len().min(500)]
    );
    let r = s.get("/api/approvals", &sponsor.access).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "nothing parked");
}

/// Size of the SQLite database with its WAL, in bytes (0 on PostgreSQL).
fn sqlite_bytes(s: &TestServer) -> u64 {
    let data = s.running.services.config.data_dir.clone();
    ["aegis.db", "aegis.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(data.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Item 14: idempotency and approval outcomes are stored bounded (64 KiB of body),
/// hashed and sealed: three 10 MB answers do not grow the database by 10 MB each;
/// a replay of a cut answer says so (`body_truncated`, the whole body's size and
/// SHA-256); and the janitor's retention sweep deletes old records.
#[tokio::test]
async fn large_answers_are_stored_bounded_sealed_and_expire() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, sea_query::Expr};
    use sha2::Digest;
    const TEN_MB: usize = 10_000_000;
    let mock = MockUpstream::start().await;
    // The janitor prunes too: kept out of the way (an hour apart) so that the retention
    // below counts what this test's own call pruned, not what a tick took first.
    let s = TestServer::start_with(&[
        ALLOW_LOOPBACK,
        ("AEGIS_UPSTREAM_MAX_BYTES", "12000000"),
        ("AEGIS_JANITOR_INTERVAL_SECS", "3600"),
    ])
    .await;
    let sponsor = s.sponsor("hoarder").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "fetcher", "policy": "permissive"})).await;
    let big = mock.url(&format!("/big?bytes={TEN_MB}"));
    let db = &s.running.services.db;

    // Warm the file up so page growth from unrelated first writes does not count.
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "GET", "url": mock.url("/echo/x"), "idempotency_key": "warm"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let before = sqlite_bytes(&s);
    for k in ["k1", "k2", "k3"] {
        let r = s
            .post(
                "/api/proxy/execute",
                Some(&key),
                json!({"method": "GET", "url": big, "idempotency_key": k}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", &r.text[..300]);
        assert_eq!(
            r.body["upstream"]["body"].as_str().map(str::len),
            Some(TEN_MB),
            "the first answer is whole"
        );
    }
    let grown = sqlite_bytes(&s).saturating_sub(before);
    if !s.on_postgres() {
        eprintln!("three 10 MB idempotent answers grew the SQLite file by {grown} bytes");
        assert!(grown < 3 * (1 << 20), "grew by {grown} bytes for three 10 MB answers");
    }
    let stored: Vec<String> = entity::idempotency_records::Entity::find()
        .select_only()
        .column(entity::idempotency_records::Column::ResponseJson)
        .filter(entity::idempotency_records::Column::IdempotencyKey.is_in(["k1", "k2", "k3"]))
        .into_tuple()
        .all(db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 3);
    for row in &stored {
        assert!(row.len() < 200 * 1024, "a stored answer is {} bytes", row.len());
        assert!(!row.contains("xxxxxxxx"), "stored sealed, not in clear");
    }

    // The replay is honest about what it kept.
    let r = s
        .post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": big, "idempotency_key": "k1"}))
        .await;
    assert_eq!((r.status, &r.body["replayed"]), (StatusCode::OK, &json!(true)), "{}", &r.text[..300]);
    let up = &r.body["upstream"];
    assert_eq!((up["status"].as_u64(), &up["body_truncated"]), (Some(200), &json!(true)));
    assert_eq!(up["body_bytes"].as_u64(), Some(TEN_MB as u64));
    assert_eq!(up["body_sha256"], hex::encode(sha2::Sha256::digest(vec![b'x'; TEN_MB])));
    assert_eq!(up["body"].as_str().map(str::len), Some(64 * 1024));
    assert_eq!(mock.hits(), 0, "/big is not counted; nothing else was called");

    // An approved call's 10 MB outcome is bounded the same way.
    let (_, asking) = asking_agent(&s, &sponsor, "asks").await;
    let r = s.post("/api/proxy/execute", Some(&asking), json!({"method": "GET", "url": big})).await;
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let r = s.post(&format!("/api/approvals/{approval_id}/approve"), Some(&sponsor.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", &r.text[..r.text.len().min(300)]);
    assert_eq!(r.body["outcome"]["body"]["upstream"]["body_truncated"], true);
    let id: uuid::Uuid = approval_id.parse().unwrap();
    let outcome: Option<Option<String>> = entity::approvals::Entity::find_by_id(id)
        .select_only()
        .column(entity::approvals::Column::OutcomeJson)
        .into_tuple()
        .one(db)
        .await
        .unwrap();
    let outcome = outcome.flatten().unwrap();
    assert!(outcome.len() < 200 * 1024 && !outcome.contains("xxxxxxxx"), "{} bytes", outcome.len());

    // Retention: records older than 24 h are deleted; outcomes older than 7 days lose their body.
    let old = chrono::Utc::now() - chrono::Duration::hours(25);
    entity::idempotency_records::Entity::update_many()
        .col_expr(entity::idempotency_records::Column::CreatedAt, Expr::value(old))
        .filter(entity::idempotency_records::Column::IdempotencyKey.is_in(["k1", "k2"]))
        .exec(db)
        .await
        .unwrap();
    entity::approvals::Entity::update_many()
        .col_expr(
            entity::approvals::Column::DecidedAt,
            Expr::value(chrono::Utc::now() - chrono::Duration::days(8)),
        )
        .filter(entity::approvals::Column::Id.eq(id))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(s.running.services.prune_stored_answers().await.unwrap(), 3);
    let left: Vec<String> = entity::idempotency_records::Entity::find()
        .select_only()
        .column(entity::idempotency_records::Column::IdempotencyKey)
        .into_tuple()
        .all(db)
        .await
        .unwrap();
    assert!(!left.contains(&"k1".to_owned()) && left.contains(&"k3".to_owned()), "{left:?}");
    let r = s.get(&format!("/api/approvals/{approval_id}"), &sponsor.access).await;
    assert_eq!(
        (r.body["outcome"]["status"].as_u64(), &r.body["outcome"]["body"]["pruned"]),
        (Some(200), &json!(true)),
        "{}",
        r.text
    );
}

/// Item 15: a grant binds the secret and a path prefix (default: the approved
/// path's directory) as well as agent, method and origin.
#[tokio::test]
async fn a_grant_binds_the_secret_and_a_path_prefix() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("binder").await;
    let (agent_id, key) = asking_agent(&s, &sponsor, "scoped").await;
    for name in ["secret-a", "secret-b"] {
        let r = s
            .post(
                "/api/secrets",
                Some(&sponsor.access),
                json!({
                    "name": name, "value": format!("value-of-{name}"), "allowed_hosts": ["http://127.0.0.1:*"],
                    "inject": {"header": "X-Api-Key", "format": "{secret}"}, "agents": [agent_id]
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let call = |path: &str, secret: Option<&str>| {
        let mut c = json!({"method": "POST", "url": mock.url(path)});
        if let Some(secret) = secret {
            c["secret"] = json!(secret);
        }
        c
    };
    let r = s.post("/api/proxy/execute", Some(&key), call("/echo/v1/things", Some("secret-a"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let approve = format!("/api/approvals/{approval_id}/approve");
    let r = s
        .post(
            &approve,
            Some(&sponsor.access),
            json!({"grant": {"max_actions": 10, "minutes": 5, "path_prefix": "/admin/"}}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a prefix must cover the approved path: {}",
        r.text
    );
    let r = s
        .post(
            &approve,
            Some(&sponsor.access),
            json!({"grant": {"max_actions": 10, "minutes": 5, "path_prefix": "/echo/../"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r =
        s.post(&approve, Some(&sponsor.access), json!({"grant": {"max_actions": 10, "minutes": 5}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["grant"]["path_prefix"].as_str(), r.body["grant"]["secret_name"].as_str()),
        (Some("/echo/v1/"), Some("secret-a"))
    );

    let decision = |r: &crate::support::Response| r.body["decision"].as_str().unwrap_or_default().to_owned();
    let r = s.post("/api/proxy/execute", Some(&key), call("/echo/v1/other", Some("secret-a"))).await;
    assert_eq!(decision(&r), "allow", "same secret, under the prefix: {}", r.text);
    for (path, secret, why) in [
        ("/echo/v1/other", Some("secret-b"), "another secret"),
        ("/echo/v1/other", None, "no secret"),
        ("/echo/admin", Some("secret-a"), "outside the prefix"),
        ("/echo/v10/x", Some("secret-a"), "a sibling that only shares the prefix's letters"),
        ("/echo/v1/../admin", Some("secret-a"), "dot segments are resolved first"),
    ] {
        let r = s.post("/api/proxy/execute", Some(&key), call(path, secret)).await;
        assert_eq!(decision(&r), "pending_approval", "{why}: {}", r.text);
    }
    let g = s.get(&format!("/api/approvals/{approval_id}"), &sponsor.access).await;
    assert_eq!(g.body["grant"]["used_actions"], 1);
}

/// Item 15: one approval shows where the call really goes (the normalised URL: a
/// backslash does not make `api.example.com` a subdomain), every header with the
/// injected secret masked, and the whole body — not a 2 KiB preview.
#[tokio::test]
async fn the_sponsor_sees_the_normalised_url_full_headers_and_whole_body() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("viewer").await;
    let (agent_id, key) = asking_agent(&s, &sponsor, "shown").await;
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({
                "name": "api", "value": "sk-very-secret-value", "allowed_hosts": ["http://127.0.0.1:*"],
                "inject": {"header": "X-Api-Key", "format": "{secret}"}, "agents": [agent_id]
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let tricky = mock.url("\\.api.example.com/v1/x");
    let body = "z".repeat(5000);
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({
                "method": "POST", "url": tricky, "secret": "api", "body": body,
                "headers": {"X-Api-Key": "agent-supplied", "X-Trace": "trace-7", "Cookie": "sid=agent-cookie"}
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();

    let r = s.get(&format!("/api/approvals/{approval_id}"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let target = &r.body["target"];
    assert_eq!(
        (target["host"].as_str(), target["host_unicode"].as_str()),
        (Some("127.0.0.1"), Some("127.0.0.1"))
    );
    assert_eq!(target["path"], "/.api.example.com/v1/x");
    assert!(!target["url"].as_str().unwrap().contains('\\'), "{target}");
    assert_eq!(
        target["port"].as_u64(),
        Some(u64::from(url::Url::parse(&mock.url("/")).unwrap().port().unwrap()))
    );
    assert_eq!(r.body["body"].as_str().map(str::len), Some(5000), "the whole body");
    let headers = r.body["headers"].as_array().unwrap();
    let find = |name: &str| headers.iter().find(|h| h["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(find("x-trace")["value"], "trace-7");
    assert_eq!(
        (find("cookie")["masked"].as_bool(), find("cookie")["value"].as_str()),
        (Some(true), Some("••••••"))
    );
    let injected = find("x-api-key");
    assert_eq!(
        (injected["injected"].as_bool(), injected["masked"].as_bool()),
        (Some(true), Some(true)),
        "{}",
        r.text
    );
    assert_eq!(headers.iter().filter(|h| h["name"] == "x-api-key").count(), 1, "the agent's own is replaced");
    assert!(
        !r.text.contains("sk-very-secret-value")
            && !r.text.contains("agent-cookie")
            && !r.text.contains("agent-supplied")
    );
    // The list carries the normalised target too, but no body or headers.
    let r = s.get("/api/approvals", &sponsor.access).await;
    assert_eq!(r.body["items"][0]["target"]["host"], "127.0.0.1");
    assert!(r.body["items"][0]["headers"].is_null() && r.body["items"][0]["body"].is_null());
}
