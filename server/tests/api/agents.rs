//! Agents API: CRUD, keys, suspend/resume, delete, pagination and cross-sponsor
//! isolation on every route.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn create_shows_the_key_once_and_the_key_authenticates() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("owner").await;
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "billing-bot", "description": "pays invoices", "policy": "permissive",
                   "daily_limit_micros": 5_000_000, "monthly_limit_micros": 50_000_000, "tags": ["Prod", "finance"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let agent = &r.body["agent"];
    assert!(key.starts_with("aegis_") && key.len() == 6 + 64, "{key}");
    assert_eq!(agent["status"], "active");
    assert_eq!(agent["policy"], "permissive");
    assert_eq!(agent["trust_score"], 500);
    assert_eq!(agent["daily_limit_micros"], 5_000_000);
    assert_eq!(agent["monthly_limit_micros"], 50_000_000);
    assert_eq!(agent["tags"], json!(["prod", "finance"]));
    assert!(key.starts_with(agent["key_prefix"].as_str().unwrap()));
    let id = agent["id"].as_str().unwrap();

    let list = s.get("/api/agents", &sponsor.access).await;
    assert_eq!(list.body["items"][0]["id"], id);
    let one = s.get(&format!("/api/agents/{id}"), &sponsor.access).await;
    assert_eq!(one.body["name"], "billing-bot");
    for later in [&list.text, &one.text] {
        assert!(!later.contains(&key), "the key is never shown again");
    }

    let me = s.get("/api/agent/me", &key).await;
    assert_eq!((me.status, me.body["id"].as_str()), (StatusCode::OK, Some(id)));
    let via_header = s.http.get(s.url("/api/agent/me")).header("x-api-key", &key).send().await.unwrap();
    assert_eq!(via_header.status(), StatusCode::OK);
    let mut wrong = key.clone();
    wrong.replace_range(key.len() - 4.., "0000");
    let r = s.get("/api/agent/me", &wrong).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_api_key"));
    assert_eq!(
        s.get("/api/agent/me", &sponsor.access).await.status,
        StatusCode::UNAUTHORIZED,
        "a sponsor token is not an agent key"
    );
    assert_eq!(
        s.get("/api/agents", &key).await.status,
        StatusCode::UNAUTHORIZED,
        "an agent key is not a sponsor token"
    );
}

#[tokio::test]
async fn defaults_update_and_conflicts() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("owner").await;
    let (agent, _) = s.agent(&sponsor, "alpha").await;
    assert_eq!(agent["policy"], "default");
    assert_eq!(agent["daily_limit_micros"], 0);
    s.agent(&sponsor, "beta").await;
    let id = agent["id"].as_str().unwrap();
    let path = format!("/api/agents/{id}");

    let r = s.send(Method::PATCH, &path, Some(&sponsor.access), Some(json!({
        "name": "alpha-2", "description": "new", "policy": "permissive", "daily_limit_micros": 7, "tags": ["x"]
    }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.body["name"].as_str(), r.body["policy"].as_str()), (Some("alpha-2"), Some("permissive")));
    assert_eq!(
        (r.body["daily_limit_micros"].as_i64(), r.body["monthly_limit_micros"].as_i64()),
        (Some(7), Some(0))
    );
    let cleared = s.send(Method::PATCH, &path, Some(&sponsor.access), Some(json!({"description": ""}))).await;
    assert!(cleared.body["description"].is_null());

    let taken = s.send(Method::PATCH, &path, Some(&sponsor.access), Some(json!({"name": "beta"}))).await;
    assert_eq!((taken.status, taken.code()), (StatusCode::CONFLICT, "agent_name_taken"));
    let dup = s.post("/api/agents", Some(&sponsor.access), json!({"name": "beta"})).await;
    assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "agent_name_taken"));
    let unknown =
        s.post("/api/agents", Some(&sponsor.access), json!({"name": "gamma", "policy": "nope"})).await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::UNPROCESSABLE_ENTITY, "unknown_policy"));
    let negative = s
        .post("/api/agents", Some(&sponsor.access), json!({"name": "gamma", "daily_limit_micros": -1}))
        .await;
    assert_eq!((negative.status, negative.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"));

    // Another sponsor may use the same names.
    let other = s.sponsor("other").await;
    s.agent(&other, "beta").await;
}

#[tokio::test]
async fn rotation_suspension_and_deletion() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("owner").await;
    let (agent, old_key) = s.agent(&sponsor, "rotating").await;
    let id = agent["id"].as_str().unwrap();

    let rotated = s.send(Method::POST, &format!("/api/agents/{id}/keys"), Some(&sponsor.access), None).await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    let new_key = rotated.body["api_key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(
        s.get("/api/agent/me", &old_key).await.status,
        StatusCode::UNAUTHORIZED,
        "old key stops working"
    );
    assert_eq!(s.get("/api/agent/me", new_key).await.status, StatusCode::OK);

    let suspended = s
        .post(&format!("/api/agents/{id}/suspend"), Some(&sponsor.access), json!({"reason": "looks odd"}))
        .await;
    assert_eq!(
        (suspended.body["status"].as_str(), suspended.body["suspended_reason"].as_str()),
        (Some("suspended"), Some("looks odd"))
    );
    let me = s.get("/api/agent/me", new_key).await;
    assert_eq!(me.body["status"], "suspended");
    let bare = s.send(Method::POST, &format!("/api/agents/{id}/suspend"), Some(&sponsor.access), None).await;
    assert_eq!(bare.status, StatusCode::OK, "suspending twice is harmless: {}", bare.text);
    let resumed =
        s.send(Method::POST, &format!("/api/agents/{id}/resume"), Some(&sponsor.access), None).await;
    assert_eq!(resumed.body["status"], "active");
    assert!(resumed.body["suspended_at"].is_null());

    let deleted = s.send(Method::DELETE, &format!("/api/agents/{id}"), Some(&sponsor.access), None).await;
    assert_eq!((deleted.status, deleted.body["status"].as_str()), (StatusCode::OK, Some("revoked")));
    assert_eq!(s.get("/api/agent/me", new_key).await.status, StatusCode::UNAUTHORIZED, "keys revoked");
    let list = s.get("/api/agents", &sponsor.access).await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 0);
    let kept = s.get(&format!("/api/agents/{id}"), &sponsor.access).await;
    assert_eq!(
        (kept.status, kept.body["status"].as_str()),
        (StatusCode::OK, Some("revoked")),
        "history kept"
    );
    for (method, path) in [
        (Method::PATCH, format!("/api/agents/{id}")),
        (Method::POST, format!("/api/agents/{id}/keys")),
        (Method::POST, format!("/api/agents/{id}/resume")),
        (Method::POST, format!("/api/agents/{id}/suspend")),
    ] {
        let r = s.send(method, &path, Some(&sponsor.access), Some(json!({}))).await;
        assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "agent_revoked"), "{path}");
    }
    s.agent(&sponsor, "rotating").await; // the name is free again
}

