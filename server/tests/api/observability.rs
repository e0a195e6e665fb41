//! Observability over real HTTP: readiness, Prometheus metrics (and their token),
//! and request ids on every answer.

use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::mock::MockUpstream;
use crate::support::{Response, Sponsor, TestServer, read};

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

async fn permissive_agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> String {
    let r = s.post("/api/agents", Some(&sponsor.access), json!({"name": name, "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["api_key"].as_str().unwrap().to_owned()
}

async fn get_public(s: &TestServer, path: &str) -> Response {
    read(s.http.get(s.url(path)).send().await.unwrap()).await
}

pub(crate) async fn scrape(s: &TestServer) -> String {
    let r = get_public(s, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text
}

/// The value of the sample `name` whose labels are exactly `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> =
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (n, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let mut got: Vec<(String, String)> = label_text
            .split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        got.sort();
        if got == want {
            return value.parse().ok();
        }
    }
    None
}

#[tokio::test]
async fn readyz_is_ready_on_a_live_server_and_503_without_a_database() {
    let s = TestServer::start().await;
    let r = get_public(&s, "/readyz").await;
    assert_eq!((r.status, &r.body), (StatusCode::OK, &json!({"status": "ready"})), "{}", r.text);

    // A migration this binary knows but the database lacks: not ready.
    use sea_orm::ConnectionTrait;
    let db = &s.running.services.db;
    db.execute_unprepared(
        "DELETE FROM seaql_migrations WHERE version = (SELECT MAX(version) FROM seaql_migrations)",
    )
    .await
    .unwrap();
    let r = get_public(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body, json!({"status": "not_ready", "reason": "database migrations pending: 1"}));

    // Closing the server's own pool (shared by every clone of the connection) makes
    // every query fail at once, on SQLite and PostgreSQL alike: the database is gone
    // as far as this process can tell.
    s.running.services.db.clone().close().await.unwrap();
    let r = get_public(&s, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.body["status"], "not_ready");
    assert_eq!(r.body["reason"], "database unavailable");
    // Liveness is the process, not its database.
    assert_eq!(get_public(&s, "/healthz").await.status, StatusCode::OK);
    // Metrics still answer, without the gauges that need the database.
    let text = scrape(&s).await;
    assert!(text.contains("# TYPE aegis_breaker_trips_total counter"), "{text}");
    assert!(!text.contains("aegis_approvals_pending"), "{text}");
}

#[tokio::test]
async fn metrics_count_decisions_stage_timings_and_spend() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("metrics").await;
    let key = permissive_agent(&s, &sponsor, "counted").await;
    let (_, cautious) = s.agent(&sponsor, "cautious").await; // the default policy

    let allowed = s
        .post(
            "/api/proxy/execute",
            Some(&key),
            json!({"method": "GET", "url": mock.url("/echo"), "cost_micros": 1234}),
        )
        .await;
    assert_eq!((allowed.status, allowed.body["decision"].as_str()), (StatusCode::OK, Some("allow")));
    let denied =
        s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": "http://10.1.2.3/"})).await;
    assert_eq!((denied.status, denied.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("egress")));
    // The default policy parks a standard-trust agent's writes for approval.
    let parked = s
        .post("/api/proxy/execute", Some(&cautious), json!({"method": "DELETE", "url": mock.url("/echo")}))
        .await;
    assert_eq!(parked.status, StatusCode::ACCEPTED, "{}", parked.text);
    let anonymous =
        s.post("/api/proxy/execute", None, json!({"method": "GET", "url": mock.url("/echo")})).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    let text = scrape(&s).await;
    let requests = |decision: &str, stage: &str| {
        sample(&text, "aegis_proxy_requests_total", &[("decision", decision), ("stage", stage)])
    };
    assert_eq!(requests("allow", "none"), Some(1.0), "{text}");
    assert_eq!(requests("deny", "egress"), Some(1.0));
    assert_eq!(requests("pending_approval", "approval"), Some(1.0));
    assert_eq!(requests("deny", "auth"), Some(1.0));
    assert_eq!(requests("deny", "policy"), None, "no series for what never happened");

    // Every pipeline run passed policy and egress (the denial was at egress).
    let stage_count =
        |stage: &str| sample(&text, "aegis_proxy_stage_duration_seconds_count", &[("stage", stage)]);
    let stage_inf = |stage: &str| {
        sample(&text, "aegis_proxy_stage_duration_seconds_bucket", &[("stage", stage), ("le", "+Inf")])
    };
    for stage in ["policy", "egress"] {
        assert_eq!(stage_count(stage), Some(3.0), "{stage}: {text}");
        assert_eq!(stage_inf(stage), Some(3.0), "{stage}");
        assert!(
            sample(&text, "aegis_proxy_stage_duration_seconds_sum", &[("stage", stage)]).unwrap() > 0.0,
            "{stage}"
        );
    }
    // Only the allowed call reached the upstream.
    assert_eq!(stage_count("upstream"), Some(1.0));
    assert_eq!(sample(&text, "aegis_proxy_request_duration_seconds_count", &[]), Some(3.0));
    assert_eq!(sample(&text, "aegis_spend_settled_micros_total", &[]), Some(1234.0));
    assert_eq!(sample(&text, "aegis_approvals_pending", &[]), Some(1.0));
    assert_eq!(sample(&text, "aegis_breaker_trips_total", &[]), Some(0.0));
    // Intent and outcome, the denial, the parked request, at least.
    assert!(sample(&text, "aegis_audit_append_duration_seconds_count", &[]).unwrap() >= 4.0, "{text}");
    assert!(sample(&text, "aegis_db_pool_connections", &[]).unwrap() >= 1.0, "{text}");
    assert!(sample(&text, "aegis_db_pool_idle_connections", &[]).is_some());

    // Labels never carry keys, URLs or hosts.
    for secretish in [key.as_str(), cautious.as_str(), "10.1.2.3", "127.0.0.1", "/echo"] {
        assert!(!text.contains(secretish), "{secretish} in metrics");
    }
}

#[tokio::test]
async fn breaker_trips_are_counted() {
    let s = TestServer::start_with(&[("AEGIS_BREAKER_MIN_SAMPLES", "4")]).await;
    let sponsor = s.sponsor("trips").await;
    let key = permissive_agent(&s, &sponsor, "stormy").await;
    for _ in 0..5 {
        s.post("/api/proxy/execute", Some(&key), json!({"method": "GET", "url": "http://10.1.2.3/"})).await;
    }
    let text = scrape(&s).await;
    assert_eq!(sample(&text, "aegis_breaker_trips_total", &[]), Some(1.0), "{text}");
    let requests = |decision: &str, stage: &str| {
        sample(&text, "aegis_proxy_requests_total", &[("decision", decision), ("stage", stage)])
    };
    assert_eq!((requests("deny", "egress"), requests("deny", "breaker")), (Some(4.0), Some(1.0)));
}

#[tokio::test]
async fn a_metrics_token_guards_metrics_only() {
    let token = "scrape-me-7d1f0c";
    let s = TestServer::start_with(&[("AEGIS_METRICS_TOKEN", token)]).await;
    let r = get_public(&s, "/metrics").await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    for wrong in ["scrape-me", "scrape-me-7d1f0c0", "SCRAPE-ME-7D1F0C"] {
        let r = read(s.http.get(s.url("/metrics")).bearer_auth(wrong).send().await.unwrap()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{wrong}");
    }
    let r = read(s.http.get(s.url("/metrics")).bearer_auth(token).send().await.unwrap()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("# TYPE aegis_breaker_trips_total counter"), "{}", r.text);
    // Probes stay public.
    assert_eq!(get_public(&s, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get_public(&s, "/readyz").await.status, StatusCode::OK);
}

fn request_id(r: &Response) -> String {
    let id = r.headers.get("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {}", r.status));
    id.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_answer_has_a_request_id_and_client_ids_are_not_trusted() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let mut seen = Vec::new();
    for path in ["/healthz", "/readyz", "/metrics", "/api/no-such-endpoint", "/no-such-page", "/docs"] {
        let r = get_public(&s, path).await;
        let id = request_id(&r);
        assert!(id.starts_with("req_") && id.len() == 36, "{path}: {id}");
        seen.push(id);
    }
    let r = s.send(reqwest::Method::DELETE, "/api/auth/me", None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    seen.push(request_id(&r));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 7, "ids are unique");

    // A client's own id is not the audit id, nor the id AEGIS answers with.
    let sponsor = s.sponsor("ids").await;
    let key = permissive_agent(&s, &sponsor, "forger").await;
    let forged = "req_0000000000000000000000000000dead";
    let r = read(
        s.http
            .post(s.url("/api/proxy/execute"))
            .bearer_auth(&key)
            .header("x-request-id", forged)
            .json(&json!({"method": "GET", "url": mock.url("/echo")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);
    let id = request_id(&r);
    assert_ne!(id, forged);
    assert_eq!(r.body["request_id"], Value::from(id.clone()));
    let db = &s.running.services.db;
    let seq = r.body["audit_seq"].as_i64().unwrap();
    let record = entity::audit_events::Entity::find_by_id(seq).one(db).await.unwrap().unwrap();
    assert_eq!(record.request_id.as_deref(), Some(id.as_str()));
    let forged_records = entity::audit_events::Entity::find()
        .filter(entity::audit_events::Column::RequestId.eq(forged))
        .count(db)
        .await
        .unwrap();
    assert_eq!(forged_records, 0);

    // Gateway answers: AEGIS's id in both headers when the upstream sends none.
    let c = s
        .post("/api/connections", Some(&sponsor.access), json!({"name": "mock", "base_url": mock.base}))
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.text);
    let r = read(
        s.http
            .get(s.url("/api/gw/mock/echo"))
            .bearer_auth(&key)
            .header("x-request-id", forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let id = request_id(&r);
    assert_eq!(r.headers["x-aegis-request-id"].to_str().unwrap(), id);
    assert_ne!(id, forged);
    let kinds: Vec<String> = entity::audit_events::Entity::find()
        .filter(entity::audit_events::Column::RequestId.eq(id.as_str()))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert!(kinds.contains(&"proxy.intent".into()) && kinds.contains(&"proxy.outcome".into()), "{kinds:?}");

    // Unauthenticated attempts and sponsor calls have ids too; a forged one never sticks.
    let r = read(
        s.http
            .post(s.url("/api/proxy/execute"))
            .header("x-request-id", forged)
            .json(&json!({"method": "GET", "url": mock.url("/echo")}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["request_id"], Value::from(request_id(&r)));
    assert_ne!(request_id(&r), forged);
    let r = read(
        s.http
            .get(s.url("/api/agents"))
            .bearer_auth(&sponsor.access)
            .header("x-request-id", forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(request_id(&r), forged);
}

/// The real binary with `AEGIS_LOG_FORMAT=json`: each request's log line carries its id.
#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let s = TestServer::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"));
    cmd.arg("serve")
        .env_clear()
        .current_dir(s.dir.path())
        .env("AEGIS_DATA_DIR", &s.running.services.config.data_dir)
        .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
        .env("AEGIS_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(url) = &s.running.services.config.database_url {
        cmd.env("DATABASE_URL", url);
    }
    let child = cmd.spawn().expect("start aegis");
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if s.http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "aegis did not come up");
    let r = read(
        s.http
            .get(format!("{base}/api/no-such-endpoint"))
            .header("x-request-id", "client-42")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let id = request_id(&r);

    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["span"]["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no log line with {id}:\n{stdout}"));
    assert_eq!(line["span"]["method"], "GET");
    assert_eq!(line["span"]["path"], "/api/no-such-endpoint");
    assert_eq!(line["span"]["client_request_id"], "client-42");
    assert_eq!(line["fields"]["status"], 404);
}
