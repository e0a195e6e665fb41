//! Appending to the chain: one short transaction that takes the chain lock, reads
//! the head, inserts the next record (and, every N records, a signed checkpoint)
//! and commits.
//!
//! Serialisation, so the chain never forks:
//! - PostgreSQL: `pg_advisory_xact_lock(AUDIT_LOCK_KEY)` inside the transaction,
//!   taken by `aegis_audit_head()` right before it reads the head, and held until
//!   commit or rollback. It works across processes sharing the database. The
//!   transaction runs at READ COMMITTED and the function's head read is its own
//!   statement, so the head is read with a snapshot taken after the lock.
//! - SQLite (single-process deployments): an in-process async mutex, taken before
//!   `BEGIN IMMEDIATE`. The mutex queues appenders without holding pool connections;
//!   `BEGIN IMMEDIATE` takes SQLite's write lock up front, so even another process
//!   on the same file (the `aegis audit` command line) cannot read a stale head.
//!
//! `seq` is the primary key, so a stale head could only ever fail an insert,
//! never fork the chain.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use app::error::AppError;
use entity::{audit_checkpoints, audit_events};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, IsolationLevel,
    QueryOrder, QuerySelect, Set, SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use super::checkpoint::{Checkpoint, CheckpointSigner};
use super::record::{GENESIS_HASH, record_hash};
use super::{Appended, AuditEntry};
use crate::db::{internal, now};

/// The PostgreSQL advisory-lock key that serialises appends ("AEGISAUD").
pub const AUDIT_LOCK_KEY: i64 = 0x4145_4749_5341_5544;

/// Most records in one INSERT: 22 columns each stays far below SQLite's (32,766)
/// and PostgreSQL's (65,535) bound-parameter limits.
const INSERT_ROWS: usize = 64;

/// Shared by every clone of one `AuditLog`.
pub(crate) struct ChainState {
    pub db: DatabaseConnection,
    pub signer: CheckpointSigner,
    pub checkpoint_every: u64,
    pub sqlite_lock: Arc<Mutex<()>>,
    /// Set by the server; the command-line tools append without metrics.
    pub metrics: OnceLock<Arc<crate::metrics::Metrics>>,
}

/// A transaction that may append audit records together with other changes:
/// everything commits together or not at all. Make the appends the last
/// statements before [`AuditTxn::commit`]: on PostgreSQL the first append takes
/// the chain lock, which is held until commit.
pub struct AuditTxn {
    // Field order matters: the transaction rolls back before the mutex is released.
    txn: DatabaseTransaction,
    _sqlite_guard: Option<OwnedMutexGuard<()>>,
    state: Arc<ChainState>,
    locked: bool,
    appended: Vec<Appended>,
    /// Chained but not yet inserted ([`AuditTxn::hold`]): inserted together, as
    /// one multi-row INSERT, before the next immediate append or the commit.
    held: Vec<audit_events::ActiveModel>,
    held_checkpoints: Vec<Checkpoint>,
    /// Before the chain lock is asked for, so lock contention shows in the metric.
    started: Instant,
}

pub(super) async fn begin(state: Arc<ChainState>) -> Result<AuditTxn, AppError> {
    let started = Instant::now();
    let backend = state.db.get_database_backend();
    let (guard, options) = match backend {
        DbBackend::Sqlite => (
            Some(state.sqlite_lock.clone().lock_owned().await),
            TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            },
        ),
        _ => (
            None,
            TransactionOptions { isolation_level: Some(IsolationLevel::ReadCommitted), ..Default::default() },
        ),
    };
    let txn = state.db.begin_with_options(options).await.map_err(internal)?;
    Ok(AuditTxn {
        txn,
        _sqlite_guard: guard,
        state,
        locked: backend != DbBackend::Postgres,
        appended: Vec::new(),
        held: Vec::new(),
        held_checkpoints: Vec::new(),
        started,
    })
}

