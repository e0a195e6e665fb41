//! The circuit breaker over real HTTP: detectors trip it, trips suspend, half-open
//! probes recover, cool-downs escalate, sponsors override, the fleet guard holds.

use reqwest::StatusCode;
use serde_json::json;

use crate::mock::MockUpstream;
use crate::support::{Sponsor, TestServer};

const FAST_BREAKER: &[(&str, &str)] = &[
    ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
    ("AEGIS_BREAKER_MIN_SAMPLES", "4"),
    ("AEGIS_BREAKER_COOLDOWN_SECS", "1"),
    ("AEGIS_BREAKER_PROBES", "2"),
];

async fn permissive(s: &TestServer, sponsor: &Sponsor, name: &str) -> (String, String) {
    let r = s.post("/api/agents", Some(&sponsor.access), json!({"name": name, "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned())
}

/// A call the egress guard blocks (a private address): a denial.
async fn blocked(s: &TestServer, key: &str) -> crate::support::Response {
    s.post("/api/proxy/execute", Some(key), json!({"method": "GET", "url": "http://10.1.2.3/"})).await
}

async fn good(s: &TestServer, key: &str, mock: &MockUpstream) -> crate::support::Response {
    s.post("/api/proxy/execute", Some(key), json!({"method": "GET", "url": mock.url("/echo/fine")})).await
}

async fn status(s: &TestServer, sponsor: &Sponsor, id: &str) -> (String, String) {
    let a = s.get(&format!("/api/agents/{id}"), &sponsor.access).await;
    (
        a.body["status"].as_str().unwrap().to_owned(),
        a.body["suspended_reason"].as_str().unwrap_or("").to_owned(),
    )
}

#[tokio::test]
async fn a_denial_storm_trips_the_breaker_and_probes_bring_the_agent_back() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(FAST_BREAKER).await;
    let sponsor = s.sponsor("breaker").await;
    let mut feed = s.running.services.events.subscribe(sponsor.id.parse().unwrap(), None);
    let (id, key) = permissive(&s, &sponsor, "stormy").await;

    for _ in 0..4 {
        assert_eq!(blocked(&s, &key).await.body["stage"], "egress");
    }
    let (state, reason) = status(&s, &sponsor, &id).await;
    assert_eq!(state, "suspended");
    assert!(reason.starts_with("circuit breaker: denial rate: 4 of 4"), "{reason}");
    let r = good(&s, &key, &mock).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("breaker")), "{}", r.text);
    assert!(r.body["reason"].as_str().unwrap().contains("probe calls are let through from"));

    let mut kinds = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await {
        kinds.push(e.kind);
    }
    assert!(kinds.contains(&"breaker.tripped".to_owned()), "{kinds:?}");
    let trust = s.get(&format!("/api/agents/{id}/trust"), &sponsor.access).await;
    assert!(trust.text.contains("breaker_trip"), "{}", trust.text);
    let audit = s.get("/api/audit?kind=breaker.tripped", &sponsor.access).await;
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 1);

    // After the cool-down (1 s × 1 trip) two good probes close the breaker.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..2 {
        let r = good(&s, &key, &mock).await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    assert_eq!(status(&s, &sponsor, &id).await.0, "active");
    assert_eq!(good(&s, &key, &mock).await.body["decision"], "allow");

    // Second trip: the cool-down is now 2 s, and a failing probe trips it again.
    for _ in 0..4 {
        blocked(&s, &key).await;
    }
    assert_eq!(status(&s, &sponsor, &id).await.0, "suspended");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(good(&s, &key, &mock).await.body["stage"], "breaker", "1 s is not enough after two trips");
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(blocked(&s, &key).await.body["stage"], "egress", "a probe is let through…");
    assert_eq!(good(&s, &key, &mock).await.body["stage"], "breaker", "…and its failure trips it again");
    let audit = s.get("/api/audit?kind=breaker.tripped", &sponsor.access).await;
    assert_eq!(audit.body["items"].as_array().unwrap().len(), 3);

    // The sponsor can always resume at once.
    let r = s.post(&format!("/api/agents/{id}/resume"), Some(&sponsor.access), json!({})).await;
    assert_eq!(r.body["status"], "active", "{}", r.text);
    assert_eq!(good(&s, &key, &mock).await.body["decision"], "allow");
    assert_eq!(s.get("/api/audit/verify", &sponsor.access).await.body["valid"], true);
}

