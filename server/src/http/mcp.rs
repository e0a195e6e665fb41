//! `/mcp`: AEGIS as one MCP server (Streamable HTTP) for agents (issue #21).
//!
//! The transport — JSON-RPC framing, both protocol revisions chosen per request
//! (2026-07-28 stateless with `server/discover`; 2025-11-25 with `initialize` and
//! `Mcp-Session-Id`), the spec's errors for bad input — is the official Rust SDK's
//! (`rmcp`'s `StreamableHttpService`). In front of it, every request is
//! authenticated with the agent's AEGIS key (401 before the SDK reads a byte), and a
//! session id is accepted only from the agent that opened it (anyone else: 404, as
//! for a session that does not exist). Behind it, [`AegisMcp`] hands `tools/list`
//! and `tools/call` to the domain ([`crate::mcp::McpGateway`]) and renders what they
//! come to as MCP results.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, CustomRequest, CustomResult,
    ErrorCode, Implementation, InitializeResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProgressToken, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::Agent;
use super::{AppState, RequestId};
use crate::agents::AgentPrincipal;
use crate::backend::Services;
use crate::mcp::ToolOutcome;

const SESSION_HEADER: &str = "mcp-session-id";
/// Where AEGIS puts its own decision in an error result's `_meta`.
pub const DECISION_META: &str = "dev.aegis/decision";

/// The SDK's service for `/mcp`, configured for AEGIS.
pub fn service(services: Arc<Services>) -> StreamableHttpService<AegisMcp, LocalSessionManager> {
    let config = &services.config;
    let mut sdk = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_sse_keep_alive(None)
        .enforce_origin_validation();
    // Every request carries an agent key, so a DNS-rebinding page gains nothing from a
    // Host check; where AEGIS knows its public URL, browsers of that origin may call.
    sdk = sdk.disable_allowed_hosts();
    if let Some(public) = config.public_url.as_deref() {
        sdk = sdk.with_allowed_origins([public.trim_end_matches('/').to_owned()]);
    }
    sdk.session_store = services.mcp.sessions.store();
    let handler = AegisMcp { services };
    StreamableHttpService::new(move || Ok(handler.clone()), Arc::new(LocalSessionManager::default()), sdk)
}

/// In front of the SDK: the agent's key on every request, sessions bound to their agent,
/// and a body that is not one JSON-RPC message refused with the JSON-RPC error JSON-RPC
/// names (the SDK would answer a bare 415).
pub async fn guard(
    State(s): State<AppState>,
    agent: Result<Agent, ApiError>,
    req: Request,
    next: Next,
) -> Response {
    let Agent(principal) = match agent {
        Ok(a) => a,
        Err(e) => {
            let mut response = e.into_response();
            if response.status() == http::StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            return response;
        }
    };
    let presented = req.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(session) = &presented
        && s.services.mcp.sessions.owner(session).await != Some(principal.agent.id)
    {
        // Not this agent's session: exactly what an unknown session gets.
        return session_not_found();
    }
    let mut req = match one_message(req, s.services.config.max_body_bytes).await {
        Ok(req) => req,
        Err(refused) => return refused,
    };
    let agent_id = principal.agent.id;
    req.extensions_mut().insert(principal);
    let response = next.run(req).await;
    if presented.is_none()
        && let Some(opened) = response.headers().get(SESSION_HEADER).and_then(|v| v.to_str().ok())
    {
        s.services.mcp.sessions.bind(opened, agent_id).await;
    }
    uniform(response).await
}

/// A JSON POST's body read (up to `limit`) and checked to be one JSON-RPC 2.0 message:
/// not JSON → `-32700`; a batch or anything else → `-32600` (HTTP 400 both, as the
/// transport says); past the limit → 413.
async fn one_message(req: Request, limit: usize) -> Result<Request, Response> {
    let json = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if req.method() != http::Method::POST || !json {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let message = format!("the message is larger than {limit} bytes");
        return Err(rpc_error(http::StatusCode::PAYLOAD_TOO_LARGE, Value::Null, -32600, &message));
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Err(_) => Err(rpc_error(
            http::StatusCode::BAD_REQUEST,
            Value::Null,
            -32700,
            "Parse error: the body is not JSON",
        )),
        Ok(Value::Array(_)) => Err(rpc_error(
            http::StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            "Invalid Request: batches are not supported; send one JSON-RPC message per request",
        )),
        Ok(Value::Object(m)) if m.get("jsonrpc").and_then(Value::as_str) == Some("2.0") => {
            Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
        }
        Ok(v) => {
            let id = v.get("id").cloned().unwrap_or(Value::Null);
            Err(rpc_error(
                http::StatusCode::BAD_REQUEST,
                id,
                -32600,
                "Invalid Request: not a JSON-RPC 2.0 message",
            ))
        }
    }
}

