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
    for name in ["aegis_at", "aegis_rt"] {
        let c = set
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} not set: {set:?}"));
        for attr in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(attr), "{name} lacks {attr}: {c}");
        }
        assert!(!c.contains("Secure"), "no Secure without TLS");
    }
    let jar = format!(
        "aegis_at={}; aegis_rt={}",
        value_of(&set, "aegis_at").unwrap(),
        value_of(&set, "aegis_rt").unwrap()
    );
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
}

#[tokio::test]
async fn expired_access_cookie_is_refreshed_silently() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("refresh").await;
    let jar = format!("aegis_at=expired.or.garbage; aegis_rt={}", sponsor.refresh);

    // Two page loads at once with the same old cookie: both succeed with the same new pair.
    let load = || s.http.get(s.url("/agents")).header(COOKIE, &jar).send();
    let (a, b) = tokio::join!(load(), load());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    let (ca, cb) = (cookies(a.headers()), cookies(b.headers()));
    let new_refresh = value_of(&ca, "aegis_rt").expect("rotated refresh cookie");
    assert_ne!(new_refresh, sponsor.refresh);
    assert_eq!(Some(new_refresh.clone()), value_of(&cb, "aegis_rt"));

    // The family is intact: the new refresh token still works through the API.
    let r = s.post("/api/auth/refresh", None, serde_json::json!({"refresh_token": new_refresh})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // A dead refresh cookie is cleared and the visitor is sent to sign in.
    let dead = s.http.get(s.url("/agents")).header(COOKIE, "aegis_rt=rt_dead").send().await.unwrap();
    assert_eq!(dead.status(), StatusCode::SEE_OTHER);
    assert!(cookies(dead.headers()).iter().any(|c| c.starts_with("aegis_rt=;") && c.contains("Max-Age=0")));
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
