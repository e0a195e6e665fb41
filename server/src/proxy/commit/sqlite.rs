//! The group-commit writer on a SQLite file: one OS thread owns a connection of its
//! own, callers queue their writes on it directly, and it applies whatever queued
//! up as one batch of prepared statements — one fsync, no async task in between and
//! no round trip to a pool worker per statement.
//!
//! It keeps every rule of [`super::Writer::apply`]: wallet rows first in agent
//! order, audit records last in arrival order, the chain's in-process lock held
//! and `BEGIN IMMEDIATE` taken for the whole transaction (so the sea-orm writers
//! and other processes on the file, such as `aegis audit`, take turns with it), a
//! failed batch rolled back and retried write by write, a failed COMMIT failing
//! the whole batch. The statements live beside their sea-orm versions
//! ([`crate::wallets::sqlite_batch`], [`crate::audit::sqlite_batch`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::error::AppError;
use rusqlite::{Connection, TransactionBehavior};
use sea_orm::{DatabaseConnection, DbBackend};

use super::{
    Applied, Counters, Done, Finished, Intent, MAX_BATCH, Outcome, Queued, WalletResult, Write, answer,
    failed_all,
};
use crate::audit::AuditLog;
use crate::audit::sqlite_batch::SqliteChain;
use crate::metrics::Metrics;
use crate::storage::sqlite_internal as internal;
use crate::wallets::sqlite_batch::{self as wallet_sql, Rolled};
use crate::wallets::{Reservation, WalletService};

/// How long a batch waits for SQLite's write lock (another process writing).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The handle on the writer thread; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub(super) struct SqliteWriter {
    queue: std::sync::mpsc::Sender<Queued>,
}

impl SqliteWriter {
    /// A writer thread for `db` when it is a SQLite file; `None` otherwise
    /// (PostgreSQL, an in-memory database, or no runtime to announce budget
    /// alerts on).
    pub(super) fn for_file(
        db: &DatabaseConnection,
        audit: &AuditLog,
        wallets: &WalletService,
        metrics: &Arc<Metrics>,
        counters: &Arc<Counters>,
    ) -> Option<Self> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
        if !path.is_file() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (queue, jobs) = std::sync::mpsc::channel();
        let thread = Thread {
            path,
            conn: None,
            chain: audit.sqlite_chain(),
            reservation_ttl: wallets.reservation_ttl(),
            wallets: wallets.clone(),
            runtime,
            metrics: metrics.clone(),
            counters: counters.clone(),
        };
        let spawned =
            std::thread::Builder::new().name("aegis-db-writer".into()).spawn(move || thread.serve(jobs));
        match spawned {
            Ok(_) => Some(Self { queue }),
            Err(e) => {
                tracing::warn!(error = %e, "no SQLite writer thread; group commit goes through the pool");
                None
            }
        }
    }

    /// Queues one write; false if the thread is gone.
    pub(super) fn queue(&self, queued: Queued) -> bool {
        self.queue.send(queued).is_ok()
    }
}

struct Thread {
    path: PathBuf,
    /// Opened on first use, and again after a failed open or COMMIT.
    conn: Option<Connection>,
    chain: SqliteChain,
    reservation_ttl: Duration,
    /// Budget alerts of committed settlements are announced on the runtime.
    wallets: WalletService,
    runtime: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
}

/// Why a transaction did not commit.
enum Failed {
    /// A statement failed; the transaction was rolled back.
    Apply(AppError),
    /// COMMIT failed: its outcome is unknown, so it is not retried.
    Commit(AppError),
}

impl Thread {
    fn serve(mut self, queue: std::sync::mpsc::Receiver<Queued>) {
        let chain = self.chain.lock();
        while let Ok(first) = queue.recv() {
            // The in-process chain lock, shared with the pool's sea-orm appends.
            // Taken before the batch is gathered, so whatever queued up while the
            // previous batch (or a pool append) held it goes into this one.
            let held = chain.blocking_lock();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            let (writes, replies): (Vec<Write>, Vec<_>) =
                batch.into_iter().map(|q| (q.write, q.reply)).unzip();
            let applied = self.commit(&writes);
            drop(held);
            for resolved in answer(replies, applied).into_iter().filter(|r| r.has_alerts()) {
                let wallets = self.wallets.clone();
                self.runtime.spawn(async move { wallets.announce(resolved).await });
            }
        }
    }

