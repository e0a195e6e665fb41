//! Types shared by the dashboard (SSR and hydrated client) and the JSON API.
//!
//! Request types reject unknown fields so a typo in a client is an error, not a
//! silently ignored setting.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A signed-in member as the server sees it after checking the access token and
/// the membership in the organization the request acts in.
///
/// The organization's id is reachable only through [`SessionUser::scope`], which
/// checks the member's role against what the operation needs: there is no way to
/// scope a query to the organization without passing the role check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionUser {
    pub user_id: Uuid,
    /// The refresh-token family this access token belongs to.
    pub session_id: Uuid,
    /// The organization and the role in it; `None` for a person who belongs to no
    /// organization (they can still manage their account and accept invitations).
    membership: Option<(Uuid, Role)>,
}

impl SessionUser {
    pub fn new(user_id: Uuid, session_id: Uuid, org_id: Uuid, role: Role) -> Self {
        Self { user_id, session_id, membership: Some((org_id, role)) }
    }

    /// A person acting in no organization.
    pub fn without_organization(user_id: Uuid, session_id: Uuid) -> Self {
        Self { user_id, session_id, membership: None }
    }

    /// The role in the organization acted in (`viewer`, the weakest, when none).
    pub fn role(&self) -> Role {
        self.membership.map_or(Role::Viewer, |(_, role)| role)
    }

    /// The organization to act in, if this member's role allows `access`; else
    /// `403 forbidden_role`. The one role check of every sponsor operation.
    pub fn scope(&self, access: Access) -> Result<Uuid, crate::error::AppError> {
        let Some((org_id, role)) = self.membership else {
            return Err(crate::error::AppError::new(
                403,
                "no_organization",
                "you are not a member of any organization: accept an invitation first",
            ));
        };
        if role.allows(access) {
            Ok(org_id)
        } else {
            Err(crate::error::AppError::new(
                403,
                "forbidden_role",
                format!("the {} role cannot {}", role.as_str(), access.describe()),
            ))
        }
    }
}

/// A member's role in an organization, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything, changes nothing.
    Viewer,
    /// Reads everything and decides approvals.
    Approver,
    /// Everything but members.
    Admin,
    /// Everything.
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Approver, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The whole role matrix.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Read => true,
            Access::Decide => self >= Role::Approver,
            Access::Write => self >= Role::Admin,
            Access::Invite => self >= Role::Admin,
            Access::Members | Access::Settings => self == Role::Owner,
        }
    }
}

/// What an operation needs of the member's role (see [`Role::allows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// See the organization's agents, policies, secrets (never values), audit, …
    Read,
    /// Approve or reject a parked call.
    Decide,
    /// Change agents, secrets, policies, connections, wallets.
    Write,
    /// Invite people (as a role no stronger than one's own).
    Invite,
    /// Change members' roles, remove members.
    Members,
    /// Change the organization's settings (the two-person rule).
    Settings,
}

impl Access {
    fn describe(self) -> &'static str {
        match self {
            Access::Read => "read this organization",
            Access::Decide => "decide approvals",
            Access::Write => "change this organization's agents, secrets, policies or connections",
            Access::Invite => "invite members",
            Access::Members => "change or remove members",
            Access::Settings => "change the organization's settings",
        }
    }
}

/// Where a request came from, for throttling and the session list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
}

/// Answer to register, login and refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AuthResponse {
    #[serde(flatten)]
    pub tokens: TokenPair,
    pub user: UserView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub email: String,
    pub password: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Suspended,
    /// Deleted by its sponsor: keys revoked, history kept.
    Revoked,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Suspended => "suspended",
            AgentStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AgentStatus::Active),
            "suspended" => Some(AgentStatus::Suspended),
            "revoked" => Some(AgentStatus::Revoked),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub status: AgentStatus,
    /// Name of the policy that governs this agent.
    pub policy: String,
    /// 0 to 1000; new agents start at 500.
    pub trust_score: i32,
    /// The trust tier of `trust_score`: `untrusted` (< 300), `probation` (< 500),
    /// `standard` (< 700), `trusted` (< 900) or `verified`.
    pub tier: String,
    pub tags: Vec<String>,
    /// 0 means no limit.
    pub daily_limit_micros: i64,
    pub monthly_limit_micros: i64,
    /// The public part of the current key (`aegis_<key id>`), for recognising it.
    pub key_prefix: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_reason: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Tokens and requests per minute across all of the agent's calls.
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
}

