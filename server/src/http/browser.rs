//! The browser side: session cookies, silent refresh, page guard and CSRF checks
//! for everything the dashboard serves (pages and `/rpc` server functions).

use app::backend::Backend;
use app::model::{ClientMeta, SessionUser};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::AppState;
use crate::config::Config;

const PUBLIC_PAGES: &[&str] = &["/login", "/register"];

pub use crate::auth::cookies::{
    REFRESH_PATH, SESSION_HOP, access_cookie, refresh_cookie, session_cookies, set_cookie,
};

fn cookie_values<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    cookie_values(headers, name).next().filter(|v| !v.is_empty())
}

/// True when an auth cookie is sent more than once: a second one was planted (by a
/// sibling subdomain, or on a narrower path) and which one the browser means cannot
/// be told, so the request is refused rather than guessed.
pub(crate) fn duplicate_auth_cookie(headers: &HeaderMap, config: &Config) -> bool {
    [access_cookie(config), refresh_cookie(config)]
        .iter()
        .any(|name| cookie_values(headers, name).count() > 1)
}

pub(crate) fn duplicate_cookie_error() -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"code": "duplicate_cookie",
            "message": "the request carries an authentication cookie more than once; clear this site's cookies and sign in again"}})),
    )
        .into_response()
}

/// Headers on every dashboard answer: no framing (clickjacking), no MIME sniffing,
/// no referrer leaving the site, no caching of signed-in pages, an isolated browsing
/// context; HSTS when served over https.
fn harden(response: &mut Response, config: &Config) {
    let mut set = |name: &'static str, value: &'static str| {
        let name = HeaderName::from_static(name);
        if !response.headers().contains_key(&name) {
            response.headers_mut().insert(name, HeaderValue::from_static(value));
        }
    };
    set(
        "content-security-policy",
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'",
    );
    set("x-frame-options", "DENY");
    set("x-content-type-options", "nosniff");
    set("referrer-policy", "same-origin");
    set("cross-origin-opener-policy", "same-origin");
    set("cross-origin-resource-policy", "same-origin");
    set("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()");
    if config.secure_cookies {
        set("strict-transport-security", "max-age=31536000; includeSubDomains");
    }
}

/// A page is anything the router renders that is not a server function or a file.
fn is_page(path: &str) -> bool {
    !path.starts_with("/rpc/")
        && !path.starts_with("/pkg/")
        && !path.rsplit('/').next().unwrap_or("").contains('.')
}

/// Cross-site request forgery defence for state-changing requests: browsers always
/// send `Sec-Fetch-Site` or `Origin` on cross-origin posts, so a post that carries
/// either must come from this origin. Requests with neither are not from a browser
/// and carry no ambient cookies worth forging.
pub fn same_origin(method: &Method, headers: &HeaderMap, public_url: Option<&str>) -> bool {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    match public_url {
        Some(public) => origin.eq_ignore_ascii_case(public),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
            let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
    }
}

pub async fn session(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = &state.services.config;
    let mut response = guard(&state, req, next).await;
    harden(&mut response, config);
    response
}

async fn guard(state: &AppState, mut req: Request, next: Next) -> Response {
    let services = &state.services;
    let config = &services.config;
    if !same_origin(req.method(), req.headers(), config.public_url.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": {"code": "csrf_rejected", "message": "cross-site request refused"}})),
        )
            .into_response();
    }
    if duplicate_auth_cookie(req.headers(), config) {
        return duplicate_cookie_error();
    }
    let client = req.extensions().get::<ClientMeta>().cloned().unwrap_or_default();
    let path = req.uri().path().to_owned();
    if path == SESSION_HOP {
        let query = req.uri().query().map(str::to_owned);
        let refresh = cookie(req.headers(), refresh_cookie(config)).map(str::to_owned);
        return session_hop(state, query.as_deref(), refresh.as_deref(), &client).await;
    }
    let mut session: Option<SessionUser> = None;
    let mut set_cookies: Vec<String> = Vec::new();
    let access = cookie(req.headers(), access_cookie(config)).map(str::to_owned);
    if let Some(access) = &access {
        session = services.sponsor_session(access, None).await.ok();
    }
    // Server functions carry the (path-scoped) refresh cookie: renew in place.
    if session.is_none()
        && let Some(refresh) = cookie(req.headers(), refresh_cookie(config)).map(str::to_owned)
    {
        match services.refresh_browser_session(&refresh, &client).await {
            Ok(fresh) => {
                session = match services.auth.access_tokens().verify(&fresh.tokens.access_token) {
                    Ok(who) => services.orgs.session(who, None).await.ok(),
                    Err(_) => None,
                };
                set_cookies = services.session_cookies(Some(&fresh.tokens));
            }
            Err(_) => set_cookies = services.session_cookies(None),
        }
    }

    let navigation = req.method() == Method::GET && is_page(&path);
    let public = PUBLIC_PAGES.contains(&path.as_str());
    let here = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    let redirect = match (&session, navigation, public) {
        // A page load never carries the refresh cookie: an (expired) access cookie
        // means a session may be renewable, so take the hop that can see it.
        (None, true, false) if access.is_some() => Some(format!("{SESSION_HOP}?next={}", urlencode(&here))),
        (None, true, false) => Some(format!("/login?next={}", urlencode(&here))),
        (Some(_), true, true) => Some("/agents".to_owned()),
        _ => None,
    };
    let mut response = match redirect {
        Some(to) => Redirect::to(&to).into_response(),
        None => {
            if let Some(s) = session {
                req.extensions_mut().insert(s);
            }
            next.run(req).await
        }
    };
    append_cookies(&mut response, set_cookies);
    response
}

