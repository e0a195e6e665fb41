//! The OpenAPI 3 description of the JSON API: served at `GET /api/openapi.json` and
//! rendered as a page at `GET /docs` ([`super::docs`]), both from [`spec`].
//!
//! Each operation is annotated (`#[utoipa::path]`) above its handler and listed in
//! [`ApiDoc`]'s `paths`. This module adds what no handler owns: the security schemes,
//! the error envelope, the shapes of answers the handlers build with `json!`, the
//! policy input document, and [`CommonErrors`] — the failures every endpoint of a
//! kind shares (authentication, JSON bodies, path and query parsing, `500`).
//!
//! Adding a route: annotate its handler, list it in `paths(...)` below and in `ROUTES`
//! in `server/tests/api/docs.rs`; that test fails for a route the spec lacks.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use app::model::AgentStatus;
use axum::Json;
use axum::response::IntoResponse;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

use crate::call::Stage;

#[derive(OpenApi)]
#[openapi(
    info(title = "AEGIS API", description = text::API),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::ws::events,
        openapi_json,
        super::docs::page,
        super::account::register,
        super::account::login,
        super::account::refresh,
        super::account::logout,
        super::account::me,
        super::agents::list_agents,
        super::agents::create_agent,
        super::agents::get_agent,
        super::agents::update_agent,
        super::agents::delete_agent,
        super::agents::rotate_agent_key,
        super::agents::suspend_agent,
        super::agents::resume_agent,
        super::agents::agent_trust,
        super::agents::agent_tools,
        super::agents::agent_wallet,
        super::agents::agent_wallet_history,
        super::agents::update_agent_wallet,
        super::agents::agent_self,
        super::proxy::execute,
        super::proxy::gateway,
        super::proxy::gateway_root,
        super::policies::list_policies,
        super::policies::create_policy,
        super::policies::get_policy,
        super::policies::update_policy,
        super::secrets::list_secrets,
        super::secrets::create_secret,
        super::secrets::get_secret,
        super::secrets::update_secret,
        super::secrets::grant_secret,
        super::secrets::revoke_secret,
        super::secrets::delete_secret,
        super::connections::list_connections,
        super::connections::create_connection,
        super::connections::replace_connection,
        super::connections::patch_connection,
        super::connections::delete_connection,
        super::orgs::list_orgs,
        super::orgs::list_members,
        super::orgs::update_member,
        super::orgs::remove_member,
        super::orgs::list_invitations,
        super::orgs::invite,
        super::orgs::revoke_invitation,
        super::orgs::accept_invitation,
        super::orgs::get_settings,
        super::orgs::put_settings,
        super::channels::list,
        super::channels::create,
        super::channels::update,
        super::channels::delete,
        super::channels::deliveries,
        super::channels::test,
        super::channels::link_slack,
        super::channels::slack_interactions,
        super::audit::list,
        super::audit::export_csv,
        super::audit::verify,
        super::policies::replay_decision,
        super::approvals::list,
        super::approvals::get,
        super::approvals::approve,
        super::approvals::reject,
        super::approvals::poll,
        super::policies::evaluate_policy,
        super::account::list_sessions,
        super::account::revoke_session,
        super::overview::stats,
        super::overview::usage,
    ),
    components(schemas(ErrorBody, PolicyInput)),
    modifiers(&Security, &CommonErrors),
    tags(
        (name = "auth", description = "Sponsor accounts and sessions: access tokens (JWT, 15 minutes) and single-use refresh tokens."),
        (name = "agents", description = "A sponsor's agents and their keys. Another sponsor's ids answer `404 not_found`, never `403`."),
        (name = "agent", description = "Endpoints an agent calls with its own AEGIS key."),
        (name = "proxy", description = "The agents' doors into the pipeline: authenticate → breaker → policy → egress → secret → approval → budget → audit intent → perform → settle → audit outcome."),
        (name = "policies", description = "Rego policies (`package aegis`), evaluated in-process against the policy input document (schema `PolicyInput`)."),
        (name = "secrets", description = "The vault: secrets injected just in time, never shown again after they are stored."),
        (name = "connections", description = "Named upstreams for gateway mode."),
        (name = "orgs", description = "Organizations: members with roles (`owner`, `admin`, `approver`, `viewer`) and invitations. Every sponsor route acts in one organization (`X-AEGIS-Org`, default your own); a role that may not do something gets `403 forbidden_role`, another organization's ids `404`."),
        (name = "channels", description = "Notification channels: signed webhooks (Standard Webhooks) for an organization's events, delivered at least once from a durable outbox with backoff, with a delivery log."),
        (name = "approvals", description = "Requests a policy marked `require_approval`, parked until you approve (AEGIS then performs exactly the stored request, once), reject, or let them expire."),
        (name = "audit", description = "The hash-chained audit log: read, export, verify, replay."),
        (name = "dashboard", description = "The numbers behind the dashboard's overview and usage pages."),
        (name = "meta", description = "Health, readiness, metrics and this documentation. Public (metrics can require a token)."),
    )
)]
pub struct ApiDoc;

