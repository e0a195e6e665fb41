//! An MCP request as the pipeline carries it (issue #21): the agent's `tools/call`
//! (or AEGIS's own `tools/list` of an upstream) under one of its sponsor's MCP
//! connections. The pipeline performs it as a plain `POST` of one JSON-RPC request
//! to the connection's URL, in the stateless revision (2026-07-28): every stage
//! (breaker, policy, egress, secret, approval, budget, audit) applies to it as to any
//! HTTP call. This module builds that request, byte for byte the same for the same
//! call (so an approval is bound to exactly it), checks the arguments against the
//! tool's `inputSchema`, and reads the upstream's answer (JSON or one SSE stream).

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::digest::{canonical_json, sha256_hex};

/// The revision AEGIS speaks to upstream MCP servers first.
pub const UPSTREAM_PROTOCOL_VERSION: &str = "2026-07-28";
/// The revision AEGIS falls back to for servers that only speak the session revision.
pub const SESSION_PROTOCOL_VERSION: &str = "2025-11-25";
/// Session-revision versions AEGIS accepts from such a server's `initialize` answer.
pub const SESSION_PROTOCOL_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];
/// A connection's `kind` for an MCP server (the other kind is `http`).
pub const KIND_MCP: &str = "mcp";
/// `<connection>__<tool>`: how the agent sees an upstream tool.
pub const SEPARATOR: &str = "__";
/// The JSON-RPC id of every upstream request (one request per HTTP exchange).
const UPSTREAM_ID: &str = "aegis";

/// Which revision of the protocol an upstream MCP server is spoken to in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revision {
    /// 2026-07-28: one self-contained request per exchange.
    #[default]
    Stateless,
    /// 2025-11-25: `initialize`, the request under its `Mcp-Session-Id`, then the
    /// session is deleted (`proxy/stages/upstream_mcp.rs`).
    Sessions,
}

/// One MCP request under an MCP connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpCall {
    /// The connection's name (`input.mcp.server`).
    pub server: String,
    /// `tools/call` or `tools/list`.
    pub method: String,
    /// The upstream tool's own name (without the connection prefix).
    pub tool: Option<String>,
    /// The tool's arguments (an object; `{}` when none were given).
    pub arguments: Value,
    /// The tool's `inputSchema`, as the upstream listed it.
    #[serde(default)]
    pub input_schema: Option<Value>,
    /// The connection keeps the arguments themselves in the audit log (off by default:
    /// only their hash is kept).
    #[serde(default)]
    pub record_arguments: bool,
    /// How the upstream server is spoken to (found when its tools are listed).
    #[serde(default)]
    pub revision: Revision,
}

impl McpCall {
    pub fn call_tool(server: &str, tool: &str, arguments: Value, input_schema: Option<Value>) -> Self {
        Self {
            server: server.to_owned(),
            method: "tools/call".into(),
            tool: Some(tool.to_owned()),
            arguments,
            input_schema,
            record_arguments: false,
            revision: Revision::Stateless,
        }
    }

    pub fn list_tools(server: &str) -> Self {
        Self {
            server: server.to_owned(),
            method: "tools/list".into(),
            tool: None,
            arguments: json!({}),
            input_schema: None,
            record_arguments: false,
            revision: Revision::Stateless,
        }
    }

    /// The name the agent calls the tool by: `<connection>__<tool>`.
    pub fn exposed_name(server: &str, tool: &str) -> String {
        format!("{server}{SEPARATOR}{tool}")
    }

    pub fn arguments_sha256(&self) -> String {
        sha256_hex(canonical_json(&self.arguments).as_bytes())
    }

    /// `input.mcp` for the policy: what is called, with its arguments.
    pub fn policy_input(&self) -> Value {
        json!({"server": self.server, "method": self.method, "tool": self.tool, "arguments": self.arguments})
    }

    /// `detail.mcp` in every audit record of the call: the arguments' hash, and the
    /// arguments themselves only where the connection says so.
    pub fn audit_detail(&self) -> Value {
        let mut detail = json!({"server": self.server, "method": self.method, "tool": self.tool,
                                "arguments_sha256": self.arguments_sha256(), "revision": self.revision});
        if self.record_arguments {
            detail["arguments"] = self.arguments.clone();
        }
        detail
    }

