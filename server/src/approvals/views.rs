//! What the sponsor and the agent see: one approval in full ([`ApprovalService::get`],
//! its sealed request opened, credentials masked), a page of them from their plain
//! columns ([`ApprovalService::list`]), and the agent's own view and long-poll
//! ([`ApprovalService::wait_for_agent`]), which waits on the approval's events
//! rather than a tight loop, a bounded number per agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::error::AppError;
use app::model::{
    AgentApprovalView, ApprovalHeader, ApprovalMcp, ApprovalOutcome, ApprovalQuery, ApprovalStatus,
    ApprovalView, GrantView, Page,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use entity::{agents, approvals};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::json;
use uuid::Uuid;

use super::grants::default_prefix;
use super::sealed::{ParkedRequest, outcome_context};
use super::summary::{Summary, summaries};
use super::{ApprovalService, WAIT_RECHECK, answer, not_found, target};
use crate::db::internal;

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// `Retry-After` for a wait refused because the agent holds too many.
const WAIT_RETRY_AFTER_SECS: u64 = 5;
/// Header names whose values are credentials: never shown to the sponsor.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "x-api-key"];

/// One held long-poll; gives its place back when dropped.
struct WaitSlot {
    waits: Arc<Mutex<HashMap<Uuid, usize>>>,
    agent_id: Uuid,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = waits.get_mut(&self.agent_id) {
            *n -= 1;
            if *n == 0 {
                waits.remove(&self.agent_id);
            }
        }
    }
}

