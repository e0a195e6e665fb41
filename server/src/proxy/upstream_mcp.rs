//! Stage `upstream`'s strategy for an MCP server that speaks only the session
//! revision (2025-11-25) of Streamable HTTP (issue #21). AEGIS speaks the stateless
//! revision (2026-07-28) first; a server that refuses it when its tools are listed
//! (`mcp/catalog.rs`) is spoken to this way from then on: each governed request is
//! one short session of its own — `initialize`, `notifications/initialized`, the
//! request under the `Mcp-Session-Id` the server handed out, then `DELETE` of the
//! session. No upstream session outlives the call, so no state of one agent's call
//! can leak into another's, any replica can perform any call, and an approved call
//! replays exactly. Every exchange goes through the same client (pinned addresses,
//! egress rules, timeouts, size cap) with the connection's secret injected; the
//! answer handed back — the request's, or a failed handshake's — is scrubbed by the
//! stage like any other.

use bytes::Bytes;
use futures::stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::upstream::Upstream;
use crate::call::mcp::{McpCall, Reply, agreed_version, initialize_body, initialized_body, read_reply};
use crate::call::upstream::{StreamingResponse, UpstreamError, UpstreamResponse};
use crate::secrets::UsableSecret;

const SESSION: HeaderName = HeaderName::from_static("mcp-session-id");
const VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// Performs `call` in a session of its own; the answer is the request's.
pub async fn session_exchange(
    upstream: &Upstream,
    url: url::Url,
    headers: HeaderMap,
    call: &McpCall,
    secret: Option<&UsableSecret>,
) -> Result<StreamingResponse, UpstreamError> {
    let post = |headers: HeaderMap, body: Bytes| {
        let url = url.clone();
        async move {
            upstream.call_streaming(Method::POST, url, headers, body, false, secret).await?.read_whole().await
        }
    };
    let init = post(headers.clone(), initialize_body()).await?;
    let content_type = init.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let version = match read_reply(init.status, content_type, &init.body) {
        Reply::Result(result) => agreed_version(&result),
        _ => None,
    };
    // A handshake that failed, or agreed on a version AEGIS does not speak, is the
    // answer: the request is not sent.
    let Some(version) = version else { return Ok(whole(init)) };
    let mut session_headers = headers;
    session_headers.insert(VERSION, HeaderValue::from_static(version));
    let session = init.headers.get(SESSION).cloned();
    if let Some(id) = &session {
        session_headers.insert(SESSION, id.clone());
    }
    let initialized = post(session_headers.clone(), initialized_body()).await?;
    if !(200..300).contains(&initialized.status) {
        return Ok(whole(initialized));
    }
    let answer = post(session_headers.clone(), call.upstream_body()).await;
    if session.is_some() {
        // Best effort: a server that keeps the session anyway expires it itself.
        let _ =
            upstream.call_streaming(Method::DELETE, url, session_headers, Bytes::new(), false, secret).await;
    }
    answer.map(whole)
}

fn whole(r: UpstreamResponse) -> StreamingResponse {
    let UpstreamResponse { status, headers, body } = r;
    StreamingResponse { status, headers, body: Box::pin(stream::once(async move { Ok(body) })) }
}