    /// The arguments against the tool's `inputSchema`: `Err(why)` when they do not
    /// match, or when the schema itself is not one AEGIS can check (fail closed).
    pub fn check_arguments(&self) -> Result<(), String> {
        if self.method != "tools/call" {
            return Ok(());
        }
        if !self.arguments.is_object() {
            return Err("arguments must be an object".into());
        }
        let Some(schema) = &self.input_schema else { return Ok(()) };
        let validator = jsonschema::options()
            .build(schema)
            .map_err(|e| format!("the tool's inputSchema cannot be checked: {e}"))?;
        let errors: Vec<String> = validator
            .iter_errors(&self.arguments)
            .take(3)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() { e.to_string() } else { format!("{at}: {e}") }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!("arguments do not match the tool's inputSchema: {}", errors.join("; ")))
        }
    }

    /// The JSON-RPC request sent upstream (2026-07-28: the protocol version, AEGIS's
    /// client info and capabilities in `_meta` of every request; 2025-11-25: the plain
    /// request, the session carrying the rest).
    pub fn upstream_body(&self) -> Bytes {
        let mut params = match &self.tool {
            Some(tool) if self.method == "tools/call" => json!({"name": tool, "arguments": self.arguments}),
            _ => json!({}),
        };
        if self.revision == Revision::Stateless {
            params["_meta"] = json!({
                "io.modelcontextprotocol/protocolVersion": UPSTREAM_PROTOCOL_VERSION,
                "io.modelcontextprotocol/clientInfo": client_info(),
                "io.modelcontextprotocol/clientCapabilities": {},
            });
        }
        let request = json!({"jsonrpc": "2.0", "id": UPSTREAM_ID, "method": self.method, "params": params});
        Bytes::from(canonical_json(&request))
    }

    /// The upstream request's headers (the Streamable HTTP transport's; in the session
    /// revision the version and session headers are added per exchange).
    pub fn upstream_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![
            (http::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (http::header::ACCEPT, HeaderValue::from_static("application/json, text/event-stream")),
        ];
        if self.revision == Revision::Sessions {
            return headers;
        }
        headers.push((
            HeaderName::from_static("mcp-protocol-version"),
            HeaderValue::from_static(UPSTREAM_PROTOCOL_VERSION),
        ));
        if let Ok(v) = HeaderValue::from_str(&self.method) {
            headers.push((HeaderName::from_static("mcp-method"), v));
        }
        if let Some(Ok(v)) = self.tool.as_deref().map(HeaderValue::from_str) {
            headers.push((HeaderName::from_static("mcp-name"), v));
        }
        headers
    }
}

fn client_info() -> Value {
    json!({"name": "aegis", "version": env!("CARGO_PKG_VERSION")})
}

/// The session revision's `initialize` request.
pub fn initialize_body() -> Bytes {
    let request = json!({"jsonrpc": "2.0", "id": UPSTREAM_ID, "method": "initialize",
        "params": {"protocolVersion": SESSION_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client_info()}});
    Bytes::from(canonical_json(&request))
}

/// The session revision's `notifications/initialized`.
pub fn initialized_body() -> Bytes {
    Bytes::from_static(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
}

/// The protocol version a session-revision server agreed to in its `initialize`
/// answer, if it is one AEGIS speaks.
pub fn agreed_version(initialize_result: &Value) -> Option<&'static str> {
    let offered = initialize_result.get("protocolVersion")?.as_str()?;
    SESSION_PROTOCOL_VERSIONS.iter().copied().find(|v| *v == offered)
}

/// Splits `<connection>__<tool>` at the first separator (connection names have no `__`
/// of their own... but may have `_`: the first `__` decides).
pub fn split_exposed(name: &str) -> Option<(&str, &str)> {
    let (server, tool) = name.split_once(SEPARATOR)?;
    (!server.is_empty() && !tool.is_empty()).then_some((server, tool))
}

/// The upstream's answer to [`McpCall::upstream_body`], read: the JSON-RPC `result`,
/// or why there is none.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Result(Value),
    /// A JSON-RPC error object from the upstream (`code`, `message`).
    Error {
        code: i64,
        message: String,
    },
    /// Not an MCP answer at all (HTTP error, not JSON-RPC, no response to our id).
    Malformed(String),
}

/// Reads an upstream answer: `application/json` with one JSON-RPC response, or a
/// `text/event-stream` whose `data:` events carry it (notifications before it are
/// skipped).
pub fn read_reply(status: u16, content_type: Option<&str>, body: &[u8]) -> Reply {
    if !(200..300).contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        // An MCP server may answer a JSON-RPC error with a 4xx status.
        if let Some(reply) = serde_json::from_slice::<Value>(body).ok().and_then(|v| response_of(&v)) {
            return reply;
        }
        return Reply::Malformed(format!("the MCP server answered HTTP {status}: {text}"));
    }
    let is_sse =
        content_type.is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
    if is_sse {
        let text = String::from_utf8_lossy(body);
        for event in text.split("\n\n").flat_map(|e| e.split("\r\n\r\n")) {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Some(reply) =
                serde_json::from_str::<Value>(&data.join("\n")).ok().and_then(|v| response_of(&v))
            {
                return reply;
            }
        }
        return Reply::Malformed("the MCP server's event stream held no response".into());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => response_of(&v)
            .unwrap_or_else(|| Reply::Malformed("the MCP server's answer is not a JSON-RPC response".into())),
        Err(_) => Reply::Malformed("the MCP server's answer is not JSON".into()),
    }
}

