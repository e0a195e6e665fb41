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
