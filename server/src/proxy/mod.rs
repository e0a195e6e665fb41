//! The execution proxy: one ordered pipeline of stages, each in its own module.
//!
//! authenticate (HTTP extractor) → [`breaker`] → [`policy`] → [`egress`] →
//! [`secret`] → approval ([`crate::approvals`]: park the request, or use a grant) →
//! budget ([`crate::wallets`]) + write intent (audit) → perform ([`upstream`]) →
//! settle + write outcome (audit) → respond; then the breaker counts the call.
//! Each "+" is one transaction, group-committed with other requests' ([`commit`]).
//!
//! Every stage records what it decided, and how long it took, into one
//! [`DecisionRecord`] that is kept with the audit record.

pub mod breaker;
pub mod commit;
pub mod egress;
pub mod idempotency;
pub mod policy;
pub mod secret;
pub mod upstream;

use std::sync::Arc;
use std::time::Instant;

use app::error::AppError;
use http::HeaderMap;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::agents::AgentPrincipal;
use crate::approvals::ApprovalService;
use crate::audit::{AuditEntry, AuditLog};
pub use crate::call::Stage;
use crate::call::request::{self, ProxyRequest};
use crate::events::{self, Event, EventBus};
use crate::policies::PolicyService;
use crate::policies::engine::{Decision, PolicyEngine};
use crate::secrets::SecretService;
use crate::storage::{canonical_json, now};
use crate::trust::{TrustEvent, TrustService};
use crate::wallets::{Reservation, WalletService};
use breaker::windows::{Kind, Observation};
use breaker::{Admission, BreakerService};
use commit::{GroupCommit, Intent};
use egress::EgressGuard;
use upstream::{StreamingResponse, Upstream, UpstreamError, UpstreamResponse};

/// What each stage decided and how long it took, in order.
#[derive(Debug, Serialize)]
pub struct DecisionRecord {
    pub stages: Vec<StageRecord>,
    #[serde(skip)]
    started: Instant,
    #[serde(skip)]
    mark: Instant,
}

#[derive(Debug, Serialize)]
pub struct StageRecord {
    pub stage: &'static str,
    pub outcome: String,
    pub micros: u64,
}

impl DecisionRecord {
    fn new() -> Self {
        let now = Instant::now();
        Self { stages: Vec::new(), started: now, mark: now }
    }

    fn note(&mut self, stage: &'static str, outcome: impl Into<String>) {
        let now = Instant::now();
        self.stages.push(StageRecord {
            stage,
            outcome: outcome.into(),
            micros: (now - self.mark).as_micros() as u64,
        });
        self.mark = now;
    }

    fn elapsed_micros(&self) -> i64 {
        self.started.elapsed().as_micros() as i64
    }
}

/// What the upstream answered: read whole (execute), or still arriving (gateway).
#[derive(Debug)]
pub enum Answer {
    Whole(UpstreamResponse),
    Streaming(StreamingResponse),
}

impl Answer {
    pub fn status(&self) -> u16 {
        match self {
            Answer::Whole(r) => r.status,
            Answer::Streaming(r) => r.status,
        }
    }
}

