//! Agents: a sponsor's agents, their keys, suspension, trust and wallets; and an
//! agent's view of itself. Thin: each calls the [`Backend`] method the dashboard
//! uses too.

use app::backend::Backend;
use app::model::{
    AgentCreated, AgentPatch, AgentTool, AgentView, KeyRotated, NewAgent, Page, PageRequest, SuspendRequest,
    TrustView, WalletEntry, WalletUpdate, WalletView,
};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{Agent, ApiJson, ApiPath, ApiQuery, OptionalJson, Sponsor};
use super::openapi::{AgentSelf, ErrorBody};

#[utoipa::path(get, path = "/api/agents", tag = "agents",
    summary = "List your live agents",
    description = "Newest first, keyset-paginated: pass `next_cursor` back as `cursor`. Deleted agents are not listed.",
    params(PageRequest),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "One page of agents", body = Page<AgentView>),
        (status = 400, description = "`invalid_limit`: not a whole number from 1 to 200\n`invalid_cursor`: not a cursor this API returned", body = ErrorBody),
    ))]
pub async fn list_agents(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_agents(&sponsor, page).await?))
}

#[utoipa::path(post, path = "/api/agents", tag = "agents",
    summary = "Create an agent and its first key",
    description = "The key is in the answer and never shown again. `policy` is a policy name (the built-in `default` when absent); limits are micro-units, 0 = no limit.",
    request_body = NewAgent,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The agent and its key", body = AgentCreated),
        (status = 409, description = "`agent_name_taken`: you have a live agent with this name", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field is out of bounds\n`unknown_policy`: no policy with this name", body = ErrorBody),
    ))]
pub async fn create_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewAgent>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_agent(&sponsor, input).await?)))
}

#[utoipa::path(get, path = "/api/agents/{id}", tag = "agents",
    summary = "One agent",
    description = "Also after deletion, with status `revoked`.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn get_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_agent(&sponsor, id).await?))
}

#[utoipa::path(patch, path = "/api/agents/{id}", tag = "agents",
    summary = "Change an agent",
    description = "Absent fields stay as they are; `\"\"` clears the description.",
    params(("id" = Uuid, Path, description = "Agent id")),
    request_body = AgentPatch,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The updated agent", body = AgentView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
        (status = 409, description = "`agent_name_taken`: you have another live agent with this name\n`agent_revoked`: the agent was deleted", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a field is out of bounds\n`unknown_policy`: no policy with this name", body = ErrorBody),
    ))]
pub async fn update_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<AgentPatch>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_agent(&sponsor, id, patch).await?))
}

#[utoipa::path(post, path = "/api/agents/{id}/keys", tag = "agents",
    summary = "Issue a new key",
    description = "Every earlier key of the agent stops working.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The new key, shown this once", body = KeyRotated),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
        (status = 409, description = "`agent_revoked`: the agent was deleted", body = ErrorBody),
    ))]
pub async fn rotate_agent_key(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.rotate_agent_key(&sponsor, id).await?)))
}

#[utoipa::path(post, path = "/api/agents/{id}/suspend", tag = "agents",
    summary = "Suspend an agent",
    description = "A suspended agent's calls are denied at stage `breaker`. The body is optional; the reason is kept (at most 500 characters). Suspending a suspended agent changes nothing.",
    params(("id" = Uuid, Path, description = "Agent id")),
    request_body(content = Option<SuspendRequest>, description = "Optional: `{\"reason\": \"…\"}` or an empty body", content_type = "application/json"),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The agent, status `suspended`", body = AgentView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
        (status = 409, description = "`agent_revoked`: the agent was deleted", body = ErrorBody),
        (status = 400, description = "`invalid_json`: the body is not JSON", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "`invalid_request`: the body is not JSON of this shape", body = ErrorBody),
    ))]
/// The body is optional: `{"reason": "..."}` or nothing at all.
pub async fn suspend_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(request): OptionalJson<SuspendRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.suspend_agent(&sponsor, id, request.reason).await?))
}

#[utoipa::path(post, path = "/api/agents/{id}/resume", tag = "agents",
    summary = "Resume a suspended agent",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The agent, status `active`", body = AgentView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
        (status = 409, description = "`agent_revoked`: the agent was deleted", body = ErrorBody),
    ))]
pub async fn resume_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.resume_agent(&sponsor, id).await?))
}

