//! Gateway connections (named upstreams agents call through `/api/gw`). Thin: each
//! calls the [`Backend`] method the dashboard uses too.

use app::backend::Backend;
use app::model::{ConnectionPatch, ConnectionView, NewConnection};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, Sponsor};
use super::openapi::ErrorBody;

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
    description = "Agents then call `/api/gw/{name}/…`, which forwards to `base_url` with the named secret injected. `cost_micros` is the least each call is charged. With `pricing` (`openai`, `anthropic`), every call under `base_url` — through the gateway or `/api/proxy/execute` — is metered from the provider's `usage`: the model must be in `models` (or a `fallback` given), a ceiling is held before the call and the real cost settled after (docs: How AEGIS computes cost).",
    request_body = NewConnection,
    security(("sponsor_token" = [])),
    responses(
        (status = 201, description = "The connection", body = ConnectionView),
        (status = 409, description = "`connection_name_taken`: a connection with this name exists", body = ErrorBody),
        (status = 422, description = PRICING_ERRORS, body = ErrorBody),
    ))]
pub async fn create_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiJson(input): ApiJson<NewConnection>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.create_connection(&sponsor, input).await?)))
}

const PRICING_ERRORS: &str = "`validation_failed`: bad name or cost\n`invalid_base_url`: not an allowed http(s) URL, or it has a query or fragment\n`unknown_secret`: no secret of yours with this name\n`secret_host_mismatch`: the secret may not be sent to the base URL's host\n`invalid_pricing`: the message names the pricing field at fault (an unknown model without prices, a negative price, no models and no fallback…)";

#[utoipa::path(put, path = "/api/connections/{id}", tag = "connections",
    summary = "Replace a gateway connection",
    description = "The connection becomes the body (as `POST` takes it; renaming is allowed when the name is free). With `pricing`, calls under `base_url` are metered from the provider's `usage` (docs: How AEGIS computes cost).",
    params(("id" = Uuid, Path, description = "Connection id")),
    request_body = NewConnection,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The connection", body = ConnectionView),
        (status = 404, description = "`not_found`: no such connection of yours", body = ErrorBody),
        (status = 409, description = "`connection_name_taken`: a connection with this name exists", body = ErrorBody),
        (status = 422, description = PRICING_ERRORS, body = ErrorBody),
    ))]
pub async fn replace_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(input): ApiJson<NewConnection>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.replace_connection(&sponsor, id, input).await?))
}

#[utoipa::path(patch, path = "/api/connections/{id}", tag = "connections",
    summary = "Change some of a gateway connection",
    description = "Only the fields present change; `\"pricing\": null` makes the connection flat again and `\"secret\": null` removes its secret.",
    params(("id" = Uuid, Path, description = "Connection id")),
    request_body = ConnectionPatch,
    security(("sponsor_token" = [])),
    responses(
        (status = 200, description = "The connection", body = ConnectionView),
        (status = 404, description = "`not_found`: no such connection of yours", body = ErrorBody),
        (status = 422, description = PRICING_ERRORS, body = ErrorBody),
    ))]
pub async fn patch_connection(
    State(s): State<AppState>,
    Sponsor(sponsor): Sponsor,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(patch): ApiJson<ConnectionPatch>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.patch_connection(&sponsor, id, patch).await?))
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