/// `GET /api/agents/{id}/trust`: an agent's trust score, tier and recent changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TrustView {
    pub agent_id: Uuid,
    /// 0 to 1000.
    pub score: i32,
    /// `untrusted`, `probation`, `standard`, `trusted` or `verified`.
    pub tier: String,
    /// The latest changes, newest first (at most 100).
    pub history: Vec<TrustEventView>,
}

/// One change of an agent's trust score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TrustEventView {
    pub at: DateTime<Utc>,
    pub delta: i32,
    pub score_after: i32,
    /// `success`, `policy_deny`, `egress_block`, `budget_hit`, `breaker_trip`,
    /// `approval_rejected` or `decay`.
    pub reason: String,
}

/// Returned once, when an agent is created: the only time its key is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AgentCreated {
    pub agent: AgentView,
    /// `aegis_` + 64 hex digits. Shown this once; only its SHA-256 is stored.
    pub api_key: String,
}

/// Returned once, when a key is rotated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct KeyRotated {
    pub agent_id: Uuid,
    /// The new key, shown this once; every earlier key has stopped working.
    pub api_key: String,
    pub key_prefix: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Policy name; the built-in `default` policy when absent.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub daily_limit_micros: Option<i64>,
    #[serde(default)]
    pub monthly_limit_micros: Option<i64>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

/// A partial update: absent fields are left as they are; an empty description clears it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub daily_limit_micros: Option<i64>,
    #[serde(default)]
    pub monthly_limit_micros: Option<i64>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Tokens and requests per minute; `null` removes them.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<RateLimits>))]
    pub rate_limits: Option<Option<RateLimits>>,
    /// `mcp` only; `null` allows every tool again.
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Vec<String>>))]
    pub tools: Option<Option<Vec<String>>>,
    #[serde(default)]
    pub record_arguments: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PolicySummary {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub builtin: bool,
}

/// Keyset pagination: pass `next_cursor` back as `cursor` for the following page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct PageRequest {
    /// Page size: 1 to 200; 50 when absent. Anything else is `400 invalid_limit`.
    #[serde(default)]
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 200))]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page; absent for the first page.
    #[serde(default)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// How a secret is put into a request: a header built from `format` (where
/// `{secret}` stands for the value), or a query parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(untagged, deny_unknown_fields)]
pub enum Injection {
    Header {
        /// Header name, e.g. `Authorization`.
        header: String,
        /// The header's value, `{secret}` standing for the secret; `{secret}` when absent.
        #[serde(default = "default_injection_format")]
        format: String,
    },
    QueryParam {
        /// Query parameter name, e.g. `api_key`.
        query_param: String,
    },
}

fn default_injection_format() -> String {
    "{secret}".into()
}

/// A vault secret as sponsors see it: everything but the value, which is never
/// shown again after it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SecretView {
    pub id: Uuid,
    pub name: String,
    pub allowed_hosts: Vec<String>,
    pub inject: Injection,
    /// Agents allowed to use it.
    pub agents: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewSecret {
    pub name: String,
    pub value: String,
    /// Where the secret may be sent: `[http://|https://]host[:port]`, `host` exact or
    /// `*.domain`. No scheme means https only; no port means the scheme's default
    /// (`:*` for any). Plain http only where written (`http://api.internal.example:8080`).
    /// Checked on the request and again on every redirect hop.
    pub allowed_hosts: Vec<String>,
    pub inject: Injection,
    #[serde(default)]
    pub agents: Vec<Uuid>,
}

/// Absent fields stay as they are; `value` rotates the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SecretUpdate {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub inject: Option<Injection>,
    #[serde(default)]
    pub agents: Option<Vec<Uuid>>,
}

/// A named upstream for gateway mode: `/api/gw/{name}/…` forwards to `base_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ConnectionView {
    pub id: Uuid,
    pub name: String,
    pub base_url: String,
    /// Name of the vault secret injected into every call, if any.
    pub secret: Option<String>,
    pub cost_micros: i64,
    /// How calls under `base_url` are charged: metered from the provider's `usage`
    /// (`openai`, `anthropic`), or `flat` (`cost_micros` a call). Absent: flat.
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Tokens and requests per minute across every agent's calls under `base_url`.
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// Path to give an SDK as its base URL (`/mcp` for an MCP connection).
    pub gateway_path: String,
    /// `http` (gateway mode) or `mcp` (an MCP server whose tools agents call through `/mcp`).
    #[serde(default = "http_kind")]
    pub kind: String,
    /// An MCP connection's allow-list of tool names; absent: every tool the server lists.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// An MCP connection keeps tool calls' arguments in the audit log (otherwise only their SHA-256).
    #[serde(default)]
    pub record_arguments: bool,
    pub created_at: DateTime<Utc>,
}

