//! Fault tolerance over real HTTP: AEGIS killed mid-load, its database or Redis gone,
//! upstreams that hang, overflow or reset, and a graceful shutdown. Each test asserts
//! what must hold afterwards: a verifiable audit log, no call without an intent, no
//! budget hold left behind, exact budgets.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use entity::{audit_checkpoints, audit_events, idempotency_records, ledger_entries, wallets};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::mock::MockUpstream;
use crate::support::{Response, TestServer, aegis, read};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real `aegis serve` process on the data directory and database of `owner`.
struct Proc {
    base: String,
    port: u16,
    child: tokio::process::Child,
}

impl Proc {
    async fn start(owner: &TestServer, vars: &[(&str, &str)], log: &std::path::Path) -> Self {
        let port = free_port();
        let config = &owner.running.services.config;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"));
        cmd.arg("serve")
            .env_clear()
            .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
            .env("AEGIS_DATA_DIR", &config.data_dir)
            .env("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")
            .env("AEGIS_BREAKER_DENIAL_RATE_PCT", "0")
            .env("AEGIS_BREAKER_BURST", "0")
            .env("AEGIS_BREAKER_SPEND_MICROS", "0")
            .env("RUST_LOG", "warn")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        if let Some(url) = &config.database_url {
            cmd.env("DATABASE_URL", url);
        }
        let child = cmd.spawn().expect("start aegis");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(Instant::now() < deadline, "aegis on {port} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { base, port, child }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        let mut r = reqwest::Client::new().post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        read(r.send().await.unwrap()).await
    }

    /// A sponsor and one permissive agent with a daily limit; returns (sponsor token, agent id, key).
    async fn spender(&self, daily_limit: i64) -> (String, String, String) {
        let email = format!("faults-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = self
            .post(
                "/api/auth/register",
                None,
                json!({"email": email, "password": crate::support::PASSWORD, "name": "faults"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let token = r.body["access_token"].as_str().unwrap().to_owned();
        let r = self
            .post(
                "/api/agents",
                Some(&token),
                json!({"name": "loaded", "policy": "permissive", "daily_limit_micros": daily_limit}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let id = r.body["agent"]["id"].as_str().unwrap().to_owned();
        (token, id, r.body["api_key"].as_str().unwrap().to_owned())
    }
}

/// `n` concurrent execute calls of `cost` to `url`, each answer (or transport error) kept.
fn launch(
    base: &str,
    key: &str,
    url: &str,
    cost: i64,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Option<u16>>> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    (0..n)
        .map(|_| {
            let (client, target, key, url) =
                (client.clone(), format!("{base}/api/proxy/execute"), key.to_owned(), url.to_owned());
            tokio::spawn(async move {
                let r = client
                    .post(target)
                    .bearer_auth(key)
                    .json(&json!({"method": "GET", "url": url, "cost_micros": cost}))
                    .send()
                    .await
                    .ok()?;
                Some(r.status().as_u16())
            })
        })
        .collect()
}

/// Polls `check` until it returns true or `secs` pass.
async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn held_entries(db: &DatabaseConnection) -> usize {
    ledger_entries::Entity::find()
        .filter(ledger_entries::Column::Status.eq("held"))
        .all(db)
        .await
        .unwrap()
        .len()
}

/// Every wallet's spend is exactly the sum of its settled ledger entries.
async fn assert_spend_matches_ledger(db: &DatabaseConnection) {
    let entries = ledger_entries::Entity::find().all(db).await.unwrap();
    for w in wallets::Entity::find().all(db).await.unwrap() {
        let settled: i64 = entries
            .iter()
            .filter(|e| e.agent_id == w.agent_id && e.status == "settled")
            .map(|e| e.settled_micros.unwrap_or(0))
            .sum();
        assert_eq!(w.daily_spent_micros, settled, "wallet {} spend vs its settled entries", w.agent_id);
        assert_eq!(w.reserved_micros, 0, "wallet {} still holds a reservation", w.agent_id);
    }
}

async fn audit_of_kind(db: &DatabaseConnection, kind: &str) -> Vec<audit_events::Model> {
    audit_events::Entity::find().filter(audit_events::Column::Kind.eq(kind)).all(db).await.unwrap()
}

/// SIGKILL under ~200 concurrent calls, restart on the same data: the audit log
/// verifies, every call that reached the upstream has its intent on record, every
/// outcome has an intent, the janitor releases the holds the dead process left, and
/// spend equals the settled ledger. SQLite by default; PostgreSQL when configured.
#[tokio::test]
async fn kill_9_mid_load_loses_no_intent_and_leaks_no_hold() {
    let owner = TestServer::start().await;
    let mock = MockUpstream::start().await;
    let log = owner.dir.path().join("aegis.log");
    let vars = [("AEGIS_RESERVATION_TTL_SECS", "5"), ("AEGIS_JANITOR_INTERVAL_SECS", "1")];
    let mut first = Proc::start(&owner, &vars, &log).await;
    let (_, _, key) = first.spender(1_000_000_000).await;

    // Half answer quickly, half stay in flight for seconds: however fast the
    // server is, the kill lands with calls answered and calls still going.
    let mut calls = launch(&first.base, &key, &mock.url("/slowish?ms=200"), 1000, 100);
    calls.extend(launch(&first.base, &key, &mock.url("/slowish?ms=5000"), 1000, 100));
    let db = &owner.running.services.db;
    // Mid-load: some calls answered, many in flight or queued.
    eventually(30, "calls completing", || async { audit_of_kind(db, "proxy.outcome").await.len() >= 5 })
        .await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    let answered = futures::future::join_all(calls).await;
    let completed = answered.iter().filter(|r| matches!(r, Ok(Some(200)))).count();
    let hits = mock.slowish_hits();
    assert!(hits >= 5 && completed < 200, "killed mid-load: {completed} completed, {hits} hits");

    let second = Proc::start(&owner, &vars, &log).await;
    let intents = audit_of_kind(db, "proxy.intent").await;
    let outcomes = audit_of_kind(db, "proxy.outcome").await;
    assert!(intents.len() >= hits, "{} intents for {hits} upstream hits", intents.len());
    assert!(outcomes.len() >= completed, "{} outcomes for {completed} answered calls", outcomes.len());
    let intent_ids: HashSet<_> = intents.iter().filter_map(|e| e.request_id.clone()).collect();
    for o in &outcomes {
        assert!(intent_ids.contains(o.request_id.as_ref().unwrap()), "outcome {} without intent", o.seq);
    }

    eprintln!(
        "kill -9: {completed} answered, {hits} upstream hits, {} intents, {} outcomes, {} holds left",
        intents.len(),
        outcomes.len(),
        held_entries(db).await
    );
    // The dead process's holds expire, and the restarted janitor releases them.
    eventually(20, "expired holds released", || async { held_entries(db).await == 0 }).await;
    assert_spend_matches_ledger(db).await;
    let cli = aegis(&owner, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);

    // And the restarted process serves.
    let r = second
        .post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": mock.url("/slowish?ms=0")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// PostgreSQL only: as root (CI containers) no file mode makes SQLite unwritable, so
/// the outage is made real on PostgreSQL — the database stops accepting connections
/// and its sessions are terminated. Calls are refused `503 stage: storage` with nothing
/// sent upstream, never a 500; when the database returns, service resumes without a
/// restart and the audit log verifies.
#[tokio::test]
async fn database_outage_answers_503_and_recovers_without_restart() {
    let Ok(admin_url) = std::env::var("AEGIS_TEST_DATABASE_URL") else {
        eprintln!(
            "SKIPPED database_outage_answers_503_and_recovers_without_restart: needs AEGIS_TEST_DATABASE_URL"
        );
        return;
    };
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let mock = MockUpstream::start().await;
    let sponsor = s.sponsor("outage").await;
    let r =
        s.post("/api/agents", Some(&sponsor.access), json!({"name": "steady", "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let call = |idem: Option<String>| {
        let mut body = json!({"method": "GET", "url": mock.url("/counted"), "cost_micros": 10});
        if let Some(k) = idem {
            body["idempotency_key"] = json!(k);
        }
        s.post("/api/proxy/execute", Some(&key), body)
    };
    assert_eq!(call(None).await.status, StatusCode::OK);
    let hits = mock.hits();

    let url = s.running.services.config.database_url.clone().unwrap();
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
    use sea_orm::ConnectionTrait;
    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")).await.unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await
        .unwrap();

    for i in 0..4 {
        let idem = (i % 2 == 1).then(|| format!("k{i}"));
        let r = call(idem).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
        assert_eq!((r.body["decision"].as_str(), r.body["stage"].as_str()), (Some("error"), Some("storage")));
    }
    assert_eq!(mock.hits(), hits, "nothing may reach the upstream while storage is down");

    admin.execute_unprepared(&format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(None).await;
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text);
        if r.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "service did not resume: {}", r.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(mock.hits(), hits + 1);
    let cli = aegis(&s, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
}

/// A TCP relay to Redis with a switch: when cut, it drops every connection and refuses new ones.
struct RedisRelay {
    url: String,
    up: Arc<AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
}

impl RedisRelay {
    async fn start(target: &str) -> Self {
        let target = target.trim_start_matches("redis://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let (up, cut) = (Arc::new(AtomicBool::new(true)), Arc::new(tokio::sync::Notify::new()));
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let (target, cut) = (target.clone(), cut2.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    let notified = cut.notified();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = notified => {}
                    }
                });
            }
        });
        Self { url, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Two servers on one PostgreSQL and one Redis; Redis is cut mid-load. Calls keep
/// succeeding, the budget stays exact (the database decides it), and once Redis is
/// back, events fan out across the servers again.
#[tokio::test]
async fn redis_outage_mid_load_keeps_serving_and_fan_out_returns() {
    let (Ok(_), Ok(redis)) =
        (std::env::var("AEGIS_TEST_DATABASE_URL"), std::env::var("AEGIS_TEST_REDIS_URL"))
    else {
        eprintln!(
            "SKIPPED redis_outage_mid_load_keeps_serving_and_fan_out_returns: needs AEGIS_TEST_DATABASE_URL and AEGIS_TEST_REDIS_URL"
        );
        return;
    };
    let relay = RedisRelay::start(&redis).await;
    let vars = [
        ("REDIS_URL", relay.url.as_str()),
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_BREAKER_DENIAL_RATE_PCT", "0"),
        ("AEGIS_BREAKER_BURST", "0"),
    ];
    let a = TestServer::start_with(&vars).await;
    let b = TestServer::start_sharing(&a, &vars).await;
    let mock = MockUpstream::start().await;
    let sponsor = a.sponsor("redis-outage").await;
    let sponsor_id: uuid::Uuid = sponsor.id.parse().unwrap();
    let r = a
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "spender", "policy": "permissive", "daily_limit_micros": 5_000_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (agent_id, key) =
        (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned());

    let r =
        a.post("/api/agents", Some(&sponsor.access), json!({"name": "other", "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let other_key = r.body["api_key"].as_str().unwrap().to_owned();

    // 400 calls of 100,000 against 5,000,000 through both servers; Redis goes away meanwhile.
    let bases = [a.base.clone(), b.base.clone()];
    let fired = {
        let (key, url) = (key.clone(), mock.url("/counted"));
        tokio::spawn(async move { crate::budget::fire(&bases, &key, &url, 400).await })
    };
    eventually(30, "calls reaching the upstream", || async { mock.hits() >= 10 }).await;
    relay.cut();
    let cut_at = Instant::now();
    // Served without Redis: the budget's last admissions happen during the outage.
    eventually(30, "the budget's admissions during the outage", || async { mock.hits() >= 50 }).await;
    // Still cut: a call outside the budget's agent is served too.
    let r = a
        .post("/api/proxy/execute", Some(&other_key), json!({"method": "GET", "url": mock.url("/echo")}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    relay.restore();
    let outage = cut_at.elapsed();
    let (allowed, denied) = fired.await.unwrap();
    assert_eq!((allowed, denied, mock.hits()), (50, 350, 50));
    let w = b.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
    assert_eq!(
        (w.body["daily_spent_micros"].as_i64(), w.body["reserved_micros"].as_i64()),
        (Some(5_000_000), Some(0)),
        "{}",
        w.text
    );
    // An event published on A reaches a subscriber on B again (fan-out reconnects with back-off).
    let mut on_b = b.running.services.events.subscribe(sponsor_id, None);
    // The reconnect back-off doubles up to 30 s, so allow one full step after a long outage.
    let deadline = Instant::now() + Duration::from_secs(35);
    let mut n = 0;
    'outer: loop {
        assert!(Instant::now() < deadline, "events did not fan out to B after Redis returned");
        n += 1;
        let r = a.post("/api/agents", Some(&sponsor.access), json!({"name": format!("probe-{n}")})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let created: Option<uuid::Uuid> = r.body["agent"]["id"].as_str().and_then(|id| id.parse().ok());
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                e = on_b.next() => {
                    let e = e.expect("bus open");
                    if e.kind == "agent.created" && e.agent_id == created {
                        break 'outer;
                    }
                }
                _ = &mut wait => break,
            }
        }
    }
    eprintln!("Redis outage {outage:?}; fan-out back after {n} probe(s)");
    let cli = aegis(&a, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
}

/// A listener that accepts, waits for the request, and closes without reading it:
/// the kernel answers the unread data with a TCP reset.
async fn resetting_upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.readable().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(stream);
        }
    });
    port
}

/// Every way an upstream can fail — reset, hang, oversize, refused — answers
/// 502/504 at stage `upstream`, releases the budget hold, and audits the outcome.
#[tokio::test]
async fn failed_upstreams_release_the_hold_and_audit_the_error() {
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_UPSTREAM_TIMEOUT_SECS", "1"),
        ("AEGIS_UPSTREAM_MAX_BYTES", "1000"),
        ("AEGIS_BREAKER_ERROR_RATE_PCT", "0"),
    ])
    .await;
    let mock = MockUpstream::start().await;
    let sponsor = s.sponsor("failing").await;
    let r = s
        .post(
            "/api/agents",
            Some(&sponsor.access),
            json!({"name": "unlucky", "policy": "permissive", "daily_limit_micros": 1_000_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (agent_id, key) =
        (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned());
    let reset = resetting_upstream().await;
    let refused = free_port();
    let cases = [
        ("reset", format!("http://127.0.0.1:{reset}/x"), StatusCode::BAD_GATEWAY),
        ("hang", mock.url("/slow"), StatusCode::GATEWAY_TIMEOUT),
        ("huge", mock.url("/big?bytes=100000"), StatusCode::BAD_GATEWAY),
        ("refused", format!("http://127.0.0.1:{refused}/x"), StatusCode::BAD_GATEWAY),
    ];
    for (label, url, expected) in cases {
        let r = s
            .post(
                "/api/proxy/execute",
                Some(&key),
                json!({"method": "GET", "url": url, "cost_micros": 250_000}),
            )
            .await;
        assert_eq!(r.status, expected, "{label}: {}", r.text);
        assert_eq!(
            (r.body["decision"].as_str(), r.body["stage"].as_str()),
            (Some("error"), Some("upstream"))
        );
        let w = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
        assert_eq!(
            (w.body["reserved_micros"].as_i64(), w.body["daily_spent_micros"].as_i64()),
            (Some(0), Some(0)),
            "{label}: {}",
            w.text
        );
        let request_id = r.body["request_id"].as_str().unwrap();
        let outcome = audit_events::Entity::find()
            .filter(audit_events::Column::RequestId.eq(request_id))
            .filter(audit_events::Column::Kind.eq("proxy.outcome"))
            .one(&s.running.services.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{label}: no outcome audited"));
        assert_eq!(
            (outcome.decision.as_deref(), outcome.stage.as_deref(), Some(outcome.seq)),
            (Some("error"), Some("upstream"), r.body["audit_seq"].as_i64()),
            "{label}"
        );
    }
    let entries = ledger_entries::Entity::find().all(&s.running.services.db).await.unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e.status == "released"), "{entries:?}");
}

/// SIGTERM with a call in flight: the call completes, the listener closes, the
/// process exits 0, and the final checkpoint covers the last audit record.
#[tokio::test]
async fn sigterm_drains_in_flight_calls_and_checkpoints_the_head() {
    let owner = TestServer::start().await;
    let mock = MockUpstream::start().await;
    let log = owner.dir.path().join("aegis.log");
    let mut p = Proc::start(&owner, &[("AEGIS_SHUTDOWN_GRACE_SECS", "20")], &log).await;
    let (_, _, key) = p.spender(0).await;

    let in_flight = launch(&p.base, &key, &mock.url("/slowish?ms=1000"), 0, 1).pop().unwrap();
    eventually(10, "the slow call reaching the upstream", || async { mock.slowish_hits() == 1 }).await;
    let pid = p.child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());

    assert_eq!(in_flight.await.unwrap(), Some(200), "the in-flight call completes");
    let port = p.port;
    eventually(5, "the listener to close", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err()
    })
    .await;
    let status = tokio::time::timeout(Duration::from_secs(15), p.child.wait())
        .await
        .expect("aegis exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");

    let db = &owner.running.services.db;
    let last = audit_events::Entity::find().order_by_desc(audit_events::Column::Seq).one(db).await.unwrap();
    let checkpoint = audit_checkpoints::Entity::find()
        .order_by_desc(audit_checkpoints::Column::Seq)
        .one(db)
        .await
        .unwrap();
    let last = last.expect("audit records").seq;
    assert_eq!(checkpoint.map(|c| c.seq), Some(last), "the final checkpoint covers the head");
    let outcome = audit_of_kind(db, "proxy.outcome").await;
    assert_eq!(outcome.len(), 1);
    let cli = aegis(&owner, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
}

/// A caller that hangs up mid-call (an agent's HTTP client timing out, a sponsor
/// closing the tab while an approved call runs) does not stop the call half way:
/// once performed it is settled at its cost and its outcome audited; an idempotent
/// retry gets that answer instead of a second call or a stuck "in progress"; the
/// approval keeps its outcome.
#[tokio::test]
async fn a_caller_hanging_up_mid_call_leaves_it_settled_and_audited() {
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let mock = MockUpstream::start().await;
    let db = s.running.services.db.clone();
    let sponsor = s.sponsor("hang-up").await;
    let (agent_id, key) = s
        .agent_with(
            &sponsor,
            json!({"name": "impatient", "policy": "permissive", "daily_limit_micros": 1_000_000}),
        )
        .await;
    let call = json!({"method": "GET", "url": mock.url("/slowish?ms=1500"), "cost_micros": 250_000,
                      "idempotency_key": "hang-up-1"});
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().unwrap();
    let gone = impatient.post(s.url("/api/proxy/execute")).bearer_auth(&key).json(&call).send().await;
    assert!(gone.is_err_and(|e| e.is_timeout()), "the client gives up before the upstream answers");
    assert_eq!(mock.slowish_hits(), 1, "the call reached the upstream");

    // The outcome record, the settlement and the key's stored answer are written in
    // that order; a retry before the last one is rightly `409 in progress`.
    eventually(10, "the abandoned call's stored answer", || async {
        idempotency_records::Entity::find().all(&db).await.unwrap().iter().any(|r| r.response_status != 0)
    })
    .await;
    let outcomes = audit_of_kind(&db, "proxy.outcome").await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!((outcomes[0].decision.as_deref(), outcomes[0].status), (Some("allow"), Some(200)));
    let entries = ledger_entries::Entity::find().all(&db).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| (e.status.as_str(), e.settled_micros)).collect::<Vec<_>>(),
        [("settled", Some(250_000))],
        "settled at its cost, not left held for the janitor to release"
    );
    assert_spend_matches_ledger(&db).await;
    let w = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
    assert_eq!(w.body["daily_spent_micros"], 250_000, "{}", w.text);

    let retry = s.execute(&key, call).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.text);
    assert_eq!(
        (retry.body["replayed"].as_bool(), retry.body["audit_seq"].as_i64()),
        (Some(true), Some(outcomes[0].seq))
    );
    assert_eq!(mock.slowish_hits(), 1, "the retry was answered, not performed again");

    // The same for an approved call whose sponsor hangs up while it runs.
    let (_, asking_key) = crate::approvals::asking_agent(&s, &sponsor, "asking").await;
    let r = s
        .execute(
            &asking_key,
            json!({"method": "GET", "url": mock.url("/slowish?ms=1500"), "cost_micros": 1000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval_id = r.body["approval_id"].as_str().unwrap().to_owned();
    let gone = impatient
        .post(s.url(&format!("/api/approvals/{approval_id}/approve")))
        .bearer_auth(&sponsor.access)
        .json(&json!({}))
        .send()
        .await;
    assert!(gone.is_err_and(|e| e.is_timeout()), "the sponsor gives up before the upstream answers");
    let path = format!("/api/approvals/{approval_id}");
    eventually(10, "the approved call's outcome", || async {
        !s.get(&path, &sponsor.access).await.body["outcome"].is_null()
    })
    .await;
    let approval = s.get(&path, &sponsor.access).await.body;
    assert_eq!(approval["status"], "approved");
    assert_eq!(
        (approval["outcome"]["status"].as_u64(), approval["outcome"]["body"]["decision"].as_str()),
        (Some(200), Some("allow")),
        "{approval}"
    );
    assert_eq!(mock.slowish_hits(), 2);
    assert_eq!(held_entries(&db).await, 0);
    assert_spend_matches_ledger(&db).await;
}

/// `kill -9` while an approved call is being performed: after the restart, once the
/// call's hold has expired, the approval gets an outcome saying the call was
/// interrupted (with how far the audit log shows it got), audited as
/// `approval.interrupted`, instead of staying `approved` without an answer for ever.
#[tokio::test]
async fn an_approved_call_cut_by_kill_9_gets_an_interrupted_outcome() {
    let owner = TestServer::start().await;
    let mock = MockUpstream::start().await;
    let log = owner.dir.path().join("aegis.log");
    let vars = [("AEGIS_RESERVATION_TTL_SECS", "3"), ("AEGIS_JANITOR_INTERVAL_SECS", "1")];
    let mut first = Proc::start(&owner, &vars, &log).await;
    let (token, _, _) = first.spender(1_000_000_000).await;
    let r = first
        .post("/api/policies", Some(&token), json!({"name": "ask", "source": crate::approvals::ASK_ALWAYS}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = first.post("/api/agents", Some(&token), json!({"name": "asking", "policy": "ask"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let r = first
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "GET", "url": mock.url("/slowish?ms=5000"), "cost_micros": 500}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let (approval_id, request_id) = (
        r.body["approval_id"].as_str().unwrap().to_owned(),
        r.body["request_id"].as_str().unwrap().to_owned(),
    );

    // Approve; the call reaches the upstream, and the process dies before it answers.
    let approving = {
        let (url, token) = (format!("{}/api/approvals/{approval_id}/approve", first.base), token.clone());
        tokio::spawn(async move {
            reqwest::Client::new().post(url).bearer_auth(token).json(&json!({})).send().await
        })
    };
    eventually(10, "the approved call reaching the upstream", || async { mock.slowish_hits() == 1 }).await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    assert!(approving.await.unwrap().is_err(), "the sponsor got no answer from the dead process");

    let second = Proc::start(&owner, &vars, &log).await;
    let poll = format!("{}/api/proxy/approvals/{approval_id}", second.base);
    let client = reqwest::Client::new();
    let mut seen = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen["outcome"].is_null() {
        assert!(Instant::now() < deadline, "the approval never got an outcome: {seen}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = client.get(&poll).bearer_auth(&key).send().await.unwrap().json().await.unwrap();
    }
    assert_eq!(seen["status"], "approved", "{seen}");
    let outcome = &seen["outcome"];
    assert_eq!(
        (outcome["status"].as_u64(), outcome["body"]["decision"].as_str(), outcome["body"]["stage"].as_str()),
        (Some(502), Some("error"), Some("upstream")),
        "{seen}"
    );
    assert!(outcome["body"]["reason"].as_str().unwrap().starts_with("interrupted"), "{seen}");
    let db = &owner.running.services.db;
    let intent = audit_of_kind(db, "proxy.intent").await;
    assert_eq!(intent.len(), 1, "the call had its intent on record before it was sent");
    assert_eq!(outcome["body"]["intent_audit_seq"].as_i64(), Some(intent[0].seq), "{seen}");
    assert!(outcome["body"]["outcome_audit_seq"].is_null(), "no outcome was recorded: {seen}");
    let closed = audit_of_kind(db, "approval.interrupted").await;
    assert_eq!(closed.len(), 1);
    assert_eq!(
        (closed[0].request_id.as_deref(), Some(closed[0].seq)),
        (Some(request_id.as_str()), outcome["audit_seq"].as_i64())
    );
    eventually(20, "the interrupted call's hold released", || async { held_entries(db).await == 0 }).await;
    assert_spend_matches_ledger(db).await;
    let cli = aegis(&owner, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
}

/// Overload: past `AEGIS_PROXY_MAX_IN_FLIGHT` calls being performed, a call is shed
/// at once — `503 {decision: "error", stage: "overload"}` with `Retry-After`,
/// nothing performed or audited — instead of queueing work its caller may abandon;
/// calls are admitted again as soon as the slow ones finish.
#[tokio::test]
async fn past_the_in_flight_bound_calls_are_shed_with_retry_after() {
    let s =
        TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"), ("AEGIS_PROXY_MAX_IN_FLIGHT", "2")])
            .await;
    let mock = MockUpstream::start().await;
    let db = s.running.services.db.clone();
    let sponsor = s.sponsor("crowded").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "busy", "policy": "permissive"})).await;
    let slow = json!({"method": "GET", "url": mock.url("/slowish?ms=1500")});
    let running: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, key, body) =
                (s.http.clone(), s.url("/api/proxy/execute"), key.clone(), slow.clone());
            tokio::spawn(
                async move { http.post(url).bearer_auth(key).json(&body).send().await.unwrap().status() },
            )
        })
        .collect();
    eventually(10, "two slow calls in flight", || async { mock.slowish_hits() == 2 }).await;

    let r = s.http.post(s.url("/api/proxy/execute")).bearer_auth(&key).json(&slow).send().await.unwrap();
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let r = read(r).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(
        (r.body["decision"].as_str(), r.body["stage"].as_str(), &r.body["audit_seq"]),
        (Some("error"), Some("overload"), &Value::Null),
        "{}",
        r.text
    );
    let shed_id = r.body["request_id"].as_str().unwrap();
    let audited = audit_events::Entity::find()
        .filter(audit_events::Column::RequestId.eq(shed_id))
        .all(&db)
        .await
        .unwrap();
    assert!(audited.is_empty(), "a shed call is not audited: {audited:?}");
    assert_eq!(mock.slowish_hits(), 2, "the shed call was not performed");

    for call in running {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/slowish?ms=0")})).await;
    assert_eq!(r.status, StatusCode::OK, "admitted again once the slow calls finished: {}", r.text);
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("aegis_proxy_requests_total{decision=\"error\",stage=\"overload\"} 1\n"),
        "the shed call is counted in /metrics: {metrics}"
    );
}

/// `kill -9` mid-call with an idempotency key: after the restart the key answers
/// `409 idempotency_in_progress` while the call could still be running, then —
/// once the reservation TTL has passed — `502` "interrupted" naming its intent
/// record, the same on every retry, and the call is never performed twice.
#[tokio::test]
async fn an_idempotency_key_cut_by_kill_9_is_answered_not_stuck() {
    let owner = TestServer::start().await;
    let mock = MockUpstream::start().await;
    let log = owner.dir.path().join("aegis.log");
    let vars = [("AEGIS_RESERVATION_TTL_SECS", "3"), ("AEGIS_JANITOR_INTERVAL_SECS", "1")];
    let mut first = Proc::start(&owner, &vars, &log).await;
    let (_, _, key) = first.spender(1_000_000_000).await;
    let call = json!({"method": "GET", "url": mock.url("/slowish?ms=5000"), "cost_micros": 700, "idempotency_key": "once-only"});
    let cut = launch_one(&first.base, &key, call.clone());
    eventually(10, "the call reaching the upstream", || async { mock.slowish_hits() == 1 }).await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    assert!(cut.await.unwrap().is_err(), "the agent got no answer from the dead process");

    let second = Proc::start(&owner, &vars, &log).await;
    let r = second.post("/api/proxy/execute", Some(&key), call.clone()).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "idempotency_in_progress"), "{}", r.text);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let db = &owner.running.services.db;
    let intent = audit_of_kind(db, "proxy.intent").await;
    assert_eq!(intent.len(), 1);
    for _ in 0..2 {
        let r = second.post("/api/proxy/execute", Some(&key), call.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text);
        assert_eq!(
            (r.body["decision"].as_str(), r.body["replayed"].as_bool(), r.body["intent_audit_seq"].as_i64()),
            (Some("error"), Some(true), Some(intent[0].seq)),
            "{}",
            r.text
        );
        assert!(r.body["reason"].as_str().unwrap().starts_with("interrupted"), "{}", r.text);
        assert_eq!(r.body["request_id"].as_str(), intent[0].request_id.as_deref());
    }
    assert_eq!(mock.slowish_hits(), 1, "never performed twice");
    eventually(20, "the interrupted call's hold released", || async { held_entries(db).await == 0 }).await;
    assert_spend_matches_ledger(db).await;
}

fn launch_one(
    base: &str,
    key: &str,
    body: Value,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (target, key) = (format!("{base}/api/proxy/execute"), key.to_owned());
    tokio::spawn(async move { reqwest::Client::new().post(target).bearer_auth(key).json(&body).send().await })
}