/// The spec, built once.
pub fn spec() -> &'static utoipa::openapi::OpenApi {
    static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc
    })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    summary = "This API's OpenAPI 3 description",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    Json(spec())
}

/// Every JSON API error: `{"error":{"code":"…","message":"…"}}`.
#[derive(ToSchema)]
#[schema(example = json!({"error": {"code": "not_found", "message": "agent not found"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable; branch on this.
    #[schema(example = "not_found")]
    pub code: String,
    /// For people; the wording may change.
    pub message: String,
}

/// `GET /api/agent/me`: the calling agent's standing.
#[derive(ToSchema)]
pub struct AgentSelf {
    pub id: Uuid,
    pub name: String,
    pub status: AgentStatus,
    /// Name of the policy that governs the agent.
    pub policy: String,
    /// 0 to 1000; the `default` policy allows reads from 300 and writes from 700.
    pub trust_score: i32,
    /// The tier of `trust_score` (`untrusted`, `probation`, `standard`, `trusted`, `verified`).
    pub tier: String,
    /// The public part of the current key (`aegis_<key id>`).
    pub key_prefix: Option<String>,
}

/// Allowed or denied, or the call failed.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ExecuteDecision {
    Allow,
    Deny,
    Error,
    PendingApproval,
}

/// `202`: the policy asked for a human. The exact request is parked until the
/// sponsor approves (AEGIS then performs it once), rejects, or lets it expire.
#[derive(ToSchema)]
pub struct ExecutePending {
    /// `pending_approval`.
    pub decision: ExecuteDecision,
    /// `approval`.
    pub stage: Stage,
    pub request_id: String,
    /// Seq of the `approval.requested` audit record.
    pub audit_seq: Option<i64>,
    /// Why the policy asked.
    pub reasons: Vec<String>,
    pub approval_id: Uuid,
    /// `null`: it never expires.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `GET` it with the agent's key (`?wait=30` to long-poll) for the status and,
    /// once approved and performed, the outcome.
    #[schema(example = "/api/proxy/approvals/0193d2c1-a7f0-7c3e-8b4a-6f0e2d1c9b8a")]
    pub poll_url: String,
}

/// `200` from `POST /api/proxy/execute`: the call was allowed and performed.
#[derive(ToSchema)]
pub struct ExecuteAllowed {
    /// `allow`.
    pub decision: ExecuteDecision,
    /// AEGIS's id for this request (`req_…`), also in the `x-request-id` header.
    #[schema(example = "req_0193d2c1a7f07c3e8b4a6f0e2d1c9b8a")]
    pub request_id: String,
    /// Seq of the audit record of the outcome; `null` if it could not be written
    /// (the intent record written before the call still exists).
    pub audit_seq: Option<i64>,
    /// The policy's `reasons`.
    pub reasons: Vec<String>,
    /// What the call was charged, in micro-units.
    pub cost_micros: i64,
    pub upstream: UpstreamAnswer,
    /// Present (`true`) when this is the stored answer to a repeated `idempotency_key`.
    #[schema(required = false)]
    pub replayed: Option<bool>,
}