/// The JSON-RPC response to AEGIS's request in `v`, if `v` is one.
fn response_of(v: &Value) -> Option<Reply> {
    if v.get("jsonrpc")? != "2.0" || v.get("id")? != UPSTREAM_ID {
        return None;
    }
    if let Some(result) = v.get("result") {
        return Some(Reply::Result(result.clone()));
    }
    let error = v.get("error")?;
    Some(Reply::Error {
        code: error.get("code").and_then(Value::as_i64).unwrap_or(-32603),
        message: error.get("message").and_then(Value::as_str).unwrap_or("error").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add() -> McpCall {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                            "required": ["a", "b"]});
        McpCall::call_tool("calc", "add", json!({"a": 2, "b": 3}), Some(schema))
    }

    #[test]
    fn the_same_call_is_the_same_request_byte_for_byte() {
        let a = add();
        let mut b = add();
        b.arguments = json!({"b": 3, "a": 2});
        assert_eq!(a.upstream_body(), b.upstream_body(), "key order does not matter");
        b.arguments = json!({"a": 2, "b": 4});
        assert_ne!(a.upstream_body(), b.upstream_body());
        assert_ne!(a.arguments_sha256(), b.arguments_sha256());
        let body: Value = serde_json::from_slice(&a.upstream_body()).unwrap();
        assert_eq!(body["params"]["name"], "add");
        assert_eq!(
            body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            UPSTREAM_PROTOCOL_VERSION
        );
    }

    #[test]
    fn the_session_revision_sends_the_plain_request() {
        let mut call = add();
        call.revision = Revision::Sessions;
        let body: Value = serde_json::from_slice(&call.upstream_body()).unwrap();
        assert_eq!(body["params"], json!({"name": "add", "arguments": {"a": 2, "b": 3}}));
        assert_ne!(call.upstream_body(), add().upstream_body(), "the revision is part of the request");
        let names: Vec<_> = call.upstream_headers().into_iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["content-type", "accept"]);
        let init: Value = serde_json::from_slice(&initialize_body()).unwrap();
        assert_eq!(init["params"]["protocolVersion"], SESSION_PROTOCOL_VERSION);
        assert_eq!(agreed_version(&json!({"protocolVersion": "2025-06-18"})), Some("2025-06-18"));
        assert_eq!(agreed_version(&json!({"protocolVersion": "2099-01-01"})), None);
        assert_eq!(agreed_version(&json!({})), None);
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        assert_eq!(add().check_arguments(), Ok(()));
        let mut wrong = add();
        wrong.arguments = json!({"a": "two", "b": 3});
        let why = wrong.check_arguments().unwrap_err();
        assert!(why.contains("/a"), "{why}");
        wrong.arguments = json!({"a": 1});
        assert!(wrong.check_arguments().unwrap_err().contains("required"));
        wrong.arguments = json!([1, 2]);
        assert_eq!(wrong.check_arguments(), Err("arguments must be an object".into()));
        let mut broken = add();
        broken.input_schema = Some(json!({"type": 12}));
        assert!(broken.check_arguments().unwrap_err().contains("cannot be checked"), "fails closed");
    }

    #[test]
    fn names_split_at_the_first_separator() {
        assert_eq!(split_exposed("notes__read_note"), Some(("notes", "read_note")));
        assert_eq!(split_exposed("notes__read__all"), Some(("notes", "read__all")));
        assert_eq!(split_exposed("notes_read"), None);
        assert_eq!(split_exposed("__x"), None);
        assert_eq!(split_exposed("x__"), None);
    }

    #[test]
    fn replies_are_read_from_json_and_event_streams() {
        let json = br#"{"jsonrpc":"2.0","id":"aegis","result":{"content":[]}}"#;
        assert_eq!(read_reply(200, Some("application/json"), json), Reply::Result(json!({"content": []})));
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                    event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"aegis\",\"result\":{\"ok\":1}}\n\n";
        assert_eq!(read_reply(200, Some("text/event-stream"), sse), Reply::Result(json!({"ok": 1})));
        let err = br#"{"jsonrpc":"2.0","id":"aegis","error":{"code":-32602,"message":"bad"}}"#;
        assert_eq!(
            read_reply(400, Some("application/json"), err),
            Reply::Error { code: -32602, message: "bad".into() }
        );
        assert!(matches!(read_reply(200, None, b"<html>"), Reply::Malformed(_)));
        assert!(matches!(read_reply(502, None, b"gateway"), Reply::Malformed(m) if m.contains("502")));
        let other_id = br#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        assert!(matches!(read_reply(200, Some("application/json"), other_id), Reply::Malformed(_)));
    }
}
