//! `/mcp` on the wire: raw HTTP (reqwest over loopback, no SDK) against AEGIS's MCP
//! door, for both protocol revisions — 2026-07-28 (stateless: every request carries
//! its protocol version, client info and capabilities in `params._meta`, plus the
//! `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers) and 2025-11-25
//! (`initialize`, then `Mcp-Session-Id` on every request).
//!
//! What is checked: bad input is refused with a 4xx (or an in-band JSON-RPC error),
//! never a 5xx, with the JSON-RPC code where the transport gives one; a session and
//! a key belong to their agent; another sponsor's MCP servers are invisible; and
//! `server/discover` advertises tools. The statuses and codes are what `rmcp` 3.11's
//! `StreamableHttpService` answers (its `tower.rs`), which follow the spec except
//! where a comment says otherwise.
//!
//! Everything runs always, except what needs a real upstream MCP server
//! (`server/tests/mcp/upstream.py`, the official Python SDK): that part runs when
//! `AEGIS_SDK_PYTHON` names the venv's python, and is skipped otherwise.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

const MODERN: &str = "2026-07-28";
const LEGACY: &str = "2025-11-25";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CLIENT: &str = "io.modelcontextprotocol/clientInfo";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";

const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INVALID_REQUEST: i64 = -32600;
/// AEGIS's (and the SDKs') "Session not found".
const SESSION_NOT_FOUND: i64 = -32001;
/// 2026-07-28: `HeaderMismatch`.
const HEADER_MISMATCH: i64 = -32020;
/// 2026-07-28: `UnsupportedProtocolVersion` (data: `requested`, `supported`).
const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

const ALLOW_ALL: &str = "package aegis\nimport rego.v1\ndefault decision := \"allow\"\n";

// ---------------------------------------------------------------------------
// The wire
// ---------------------------------------------------------------------------

/// One answer from `/mcp`: the JSON-RPC message it carried, whether as a JSON body
/// or as an SSE event, if any.
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
    message: Option<Value>,
}

impl Reply {
    fn message(&self) -> &Value {
        self.message
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON-RPC message in the answer ({}): {}", self.status, self.text))
    }

    fn error_code(&self) -> i64 {
        let m = self.message();
        assert_eq!(m["jsonrpc"], "2.0", "{m}");
        assert!(m["error"]["message"].is_string(), "an error has a message: {m}");
        m["error"]["code"].as_i64().unwrap_or_else(|| panic!("not a JSON-RPC error: {m}"))
    }

    fn result(&self) -> &Value {
        let m = self.message();
        assert!(m.get("error").is_none(), "an error, not a result ({}): {m}", self.status);
        &m["result"]
    }

    fn session(&self) -> Option<&str> {
        self.headers.get("mcp-session-id").and_then(|v| v.to_str().ok())
    }

    /// A refusal of the client's input: a 4xx, never a 5xx.
    fn client_error(&self, what: &str) -> &Self {
        assert!(self.status.is_client_error(), "{what}: expected a 4xx, got {}: {}", self.status, self.text);
        assert!(self.session().is_none(), "{what}: a refusal opened a session");
        self
    }
}

/// The JSON-RPC response in an SSE body: the first `data:` event that answers a
/// request (priming events carry no data). Stops reading there: a stream may stay open.
async fn read(mut resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let sse = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !sse {
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str(&text).ok();
        return Reply { status, headers, text, message };
    }
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(m) = sse_response(&text) {
                return Some(m);
            }
            match resp.chunk().await {
                Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return sse_response(&text),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no JSON-RPC response on the SSE stream within 30 s: {text}"));
    Reply { status, headers, text, message: found }
}

fn sse_response(text: &str) -> Option<Value> {
    let text = text.replace("\r\n", "\n");
    // Only complete events (terminated by a blank line).
    let complete = &text[..text.rfind("\n\n")?];
    complete.split("\n\n").find_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let v: Value = serde_json::from_str(&data.join("\n")).ok()?;
        (v.get("result").is_some() || v.get("error").is_some()).then_some(v)
    })
}

/// How a request is sent.
#[derive(Clone, Copy)]
enum Rev<'a> {
    /// 2026-07-28: `_meta` in the body, the version and routing headers.
    Modern,
    /// 2025-11-25 inside the session `initialize` opened.
    Legacy(&'a str),
}

impl Rev<'_> {
    fn label(&self) -> &'static str {
        match self {
            Rev::Modern => "2026-07-28",
            Rev::Legacy(_) => "2025-11-25",
        }
    }
}

fn client_meta(version: &str) -> Value {
    json!({
        META_VERSION: version,
        META_CLIENT: {"name": "aegis-wire-test", "version": "1.0.0"},
        META_CAPABILITIES: {},
    })
}

