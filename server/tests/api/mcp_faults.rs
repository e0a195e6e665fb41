//! The MCP gateway when the upstream MCP server misbehaves (issue #21): a timeout, an
//! answer past the size cap, malformed JSON-RPC, an answer to another id, an HTTP
//! error — each an error result for the agent (never a JSON-RPC error or a 5xx),
//! the hold released, the outcome audited; and a slow server holds only its own call.
//! The upstream is a small MCP server written here (the stateless revision AEGIS
//! speaks upstream): no Python needed.

use std::time::Duration;

use axum::Json;
use axum::response::IntoResponse;
use axum::routing::post;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

const MAX_BYTES: usize = 64 * 1024;

/// Lists one tool per fault; `tools/call` of each misbehaves as its name says.
async fn faulty_upstream() -> String {
    let app = axum::Router::new().route(
        "/mcp",
        post(|Json(request): Json<Value>| async move {
            let id = request["id"].clone();
            let ok =
                |result: Value| Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response();
            let tool = |name: &str| json!({"name": name, "inputSchema": {"type": "object"}});
            if request["method"] == "tools/list" {
                let names = ["fine", "slow", "huge", "garbage", "other_id", "broken"];
                return ok(json!({"tools": names.map(tool)}));
            }
            let text = |t: &str| json!({"content": [{"type": "text", "text": t}], "isError": false});
            match request["params"]["name"].as_str().unwrap_or_default() {
                "fine" => ok(text("fine")),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    ok(text("too late"))
                }
                "huge" => ok(text(&"x".repeat(MAX_BYTES * 2))),
                "garbage" => ([("content-type", "application/json")], "{not json").into_response(),
                "other_id" => {
                    Json(json!({"jsonrpc": "2.0", "id": 999, "result": text("not yours")})).into_response()
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}/mcp")
}

/// A `tools/call` in the stateless revision, as the SDK's client sends it.
async fn call_tool(s: &TestServer, key: &str, tool: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {}, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "faults", "version": "1"},
            "io.modelcontextprotocol/clientCapabilities": {}}}});
    let r = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{tool}: {text}");
    let data = text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).find(|d| !d.is_empty());
    serde_json::from_str(data.unwrap_or(&text)).unwrap_or_else(|e| panic!("{tool}: {e}: {text}"))
}

async fn agent(s: &TestServer, sponsor: &Sponsor, name: &str) -> (String, String) {
    s.agent_with(sponsor, json!({"name": name, "policy": "permissive"})).await
}

#[tokio::test]
async fn mcp_faults_upstream_failures_are_error_results_with_the_hold_released_and_audited() {
    let max = MAX_BYTES.to_string();
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_UPSTREAM_TIMEOUT_SECS", "2"),
        ("AEGIS_UPSTREAM_MAX_BYTES", &max),
        ("AEGIS_BREAKER_SPEND_MICROS", "0"),
        ("AEGIS_BREAKER_ERROR_RATE_PCT", "0"),
    ])
    .await;
    let sponsor = s.sponsor("mcp-faults").await;
    let (slow_id, slow_key) = agent(&s, &sponsor, "patient").await;
    let (id, key) = agent(&s, &sponsor, "busy").await;
    let base = faulty_upstream().await;
    let r = s
        .post(
            "/api/connections",
            Some(&sponsor.access),
            json!({"name": "faulty", "kind": "mcp", "base_url": base, "cost_micros": 1_000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // A slow server holds only its own call: another agent's calls are answered while
    // it is in flight.
    let slow = async { (call_tool(&s, &slow_key, "faulty__slow").await, std::time::Instant::now()) };
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        (call_tool(&s, &key, "faulty__fine").await, std::time::Instant::now())
    };
    let ((fine, fine_done), (timed_out, slow_done)) = tokio::join!(others, slow);
    assert_eq!(fine["result"]["isError"], false, "{fine}");
    assert!(fine_done < slow_done, "the other agent's call finished first");
    let result = &timed_out["result"];
    assert_eq!(result["isError"], true, "{timed_out}");
    assert_eq!(result["_meta"]["dev.aegis/decision"]["stage"], "upstream", "{timed_out}");

    // Past the size cap, malformed, another id, an HTTP error: error results, readable.
    for tool in ["huge", "garbage", "other_id", "broken"] {
        let answer = call_tool(&s, &key, &format!("faulty__{tool}")).await;
        assert!(answer.get("error").is_none(), "{tool}: a result, not a JSON-RPC error: {answer}");
        let result = &answer["result"];
        assert_eq!(result["isError"], true, "{tool}: {answer}");
        let text = result["content"][0]["text"].as_str().unwrap_or_default();
        assert!(!text.is_empty(), "{tool}: {answer}");
        assert!(!text.contains(&"x".repeat(1000)), "{tool}: nothing of an oversized answer is passed on");
    }

    // Every hold released; the failures that never got an answer cost nothing.
    for agent_id in [&slow_id, &id] {
        let wallet = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
        assert_eq!(wallet.body["reserved_micros"], 0, "{}", wallet.text);
    }
    let wallet = s.get(&format!("/api/agents/{slow_id}/wallet"), &sponsor.access).await;
    assert_eq!(wallet.body["daily_spent_micros"], 0, "a timed-out call is not charged: {}", wallet.text);

    // Each call's outcome is audited, with its tool.
    let r = s.get("/api/audit?kind=proxy.outcome&limit=100", &sponsor.access).await;
    let tools: Vec<&str> =
        r.body["items"].as_array().unwrap().iter().filter_map(|i| i["tool"].as_str()).collect();
    for tool in ["slow", "huge", "garbage", "other_id", "broken", "fine"] {
        assert!(tools.contains(&format!("faulty__{tool}").as_str()), "{tool} audited: {tools:?}");
    }
    let r = s.get("/api/audit/verify", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}
