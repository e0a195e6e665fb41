//! Verification: walks the whole chain in seq order, in chunks, and checks every
//! record and every checkpoint on the way.
//!
//! For each record: seq is the next number (no gaps), its contents hash to its
//! stored `hash`, and its `prev_hash` is the previous record's hash (the genesis
//! hash for seq 1). For each checkpoint (every stored one, plus a pinned one from
//! a file): the signature verifies (stored ones under this AEGIS's key, a file's
//! under the key it pins), and the record at its seq has exactly its head hash.
//! A checkpoint beyond the end of the chain means records were cut from the tail.

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::{audit_checkpoints, audit_events};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;

use super::chain::ChainState;
use super::checkpoint::Checkpoint;
use super::record::{GENESIS_HASH, record_hash};
use crate::db::internal;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub valid: bool,
    /// Records that verified, from seq 1 on (the whole chain when valid).
    pub checked: u64,
    /// The seq where the chain first stops being trustworthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hash of the last record that verified (absent for an empty chain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// The checkpoint the chain was anchored to: the pinned one when given, else
    /// the latest stored one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CheckpointStatus {
    pub seq: i64,
    pub head_hash: String,
    pub at: DateTime<Utc>,
    pub public_key: String,
    /// `database` or `file`.
    pub source: &'static str,
    /// The signature verified and the chain's record at `seq` has `head_hash`.
    pub verified: bool,
}

struct Anchor {
    cp: Checkpoint,
    source: &'static str,
    trusted_key: String,
    verified: bool,
}

impl Anchor {
    /// Why the signature cannot be trusted, if it cannot.
    fn signature_error(&self) -> Option<String> {
        if self.cp.signature_valid_for(&self.trusted_key) {
            None
        } else if self.cp.public_key != self.trusted_key {
            Some(format!(
                "checkpoint at seq {} ({}) is not signed by the trusted key {} (it names {})",
                self.cp.seq, self.source, self.trusted_key, self.cp.public_key
            ))
        } else {
            Some(format!("checkpoint at seq {} ({}) has an invalid signature", self.cp.seq, self.source))
        }
    }

    /// Checks the anchor against the chain's hash at its seq; `Err(reason)` on failure.
    fn check(&mut self, hash_at_seq: &str) -> Result<(), String> {
        if let Some(e) = self.signature_error() {
            return Err(e);
        }
        if self.cp.head_hash != hash_at_seq {
            return Err(format!(
                "record {} hashes to {hash_at_seq}, but the signed checkpoint ({}) says {}: \
                 the chain was rewritten",
                self.cp.seq, self.source, self.cp.head_hash
            ));
        }
        self.verified = true;
        Ok(())
    }
}

pub(super) async fn verify(
    state: &ChainState,
    pinned: Option<&Checkpoint>,
    chunk: u64,
) -> Result<VerifyReport, AppError> {
    // Checkpoints are read before the records: each covers a record that exists by then.
    let trusted = state.signer.public_key_hex().to_owned();
    let mut anchors: Vec<Anchor> = audit_checkpoints::Entity::find()
        .order_by_asc(audit_checkpoints::Column::Seq)
        .all(&state.db)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|m| Anchor { cp: m.into(), source: "database", trusted_key: trusted.clone(), verified: false })
        .collect();
    if let Some(cp) = pinned {
        anchors.push(Anchor {
            cp: cp.clone(),
            source: "file",
            trusted_key: cp.public_key.clone(),
            verified: false,
        });
    }
    anchors.sort_by_key(|a| a.cp.seq);
    let shown = match pinned {
        Some(_) => anchors.iter().position(|a| a.source == "file"),
        None => anchors.len().checked_sub(1),
    };

    let mut walk =
        Walk { anchors, next_anchor: 0, checked: 0, prev_hash: GENESIS_HASH.to_owned(), expected: 1 };
    let outcome = walk.run(state, chunk).await?;
    let checkpoint = shown.map(|i| {
        let a = &walk.anchors[i];
        CheckpointStatus {
            seq: a.cp.seq,
            head_hash: a.cp.head_hash.clone(),
            at: a.cp.at,
            public_key: a.cp.public_key.clone(),
            source: a.source,
            verified: a.verified,
        }
    });
    let (first_bad_seq, reason) = match outcome {
        Ok(()) => (None, None),
        Err((seq, reason)) => (seq, Some(reason)),
    };
    Ok(VerifyReport {
        valid: reason.is_none(),
        checked: walk.checked,
        first_bad_seq,
        reason,
        head_hash: (walk.checked > 0).then(|| walk.prev_hash.clone()),
        checkpoint,
    })
}

