//! Database connection: SQLite by default (WAL, foreign keys on), PostgreSQL by URL.
//! Migrations run at start, so a fresh data directory is ready to serve. And the
//! small rules every service follows at the database boundary: times at stored
//! precision, errors logged and reported generically, write transactions.

use std::path::Path;
use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, SubsecRound, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, SqlErr, TransactionTrait,
};

/// The URL AEGIS uses: `DATABASE_URL`, or the SQLite file in the data directory.
pub fn resolve_url(database_url: Option<&str>, data_dir: &Path) -> String {
    match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}?mode=rwc", data_dir.join("aegis.db").display()),
    }
}

/// PostgreSQL connections per process unless `AEGIS_DB_MAX_CONNECTIONS` says
/// otherwise. Several replicas share the server's `max_connections` (100 by
/// default), so each keeps a modest pool.
pub const DEFAULT_PG_POOL: u32 = 16;

pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(url, None).await
}

pub async fn connect_with(url: &str, max_connections: Option<u32>) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        // Under a burst, requests queue for a connection rather than fail; beyond this
        // they are refused (503, stage storage) with nothing performed.
        .acquire_timeout(Duration::from_secs(30))
        // sqlx pings a pooled connection on every checkout by default: a second round
        // trip (and a query for PostgreSQL to answer) per statement on the hot path.
        // Only a connection idle long enough to have been dropped by the server, a
        // proxy or a firewall is pinged; a broken one still fails its statement,
        // which the caller answers as `storage` (fail closed).
        .test_before_acquire_if_idle_for(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        options.max_connections(8).min_connections(1).map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                // FULL: a commit survives power loss, not only a process crash; the
                // audit trail promises that an intent is on disk before any upstream call.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
        });
    } else {
        options.max_connections(max_connections.unwrap_or(DEFAULT_PG_POOL).max(2)).min_connections(1);
        // Every new connection gets TCP_NODELAY (sqlx has no option for it; see nodelay.rs).
        if let Ok(pg) = url.parse::<sea_orm::sqlx::postgres::PgConnectOptions>() {
            let (host, port) = (pg.get_host().to_owned(), pg.get_port());
            options.map_sqlx_postgres_pool_opts(move |pool| {
                let (host, port) = (host.clone(), port);
                pool.after_connect(move |_, _| {
                    let host = host.clone();
                    Box::pin(async move {
                        crate::nodelay::for_peers(&crate::nodelay::resolve(&host, port).await);
                        Ok(())
                    })
                })
            });
        }
    }
    Database::connect(options).await
}

/// Key of the PostgreSQL advisory lock held while migrating ("AEGIS" in ASCII).
const MIGRATION_LOCK: i64 = 0x41_45_47_49_53;

/// Applies pending migrations. On PostgreSQL, replicas that start together take
/// turns: one migrates under a transaction-scoped advisory lock while the others
/// wait for it, then find nothing pending (instead of failing on tables that
/// appeared under them).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let lock = db.begin().await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await?;
    let migrated = Migrator::up(db, None).await;
    // Committing releases the lock whether or not migrating worked.
    lock.commit().await?;
    migrated
}

/// How long a readiness check may take before the database counts as unavailable.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this process can serve: the database answers a query and every migration
/// this binary knows is applied. `Err` is a short reason for the probe's answer; the
/// database's own error (which may name hosts) goes to the log only.
pub async fn check_ready(db: &DatabaseConnection) -> Result<(), String> {
    let check = async {
        if let Err(e) = db.execute_unprepared("SELECT 1").await {
            tracing::warn!(error = %e, "readiness: the database does not answer");
            return Err("database unavailable".to_owned());
        }
        // Read-only: a readiness probe must never create the migrations table.
        match Migrator::get_pending_migrations_read_only(db).await {
            Ok(pending) if pending.is_empty() => Ok(()),
            Ok(pending) => Err(format!("database migrations pending: {}", pending.len())),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: cannot read the migration status");
                Err("cannot read the migration status".to_owned())
            }
        }
    };
    tokio::time::timeout(READY_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err("database check timed out".into()))
}

/// Now, at the microsecond precision both SQLite and PostgreSQL store, so a value
/// read back compares equal to the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Storage failures are logged with their detail and reported as a generic error.
pub fn internal(e: DbErr) -> AppError {
    tracing::error!(error = %e, "database error");
    AppError::internal()
}

/// Maps a unique-constraint violation to `conflict`, anything else to [`internal`].
pub fn unique_or_internal(e: DbErr, conflict: AppError) -> AppError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => conflict,
        _ => internal(e),
    }
}

/// A transaction that writes: on SQLite it takes the write lock at `BEGIN`
/// (IMMEDIATE), so a transaction that reads first cannot fail with "database is
/// locked" when it later writes after another writer committed.
pub async fn begin_write(db: &sea_orm::DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, AppError> {
    use sea_orm::{DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait};
    let options = match db.get_database_backend() {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
        _ => TransactionOptions::default(),
    };
    db.begin_with_options(options).await.map_err(internal)
}
