//! JSON API handlers. Thin by design: authenticate, call the same [`Backend`]
//! methods the dashboard uses, shape the response.

use app::backend::Backend;
use app::model::{
    AgentPatch, Credentials, NewAgent, PageRequest, RefreshRequest, Registration, SuspendRequest,
};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{Agent, ApiJson, ApiPath, ApiQuery, ClientMetaExt, Sponsor};

pub async fn register(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<Registration>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.register(input, client).await?)))
}

pub async fn login(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.login(input, client).await?))
}

pub async fn refresh(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<RefreshRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(Backend::refresh(&*s.services, &input.refresh_token, client).await?))
}

pub async fn logout(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    s.services.logout(&sponsor).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn me(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.current_user(&sponsor).await?))
}

pub async fn list_agents(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiQuery(page): ApiQuery<PageRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.list_agents(&sponsor, page).await?))
}

pub async fn create_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewAgent>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_agent(&sponsor, input).await?)))
}

pub async fn get_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.get_agent(&sponsor, id).await?))
}

pub async fn update_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<AgentPatch>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.update_agent(&sponsor, id, patch).await?))
}

pub async fn rotate_agent_key(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.rotate_agent_key(&sponsor, id).await?)))
}

/// The body is optional: `{"reason": "..."}` or nothing at all.
pub async fn suspend_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    body: axum::body::Bytes,
) -> ApiResult<impl IntoResponse> {
    let request: SuspendRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SuspendRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| app::error::AppError::new(422, "invalid_request", format!("invalid body: {e}")))?
    };
    Ok(Json(s.services.suspend_agent(&sponsor, id, request.reason).await?))
}

pub async fn resume_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.resume_agent(&sponsor, id).await?))
}

pub async fn delete_agent(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.delete_agent(&sponsor, id).await?))
}

/// Who am I, for an agent: proves its key works and shows its standing.
pub async fn agent_self(State(s): State<AppState>, Agent(principal): Agent) -> ApiResult<impl IntoResponse> {
    let view = s.services.agents.views(vec![principal.agent]).await?.remove(0);
    Ok(Json(json!({
        "id": view.id, "name": view.name, "status": view.status, "policy": view.policy,
        "trust_score": view.trust_score, "key_prefix": view.key_prefix,
    })))
}
