//! Sponsor accounts: register, login, refresh rotation and reuse, logout, JWT
//! defects, password policy and throttling.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{PASSWORD, TestServer};

#[tokio::test]
async fn register_returns_tokens_and_normalises_email() {
    let s = TestServer::start().await;
    let r = s
        .post(
            "/api/auth/register",
            None,
            json!({"email": "  Ada@Example.COM ", "password": PASSWORD, "name": " Ada "}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    assert_eq!(r.body["user"]["email"], "ada@example.com");
    assert_eq!(r.body["user"]["name"], "Ada");
    assert!(r.body["refresh_token"].as_str().unwrap().starts_with("rt_"));
    assert!(!r.text.contains(PASSWORD) && !r.text.contains("argon2"), "no password material in responses");

    let me = s.get("/api/auth/me", r.body["access_token"].as_str().unwrap()).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], "ada@example.com");

    let dup = s
        .post(
            "/api/auth/register",
            None,
            json!({"email": "ADA@example.com", "password": PASSWORD, "name": "x"}),
        )
        .await;
    assert_eq!((dup.status, dup.code()), (StatusCode::CONFLICT, "email_taken"));
}

#[tokio::test]
async fn registration_validates_input() {
    let s = TestServer::start().await;
    let cases = [
        (json!({"email": "a@example.com", "password": "short1", "name": "A"}), "weak_password"),
        (json!({"email": "a@example.com", "password": "aaaaaaaaaaaaaaaa", "name": "A"}), "weak_password"),
        (json!({"email": "a@example.com", "password": "1234567890123", "name": "A"}), "weak_password"),
        (json!({"email": "not-an-email", "password": PASSWORD, "name": "A"}), "validation_failed"),
        (json!({"email": "a@example.com", "password": PASSWORD, "name": "  "}), "validation_failed"),
    ];
    for (body, code) in cases {
        let r = s.post("/api/auth/register", None, body.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{body}");
    }
}

#[tokio::test]
async fn login_succeeds_and_failures_are_indistinguishable() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("login").await;
    let ok = s
        .post("/api/auth/login", None, json!({"email": sponsor.email.to_uppercase(), "password": PASSWORD}))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert!(ok.body["access_token"].is_string());

    let wrong = s
        .post("/api/auth/login", None, json!({"email": sponsor.email, "password": "wrong password 1"}))
        .await;
    let unknown =
        s.post("/api/auth/login", None, json!({"email": "nobody@example.com", "password": PASSWORD})).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text, unknown.text, "same answer for unknown email and wrong password");
    assert_eq!(wrong.code(), "invalid_credentials");
}

