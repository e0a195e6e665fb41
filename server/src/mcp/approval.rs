//! A tool call the policy wants approved: held while the sponsor decides (up to
//! `AEGIS_MCP_APPROVAL_WAIT_SECS`, on the approvals' own long-poll), then answered
//! with the real result (approved: performed once, by the approval), an error result
//! (rejected, expired), or — still pending — an error result naming the approval, so
//! that the same call retried after the decision gets that one result
//! ([`crate::approvals::ApprovalService::undelivered`]).

use app::error::AppError;
use app::model::ApprovalStatus;
use serde_json::json;
use uuid::Uuid;

use super::{McpGateway, ToolOutcome, from_stored_answer, refused};
use crate::agents::AgentPrincipal;
use crate::call::request::ProxyRequest;

impl McpGateway {
    /// The answer an earlier approval of exactly this call gives, if there is one.
    pub(super) async fn earlier_approval(
        &self,
        agent: &AgentPrincipal,
        request: &ProxyRequest,
    ) -> Result<Option<ToolOutcome>, AppError> {
        match self.approvals.undelivered(agent.agent.id, &request.request_hash()).await? {
            Some(id) => Ok(Some(self.await_approval(agent, id).await?)),
            None => Ok(None),
        }
    }

    /// Waits for approval `id`'s decision (and, approved, for the call's result).
    pub(super) async fn await_approval(
        &self,
        agent: &AgentPrincipal,
        id: Uuid,
    ) -> Result<ToolOutcome, AppError> {
        let view =
            match self.approvals.wait_for_agent(&agent.agent, id, self.approval_wait, self.max_waits).await {
                Ok(v) => v,
                Err(e) if e.status == 429 => {
                    return Ok(refused(
                        format!("{}; approval {id} is still pending", e.message),
                        json!({"decision": "pending_approval", "approval_id": id}),
                    ));
                }
                Err(e) => return Err(e),
            };
        let decision =
            json!({"decision": "pending_approval", "approval_id": id, "request_id": view.request_id});
        let outcome = match (view.status, &view.outcome) {
            (ApprovalStatus::Approved, Some(outcome)) => from_stored_answer(&outcome.body),
            (ApprovalStatus::Rejected, _) => refused(
                format!(
                    "the sponsor rejected this tool call (approval {id}){}",
                    view.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
                ),
                json!({"decision": "rejected", "approval_id": id, "request_id": view.request_id}),
            ),
            (ApprovalStatus::Expired, _) => refused(
                format!("the approval {id} for this tool call expired undecided"),
                json!({"decision": "expired", "approval_id": id, "request_id": view.request_id}),
            ),
            // Still pending (or approved and still running): the agent may retry the same call.
            _ => {
                return Ok(refused(
                    format!(
                        "this tool call needs the sponsor's approval {id}, which is still pending; call the \
                         same tool with the same arguments again once it is approved: it is performed once"
                    ),
                    decision,
                ));
            }
        };
        self.approvals.mark_delivered(agent.agent.id, id).await?;
        Ok(outcome)
    }
}
