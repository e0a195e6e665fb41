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
    let (id, key) = limited_agent(&s, &sponsor, "w", 1_000_000).await;
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

#[tokio::test]
async fn windows_follow_the_wallets_time_zone_and_alerts_fire_once_per_window() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let sponsor = s.sponsor("tz").await;
    let mut feed = s.running.services.events.subscribe(sponsor.id.parse().unwrap(), None);
    let (id, key) = limited_agent(&s, &sponsor, "tokyo", 1_000_000).await;
    let path = format!("/api/agents/{id}/wallet");
    let put =
        |body: serde_json::Value| s.send(reqwest::Method::PUT, &path, Some(&sponsor.access), Some(body));

    assert_eq!(put(json!({"timezone": "Mars/Olympus"})).await.code(), "invalid_timezone");
    assert_eq!(
        put(json!({"alert_threshold_pct": 101})).await.status,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY
    );
    let w = put(json!({"timezone": "Asia/Tokyo", "alert_threshold_pct": 50})).await;
    assert_eq!(
        (w.body["timezone"].as_str(), w.body["alert_threshold_pct"].as_i64()),
        (Some("Asia/Tokyo"), Some(50))
    );
    let resets: chrono::DateTime<chrono::Utc> = w.body["daily_resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(resets.format("%H:%M").to_string(), "15:00", "Tokyo midnight is 15:00 UTC");
    let month: chrono::DateTime<chrono::Utc> = w.body["monthly_resets_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(month.format("%H:%M").to_string(), "15:00");
    let audit = s.get("/api/audit?kind=agent.updated", &sponsor.access).await;
    assert!(audit.text.contains("Asia/Tokyo"), "audited: {}", audit.text);

    // 300k, 600k (crosses 50%: one alert), 900k (no second alert this window).
    for _ in 0..3 {
        let r = s
            .post(
                "/api/proxy/execute",
                Some(&key),
                json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 300_000}),
            )
            .await;
        assert_eq!(r.body["decision"], "allow", "{}", r.text);
    }
    let r = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 300_000}),
        )
        .await;
    assert_eq!(r.body["stage"], "budget");
    let mut alerts = Vec::new();
    let mut exhausted = 0;
    while let Ok(Some(e)) = tokio::time::timeout(std::time::Duration::from_millis(300), feed.next()).await {
        match e.kind.as_str() {
            "budget.alert" => alerts.push(e.data),
            "budget.exhausted" => exhausted += 1,
            _ => {}
        }
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0]["window"].as_str(), alerts[0]["spent_micros"].as_i64()),
        (Some("daily"), Some(600_000))
    );
    assert_eq!(exhausted, 1);
}

/// The required case, over real HTTP through the whole pipeline:
/// 1,000 concurrent calls of 100,000 against a 5,000,000 daily limit.
#[tokio::test]
async fn a_thousand_concurrent_calls_admit_exactly_fifty() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        // 950 budget denials in a second would (rightly) trip the breaker; not under test here.
        ("AEGIS_BREAKER_DENIAL_RATE_PCT", "0"),
        ("AEGIS_BREAKER_BURST", "0"),
    ])
    .await;
    let sponsor = s.sponsor("crowd").await;
    let (id, key) = limited_agent(&s, &sponsor, "crowd", 5_000_000).await;
    let (allowed, budget_denied) =
        fire(std::slice::from_ref(&s.base), &key, &mock.url("/counted"), 1000).await;
    assert_eq!((allowed, budget_denied), (50, 950));
    assert_eq!(mock.hits(), 50, "exactly 50 calls reached the upstream");
    let w = s.get(&format!("/api/agents/{id}/wallet"), &sponsor.access).await;
    assert_eq!(
        (w.body["daily_spent_micros"].as_i64(), w.body["reserved_micros"].as_i64()),
        (Some(5_000_000), Some(0))
    );
    assert_eq!(s.get("/api/audit/verify", &sponsor.access).await.body["valid"], true);
}

