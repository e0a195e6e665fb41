//! The MCP gateway (issue #21) with real MCP on both sides: the official Python SDK's
//! client (`server/tests/mcp/client.py`, both protocol revisions) talks to AEGIS's
//! `/mcp` with an agent key; the upstream is a real MCP server written with the same
//! SDK (`server/tests/mcp/upstream.py`) that records every request it receives.
//! Runs when `AEGIS_SDK_PYTHON` names the venv's python (`make test` builds it).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

/// Listing is allowed; `read_note` of "secret" is denied; `admin_reset` is denied outright
/// (so it is not listed); `delete_*` waits for a human.
const MCP_POLICY: &str = r#"package aegis
import rego.v1
default decision := "allow"
decision := "deny" if input.mcp.tool == "admin_reset"
decision := "deny" if {
    input.mcp.tool == "read_note"
    input.mcp.arguments.name == "secret"
}
decision := "require_approval" if startswith(input.mcp.tool, "delete_")
reasons contains "notes are private" if input.mcp.arguments.name == "secret"
"#;

const UPSTREAM_SECRET: &str = "upstream-bearer-7f3a";

fn here(file: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp").join(file)
}

struct Upstream {
    _child: tokio::process::Child,
    port: u16,
    record: tempfile::NamedTempFile,
}

impl Upstream {
    /// `legacy_only`: a server of the session revision only (see upstream.py).
    async fn start(python: &str, legacy_only: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let record = tempfile::NamedTempFile::new().unwrap();
        let child = tokio::process::Command::new(python)
            .arg(here("upstream.py"))
            .arg(port.to_string())
            .env("RECORD_FILE", record.path())
            .env("LEGACY_ONLY", if legacy_only { "1" } else { "0" })
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Self { _child: child, port, record };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the upstream MCP server did not start");
    }

    /// Every request the upstream received.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.record.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The tools/call requests it received, as (tool, arguments).
    fn calls(&self) -> Vec<(String, Value)> {
        self.received()
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(r["body"].as_str()?).ok())
            .filter(|b| b["method"] == "tools/call")
            .map(|b| (b["params"]["name"].as_str().unwrap().to_owned(), b["params"]["arguments"].clone()))
            .collect()
    }
}

struct Setup {
    s: TestServer,
    sponsor: Sponsor,
    key: String,
    upstream: Upstream,
    python: String,
    agent_id: String,
}

