//! The dashboard's server functions. Each one is a thin adapter: find the signed-in
//! sponsor, call the [`Backend`](crate::backend::Backend), translate the result.
//! They live under `/rpc` so they never mix with the public JSON API under `/api`.

use leptos::prelude::*;
use uuid::Uuid;

use crate::error::AppError;
use crate::model::*;

#[cfg(feature = "ssr")]
pub(crate) mod ssr {
    use http::StatusCode;
    use http::header::{HeaderValue, SET_COOKIE};
    use http::request::Parts;
    use leptos::prelude::*;
    use leptos_axum::ResponseOptions;

    use crate::backend::SharedBackend;
    use crate::error::AppError;
    use crate::model::{ClientMeta, SessionUser, TokenPair};

    pub fn backend() -> Result<SharedBackend, AppError> {
        use_context::<SharedBackend>().ok_or_else(AppError::internal)
    }

    fn parts() -> Result<Parts, AppError> {
        use_context::<Parts>().ok_or_else(AppError::internal)
    }

    /// The sponsor the server's session middleware authenticated for this request.
    pub fn sponsor() -> Result<SessionUser, AppError> {
        parts()?
            .extensions
            .get::<SessionUser>()
            .cloned()
            .ok_or_else(|| AppError::unauthorized("sign in first"))
    }

    pub fn client() -> ClientMeta {
        parts().ok().and_then(|p| p.extensions.get::<ClientMeta>().cloned()).unwrap_or_default()
    }

    pub fn set_cookies(cookies: Vec<String>) {
        if let Some(response) = use_context::<ResponseOptions>() {
            for cookie in cookies {
                if let Ok(value) = HeaderValue::from_str(&cookie) {
                    response.append_header(SET_COOKIE, value);
                }
            }
        }
    }

    pub fn set_session_cookies(backend: &SharedBackend, tokens: Option<&TokenPair>) {
        set_cookies(backend.session_cookies(tokens));
    }

    /// A cookie the browser sent with this request.
    pub fn request_cookie(name: &str) -> Option<String> {
        let parts = parts().ok()?;
        parts
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
            .filter(|v| !v.is_empty())
    }

    /// New agent keys waiting to be shown once after a plain form post, by a random
    /// one-time id. The key stays in this process's memory (at most
    /// [`FLASH_LIFETIME`], at most [`FLASH_CAPACITY`] of them); the browser's cookie
    /// carries only the id, never the key.
    struct Flash {
        sponsor: uuid::Uuid,
        agent: uuid::Uuid,
        api_key: String,
        at: std::time::Instant,
    }

    const FLASH_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);
    const FLASH_CAPACITY: usize = 1024;

    static FLASHES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Flash>>> =
        std::sync::LazyLock::new(Default::default);

    /// Keeps `api_key` for `sponsor` and returns the id to put in the cookie.
    pub fn stash_key(sponsor: uuid::Uuid, agent: uuid::Uuid, api_key: &str) -> String {
        let id = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let mut map = FLASHES.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, f| f.at.elapsed() < FLASH_LIFETIME);
        if map.len() >= FLASH_CAPACITY
            && let Some(oldest) = map.iter().min_by_key(|(_, f)| f.at).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Flash { sponsor, agent, api_key: api_key.to_owned(), at: std::time::Instant::now() },
        );
        id
    }

    /// The key stashed under `id` for `sponsor`, once: taken out whether or not it
    /// matches, so an id is never good twice.
    pub fn take_key(id: &str, sponsor: uuid::Uuid) -> Option<(uuid::Uuid, String)> {
        let flash = FLASHES.lock().unwrap_or_else(|e| e.into_inner()).remove(id)?;
        (flash.sponsor == sponsor && flash.at.elapsed() < FLASH_LIFETIME)
            .then_some((flash.agent, flash.api_key))
    }

    /// `http://` + the `Host` this request was sent to: the origin a browser used
    /// when no public URL is configured.
    pub fn request_origin() -> String {
        let host = parts()
            .ok()
            .and_then(|p| p.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
            .unwrap_or_else(|| "localhost".into());
        format!("http://{host}")
    }

    /// True for a plain HTML form submission (no WebAssembly running): the browser
    /// will be redirected back to the page instead of receiving the result.
    pub fn is_plain_form_post() -> bool {
        parts().is_ok_and(|p| {
            p.headers
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"))
        })
    }

    /// Runs a server function body and gives the HTTP response the error's status,
    /// so a rejected form is a 4xx, not a 500.
    pub async fn respond<T>(body: impl Future<Output = Result<T, AppError>>) -> Result<T, AppError> {
        let result = body.await;
        if let Err(e) = &result
            && let (Some(response), Ok(status)) =
                (use_context::<ResponseOptions>(), StatusCode::from_u16(e.status))
        {
            response.set_status(status);
        }
        result
    }
}

