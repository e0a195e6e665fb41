//! Human-in-the-loop approvals: a request the policy marks `require_approval` is
//! parked here, exactly as the agent sent it, until its sponsor approves, rejects
//! or lets it expire.
//!
//! **Exact and sealed.** The parked request (method, URL, headers with their
//! values, body, secret name, cost) is serialised and sealed with the vault's
//! AES-256-GCM key under the approval's id, so nothing an agent sent — its own
//! credentials included — is stored in clear, and a row copied elsewhere does not
//! open. Its SHA-256 (the pipeline's request hash) is stored beside it and checked
//! again before the approved call is performed: what runs is what was approved.
//! A body larger than [`MAX_PARKED_BODY_BYTES`] is not parked (`approval_body_too_large`).
//!
//! **Cheap to list and to wait on.** What lists and polls need (request id, header
//! names, body size, method, URL, status) sits in plain columns: the sealed request
//! is opened only to perform it and to show one approval in full. An agent's
//! long-poll waits on a notification (the approval's events, which reach every
//! replica through the event bus, Redis included), re-reading the row only when
//! something happened, at its expiry, or every [`WAIT_RECHECK`] as a safety net;
//! each agent may hold only so many waits at once (`429 approval_waits_exceeded`).
//!
//! **Exactly once.** Every transition is one conditional UPDATE from `pending`
//! (`approve`, `reject`, `expire`), so of two sponsors, two replicas or a sponsor
//! and the expiry janitor racing, exactly one wins; only the approving winner
//! performs the call.
//!
//! **Grants.** An approval may carry a scoped grant: up to N more calls with the
//! same method, origin (scheme, host, port), vault secret and path prefix within T
//! minutes, for at most X micro-units in total. Using one is also a single
//! conditional UPDATE, so a grant cannot be overdrawn.
//!
//! **Outcomes** are stored bounded, hashed and sealed ([`answer`]), and their bodies
//! are dropped after [`answer::OUTCOME_RETENTION`].

pub mod answer;
pub mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::error::AppError;
use app::model::{
    AgentApprovalView, ApprovalHeader, ApprovalOutcome, ApprovalQuery, ApprovalStatus, ApprovalView,
    ApproveRequest, GrantView, Page, RejectRequest,
};
use app::money::MAX_MICROS;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use entity::{agents, approvals};
use http::{HeaderName, HeaderValue, Method};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::query::seq_of;
use crate::audit::{Appended, AuditEntry, AuditLog};
use crate::call::interrupted_answer;
use crate::call::request::{Origin, ProxyRequest};
use crate::events::{self, Event, EventBus};
use crate::secrets::vault::Vault;
use crate::storage::{canonical_json, internal, now};
use crate::trust::{TrustEvent, TrustService};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;
/// The largest body a request may have to be parked for approval (1 MiB).
pub const MAX_PARKED_BODY_BYTES: usize = 1 << 20;
pub const MAX_GRANT_ACTIONS: i32 = 1000;
pub const MAX_GRANT_MINUTES: i32 = 24 * 60;
const MAX_REASON_CHARS: usize = 500;
const MAX_PATH_PREFIX_CHARS: usize = 2048;
/// A waiting poll re-reads its approval at least this often, in case a decision's
/// notification was lost (another replica without a shared event bus).
pub const WAIT_RECHECK: Duration = Duration::from_secs(5);
/// `Retry-After` for a wait refused because the agent holds too many.
const WAIT_RETRY_AFTER_SECS: u64 = 5;
/// Event published when an approved call's outcome is stored (it wakes the agent's long-poll).
pub const APPROVAL_PERFORMED: &str = "approval.performed";
/// Header names whose values are credentials: never shown to the sponsor.
const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "x-api-key"];

/// The parked request: everything needed to perform it again, byte for byte.
/// (No `Debug`: it holds the agent's header values.)
#[derive(Clone, Serialize, Deserialize)]
struct ParkedRequest {
    request_id: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body_base64: String,
    secret: Option<String>,
    declared_cost_micros: i64,
    minimum_cost_micros: i64,
    label: Option<String>,
    follow_redirects: bool,
    connection: Option<String>,
}

impl ParkedRequest {
    fn of(request: &ProxyRequest, request_id: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            method: request.method.as_str().to_owned(),
            url: request.url.clone(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body_base64: B64.encode(&request.body),
            secret: request.secret.clone(),
            declared_cost_micros: request.declared_cost_micros,
            minimum_cost_micros: request.minimum_cost_micros,
            label: request.label.clone(),
            follow_redirects: request.follow_redirects,
            connection: match &request.origin {
                Origin::Gateway { connection } => Some(connection.clone()),
                Origin::Execute => None,
            },
        }
    }

    fn body(&self) -> Vec<u8> {
        B64.decode(&self.body_base64).unwrap_or_default()
    }

