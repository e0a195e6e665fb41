//! The hot-path store's conformance suite: the same test bodies run against every
//! implementation of `server::store::CallStore` this pass's database has — on a
//! SQLite file the SQLite store and the sea-orm store over the same file, on
//! PostgreSQL the PostgreSQL store and the sea-orm store — with sea-orm's read of
//! the rows as the truth. A new implementation is correct when it passes here. And
//! the proxy really takes its server's store: four reads a call inline on SQLite,
//! none on PostgreSQL.

use std::sync::Arc;

use entity::{audit_events, ledger_entries};
use reqwest::{Method, StatusCode};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use server::store::orm::OrmStore;
use server::store::postgres::PgStore;
use server::store::sqlite::SqliteStore;
use server::store::{CallRows, CallStore, GroupCommit, Intent};
use server::wallets::Reservation;
use uuid::Uuid;

use crate::group_commit::entry;
use crate::mock::MockUpstream;
use crate::observability::{sample, scrape};
use crate::support::TestServer;

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

/// A server on an in-memory SQLite database (shared between the pool's
/// connections), where the sea-orm store serves the hot path; `None` on the
/// PostgreSQL pass, where the server's database is PostgreSQL whatever is asked.
async fn in_memory_server(vars: &[(&str, &str)]) -> Option<TestServer> {
    let url = format!("sqlite:file:aegis-store-{}?mode=memory&cache=shared", Uuid::new_v4().simple());
    let mut vars = vars.to_vec();
    vars.push(("DATABASE_URL", &url));
    let s = TestServer::start_with(&vars).await;
    if s.on_postgres() {
        eprintln!("the in-memory SQLite variant runs on the SQLite pass only");
        return None;
    }
    assert_eq!(
        s.running.services.store.name(),
        "sea-orm",
        "an in-memory database has no file for the SQLite store"
    );
    Some(s)
}

/// Every implementation that can serve this server's database.
fn stores(s: &TestServer) -> Vec<Arc<dyn CallStore>> {
    let services = &s.running.services;
    let mut all: Vec<Arc<dyn CallStore>> =
        vec![Arc::new(OrmStore::new(services.db.clone(), services.audit.clone()))];
    if let Some(sqlite) = SqliteStore::for_file(&services.db, &services.audit, services.metrics.clone()) {
        all.push(Arc::new(sqlite));
    }
    if let Some(pg) = PgStore::for_postgres(&services.db, &services.audit) {
        all.push(Arc::new(pg));
    }
    // Each fast store serves exactly where the server itself chose it.
    let names: Vec<&str> = all.iter().map(|s| s.name()).collect();
    let expected = match services.store.name() {
        "sqlite" => vec!["sea-orm", "sqlite"],
        "postgres" => vec!["sea-orm", "postgres"],
        _ => vec!["sea-orm"],
    };
    assert_eq!(names, expected);
    all
}

async fn inline_reads(s: &TestServer) -> f64 {
    sample(&scrape(s).await, "aegis_db_inline_reads_total", &[]).unwrap_or(0.0)
}

/// A sponsor with an agent (wallet limits, tags), a secret granted to it and two
/// connections (with and without a secret), made through the API.
struct Fixture {
    sponsor: crate::support::Sponsor,
    sponsor_id: Uuid,
    agent: String,
    agent_id: Uuid,
    key: String,
    secret_id: Uuid,
}