fn http_kind() -> String {
    "http".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewConnection {
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// Meter calls from the provider's `usage` ("How AEGIS computes cost" in the docs).
    #[serde(default)]
    pub pricing: Option<Pricing>,
    /// Tokens and requests per minute across every agent's calls under `base_url`.
    #[serde(default)]
    pub rate_limits: Option<RateLimits>,
    /// `http` (default): gateway mode at `/api/gw/{name}`. `mcp`: `base_url` is an MCP
    /// server (Streamable HTTP) whose tools agents call through `/mcp` as `{name}__{tool}`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `mcp` only: the tools agents may see and call; absent: every tool the server lists.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// `mcp` only: keep tool calls' arguments in the audit log (default: only their SHA-256).
    #[serde(default)]
    pub record_arguments: Option<bool>,
}

/// `PATCH /api/connections/{id}`: only the fields present change; `"secret": null`
/// and `"pricing": null` remove them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<String>))]
    pub secret: Option<Option<String>>,
    #[serde(default)]
    pub cost_micros: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Pricing>))]
    pub pricing: Option<Option<Pricing>>,
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<RateLimits>))]
    pub rate_limits: Option<Option<RateLimits>>,
    /// MCP only: the tool allow-list (`null` lifts it).
    #[serde(default, deserialize_with = "present")]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Vec<String>>))]
    pub tools: Option<Option<Vec<String>>>,
    /// MCP only: keep tool-call arguments in the audit log (off: only their hash).
    #[serde(default)]
    pub record_arguments: Option<bool>,
}

/// Sliding one-minute limits. Tokens count a metered call's ceiling while it runs
/// and its real usage once settled; every proxied call is one request. Past a limit
/// the call is denied at stage `budget` with `retry_after_secs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i64>,
}

/// A field that is present, even as `null` (absent stays `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Who a priced connection's provider is: how its requests and `usage` are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PricingProvider {
    /// OpenAI-compatible: chat completions, completions, responses, embeddings.
    Openai,
    /// Anthropic messages.
    Anthropic,
    /// Today's per-call `cost_micros`; nothing metered.
    Flat,
}

impl PricingProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            PricingProvider::Openai => "openai",
            PricingProvider::Anthropic => "anthropic",
            PricingProvider::Flat => "flat",
        }
    }
}

/// A connection's prices. `models` is an allow-list: a request for another model is
/// denied unless there is a `fallback`. Omitted `models` (or a model given as `{}`)
/// take AEGIS's default price table for the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    pub provider: PricingProvider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<std::collections::BTreeMap<String, ModelPrice>>,
    /// The most output tokens a call may ask for; AEGIS writes it into requests that
    /// ask for more or do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<i64>,
    /// Prices for a model not in `models`; without it such requests are denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ModelPrice>,
}

/// One model's prices, in micro-units per million tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_per_mtok_micros: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_per_mtok_micros: Option<i64>,
    /// Cache reads (OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`);
    /// default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_micros: Option<i64>,
    /// Anthropic cache writes (`cache_creation_input_tokens`); default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok_micros: Option<i64>,
    /// This model's own output cap (the connection's `max_output_tokens` applies when lower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<i64>,
}

