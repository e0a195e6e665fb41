//! The execution proxy: every agent call runs these stages, in this order, each in
//! its own file under `stages/` returning `Continue(what the next needs)` or
//! `Break(Stop)` ([`context::Flow`]). The agent's key is checked before any of
//! them, before a byte of the body is read (`http/extract.rs`).
//!
//! | # | stage | file | stops with |
//! |---|-------|------|------------|
//! | 1 | shed past the in-flight bound | `in_flight.rs` | error `overload` |
//! | 2 | idempotency key claimed or replayed | `stages/idempotency.rs` | the first answer |
//! | 3 | breaker | `stages/breaker.rs` | deny `breaker` |
//! | 4 | target parses | `stages/target.rs` | deny `egress` |
//! | 4b | an MCP tool call's arguments match the tool's `inputSchema` | `stages/arguments.rs` | deny `arguments` |
//! | 5 | reads: wallet, policy version, granted secret and connections at once | `stages/reads.rs` | error `storage` |
//! | 5b | door: an MCP connection's URL only through `/mcp` | `stages/door.rs` | deny `egress` |
//! | 6 | meter: an LLM call under a priced connection is planned and bounded | `stages/meter.rs` | deny `policy` |
//! | 7 | policy (Rego) | `stages/policy.rs` | deny `policy` |
//! | 8 | egress guard | `stages/egress.rs` | deny `egress` |
//! | 9 | secret opened and injected | `stages/secret.rs` | deny `secret` |
//! | 10 | approval: a grant, or parked | `stages/approval.rs` | `pending_approval` |
//! | 11 | rate limits: the agent's and the connection's per-minute windows | `stages/rate.rs` | deny `budget` |
//! | 12 | budget hold (a metered call's ceiling) + intent record | `stages/budget.rs` | deny `budget` |
//! | 13 | the upstream call, scrubbed (a metered answer's usage read as it passes) | `stages/upstream.rs` | — |
//! | 14 | settle (a metered stream: when it ends) + outcome, trust, breaker, events | `stages/settle.rs` | — |
//!
//! A stop before the upstream is answered by `stages/stop.rs` (a denial is
//! audited, counted and announced). Each "+" is one transaction, group-committed
//! with other calls' ([`crate::store::batch`]). Every stage notes what it decided and how long
//! it took in the call's [`DecisionRecord`], kept with the audit record.

pub mod approved;
pub mod breaker;
pub mod context;
pub mod egress;
pub mod idempotency;
pub mod in_flight;
pub mod policy;
pub mod secret;
pub mod stages;
pub mod upstream;
pub mod upstream_mcp;

use std::ops::ControlFlow::{Break, Continue};
use std::sync::Arc;

use app::error::AppError;
use uuid::Uuid;

use crate::agents::AgentPrincipal;
use crate::approvals::ApprovalService;
use crate::audit::AuditLog;
pub use crate::call::Stage;
pub use crate::call::outcome::{Answer, DecisionRecord, ProxyResult, Render};
use crate::call::request::ProxyRequest;
use crate::call::upstream::UpstreamError;
use crate::events::EventBus;
use crate::policies::PolicyService;
use crate::policies::engine::PolicyEngine;
use crate::secrets::SecretService;
use crate::trust::TrustService;
use crate::wallets::WalletService;
use context::{Call, Flow};

#[derive(Clone)]
pub struct Pipeline {
    pub db: sea_orm::DatabaseConnection,
    pub policies: PolicyService,
    pub engine: Arc<PolicyEngine>,
    pub egress: egress::EgressGuard,
    pub secrets: SecretService,
    pub wallets: WalletService,
    pub audit: AuditLog,
    pub upstream: upstream::Upstream,
    pub events: EventBus,
    pub trust: TrustService,
    pub approvals: ApprovalService,
    pub breaker: breaker::BreakerService,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Tokens and requests per minute ([`crate::rate_limits`]).
    pub rates: crate::rate_limits::RateLimiter,
    /// The hot path's reads ([`crate::store::CallStore`]).
    pub store: Arc<dyn crate::store::CallStore>,
    /// Holds + intents and settlements + outcomes, many requests per transaction.
    pub commit: crate::store::GroupCommit,
    /// Accepted calls, each on its own task ([`in_flight`]); shutdown waits for them.
    pub in_flight: tokio_util::task::TaskTracker,
    /// One permit per agent call being performed (`AEGIS_PROXY_MAX_IN_FLIGHT`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// How a result is answered, for the answers kept for replay (the HTTP layer's).
    pub render: Render,
}

/// A fresh request id, `req_` + a UUIDv7: made by AEGIS, never taken from the client.
pub fn new_request_id() -> String {
    format!("req_{}", Uuid::now_v7().simple())
}

impl Pipeline {
    /// Runs one call under `request_id` (from [`new_request_id`]) on its own task.
    /// Never performs an upstream call unless its intent is durably in the audit log
    /// first. `Err` only for a misused idempotency key.
    pub async fn run(
        &self,
        request_id: String,
        agent: &AgentPrincipal,
        request: ProxyRequest,
    ) -> Result<ProxyResult, AppError> {
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            self.metrics.proxy_request("error", Stage::Overload.as_str());
            return Ok(in_flight::overloaded(request_id));
        };
        let (pipeline, agent) = (self.clone(), agent.clone());
        let call = async move {
            let _permit = permit;
            stages::idempotency::once(&pipeline, &agent, request, request_id).await
        };
        in_flight::detached(&self.in_flight, call).await?
    }

    /// A call its sponsor approved, under its original request id: every stage runs
    /// again; only the policy's `require_approval` is answered by the approval.
    pub async fn run_approved(
        &self,
        agent: &AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        approval_id: Uuid,
    ) -> ProxyResult {
        self.stages(agent, request, request_id, Some(approval_id)).await
    }

    /// The stages, then the metrics, fed from the decision record's own timings.
    async fn stages(
        &self,
        agent: &AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        approved: Option<Uuid>,
    ) -> ProxyResult {
        let mut call = Call::new(agent, request, request_id, approved);
        let result = match self.before_answer(&mut call).await {
            Continue(answer) => stages::settle::settle(self, &mut call, answer).await,
            Break(stop) => stages::stop::finish(self, &mut call, stop).await,
        };
        let (decision, stage) = result.decision_and_stage();
        self.metrics.proxy_request(decision, stage);
        for s in &call.record.stages {
            self.metrics.stage(s.stage, s.micros);
        }
        self.metrics.request_duration(call.record.elapsed_micros().max(0) as u64);
        result
    }

    /// Up to the upstream's answer: each stage hands the next what it needs, or stops the call.
    async fn before_answer(&self, call: &mut Call<'_>) -> Flow<Result<Answer, UpstreamError>> {
        stages::breaker::admit(self, call).await?;
        let url = stages::target::parse(call)?;
        stages::arguments::check(call)?;
        let rows = stages::reads::load(self, call).await?;
        stages::door::check(call, &rows.routes, &url)?;
        stages::meter::price(call, &rows.routes, &url)?;
        let verdict = stages::policy::decide(self, call, &url, rows).await?;
        let target = stages::egress::check(self, call).await?;
        let prepared = stages::secret::inject(self, call, &verdict, target)?;
        let (prepared, grant) = stages::approval::ask(self, call, &verdict, prepared).await?;
        stages::rate::take(self, call).await?;
        stages::budget::hold(self, call, grant).await?;
        Continue(stages::upstream::perform(self, call, prepared).await)
    }
}
