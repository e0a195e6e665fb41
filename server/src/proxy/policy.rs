//! Stage `policy`: builds the documented input document and asks the agent's Rego
//! policy for a decision.

use chrono::{DateTime, Datelike, Timelike, Utc};
use entity::{agents, wallets};
use serde_json::{Value, json};

use crate::call::request::ProxyRequest;

pub use crate::call::request::normalised_host;

/// The policy input. Documented in the README ("Policy input"); never contains
/// secret values — secrets are injected after the decision.
pub fn input(
    agent: &agents::Model,
    request: &ProxyRequest,
    url: &url::Url,
    estimate_micros: i64,
    wallet: Option<&wallets::Model>,
    llm: Option<Value>,
    at: DateTime<Utc>,
) -> Value {
    let tags: Vec<String> = serde_json::from_str(&agent.tags).unwrap_or_default();
    let host = normalised_host(url);
    let w = |f: fn(&wallets::Model) -> i64| wallet.map_or(0, f);
    let mut input = json!({
        "agent": {
            "id": agent.id,
            "name": agent.name,
            "trust": agent.trust_score,
            "tier": crate::trust::tier(agent.trust_score),
            "tags": tags,
            "sponsor": agent.sponsor_id,
        },
        "action": {
            "method": request.method.as_str(),
            "url": url.as_str(),
            "scheme": url.scheme(),
            "host": host,
            "port": url.port_or_known_default().unwrap_or(0),
            "path": url.path(),
            "query": url.query().unwrap_or(""),
            "headers": request.header_names(),
            "cost_micros": estimate_micros,
            "label": request.label,
            "secret": request.secret,
            "follow_redirects": request.follow_redirects,
        },
        "wallet": {
            "daily_spent_micros": w(|w| w.daily_spent_micros),
            "daily_limit_micros": w(|w| w.daily_limit_micros),
            "monthly_spent_micros": w(|w| w.monthly_spent_micros),
            "monthly_limit_micros": w(|w| w.monthly_limit_micros),
            "reserved_micros": w(|w| w.reserved_micros),
        },
        "time": {
            "now": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "weekday": at.weekday().to_string(),
            "hour": at.hour(),
        },
    });
    // `input.llm`: only for a metered call (`{provider, model, max_tokens, stream}`).
    if let Some(llm) = llm {
        input["llm"] = llm;
    }
    // `input.mcp`: only for an MCP call (`{server, method, tool, arguments}`).
    if let Some(mcp) = request.mcp() {
        input["mcp"] = mcp.policy_input();
    }
    input
}

impl super::Pipeline {
    /// Whether `agent`'s policy would let `request` go on (allow, or ask for approval)
    /// as things stand: what `/mcp` lists a tool by (a tool the policy denies with no
    /// arguments is not listed). A policy error hides it (fail closed). Nothing is
    /// performed, audited or held.
    pub async fn would_allow_or_ask(
        &self,
        agent: &crate::agents::AgentPrincipal,
        request: &ProxyRequest,
    ) -> Result<bool, app::error::AppError> {
        let Ok(url) = url::Url::parse(&request.url) else { return Ok(false) };
        let version = self.policies.source_for(agent.agent.policy_id).await?;
        let wallet = self.wallets.get(agent.agent.id).await?;
        let estimate = request.declared_cost_micros.max(request.minimum_cost_micros);
        let input = input(&agent.agent, request, &url, estimate, wallet.as_ref(), None, crate::db::now());
        let evaluation = self.engine.evaluate_contained(version.source, input).await;
        Ok(evaluation.error.is_none() && evaluation.decision != crate::policies::engine::Decision::Deny)
    }
}

/// The policy playground: what the policy stage would decide for `agent` and a sample
/// action, from the same input document the proxy builds. A dry run: nothing is
/// performed, audited, reserved or spent.
impl super::Pipeline {
    pub async fn dry_run_policy(
        &self,
        agent: &agents::Model,
        trial: app::model::PolicyTrial,
        max_body_bytes: usize,
    ) -> Result<app::model::PolicyVerdict, app::error::AppError> {
        let request = trial_request(&trial, max_body_bytes)?;
        self.dry_run(agent, &trial, request).await
    }

    /// The dry run of `request` (the trial's sample action, or what it stands for, e.g.
    /// an MCP tool call) under the policy the trial names.
    pub async fn dry_run(
        &self,
        agent: &agents::Model,
        trial: &app::model::PolicyTrial,
        request: ProxyRequest,
    ) -> Result<app::model::PolicyVerdict, app::error::AppError> {
        let source = match (&trial.source, trial.policy_id) {
            (Some(source), _) => {
                crate::policies::check_source_size(source)?;
                source.clone()
            }
            (None, Some(id)) => self.policies.get(agent.sponsor_id, id).await?.source,
            (None, None) => self.policies.source_for(agent.policy_id).await?.source,
        };
        let url = url::Url::parse(&request.url).map_err(|e| {
            app::error::AppError::new(422, "invalid_request", format!("url is not a valid URL: {e}"))
        })?;
        let wallet = self.wallets.get(agent.id).await?;
        // Metered as the proxy would: a priced connection's model, cap and ceiling.
        let routes = self.store.routes(agent.sponsor_id).await?;
        let assessment = crate::metering::assess(&routes, &request.method, &request.body, &url)
            .map_err(|reason| app::error::AppError::new(422, "unpriced_request", reason))?;
        let ceiling = assessment.llm.as_ref().map_or(0, |l| l.ceiling_micros);
        let estimate = request
            .declared_cost_micros
            .max(request.minimum_cost_micros)
            .max(assessment.least_micros)
            .max(ceiling);
        let llm = assessment.llm.as_ref().map(crate::metering::LlmCall::policy_input);
        let input = input(agent, &request, &url, estimate, wallet.as_ref(), llm, crate::db::now());
        // Compiled afresh and evaluated on the engine's bounded pool, never cached:
        // a dry run may be any Rego at all.
        let evaluation = crate::policies::engine::dry_run(source, input.clone()).await?;
        Ok(app::model::PolicyVerdict {
            decision: evaluation.decision.as_str().to_owned(),
            reasons: evaluation.reasons,
            error: evaluation.error,
            policy_sha256: evaluation.policy_sha256,
            input: serde_json::to_string_pretty(&input).unwrap_or_default(),
        })
    }
}

/// The trial's sample action as the execute door would take it.
pub fn trial_request(
    trial: &app::model::PolicyTrial,
    max_body_bytes: usize,
) -> Result<ProxyRequest, app::error::AppError> {
    crate::call::request::ExecuteRequest {
        method: trial.method.clone(),
        url: trial.url.clone(),
        headers: trial.headers.clone(),
        body: trial.body.clone(),
        body_base64: None,
        secret: None,
        cost_micros: trial.cost_micros,
        idempotency_key: None,
        action: None,
        follow_redirects: false,
    }
    .into_proxy_request(max_body_bytes)
}