/// A policy with its current source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PolicyView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub builtin: bool,
    pub version: i32,
    /// SHA-256 of `source`: what decision records cite.
    pub sha256: String,
    pub source: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewPolicy {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyUpdate {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An agent's wallet: limits, what is spent and held, and when the windows reset.
/// Money is in micro-units; a limit of 0 means no limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WalletView {
    pub agent_id: Uuid,
    pub daily_limit_micros: i64,
    pub monthly_limit_micros: i64,
    pub daily_spent_micros: i64,
    pub monthly_spent_micros: i64,
    /// Held for calls in flight.
    pub reserved_micros: i64,
    /// IANA time zone of the day and month windows.
    pub timezone: String,
    /// Percentage of a limit at which one `budget.alert` event is sent per window.
    pub alert_threshold_pct: Option<i32>,
    pub daily_resets_at: DateTime<Utc>,
    pub monthly_resets_at: DateTime<Utc>,
}

/// New limits; absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WalletUpdate {
    #[serde(default)]
    pub daily_limit_micros: Option<i64>,
    #[serde(default)]
    pub monthly_limit_micros: Option<i64>,
    /// IANA time zone (e.g. `Europe/Paris`) whose calendar days and months the
    /// windows follow.
    #[serde(default)]
    pub timezone: Option<String>,
    /// 1 to 100: alert once per window when spend reaches this share of a limit;
    /// 0 turns alerts off.
    #[serde(default)]
    pub alert_threshold_pct: Option<i32>,
}

/// Where an approval stands. `approved` with no `outcome` yet means the call is
/// being performed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(ApprovalStatus::Pending),
            "approved" => Some(ApprovalStatus::Approved),
            "rejected" => Some(ApprovalStatus::Rejected),
            "expired" => Some(ApprovalStatus::Expired),
            _ => None,
        }
    }
}

/// A request held for a sponsor's decision, as the sponsor sees it. A list shows
/// what identifies the call (from plain columns: nothing is decrypted); one
/// approval (`GET /api/approvals/{id}`) also shows the full headers (credential
/// values and the injected secret masked) and the full body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalView {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub agent_name: String,
    pub status: ApprovalStatus,
    pub method: String,
    pub url: String,
    /// The URL that will actually be fetched, normalised, with its host in ASCII
    /// (punycode) and in Unicode; null if the stored URL does not parse.
    #[serde(default)]
    pub target: Option<ApprovalTarget>,
    /// Names of the headers the agent sent.
    pub header_names: Vec<String>,
    /// One approval only (null in lists): every header that will be sent, in order;
    /// credential values and the injected secret are masked.
    #[serde(default)]
    pub headers: Option<Vec<ApprovalHeader>>,
    /// One approval only (null in lists, and for a body that is not UTF-8): the whole body.
    #[serde(default)]
    pub body: Option<String>,
    /// One approval only: the whole body in base64 when it is not UTF-8.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Deprecated, always null: the whole body is in `body` (one approval).
    #[serde(default)]
    pub body_preview: Option<String>,
    pub body_bytes: u64,
    pub action_label: Option<String>,
    /// Name of the vault secret the call will use.
    pub secret_name: Option<String>,
    pub cost_micros: i64,
    /// Why the policy asked for approval.
    pub policy_reasons: Vec<String>,
    pub trust_at_request: i32,
    /// SHA-256 of the exact request; the performed call is checked against it.
    pub request_hash: String,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    /// `null`: it never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decided_by: Option<Uuid>,
    pub decision_reason: Option<String>,
    /// What happened when the approved call was performed (the execute answer).
    pub outcome: Option<ApprovalOutcome>,
    pub grant: Option<GrantView>,
    /// One approval only (null in lists, and for calls that are not MCP tool calls):
    /// the MCP tool call that waits, with its arguments.
    #[serde(default)]
    pub mcp: Option<ApprovalMcp>,
    /// How many distinct members must approve before the call is performed (the
    /// organization's two-person rule when the call was parked; 1 otherwise).
    #[serde(default = "one")]
    pub approvers_required: u32,
    /// One approval only (empty in lists): who has approved so far, in order.
    #[serde(default)]
    pub approved_by: Vec<ApprovalVote>,
}

fn one() -> u32 {
    1
}

/// A member's approval under the two-person rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalVote {
    pub member: Uuid,
    pub role: Role,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// An MCP tool call held for approval (`ApprovalView::mcp`): the connection, the
/// tool (its own name, without the `<connection>__` prefix) and the arguments the
/// agent sent, exactly as they will be sent upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalMcp {
    /// The MCP connection's name (`input.mcp.server`).
    pub server: String,
    /// `tools/call`.
    pub method: String,
    pub tool: Option<String>,
    #[cfg_attr(feature = "ssr", schema(value_type = Object))]
    pub arguments: serde_json::Value,
}

