//! Appending to the chain from SQLite's group-commit writer thread: the same
//! records as [`crate::audit::AuditTxn`] — built by the same [`ChainState::link`],
//! checkpointed by the same rule — inserted with a prepared statement on the
//! writer's own connection.
//!
//! The writer holds the in-process chain lock ([`SqliteChain::lock`], the one
//! [`crate::audit::AuditTxn`] takes on SQLite) for the whole transaction and begins it
//! with `BEGIN IMMEDIATE`, so the head it reads is the head.

use std::sync::Arc;
use std::time::Duration;

use app::error::AppError;
use rusqlite::{OptionalExtension, Transaction, params};
use tokio::sync::Mutex;

use super::columns::{internal, sql_time};
use crate::audit::chain::{ChainState, Linked, check_kind};
use crate::audit::{Appended, AuditEntry, Checkpoint, GENESIS_HASH};

/// The chain, as the SQLite writer thread appends to it.
#[derive(Clone)]
pub struct SqliteChain {
    state: Arc<ChainState>,
}

impl SqliteChain {
    pub(crate) fn new(state: Arc<ChainState>) -> Self {
        Self { state }
    }

    /// The in-process chain lock; hold it from `BEGIN IMMEDIATE` to commit.
    pub fn lock(&self) -> Arc<Mutex<()>> {
        self.state.sqlite_lock.clone()
    }

    /// The records of one transaction, appended after the current head.
    pub fn batch(&self) -> ChainBatch<'_> {
        ChainBatch { chain: self, last: None, checkpoints: Vec::new(), appended: 0 }
    }

    /// Times a committed transaction's appends (`aegis_audit_append_duration_seconds`).
    pub fn committed(&self, batch_took: Duration) {
        if let Some(m) = self.state.metrics.get() {
            m.audit_appended(batch_took);
        }
    }
}

/// Appends within one transaction.
pub struct ChainBatch<'a> {
    chain: &'a SqliteChain,
    last: Option<(i64, String)>,
    checkpoints: Vec<Checkpoint>,
    appended: usize,
}

impl ChainBatch<'_> {
    /// Appends a record; durable when the transaction commits.
    pub fn append(&mut self, tx: &Transaction, entry: AuditEntry) -> Result<Appended, AppError> {
        check_kind(&entry)?;
        let (head_seq, head_hash) = match self.last.take() {
            Some(last) => last,
            None => head(tx)?,
        };
        let Linked { record: r, appended, checkpoint } = self.chain.state.link(entry, head_seq, head_hash);
        let uuid = |u: Option<uuid::Uuid>| u.map(|u| u.as_bytes().to_vec());
        tx.prepare_cached(
            "INSERT INTO audit_events (seq, id, at, sponsor_id, agent_id, request_id, kind, stage, decision, \
             method, host, path, status, cost_micros, duration_us, request_hash, policy_hash, policy_input, \
             detail, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )
        .and_then(|mut s| {
            s.execute(params![
                r.seq,
                r.id.as_bytes(),
                sql_time(r.at),
                uuid(r.sponsor_id),
                uuid(r.agent_id),
                r.request_id,
                r.kind,
                r.stage,
                r.decision,
                r.method,
                r.host,
                r.path,
                r.status,
                r.cost_micros,
                r.duration_us,
                r.request_hash,
                r.policy_hash,
                r.policy_input,
                r.detail,
                r.prev_hash,
                r.hash
            ])
        })
        .map_err(internal)?;
        self.checkpoints.extend(checkpoint);
        self.last = Some((appended.seq, appended.hash.clone()));
        self.appended += 1;
        Ok(appended)
    }

    /// Stores the checkpoints that fell due; call before commit.
    pub fn finish(&mut self, tx: &Transaction) -> Result<(), AppError> {
        for cp in std::mem::take(&mut self.checkpoints) {
            tx.prepare_cached(
                "INSERT INTO audit_checkpoints (seq, head_hash, at, signature, public_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![cp.seq, cp.head_hash, sql_time(cp.at), cp.signature, cp.public_key])
            })
            .map_err(internal)?;
        }
        Ok(())
    }

    /// Times the committed transaction's appends, if it had any
    /// (`aegis_audit_append_duration_seconds`).
    pub fn committed(self, took: Duration) {
        if self.appended > 0 {
            self.chain.committed(took);
        }
    }
}

/// The last record's (seq, hash), or (0, genesis) for an empty chain.
fn head(tx: &Transaction) -> Result<(i64, String), AppError> {
    let head = tx
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(internal)?;
    Ok(head.unwrap_or_else(|| (0, GENESIS_HASH.to_owned())))
}