async fn fixture(s: &TestServer, mock: &MockUpstream) -> Fixture {
    let sponsor = s.sponsor("store").await;
    let sponsor_id: Uuid = sponsor.id.parse().unwrap();
    let (agent, key) = s
        .agent_with(
            &sponsor,
            json!({"name": "reader", "description": "reads things", "policy": "permissive",
                   "daily_limit_micros": 5_000_000, "monthly_limit_micros": 9_000_000, "tags": ["a", "b"]}),
        )
        .await;
    let agent_id: Uuid = agent.parse().unwrap();
    let created = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "api", "value": "v-1", "allowed_hosts": ["http://127.0.0.1:*"],
                   "inject": {"header": "Authorization", "format": "Bearer {secret}"}, "agents": [agent]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let secret_id: Uuid = created.body["id"].as_str().unwrap().parse().unwrap();
    for body in [
        json!({"name": "gw", "base_url": mock.url("/echo"), "secret": "api", "cost_micros": 10}),
        json!({"name": "plain", "base_url": mock.url("/llm"),
               "pricing": {"provider": "anthropic", "models": {"claude-haiku-4-5": {}}},
               "rate_limits": {"tokens_per_minute": 1000}}),
        // An MCP connection (#21): its kind, allow-list and audit switch are read back too.
        json!({"name": "tools-srv", "kind": "mcp", "base_url": mock.url("/mcp"), "secret": "api",
               "tools": ["read_note"], "record_arguments": true, "cost_micros": 3}),
    ] {
        let r = s.post("/api/connections", Some(&sponsor.access), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    Fixture { sponsor, sponsor_id, agent, agent_id, key, secret_id }
}

/// The proxy's reads go through its server's store: on a SQLite file exactly five
/// inline reads for an execute call and six for a gateway call; none on PostgreSQL.
#[tokio::test]
async fn the_proxy_reads_through_its_servers_store() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let f = fixture(&s, &mock).await;
    let before = inline_reads(&s).await;
    let r = s
        .execute(
            &f.key,
            json!({"method": "GET", "url": mock.url("/echo"), "secret": "api", "cost_micros": 1_234}),
        )
        .await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    let done = inline_reads(&s).await - before;
    let before = inline_reads(&s).await;
    let gw = s.http.get(s.url("/api/gw/gw/x")).bearer_auth(&f.key).send().await.unwrap();
    assert_eq!(gw.status(), StatusCode::OK);
    let gateway_done = inline_reads(&s).await - before;
    let services = &s.running.services;
    if s.on_postgres() {
        assert_eq!(services.store.name(), "postgres");
        assert_eq!((done, gateway_done), (0.0, 0.0), "PostgreSQL reads over its pool");
    } else {
        assert_eq!(services.store.name(), "sqlite");
        assert_eq!(done, 5.0, "key, routes (metering), wallet, policy version, secret");
        assert_eq!(gateway_done, 6.0, "key, connection, routes (metering), wallet, policy version, secret");
    }
    let wallet = services.wallets.get(f.agent_id).await.unwrap().unwrap();
    assert_eq!(wallet.daily_spent_micros, 1_234 + 10, "the settled calls are read at once");
}

/// Each read of every store equals sea-orm's read of the same rows, field for
/// field (optional times and ids set and unset), and sees every change at once.
#[tokio::test]
async fn every_store_reads_exactly_what_the_rows_hold() {
    let mock = MockUpstream::start().await;
    reads_conform(&TestServer::start_with(&[ALLOW_LOOPBACK]).await, &mock).await;
}

/// The same, on an in-memory SQLite database.
#[tokio::test]
async fn every_store_reads_exactly_what_the_rows_hold_in_memory() {
    let mock = MockUpstream::start().await;
    if let Some(s) = in_memory_server(&[ALLOW_LOOPBACK]).await {
        reads_conform(&s, &mock).await;
    }
}

/// `call_rows` equals the four reads it stands for, for these arguments.
async fn call_rows_conform(
    store: &dyn CallStore,
    sponsor: Uuid,
    agent: Uuid,
    policy: Uuid,
    secret: Option<&str>,
) {
    let rows = store.call_rows(sponsor, agent, policy, secret).await.unwrap();
    let granted = match secret {
        Some(name) => store.granted_secret(sponsor, agent, name).await.unwrap(),
        None => None,
    };
    let expected = CallRows {
        wallet: store.wallet(agent).await.unwrap(),
        policy_version: store.current_version(policy).await.unwrap(),
        granted_secret: granted,
        routes: store.routes(sponsor).await.unwrap(),
    };
    assert_eq!(rows, expected, "{}: call_rows({secret:?})", store.name());
}

async fn reads_conform(s: &TestServer, mock: &MockUpstream) {
    let f = fixture(s, mock).await;
    let db = &s.running.services.db;
    let stores = stores(s);
    let key_id = server::agents::api_keys::key_id(&f.key).unwrap().to_owned();
    let agent_row =
        || async { entity::agents::Entity::find_by_id(f.agent_id).one(db).await.unwrap().unwrap() };
    let key_row = || async {
        entity::agent_keys::Entity::find()
            .filter(entity::agent_keys::Column::KeyId.eq(key_id.as_str()))
            .one(db)
            .await
            .unwrap()
            .unwrap()
    };
    let secret_row = || async { entity::secrets::Entity::find_by_id(f.secret_id).one(db).await.unwrap() };

    for store in &stores {
        let name = store.name();
        let (key, agent) = store.live_key(&key_id).await.unwrap().expect("the live key is found");
        assert_eq!((key, agent), (key_row().await, Some(agent_row().await)), "{name}");
        assert_eq!(store.live_key("ak_nosuchkey").await.unwrap(), None, "{name}");

        let wallet = entity::wallets::Entity::find_by_id(f.agent_id).one(db).await.unwrap();
        assert!(wallet.is_some());
        assert_eq!(store.wallet(f.agent_id).await.unwrap(), wallet, "{name}");
        assert_eq!(store.wallet(Uuid::new_v4()).await.unwrap(), None, "{name}");

        let policy_id = agent_row().await.policy_id.unwrap();
        let policy = entity::policies::Entity::find_by_id(policy_id).one(db).await.unwrap().unwrap();
        assert_eq!(store.current_version(policy_id).await.unwrap(), Some(policy.current_version), "{name}");
        assert_eq!(store.current_version(Uuid::new_v4()).await.unwrap(), None, "{name}");

        assert_eq!(store.granted_secret(f.sponsor_id, f.agent_id, "api").await.unwrap(), secret_row().await);
        assert_eq!(store.granted_secret(Uuid::new_v4(), f.agent_id, "api").await.unwrap(), None, "{name}");
        assert_eq!(store.granted_secret(f.sponsor_id, f.agent_id, "other").await.unwrap(), None, "{name}");
        assert_eq!(store.granted_secret(f.sponsor_id, Uuid::new_v4(), "api").await.unwrap(), None, "{name}");

        for (conn_name, secret) in [("gw", Some("api")), ("plain", None), ("tools-srv", Some("api"))] {
            let (connection, secret_name) = store.connection(f.sponsor_id, conn_name).await.unwrap().unwrap();
            let row = entity::connections::Entity::find_by_id(connection.id).one(db).await.unwrap();
            assert_eq!((Some(connection), secret_name.as_deref()), (row, secret), "{name}");
        }
        assert!(store.connection(f.sponsor_id, "nope").await.unwrap().is_none(), "{name}");
        assert!(store.connection(Uuid::new_v4(), "gw").await.unwrap().is_none(), "{name}");

        // Metering's routes: every connection of the sponsor, the pricing as saved.
        let mut routes = store.routes(f.sponsor_id).await.unwrap();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut rows = entity::connections::Entity::find()
            .filter(entity::connections::Column::SponsorId.eq(f.sponsor_id))
            .all(db)
            .await
            .unwrap();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let expected: Vec<server::metering::Route> = rows
            .into_iter()
            .map(|c| server::metering::Route {
                name: c.name,
                base_url: c.base_url,
                cost_micros: c.cost_micros,
                pricing: c.pricing,
                rate_limits: c.rate_limits,
                mcp: c.kind == "mcp",
            })
            .collect();
        assert_eq!(routes, expected, "{name}");
        assert!(
            routes.iter().any(|r| r.pricing.as_deref().is_some_and(|p| p.contains("claude-haiku-4-5"))),
            "{name}"
        );
        assert_eq!(
            routes.iter().filter(|r| r.mcp).map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["tools-srv"],
            "{name}"
        );
        let (mcp, _) = store.connection(f.sponsor_id, "tools-srv").await.unwrap().unwrap();
        assert_eq!(
            (mcp.kind.as_str(), mcp.mcp_tools.as_deref(), mcp.record_arguments),
            ("mcp", Some(r#"["read_note"]"#), true),
            "{name}"
        );
        assert!(store.routes(Uuid::new_v4()).await.unwrap().is_empty(), "{name}");

        // A call's reads together: everything found, each part missing.
        let rows = store.call_rows(f.sponsor_id, f.agent_id, policy_id, Some("api")).await.unwrap();
        assert!(rows.wallet.is_some() && rows.policy_version.is_some() && rows.granted_secret.is_some());
        assert!(rows.routes.len() > 1 && rows.routes.iter().any(|r| r.pricing.is_some()), "{name}");
        for (sponsor, agent, policy, secret) in [
            (f.sponsor_id, f.agent_id, policy_id, Some("api")),
            (f.sponsor_id, f.agent_id, policy_id, None),
            (f.sponsor_id, f.agent_id, policy_id, Some("other")),
            (f.sponsor_id, f.agent_id, Uuid::new_v4(), Some("api")),
            (f.sponsor_id, Uuid::new_v4(), policy_id, Some("api")),
            (Uuid::new_v4(), f.agent_id, policy_id, Some("api")),
        ] {
            call_rows_conform(store.as_ref(), sponsor, agent, policy, secret).await;
        }
    }

    // Changes are seen at once, by every store: a suspension (optional time and
    // text set), a rotated secret, a revoked grant, a rotated key, a deletion.
    let suspended = s
        .post(
            &format!("/api/agents/{}/suspend", f.agent),
            Some(&f.sponsor.access),
            json!({"reason": "checking"}),
        )
        .await;
    assert_eq!(suspended.status, StatusCode::OK, "{}", suspended.text);
    let rotated = s
        .send(
            Method::PUT,
            &format!("/api/secrets/{}", f.secret_id),
            Some(&f.sponsor.access),
            Some(json!({"value": "v-2"})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    for store in &stores {
        let (_, agent) = store.live_key(&key_id).await.unwrap().unwrap();
        let agent = agent.unwrap();
        assert!(agent.suspended_at.is_some() && agent.suspended_reason.is_some(), "{}", store.name());
        assert_eq!(agent, agent_row().await);
        let secret = store.granted_secret(f.sponsor_id, f.agent_id, "api").await.unwrap().unwrap();
        assert!(secret.rotated_at.is_some());
        assert_eq!(Some(secret), secret_row().await, "the rotated value is read at once");
    }
    let revoke = s
        .send(
            Method::DELETE,
            &format!("/api/secrets/{}/agents/{}", f.secret_id, f.agent),
            Some(&f.sponsor.access),
            None,
        )
        .await;
    assert!(revoke.status.is_success(), "{}", revoke.text);
    let new_key =
        s.send(Method::POST, &format!("/api/agents/{}/keys", f.agent), Some(&f.sponsor.access), None).await;
    assert_eq!(new_key.status, StatusCode::CREATED, "{}", new_key.text);
    let new_key_id =
        server::agents::api_keys::key_id(new_key.body["api_key"].as_str().unwrap()).unwrap().to_owned();
    for store in &stores {
        let name = store.name();
        assert_eq!(
            store.granted_secret(f.sponsor_id, f.agent_id, "api").await.unwrap(),
            None,
            "{name}: revoked"
        );
        assert_eq!(store.live_key(&key_id).await.unwrap(), None, "{name}: the old key is revoked");
        assert!(store.live_key(&new_key_id).await.unwrap().is_some(), "{name}");
        let rows = store.call_rows(f.sponsor_id, f.agent_id, Uuid::new_v4(), Some("api")).await.unwrap();
        assert_eq!(rows.granted_secret, None, "{name}: revoked, read together too");
    }
    let deleted =
        s.send(Method::DELETE, &format!("/api/agents/{}", f.agent), Some(&f.sponsor.access), None).await;
    assert!(deleted.status.is_success(), "{}", deleted.text);
    for store in &stores {
        // A deletion revokes the agent's keys.
        assert_eq!(store.live_key(&new_key_id).await.unwrap(), None, "{}", store.name());
    }
    assert!(
        s.running
            .services
            .agents
            .authenticate(new_key.body["api_key"].as_str().unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

/// Every store applies group-commit batches the same way: queued writes in one
/// transaction in arrival order, holds exact at the limit, settlements charged
/// once, one bad write failing only itself, and the chain intact.
#[tokio::test]
async fn every_store_applies_batches_exactly() {
    batches_conform(&TestServer::start().await).await;
}

/// The same, on an in-memory SQLite database.
#[tokio::test]
async fn every_store_applies_batches_exactly_in_memory() {
    if let Some(s) = in_memory_server(&[]).await {
        batches_conform(&s).await;
    }
}

/// A new agent with a 5,000 daily limit, and a group commit of its own over `store`.
async fn agent_and_commit(
    s: &TestServer,
    sponsor: &crate::support::Sponsor,
    store: &Arc<dyn CallStore>,
    prefix: &str,
) -> (Uuid, GroupCommit) {
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": format!("{prefix}-{}", store.name()), "daily_limit_micros": 5_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let agent: Uuid = r.body["agent"]["id"].as_str().unwrap().parse().unwrap();
    let announce: server::store::batch::Announce = Arc::new(|_| Box::pin(async {}));
    let services = &s.running.services;
    let commit = GroupCommit::new(
        store.clone(),
        services.wallets.reservation_ttl(),
        announce,
        services.metrics.clone(),
    );
    (agent, commit)
}

async fn batches_conform(s: &TestServer) {
    let services = &s.running.services;
    let sponsor = s.sponsor("batches").await;
    for store in stores(s) {
        let name = store.name();
        let (agent, commit) = agent_and_commit(s, &sponsor, &store, "batch").await;
        assert_eq!(commit.backend(), name);

        // Eight intents of 1,000 against a 5,000 limit, queued while the chain lock
        // is held: one batch; the first five (in arrival order) are held.
        let ids: Vec<String> = (0..8).map(|i| format!("req-{name}-{i}")).collect();
        let lock = services.audit.chain_lock();
        let held = lock.lock_owned().await;
        let mut intents = std::pin::pin!(futures::future::join_all(ids.iter().map(|id| commit.intent(
            agent,
            id,
            1_000,
            entry(agent, "proxy.intent", id)
        ))));
        assert!(futures::poll!(intents.as_mut()).is_pending());
        drop(held);
        let intents = intents.await;
        let stats = commit.stats();
        assert_eq!((stats.commits, stats.writes), (1, 8), "{name}: one transaction for the batch");
        let mut last = 0;
        for (i, (id, intent)) in ids.iter().zip(intents).enumerate() {
            match intent.unwrap() {
                Intent::Recorded(a) if i < 5 => {
                    assert!(last == 0 || a.seq == last + 1, "{name}: gap-free, in arrival order");
                    last = a.seq;
                    let record =
                        audit_events::Entity::find_by_id(a.seq).one(&services.db).await.unwrap().unwrap();
                    assert_eq!((record.request_id.as_deref(), record.hash), (Some(id.as_str()), a.hash));
                }
                Intent::Refused(Reservation::Refused { daily_remaining_micros, .. }) if i >= 5 => {
                    assert_eq!(daily_remaining_micros, Some(0), "{name}");
                }
                other => panic!("{name}: write {i} came to {other:?}"),
            }
        }
        let holds = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::AgentId.eq(agent))
            .all(&services.db)
            .await
            .unwrap();
        assert_eq!(holds.len(), 5, "{name}: a hold exists exactly for each recorded intent");
        let hold = &holds[0];
        assert_eq!((hold.expires_at - hold.created_at).to_std().unwrap(), services.wallets.reservation_ttl());
        let wallet = services.wallets.get(agent).await.unwrap().unwrap();
        assert_eq!((wallet.reserved_micros, wallet.daily_spent_micros), (5_000, 0), "{name}");

        // Settle two (one above its estimate: the call happened), release one,
        // resolve one twice: charged once.
        let settled =
            commit.outcome(agent, &ids[0], Some(700), entry(agent, "proxy.outcome", &ids[0])).await.unwrap();
        assert!(settled.resolved && settled.appended.seq > last, "{name}");
        assert!(
            commit
                .outcome(agent, &ids[1], Some(1_500), entry(agent, "proxy.outcome", &ids[1]))
                .await
                .unwrap()
                .resolved
        );
        assert!(
            commit
                .outcome(agent, &ids[2], None, entry(agent, "proxy.outcome", &ids[2]))
                .await
                .unwrap()
                .resolved
        );
        let again =
            commit.outcome(agent, &ids[0], Some(700), entry(agent, "proxy.outcome", &ids[0])).await.unwrap();
        assert!(!again.resolved, "{name}: already settled; the outcome is still recorded");
        let wallet = services.wallets.get(agent).await.unwrap().unwrap();
        assert_eq!((wallet.reserved_micros, wallet.daily_spent_micros), (2_000, 2_200), "{name}");
        let statuses: Vec<(String, Option<i64>)> = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::AgentId.eq(agent))
            .all(&services.db)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.request_id == ids[0] || e.request_id == ids[2])
            .map(|e| (e.status, e.settled_micros))
            .collect();
        assert!(
            statuses.contains(&("settled".into(), Some(700)))
                && statuses.contains(&("released".into(), None)),
            "{name}: {statuses:?}"
        );

        // A write the audit log refuses (no kind) fails alone; the rest commit.
        let before = commit.stats();
        let bad: Vec<String> = (0..3).map(|i| format!("req-{name}-bad-{i}")).collect();
        let lock = services.audit.chain_lock();
        let held = lock.lock_owned().await;
        let mut results = std::pin::pin!(futures::future::join_all(bad.iter().enumerate().map(|(i, id)| {
            let kind = if i == 1 { "" } else { "proxy.outcome" };
            commit.outcome(agent, id, Some(1), entry(agent, kind, id))
        })));
        assert!(futures::poll!(results.as_mut()).is_pending());
        drop(held);
        let results = results.await;
        let after = commit.stats();
        assert_eq!(after.retried_batches - before.retried_batches, 1, "{name}");
        assert_eq!((after.commits - before.commits, after.writes - before.writes), (2, 2), "{name}");
        assert!(results[0].is_ok() && results[2].is_ok(), "{name}");
        assert_eq!(results[1].as_ref().unwrap_err().status, 500, "{name}");
    }
    assert!(services.audit.verify(None).await.unwrap().valid);
}

/// A read-only store (what `aegis replay` reads through) serves reads but refuses
/// every write: nothing is held or recorded through it.
#[tokio::test]
async fn a_read_only_store_refuses_writes() {
    let s = TestServer::start().await;
    let services = &s.running.services;
    let sponsor = s.sponsor("readonly").await;
    let (agent, _) = s.agent(&sponsor, "reader").await;
    let agent: Uuid = agent["id"].as_str().unwrap().parse().unwrap();
    let mut read_only: Vec<Arc<dyn CallStore>> = vec![Arc::new(OrmStore::read_only(services.db.clone()))];
    read_only.extend(PgStore::read_only(&services.db).map(|pg| Arc::new(pg) as Arc<dyn CallStore>));
    for store in read_only {
        assert!(store.wallet(agent).await.unwrap().is_some(), "reads work");
        let announce: server::store::batch::Announce = Arc::new(|_| Box::pin(async {}));
        let commit =
            GroupCommit::new(store, services.wallets.reservation_ttl(), announce, services.metrics.clone());
        let refused =
            commit.intent(agent, "req-readonly", 1, entry(agent, "proxy.intent", "req-readonly")).await;
        assert_eq!(refused.unwrap_err().status, 500);
    }
    let holds = ledger_entries::Entity::find()
        .filter(ledger_entries::Column::RequestId.eq("req-readonly"))
        .all(&services.db)
        .await
        .unwrap();
    assert!(holds.is_empty(), "nothing was held");
}

/// Every store's batch waits for the chain's lock while another appender holds it,
/// and reads the head only once it has the lock: its record follows the other's
/// (a head read before the lock would reuse a seq and fail, or fork the chain).
#[tokio::test]
async fn appends_wait_for_the_chain_lock_and_read_the_head_after_it() {
    let s = TestServer::start().await;
    let services = &s.running.services;
    let sponsor = s.sponsor("chainlock").await;
    for store in stores(&s) {
        let name = store.name();
        let (agent, commit) = agent_and_commit(&s, &sponsor, &store, "lock").await;

        let mut first = services.audit.begin().await.unwrap();
        let a = first.append(entry(agent, "test.first", &format!("first-{name}"))).await.unwrap();
        let id = format!("second-{name}");
        let waiting = {
            let commit = commit.clone();
            let id = id.clone();
            tokio::spawn(
                async move { commit.intent(agent, &id, 1_000, entry(agent, "proxy.intent", &id)).await },
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "{name}: the batch waits for the chain lock");
        first.commit().await.unwrap();
        let Intent::Recorded(b) = waiting.await.unwrap().unwrap() else { panic!("{name}: refused") };
        assert_eq!(b.seq, a.seq + 1, "{name}: the head was read after the lock");
        let record = audit_events::Entity::find_by_id(b.seq).one(&services.db).await.unwrap().unwrap();
        assert_eq!(record.prev_hash, a.hash, "{name}");
    }
    assert!(services.audit.verify(None).await.unwrap().valid);
}

/// `AEGIS_HOT_PATH_STORE=portable` puts the hot path on sea-orm whatever the
/// database, and calls are served and settled through it.
#[tokio::test]
async fn the_portable_switch_serves_the_hot_path_through_sea_orm() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_HOT_PATH_STORE", "portable")]).await;
    assert_eq!(s.running.services.store.name(), "sea-orm");
    assert_eq!(s.running.services.proxy.commit.backend(), "sea-orm");
    let f = fixture(&s, &mock).await;
    let before = inline_reads(&s).await;
    let r = s
        .execute(
            &f.key,
            json!({"method": "GET", "url": mock.url("/echo"), "secret": "api", "cost_micros": 250}),
        )
        .await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    assert_eq!(inline_reads(&s).await - before, 0.0, "no read bypassed sea-orm");
    let wallet = s.running.services.wallets.get(f.agent_id).await.unwrap().unwrap();
    assert_eq!((wallet.daily_spent_micros, wallet.reserved_micros), (250, 0));
}

/// `ledger_entries`' sequential-scan and update counters for this server's
/// PostgreSQL database (as far as its backends have reported them).
async fn ledger_scans(s: &TestServer) -> (i64, i64) {
    use sea_orm::{ConnectionTrait, Statement};
    let row = s
        .running
        .services
        .db
        .query_one_raw(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT seq_tup_read, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'ledger_entries'",
        ))
        .await
        .unwrap()
        .unwrap();
    (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap())
}

/// Waits until the writer's backend has reported at least `updates` ledger updates
/// (a backend reports its counters when idle, within about ten seconds).
async fn ledger_scans_after(s: &TestServer, updates: i64) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let counts = ledger_scans(s).await;
        if counts.1 >= updates || tokio::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// PostgreSQL's writer plans each batch for the arrays it binds. Its statements,
/// prepared and run on a nearly empty ledger, must not keep a plan made for that
/// ledger: once the ledger holds 20,000 more rows, the next settlements find their
/// rows through the index instead of reading the table end to end once per batch
/// (what a generic plan cached on the empty table did: found in `aegis bench`).
#[tokio::test]
async fn postgres_batches_find_ledger_rows_by_index_as_the_ledger_grows() {
    use sea_orm::ConnectionTrait;
    // The janitor (which also reads the ledger) stays out of the measured window.
    let s = TestServer::start_with(&[("AEGIS_JANITOR_INTERVAL_SECS", "3600")]).await;
    let services = &s.running.services;
    let Some(pg) = PgStore::for_postgres(&services.db, &services.audit) else {
        eprintln!(
            "SKIPPED postgres_batches_find_ledger_rows_by_index_as_the_ledger_grows: PostgreSQL pass only"
        );
        return;
    };
    let store: Arc<dyn CallStore> = Arc::new(pg);
    let sponsor = s.sponsor("plans").await;
    let (agent, commit) = agent_and_commit(&s, &sponsor, &store, "plans").await;
    let settle = |id: String| {
        let commit = commit.clone();
        async move {
            let intent = commit.intent(agent, &id, 1, entry(agent, "proxy.intent", &id)).await.unwrap();
            assert!(matches!(intent, Intent::Recorded(_)), "{id}: {intent:?}");
            let done = commit.outcome(agent, &id, Some(1), entry(agent, "proxy.outcome", &id)).await.unwrap();
            assert!(done.resolved, "{id}");
        }
    };
    // More than the five runs after which PostgreSQL may settle on a generic plan.
    for i in 0..8 {
        settle(format!("warm-{i}")).await;
    }
    let (_, updated) = ledger_scans_after(&s, 8).await;
    assert!(updated >= 8, "the writer's counters were reported");
    services
        .db
        .execute_unprepared(
            "INSERT INTO ledger_entries (id, agent_id, request_id, status, reserved_micros, settled_micros, \
               day_window, month_window, created_at, expires_at, resolved_at) \
             SELECT gen_random_uuid(), agent_id, 'bulk-' || g, 'settled', 1, 1, day_window, month_window, \
               created_at, expires_at, resolved_at \
             FROM ledger_entries, generate_series(1, 20000) g WHERE request_id = 'warm-0'",
        )
        .await
        .unwrap();
    let (read_before, updated_before) = ledger_scans(&s).await;
    for i in 0..5 {
        settle(format!("grown-{i}")).await;
    }
    let (read_after, updated_after) = ledger_scans_after(&s, updated_before + 5).await;
    assert!(updated_after >= updated_before + 5, "the writer's counters were reported");
    let read = read_after - read_before;
    assert!(
        read < 20_000,
        "five batches read {read} ledger rows sequentially: a plan made for the empty ledger"
    );
    let wallet = services.wallets.get(agent).await.unwrap().unwrap();
    assert_eq!((wallet.daily_spent_micros, wallet.reserved_micros), (13, 0));
}