/// Where an approved call goes, as it will be fetched (see `ApprovalView::target`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalTarget {
    /// The normalised URL (host in punycode), with an injected query secret masked.
    pub url: String,
    pub scheme: String,
    /// The host as it is resolved (ASCII, punycode for international names).
    pub host: String,
    /// The same host in Unicode, for reading (equal to `host` when it is ASCII).
    pub host_unicode: String,
    /// The port connected to (the scheme's default when the URL has none).
    pub port: Option<u16>,
    pub path: String,
    pub query: Option<String>,
}

/// One header of a parked request, as it will be sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalHeader {
    pub name: String,
    /// The value, or a mask when `masked`.
    pub value: String,
    /// The value is a credential and is not shown.
    pub masked: bool,
    /// Added by AEGIS from the vault secret (replacing any header the agent sent of that name).
    pub injected: bool,
}

/// The answer AEGIS gave when it performed an approved request: the same body an
/// immediate `POST /api/proxy/execute` would have returned, and its HTTP status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ApprovalOutcome {
    pub status: u16,
    #[cfg_attr(feature = "ssr", schema(value_type = Object))]
    pub body: serde_json::Value,
    pub audit_seq: Option<i64>,
}

/// A standing grant given with an approval: more actions like this one (same
/// method, origin, secret and path prefix) without asking again, within bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct GrantView {
    pub max_actions: i32,
    pub used_actions: i32,
    pub until: DateTime<Utc>,
    pub max_micros: Option<i64>,
    pub spent_micros: i64,
    /// Calls are covered only if their path starts with this prefix.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// And only if they use this vault secret (none when null).
    #[serde(default)]
    pub secret_name: Option<String>,
}

/// `GET /api/approvals` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `rejected` or `expired`; all when absent.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    /// Page size: 1 to 200; 50 when absent. Anything else is `400 invalid_limit`.
    #[serde(default)]
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 200))]
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `POST /api/approvals/{id}/approve`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// An optional note kept in the audit log.
    #[serde(default)]
    pub reason: Option<String>,
    /// Also allow up to `max_actions` more calls with the same method, origin
    /// (scheme, host, port), vault secret and path prefix for `minutes`, spending at
    /// most `max_micros` in total (no cap when absent).
    #[serde(default)]
    pub grant: Option<GrantRequest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// 1 to 1000.
    pub max_actions: i32,
    /// 1 to 1440.
    pub minutes: i32,
    #[serde(default)]
    pub max_micros: Option<i64>,
    /// Covered paths: those starting with this prefix (it must start with `/` and
    /// cover the approved path). Default: the approved path up to its last `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

/// `POST /api/approvals/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// Shown to the agent and kept in the audit log (at most 500 characters).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `GET /api/proxy/approvals/{id}`: what the agent that asked may see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AgentApprovalView {
    pub approval_id: Uuid,
    pub status: ApprovalStatus,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    /// The sponsor's reason, for a rejection.
    pub reason: Option<String>,
    /// Present once an approved request was performed.
    pub outcome: Option<ApprovalOutcome>,
}

/// Query parameters as sent; everything is text so each bad value gets its own code.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct AuditQuery {
    /// Only this agent's records (an agent id).
    #[cfg_attr(feature = "ssr", param(format = Uuid))]
    pub agent: Option<String>,
    /// Record kind, e.g. `proxy.intent`, `proxy.outcome`, `proxy.denied`, `agent.created`.
    pub kind: Option<String>,
    /// `allow`, `deny` or `error`.
    pub decision: Option<String>,
    /// Only the records of one proxy request (its `request_id`, e.g. `req_…`).
    pub request_id: Option<String>,
    /// Inclusive start, RFC 3339 (e.g. `2026-01-31T12:00:00Z`).
    #[cfg_attr(feature = "ssr", param(format = DateTime))]
    pub from: Option<String>,
    /// Exclusive end, RFC 3339.
    #[cfg_attr(feature = "ssr", param(format = DateTime))]
    pub to: Option<String>,
    /// Page size, 1 to 200; 50 when absent. Anything else is `400 invalid_limit`.
    #[cfg_attr(feature = "ssr", param(value_type = Option<u32>, minimum = 1, maximum = 200))]
    pub limit: Option<String>,
    /// `next_cursor` from the previous page (a seq).
    pub cursor: Option<String>,
}