#[derive(Debug)]
pub enum Outcome {
    Performed {
        upstream: Answer,
        cost_micros: i64,
    },
    Denied {
        stage: Stage,
        reason: String,
        extra: Value,
    },
    Failed {
        stage: Stage,
        reason: String,
        status: u16,
    },
    /// Parked for the sponsor's approval.
    Pending {
        approval_id: Uuid,
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// An idempotency key seen before: the first answer, unchanged.
    Replayed {
        status: u16,
        body: Value,
    },
}

#[derive(Debug)]
pub struct ProxyResult {
    pub request_id: String,
    pub audit_seq: Option<i64>,
    pub reasons: Vec<String>,
    pub outcome: Outcome,
}

/// The pipeline's collaborators.
#[derive(Clone)]
pub struct Pipeline {
    pub db: sea_orm::DatabaseConnection,
    pub policies: PolicyService,
    pub engine: Arc<PolicyEngine>,
    pub egress: EgressGuard,
    pub secrets: SecretService,
    pub wallets: WalletService,
    pub audit: AuditLog,
    pub upstream: Upstream,
    pub events: EventBus,
    pub trust: TrustService,
    pub approvals: ApprovalService,
    pub breaker: BreakerService,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Holds + intents and settlements + outcomes, many requests per transaction.
    pub commit: GroupCommit,
    /// Accepted calls, each on its own task ([`Self::run_detached`]); shutdown waits for them.
    pub in_flight: tokio_util::task::TaskTracker,
    /// One permit per agent call being performed (`AEGIS_PROXY_MAX_IN_FLIGHT`).
    pub admission: Arc<tokio::sync::Semaphore>,
}

/// A fresh request id, `req_` + a UUIDv7: made by AEGIS, never taken from the client.
pub fn new_request_id() -> String {
    format!("req_{}", Uuid::now_v7().simple())
}

/// What the audit keeps of a request.
struct Trail<'a> {
    agent: &'a AgentPrincipal,
    request: &'a ProxyRequest,
    request_id: &'a str,
    request_hash: String,
    host: Option<String>,
    path: Option<String>,
    policy_hash: Option<String>,
    policy_input: Option<String>,
}