    /// The request to perform. Answers are always read whole: the agent collects
    /// them later from the approval, even for a gateway call.
    fn into_request(self) -> Result<ProxyRequest, String> {
        let method = Method::from_bytes(self.method.as_bytes()).map_err(|_| "stored method is invalid")?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| "stored header name is invalid")?;
            let value = HeaderValue::from_str(v).map_err(|_| "stored header value is invalid")?;
            headers.push((name, value));
        }
        let body = Bytes::from(self.body());
        Ok(ProxyRequest {
            method,
            url: self.url,
            headers,
            body,
            secret: self.secret,
            declared_cost_micros: self.declared_cost_micros,
            minimum_cost_micros: self.minimum_cost_micros,
            idempotency_key: None,
            label: self.label,
            follow_redirects: self.follow_redirects,
            stream_response: false,
            origin: match self.connection {
                Some(connection) => Origin::Gateway { connection },
                None => Origin::Execute,
            },
        })
    }
}

/// Where a freshly parked request waits.
#[derive(Debug, Clone)]
pub struct Parked {
    pub approval_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub audit_seq: i64,
}

/// An approved request, claimed for performing by the caller that won the race.
pub struct Claimed {
    pub approval: approvals::Model,
    pub request_id: String,
    pub request: ProxyRequest,
}

#[derive(Clone)]
pub struct ApprovalService {
    db: sea_orm::DatabaseConnection,
    audit: AuditLog,
    events: EventBus,
    vault: Vault,
    trust: TrustService,
    ttl: Option<Duration>,
    /// Long-polls each agent holds right now (for the per-agent cap).
    waits: Arc<Mutex<HashMap<Uuid, usize>>>,
}

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

/// Every column but the sealed request: what lists, polls and the janitor read.
#[derive(Debug, Clone, FromQueryResult)]
struct Summary {
    id: Uuid,
    sponsor_id: Uuid,
    agent_id: Uuid,
    status: String,
    request_hash: String,
    method: String,
    url: String,
    action_label: Option<String>,
    secret_name: Option<String>,
    cost_micros: i64,
    policy_reasons: String,
    trust_at_request: i32,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    decided_at: Option<DateTime<Utc>>,
    decided_by: Option<Uuid>,
    decision_reason: Option<String>,
    outcome_json: Option<String>,
    outcome_audit_seq: Option<i64>,
    grant_max_actions: Option<i32>,
    grant_used_actions: i32,
    grant_until: Option<DateTime<Utc>>,
    grant_max_micros: Option<i64>,
    grant_spent_micros: i64,
    request_id: Option<String>,
    header_names: Option<String>,
    body_bytes: i64,
    grant_path_prefix: Option<String>,
}

impl From<&approvals::Model> for Summary {
    fn from(m: &approvals::Model) -> Self {
        Self {
            id: m.id,
            sponsor_id: m.sponsor_id,
            agent_id: m.agent_id,
            status: m.status.clone(),
            request_hash: m.request_hash.clone(),
            method: m.method.clone(),
            url: m.url.clone(),
            action_label: m.action_label.clone(),
            secret_name: m.secret_name.clone(),
            cost_micros: m.cost_micros,
            policy_reasons: m.policy_reasons.clone(),
            trust_at_request: m.trust_at_request,
            created_at: m.created_at,
            expires_at: m.expires_at,
            decided_at: m.decided_at,
            decided_by: m.decided_by,
            decision_reason: m.decision_reason.clone(),
            outcome_json: m.outcome_json.clone(),
            outcome_audit_seq: m.outcome_audit_seq,
            grant_max_actions: m.grant_max_actions,
            grant_used_actions: m.grant_used_actions,
            grant_until: m.grant_until,
            grant_max_micros: m.grant_max_micros,
            grant_spent_micros: m.grant_spent_micros,
            request_id: m.request_id.clone(),
            header_names: m.header_names.clone(),
            body_bytes: m.body_bytes,
            grant_path_prefix: m.grant_path_prefix.clone(),
        }
    }
}

/// Rows as [`Summary`]: the sealed request is never read.
fn summaries() -> sea_orm::Select<approvals::Entity> {
    use approvals::Column as C;
    approvals::Entity::find().select_only().columns([
        C::Id,
        C::SponsorId,
        C::AgentId,
        C::Status,
        C::RequestHash,
        C::Method,
        C::Url,
        C::ActionLabel,
        C::SecretName,
        C::CostMicros,
        C::PolicyReasons,
        C::TrustAtRequest,
        C::CreatedAt,
        C::ExpiresAt,
        C::DecidedAt,
        C::DecidedBy,
        C::DecisionReason,
        C::OutcomeJson,
        C::OutcomeAuditSeq,
        C::GrantMaxActions,
        C::GrantUsedActions,
        C::GrantUntil,
        C::GrantMaxMicros,
        C::GrantSpentMicros,
        C::RequestId,
        C::HeaderNames,
        C::BodyBytes,
        C::GrantPathPrefix,
    ])
}

/// The request id shown for a parked request that no key opens.
pub const UNREADABLE_REQUEST_ID: &str = "req_unreadable";

