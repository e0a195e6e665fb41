//! Budgets are exact under concurrency: the reservation is one conditional UPDATE.

use serde_json::json;

use crate::support::TestServer;

#[tokio::test]
async fn concurrent_reservations_never_overspend() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("money").await;
    let r = s
        .post("/api/agents", Some(&sponsor.access), json!({"name": "racer", "daily_limit_micros": 5_000_000}))
        .await;
    let agent: uuid::Uuid = r.body["agent"]["id"].as_str().unwrap().parse().unwrap();
    let wallets = s.running.services.wallets.clone();

    let attempts = (0..1000).map(|i| {
        let wallets = wallets.clone();
        tokio::spawn(async move { wallets.reserve(agent, &format!("req-{i}"), 100_000).await })
    });
    let mut held = Vec::new();
    for (i, task) in attempts.enumerate() {
        if matches!(task.await.unwrap().unwrap(), server::wallets::Reservation::Held) {
            held.push(i);
        }
    }
    assert_eq!(held.len(), 50, "exactly 5,000,000 / 100,000 reservations fit");
    let wallet = wallets.get(agent).await.unwrap().unwrap();
    assert_eq!(wallet.reserved_micros, 5_000_000);

    // Settling is idempotent; releasing frees room for exactly what was released.
    assert!(wallets.settle(&format!("req-{}", held[0]), 100_000).await.unwrap());
    assert!(!wallets.settle(&format!("req-{}", held[0]), 100_000).await.unwrap(), "second settle is a no-op");
    assert!(wallets.release(&format!("req-{}", held[1])).await.unwrap());
    assert!(
        !wallets.release(&format!("req-{}", held[0])).await.unwrap(),
        "a settled hold cannot be released"
    );
    let wallet = wallets.get(agent).await.unwrap().unwrap();
    assert_eq!((wallet.reserved_micros, wallet.daily_spent_micros), (4_800_000, 100_000));
    assert!(matches!(
        wallets.reserve(agent, "one-more", 100_000).await.unwrap(),
        server::wallets::Reservation::Held
    ));
    assert!(matches!(
        wallets.reserve(agent, "too-many", 1).await.unwrap(),
        server::wallets::Reservation::Refused { daily_remaining_micros: Some(0), .. }
    ));
}

#[tokio::test]
async fn wallets_show_spend_and_limits_can_change() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let sponsor = s.sponsor("wallet").await;
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "w", "policy": "permissive", "daily_limit_micros": 1_000_000}),
        )
        .await;
    let (id, key) =
        (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned());
    let path = format!("/api/agents/{id}/wallet");

    let w = s.get(&path, &sponsor.access).await;
    assert_eq!(w.status, reqwest::StatusCode::OK, "{}", w.text);
    assert_eq!(
        (w.body["daily_limit_micros"].as_i64(), w.body["daily_spent_micros"].as_i64()),
        (Some(1_000_000), Some(0))
    );
    assert_eq!(w.body["timezone"], "UTC");
    let resets: chrono::DateTime<chrono::Utc> = w.body["daily_resets_at"].as_str().unwrap().parse().unwrap();
    assert!(resets > chrono::Utc::now() && resets <= chrono::Utc::now() + chrono::Duration::days(1));

    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 300_000}),
        )
        .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);
    let w = s.get(&path, &sponsor.access).await;
    assert_eq!(
        (
            w.body["daily_spent_micros"].as_i64(),
            w.body["monthly_spent_micros"].as_i64(),
            w.body["reserved_micros"].as_i64()
        ),
        (Some(300_000), Some(300_000), Some(0))
    );

    // Lowering the limit below what is spent stops the next call at stage budget.
    let w = s
        .send(
            reqwest::Method::PUT,
            &path,
            Some(&sponsor.access),
            Some(json!({"daily_limit_micros": 200_000})),
        )
        .await;
    assert_eq!(
        (w.status, w.body["daily_limit_micros"].as_i64(), w.body["monthly_limit_micros"].as_i64()),
        (reqwest::StatusCode::OK, Some(200_000), Some(0))
    );
    let r =
        s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": mock.url("/echo")})).await;
    assert_eq!(r.body["stage"], "budget", "{}", r.text);
    let audit = s.get("/api/audit?kind=agent.updated", &sponsor.access).await;
    assert!(audit.text.contains("200000"), "limit change audited: {}", audit.text);

    for bad in [json!({"daily_limit_micros": -1}), json!({"daily_limit_micros": "5"}), json!({"limit": 5})] {
        let r = s.send(reqwest::Method::PUT, &path, Some(&sponsor.access), Some(bad.clone())).await;
        assert_eq!(r.status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.text);
    }
    let other = s.sponsor("other").await;
    assert_eq!(s.get(&path, &other.access).await.status, reqwest::StatusCode::NOT_FOUND);
    let r = s
        .send(reqwest::Method::PUT, &path, Some(&other.access), Some(json!({"daily_limit_micros": 0})))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::NOT_FOUND);
}
