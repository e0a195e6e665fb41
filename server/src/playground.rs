//! The policy playground's MCP tool call (issue #21): the action a call through `/mcp`
//! would be, so the dry run ([`crate::proxy::Pipeline::dry_run`]) evaluates the input
//! document it gets (`input.mcp = {server, method, tool, arguments}`). Nothing is
//! performed, listed, audited, reserved or spent.

use app::error::AppError;
use app::model::{PolicyTrial, PolicyVerdict};
use entity::agents;
use serde_json::json;

use crate::call::mcp::McpCall;
use crate::call::request::Origin;
use crate::connections::KIND_MCP;
use crate::proxy::Pipeline;
use crate::proxy::policy::trial_request;

/// `trial.mcp` must be set. With an MCP connection named `mcp.server` the action is
/// the request AEGIS would send it (as [`crate::mcp::request_for`] builds it);
/// otherwise the trial's `method` and `url` stand for the connection.
pub async fn dry_run_mcp(
    pipeline: &Pipeline,
    agent: &agents::Model,
    trial: PolicyTrial,
    max_body_bytes: usize,
) -> Result<PolicyVerdict, AppError> {
    let mcp = trial.mcp.clone().ok_or_else(|| AppError::validation("mcp is required"))?;
    let (server, tool) = (mcp.server.trim(), mcp.tool.trim());
    if server.is_empty() || tool.is_empty() {
        return Err(AppError::validation("mcp.server and mcp.tool are required"));
    }
    let arguments = mcp.arguments.unwrap_or_else(|| json!({}));
    if !arguments.is_object() {
        return Err(AppError::validation("mcp.arguments must be a JSON object"));
    }
    let call = McpCall::call_tool(server, tool, arguments, None);
    let request = match pipeline.store.connection(agent.sponsor_id, server).await? {
        Some((conn, secret)) if conn.kind == KIND_MCP => crate::mcp::request_for(&conn, secret, call),
        // No MCP connection of that name: the trial's sample action carries the call.
        _ => {
            let mut request = trial_request(&trial, max_body_bytes)?;
            request.label = Some(format!("mcp.{server}.{tool}"));
            request.origin = Origin::Mcp(Box::new(call));
            request
        }
    };
    pipeline.dry_run(agent, &trial, request).await
}