impl ApprovalService {
    /// The sponsor's approval `id` (expired first if it is due), or 404.
    pub(super) async fn owned(&self, sponsor_id: Uuid, id: Uuid) -> Result<approvals::Model, AppError> {
        self.expire_due(Some(approvals::Column::Id.eq(id))).await?;
        approvals::Entity::find_by_id(id)
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)
    }

    /// One approval in full: the sealed request is opened to show its headers
    /// (credentials masked) and whole body.
    pub async fn get(&self, sponsor_id: Uuid, id: Uuid) -> Result<ApprovalView, AppError> {
        let row = self.owned(sponsor_id, id).await?;
        let names = crate::agents::names(&self.db, &[row.agent_id], false).await?;
        let parked = self.open(&row)?;
        let injection = match &parked.secret {
            Some(name) => self.injection_of(row.sponsor_id, name).await?,
            None => None,
        };
        let mut view = self.view(Summary::from(&row), &names, Some(parked.request_id.clone()))?;
        let query_param = match &injection {
            Some(Injected::Query(p)) => Some(p.as_str()),
            _ => None,
        };
        view.target = target::target_of(&row.url, query_param);
        view.headers = Some(shown_headers(&parked, injection.as_ref()));
        view.mcp = shown_mcp(&parked);
        view.approved_by = self.votes(id).await?;
        let body = parked.body();
        match String::from_utf8(body) {
            Ok(text) => view.body = Some(text),
            Err(e) => view.body_base64 = Some(B64.encode(e.as_bytes())),
        }
        Ok(view)
    }

    /// Where the sponsor's secret `name` goes, if it exists.
    async fn injection_of(&self, sponsor_id: Uuid, name: &str) -> Result<Option<Injected>, AppError> {
        let row: Option<(Option<String>, Option<String>)> = entity::secrets::Entity::find()
            .select_only()
            .column(entity::secrets::Column::InjectHeader)
            .column(entity::secrets::Column::InjectQueryParam)
            .filter(entity::secrets::Column::SponsorId.eq(sponsor_id))
            .filter(entity::secrets::Column::Name.eq(name))
            .into_tuple()
            .one(&self.db)
            .await
            .map_err(internal)?;
        Ok(match row {
            Some((Some(header), _)) => Some(Injected::Header(header.to_ascii_lowercase())),
            Some((None, Some(param))) => Some(Injected::Query(param)),
            _ => None,
        })
    }

    pub async fn list(&self, sponsor_id: Uuid, query: ApprovalQuery) -> Result<Page<ApprovalView>, AppError> {
        let limit = match query.limit {
            Some(n) if !(1..=MAX_PAGE).contains(&n) => {
                return Err(AppError::bad_request("invalid_limit", format!("limit must be 1 to {MAX_PAGE}")));
            }
            limit => limit.unwrap_or(DEFAULT_PAGE),
        };
        self.expire_due(Some(approvals::Column::SponsorId.eq(sponsor_id))).await?;
        let mut find = summaries()
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .order_by_desc(approvals::Column::Id)
            .limit(u64::from(limit) + 1);
        if let Some(status) = query.status.as_deref().filter(|s| !s.is_empty()) {
            let status = ApprovalStatus::parse(status).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_status",
                    "status must be pending, approved, rejected or expired",
                )
            })?;
            find = find.filter(approvals::Column::Status.eq(status.as_str()));
        }
        if let Some(agent_id) = query.agent_id {
            find = find.filter(approvals::Column::AgentId.eq(agent_id));
        }
        if let Some(cursor) = query.cursor.as_deref().filter(|c| !c.is_empty()) {
            let after: Uuid = cursor.parse().map_err(|_| {
                AppError::bad_request("invalid_cursor", "cursor is not one this API returned")
            })?;
            find = find.filter(approvals::Column::Id.lt(after));
        }
        let mut rows = find.into_model::<Summary>().all(&self.db).await.map_err(internal)?;
        let next_cursor = (rows.len() > limit as usize).then(|| {
            rows.truncate(limit as usize);
            rows.last().map(|a| a.id.to_string())
        });
        let agent_ids: Vec<Uuid> = rows.iter().map(|r| r.agent_id).collect();
        let names = crate::agents::names(&self.db, &agent_ids, false).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let request_id = self.request_id_of(&row).await?;
            let mut view = self.view(row, &names, Some(request_id))?;
            view.target = target::target_of(&view.url, None);
            items.push(view);
        }
        Ok(Page { items, next_cursor: next_cursor.flatten() })
    }

    /// The agent's own view of an approval it asked for (404 for anyone else's).
    /// Reads plain columns only (and the stored outcome once there is one).
    pub async fn for_agent(&self, agent_id: Uuid, id: Uuid) -> Result<AgentApprovalView, AppError> {
        self.expire_due(Some(approvals::Column::Id.eq(id))).await?;
        let row = summaries()
            .filter(approvals::Column::Id.eq(id))
            .filter(approvals::Column::AgentId.eq(agent_id))
            .into_model::<Summary>()
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        Ok(AgentApprovalView {
            approval_id: row.id,
            status: status_of(&row)?,
            request_id: self.request_id_of(&row).await?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            outcome: self.outcome_of(&row),
            reason: (row.status == ApprovalStatus::Rejected.as_str())
                .then_some(row.decision_reason)
                .flatten(),
        })
    }

    /// The agent's long-poll: [`Self::for_agent`], held up to `wait` until the
    /// approval is settled. Waits on the approval's events (published on every
    /// replica through the event bus), its expiry and a [`WAIT_RECHECK`] safety
    /// re-read — never a tight loop. An agent holding `max_waits` waits already gets
    /// `429 approval_waits_exceeded` with `Retry-After`.
    pub async fn wait_for_agent(
        &self,
        agent: &agents::Model,
        id: Uuid,
        wait: Duration,
        max_waits: usize,
    ) -> Result<AgentApprovalView, AppError> {
        let view = self.for_agent(agent.id, id).await?;
        if wait.is_zero() || settled(&view) {
            return Ok(view);
        }
        let _slot = self.wait_slot(agent.id, max_waits)?;
        // Subscribed before the re-read: a decision in between is not missed.
        let mut events = self.events.subscribe(agent.sponsor_id, None);
        let deadline = tokio::time::Instant::now() + wait;
        let mut view = self.for_agent(agent.id, id).await?;
        let mut bus_open = true;
        loop {
            let at = tokio::time::Instant::now();
            if settled(&view) || at >= deadline {
                return Ok(view);
            }
            let mut wake = deadline.min(at + WAIT_RECHECK);
            if view.status == ApprovalStatus::Pending
                && let Some(expires) = view.expires_at
            {
                let left = (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(20);
                wake = wake.min(at + left);
            }
            tokio::select! {
                event = events.next(), if bus_open => match event {
                    Some(e) if e.link.approval_id == Some(id) => {}
                    Some(_) => continue,
                    None => {
                        bus_open = false;
                        continue;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
            view = self.for_agent(agent.id, id).await?;
        }
    }

    fn wait_slot(&self, agent_id: Uuid, max_waits: usize) -> Result<WaitSlot, AppError> {
        let mut waits = self.waits.lock().unwrap_or_else(|p| p.into_inner());
        let held = waits.entry(agent_id).or_insert(0);
        if *held >= max_waits {
            if *held == 0 {
                waits.remove(&agent_id);
            }
            return Err(AppError {
                retry_after_secs: Some(WAIT_RETRY_AFTER_SECS),
                ..AppError::new(
                    429,
                    "approval_waits_exceeded",
                    format!(
                        "this agent already holds {max_waits} approval waits; retry later or poll without ?wait="
                    ),
                )
            });
        }
        *held += 1;
        Ok(WaitSlot { waits: self.waits.clone(), agent_id })
    }

    pub async fn pending_count(&self, sponsor_id: Uuid) -> Result<u64, AppError> {
        use sea_orm::PaginatorTrait;
        approvals::Entity::find()
            .filter(approvals::Column::SponsorId.eq(sponsor_id))
            .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
            .count(&self.db)
            .await
            .map_err(internal)
    }

    /// A stored outcome, opened (bounded: see [`answer`]).
    fn outcome_of(&self, row: &Summary) -> Option<ApprovalOutcome> {
        let stored = row.outcome_json.as_deref()?;
        let (status, body) = match answer::open(&self.vault, &outcome_context(row.id), stored) {
            answer::Opened::Answer { status, body } | answer::Opened::Pruned { status, body } => {
                (status, body)
            }
            answer::Opened::Legacy(v) => {
                (v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0), v["body"].clone())
            }
            answer::Opened::Broken => {
                tracing::error!(approval = %row.id, "a stored approval outcome could not be opened (wrong key or tampered row)");
                (500, json!({"decision": "error", "reason": "the stored outcome could not be read"}))
            }
        };
        Some(ApprovalOutcome { status, body, audit_seq: row.outcome_audit_seq })
    }

    /// The view of a row from its plain columns; `get` adds the sealed details.
    fn view(
        &self,
        row: Summary,
        names: &HashMap<Uuid, String>,
        request_id: Option<String>,
    ) -> Result<ApprovalView, AppError> {
        let header_names: Vec<String> =
            row.header_names.as_deref().and_then(|h| serde_json::from_str(h).ok()).unwrap_or_default();
        let grant = match (row.grant_max_actions, row.grant_until) {
            (Some(max_actions), Some(until)) => Some(GrantView {
                max_actions,
                used_actions: row.grant_used_actions,
                until,
                max_micros: row.grant_max_micros,
                spent_micros: row.grant_spent_micros,
                path_prefix: row
                    .grant_path_prefix
                    .clone()
                    .or_else(|| url::Url::parse(&row.url).ok().map(|u| default_prefix(u.path()))),
                secret_name: row.secret_name.clone(),
            }),
            _ => None,
        };
        Ok(ApprovalView {
            id: row.id,
            agent_id: row.agent_id,
            agent_name: names.get(&row.agent_id).cloned().unwrap_or_default(),
            status: status_of(&row)?,
            outcome: self.outcome_of(&row),
            method: row.method,
            target: None,
            url: row.url,
            header_names,
            headers: None,
            body: None,
            body_base64: None,
            body_preview: None,
            body_bytes: u64::try_from(row.body_bytes).unwrap_or(0),
            action_label: row.action_label,
            secret_name: row.secret_name,
            cost_micros: row.cost_micros,
            policy_reasons: serde_json::from_str(&row.policy_reasons).unwrap_or_default(),
            trust_at_request: row.trust_at_request,
            request_hash: row.request_hash,
            request_id: request_id.unwrap_or_default(),
            created_at: row.created_at,
            expires_at: row.expires_at,
            decided_at: row.decided_at,
            decided_by: row.decided_by,
            decision_reason: row.decision_reason,
            grant,
            mcp: None,
            approvers_required: u32::try_from(row.approvers_required).unwrap_or(1).max(1),
            approved_by: Vec::new(),
        })
    }
}

/// The MCP tool call a parked request is, if it is one: what the sponsor approves.
fn shown_mcp(parked: &ParkedRequest) -> Option<ApprovalMcp> {
    parked.mcp.as_ref().map(|call| ApprovalMcp {
        server: call.server.clone(),
        method: call.method.clone(),
        tool: call.tool.clone(),
        arguments: call.arguments.clone(),
    })
}

/// Where a vault secret is injected.
enum Injected {
    Header(String),
    Query(String),
}

/// The headers a parked call will send, as the sponsor sees them: the agent's, in
/// order, credential values masked; a header the secret injects replaces the
/// agent's of that name and is shown masked, marked `injected`.
fn shown_headers(parked: &ParkedRequest, injection: Option<&Injected>) -> Vec<ApprovalHeader> {
    let injected = match injection {
        Some(Injected::Header(h)) => Some(h.as_str()),
        _ => None,
    };
    let mut out: Vec<ApprovalHeader> = parked
        .headers
        .iter()
        .filter(|(name, _)| Some(name.to_ascii_lowercase().as_str()) != injected)
        .map(|(name, value)| {
            let masked = CREDENTIAL_HEADERS.contains(&name.to_ascii_lowercase().as_str());
            ApprovalHeader {
                name: name.clone(),
                value: if masked { target::MASK.to_owned() } else { value.clone() },
                masked,
                injected: false,
            }
        })
        .collect();
    if let Some(name) = injected {
        let secret = parked.secret.as_deref().unwrap_or_default();
        out.push(ApprovalHeader {
            name: name.to_owned(),
            value: format!("{} (vault secret \"{secret}\")", target::MASK),
            masked: true,
            injected: true,
        });
    }
    out
}

/// Settled: nothing more will change for the agent.
pub fn settled(v: &AgentApprovalView) -> bool {
    match v.status {
        ApprovalStatus::Pending => false,
        ApprovalStatus::Approved => v.outcome.is_some(),
        ApprovalStatus::Rejected | ApprovalStatus::Expired => true,
    }
}

fn status_of(row: &Summary) -> Result<ApprovalStatus, AppError> {
    ApprovalStatus::parse(&row.status).ok_or_else(|| {
        tracing::error!(approval = %row.id, status = %row.status, "unknown approval status");
        AppError::internal()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::sealed::tests::request;

    #[test]
    fn shown_headers_mask_credentials_and_the_injected_secret() {
        let parked = ParkedRequest::of(&request(), "req_1");
        let shown = shown_headers(&parked, Some(&Injected::Header("x-trace".into())));
        let auth = shown.iter().find(|h| h.name == "authorization").unwrap();
        assert!(auth.masked && auth.value == target::MASK, "the agent's credential is masked");
        let injected: Vec<_> = shown.iter().filter(|h| h.name == "x-trace").collect();
        assert_eq!(injected.len(), 1, "the agent's header of that name is replaced");
        assert!(injected[0].injected && injected[0].masked && !injected[0].value.contains('7'));
        let plain = shown_headers(&parked, None);
        assert_eq!(plain.iter().find(|h| h.name == "x-trace").unwrap().value, "7");
    }

    #[test]
    fn a_parked_tool_call_shows_its_tool_and_arguments() {
        assert_eq!(shown_mcp(&ParkedRequest::of(&request(), "req_1")), None, "not an MCP call");
        let at = chrono::Utc::now();
        let conn = entity::connections::Model {
            id: Uuid::now_v7(),
            sponsor_id: Uuid::now_v7(),
            name: "notes".into(),
            base_url: "https://mcp.example.com/mcp".into(),
            secret_id: None,
            cost_micros: 0,
            pricing: None,
            rate_limits: None,
            kind: crate::connections::KIND_MCP.into(),
            mcp_tools: None,
            record_arguments: false,
            created_at: at,
            updated_at: at,
        };
        let call = crate::call::mcp::McpCall::call_tool("notes", "delete_note", json!({"name": "old"}), None);
        let parked = ParkedRequest::of(&crate::mcp::request_for(&conn, None, call), "req_2");
        // Sealed and opened again, as `get` reads it.
        let parked: ParkedRequest = serde_json::from_slice(&serde_json::to_vec(&parked).unwrap()).unwrap();
        assert_eq!(
            shown_mcp(&parked),
            Some(ApprovalMcp {
                server: "notes".into(),
                method: "tools/call".into(),
                tool: Some("delete_note".into()),
                arguments: json!({"name": "old"}),
            })
        );
    }
}
