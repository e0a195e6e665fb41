//! The floors every ratio of `aegis bench --variants` is read against, measured
//! in the same run on the same machine: a bare durable SQLite transaction (what
//! each of a call's two commits costs at least), and how many durable
//! transactions a second PostgreSQL commits (pgbench's TPC-B-like transaction:
//! three UPDATEs, a SELECT and an INSERT, from 32 clients), and a bare nginx
//! `proxy_pass` to the same upstream ([`super::nginx`]).

use std::time::{Duration, Instant};

use sea_orm::sqlx::{self, Connection};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Floors {
    /// One `UPDATE` and two `INSERT`s in a WAL transaction, `synchronous=FULL`.
    pub sqlite_txn_p50_us: Option<u64>,
    pub sqlite_txn_p99_us: Option<u64>,
    /// Durable TPC-B-like transactions a second (32 clients), with the delay of
    /// the run's `--db-delay-ms` forwarder when one is given too.
    pub postgres_tps: Option<f64>,
    pub postgres_delayed_tps: Option<f64>,
    /// Saturation (req/s, the run's closed loop) of a bare nginx `proxy_pass`
    /// to the same mock upstream ([`super::nginx`]); goal 4's denominator.
    pub nginx_proxy_rps: Option<f64>,
}

/// p50 and p99 (µs) of `n` bare durable SQLite transactions in a temp file.
pub fn sqlite_txn(dir: &std::path::Path, n: usize) -> Result<(u64, u64), String> {
    let path = dir.join("floor.db");
    let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| e.to_string())?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(|e| e.to_string())?;
    conn.execute_batch(
        "CREATE TABLE w (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO w VALUES (1, 0);
         CREATE TABLE l (id INTEGER PRIMARY KEY AUTOINCREMENT, v INTEGER, t TEXT);",
    )
    .map_err(|e| e.to_string())?;
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        conn.execute_batch(&format!(
            "BEGIN; UPDATE w SET v = v + 1 WHERE id = 1; INSERT INTO l (v, t) VALUES ({i}, 'intent');
             INSERT INTO l (v, t) VALUES ({i}, 'record'); COMMIT;"
        ))
        .map_err(|e| e.to_string())?;
        took.push(started.elapsed().as_micros() as u64);
    }
    drop(conn);
    let _ = std::fs::remove_file(&path);
    took.sort_unstable();
    Ok((took[n / 2], took[(n * 99 / 100).min(n - 1)]))
}

/// Durable TPC-B-like transactions a second against `url` (a throw-away
/// database), from `clients` connections for `secs`.
pub async fn postgres_tps(url: &str, clients: usize, secs: Duration) -> Result<f64, String> {
    let err = |e: sqlx::Error| e.to_string();
    let mut setup = sqlx::PgConnection::connect(url).await.map_err(err)?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS floor_branches (id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS floor_tellers (id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS floor_accounts (id int PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS floor_history (account int, delta bigint, at timestamptz DEFAULT now());
         INSERT INTO floor_branches SELECT g, 0 FROM generate_series(1, 4) g ON CONFLICT DO NOTHING;
         INSERT INTO floor_tellers SELECT g, 0 FROM generate_series(1, 40) g ON CONFLICT DO NOTHING;
         INSERT INTO floor_accounts SELECT g, 0 FROM generate_series(1, 100000) g ON CONFLICT DO NOTHING;",
    )
    .execute(&mut setup)
    .await
    .map_err(err)?;
    let _ = setup.close().await;
    let deadline = Instant::now() + secs;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let mut done = 0u64;
            let mut i = c as i64;
            while Instant::now() < deadline {
                i = (i * 1_103_515_245 + 12_345) % 2_147_483_648;
                let (account, teller, branch) =
                    ((i % 100_000 + 1) as i32, (i % 40 + 1) as i32, (i % 4 + 1) as i32);
                let mut tx = conn.begin().await?;
                sqlx::query("UPDATE floor_accounts SET balance = balance + $1 WHERE id = $2")
                    .bind(i % 5000)
                    .bind(account)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT balance FROM floor_accounts WHERE id = $1")
                    .bind(account)
                    .fetch_one(&mut *tx)
                    .await?;
                sqlx::query("UPDATE floor_tellers SET balance = balance + $1 WHERE id = $2")
                    .bind(i % 5000)
                    .bind(teller)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE floor_branches SET balance = balance + $1 WHERE id = $2")
                    .bind(i % 5000)
                    .bind(branch)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO floor_history (account, delta) VALUES ($1, $2)")
                    .bind(account)
                    .bind(i % 5000)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                done += 1;
            }
            Ok::<u64, sqlx::Error>(done)
        }));
    }
    let started = Instant::now();
    let mut total = 0u64;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())?.map_err(err)?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}
