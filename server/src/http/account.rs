//! A sponsor's account: registration, sign-in, refresh, sign-out, who am I, and
//! the sessions signed in. Thin: each calls the [`Backend`] method the dashboard
//! uses too.

use app::backend::Backend;
use app::model::{AuthResponse, Credentials, RefreshRequest, Registration, SessionView, UserView};
use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use http::StatusCode;
use uuid::Uuid;

use super::AppState;
use super::error::ApiResult;
use super::extract::{ApiJson, ApiPath, ClientMetaExt, Sponsor};
use super::openapi::ErrorBody;

#[utoipa::path(post, path = "/api/auth/register", tag = "auth",
    summary = "Create a sponsor account and sign in",
    description = "Emails are trimmed and lower-cased. Passwords need at least 10 characters from at least two classes (lower, upper, digit, symbol). Registering has its own per-address budget (as many per window as sign-in attempts).",
    request_body = Registration,
    responses(
        (status = 201, description = "Signed in: a token pair and the new user", body = AuthResponse),
        (status = 409, description = "`email_taken`: an account with this email exists", body = ErrorBody),
        (status = 422, description = "`weak_password`: the password is too short, too long or too simple\n`validation_failed`: the email or name is not acceptable", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many registrations from this address", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`busy`: too many password hashes queued; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn register(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<Registration>,
) -> ApiResult<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(s.services.register(input, client).await?)))
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth",
    summary = "Sign in",
    description = "Unknown email and wrong password get the same answer, in the same time. Every attempt is counted before the password is checked: 5 per (email, client address) and 50 per email from all addresses together, and 50 attempts per address (IPv6: per /64), within 15 minutes; a success clears the email's counts. A malformed email counts only against the address.",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in", body = AuthResponse),
        (status = 401, description = "`invalid_credentials`: wrong email or password (or a disabled account)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many attempts for this email or address", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "`busy`: too many password checks queued; retry shortly", body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
pub async fn login(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.login(input, client).await?))
}

#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    summary = "Exchange a refresh token for a new pair",
    description = "Refresh tokens are single-use. Presenting a rotated one again means it leaked: the whole session is revoked.",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair (the old refresh token stops working)", body = AuthResponse),
        (status = 401, description = "`invalid_refresh_token`: invalid, expired or revoked\n`refresh_token_reused`: already used; the session has been revoked", body = ErrorBody),
    ))]
pub async fn refresh(
    State(s): State<AppState>,
    ClientMetaExt(client): ClientMetaExt,
    ApiJson(input): ApiJson<RefreshRequest>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(Backend::refresh(&*s.services, &input.refresh_token, client).await?))
}

#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    summary = "Sign out",
    description = "Ends the session: its refresh token and every access token issued in it stop working at once.",
    security(("sponsor_token" = [])),
    responses((status = 204, description = "Signed out")))]
pub async fn logout(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    s.services.logout(&sponsor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/auth/me", tag = "auth",
    summary = "The signed-in sponsor",
    security(("sponsor_token" = [])),
    responses((status = 200, description = "The user", body = UserView)))]
pub async fn me(State(s): State<AppState>, Sponsor(sponsor): Sponsor) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.services.current_user(&sponsor).await?))
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
