//! The policy playground, a sponsor's sessions and the overview's numbers. Thin:
//! each calls the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{DashboardStats, PolicyTrial, PolicyVerdict, SessionView, StatsQuery, StatsRange};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, ApiQuery, Sponsor};
use super::openapi::ErrorBody;

#[utoipa::path(post, path = "/api/policies/evaluate", tag = "policies",
    summary = "Try a policy (dry run)",
    description = "Evaluates a policy for one of your agents and a sample action, with the same input document the proxy's policy stage builds (schema `PolicyInput`). Nothing is performed, audited, reserved or spent. Tries `source` (unsaved Rego) if given, else `policy_id`, else the agent's own policy. Compiled afresh (never cached) and evaluated on a bounded pool of blocking threads.",
    request_body = PolicyTrial,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The decision and its reasons", body = PolicyVerdict),
        (status = 404, description = "`not_found`: no such agent or policy of yours", body = ErrorBody),
        (status = 422, description = "`policy_invalid`: `source` does not compile or uses a builtin the engine refuses (the message, with its line)\n`policy_limit_exceeded`: the evaluation was cut off at one of the engine's limits (time, instructions, memory)\n`invalid_request`: bad method, URL, header or cost", body = ErrorBody),
        (status = 503, description = "`policy_busy`: the bounded policy compile pool stayed full for 3 s; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn evaluate_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(trial): ApiJson<PolicyTrial>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.evaluate_policy(&sponsor, trial).await?))
}

#[utoipa::path(get, path = "/api/auth/sessions", tag = "auth",
    summary = "Your sessions",
    description = "Live sign-in sessions (refresh-token families), most recently used first; `current` marks the one this token belongs to.",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Sessions", body = Vec<SessionView>)))]
pub async fn list_sessions(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_sessions(&sponsor).await?))
}

#[utoipa::path(delete, path = "/api/auth/sessions/{id}", tag = "auth",
    summary = "Revoke a session",
    description = "Its refresh token and every access token issued in it stop working at once. Revoking the current session signs you out.",
    params(("id" = Uuid, Path, description = "Session id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "`not_found`: no live session of yours with this id", body = ErrorBody),
    ))]
pub async fn revoke_session(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.revoke_session(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/dashboard/stats", tag = "dashboard",
    summary = "The overview's numbers",
    description = "Actions and denials today (UTC), spend against limits, pending approvals, agents by status and trust tier, a time series (24 hourly or 30 daily UTC buckets of allow/deny/error counts and spend in micro-units) and the last 10 audit records.",
    params(StatsQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The numbers", body = DashboardStats),
        (status = 422, description = "`invalid_range`: range must be `24h` or `30d`", body = ErrorBody),
    ))]
pub async fn stats(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> ApiResult<impl IntoResponse> {
    let range = StatsRange::parse(query.range.as_deref())?;
    Ok(Json(s.services.dashboard_stats(&sponsor, range).await?))
}
