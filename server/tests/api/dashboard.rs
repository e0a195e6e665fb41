//! Sessions (`/api/auth/sessions`) and the overview's numbers (`/api/dashboard/stats`),
//! the latter from real calls through the proxy to a mock upstream.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::mock::MockUpstream;
use crate::support::{PASSWORD, Sponsor, TestServer, read};

#[tokio::test]
async fn sessions_are_listed_and_revoked_sessions_stop_working() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("sessions").await; // session A (registration)
    // Session B: a sign-in from another browser.
    let login = s
        .http
        .post(s.url("/api/auth/login"))
        .header("user-agent", "OtherBrowser/2.0")
        .json(&json!({"email": sponsor.email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let b = read(login).await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    let (b_access, b_refresh) = (
        b.body["access_token"].as_str().unwrap().to_owned(),
        b.body["refresh_token"].as_str().unwrap().to_owned(),
    );

    let r = s.get("/api/auth/sessions", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 2, "{}", r.text);
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{}", r.text);
    let a_id = current[0]["id"].as_str().unwrap().to_owned();
    let other = list.iter().find(|s| s["current"] == false).unwrap();
    assert_eq!(other["user_agent"], "OtherBrowser/2.0");
    assert!(other["created_at"].is_string() && other["last_used_at"].is_string(), "{other}");
    let b_id = other["id"].as_str().unwrap().to_owned();

    // Another sponsor can neither see nor revoke them.
    let stranger = s.sponsor("stranger").await;
    let r = s.get("/api/auth/sessions", &stranger.access).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = s.send(Method::DELETE, &format!("/api/auth/sessions/{b_id}"), Some(&stranger.access), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = s.post("/api/auth/refresh", None, json!({"refresh_token": b_refresh})).await;
    assert_eq!(r.status, StatusCode::OK, "B still works: {}", r.text);
    let b_refresh = r.body["refresh_token"].as_str().unwrap().to_owned();
    let b_access_2 = r.body["access_token"].as_str().unwrap().to_owned();

    // Revoking B ends it at once: its refresh token and its access tokens.
    let r = s.send(Method::DELETE, &format!("/api/auth/sessions/{b_id}"), Some(&sponsor.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = s.post("/api/auth/refresh", None, json!({"refresh_token": b_refresh})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
    for token in [&b_access, &b_access_2] {
        assert_eq!(s.get("/api/auth/me", token).await.status, StatusCode::UNAUTHORIZED);
    }
    let r = s.get("/api/auth/sessions", &sponsor.access).await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{}", r.text);
    // Already revoked, or never existed: not found.
    let r = s.send(Method::DELETE, &format!("/api/auth/sessions/{b_id}"), Some(&sponsor.access), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.send(Method::DELETE, "/api/auth/sessions/not-a-uuid", Some(&sponsor.access), None).await;
    assert!(r.status.is_client_error(), "{}", r.text);

    // Revoking the current session signs out.
    let r = s.send(Method::DELETE, &format!("/api/auth/sessions/{a_id}"), Some(&sponsor.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/api/auth/me", &sponsor.access).await.status, StatusCode::UNAUTHORIZED);
    let r = s.post("/api/auth/refresh", None, json!({"refresh_token": sponsor.refresh})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

fn sum(series: &[Value], field: &str) -> i64 {
    series.iter().map(|b| b[field].as_i64().unwrap()).sum()
}

#[tokio::test]
async fn dashboard_stats_count_what_agents_did() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let sponsor = s.sponsor("stats").await;

    // Nothing yet: zeros, every tier and every bucket present.
    let r = s.get("/api/dashboard/stats", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["range"].as_str(), r.body["actions_today"].as_i64()), (Some("24h"), Some(0)));
    assert_eq!(r.body["series"].as_array().unwrap().len(), 24);
    assert_eq!(r.body["trust_tiers"].as_array().unwrap().len(), 5);

    let (_, spender) = s.agent_with(
        &sponsor,
        json!({"name": "spender", "policy": "permissive", "daily_limit_micros": 1_000_000, "monthly_limit_micros": 5_000_000}),
    )
    .await;
    let nope = s
        .post(
            "/api/policies",
            Some(&sponsor.access),
            json!({"name": "nope", "source": "package aegis\ndecision := \"deny\""}),
        )
        .await;
    assert_eq!(nope.status, StatusCode::CREATED, "{}", nope.text);
    let (refused_id, refused) = s.agent_with(&sponsor, json!({"name": "refused", "policy": "nope"})).await;
    let (_, careful) = s.agent_with(&sponsor, json!({"name": "careful"})).await; // the default policy

    for _ in 0..3 {
        let r = s
            .execute(&spender, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 100_000}))
            .await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    // Denied by egress, by budget, and by policy; an upstream that cannot be reached.
    let r = s.execute(&spender, json!({"method": "GET", "url": "http://10.0.0.1/"})).await;
    assert_eq!(r.body["stage"], "egress", "{}", r.text);
    let r =
        s.execute(&spender, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 900_000})).await;
    assert_eq!(r.body["stage"], "budget", "{}", r.text);
    let r = s.execute(&refused, json!({"method": "GET", "url": mock.url("/echo")})).await;
    assert_eq!(r.body["stage"], "policy", "{}", r.text);
    let r = s.execute(&spender, json!({"method": "GET", "url": "http://127.0.0.1:1/"})).await;
    assert_eq!(r.body["decision"], "error", "{}", r.text);
    // Waiting for a human: pending, not yet an action.
    let r = s.execute(&careful, json!({"method": "DELETE", "url": mock.url("/echo")})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = s.post(&format!("/api/agents/{refused_id}/suspend"), Some(&sponsor.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    for (range, buckets) in [("24h", 24), ("30d", 30)] {
        let r = s.get(&format!("/api/dashboard/stats?range={range}"), &sponsor.access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let b = &r.body;
        assert_eq!(b["range"], range);
        assert_eq!(b["actions_today"], 7, "{}", r.text);
        let mut stages: Vec<(String, i64)> = b["denials_by_stage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["stage"].as_str().unwrap().to_owned(), d["count"].as_i64().unwrap()))
            .collect();
        stages.sort();
        assert_eq!(stages, [("budget".into(), 1), ("egress".into(), 1), ("policy".into(), 1)]);
        assert_eq!(
            b["spend"],
            json!({"today_micros": 300_000, "month_micros": 300_000, "daily_limit_micros": 1_000_000,
                   "monthly_limit_micros": 5_000_000, "unlimited_agents": 2})
        );
        assert_eq!((b["pending_approvals"].as_i64(), b["suspended_agents"].as_i64()), (Some(1), Some(1)));
        assert_eq!(b["active_agents"], 2);
        let tiers: i64 =
            b["trust_tiers"].as_array().unwrap().iter().map(|t| t["count"].as_i64().unwrap()).sum();
        assert_eq!(tiers, 3);
        let series = b["series"].as_array().unwrap();
        assert_eq!(series.len(), buckets);
        assert_eq!(
            (sum(series, "allow"), sum(series, "deny"), sum(series, "error"), sum(series, "spend_micros")),
            (3, 3, 1, 300_000),
            "{range}"
        );
        let starts: Vec<&str> = series.iter().map(|b| b["start"].as_str().unwrap()).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "oldest first: {starts:?}");
        let latest = b["latest"].as_array().unwrap();
        assert_eq!(latest.len(), 10);
        assert!(latest.windows(2).all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64()), "newest first");
    }

    // Another sponsor sees none of it.
    let other = s.sponsor("stats-other").await;
    let r = s.get("/api/dashboard/stats?range=30d", &other.access).await;
    assert_eq!(
        (r.body["actions_today"].as_i64(), r.body["latest"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    assert_eq!(r.body["spend"]["today_micros"], 0);

    let r = s.get("/api/dashboard/stats?range=7d", &sponsor.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_range"));
    let r = s.send(Method::GET, "/api/dashboard/stats", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// The pages render on the server with the same numbers (no WebAssembly needed).
#[tokio::test]
async fn overview_policies_and_account_pages_render_server_side() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let sponsor = s.sponsor("pages").await;
    let page = |path: &str| {
        let path = path.to_owned();
        let req = s.http.get(s.url(&path)).header("cookie", format!("aegis_at={}", sponsor.access));
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            r.text().await.unwrap()
        }
    };

    let empty = page("/").await;
    assert!(empty.contains("No agents yet") && empty.contains("No agent calls in this period."), "{empty}");
    assert!(!empty.contains("<svg"), "no chart without data");

    let (_, key) = s.agent_with(&sponsor, json!({"name": "pages-bot"})).await;
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 250_000})).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": "http://10.0.0.1/"})).await;
    assert_eq!(r.body["stage"], "egress", "{}", r.text);

    for path in ["/", "/?range=30d"] {
        let html = page(path).await;
        for needle in [
            "id=\"spend-chart\"",
            "id=\"actions-chart\"",
            "<title id=\"actions-chart-title\">Actions over time: 1 allowed, 1 denied, 0 errors.</title>",
            "class=\"bar allow\"",
            "class=\"bar deny\"",
            "data-stage=\"egress\"",
            "$0.25",
            "id=\"latest-events\"",
        ] {
            assert!(html.contains(needle), "{path} lacks {needle}");
        }
    }
    let policies = page("/policies").await;
    for needle in ["data-policy=\"default\"", "data-policy=\"permissive\"", "playground-form", "pages-bot"] {
        assert!(policies.contains(needle), "/policies lacks {needle}");
    }
    let default = policies_id(&s, &sponsor, "default").await;
    let builtin = page(&format!("/policies?id={default}")).await;
    assert!(builtin.contains("read-only") && builtin.contains("writes need approval below trust 700"));
    let account = page("/account").await;
    assert!(account.contains("this session") && account.contains("data-current=\"true\""), "{account}");
}

async fn policies_id(s: &TestServer, sponsor: &Sponsor, name: &str) -> String {
    let r = s.get("/api/policies", &sponsor.access).await;
    let list = r.body.as_array().unwrap();
    list.iter().find(|p| p["name"] == name).unwrap()["id"].as_str().unwrap().to_owned()
}
