//! The hot-path store on a SQLite file.
//!
//! - Reads ([`reads`]) run inline on the calling thread over a few `query_only`
//!   connections of their own: a read through sqlx's pool is a hand-off to a
//!   worker thread and back (tens to hundreds of µs on a loaded two-core box) for
//!   a lookup SQLite answers from its page cache in a few µs.
//! - Batches run on one OS thread (`aegis-db-writer`) with its own connection:
//!   callers queue on it directly, and it applies each batch as prepared
//!   statements ([`wallets`], [`chain`]) — one fsync, no async task in between and
//!   no round trip to a pool worker per statement. The thread takes the chain's
//!   in-process lock before gathering a batch and `BEGIN IMMEDIATE` for the
//!   transaction, so the pool's sea-orm appends and other processes on the file
//!   (such as `aegis audit`) take turns with it.
//!
//! The same libsqlite3 as sqlx (rusqlite links the same bundled libsqlite3-sys).

pub mod chain;
pub mod columns;
pub mod reads;
pub mod wallets;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::error::AppError;
use entity::{agent_keys, agents, connections, secrets};
use rusqlite::{Connection, TransactionBehavior};
use sea_orm::{DatabaseConnection, DbBackend};
use uuid::Uuid;

use self::chain::{ChainBatch, SqliteChain};
use self::columns::internal;
use self::reads::ReadPool;
use self::wallets::Rolled;
use super::batch::{BatchTxn, Batches, Writer};
use super::{CallStore, Read};
use crate::audit::{Appended, AuditEntry, AuditLog};
use crate::metrics::Metrics;
use crate::spend::{Reservation, Resolved};

/// How long a batch waits for SQLite's write lock (another process writing).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store of one file.
pub struct SqliteStore {
    path: PathBuf,
    reads: ReadPool,
    chain: SqliteChain,
}

impl SqliteStore {
    /// The store for `db` when it is a SQLite file; `None` otherwise (PostgreSQL,
    /// an in-memory database).
    pub fn for_file(db: &DatabaseConnection, audit: &AuditLog, metrics: Arc<Metrics>) -> Option<Self> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
        if !path.is_file() {
            return None;
        }
        let reads = ReadPool::new(path.clone(), metrics);
        Some(Self { path, reads, chain: SqliteChain::new(audit.chain_state()) })
    }

    /// At most one row of `sql`, decoded by `row`, as a finished read.
    fn row<'a, T: Send + 'a>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Read<'a, Option<T>> {
        Box::pin(std::future::ready(self.reads.optional_row(sql, params, row)))
    }
}

impl CallStore for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn live_key<'a>(
        &'a self,
        key_id: &'a str,
    ) -> Read<'a, Option<(agent_keys::Model, Option<agents::Model>)>> {
        self.row(reads::LIVE_KEY_SQL, [key_id], reads::key_and_agent)
    }

    fn wallet(&self, agent_id: Uuid) -> Read<'_, Option<entity::wallets::Model>> {
        Box::pin(std::future::ready(self.reads.read(|conn| wallets::wallet(conn, agent_id))))
    }

    fn current_version(&self, policy_id: Uuid) -> Read<'_, Option<i32>> {
        self.row(reads::CURRENT_VERSION_SQL, [policy_id.as_bytes()], |r| r.get(0))
    }

    fn granted_secret<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<secrets::Model>> {
        let params = rusqlite::params![sponsor_id.as_bytes(), name, agent_id.as_bytes()];
        self.row(reads::GRANTED_SQL, params, reads::secret_row)
    }

    fn connection<'a>(
        &'a self,
        sponsor_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<(connections::Model, Option<String>)>> {
        let params = rusqlite::params![sponsor_id.as_bytes(), name];
        self.row(reads::BY_NAME_SQL, params, reads::connection_and_secret)
    }

    fn routes(&self, sponsor_id: Uuid) -> Read<'_, Vec<crate::store::Route>> {
        Box::pin(std::future::ready(self.reads.read(|conn| {
            let mut statement = conn.prepare_cached(reads::ROUTES_SQL).map_err(internal)?;
            let rows = statement
                .query_map([sponsor_id.as_bytes()], reads::route)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>());
            rows.map_err(internal)
        })))
    }

    fn start_writer(&self, writer: Writer, runtime: tokio::runtime::Handle) {
        let batches =
            SqliteBatches { path: self.path.clone(), conn: None, broken: false, chain: self.chain.clone() };
        let spawned = std::thread::Builder::new()
            .name("aegis-db-writer".into())
            .spawn(move || futures::executor::block_on(writer.serve(batches, runtime)));
        if let Err(e) = spawned {
            // The queue's receiver went with the closure: every write fails closed.
            tracing::error!(error = %e, "no SQLite writer thread; hot-path writes fail");
        }
    }
}

/// The writer thread's side: its own connection, opened on first use and again
/// after a failed open or COMMIT.
struct SqliteBatches {
    path: PathBuf,
    conn: Option<Connection>,
    /// Set when a COMMIT failed: that connection may be in any state.
    broken: bool,
    chain: SqliteChain,
}

struct SqliteTxn<'a> {
    tx: rusqlite::Transaction<'a>,
    rolled: Rolled,
    records: ChainBatch<'a>,
    reservation_ttl: Duration,
    started: Instant,
    broken: &'a mut bool,
}

impl Batches for SqliteBatches {
    type Txn<'a> = SqliteTxn<'a>;

    fn exclusive(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        Some(self.chain.lock())
    }

    async fn begin(&mut self, reservation_ttl: Duration) -> Result<SqliteTxn<'_>, AppError> {
        let started = Instant::now();
        let Self { path, conn, broken, chain } = self;
        if std::mem::take(broken) {
            *conn = None;
        }
        if conn.is_none() {
            *conn = Some(open(path).map_err(internal)?);
        }
        let conn = conn.as_mut().ok_or_else(AppError::internal)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(internal)?;
        Ok(SqliteTxn {
            tx,
            rolled: Rolled::default(),
            records: chain.batch(),
            reservation_ttl,
            started,
            broken,
        })
    }
}

impl BatchTxn for SqliteTxn<'_> {
    async fn reserve(
        &mut self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        wallets::reserve(&self.tx, &mut self.rolled, agent_id, request_id, amount, self.reservation_ttl)
    }

    async fn resolve(
        &mut self,
        request_id: &str,
        status: &str,
        charge: Option<i64>,
    ) -> Result<Option<Resolved>, AppError> {
        wallets::resolve(&self.tx, &mut self.rolled, request_id, status, charge)
    }

    async fn wallets_done(&mut self) -> Result<(), AppError> {
        Ok(())
    }

    async fn append(&mut self, entry: AuditEntry) -> Result<Appended, AppError> {
        self.records.append(&self.tx, entry)
    }

    async fn records_done(&mut self) -> Result<(), AppError> {
        self.records.finish(&self.tx)
    }

    async fn commit(self) -> Result<(), AppError> {
        let Self { tx, records, started, broken, .. } = self;
        if let Err(e) = tx.commit() {
            *broken = true;
            return Err(internal(e));
        }
        records.committed(started.elapsed());
        Ok(())
    }
}

/// The writer's connection, set up like the pool's ([`crate::db::connect`]).
fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // FULL: a commit survives power loss; an intent is on disk before any upstream call.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}
