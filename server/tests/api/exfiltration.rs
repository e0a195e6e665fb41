//! An injected secret never leaves for a place it is not allowed to go, and never
//! comes back to the agent: redirect hops, `Referer`, compressed or ranged answers,
//! encoded echoes, a proxy from the environment, plain http.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock::{MockUpstream, Recorder, canned};
use crate::support::{Sponsor, TestServer};

/// Loopback, including 127.0.0.2 ("another host").
const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.0/8");
/// A value with characters that every encoding changes.
const SECRET: &str = "sk-live/9+Zq\"w\\e=r&t y~ABCDEFGHIJ";

/// A permissive agent with a secret of its own, named `k-<agent name>`; returns
/// (api key, secret name).
async fn agent_with_secret(
    s: &TestServer,
    sponsor: &Sponsor,
    hosts: Value,
    inject: Value,
) -> (String, String) {
    let name = format!("a{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (id, key) = s.agent_with(sponsor, json!({"name": name, "policy": "permissive"})).await;
    let secret = format!("k-{name}");
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": secret, "value": SECRET, "allowed_hosts": hosts, "inject": inject, "agents": [id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (key, secret)
}

/// Every form in which `SECRET` could be recognised in a request or answer.
fn leaked_forms() -> Vec<String> {
    let form: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    vec![
        SECRET.to_owned(),
        form.clone(),
        STANDARD.encode(SECRET),
        URL_SAFE_NO_PAD.encode(SECRET),
        // "sk-live/9+Zq" in its own words: any distinctive run of the value.
        "9+Zq".to_owned(),
        "ABCDEFGHIJ".to_owned(),
    ]
}

fn assert_clean(what: &str, text: &str) {
    for form in leaked_forms() {
        assert!(!text.contains(&form), "{what} carries the secret ({form:?}): {text}");
    }
}

#[tokio::test]
async fn a_redirect_off_the_secrets_hosts_is_not_followed_and_carries_nothing() {
    let other = Recorder::start("127.0.0.2").await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("r").await;
    for (inject, label) in
        [(json!({"header": "x-api-key"}), "header"), (json!({"query_param": "api_key"}), "query")]
    {
        let first = Recorder::start("127.0.0.1").await;
        // Redirects to another host; the secret may go to the first host only.
        let redirector = canned(302, vec![("location".into(), other.url("/collect"))], vec![]).await;
        let port = redirector.rsplit(':').next().unwrap();
        let hosts = json!([format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{}", first.port)]);
        let (key, k) = agent_with_secret(&s, &sponsor, hosts, inject.clone()).await;
        let r = s
            .execute(
                &key,
                json!({"method": "POST", "url": format!("{redirector}/start?q=1"), "body": "{}", "secret": k,
                       "follow_redirects": true}),
            )
            .await;
        // The 3xx itself is the answer: not followed.
        assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
        assert_eq!(r.body["upstream"]["status"], 302, "{label}: {}", r.text);
        assert_clean(label, &r.text);
        assert!(other.seen().is_empty(), "{label}: the other host was reached: {:?}", other.seen());

        // A redirect to a host the secret may go to is followed, and the secret goes
        // with it — with no Referer.
        let to_first = canned(307, vec![("location".into(), first.url("/next?x=2"))], vec![]).await;
        let port = to_first.rsplit(':').next().unwrap();
        let hosts = json!([format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{}", first.port)]);
        let (key, k) = agent_with_secret(&s, &sponsor, hosts, inject.clone()).await;
        let r = s
            .execute(&key, json!({"method": "GET", "url": format!("{to_first}/a?api_key=forged"), "secret": k,
                                  "follow_redirects": true, "headers": {"referer": "https://agent.example/?p=1"}}))
            .await;
        assert_eq!(r.body["upstream"]["status"], 200, "{label}: {}", r.text);
        let seen = first.seen();
        assert_eq!(seen.len(), 1, "{label}: {seen:?}");
        let text = seen[0].text();
        assert!(!text.to_ascii_lowercase().contains("referer"), "{label}: {text}");
        assert!(!text.contains("forged"), "{label}: {text}");
        let encoded: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
        assert!(
            text.contains(SECRET) || text.contains(&encoded),
            "{label}: the secret did not arrive: {text}"
        );
    }
    assert!(other.seen().is_empty());
}

#[tokio::test]
async fn redirects_without_a_secret_send_no_referer_and_drop_forwarded_credentials_across_hosts() {
    let other = Recorder::start("127.0.0.2").await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("n").await;
    // A policy that forwards the agent's own credentials.
    let policy = r#"package aegis
default decision := "allow"
forward_credentials := true
"#;
    let r = s.post("/api/policies", Some(&sponsor.access), json!({"name": "fwd", "source": policy})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, key) = s.agent_with(&sponsor, json!({"name": "fwd", "policy": r.body["name"]})).await;
    let redirector = canned(302, vec![("location".into(), other.url("/landing?z=1"))], vec![]).await;
    let r = s
        .execute(
            &key,
            json!({"method": "GET", "url": format!("{redirector}/from?token=agent-token"),
                              "headers": {"authorization": "Bearer agent-own", "x-api-key": "agent-key"},
                              "follow_redirects": true}),
        )
        .await;
    assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
    let seen = other.seen();
    assert_eq!(seen.len(), 1);
    let text = seen[0].text().to_ascii_lowercase();
    for absent in ["referer", "agent-token", "agent-own", "agent-key"] {
        assert!(!text.contains(absent), "{absent} reached the other host: {text}");
    }

    // `follow_redirects` is a policy input: a policy can forbid it.
    let policy = r#"package aegis
default decision := "allow"
decision := "deny" if input.action.follow_redirects
reasons contains "redirects are not allowed" if input.action.follow_redirects
"#;
    let r =
        s.post("/api/policies", Some(&sponsor.access), json!({"name": "noredir", "source": policy})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, key) = s.agent_with(&sponsor, json!({"name": "noredir", "policy": r.body["name"]})).await;
    let r = s.execute(&key, json!({"method": "GET", "url": other.url("/x"), "follow_redirects": true})).await;
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("policy")), "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": other.url("/x")})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn compression_and_ranges_are_never_asked_for_and_encoded_answers_with_a_secret_are_refused() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("z").await;
    let (key, k) = agent_with_secret(
        &s,
        &sponsor,
        json!([format!("http://127.0.0.1:*")]),
        json!({"header": "x-api-key"}),
    )
    .await;
    let r = s
        .execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": k,
                              "headers": {"accept-encoding": "gzip, br", "range": "bytes=0-3", "if-range": "x"}}))
        .await;
    assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
    let echoed: Value = serde_json::from_str(r.body["upstream"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(echoed["headers"]["accept-encoding"], "identity", "{echoed}");
    assert!(
        echoed["headers"].get("range").is_none() && echoed["headers"].get("if-range").is_none(),
        "{echoed}"
    );
    assert_clean("echo", &r.text);

    // The gateway door: same rules.
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "echoer", "base_url": mock.url(""), "secret": k}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let resp = s
        .http
        .get(s.url("/api/gw/echoer/echo"))
        .bearer_auth(&key)
        .header("accept-encoding", "gzip")
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    let echoed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echoed["headers"]["accept-encoding"], "identity", "{echoed}");
    assert!(echoed["headers"].get("range").is_none(), "{echoed}");
    assert_clean("gateway echo", &text);

    // An upstream that compresses anyway: with a secret injected the answer cannot be
    // scrubbed, so it is refused; without one it passes as it is.
    let gz =
        canned(200, vec![("content-encoding".into(), "gzip".into())], b"\x1f\x8b\x08\x00opaque".to_vec())
            .await;
    let r = s.execute(&key, json!({"method": "GET", "url": format!("{gz}/x"), "secret": k})).await;
    assert_eq!(
        (r.status, r.body["stage"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream")),
        "{}",
        r.text
    );
    assert!(r.body["reason"].as_str().unwrap().contains("content-encoding"), "{}", r.text);
    let r = s.execute(&key, json!({"method": "GET", "url": format!("{gz}/x")})).await;
    assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
}

/// An upstream that echoes the `x-api-key` it received in every encoding a careless
/// API might use.
async fn echo_forms_upstream() -> String {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let got = headers.get("x-api-key").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let b = got.as_bytes();
        let pct_upper: String = b
            .iter()
            .map(|c| if c.is_ascii_alphanumeric() { (*c as char).to_string() } else { format!("%{c:02X}") })
            .collect();
        let pct_lower = pct_upper
            .split('%')
            .enumerate()
            .map(
                |(i, p)| if i == 0 { p.to_owned() } else { format!("%{}{}", p[..2].to_lowercase(), &p[2..]) },
            )
            .collect::<String>();
        let lines = [
            format!("json: {}", serde_json::to_string(&json!({"key": got})).unwrap()),
            format!("json-ascii: {}", got.replace('\\', "\\\\").replace('"', "\\\"").replace('/', "\\/")),
            format!("pct-upper: {pct_upper}"),
            format!("pct-lower: {pct_lower}"),
            format!("b64: {}", STANDARD.encode(b)),
            format!("b64url: {}", URL_SAFE_NO_PAD.encode(b)),
            // Inside longer base64 texts, at each alignment.
            format!("basic: {}", STANDARD.encode(format!("user:{got}"))),
            format!("b64-1: {}", STANDARD.encode(format!("x{got}yz"))),
            format!("b64-2: {}", URL_SAFE_NO_PAD.encode(format!("xy{got}z"))),
        ];
        ([("x-echo", lines[4].clone())], lines.join("\n"))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn echoed_secrets_are_scrubbed_in_every_encoding() {
    let upstream = echo_forms_upstream().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("f").await;
    let (key, k) =
        agent_with_secret(&s, &sponsor, json!(["http://127.0.0.1:*"]), json!({"header": "x-api-key"})).await;
    let r = s.execute(&key, json!({"method": "GET", "url": format!("{upstream}/"), "secret": k})).await;
    assert_eq!(r.body["upstream"]["status"], 200, "{}", r.text);
    let body = r.body["upstream"]["body"].as_str().unwrap();
    // Nine lines, each redacted.
    assert_eq!(body.lines().count(), 9, "{body}");
    for line in body.lines() {
        assert!(line.contains("[REDACTED]"), "not scrubbed: {line}");
    }
    assert_clean("scrubbed body", &r.text);
    // Each line's own encoding of the value is gone, not just the raw value.
    let b = SECRET.as_bytes();
    for (name, form) in [
        ("json", serde_json::to_string(SECRET).unwrap().trim_matches('"').to_owned()),
        ("json-ascii", SECRET.replace('\\', "\\\\").replace('"', "\\\"").replace('/', "\\/")),
        ("basic core", STANDARD.encode(format!("user:{SECRET}"))[8..40].to_owned()),
        ("b64url", URL_SAFE_NO_PAD.encode(b)),
    ] {
        assert!(!body.contains(&form), "{name} form survived: {body}");
    }
    assert_eq!(r.body["upstream"]["headers"]["x-echo"], "b64: [REDACTED]", "{}", r.text);
}

#[tokio::test]
async fn a_secret_goes_over_plain_http_or_another_port_only_where_its_pattern_says_so() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("h").await;
    for (hosts, allowed) in [
        // No scheme: https only (and port 443).
        (json!(["127.0.0.1"]), false),
        (json!([format!("127.0.0.1:{}", mock.port)]), false),
        (json!(["http://127.0.0.1"]), false),
        (json!([format!("http://127.0.0.1:{}", mock.port)]), true),
        (json!(["http://127.0.0.1:*"]), true),
    ] {
        let (key, k) = agent_with_secret(&s, &sponsor, hosts.clone(), json!({"header": "x-api-key"})).await;
        let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "secret": k})).await;
        if allowed {
            assert_eq!(r.status, StatusCode::OK, "{hosts}: {}", r.text);
        } else {
            assert_eq!(
                (r.status, r.body["stage"].as_str()),
                (StatusCode::FORBIDDEN, Some("secret")),
                "{hosts}: {}",
                r.text
            );
            assert!(
                r.body["reason"].as_str().unwrap().contains(&format!("http://127.0.0.1:{}", mock.port)),
                "{}",
                r.text
            );
        }
    }
    // The canonical pattern is what the sponsor reads back.
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "canon", "value": "v", "inject": {"header": "x-k"},
                   "allowed_hosts": ["HTTPS://API.example.com:443", "http://h.example.com:8080", "*.Example.org:*"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(
        r.body["allowed_hosts"],
        json!(["api.example.com", "http://h.example.com:8080", "*.example.org:*"])
    );
    let r = s
        .post(
            "/api/secrets",
            Some(&sponsor.access),
            json!({"name": "bad", "value": "v", "inject": {"header": "x-k"}, "allowed_hosts": ["ftp://x.example.com"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
}

/// A loopback "proxy" that counts every connection made to it and answers 502.
async fn recording_proxy() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
            });
        }
    });
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn a_proxy_from_the_environment_never_carries_agent_traffic() {
    let mock = MockUpstream::start().await;
    let (proxy, hits) = recording_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let replica = crate::replicas::Replica::spawn(
        &[
            ("AEGIS_DATA_DIR", data.as_str()),
            ("AEGIS_EGRESS_ALLOW", "127.0.0.0/8"),
            ("HTTP_PROXY", proxy.as_str()),
            ("HTTPS_PROXY", proxy.as_str()),
            ("ALL_PROXY", proxy.as_str()),
            ("http_proxy", proxy.as_str()),
            ("https_proxy", proxy.as_str()),
            ("all_proxy", proxy.as_str()),
            ("NO_PROXY", ""),
        ],
        &dir.path().join("aegis.log"),
    )
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let email = format!("p{}@example.com", uuid::Uuid::new_v4().simple());
    let r = http
        .post(format!("{}/api/auth/register", replica.base))
        .json(&json!({"email": email, "password": crate::support::PASSWORD, "name": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let r = replica.post("/api/agents", &token, json!({"name": "bot", "policy": "permissive"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    for path in ["/echo", "/redirect?to=/echo/after"] {
        let r = replica
            .post(
                "/api/proxy/execute",
                &key,
                json!({"method": "GET", "url": mock.url(path), "follow_redirects": true}),
            )
            .await;
        assert_eq!(r.body["upstream"]["status"], 200, "{path}: {}", r.text);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "agent traffic went through the environment's proxy"
    );
}
