//! The dashboard's HTTP contract, without a browser: form posts to server functions
//! set HttpOnly cookies, pages require a session, expired access cookies refresh
//! silently, and cross-site posts are refused.

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::support::{PASSWORD, TestServer, read};

fn cookies(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers.get_all(SET_COOKIE).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

fn value_of(cookies: &[String], name: &str) -> Option<String> {
    cookies
        .iter()
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

async fn form_login(s: &TestServer, email: &str, password: &str) -> reqwest::Response {
    s.http
        .post(s.url("/rpc/login"))
        .header("accept", "text/html")
        .header("origin", &s.base)
        .header("referer", s.url("/login"))
        .form(&[("email", email), ("password", password), ("next", "/agents")])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn form_login_sets_httponly_cookies_and_pages_need_them() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("browser").await;

    let anonymous = s.http.get(s.url("/agents")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()[LOCATION], "/login?next=/agents");
    let login_page = s.http.get(s.url("/login")).send().await.unwrap();
    assert_eq!(login_page.status(), StatusCode::OK);
    assert!(login_page.text().await.unwrap().contains("login-form"));

    let r = form_login(&s, &sponsor.email, PASSWORD).await;
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()[LOCATION], "/agents");
    let set = cookies(r.headers());
    // The refresh cookie is path-scoped: only server functions (and the renewal hop)
    // ever receive it, never page loads, assets, /api or /ws.
    for (name, path) in [("aegis_at", "Path=/;"), ("aegis_rt", "Path=/rpc;")] {
        let c = set
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set: {set:?}"));
        for attr in ["HttpOnly", "SameSite=Lax", path] {
            assert!(c.contains(attr), "{name} lacks {attr}: {c}");
        }
        assert!(!c.contains("Secure"), "no Secure without TLS");
    }
    let jar = format!("aegis_at={}", value_of(&set, "aegis_at").unwrap());
    let page = s.http.get(s.url("/agents")).header(COOKIE, &jar).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("create-agent-form"), "agents page rendered on the server");
    let back = s.http.get(s.url("/login")).header(COOKIE, &jar).send().await.unwrap();
    assert_eq!(back.headers()[LOCATION], "/agents", "signed-in visitors skip the login page");

    let bad = form_login(&s, &sponsor.email, "wrong password 1").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED.as_u16().try_into().unwrap_or(bad.status()));
    assert!(cookies(bad.headers()).iter().all(|c| !c.starts_with("aegis_at=") || c.contains("Max-Age=0")));
}