/// The upstream's answer, with the injected secret scrubbed from headers and body.
#[derive(ToSchema)]
pub struct UpstreamAnswer {
    pub status: u16,
    /// Response headers (hop-by-hop headers removed).
    pub headers: BTreeMap<String, String>,
    /// The body, when it is UTF-8 text.
    #[schema(required = false)]
    pub body: Option<String>,
    /// The body base64-encoded, when it is not text.
    #[schema(required = false)]
    pub body_base64: Option<String>,
}

/// `401`/`403`: denied. Nothing was sent upstream.
#[derive(ToSchema)]
pub struct ExecuteDenied {
    /// `deny`.
    pub decision: ExecuteDecision,
    /// Where it was denied: `auth` (401), or `breaker`, `policy`, `egress`,
    /// `secret`, `budget` (403).
    pub stage: Stage,
    /// Why, for people.
    pub reason: String,
    /// Absent at stage `auth`.
    #[schema(required = false)]
    pub request_id: Option<String>,
    /// Seq of the audit record of the denial (absent at stage `auth`, `null` if it
    /// could not be written).
    #[schema(required = false)]
    pub audit_seq: Option<i64>,
    /// The policy's `reasons` (absent at stage `auth`).
    #[schema(required = false)]
    pub reasons: Option<Vec<String>>,
    /// Stage `budget` only: what is left today, in micro-units.
    #[schema(required = false)]
    pub daily_remaining_micros: Option<i64>,
    /// Stage `budget` only: what is left this month.
    #[schema(required = false)]
    pub monthly_remaining_micros: Option<i64>,
    /// Stage `budget` only: the cost that did not fit.
    #[schema(required = false)]
    pub cost_micros: Option<i64>,
    /// Stage `auth` only: the same failure in the API's error shape.
    #[schema(required = false)]
    pub error: Option<ErrorDetail>,
    /// Present (`true`) when this is the stored answer to a repeated `idempotency_key`.
    #[schema(required = false)]
    pub replayed: Option<bool>,
}

/// `502`/`503`/`504`: the call could not be completed.
#[derive(ToSchema)]
pub struct ExecuteFailed {
    /// `error`.
    pub decision: ExecuteDecision,
    /// `upstream` (502, 504) or `storage` (503).
    pub stage: Stage,
    pub reason: String,
    pub request_id: String,
    /// `null` at stage `storage`: nothing was performed or recorded.
    pub audit_seq: Option<i64>,
    /// Present (`true`) when this is the stored answer to a repeated `idempotency_key`.
    #[schema(required = false)]
    pub replayed: Option<bool>,
}

/// The document a policy evaluates (`input` in Rego). It never contains secret
/// values; audit records keep it (`policy_input`) so decisions can be replayed.
#[derive(ToSchema)]
pub struct PolicyInput {
    pub agent: PolicyInputAgent,
    pub action: PolicyInputAction,
    pub wallet: PolicyInputWallet,
    pub time: PolicyInputTime,
}

#[derive(ToSchema)]
pub struct PolicyInputAgent {
    pub id: Uuid,
    #[schema(example = "billing-bot")]
    pub name: String,
    /// Trust score, 0 to 1000.
    #[schema(example = 500)]
    pub trust: i32,
    /// Trust tier: `untrusted` (< 300), `probation` (< 500), `standard` (< 700),
    /// `trusted` (< 900) or `verified`.
    #[schema(example = "standard")]
    pub tier: String,
    pub tags: Vec<String>,
    /// The sponsor's user id.
    pub sponsor: Uuid,
}