/// `GET /rpc/session?next=…`: renews the session from the refresh cookie and sends
/// the browser back to `next` (a same-origin path only, see [`app::rpc::safe_next`]),
/// or to sign in.
async fn session_hop(
    state: &AppState,
    query: Option<&str>,
    refresh: Option<&str>,
    client: &ClientMeta,
) -> Response {
    let services = &state.services;
    let next = query
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "next").map(|(_, v)| v))
        .map(|v| app::rpc::safe_next(Some(&v)))
        .unwrap_or_else(|| app::rpc::safe_next(None));
    let renewed = match refresh {
        Some(refresh) => services.refresh_browser_session(refresh, client).await.ok(),
        None => None,
    };
    let (to, cookies) = match renewed {
        Some(fresh) => (next, services.session_cookies(Some(&fresh.tokens))),
        None => (format!("/login?next={}", urlencode(&next)), services.session_cookies(None)),
    };
    let mut response = Redirect::to(&to).into_response();
    append_cookies(&mut response, cookies);
    response
}

fn append_cookies(response: &mut Response, cookies: Vec<String>) {
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn csrf_table() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:3000");
        assert!(same_origin(&Method::GET, &headers(&[("origin", "https://evil.example")]), None));
        assert!(same_origin(&post, &headers(&[host, ("origin", "http://127.0.0.1:3000")]), None));
        assert!(same_origin(&post, &headers(&[host, ("sec-fetch-site", "same-origin")]), None));
        assert!(same_origin(&post, &headers(&[host]), None), "non-browser client");
        assert!(!same_origin(&post, &headers(&[host, ("origin", "https://evil.example")]), None));
        assert!(!same_origin(&post, &headers(&[host, ("origin", "null")]), None));
        assert!(!same_origin(&post, &headers(&[host, ("sec-fetch-site", "cross-site")]), None));
        assert!(!same_origin(&post, &headers(&[host, ("sec-fetch-site", "same-site")]), None));
        assert!(!same_origin(
            &post,
            &headers(&[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://127.0.0.1:3000.evil.example")
            ]),
            None
        ));
        let public = Some("https://aegis.example");
        assert!(same_origin(
            &post,
            &headers(&[("host", "internal:3000"), ("origin", "https://aegis.example")]),
            public
        ));
        assert!(!same_origin(
            &post,
            &headers(&[("host", "aegis.example"), ("origin", "http://aegis.example")]),
            public
        ));
    }

    #[test]
    fn duplicate_auth_cookies_are_detected() {
        let plain = Config::from_lookup(|_| None).unwrap();
        let tls = Config::from_lookup(|k| (k == "AEGIS_PUBLIC_URL").then(|| "https://aegis.example".into()))
            .unwrap();
        assert!(!duplicate_auth_cookie(&headers(&[("cookie", "aegis_at=a; aegis_rt=b; x=1; x=2")]), &plain));
        assert!(duplicate_auth_cookie(&headers(&[("cookie", "aegis_at=a; aegis_at=b")]), &plain));
        let mut two_lines = headers(&[("cookie", "aegis_rt=a")]);
        two_lines.append(header::COOKIE, HeaderValue::from_static("aegis_rt=b"));
        assert!(duplicate_auth_cookie(&two_lines, &plain));
        assert!(duplicate_auth_cookie(&headers(&[("cookie", "__Host-aegis_at=a; __Host-aegis_at=b")]), &tls));
        // Over https only the prefixed names are read: a planted plain one is ignored.
        assert!(!duplicate_auth_cookie(&headers(&[("cookie", "__Host-aegis_at=a; aegis_at=b")]), &tls));
        assert_eq!(access_cookie(&tls), "__Host-aegis_at");
        assert_eq!(refresh_cookie(&tls), "__Secure-aegis_rt");
    }

    #[test]
    fn cookies_are_found_among_many() {
        let h = headers(&[("cookie", "a=1; aegis_at=tok; b=2")]);
        assert_eq!(cookie(&h, "aegis_at"), Some("tok"));
        assert_eq!(cookie(&h, "aegis_rt"), None);
        assert_eq!(cookie(&headers(&[("cookie", "aegis_at=")]), "aegis_at"), None);
    }

    #[test]
    fn pages_and_assets() {
        assert!(is_page("/agents"));
        assert!(is_page("/"));
        assert!(!is_page("/pkg/aegis.js"));
        assert!(!is_page("/favicon.ico"));
        assert!(!is_page("/rpc/login"));
        assert_eq!(urlencode("/agents?cursor=a b"), "/agents%3Fcursor%3Da%20b");
    }
}