/// A JSON-RPC request; in the modern revision with the per-request `_meta`.
fn request(rev: Rev, id: i64, method: &str, params: Value) -> Value {
    let mut params = if params.is_null() { json!({}) } else { params };
    if let Rev::Modern = rev {
        params["_meta"] = client_meta(MODERN);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The headers `rev` sends with `body` (routing headers derived from the body).
fn headers_for(rev: Rev, body: &Value) -> Vec<(&'static str, String)> {
    match rev {
        Rev::Modern => {
            let method = body["method"].as_str().unwrap_or_default().to_owned();
            let mut h = vec![("mcp-protocol-version", MODERN.to_owned()), ("mcp-method", method.clone())];
            let name = match method.as_str() {
                "tools/call" | "prompts/get" => body["params"]["name"].as_str(),
                "resources/read" => body["params"]["uri"].as_str(),
                _ => None,
            };
            if let Some(name) = name {
                h.push(("mcp-name", name.to_owned()));
            }
            h
        }
        Rev::Legacy(session) => {
            vec![("mcp-session-id", session.to_owned()), ("mcp-protocol-version", LEGACY.to_owned())]
        }
    }
}

/// POSTs `body` (bytes as given) to `/mcp` with the Accept and Content-Type the
/// transport requires, the agent's key (if any) and `headers`.
async fn post_raw(
    s: &TestServer,
    key: Option<&str>,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut req = s
        .http
        .post(s.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    read(req.send().await.expect("request sent")).await
}

async fn post(s: &TestServer, key: &str, headers: &[(&str, String)], body: &Value) -> Reply {
    post_raw(s, Some(key), headers, body.to_string()).await
}

/// Sends one request in `rev`.
/// A bodiless `method` (GET, DELETE) on `/mcp` in the legacy session `session`, as `key`.
async fn session_request(s: &TestServer, method: reqwest::Method, key: &str, session: &str) -> Reply {
    read(
        s.http
            .request(method, s.url("/mcp"))
            .bearer_auth(key)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", LEGACY)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn call(s: &TestServer, key: &str, rev: Rev<'_>, id: i64, method: &str, params: Value) -> Reply {
    let body = request(rev, id, method, params);
    post(s, key, &headers_for(rev, &body), &body).await
}

fn initialize_body(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": version, "capabilities": {},
                      "clientInfo": {"name": "aegis-wire-test", "version": "1.0.0"}}})
}

/// The 2025-11-25 handshake: `initialize`, then `notifications/initialized`.
async fn open_session(s: &TestServer, key: &str) -> String {
    let r = post(s, key, &[], &initialize_body(LEGACY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.result()["protocolVersion"], LEGACY, "{}", r.text);
    let session =
        r.session().unwrap_or_else(|| panic!("initialize opened no session: {:?}", r.headers)).to_owned();
    assert!(!session.is_empty() && session.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{session:?}");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = post(s, key, &headers_for(Rev::Legacy(&session), &note), &note).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    session
}

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

struct World {
    s: TestServer,
    sponsor: Sponsor,
    key: String,
}

async fn world(vars: &[(&str, &str)]) -> World {
    let mut all = vec![("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")];
    all.extend_from_slice(vars);
    let s = TestServer::start_with(&all).await;
    let sponsor = s.sponsor("mcp-wire").await;
    let key = agent(&s, &sponsor, "wire-a").await.1;
    World { s, sponsor, key }
}

/// An agent under an allow-everything policy (created on first use); (id, key).
async fn agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> (String, String) {
    let r = s.get("/api/policies", &sponsor.access).await;
    let exists = r.body.to_string().contains("\"allow-all\"");
    if !exists {
        let r = s
            .post("/api/policies", Some(&sponsor.access), json!({"name": "allow-all", "source": ALLOW_ALL}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    s.agent_with(sponsor, json!({"name": name, "policy": "allow-all"})).await
}

/// An MCP connection `notes` of `sponsor` to `base_url`.
async fn notes_connection(s: &TestServer, sponsor: &Sponsor, base_url: &str) {
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "notes", "kind": "mcp", "base_url": base_url, "cost_micros": 1_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["kind"], "mcp", "{}", r.text);
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The Python SDK's upstream MCP server (`upstream.py`), recording what it receives.
struct Upstream {
    _child: tokio::process::Child,
    port: u16,
    record: tempfile::NamedTempFile,
}

impl Upstream {
    /// `None` (and a SKIPPED line) without `AEGIS_SDK_PYTHON`.
    async fn start(what: &str) -> Option<Self> {
        let Ok(python) = std::env::var("AEGIS_SDK_PYTHON") else {
            eprintln!("SKIPPED {what}: AEGIS_SDK_PYTHON is not set");
            return None;
        };
        let script: PathBuf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/upstream.py");
        let port = dead_port();
        let record = tempfile::NamedTempFile::new().unwrap();
        let child = tokio::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .env("RECORD_FILE", record.path())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(Self { _child: child, port, record });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the upstream MCP server did not start");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// The JSON-RPC methods it received, in order.
    fn methods(&self) -> Vec<String> {
        std::fs::read_to_string(self.record.path())
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
            .filter_map(|b| b["method"].as_str().map(str::to_owned))
            .collect()
    }

    fn tool_calls(&self) -> usize {
        self.methods().iter().filter(|m| *m == "tools/call").count()
    }
}

fn tool_names(result: &Value) -> Vec<String> {
    let mut names: Vec<String> = result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools array: {result}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------

/// Bodies the transport cannot read: not JSON, truncated JSON, a batch (JSON-RPC
/// batches are gone since 2025-06-18), larger than `AEGIS_MAX_BODY_BYTES`, the wrong
/// Content-Type or Accept — each a 4xx in both revisions, and the server (and the
/// session) keeps serving afterwards.
/// An unreadable body is `400` with the JSON-RPC error JSON-RPC names: `-32700` Parse
/// error for what is not JSON, `-32600` Invalid Request for a batch or a non-message
/// (AEGIS's guard; the SDK alone would answer a plain-text 415).
#[tokio::test]
async fn mcp_wire_unreadable_bodies_are_refused_in_both_revisions() {
    const LIMIT: usize = 16 * 1024;
    let limit = LIMIT.to_string();
    let w = world(&[("AEGIS_MAX_BODY_BYTES", &limit)]).await;
    let (s, key) = (&w.s, w.key.as_str());
    let session = open_session(s, key).await;

    for rev in [Rev::Modern, Rev::Legacy(&session)] {
        let label = rev.label();
        let list = request(rev, 1, "tools/list", json!({}));
        let headers = headers_for(rev, &list);

        for (what, body, code) in [
            ("not JSON", "this is not json {".to_owned(), -32700),
            ("truncated JSON", r#"{"jsonrpc": "2.0", "id": 1, "method": "tools/li"#.to_owned(), -32700),
            ("a JSON-RPC batch", json!([list, request(rev, 2, "tools/list", json!({}))]).to_string(), -32600),
            ("a JSON string", "\"tools/list\"".to_owned(), -32600),
            ("no jsonrpc member", json!({"id": 1, "method": "tools/list"}).to_string(), -32600),
            ("no method", json!({"jsonrpc": "2.0", "id": 1, "params": {}}).to_string(), -32600),
        ] {
            let r = post_raw(s, Some(key), &headers, body).await;
            r.client_error(&format!("{label}: {what}"));
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{label}: {what}: {}", r.text);
            assert_eq!(r.error_code(), code, "{label}: {what}: {}", r.text);
        }

        // Well-formed JSON-RPC whose params do not fit the method (`arguments` not an
        // object): invalid params, not "method not found" (the SDK reads such a request
        // as a custom one; AEGIS's `on_custom_request` tells the two apart).
        let odd = request(rev, 4, "tools/call", json!({"name": "notes__add", "arguments": "2+3"}));
        let r = post(s, key, &headers_for(rev, &odd), &odd).await;
        assert!(!r.status.is_server_error(), "{label}: {}", r.text);
        assert_eq!(r.error_code(), INVALID_PARAMS, "{label}: malformed tools/call params: {}", r.text);
        assert_eq!(r.message()["id"], 4, "{}", r.text);

        // Larger than the limit (a valid message padded out): 413, before it is read whole.
        let mut big = list.clone();
        big["params"]["padding"] = json!("x".repeat(LIMIT * 4));
        let r = post(s, key, &headers, &big).await;
        r.client_error(&format!("{label}: oversized"));
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{label}: {}", r.text);
        assert!(r.text.contains(&limit), "{label}: names the limit: {}", r.text);
        // Just under the limit is served (the limit is the configured one, not smaller).
        let mut fits = list.clone();
        fits["params"]["padding"] = json!("x".repeat(LIMIT - 1024));
        let r = post(s, key, &headers, &fits).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
        assert_eq!(r.result()["tools"], json!([]), "{label}: {}", r.text);

        // The transport's own header checks.
        let with = |accept: &'static str, content_type: &'static str| {
            s.http
                .post(s.url("/mcp"))
                .bearer_auth(key)
                .header("accept", accept)
                .header("content-type", content_type)
                .headers(headers.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect())
                .body(list.to_string())
                .send()
        };
        let r = read(with("application/json, text/event-stream", "text/plain").await.unwrap()).await;
        r.client_error(&format!("{label}: text/plain"));
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{label}: {}", r.text);
        let r = read(with("application/json", "application/json").await.unwrap()).await;
        r.client_error(&format!("{label}: Accept without text/event-stream"));
        assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE, "{label}: {}", r.text);

        // A posted JSON-RPC response where no request of the server is pending: refused
        // without a session (nothing to answer), accepted and dropped inside one.
        let stray = json!({"jsonrpc": "2.0", "id": 99, "result": {}});
        let r = post(s, key, &headers, &stray).await;
        match rev {
            Rev::Modern => {
                r.client_error("2026-07-28: stray response");
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
                assert_eq!(r.error_code(), INVALID_REQUEST, "{}", r.text);
            }
            Rev::Legacy(_) => {
                assert_eq!(r.status, StatusCode::ACCEPTED, "{label}: stray response: {}", r.text)
            }
        }

        // Still serving, and the session still alive, after all of that.
        let r = call(s, key, rev, 3, "tools/list", json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
        assert_eq!(r.result()["tools"], json!([]), "{label}: {}", r.text);
    }
}

/// Methods AEGIS does not serve: a made-up one, `resources/list` and `prompts/list`
/// (AEGIS advertises only tools) → `-32601`; in 2026-07-28 with HTTP 404 (the
/// revision's status for method-not-found, so a client can tell a modern endpoint),
/// in 2025-11-25 in-band on the session's stream (HTTP 200). `ping` exists only up to
/// 2025-11-25 (2026-07-28 dropped it): answered `{}` in a session, `-32601` in the
/// modern revision — as the Python SDK's method table (`mcp_types.methods`) has it.
#[tokio::test]
async fn mcp_wire_unknown_and_unoffered_methods_are_method_not_found() {
    let w = world(&[]).await;
    let (s, key) = (&w.s, w.key.as_str());
    let session = open_session(s, key).await;

    for (id, method) in [
        (11, "aegis/no-such-method"),
        (12, "resources/list"),
        (13, "prompts/list"),
        (14, "resources/templates/list"),
        (15, "ping"),
    ] {
        let r = call(s, key, Rev::Modern, id, method, json!({})).await;
        r.client_error(&format!("2026-07-28 {method}"));
        assert_eq!(r.status, StatusCode::NOT_FOUND, "2026-07-28 {method}: {}", r.text);
        assert_eq!(r.error_code(), METHOD_NOT_FOUND, "2026-07-28 {method}: {}", r.text);
        assert_eq!(r.message()["id"], id, "the error answers the request: {}", r.text);
    }
    for (id, method) in [
        (21, "aegis/no-such-method"),
        (22, "resources/list"),
        (23, "prompts/list"),
        (24, "resources/templates/list"),
    ] {
        let r = call(s, key, Rev::Legacy(&session), id, method, json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "2025-11-25 {method}: {}", r.text);
        assert_eq!(r.error_code(), METHOD_NOT_FOUND, "2025-11-25 {method}: {}", r.text);
        assert_eq!(r.message()["id"], id, "{}", r.text);
    }

    // ping in the session revision: an empty result, the request's id.
    let r = call(s, key, Rev::Legacy(&session), 31, "ping", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.result(), &json!({}), "{}", r.text);
    assert_eq!(r.message()["id"], 31);
}

/// The protocol version, both revisions: missing, unknown, inconsistent.
#[tokio::test]
async fn mcp_wire_protocol_versions_are_checked() {
    let w = world(&[]).await;
    let (s, key) = (&w.s, w.key.as_str());

    // 2026-07-28, an unknown version in `_meta` (and the header): the revision's
    // UnsupportedProtocolVersion (-32022) with HTTP 400, naming what was asked and
    // what is supported (the spec's `data.requested` / `data.supported`).
    let mut body = request(Rev::Modern, 1, "tools/list", json!({}));
    body["params"]["_meta"][META_VERSION] = json!("1999-01-01");
    let headers =
        vec![("mcp-protocol-version", "1999-01-01".to_owned()), ("mcp-method", "tools/list".to_owned())];
    let r = post(s, key, &headers, &body).await;
    r.client_error("unknown version");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), UNSUPPORTED_PROTOCOL_VERSION, "{}", r.text);
    let data = &r.message()["error"]["data"];
    assert_eq!(data["requested"], "1999-01-01", "{}", r.text);
    let supported: Vec<&str> =
        data["supported"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(supported.contains(&MODERN) && supported.contains(&LEGACY), "{}", r.text);
    assert_eq!(r.message()["id"], 1, "{}", r.text);

    // 2026-07-28 header, no version in `_meta`: invalid params (-32602), HTTP 400.
    let mut body = request(Rev::Modern, 2, "tools/list", json!({}));
    body["params"]["_meta"].as_object_mut().unwrap().remove(META_VERSION);
    let r = post(s, key, &headers_for(Rev::Modern, &body), &body).await;
    r.client_error("no _meta version");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), INVALID_PARAMS, "{}", r.text);
    assert!(r.text.contains(META_VERSION), "names the missing field: {}", r.text);

    // 2026-07-28 without the required client capabilities in `_meta`: -32602, 400.
    let mut body = request(Rev::Modern, 3, "tools/list", json!({}));
    body["params"]["_meta"].as_object_mut().unwrap().remove(META_CAPABILITIES);
    let r = post(s, key, &headers_for(Rev::Modern, &body), &body).await;
    r.client_error("no _meta capabilities");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), INVALID_PARAMS, "{}", r.text);
    assert!(r.text.contains(META_CAPABILITIES), "{}", r.text);

    // The version in `_meta` but no MCP-Protocol-Version header, or a different one:
    // HeaderMismatch (-32020), 400.
    let body = request(Rev::Modern, 4, "tools/list", json!({}));
    for headers in [
        vec![("mcp-method", "tools/list".to_owned())],
        vec![("mcp-protocol-version", LEGACY.to_owned()), ("mcp-method", "tools/list".to_owned())],
    ] {
        let r = post(s, key, &headers, &body).await;
        r.client_error("version header mismatch");
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{headers:?}: {}", r.text);
        assert_eq!(r.error_code(), HEADER_MISMATCH, "{headers:?}: {}", r.text);
    }
    // The routing headers must be there and agree with the body: -32020, 400.
    for (what, headers) in [
        ("no Mcp-Method", vec![("mcp-protocol-version", MODERN.to_owned())]),
        (
            "a wrong Mcp-Method",
            vec![("mcp-protocol-version", MODERN.to_owned()), ("mcp-method", "tools/call".to_owned())],
        ),
    ] {
        let r = post(s, key, &headers, &body).await;
        r.client_error(what);
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text);
        assert_eq!(r.error_code(), HEADER_MISMATCH, "{what}: {}", r.text);
    }
    let call_body = request(Rev::Modern, 5, "tools/call", json!({"name": "notes__add", "arguments": {}}));
    let mut headers = headers_for(Rev::Modern, &call_body);
    headers.retain(|(k, _)| *k != "mcp-name");
    let r = post(s, key, &headers, &call_body).await;
    r.client_error("no Mcp-Name");
    assert_eq!(r.error_code(), HEADER_MISMATCH, "no Mcp-Name: {}", r.text);
    headers.push(("mcp-name", "notes__other".to_owned()));
    let r = post(s, key, &headers, &call_body).await;
    r.client_error("wrong Mcp-Name");
    assert_eq!(r.error_code(), HEADER_MISMATCH, "wrong Mcp-Name: {}", r.text);

    // No version anywhere (no `_meta`, no header, no session): taken as the oldest
    // session revision (2025-03-26, as the spec says for a missing header), which
    // needs a session: 400.
    let bare = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {}});
    let r = post(s, key, &[], &bare).await;
    r.client_error("no version at all");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("Session ID"), "{}", r.text);
    // An unknown version in the header only (no `_meta`): 400 (2025-06-18+: an
    // invalid or unsupported MCP-Protocol-Version header is a 400).
    let r = post(s, key, &[("mcp-protocol-version", "1999-01-01".to_owned())], &bare).await;
    r.client_error("unknown header version");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // 2025-11-25: inside a session, an unknown MCP-Protocol-Version header → 400.
    let session = open_session(s, key).await;
    let list = request(Rev::Legacy(&session), 7, "tools/list", json!({}));
    let r = post(
        s,
        key,
        &[("mcp-session-id", session.clone()), ("mcp-protocol-version", "1999-01-01".to_owned())],
        &list,
    )
    .await;
    r.client_error("2025-11-25 unknown header version");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("1999-01-01"), "{}", r.text);
    // …the session unharmed.
    let r = call(s, key, Rev::Legacy(&session), 8, "ping", json!({})).await;
    assert_eq!(r.result(), &json!({}), "{}", r.text);

    // initialize asking for an unknown version: the server answers with one it
    // supports (the spec's negotiation), never the unknown one.
    let r = post(s, key, &[], &initialize_body("1999-01-01")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let offered = r.result()["protocolVersion"].as_str().unwrap().to_owned();
    assert_ne!(offered, "1999-01-01");
    assert!([LEGACY, "2025-06-18", "2025-03-26", "2024-11-05"].contains(&offered.as_str()), "{offered}");
    // initialize whose MCP-Protocol-Version header contradicts its body: -32600, 400,
    // and no session.
    let r =
        post(s, key, &[("mcp-protocol-version", "2025-06-18".to_owned())], &initialize_body(LEGACY)).await;
    r.client_error("initialize header mismatch");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), INVALID_REQUEST, "{}", r.text);
}

