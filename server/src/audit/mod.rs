//! The hash-chained, tamper-evident audit log.
//!
//! Every decision AEGIS makes appends one record. Each record carries the hash
//! of the one before it (`prev_hash`) and its own `hash`, a SHA-256 over a
//! canonical encoding of all its fields ([`record`]), so editing, removing,
//! reordering or inserting a record breaks the chain. Every N records, and on
//! demand, the head is signed with Ed25519 ([`checkpoint`]); a signed
//! checkpoint also catches what a chain alone cannot: a cut tail, or a chain
//! recomputed from scratch. [`verify`] checks all of it, [`chain`] appends,
//! [`query`] reads for sponsors.
//!
//! On PostgreSQL the rows are also protected by triggers that refuse UPDATE,
//! DELETE and TRUNCATE (migration `m20261126_000002_audit_guards`).

pub mod chain;
pub mod checkpoint;
pub mod incremental;
pub mod query;
pub mod record;
pub mod verify;

use std::sync::Arc;

use app::error::AppError;
use entity::audit_checkpoints;
use sea_orm::{DatabaseConnection, EntityTrait, QueryOrder};
use uuid::Uuid;

pub use crate::digest::canonical_json;
pub use chain::{AUDIT_LOCK_KEY, AuditTxn};
pub use checkpoint::{Checkpoint, CheckpointSigner};
pub use incremental::SponsorVerifyReport;
pub use query::{AuditFilter, AuditQuery, AuditRecord};
pub use record::{GENESIS_HASH, record_hash};
pub use verify::{CheckpointStatus, VerifyReport};

use crate::data_dir::{DataDir, KeyError};
use crate::db::internal;

/// What a caller records; the log adds seq, time, prev_hash and hash.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub sponsor_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub kind: String,
    pub stage: Option<String>,
    pub decision: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub cost_micros: i64,
    pub duration_us: i64,
    pub request_hash: Option<String>,
    pub policy_hash: Option<String>,
    /// Canonical JSON of the policy input (never secrets).
    pub policy_input: Option<String>,
    /// Canonical JSON with anything else worth keeping (never secrets or bodies).
    pub detail: Option<String>,
}