/// The post-login destination: `next` only if it is a same-origin path, else
/// `/agents`. The one check for every place `next` is honoured.
///
/// Accepted: `/` followed by URL path/query characters only (RFC 3986 unreserved,
/// sub-delims, `:@/?` and well-formed `%XX` escapes), whose first segment is not
/// empty, and whose percent-decoded form (decoded repeatedly) still has no empty first
/// segment, backslash or control character (tab, CR, LF, …). So `//evil`, `/\\evil`,
/// `/%09/evil`, `/%2F%2Fevil`, `/%5Cevil`, `https://evil`, `javascript:…`, a tab or a
/// newline anywhere, and anything not starting with `/` all fall back to `/agents`.
pub fn safe_next(next: Option<&str>) -> String {
    const FALLBACK: &str = "/agents";
    match next {
        Some(n) if is_local_path(n) => n.to_owned(),
        _ => FALLBACK.to_owned(),
    }
}

fn is_local_path(raw: &str) -> bool {
    fn allowed(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
    }
    fn shape_ok(s: &[u8]) -> bool {
        s.first() == Some(&b'/')
            && !matches!(s.get(1), Some(b'/' | b'\\'))
            && !s.iter().any(|&b| b == b'\\' || b.is_ascii_control())
    }
    fn decode(s: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len());
        let mut i = 0;
        while i < s.len() {
            if s[i] == b'%' {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(s[i]);
                i += 1;
            }
        }
        Some(out)
    }
    let bytes = raw.as_bytes();
    if bytes.len() > 2048 || !bytes.iter().all(|&b| allowed(b)) || !shape_ok(bytes) {
        return false;
    }
    // Every layer of encoding must be harmless too (a proxy or router may decode).
    let mut current = bytes.to_vec();
    for _ in 0..4 {
        let Some(decoded) = decode(&current) else { return false };
        if !shape_ok(&decoded) {
            return false;
        }
        if decoded == current {
            return true;
        }
        current = decoded;
    }
    false
}