impl Trail<'_> {
    fn entry(&self, kind: &str, stage: Option<Stage>, decision: &str, detail: Value) -> AuditEntry {
        AuditEntry {
            sponsor_id: Some(self.agent.agent.sponsor_id),
            agent_id: Some(self.agent.agent.id),
            request_id: Some(self.request_id.to_owned()),
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

impl Pipeline {
    /// Runs one request through every stage under `request_id` (from
    /// [`new_request_id`]). Never performs an upstream call unless the intent is
    /// durably in the audit log first. `Err` only for a misused idempotency key
    /// (answered like any other API error).
    ///
    /// The request runs on its own task, so a caller that hangs up mid-call (its
    /// handler future dropped) cannot stop it between the upstream call and the
    /// outcome record: the call is still settled, audited and, with an
    /// idempotency key, answerable on retry.
    pub async fn run(
        &self,
        request_id: String,
        agent: &AgentPrincipal,
        request: ProxyRequest,
    ) -> Result<ProxyResult, AppError> {
        // Calls whose callers gave up still finish, so without a bound an overload
        // would pile up work nobody waits for: past the bound, shed at once.
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            self.metrics.proxy_request("error", Stage::Overload.as_str());
            return Ok(overloaded(request_id));
        };
        let (pipeline, agent) = (self.clone(), agent.clone());
        self.run_detached(async move {
            let _permit = permit;
            pipeline.run_attached(request_id, &agent, request).await
        })
        .await?
    }

    /// Runs `work` on a task of its own, tracked in [`Self::in_flight`], and
    /// waits for it; dropping the returned future does not stop `work`. It keeps
    /// the caller's tracing span, so its log lines still carry the request id.
    pub async fn run_detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, AppError> {
        detached(&self.in_flight, work).await
    }

    async fn run_attached(
        &self,
        request_id: String,
        agent: &AgentPrincipal,
        request: ProxyRequest,
    ) -> Result<ProxyResult, AppError> {
        let request_hash = request.request_hash();
        let Some(key) = request.idempotency_key.clone() else {
            return Ok(self.stages(agent, request, request_id, request_hash, None).await);
        };
        let claimed = idempotency::claim(
            &self.db,
            self.approvals.vault(),
            agent.agent.id,
            &key,
            &request_id,
            &request_hash,
            self.wallets.reservation_ttl(),
        )
        .await;
        let claim = match claimed {
            Ok(c) => c,
            // The key could not be claimed or read (storage unavailable): nothing happened.
            Err(e) if e.status >= 500 => return Ok(storage_failure(request_id, e)),
            Err(e) => return Err(e),
        };
        match claim {
            idempotency::Claim::Claimed => {}
            idempotency::Claim::Replay { status, body } => {
                return Ok(ProxyResult {
                    request_id: body["request_id"].as_str().unwrap_or_default().to_owned(),
                    audit_seq: body["audit_seq"].as_i64(),
                    reasons: vec![],
                    outcome: Outcome::Replayed { status, body },
                });
            }
        }
        let result = self.stages(agent, request, request_id, request_hash, None).await;
        if matches!(result.outcome, Outcome::Failed { stage: Stage::Storage, .. }) {
            // Nothing happened: let the agent retry with the same key.
            idempotency::abandon(&self.db, agent.agent.id, &key).await;
        } else {
            let (status, body) = result.to_json();
            if let Err(e) =
                idempotency::record(&self.db, self.approvals.vault(), agent.agent.id, &key, status, &body)
                    .await
            {
                tracing::error!(error = %e.message, "could not record idempotent outcome");
            }
        }
        Ok(result)
    }

    /// Performs a request its sponsor approved, under its original request id. Every
    /// stage runs again (a suspended agent, a changed policy that now denies, an
    /// exhausted budget still stop it); only the policy's `require_approval` is
    /// answered by the approval.
    pub async fn run_approved(
        &self,
        agent: &AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        approval_id: Uuid,
    ) -> ProxyResult {
        let request_hash = request.request_hash();
        self.stages(agent, request, request_id, request_hash, Some(approval_id)).await
    }

    /// The stages, then the metrics, fed from the decision record's own timings.
    async fn stages(
        &self,
        agent: &AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        request_hash: String,
        approved: Option<Uuid>,
    ) -> ProxyResult {
        let mut record = DecisionRecord::new();
        let result = self.run_stages(&mut record, agent, request, request_id, request_hash, approved).await;
        let (decision, stage) = result.decision_and_stage();
        self.metrics.proxy_request(decision, stage);
        for s in &record.stages {
            self.metrics.stage(s.stage, s.micros);
        }
        self.metrics.request_duration(record.elapsed_micros().max(0) as u64);
        result
    }

    async fn run_stages(
        &self,
        record: &mut DecisionRecord,
        agent: &AgentPrincipal,
        request: ProxyRequest,
        request_id: String,
        request_hash: String,
        approved: Option<Uuid>,
    ) -> ProxyResult {
        let mut trail = Trail {
            agent,
            request: &request,
            request_id: &request_id,
            request_hash,
            host: None,
            path: None,
            policy_hash: None,
            policy_input: None,
        };
        let mut reasons: Vec<String> = Vec::new();
        // The policy's own verdict, kept so `aegis replay` can check it later.
        let mut policy_verdict = Value::Null;
        let mut admission = Admission::Closed;

        // Everything below either returns through `deny`, which audits the denial,
        // or reaches the upstream call with an intent on record.
        macro_rules! deny {
            ($stage:expr, $reason:expr, $extra:expr) => {{
                let (stage, reason): (Stage, String) = ($stage, $reason);
                record.note(stage.as_str(), format!("deny: {reason}"));
                let detail = json!({"reason": reason, "reasons": reasons, "stages": record.stages, "label": request.label, "policy": policy_verdict});
                let entry = AuditEntry {
                    duration_us: record.elapsed_micros(),
                    ..trail.entry("proxy.denied", Some(stage), "deny", detail)
                };
                let appended = self.audit.append(entry).await;
                if appended.is_ok() {
                    self.adjust_trust(agent, TrustEvent::for_denial(stage), &request_id).await;
                }
                if stage != Stage::Breaker {
                    let obs = Observation { request_id: request_id.clone(), kind: Kind::Denied, spend_micros: 0, host: None };
                    self.breaker.observe(&agent.agent, obs, admission).await;
                }
                if let Ok(a) = &appended {
                    self.events.publish(denied_event(agent, stage, &reason, &request_id, &request, trail.host.as_deref(), a.seq));
                }
                return match appended {
                    Ok(appended) => ProxyResult {
                        request_id,
                        audit_seq: Some(appended.seq),
                        reasons,
                        outcome: Outcome::Denied { stage, reason, extra: $extra },
                    },
                    Err(e) => storage_failure(request_id, e),
                };
            }};
        }

        // Stage: breaker.
        match self.breaker.admit(&agent.agent).await {
            Ok(Ok(a)) => admission = a,
            Ok(Err(reason)) => deny!(Stage::Breaker, reason, json!({})),
            Err(e) => return storage_failure(request_id, e),
        }
        record.note("breaker", if admission == Admission::Probe { "probe" } else { "pass" });
        // Everything that returns without a verdict from here gives a probe back.
        macro_rules! undecided {
            ($result:expr) => {{
                if admission == Admission::Probe {
                    self.breaker.return_probe(&agent.agent).await;
                }
                return $result;
            }};
        }

        // The target must at least parse before policy can look at it.
        let parsed = match url::Url::parse(&request.url) {
            Ok(u) => u,
            Err(e) => deny!(Stage::Egress, format!("malformed target URL: {e}"), json!({})),
        };
        trail.host = parsed.host_str().map(|_| policy::normalised_host(&parsed));
        trail.path = Some(parsed.path().to_owned());

        // Stage: policy.
        let estimate = request.declared_cost_micros.max(request.minimum_cost_micros);
        let at = now();
        // The reads this request needs, at once: each is a round trip to the
        // database, and none depends on another. The secret is only fetched here
        // (no side effect); the secret stage below decides whether it may be used.
        let granted_secret = async {
            match &request.secret {
                Some(name) => self.secrets.granted(agent.agent.sponsor_id, agent.agent.id, name).await,
                None => Ok(None),
            }
        };
        let (wallet, version, granted_secret) = tokio::join!(
            self.wallets.get(agent.agent.id),
            self.policies.source_for(agent.agent.policy_id),
            granted_secret
        );
        let (wallet, version, granted_secret) = match (wallet, version, granted_secret) {
            (Ok(w), Ok(v), Ok(s)) => (w, v, s),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => undecided!(storage_failure(request_id, e)),
        };
        let input = policy::input(&agent.agent, &request, &parsed, estimate, wallet.as_ref(), at);
        let canonical_input = canonical_json(&input);
        let evaluation = self.engine.evaluate_contained(version.source, input).await;
        trail.policy_hash = Some(evaluation.policy_sha256.clone());
        trail.policy_input = Some(canonical_input);
        reasons = evaluation.reasons.clone();
        policy_verdict = json!({"decision": evaluation.decision, "reasons": evaluation.reasons, "error": evaluation.error});
        let mut needs_approval = false;
        match evaluation.decision {
            Decision::Allow => record.note("policy", "allow"),
            Decision::Deny => {
                let reason = evaluation
                    .error
                    .clone()
                    .or_else(|| (!reasons.is_empty()).then(|| reasons.join("; ")))
                    .unwrap_or_else(|| "denied by policy".into());
                deny!(Stage::Policy, reason, json!({}))
            }
            Decision::RequireApproval => match approved {
                Some(id) => record.note("policy", format!("require_approval: approved ({id})")),
                None => {
                    needs_approval = true;
                    record.note("policy", "require_approval")
                }
            },
        }

        // Stage: egress.
        let target = match self.egress.check_url(&request.url) {
            Ok(t) => t,
            Err(d) => deny!(Stage::Egress, d.reason, json!({})),
        };
        if let Err(d) = self.egress.resolve(&target).await {
            deny!(Stage::Egress, d.reason, json!({}));
        }
        record.note("egress", "pass");

        // Stage: secret.
        let mut url = target.url.clone();
        let mut headers: HeaderMap =
            upstream::outgoing_headers(&request.headers, evaluation.forward_credentials);
        let secret = match &request.secret {
            None => None,
            Some(name) => match self.secrets.open(
                granted_secret.as_ref(),
                name,
                &crate::secrets::hosts::Destination {
                    scheme: &target.scheme,
                    host: &target.host,
                    port: target.port,
                },
            ) {
                Ok(Ok(s)) => Some(s),
                Ok(Err(denied)) => deny!(Stage::Secret, denied.0, json!({})),
                Err(e) => undecided!(storage_failure(request_id, e)),
            },
        };
        if let Some(s) = &secret
            && let Err(reason) = secret::inject(s, &mut headers, &mut url)
        {
            deny!(Stage::Secret, reason, json!({}));
        }
        record.note("secret", if secret.is_some() { "injected" } else { "none" });

        // Stage: approval. Checked after egress and secret, so a sponsor is only
        // ever asked about calls that could actually be performed.
        let mut grant = None;
        if needs_approval {
            let secret_name = request.secret.as_deref();
            match self
                .approvals
                .use_grant(agent.agent.id, request.method.as_str(), &request.url, secret_name, estimate)
                .await
            {
                Ok(Some(id)) => {
                    grant = Some(id);
                    record.note("approval", format!("grant {id}"));
                }
                Ok(None) => {
                    record.note("approval", "parked");
                    let detail = json!({"reasons": reasons, "stages": record.stages, "label": request.label,
                                        "estimate_micros": estimate, "policy": policy_verdict});
                    let entry = AuditEntry {
                        cost_micros: estimate,
                        duration_us: record.elapsed_micros(),
                        ..trail.entry("approval.requested", Some(Stage::Approval), "pending", detail)
                    };
                    drop(secret);
                    let parked = self
                        .approvals
                        .park(&agent.agent, &request, &request_id, estimate, &reasons, entry)
                        .await;
                    let parked = match parked {
                        // Too large to park (`approvals::MAX_PARKED_BODY_BYTES`): refused, nothing kept.
                        Err(e) if e.status == 413 => {
                            deny!(Stage::Approval, e.message, json!({"code": e.code}))
                        }
                        other => other,
                    };
                    undecided!(match parked {
                        Ok(p) => ProxyResult {
                            request_id,
                            audit_seq: Some(p.audit_seq),
                            reasons,
                            outcome: Outcome::Pending {
                                approval_id: p.approval_id,
                                expires_at: p.expires_at
                            },
                        },
                        Err(e) => storage_failure(request_id, e),
                    });
                }
                Err(e) => undecided!(storage_failure(request_id, e)),
            }
        }

        // Stage: budget, and write intent: the hold and the intent record commit
        // together (group-committed with other requests'), durable before anything
        // leaves AEGIS.
        record.note("budget", format!("reserving {estimate}"));
        let intent = trail.entry(
            "proxy.intent",
            None,
            "allow",
            json!({"reasons": reasons, "stages": record.stages, "label": request.label, "estimate_micros": estimate,
                   "policy": policy_verdict, "approval_id": approved, "grant_id": grant}),
        );
        let intent = AuditEntry { cost_micros: estimate, ..intent };
        match self.commit.intent(agent.agent.id, &request_id, estimate, intent).await {
            Ok(Intent::Recorded(_)) => record.note("intent", format!("reserved {estimate}, recorded")),
            Ok(Intent::Refused(Reservation::Refused {
                daily_remaining_micros,
                monthly_remaining_micros,
            })) => {
                // The budget stage answers instead of the optimistic note above.
                record.stages.pop();
                let remaining = json!({"daily_remaining_micros": daily_remaining_micros, "monthly_remaining_micros": monthly_remaining_micros, "cost_micros": estimate});
                self.events.publish(Event::new(
                    events::BUDGET_EXHAUSTED,
                    agent.agent.sponsor_id,
                    Some(agent.agent.id),
                    json!({"request_id": request_id, "daily_remaining_micros": daily_remaining_micros,
                           "monthly_remaining_micros": monthly_remaining_micros, "cost_micros": estimate}),
                ));
                deny!(Stage::Budget, "budget exceeded".to_owned(), remaining)
            }
            // `Refused` always carries a refusal; anything else is a bug, refused safely.
            Ok(Intent::Refused(Reservation::Held)) => {
                undecided!(storage_failure(request_id, AppError::internal()))
            }
            // Rolled back: no hold, no intent, nothing performed.
            Err(e) => undecided!(storage_failure(request_id, e)),
        }

        // Perform. The answer is scrubbed as it arrives; gateway answers stream through,
        // execute answers are read whole.
        let called = match self
            .upstream
            .call_streaming(
                request.method.clone(),
                url,
                headers,
                request.body.clone(),
                request.follow_redirects,
                secret.as_ref(),
            )
            .await
        {
            Ok(mut r) => {
                if let Some(s) = &secret {
                    secret::scrub_headers(s, &mut r.headers);
                    r.body = secret::scrub_stream(r.body, secret::Scrubber::new(s));
                }
                if request.stream_response {
                    Ok(Answer::Streaming(r))
                } else {
                    r.read_whole().await.map(Answer::Whole)
                }
            }
            Err(e) => Err(e),
        };
        drop(secret);

        // Settle and write the outcome.
        let (outcome, kind_decision, status, cost) = match called {
            Ok(response) => {
                let status = response.status();
                record.note("upstream", format!("status {status}"));
                (
                    Outcome::Performed { upstream: response, cost_micros: estimate },
                    "allow",
                    Some(status),
                    estimate,
                )
            }
            Err(error) => {
                record.note("upstream", error.reason());
                let (stage, status) = match &error {
                    UpstreamError::Egress(_) => (Stage::Egress, 403),
                    UpstreamError::Timeout => (Stage::Upstream, 504),
                    _ => (Stage::Upstream, 502),
                };
                let outcome = match stage {
                    Stage::Egress => Outcome::Denied { stage, reason: error.reason(), extra: json!({}) },
                    _ => Outcome::Failed { stage, reason: error.reason(), status },
                };
                (outcome, if stage == Stage::Egress { "deny" } else { "error" }, None, 0)
            }
        };
        let stage = match &outcome {
            Outcome::Denied { stage, .. } | Outcome::Failed { stage, .. } => Some(*stage),
            _ => None,
        };
        let mut entry = trail.entry(
            "proxy.outcome",
            stage,
            kind_decision,
            json!({"reasons": reasons, "stages": record.stages, "label": request.label, "policy": policy_verdict}),
        );
        entry.status = status.map(i32::from);
        entry.cost_micros = cost;
        entry.duration_us = record.elapsed_micros();
        // Settled at the cost (or released when nothing was performed) together
        // with the outcome record.
        let charge = matches!(outcome, Outcome::Performed { .. }).then_some(cost);
        let appended = match self.commit.outcome(agent.agent.id, &request_id, charge, entry).await {
            Ok(done) => {
                if done.resolved
                    && let Some(charged) = charge
                {
                    self.metrics.settled(charged);
                }
                Ok(done.appended)
            }
            Err(e) => {
                // The call happened: still try to charge it on its own (a hold left
                // behind would expire uncharged).
                let resolved = match charge {
                    Some(charged) => self.wallets.settle(&request_id, charged).await,
                    None => self.wallets.release(&request_id).await,
                };
                match resolved {
                    Ok(true) => self.metrics.settled(charge.unwrap_or(0)),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(request = %request_id, error = %e.message, "settlement failed; the hold expires")
                    }
                }
                Err(e)
            }
        };
        // Trust: a performed call is a success only when it meant something — a 2xx
        // on a host the sponsor vouched for (its secret, its connection, or its
        // approval of this call; `trust::counts_as_success`); other answers,
        // timeouts and unreachable upstreams change nothing; a blocked redirect hop
        // is an egress block.
        let vouched = request.secret.is_some()
            || matches!(request.origin, request::Origin::Gateway { .. })
            || approved.is_some();
        let trust_event = match (&outcome, status) {
            (Outcome::Performed { .. }, Some(code)) if crate::trust::counts_as_success(code, vouched) => {
                Some(TrustEvent::Success)
            }
            (Outcome::Denied { stage, .. }, _) => TrustEvent::for_denial(*stage),
            _ => None,
        };
        self.adjust_trust(agent, trust_event, &request_id).await;
        let kind = match (&outcome, status) {
            (Outcome::Performed { .. }, Some(code)) if code < 500 => Kind::Ok,
            (Outcome::Denied { .. }, _) => Kind::Denied,
            _ => Kind::UpstreamError,
        };
        let performed_host =
            matches!(outcome, Outcome::Performed { .. }).then(|| trail.host.clone()).flatten();
        let obs =
            Observation { request_id: request_id.clone(), kind, spend_micros: cost, host: performed_host };
        self.breaker.observe(&agent.agent, obs, admission).await;
        if let (Ok(a), Outcome::Denied { stage, reason, .. }) = (&appended, &outcome) {
            self.events.publish(denied_event(
                agent,
                *stage,
                reason,
                &request_id,
                &request,
                trail.host.as_deref(),
                a.seq,
            ));
        }
        match appended {
            Ok(appended) => ProxyResult { request_id, audit_seq: Some(appended.seq), reasons, outcome },
            Err(e) => {
                // The call happened and its intent is on record; report it, flag the gap.
                tracing::error!(request = %request_id, error = %e.message, "outcome could not be audited");
                ProxyResult { request_id, audit_seq: None, reasons, outcome }
            }
        }
    }
}