#[derive(ToSchema)]
pub struct PolicyInputAction {
    /// Upper case.
    #[schema(example = "POST")]
    pub method: String,
    #[schema(example = "https://api.example.com/v1/x?y=1")]
    pub url: String,
    #[schema(example = "https")]
    pub scheme: String,
    /// Lower case, without a trailing dot or IPv6 brackets.
    #[schema(example = "api.example.com")]
    pub host: String,
    #[schema(example = 443)]
    pub port: u16,
    #[schema(example = "/v1/x")]
    pub path: String,
    /// Without `?`; empty when there is none.
    #[schema(example = "y=1")]
    pub query: String,
    /// Names of the request's headers, lower case, sorted (values are never shown).
    pub headers: Vec<String>,
    /// Estimated cost in micro-units: the agent's declared cost, at least the
    /// connection's cost in gateway mode.
    pub cost_micros: i64,
    /// The agent's `action` label (`gateway.<connection>` in gateway mode).
    pub label: Option<String>,
    /// Name of the secret asked for.
    pub secret: Option<String>,
}

/// The agent's wallet; all 0 before its first call. Limits of 0 mean no limit.
#[derive(ToSchema)]
pub struct PolicyInputWallet {
    pub daily_spent_micros: i64,
    pub daily_limit_micros: i64,
    pub monthly_spent_micros: i64,
    pub monthly_limit_micros: i64,
    pub reserved_micros: i64,
}

/// When the decision is made (UTC), recorded so it can be replayed.
#[derive(ToSchema)]
pub struct PolicyInputTime {
    #[schema(example = "2026-11-26T12:00:00Z")]
    pub now: String,
    #[schema(example = "Thu")]
    pub weekday: String,
    #[schema(example = 12)]
    pub hour: u32,
}

/// `sponsor_token` for sponsors; `agent_key` (or `agent_api_key`) for agents.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "sponsor_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A sponsor's access token from register, login or refresh: `Authorization: Bearer <access token>`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("aegis_<64 hex digits>")
                    .description(Some("An agent's AEGIS key: `Authorization: Bearer aegis_…`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "agent_api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The same AEGIS key in the `x-api-key` header, the way some SDKs send keys.",
            ))),
        );
    }
}

