//! What a call came to: the pipeline's result ([`ProxyResult`]), what each stage
//! decided on the way ([`DecisionRecord`]), and the upstream's answer when the call
//! was performed ([`Answer`]). Domain data only: which HTTP status and body an
//! answer becomes is the HTTP layer's choice (`http::proxy::render`), handed to the
//! pipeline as a [`Render`] for the answers it must store (idempotency, approvals).

use std::time::Instant;

use app::error::AppError;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::Stage;
use super::upstream::{StreamingResponse, UpstreamResponse};

/// What each stage decided and how long it took, in order.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    pub stages: Vec<StageRecord>,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    mark: Instant,
}

#[derive(Debug, Serialize)]
pub struct StageRecord {
    pub stage: &'static str,
    pub outcome: String,
    pub micros: u64,
}

impl DecisionRecord {
    pub fn new() -> Self {
        let now = Instant::now();
        Self { stages: Vec::new(), started: now, mark: now }
    }

    /// Records `stage`'s decision and the time since the previous one.
    pub fn note(&mut self, stage: &'static str, outcome: impl Into<String>) {
        let now = Instant::now();
        self.stages.push(StageRecord {
            stage,
            outcome: outcome.into(),
            micros: (now - self.mark).as_micros() as u64,
        });
        self.mark = now;
    }

    pub fn elapsed_micros(&self) -> i64 {
        self.started.elapsed().as_micros() as i64
    }
}

impl Default for DecisionRecord {
    fn default() -> Self {
        Self::new()
    }
}

/// What the upstream answered: read whole (execute), or still arriving (gateway).
#[derive(Debug)]
pub enum Answer {
    Whole(UpstreamResponse),
    Streaming(StreamingResponse),
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Whole(r) => r.status,
            Answer::Streaming(r) => r.status,
        }
    }
}

/// Why a call that was not denied still did not happen (or did not finish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// AEGIS could not take the call (storage down, at its in-flight bound): nothing ran.
    Unavailable,
    /// The upstream did not answer in time.
    Timeout,
    /// The upstream was unreachable, failed, or answered what cannot be passed on.
    BadUpstream,
    /// The AEGIS process performing the call stopped before answering it: how far it
    /// got, by the audit seqs of its intent and outcome (an outcome means it completed;
    /// an intent alone, that it may have reached the upstream).
    Interrupted { intent_audit_seq: Option<i64>, outcome_audit_seq: Option<i64> },
}

#[derive(Debug)]
pub enum Outcome {
    Performed {
        upstream: Answer,
        cost_micros: i64,
    },
    Denied {
        stage: Stage,
        reason: String,
        extra: Value,
    },
    Failed {
        stage: Stage,
        reason: String,
        failure: Failure,
    },
    /// Parked for the sponsor's approval.
    Pending {
        approval_id: Uuid,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// An idempotency key seen before: the first answer, unchanged.
    Replayed {
        status: u16,
        body: Value,
    },
}

#[derive(Debug)]
pub struct ProxyResult {
    pub request_id: String,
    pub audit_seq: Option<i64>,
    pub reasons: Vec<String>,
    pub outcome: Outcome,
}

/// How a result is answered (status and JSON body): the HTTP layer's rule, given
/// to the pipeline for the answers it stores and replays.
pub type Render = fn(&ProxyResult) -> (u16, Value);

impl ProxyResult {
    /// Storage was unavailable: nothing happened, and the call may be retried.
    pub fn storage_failure(request_id: String, e: &AppError) -> Self {
        tracing::error!(request = %request_id, error = %e.message, "storage unavailable: request refused");
        Self::failed(
            request_id,
            Stage::Storage,
            "storage unavailable; nothing was performed",
            Failure::Unavailable,
        )
    }

    pub fn failed(request_id: String, stage: Stage, reason: impl Into<String>, failure: Failure) -> Self {
        ProxyResult {
            request_id,
            audit_seq: None,
            reasons: vec![],
            outcome: Outcome::Failed { stage, reason: reason.into(), failure },
        }
    }

    /// A call whose process died before answering it (see
    /// `approvals::close_interrupted` and `proxy::idempotency`); `reason` says what was cut.
    pub fn interrupted(
        request_id: &str,
        audit_seq: Option<i64>,
        intent_audit_seq: Option<i64>,
        outcome_audit_seq: Option<i64>,
        reason: &str,
    ) -> Self {
        ProxyResult {
            audit_seq,
            ..Self::failed(
                request_id.to_owned(),
                Stage::Upstream,
                reason,
                Failure::Interrupted { intent_audit_seq, outcome_audit_seq },
            )
        }
    }

    /// The metrics' labels: the answer's `decision`, and its `stage` (`none` if it has none).
    pub fn decision_and_stage(&self) -> (&'static str, &'static str) {
        match &self.outcome {
            Outcome::Performed { .. } => ("allow", "none"),
            Outcome::Pending { .. } => ("pending_approval", Stage::Approval.as_str()),
            Outcome::Denied { stage, .. } => ("deny", stage.as_str()),
            Outcome::Failed { stage, .. } => ("error", stage.as_str()),
            // Not a decision: the first answer, counted when it was made.
            Outcome::Replayed { .. } => ("replayed", "none"),
        }
    }
}