async fn setup(python: String, legacy_upstream: bool) -> Setup {
    let upstream = Upstream::start(&python, legacy_upstream).await;
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_MCP_APPROVAL_WAIT_SECS", "3"),
        ("AEGIS_BREAKER_SPEND_MICROS", "0"),
    ])
    .await;
    let sponsor = s.sponsor("mcp").await;
    let r = s
        .post("/api/policies", Some(&sponsor.access), json!({"name": "notes-policy", "source": MCP_POLICY}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = s
        .post("/api/agents", Some(&sponsor.access), json!({"name": "mcp-bot", "policy": "notes-policy"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let agent_id = r.body["agent"]["id"].as_str().unwrap().to_owned();
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    let r = s
        .post("/api/secrets", Some(&sponsor.access),
              json!({"name": "notes-token", "value": UPSTREAM_SECRET, "allowed_hosts": ["http://127.0.0.1:*"],
                     "inject": {"header": "authorization", "format": "Bearer {secret}"}, "agents": [agent_id]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = s
        .post("/api/connections", Some(&sponsor.access),
              json!({"name": "notes", "kind": "mcp", "base_url": format!("http://127.0.0.1:{}/mcp", upstream.port),
                     "secret": "notes-token", "cost_micros": 2_000,
                     "tools": ["read_note", "delete_note", "add", "admin_reset"]}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["kind"], "mcp");
    assert_eq!(r.body["gateway_path"], "/mcp");
    Setup { s, sponsor, key, upstream, python, agent_id }
}

impl Setup {
    fn client(&self, mode: &str, args: &[&str]) -> impl std::future::Future<Output = Value> + use<> {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(here("client.py"))
            .arg(self.s.url("/mcp"))
            .arg(&self.key)
            .arg(mode)
            .args(args)
            .kill_on_drop(true);
        let what = format!("{mode} {args:?}");
        async move {
            let out = cmd.output().await.expect("python runs");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{what}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{what}: {e}: {stdout}"))
        }
    }

    async fn call(&self, mode: &str, tool: &str, arguments: Value) -> Value {
        self.client(mode, &["call", tool, &arguments.to_string()]).await
    }

    /// Approves the first pending approval that appears (within 10 s).
    async fn approve_next(&self) -> String {
        for _ in 0..100 {
            let r = self.s.get("/api/approvals?status=pending", &self.sponsor.access).await;
            if let Some(first) = r.body["items"].as_array().and_then(|a| a.first()) {
                let id = first["id"].as_str().unwrap().to_owned();
                let r = self
                    .s
                    .post(&format!("/api/approvals/{id}/approve"), Some(&self.sponsor.access), json!({}))
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text);
                return id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no approval was requested");
    }
}

/// One revision's whole run: list, allowed, denied, schema-invalid, filtered-out, approved
/// while waiting, timed out then retried after approval (performed once). `legacy_upstream`:
/// the upstream speaks only the session revision, so AEGIS must fall back to it.
async fn governed_tool_calls(mode: &str, legacy_upstream: bool) {
    let Ok(python) = std::env::var("AEGIS_SDK_PYTHON") else {
        eprintln!("SKIPPED MCP gateway ({mode}): AEGIS_SDK_PYTHON is not set");
        return;
    };
    let t = setup(python, legacy_upstream).await;

    // tools/list: the allow-list applied (drop_all is not on it) and the policy's outright
    // denial (admin_reset) hidden; names prefixed, schemas unchanged.
    let listed = t.client(mode, &["list"]).await;
    assert_eq!(listed["tools"], json!(["notes__add", "notes__delete_note", "notes__read_note"]), "{listed}");
    assert_eq!(listed["schemas"]["notes__add"]["required"], json!(["a", "b"]));

    // Allowed: performed, the upstream's own result.
    let added = t.call(mode, "notes__add", json!({"a": 2, "b": 3})).await;
    assert_eq!(added["isError"], false, "{added}");
    assert_eq!(added["structured"]["result"], 5);
    let read = t.call(mode, "notes__read_note", json!({"name": "welcome"})).await;
    assert_eq!(read["text"], "Hello from the note store.", "{read}");

    // Denied by policy: an error result naming the stage and reason, the decision in _meta.
    let denied = t.call(mode, "notes__read_note", json!({"name": "secret"})).await;
    assert_eq!(denied["isError"], true, "{denied}");
    assert!(denied["text"].as_str().unwrap().contains("stage policy"), "{denied}");
    let decision = &denied["meta"]["dev.aegis/decision"];
    assert_eq!(decision["decision"], "deny", "{denied}");
    assert_eq!(decision["stage"], "policy");
    assert!(decision["audit_seq"].as_i64().is_some());

    // Schema-invalid arguments: a JSON-RPC invalid-params error, audited as denied.
    let invalid = t.call(mode, "notes__add", json!({"a": "two", "b": 3})).await;
    assert_eq!(invalid["error"]["code"], -32602, "{invalid}");
    let r = t.s.get("/api/audit?kind=proxy.denied", &t.sponsor.access).await;
    let stages: Vec<&str> =
        r.body["items"].as_array().unwrap().iter().filter_map(|i| i["stage"].as_str()).collect();
    assert!(stages.contains(&"arguments"), "{}", r.text);

    // Not on the allow-list, or not a tool at all: refused even when named directly.
    for name in ["notes__drop_all", "notes__nope", "other__add", "no-separator"] {
        let refused = t.call(mode, name, json!({})).await;
        assert_eq!(refused["error"]["code"], -32602, "{name}: {refused}");
    }

    // Needs approval, approved while the client waits: performed once, the real result.
    let (waited, _) =
        tokio::join!(t.call(mode, "notes__delete_note", json!({"name": "todo"})), t.approve_next());
    assert_eq!(waited["isError"], false, "{waited}");
    assert_eq!(waited["text"], "deleted todo");

    // Needs approval and nobody decides within the wait: an error result naming the
    // approval; approved afterwards, the same call retried gets that one result.
    let timed_out = t.call(mode, "notes__delete_note", json!({"name": "scratch"})).await;
    assert_eq!(timed_out["isError"], true, "{timed_out}");
    let approval_id = timed_out["meta"]["dev.aegis/decision"]["approval_id"].as_str().unwrap().to_owned();
    assert!(timed_out["text"].as_str().unwrap().contains(&approval_id));
    // While held (3 s here), the client that asked for progress heard that the call is
    // still being worked on.
    let heard = timed_out["progress"].as_array().map(Vec::len).unwrap_or(0);
    assert!(heard >= 1, "progress notifications while held: {timed_out}");
    assert_eq!(t.approve_next().await, approval_id);
    let retried = t.call(mode, "notes__delete_note", json!({"name": "scratch"})).await;
    assert_eq!(retried["isError"], false, "{retried}");
    assert_eq!(retried["text"], "deleted scratch");

    // What reached the upstream: the injected credential on every request, never the
    // agent's key; each approved call once; nothing refused.
    let received = t.upstream.received();
    assert!(!received.is_empty());
    for r in &received {
        assert_eq!(r["headers"]["authorization"], format!("Bearer {UPSTREAM_SECRET}"), "{r}");
        assert!(!r.to_string().contains(&t.key), "the agent's key reached the upstream: {r}");
    }
    let calls = t.upstream.calls();
    let count = |tool: &str, args: Value| calls.iter().filter(|(t, a)| t == tool && *a == args).count();
    assert_eq!(count("add", json!({"a": 2, "b": 3})), 1, "{calls:?}");
    assert_eq!(count("delete_note", json!({"name": "todo"})), 1, "{calls:?}");
    assert_eq!(count("delete_note", json!({"name": "scratch"})), 1, "performed once: {calls:?}");
    assert_eq!(count("read_note", json!({"name": "secret"})), 0, "denied");
    assert_eq!(count("add", json!({"a": "two", "b": 3})), 0, "invalid");
    assert!(calls.iter().all(|(t, _)| t != "drop_all" && t != "admin_reset"), "{calls:?}");

    // Budget: the connection's per-call price (2,000) held and settled for each performed
    // tool call (four), nothing for denials, invalid calls, waits or listings.
    let wallet = t.s.get(&format!("/api/agents/{}/wallet", t.agent_id), &t.sponsor.access).await;
    let history = t.s.get(&format!("/api/agents/{}/wallet/history", t.agent_id), &t.sponsor.access).await;
    assert_eq!(wallet.body["daily_spent_micros"], 4 * 2_000, "{}\n{}", wallet.text, history.text);

    // The upstream was spoken to in the revision it offers.
    let body =
        |r: &Value| serde_json::from_str::<Value>(r["body"].as_str().unwrap_or("")).unwrap_or(Value::Null);
    let tool_calls: Vec<&Value> = received.iter().filter(|r| body(r)["method"] == "tools/call").collect();
    let initializes = received.iter().filter(|r| body(r)["method"] == "initialize").count();
    if legacy_upstream {
        // Each call in a session of its own: initialize, the call under its session, DELETE.
        assert!(tool_calls.iter().all(|r| r["headers"]["mcp-session-id"].is_string()), "{tool_calls:?}");
        assert!(tool_calls.iter().all(|r| r["headers"]["mcp-protocol-version"] == "2025-11-25"));
        assert!(tool_calls.iter().all(|r| body(r)["params"].get("_meta").is_none()));
        assert!(initializes >= tool_calls.len(), "{initializes} initialize for {} calls", tool_calls.len());
        let deletes = received.iter().filter(|r| r["method"] == "DELETE").count();
        assert!(deletes >= tool_calls.len(), "every session is ended: {deletes}");
    } else {
        assert_eq!(initializes, 0, "a stateless server needs no handshake");
        assert!(tool_calls.iter().all(|r| r["headers"]["mcp-protocol-version"] == "2026-07-28"
            && r["headers"].get("mcp-session-id").is_none()));
        assert!(
            tool_calls.iter().all(
                |r| body(r)["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
            )
        );
    }

    // The audit: the tool, the arguments' hash (not the arguments), the result's hash and size.
    let r = t.s.get("/api/audit?kind=proxy.outcome", &t.sponsor.access).await;
    let tools: Vec<&str> =
        r.body["items"].as_array().unwrap().iter().filter_map(|i| i["tool"].as_str()).collect();
    assert!(tools.contains(&"notes__add") && tools.contains(&"notes__delete_note"), "{tools:?}");
    let csv = t.s.get("/api/audit/export.csv", &t.sponsor.access).await;
    assert_eq!(csv.status, StatusCode::OK);
    assert!(csv.text.lines().next().unwrap().ends_with(",tool"), "{}", csv.text);
    assert!(csv.text.lines().any(|l| l.ends_with(",notes__add")), "the CSV shows the tool");
    let outcome = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            serde_json::from_str::<Value>(i["detail"].as_str().unwrap_or("{}"))
                .unwrap_or_else(|_| i["detail"].clone())
        })
        .find(|d| d["mcp"]["tool"] == "add")
        .unwrap_or_else(|| panic!("no outcome for add: {}", r.text));
    assert_eq!(outcome["mcp"]["server"], "notes");
    assert_eq!(outcome["mcp"]["arguments_sha256"].as_str().unwrap().len(), 64);
    assert!(outcome["mcp"].get("arguments").is_none(), "arguments are not kept unless enabled");
    assert!(outcome["mcp"]["result_bytes"].as_u64().unwrap() > 0);
    assert_eq!(outcome["mcp"]["revision"], if legacy_upstream { "sessions" } else { "stateless" });
    let r = t.s.get("/api/audit/verify", &t.sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test]
async fn mcp_tool_calls_are_governed_in_the_stateless_revision() {
    governed_tool_calls("modern", false).await;
}

#[tokio::test]
async fn mcp_tool_calls_are_governed_in_the_session_revision() {
    // The session-revision client, and an upstream that speaks only that revision.
    governed_tool_calls("legacy", true).await;
}