#[tokio::test]
async fn failing_upstreams_trip_the_breaker() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(FAST_BREAKER).await;
    let sponsor = s.sponsor("errors").await;
    let (id, key) = permissive(&s, &sponsor, "unlucky").await;
    for _ in 0..4 {
        let r = s
            .post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": mock.url("/status/503")}))
            .await;
        assert_eq!(r.body["decision"], "allow", "an upstream 5xx is still a performed call");
    }
    let (state, reason) = status(&s, &sponsor, &id).await;
    assert_eq!(state, "suspended");
    assert!(reason.contains("upstream error rate: 4 of 4"), "{reason}");
}

#[tokio::test]
async fn the_fleet_guard_never_lets_trips_suspend_most_agents() {
    let s = TestServer::start_with(&[
        ("AEGIS_BREAKER_MIN_SAMPLES", "4"),
        ("AEGIS_BREAKER_FLEET_MIN_AGENTS", "2"),
        ("AEGIS_BREAKER_FLEET_MAX_PCT", "50"),
    ])
    .await;
    let sponsor = s.sponsor("fleet").await;
    let (a, key_a) = permissive(&s, &sponsor, "a").await;
    let (b, key_b) = permissive(&s, &sponsor, "b").await;
    for _ in 0..4 {
        blocked(&s, &key_a).await;
    }
    assert_eq!(status(&s, &sponsor, &a).await.0, "suspended", "1 of 2 agents is within 50%");
    for _ in 0..6 {
        blocked(&s, &key_b).await;
    }
    assert_eq!(status(&s, &sponsor, &b).await.0, "active", "2 of 2 would exceed 50%: held");
    let held = s.get("/api/audit?kind=breaker.held", &sponsor.access).await;
    assert_eq!(held.body["items"].as_array().unwrap().len(), 1, "announced once per window: {}", held.text);
}

/// With Redis shared, a replica's detectors see the other replica's calls: two
/// denials on each of two replicas trip the breaker (4 samples, 100% denied).
#[tokio::test]
async fn detectors_see_the_whole_fleet_through_redis() {
    let (Ok(_), Ok(redis)) =
        (std::env::var("AEGIS_TEST_DATABASE_URL"), std::env::var("AEGIS_TEST_REDIS_URL"))
    else {
        eprintln!(
            "SKIPPED detectors_see_the_whole_fleet_through_redis: needs AEGIS_TEST_DATABASE_URL and AEGIS_TEST_REDIS_URL"
        );
        return;
    };
    let vars = [("AEGIS_BREAKER_MIN_SAMPLES", "4"), ("REDIS_URL", redis.as_str())];
    let a = TestServer::start_with(&vars).await;
    let b = TestServer::start_sharing(&a, &vars).await;
    let sponsor = a.sponsor("shared").await;
    let (id, key) = permissive(&a, &sponsor, "split").await;
    for s in [&a, &b, &a] {
        assert_eq!(blocked(s, &key).await.body["stage"], "egress");
    }
    assert_eq!(status(&a, &sponsor, &id).await.0, "active", "3 samples: not yet");
    blocked(&b, &key).await;
    let (state, reason) = status(&a, &sponsor, &id).await;
    assert_eq!(state, "suspended", "the 4th denial, on the other replica, completes the window");
    assert!(reason.contains("4 of 4"), "{reason}");
}

/// Redis unreachable from the start: AEGIS serves, and detectors run on local state.
#[tokio::test]
async fn without_redis_the_breaker_runs_on_local_state() {
    // Nothing listens on port 1.
    let s =
        TestServer::start_with(&[("AEGIS_BREAKER_MIN_SAMPLES", "4"), ("REDIS_URL", "redis://127.0.0.1:1")])
            .await;
    let sponsor = s.sponsor("offline").await;
    let (id, key) = permissive(&s, &sponsor, "local").await;
    for _ in 0..4 {
        assert_eq!(blocked(&s, &key).await.body["stage"], "egress");
    }
    assert_eq!(status(&s, &sponsor, &id).await.0, "suspended");
}