/// Sends `n` concurrent execute calls of 100,000 micro-units, spread over the
/// servers at `bases`; returns (allowed, denied at stage budget). Anything else
/// fails the test.
pub async fn fire(bases: &[String], key: &str, url: &str, n: usize) -> (usize, usize) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let target = format!("{}/api/proxy/execute", bases[i % bases.len()]);
            let (client, key, url) = (client.clone(), key.to_owned(), url.to_owned());
            tokio::spawn(async move {
                let r = client
                    .post(target)
                    .bearer_auth(key)
                    .json(&json!({"method": "GET", "url": url, "cost_micros": 100_000}))
                    .send()
                    .await
                    .unwrap();
                crate::support::read(r).await
            })
        })
        .collect();
    let (mut allowed, mut denied) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match (r.body["decision"].as_str(), r.body["stage"].as_str()) {
            (Some("allow"), _) => allowed += 1,
            (Some("deny"), Some("budget")) => denied += 1,
            _ => panic!("unexpected answer {} {}", r.status, r.text),
        }
    }
    (allowed, denied)
}

/// An agent under the `permissive` policy with a daily limit; (id, key).
async fn limited_agent(
    s: &TestServer,
    sponsor: &crate::support::Sponsor,
    name: &str,
    daily: i64,
) -> (String, String) {
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": name, "policy": "permissive", "daily_limit_micros": daily}),
        )
        .await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.text);
    (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned())
}

/// Spend counters of a wallet without limits cannot overflow: they saturate at the
/// documented ceiling (`SPEND_CEILING_MICROS`), stay integers, and the calls go on
/// being served — through the group-committed path (the writer thread on SQLite,
/// sea-orm on PostgreSQL) and the standalone one.
#[tokio::test]
async fn spend_counters_saturate_at_the_ceiling_instead_of_overflowing() {
    use sea_orm::sea_query::Expr;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use server::wallets::SPEND_CEILING_MICROS;

    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        // The breaker's spend window would trip on 10^15 a call; not under test here.
        ("AEGIS_BREAKER_SPEND_MICROS", "0"),
    ])
    .await;
    let sponsor = s.sponsor("rich").await;
    let (id, key) = s
        .agent_with(
            &sponsor,
            json!({"name": "whale", "policy": "permissive", "daily_limit_micros": 0, "monthly_limit_micros": 0}),
        )
        .await;
    let agent: uuid::Uuid = id.parse().unwrap();
    let db = &s.running.services.db;
    let set = |col: entity::wallets::Column, v: i64| {
        entity::wallets::Entity::update_many()
            .col_expr(col, Expr::value(v))
            .filter(entity::wallets::Column::AgentId.eq(agent))
            .exec(db)
    };
    // Counters at the very edge of i64 (as years of 10^15 charges would leave them).
    set(entity::wallets::Column::DailySpentMicros, i64::MAX - 10).await.unwrap();
    set(entity::wallets::Column::MonthlySpentMicros, i64::MAX - 10).await.unwrap();
    let max = app::money::MAX_MICROS;
    for _ in 0..3 {
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": max})).await;
        assert_eq!(r.status, reqwest::StatusCode::OK, "{}", r.text);
    }
    let w = s.running.services.wallets.get(agent).await.unwrap().unwrap();
    assert_eq!((w.daily_spent_micros, w.monthly_spent_micros), (SPEND_CEILING_MICROS, SPEND_CEILING_MICROS));
    assert_eq!(w.reserved_micros, 0);
    // The standalone settlement path saturates too.
    let wallets = s.running.services.wallets.clone();
    assert!(matches!(
        wallets.reserve(agent, "direct-1", max).await.unwrap(),
        server::wallets::Reservation::Held
    ));
    assert!(wallets.settle("direct-1", max).await.unwrap());
    let w = wallets.get(agent).await.unwrap().unwrap();
    assert_eq!(w.daily_spent_micros, SPEND_CEILING_MICROS);
    if !s.on_postgres() {
        // Stored as an integer, never as SQLite's overflow float.
        use sea_orm::{ConnectionTrait, Statement};
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT typeof(daily_spent_micros) AS t FROM wallets WHERE daily_spent_micros > 0",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<String>("", "t").unwrap(), "integer");
    }
    // Reservations cannot climb past the ceiling either: the hold is refused, not wrapped.
    set(entity::wallets::Column::ReservedMicros, SPEND_CEILING_MICROS - 5).await.unwrap();
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 10})).await;
    assert_eq!(
        (r.status, r.body["stage"].as_str()),
        (reqwest::StatusCode::FORBIDDEN, Some("budget")),
        "{}",
        r.text
    );
    let w = wallets.get(agent).await.unwrap().unwrap();
    assert_eq!(w.reserved_micros, SPEND_CEILING_MICROS - 5);
}
