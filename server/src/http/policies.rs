//! Policies: a sponsor's Rego policies and their versions, the playground's
//! evaluation, and the replay of a recorded decision. Thin: each calls the
//! [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{NewPolicy, PolicySummary, PolicyTrial, PolicyUpdate, PolicyVerdict, PolicyView};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Sponsor};
use super::openapi::ErrorBody;
use crate::policies::replay::ReplayReport;

#[utoipa::path(get, path = "/api/policies", tag = "policies",
    summary = "List policies",
    description = "The built-in policies (`default`, `permissive`) and your own.",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Policies, without their source", body = Vec<PolicySummary>)))]
pub async fn list_policies(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_policies(&sponsor).await?))
}

#[utoipa::path(post, path = "/api/policies", tag = "policies",
    summary = "Create a policy",
    description = "Rego in `package aegis` defining `decision` (`allow`, `deny` or `require_approval`) and optionally `reasons` and `forward_credentials`. It is evaluated against the policy input document (schema `PolicyInput`).",
    request_body = NewPolicy,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The policy, version 1", body = PolicyView),
        (status = 409, description = "`policy_name_taken`: a policy with this name exists", body = ErrorBody),
        (status = 422, description = "`policy_invalid`: the source does not compile or uses a builtin the engine refuses (the message, with its line)\n`validation_failed`: bad name or source too large", body = ErrorBody),
        (status = 503, description = "`policy_busy`: the bounded policy compile pool stayed full for 3 s; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn create_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewPolicy>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_policy(&sponsor, input).await?)))
}

#[utoipa::path(get, path = "/api/policies/{id}", tag = "policies",
    summary = "One policy with its current source",
    params(("id" = Uuid, Path, description = "Policy id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The policy", body = PolicyView),
        (status = 404, description = "`not_found`: no such policy visible to you", body = ErrorBody),
    ))]
pub async fn get_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_policy(&sponsor, id).await?))
}

#[utoipa::path(put, path = "/api/policies/{id}", tag = "policies",
    summary = "Change a policy (a new version)",
    description = "Every version is kept; decision records cite the SHA-256 of the exact source they ran.",
    params(("id" = Uuid, Path, description = "Policy id")),
    request_body = PolicyUpdate,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The policy at its new version", body = PolicyView),
        (status = 403, description = "`builtin_policy`: built-in policies are read-only", body = ErrorBody),
        (status = 404, description = "`not_found`: no such policy visible to you", body = ErrorBody),
        (status = 422, description = "`policy_invalid`: the source does not compile or uses a builtin the engine refuses\n`validation_failed`: source too large", body = ErrorBody),
        (status = 503, description = "`policy_busy`: the bounded policy compile pool stayed full for 3 s; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn update_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<PolicyUpdate>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_policy(&sponsor, id, update).await?))
}

#[utoipa::path(post, path = "/api/policies/evaluate", tag = "policies",
    summary = "Try a policy (dry run)",
    description = "Evaluates a policy for one of your agents and a sample action, with the same input document the proxy's policy stage builds (schema `PolicyInput`). Nothing is performed, audited, reserved or spent. Tries `source` (unsaved Rego) if given, else `policy_id`, else the agent's own policy. Compiled afresh (never cached) and evaluated on a bounded pool of blocking threads. With `mcp` (`server`, `tool`, `arguments`) the action is an MCP tool call and the input has `input.mcp`, as a call through `/mcp` would: against your MCP connection of that name when there is one, else with `method` and `url` standing for it.",
    request_body = PolicyTrial,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The decision and its reasons", body = PolicyVerdict),
        (status = 404, description = "`not_found`: no such agent or policy of yours", body = ErrorBody),
        (status = 422, description = "`policy_invalid`: `source` does not compile or uses a builtin the engine refuses (the message, with its line)\n`policy_limit_exceeded`: the evaluation was cut off at one of the engine's limits (time, instructions, memory)\n`invalid_request`: bad method, URL, header or cost\n`validation_failed`: `mcp` without a server or tool, or arguments that are not an object", body = ErrorBody),
        (status = 503, description = "`policy_busy`: the bounded policy compile pool stayed full for 3 s; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn evaluate_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(trial): ApiJson<PolicyTrial>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.evaluate_policy(&sponsor, trial).await?))
}

#[utoipa::path(get, path = "/api/audit/{seq}/replay", tag = "audit",
    summary = "Replay a recorded policy decision",
    description = "Re-evaluates the decision recorded at `seq` with the exact policy version (by SHA-256) and input it cites, and reports whether the verdict is the same. Decisions are deterministic, so a mismatch means the record, the stored policy or the engine changed.",
    params(("seq" = i64, Path, description = "Audit record seq")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The comparison", body = ReplayReport),
        (status = 404, description = "`not_found`: no such audit record of yours", body = ErrorBody),
        (status = 409, description = "`policy_version_missing`: the policy version it cites is not stored", body = ErrorBody),
        (status = 422, description = "`not_replayable`: the record holds no policy decision", body = ErrorBody),
    ))]
/// `GET /api/audit/{seq}/replay`: re-evaluates a recorded decision against the policy
/// version and input it was made with.
pub async fn replay_decision(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(seq): ApiPath<i64>,
) -> ApiResult<impl IntoResponse> {
    let services = &s.services;
    let org = sponsor.scope(app::model::Access::Read)?;
    let report = crate::policies::replay::replay(
        &services.db,
        &services.policies,
        &services.proxy.engine,
        seq,
        Some(org),
    )
    .await?;
    Ok(Json(report))
}