#[utoipa::path(delete, path = "/api/agents/{id}", tag = "agents",
    summary = "Delete (revoke) an agent",
    description = "Status becomes `revoked` and its keys stop working; its history is kept and its name is free again. Deleting twice is harmless.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The agent, status `revoked`", body = AgentView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn delete_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.delete_agent(&sponsor, id).await?))
}

#[utoipa::path(get, path = "/api/agents/{id}/trust", tag = "agents",
    summary = "An agent's trust score, tier and history",
    description = "Score 0 to 1000 and its tier (`untrusted` < 300 ≤ `probation` < 500 ≤ `standard` < 700 ≤ `trusted` < 900 ≤ `verified`), with the latest 100 changes, newest first. Also after deletion.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The agent's trust", body = TrustView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn agent_trust(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.agent_trust(&sponsor, id).await?))
}

#[utoipa::path(get, path = "/api/agents/{id}/tools", tag = "agents",
    summary = "The MCP tools an agent sees",
    description = "What `/mcp` lists for the agent: every MCP connection's tools (its allow-list applied), named `<connection>__<tool>`, without those the agent's policy denies outright (a tool it may call only with approval is listed). Each MCP server's `tools/list` is a call through the pipeline under the agent (audited, its secret injected), kept for 30 seconds; a server that cannot be listed adds no tools. No MCP connection: an empty list.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The tools, by connection name", body = Vec<AgentTool>),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn agent_tools(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.agent_tools(&sponsor, id).await?))
}

#[utoipa::path(get, path = "/api/agents/{id}/wallet", tag = "agents",
    summary = "An agent's wallet",
    description = "Limits (0 = none), spend in the current UTC day and month windows, what is held for calls in flight, and when the windows reset. Money in micro-units.",
    params(("id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The wallet", body = WalletView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn agent_wallet(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.agent_wallet(&sponsor, id).await?))
}

#[utoipa::path(get, path = "/api/agents/{id}/wallet/history", tag = "agents",
    summary = "An agent's wallet history: held against settled",
    description = "Each hold on the wallet, newest first, keyset-paginated: what was held before the call (for a metered LLM call, its ceiling) and what was settled after it. `status` is `held` (in flight), `settled`, `released` (not performed, nothing charged) or `expired` (never reported back; released by the janitor). `request_id` finds the call in the audit log.",
    params(("id" = Uuid, Path, description = "Agent id"), PageRequest),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "One page of holds", body = Page<WalletEntry>),
        (status = 400, description = "`invalid_limit`: not a whole number from 1 to 200\n`invalid_cursor`: not a cursor this API returned", body = ErrorBody),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
    ))]
pub async fn agent_wallet_history(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.agent_wallet_history(&sponsor, id, page).await?))
}

#[utoipa::path(put, path = "/api/agents/{id}/wallet", tag = "agents",
    summary = "Set an agent's limits",
    description = "Absent fields stay as they are. Every change is audited (`agent.updated`). Lowering a limit below what is spent denies further calls at stage `budget` until the window resets.",
    params(("id" = Uuid, Path, description = "Agent id")),
    request_body = WalletUpdate,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The wallet after the change", body = WalletView),
        (status = 404, description = "`not_found`: no such agent of yours", body = ErrorBody),
        (status = 409, description = "`agent_revoked`: the agent was deleted", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a limit outside 0..=10^15", body = ErrorBody),
    ))]
pub async fn update_agent_wallet(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<WalletUpdate>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_agent_wallet(&sponsor, id, update).await?))
}

#[utoipa::path(get, path = "/api/agent/me", tag = "agent",
    summary = "Who am I (for an agent)",
    description = "Proves the agent's key works and shows its standing.",
    security(("agent_key" = []), ("agent_api_key" = [])),
    responses(
        (status = 200, description = "The calling agent", body = AgentSelf),
        (status = 401, description = "`unauthorized`: no key sent\n`invalid_api_key`: unknown or revoked key", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
    ))]
/// Who am I, for an agent: proves its key works and shows its standing.
pub async fn agent_self(State(s): State<AppState>, Agent(principal): Agent) -> ApiResult<impl IntoResponse> {
    let view = s.services.agents.views(vec![principal.agent]).await?.remove(0);
    Ok(Json(json!({
        "id": view.id, "name": view.name, "status": view.status, "policy": view.policy,
        "trust_score": view.trust_score, "tier": view.tier, "key_prefix": view.key_prefix,
    })))
}
