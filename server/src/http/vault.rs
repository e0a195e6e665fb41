//! Sponsor endpoints for policies, vault secrets and connections. Thin: each calls
//! the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{
    ConnectionView, NewConnection, NewPolicy, NewSecret, PolicySummary, PolicyUpdate, PolicyView,
    SecretUpdate, SecretView,
};
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

#[utoipa::path(get, path = "/api/secrets", tag = "secrets",
    summary = "List vault secrets (metadata only)",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Your secrets; values are never returned", body = Vec<SecretView>)))]
pub async fn list_secrets(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_secrets(&sponsor).await?))
}

#[utoipa::path(post, path = "/api/secrets", tag = "secrets",
    summary = "Store a secret",
    description = "Encrypted with AES-256-GCM under the master key. Injected only for granted `agents` and only towards `allowed_hosts` (exact, or `*.suffix`).",
    request_body = NewSecret,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The secret's metadata", body = SecretView),
        (status = 409, description = "`secret_name_taken`: you have a secret with this name", body = ErrorBody),
        (status = 422, description = "`validation_failed`: bad name, value, host pattern or injection\n`unknown_agent`: `agents` must be ids of your own live agents", body = ErrorBody),
    ))]
pub async fn create_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewSecret>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_secret(&sponsor, input).await?)))
}

#[utoipa::path(get, path = "/api/secrets/{id}", tag = "secrets",
    summary = "One secret (metadata only)",
    params(("id" = Uuid, Path, description = "Secret id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The secret's metadata", body = SecretView),
        (status = 404, description = "`not_found`: no such secret of yours", body = ErrorBody),
    ))]
pub async fn get_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_secret(&sponsor, id).await?))
}

#[utoipa::path(put, path = "/api/secrets/{id}", tag = "secrets",
    summary = "Rotate a secret or change its hosts, injection or grants",
    description = "Absent fields stay as they are; `value` rotates the secret; `agents` replaces the grants.",
    params(("id" = Uuid, Path, description = "Secret id")),
    request_body = SecretUpdate,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The secret's metadata", body = SecretView),
        (status = 404, description = "`not_found`: no such secret of yours", body = ErrorBody),
        (status = 422, description = "`validation_failed`: bad value, host pattern or injection\n`unknown_agent`: `agents` must be ids of your own live agents", body = ErrorBody),
    ))]
pub async fn update_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<SecretUpdate>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_secret(&sponsor, id, update).await?))
}

#[utoipa::path(put, path = "/api/secrets/{id}/agents/{agent_id}", tag = "secrets",
    summary = "Grant one agent the use of a secret",
    description = "Idempotent; the secret's other grants stay as they are.",
    params(("id" = Uuid, Path, description = "Secret id"), ("agent_id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The secret's metadata", body = SecretView),
        (status = 404, description = "`not_found`: no such secret of yours", body = ErrorBody),
        (status = 422, description = "`unknown_agent`: not one of your own live agents", body = ErrorBody),
    ))]
pub async fn grant_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath((id, agent_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.set_secret_grant(&sponsor, id, agent_id, true).await?))
}

#[utoipa::path(delete, path = "/api/secrets/{id}/agents/{agent_id}", tag = "secrets",
    summary = "Revoke one agent's use of a secret",
    description = "Idempotent; the agent's next call naming the secret is denied at the secret stage.",
    params(("id" = Uuid, Path, description = "Secret id"), ("agent_id" = Uuid, Path, description = "Agent id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The secret's metadata", body = SecretView),
        (status = 404, description = "`not_found`: no such secret of yours", body = ErrorBody),
    ))]
pub async fn revoke_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath((id, agent_id)): ApiPath<(Uuid, Uuid)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.set_secret_grant(&sponsor, id, agent_id, false).await?))
}

#[utoipa::path(delete, path = "/api/secrets/{id}", tag = "secrets",
    summary = "Delete a secret",
    description = "Connections that named it keep working without a secret.",
    params(("id" = Uuid, Path, description = "Secret id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such secret of yours", body = ErrorBody),
    ))]
pub async fn delete_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_secret(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/connections", tag = "connections",
    summary = "List gateway connections",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "Your connections", body = Vec<ConnectionView>)))]
pub async fn list_connections(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_connections(&sponsor).await?))
}

#[utoipa::path(post, path = "/api/connections", tag = "connections",
    summary = "Create a gateway connection",
    description = "Agents then call `/api/gw/{name}/…`, which forwards to `base_url` with the named secret injected. `cost_micros` is the least each call is charged.",
    request_body = NewConnection,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The connection", body = ConnectionView),
        (status = 409, description = "`connection_name_taken`: a connection with this name exists", body = ErrorBody),
        (status = 422, description = "`validation_failed`: bad name or cost\n`invalid_base_url`: not an allowed http(s) URL, or it has a query or fragment\n`unknown_secret`: no secret of yours with this name\n`secret_host_mismatch`: the secret may not be sent to the base URL's host", body = ErrorBody),
    ))]
pub async fn create_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewConnection>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_connection(&sponsor, input).await?)))
}

#[utoipa::path(delete, path = "/api/connections/{id}", tag = "connections",
    summary = "Delete a gateway connection",
    params(("id" = Uuid, Path, description = "Connection id")),
    security(("sponsor_token" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such connection of yours", body = ErrorBody),
    ))]
pub async fn delete_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_connection(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
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
    let report = crate::policies::replay::replay(
        &services.db,
        &services.policies,
        &services.proxy.engine,
        seq,
        Some(sponsor.user_id),
    )
    .await?;
    Ok(Json(report))
}