type Break = (Option<i64>, String);

struct Walk {
    anchors: Vec<Anchor>,
    next_anchor: usize,
    checked: u64,
    prev_hash: String,
    expected: i64,
}

impl Walk {
    /// Fires every anchor at or below `seq` (whose record has `hash`).
    fn anchors_up_to(&mut self, seq: i64, hash: &str) -> Result<(), Break> {
        while let Some(a) = self.anchors.get_mut(self.next_anchor) {
            if a.cp.seq > seq {
                break;
            }
            if a.cp.seq < seq {
                // Only possible for seq <= 0: no record ever has such a seq.
                return Err((Some(a.cp.seq), format!("checkpoint at seq {} names no record", a.cp.seq)));
            }
            a.check(hash).map_err(|reason| (Some(seq), reason))?;
            self.next_anchor += 1;
        }
        Ok(())
    }

    async fn run(&mut self, state: &ChainState, chunk: u64) -> Result<Result<(), Break>, AppError> {
        // A checkpoint of the empty chain (seq 0) must name the genesis hash.
        if let Err(b) = self.anchors_up_to(0, GENESIS_HASH) {
            return Ok(Err(b));
        }
        let mut last_seq = 0i64;
        loop {
            let rows = audit_events::Entity::find()
                .filter(audit_events::Column::Seq.gt(last_seq))
                .order_by_asc(audit_events::Column::Seq)
                .limit(chunk.max(1))
                .all(&state.db)
                .await
                .map_err(internal)?;
            let Some(last) = rows.last() else { break };
            last_seq = last.seq;
            for r in &rows {
                if let Err(b) = self.record(r) {
                    return Ok(Err(b));
                }
            }
        }
        // Checkpoints beyond the end: the tail was cut off.
        if let Some(a) = self.anchors.get(self.next_anchor) {
            let end = self.expected - 1;
            let reason = a.signature_error().unwrap_or_else(|| {
                format!(
                    "the chain ends at seq {end}, but a signed checkpoint ({}) covers records up \
                     to seq {}: records were removed from the tail",
                    a.source, a.cp.seq
                )
            });
            return Ok(Err((Some(self.expected), reason)));
        }
        Ok(Ok(()))
    }

    fn record(&mut self, r: &audit_events::Model) -> Result<(), Break> {
        if r.seq != self.expected {
            return Err(if r.seq > self.expected {
                (
                    Some(self.expected),
                    format!("record {} is missing (the next record is {})", self.expected, r.seq),
                )
            } else {
                (Some(r.seq), format!("unexpected record seq {}", r.seq))
            });
        }
        if record_hash(r) != r.hash {
            return Err((
                Some(r.seq),
                format!("record {}'s contents do not match its hash (edited, moved or forged)", r.seq),
            ));
        }
        if r.prev_hash != self.prev_hash {
            return Err((
                Some(r.seq),
                if r.seq == 1 {
                    "record 1 does not start from the genesis hash".to_owned()
                } else {
                    format!("record {}'s prev_hash is not the hash of record {}", r.seq, r.seq - 1)
                },
            ));
        }
        self.anchors_up_to(r.seq, &r.hash)?;
        self.checked += 1;
        self.prev_hash = r.hash.clone();
        self.expected += 1;
        Ok(())
    }
}
