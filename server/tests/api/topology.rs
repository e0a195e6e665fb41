//! The deployment of `server/deploy/`, without Docker: nginx running the shipped
//! `nginx.conf` in front of two `aegis` processes that share PostgreSQL and Redis but
//! nothing on disk — each has its own data directory and gets its keys from the
//! environment, as in `docker-compose.yml`. Both replicas start at once on an empty
//! database, so they also race to migrate it.
//!
//! Needs `AEGIS_TEST_DATABASE_URL`, `AEGIS_TEST_REDIS_URL` and an `nginx` binary
//! (`AEGIS_TEST_NGINX`, else `nginx` on PATH or /usr/sbin/nginx); CI has all three.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::mock::MockUpstream;
use crate::replicas::{Replica, free_port};
use crate::support::{PASSWORD, PgDatabase, Response, read};

const SHIPPED_CONF: &str = include_str!("../../deploy/nginx.conf");

fn nginx_binary() -> Option<PathBuf> {
    server::bench::nginx::binary_from("AEGIS_TEST_NGINX")
}

/// The shipped configuration with its two upstream servers and its listen address
/// pointed at this test's processes; nothing else changes.
fn render_conf(upstreams: [&str; 2], port: u16) -> String {
    let pointed = SHIPPED_CONF
        .replacen("server aegis-1:3000 ", &format!("server {} ", upstreams[0]), 1)
        .replacen("server aegis-2:3000 ", &format!("server {} ", upstreams[1]), 1)
        .replacen("listen 8080;", &format!("listen 127.0.0.1:{port};"), 1);
    for (shipped, rendered) in [("aegis-1:3000", upstreams[0]), ("aegis-2:3000", upstreams[1])] {
        assert!(
            pointed.contains(rendered) && !pointed.contains(shipped),
            "nginx.conf no longer names {shipped}"
        );
    }
    assert!(pointed.contains(&format!("listen 127.0.0.1:{port};")), "nginx.conf no longer listens on 8080");
    pointed
}

/// nginx in the foreground, all its files under `dir`, stopped when dropped.
struct Nginx {
    _child: tokio::process::Child,
    base: String,
}

impl Nginx {
    async fn start(binary: &Path, dir: &Path, site: &str, port: u16) -> Self {
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(dir.join("aegis.conf"), site).unwrap();
        let main = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             \x20 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             \x20 include {d}/aegis.conf;\n}}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log")).unwrap()))
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{base}/healthz")).await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not come up: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { _child: child, base }
    }
}

/// Allowed proxy calls this replica performed, from its own /metrics.
async fn allowed_calls(replica: &Replica) -> u64 {
    let text = reqwest::get(format!("{}/metrics", replica.base)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("aegis_proxy_requests_total{decision=\"allow\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn call(client: &reqwest::Client, edge: &str, key: &str, url: &str) -> Response {
    let r = client
        .post(format!("{edge}/api/proxy/execute"))
        .bearer_auth(key)
        .json(&json!({"method": "GET", "url": url, "cost_micros": 1_000}))
        .send()
        .await
        .expect("request through nginx");
    read(r).await
}

fn hex_key() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn nginx_in_front_of_two_replicas_with_failover() {
    let (Ok(redis), Some(nginx)) = (std::env::var("AEGIS_TEST_REDIS_URL"), nginx_binary()) else {
        eprintln!(
            "SKIPPED nginx_in_front_of_two_replicas_with_failover: needs AEGIS_TEST_DATABASE_URL, AEGIS_TEST_REDIS_URL and nginx"
        );
        return;
    };
    let Some(db) = PgDatabase::create().await else {
        eprintln!("SKIPPED nginx_in_front_of_two_replicas_with_failover: needs AEGIS_TEST_DATABASE_URL");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start().await;

    // Shared keys from the environment; separate data directories.
    let (jwt, master, signing, url) = (hex_key(), hex_key(), hex_key(), db.url());
    let env = |data_dir: PathBuf| {
        vec![
            ("AEGIS_DATA_DIR", data_dir.display().to_string()),
            ("DATABASE_URL", url.clone()),
            ("REDIS_URL", redis.clone()),
            ("AEGIS_JWT_SECRET", jwt.clone()),
            ("AEGIS_MASTER_KEY", master.clone()),
            ("AEGIS_AUDIT_SIGNING_KEY", signing.clone()),
            ("AEGIS_TRUST_PROXY_HEADERS", "true".to_owned()),
            ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32".to_owned()),
        ]
    };
    let (env_a, env_b) = (env(dir.path().join("a")), env(dir.path().join("b")));
    // Started together on the empty database: one migrates, the other waits for it.
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let (mut a, b) = tokio::join!(Replica::spawn(&env_a, &log_a), Replica::spawn(&env_b, &log_b));
    let port = free_port();
    let nginx =
        Nginx::start(&nginx, &dir.path().join("nginx"), &render_conf([a.addr(), b.addr()], port), port).await;
    let edge = nginx.base.clone();

    // A sponsor and an agent, all through the edge.
    let client = reqwest::Client::new();
    let email = format!("edge-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = read(
        client
            .post(format!("{edge}/api/auth/register"))
            .json(&json!({"email": email, "password": PASSWORD, "name": "edge"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let token = r.body["access_token"].as_str().unwrap().to_owned();

    // The dashboard socket is upgraded through nginx.
    let (mut ws, _) = tokio_tungstenite::connect_async({
        // The token in a header, never the URL (`?token=` is refused).
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            format!("{}/ws", edge.replace("http", "ws")),
        )
        .unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    })
    .await
    .expect("WebSocket through nginx");
    let r = read(
        client
            .post(format!("{edge}/api/agents"))
            .bearer_auth(&token)
            .json(&json!({"name": "edge-agent", "policy": "permissive"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let event = next_event(&mut ws).await;
    assert_eq!(event["type"], "agent.created", "{event}");

    // Calls through the edge are spread over both replicas.
    let target = mock.url("/counted");
    for _ in 0..20 {
        let r = call(&client, &edge, &key, &target).await;
        assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    }
    let (on_a, on_b) = (allowed_calls(&a).await, allowed_calls(&b).await);
    assert_eq!(on_a + on_b, 20);
    assert!(on_a > 0 && on_b > 0, "nginx sent everything to one replica: {on_a} / {on_b}");

    // A replica dies: the edge keeps answering, every call performed exactly once.
    a.kill().await;
    for _ in 0..20 {
        let r = call(&client, &edge, &key, &target).await;
        assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    }
    assert_eq!(mock.hits(), 40, "every call performed exactly once");
    assert_eq!(allowed_calls(&b).await, on_b + 20);

    // One audit chain across both replicas, verified through the edge.
    let r =
        read(client.get(format!("{edge}/api/audit/verify")).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["valid"], true, "{}", r.text);
}

async fn next_event<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("event through nginx")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }
}

#[test]
fn the_shipped_conf_renders_for_the_test() {
    let rendered = render_conf(["127.0.0.1:1", "127.0.0.1:2"], 9);
    assert!(rendered.contains("server 127.0.0.1:1 max_fails=1"));
    assert!(rendered.contains("proxy_set_header Upgrade $http_upgrade;"));
}