fn context(id: Uuid) -> String {
    format!("aegis-approval:v1:{id}")
}

fn outcome_context(id: Uuid) -> String {
    format!("aegis-approval-outcome:v1:{id}")
}

/// `scheme://host:port` of a URL, lower-cased, the port explicit.
fn origin_of(url: &url::Url) -> Option<String> {
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?
    ))
}

/// Whether `path` lies under `prefix`: equal, or `prefix` ends with `/` and starts
/// `path`, or `path` continues `prefix` with a `/` (so `/v1` covers `/v1/x`, not `/v10`).
pub fn path_covered(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The default path prefix of a grant: the approved path up to its last `/`.
fn default_prefix(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => path[..=i].to_owned(),
        None => "/".to_owned(),
    }
}

/// Not `/`, `?`, `#`, a dot segment or an escape: a literal path prefix as `url` normalises paths.
fn valid_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix.chars().count() <= MAX_PATH_PREFIX_CHARS
        && !prefix.contains(['?', '#', '\\', '%'])
        && !prefix.chars().any(char::is_control)
        && !prefix.split('/').any(|seg| seg == "." || seg == "..")
}

fn not_found() -> AppError {
    AppError::not_found("approval")
}

fn host_of(url: &str) -> Option<String> {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
}

fn bounded_reason(reason: Option<String>) -> Option<String> {
    reason.map(|r| r.trim().chars().take(MAX_REASON_CHARS).collect::<String>()).filter(|r| !r.is_empty())
}

impl ApprovalService {
    pub fn new(
        db: sea_orm::DatabaseConnection,
        audit: AuditLog,
        events: EventBus,
        vault: Vault,
        trust: TrustService,
        ttl: Option<Duration>,
    ) -> Self {
        Self { db, audit, events, vault, trust, ttl, waits: Arc::default() }
    }

