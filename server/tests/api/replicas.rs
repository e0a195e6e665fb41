//! Two `aegis` processes — separate OS processes, as in production — on one
//! PostgreSQL database and one Redis: budgets stay exact, the audit chain stays one
//! line, an approval asked on one replica is approved on the other, and a dashboard
//! connected to one replica hears what happens on the other.
//!
//! Needs `AEGIS_TEST_DATABASE_URL` (PostgreSQL) and `AEGIS_TEST_REDIS_URL`; CI sets both.

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::mock::MockUpstream;
use crate::support::{Response, TestServer, read};

pub struct Replica {
    pub base: String,
    child: tokio::process::Child,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Replica {
    /// Starts `aegis serve` on the database and data directory of `owner`.
    async fn start(owner: &TestServer, redis: &str, log: &std::path::Path) -> Self {
        let config = &owner.running.services.config;
        let data_dir = config.data_dir.display().to_string();
        Self::spawn(
            &[
                ("AEGIS_DATA_DIR", data_dir.as_str()),
                ("DATABASE_URL", config.database_url.as_deref().expect("PostgreSQL")),
                ("REDIS_URL", redis),
                ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
                // 950 budget denials in a second would trip the breaker; not under test here.
                ("AEGIS_BREAKER_DENIAL_RATE_PCT", "0"),
                ("AEGIS_BREAKER_BURST", "0"),
            ],
            log,
        )
        .await
    }

    /// Starts `aegis serve` on a free port with exactly `vars` as its environment
    /// (plus its address and log level), and waits until it answers `/healthz`.
    pub async fn spawn<V: AsRef<std::ffi::OsStr>>(vars: &[(&str, V)], log: &std::path::Path) -> Self {
        let port = free_port();
        let log = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
            .arg("serve")
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start aegis");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica on {port} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { base, child }
    }

    /// `host:port` it listens on.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill replica");
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Response {
        let mut r = reqwest::Client::new().request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        read(r.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }
}

#[tokio::test]
async fn two_processes_share_budgets_audit_approvals_and_events() {
    let (Ok(_), Ok(redis)) =
        (std::env::var("AEGIS_TEST_DATABASE_URL"), std::env::var("AEGIS_TEST_REDIS_URL"))
    else {
        eprintln!(
            "SKIPPED two_processes_share_budgets_audit_approvals_and_events: needs AEGIS_TEST_DATABASE_URL and AEGIS_TEST_REDIS_URL"
        );
        return;
    };
    // The in-process server creates the database and the keys; the replicas share both.
    let owner = TestServer::start().await;
    let mock = MockUpstream::start().await;
    let (log_a, log_b) = (owner.dir.path().join("a.log"), owner.dir.path().join("b.log"));
    let (a, b) = tokio::join!(Replica::start(&owner, &redis, &log_a), Replica::start(&owner, &redis, &log_b));

    // A sponsor signed up on A is signed in on B too (shared keys and database).
    let sponsor = owner.sponsor("fleet").await;
    let token = sponsor.access.as_str();
    assert_eq!(b.get("/api/auth/me", token).await.status, StatusCode::OK);

    // B's dashboard socket hears what happens on A.
    let (mut ws, _) = tokio_tungstenite::connect_async({
        // The token in a header, never the URL (`?token=` is refused).
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            format!("{}/ws", b.base.replace("http", "ws")),
        )
        .unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    })
    .await
    .expect("WebSocket on B");
    let r = a
        .post(
            "/api/agents",
            token,
            json!({"name": "spender", "policy": "permissive", "daily_limit_micros": 5_000_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (agent_id, key) =
        (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned());
    let event = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("event on B")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "heartbeat" {
                break v;
            }
        }
    };
    assert_eq!(
        (event["type"].as_str(), event["agent_id"].as_str()),
        (Some("agent.created"), Some(agent_id.as_str()))
    );

    // 1,000 concurrent calls of 100,000 against 5,000,000, half through each replica.
    let bases = [a.base.clone(), b.base.clone()];
    let (allowed, denied) = crate::budget::fire(&bases, &key, &mock.url("/counted"), 1000).await;
    assert_eq!((allowed, denied), (50, 950));
    assert_eq!(mock.hits(), 50);
    let w = b.get(&format!("/api/agents/{agent_id}/wallet"), token).await;
    assert_eq!(
        (w.body["daily_spent_micros"].as_i64(), w.body["reserved_micros"].as_i64()),
        (Some(5_000_000), Some(0))
    );

    // An approval asked through A is approved through B; A's poller gets the result.
    let (_, asking_key) = crate::approvals::asking_agent(&owner, &sponsor, "asker").await;
    let r = a
        .post("/api/proxy/execute", &asking_key, json!({"method": "GET", "url": mock.url("/echo/approved")}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval = r.body["approval_id"].as_str().unwrap().to_owned();
    let poller = {
        let url = format!("{}/api/proxy/approvals/{approval}?wait=20", a.base);
        let key = asking_key.clone();
        tokio::spawn(async move {
            read(reqwest::Client::new().get(url).bearer_auth(key).send().await.unwrap()).await
        })
    };
    let r = b.post(&format!("/api/approvals/{approval}/approve"), token, json!({})).await;
    assert_eq!((r.status, r.body["outcome"]["status"].as_u64()), (StatusCode::OK, Some(200)), "{}", r.text);
    let polled = poller.await.unwrap();
    assert_eq!(polled.body["status"], "approved", "{}", polled.text);
    assert_eq!(polled.body["outcome"]["body"]["upstream"]["status"], 200);

    // One linear chain, verified by each replica and by the CLI.
    for replica in [&a, &b] {
        let v = replica.get("/api/audit/verify", token).await;
        assert_eq!(v.body["valid"], true, "{}", v.text);
    }
    let cli = crate::support::aegis(&owner, &["verify-audit"]).await;
    assert_eq!(cli.code, 0, "{}{}", cli.stdout, cli.stderr);
}
