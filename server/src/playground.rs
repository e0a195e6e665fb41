//! The policy playground's MCP dry run (issue #21): what the policy stage would
//! decide for an agent's MCP tool call, from the input document a call through `/mcp`
//! gets (`input.mcp = {server, method, tool, arguments}`). Like the HTTP dry run
//! ([`crate::proxy::Pipeline::dry_run_policy`]) nothing is performed, listed,
//! audited, reserved or spent.

use app::error::AppError;
use app::model::{PolicyTrial, PolicyVerdict};
use entity::agents;
use serde_json::json;

use crate::call::mcp::McpCall;
use crate::call::request::{ExecuteRequest, Origin, ProxyRequest};
use crate::connections::KIND_MCP;
use crate::proxy::Pipeline;

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
    let source = match (&trial.source, trial.policy_id) {
        (Some(source), _) => {
            crate::policies::check_source_size(source)?;
            source.clone()
        }
        (None, Some(id)) => pipeline.policies.get(agent.sponsor_id, id).await?.source,
        (None, None) => pipeline.policies.source_for(agent.policy_id).await?.source,
    };
    let call = McpCall::call_tool(server, tool, arguments, None);
    let request = match pipeline.store.connection(agent.sponsor_id, server).await? {
        Some((conn, secret)) if conn.kind == KIND_MCP => crate::mcp::request_for(&conn, secret, call),
        _ => sample_request(trial, call, max_body_bytes)?,
    };
    let url = url::Url::parse(&request.url)
        .map_err(|e| AppError::new(422, "invalid_request", format!("url is not a valid URL: {e}")))?;
    let wallet = pipeline.wallets.get(agent.id).await?;
    let estimate = request.declared_cost_micros.max(request.minimum_cost_micros);
    let input =
        crate::proxy::policy::input(agent, &request, &url, estimate, wallet.as_ref(), None, crate::db::now());
    // Compiled afresh on the engine's bounded pool, as the HTTP dry run is.
    let evaluation = crate::policies::engine::dry_run(source, input.clone()).await?;
    Ok(PolicyVerdict {
        decision: evaluation.decision.as_str().to_owned(),
        reasons: evaluation.reasons,
        error: evaluation.error,
        policy_sha256: evaluation.policy_sha256,
        input: serde_json::to_string_pretty(&input).unwrap_or_default(),
    })
}

/// No MCP connection of that name: the trial's sample action carries the call.
fn sample_request(
    trial: PolicyTrial,
    call: McpCall,
    max_body_bytes: usize,
) -> Result<ProxyRequest, AppError> {
    let mut request = ExecuteRequest {
        method: trial.method,
        url: trial.url,
        headers: trial.headers,
        body: trial.body,
        body_base64: None,
        secret: None,
        cost_micros: trial.cost_micros,
        idempotency_key: None,
        action: None,
        follow_redirects: false,
    }
    .into_proxy_request(max_body_bytes)?;
    request.label = Some(format!("mcp.{}.{}", call.server, call.tool.as_deref().unwrap_or_default()));
    request.origin = Origin::Mcp(Box::new(call));
    Ok(request)
}
