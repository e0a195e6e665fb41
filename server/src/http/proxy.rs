//! The agents' doors into the pipeline: `POST /api/proxy/execute` and gateway mode.

use app::error::AppError;
use axum::Json;
use axum::body::to_bytes;
use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, StatusCode, header};
use serde_json::json;

use super::error::ApiError;
use super::extract::{Agent, ApiJson};
use super::openapi::{ErrorBody, ExecuteAllowed, ExecuteDenied, ExecuteFailed, ExecutePending};
use super::{AppState, RequestId};
use crate::call::Stage;
use crate::call::outcome::{Answer, Failure, Outcome, ProxyResult};
use crate::call::request::{ExecuteRequest, Origin, ProxyRequest};
use crate::proxy::upstream;

/// Authentication failures answer in the pipeline's shape too, so an agent can
/// always read `decision` and `stage`.
/// Unauthenticated callers are not written to the audit log (anyone could flood
/// it), so `audit_seq` is null; the request id still identifies the attempt in logs.
fn auth_denied(s: &AppState, request_id: String, e: ApiError) -> Response {
    if e.0.code == "overloaded" {
        // Too many key checks in flight: shed before anything else happens.
        s.services.metrics.proxy_request("error", "overload");
        let body = json!({
            "request_id": request_id, "audit_seq": null, "decision": "error", "stage": "overload",
            "reason": e.0.message, "error": {"code": e.0.code, "message": e.0.message},
        });
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return with_request_id(response, &request_id);
    }
    if e.0.status >= 500 {
        // The key could not be looked up (storage unavailable): not a denial, and nothing was performed.
        s.services.metrics.proxy_request("error", "storage");
        let body = json!({
            "request_id": request_id, "audit_seq": null, "decision": "error", "stage": "storage",
            "reason": "storage unavailable; nothing was performed",
        });
        return with_request_id((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(), &request_id);
    }
    let status = StatusCode::from_u16(e.0.status).unwrap_or(StatusCode::UNAUTHORIZED);
    s.services.metrics.proxy_request("deny", "auth");
    tracing::info!(request = %request_id, code = %e.0.code, "agent authentication failed");
    let body = json!({
        "request_id": request_id, "audit_seq": null,
        "decision": "deny", "stage": "auth", "reason": e.0.message,
        "error": {"code": e.0.code, "message": e.0.message},
    });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    with_request_id(response, &request_id)
}

/// An authenticated agent that did not finish sending its body in time.
fn body_timeout(s: &AppState) -> Response {
    let secs = s.services.config.proxy_body_timeout.as_secs();
    let mut response = ApiError(AppError::new(
        408,
        "request_timeout",
        format!("the request body did not arrive within {secs} s"),
    ))
    .into_response();
    response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    response
}

/// A shed call (503 `overload`) and a call past a rate limit (403 at `budget`,
/// `retry_after_secs` in the body) say when to come back.
fn with_retry_after(mut response: Response, result: &ProxyResult) -> Response {
    let secs = match &result.outcome {
        Outcome::Failed { stage: Stage::Overload, .. } => Some(1),
        Outcome::Denied { extra, .. } => extra["retry_after_secs"].as_u64(),
        _ => None,
    };
    if let Some(secs) = secs {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    response
}

fn with_request_id(response: Response, request_id: &str) -> Response {
    tagged(response, "x-request-id", request_id)
}

/// Gateway answers are the upstream's; AEGIS's id goes in a header of its own.
fn tagged(mut response: Response, name: &'static str, request_id: &str) -> Response {
    if let Ok(v) = header::HeaderValue::from_str(request_id) {
        response.headers_mut().insert(HeaderName::from_static(name), v);
    }
    response
}

#[utoipa::path(post, path = "/api/proxy/execute", tag = "proxy",
    summary = "Perform an HTTP call through AEGIS",
    description = super::openapi::text::EXECUTE,
    request_body = ExecuteRequest,
    security(("agent_key" = []), ("agent_api_key" = [])),
    responses(
        (status = 200, description = "`decision: allow`: the call was performed; `upstream` holds its answer (an upstream 4xx/5xx is still a 200 from AEGIS). A replayed idempotency key adds `replayed: true`.",
            body = ExecuteAllowed, headers(("x-request-id" = String, description = "Same as `request_id`"))),
        (status = 202, description = "`decision: pending_approval`: parked for the sponsor; poll `poll_url`. Nothing was sent upstream yet.",
            body = ExecutePending, headers(("x-request-id" = String, description = "Same as `request_id`"))),
        (status = 401, description = "`decision: deny`, `stage: auth`: no key, or an unknown or revoked key (`error.code` is `unauthorized` or `invalid_api_key`). Nothing is audited.",
            body = ExecuteDenied, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`decision: deny` at `stage` `breaker`, `policy`, `egress`, `secret` or `budget`; audited, nothing was sent upstream. Budget denials add `daily_remaining_micros`, `monthly_remaining_micros` and `cost_micros`.",
            body = ExecuteDenied, headers(("x-request-id" = String, description = "Same as `request_id`"))),
        (status = 408, description = "`request_timeout`: the body did not arrive within `AEGIS_PROXY_BODY_TIMEOUT_SECS` (the key is checked first: an unknown key gets its 401 before any of the body is read)", body = ErrorBody),
        (status = 409, description = "`idempotency_in_progress`: a request with this `idempotency_key` is still running", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the decoded body is larger than the proxy's limit", body = ErrorBody),
        (status = 422, description = "`invalid_request`: bad method, URL, header, body, cost, key or label\n`idempotency_key_reused`: this key was used for a different request", body = ErrorBody),
        (status = 502, description = "`decision: error`, `stage: upstream`: unreachable, failed or answered too much. The budget hold was released; the attempt is audited.",
            body = ExecuteFailed, headers(("x-request-id" = String, description = "Same as `request_id`"))),
        (status = 503, description = "`decision: error`, `stage: storage`: the database is unavailable; or `stage: overload`: AEGIS is at its in-flight bound (`AEGIS_PROXY_MAX_IN_FLIGHT`), or too many key checks are waiting (`error.code` `overloaded`), and answers with `Retry-After`. Either way nothing was performed (`audit_seq` is null). Safe to retry with the same `idempotency_key`.",
            body = ExecuteFailed, headers(("x-request-id" = String, description = "Same as `request_id`"))),
        (status = 504, description = "`decision: error`, `stage: upstream`: the upstream timed out",
            body = ExecuteFailed, headers(("x-request-id" = String, description = "Same as `request_id`"))),
    ))]
pub async fn execute(
    State(s): State<AppState>,
    request_id: Option<Extension<RequestId>>,
    agent: Result<Agent, ApiError>,
    request: Request,
) -> Response {
    let request_id = request_id.map_or_else(crate::proxy::new_request_id, |Extension(id)| id.0);
    // The key is checked before a byte of the body is read: an unknown caller gets
    // its 401 at once, however large or slow the body it announced.
    let Agent(principal) = match agent {
        Ok(a) => a,
        Err(e) => return auth_denied(&s, request_id, e),
    };
    let body = tokio::time::timeout(
        s.services.config.proxy_body_timeout,
        ApiJson::<ExecuteRequest>::from_request(request, &s),
    )
    .await;
    let ApiJson(input) = match body {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return body_timeout(&s),
    };
    let request = match input.into_proxy_request(s.services.config.proxy_max_body_bytes) {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match s.services.proxy.run(request_id, &principal, request).await {
        Ok(result) => {
            let (status, body) = render(&result);
            let response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response();
            with_request_id(with_retry_after(response, &result), &result.request_id)
        }
        Err(e) => ApiError(e).into_response(),
    }
}

/// Headers an SDK sends that must not travel upstream: AEGIS's own key above all.
const GATEWAY_DROP: &[&str] =
    &["authorization", "x-api-key", "cookie", "host", "content-length", "accept-encoding"];

#[utoipa::path(method(get, post, put, patch, delete, head, options), path = "/api/gw/{connection}/{path}", tag = "proxy",
    summary = "Gateway mode: a transparent proxy for unmodified SDKs",
    description = super::openapi::text::GATEWAY,
    params(
        ("connection" = String, Path, description = "Name of one of your sponsor's connections"),
        ("path" = String, Path, description = "The rest of the upstream path (may contain `/`); the query string is forwarded too"),
        ("x-aegis-cost-micros" = Option<i64>, Header, description = "Declared cost of this call in micro-units (the connection's `cost_micros` is the minimum)"),
    ),
    security(("agent_key" = []), ("agent_api_key" = [])),
    responses(
        (status = "default", description = "Allowed and performed: the upstream's own status, headers and body, with the secret scrubbed and hop-by-hop headers removed.",
            headers(("x-aegis-request-id" = String, description = "AEGIS's request id, for the audit log"))),
        (status = 401, description = "`decision: deny`, `stage: auth`: no key, or an unknown or revoked key",
            body = ExecuteDenied, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 202, description = "`decision: pending_approval` (as for execute): parked for the sponsor", body = ExecutePending),
        (status = 400, description = "`invalid_path`: the path would leave the connection's base URL or change the URL's structure: `.`/`..` segments (raw or `%2e`-encoded), encoded `/`, `\\`, `?`, `#` or control characters, a raw backslash, a malformed escape", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within `AEGIS_PROXY_BODY_TIMEOUT_SECS`", body = ErrorBody),
        (status = 403, description = "`decision: deny` at a pipeline stage (as for execute)", body = ExecuteDenied),
        (status = 404, description = "`not_found`: no connection with this name", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is larger than the proxy's limit", body = ErrorBody),
        (status = 502, description = "`decision: error`, `stage: upstream`: unreachable, failed or answered too much", body = ExecuteFailed),
        (status = 503, description = "`decision: error`, `stage: storage` (database unavailable) or `overload` (at the in-flight bound; `Retry-After`): nothing was performed", body = ExecuteFailed),
        (status = 504, description = "`decision: error`, `stage: upstream`: timed out", body = ExecuteFailed),
    ))]
/// `ANY /api/gw/{connection}/{*path}`: a transparent reverse proxy for unmodified
/// SDKs, through the same pipeline, with the connection's secret swapped in.
pub async fn gateway(
    State(s): State<AppState>,
    agent: Result<Agent, ApiError>,
    Path((connection, _decoded)): Path<(String, String)>,
    request: Request,
) -> Response {
    // The rest of the path exactly as sent (still percent-encoded): the decoded form
    // would turn `..%2F` into a way out of the connection's base path.
    let raw = request.uri().path();
    let suffix = raw
        .split_once("/gw/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, rest)| format!("/{rest}"))
        .unwrap_or_default();
    forward(s, agent, connection, suffix, request).await
}

#[utoipa::path(method(get, post, put, patch, delete, head, options), path = "/api/gw/{connection}", tag = "proxy",
    summary = "Gateway mode, at the connection's base URL itself",
    description = "Exactly like `/api/gw/{connection}/{path}` with an empty path.",
    params(("connection" = String, Path, description = "Name of one of your sponsor's connections")),
    security(("agent_key" = []), ("agent_api_key" = [])),
    responses(
        (status = "default", description = "As for `/api/gw/{connection}/{path}`"),
        (status = 401, description = "`decision: deny`, `stage: auth`", body = ExecuteDenied),
        (status = 404, description = "`not_found`: no connection with this name", body = ErrorBody),
    ))]
/// `ANY /api/gw/{connection}`: the connection's base URL itself.
pub async fn gateway_root(
    State(s): State<AppState>,
    agent: Result<Agent, ApiError>,
    Path(connection): Path<String>,
    request: Request,
) -> Response {
    let suffix = if request.uri().path().ends_with('/') { "/" } else { "" };
    forward(s, agent, connection, suffix.to_owned(), request).await
}

async fn forward(
    s: AppState,
    agent: Result<Agent, ApiError>,
    connection: String,
    suffix: String,
    request: Request,
) -> Response {
    let request_id = RequestId::of(request.extensions());
    let Agent(principal) = match agent {
        Ok(a) => a,
        Err(e) => return auth_denied(&s, request_id, e),
    };
    let services = &s.services;
    let found = match services.connections.by_name(principal.agent.sponsor_id, &connection).await {
        Ok(f) => f,
        Err(e) => return ApiError(e).into_response(),
    };
    let Some((conn, secret)) = found else {
        return ApiError(AppError::not_found("connection")).into_response();
    };
    if conn.kind == crate::connections::KIND_MCP {
        // Raw JSON-RPC here would skip the tool allow-list and the argument check.
        return ApiError(AppError::new(
            409,
            "mcp_connection",
            "this is an MCP connection: call its tools through /mcp",
        ))
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let url = match crate::call::request::gateway_url(&conn.base_url, &suffix, parts.uri.query()) {
        Ok(u) => u,
        Err(e) => return ApiError(e).into_response(),
    };
    let read = tokio::time::timeout(
        services.config.proxy_body_timeout,
        to_bytes(body, services.config.proxy_max_body_bytes),
    );
    let body = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return ApiError(AppError::new(413, "payload_too_large", "request body is too large"))
                .into_response();
        }
        Err(_) => return body_timeout(&s),
    };
    let headers = upstream::strip_hop_by_hop(parts.headers.clone())
        .into_iter()
        .filter_map(|(name, value)| name.map(|n| (n, value)))
        .filter(|(name, _)| !GATEWAY_DROP.contains(&name.as_str()) && !name.as_str().starts_with("x-aegis-"))
        .collect();
    // The same methods as the execute door: no TRACE, no CONNECT.
    let method = match crate::call::request::parse_method(parts.method.as_str()) {
        Ok(m) => m,
        Err(_) => {
            return ApiError(AppError::new(
                405,
                "method_not_allowed",
                "method not allowed through the gateway",
            ))
            .into_response();
        }
    };
    let declared = match parts.headers.get("x-aegis-cost-micros").map(|v| v.to_str().map(str::parse::<i64>)) {
        None => 0,
        Some(Ok(Ok(c))) if (0..=app::money::MAX_MICROS).contains(&c) => c,
        Some(_) => {
            return ApiError(AppError::new(
                422,
                "invalid_request",
                "x-aegis-cost-micros must be a whole number of micro-units between 0 and 10^15",
            ))
            .into_response();
        }
    };
    let request = ProxyRequest {
        method,
        url,
        headers,
        body,
        secret,
        declared_cost_micros: declared,
        minimum_cost_micros: conn.cost_micros,
        idempotency_key: None,
        label: Some(format!("gateway.{}", conn.name)),
        follow_redirects: false,
        stream_response: true,
        origin: Origin::Gateway { connection: conn.name.clone() },
    };
    let mut result = match services.proxy.run(request_id, &principal, request).await {
        Ok(r) => r,
        Err(e) => return ApiError(e).into_response(),
    };
    match take_answer(&mut result) {
        Some((status, upstream_headers, body)) => {
            let mut response = Response::new(body);
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let headers: &mut HeaderMap = response.headers_mut();
            for (name, value) in upstream_headers.iter() {
                headers.append(name.clone(), value.clone());
            }
            tagged(response, "x-aegis-request-id", &result.request_id)
        }
        None => {
            let (status, body) = render(&result);
            let response =
                (StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), Json(body)).into_response();
            tagged(with_retry_after(response, &result), "x-aegis-request-id", &result.request_id)
        }
    }
}

