//! What a sponsor may ask of the chain: "are my records intact?", answered with
//! bounded work per call and without a word about anybody else's records.
//!
//! The whole-chain walk ([`super::verify`]) stays with the operator: `aegis
//! verify-audit` on the command line. A sponsor's `GET /api/audit/verify` instead
//! advances one process-wide verified *frontier*:
//!
//! - It starts at the latest stored signed checkpoint (its signature under this
//!   AEGIS's key, and the record at its seq having exactly its head hash). The records
//!   up to it are vouched for by that signature: the chain was walked before it was
//!   signed, and `aegis verify-audit` re-walks all of it.
//! - Each call walks at most [`STEP`] more records past the frontier (hashes, links,
//!   and every checkpoint on the way), and only if no other call is walking right
//!   now: concurrent calls answer from where the frontier stands instead of queueing
//!   more work. A break, once found, stays found.
//! - Each sponsor may call at most [`BURST`] times in a row, then once every
//!   [`REFILL`] (`429 rate_limited` with `Retry-After` past that).
//!
//! The answer counts only the caller's own records: how many lie inside the
//! verified region, how many lie beyond it (call again), and, if the chain is broken,
//! the first of the caller's records that can no longer be trusted. No global count,
//! head hash, checkpoint or seq of another sponsor's record is ever in it.

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use app::error::AppError;
use entity::{audit_checkpoints, audit_events};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use super::chain::ChainState;
use super::checkpoint::Checkpoint;
use super::record::{GENESIS_HASH, record_hash};
use crate::db::internal;

/// Most records one call walks.
pub const STEP: u64 = 2000;
/// Calls a sponsor may make in a row.
pub const BURST: u32 = 5;
/// One more call allowed per this much time.
pub const REFILL: Duration = Duration::from_secs(2);
/// Sponsors whose buckets are kept before idle full ones are dropped.
const MAX_TRACKED: usize = 10_000;

/// `GET /api/audit/verify`: the caller's own records only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SponsorVerifyReport {
    /// `false` when at least one of your records cannot be trusted.
    pub valid: bool,
    /// Every one of your records has been reached (nothing `pending`).
    pub complete: bool,
    /// Your records that verified.
    pub checked: u64,
    /// Your records the verification has not reached yet: call again (each call
    /// verifies a bounded number of records).
    pub pending: u64,
    /// The first of your records that cannot be trusted (it, or a record before it,
    /// was changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Frontier {
    /// The last seq that verified (0: none yet), and its hash.
    seq: i64,
    hash: String,
    /// Where the chain first broke, with the operator-facing reason (never shown
    /// to a sponsor as such: it may speak of other sponsors' records).
    broken: Option<(i64, String)>,
}

/// Shared by every clone of one `AuditLog`.
#[derive(Default)]
pub(super) struct Incremental {
    /// `None` until the first call anchors it.
    frontier: Mutex<Option<Frontier>>,
    buckets: StdMutex<HashMap<Uuid, (f64, Instant)>>,
}

impl Incremental {
    /// Takes one call from `sponsor`'s bucket, or says how long to wait.
    fn admit(&self, sponsor: Uuid) -> Result<(), AppError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refill = |(tokens, at): (f64, Instant)| {
            (f64::from(BURST)).min(tokens + now.duration_since(at).as_secs_f64() / REFILL.as_secs_f64())
        };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&sponsor) {
            // Drop the sponsors whose buckets are full again: they are as if unseen.
            buckets.retain(|_, b| refill(*b) < f64::from(BURST));
            if buckets.len() >= MAX_TRACKED {
                return Err(AppError::rate_limited(REFILL.as_secs()));
            }
        }
        let tokens = buckets.get(&sponsor).map_or(f64::from(BURST), |b| refill(*b));
        if tokens < 1.0 {
            let wait = (1.0 - tokens) * REFILL.as_secs_f64();
            return Err(AppError::rate_limited(wait.ceil() as u64));
        }
        buckets.insert(sponsor, (tokens - 1.0, now));
        Ok(())
    }
}

