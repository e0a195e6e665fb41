//! Approvals over JSON: the sponsor's queue and decisions, and the agent's poll.

use std::time::Duration;

use app::backend::Backend;
use app::model::{AgentApprovalView, ApprovalQuery, ApprovalView, ApproveRequest, Page, RejectRequest};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use serde::Deserialize;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{Agent, ApiPath, ApiQuery, OptionalJson, Sponsor};
use super::openapi::ErrorBody;

#[utoipa::path(get, path = "/api/approvals", tag = "approvals",
    summary = "Your approvals queue",
    description = "Newest first, keyset-paginated. Pending approvals past their expiry are reported (and audited) as `expired`.",
    params(ApprovalQuery),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "A page of approvals", body = Page<ApprovalView>),
        (status = 400, description = "`invalid_status`, `invalid_limit` or `invalid_cursor`", body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(query): ApiQuery<ApprovalQuery>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_approvals(&sponsor, query).await?))
}

#[utoipa::path(get, path = "/api/approvals/{id}", tag = "approvals",
    summary = "One approval",
    description = "With what the list leaves out: `target` (the normalised URL that will be fetched, host in punycode and Unicode), every header that will be sent (`headers`; credential values and the injected secret masked) and the whole body (`body`, or `body_base64` when it is not UTF-8).",
    params(("id" = Uuid, Path, description = "Approval id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The approval", body = ApprovalView),
        (status = 404, description = "`not_found`: no such approval of yours", body = ErrorBody),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_approval(&sponsor, id).await?))
}

#[utoipa::path(post, path = "/api/approvals/{id}/approve", tag = "approvals",
    summary = "Approve and perform a parked request",
    description = "Performs exactly the stored request, once, through every stage again (budget is reserved now; a policy that now denies, a suspended agent or an exhausted budget still stop it), and answers with the approval and its `outcome`. Optionally grants more calls like this one (same method, origin, vault secret and path prefix — by default the approved path up to its last `/`) for a while. Audited with your identity, reason and how long it waited.",
    params(("id" = Uuid, Path, description = "Approval id")),
    request_body(content = Option<ApproveRequest>, description = "Optional"),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "Approved; `outcome` holds what the agent gets", body = ApprovalView),
        (status = 404, description = "`not_found`: no such approval of yours", body = ErrorBody),
        (status = 409, description = "`approval_decided`: already approved or rejected\n`approval_expired`: it expired\n`approval_tampered`: the stored request no longer matches its hash (nothing was performed)", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a grant outside its bounds, or a `path_prefix` that is malformed or does not cover the approved path", body = ErrorBody),
    ))]
pub async fn approve(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(input): OptionalJson<ApproveRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.approve(&sponsor, id, input).await?))
}

#[utoipa::path(post, path = "/api/approvals/{id}/reject", tag = "approvals",
    summary = "Reject a parked request",
    description = "Nothing is performed. The reason is shown to the agent and audited; the agent's trust drops (`approval_rejected`).",
    params(("id" = Uuid, Path, description = "Approval id")),
    request_body(content = Option<RejectRequest>, description = "Optional"),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "Rejected", body = ApprovalView),
        (status = 404, description = "`not_found`: no such approval of yours", body = ErrorBody),
        (status = 409, description = "`approval_decided` or `approval_expired`", body = ErrorBody),
    ))]
pub async fn reject(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(input): OptionalJson<RejectRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.reject(&sponsor, id, input).await?))
}

/// Longest long-poll.
pub const MAX_WAIT_SECS: u64 = 60;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Hold the request up to this many seconds until the approval is decided (and,
    /// if approved, performed). Waits are at most 60 seconds: a larger value waits 60.
    #[serde(default)]
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/api/proxy/approvals/{id}", tag = "proxy",
    summary = "Poll an approval (agent)",
    description = "The `poll_url` of a `202 pending_approval` answer. Status `pending`, `approved` (with `outcome` once performed: the execute answer the call produced, its upstream body cut at 64 KiB with `upstream.body_truncated: true`, `body_bytes` and `body_sha256` when longer), `rejected` (with the sponsor's `reason`) or `expired`. With `?wait=N` the answer is held until the approval is settled or N seconds pass; the wait is woken by the decision itself (no polling), and each agent may hold at most `AEGIS_APPROVAL_MAX_WAITS` (8) waits at once.",
    params(("id" = Uuid, Path, description = "Approval id"), WaitQuery),
    security(("agent_key" = []), ("agent_api_key" = [])),
    responses(
        (status = 200, description = "Where the approval stands", body = AgentApprovalView),
        (status = 404, description = "`not_found`: no approval of this agent's with this id", body = ErrorBody),
        (status = 429, description = "`approval_waits_exceeded`: this agent already holds its maximum of waiting polls; retry after `Retry-After` seconds (or poll without `wait`)", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn poll(
    State(s): State<AppState>,
    Agent(agent): Agent,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> ApiResult<impl IntoResponse> {
    let wait = Duration::from_secs(query.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    let max_waits = s.services.config.approval_max_waits;
    Ok(Json(s.services.approvals.wait_for_agent(&agent.agent, id, wait, max_waits).await?))
}