impl Pipeline {
    /// Applies a trust event, if any. Trust is bookkeeping after the fact: a failure
    /// is logged and never changes the answer. (A tier change is returned by the
    /// service for the events feed to announce.)
    async fn adjust_trust(&self, agent: &AgentPrincipal, event: Option<TrustEvent>, request_id: &str) {
        let Some(event) = event else { return };
        if let Err(e) = self.trust.record(&agent.agent, event, Some(request_id)).await {
            tracing::error!(request = %request_id, error = %e.message, "trust update failed");
        }
    }
}

/// The `proxy.denied` event: where and why, never the request's headers or body.
fn denied_event(
    agent: &AgentPrincipal,
    stage: Stage,
    reason: &str,
    request_id: &str,
    request: &ProxyRequest,
    host: Option<&str>,
    audit_seq: i64,
) -> Event {
    let data = json!({"stage": stage, "reason": reason, "request_id": request_id,
                      "method": request.method.as_str(), "host": host, "label": request.label});
    Event::new(events::PROXY_DENIED, agent.agent.sponsor_id, Some(agent.agent.id), data).audit_seq(audit_seq)
}

fn storage_failure(request_id: String, e: AppError) -> ProxyResult {
    tracing::error!(request = %request_id, error = %e.message, "storage unavailable: request refused");
    ProxyResult {
        request_id,
        audit_seq: None,
        reasons: vec![],
        outcome: Outcome::Failed {
            stage: Stage::Storage,
            reason: "storage unavailable; nothing was performed".into(),
            status: 503,
        },
    }
}

