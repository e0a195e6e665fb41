//! Vault secrets and their grants to agents. Thin: each calls the [`Backend`]
//! method the dashboard uses too.

use app::backend::Backend;
use app::model::{NewSecret, SecretUpdate, SecretView};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Sponsor};
use super::openapi::ErrorBody;

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
