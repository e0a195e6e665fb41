//! The proxy's group-commit writer: many requests' hold + intent (and settlement +
//! outcome) in one transaction, in arrival order, exact budgets, one bad write
//! failing only itself, and the commit count observable.

use entity::{audit_events, ledger_entries};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use server::audit::AuditEntry;
use server::store::Intent;
use uuid::Uuid;

use crate::support::TestServer;

async fn agent_with_limit(s: &TestServer, daily: i64) -> Uuid {
    let sponsor = s.sponsor("batch").await;
    let r = s
        .post("/api/agents", Some(&sponsor.access), json!({"name": "batcher", "daily_limit_micros": daily}))
        .await;
    assert_eq!(r.status, reqwest::StatusCode::CREATED, "{}", r.text);
    r.body["agent"]["id"].as_str().unwrap().parse().unwrap()
}

/// An audit entry for `agent`'s request (also the store conformance suite's).
pub(crate) fn entry(agent: Uuid, kind: &str, request_id: &str) -> AuditEntry {
    AuditEntry {
        agent_id: Some(agent),
        request_id: Some(request_id.to_owned()),
        kind: kind.to_owned(),
        decision: Some("allow".into()),
        ..Default::default()
    }
}

async fn request_at(s: &TestServer, seq: i64) -> Option<String> {
    audit_events::Entity::find_by_id(seq)
        .one(&s.running.services.db)
        .await
        .unwrap()
        .and_then(|r| r.request_id)
}

/// Runs `writes` while the chain lock is held, so every one of them is queued
/// before the writer can start a batch: they make one. (`#[tokio::test]` runs on
/// one thread, so the writer task — PostgreSQL — cannot run before they are all
/// queued either; the SQLite writer thread waits for the lock.)
async fn as_one_batch<T>(s: &TestServer, writes: impl std::future::Future<Output = T>) -> T {
    let lock = s.running.services.audit.chain_lock();
    let held = lock.lock_owned().await;
    let mut writes = std::pin::pin!(writes);
    // One poll queues every write (each then waits for its answer).
    assert!(futures::poll!(writes.as_mut()).is_pending());
    drop(held);
    writes.await
}