#[tokio::test]
async fn pagination_walks_every_agent_once() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("pager").await;
    for i in 0..5 {
        s.agent(&sponsor, &format!("agent-{i}")).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/agents?limit=2&cursor={c}"),
            None => "/api/agents?limit=2".into(),
        };
        let page = s.get(&path, &sponsor.access).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let items = page.body["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|a| a["name"].as_str().unwrap().to_owned()));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["agent-4", "agent-3", "agent-2", "agent-1", "agent-0"], "newest first, each once");
    let bad = s.get("/api/agents?cursor=garbage", &sponsor.access).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_cursor"));
    let bad = s.get("/api/agents?limit=0", &sponsor.access).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_limit"));
    // The documented range is 1..=200: beyond it is refused, as the OpenAPI schema says.
    for limit in ["201", "100000", "2147483648"] {
        let bad = s.get(&format!("/api/agents?limit={limit}"), &sponsor.access).await;
        assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_limit"), "limit={limit}");
    }
    let full = s.get("/api/agents?limit=200", &sponsor.access).await;
    assert_eq!(full.body["items"].as_array().unwrap().len(), 5);
    let bad = s.get("/api/agents?limit=lots", &sponsor.access).await;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_query"));
}

/// Sponsor B gets 404 — not 403 — on every route for sponsor A's agent, and nothing
/// about A's agent changes.
#[tokio::test]
async fn sponsors_never_see_or_touch_each_others_agents() {
    let s = TestServer::start().await;
    let a = s.sponsor("a").await;
    let b = s.sponsor("b").await;
    let (agent, key) = s.agent(&a, "private").await;
    let id = agent["id"].as_str().unwrap();
    let before = s.get(&format!("/api/agents/{id}"), &a.access).await.text;

    let routes = [
        (Method::GET, format!("/api/agents/{id}"), None),
        (Method::PATCH, format!("/api/agents/{id}"), Some(json!({"name": "stolen"}))),
        (Method::DELETE, format!("/api/agents/{id}"), None),
        (Method::POST, format!("/api/agents/{id}/keys"), None),
        (Method::POST, format!("/api/agents/{id}/suspend"), None),
        (Method::POST, format!("/api/agents/{id}/resume"), None),
    ];
    for (method, path, body) in routes {
        let r = s.send(method.clone(), &path, Some(&b.access), body).await;
        assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{method} {path}");
    }
    let listed = s.get("/api/agents", &b.access).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0);
    assert!(!listed.text.contains(id));
    let after = s.get(&format!("/api/agents/{id}"), &a.access).await.text;
    assert_eq!(before, after, "A's agent unchanged");
    assert_eq!(s.get("/api/agent/me", &key).await.status, StatusCode::OK, "A's key still works");

    // A random id behaves exactly like a foreign one.
    let random = uuid::Uuid::now_v7();
    let r = s.get(&format!("/api/agents/{random}"), &b.access).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
