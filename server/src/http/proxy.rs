//! The agents' doors into the pipeline: `POST /api/proxy/execute` and gateway mode.

use app::error::AppError;
use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, StatusCode, header};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{Agent, ApiJson};
use crate::proxy::request::{ExecuteRequest, Origin, ProxyRequest};
use crate::proxy::{self, upstream};

/// Authentication failures answer in the pipeline's shape too, so an agent can
/// always read `decision` and `stage`.
fn auth_denied(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.0.status).unwrap_or(StatusCode::UNAUTHORIZED);
    let body = json!({
        "decision": "deny", "stage": "auth", "reason": e.0.message,
        "error": {"code": e.0.code, "message": e.0.message},
    });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

pub async fn execute(
    State(s): State<AppState>,
    agent: Result<Agent, ApiError>,
    body: Result<ApiJson<ExecuteRequest>, ApiError>,
) -> Response {
    let Agent(principal) = match agent {
        Ok(a) => a,
        Err(e) => return auth_denied(e),
    };
    let ApiJson(input) = match body {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let request = match input.into_proxy_request(s.services.config.proxy_max_body_bytes) {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match s.services.proxy.run(&principal, request).await {
        Ok(result) => {
            let (status, body) = result.to_json();
            let mut response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response();
            if let Ok(v) = header::HeaderValue::from_str(&result.request_id) {
                response.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
            }
            response
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// Headers an SDK sends that must not travel upstream: AEGIS's own key above all.
const GATEWAY_DROP: &[&str] =
    &["authorization", "x-api-key", "cookie", "host", "content-length", "accept-encoding"];

/// `ANY /api/gw/{connection}/{*path}`: a transparent reverse proxy for unmodified
/// SDKs, through the same pipeline, with the connection's secret swapped in.
pub async fn gateway(
    State(s): State<AppState>,
    agent: Result<Agent, ApiError>,
    Path((connection, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let Agent(principal) = match agent {
        Ok(a) => a,
        Err(e) => return auth_denied(e),
    };
    let services = &s.services;
    let found = match services.connections.by_name(principal.agent.sponsor_id, &connection).await {
        Ok(f) => f,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some((conn, secret)) = found else {
        return ApiError(AppError::not_found("connection")).into_response();
    };
    let (parts, body) = request.into_parts();
    let body = match to_bytes(body, services.config.proxy_max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(AppError::new(413, "payload_too_large", "request body is too large"))
                .into_response();
        }
    };
    let mut url = format!("{}/{}", conn.base_url.trim_end_matches('/'), path.trim_start_matches('/'));
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let headers = upstream::strip_hop_by_hop(parts.headers.clone())
        .into_iter()
        .filter_map(|(name, value)| name.map(|n| (n, value)))
        .filter(|(name, _)| !GATEWAY_DROP.contains(&name.as_str()) && !name.as_str().starts_with("x-aegis-"))
        .collect();
    let declared = parts
        .headers
        .get("x-aegis-cost-micros")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|c| (0..=app::money::MAX_MICROS).contains(c))
        .unwrap_or(0);
    let request = ProxyRequest {
        method: parts.method.clone(),
        url,
        headers,
        body,
        secret,
        declared_cost_micros: declared,
        minimum_cost_micros: conn.cost_micros,
        idempotency_key: None,
        label: Some(format!("gateway.{}", conn.name)),
        follow_redirects: false,
        origin: Origin::Gateway { connection: conn.name.clone() },
    };
    let mut result = match services.proxy.run(&principal, request).await {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match proxy::body_and_headers(&mut result) {
        Some((status, upstream_headers, body)) => {
            let mut response = Response::new(Body::from(body));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let headers: &mut HeaderMap = response.headers_mut();
            for (name, value) in upstream_headers.iter() {
                headers.append(name.clone(), value.clone());
            }
            if let Ok(v) = header::HeaderValue::from_str(&result.request_id) {
                headers.insert(HeaderName::from_static("x-aegis-request-id"), v);
            }
            response
        }
        None => {
            let (status, body) = result.to_json();
            (StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), Json(body)).into_response()
        }
    }
}