/// One record as the API shows it: every stored field, so anyone can recompute
/// its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AuditRecord {
    pub seq: i64,
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub sponsor_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub kind: String,
    pub stage: Option<String>,
    pub decision: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub cost_micros: i64,
    pub duration_us: i64,
    pub request_hash: Option<String>,
    pub policy_hash: Option<String>,
    pub policy_input: Option<String>,
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// An MCP tool call's tool as the agent named it (`<connection>__<tool>`), read from
    /// `detail.mcp` (not a stored column: the hash covers `detail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

/// The verdict of verifying the whole audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainVerdict {
    pub valid: bool,
    /// Records that verified.
    pub checked: u64,
    pub first_bad_seq: Option<i64>,
    pub reason: Option<String>,
}

/// A dry run of a policy (`POST /api/policies/evaluate`): what the policy stage would
/// decide for one of your agents and a sample action. Nothing is performed, audited
/// or spent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PolicyTrial {
    pub agent_id: Uuid,
    /// The policy to try; the agent's own policy when absent.
    #[serde(default)]
    pub policy_id: Option<Uuid>,
    /// Unsaved Rego to try instead of a stored policy (an edit before saving).
    #[serde(default)]
    pub source: Option<String>,
    #[cfg_attr(feature = "ssr", schema(example = "POST"))]
    pub method: String,
    #[cfg_attr(feature = "ssr", schema(example = "https://api.github.com/repos/o/r/issues"))]
    pub url: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// An MCP tool call to try instead of a plain HTTP action: the input then has
    /// `input.mcp`, as a call through `/mcp` would. With an MCP connection of that
    /// name the action is the one AEGIS would send it (its URL, label, price and
    /// secret; `method`, `url`, `headers`, `body` and `cost_micros` are not used);
    /// otherwise `method` and `url` stand for it.
    #[serde(default)]
    pub mcp: Option<McpTrial>,
}

/// The MCP tool call of a dry run (`PolicyTrial::mcp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct McpTrial {
    /// The MCP connection's name (`input.mcp.server`).
    #[cfg_attr(feature = "ssr", schema(example = "notes"))]
    pub server: String,
    /// The tool's own name, without the `<connection>__` prefix (`input.mcp.tool`).
    #[cfg_attr(feature = "ssr", schema(example = "read_note"))]
    pub tool: String,
    /// The tool's arguments, an object (`{}` when absent).
    #[serde(default)]
    #[cfg_attr(feature = "ssr", schema(value_type = Option<Object>))]
    pub arguments: Option<serde_json::Value>,
}

/// One tool an agent sees through `/mcp` (`GET /api/agents/{id}/tools`): named
/// `<connection>__<tool>`, its policy permitting (allowed or asked for approval).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AgentTool {
    #[cfg_attr(feature = "ssr", schema(example = "notes__read_note"))]
    pub name: String,
    /// The MCP server's own description of the tool.
    pub description: Option<String>,
}

/// What the policy decided in a dry run, with the input it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct PolicyVerdict {
    /// `allow`, `deny` or `require_approval`.
    pub decision: String,
    pub reasons: Vec<String>,
    /// Why the engine denied on its own (evaluation error, time-out, bad output).
    pub error: Option<String>,
    /// SHA-256 of the source that was evaluated.
    pub policy_sha256: String,
    /// The policy input document, as the proxy's policy stage builds it (JSON text).
    pub input: String,
}

/// One sign-in session (a refresh-token family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SessionView {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session this request was made in.
    pub current: bool,
}

/// The overview's time range: 24 hourly or 30 daily buckets (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub enum StatsRange {
    #[default]
    #[serde(rename = "24h")]
    Day,
    #[serde(rename = "30d")]
    Month,
}

