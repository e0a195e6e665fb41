//! The real `aegis` binary: starts, serves, and on SIGTERM signs a final audit checkpoint.

use std::time::Duration;

use sea_orm::{EntityTrait, QueryOrder};
use serde_json::json;

use crate::support::{PASSWORD, TestServer};

#[tokio::test]
async fn sigterm_stops_gracefully_with_a_final_checkpoint() {
    // The in-process server provides the data directory and database; the binary
    // under test shares them.
    let s = TestServer::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"));
    cmd.arg("serve")
        .env_clear()
        .current_dir(s.dir.path())
        .env("AEGIS_DATA_DIR", &s.running.services.config.data_dir)
        .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
        .env("AEGIS_AUDIT_CHECKPOINT_EVERY", "0")
        .kill_on_drop(true);
    if let Some(url) = &s.running.services.config.database_url {
        cmd.env("DATABASE_URL", url);
    }
    let mut child = cmd.spawn().expect("start aegis");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "aegis did not come up");

    let reg: serde_json::Value = http
        .post(format!("{base}/api/auth/register"))
        .json(&json!({"email": "bin@example.com", "password": PASSWORD, "name": "Bin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["access_token"].as_str().unwrap();
    let r = http
        .post(format!("{base}/api/agents"))
        .bearer_auth(token)
        .json(&json!({"name": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits on SIGTERM").unwrap();
    assert!(status.success(), "clean exit: {status:?}");

    let db = &s.running.services.db;
    let head = entity::audit_events::Entity::find()
        .order_by_desc(entity::audit_events::Column::Seq)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    let cp = entity::audit_checkpoints::Entity::find()
        .order_by_desc(entity::audit_checkpoints::Column::Seq)
        .one(db)
        .await
        .unwrap();
    let cp = cp.expect("a checkpoint was signed at shutdown");
    assert_eq!((cp.seq, cp.head_hash), (head.seq, head.hash));
}

#[tokio::test]
async fn the_janitor_stops_with_the_server() {
    let s = TestServer::start().await;
    assert!(!s.running.janitor.is_finished(), "upkeep runs while serving");
    s.running.task.abort();
    let mut stopped = false;
    for _ in 0..100 {
        if s.running.janitor.is_finished() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped, "an aborted server leaves no upkeep running against its closed database");
}
