//! The browser side: session cookies, silent refresh, page guard and CSRF checks
//! for everything the dashboard serves (pages and `/rpc` server functions).

use app::backend::Backend;
use app::model::{ClientMeta, SessionUser};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::AppState;
use crate::backend::{ACCESS_COOKIE, REFRESH_COOKIE};

const PUBLIC_PAGES: &[&str] = &["/login", "/register"];

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
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

pub async fn session(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let services = &state.services;
    if !same_origin(req.method(), req.headers(), services.config.public_url.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": {"code": "csrf_rejected", "message": "cross-site request refused"}})),
        )
            .into_response();
    }
    let client = req.extensions().get::<ClientMeta>().cloned().unwrap_or_default();
    let mut session: Option<SessionUser> = None;
    let mut set_cookies: Vec<String> = Vec::new();
    if let Some(access) = cookie(req.headers(), ACCESS_COOKIE) {
        session = services.auth.authenticate(access).await.ok();
    }
    if session.is_none()
        && let Some(refresh) = cookie(req.headers(), REFRESH_COOKIE).map(str::to_owned)
    {
        match services.refresh_browser_session(&refresh, &client).await {
            Ok(fresh) => {
                session = services.auth.access_tokens().verify(&fresh.tokens.access_token).ok();
                set_cookies = services.session_cookies(Some(&fresh.tokens));
            }
            Err(_) => set_cookies = services.session_cookies(None),
        }
    }

    let path = req.uri().path().to_owned();
    let navigation = req.method() == Method::GET && is_page(&path);
    let public = PUBLIC_PAGES.contains(&path.as_str());
    let redirect = match (&session, navigation, public) {
        (None, true, false) => {
            let here = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
            Some(format!("/login?next={}", urlencode(here)))
        }
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
    for c in set_cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
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
