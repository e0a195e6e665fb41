//! The MCP gateway (issue #21): an agent speaks MCP to AEGIS at `/mcp` as if AEGIS
//! were one MCP server; AEGIS speaks MCP to the sponsor's MCP connections with the
//! connection's secret. Every upstream request — the listing of a server's tools and
//! every `tools/call` — is one call through the whole pipeline (`proxy/`) under the
//! agent: breaker, policy (`input.mcp`), egress, secret injection, approval, budget,
//! audit. This module is the domain side: which tools an agent sees ([`catalog`]),
//! what a tool call came to ([`ToolOutcome`]), and the approval wait ([`approval`]).
//! The protocol itself (JSON-RPC framing, both Streamable HTTP revisions, sessions)
//! is the official Rust SDK's (`rmcp`), mounted by `http/mcp.rs`.

pub mod approval;
pub mod catalog;
pub mod sessions;

use std::time::Duration;

use app::error::AppError;
use bytes::Bytes;
use entity::connections;
use serde_json::{Value, json};

use crate::agents::AgentPrincipal;
use crate::approvals::ApprovalService;
use crate::call::Stage;
use crate::call::mcp::{McpCall, Reply, read_reply, split_exposed};
use crate::call::outcome::{Answer, Outcome, ProxyResult};
use crate::call::request::{Origin, ProxyRequest};
use crate::connections::KIND_MCP;
use crate::proxy::Pipeline;

#[derive(Clone)]
pub struct McpGateway {
    pipeline: Pipeline,
    approvals: ApprovalService,
    catalog: catalog::Catalog,
    pub sessions: sessions::SessionBindings,
    /// How long a tool call that needs approval is held for the sponsor's decision.
    approval_wait: Duration,
    max_waits: usize,
}

/// What a tool call came to, for the protocol layer to answer.
#[derive(Debug)]
pub enum ToolOutcome {
    /// The upstream's own `CallToolResult` (it may itself say `isError`).
    Result(Value),
    /// AEGIS refused or could not perform the call: an error result the agent's model
    /// can read, with the structured decision beside it.
    Refused { text: String, decision: Value },
    /// Not a call this agent can make: an unknown tool (not on the allow-list, not
    /// listed by the server) or arguments that do not match its `inputSchema` (that
    /// refusal is audited at stage `arguments`). A JSON-RPC invalid-params error.
    InvalidParams(String),
}

impl McpGateway {
    pub fn new(
        pipeline: Pipeline,
        approvals: ApprovalService,
        redis_url: Option<&str>,
        approval_wait: Duration,
        max_waits: usize,
    ) -> Self {
        Self {
            catalog: catalog::Catalog::new(pipeline.db.clone()),
            pipeline,
            approvals,
            sessions: sessions::SessionBindings::from_config(redis_url),
            approval_wait,
            max_waits,
        }
    }

    /// The tools `agent` may see: every MCP connection's (its allow-list applied),
    /// named `<connection>__<tool>`, without those its policy denies outright.
    pub async fn list_tools(&self, agent: &AgentPrincipal) -> Result<Vec<Value>, AppError> {
        let mut out = Vec::new();
        for conn in self.catalog.connections(agent.agent.sponsor_id).await? {
            let tools = match self.catalog.tools(&self.pipeline, agent, &conn).await {
                Ok(t) => t,
                Err(why) => {
                    tracing::info!(connection = %conn.0.name, reason = %why, "MCP server's tools not listed");
                    continue;
                }
            };
            for tool in tools.tools.iter() {
                let Some(name) = tool.get("name").and_then(Value::as_str) else { continue };
                if !catalog::allowed(&conn.0, name) {
                    continue;
                }
                let probe = McpCall::call_tool(&conn.0.name, name, json!({}), None);
                let request = request_for(&conn.0, conn.1.clone(), probe);
                if !self.pipeline.would_allow_or_ask(agent, &request).await? {
                    continue;
                }
                let mut exposed = tool.clone();
                exposed["name"] = json!(McpCall::exposed_name(&conn.0.name, name));
                out.push(exposed);
            }
        }
        Ok(out)
    }

    /// Calls `<connection>__<tool>` with `arguments` through the pipeline.
    pub async fn call_tool(
        &self,
        agent: &AgentPrincipal,
        request_id: String,
        exposed: &str,
        arguments: Value,
    ) -> Result<ToolOutcome, AppError> {
        let unknown = || Ok(ToolOutcome::InvalidParams(format!("unknown tool {exposed:?}")));
        let Some((server, tool)) = split_exposed(exposed) else { return unknown() };
        let Some(conn) = self.pipeline.store.connection(agent.agent.sponsor_id, server).await? else {
            return unknown();
        };
        if conn.0.kind != KIND_MCP || !catalog::allowed(&conn.0, tool) {
            return unknown();
        }
        // Only a tool the server lists can be called: its inputSchema is what the
        // arguments are checked against.
        let tools = match self.catalog.tools(&self.pipeline, agent, &conn).await {
            Ok(t) => t,
            Err(why) => {
                return Ok(refused(format!("the MCP server's tools could not be listed: {why}"), json!({})));
            }
        };
        let Some(listed) = tools.tools.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(tool))
        else {
            return unknown();
        };
        let mut call = McpCall::call_tool(server, tool, arguments, listed.get("inputSchema").cloned());
        call.record_arguments = conn.0.record_arguments;
        call.revision = tools.revision;
        let request = request_for(&conn.0, conn.1.clone(), call);
        // The same call (same arguments) asked before: its approval decides it, once.
        if let Some(done) = self.earlier_approval(agent, &request).await? {
            return Ok(done);
        }
        let result = self.pipeline.run(request_id, agent, request).await?;
        Ok(match result.outcome {
            Outcome::Pending { approval_id, .. } => self.await_approval(agent, approval_id).await?,
            _ => tool_outcome(result),
        })
    }
}