/// The SDK's plain-text refusals as JSON-RPC errors: a message it could not read (415
/// "fail to deserialize") is `-32600`; a session it does not know (an ended one) is
/// the same 404 `-32001` as any unknown or foreign session.
async fn uniform(response: Response) -> Response {
    let status = response.status();
    let plain = !response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json") || c.contains("event-stream"));
    if !plain || !matches!(status, http::StatusCode::UNSUPPORTED_MEDIA_TYPE | http::StatusCode::NOT_FOUND) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    if status == http::StatusCode::NOT_FOUND {
        return session_not_found();
    }
    if text.starts_with(b"fail to deserialize") {
        return rpc_error(
            http::StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            "Invalid Request: not an MCP message",
        );
    }
    Response::from_parts(parts, axum::body::Body::from(text))
}

fn rpc_error(status: http::StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn session_not_found() -> Response {
    rpc_error(http::StatusCode::NOT_FOUND, Value::Null, -32001, "Session not found")
}

/// AEGIS's MCP server: the union of the agent's MCP connections' tools.
#[derive(Clone)]
pub struct AegisMcp {
    services: Arc<Services>,
}

/// The agent [`guard`] authenticated (the SDK hands handlers the HTTP request's parts).
fn caller(ctx: &RequestContext<RoleServer>) -> Result<(AgentPrincipal, String), McpError> {
    let parts = ctx
        .extensions
        .get::<http::request::Parts>()
        .ok_or_else(|| McpError::internal_error("no HTTP request", None))?;
    let agent = parts
        .extensions
        .get::<AgentPrincipal>()
        .cloned()
        .ok_or_else(|| McpError::internal_error("unauthenticated", None))?;
    Ok((agent, RequestId::of(&parts.extensions)))
}

fn unavailable(e: app::error::AppError) -> McpError {
    tracing::error!(error = %e.message, "MCP request failed");
    McpError::internal_error("AEGIS could not serve this request; nothing was performed", None)
}

/// How often a client that asked for progress (a `progressToken`) hears that its call
/// is still being worked on — held for a sponsor's approval, or a slow server.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `work`, sending a progress notification every [`PROGRESS_EVERY`] until it ends.
async fn with_progress<F: std::future::Future>(
    work: F,
    peer: &Peer<RoleServer>,
    token: ProgressToken,
) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut beats = 0u32;
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                beats += 1;
                let note = ProgressNotificationParam::new(token.clone(), f64::from(beats))
                    .with_message("AEGIS is still working on this call (it may be waiting for a sponsor's approval)");
                // A client that went away is the call's business, not the progress's.
                let _ = peer.notify_progress(note).await;
            }
        }
    }
}

/// An error result the agent's model can read, AEGIS's decision in `_meta`.
pub fn refused(text: String, decision: Value) -> CallToolResult {
    let mut result = CallToolResult::error(vec![rmcp::model::ContentBlock::text(text)]);
    if let Ok(meta) = serde_json::from_value(json!({ DECISION_META: decision })) {
        result.meta = Some(meta);
    }
    result
}

/// Methods AEGIS serves: a request for one of them that the SDK could not read as it
/// (its params do not fit) is invalid params, not "method not found".
/// (`ping` is not here: the stateless revision has none, and it takes no params.)
const SERVED: &[&str] = &["tools/call", "tools/list", "initialize", "server/discover"];

impl ServerHandler for AegisMcp {
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        if SERVED.contains(&request.method.as_str()) {
            let message = format!("the params do not fit {}", request.method);
            return Err(McpError::invalid_params(message, None));
        }
        Err(McpError::new(ErrorCode::METHOD_NOT_FOUND, request.method, None))
    }

    fn get_info(&self) -> ServerConfig {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("aegis", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "AEGIS governs every tool call: each is checked by policy, budgeted and audited; \
                 a call may wait for a human's approval. Tools are named <server>__<tool>.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (agent, _) = caller(&ctx)?;
        let listed = self.services.mcp.list_tools(&agent).await.map_err(unavailable)?;
        let tools: Vec<Tool> = listed.into_iter().filter_map(|t| serde_json::from_value(t).ok()).collect();
        // Each agent's list is its own (its policy filters it): private, and fresh for as
        // long as AEGIS keeps a server's listing.
        Ok(ListToolsResult::with_all_items(tools)
            .with_ttl_ms(crate::mcp::catalog::TTL.as_millis() as u64)
            .with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let (agent, request_id) = caller(&ctx)?;
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let work = self.services.mcp.call_tool(&agent, request_id, &request.name, arguments);
        let outcome = match ctx.meta.get_progress_token() {
            Some(token) => with_progress(work, &ctx.peer, token).await,
            None => work.await,
        }
        .map_err(unavailable)?;
        let result = match outcome {
            ToolOutcome::Result(v) => serde_json::from_value::<CallToolResult>(v)
                .unwrap_or_else(|_| refused("the MCP server's result could not be read".into(), json!({}))),
            ToolOutcome::Refused { text, decision } => refused(text, decision),
            ToolOutcome::InvalidParams(message) => return Err(McpError::invalid_params(message, None)),
        };
        Ok(CallToolResponse::Complete(result))
    }
}
