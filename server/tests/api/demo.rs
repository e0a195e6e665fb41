//! `aegis demo`, the real binary: it prints a sponsor's sign-in, and its simulated
//! workload produces allows, policy, egress and budget denials, a pending approval
//! and a breaker trip within a minute. It always runs on SQLite in its own data
//! directory, so it passes the same way on the PostgreSQL pass.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The value printed after `label` on a banner line such as `    email     demo@…`.
fn banner_value(line: &str, label: &str) -> Option<String> {
    line.trim().strip_prefix(label).map(|rest| rest.trim().to_owned()).filter(|v| !v.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_comes_alive_with_every_kind_of_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let log_path = dir.path().join("demo.log");
    let port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .arg("demo")
        .arg("--fresh")
        .arg("--data-dir")
        .arg(&data)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env_clear()
        // Ignored by the demo: were it used, start-up would fail on this unreachable server.
        .env("DATABASE_URL", "postgres://aegis@nowhere.invalid:5432/aegis")
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("start aegis demo");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The banner: the URL and the sponsor's credentials.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut email, mut password, mut banner) = (None, None, String::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    while password.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no credentials printed; stdout {banner}\nstderr {}", log()))
            .unwrap()
            .unwrap_or_else(|| panic!("demo exited; stdout {banner}\nstderr {}", log()));
        banner.push_str(&line);
        banner.push('\n');
        email = email.or_else(|| banner_value(&line, "email"));
        password = password.or_else(|| banner_value(&line, "password"));
    }
    let base = format!("http://127.0.0.1:{port}");
    assert!(banner.contains(&base), "the URL is printed: {banner}");
    // Drain stdout so the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let login = http
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"email": email.unwrap(), "password": password.unwrap()}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "the printed credentials sign in");
    let token = login.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let get = |path: &'static str| {
        let request = http.get(format!("{base}{path}")).bearer_auth(&token);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.json::<Value>().await.unwrap()["items"].as_array().cloned().unwrap_or_default()
        }
    };

    let wanted = [
        "allowed call",
        "policy denial",
        "egress denial",
        "budget refusal",
        "pending approval",
        "breaker trip",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let allowed = get("/api/audit?kind=proxy.outcome&decision=allow&limit=1").await;
        let denied = get("/api/audit?kind=proxy.denied&limit=200").await;
        let stages: Vec<&str> = denied.iter().filter_map(|r| r["stage"].as_str()).collect();
        let pending = get("/api/approvals?status=pending&limit=1").await;
        let trips = get("/api/audit?kind=breaker.tripped&limit=1").await;
        let seen = [
            !allowed.is_empty(),
            stages.contains(&"policy"),
            stages.contains(&"egress"),
            stages.contains(&"budget"),
            !pending.is_empty(),
            !trips.is_empty(),
        ];
        let missing: Vec<&str> = wanted.iter().zip(seen).filter(|(_, s)| !s).map(|(w, _)| *w).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(missing.is_empty(), "not seen within 60 s: {missing:?}\nstderr:\n{}", log());
    // The demo's own directory holds its data; the real ./data is never touched.
    assert!(data.join("aegis.db").exists());
    assert!(!dir.path().join("data").exists());

    // SIGTERM (like Ctrl-C) stops the server, the workload and the mock cleanly.
    let pid = child.id().expect("still running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").unwrap();
    assert!(status.success(), "clean exit: {status:?}\nstderr:\n{}", log());
}