/// The pipeline request for an MCP call under `conn`: one JSON-RPC `POST` to its URL,
/// its secret injected, its per-call price held.
pub fn request_for(conn: &connections::Model, secret: Option<String>, call: McpCall) -> ProxyRequest {
    let label = match &call.tool {
        Some(tool) => format!("mcp.{}.{tool}", call.server),
        None => format!("mcp.{}.{}", call.server, call.method),
    };
    let listing = call.method != "tools/call";
    ProxyRequest {
        method: http::Method::POST,
        url: conn.base_url.clone(),
        headers: call.upstream_headers(),
        body: call.upstream_body(),
        secret,
        declared_cost_micros: 0,
        // A tool call costs the connection's per-call price; listing tools costs nothing.
        minimum_cost_micros: if listing { 0 } else { conn.cost_micros },
        idempotency_key: None,
        label: Some(label),
        follow_redirects: false,
        stream_response: false,
        origin: Origin::Mcp(Box::new(call)),
    }
}

fn refused(text: String, decision: Value) -> ToolOutcome {
    ToolOutcome::Refused { text, decision }
}

/// What a pipeline result is for the agent's tool call.
pub fn tool_outcome(result: ProxyResult) -> ToolOutcome {
    let decision = |d: &str, stage: Option<Stage>, reason: &str| {
        json!({"decision": d, "stage": stage, "reason": reason, "request_id": result.request_id,
               "audit_seq": result.audit_seq, "reasons": result.reasons})
    };
    match &result.outcome {
        Outcome::Performed { upstream: Answer::Whole(r), .. } => {
            let content_type = r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            from_reply(read_reply(r.status, content_type, &r.body), || decision("allow", None, ""))
        }
        Outcome::Performed { .. } => refused(
            "the MCP server's answer could not be read".into(),
            decision("error", Some(Stage::Upstream), "streamed"),
        ),
        Outcome::Denied { stage: Stage::Arguments, reason, .. } => ToolOutcome::InvalidParams(reason.clone()),
        Outcome::Denied { stage, reason, .. } => refused(
            format!("AEGIS denied this tool call at stage {}: {reason}", stage.as_str()),
            decision("deny", Some(*stage), reason),
        ),
        Outcome::Failed { stage, reason, .. } => refused(
            format!("AEGIS could not perform this tool call ({}): {reason}", stage.as_str()),
            decision("error", Some(*stage), reason),
        ),
        Outcome::Pending { approval_id, .. } => refused(
            format!("this tool call waits for the sponsor's approval {approval_id}"),
            json!({"decision": "pending_approval", "approval_id": approval_id, "request_id": result.request_id}),
        ),
        Outcome::Replayed { .. } => refused("replayed".into(), decision("error", None, "replayed")),
    }
}

/// An upstream reply as the agent's result.
fn from_reply(reply: Reply, allowed: impl Fn() -> Value) -> ToolOutcome {
    match reply {
        Reply::Result(result) if result.get("content").is_some_and(Value::is_array) => {
            ToolOutcome::Result(result)
        }
        Reply::Result(_) => refused("the MCP server's result is not a tool result".into(), allowed()),
        Reply::Error { code, message } => {
            refused(format!("the MCP server answered error {code}: {message}"), allowed())
        }
        Reply::Malformed(why) => refused(why, allowed()),
    }
}

/// The upstream answer stored with an approval (the execute door's JSON: `upstream.body`
/// as text) read back as the tool's result.
pub fn from_stored_answer(body: &Value) -> ToolOutcome {
    let upstream = &body["upstream"];
    let status = upstream["status"].as_u64().unwrap_or(0) as u16;
    let content_type = upstream["headers"]["content-type"].as_str();
    if body["decision"] != "allow" {
        let stage = body["stage"].as_str().unwrap_or("upstream");
        let reason = body["reason"].as_str().unwrap_or("not performed");
        return refused(
            format!("AEGIS did not perform the approved tool call ({stage}): {reason}"),
            body.clone(),
        );
    }
    let Some(text) = upstream["body"].as_str() else {
        return refused("the approved call's answer was not kept whole".into(), json!({"decision": "allow"}));
    };
    from_reply(
        read_reply(status, content_type, &Bytes::copy_from_slice(text.as_bytes())),
        || json!({"decision": "allow", "request_id": body["request_id"], "audit_seq": body["audit_seq"]}),
    )
}
