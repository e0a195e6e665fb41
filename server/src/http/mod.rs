//! HTTP surface: the JSON API under `/api`, the dashboard (pages and `/rpc` server
//! functions) everywhere else, `/healthz`, `/readyz`, `/metrics`, and the API's
//! documentation (`/api/openapi.json`, `/docs`).

pub mod account;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod browser;
pub mod channels;
pub mod connections;
pub mod docs;
pub mod error;
pub mod extract;
pub mod mcp;
pub mod openapi;
pub mod orgs;
pub mod overview;
pub mod policies;
pub mod proxy;
pub mod secrets;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use app::backend::SharedBackend;
use app::error::AppError;
use app::{App, shell};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{LeptosRoutes, generate_route_list};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::backend::Services;
use error::ApiError;
use openapi::ErrorBody;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub leptos_options: LeptosOptions,
    pub services: Arc<Services>,
}

// Every route below is documented in the OpenAPI spec (`openapi.rs`, and an annotation
// on its handler) and listed in `ROUTES` in `server/tests/api/docs.rs`: update all three.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/auth/register", post(account::register))
        .route("/auth/login", post(account::login))
        .route("/auth/refresh", post(account::refresh))
        .route("/auth/logout", post(account::logout))
        .route("/auth/me", get(account::me))
        .route("/agents", get(agents::list_agents).post(agents::create_agent))
        .route(
            "/agents/{id}",
            get(agents::get_agent).patch(agents::update_agent).delete(agents::delete_agent),
        )
        .route("/agents/{id}/keys", post(agents::rotate_agent_key))
        .route("/agents/{id}/suspend", post(agents::suspend_agent))
        .route("/agents/{id}/resume", post(agents::resume_agent))
        .route("/agents/{id}/trust", get(agents::agent_trust))
        .route("/agents/{id}/tools", get(agents::agent_tools))
        .route("/agents/{id}/wallet", get(agents::agent_wallet).put(agents::update_agent_wallet))
        .route("/agents/{id}/wallet/history", get(agents::agent_wallet_history))
        .route("/agent/me", get(agents::agent_self))
        .route("/policies", get(policies::list_policies).post(policies::create_policy))
        .route("/policies/{id}", get(policies::get_policy).put(policies::update_policy))
        .route("/secrets", get(secrets::list_secrets).post(secrets::create_secret))
        .route(
            "/secrets/{id}",
            get(secrets::get_secret).put(secrets::update_secret).delete(secrets::delete_secret),
        )
        .route(
            "/secrets/{id}/agents/{agent_id}",
            axum::routing::put(secrets::grant_secret).delete(secrets::revoke_secret),
        )
        .route("/connections", get(connections::list_connections).post(connections::create_connection))
        .route(
            "/connections/{id}",
            axum::routing::delete(connections::delete_connection)
                .put(connections::replace_connection)
                .patch(connections::patch_connection),
        )
        .route("/audit/{seq}/replay", get(policies::replay_decision))
        .route("/audit", get(audit::list))
        .route("/audit/export.csv", get(audit::export_csv))
        .route("/audit/verify", get(audit::verify))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", get(approvals::get))
        .route("/approvals/{id}/approve", post(approvals::approve))
        .route("/approvals/{id}/reject", post(approvals::reject))
        .route("/proxy/approvals/{id}", get(approvals::poll))
        .route("/policies/evaluate", post(policies::evaluate_policy))
        .route("/auth/sessions", get(account::list_sessions))
        .route("/auth/sessions/{id}", axum::routing::delete(account::revoke_session))
        .route("/dashboard/stats", get(overview::stats))
        .route("/usage", get(overview::usage))
        .route("/orgs", get(orgs::list_orgs))
        .route("/orgs/members", get(orgs::list_members))
        .route("/orgs/members/{id}", axum::routing::patch(orgs::update_member).delete(orgs::remove_member))
        .route("/orgs/invitations", get(orgs::list_invitations).post(orgs::invite))
        .route("/orgs/invitations/accept", post(orgs::accept_invitation))
        .route("/orgs/invitations/{id}", axum::routing::delete(orgs::revoke_invitation))
        .route("/orgs/settings", get(orgs::get_settings).put(orgs::put_settings))
        .route("/channels", get(channels::list).post(channels::create))
        .route("/channels/{id}", axum::routing::patch(channels::update).delete(channels::delete))
        .route("/channels/{id}/deliveries", get(channels::deliveries))
        .route("/channels/{id}/test", post(channels::test))
        .route("/slack/links", post(channels::link_slack))
        .route(
            "/slack/channels/{id}/interactions",
            post(channels::slack_interactions)
                .layer(axum::extract::DefaultBodyLimit::max(crate::channels::slack_clicks::MAX_BODY)),
        )
        .fallback(|| async { ApiError(AppError::not_found("endpoint")) })
        .method_not_allowed_fallback(|| async {
            ApiError(AppError::new(405, "method_not_allowed", "method not allowed on this endpoint"))
        })
        .layer(DefaultBodyLimit::max(state.services.config.max_body_bytes));
    // Agents' calls may carry larger bodies (base64 adds a third) than sponsor JSON.
    let proxy_body_limit = state.services.config.proxy_max_body_bytes / 3 * 4 + 64 * 1024;
    let agents_doors = Router::new()
        .route("/proxy/execute", post(proxy::execute))
        .route("/gw/{connection}", axum::routing::any(proxy::gateway_root))
        .route("/gw/{connection}/", axum::routing::any(proxy::gateway_root))
        .route("/gw/{connection}/{*path}", axum::routing::any(proxy::gateway))
        .layer(DefaultBodyLimit::max(proxy_body_limit));
    let api = api.merge(agents_doors);

    let backend: SharedBackend = state.services.clone();
    let routes = generate_route_list(App);
    let options = state.leptos_options.clone();
    let dashboard = Router::new()
        .route("/audit/export.csv", get(audit::export_csv_for_browser))
        .leptos_routes_with_context(
            &state,
            routes,
            move || provide_context(backend.clone()),
            move || shell(options.clone()),
        )
        .fallback(leptos_axum::file_and_error_handler::<AppState, _>(shell))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(middleware::from_fn_with_state(state.clone(), browser::session));

    // `/mcp`: the agents' MCP door; the SDK's transport behind AEGIS's key check.
    let mcp_door = Router::new()
        .route_service("/mcp", mcp::service(state.services.clone()))
        .layer(middleware::from_fn_with_state(state.clone(), mcp::guard));

    Router::new()
        .nest("/api", api)
        .merge(mcp_door)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::events))
        .route("/docs", get(docs::page))
        .merge(dashboard)
        .layer(middleware::from_fn_with_state(state.clone(), attach_client_meta))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("request handler panicked");
            ApiError(AppError::internal()).into_response()
        }))
        // Outermost, so every answer (a caught panic's included) carries an id.
        .layer(middleware::from_fn(request_context))
        .with_state(state)
}