impl StatsRange {
    /// `24h` or `30d` (blank means `24h`); anything else is a 422.
    pub fn parse(text: Option<&str>) -> Result<Self, crate::error::AppError> {
        match text.map(str::trim) {
            None | Some("") | Some("24h") => Ok(Self::Day),
            Some("30d") => Ok(Self::Month),
            Some(_) => Err(crate::error::AppError::new(422, "invalid_range", "range must be 24h or 30d")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "24h",
            Self::Month => "30d",
        }
    }
}

/// `GET /api/dashboard/stats` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
pub struct StatsQuery {
    /// `24h` (hourly buckets, the default) or `30d` (daily buckets).
    pub range: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StageCount {
    pub stage: String,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct TierCount {
    pub tier: String,
    pub count: i64,
}

/// Spend in the current windows of each agent's wallet, against the summed limits
/// (agents without a limit add nothing to the limit; see `unlimited_agents`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SpendSummary {
    pub today_micros: i64,
    pub month_micros: i64,
    pub daily_limit_micros: i64,
    pub monthly_limit_micros: i64,
    /// Agents with no daily or no monthly limit.
    pub unlimited_agents: i64,
}

/// One bucket of the time series: decided agent calls and what they spent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct StatsBucket {
    pub start: DateTime<Utc>,
    pub allow: i64,
    pub deny: i64,
    pub error: i64,
    pub spend_micros: i64,
}

/// The overview's numbers (`GET /api/dashboard/stats`). "Today" is the UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DashboardStats {
    pub range: StatsRange,
    pub generated_at: DateTime<Utc>,
    /// Agent calls decided today (performed, denied or failed).
    pub actions_today: i64,
    /// Today's denials, by the pipeline stage that denied.
    pub denials_by_stage: Vec<StageCount>,
    pub spend: SpendSummary,
    pub pending_approvals: i64,
    pub active_agents: i64,
    pub suspended_agents: i64,
    /// Live agents per trust tier, lowest tier first (every tier listed).
    pub trust_tiers: Vec<TierCount>,
    /// Oldest first: 24 hourly or 30 daily buckets ending with the current one.
    pub series: Vec<StatsBucket>,
    /// The last 10 audit records, newest first.
    pub latest: Vec<AuditRecord>,
}

// --- usage (issue #19's dashboard) ---

/// `GET /api/usage`: which days, and optionally one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// The last N UTC days, today included: 1 to 90; 30 when absent. Anything else
    /// is `400 invalid_days`.
    #[serde(default)]
    #[cfg_attr(feature = "ssr", param(minimum = 1, maximum = 90))]
    pub days: Option<u32>,
    /// Only this agent's calls.
    #[serde(default)]
    pub agent_id: Option<Uuid>,
}

/// Calls settled in a period, with their tokens, what was held for them and what
/// they were charged (micro-units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct UsageTotals {
    pub requests: i64,
    /// Metered calls charged their ceiling because their usage could not be read
    /// (or the answer was cut short).
    pub at_ceiling: i64,
    /// Uncached input tokens.
    pub tokens_in: i64,
    pub tokens_cached: i64,
    pub tokens_cache_write: i64,
    pub tokens_out: i64,
    /// Held before the calls: a metered call's ceiling, an unmetered one's estimate.
    pub held_micros: i64,
    pub cost_micros: i64,
}

impl UsageTotals {
    pub fn add(&mut self, o: &UsageTotals) {
        self.requests += o.requests;
        self.at_ceiling += o.at_ceiling;
        self.tokens_in += o.tokens_in;
        self.tokens_cached += o.tokens_cached;
        self.tokens_cache_write += o.tokens_cache_write;
        self.tokens_out += o.tokens_out;
        self.held_micros = self.held_micros.saturating_add(o.held_micros);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
    }

    /// Every token, of every kind.
    pub fn tokens(&self) -> i64 {
        self.tokens_in + self.tokens_cached + self.tokens_cache_write + self.tokens_out
    }
}

/// One model of one connection; `connection` and `model` are empty for calls
/// that were not metered (flat or declared cost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ModelUsage {
    pub connection: String,
    pub model: String,
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ConnectionUsage {
    /// Empty for calls that were not metered.
    pub connection: String,
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct AgentUsage {
    pub agent_id: Uuid,
    /// `null` once the agent is deleted.
    pub agent_name: Option<String>,
    pub totals: UsageTotals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DayUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub totals: UsageTotals,
}

/// What a sponsor's agents spent, by model, connection, agent and day, dearest
/// first (days oldest first, every day of the period present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// First and last UTC day of the period.
    pub from: String,
    pub to: String,
    pub totals: UsageTotals,
    pub by_model: Vec<ModelUsage>,
    pub by_connection: Vec<ConnectionUsage>,
    pub by_agent: Vec<AgentUsage>,
    pub by_day: Vec<DayUsage>,
    /// The audit record the figures are complete through.
    pub through_seq: i64,
}

/// One hold on an agent's wallet: what was held before the call (a metered call's
/// ceiling) against what was settled after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct WalletEntry {
    pub request_id: String,
    /// `held` (call in flight), `settled`, `released` (not performed: nothing
    /// charged) or `expired` (never reported back; released by the janitor).
    pub status: String,
    pub held_micros: i64,
    pub settled_micros: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