/// The latest stored checkpoint, checked: `Ok(frontier)` to start from, or the break.
async fn anchor(state: &ChainState) -> Result<Frontier, AppError> {
    let genesis = Frontier { seq: 0, hash: GENESIS_HASH.to_owned(), broken: None };
    let Some(cp) = audit_checkpoints::Entity::find()
        .order_by_desc(audit_checkpoints::Column::Seq)
        .one(&state.db)
        .await
        .map_err(internal)?
        .map(Checkpoint::from)
    else {
        return Ok(genesis);
    };
    let broken = |reason: String| Frontier { broken: Some((cp.seq.max(1), reason)), ..genesis.clone() };
    if !cp.signature_valid_for(state.signer.public_key_hex()) {
        return Ok(broken(format!("checkpoint at seq {} is not validly signed", cp.seq)));
    }
    if cp.seq == 0 {
        return Ok(if cp.head_hash == GENESIS_HASH {
            genesis
        } else {
            broken("the checkpoint of the empty chain does not name the genesis hash".into())
        });
    }
    let record = audit_events::Entity::find_by_id(cp.seq).one(&state.db).await.map_err(internal)?;
    Ok(match record {
        None => broken(format!("record {} of a signed checkpoint is missing", cp.seq)),
        Some(r) if r.hash != cp.head_hash || record_hash(&r) != r.hash => {
            broken(format!("record {} does not match its signed checkpoint", cp.seq))
        }
        Some(_) => Frontier { seq: cp.seq, hash: cp.head_hash, broken: None },
    })
}

/// Walks at most `max` records past `f`, checking each and the checkpoints among them.
async fn step(state: &ChainState, f: &mut Frontier, max: u64) -> Result<(), AppError> {
    if f.broken.is_some() {
        return Ok(());
    }
    let rows = audit_events::Entity::find()
        .filter(audit_events::Column::Seq.gt(f.seq))
        .order_by_asc(audit_events::Column::Seq)
        .limit(max.max(1))
        .all(&state.db)
        .await
        .map_err(internal)?;
    let last = rows.last().map_or(f.seq, |r| r.seq);
    let checkpoints: HashMap<i64, Checkpoint> = audit_checkpoints::Entity::find()
        .filter(audit_checkpoints::Column::Seq.gt(f.seq))
        .filter(audit_checkpoints::Column::Seq.lte(last))
        .all(&state.db)
        .await
        .map_err(internal)?
        .into_iter()
        .map(|m| (m.seq, Checkpoint::from(m)))
        .collect();
    let trusted = state.signer.public_key_hex();
    for r in &rows {
        let expected = f.seq + 1;
        let problem = if r.seq != expected {
            Some((expected, format!("record {expected} is missing or out of order")))
        } else if record_hash(r) != r.hash {
            Some((r.seq, format!("record {}'s contents do not match its hash", r.seq)))
        } else if r.prev_hash != f.hash {
            Some((r.seq, format!("record {}'s prev_hash does not link to record {}", r.seq, r.seq - 1)))
        } else {
            checkpoints.get(&r.seq).and_then(|cp| {
                if !cp.signature_valid_for(trusted) {
                    Some((r.seq, format!("checkpoint at seq {} is not validly signed", r.seq)))
                } else if cp.head_hash != r.hash {
                    Some((r.seq, format!("record {} does not match its signed checkpoint", r.seq)))
                } else {
                    None
                }
            })
        };
        if let Some(b) = problem {
            tracing::error!(first_bad_seq = b.0, reason = %b.1, "audit chain broken (found by incremental verification)");
            f.broken = Some(b);
            return Ok(());
        }
        f.seq = r.seq;
        f.hash = r.hash.clone();
    }
    if (rows.len() as u64) < max.max(1) {
        // The end of the chain: a checkpoint beyond it means the tail was cut.
        let beyond = audit_checkpoints::Entity::find()
            .filter(audit_checkpoints::Column::Seq.gt(f.seq))
            .order_by_asc(audit_checkpoints::Column::Seq)
            .one(&state.db)
            .await
            .map_err(internal)?;
        if let Some(cp) = beyond
            && cp.seq > f.seq
        {
            // Re-read the end: a record appended since the read above is no cut.
            let end = audit_events::Entity::find()
                .select_only()
                .column_as(audit_events::Column::Seq.max(), "m")
                .into_tuple::<Option<i64>>()
                .one(&state.db)
                .await
                .map_err(internal)?
                .flatten()
                .unwrap_or(0);
            if end < cp.seq {
                let reason =
                    format!("the chain ends at seq {end}, but a signed checkpoint covers seq {}", cp.seq);
                tracing::error!(reason = %reason, "audit chain broken (found by incremental verification)");
                f.broken = Some((end + 1, reason));
            }
        }
    }
    Ok(())
}

