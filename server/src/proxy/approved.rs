//! Approve-and-perform: the sponsor's approval claims the parked call (once, sealed
//! request opened), and the call runs through every stage again under its original
//! request id, on its own task so a sponsor closing the tab mid-call cannot leave
//! it without its settlement and outcome; the answer is stored for the agent's poll.
//! Tested over HTTP in `tests/api/approvals.rs`.

use app::error::AppError;
use app::model::ApproveRequest;
use uuid::Uuid;

use super::Pipeline;
use crate::actor::Actor;
use crate::agents::AgentService;

impl Pipeline {
    pub async fn approve_and_perform(
        &self,
        agents: &AgentService,
        approver: &Actor,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<(), AppError> {
        let Some(claimed) = self.approvals.approve(approver, id, input).await? else {
            // A vote under the two-person rule: performed after the last approver's.
            return Ok(());
        };
        let agent = agents.principal(claimed.approval.agent_id).await?;
        let pipeline = self.clone();
        let perform = async move {
            let result = pipeline.run_approved(&agent, claimed.request, claimed.request_id, id).await;
            let (status, body) = (pipeline.render)(&result);
            pipeline.approvals.record_outcome(id, status, &body, result.audit_seq).await;
        };
        super::in_flight::detached(&self.in_flight, perform).await
    }
}
