//! `GET /ws`: a sponsor's real-time events over a WebSocket ([`crate::events`]).
//!
//! Authentication happens before the upgrade: an access token in `?token=`, in
//! `Authorization: Bearer`, or the dashboard's `aegis_at` cookie (then the request must
//! be same-origin, so another site cannot open a socket with the sponsor's cookie). A
//! missing or invalid token refuses the upgrade with `401 {"error":{"code":"unauthorized",…}}`;
//! no socket is opened.
//!
//! Server → client: text frames, each one JSON object — an event (see
//! [`crate::events::Event`]) or `{"type":"heartbeat","time":…}` every 15 s. With
//! `?since=<event id>` the buffered events after that id come first. Client pings are
//! answered with pongs; anything else the client sends is ignored.

use app::error::AppError;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, header};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::browser;
use super::error::ApiError;
use super::extract::ApiQuery;
use crate::backend::ACCESS_COOKIE;
use crate::events::Subscription;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    since: Option<String>,
}

#[utoipa::path(get, path = "/ws", tag = "events",
    summary = "Real-time events (WebSocket)",
    description = "Upgrades to a WebSocket carrying the sponsor's events as JSON text frames \
        (`{id, type, time, sponsor_id, agent_id?, link: {audit_seq?, approval_id?}, data}`), \
        plus `{\"type\":\"heartbeat\",\"time\":…}` every 15 s. Authenticated by `?token=` \
        (an access token), `Authorization: Bearer` or the dashboard's `aegis_at` cookie; \
        `?since=<event id>` first replays the buffered events after that id.",
    params(
        ("token" = Option<String>, Query, description = "Access token (JWT)"),
        ("since" = Option<String>, Query, description = "Last event id seen: replay what came after it"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the event stream"),
        (status = 400, description = "`invalid_query` (malformed `since`) or `websocket_required`", body = Object),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = Object),
        (status = 403, description = "`csrf_rejected`: cookie sent from another origin", body = Object),
    ))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WsQuery>,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let services = &state.services;
    let headers = &upgrade.headers;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let token = match query.token.filter(|t| !t.is_empty()).or(bearer) {
        Some(t) => t,
        None => match browser::cookie(headers, ACCESS_COOKIE) {
            Some(cookie) => {
                // A cookie rides along on cross-site sockets too: only same-origin pages.
                if !browser::same_origin(&Method::POST, headers, services.config.public_url.as_deref()) {
                    return Err(AppError::new(403, "csrf_rejected", "cross-site request refused").into());
                }
                cookie.to_owned()
            }
            None => {
                return Err(AppError::unauthorized(
                    "send an access token as ?token=, Authorization: Bearer or the aegis_at cookie",
                )
                .into());
            }
        },
    };
    let session = services.auth.authenticate(&token).await?;
    let since = query.since.filter(|s| !s.is_empty());
    if let Some(s) = &since
        && s.parse::<uuid::Uuid>().is_err()
    {
        return Err(AppError::bad_request("invalid_query", "since must be an event id").into());
    }
    let upgrade = upgrade.ws.map_err(|r| {
        AppError::new(
            r.status().as_u16(),
            "websocket_required",
            format!("this endpoint speaks WebSocket only: {}", r.body_text()),
        )
    })?;
    // Subscribed before the handshake completes: nothing published after the client
    // sees `101` is missed.
    let subscription = services.events.subscribe(session.user_id, since.as_deref());
    let services = services.clone();
    Ok(upgrade.on_upgrade(move |socket| serve(socket, subscription, services, token)).into_response())
}

/// The upgrade (if the request is one) and the headers, for authenticating first.
pub struct Upgrade {
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    headers: http::HeaderMap,
}

impl FromRequestParts<AppState> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let headers = parts.headers.clone();
        let ws = WebSocketUpgrade::from_request_parts(parts, state).await;
        Ok(Self { ws, headers })
    }
}

/// Close code for a socket whose session ended (signed out, revoked or expired);
/// the client reconnects with a fresh token and `since` to miss nothing.
pub const CLOSE_SESSION_ENDED: u16 = 4401;

async fn serve(
    mut socket: WebSocket,
    mut subscription: Subscription,
    services: std::sync::Arc<crate::backend::Services>,
    token: String,
) {
    let every = services.config.ws_heartbeat;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let text = tokio::select! {
            event = subscription.next() => match event {
                Some(e) => serde_json::to_string(&e).unwrap_or_default(),
                None => break,
            },
            _ = heartbeat.tick() => {
                // An open socket is not a session of its own: once the token has
                // expired or the session was signed out or revoked, it closes.
                if services.auth.authenticate(&token).await.is_err() {
                    let frame = axum::extract::ws::CloseFrame {
                        code: CLOSE_SESSION_ENDED,
                        reason: "session ended; reconnect with a fresh token".into(),
                    };
                    let _ = socket.send(Message::Close(Some(frame))).await;
                    return;
                }
                json!({"type": "heartbeat", "time": chrono::Utc::now()}).to_string()
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the WebSocket layer as it reads.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
