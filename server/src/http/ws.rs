//! `GET /ws`: a sponsor's real-time events over a WebSocket ([`crate::events`]).
//!
//! Authentication happens before the upgrade, and never through the URL (URLs end
//! up in proxy and access logs): an access token in `Authorization: Bearer`, or as
//! the WebSocket subprotocol `aegis.bearer.<token>` next to `aegis.events` (what a
//! browser script can send: `new WebSocket(url, ["aegis.events", "aegis.bearer." + token])`;
//! the server selects `aegis.events`, never echoing the token), or the dashboard's
//! access cookie (then the request must be same-origin, so another site cannot open
//! a socket with the sponsor's cookie). `?token=` is refused with `400
//! token_in_url`. A missing or invalid token refuses the upgrade with `401
//! {"error":{"code":"unauthorized",…}}`; no socket is opened.
//!
//! Limits: at most [`MAX_SOCKETS_PER_SESSION`] open sockets per session (`429
//! too_many_sockets` past it) and client messages of at most [`MAX_MESSAGE_BYTES`]
//! (a larger one closes the socket).
//!
//! Server → client: text frames, each one JSON object — an event (see
//! [`crate::events::Event`]) or `{"type":"heartbeat","time":…}` every 15 s. With
//! `?since=<event id>` the buffered events after that id come first. Client pings are
//! answered with pongs; anything else the client sends is ignored.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use app::error::AppError;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{Method, header};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::browser;
use super::error::ApiError;
use super::extract::ApiQuery;
use crate::events::Subscription;

/// The subprotocol a client asks for (and the server selects).
pub const SUBPROTOCOL: &str = "aegis.events";
/// The prefix of the subprotocol that carries an access token.
pub const BEARER_SUBPROTOCOL: &str = "aegis.bearer.";
/// Open sockets one session may hold (a dashboard needs one per tab).
pub const MAX_SOCKETS_PER_SESSION: usize = 8;
/// Largest message (and frame) a client may send; clients only ever send pings.
pub const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
    since: Option<String>,
    /// The organization whose events to stream (browsers cannot set `X-AEGIS-Org`
    /// on a WebSocket); default: the caller's own.
    org: Option<Uuid>,
}

/// Open sockets per session, process-wide; an entry leaves with its last socket.
static OPEN: LazyLock<Mutex<HashMap<Uuid, usize>>> = LazyLock::new(Default::default);

/// One socket's place under its session's cap; given back when dropped (the socket
/// closed, or the upgrade never completed).
struct SocketSlot(Uuid);

impl SocketSlot {
    fn take(session: Uuid) -> Option<Self> {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(session).or_insert(0);
        if *n >= MAX_SOCKETS_PER_SESSION {
            return None;
        }
        *n += 1;
        Some(Self(session))
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// The token from `Sec-WebSocket-Protocol: aegis.events, aegis.bearer.<token>`.
fn subprotocol_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_SUBPROTOCOL).map(str::to_owned))
        .filter(|t| !t.is_empty())
}

#[utoipa::path(get, path = "/ws", tag = "events",
    summary = "Real-time events (WebSocket)",
    description = "Upgrades to a WebSocket carrying the sponsor's events as JSON text frames \
        (`{id, type, time, sponsor_id, agent_id?, link: {audit_seq?, approval_id?}, data}`), \
        plus `{\"type\":\"heartbeat\",\"time\":…}` every 15 s. Authenticated, never through the URL, by \
        `Authorization: Bearer`, by the subprotocols `aegis.events, aegis.bearer.<access token>` \
        (the server selects `aegis.events`) or by the dashboard's access cookie (same origin only); \
        `?token=` is refused. At most 8 open sockets per session; client messages of at most 4 KiB. \
        `?since=<event id>` first replays the buffered events after that id.",
    params(
        ("since" = Option<String>, Query, description = "Last event id seen: replay what came after it"),
        ("org" = Option<Uuid>, Query, description = "The organization whose events to stream (as `X-AEGIS-Org`); default: your own"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the event stream"),
        (status = 400, description = "`invalid_query` (malformed `since`), `token_in_url` (`?token=` is not accepted), `duplicate_cookie` or `websocket_required`", body = Object),
        (status = 401, description = "`unauthorized`: missing, invalid or expired token", body = Object),
        (status = 404, description = "`org_not_found`: not a member of that organization", body = Object),
        (status = 403, description = "`csrf_rejected`: cookie sent from another origin", body = Object),
        (status = 429, description = "`too_many_sockets`: this session already has 8 open sockets", body = Object),
    ))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<WsQuery>,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let services = &state.services;
    let headers = &upgrade.headers;
    if query.token.is_some() {
        return Err(AppError::bad_request(
            "token_in_url",
            "tokens in URLs end up in logs: send it as Authorization: Bearer or the subprotocol aegis.bearer.<token>",
        )
        .into());
    }
    if browser::duplicate_auth_cookie(headers, &services.config) {
        return Err(AppError::bad_request(
            "duplicate_cookie",
            "an authentication cookie was sent more than once",
        )
        .into());
    }
    let bearer = super::extract::bearer(headers).map(str::to_owned);
    let token = match bearer.or_else(|| subprotocol_token(headers)) {
        Some(t) => t,
        None => match browser::cookie(headers, browser::access_cookie(&services.config)) {
            Some(cookie) => {
                // A cookie rides along on cross-site sockets too: only same-origin pages.
                if !browser::same_origin(&Method::POST, headers, services.config.public_url.as_deref()) {
                    return Err(AppError::new(403, "csrf_rejected", "cross-site request refused").into());
                }
                cookie.to_owned()
            }
            None => {
                return Err(AppError::unauthorized(
                    "send an access token as Authorization: Bearer, the subprotocol aegis.bearer.<token> or the dashboard's cookie",
                )
                .into());
            }
        },
    };
    let org = super::extract::org_header(headers)?.or(query.org);
    let session = services.sponsor_session(&token, org).await?;
    let org = session.scope(app::model::Access::Read)?;
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
    let Some(slot) = SocketSlot::take(session.session_id) else {
        return Err(AppError::new(
            429,
            "too_many_sockets",
            format!("at most {MAX_SOCKETS_PER_SESSION} open sockets per session"),
        )
        .into());
    };
    // Subscribed before the handshake completes: nothing published after the client
    // sees `101` is missed.
    let subscription = services.events.subscribe(org, since.as_deref());
    let services = services.clone();
    Ok(upgrade
        .protocols([SUBPROTOCOL])
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            serve(socket, subscription, services, token, org).await
        })
        .into_response())
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
    org: Uuid,
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
                // expired, the session was signed out or revoked, or the member
                // left the organization, it closes.
                if services.sponsor_session(&token, Some(org)).await.is_err() {
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
