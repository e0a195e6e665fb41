//! The MCP gateway's dashboard side (issue #21) through the JSON API: which tools
//! policy lets an agent see (`GET /api/agents/{id}/tools`), a parked tool call's tool
//! and arguments in its approval, and the policy playground with an MCP tool call
//! (`input.mcp`). The upstream is a small MCP server written here (JSON-RPC over one
//! `POST`, the stateless revision AEGIS speaks upstream): no Python needed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

/// `drop_all` is denied outright (so it is not listed); `delete_*` waits for a human.
const TOOLS_POLICY: &str = r#"package aegis
import rego.v1
default decision := "allow"
decision := "deny" if input.mcp.tool == "drop_all"
decision := "require_approval" if startswith(input.mcp.tool, "delete_")
"#;

/// An MCP server on a loopback port: lists three tools, answers every call, and
/// keeps each JSON-RPC request it received.
struct McpUpstream {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl McpUpstream {
    async fn start() -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let seen = received.clone();
        let app = axum::Router::new().route(
            "/mcp",
            post(move |Json(request): Json<Value>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(request.clone());
                    let result = match request["method"].as_str() {
                        Some("tools/list") => json!({"tools": [
                            {"name": "read_note", "description": "Read one note",
                             "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}}},
                            {"name": "delete_note", "description": "Delete one note",
                             "inputSchema": {"type": "object", "properties": {"name": {"type": "string"}}}},
                            {"name": "drop_all", "description": "Delete every note",
                             "inputSchema": {"type": "object"}},
                        ]}),
                        Some("tools/call") => {
                            json!({"content": [{"type": "text", "text": "done"}], "isError": false})
                        }
                        _ => {
                            return Json(json!({"jsonrpc": "2.0", "id": request["id"],
                                                "error": {"code": -32601, "message": "method not found"}}));
                        }
                    };
                    Json(json!({"jsonrpc": "2.0", "id": request["id"], "result": result}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url: format!("http://127.0.0.1:{port}/mcp"), received }
    }

    /// The `tools/call` requests received, as (tool, arguments).
    fn calls(&self) -> Vec<(String, Value)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["method"] == "tools/call")
            .map(|r| {
                (
                    r["params"]["name"].as_str().unwrap_or_default().to_owned(),
                    r["params"]["arguments"].clone(),
                )
            })
            .collect()
    }
}

struct Setup {
    s: TestServer,
    sponsor: Sponsor,
    agent_id: String,
    upstream: McpUpstream,
}

/// A sponsor with an agent under [`TOOLS_POLICY`] and an MCP connection `notes` to
/// a local MCP server.
async fn setup() -> Setup {
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_MCP_APPROVAL_WAIT_SECS", "20"),
    ])
    .await;
    let upstream = McpUpstream::start().await;
    let sponsor = s.sponsor("mcp-dash").await;
    let r = s
        .post("/api/policies", Some(&sponsor.access), json!({"name": "dash-tools", "source": TOOLS_POLICY}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (agent_id, _key) = s.agent_with(&sponsor, json!({"name": "mcp-bot", "policy": "dash-tools"})).await;
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "notes", "kind": "mcp", "base_url": upstream.url,
                   "tools": ["read_note", "delete_note", "drop_all"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    Setup { s, sponsor, agent_id, upstream }
}

fn names(tools: &Value) -> Vec<&str> {
    tools.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_tools_route_answers_only_the_agents_sponsor() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("tools-own").await;
    let (agent, _key) = s.agent(&sponsor, "tools-bot").await;
    let path = format!("/api/agents/{}/tools", agent["id"].as_str().unwrap());

    // No MCP connection: nothing to see.
    let r = s.get(&path, &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body, json!([]));

    // Another sponsor's agent is not found, like one that does not exist.
    let other = s.sponsor("tools-other").await;
    let r = s.get(&path, &other.access).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let r = s.get(&format!("/api/agents/{}/tools", uuid::Uuid::now_v7()), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);

    // No token: unauthenticated.
    let r = s.send(Method::GET, &path, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{}", r.text);
}

#[tokio::test]
async fn an_agent_sees_the_tools_its_policy_lets_it_call() {
    let Setup { s, sponsor, agent_id, upstream } = setup().await;
    let r = s.get(&format!("/api/agents/{agent_id}/tools"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // drop_all is denied outright; delete_note only waits for approval, so it is listed.
    assert_eq!(names(&r.body), ["notes__read_note", "notes__delete_note"], "{}", r.text);
    assert_eq!(r.body[0]["description"], "Read one note");
    assert!(upstream.calls().is_empty(), "listing calls no tool");

    // The allow-list narrows it further.
    let id = s.get("/api/connections", &sponsor.access).await.body[0]["id"].as_str().unwrap().to_owned();
    let r = s
        .send(
            Method::PATCH,
            &format!("/api/connections/{id}"),
            Some(&sponsor.access),
            Some(json!({"tools": ["read_note"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s.get(&format!("/api/agents/{agent_id}/tools"), &sponsor.access).await;
    assert_eq!(names(&r.body), ["notes__read_note"], "{}", r.text);
}

#[tokio::test]
async fn a_parked_tool_call_shows_its_tool_and_arguments() {
    let Setup { s, sponsor, agent_id, upstream } = setup().await;
    let services = s.running.services.clone();
    let principal = services.agents.principal(agent_id.parse().unwrap()).await.unwrap();
    // The agent's tools/call, as `/mcp` hands it to the domain: it waits for a decision.
    let call = tokio::spawn(async move {
        services
            .mcp
            .call_tool(
                &principal,
                server::proxy::new_request_id(),
                "notes__delete_note",
                json!({"name": "old"}),
            )
            .await
            .map(|outcome| format!("{outcome:?}"))
    });

    let mut pending = Value::Null;
    for _ in 0..200 {
        let r = s.get("/api/approvals?status=pending", &sponsor.access).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if let Some(first) = r.body["items"].as_array().and_then(|a| a.first()) {
            pending = first.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = pending["id"].as_str().expect("the tool call waits for approval").to_owned();
    // A list reads plain columns only: the call's arguments are not in it.
    assert!(pending["mcp"].is_null(), "{pending}");
    assert_eq!(pending["action_label"], "mcp.notes.delete_note");

    let r = s.get(&format!("/api/approvals/{id}"), &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["mcp"],
        json!({"server": "notes", "method": "tools/call", "tool": "delete_note", "arguments": {"name": "old"}}),
        "{}",
        r.text
    );

    // Rejected: the call ends without reaching the upstream.
    let r = s
        .post(&format!("/api/approvals/{id}/reject"), Some(&sponsor.access), json!({"reason": "keep it"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["mcp"]["tool"], "delete_note", "{}", r.text);
    let outcome = tokio::time::timeout(Duration::from_secs(30), call).await.unwrap().unwrap().unwrap();
    assert!(outcome.contains("Refused"), "{outcome}");
    assert!(upstream.calls().is_empty(), "{:?}", upstream.calls());
}

#[tokio::test]
async fn the_playground_tries_an_mcp_tool_call() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("mcp-play").await;
    let (agent, _key) = s.agent(&sponsor, "mcp-play-bot").await;
    let agent_id = agent["id"].as_str().unwrap();
    let source = "package aegis\nimport rego.v1\ndefault decision := \"allow\"\n\
                  decision := \"deny\" if input.mcp.tool == \"drop_all\"\n\
                  reasons contains \"not that one\" if decision == \"deny\"\n";
    let trial = |tool: Option<&str>| {
        let mut body = json!({"agent_id": agent_id, "source": source, "method": "POST",
                              "url": "https://mcp.example.com/mcp"});
        if let Some(tool) = tool {
            body["mcp"] = json!({"server": "notes", "tool": tool, "arguments": {"all": true}});
        }
        body
    };
    let evaluate = |body: Value| s.post("/api/policies/evaluate", Some(&sponsor.access), body);

    let r = evaluate(trial(Some("drop_all"))).await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("deny")), "{}", r.text);
    assert_eq!(r.body["reasons"], json!(["not that one"]));
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(
        input["mcp"],
        json!({"server": "notes", "method": "tools/call", "tool": "drop_all", "arguments": {"all": true}})
    );
    // No connection named `notes`: the sample action stands for it.
    assert_eq!(input["action"]["host"], "mcp.example.com");
    assert_eq!(input["action"]["label"], "mcp.notes.drop_all");

    let r = evaluate(trial(Some("read_note"))).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);

    // Without `mcp` it is the plain HTTP dry run: no `input.mcp`.
    let r = evaluate(trial(None)).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert!(input.get("mcp").is_none(), "{input}");

    // With an MCP connection of that name, the action is what AEGIS would send it.
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "notes", "kind": "mcp", "base_url": "https://notes.example.org/mcp", "cost_micros": 3000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = evaluate(trial(Some("drop_all"))).await;
    assert_eq!(r.body["decision"], "deny", "{}", r.text);
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["action"]["url"], "https://notes.example.org/mcp");
    assert_eq!(input["action"]["cost_micros"], 3000);
    assert_eq!(input["mcp"]["tool"], "drop_all");

    // Arguments must be an object; a tool is required.
    let mut bad = trial(Some("drop_all"));
    bad["mcp"]["arguments"] = json!(["all"]);
    let r = evaluate(bad).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{}", r.text);
    let mut bad = trial(Some("drop_all"));
    bad["mcp"]["tool"] = json!(" ");
    let r = evaluate(bad).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"), "{}", r.text);
}
