//! Human-in-the-loop approvals: a request the policy marks `require_approval` is
//! parked here, exactly as the agent sent it, until its sponsor approves, rejects
//! or lets it expire.
//!
//! **Exact and sealed.** The parked request (method, URL, headers with their
//! values, body, secret name, cost) is serialised and sealed with the vault's
//! AES-256-GCM key under the approval's id, so nothing an agent sent — its own
//! credentials included — is stored in clear, and a row copied elsewhere does not
//! open. Its SHA-256 (the pipeline's request hash) is stored beside it and checked
//! again before the approved call is performed: what runs is what was approved.
//! A body larger than [`MAX_PARKED_BODY_BYTES`] is not parked (`approval_body_too_large`).
//!
//! **Cheap to list and to wait on.** What lists and polls need (request id, header
//! names, body size, method, URL, status) sits in plain columns: the sealed request
//! is opened only to perform it and to show one approval in full. An agent's
//! long-poll waits on a notification (the approval's events, which reach every
//! replica through the event bus, Redis included), re-reading the row only when
//! something happened, at its expiry, or every [`WAIT_RECHECK`] as a safety net;
//! each agent may hold only so many waits at once (`429 approval_waits_exceeded`).
//!
//! **Exactly once.** Every transition is one conditional UPDATE from `pending`
//! (`approve`, `reject`, `expire`), so of two sponsors, two replicas or a sponsor
//! and the expiry janitor racing, exactly one wins; only the approving winner
//! performs the call.
//!
//! **Grants.** An approval may carry a scoped grant: up to N more calls with the
//! same method, origin (scheme, host, port), vault secret and path prefix within T
//! minutes, for at most X micro-units in total. Using one is also a single
//! conditional UPDATE, so a grant cannot be overdrawn.
//!
//! **Outcomes** are stored bounded, hashed and sealed ([`answer`]), and their bodies
//! are dropped after [`answer::OUTCOME_RETENTION`].
//!
//! **Where things are.** One file per concern; a file that adds methods to
//! [`ApprovalService`] does so in its own `impl` block:
//!
//! - `rule.rs` — the two-person rule: how many approvers a parked call needs;
//! - `votes.rs` — the two-person rule: members' approvals before the last one;
//! - `mod.rs` — [`ApprovalService`], its constructor, [`Parked`], [`Claimed`] and
//!   the public constants (the grant limits, [`path_covered`] and [`settled`] are
//!   re-exported from `grants.rs` and `views.rs`);
//! - `sealed.rs` — the parked request, sealed and opened with the vault (and the
//!   sealing context of outcomes);
//! - `summary.rs` — `Summary`: every column but the sealed request, what lists,
//!   polls, grants and the janitor read;
//! - `grants.rs` — scoped grants: their limits, path prefixes and using one;
//! - `decide.rs` — park, approve, reject, expire, and the audit record of a decision;
//! - `outcomes.rs` — what an approved call answered: recorded, closed when the
//!   performing process stopped, pruned;
//! - `views.rs` — what the sponsor and the agent see: one approval, a list, the
//!   agent's long-poll;
//! - `answer.rs` — stored answers (bounded, hashed, sealed), shared with idempotency;
//! - `target.rs` — the call's target as the sponsor sees it.

pub mod answer;
mod decide;
mod delivery;
mod grants;
mod outcomes;
pub mod rule;
mod sealed;
mod summary;
pub mod target;
mod views;
mod votes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::approvals;
use uuid::Uuid;

pub use grants::{MAX_GRANT_ACTIONS, MAX_GRANT_MINUTES, path_covered};
pub use views::settled;

use crate::audit::AuditLog;
use crate::call::request::ProxyRequest;
use crate::events::EventBus;
use crate::secrets::vault::Vault;
use crate::trust::TrustService;

/// The largest body a request may have to be parked for approval (1 MiB).
pub const MAX_PARKED_BODY_BYTES: usize = 1 << 20;
/// A waiting poll re-reads its approval at least this often, in case a decision's
/// notification was lost (another replica without a shared event bus).
pub const WAIT_RECHECK: Duration = Duration::from_secs(5);
/// Event published when an approved call's outcome is stored (it wakes the agent's long-poll).
pub const APPROVAL_PERFORMED: &str = "approval.performed";

/// The request id shown for a parked request that no key opens.
pub const UNREADABLE_REQUEST_ID: &str = "req_unreadable";

/// Where a freshly parked request waits.
#[derive(Debug, Clone)]
pub struct Parked {
    pub approval_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub audit_seq: i64,
}

/// An approved request, claimed for performing by the caller that won the race.
pub struct Claimed {
    pub approval: approvals::Model,
    pub request_id: String,
    pub request: ProxyRequest,
}

#[derive(Clone)]
pub struct ApprovalService {
    db: sea_orm::DatabaseConnection,
    audit: AuditLog,
    events: EventBus,
    vault: Vault,
    trust: TrustService,
    ttl: Option<Duration>,
    /// Long-polls each agent holds right now (for the per-agent cap).
    waits: Arc<Mutex<HashMap<Uuid, usize>>>,
}

impl ApprovalService {
    pub fn new(
        db: sea_orm::DatabaseConnection,
        audit: AuditLog,
        events: EventBus,
        vault: Vault,
        trust: TrustService,
        ttl: Option<Duration>,
    ) -> Self {
        Self { db, audit, events, vault, trust, ttl, waits: Arc::default() }
    }

    /// The vault stored answers are sealed with (idempotency records use it too).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }
}

fn not_found() -> AppError {
    AppError::not_found("approval")
}