    /// The vault stored answers are sealed with (idempotency records use it too).
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    fn seal(&self, id: Uuid, parked: &ParkedRequest) -> String {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(parked).unwrap_or_default());
        let (nonce, sealed) = self.vault.seal_bytes(&context(id), &plain);
        canonical_json(&json!({"v": 1, "nonce": hex::encode(nonce), "sealed": B64.encode(sealed)}))
    }

    fn open(&self, row: &approvals::Model) -> Result<ParkedRequest, AppError> {
        let fail = || {
            tracing::error!(approval = %row.id, "a parked request could not be opened (wrong key or tampered row)");
            AppError::internal()
        };
        let stored: Value = serde_json::from_str(&row.request_json).map_err(|_| fail())?;
        let nonce = stored["nonce"].as_str().and_then(|n| hex::decode(n).ok()).ok_or_else(fail)?;
        let sealed = stored["sealed"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(fail)?;
        let plain = self.vault.open_bytes(&context(row.id), &nonce, &sealed).map_err(|_| fail())?;
        serde_json::from_slice(&plain).map_err(|_| fail())
    }

    /// The request id of a row: its column, or (a row parked before the column
    /// existed) from its sealed request, opened once; [`UNREADABLE_REQUEST_ID`] when
    /// that cannot be opened.
    async fn request_id_of(&self, row: &Summary) -> Result<String, AppError> {
        if let Some(id) = &row.request_id {
            return Ok(id.clone());
        }
        let full = approvals::Entity::find_by_id(row.id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        // A row no key opens (`open` logs it) must not break a whole list, a poll
        // or the janitor's sweep (issue #16, item 24): it is named as unreadable.
        Ok(self.open(&full).map(|p| p.request_id).unwrap_or_else(|_| UNREADABLE_REQUEST_ID.to_owned()))
    }

    /// Parks `request` and writes `entry` (the pipeline's `approval.requested`
    /// record) in the same transaction. A body over [`MAX_PARKED_BODY_BYTES`] is
    /// refused (413 `approval_body_too_large`) before anything is written.
    pub async fn park(
        &self,
        agent: &agents::Model,
        request: &ProxyRequest,
        request_id: &str,
        estimate_micros: i64,
        reasons: &[String],
        entry: AuditEntry,
    ) -> Result<Parked, AppError> {
        if request.body.len() > MAX_PARKED_BODY_BYTES {
            return Err(AppError::new(
                413,
                "approval_body_too_large",
                format!(
                    "this call needs approval and its body ({} bytes) is larger than an approval can hold ({MAX_PARKED_BODY_BYTES} bytes)",
                    request.body.len()
                ),
            ));
        }
        let id = Uuid::now_v7();
        let at = now();
        let expires_at = self.ttl.map(|ttl| at + chrono::Duration::from_std(ttl).unwrap_or_default());
        let mut header_names: Vec<String> =
            request.headers.iter().map(|(k, _)| k.as_str().to_ascii_lowercase()).collect();
        header_names.sort();
        header_names.dedup();
        let mut txn = self.audit.begin().await?;
        approvals::ActiveModel {
            id: Set(id),
            sponsor_id: Set(agent.sponsor_id),
            agent_id: Set(agent.id),
            status: Set(ApprovalStatus::Pending.as_str().into()),
            request_hash: Set(request.request_hash()),
            request_json: Set(self.seal(id, &ParkedRequest::of(request, request_id))),
            method: Set(request.method.as_str().to_owned()),
            url: Set(request.url.clone()),
            action_label: Set(request.label.clone()),
            secret_name: Set(request.secret.clone()),
            cost_micros: Set(estimate_micros),
            policy_reasons: Set(serde_json::to_string(reasons).unwrap_or_else(|_| "[]".into())),
            trust_at_request: Set(agent.trust_score),
            created_at: Set(at),
            expires_at: Set(expires_at),
            decided_at: Set(None),
            decided_by: Set(None),
            decision_reason: Set(None),
            outcome_json: Set(None),
            outcome_audit_seq: Set(None),
            grant_max_actions: Set(None),
            grant_used_actions: Set(0),
            grant_until: Set(None),
            grant_max_micros: Set(None),
            grant_spent_micros: Set(0),
            request_id: Set(Some(request_id.to_owned())),
            header_names: Set(Some(serde_json::to_string(&header_names).unwrap_or_else(|_| "[]".into()))),
            body_bytes: Set(request.body.len() as i64),
            grant_path_prefix: Set(None),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        let mut detail: Value =
            entry.detail.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(json!({}));
        detail["approval_id"] = json!(id);
        detail["expires_at"] = json!(expires_at);
        let appended = txn.append(AuditEntry { detail: Some(canonical_json(&detail)), ..entry }).await?;
        txn.commit().await?;
        let event = Event::new(
            events::APPROVAL_REQUESTED,
            agent.sponsor_id,
            Some(agent.id),
            json!({"approval_id": id, "agent_name": agent.name, "method": request.method.as_str(),
                   "host": host_of(&request.url), "label": request.label, "cost_micros": estimate_micros,
                   "reasons": reasons, "expires_at": expires_at}),
        )
        .audit_seq(appended.seq)
        .approval(id);
        self.events.publish(event);
        Ok(Parked { approval_id: id, expires_at, audit_seq: appended.seq })
    }

    /// Uses one action of a live grant covering this call: same agent and method,
    /// same origin (scheme, host, port), same vault secret (or none for both), a
    /// path under the grant's prefix, time left, actions left, and money left if
    /// capped. Returns its id.
    pub async fn use_grant(
        &self,
        agent_id: Uuid,
        method: &str,
        url: &str,
        secret: Option<&str>,
        estimate_micros: i64,
    ) -> Result<Option<Uuid>, AppError> {
        let Some((origin, path)) =
            url::Url::parse(url).ok().and_then(|u| Some((origin_of(&u)?, u.path().to_owned())))
        else {
            return Ok(None);
        };
        let at = now();
        let mut find = summaries()
            .filter(approvals::Column::AgentId.eq(agent_id))
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::GrantUntil.gt(at))
            .filter(approvals::Column::Method.eq(method));
        find = match secret {
            Some(name) => find.filter(approvals::Column::SecretName.eq(name)),
            None => find.filter(approvals::Column::SecretName.is_null()),
        };
        let candidates = find
            .order_by_asc(approvals::Column::GrantUntil)
            .into_model::<Summary>()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let covers = |g: &Summary| {
            let Ok(granted) = url::Url::parse(&g.url) else { return false };
            let prefix = g.grant_path_prefix.clone().unwrap_or_else(|| default_prefix(granted.path()));
            origin_of(&granted).as_deref() == Some(origin.as_str()) && path_covered(&prefix, &path)
        };
        for grant in candidates.into_iter().filter(covers) {
            let used = approvals::Entity::update_many()
                .col_expr(
                    approvals::Column::GrantUsedActions,
                    Expr::col(approvals::Column::GrantUsedActions).add(1),
                )
                .col_expr(
                    approvals::Column::GrantSpentMicros,
                    Expr::col(approvals::Column::GrantSpentMicros).add(estimate_micros),
                )
                .filter(approvals::Column::Id.eq(grant.id))
                .filter(approvals::Column::GrantUntil.gt(at))
                .filter(
                    Expr::col(approvals::Column::GrantUsedActions)
                        .lt(Expr::col(approvals::Column::GrantMaxActions)),
                )
                .filter(
                    Condition::any().add(approvals::Column::GrantMaxMicros.is_null()).add(
                        Expr::col(approvals::Column::GrantSpentMicros)
                            .add(estimate_micros)
                            .lte(Expr::col(approvals::Column::GrantMaxMicros)),
                    ),
                )
                .exec(&self.db)
                .await
                .map_err(internal)?;
            if used.rows_affected == 1 {
                return Ok(Some(grant.id));
            }
        }
        Ok(None)
    }

    async fn owned(&self, sponsor_id: Uuid, id: Uuid) -> Result<approvals::Model, AppError> {
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
        let names = self.agent_names(&[row.agent_id]).await?;
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
        let names = self.agent_names(&agent_ids).await?;
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

    /// Moves a pending approval to `approved` (if it is still pending and not
    /// expired) and hands back the exact request for the caller to perform.
    pub async fn approve(
        &self,
        sponsor_id: Uuid,
        approver: Uuid,
        id: Uuid,
        input: ApproveRequest,
    ) -> Result<Claimed, AppError> {
        let grant = match &input.grant {
            None => None,
            Some(g) => {
                if !(1..=MAX_GRANT_ACTIONS).contains(&g.max_actions) {
                    return Err(AppError::validation(format!(
                        "grant.max_actions must be 1 to {MAX_GRANT_ACTIONS}"
                    )));
                }
                if !(1..=MAX_GRANT_MINUTES).contains(&g.minutes) {
                    return Err(AppError::validation(format!(
                        "grant.minutes must be 1 to {MAX_GRANT_MINUTES}"
                    )));
                }
                if g.max_micros.is_some_and(|m| !(0..=MAX_MICROS).contains(&m)) {
                    return Err(AppError::validation("grant.max_micros must be 0 or more"));
                }
                if g.path_prefix.as_deref().is_some_and(|p| !valid_prefix(p)) {
                    return Err(AppError::validation(
                        "grant.path_prefix must start with / and hold no ?, #, \\, %, control characters or dot segments",
                    ));
                }
                Some(g.clone())
            }
        };
        let reason = bounded_reason(input.reason);
        let row = self.owned(sponsor_id, id).await?;
        let path_prefix = match &grant {
            None => None,
            Some(g) => {
                let path = url::Url::parse(&row.url).map(|u| u.path().to_owned()).unwrap_or_default();
                let prefix = g.path_prefix.clone().unwrap_or_else(|| default_prefix(&path));
                if !path_covered(&prefix, &path) {
                    return Err(AppError::validation(format!(
                        "grant.path_prefix must cover the approved path ({path})"
                    )));
                }
                Some(prefix)
            }
        };
        let parked = self.open(&row)?;
        let request_id = parked.request_id.clone();
        // What runs is what was parked: checked before the approval is spent.
        let request = parked.into_request().map_err(|e| {
            tracing::error!(approval = %id, error = e, "parked request is unusable");
            AppError::internal()
        })?;
        if request.request_hash() != row.request_hash {
            tracing::error!(approval = %id, "parked request does not match its hash; refusing to perform it");
            return Err(AppError::conflict(
                "approval_tampered",
                "the stored request does not match its hash",
            ));
        }
        let at = now();
        let until = grant.as_ref().map(|g| at + chrono::Duration::minutes(i64::from(g.minutes)));
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Approved, at, approver, reason.clone())
            .col_expr(approvals::Column::GrantMaxActions, Expr::value(grant.as_ref().map(|g| g.max_actions)))
            .col_expr(approvals::Column::GrantUntil, Expr::value(until))
            .col_expr(
                approvals::Column::GrantMaxMicros,
                Expr::value(grant.as_ref().and_then(|g| g.max_micros)),
            )
            .col_expr(approvals::Column::GrantPathPrefix, Expr::value(path_prefix.clone()));
        let mut txn = self.claim(txn, update, sponsor_id, id, at).await?;
        let detail = json!({"approval_id": id, "approver": approver, "reason": reason,
                            "waited_ms": (at - row.created_at).num_milliseconds(),
                            "grant": grant.as_ref().map(|g| json!({"max_actions": g.max_actions, "until": until, "max_micros": g.max_micros,
                                                                   "path_prefix": path_prefix, "secret": row.secret_name}))});
        let appended =
            txn.append(decision_entry(&row, &request_id, "approval.approved", "allow", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Approved, reason.as_deref(), &appended);
        Ok(Claimed { approval: row, request_id, request })
    }

    /// Keeps what happened when the approved request was performed: bounded,
    /// hashed and sealed ([`answer::seal`]), then wakes the agent's long-poll.
    pub async fn record_outcome(&self, id: Uuid, status: u16, body: &Value, audit_seq: Option<i64>) {
        let outcome = answer::seal(&self.vault, &outcome_context(id), status, body);
        let stored = approvals::Entity::update_many()
            .col_expr(approvals::Column::OutcomeJson, Expr::value(outcome))
            .col_expr(approvals::Column::OutcomeAuditSeq, Expr::value(audit_seq))
            .filter(approvals::Column::Id.eq(id))
            .exec(&self.db)
            .await;
        if let Err(e) = stored {
            tracing::error!(approval = %id, error = %e, "could not store an approval's outcome (it is in the audit log)");
            return;
        }
        self.announce_performed(id, status).await;
    }

    async fn announce_performed(&self, id: Uuid, status: u16) {
        let owners: Option<(Uuid, Uuid)> = approvals::Entity::find_by_id(id)
            .select_only()
            .column(approvals::Column::SponsorId)
            .column(approvals::Column::AgentId)
            .into_tuple()
            .one(&self.db)
            .await
            .ok()
            .flatten();
        if let Some((sponsor_id, agent_id)) = owners {
            let event = Event::new(
                APPROVAL_PERFORMED,
                sponsor_id,
                Some(agent_id),
                json!({"approval_id": id, "status": "approved", "outcome_status": status}),
            )
            .approval(id);
            self.events.publish(event);
        }
    }

    /// Gives an outcome to approved calls whose performing replica stopped before
    /// keeping one (a crash mid-call; a caller hanging up no longer does it). Once
    /// `stale_after` (the reservation TTL: the call's budget hold, if it got one, has
    /// expired too) has passed since the approval, the call cannot still be running:
    /// the approval's outcome says it was interrupted, with what the audit log knows
    /// (its intent and outcome records, if any), audited as `approval.interrupted`.
    /// The agent polling it gets an answer instead of `approved` for ever. Returns
    /// how many were closed.
    pub async fn close_interrupted(&self, stale_after: Duration) -> Result<u64, AppError> {
        let cutoff = now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let stale = summaries()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::OutcomeJson.is_null())
            .filter(approvals::Column::DecidedAt.lt(cutoff))
            .limit(100)
            .into_model::<Summary>()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let mut closed = 0;
        for row in stale {
            let Ok(request_id) = self.request_id_of(&row).await else { continue };
            let intent = seq_of(&self.db, &request_id, "proxy.intent").await?;
            let performed = seq_of(&self.db, &request_id, "proxy.outcome").await?;
            let reason = "interrupted: the AEGIS process performing this approved call stopped before \
                          keeping its answer; intent_audit_seq and outcome_audit_seq say how far it got";
            let detail =
                json!({"approval_id": row.id, "intent_audit_seq": intent, "outcome_audit_seq": performed});
            let mut txn = self.audit.begin().await?;
            // Claimed only if still without an outcome (a late answer from a live
            // replica wins), the row first and the chain after, like every decision.
            let outcome = |audit_seq: Option<i64>| {
                let body = interrupted_answer(&request_id, audit_seq, intent, performed, reason);
                answer::seal(&self.vault, &outcome_context(row.id), 502, &body)
            };
            let store = |audit_seq: Option<i64>| {
                approvals::Entity::update_many()
                    .col_expr(approvals::Column::OutcomeJson, Expr::value(outcome(audit_seq)))
                    .col_expr(approvals::Column::OutcomeAuditSeq, Expr::value(audit_seq))
                    .filter(approvals::Column::Id.eq(row.id))
            };
            let won = store(None)
                .filter(approvals::Column::OutcomeJson.is_null())
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if !won {
                continue;
            }
            let appended = txn
                .append(decision_entry(&row, &request_id, "approval.interrupted", "error", detail))
                .await?;
            store(Some(appended.seq)).exec(txn.conn()).await.map_err(internal)?;
            txn.commit().await?;
            tracing::warn!(approval = %row.id, request = %request_id, "an approved call was interrupted; its approval now says so");
            self.announce_performed(row.id, 502).await;
            closed += 1;
        }
        Ok(closed)
    }

    /// Retention of approval outcomes ([`answer`]): drops the bodies of outcomes
    /// decided more than [`answer::OUTCOME_RETENTION`] ago (status and hash stay).
    /// Bounded work per call. Returns how many rows it changed. (With the
    /// idempotency records' retention: `Services::prune_stored_answers`.)
    pub async fn prune_outcomes(&self) -> Result<u64, AppError> {
        let mut changed = 0;
        let cutoff = now() - chrono::Duration::from_std(answer::OUTCOME_RETENTION).unwrap_or_default();
        let due: Vec<(Uuid, Option<String>)> = approvals::Entity::find()
            .select_only()
            .column(approvals::Column::Id)
            .column(approvals::Column::OutcomeJson)
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::DecidedAt.lt(cutoff))
            .filter(approvals::Column::OutcomeJson.is_not_null())
            .filter(approvals::Column::OutcomeJson.not_like("%\"pruned\":true%"))
            .limit(500)
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(internal)?;
        for (id, stored) in due {
            let Some(stored) = stored else { continue };
            let stub = match answer::open(&self.vault, &outcome_context(id), &stored) {
                answer::Opened::Legacy(v) => {
                    let status = v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
                    answer::pruned(&answer::seal(&self.vault, &outcome_context(id), status, &v["body"]))
                }
                _ => answer::pruned(&stored),
            };
            approvals::Entity::update_many()
                .col_expr(approvals::Column::OutcomeJson, Expr::value(stub))
                .filter(approvals::Column::Id.eq(id))
                .exec(&self.db)
                .await
                .map_err(internal)?;
            changed += 1;
        }
        Ok(changed)
    }

    pub async fn reject(
        &self,
        sponsor_id: Uuid,
        approver: Uuid,
        id: Uuid,
        input: RejectRequest,
    ) -> Result<ApprovalView, AppError> {
        let reason = bounded_reason(input.reason);
        let row = self.owned(sponsor_id, id).await?;
        let request_id = self.request_id_of(&Summary::from(&row)).await?;
        let at = now();
        let txn = self.audit.begin().await?;
        let update = decided(ApprovalStatus::Rejected, at, approver, reason.clone());
        let mut txn = self.claim(txn, update, sponsor_id, id, at).await?;
        let detail = json!({"approval_id": id, "approver": approver, "reason": reason,
                            "waited_ms": (at - row.created_at).num_milliseconds()});
        let appended =
            txn.append(decision_entry(&row, &request_id, "approval.rejected", "deny", detail)).await?;
        txn.commit().await?;
        self.announce_resolved(&row, ApprovalStatus::Rejected, reason.as_deref(), &appended);
        if let Some(agent) = agents::Entity::find_by_id(row.agent_id).one(&self.db).await.map_err(internal)?
            && let Err(e) = self.trust.record(&agent, TrustEvent::ApprovalRejected, Some(&request_id)).await
        {
            tracing::error!(approval = %id, error = %e.message, "trust update after a rejection failed");
        }
        self.get(sponsor_id, id).await
    }

    /// Applies a decision in `txn` if the approval is still pending and live, and
    /// hands the transaction back; otherwise ends it first (finding out why may
    /// expire the approval, which writes) and says why not.
    async fn claim(
        &self,
        txn: crate::audit::AuditTxn,
        update: sea_orm::UpdateMany<approvals::Entity>,
        sponsor_id: Uuid,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<crate::audit::AuditTxn, AppError> {
        let won =
            update.filter(pending_and_live(id, at)).exec(txn.conn()).await.map_err(internal)?.rows_affected
                == 1;
        if won {
            return Ok(txn);
        }
        drop(txn);
        Err(self.not_pending(sponsor_id, id).await)
    }

    /// Why a decision did not apply: it was already decided or has expired.
    async fn not_pending(&self, sponsor_id: Uuid, id: Uuid) -> AppError {
        match self.owned(sponsor_id, id).await {
            Ok(row) if row.status == ApprovalStatus::Expired.as_str() => {
                AppError::conflict("approval_expired", "this approval has expired")
            }
            Ok(row) => {
                AppError::conflict("approval_decided", format!("this approval is already {}", row.status))
            }
            Err(e) => e,
        }
    }

    /// Marks pending approvals past their expiry as `expired` (audited and
    /// announced). `scope` narrows the sweep. Returns how many expired.
    pub async fn expire_due(&self, scope: Option<sea_orm::sea_query::SimpleExpr>) -> Result<u64, AppError> {
        let at = now();
        let mut find = summaries()
            .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
            .filter(approvals::Column::ExpiresAt.lte(at));
        if let Some(scope) = scope {
            find = find.filter(scope);
        }
        let due = find.limit(500).into_model::<Summary>().all(&self.db).await.map_err(internal)?;
        let mut expired = 0;
        for row in due {
            let request_id = self.request_id_of(&row).await?;
            let mut txn = self.audit.begin().await?;
            let won = approvals::Entity::update_many()
                .col_expr(approvals::Column::Status, Expr::value(ApprovalStatus::Expired.as_str()))
                .col_expr(approvals::Column::DecidedAt, Expr::value(at))
                .filter(approvals::Column::Id.eq(row.id))
                .filter(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if !won {
                continue;
            }
            let detail = json!({"approval_id": row.id, "expires_at": row.expires_at,
                                "waited_ms": (at - row.created_at).num_milliseconds()});
            let appended =
                txn.append(decision_entry(&row, &request_id, "approval.expired", "deny", detail)).await?;
            txn.commit().await?;
            let event = Event::new(
                events::APPROVAL_EXPIRED,
                row.sponsor_id,
                Some(row.agent_id),
                json!({"approval_id": row.id, "status": "expired"}),
            )
            .audit_seq(appended.seq)
            .approval(row.id);
            self.events.publish(event);
            expired += 1;
        }
        Ok(expired)
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

    fn announce_resolved(
        &self,
        row: &approvals::Model,
        status: ApprovalStatus,
        reason: Option<&str>,
        appended: &Appended,
    ) {
        let event = Event::new(
            events::APPROVAL_RESOLVED,
            row.sponsor_id,
            Some(row.agent_id),
            json!({"approval_id": row.id, "status": status.as_str(), "reason": reason}),
        )
        .audit_seq(appended.seq)
        .approval(row.id);
        self.events.publish(event);
    }

    async fn agent_names(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, String>, AppError> {
        let rows: Vec<(Uuid, String)> = agents::Entity::find()
            .select_only()
            .column(agents::Column::Id)
            .column(agents::Column::Name)
            .filter(agents::Column::Id.is_in(ids.iter().copied()))
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows.into_iter().collect())
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
        })
    }
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

/// The columns every sponsor decision sets.
fn decided(
    status: ApprovalStatus,
    at: DateTime<Utc>,
    approver: Uuid,
    reason: Option<String>,
) -> sea_orm::UpdateMany<approvals::Entity> {
    approvals::Entity::update_many()
        .col_expr(approvals::Column::Status, Expr::value(status.as_str()))
        .col_expr(approvals::Column::DecidedAt, Expr::value(at))
        .col_expr(approvals::Column::DecidedBy, Expr::value(approver))
        .col_expr(approvals::Column::DecisionReason, Expr::value(reason))
}

/// `id` is still pending and (if it expires) not yet expired at `at`.
fn pending_and_live(id: Uuid, at: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(approvals::Column::Id.eq(id))
        .add(approvals::Column::Status.eq(ApprovalStatus::Pending.as_str()))
        .add(
            Condition::any()
                .add(approvals::Column::ExpiresAt.is_null())
                .add(approvals::Column::ExpiresAt.gt(at)),
        )
}

fn status_of(row: &Summary) -> Result<ApprovalStatus, AppError> {
    ApprovalStatus::parse(&row.status).ok_or_else(|| {
        tracing::error!(approval = %row.id, status = %row.status, "unknown approval status");
        AppError::internal()
    })
}

/// The audit record of a decision on an approval (never the request's headers or body).
fn decision_entry(
    row: &impl DecisionRow,
    request_id: &str,
    kind: &str,
    decision: &str,
    detail: Value,
) -> AuditEntry {
    let row = row.decision_row();
    let url = url::Url::parse(&row.url).ok();
    AuditEntry {
        sponsor_id: Some(row.sponsor_id),
        agent_id: Some(row.agent_id),
        request_id: Some(request_id.to_owned()),
        kind: kind.to_owned(),
        stage: Some("approval".into()),
        decision: Some(decision.to_owned()),
        method: Some(row.method.clone()),
        host: url.as_ref().and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase())),
        path: url.as_ref().map(|u| u.path().to_owned()),
        cost_micros: row.cost_micros,
        request_hash: Some(row.request_hash.clone()),
        detail: Some(canonical_json(&detail)),
        ..AuditEntry::default()
    }
}