impl AuditEntry {
    /// A change a member made to their organization's data: the detail names them
    /// (`by: {member, role}`). Every such record is built here.
    pub fn by_member(kind: &str, by: &crate::actor::Actor, mut detail: serde_json::Value) -> Self {
        if let Some(map) = detail.as_object_mut() {
            map.insert("by".into(), by.audit_json());
        }
        Self {
            sponsor_id: Some(by.org),
            kind: kind.to_owned(),
            detail: Some(canonical_json(&detail)),
            ..Self::default()
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    pub hash: String,
}

/// Rows read per query when verifying or exporting.
pub const DEFAULT_CHUNK: u64 = 500;

/// The key file in the data directory holding the checkpoint signing seed.
pub const SIGNING_KEY_FILE: &str = "audit-signing.key";

/// The checkpoint signer from `AEGIS_AUDIT_SIGNING_KEY` or the data directory's
/// `audit-signing.key` (created on first use), like `jwt.key`.
pub fn signer_from(data: &DataDir, configured: Option<&str>) -> Result<CheckpointSigner, KeyError> {
    let seed = data.key(SIGNING_KEY_FILE, 32, "AEGIS_AUDIT_SIGNING_KEY", configured)?;
    // `key` guarantees 32 bytes, so this cannot fail.
    Ok(CheckpointSigner::from_seed(&seed.0).expect("a 32-byte seed"))
}

#[derive(Clone)]
pub struct AuditLog {
    state: Arc<chain::ChainState>,
    chunk: u64,
    incremental: Arc<incremental::Incremental>,
    verify_step: u64,
}

impl AuditLog {
    /// `checkpoint_every`: sign a checkpoint at every seq that is a multiple of
    /// it (0: only on demand).
    pub fn new(db: DatabaseConnection, signer: CheckpointSigner, checkpoint_every: u64) -> Self {
        Self {
            state: Arc::new(chain::ChainState {
                db,
                signer,
                checkpoint_every,
                sqlite_lock: Arc::default(),
                metrics: Default::default(),
            }),
            chunk: DEFAULT_CHUNK,
            incremental: Arc::default(),
            verify_step: incremental::STEP,
        }
    }

    /// Times every committed append into `metrics` (`aegis_audit_append_duration_seconds`),
    /// for this log and all its clones. The first call wins.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let _ = self.state.metrics.set(metrics);
        self
    }

    /// Rows per query for verification and export (tests use small chunks).
    pub fn with_chunk_size(mut self, rows: u64) -> Self {
        self.chunk = rows.max(1);
        self
    }

    pub fn public_key_hex(&self) -> &str {
        self.state.signer.public_key_hex()
    }

    /// A transaction whose other changes commit together with its audit records.
    pub async fn begin(&self) -> Result<AuditTxn, AppError> {
        chain::begin(self.state.clone()).await
    }

    /// The chain's shared state, for a store that appends with its own statements
    /// ([`crate::store::sqlite`]).
    pub(crate) fn chain_state(&self) -> Arc<chain::ChainState> {
        self.state.clone()
    }

    /// The in-process lock SQLite appends take turns on (held from `BEGIN
    /// IMMEDIATE` to commit by every appender in this process).
    pub fn chain_lock(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.state.sqlite_lock.clone()
    }

    /// Appends one record; it is durably committed when this returns.
    pub async fn append(&self, entry: AuditEntry) -> Result<Appended, AppError> {
        let mut txn = self.begin().await?;
        let appended = txn.append(entry).await?;
        txn.commit().await?;
        Ok(appended)
    }

    /// Most records one sponsor's verification call walks (tests use small steps).
    pub fn with_verify_step(mut self, rows: u64) -> Self {
        self.verify_step = rows.max(1);
        self
    }

    /// A sponsor's verification: bounded work, rate-limited per sponsor, an answer
    /// about their own records only ([`incremental`]). The whole-chain walk is
    /// [`AuditLog::verify`], for the operator (`aegis verify-audit`).
    pub async fn verify_for_sponsor(&self, sponsor_id: Uuid) -> Result<SponsorVerifyReport, AppError> {
        incremental::verify_for_sponsor(&self.state, &self.incremental, sponsor_id, self.verify_step).await
    }

    /// Verifies the whole chain against every stored checkpoint and, when given,
    /// a pinned one (from a file). Operator only: the work grows with the chain.
    pub async fn verify(&self, pinned: Option<&Checkpoint>) -> Result<VerifyReport, AppError> {
        verify::verify(&self.state, pinned, self.chunk).await
    }

    /// The stored checkpoint with the highest seq.
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, AppError> {
        Ok(audit_checkpoints::Entity::find()
            .order_by_desc(audit_checkpoints::Column::Seq)
            .one(&self.state.db)
            .await
            .map_err(internal)?
            .map(Checkpoint::from))
    }

    /// Verifies the chain, then signs and stores a checkpoint of the head that
    /// verified (or returns the one already stored for that seq). A broken chain
    /// is never signed: that is `409 audit_chain_broken`.
    pub async fn checkpoint(&self) -> Result<Checkpoint, AppError> {
        let report = self.verify(None).await?;
        if !report.valid {
            return Err(AppError::conflict(
                "audit_chain_broken",
                format!(
                    "refusing to sign a broken chain: seq {}: {}",
                    report.first_bad_seq.unwrap_or_default(),
                    report.reason.unwrap_or_default()
                ),
            ));
        }
        let seq = report.checked as i64;
        let head = report.head_hash.unwrap_or_else(|| GENESIS_HASH.to_owned());
        let signed = self.state.signer.sign(seq, &head, crate::db::now());
        chain::insert_checkpoint(&self.state.db, &signed).await?;
        // Another process may have stored one for this seq first; the stored one wins.
        Ok(audit_checkpoints::Entity::find_by_id(seq)
            .one(&self.state.db)
            .await
            .map_err(internal)?
            .map(Checkpoint::from)
            .unwrap_or(signed))
    }
}