/// 2025-11-25: after `initialize`, a request without `Mcp-Session-Id` is a 400 (the
/// spec's SHOULD); an unknown or ended session is a 404.
#[tokio::test]
async fn mcp_wire_session_revision_requires_its_session_id() {
    let w = world(&[]).await;
    let (s, key) = (&w.s, w.key.as_str());
    let session = open_session(s, key).await;

    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let version = ("mcp-protocol-version", LEGACY.to_owned());
    let r = post(s, key, std::slice::from_ref(&version), &list).await;
    r.client_error("no session id");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // …nor is a notification accepted without it.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let r = post(s, key, std::slice::from_ref(&version), &note).await;
    r.client_error("notification without session id");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // A session id nobody opened: 404, JSON-RPC -32001, nothing about why.
    let made_up = uuid::Uuid::new_v4().to_string();
    let r = post(s, key, &[("mcp-session-id", made_up), version.clone()], &list).await;
    r.client_error("unknown session");
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), SESSION_NOT_FOUND, "{}", r.text);
    assert_eq!(r.message()["id"], Value::Null);

    // The real one works…
    let r = call(s, key, Rev::Legacy(&session), 2, "tools/list", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.result()["tools"], json!([]), "{}", r.text);

    // …until its owner ends it (DELETE → 202); then it is a 404 too.
    let r = session_request(s, reqwest::Method::DELETE, key, &session).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = call(s, key, Rev::Legacy(&session), 3, "tools/list", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "an ended session: {}", r.text);
    assert_eq!(r.error_code(), -32001, "the same JSON-RPC error as any unknown session: {}", r.text);
}

