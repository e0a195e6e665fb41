//! Notification channels (issue #20): signed webhooks over real HTTP to a loopback
//! receiver that verifies every delivery with the Standard Webhooks reference library
//! (`server/tests/sdk/webhook_receiver.py`, PyPI `standardwebhooks`), retries after a
//! 500, a restart mid-backoff, egress rules on targets, and auto-disable.
//! The receiver tests run when `AEGIS_SDK_PYTHON` names the test venv's python.

use std::collections::VecDeque;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::approvals::asking_agent;
use crate::support::{Sponsor, TestServer};

/// The Python webhook receiver, driven over its stdin and stdout.
struct Receiver {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    stash: VecDeque<Value>,
    port: u16,
}

impl Receiver {
    async fn start(python: &str) -> Self {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/webhook_receiver.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the receiver starts");
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let first =
            tokio::time::timeout(Duration::from_secs(30), out.next_line()).await.unwrap().unwrap().unwrap();
        let port = first.strip_prefix("listening ").expect("listening <port>").parse().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                if tx.send(serde_json::from_str::<Value>(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        Self { child, stdin, lines, stash: VecDeque::new(), port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Sends a command and waits for its acknowledgement (deliveries seen meanwhile are kept).
    async fn command(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        loop {
            let v = tokio::time::timeout(Duration::from_secs(10), self.lines.recv()).await.unwrap().unwrap();
            if v.get("ack").is_some() {
                return;
            }
            self.stash.push_back(v);
        }
    }

    /// The next delivery the receiver saw.
    async fn next(&mut self, within: Duration) -> Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        tokio::time::timeout(within, self.lines.recv())
            .await
            .expect("a delivery arrives in time")
            .expect("the receiver runs")
    }

    /// Whether another delivery arrives within `within`.
    async fn nothing_more(&mut self, within: Duration) -> bool {
        self.stash.is_empty() && tokio::time::timeout(within, self.lines.recv()).await.is_err()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn python() -> Option<String> {
    std::env::var("AEGIS_SDK_PYTHON").ok()
}

const LOOPBACK: [(&str, &str); 2] =
    [("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"), ("AEGIS_WEBHOOK_ALLOW_HTTP", "1")];

async fn channel(s: &TestServer, who: &Sponsor, url: &str, events: &[&str]) -> (String, String) {
    let r = s
        .post("/api/channels", Some(&who.access), json!({"kind": "webhook", "url": url, "events": events}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (r.body["id"].as_str().unwrap().to_owned(), r.body["secret"].as_str().unwrap().to_owned())
}

async fn deliveries(s: &TestServer, who: &Sponsor, channel: &str) -> Vec<Value> {
    let r = s.get(&format!("/api/channels/{channel}/deliveries"), &who.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().clone()
}

/// Polls the delivery log until `done` holds for it.
async fn log_until(
    s: &TestServer,
    who: &Sponsor,
    channel: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let items = deliveries(s, who, channel).await;
        if done(&items) {
            return items;
        }
        assert!(tokio::time::Instant::now() < deadline, "delivery log never got there: {items:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_verified(d: &Value) {
    assert_eq!(d["verified"], true, "the reference library verifies AEGIS's signature: {d}");
    assert_eq!(d["tampered_rejected"], true, "and refuses the body changed: {d}");
    assert_eq!(d["wrong_key_rejected"], true, "and refuses another key: {d}");
}

async fn suspend(s: &TestServer, who: &Sponsor, agent: &str) {
    let r =
        s.post(&format!("/api/agents/{agent}/suspend"), Some(&who.access), json!({"reason": "test"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn channels_webhooks_are_signed_filtered_retried_after_a_500_and_logged() {
    let Some(python) = python() else {
        eprintln!("SKIPPED channels_webhooks_…: AEGIS_SDK_PYTHON is not set");
        return;
    };
    let mut rx = Receiver::start(&python).await;
    let s = TestServer::start_with(&[LOOPBACK[0], LOOPBACK[1], ("AEGIS_WEBHOOK_RETRY_BASE_MS", "300")]).await;
    let owner = s.sponsor("hooks").await;
    let (channel_id, secret) =
        channel(&s, &owner, &rx.url(), &["approval.requested", "agent.suspended"]).await;
    assert!(secret.starts_with("whsec_") && secret.len() > 40, "{secret}");

    // The secret is shown once: not in the list, not in the audit.
    let r = s.get("/api/channels", &owner.access).await;
    assert_eq!(r.body[0]["id"], channel_id.as_str(), "{}", r.text);
    assert_eq!(r.body[0]["events"], json!(["agent.suspended", "approval.requested"]));
    assert!(!r.text.contains(&secret[6..]) && !r.text.contains("whsec_"), "{}", r.text);
    let r = s.get("/api/audit?limit=20", &owner.access).await;
    assert!(r.text.contains("channel.created") && !r.text.contains(&secret[6..]), "{}", r.text);
    assert!(!r.text.contains("/hook"), "the audit keeps the origin, not the path: {}", r.text);

    rx.command(&format!("secret {secret}")).await;
    rx.command("fail 1").await;

    // An approval is requested: the receiver answers 500, then AEGIS retries.
    let (agent, key) = asking_agent(&s, &owner, "careful").await;
    let r = s
        .execute(&key, json!({"method": "POST", "url": format!("http://127.0.0.1:{}/charge", rx.port), "body": "card=4242424242424242"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let approval = r.body["approval_id"].as_str().unwrap().to_owned();
    let first = rx.next(Duration::from_secs(10)).await;
    assert_verified(&first);
    assert_eq!(
        (first["type"].as_str(), first["answered"].as_i64()),
        (Some("approval.requested"), Some(500)),
        "{first}"
    );
    let body = &first["body"];
    assert_eq!(body["data"]["details"]["approval_id"], approval.as_str(), "{body}");
    assert_eq!(body["data"]["agent_id"], agent.as_str());
    assert_eq!(body["data"]["org_id"], owner.id.as_str());
    assert!(!body.to_string().contains("4242"), "no request body in a notification: {body}");
    let second = rx.next(Duration::from_secs(10)).await;
    assert_verified(&second);
    assert_eq!(second["id"], first["id"], "a retry keeps its webhook-id");
    assert_eq!(second["answered"], 200);
    let log =
        log_until(&s, &owner, &channel_id, |d| d.first().is_some_and(|d| d["status"] == "delivered")).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["event_id"], first["id"]);
    assert_eq!(log[0]["event_type"], "approval.requested");
    assert_eq!(
        (log[0]["attempts"].as_i64(), log[0]["last_status_code"].as_i64()),
        (Some(2), Some(200)),
        "{log:?}"
    );

    // Only subscribed types go out: the new agent's agent.created does not, its suspension does.
    let (other, _) = s.agent(&owner, "plain").await;
    suspend(&s, &owner, other["id"].as_str().unwrap()).await;
    let next = rx.next(Duration::from_secs(10)).await;
    assert_verified(&next);
    assert_eq!(next["type"], "agent.suspended", "{next}");

    // The test button: one signed channel.test, answered at once and logged.
    let r = s.post(&format!("/api/channels/{channel_id}/test"), Some(&owner.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["status"].as_str(), r.body["event_type"].as_str()),
        (Some("delivered"), Some("channel.test"))
    );
    let test = rx.next(Duration::from_secs(10)).await;
    assert_verified(&test);
    assert_eq!(
        (test["type"].as_str(), test["id"].as_str()),
        (Some("channel.test"), r.body["event_id"].as_str())
    );
    assert_eq!(deliveries(&s, &owner, &channel_id).await.len(), 3);

    // A failed test is reported, not retried.
    rx.command("fail 1").await;
    let r = s.post(&format!("/api/channels/{channel_id}/test"), Some(&owner.access), json!({})).await;
    assert_eq!(
        (r.body["status"].as_str(), r.body["last_status_code"].as_i64()),
        (Some("failed"), Some(500)),
        "{}",
        r.text
    );
    assert!(r.body["last_error"].as_str().unwrap().contains("500"), "{}", r.text);
    assert_eq!(rx.next(Duration::from_secs(5)).await["answered"], 500);
    assert!(rx.nothing_more(Duration::from_millis(1500)).await, "a test send is attempted once");

    // Removed: nothing more is sent.
    let r = s.send(Method::DELETE, &format!("/api/channels/{channel_id}"), Some(&owner.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    suspend(&s, &owner, &agent).await;
    assert!(rx.nothing_more(Duration::from_millis(1500)).await, "a removed channel gets nothing");
    let r = s.get(&format!("/api/channels/{channel_id}/deliveries"), &owner.access).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
}

#[tokio::test]
async fn channels_a_restart_mid_backoff_loses_nothing() {
    let Some(python) = python() else {
        eprintln!("SKIPPED channels_a_restart_mid_backoff_loses_nothing: AEGIS_SDK_PYTHON is not set");
        return;
    };
    let mut rx = Receiver::start(&python).await;
    let vars = [LOOPBACK[0], LOOPBACK[1], ("AEGIS_WEBHOOK_RETRY_BASE_MS", "2000")];
    let a = TestServer::start_with(&vars).await;
    let owner = a.sponsor("restart").await;
    let (channel_id, secret) = channel(&a, &owner, &rx.url(), &["agent.suspended"]).await;
    rx.command(&format!("secret {secret}")).await;
    rx.command("fail 1").await;
    let (agent, _) = a.agent(&owner, "bot").await;
    suspend(&a, &owner, agent["id"].as_str().unwrap()).await;
    let first = rx.next(Duration::from_secs(10)).await;
    assert_eq!(first["answered"], 500, "{first}");
    let log = log_until(&a, &owner, &channel_id, |d| d.first().is_some_and(|d| d["attempts"] == 1)).await;
    assert_eq!(log[0]["status"], "pending", "waiting for its retry: {log:?}");

    // The process stops mid-backoff; a new one on the same database takes over.
    a.running.task.abort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.nothing_more(Duration::from_millis(100)).await);
    let b = TestServer::start_sharing(&a, &vars).await;
    let second = rx.next(Duration::from_secs(15)).await;
    assert_verified(&second);
    assert_eq!((&second["id"], second["answered"].as_i64()), (&first["id"], Some(200)), "{second}");
    let log =
        log_until(&b, &owner, &channel_id, |d| d.first().is_some_and(|d| d["status"] == "delivered")).await;
    assert_eq!(log[0]["attempts"], 2, "{log:?}");
    assert!(rx.nothing_more(Duration::from_millis(1000)).await, "delivered once after the restart");
}

#[tokio::test]
async fn channels_targets_obey_egress_rules_and_a_failing_channel_disables_itself() {
    // A loopback listener that counts connections: nothing may reach it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // No loopback exception here (only its port): a webhook must not reach what an agent could not.
    let ports = format!("443,{port}");
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_PORTS", ports.as_str()),
        ("AEGIS_WEBHOOK_DISABLE_AFTER", "3"),
        ("AEGIS_WEBHOOK_MAX_ATTEMPTS", "2"),
        ("AEGIS_WEBHOOK_RETRY_BASE_MS", "100"),
    ])
    .await;
    let owner = s.sponsor("egress").await;
    let create = |url: &str, kind: &str, events: Value| json!({"kind": kind, "url": url, "events": events});
    for (body, status, code) in [
        (create("https://127.0.0.1/hook", "webhook", json!(["agent.suspended"])), 400, "webhook_url_refused"),
        (
            create("https://169.254.169.254/latest", "webhook", json!(["agent.suspended"])),
            400,
            "webhook_url_refused",
        ),
        (
            create("https://metadata.google.internal/", "webhook", json!(["agent.suspended"])),
            400,
            "webhook_url_refused",
        ),
        (
            create("https://user:pw@hooks.example.com/", "webhook", json!(["agent.suspended"])),
            400,
            "webhook_url_refused",
        ),
        (
            create("http://hooks.example.com/", "webhook", json!(["agent.suspended"])),
            400,
            "webhook_url_refused",
        ),
        (create("https://hooks.example.com/", "webhook", json!(["agent.nope"])), 400, "unknown_event"),
        (create("https://hooks.example.com/", "webhook", json!([])), 422, "validation_failed"),
        (create("https://hooks.example.com/", "slack", json!(["agent.suspended"])), 422, "validation_failed"),
        (create("https://hooks.example.com/", "email", json!(["agent.suspended"])), 422, "validation_failed"),
        (create("https://hooks.example.com/", "pager", json!(["agent.suspended"])), 422, "validation_failed"),
    ] {
        let r = s.post("/api/channels", Some(&owner.access), body.clone()).await;
        assert_eq!((r.status.as_u16(), r.code()), (status, code), "{body} -> {}", r.text);
    }

    // A name that resolves to loopback passes the parse, and is refused at connect time.
    let (channel_id, _) = channel(
        &s,
        &owner,
        &format!("https://localhost:{port}/secret-path"),
        &["agent.suspended", "agent.resumed"],
    )
    .await;
    let (agent, _) = s.agent(&owner, "bot").await;
    let agent = agent["id"].as_str().unwrap();
    suspend(&s, &owner, agent).await;
    let r = s.post(&format!("/api/agents/{agent}/resume"), Some(&owner.access), json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Two events × up to two attempts: the third failure in a row disables the channel,
    // and the last attempt waits (a disabled channel's pending deliveries are held).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ch = loop {
        let r = s.get("/api/channels", &owner.access).await;
        if r.body[0]["enabled"] == false {
            break r.body[0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never disabled: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ch["disabled_reason"].as_str().unwrap().contains("refused by egress rules"), "{ch}");
    // Attempts already under way when the third failed may still fail (4 at most here);
    // once they are done, nothing more is attempted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = s.get("/api/channels", &owner.access).await;
    let streak = r.body[0]["failure_streak"].as_i64().unwrap();
    assert!((3..=4).contains(&streak), "{}", r.text);
    let log = deliveries(&s, &owner, &channel_id).await;
    assert_eq!(log.len(), 2, "{log:?}");
    let attempts = |log: &[Value]| log.iter().map(|d| d["attempts"].as_i64().unwrap()).sum::<i64>();
    assert_eq!(attempts(&log), streak, "every attempt counted: {log:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = deliveries(&s, &owner, &channel_id).await;
    assert_eq!(attempts(&later), streak, "nothing attempted once disabled: {later:?}");
    for d in &log {
        let err = d["last_error"].as_str().unwrap_or_default();
        assert!(err.contains("refused by egress rules"), "{d}");
        assert!(
            !err.contains("127.0.0.1") && !err.contains("secret-path"),
            "no address or path in errors: {d}"
        );
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached loopback");
    let r = s.get("/api/audit?limit=50", &owner.access).await;
    assert!(r.text.contains("channel.disabled"), "{}", r.text);
    assert!(!r.text.contains("secret-path"), "{}", r.text);

    // Disabled: new events are not queued, pending ones wait. Turned back on, the streak is clear.
    let before = deliveries(&s, &owner, &channel_id).await.len();
    suspend(&s, &owner, agent).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries(&s, &owner, &channel_id).await.len(), before, "nothing queued while disabled");
    let r = s
        .send(
            Method::PATCH,
            &format!("/api/channels/{channel_id}"),
            Some(&owner.access),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (r.body["enabled"].as_bool(), r.body["failure_streak"].as_i64()),
        (Some(true), Some(0)),
        "{}",
        r.text
    );
    assert!(r.body["disabled_reason"].is_null(), "{}", r.text);
}