/// Failures shared by every endpoint of a kind, added to each operation (or appended
/// to the description of a status it already documents):
/// - sponsor endpoints: `401 unauthorized` (the [`super::extract::Sponsor`] extractor);
/// - agent endpoints: `401 unauthorized` / `invalid_api_key` (the [`super::extract::Agent`] extractor);
/// - a JSON body ([`super::extract::ApiJson`], [`super::extract::OptionalJson`]): `400 invalid_json`,
///   `413 payload_too_large`, `415 unsupported_media_type`, `422 invalid_request`;
/// - an `id` or `seq` path parameter ([`super::extract::ApiPath`]): `400 invalid_path`;
/// - query parameters ([`super::extract::ApiQuery`]): `400 invalid_query`;
/// - everything: `500 internal`.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            // Acting as a person, not in an organization: no role is needed.
            let personal = path.starts_with("/api/auth/")
                || ["/api/orgs", "/api/orgs/invitations/accept"].contains(&path.as_str());
            let operations = [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (false, &mut item.options),
                (false, &mut item.head),
                (true, &mut item.patch),
                (false, &mut item.trace),
            ];
            for (write, op) in operations.into_iter().filter_map(|(w, op)| op.as_mut().map(|op| (w, op))) {
                let mut common: Vec<(&str, &str)> = Vec::new();
                if requires_scheme(op, "sponsor_token") {
                    common.push((
                        "401",
                        "`unauthorized`: no access token, an invalid or expired one, or the session has ended",
                    ));
                    common.push(("400", "`invalid_org`: `X-AEGIS-Org` is not an organization id"));
                    common.push((
                        "404",
                        "`org_not_found`: `X-AEGIS-Org` names no organization you are a member of",
                    ));
                    if !personal {
                        common.push(("403", "`no_organization`: you are not a member of any organization"));
                    }
                    if write && !personal {
                        common.push((
                            "403",
                            "`forbidden_role`: your role in the organization does not allow this",
                        ));
                    }
                    op.parameters.get_or_insert_with(Vec::new).push(
                        utoipa::openapi::path::ParameterBuilder::new()
                            .name("X-AEGIS-Org")
                            .parameter_in(ParameterIn::Header)
                            .required(utoipa::openapi::Required::False)
                            .description(Some(
                                "The organization to act in (an id from `GET /api/orgs`); default: your own",
                            ))
                            .schema(Some(
                                utoipa::openapi::ObjectBuilder::new()
                                    .schema_type(utoipa::openapi::schema::Type::String)
                                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                                        utoipa::openapi::KnownFormat::Uuid,
                                    ))),
                            ))
                            .build(),
                    );
                }
                if requires_scheme(op, "agent_key") {
                    common.push(("401", "`unauthorized`: no agent key sent"));
                    common.push(("401", "`invalid_api_key`: an unknown or revoked agent key"));
                }
                if has_json_body(op.request_body.as_ref()) {
                    common.extend([
                        ("400", "`invalid_json`: the body is not JSON"),
                        ("413", "`payload_too_large`: the body is larger than the limit"),
                        ("415", "`unsupported_media_type`: send `Content-Type: application/json`"),
                        ("422", "`invalid_request`: wrong types, missing or unknown fields"),
                    ]);
                }
                let params = op.parameters.as_deref().unwrap_or_default();
                if params
                    .iter()
                    .any(|p| p.parameter_in == ParameterIn::Path && ["id", "seq"].contains(&p.name.as_str()))
                {
                    common.push(("400", "`invalid_path`: the id in the path is malformed"));
                }
                if params.iter().any(|p| p.parameter_in == ParameterIn::Query) {
                    common.push(("400", "`invalid_query`: the query string does not parse"));
                }
                let meta = op.tags.iter().flatten().any(|t| t == "meta");
                if !meta {
                    common.push((
                        "500",
                        "`internal`: an unexpected failure (details go to the server log only)",
                    ));
                }
                for (status, text) in common {
                    add_error(op, status, text);
                }
            }
        }
    }
}

fn requires_scheme(op: &Operation, scheme: &str) -> bool {
    op.security
        .iter()
        .flatten()
        .any(|requirement| serde_json::to_value(requirement).is_ok_and(|v| v.get(scheme).is_some()))
}

/// A JSON body, required or optional ([`super::extract::OptionalJson`]): a body that is
/// sent is checked the same way either way.
fn has_json_body(body: Option<&RequestBody>) -> bool {
    body.is_some_and(|b| b.content.contains_key("application/json"))
}

fn add_error(op: &mut Operation, status: &str, text: &str) {
    let code = text.split('`').nth(1).unwrap_or(text);
    match op.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            if !response.description.contains(&format!("`{code}`")) {
                response.description.push('\n');
                response.description.push_str(text);
            }
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            let response = ResponseBuilder::new()
                .description(text)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build();
            op.responses.responses.insert(status.to_owned(), RefOr::T(response));
        }
    }
}