#[tokio::test]
async fn secure_cookies_behind_https() {
    let s = TestServer::start_with(&[("AEGIS_PUBLIC_URL", "https://aegis.example")]).await;
    let sponsor = s.sponsor("tls").await;
    let r = s
        .http
        .post(s.url("/rpc/login"))
        .header("origin", "https://aegis.example")
        .form(&[("email", sponsor.email.as_str()), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    let set = cookies(r.headers());
    assert!(!set.is_empty() && set.iter().all(|c| c.contains("; Secure")), "{set:?}");
    // `__Host-`: Secure, Path=/, no Domain, so no sibling subdomain can plant it;
    // the path-scoped refresh cookie is `__Secure-`.
    let access = set.iter().find(|c| c.starts_with("__Host-aegis_at=")).expect("__Host- access cookie");
    assert!(access.contains("Path=/;") && !access.to_ascii_lowercase().contains("domain="), "{access}");
    let refresh = set.iter().find(|c| c.starts_with("__Secure-aegis_rt=")).expect("__Secure- refresh cookie");
    assert!(refresh.contains("Path=/rpc;"), "{refresh}");
    assert!(set.iter().all(|c| !c.starts_with("aegis_")), "no unprefixed auth cookie over https: {set:?}");

    // Only the prefixed cookie is honoured over https: a plain `aegis_at` (which a
    // subdomain could set) is not a session.
    let access = value_of(&set, "__Host-aegis_at").unwrap();
    let plain =
        s.http.get(s.url("/agents")).header(COOKIE, format!("aegis_at={access}")).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::SEE_OTHER);
    assert_eq!(plain.headers()[LOCATION], "/login?next=/agents");
    let prefixed = s
        .http
        .get(s.url("/agents"))
        .header(COOKIE, format!("__Host-aegis_at={access}"))
        .send()
        .await
        .unwrap();
    assert_eq!(prefixed.status(), StatusCode::OK);
    assert!(prefixed.headers().contains_key("strict-transport-security"));
}

/// A page load never carries the (path-scoped) refresh cookie: with an expired access
/// cookie it is sent through `/rpc/session`, which renews the session and sends the
/// browser back; server functions renew in place.
#[tokio::test]
async fn expired_access_cookie_is_renewed_through_the_session_hop() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("refresh").await;

    let page = s
        .http
        .get(s.url("/agents?cursor=x"))
        .header(COOKIE, "aegis_at=expired.or.garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/rpc/session?next=/agents%3Fcursor%3Dx");

    let hop = s
        .http
        .get(s.url("/rpc/session?next=/agents%3Fcursor%3Dx"))
        .header(COOKIE, format!("aegis_at=expired.or.garbage; aegis_rt={}", sponsor.refresh))
        .send()
        .await
        .unwrap();
    assert_eq!(hop.status(), StatusCode::SEE_OTHER);
    assert_eq!(hop.headers()[LOCATION], "/agents?cursor=x");
    let set = cookies(hop.headers());
    let (access, refresh) = (value_of(&set, "aegis_at").unwrap(), value_of(&set, "aegis_rt").unwrap());
    assert_ne!(refresh, sponsor.refresh);
    let page =
        s.http.get(s.url("/agents")).header(COOKIE, format!("aegis_at={access}")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);

    // A server function call with an expired access cookie renews in place.
    let rpc = s
        .http
        .post(s.url("/rpc/current_user"))
        .header(COOKIE, format!("aegis_at=expired; aegis_rt={refresh}"))
        .form(&[("x", "")])
        .send()
        .await
        .unwrap();
    assert_eq!(rpc.status(), StatusCode::OK);
    let renewed = value_of(&cookies(rpc.headers()), "aegis_rt").expect("rotated again");
    let r = s.post("/api/auth/refresh", None, serde_json::json!({"refresh_token": renewed})).await;
    assert_eq!(r.status, StatusCode::OK, "the family is intact: {}", r.text);

    // Hostile destinations fall back to /agents (each hop renews: chain the tokens).
    let mut token = r.body["refresh_token"].as_str().unwrap().to_owned();
    for next in ["//evil.example", "/%09/evil.example", "https://evil.example", "/%2F%2Fevil", "/\\evil"] {
        let r = s
            .http
            .get(s.url("/rpc/session"))
            .query(&[("next", next)])
            .header(COOKIE, format!("aegis_rt={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()[LOCATION], "/agents", "{next}");
        token = value_of(&cookies(r.headers()), "aegis_rt").expect("renewed");
    }
    let dead = s.http.get(s.url("/rpc/session?next=/audit")).send().await.unwrap();
    assert_eq!(dead.headers()[LOCATION], "/login?next=/audit");
    assert!(cookies(dead.headers()).iter().any(|c| c.starts_with("aegis_rt=;") && c.contains("Max-Age=0")));
    // Anonymous visitors (no cookie at all) go straight to sign in.
    let anonymous = s.http.get(s.url("/agents")).send().await.unwrap();
    assert_eq!(anonymous.headers()[LOCATION], "/login?next=/agents");
}

/// A refresh cookie presented again after its rotation finished is reuse, not a
/// cache hit: the answer is a sign-in, and the whole session is revoked.
#[tokio::test]
async fn replaying_a_rotated_refresh_cookie_revokes_the_session() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("replay").await;
    let jar = format!("aegis_at=expired; aegis_rt={}", sponsor.refresh);
    let first = s.http.get(s.url("/rpc/session?next=/agents")).header(COOKIE, &jar).send().await.unwrap();
    assert_eq!(first.headers()[LOCATION], "/agents");
    let rotated = value_of(&cookies(first.headers()), "aegis_rt").unwrap();

    let replay = s.http.get(s.url("/rpc/session?next=/agents")).header(COOKIE, &jar).send().await.unwrap();
    assert_eq!(replay.headers()[LOCATION], "/login?next=/agents", "the replay gets no session");
    assert!(value_of(&cookies(replay.headers()), "aegis_rt").is_none_or(|v| v.is_empty()));
    let r = s.post("/api/auth/refresh", None, serde_json::json!({"refresh_token": rotated})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"), "family revoked");
}

/// Two copies of an auth cookie (one planted by a sibling subdomain or on a narrower
/// path) cannot be told apart: the request is refused.
#[tokio::test]
async fn duplicate_auth_cookies_are_refused() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("dup").await;
    for jar in [
        format!("aegis_at={}; aegis_at=planted", sponsor.access),
        format!("aegis_rt=planted; aegis_rt={}", sponsor.refresh),
    ] {
        for (method, path) in
            [(reqwest::Method::GET, "/agents"), (reqwest::Method::POST, "/rpc/current_user")]
        {
            let r =
                read(s.http.request(method, s.url(path)).header(COOKIE, &jar).send().await.unwrap()).await;
            assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "duplicate_cookie"), "{path} {jar}");
        }
    }
    let ws = read(
        s.http
            .get(s.url("/ws"))
            .header(COOKIE, format!("aegis_at={}; aegis_at={}", sponsor.access, sponsor.access))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((ws.status, ws.code()), (StatusCode::BAD_REQUEST, "duplicate_cookie"));
}

