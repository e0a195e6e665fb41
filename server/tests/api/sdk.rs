//! The unmodified official OpenAI and Anthropic Python SDKs (pinned in
//! `server/tests/sdk/requirements.txt`) drive gateway mode against the mock providers:
//! every call is metered from usage, the usage chunk AEGIS asked for stays hidden
//! from an SDK that did not, an unlisted model is refused before anything leaves.
//! Runs when `AEGIS_SDK_PYTHON` names the venv's python (`make test` builds it with
//! `server/tests/sdk/venv.sh`); skipped otherwise.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::mock_llm::MockLlm;
use crate::support::TestServer;

#[tokio::test]
async fn the_official_sdks_are_metered_through_the_gateway() {
    let Ok(python) = std::env::var("AEGIS_SDK_PYTHON") else {
        eprintln!("SKIPPED the_official_sdks_are_metered_through_the_gateway: AEGIS_SDK_PYTHON is not set");
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/gateway.py");
    let mock = MockLlm::start().await;
    let s = TestServer::start_with(&[
        ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32"),
        ("AEGIS_BREAKER_SPEND_MICROS", "0"),
    ])
    .await;
    let sponsor = s.sponsor("sdk").await;
    let r = s
        .post("/api/agents", Some(&sponsor.access), json!({"name": "sdk-bot", "policy": "permissive"}))
        .await;
    let agent_id = r.body["agent"]["id"].as_str().unwrap().to_owned();
    let key = r.body["api_key"].as_str().unwrap().to_owned();
    for (name, inject) in [
        ("openai-key", json!({"header": "authorization", "format": "Bearer {secret}"})),
        ("anthropic-key", json!({"header": "x-api-key", "format": "{secret}"})),
    ] {
        let r = s
            .post("/api/secrets", Some(&sponsor.access),
                  json!({"name": name, "value": format!("sk-{name}-real"), "allowed_hosts": ["http://127.0.0.1:*"],
                         "inject": inject, "agents": [agent_id]}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    // Default-table prices (`{}`): the SDKs' models are real ones.
    for body in [
        json!({"name": "openai", "base_url": mock.url("/v1"), "secret": "openai-key",
               "pricing": {"provider": "openai", "models": {"gpt-4o-mini": {}, "text-embedding-3-small": {}},
                           "max_output_tokens": 100}}),
        json!({"name": "claude", "base_url": mock.url("/anthropic"), "secret": "anthropic-key",
               "pricing": {"provider": "anthropic", "models": {"claude-sonnet-4-5": {}}}}),
    ] {
        let r = s.post("/api/connections", Some(&sponsor.access), body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let run = |scenario: &'static str| {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script)
            .arg(scenario)
            .env("AEGIS_OPENAI_BASE_URL", s.url("/api/gw/openai"))
            .env("AEGIS_ANTHROPIC_BASE_URL", s.url("/api/gw/claude"))
            .env("AEGIS_AGENT_KEY", &key)
            .kill_on_drop(true);
        async move {
            let out = cmd.output().await.expect("python runs");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{scenario}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
            let v: Value =
                serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"));
            v
        }
    };
    let (
        chat,
        stream,
        stream_usage,
        responses,
        responses_stream,
        embeddings,
        messages,
        messages_stream,
        denied,
    ) = tokio::join!(
        run("openai-chat"),
        run("openai-chat-stream"),
        run("openai-chat-stream-usage"),
        run("openai-responses"),
        run("openai-responses-stream"),
        run("openai-embeddings"),
        run("anthropic-messages"),
        run("anthropic-messages-stream"),
        run("openai-denied-model"),
    );
    let performed = [
        &chat,
        &stream,
        &stream_usage,
        &responses,
        &responses_stream,
        &embeddings,
        &messages,
        &messages_stream,
    ];
    for v in performed {
        assert_eq!(v["ok"], true, "{v}");
    }
    assert_eq!(chat["text"], "w w w w w ");
    assert_eq!(stream["chunks_with_usage"], 0, "the usage chunk AEGIS asked for is hidden: {stream}");
    assert_eq!(stream_usage["chunks_with_usage"], 1, "asked for, it is seen: {stream_usage}");
    assert_eq!(messages_stream["usage"]["output_tokens"], 7, "{messages_stream}");
    assert_eq!(
        (denied["ok"].clone(), denied["status"].clone(), denied["stage"].clone()),
        (json!(false), json!(403), json!("policy")),
        "{denied}"
    );

    // Every performed call settled from its usage; the wallet is their sum exactly.
    let mut wallet = Value::Null;
    for _ in 0..200 {
        wallet = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await.body;
        if wallet["reserved_micros"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let r = s.get("/api/audit?kind=proxy.outcome&limit=100", &sponsor.access).await;
    let outcomes: Vec<Value> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_str::<Value>(i["detail"].as_str().unwrap()).unwrap())
        .filter(|d| d["metering"].is_object())
        .map(|d| d["metering"].clone())
        .collect();
    assert_eq!(outcomes.len(), performed.len(), "{outcomes:?}");
    assert!(
        outcomes.iter().all(|m| m["source"] == "usage" && m["charged_micros"].as_i64().unwrap() > 0),
        "{outcomes:?}"
    );
    let total: i64 = outcomes.iter().map(|m| m["charged_micros"].as_i64().unwrap()).sum();
    assert_eq!(wallet["daily_spent_micros"], total, "{wallet}");

    // The providers got the sponsor's keys, never the agent's; the refused model never left.
    let received = mock.requests();
    assert_eq!(received.len(), performed.len());
    for got in &received {
        assert!(!format!("{:?}", got.headers).contains(&key), "the AEGIS key never leaves");
        let expected = if got.path.ends_with("/messages") {
            ("x-api-key", "sk-anthropic-key-real")
        } else {
            ("authorization", "Bearer sk-openai-key-real")
        };
        assert_eq!(got.header(expected.0), Some(expected.1), "{}", got.path);
        assert_ne!(got.body["model"], "gpt-not-allowed");
    }
}