async fn count(state: &ChainState, sponsor: Uuid, above: i64, below: Option<i64>) -> Result<u64, AppError> {
    let mut q = audit_events::Entity::find()
        .filter(audit_events::Column::SponsorId.eq(sponsor))
        .filter(audit_events::Column::Seq.gt(above));
    if let Some(below) = below {
        q = q.filter(audit_events::Column::Seq.lt(below));
    }
    q.count(&state.db).await.map_err(internal)
}

pub(super) async fn verify_for_sponsor(
    state: &ChainState,
    inc: &Incremental,
    sponsor: Uuid,
    max: u64,
) -> Result<SponsorVerifyReport, AppError> {
    inc.admit(sponsor)?;
    // One walker at a time: a call that finds another walking answers from the
    // frontier as it stood when that walk started.
    let frontier = match inc.frontier.try_lock() {
        Ok(mut guard) => {
            let mut f = match guard.take() {
                Some(f) => f,
                None => anchor(state).await?,
            };
            let result = step(state, &mut f, max).await;
            *guard = Some(f.clone());
            result?;
            f
        }
        Err(_) => {
            // Wait for the walker only to read where it got to (no extra work).
            let guard = inc.frontier.lock().await;
            match guard.clone() {
                Some(f) => f,
                None => {
                    return Err(AppError::unavailable("audit_busy", "verification is starting; try again"));
                }
            }
        }
    };
    match &frontier.broken {
        None => {
            let checked = count(state, sponsor, 0, Some(frontier.seq + 1)).await?;
            let pending = count(state, sponsor, frontier.seq, None).await?;
            Ok(SponsorVerifyReport {
                valid: true,
                complete: pending == 0,
                checked,
                pending,
                first_bad_seq: None,
                reason: None,
            })
        }
        Some((bad, _)) => {
            let checked = count(state, sponsor, 0, Some(*bad)).await?;
            let first_bad = audit_events::Entity::find()
                .select_only()
                .column(audit_events::Column::Seq)
                .filter(audit_events::Column::SponsorId.eq(sponsor))
                .filter(audit_events::Column::Seq.gte(*bad))
                .order_by_asc(audit_events::Column::Seq)
                .into_tuple::<i64>()
                .one(&state.db)
                .await
                .map_err(internal)?;
            Ok(SponsorVerifyReport {
                valid: first_bad.is_none(),
                complete: true,
                checked,
                pending: 0,
                first_bad_seq: first_bad,
                reason: first_bad.map(|seq| {
                    format!(
                        "the audit chain is broken at or before your record {seq}: from there on your \
                         records cannot be trusted; the operator has been alerted (aegis verify-audit)"
                    )
                }),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sponsor_has_its_own_bucket() {
        let inc = Incremental::default();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for _ in 0..BURST {
            inc.admit(a).unwrap();
        }
        let err = inc.admit(a).unwrap_err();
        assert_eq!((err.status, err.code.as_str()), (429, "rate_limited"));
        assert!(err.retry_after_secs.unwrap() >= 1);
        inc.admit(b).expect("another sponsor is not affected");
    }
}