#[utoipa::path(get, path = "/healthz", tag = "meta",
    summary = "Liveness",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = Object)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "meta",
    summary = "Readiness",
    description = "Ready to serve: the database answers a query and every migration is applied. \
Unlike `/healthz` (the process is alive), a `503` here means: send no traffic to this instance for now.",
    responses(
        (status = 200, description = "`{\"status\":\"ready\"}`", body = Object),
        (status = 503, description = "`{\"status\":\"not_ready\",\"reason\":\"…\"}`: the database is unavailable or migrations are pending", body = Object),
    ))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    match crate::db::check_ready(&s.services.db).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not_ready", "reason": reason})))
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    summary = "Prometheus metrics",
    description = "The Prometheus text format (0.0.4). Public unless `AEGIS_METRICS_TOKEN` is set; \
then send `Authorization: Bearer <token>`.",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "`unauthorized`: `AEGIS_METRICS_TOKEN` is set and the request lacks it", body = ErrorBody),
    ))]
pub async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &s.services.config.metrics_token
        && !token_matches(extract::bearer(&headers), expected)
    {
        return ApiError(AppError::unauthorized("send the metrics token as Authorization: Bearer <token>"))
            .into_response();
    }
    let body = s.services.metrics.render(&s.services.db).await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// Constant time, and over digests so not even the token's length leaks.
fn token_matches(given: Option<&str>, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let Some(given) = given else { return false };
    Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(expected.as_bytes())).into()
}

pub const X_REQUEST_ID: &str = "x-request-id";

/// This HTTP request's id (`req_…`), made by [`request_context`]. The proxy runs
/// its pipeline under it, so logs, the answer and the audit record share one id.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of `extensions`' request; a fresh one if the middleware did not run.
    pub fn of(extensions: &http::Extensions) -> String {
        extensions.get::<RequestId>().map_or_else(crate::proxy::new_request_id, |r| r.0.clone())
    }
}

/// Gives every request an id and a tracing span (id, method, path, status), and
/// every answer an `x-request-id`. A client's own `x-request-id` is never used as
/// ours (agents could forge audit ids); it is only logged, as `client_request_id`.
/// An `x-request-id` already on the answer is kept: an idempotent replay's original
/// id, or a gateway upstream's own (AEGIS's is then in `x-aegis-request-id`).
async fn request_context(mut req: Request, next: Next) -> Response {
    let id = crate::proxy::new_request_id();
    let client_id: Option<String> = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().filter(char::is_ascii_graphic).take(128).collect());
    // The path only: query strings can carry tokens (`/ws?token=`).
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("http", request_id = %id, method = %req.method(), path = %path,
        client_request_id = tracing::field::Empty, status = tracing::field::Empty);
    if let Some(c) = &client_id {
        span.record("client_request_id", c.as_str());
    }
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    if !response.headers().contains_key(X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert(HeaderName::from_static(X_REQUEST_ID), v);
    }
    let latency_ms = started.elapsed().as_millis() as u64;
    span.in_scope(|| {
        // Probes and scrapes arrive every few seconds; they only clutter the info log.
        if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
            tracing::debug!(status, latency_ms, "request");
        } else {
            tracing::info!(status, latency_ms, "request");
        }
    });
    response
}

/// Records where each request came from, once, for every handler that needs it.
async fn attach_client_meta(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let meta = extract::client_meta(
        req.headers(),
        req.extensions().get::<ConnectInfo<SocketAddr>>(),
        state.services.config.trust_proxy_headers,
    );
    req.extensions_mut().insert(meta);
    next.run(req).await
}
