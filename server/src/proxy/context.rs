//! One call on its way through the stages ([`Call`]), and how a stage says whether
//! the call goes on ([`Flow`]: `Continue(value)`, or `Break(`[`Stop`]`)`).

use std::ops::ControlFlow;

use app::error::AppError;
use serde_json::{Value, json};
use uuid::Uuid;

use super::breaker::Admission;
use crate::agents::AgentPrincipal;
use crate::audit::AuditEntry;
use crate::call::Stage;
use crate::call::outcome::DecisionRecord;
use crate::call::request::ProxyRequest;
use crate::digest::canonical_json;

/// A stage's answer: `Continue(what the next stages need)` or `Break(why the call stops)`.
pub type Flow<T> = ControlFlow<Stop, T>;

/// Why a call stops before the upstream is asked; [`super::stages::stop`] answers it.
#[derive(Debug)]
pub enum Stop {
    /// Refused at `stage`: audited as `proxy.denied`, counted by trust and the breaker,
    /// announced on the events feed. `extra` adds fields to the answer.
    Deny { stage: Stage, reason: String, extra: Value },
    /// Storage was unavailable: nothing happened, nothing is recorded.
    Storage(AppError),
    /// Parked for the sponsor's approval (the request's audit record is `approval_seq`).
    Parked { approval_id: Uuid, approval_seq: i64, expires_at: Option<chrono::DateTime<chrono::Utc>> },
}

impl Stop {
    pub fn deny(stage: Stage, reason: impl Into<String>) -> Self {
        Stop::Deny { stage, reason: reason.into(), extra: json!({}) }
    }
}

/// Everything the stages learn about one call, in the order they learn it.
pub struct Call<'a> {
    pub agent: &'a AgentPrincipal,
    pub request: ProxyRequest,
    pub request_id: String,
    pub request_hash: String,
    /// Set when the sponsor approved this very call (it runs again under its approval).
    pub approved: Option<Uuid>,
    /// What each stage decided and how long it took.
    pub record: DecisionRecord,
    /// Whether the breaker let this call through as its one half-open probe.
    pub admission: Admission,
    /// The target's host as egress and policy judge it, and its path (once parsed).
    pub host: Option<String>,
    pub path: Option<String>,
    /// The policy that decided, and the exact input it was given.
    pub policy_hash: Option<String>,
    pub policy_input: Option<String>,
    /// The policy's reasons, and its whole verdict (kept so `aegis replay` can check it).
    pub reasons: Vec<String>,
    pub policy_verdict: Value,
    /// Set by stage `meter` when the call is an LLM call under a priced connection.
    pub meter: Option<crate::metering::Metered>,
    /// The connection the target lies under and its saved rate limits, if it has any.
    pub connection_limits: Option<(String, String)>,
    /// The rate windows the call took from (stage `rate`), given back or adjusted at settle.
    pub rate: Option<crate::rate_limits::Ticket>,
}

impl<'a> Call<'a> {
    pub fn new(
        agent: &'a AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        approved: Option<Uuid>,
    ) -> Self {
        Call {
            request_hash: request.request_hash(),
            agent,
            request,
            request_id,
            approved,
            record: DecisionRecord::new(),
            admission: Admission::Closed,
            host: None,
            path: None,
            policy_hash: None,
            policy_input: None,
            reasons: Vec::new(),
            policy_verdict: Value::Null,
            meter: None,
            connection_limits: None,
            rate: None,
        }
    }

    /// The least the call is charged: what the agent declared, at least the
    /// connection's per-call price.
    pub fn least_cost(&self) -> i64 {
        self.request.declared_cost_micros.max(self.request.minimum_cost_micros)
    }

    /// The cost the call is held at: its least cost, or a metered call's ceiling
    /// when higher. An unmetered call is settled at it too.
    pub fn estimate(&self) -> i64 {
        let ceiling = self.meter.as_ref().map_or(0, |m| m.llm.ceiling_micros);
        self.least_cost().max(ceiling)
    }

    /// An audit record of this call: who, what, where, under which policy.
    /// An MCP call's records all name its server, tool and the arguments' hash (`detail.mcp`).
    pub fn entry(&self, kind: &str, stage: Option<Stage>, decision: &str, mut detail: Value) -> AuditEntry {
        if let (Some(mcp), Some(map)) = (self.request.mcp(), detail.as_object_mut()) {
            map.insert("mcp".into(), mcp.audit_detail());
        }
        AuditEntry {
            sponsor_id: Some(self.agent.agent.sponsor_id),
            agent_id: Some(self.agent.agent.id),
            request_id: Some(self.request_id.clone()),
            kind: kind.to_owned(),
            stage: stage.map(|s| s.as_str().to_owned()),
            decision: Some(decision.to_owned()),
            method: Some(self.request.method.as_str().to_owned()),
            host: self.host.clone(),
            path: self.path.clone(),
            request_hash: Some(self.request_hash.clone()),
            policy_hash: self.policy_hash.clone(),
            policy_input: self.policy_input.clone(),
            detail: Some(canonical_json(&detail)),
            ..Default::default()
        }
    }
}

/// A call to build in a stage's unit test: an active agent, a plain `GET`.
#[cfg(test)]
pub mod testing {
    use super::*;
    use crate::call::request::Origin;

    pub fn agent() -> AgentPrincipal {
        let at = chrono::Utc::now();
        AgentPrincipal {
            agent: entity::agents::Model {
                id: Uuid::now_v7(),
                sponsor_id: Uuid::now_v7(),
                name: "stage-test".into(),
                description: None,
                status: "active".into(),
                policy_id: None,
                trust_score: crate::trust::BASELINE,
                tags: "[]".into(),
                created_at: at,
                updated_at: at,
                suspended_at: None,
                suspended_reason: None,
                deleted_at: None,
                last_seen_at: None,
                rate_limits: None,
            },
            key_id: "key_test".into(),
        }
    }

    pub fn request(url: &str) -> ProxyRequest {
        ProxyRequest {
            method: http::Method::GET,
            url: url.to_owned(),
            headers: vec![],
            body: bytes::Bytes::new(),
            secret: None,
            declared_cost_micros: 0,
            minimum_cost_micros: 0,
            idempotency_key: None,
            label: None,
            follow_redirects: false,
            stream_response: false,
            origin: Origin::Execute,
        }
    }
}