// ---------------------------------------------------------------------------
// 2. Isolation
// ---------------------------------------------------------------------------

/// Keys and sessions: no key or a wrong one → 401 with `WWW-Authenticate: Bearer`
/// (and no session opened); agent B presenting agent A's session → 404 with -32001,
/// whatever it asks (a list, a tool call, a ping, ending the session) — and nothing of
/// it happens: A's session still serves, no call reaches the upstream MCP server (with
/// `AEGIS_SDK_PYTHON`), nothing is audited for B.
#[tokio::test]
async fn mcp_wire_keys_and_sessions_belong_to_their_agent() {
    let upstream =
        Upstream::start("the upstream half of mcp_wire_keys_and_sessions_belong_to_their_agent").await;
    let w = world(&[]).await;
    let (s, key_a) = (&w.s, w.key.as_str());
    let url =
        upstream.as_ref().map_or_else(|| format!("http://127.0.0.1:{}/mcp", dead_port()), Upstream::url);
    notes_connection(s, &w.sponsor, &url).await;
    let (b_id, key_b) = agent(s, &w.sponsor, "wire-b").await;

    // No key, a wrong key, a sponsor's token: 401, WWW-Authenticate: Bearer, no session.
    let init = initialize_body(LEGACY);
    for (what, key) in [
        ("no key", None),
        ("a wrong key", Some("aegis_sk_this-key-does-not-exist")),
        ("a sponsor's token", Some(w.sponsor.access.as_str())),
        ("an empty bearer", Some("")),
    ] {
        let r = post_raw(s, key, &[], init.to_string()).await;
        r.client_error(what);
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text);
        let challenge = r.headers.get("www-authenticate").and_then(|v| v.to_str().ok());
        assert_eq!(challenge, Some("Bearer"), "{what}: {:?}", r.headers);
        // The same for the modern revision's requests.
        let body = request(Rev::Modern, 1, "server/discover", json!({}));
        let r = post_raw(s, key, &headers_for(Rev::Modern, &body), body.to_string()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} (2026-07-28): {}", r.text);
        assert!(r.headers.contains_key("www-authenticate"), "{what} (2026-07-28)");
    }

    // A's session, presented by B (same sponsor, its own valid key).
    let session = open_session(s, key_a).await;
    let a = Rev::Legacy(&session);
    for (id, method, params) in [
        (1, "tools/list", json!({})),
        (2, "tools/call", json!({"name": "notes__add", "arguments": {"a": 2, "b": 3}})),
        (3, "ping", json!({})),
    ] {
        let r = call(s, &key_b, a, id, method, params).await;
        r.client_error(&format!("B's {method} in A's session"));
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method}: {}", r.text);
        assert_eq!(r.error_code(), SESSION_NOT_FOUND, "{method}: {}", r.text);
        assert_eq!(r.message()["id"], Value::Null, "no trace of the request: {}", r.text);
    }
    let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}});
    let r = post(s, &key_b, &headers_for(a, &note), &note).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "B's notification in A's session: {}", r.text);
    for method in [reqwest::Method::DELETE, reqwest::Method::GET] {
        let r = session_request(s, method.clone(), &key_b, &session).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "B's {method} of A's session: {}", r.text);
        assert_eq!(r.error_code(), SESSION_NOT_FOUND, "{method}: {}", r.text);
    }

    // A's session is untouched by all of that (B's DELETE did not end it)…
    let r = call(s, key_a, a, 4, "ping", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.result(), &json!({}), "{}", r.text);
    // …and B's own session is B's: A cannot use it either.
    let b_session = open_session(s, &key_b).await;
    assert_ne!(b_session, session);
    let r = call(s, key_a, Rev::Legacy(&b_session), 5, "ping", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), SESSION_NOT_FOUND, "{}", r.text);

    // Nothing was performed for B.
    let r = s.get(&format!("/api/audit?agent={b_id}"), &w.sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let proxied: Vec<&Value> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"].as_str().is_some_and(|k| k.starts_with("proxy.")))
        .collect();
    assert!(proxied.is_empty(), "audited for B: {proxied:?}");

    if let Some(up) = &upstream {
        assert_eq!(up.tool_calls(), 0, "B's call reached the upstream: {:?}", up.methods());
        // Control: A's own call through its session is performed, once.
        let r =
            call(s, key_a, a, 6, "tools/call", json!({"name": "notes__add", "arguments": {"a": 2, "b": 3}}))
                .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.result()["isError"], false, "{}", r.text);
        assert_eq!(r.result()["structuredContent"]["result"], 5, "{}", r.text);
        assert_eq!(up.tool_calls(), 1, "{:?}", up.methods());
    }
}

