//! The agents' doors hold their shape against hostile input: a gateway path cannot
//! climb out of its connection's base URL, a body is read only after the key was
//! checked (and only for so long), and nothing about the agent's network travels
//! upstream.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::mock::MockUpstream;
use crate::support::TestServer;

const ALLOW_LOOPBACK: (&str, &str) = ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32");

/// Sends `head` (and then `body`) over a plain TCP connection, exactly as written —
/// no client normalises the path — and returns the status and body of the answer,
/// or `None` if none came within `wait`.
async fn raw(base: &str, head: String, body: &[u8], wait: Duration) -> Option<(u16, String)> {
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            // A whole answer: headers and a body of the announced length.
            if let Some((headers, body)) = text.split_once("\r\n\r\n") {
                let len = headers
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok());
                if len.is_some_and(|l| body.len() >= l) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()?;
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

fn get(path: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: aegis\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn a_gateway_path_cannot_leave_its_connections_base_url() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("g").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "sdk", "policy": "permissive"})).await;
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "api", "base_url": mock.url("/echo")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let wait = Duration::from_secs(10);
    for path in [
        "/api/gw/api/..%2F..%2Fheaders",
        "/api/gw/api/..%2F..%2Fstatus%2F200",
        "/api/gw/api/x%3Fa=1",
        "/api/gw/api/x%23y",
        "/api/gw/api/%2e%2e/status/200",
        "/api/gw/api/.%2E/.%2e/status/200",
        "/api/gw/api/../../status/200",
        "/api/gw/api/a/../../status/200",
        "/api/gw/api/a%5C..%5Cstatus",
    ] {
        let (status, body) = raw(&s.base, get(path, &key), b"", wait).await.expect(path);
        assert_eq!(status, 400, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"]["code"], "invalid_path", "{path}: {body}");
    }
    assert_eq!(mock.hits(), 0);

    // Ordinary paths go through exactly as written, query and escapes included.
    let resp = s
        .http
        .get(s.url("/api/gw/api/items/a%20b/v1.2..x?q=1&r=%2F"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed: Value = resp.json().await.unwrap();
    assert_eq!(echoed["path"], "/echo/items/a%20b/v1.2..x", "{echoed}");
    assert_eq!(echoed["query"], "q=1&r=%2F", "{echoed}");
}

#[tokio::test]
async fn nothing_about_the_agents_network_travels_upstream() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK]).await;
    let sponsor = s.sponsor("x").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "sdk", "policy": "permissive"})).await;
    let r = s
        .post("/api/connections", Some(&sponsor.access), json!({"name": "api", "base_url": mock.url("")}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let forwarding = [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-host", "internal.corp"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-port", "8080"),
        ("forwarded", "for=10.1.2.3;host=internal.corp"),
        ("via", "1.1 corp-proxy"),
        ("x-real-ip", "10.1.2.3"),
        ("true-client-ip", "10.1.2.3"),
    ];
    let mut req = s.http.get(s.url("/api/gw/api/echo")).bearer_auth(&key).header("x-kept", "1");
    for (k, v) in forwarding {
        req = req.header(k, v);
    }
    let text = req.send().await.unwrap().text().await.unwrap();
    let echoed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(echoed["headers"]["x-kept"], "1", "{echoed}");
    for (k, _) in forwarding {
        assert!(echoed["headers"].get(k).is_none(), "gateway forwarded {k}: {echoed}");
    }
    // The execute door too.
    let headers: serde_json::Map<String, Value> =
        forwarding.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let r = s.execute(&key, json!({"method": "GET", "url": mock.url("/echo"), "headers": headers})).await;
    let echoed: Value = serde_json::from_str(r.body["upstream"]["body"].as_str().unwrap()).unwrap();
    for (k, _) in forwarding {
        assert!(echoed["headers"].get(k).is_none(), "execute forwarded {k}: {echoed}");
    }
}

#[tokio::test]
async fn the_key_is_checked_before_the_body_is_read_and_slow_bodies_time_out() {
    let s = TestServer::start_with(&[("AEGIS_PROXY_BODY_TIMEOUT_SECS", "1")]).await;
    let sponsor = s.sponsor("b").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "slow", "policy": "permissive"})).await;
    let head = |key: &str| {
        format!(
            "POST /api/proxy/execute HTTP/1.1\r\nHost: aegis\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            12 << 20
        )
    };
    // A bad key announcing 12 MiB and sending a trickle: refused at once.
    let started = Instant::now();
    let (status, body) = raw(&s.base, head("aegis_not_a_key"), b"{\"method\":", Duration::from_secs(5))
        .await
        .expect("no answer before the body was complete");
    assert_eq!(status, 401, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The right key with a body that never finishes: 408 after the body timeout.
    let started = Instant::now();
    let (status, body) =
        raw(&s.base, head(&key), b"{\"method\":", Duration::from_secs(15)).await.expect("no answer");
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    // The gateway door: same.
    let (status, _) = raw(
        &s.base,
        head("aegis_not_a_key").replace("/api/proxy/execute", "/api/gw/any/x"),
        b"{",
        Duration::from_secs(5),
    )
    .await
    .expect("gateway: no answer before the body was complete");
    assert_eq!(status, 401);
}

/// The audit log records the host as the egress guard and the policy judged it (lower
/// case, no trailing dot, IDNA applied), not as the agent spelled it.
#[tokio::test]
async fn the_audit_log_records_the_normalised_host() {
    let mock = MockUpstream::start().await;
    let s = TestServer::start_with(&[ALLOW_LOOPBACK, ("AEGIS_BREAKER_DENIAL_RATE_PCT", "0")]).await;
    let sponsor = s.sponsor("h").await;
    let (_, key) = s.agent_with(&sponsor, json!({"name": "spell", "policy": "permissive"})).await;
    for (url, host) in [
        (format!("http://127.0.0.1.:{}/echo", mock.port), "127.0.0.1"),
        ("https://API.Example.COM./x".to_owned(), "api.example.com"),
        ("https://BÜCHER.example/x".to_owned(), "xn--bcher-kva.example"),
    ] {
        let r = s.execute(&key, json!({"method": "GET", "url": url})).await;
        let request_id = r.body["request_id"].as_str().unwrap();
        let a = s.get(&format!("/api/audit?request_id={request_id}&limit=50"), &sponsor.access).await;
        let items: Vec<&Value> = a.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"].as_str().unwrap().starts_with("proxy."))
            .collect();
        assert!(!items.is_empty(), "{url}: {}", a.text);
        for item in items {
            assert_eq!(item["host"], host, "{url}: {item}");
        }
    }
}
