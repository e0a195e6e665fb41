//! Test helpers shared by `migration/tests/*.rs` and (through `#[path]`)
//! `entity/tests/*.rs`: fresh SQLite files and throw-away PostgreSQL
//! databases. Only `migration` (re-exporting `sea_orm`), `tokio`, `tempfile`
//! and `uuid` are used, so both crates can include this file.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;

use migration::sea_orm::{ConnectionTrait, Database, DatabaseConnection};

/// Environment variable naming a PostgreSQL server URL (any database on it)
/// that the PostgreSQL tests may use to create their own databases.
pub const PG_URL_VAR: &str = "AEGIS_TEST_DATABASE_URL";

/// A fresh SQLite database file inside a temporary directory. Keep the
/// `TempDir` alive for as long as the connection is used.
pub async fn fresh_sqlite() -> (tempfile::TempDir, DatabaseConnection) {
    let dir = tempfile::TempDir::new().expect("create temp dir");
    let path = dir.path().join("aegis-test.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let db = Database::connect(&url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    (dir, db)
}

/// Runs `body` against a brand-new PostgreSQL database, then drops it.
///
/// When `AEGIS_TEST_DATABASE_URL` is unset, prints a `skipped:` line and
/// returns without running `body`. `body` receives the new database's URL.
/// The database is dropped even when `body` panics; the panic is then
/// re-raised so the test still fails.
pub async fn with_fresh_pg_db<F, Fut>(what: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var(PG_URL_VAR) else {
        // Straight to stderr, past libtest's output capture, so the skip is
        // visible in every test log, not only with `--nocapture`.
        // One write call, so the line is not split by libtest's own output.
        let line = format!("skipped: {PG_URL_VAR} not set ({what})\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    let admin = Database::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {PG_URL_VAR}={admin_url}: {e}"));
    let name = format!("aegis_t_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));

    let url = with_database_name(&admin_url, &name);
    let outcome = tokio::spawn(body(url)).await;

    let dropped = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
    admin.close().await.ok();

    match outcome {
        Ok(()) => {}
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("{what}: test task failed: {e}"),
    }
    dropped.unwrap_or_else(|e| panic!("DROP DATABASE {name}: {e}"));
}

/// `postgres://user@host:port/old?x=y` -> `postgres://user@host:port/<name>?x=y`.
pub fn with_database_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{name}?{query}"),
        None => format!("{server}/{name}"),
    }
}

#[test]
fn database_name_is_replaced() {
    assert_eq!(
        with_database_name("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database_name("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database_name("postgres://h:1", "x"), "postgres://h:1/x");
}
