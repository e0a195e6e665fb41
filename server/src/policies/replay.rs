//! Replaying a recorded decision: re-evaluate the exact policy version (found by
//! the SHA-256 in the audit record) against the exact recorded input, and report
//! whether the verdict is the same. Decisions are deterministic, so any difference
//! means the record, the stored policy or the engine changed.

use std::sync::Arc;

use app::error::AppError;
use entity::audit_events;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Serialize;
use uuid::Uuid;

use super::PolicyService;
use super::engine::{Decision, PolicyEngine};
use crate::db::internal;

#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ReplayReport {
    pub seq: i64,
    pub policy_sha256: String,
    pub recorded: Decision,
    pub replayed: Decision,
    pub recorded_reasons: Vec<String>,
    pub replayed_reasons: Vec<String>,
    pub matches: bool,
}

/// Replays audit record `seq`. `sponsor` limits it to that sponsor's records
/// (the API); `None` is the operator's command line.
pub async fn replay(
    db: &DatabaseConnection,
    policies: &PolicyService,
    engine: &Arc<PolicyEngine>,
    seq: i64,
    sponsor: Option<Uuid>,
) -> Result<ReplayReport, AppError> {
    let record = audit_events::Entity::find_by_id(seq)
        .one(db)
        .await
        .map_err(internal)?
        .filter(|r| sponsor.is_none() || r.sponsor_id == sponsor)
        .ok_or_else(|| AppError::not_found("audit record"))?;
    let not_replayable = || AppError::new(422, "not_replayable", "this record holds no policy decision");
    let (Some(sha), Some(input)) = (record.policy_hash.as_deref(), record.policy_input.as_deref()) else {
        return Err(not_replayable());
    };
    let detail: serde_json::Value =
        record.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
    let recorded: Decision =
        serde_json::from_value(detail["policy"]["decision"].clone()).map_err(|_| not_replayable())?;
    let recorded_reasons: Vec<String> =
        serde_json::from_value(detail["policy"]["reasons"].clone()).unwrap_or_default();
    let version = policies.version_by_sha(sha).await?.ok_or_else(|| {
        AppError::new(409, "policy_version_missing", "the policy version this decision cites is not stored")
    })?;
    let input: serde_json::Value = serde_json::from_str(input).map_err(|_| not_replayable())?;
    let evaluation = engine.evaluate_contained(version.source, input).await;
    Ok(ReplayReport {
        seq,
        matches: evaluation.decision == recorded
            && evaluation.reasons == recorded_reasons
            && evaluation.policy_sha256 == sha,
        policy_sha256: sha.to_owned(),
        recorded,
        replayed: evaluation.decision,
        recorded_reasons,
        replayed_reasons: evaluation.reasons,
    })
}