/// Every dashboard answer (pages, redirects, server functions, errors) forbids
/// framing and sniffing and sends no referrer.
#[tokio::test]
async fn dashboard_answers_carry_security_headers() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("headers").await;
    let jar = format!("aegis_at={}", sponsor.access);
    let answers = [
        s.http.get(s.url("/login")).send().await.unwrap(),
        s.http.get(s.url("/agents")).send().await.unwrap(),
        s.http.get(s.url("/agents")).header(COOKIE, &jar).send().await.unwrap(),
        s.http.get(s.url("/no-such-page")).header(COOKIE, &jar).send().await.unwrap(),
        s.http.post(s.url("/rpc/current_user")).header(COOKIE, &jar).form(&[("x", "")]).send().await.unwrap(),
        s.http.post(s.url("/rpc/list_agents")).form(&[("x", "")]).send().await.unwrap(),
    ];
    for r in answers {
        let h = r.headers();
        let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let what = format!("{} {}", r.url().path(), r.status());
        assert!(get("content-security-policy").contains("frame-ancestors 'none'"), "{what}");
        assert_eq!(get("x-frame-options"), "DENY", "{what}");
        assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(get("referrer-policy"), "same-origin", "{what}");
        assert_eq!(get("cross-origin-opener-policy"), "same-origin", "{what}");
        assert!(h.get("strict-transport-security").is_none(), "no HSTS over plain http: {what}");
    }
}

/// A key created by a plain (no-JavaScript) form post is shown once through the page;
/// the cookie that bridges the redirect names it but never holds it.
#[tokio::test]
async fn new_agent_keys_never_ride_in_a_cookie() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("flash").await;
    let jar = format!("aegis_at={}", sponsor.access);
    let r = s
        .http
        .post(s.url("/rpc/create_agent"))
        .header(COOKIE, &jar)
        .header("accept", "text/html")
        .header("origin", &s.base)
        .header("referer", s.url("/agents"))
        .form(&[("name", "plain-form")])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection() || r.status().is_success(), "{}", r.status());
    let set = cookies(r.headers());
    let flash = value_of(&set, "aegis_new_key").expect("flash cookie");
    assert!(!flash.contains("aegis_") && !flash.contains('.'), "no key material in the cookie: {flash}");

    let s = &s;
    let take = |jar: String| async move {
        read(
            s.http
                .post(s.url("/rpc/take_new_key"))
                .header(COOKIE, jar)
                .form(&[("x", "")])
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let shown = take(format!("{jar}; aegis_new_key={flash}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    let key = shown.body["api_key"].as_str().expect("the key, once").to_owned();
    assert!(key.starts_with("aegis_"));
    let again = take(format!("{jar}; aegis_new_key={flash}")).await;
    assert!(again.body.is_null(), "shown once only: {}", again.text);
    // Another sponsor presenting the id gets nothing either.
    let other = s.sponsor("other").await;
    let r = s
        .http
        .post(s.url("/rpc/create_agent"))
        .header(COOKIE, &jar)
        .header("accept", "text/html")
        .header("origin", &s.base)
        .form(&[("name", "plain-form-2")])
        .send()
        .await
        .unwrap();
    let flash = value_of(&cookies(r.headers()), "aegis_new_key").unwrap();
    let stolen = take(format!("aegis_at={}; aegis_new_key={flash}", other.access)).await;
    assert!(stolen.body.is_null(), "{}", stolen.text);
}

#[tokio::test]
async fn cross_site_posts_are_refused() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("csrf").await;
    let login = form_login(&s, &sponsor.email, PASSWORD).await;
    let set = cookies(login.headers());
    let jar = format!("aegis_at={}", value_of(&set, "aegis_at").unwrap());

    for (header, value) in
        [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site"), ("origin", "null")]
    {
        let r = s
            .http
            .post(s.url("/rpc/create_agent"))
            .header(COOKIE, &jar)
            .header(header, value)
            .form(&[("name", "forged")])
            .send()
            .await
            .unwrap();
        let r = read(r).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "csrf_rejected"), "{header}: {value}");
    }
    let listed = s.get("/api/agents", &sponsor.access).await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 0, "nothing was created");

    // The same post from the dashboard's own origin works.
    let r = s
        .http
        .post(s.url("/rpc/create_agent"))
        .header(COOKIE, &jar)
        .header("origin", &s.base)
        .form(&[("name", "legit"), ("daily_limit", "2.50")])
        .send()
        .await
        .unwrap();
    let r = read(r).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["api_key"].as_str().unwrap().starts_with("aegis_"));
    assert_eq!(r.body["agent"]["daily_limit_micros"], 2_500_000);

    // Server functions report errors with the same codes as the API, and 4xx statuses.
    let r = s
        .http
        .post(s.url("/rpc/create_agent"))
        .header(COOKIE, &jar)
        .form(&[("name", "legit")])
        .send()
        .await
        .unwrap();
    let r = read(r).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("agent_name_taken")),
        "{}",
        r.text
    );
    let anonymous =
        read(s.http.post(s.url("/rpc/list_agents")).form(&[("x", "")]).send().await.unwrap()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text);
}
