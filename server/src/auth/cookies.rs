//! The session cookies' names and attributes: one rule for the HTTP layer and for
//! the dashboard's server functions (through the `Backend` port), with no import of
//! the HTTP layer from the domain.

use app::model::TokenPair;

use crate::config::Config;

/// The access cookie: `__Host-` prefixed over https (Secure, `Path=/`, no `Domain`:
/// a sibling subdomain cannot plant or overwrite it).
pub fn access_cookie(config: &Config) -> &'static str {
    if config.secure_cookies { "__Host-aegis_at" } else { "aegis_at" }
}

/// The refresh cookie: only ever sent to [`REFRESH_PATH`] (the server functions and
/// the page-refresh hop), never with page loads, assets, `/api` or `/ws`.
/// `__Secure-` over https (`__Host-` would require `Path=/`).
pub fn refresh_cookie(config: &Config) -> &'static str {
    if config.secure_cookies { "__Secure-aegis_rt" } else { "aegis_rt" }
}

pub const REFRESH_PATH: &str = "/rpc";
/// Where a page load with an expired access cookie is sent to renew the session
/// (under [`REFRESH_PATH`], so the refresh cookie comes along); `?next=` brings the
/// browser back.
pub const SESSION_HOP: &str = "/rpc/session";

/// One `Set-Cookie` value with AEGIS's attributes; `max_age` 0 deletes it.
pub fn set_cookie(config: &Config, name: &str, value: &str, path: &str, max_age: u64) -> String {
    let secure = if config.secure_cookies { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The session's cookies, or their deletion. The access cookie lives as long as the
/// session (its JWT still expires in minutes): its presence tells a page load that
/// a refresh is worth trying.
pub fn session_cookies(config: &Config, tokens: Option<&TokenPair>) -> Vec<String> {
    let life = config.refresh_token_ttl.as_secs();
    let (access, refresh) = (access_cookie(config), refresh_cookie(config));
    match tokens {
        Some(t) => vec![
            set_cookie(config, access, &t.access_token, "/", life),
            set_cookie(config, refresh, &t.refresh_token, REFRESH_PATH, life),
        ],
        None => vec![
            set_cookie(config, access, "", "/", 0),
            set_cookie(config, refresh, "", REFRESH_PATH, 0),
            // A refresh cookie from before it was path-scoped.
            set_cookie(config, refresh, "", "/", 0),
        ],
    }
}