impl AuditTxn {
    /// The transaction, for the changes that go with the audit records.
    pub fn conn(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// The last record's (seq, hash), or (0, genesis) for an empty chain. On
    /// PostgreSQL the first call takes the chain lock and reads the head in one
    /// round trip (`aegis_audit_head()`, installed by a migration); the lock is
    /// held until commit.
    pub(super) async fn head(&mut self) -> Result<(i64, String), AppError> {
        let head: Option<(i64, String)> = if self.locked {
            audit_events::Entity::find()
                .select_only()
                .column(audit_events::Column::Seq)
                .column(audit_events::Column::Hash)
                .order_by_desc(audit_events::Column::Seq)
                .limit(1)
                .into_tuple()
                .one(&self.txn)
                .await
                .map_err(internal)?
        } else {
            let row = self
                .txn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT head_seq, head_hash FROM aegis_audit_head()",
                ))
                .await
                .map_err(internal)?
                .ok_or_else(AppError::internal)?;
            self.locked = true;
            let seq: Option<i64> = row.try_get("", "head_seq").map_err(internal)?;
            let hash: Option<String> = row.try_get("", "head_hash").map_err(internal)?;
            seq.zip(hash)
        };
        Ok(head.unwrap_or_else(|| (0, GENESIS_HASH.to_owned())))
    }

    /// Appends a record; it becomes durable when the transaction commits.
    pub async fn append(&mut self, entry: AuditEntry) -> Result<Appended, AppError> {
        let appended = self.hold(entry).await?;
        self.flush().await?;
        Ok(appended)
    }

    /// Chains a record (its seq and hash are final) but inserts it only with the
    /// other held records, before the next [`Self::append`] or at commit: a batch
    /// of records is one statement. Nothing in the transaction may read the audit
    /// table for it in between.
    pub async fn hold(&mut self, entry: AuditEntry) -> Result<Appended, AppError> {
        check_kind(&entry)?;
        // The chain lock is held from the first head read until commit, so the
        // record appended last in this transaction is still the head.
        let (head_seq, head_hash) = match self.appended.last() {
            Some(last) => (last.seq, last.hash.clone()),
            None => self.head().await?,
        };
        let linked = self.state.link(entry, head_seq, head_hash);
        self.held.push(audit_events::ActiveModel::from(linked.record));
        self.held_checkpoints.extend(linked.checkpoint);
        self.appended.push(linked.appended.clone());
        Ok(linked.appended)
    }

    /// Inserts the held records (in chain order), then their checkpoints. Commit
    /// does it too; calling it first tells a failed insert from a failed commit.
    pub async fn flush(&mut self) -> Result<(), AppError> {
        while !self.held.is_empty() {
            let rest = self.held.split_off(self.held.len().min(INSERT_ROWS));
            let rows = std::mem::replace(&mut self.held, rest);
            audit_events::Entity::insert_many(rows)
                .exec_without_returning(&self.txn)
                .await
                .map_err(internal)?;
        }
        for cp in std::mem::take(&mut self.held_checkpoints) {
            insert_checkpoint(&self.txn, &cp).await?;
        }
        Ok(())
    }

    /// Commits the changes and the records; they are durable when this returns.
    pub async fn commit(mut self) -> Result<Vec<Appended>, AppError> {
        self.flush().await?;
        self.txn.commit().await.map_err(internal)?;
        if !self.appended.is_empty()
            && let Some(m) = self.state.metrics.get()
        {
            m.audit_appended(self.started.elapsed());
        }
        Ok(self.appended)
    }
}

/// The record after the head (`head_seq`, `head_hash`): seq, time and hash final.
fn next_record(entry: AuditEntry, head_seq: i64, head_hash: String) -> audit_events::Model {
    let mut record = audit_events::Model {
        seq: head_seq + 1,
        id: Uuid::now_v7(),
        at: now(),
        sponsor_id: entry.sponsor_id,
        agent_id: entry.agent_id,
        request_id: entry.request_id,
        kind: entry.kind,
        stage: entry.stage,
        decision: entry.decision,
        method: entry.method,
        host: entry.host,
        path: entry.path,
        status: entry.status,
        cost_micros: entry.cost_micros,
        duration_us: entry.duration_us,
        request_hash: entry.request_hash,
        policy_hash: entry.policy_hash,
        policy_input: entry.policy_input,
        detail: entry.detail,
        prev_hash: head_hash,
        hash: String::new(),
    };
    record.hash = record_hash(&record);
    record
}

/// Every appender's first check: an entry without a kind is refused (before the
/// chain's head is asked for).
pub(crate) fn check_kind(entry: &AuditEntry) -> Result<(), AppError> {
    if entry.kind.trim().is_empty() {
        tracing::error!("audit entry without a kind");
        return Err(AppError::internal());
    }
    Ok(())
}

/// One record chained after a head, as every appender (sea-orm's [`AuditTxn`], the
/// SQLite and PostgreSQL hot-path stores) inserts it.
pub(crate) struct Linked {
    /// Seq, time and hash final.
    pub record: audit_events::Model,
    pub appended: Appended,
    /// The signed checkpoint this record makes due, if any.
    pub checkpoint: Option<Checkpoint>,
}

impl ChainState {
    /// `entry` chained after (`head_seq`, `head_hash`), with the checkpoint it makes due.
    pub(crate) fn link(&self, entry: AuditEntry, head_seq: i64, head_hash: String) -> Linked {
        let record = next_record(entry, head_seq, head_hash);
        let appended = Appended { seq: record.seq, hash: record.hash.clone() };
        let checkpoint = self.checkpoint_due(&appended);
        Linked { record, appended, checkpoint }
    }

    /// The signed checkpoint due at `appended` (every `checkpoint_every` records).
    pub(crate) fn checkpoint_due(&self, appended: &Appended) -> Option<Checkpoint> {
        let every = self.checkpoint_every;
        (every > 0 && (appended.seq as u64).is_multiple_of(every))
            .then(|| self.signer.sign(appended.seq, &appended.hash, now()))
    }
}

/// Stores a checkpoint unless one exists for its seq (then the stored one wins).
pub(super) async fn insert_checkpoint(db: &impl ConnectionTrait, cp: &Checkpoint) -> Result<(), AppError> {
    audit_checkpoints::Entity::insert(audit_checkpoints::ActiveModel {
        seq: Set(cp.seq),
        head_hash: Set(cp.head_hash.clone()),
        at: Set(cp.at),
        signature: Set(cp.signature.clone()),
        public_key: Set(cp.public_key.clone()),
    })
    .on_conflict_do_nothing()
    .exec(db)
    .await
    .map_err(internal)?;
    Ok(())
}