/// A second sponsor's agent sees none of the first sponsor's MCP servers: the
/// connection is not in its `GET /api/connections`, its `tools/list` is empty and
/// calling `notes__read_note` is invalid params (-32602), in both revisions — and
/// (with `AEGIS_SDK_PYTHON`) the first sponsor's own agent does list the tool, and
/// the upstream received no call at all.
#[tokio::test]
async fn mcp_wire_another_sponsors_mcp_servers_are_invisible() {
    let upstream =
        Upstream::start("the upstream half of mcp_wire_another_sponsors_mcp_servers_are_invisible").await;
    let w = world(&[]).await;
    let s = &w.s;
    let url =
        upstream.as_ref().map_or_else(|| format!("http://127.0.0.1:{}/mcp", dead_port()), Upstream::url);
    notes_connection(s, &w.sponsor, &url).await;
    let other = s.sponsor("mcp-wire-other").await;
    let (_, other_key) = agent(s, &other, "other-bot").await;

    let names = |r: &crate::support::Response| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let items =
            r.body.as_array().or_else(|| r.body["items"].as_array()).unwrap_or_else(|| panic!("{}", r.text));
        items.iter().filter_map(|c| c["name"].as_str().map(str::to_owned)).collect()
    };
    let mine = s.get("/api/connections", &w.sponsor.access).await;
    assert!(names(&mine).contains(&"notes".to_owned()), "{}", mine.text);
    let theirs = s.get("/api/connections", &other.access).await;
    assert!(!names(&theirs).contains(&"notes".to_owned()), "{}", theirs.text);
    assert!(!theirs.text.contains(&url), "the other sponsor sees the URL: {}", theirs.text);

    let session = open_session(s, &other_key).await;
    for rev in [Rev::Modern, Rev::Legacy(&session)] {
        let label = rev.label();
        let r = call(s, &other_key, rev, 1, "tools/list", json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{label}: {}", r.text);
        assert_eq!(r.result()["tools"], json!([]), "{label}: {}", r.text);
        for name in ["notes__read_note", "notes__add"] {
            let r = call(
                s,
                &other_key,
                rev,
                2,
                "tools/call",
                json!({"name": name, "arguments": {"name": "welcome"}}),
            )
            .await;
            assert!(!r.status.is_server_error(), "{label} {name}: {}", r.text);
            assert_eq!(r.error_code(), INVALID_PARAMS, "{label} {name}: {}", r.text);
            assert!(!r.text.contains("Hello from the note store"), "{label}: {}", r.text);
        }
    }

    if let Some(up) = &upstream {
        assert_eq!(up.tool_calls(), 0, "{:?}", up.methods());
        // Control: the first sponsor's agent lists the tools.
        let r = call(s, &w.key, Rev::Modern, 3, "tools/list", json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let listed = tool_names(r.result());
        assert!(listed.contains(&"notes__read_note".to_owned()), "{listed:?}");
        // …and may call what the other sponsor's agent could not.
        let r = call(
            s,
            &w.key,
            Rev::Modern,
            4,
            "tools/call",
            json!({"name": "notes__read_note", "arguments": {"name": "welcome"}}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.result()["isError"], false, "{}", r.text);
        assert_eq!(up.tool_calls(), 1, "{:?}", up.methods());
    }
}

// ---------------------------------------------------------------------------
// 3. Discovery
// ---------------------------------------------------------------------------

/// 2026-07-28 `server/discover`: 200, capabilities with `tools` (and nothing AEGIS
/// does not serve), both revisions among the supported versions, AEGIS named in
/// `_meta["io.modelcontextprotocol/serverInfo"]`. Without the required `_meta`: -32602,
/// 400. The 2025-11-25 `initialize` result says the same.
#[tokio::test]
async fn mcp_wire_modern_discover_advertises_tools() {
    let w = world(&[]).await;
    let (s, key) = (&w.s, w.key.as_str());

    let r = call(s, key, Rev::Modern, 1, "server/discover", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.message()["id"], 1);
    let result = r.result();
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    for absent in ["resources", "prompts", "completions"] {
        assert!(result["capabilities"].get(absent).is_none(), "{absent} advertised: {result}");
    }
    let versions: Vec<&str> =
        result["supportedVersions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(versions.contains(&MODERN) && versions.contains(&LEGACY), "{result}");
    assert_eq!(result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "aegis", "{result}");
    assert!(result["instructions"].as_str().is_some_and(|i| i.contains("<server>__<tool>")), "{result}");
    assert!(r.session().is_none(), "the stateless revision opens no session");

    // Without `_meta`: invalid params, 400.
    let bare = json!({"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {}});
    let r = post(s, key, &headers_for(Rev::Modern, &bare), &bare).await;
    r.client_error("discover without _meta");
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.error_code(), INVALID_PARAMS, "{}", r.text);

    // 2025-11-25: the same capabilities from initialize.
    let r = post(s, key, &[], &initialize_body(LEGACY)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let result = r.result();
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    assert!(result["capabilities"].get("resources").is_none(), "{result}");
    assert_eq!(result["serverInfo"]["name"], "aegis", "{result}");
    assert_eq!(result["protocolVersion"], LEGACY, "{result}");
}

/// An MCP connection's URL is reached only through `/mcp`: posting JSON-RPC to it through
/// the execute door is denied at stage `egress` (the allow-list and argument checks cannot
/// be bypassed), and its gateway path answers `409 mcp_connection`. Nothing is sent.
#[tokio::test]
async fn mcp_wire_an_mcp_server_is_reached_only_through_mcp() {
    let w = world(&[]).await;
    let mock = crate::mock::MockUpstream::start().await;
    let base = mock.url("/mcp");
    notes_connection(&w.s, &w.sponsor, &base).await;
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "drop_all", "arguments": {}}});
    for url in [base.clone(), format!("{base}/deeper"), format!("{base}?x=1")] {
        let r =
            w.s.execute(
                &w.key,
                json!({"method": "POST", "url": url, "headers": {"content-type": "application/json"},
                       "body": call.to_string()}),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}: {}", r.text);
        assert_eq!(r.body["stage"], "egress", "{url}: {}", r.text);
    }
    let r = read(
        w.s.http
            .post(w.s.url("/api/gw/notes"))
            .bearer_auth(&w.key)
            .body(call.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(r.text.contains("mcp_connection"), "{}", r.text);
    assert_eq!(mock.hits(), 0, "nothing reached the MCP server");
}

/// The session revision across replicas: a session opened on one replica is served by
/// another (its owner and the SDK's session state live in Redis), and there too it
/// belongs only to the agent that opened it. Runs when `AEGIS_TEST_REDIS_URL` is set.
#[tokio::test]
async fn mcp_wire_a_session_is_served_by_any_replica_through_redis() {
    let Ok(redis) = std::env::var("AEGIS_TEST_REDIS_URL") else {
        eprintln!("SKIPPED MCP sessions across replicas: AEGIS_TEST_REDIS_URL is not set");
        return;
    };
    let vars = [("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"), ("REDIS_URL", redis.as_str())];
    let a = TestServer::start_with(&vars).await;
    let b = TestServer::start_sharing(&a, &vars).await;
    let sponsor = a.sponsor("mcp-replicas").await;
    let key = agent(&a, &sponsor, "roamer").await.1;
    let other = agent(&a, &sponsor, "intruder").await.1;
    let session = open_session(&a, &key).await;
    for (i, s) in [&b, &a, &b].into_iter().enumerate() {
        let r = call(s, &key, Rev::Legacy(&session), 10 + i as i64, "tools/list", json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text);
        assert_eq!(r.result()["tools"], json!([]), "{}", r.text);
    }
    let r = call(&b, &other, Rev::Legacy(&session), 20, "tools/list", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(r.error_code(), -32001, "{}", r.text);
}