/// Longer descriptions, kept here so the handlers' annotations stay short.
pub mod text {
    pub const API: &str = "\
AEGIS is a deterministic execution proxy for AI agents. Sponsors (people) manage agents, secrets, \
policies and connections with an access token; agents call the proxy with their own AEGIS key and \
never hold a real credential.

**Authentication.** Sponsor endpoints take `Authorization: Bearer <access token>` (from register, \
login or refresh). Agent endpoints take the agent's key `aegis_…` as `Authorization: Bearer <key>` \
or `x-api-key: <key>`.

**Errors** are always `{\"error\":{\"code\":\"…\",\"message\":\"…\"}}` (schema `ErrorBody`) with a 4xx \
status for anything the client can fix; branch on `code`. Common codes: `400 invalid_json`, \
`400 invalid_path`, `400 invalid_query`, `401 unauthorized`, `404 not_found` (also for another \
sponsor's ids, never `403`), `405 method_not_allowed`, `413 payload_too_large`, \
`415 unsupported_media_type`, `422 invalid_request` (wrong types or unknown fields), \
`422 validation_failed`, `429 rate_limited` (with `Retry-After`), `500 internal`. An unknown \
endpoint under `/api` is `404 not_found`. The agents' doors (`/api/proxy/execute`, `/api/gw/…`) \
answer denials and failures in the pipeline's shape instead, with `decision` and `stage`.

**Conventions.** Ids are UUIDv7; times are RFC 3339 UTC; money is integer micro-units \
(1 USD = 1,000,000). Lists are keyset-paginated: `limit` and `cursor` in, `{items, next_cursor}` \
out; pass `next_cursor` back as `cursor` until it is `null`.";

    pub const EXECUTE: &str = "\
The agent describes the call; AEGIS decides, injects the named vault `secret`, performs it and \
records it. Stages in order: `breaker` (a suspended agent does nothing; a tripped breaker lets \
probe calls through after its cool-down), `policy` (the agent's Rego policy on the `PolicyInput` \
document), `egress` (SSRF guard: http/https, ports 80/443, globally routable addresses only, \
redirects only with `follow_redirects`, each hop re-checked), `secret` (granted to this agent and \
allowed for the host), `approval` (a `require_approval` decision parks the exact request for the \
sponsor and answers `202` with a `poll_url`, unless a grant covers it), `budget` (reserve the \
cost). The intent is written to the audit log before the upstream call.

Every pipeline answer carries `decision` (`allow`, `deny`, `error` or `pending_approval`), `request_id` (also in \
`x-request-id`) and `audit_seq` (the audit record written); a denial or failure adds `stage` (where \
it stopped) and `reason`; an allowed call adds `upstream` (its status, headers and body). Errors in \
the request itself (bad JSON, bad fields, misused idempotency key) use the `ErrorBody` envelope.

`body` is text; send binary as `body_base64`. With an `idempotency_key`, a repeat returns the first \
answer (with `replayed: true`) without calling upstream again.";

    pub const GATEWAY: &str = "\
Point an SDK's base URL at `/api/gw/{connection}` and give it the agent's AEGIS key as its API key. \
The request (any method, headers, query and body) runs through the same pipeline as \
`POST /api/proxy/execute`; AEGIS drops the AEGIS key, `Cookie` and `x-aegis-*` headers, injects the \
connection's secret and forwards to the connection's `base_url` + `/{path}`. The answer is the \
upstream's own status, headers and body; it is buffered (up to the size cap) so the secret can be \
scrubbed, so streaming responses arrive complete. Denials and failures answer in the pipeline's \
JSON shape. Besides the methods listed, any other method is forwarded too.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_has_security_schemes_and_common_errors() {
        let doc = serde_json::to_value(spec()).unwrap();
        assert_eq!(doc["info"]["title"], "AEGIS API");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["sponsor_token"]["bearerFormat"], "JWT");
        assert_eq!(schemes["agent_api_key"]["name"], "x-api-key");
        let create = &doc["paths"]["/api/agents"]["post"]["responses"];
        for status in ["400", "401", "409", "413", "415", "422", "500"] {
            assert!(create[status].is_object(), "POST /api/agents lacks {status}");
        }
        let unprocessable = create["422"]["description"].as_str().unwrap();
        assert!(unprocessable.contains("`unknown_policy`") && unprocessable.contains("`invalid_request`"));
        // Public endpoints get no 401 they cannot return.
        assert!(
            doc["paths"]["/api/auth/login"]["post"]["responses"]["401"]["description"]
                .as_str()
                .unwrap()
                .starts_with("`invalid_credentials`")
        );
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["401"].is_null());
    }
}
