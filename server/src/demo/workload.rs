//! Drives the [`super::plan`] script against the demo's own AEGIS over real HTTP,
//! with the agents' keys, one call per tick, until aborted. Anything but a plain
//! allow is printed to stderr so the terminal tells the same story as the dashboard.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::plan::{self, Call, Door, Role};
use super::{CONNECTION, Cast, SECRET};

pub async fn run(cast: Cast) {
    let client = match reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aegis demo: HTTP client: {e}; no workload");
            return;
        }
    };
    let keys: HashMap<Role, String> = cast.keys.into_iter().collect();
    let mut tick = tokio::time::interval(plan::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        let call = plan::step(n);
        let Some(key) = keys.get(&call.role) else { continue };
        let line = match send(&client, &cast.aegis, &cast.mock, key, &call).await {
            Ok(answer) => describe(&answer),
            Err(e) => Some(format!("no answer: {e}")),
        };
        if let Some(line) = line {
            eprintln!(
                "aegis demo: {:18} {:6} {:42} {line}",
                call.role.agent_name(),
                call.method,
                shown(&call)
            );
        }
    }
}

/// The target as a reader wants it: the mock's paths without its address.
fn shown(call: &Call) -> String {
    let mut s = call.target.clone();
    if call.door == Door::Gateway {
        s = format!("gw/{CONNECTION}{s}");
    }
    s.chars().take(42).collect()
}

async fn send(
    client: &reqwest::Client,
    aegis: &str,
    mock: &str,
    key: &str,
    call: &Call,
) -> Result<Value, String> {
    let method = reqwest::Method::from_bytes(call.method.as_bytes()).map_err(|e| e.to_string())?;
    let request = match call.door {
        Door::Execute => {
            let on_mock = !call.target.starts_with("http");
            let url = if on_mock { format!("{mock}/ok{}", call.target) } else { call.target.clone() };
            let mut body = json!({"method": call.method, "url": url, "cost_micros": call.cost_micros,
                                  "action": format!("demo.{}", call.method.to_ascii_lowercase())});
            if on_mock {
                body["secret"] = json!(SECRET);
            }
            if call.method != "GET" {
                body["headers"] = json!({"content-type": "application/json"});
                body["body"] = json!(r#"{"title":"Weekly summary","draft":true}"#.to_string());
            }
            client.post(format!("{aegis}/api/proxy/execute")).json(&body)
        }
        Door::Gateway => client.request(method, format!("{aegis}/api/gw/{CONNECTION}{}", call.target)),
    };
    let response = request.bearer_auth(key).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    // Gateway mode answers with the upstream's own body; AEGIS's verdicts are JSON with `decision`.
    match serde_json::from_str::<Value>(&text) {
        Ok(v) if v.get("decision").is_some() => Ok(v),
        _ if status.is_success() => Ok(json!({"decision": "allow"})),
        _ => Err(format!("{status}: {}", text.chars().take(200).collect::<String>())),
    }
}

/// One line for anything worth a look; `None` for a plain allow.
fn describe(answer: &Value) -> Option<String> {
    let text = |k: &str| answer.get(k).and_then(Value::as_str).unwrap_or("");
    match text("decision") {
        "allow" => None,
        "pending_approval" => Some("→ waiting for your approval".to_owned()),
        "deny" => Some(format!("→ denied at {}: {}", text("stage"), text("reason"))),
        other => Some(format!("→ {other} at {}: {}", text("stage"), text("reason"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_notable_answers_are_printed() {
        assert_eq!(describe(&json!({"decision": "allow", "upstream": {}})), None);
        let denied = describe(&json!({"decision": "deny", "stage": "egress", "reason": "not public"}));
        assert_eq!(denied.as_deref(), Some("→ denied at egress: not public"));
        assert!(describe(&json!({"decision": "pending_approval"})).unwrap().contains("approval"));
    }
}