/// Used by gateway mode, which answers with the upstream's own status and headers.
fn take_answer(result: &mut ProxyResult) -> Option<(u16, HeaderMap, axum::body::Body)> {
    let Outcome::Performed { upstream, .. } = &mut result.outcome else {
        return None;
    };
    match upstream {
        Answer::Whole(r) => Some((
            r.status,
            std::mem::take(&mut r.headers),
            axum::body::Body::from(std::mem::take(&mut r.body)),
        )),
        Answer::Streaming(r) => {
            let body = std::mem::replace(&mut r.body, Box::pin(futures::stream::empty()));
            Some((r.status, std::mem::take(&mut r.headers), axum::body::Body::from_stream(body)))
        }
    }
}

/// The `POST /api/proxy/execute` answer to a result: HTTP status and JSON body.
/// Also what an idempotency key replays and an approved call's poll answers
/// (handed to the pipeline as its `render`).
pub fn render(result: &ProxyResult) -> (u16, serde_json::Value) {
    match &result.outcome {
        Outcome::Replayed { status, body } => {
            let mut body = body.clone();
            body["replayed"] = json!(true);
            (*status, body)
        }
        Outcome::Performed { upstream, cost_micros } => {
            let (status, headers_in) = match upstream {
                Answer::Whole(r) => (r.status, &r.headers),
                Answer::Streaming(r) => (r.status, &r.headers),
            };
            let mut headers = serde_json::Map::new();
            for (name, value) in headers_in {
                if let Ok(v) = value.to_str() {
                    headers.insert(name.as_str().to_owned(), json!(v));
                }
            }
            let mut up = json!({"status": status, "headers": headers});
            match upstream {
                // Only gateway answers stream, and they never become JSON.
                Answer::Streaming(_) => up["streamed"] = json!(true),
                Answer::Whole(r) => match std::str::from_utf8(&r.body) {
                    Ok(text) => up["body"] = json!(text),
                    Err(_) => {
                        use base64::Engine;
                        up["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&r.body));
                    }
                },
            }
            (
                200,
                json!({"request_id": result.request_id, "audit_seq": result.audit_seq, "decision": "allow",
                           "reasons": result.reasons, "cost_micros": cost_micros, "upstream": up}),
            )
        }
        Outcome::Pending { approval_id, expires_at } => (
            202,
            json!({"request_id": result.request_id, "audit_seq": result.audit_seq, "decision": "pending_approval",
                       "stage": Stage::Approval, "reasons": result.reasons, "approval_id": approval_id,
                       "expires_at": expires_at, "poll_url": format!("/api/proxy/approvals/{approval_id}")}),
        ),
        Outcome::Denied { stage, reason, extra } => {
            let mut body = json!({"request_id": result.request_id, "audit_seq": result.audit_seq, "decision": "deny",
                                      "stage": stage, "reason": reason, "reasons": result.reasons});
            if let Some(map) = extra.as_object() {
                for (k, v) in map {
                    body[k] = v.clone();
                }
            }
            (403, body)
        }
        Outcome::Failed { stage, reason, failure } => {
            let mut body = json!({"request_id": result.request_id, "audit_seq": result.audit_seq,
                                  "decision": "error", "stage": stage, "reason": reason});
            if let Failure::Interrupted { intent_audit_seq, outcome_audit_seq } = failure {
                body["intent_audit_seq"] = json!(intent_audit_seq);
                body["outcome_audit_seq"] = json!(outcome_audit_seq);
            }
            (failure_status(*failure), body)
        }
    }
}

/// 503 when AEGIS could not take the call, 504 when the upstream timed out, 502
/// otherwise (an upstream that failed, a call cut short by its process stopping).
fn failure_status(failure: Failure) -> u16 {
    match failure {
        Failure::Unavailable => 503,
        Failure::Timeout => 504,
        Failure::BadUpstream | Failure::Interrupted { .. } => 502,
    }
}