#[server(prefix = "/rpc", endpoint = "current_user")]
pub async fn current_user() -> Result<Option<UserView>, AppError> {
    use ssr::*;
    respond(async {
        match sponsor() {
            Ok(sponsor) => backend()?.current_user(&sponsor).await.map(Some),
            Err(_) => Ok(None),
        }
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "login")]
pub async fn login(email: String, password: String, next: Option<String>) -> Result<(), AppError> {
    use ssr::*;
    respond(async {
        let backend = backend()?;
        let session = backend.login(Credentials { email, password }, client()).await?;
        set_session_cookies(&backend, Some(&session.tokens));
        leptos_axum::redirect(&safe_next(next.as_deref()));
        Ok(())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "register")]
pub async fn register(name: String, email: String, password: String) -> Result<(), AppError> {
    use ssr::*;
    respond(async {
        let backend = backend()?;
        let session = backend.register(Registration { email, password, name }, client()).await?;
        set_session_cookies(&backend, Some(&session.tokens));
        leptos_axum::redirect("/agents");
        Ok(())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "logout")]
pub async fn logout() -> Result<(), AppError> {
    use ssr::*;
    respond(async {
        let backend = backend()?;
        if let Ok(sponsor) = sponsor() {
            backend.logout(&sponsor).await?;
        }
        set_session_cookies(&backend, None);
        leptos_axum::redirect("/login");
        Ok(())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "list_agents")]
pub async fn list_agents(cursor: Option<String>) -> Result<Page<AgentView>, AppError> {
    use ssr::*;
    respond(async { backend()?.list_agents(&sponsor()?, PageRequest { limit: Some(25), cursor }).await })
        .await
}

#[server(prefix = "/rpc", endpoint = "list_policies")]
pub async fn list_policies() -> Result<Vec<PolicySummary>, AppError> {
    use ssr::*;
    respond(async { backend()?.list_policies(&sponsor()?).await }).await
}

/// Form-friendly: amounts arrive as decimal strings ("12.50"), blank means no limit.
#[server(prefix = "/rpc", endpoint = "create_agent")]
pub async fn create_agent(
    name: String,
    description: Option<String>,
    policy: Option<String>,
    daily_limit: Option<String>,
    monthly_limit: Option<String>,
) -> Result<AgentCreated, AppError> {
    use ssr::*;
    respond(async {
        let sponsor = sponsor()?;
        let input = NewAgent {
            name,
            description: description.filter(|d| !d.trim().is_empty()),
            policy: policy.filter(|p| !p.trim().is_empty()),
            daily_limit_micros: parse_limit("daily limit", daily_limit)?,
            monthly_limit_micros: parse_limit("monthly limit", monthly_limit)?,
            tags: None,
        };
        let backend = backend()?;
        let created = backend.create_agent(&sponsor, input).await?;
        if is_plain_form_post() {
            // Without JavaScript the browser is redirected back to /agents and never
            // sees this response: the key waits here, once, and the cookie names it.
            let flash = stash_key(sponsor.user_id, created.agent.id, &created.api_key);
            set_cookies(vec![backend.cookie(NEW_KEY_COOKIE, &flash, "/agents", 120)]);
        }
        Ok(created)
    })
    .await
}

/// Cookie that names (never carries) a new key across the redirect of a plain form post.
pub const NEW_KEY_COOKIE: &str = "aegis_new_key";

/// The key created by a plain form post, shown once and then forgotten.
#[server(prefix = "/rpc", endpoint = "take_new_key")]
pub async fn take_new_key() -> Result<Option<AgentCreated>, AppError> {
    use ssr::*;
    respond(async {
        let Some(flash) = request_cookie(NEW_KEY_COOKIE) else {
            return Ok(None);
        };
        let backend = backend()?;
        set_cookies(vec![backend.cookie(NEW_KEY_COOKIE, "", "/agents", 0)]);
        let sponsor = sponsor()?;
        let Some((id, api_key)) = take_key(&flash, sponsor.user_id) else {
            return Ok(None);
        };
        // Only the owner's own agent, and only while that key is still its current key.
        match backend.get_agent(&sponsor, id).await {
            Ok(agent) if agent.key_prefix.as_deref().is_some_and(|p| api_key.starts_with(p)) => {
                Ok(Some(AgentCreated { agent, api_key: api_key.to_owned() }))
            }
            _ => Ok(None),
        }
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "set_agent_state")]
pub async fn set_agent_state(id: Uuid, state: String) -> Result<AgentView, AppError> {
    use ssr::*;
    respond(async {
        let (backend, sponsor) = (backend()?, sponsor()?);
        match state.as_str() {
            "suspend" => {
                backend.suspend_agent(&sponsor, id, Some("suspended from the dashboard".into())).await
            }
            "resume" => backend.resume_agent(&sponsor, id).await,
            "delete" => backend.delete_agent(&sponsor, id).await,
            _ => Err(AppError::bad_request("invalid_request", "state must be suspend, resume or delete")),
        }
    })
    .await
}

/// A page of the approvals queue; `status` blank or absent means all.
#[server(prefix = "/rpc", endpoint = "list_approvals")]
pub async fn list_approvals(
    status: Option<String>,
    cursor: Option<String>,
) -> Result<Page<ApprovalView>, AppError> {
    use ssr::*;
    respond(async {
        let query = ApprovalQuery {
            status: status.filter(|s| !s.is_empty() && s != "all"),
            agent_id: None,
            limit: Some(20),
            cursor,
        };
        backend()?.list_approvals(&sponsor()?, query).await
    })
    .await
}

/// One approval in full (the normalised target, every header masked where it is a
/// credential, the whole body): loaded only when the sponsor opens it.
#[server(prefix = "/rpc", endpoint = "get_approval")]
pub async fn get_approval(id: Uuid) -> Result<ApprovalView, AppError> {
    use ssr::*;
    respond(async { backend()?.get_approval(&sponsor()?, id).await }).await
}

/// How many approvals wait (at most 100 are counted: "100+" beyond).
#[server(prefix = "/rpc", endpoint = "pending_approvals")]
pub async fn pending_approvals() -> Result<(usize, bool), AppError> {
    use ssr::*;
    respond(async {
        let query =
            ApprovalQuery { status: Some("pending".into()), agent_id: None, limit: Some(100), cursor: None };
        let page = backend()?.list_approvals(&sponsor()?, query).await?;
        Ok((page.items.len(), page.next_cursor.is_some()))
    })
    .await
}

/// Approve (AEGIS then performs the stored request once) or reject.
#[server(prefix = "/rpc", endpoint = "decide_approval")]
pub async fn decide_approval(
    id: Uuid,
    decision: String,
    reason: Option<String>,
) -> Result<ApprovalView, AppError> {
    use ssr::*;
    respond(async {
        let (backend, sponsor) = (backend()?, sponsor()?);
        let reason = reason.filter(|r| !r.trim().is_empty());
        match decision.as_str() {
            "approve" => backend.approve(&sponsor, id, ApproveRequest { reason, grant: None }).await,
            "reject" => backend.reject(&sponsor, id, RejectRequest { reason }).await,
            _ => Err(AppError::bad_request("invalid_request", "decision must be approve or reject")),
        }
    })
    .await
}

/// A page of the audit log, filtered like `GET /api/audit`. (Flat arguments: an
/// all-empty filter still posts a well-formed body.)
#[server(prefix = "/rpc", endpoint = "list_audit")]
pub async fn list_audit(
    agent: Option<String>,
    kind: Option<String>,
    decision: Option<String>,
    request_id: Option<String>,
    cursor: Option<String>,
) -> Result<Page<AuditRecord>, AppError> {
    use ssr::*;
    respond(async {
        let query = AuditQuery {
            agent,
            kind,
            decision,
            request_id,
            cursor,
            limit: Some("25".into()),
            ..AuditQuery::default()
        };
        backend()?.list_audit(&sponsor()?, query).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "verify_audit")]
pub async fn verify_audit() -> Result<ChainVerdict, AppError> {
    use ssr::*;
    respond(async { backend()?.verify_audit(&sponsor()?).await }).await
}

// --- agent detail, vault and connections pages ---

#[server(prefix = "/rpc", endpoint = "get_agent")]
pub async fn get_agent(id: Uuid) -> Result<AgentView, AppError> {
    use ssr::*;
    respond(async { backend()?.get_agent(&sponsor()?, id).await }).await
}

/// The sponsor's agents for pickers (grant checkboxes, names in lists): one page of
/// up to 200, the most a page may hold.
#[server(prefix = "/rpc", endpoint = "agent_choices")]
pub async fn agent_choices() -> Result<Page<AgentView>, AppError> {
    use ssr::*;
    respond(async {
        backend()?.list_agents(&sponsor()?, PageRequest { limit: Some(200), cursor: None }).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "agent_wallet")]
pub async fn agent_wallet(id: Uuid) -> Result<WalletView, AppError> {
    use ssr::*;
    respond(async { backend()?.agent_wallet(&sponsor()?, id).await }).await
}

/// Form-friendly wallet editor: amounts as decimal strings where blank means no
/// limit, a blank threshold turns alerts off, a blank time zone keeps the current one.
#[server(prefix = "/rpc", endpoint = "update_wallet")]
pub async fn update_wallet(
    id: Uuid,
    daily_limit: Option<String>,
    monthly_limit: Option<String>,
    timezone: Option<String>,
    alert_threshold_pct: Option<String>,
) -> Result<WalletView, AppError> {
    use ssr::*;
    respond(async {
        let update = WalletUpdate {
            daily_limit_micros: Some(parse_limit("daily limit", daily_limit)?.unwrap_or(0)),
            monthly_limit_micros: Some(parse_limit("monthly limit", monthly_limit)?.unwrap_or(0)),
            timezone: timezone.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            alert_threshold_pct: Some(parse_percent(alert_threshold_pct)?),
        };
        backend()?.update_agent_wallet(&sponsor()?, id, update).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "agent_trust")]
pub async fn agent_trust(id: Uuid) -> Result<TrustView, AppError> {
    use ssr::*;
    respond(async { backend()?.agent_trust(&sponsor()?, id).await }).await
}

/// The MCP tools the agent sees through `/mcp`, its policy permitting.
#[server(prefix = "/rpc", endpoint = "agent_tools")]
pub async fn agent_tools(id: Uuid) -> Result<Vec<AgentTool>, AppError> {
    use ssr::*;
    respond(async { backend()?.agent_tools(&sponsor()?, id).await }).await
}

#[server(prefix = "/rpc", endpoint = "set_agent_policy")]
pub async fn set_agent_policy(id: Uuid, policy: String) -> Result<AgentView, AppError> {
    use ssr::*;
    respond(async {
        let patch = AgentPatch { policy: Some(policy), ..AgentPatch::default() };
        backend()?.update_agent(&sponsor()?, id, patch).await
    })
    .await
}

/// Issues a new key (every earlier one stops working). Like `create_agent`, a plain
/// form post gets the key back once, through the page (the flash cookie names it only).
#[server(prefix = "/rpc", endpoint = "rotate_agent_key")]
pub async fn rotate_agent_key(id: Uuid) -> Result<KeyRotated, AppError> {
    use ssr::*;
    respond(async {
        let backend = backend()?;
        let sponsor = sponsor()?;
        let rotated = backend.rotate_agent_key(&sponsor, id).await?;
        if is_plain_form_post() {
            let flash = stash_key(sponsor.user_id, rotated.agent_id, &rotated.api_key);
            set_cookies(vec![backend.cookie(NEW_KEY_COOKIE, &flash, "/agents", 120)]);
        }
        Ok(rotated)
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "list_secrets")]
pub async fn list_secrets() -> Result<Vec<SecretView>, AppError> {
    use ssr::*;
    respond(async { backend()?.list_secrets(&sponsor()?).await }).await
}

/// Grants or revokes one agent's use of one secret (the other grants stay).
#[server(prefix = "/rpc", endpoint = "set_secret_grant")]
pub async fn set_secret_grant(secret: Uuid, agent: Uuid, grant: String) -> Result<SecretView, AppError> {
    use ssr::*;
    respond(async {
        let granted = match grant.as_str() {
            "grant" => true,
            "revoke" => false,
            _ => return Err(AppError::bad_request("invalid_request", "grant must be grant or revoke")),
        };
        backend()?.set_secret_grant(&sponsor()?, secret, agent, granted).await
    })
    .await
}

/// Form-friendly: hosts comma or line separated; a header name (with an optional
/// format) or a query parameter says how the value is injected; granted agents
/// arrive as `agents[0]`, `agents[1]`… (a query-string list).
#[server(prefix = "/rpc", endpoint = "create_secret")]
pub async fn create_secret(
    name: String,
    value: String,
    allowed_hosts: String,
    header: Option<String>,
    format: Option<String>,
    query_param: Option<String>,
    agents: Option<Vec<Uuid>>,
) -> Result<SecretView, AppError> {
    use ssr::*;
    respond(async {
        let inject = injection_from_form(header, format, query_param)?;
        let input = NewSecret {
            name,
            value,
            allowed_hosts: split_hosts(&allowed_hosts),
            inject,
            agents: agents.unwrap_or_default(),
        };
        backend()?.create_secret(&sponsor()?, input).await
    })
    .await
}

/// Replaces a secret's value; the old value stops being injected at once.
#[server(prefix = "/rpc", endpoint = "rotate_secret")]
pub async fn rotate_secret(id: Uuid, value: String) -> Result<SecretView, AppError> {
    use ssr::*;
    respond(async {
        let update = SecretUpdate { value: Some(value), ..SecretUpdate::default() };
        backend()?.update_secret(&sponsor()?, id, update).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "delete_secret")]
pub async fn delete_secret(id: Uuid) -> Result<(), AppError> {
    use ssr::*;
    respond(async { backend()?.delete_secret(&sponsor()?, id).await }).await
}

/// The sponsor's connections and the origin an SDK should use in front of each
/// `gateway_path` (the configured public URL, else the address this page came from).
#[server(prefix = "/rpc", endpoint = "list_connections")]
pub async fn list_connections() -> Result<(String, Vec<ConnectionView>), AppError> {
    use ssr::*;
    respond(async {
        let backend = backend()?;
        let connections = backend.list_connections(&sponsor()?).await?;
        Ok((backend.public_origin().unwrap_or_else(request_origin), connections))
    })
    .await
}

/// Form-friendly: the cost per call as a decimal string, blank meaning free;
/// `provider` "openai" or "anthropic" meters calls by AEGIS's default price table
/// for that provider (blank or "flat": the cost per call).
#[server(prefix = "/rpc", endpoint = "create_connection")]
pub async fn create_connection(
    name: String,
    base_url: String,
    secret: Option<String>,
    cost: Option<String>,
    provider: Option<String>,
    kind: Option<String>,
    tools: Option<String>,
) -> Result<ConnectionView, AppError> {
    use ssr::*;
    respond(async {
        let kind = kind.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
        // An MCP connection has no metered pricing (its tool calls cost the cost per call).
        let provider = if kind.as_deref() == Some("mcp") { None } else { provider };
        let pricing = pricing_from_form(provider.as_deref().unwrap_or("flat"), None, None, None)?;
        // An MCP connection's allow-list: tool names separated by commas or spaces; blank: every tool.
        let tools: Vec<String> = tools
            .unwrap_or_default()
            .split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let input = NewConnection {
            name,
            base_url,
            secret: secret.filter(|s| !s.trim().is_empty()),
            cost_micros: parse_limit("cost", cost)?,
            pricing,
            rate_limits: None,
            kind,
            tools: (!tools.is_empty()).then_some(tools),
            record_arguments: None,
        };
        backend()?.create_connection(&sponsor()?, input).await
    })
    .await
}

/// The price editor: `provider` "flat" removes metering (calls cost the connection's
/// flat price again); "openai" or "anthropic" meters calls by `models` (JSON object
/// text: model name → prices; blank means AEGIS's whole default table for the
/// provider, a model given as `{}` takes its default prices), an optional output
/// cap and an optional `fallback` (JSON text) for models not listed.
#[server(prefix = "/rpc", endpoint = "update_connection_pricing")]
pub async fn update_connection_pricing(
    id: Uuid,
    provider: String,
    models: Option<String>,
    max_output_tokens: Option<String>,
    fallback: Option<String>,
) -> Result<ConnectionView, AppError> {
    use ssr::*;
    respond(async {
        let pricing = pricing_from_form(&provider, models, max_output_tokens, fallback)?;
        let patch = ConnectionPatch { pricing: Some(pricing), ..ConnectionPatch::default() };
        backend()?.patch_connection(&sponsor()?, id, patch).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "delete_connection")]
pub async fn delete_connection(id: Uuid) -> Result<(), AppError> {
    use ssr::*;
    respond(async { backend()?.delete_connection(&sponsor()?, id).await }).await
}

/// "Allowed hosts" as typed: separated by commas or new lines, blanks dropped.
#[cfg(any(feature = "ssr", test))]
fn split_hosts(text: &str) -> Vec<String> {
    text.split([',', '\n']).map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect()
}

/// A header (blank format: the value alone) or a query parameter, whichever the form
/// filled; the vault checks the names themselves.
#[cfg(any(feature = "ssr", test))]
fn injection_from_form(
    header: Option<String>,
    format: Option<String>,
    query_param: Option<String>,
) -> Result<Injection, AppError> {
    let filled = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    match (filled(header), filled(format), filled(query_param)) {
        (Some(header), format, None) => {
            Ok(Injection::Header { header, format: format.unwrap_or_else(|| "{secret}".into()) })
        }
        (None, None, Some(query_param)) => Ok(Injection::QueryParam { query_param }),
        (None, None, None) => {
            Err(AppError::validation("say how to inject it: a header name or a query parameter"))
        }
        _ => Err(AppError::validation("inject it as a header or as a query parameter, not both")),
    }
}

#[cfg(any(feature = "ssr", test))]
fn invalid_pricing(message: impl Into<String>) -> AppError {
    AppError::new(422, "invalid_pricing", message)
}

/// A JSON field of the price editor; blank means omitted. The message names the
/// field, and says whether the text is not JSON at all or not the right shape.
#[cfg(any(feature = "ssr", test))]
fn json_field<T: serde::de::DeserializeOwned>(
    field: &str,
    text: Option<String>,
) -> Result<Option<T>, AppError> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else { return Ok(None) };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid_pricing(format!("{field} is not valid JSON: {e}")))?;
    serde_json::from_value(value).map(Some).map_err(|e| invalid_pricing(format!("{field}: {e}")))
}

/// The price editor's fields as a connection's pricing: `None` for flat (no
/// metering; `models` and the rest are ignored), else the provider's [`Pricing`]
/// as typed. Completing and checking prices is the server's job.
#[cfg(any(feature = "ssr", test))]
fn pricing_from_form(
    provider: &str,
    models: Option<String>,
    max_output_tokens: Option<String>,
    fallback: Option<String>,
) -> Result<Option<Pricing>, AppError> {
    let provider = match provider.trim() {
        "" | "flat" => return Ok(None),
        "openai" => PricingProvider::Openai,
        "anthropic" => PricingProvider::Anthropic,
        other => {
            return Err(invalid_pricing(format!(
                "pricing.provider: {other:?} is not one of flat, openai, anthropic"
            )));
        }
    };
    let max_output_tokens = match max_output_tokens.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| {
            invalid_pricing(format!("pricing.max_output_tokens: {t:?} is not a whole number of tokens"))
        })?),
    };
    Ok(Some(Pricing {
        provider,
        models: json_field("pricing.models", models)?,
        max_output_tokens,
        fallback: json_field("pricing.fallback", fallback)?,
    }))
}

/// A whole percentage; blank means 0 (alerts off). The range is the wallet's rule.
#[cfg(any(feature = "ssr", test))]
fn parse_percent(text: Option<String>) -> Result<i32, AppError> {
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(0),
        Some(t) => t.trim_end_matches('%').trim().parse().map_err(|_| {
            AppError::new(
                422,
                "invalid_alert_threshold",
                format!("alert threshold: {t:?} is not a whole percentage"),
            )
        }),
    }
}

#[cfg(any(feature = "ssr", test))]
fn parse_limit(label: &str, text: Option<String>) -> Result<Option<i64>, AppError> {
    match text.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => {
            crate::money::parse_units(t).map(Some).map_err(|e| AppError::validation(format!("{label}: {e}")))
        }
    }
}

#[server(prefix = "/rpc", endpoint = "get_policy")]
pub async fn get_policy(id: Uuid) -> Result<PolicyView, AppError> {
    use ssr::*;
    respond(async { backend()?.get_policy(&sponsor()?, id).await }).await
}

/// Creates a policy (no `id`) or saves a new version of one (`id`). The source must
/// compile; the compiler's message comes back as the error.
#[server(prefix = "/rpc", endpoint = "save_policy")]
pub async fn save_policy(
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
    source: String,
) -> Result<PolicyView, AppError> {
    use ssr::*;
    respond(async {
        let (backend, sponsor) = (backend()?, sponsor()?);
        let description = description.filter(|d| !d.trim().is_empty());
        match id.as_deref().map(str::trim).filter(|i| !i.is_empty()) {
            Some(id) => {
                let id = id.parse::<Uuid>().map_err(|_| AppError::not_found("policy"))?;
                backend.update_policy(&sponsor, id, PolicyUpdate { source: Some(source), description }).await
            }
            None => {
                let name = name.unwrap_or_default();
                let created =
                    backend.create_policy(&sponsor, NewPolicy { name, description, source }).await?;
                if is_plain_form_post() {
                    leptos_axum::redirect(&format!("/policies?id={}", created.id));
                }
                Ok(created)
            }
        }
    })
    .await
}

/// The playground: a dry run of a policy for an agent and a sample action. `policy`
/// blank means the agent's own; `cost` is a decimal amount ("0.25"). A non-blank
/// `mcp_tool` makes it an MCP tool call (`input.mcp`) on connection `mcp_server`
/// with `mcp_arguments` (a JSON object, blank: `{}`).
#[server(prefix = "/rpc", endpoint = "evaluate_policy")]
#[allow(clippy::too_many_arguments)]
pub async fn evaluate_policy(
    agent_id: String,
    policy: Option<String>,
    method: String,
    url: String,
    body: Option<String>,
    cost: Option<String>,
    mcp_server: Option<String>,
    mcp_tool: Option<String>,
    mcp_arguments: Option<String>,
) -> Result<PolicyVerdict, AppError> {
    use ssr::*;
    respond(async {
        let agent_id =
            agent_id.trim().parse::<Uuid>().map_err(|_| AppError::validation("choose one of your agents"))?;
        let policy_id = match policy.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            Some(p) => Some(p.parse::<Uuid>().map_err(|_| AppError::not_found("policy"))?),
            None => None,
        };
        let trial = PolicyTrial {
            agent_id,
            policy_id,
            method,
            url,
            body: body.filter(|b| !b.is_empty()),
            cost_micros: parse_limit("cost", cost)?,
            mcp: mcp_trial(mcp_server, mcp_tool, mcp_arguments)?,
            ..PolicyTrial::default()
        };
        backend()?.evaluate_policy(&sponsor()?, trial).await
    })
    .await
}

/// The playground's MCP fields: none when the tool is blank.
#[cfg(any(feature = "ssr", test))]
fn mcp_trial(
    server: Option<String>,
    tool: Option<String>,
    arguments: Option<String>,
) -> Result<Option<McpTrial>, AppError> {
    let Some(tool) = tool.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()) else { return Ok(None) };
    let server = server.map(|s| s.trim().to_owned()).unwrap_or_default();
    let arguments = match arguments.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
        None => None,
        Some(text) => {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| AppError::validation(format!("MCP arguments are not JSON: {e}")))?;
            if !value.is_object() {
                return Err(AppError::validation("MCP arguments must be a JSON object"));
            }
            Some(value)
        }
    };
    Ok(Some(McpTrial { server, tool, arguments }))
}