#[tokio::test]
async fn queued_writes_commit_together_in_arrival_order() {
    let s = TestServer::start().await;
    let agent = agent_with_limit(&s, 0).await;
    let commit = s.running.services.proxy.commit.clone();
    let before = commit.stats();

    let ids: Vec<String> = (0..40).map(|i| format!("req-order-{i}")).collect();
    let intents = as_one_batch(
        &s,
        futures::future::join_all(
            ids.iter().map(|id| commit.intent(agent, id, 1_000, entry(agent, "proxy.intent", id))),
        ),
    )
    .await;
    let after = commit.stats();
    assert_eq!((after.commits - before.commits, after.writes - before.writes), (1, 40), "one fsync for 40");

    let mut last = 0;
    for (id, intent) in ids.iter().zip(intents) {
        let Intent::Recorded(appended) = intent.unwrap() else { panic!("unlimited wallet refused") };
        if last > 0 {
            assert_eq!(appended.seq, last + 1, "gap-free, in arrival order");
        }
        last = appended.seq;
        assert_eq!(request_at(&s, appended.seq).await.as_deref(), Some(id.as_str()));
    }

    // Settlements and releases batch the same way, together with their outcomes.
    let outcomes = as_one_batch(
        &s,
        futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
            let charge = (i % 2 == 0).then_some(1_000);
            commit.outcome(agent, id, charge, entry(agent, "proxy.outcome", id))
        })),
    )
    .await;
    assert_eq!(commit.stats().commits - after.commits, 1);
    for outcome in outcomes {
        let o = outcome.unwrap();
        assert!(o.resolved);
        assert!(o.appended.seq > last);
        last = o.appended.seq;
    }
    let wallet = s.running.services.wallets.get(agent).await.unwrap().unwrap();
    assert_eq!((wallet.reserved_micros, wallet.daily_spent_micros), (0, 20 * 1_000));
    // Resolving again changes nothing, but the outcome is still recorded.
    let again =
        commit.outcome(agent, &ids[0], Some(1_000), entry(agent, "proxy.outcome", &ids[0])).await.unwrap();
    assert!(!again.resolved);
    assert_eq!(s.running.services.wallets.get(agent).await.unwrap().unwrap().daily_spent_micros, 20_000);

    let report = s.running.services.audit.verify(None).await.unwrap();
    assert!(report.valid, "{report:?}");
    let metrics = s.running.services.metrics.render(&s.running.services.db).await;
    assert!(metrics.contains("aegis_group_commits_total 3"), "{metrics}");
    assert!(metrics.contains("aegis_group_commit_writes_total 81"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_intents_hold_exactly_the_budget() {
    let s = TestServer::start().await;
    let agent = agent_with_limit(&s, 5_000_000).await;
    let commit = s.running.services.proxy.commit.clone();
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let commit = commit.clone();
            tokio::spawn(async move {
                let id = format!("req-race-{i}");
                commit.intent(agent, &id, 100_000, entry(agent, "proxy.intent", &id)).await
            })
        })
        .collect();
    let mut recorded = Vec::new();
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Intent::Recorded(a) => recorded.push(a.seq),
            Intent::Refused(_) => {}
        }
    }
    assert_eq!(recorded.len(), 50, "exactly 5,000,000 / 100,000 holds fit");
    recorded.sort();
    assert!(recorded.windows(2).all(|w| w[1] == w[0] + 1), "intents are consecutive records: {recorded:?}");
    let held = ledger_entries::Entity::find()
        .filter(ledger_entries::Column::AgentId.eq(agent))
        .filter(ledger_entries::Column::Status.eq("held"))
        .all(&s.running.services.db)
        .await
        .unwrap();
    assert_eq!(held.len(), 50, "a hold exists exactly for each recorded intent");
    assert_eq!(s.running.services.wallets.get(agent).await.unwrap().unwrap().reserved_micros, 5_000_000);
    let stats = commit.stats();
    assert!(stats.commits <= stats.writes, "{stats:?}");
    assert!(s.running.services.audit.verify(None).await.unwrap().valid);
}

#[tokio::test]
async fn one_failing_write_fails_only_itself() {
    let s = TestServer::start().await;
    let agent = agent_with_limit(&s, 0).await;
    let commit = s.running.services.proxy.commit.clone();
    let before = commit.stats();

    // An entry without a kind is refused by the audit log: that write fails, so
    // the batch is rolled back and every write retried alone.
    let ids: Vec<String> = (0..5).map(|i| format!("req-bad-{i}")).collect();
    let intents = as_one_batch(
        &s,
        futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
            let kind = if i == 2 { "" } else { "proxy.intent" };
            commit.intent(agent, id, 1_000, entry(agent, kind, id))
        })),
    )
    .await;
    let after = commit.stats();
    assert_eq!(after.retried_batches - before.retried_batches, 1);
    assert_eq!(
        (after.commits - before.commits, after.writes - before.writes),
        (4, 4),
        "one commit per survivor"
    );

    for (i, (id, intent)) in ids.iter().zip(intents).enumerate() {
        let hold = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::RequestId.eq(id.as_str()))
            .one(&s.running.services.db)
            .await
            .unwrap();
        if i == 2 {
            assert_eq!(intent.unwrap_err().status, 500);
            assert!(hold.is_none(), "no hold without its intent");
        } else {
            let Intent::Recorded(a) = intent.unwrap() else { panic!("refused") };
            assert_eq!(request_at(&s, a.seq).await.as_deref(), Some(id.as_str()));
            assert_eq!(hold.map(|h| h.status).as_deref(), Some("held"));
        }
    }
    assert_eq!(s.running.services.wallets.get(agent).await.unwrap().unwrap().reserved_micros, 4_000);
    assert!(s.running.services.audit.verify(None).await.unwrap().valid);
}