// --- organizations (issue #20) ---

/// An organization the caller belongs to (`GET /api/orgs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct OrgView {
    pub id: Uuid,
    pub name: String,
    /// The caller's role in it.
    pub role: Role,
    /// The organization requests act in when they send no `X-AEGIS-Org`.
    pub default: bool,
    pub created_at: DateTime<Utc>,
}

/// A member of the caller's organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// The person's account id (the `{id}` of `/api/orgs/members/{id}`).
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    pub email: String,
    pub role: Role,
}

/// A new invitation. `token` and `invite_url` are shown once; only the token's
/// SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct InvitationCreated {
    pub id: Uuid,
    pub token: String,
    pub invite_url: String,
    pub expires_at: DateTime<Utc>,
}

/// An invitation as the organization's members see it (never the token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct InvitationView {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub invited_by: Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `pending`, `accepted` or `expired`.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    pub token: String,
}

/// An organization's settings (`GET`/`PUT /api/orgs/settings`): the two-person rule.
/// An approval needs `approvers_required` distinct members when its cost is above
/// `approvers_cost_above_micros` or the policy gave one of `approvers_reasons`;
/// with neither set, every approval does. `1` turns the rule off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrgSettings {
    pub approvers_required: u32,
    #[serde(default)]
    pub approvers_cost_above_micros: Option<i64>,
    #[serde(default)]
    pub approvers_reasons: Vec<String>,
}

// --- notification channels (signed webhooks) ---

/// A new notification channel. `kind` is `webhook`: `url` receives every event named
/// in `events`, signed as Standard Webhooks defines. (`slack` and `email` are refused
/// with `unsupported_kind` until they exist.)
/// A new channel. `webhook`: `url`. `slack`: the Slack app's `bot_token`
/// (`xoxb-…`) and `signing_secret`, and the `slack_channel` (a conversation id such
/// as `C0123456789`) it posts to; both secrets are sealed and never shown again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
    pub events: Vec<String>,
    #[serde(default)]
    pub bot_token: Option<String>,
    #[serde(default)]
    pub signing_secret: Option<String>,
    #[serde(default)]
    pub slack_channel: Option<String>,
}

impl std::fmt::Debug for NewChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("NewChannel")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("bot_token", &hidden(&self.bot_token))
            .field("signing_secret", &hidden(&self.signing_secret))
            .field("slack_channel", &self.slack_channel)
            .finish()
    }
}

/// A channel as members see it: never its signing secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ChannelView {
    pub id: Uuid,
    pub kind: String,
    pub url: String,
    pub events: Vec<String>,
    /// `false` once a long failure streak disabled it (`disabled_reason` says so) or
    /// a member did; `PATCH {"enabled": true}` turns it back on.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Failed attempts in a row; a success resets it.
    pub failure_streak: u32,
    pub created_at: DateTime<Utc>,
    /// A Slack channel's conversation id.
    #[serde(default)]
    pub slack_channel: Option<String>,
    /// A Slack channel's interactivity endpoint, to paste into the Slack app's
    /// "Interactivity & Shortcuts" Request URL (after the server's public origin).
    #[serde(default)]
    pub interactivity_path: Option<String>,
}

/// A new channel: a webhook's `secret` (`whsec_` + base64, as Standard Webhooks
/// defines it) is shown once, here; AEGIS keeps it sealed. `null` for Slack (its
/// secrets are the Slack app's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct ChannelCreated {
    pub id: Uuid,
    pub secret: Option<String>,
    pub channel: ChannelView,
}

/// `POST /api/slack/links`: the code Slack showed an unlinked user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SlackLinkRequest {
    pub token: String,
}

/// A Slack user now linked to the member who redeemed the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct SlackLinked {
    pub team_id: String,
    pub slack_user_id: String,
}

/// Changes to a channel; absent fields stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// One event's delivery to one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeliveryView {
    pub id: Uuid,
    /// The `webhook-id` header: the same on every attempt, for the receiver to dedupe.
    pub event_id: String,
    pub event_type: String,
    /// `pending` (waiting for its next attempt), `delivered`, `failed` (attempts
    /// exhausted) or `cancelled` (the channel was disabled first).
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A channel's most recent deliveries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "ssr", derive(utoipa::ToSchema))]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
}