/// [`Pipeline::run_detached`], on its own for testing.
async fn detached<T: Send + 'static>(
    tracker: &tokio_util::task::TaskTracker,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, AppError> {
    use tracing::Instrument;
    tracker.spawn(work.instrument(tracing::Span::current())).await.map_err(|e| {
        tracing::error!(error = %e, "a proxy task failed");
        AppError::internal()
    })
}

/// Warns at most once a second: under overload a log line per shed call would
/// only add to it (`/metrics` counts every one).
fn warn_shedding() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now > last && LAST_WARNED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!("at the in-flight bound (AEGIS_PROXY_MAX_IN_FLIGHT): shedding calls");
    }
}

/// Shed: AEGIS is at its in-flight bound. Nothing ran, so nothing is audited
/// (like a failed authentication, it would let anyone flood the log).
fn overloaded(request_id: String) -> ProxyResult {
    tracing::debug!(request = %request_id, "at the in-flight bound: call shed");
    warn_shedding();
    ProxyResult {
        request_id,
        audit_seq: None,
        reasons: vec![],
        outcome: Outcome::Failed {
            stage: Stage::Overload,
            reason: "AEGIS is at capacity (AEGIS_PROXY_MAX_IN_FLIGHT calls in flight); nothing was performed; retry shortly"
                .into(),
            status: 503,
        },
    }
}