/// An unknown email must cost a password hash too, or response time reveals which
/// emails have accounts. Medians of several tries; without the dummy hash the
/// unknown case is ~100x faster.
#[tokio::test]
async fn unknown_email_takes_as_long_as_a_wrong_password() {
    let s = TestServer::start_with(&[("AEGIS_LOGIN_MAX_FAILURES", "100")]).await;
    let sponsor = s.sponsor("timing").await;
    let time = async |email: &str| {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let r = s
                .post("/api/auth/login", None, json!({"email": email, "password": "wrong password 1"}))
                .await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            samples.push(start.elapsed());
        }
        samples.sort();
        samples[2]
    };
    let wrong = time(&sponsor.email).await;
    let unknown = time("nobody-here@example.com").await;
    assert!(unknown * 2 >= wrong, "unknown email answered in {unknown:?}, wrong password in {wrong:?}");
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("refresh").await;

    let first = s.post("/api/auth/refresh", None, json!({"refresh_token": sponsor.refresh})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let new_refresh = first.body["refresh_token"].as_str().unwrap().to_owned();
    let new_access = first.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(new_refresh, sponsor.refresh);
    assert_eq!(s.get("/api/auth/me", &new_access).await.status, StatusCode::OK);

    // The old token again: theft is assumed, the whole family dies.
    let reuse = s.post("/api/auth/refresh", None, json!({"refresh_token": sponsor.refresh})).await;
    assert_eq!((reuse.status, reuse.code()), (StatusCode::UNAUTHORIZED, "refresh_token_reused"));
    let after = s.post("/api/auth/refresh", None, json!({"refresh_token": new_refresh})).await;
    assert_eq!((after.status, after.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
    assert_eq!(
        s.get("/api/auth/me", &new_access).await.status,
        StatusCode::UNAUTHORIZED,
        "access tokens of the family stop too"
    );
    assert_eq!(s.get("/api/auth/me", &sponsor.access).await.status, StatusCode::UNAUTHORIZED);

    // Other sessions of the same sponsor are untouched.
    let other = s.post("/api/auth/login", None, json!({"email": sponsor.email, "password": PASSWORD})).await;
    assert_eq!(
        s.get("/api/auth/me", other.body["access_token"].as_str().unwrap()).await.status,
        StatusCode::OK
    );

    for bad in ["", "rt_00", "not-a-token", &"rt_".repeat(100)] {
        let r = s.post("/api/auth/refresh", None, json!({"refresh_token": bad})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }
}

#[tokio::test]
async fn concurrent_refreshes_with_one_token_let_exactly_one_win() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("race").await;
    let attempts =
        (0..8).map(|_| s.post("/api/auth/refresh", None, json!({"refresh_token": sponsor.refresh})));
    let results = futures::future::join_all(attempts).await;
    let wins = results.iter().filter(|r| r.status == StatusCode::OK).count();
    assert_eq!(wins, 1, "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
}

#[tokio::test]
async fn logout_ends_the_session() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("logout").await;
    let r = s.send(reqwest::Method::POST, "/api/auth/logout", Some(&sponsor.access), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/api/auth/me", &sponsor.access).await.status, StatusCode::UNAUTHORIZED);
    let refresh = s.post("/api/auth/refresh", None, json!({"refresh_token": sponsor.refresh})).await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
}

fn sign(header: Value, claims: Value, key: &[u8]) -> String {
    use hmac::Mac;
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// Tokens forged with the server's real key but one defect each are all refused.
#[tokio::test]
async fn jwt_defects_are_rejected_over_http() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("jwt").await;
    let key = s.jwt_key();
    let (_, body, _) = {
        let mut parts = sponsor.access.split('.');
        (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
    };
    let claims: Value = serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
    let with = |k: &str, v: Value| {
        let mut c = claims.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let now = chrono::Utc::now().timestamp();
    // Sanity: the forging itself is faithful, so the defects below are what fails.
    let faithful = sign(hs256.clone(), claims.clone(), &key);
    assert_eq!(s.get("/api/auth/me", &faithful).await.status, StatusCode::OK);

    let cases = [
        ("alg none", format!("{}.{}.", B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()), body)),
        ("HS384", sign(json!({"alg": "HS384", "typ": "JWT"}), claims.clone(), &key)),
        ("missing exp", sign(hs256.clone(), with("exp", Value::Null), &key)),
        ("expired", sign(hs256.clone(), with("exp", json!(now - 60)), &key)),
        ("nbf in the future", sign(hs256.clone(), with("nbf", json!(now + 600)), &key)),
        ("iat in the future", sign(hs256.clone(), with("iat", json!(now + 600)), &key)),
        ("missing iat", sign(hs256.clone(), with("iat", Value::Null), &key)),
        ("lifetime beyond the server's", sign(hs256.clone(), with("exp", json!(now + 30 * 86_400)), &key)),
        ("wrong issuer", sign(hs256.clone(), with("iss", json!("someone-else")), &key)),
        ("missing audience", sign(hs256.clone(), with("aud", Value::Null), &key)),
        ("wrong audience", sign(hs256.clone(), with("aud", json!("aegis-agent")), &key)),
        ("refresh kind", sign(hs256.clone(), with("kind", json!("refresh")), &key)),
        ("wrong typ", sign(json!({"alg": "HS256", "typ": "JWS"}), claims.clone(), &key)),
        ("other key", sign(hs256.clone(), claims.clone(), b"some-other-key-some-other-key-xx")),
        ("tampered", format!("{}x", &sponsor.access[..sponsor.access.len() - 1])),
    ];
    for (name, token) in cases {
        let r = s.get("/api/auth/me", &token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{name}: {}", r.text);
        assert_eq!(r.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{name}");
    }
    let r = s.send(reqwest::Method::GET, "/api/auth/me", None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
}

#[tokio::test]
async fn failed_logins_per_email_are_throttled() {
    let s = TestServer::start_with(&[("AEGIS_LOGIN_MAX_FAILURES", "3")]).await;
    let sponsor = s.sponsor("throttle").await;
    for _ in 0..3 {
        let r = s
            .post("/api/auth/login", None, json!({"email": sponsor.email, "password": "wrong password 1"}))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused while the email is locked.
    let r = s.post("/api/auth/login", None, json!({"email": sponsor.email, "password": PASSWORD})).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=901).contains(&retry), "{retry}");
    let other = s.sponsor("other").await;
    let ok = s.post("/api/auth/login", None, json!({"email": other.email, "password": PASSWORD})).await;
    assert_eq!(ok.status, StatusCode::OK, "other accounts unaffected");
}

#[tokio::test]
async fn attempts_per_address_are_throttled_and_windows_expire() {
    let s =
        TestServer::start_with(&[("AEGIS_LOGIN_MAX_PER_IP", "4"), ("AEGIS_LOGIN_WINDOW_SECS", "2")]).await;
    for i in 0..4 {
        let r = s
            .post(
                "/api/auth/login",
                None,
                json!({"email": format!("u{i}@example.com"), "password": PASSWORD}),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = s.post("/api/auth/login", None, json!({"email": "u9@example.com", "password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = s.post("/api/auth/login", None, json!({"email": "u9@example.com", "password": PASSWORD})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "window expired");
}

/// 50 wrong passwords at once: each attempt is counted before its hash, so at most
/// the configured number are answered 401 and all others 429 (none slips past while
/// the earlier ones are still hashing).
#[tokio::test]
async fn parallel_wrong_passwords_cannot_pass_the_limit() {
    let s =
        TestServer::start_with(&[("AEGIS_LOGIN_MAX_FAILURES", "5"), ("AEGIS_LOGIN_MAX_PER_IP", "500")]).await;
    let sponsor = s.sponsor("parallel").await;
    let attempts = (0..50).map(|_| {
        s.post("/api/auth/login", None, json!({"email": sponsor.email, "password": "wrong password 1"}))
    });
    let results = futures::future::join_all(attempts).await;
    let count = |status| results.iter().filter(|r| r.status == status).count();
    let (unauthorized, limited) = (count(StatusCode::UNAUTHORIZED), count(StatusCode::TOO_MANY_REQUESTS));
    assert!(unauthorized <= 5, "{unauthorized} guesses were checked");
    assert_eq!(unauthorized + limited, 50, "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(
        results
            .iter()
            .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
            .all(|r| r.code() == "rate_limited")
    );
}

async fn login_from(s: &TestServer, ip: &str, email: &str, password: &str) -> crate::support::Response {
    let req = s
        .http
        .post(s.url("/api/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}));
    crate::support::read(req.send().await.unwrap()).await
}

/// Wrong passwords from one client lock the email for that client only: its owner,
/// elsewhere, still signs in.
#[tokio::test]
async fn one_client_cannot_lock_an_account_against_its_owner() {
    let s =
        TestServer::start_with(&[("AEGIS_LOGIN_MAX_FAILURES", "5"), ("AEGIS_TRUST_PROXY_HEADERS", "true")])
            .await;
    let owner = s.sponsor("owner").await;
    for _ in 0..5 {
        let r = login_from(&s, "203.0.113.66", &owner.email, "wrong password 1").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let r = login_from(&s, "203.0.113.66", &owner.email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "the attacking client is locked out");
    let r = login_from(&s, "198.51.100.7", &owner.email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "the owner is not: {}", r.text);
    // IPv6 clients are one client per /64: another address in the same /64 is locked too.
    for _ in 0..5 {
        login_from(&s, "2001:db8:5:5::1", &owner.email, "wrong password 1").await;
    }
    let r = login_from(&s, "2001:db8:5:5:ffff::2", &owner.email, PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "same /64");
}

/// Sign-ins with malformed emails (empty, blank, no `@`) count against no email:
/// they neither lock registration for everyone nor anyone's account.
#[tokio::test]
async fn malformed_emails_do_not_close_registration() {
    let s =
        TestServer::start_with(&[("AEGIS_LOGIN_MAX_FAILURES", "5"), ("AEGIS_TRUST_PROXY_HEADERS", "true")])
            .await;
    for email in ["", "", " ", "nobody", "", "", "@", ""] {
        let r = login_from(&s, "203.0.113.66", email, "wrong password 1").await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"), "{email:?}");
    }
    // Registration (from another client and from the same one) still works.
    for ip in ["198.51.100.7", "203.0.113.66"] {
        let email = format!("new-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = s
            .http
            .post(s.url("/api/auth/register"))
            .header("x-forwarded-for", ip)
            .json(&json!({"email": email, "password": PASSWORD, "name": "New"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{ip}");
    }
}
