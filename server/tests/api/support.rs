//! A real AEGIS server per test: its own data directory and SQLite file, or its own
//! PostgreSQL database when `AEGIS_TEST_DATABASE_URL` is set. Requests go over real
//! HTTP on loopback.
#![allow(dead_code)]

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server::config::Config;

#[path = "../../../migration/tests/common/mod.rs"]
mod db_support;

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub running: server::Running,
    pg: Option<PgDatabase>,
}

/// A throw-away PostgreSQL database, dropped when the test ends (even on panic).
pub struct PgDatabase {
    admin_url: String,
    name: String,
}

impl PgDatabase {
    /// A new empty database on the server `AEGIS_TEST_DATABASE_URL` names; `None`
    /// when it is unset (the test runs on SQLite).
    pub async fn create() -> Option<Self> {
        use sea_orm::ConnectionTrait;
        let admin_url = std::env::var(db_support::PG_URL_VAR).ok()?;
        let name = format!("aegis_t_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(&admin_url).await.expect("connect to PostgreSQL");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        admin.close().await.ok();
        Some(Self { admin_url, name })
    }

    pub fn url(&self) -> String {
        db_support::with_database_name(&self.admin_url, &self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sea_orm::ConnectionTrait;
                if let Ok(admin) = sea_orm::Database::connect(&admin_url).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    /// The machine-readable error code, asserting the error envelope's shape.
    pub fn code(&self) -> &str {
        let err = &self.body["error"];
        assert!(err["message"].is_string(), "error without message: {}", self.text);
        err["code"].as_str().unwrap_or_else(|| panic!("no error code in {}", self.text))
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.insert("AEGIS_DATA_DIR".into(), dir.path().join("data").display().to_string());
        let pg = PgDatabase::create().await;
        if let Some(pg) = &pg {
            env.insert("DATABASE_URL".into(), pg.url());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start(config, Some(listener)).await.expect("server starts");
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base: format!("http://{}", running.addr), http, dir, running, pg }
    }

    /// A second server on `other`'s data directory (keys, SQLite file) and database, as
    /// another replica of the same deployment. `other` keeps ownership of both.
    pub async fn start_sharing(other: &TestServer, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut env: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = &other.running.services.config;
        env.insert("AEGIS_DATA_DIR".into(), config.data_dir.display().to_string());
        if let Some(url) = &config.database_url {
            env.insert("DATABASE_URL".into(), url.clone());
        }
        let config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = server::start(config, Some(listener)).await.expect("server starts");
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { base: format!("http://{}", running.addr), http, dir, running, pg: None }
    }

    pub fn on_postgres(&self) -> bool {
        self.pg.is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Response {
        self.send(Method::POST, path, token, Some(body)).await
    }

    /// Registers a sponsor with a unique email and returns its auth response.
    pub async fn sponsor(&self, label: &str) -> Sponsor {
        let email = format!("{label}-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = self
            .post("/api/auth/register", None, json!({"email": email, "password": PASSWORD, "name": label}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        Sponsor {
            email,
            access: r.body["access_token"].as_str().unwrap().to_owned(),
            refresh: r.body["refresh_token"].as_str().unwrap().to_owned(),
            id: r.body["user"]["id"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates an agent for `sponsor`; returns (agent json, api key).
    pub async fn agent(&self, sponsor: &Sponsor, name: &str) -> (Value, String) {
        let r = self.post("/api/agents", Some(&sponsor.access), json!({"name": name})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (r.body["agent"].clone(), r.body["api_key"].as_str().unwrap().to_owned())
    }

    /// Creates an agent from a full request body; returns (agent id, api key).
    pub async fn agent_with(&self, sponsor: &Sponsor, body: Value) -> (String, String) {
        let r = self.post("/api/agents", Some(&sponsor.access), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (r.body["agent"]["id"].as_str().unwrap().to_owned(), r.body["api_key"].as_str().unwrap().to_owned())
    }

    /// An agent's `POST /api/proxy/execute`.
    pub async fn execute(&self, key: &str, body: Value) -> Response {
        self.post("/api/proxy/execute", Some(key), body).await
    }

    pub fn jwt_key(&self) -> Vec<u8> {
        let text = std::fs::read_to_string(self.dir.path().join("data/jwt.key")).unwrap();
        hex::decode(text.trim()).unwrap()
    }
}

pub const PASSWORD: &str = "correct horse battery 9";

pub struct Sponsor {
    pub email: String,
    pub access: String,
    pub refresh: String,
    pub id: String,
}

pub async fn read(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Response { status, headers, body, text }
}

pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `aegis` binary against the test server's data directory and database.
pub async fn aegis(s: &TestServer, args: &[&str]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"));
    cmd.args(args)
        .env_clear()
        .current_dir(s.dir.path())
        .env("AEGIS_DATA_DIR", &s.running.services.config.data_dir);
    if let Some(url) = &s.running.services.config.database_url {
        cmd.env("DATABASE_URL", url);
    }
    let out = cmd.output().await.expect("run aegis");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
