//! Stage `idempotency`: a call carrying an `idempotency_key` is claimed first; a
//! key seen before answers with the first answer, unchanged (`proxy/idempotency.rs`
//! keeps them, sealed and bounded). The answer a key keeps is the one the agent
//! got ([`Pipeline::render`]); a call that failed on storage gives its key back so
//! the agent can retry. Tested over HTTP in `tests/api/proxy.rs` and `faults.rs`.

use app::error::AppError;

use super::super::idempotency::{self, Claim};
use super::super::{Pipeline, Stage};
use crate::agents::AgentPrincipal;
use crate::call::outcome::{Outcome, ProxyResult};
use crate::call::request::ProxyRequest;

/// Runs the call once per key. `Err` only for a misused key (answered like any
/// other API error).
pub async fn once(
    p: &Pipeline,
    agent: &AgentPrincipal,
    request: ProxyRequest,
    request_id: String,
) -> Result<ProxyResult, AppError> {
    let Some(key) = request.idempotency_key.clone() else {
        return Ok(p.stages(agent, request, request_id, None).await);
    };
    let vault = p.approvals.vault();
    let ttl = p.wallets.reservation_ttl();
    let claim = match idempotency::claim(
        &p.db,
        vault,
        idempotency::Attempt {
            agent_id: agent.agent.id,
            key: &key,
            request_id: &request_id,
            request_hash: &request.request_hash(),
        },
        ttl,
        p.render,
    )
    .await
    {
        Ok(c) => c,
        // The key could not be claimed or read (storage unavailable): nothing happened.
        Err(e) if e.status >= 500 => return Ok(ProxyResult::storage_failure(request_id, &e)),
        Err(e) => return Err(e),
    };
    if let Claim::Replay { status, body } = claim {
        return Ok(ProxyResult {
            request_id: body["request_id"].as_str().unwrap_or_default().to_owned(),
            audit_seq: body["audit_seq"].as_i64(),
            reasons: vec![],
            outcome: Outcome::Replayed { status, body },
        });
    }
    let result = p.stages(agent, request, request_id, None).await;
    if matches!(result.outcome, Outcome::Failed { stage: Stage::Storage, .. }) {
        // Nothing happened: let the agent retry with the same key.
        idempotency::abandon(&p.db, agent.agent.id, &key).await;
    } else {
        let (status, body) = (p.render)(&result);
        if let Err(e) = idempotency::record(&p.db, vault, agent.agent.id, &key, status, &body).await {
            tracing::error!(error = %e.message, "could not record idempotent outcome");
        }
    }
    Ok(result)
}
