//! Sponsor endpoints for policies, vault secrets and connections. Thin: each calls
//! the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{NewConnection, NewPolicy, NewSecret, PolicyUpdate, SecretUpdate};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Sponsor};

pub async fn list_policies(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_policies(&sponsor).await?))
}

pub async fn create_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewPolicy>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_policy(&sponsor, input).await?)))
}

pub async fn get_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_policy(&sponsor, id).await?))
}

pub async fn update_policy(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<PolicyUpdate>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_policy(&sponsor, id, update).await?))
}

pub async fn list_secrets(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_secrets(&sponsor).await?))
}

pub async fn create_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewSecret>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_secret(&sponsor, input).await?)))
}

pub async fn get_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_secret(&sponsor, id).await?))
}

pub async fn update_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(update): ApiJson<SecretUpdate>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_secret(&sponsor, id, update).await?))
}

pub async fn delete_secret(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_secret(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_connections(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_connections(&sponsor).await?))
}

pub async fn create_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewConnection>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_connection(&sponsor, input).await?)))
}

pub async fn delete_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    s.services.delete_connection(&sponsor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

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
