//! Stage `reads`: what the later stages read about the call — the agent's wallet,
//! its policy's current version, the secret it asked for (if granted) and the
//! sponsor's connections — read at once ([`crate::store::CallStore::call_rows`]:
//! one statement, one round trip on PostgreSQL). Stage `meter` matches the target
//! against the connections, stage `policy` decides with the rest. A failed read
//! stops the call (fails closed, stage `storage`).

use std::ops::ControlFlow::{Break, Continue};

use super::super::Pipeline;
use super::super::context::{Call, Flow, Stop};
use crate::policies::PolicyService;
use crate::store::CallRows;

pub async fn load(p: &Pipeline, call: &mut Call<'_>) -> Flow<CallRows> {
    let agent = &call.agent.agent;
    let policy_id = PolicyService::decides_with(agent.policy_id);
    match p.store.call_rows(agent.sponsor_id, agent.id, policy_id, call.request.secret.as_deref()).await {
        Ok(rows) => {
            call.record.note("reads", format!("{} connection(s)", rows.routes.len()));
            Continue(rows)
        }
        Err(e) => Break(Stop::Storage(e)),
    }
}