/// How many writer threads this process runs (tests run servers side by side).
fn sqlite_writer_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "aegis-db-writer")
                .count()
        })
        .unwrap_or(0)
}

/// The hot-path store's batches (SQLite: the writer thread's own connection;
/// PostgreSQL: the writer task's own connection and its own SQL) run beside the
/// pool's sea-orm writers: what they write reads back through sea-orm exactly
/// (times, ids, the hold's expiry), and their appends interleave with the pool's
/// appends without forking the chain.
#[tokio::test]
async fn the_hot_path_writer_and_the_pool_share_one_chain_and_one_format() {
    let s = TestServer::start().await;
    let services = &s.running.services;
    let commit = services.proxy.commit.clone();
    let agent = agent_with_limit(&s, 0).await;
    let before = commit.stats();
    let ids: Vec<String> = (0..30).map(|i| format!("req-mixed-{i}")).collect();
    // Thread batches (intents) and pool appends (plain records) race for the chain.
    let intents = futures::future::join_all(
        ids.iter().map(|id| commit.intent(agent, id, 7, entry(agent, "proxy.intent", id))),
    );
    let plain = futures::future::join_all(
        (0..30).map(|i| services.audit.append(entry(agent, "test.pool", &format!("req-pool-{i}")))),
    );
    let (intents, plain) = tokio::join!(intents, plain);
    assert!(plain.iter().all(Result::is_ok));
    if s.on_postgres() {
        assert_eq!(commit.backend(), "postgres");
    } else {
        assert_eq!(commit.backend(), "sqlite");
        assert!(sqlite_writer_threads() >= 1, "the writer thread runs");
    }
    assert!(commit.stats().commits > before.commits);

    let settled =
        commit.outcome(agent, &ids[0], Some(5), entry(agent, "proxy.outcome", &ids[0])).await.unwrap();
    assert!(settled.resolved);

    // Every record once, seqs contiguous, the chain verifies.
    let records = audit_events::Entity::find().all(&services.db).await.unwrap();
    let mut seqs: Vec<i64> = records.iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=records.len() as i64).collect::<Vec<_>>());
    assert!(intents.iter().all(|i| matches!(i, Ok(Intent::Recorded(_)))));
    let report = services.audit.verify(None).await.unwrap();
    assert!(report.valid, "{report:?}");

    // The thread's rows decode through sea-orm with the values it wrote.
    let hold = ledger_entries::Entity::find()
        .filter(ledger_entries::Column::RequestId.eq(ids[1].as_str()))
        .one(&services.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((hold.agent_id, hold.status.as_str(), hold.reserved_micros), (agent, "held", 7));
    assert_eq!(
        (hold.expires_at - hold.created_at).to_std().unwrap(),
        services.wallets.reservation_ttl(),
        "expiry = creation + TTL, both read back intact"
    );
    let age = chrono::Utc::now() - hold.created_at;
    assert!(age >= chrono::Duration::zero() && age < chrono::Duration::seconds(60), "created {age} ago");
    let first = ledger_entries::Entity::find()
        .filter(ledger_entries::Column::RequestId.eq(ids[0].as_str()))
        .one(&services.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.status.as_str(), first.settled_micros), ("settled", Some(5)));
    assert!(first.resolved_at.is_some_and(|r| r >= first.created_at));
    let wallet = services.wallets.get(agent).await.unwrap().unwrap();
    assert_eq!((wallet.daily_spent_micros, wallet.reserved_micros), (5, 29 * 7));
    let outcome = records.iter().find(|r| r.kind == "proxy.outcome").unwrap();
    assert_eq!((outcome.agent_id, outcome.request_id.as_deref()), (Some(agent), Some(ids[0].as_str())));
}