    fn commit(&mut self, writes: &[Write]) -> Applied {
        let n = writes.len();
        match self.transact(writes) {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            Err(Failed::Commit(e)) => failed_all(e, n),
            Err(Failed::Apply(e)) if n == 1 => vec![Err(e)],
            Err(Failed::Apply(_)) => {
                // Rolled back: each write alone, so only the one that fails is refused.
                self.counters.retried_batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                writes
                    .iter()
                    .map(|w| match self.transact(std::slice::from_ref(w)) {
                        Ok(mut one) => one.pop().ok_or_else(AppError::internal),
                        Err(Failed::Apply(e) | Failed::Commit(e)) => Err(e),
                    })
                    .collect()
            }
        }
    }

    /// All of `writes` in one transaction, committed.
    fn transact(&mut self, writes: &[Write]) -> Result<Vec<Finished>, Failed> {
        let started = Instant::now();
        if self.conn.is_none() {
            self.conn = Some(open(&self.path).map_err(|e| Failed::Apply(internal(e)))?);
        }
        let conn = self.conn.as_mut().ok_or_else(|| Failed::Apply(AppError::internal()))?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| Failed::Apply(internal(e)))?;
        let (applied, appended) =
            apply(&tx, &self.chain, self.reservation_ttl, writes).map_err(Failed::Apply)?;
        if let Err(e) = tx.commit() {
            self.conn = None;
            return Err(Failed::Commit(internal(e)));
        }
        self.counters.committed(&self.metrics, writes.len());
        if appended > 0 {
            self.chain.committed(started.elapsed());
        }
        Ok(applied)
    }
}

/// The batch's statements, uncommitted: wallet rows first in agent order, then the
/// audit records in arrival order. Returns each write's result and how many
/// records were appended.
fn apply(
    tx: &rusqlite::Transaction,
    chain: &SqliteChain,
    reservation_ttl: Duration,
    writes: &[Write],
) -> Result<(Vec<Finished>, usize), AppError> {
    let mut rolled = Rolled::default();
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| writes[i].agent_id());
    let mut wallet_results: Vec<Option<WalletResult>> = (0..writes.len()).map(|_| None).collect();
    for i in order {
        wallet_results[i] = Some(match &writes[i] {
            Write::Intent { agent_id, request_id, amount, .. } => WalletResult::Reserved(
                wallet_sql::reserve(tx, &mut rolled, *agent_id, request_id, *amount, reservation_ttl)?,
            ),
            Write::Outcome { request_id, charge, .. } => {
                let status = if charge.is_some() { "settled" } else { "released" };
                WalletResult::Resolved(wallet_sql::resolve(tx, &mut rolled, request_id, status, *charge)?)
            }
        });
    }
    let mut batch = chain.batch();
    let mut applied = Vec::with_capacity(writes.len());
    for (write, result) in writes.iter().zip(wallet_results) {
        let (Write::Intent { entry, .. } | Write::Outcome { entry, .. }) = write;
        applied.push(match result.ok_or_else(AppError::internal)? {
            WalletResult::Reserved(Reservation::Held) => {
                (Done::Intent(Intent::Recorded(batch.append(tx, entry.clone())?)), None)
            }
            WalletResult::Reserved(refused) => (Done::Intent(Intent::Refused(refused)), None),
            WalletResult::Resolved(resolved) => {
                let appended = batch.append(tx, entry.clone())?;
                (Done::Outcome(Outcome { resolved: resolved.is_some(), appended }), resolved)
            }
        });
    }
    let appended = batch.finish(tx)?;
    Ok((applied, appended))
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
