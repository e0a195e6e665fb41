//! Where a call stopped, named the same in answers, audit records, events and metrics.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Auth,
    Breaker,
    Policy,
    /// An MCP tool call whose arguments do not match the tool's `inputSchema`.
    Arguments,
    Egress,
    Secret,
    Budget,
    Approval,
    Upstream,
    Storage,
    /// Shed before any stage ran: too many calls in flight.
    Overload,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Breaker => "breaker",
            Stage::Policy => "policy",
            Stage::Arguments => "arguments",
            Stage::Egress => "egress",
            Stage::Secret => "secret",
            Stage::Budget => "budget",
            Stage::Approval => "approval",
            Stage::Upstream => "upstream",
            Stage::Storage => "storage",
            Stage::Overload => "overload",
        }
    }
}