impl ProxyResult {
    /// The metrics' labels: the answer's `decision`, and its `stage` (`none` if it has none).
    pub fn decision_and_stage(&self) -> (&'static str, &'static str) {
        match &self.outcome {
            Outcome::Performed { .. } => ("allow", "none"),
            Outcome::Pending { .. } => ("pending_approval", Stage::Approval.as_str()),
            Outcome::Denied { stage, .. } => ("deny", stage.as_str()),
            Outcome::Failed { stage, .. } => ("error", stage.as_str()),
            // Not a decision: the first answer, counted when it was made.
            Outcome::Replayed { .. } => ("replayed", "none"),
        }
    }

    /// The `POST /api/proxy/execute` answer: HTTP status and JSON body.
    pub fn to_json(&self) -> (u16, Value) {
        match &self.outcome {
            Outcome::Replayed { status, body } => {
                let mut body = body.clone();
                body["replayed"] = json!(true);
                (*status, body)
            }
            Outcome::Performed { upstream, cost_micros } => {
                let (status, headers_in) = match upstream {
                    Answer::Whole(r) => (r.status, &r.headers),
                    Answer::Streaming(r) => (r.status, &r.headers),
                };
                let mut headers = serde_json::Map::new();
                for (name, value) in headers_in {
                    if let Ok(v) = value.to_str() {
                        headers.insert(name.as_str().to_owned(), json!(v));
                    }
                }
                let mut up = json!({"status": status, "headers": headers});
                match upstream {
                    // Only gateway answers stream, and they never become JSON.
                    Answer::Streaming(_) => up["streamed"] = json!(true),
                    Answer::Whole(r) => match std::str::from_utf8(&r.body) {
                        Ok(text) => up["body"] = json!(text),
                        Err(_) => {
                            use base64::Engine;
                            up["body_base64"] =
                                json!(base64::engine::general_purpose::STANDARD.encode(&r.body));
                        }
                    },
                }
                (
                    200,
                    json!({"request_id": self.request_id, "audit_seq": self.audit_seq, "decision": "allow",
                           "reasons": self.reasons, "cost_micros": cost_micros, "upstream": up}),
                )
            }
            Outcome::Pending { approval_id, expires_at } => (
                202,
                json!({"request_id": self.request_id, "audit_seq": self.audit_seq, "decision": "pending_approval",
                       "stage": Stage::Approval, "reasons": self.reasons, "approval_id": approval_id,
                       "expires_at": expires_at, "poll_url": format!("/api/proxy/approvals/{approval_id}")}),
            ),
            Outcome::Denied { stage, reason, extra } => {
                let mut body = json!({"request_id": self.request_id, "audit_seq": self.audit_seq, "decision": "deny",
                                      "stage": stage, "reason": reason, "reasons": self.reasons});
                if let Some(map) = extra.as_object() {
                    for (k, v) in map {
                        body[k] = v.clone();
                    }
                }
                (403, body)
            }
            Outcome::Failed { stage, reason, status } => (
                *status,
                json!({"request_id": self.request_id, "audit_seq": self.audit_seq, "decision": "error",
                       "stage": stage, "reason": reason}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Instrument;

    /// Detached work finishes even when its caller is dropped, is tracked until it
    /// does, and logs under the caller's span (the request id).
    #[tokio::test]
    async fn detached_work_outlives_its_caller_and_keeps_its_span() {
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let tracker = tokio_util::task::TaskTracker::new();
        let span = tracing::info_span!("request", request_id = "req_1");
        let expected = span.id();
        assert!(expected.is_some(), "spans are recorded");
        let seen =
            detached(&tracker, async { tracing::Span::current().id() }).instrument(span).await.unwrap();
        assert_eq!(seen, expected);

        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let caller = detached(&tracker, async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        // The caller gives up at once; the work still completes and is waited for.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(1), caller).await.is_err());
        assert_eq!(tracker.len(), 1);
        tracker.close();
        tracker.wait().await;
        assert!(done_rx.await.is_ok(), "the work ran to completion");
    }
}