/// A full row or its summary, for [`decision_entry`].
trait DecisionRow {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary>;
}

impl DecisionRow for Summary {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl DecisionRow for approvals::Model {
    fn decision_row(&self) -> std::borrow::Cow<'_, Summary> {
        std::borrow::Cow::Owned(Summary::from(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ProxyRequest {
        let input: crate::call::request::ExecuteRequest = serde_json::from_value(json!({
            "method": "post", "url": "https://api.example.com/v1/things?x=1",
            "headers": {"Authorization": "Bearer agent-own", "X-Trace": "7"},
            "body_base64": B64.encode([0u8, 1, 2, 255]), "secret": "gh", "cost_micros": 42,
            "action": "things.create", "follow_redirects": true
        }))
        .unwrap();
        input.into_proxy_request(1 << 20).unwrap()
    }

    #[test]
    fn a_parked_request_comes_back_exactly() {
        let original = request();
        let parked = ParkedRequest::of(&original, "req_1");
        let json = serde_json::to_vec(&parked).unwrap();
        let back: ParkedRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.request_id, "req_1");
        let restored = back.into_request().unwrap();
        assert_eq!(restored.request_hash(), original.request_hash(), "hash-bound: nothing changed");
        assert_eq!(restored.body, original.body);
        assert!(!restored.stream_response);
    }

    #[test]
    fn grant_prefixes_cover_whole_segments_only() {
        assert!(path_covered("/v1/", "/v1/things"));
        assert!(path_covered("/v1", "/v1/things") && path_covered("/v1", "/v1"));
        assert!(!path_covered("/v1", "/v10/x") && !path_covered("/v1/", "/v10"));
        assert!(!path_covered("/v1/", "/admin") && !path_covered("/v1/", "/v1"));
        assert_eq!(default_prefix("/v1/things"), "/v1/");
        assert_eq!(default_prefix("/"), "/");
        for bad in ["v1/", "/v1/../", "/./", "/v1?x", "/v1#", "/v1%2F", "/a\\b", "/a\nb"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
        assert!(valid_prefix("/") && valid_prefix("/v1/") && valid_prefix("/v1..x/"));
    }

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
    fn sealed_requests_open_only_under_their_own_id() {
        let vault = Vault::new(&[9u8; 32]).unwrap();
        let parked = ParkedRequest::of(&request(), "req_1");
        let plain = serde_json::to_vec(&parked).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (nonce, sealed) = vault.seal_bytes(&context(a), &plain);
        assert!(!sealed.windows(9).any(|w| w == b"agent-own"), "the agent's credential is not in clear");
        assert!(vault.open_bytes(&context(a), &nonce, &sealed).is_ok());
        assert!(
            vault.open_bytes(&context(b), &nonce, &sealed).is_err(),
            "a row moved to another id does not open"
        );
    }
}
