//! Stage `breaker`: a suspended agent does nothing. (Trip detectors — denial rate,
//! error rate, bursts, spend velocity — feed this stage in a later release.)

use app::model::AgentStatus;
use entity::agents;

/// `Err(reason)` when the agent may not act now.
pub fn check(agent: &agents::Model) -> Result<(), String> {
    match AgentStatus::parse(&agent.status) {
        Some(AgentStatus::Active) => Ok(()),
        Some(AgentStatus::Suspended) => Err(format!(
            "agent is suspended: {}",
            agent.suspended_reason.as_deref().unwrap_or("suspended by its sponsor")
        )),
        // Revoked agents cannot authenticate; anything unknown fails closed.
        _ => Err("agent is not active".into()),
    }
}