#[server(prefix = "/rpc", endpoint = "list_sessions")]
pub async fn list_sessions() -> Result<Vec<SessionView>, AppError> {
    use ssr::*;
    respond(async { backend()?.list_sessions(&sponsor()?).await }).await
}

/// Revokes a session; revoking the one in use signs this browser out.
#[server(prefix = "/rpc", endpoint = "revoke_session")]
pub async fn revoke_session(id: Uuid) -> Result<(), AppError> {
    use ssr::*;
    respond(async {
        let (backend, sponsor) = (backend()?, sponsor()?);
        backend.revoke_session(&sponsor, id).await?;
        if id == sponsor.session_id {
            set_session_cookies(&backend, None);
            leptos_axum::redirect("/login");
        }
        Ok(())
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "get_usage")]
pub async fn get_usage(days: Option<u32>) -> Result<UsageReport, AppError> {
    use ssr::*;
    respond(async { backend()?.usage(&sponsor()?, UsageQuery { days, agent_id: None }).await }).await
}

/// One page of an agent's wallet history (50 holds), newest first.
#[server(prefix = "/rpc", endpoint = "wallet_history")]
pub async fn wallet_history(id: Uuid, cursor: Option<String>) -> Result<Page<WalletEntry>, AppError> {
    use ssr::*;
    respond(async {
        backend()?.agent_wallet_history(&sponsor()?, id, PageRequest { limit: Some(50), cursor }).await
    })
    .await
}

#[server(prefix = "/rpc", endpoint = "overview_stats")]
pub async fn overview_stats(range: Option<String>) -> Result<DashboardStats, AppError> {
    use ssr::*;
    respond(async {
        let range = StatsRange::parse(range.as_deref())?;
        backend()?.dashboard_stats(&sponsor()?, range).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_playground_s_mcp_fields_make_a_tool_call_only_with_a_tool() {
        let text = |s: &str| Some(s.to_owned());
        assert_eq!(mcp_trial(text("notes"), text("  "), text("{}")).unwrap(), None, "blank tool: plain HTTP");
        assert_eq!(mcp_trial(None, None, None).unwrap(), None);
        assert_eq!(
            mcp_trial(text(" notes "), text(" drop_all "), text(" {\"all\": true} ")).unwrap(),
            Some(McpTrial {
                server: "notes".into(),
                tool: "drop_all".into(),
                arguments: Some(serde_json::json!({"all": true})),
            })
        );
        assert_eq!(mcp_trial(text("notes"), text("read_note"), text("")).unwrap().unwrap().arguments, None);
        for bad in ["[1]", "not json"] {
            let e = mcp_trial(text("notes"), text("read_note"), text(bad)).unwrap_err();
            assert_eq!(e.code, "validation_failed", "{bad}");
        }
    }

    #[test]
    fn next_must_be_a_local_path() {
        for good in [
            "/agents/1",
            "/",
            "/audit?agent=1&cursor=a%20b",
            "/agents/1?tab=keys",
            "/approvals?status=pending",
        ] {
            assert_eq!(safe_next(Some(good)), good, "{good}");
        }
        for bad in [
            "//evil.example",
            "///evil.example",
            "https://evil.example",
            "http:evil.example",
            "/\\evil",
            "/\\/evil",
            "\\\\evil",
            "/%09/evil.example",
            "/\t/evil.example",
            "/%0a/evil",
            "/%0D/evil",
            "/%2F%2Fevil",
            "/%2f/evil",
            "/%5Cevil",
            "/%5c%5cevil",
            "/%252F%252Fevil",
            "/%2",
            "/%zz",
            " /agents",
            "/ag ents",
            "/agents\n",
            "/\u{3000}/evil",
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "data:text/html,x",
            "agents",
            "",
            "?next=/x",
            "#/evil",
        ] {
            assert_eq!(safe_next(Some(bad)), "/agents", "{bad:?}");
        }
        assert_eq!(safe_next(Some(&format!("/{}", "a".repeat(3000)))), "/agents");
        assert_eq!(safe_next(None), "/agents");
    }

    #[test]
    fn blank_limit_means_none_and_garbage_is_422() {
        assert_eq!(parse_limit("x", Some(" ".into())), Ok(None));
        assert_eq!(parse_limit("x", Some("2.5".into())), Ok(Some(2_500_000)));
        assert_eq!(parse_limit("x", Some("lots".into())).unwrap_err().status, 422);
    }

    #[test]
    fn hosts_split_on_commas_and_lines() {
        assert_eq!(
            split_hosts(" api.example.com,\n*.example.org\r\n, \n"),
            ["api.example.com", "*.example.org"]
        );
        assert!(split_hosts("  ").is_empty());
    }

    #[test]
    fn injection_is_a_header_or_a_query_parameter() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            injection_from_form(some(" Authorization "), some("Bearer {secret}"), some(" ")),
            Ok(Injection::Header { header: "Authorization".into(), format: "Bearer {secret}".into() })
        );
        assert_eq!(
            injection_from_form(some("X-Key"), None, None),
            Ok(Injection::Header { header: "X-Key".into(), format: "{secret}".into() })
        );
        assert_eq!(
            injection_from_form(None, some(""), some("api_key")),
            Ok(Injection::QueryParam { query_param: "api_key".into() })
        );
        assert_eq!(injection_from_form(None, None, None).unwrap_err().status, 422);
        assert_eq!(injection_from_form(some("X-Key"), None, some("api_key")).unwrap_err().status, 422);
        assert_eq!(injection_from_form(None, some("Bearer {secret}"), some("k")).unwrap_err().status, 422);
    }

    #[test]
    fn pricing_form_flat_is_none_and_json_errors_name_the_field() {
        let some = |s: &str| Some(s.to_owned());
        // Flat removes metering whatever else the form still holds.
        assert_eq!(pricing_from_form("flat", some("{oops"), some("x"), None), Ok(None));
        assert_eq!(pricing_from_form("", None, None, None), Ok(None));
        // Blank models: the provider's whole default table (omitted).
        assert_eq!(
            pricing_from_form("openai", some("  "), some(" 256 "), some("")),
            Ok(Some(Pricing {
                provider: PricingProvider::Openai,
                models: None,
                max_output_tokens: Some(256),
                fallback: None,
            }))
        );
        let priced = pricing_from_form(
            "anthropic",
            some(r#"{"claude-haiku-4-5": {}, "mine": {"input_per_mtok_micros": 1, "output_per_mtok_micros": 2}}"#),
            None,
            some(r#"{"input_per_mtok_micros": 3, "output_per_mtok_micros": 4}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(priced.provider, PricingProvider::Anthropic);
        let models = priced.models.unwrap();
        assert_eq!(models["claude-haiku-4-5"], ModelPrice::default());
        assert_eq!(models["mine"].output_per_mtok_micros, Some(2));
        assert_eq!(priced.fallback.unwrap().input_per_mtok_micros, Some(3));

        let bad_json = pricing_from_form("openai", some("{\"gpt-4o\": "), None, None).unwrap_err();
        assert_eq!((bad_json.status, bad_json.code.as_str()), (422, "invalid_pricing"));
        assert!(bad_json.message.starts_with("pricing.models is not valid JSON"), "{}", bad_json.message);
        let bad_shape =
            pricing_from_form("openai", some(r#"{"gpt-4o": {"input": 1}}"#), None, None).unwrap_err();
        assert!(bad_shape.message.starts_with("pricing.models: unknown field"), "{}", bad_shape.message);
        let bad_fallback = pricing_from_form("openai", None, None, some("[1,")).unwrap_err();
        assert!(
            bad_fallback.message.starts_with("pricing.fallback is not valid JSON"),
            "{}",
            bad_fallback.message
        );
        let bad_cap = pricing_from_form("openai", None, some("lots"), None).unwrap_err();
        assert_eq!(bad_cap.code, "invalid_pricing");
        assert!(bad_cap.message.starts_with("pricing.max_output_tokens"), "{}", bad_cap.message);
        assert_eq!(pricing_from_form("gemini", None, None, None).unwrap_err().code, "invalid_pricing");
    }

    #[test]
    fn percent_blank_is_off_and_garbage_is_422() {
        assert_eq!(parse_percent(None), Ok(0));
        assert_eq!(parse_percent(Some(" 80% ".into())), Ok(80));
        assert_eq!(parse_percent(Some("most".into())).unwrap_err().code, "invalid_alert_threshold");
    }
}
