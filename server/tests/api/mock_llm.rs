//! A deterministic mock LLM provider on a loopback port (issue #19): OpenAI-compatible
//! chat completions, Responses and embeddings, and Anthropic-compatible messages, whole
//! and streamed (real chunked SSE), with `usage` computed from the request so tests can
//! predict costs exactly.
//!
//! Token counts:
//! - prompt/input tokens = [`prompt_tokens`]: bytes of the compact JSON of the request's
//!   `messages` (chat, Anthropic) or `input` (Responses, embeddings), / 4 rounded up, >= 1;
//! - completion/output tokens = [`reply_tokens`]: the requested maximum
//!   (`max_completion_tokens`, else `max_output_tokens`, else `max_tokens`) capped at
//!   [`MAX_REPLY_TOKENS`], which is also the default; the reply is that many words `"w "`,
//!   one streamed delta each;
//! - header `x-mock-cached: N`: OpenAI `cached_tokens = N` (still inside `prompt_tokens`),
//!   Anthropic `cache_read_input_tokens = N`; header `x-mock-cache-write: N`: Anthropic
//!   `cache_creation_input_tokens = N`; Anthropic `input_tokens` exclude both.
//!
//! Header `x-mock-behaviour`: `no-usage`, `malformed-usage`, `slow` (300 ms between
//! streamed events), `status-429`, `status-500`. Routes match by path suffix, so any base
//! path prefix works (`/v1/chat/completions`, `/openai/v1/chat/completions`, ...).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

/// The most completion/output tokens the mock ever produces, and the default.
pub const MAX_REPLY_TOKENS: u64 = 12;
/// One reply word, one token, one streamed delta.
pub const WORD: &str = "w ";
/// Pause between streamed events (and with `x-mock-behaviour: slow`, [`SLOW_DELAY`]).
pub const STREAM_DELAY: Duration = Duration::from_millis(5);
pub const SLOW_DELAY: Duration = Duration::from_millis(300);

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Lowercase names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The JSON body; `Null` when absent or not JSON.
    pub body: Value,
}

impl Received {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

pub struct MockLlm {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub port: u16,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl MockLlm {
    pub async fn start() -> MockLlm {
        let seen: Arc<Mutex<Vec<Received>>> = Default::default();
        let app = axum::Router::new().fallback({
            let seen = seen.clone();
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move { handle(seen, method, uri, headers, body) }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockLlm { base: format!("http://127.0.0.1:{port}"), port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Prompt/input tokens the mock reports for a request body: the byte length of the compact
/// JSON of `messages` (else `input`), divided by 4 rounded up, at least 1.
pub fn prompt_tokens(body: &Value) -> u64 {
    let counted = body.get("messages").or_else(|| body.get("input")).unwrap_or(&Value::Null);
    let bytes = serde_json::to_string(counted).unwrap().len() as u64;
    bytes.div_ceil(4).max(1)
}

/// Completion/output tokens the mock produces for a request body: `max_completion_tokens`,
/// else `max_output_tokens`, else `max_tokens` (each API has only its own), capped at
/// [`MAX_REPLY_TOKENS`]; [`MAX_REPLY_TOKENS`] when absent.
pub fn reply_tokens(body: &Value) -> u64 {
    ["max_completion_tokens", "max_output_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .unwrap_or(MAX_REPLY_TOKENS)
        .min(MAX_REPLY_TOKENS)
}

/// The reply text for `n` tokens.
pub fn reply_text(n: u64) -> String {
    WORD.repeat(n as usize)
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Normal,
    NoUsage,
    Malformed,
    Slow,
    Status(u16),
}

#[derive(Clone, Copy, PartialEq)]
enum Provider {
    OpenAi,
    Anthropic,
}

/// What one request asks of the mock.
struct Ask {
    model: Value,
    prompt: u64,
    reply: u64,
    cached: u64,
    cache_write: u64,
    behaviour: Behaviour,
    stream: bool,
}

impl Ask {
    fn text(&self) -> String {
        reply_text(self.reply)
    }

    fn delay(&self) -> Duration {
        if self.behaviour == Behaviour::Slow { SLOW_DELAY } else { STREAM_DELAY }
    }

    fn usage_omitted(&self) -> bool {
        self.behaviour == Behaviour::NoUsage
    }

    fn malformed(&self) -> bool {
        self.behaviour == Behaviour::Malformed
    }

    /// Chat Completions `usage`.
    fn chat_usage(&self) -> Value {
        let completion = if self.malformed() { json!("lots") } else { json!(self.reply) };
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": completion,
            "total_tokens": self.prompt + self.reply,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }

    /// Responses API `usage`.
    fn responses_usage(&self) -> Value {
        let output = if self.malformed() { json!("lots") } else { json!(self.reply) };
        json!({
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt + self.reply,
        })
    }

    /// Anthropic `input_tokens`: the prompt without cache reads and writes.
    fn anthropic_input(&self) -> u64 {
        self.prompt.saturating_sub(self.cached).saturating_sub(self.cache_write)
    }

    fn anthropic_output(&self) -> Value {
        if self.malformed() { json!(-5) } else { json!(self.reply) }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn handle(
    seen: Arc<Mutex<Vec<Received>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    seen.lock().unwrap().push(Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: parsed.clone().unwrap_or(Value::Null),
    });

    let path = uri.path().trim_end_matches('/');
    let route = ["/chat/completions", "/responses", "/embeddings", "/messages", "/models"]
        .into_iter()
        .find(|suffix| path.ends_with(suffix));
    let provider = if route == Some("/messages") { Provider::Anthropic } else { Provider::OpenAi };
    let wants = if route == Some("/models") { Method::GET } else { Method::POST };
    let Some(route) = route.filter(|_| method == wants) else {
        return error(
            provider,
            StatusCode::NOT_FOUND,
            &format!("mock: no route for {method} {}", uri.path()),
        );
    };
    if route == "/models" {
        return models();
    }
    let Some(body) = parsed.filter(Value::is_object) else {
        return error(provider, StatusCode::BAD_REQUEST, "mock: the body is not a JSON object");
    };

    let behaviour = match headers.get("x-mock-behaviour").and_then(|v| v.to_str().ok()).unwrap_or("") {
        "no-usage" => Behaviour::NoUsage,
        "malformed-usage" => Behaviour::Malformed,
        "slow" => Behaviour::Slow,
        "status-429" => Behaviour::Status(429),
        "status-500" => Behaviour::Status(500),
        _ => Behaviour::Normal,
    };
    if let Behaviour::Status(code) = behaviour {
        return error(
            provider,
            StatusCode::from_u16(code).unwrap(),
            &format!("mock: status {code} as asked"),
        );
    }
    let ask = Ask {
        model: body.get("model").cloned().unwrap_or(Value::Null),
        prompt: prompt_tokens(&body),
        reply: reply_tokens(&body),
        cached: header_u64(&headers, "x-mock-cached"),
        cache_write: header_u64(&headers, "x-mock-cache-write"),
        behaviour,
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
    };
    match route {
        "/chat/completions" => chat(&ask, &body),
        "/responses" => responses(&ask),
        "/embeddings" => embeddings(&ask, &body),
        _ => messages(&ask),
    }
}

/// The provider's JSON error body with `status`.
fn error(provider: Provider, status: StatusCode, message: &str) -> Response {
    let body = match provider {
        Provider::OpenAi => {
            let (kind, code) = match status.as_u16() {
                429 => ("rate_limit_exceeded", json!("rate_limit_exceeded")),
                404 => ("invalid_request_error", json!("unknown_url")),
                400 => ("invalid_request_error", Value::Null),
                _ => ("server_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Provider::Anthropic => {
            let kind = match status.as_u16() {
                429 => "rate_limit_error",
                404 => "not_found_error",
                400 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    (status, axum::Json(body)).into_response()
}

fn whole(value: Value) -> Response {
    axum::Json(value).into_response()
}

/// A real chunked `text/event-stream` body: one piece per event, `delay` apart.
fn sse(events: Vec<String>, delay: Duration) -> Response {
    let stream = futures::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(event))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn data(value: &Value) -> String {
    format!("data: {value}\n\n")
}

fn event(kind: &str, value: &Value) -> String {
    format!("event: {kind}\ndata: {value}\n\n")
}

fn chat(ask: &Ask, body: &Value) -> Response {
    if !ask.stream {
        let mut reply = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 0,
            "model": ask.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": ask.text(), "refusal": null},
                "logprobs": null,
                "finish_reason": "stop",
            }],
        });
        if !ask.usage_omitted() {
            reply["usage"] = ask.chat_usage();
        }
        return whole(reply);
    }
    let include_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
    let with_usage = include_usage && !ask.usage_omitted();
    let chunk = |choices: Value| {
        let mut c = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": ask.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if with_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = Vec::new();
    for i in 0..ask.reply {
        let delta =
            if i == 0 { json!({"role": "assistant", "content": WORD}) } else { json!({"content": WORD}) };
        events.push(data(&chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]),
        )));
    }
    events.push(data(&chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]))));
    if with_usage {
        let mut last = chunk(json!([]));
        last["usage"] = ask.chat_usage();
        events.push(data(&last));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(events, ask.delay())
}

fn responses(ask: &Ask) -> Response {
    let text = ask.text();
    let message = |text: &str, status: &str| {
        json!({
            "type": "message",
            "id": "msg_mock",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        })
    };
    let response = |status: &str, output: Value, usage: Option<Value>| {
        let mut r = json!({
            "id": "resp_mock",
            "object": "response",
            "created_at": 0,
            "status": status,
            "model": ask.model,
            "output": output,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "metadata": {},
            "parallel_tool_calls": true,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
        });
        if !ask.usage_omitted() {
            r["usage"] = usage.unwrap_or(Value::Null);
        }
        r
    };
    let completed = response("completed", json!([message(&text, "completed")]), Some(ask.responses_usage()));
    if !ask.stream {
        return whole(completed);
    }
    let mut seq = 0u64;
    let mut events = Vec::new();
    let mut push = |kind: &str, mut value: Value| {
        value["type"] = json!(kind);
        value["sequence_number"] = json!(seq);
        seq += 1;
        events.push(event(kind, &value));
    };
    let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
    push("response.created", json!({"response": response("in_progress", json!([]), None)}));
    push("response.in_progress", json!({"response": response("in_progress", json!([]), None)}));
    let at = json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0});
    let mut empty = message("", "in_progress");
    empty["content"] = json!([]);
    push("response.output_item.added", json!({"output_index": 0, "item": empty}));
    let mut v = at.clone();
    v["part"] = part("");
    push("response.content_part.added", v);
    for _ in 0..ask.reply {
        let mut v = at.clone();
        v["delta"] = json!(WORD);
        v["logprobs"] = json!([]);
        push("response.output_text.delta", v);
    }
    let mut v = at.clone();
    v["text"] = json!(text);
    v["logprobs"] = json!([]);
    push("response.output_text.done", v);
    let mut v = at.clone();
    v["part"] = part(&text);
    push("response.content_part.done", v);
    push("response.output_item.done", json!({"output_index": 0, "item": message(&text, "completed")}));
    push("response.completed", json!({"response": completed}));
    sse(events, ask.delay())
}

fn embeddings(ask: &Ask, body: &Value) -> Response {
    let vector = [0.0f32, 0.1, 0.2];
    // The OpenAI Python SDK asks for base64 (little-endian f32) unless told otherwise.
    let embedding = if body.get("encoding_format").and_then(Value::as_str) == Some("base64") {
        use base64::Engine;
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!([0.0, 0.1, 0.2])
    };
    let mut reply = json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "model": ask.model,
    });
    if !ask.usage_omitted() {
        let prompt = if ask.malformed() { json!("lots") } else { json!(ask.prompt) };
        reply["usage"] = json!({"prompt_tokens": prompt, "total_tokens": ask.prompt});
    }
    whole(reply)
}

fn messages(ask: &Ask) -> Response {
    let usage = json!({
        "input_tokens": ask.anthropic_input(),
        "output_tokens": ask.anthropic_output(),
        "cache_read_input_tokens": ask.cached,
        "cache_creation_input_tokens": ask.cache_write,
    });
    let message = |content: Value, stop: Value, usage: Value| {
        let mut m = json!({
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": ask.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": null,
        });
        if !ask.usage_omitted() {
            m["usage"] = usage;
        }
        m
    };
    if !ask.stream {
        return whole(message(json!([{"type": "text", "text": ask.text()}]), json!("end_turn"), usage));
    }
    let mut start_usage = usage;
    start_usage["output_tokens"] = json!(1);
    let mut events = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), Value::Null, start_usage)}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
    ];
    for _ in 0..ask.reply {
        events.push(event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": WORD}}),
        ));
    }
    events.push(event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})));
    let mut delta =
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
    if !ask.usage_omitted() {
        delta["usage"] = json!({"output_tokens": ask.anthropic_output()});
    }
    events.push(event("message_delta", &delta));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    sse(events, ask.delay())
}

fn models() -> Response {
    let model = |id: &str| json!({"id": id, "object": "model", "type": "model", "created": 0, "owned_by": "mock", "display_name": id, "created_at": "1970-01-01T00:00:00Z"});
    whole(json!({
        "object": "list",
        "data": [model("gpt-4o-mini"), model("gpt-4o"), model("text-embedding-3-small"), model("claude-sonnet-4-5")],
        "has_more": false,
        "first_id": "gpt-4o-mini",
        "last_id": "claude-sonnet-4-5",
    }))
}

// ---------------------------------------------------------------------------------------
// The mock's own tests, over real HTTP.

#[cfg(test)]
mod tests {
    use super::*;

    /// The `data:` payloads of an SSE body, with their `event:` names (if any).
    fn sse_events(body: &str) -> Vec<(Option<String>, String)> {
        body.split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let mut name = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                (name, data)
            })
            .collect()
    }

    /// POSTs `body` and returns the status, the content type and every body chunk as received.
    async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, String, Vec<String>) {
        let mut req = reqwest::Client::new().post(url).json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let ctype =
            res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let mut chunks = Vec::new();
        let mut stream = res.bytes_stream();
        while let Some(chunk) = stream.next().await {
            chunks.push(String::from_utf8(chunk.unwrap().to_vec()).unwrap());
        }
        (status, ctype, chunks)
    }

    #[test]
    fn token_formulas() {
        // `[{"role":"user","content":"hi"}]` is 31 bytes: 8 tokens.
        let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        assert_eq!(prompt_tokens(&body), 8);
        assert_eq!(reply_tokens(&body), 5);
        assert_eq!(prompt_tokens(&json!({"input": "abcd"})), 2); // "\"abcd\"" is 6 bytes
        assert_eq!(prompt_tokens(&json!({})), 1);
        assert_eq!(reply_tokens(&json!({"max_completion_tokens": 3, "max_tokens": 9})), 3);
        assert_eq!(reply_tokens(&json!({"max_output_tokens": 400})), MAX_REPLY_TOKENS);
        assert_eq!(reply_tokens(&json!({})), MAX_REPLY_TOKENS);
    }

    #[tokio::test]
    async fn openai_chat_whole_and_streamed() {
        let mock = MockLlm::start().await;
        let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5});
        let prompt = prompt_tokens(&body);

        // Whole, under a prefix, with cached tokens.
        let (status, _, chunks) =
            post(&mock.url("/openai/v1/chat/completions"), &[("x-mock-cached", "3")], &body).await;
        assert_eq!(status, 200);
        let reply: Value = serde_json::from_str(&chunks.concat()).unwrap();
        assert_eq!(reply["choices"][0]["message"]["content"], "w w w w w ");
        assert_eq!(reply["model"], "gpt-4o-mini");
        assert_eq!(
            reply["usage"],
            json!({"prompt_tokens": prompt, "completion_tokens": 5, "total_tokens": prompt + 5,
                   "prompt_tokens_details": {"cached_tokens": 3}})
        );
        let seen = mock.requests();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].path, "/openai/v1/chat/completions");
        assert_eq!(seen[0].header("x-mock-cached"), Some("3"));
        assert_eq!(seen[0].body, body);

        // Streamed without include_usage: no usage anywhere.
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (_, ctype, chunks) = post(&mock.url("/v1/chat/completions"), &[], &streamed).await;
        assert!(ctype.starts_with("text/event-stream"));
        assert!(chunks.len() > 3, "a real chunked stream, got {} chunks", chunks.len());
        let events = sse_events(&chunks.concat());
        assert_eq!(events.last().unwrap().1, "[DONE]");
        let parsed: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(parsed.len(), 6); // 5 words, then finish_reason
        assert!(parsed.iter().all(|c| c.get("usage").is_none()));
        let text: String =
            parsed.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(text, "w w w w w ");
        assert_eq!(parsed[5]["choices"][0]["finish_reason"], "stop");

        // Streamed with include_usage: `usage: null` on each chunk, then a usage chunk.
        streamed["stream_options"] = json!({"include_usage": true});
        let (_, _, chunks) = post(&mock.url("/v1/chat/completions"), &[], &streamed).await;
        let events = sse_events(&chunks.concat());
        let parsed: Vec<Value> =
            events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
        assert_eq!(parsed.len(), 7);
        assert!(parsed[..6].iter().all(|c| c.get("usage") == Some(&Value::Null)));
        assert_eq!(parsed[6]["choices"], json!([]));
        assert_eq!(parsed[6]["usage"]["completion_tokens"], 5);
        assert_eq!(parsed[6]["usage"]["prompt_tokens"], prompt);
    }

    #[tokio::test]
    async fn anthropic_streamed_and_behaviours() {
        let mock = MockLlm::start().await;
        let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 7, "stream": true,
                          "messages": [{"role": "user", "content": "a longer question, to have tokens"}]});
        let prompt = prompt_tokens(&body);
        let (status, _, chunks) = post(
            &mock.url("/claude/v1/messages"),
            &[("x-mock-cached", "2"), ("x-mock-cache-write", "1")],
            &body,
        )
        .await;
        assert_eq!(status, 200);
        let events = sse_events(&chunks.concat());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
        let mut expected = vec!["message_start", "content_block_start"];
        expected.extend(["content_block_delta"; 7]);
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
        let start: Value = serde_json::from_str(&events[0].1).unwrap();
        assert_eq!(
            start["message"]["usage"],
            json!({"input_tokens": prompt - 3, "output_tokens": 1, "cache_read_input_tokens": 2,
                   "cache_creation_input_tokens": 1})
        );
        let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
        assert_eq!(delta["usage"], json!({"output_tokens": 7}));
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");

        // no-usage: neither the whole nor the streamed reply carries usage.
        let (_, _, chunks) =
            post(&mock.url("/v1/messages"), &[("x-mock-behaviour", "no-usage")], &body).await;
        assert!(!chunks.concat().contains("usage"));
        let mut whole_body = body.clone();
        whole_body["stream"] = json!(false);
        let (_, _, chunks) =
            post(&mock.url("/v1/messages"), &[("x-mock-behaviour", "no-usage")], &whole_body).await;
        let reply: Value = serde_json::from_str(&chunks.concat()).unwrap();
        assert_eq!(reply["content"][0]["text"], "w w w w w w w ");
        assert!(reply.get("usage").is_none());

        // Errors in each provider's shape; unknown paths are 404 JSON.
        let (status, _, chunks) =
            post(&mock.url("/v1/messages"), &[("x-mock-behaviour", "status-429")], &body).await;
        assert_eq!(status, 429);
        let err: Value = serde_json::from_str(&chunks.concat()).unwrap();
        assert_eq!(err["error"]["type"], "rate_limit_error");
        let (status, _, chunks) =
            post(&mock.url("/v1/chat/completions"), &[("x-mock-behaviour", "status-500")], &body).await;
        assert_eq!(status, 500);
        assert!(serde_json::from_str::<Value>(&chunks.concat()).unwrap()["error"]["message"].is_string());
        let (status, _, _) = post(&mock.url("/v1/nothing"), &[], &body).await;
        assert_eq!(status, 404);
        assert_eq!(mock.requests().len(), 6);
        mock.clear();
        assert!(mock.requests().is_empty());
    }

    /// The Python SDK harness (server/tests/sdk/gateway.py) against the mock directly:
    /// checks the harness and the mock's wire shapes with the real SDKs. Needs the venv
    /// (`server/tests/sdk/venv.sh`, or `AEGIS_SDK_PYTHON`); skipped when it is absent.
    /// Run: `cargo test -p server --test api mock_llm::tests::sdk_harness -- --ignored`
    #[tokio::test]
    #[ignore = "needs the SDK venv: server/tests/sdk/venv.sh"]
    async fn sdk_harness_against_mock() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var("AEGIS_SDK_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|_| root.join("../target/sdk-venv/bin/python"));
        if !python.exists() {
            eprintln!("skipped: no SDK venv at {} (run server/tests/sdk/venv.sh)", python.display());
            return;
        }
        let script = root.join("tests/sdk/gateway.py");
        let mock = MockLlm::start().await;
        let run = |scenario: &'static str, extra_headers: Option<&'static str>| {
            let mut cmd = tokio::process::Command::new(&python);
            cmd.arg(&script)
                .arg(scenario)
                .env("AEGIS_OPENAI_BASE_URL", mock.url("/api/gw/openai/v1"))
                .env("AEGIS_ANTHROPIC_BASE_URL", mock.url("/api/gw/claude"))
                .env("AEGIS_AGENT_KEY", "aegis_agent_key_for_tests")
                .kill_on_drop(true);
            if let Some(h) = extra_headers {
                cmd.env("AEGIS_SDK_EXTRA_HEADERS", h);
            }
            async move {
                let out = cmd.output().await.unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "{scenario}: exit {:?}\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: Value = serde_json::from_str(stdout.trim())
                    .unwrap_or_else(|e| panic!("{scenario}: {e}: {stdout}"));
                assert_eq!(v["scenario"], scenario);
                v
            }
        };
        let (chat, stream, stream_usage, resp, resp_stream, emb, msgs, msgs_stream, denied, cached) = tokio::join!(
            run("openai-chat", None),
            run("openai-chat-stream", None),
            run("openai-chat-stream-usage", None),
            run("openai-responses", None),
            run("openai-responses-stream", None),
            run("openai-embeddings", None),
            run("anthropic-messages", None),
            run("anthropic-messages-stream", None),
            run("openai-denied-model", Some(r#"{"x-mock-behaviour": "status-429"}"#)),
            run("anthropic-messages-stream", Some(r#"{"x-mock-cached": "2", "x-mock-cache-write": "1"}"#)),
        );
        if std::env::var_os("AEGIS_SDK_DUMP").is_some() {
            for v in [
                &chat,
                &stream,
                &stream_usage,
                &resp,
                &resp_stream,
                &emb,
                &msgs,
                &msgs_stream,
                &denied,
                &cached,
            ] {
                eprintln!("{v}");
            }
        }
        for v in [&chat, &stream, &stream_usage, &resp, &resp_stream, &emb, &msgs, &msgs_stream, &cached] {
            assert_eq!(v["ok"], true, "{v}");
        }
        assert_eq!(chat["text"], "w w w w w ");
        assert_eq!(chat["usage"]["completion_tokens"], 5);
        assert_eq!(stream["text"], "w w w w w ");
        assert_eq!(stream["chunks_with_usage"], 0);
        assert_eq!(stream["usage"], Value::Null);
        assert_eq!(stream_usage["chunks_with_usage"], 1);
        assert_eq!(stream_usage["usage"]["completion_tokens"], 5);
        assert_eq!(resp["usage"]["output_tokens"], 5);
        assert_eq!(resp_stream["usage"]["output_tokens"], 5);
        assert_eq!(resp_stream["text"], "w w w w w ");
        assert!(emb["usage"]["prompt_tokens"].as_u64().unwrap() >= 1);
        assert_eq!(msgs["text"], "w w w w w w w ");
        assert_eq!(msgs["usage"]["output_tokens"], 7);
        assert_eq!(msgs_stream["text"], "w w w w w w w ");
        assert_eq!(msgs_stream["usage"]["output_tokens"], 7);
        assert_eq!(cached["usage"]["cache_read_input_tokens"], 2);
        assert_eq!(cached["usage"]["cache_creation_input_tokens"], 1);
        assert_eq!(denied["ok"], false);
        assert_eq!(denied["status"], 429);

        // What the SDKs put on the wire, checked against the token formulas.
        let seen = mock.requests();
        if std::env::var_os("AEGIS_SDK_DUMP").is_some() {
            for r in &seen {
                eprintln!("{} {}\n  headers: {:?}\n  body: {}", r.method, r.path, r.headers, r.body);
            }
        }
        assert_eq!(seen.len(), 10);
        for r in &seen {
            // Both SDKs send the key as `Authorization: Bearer` (anthropic 2.x too, not x-api-key).
            assert_eq!(r.header("authorization"), Some("Bearer aegis_agent_key_for_tests"), "{}", r.path);
            if r.path.ends_with("/messages") {
                assert_eq!(r.path, "/api/gw/claude/v1/messages");
                assert!(r.header("anthropic-version").is_some());
            } else {
                assert!(r.path.starts_with("/api/gw/openai/v1/"), "{}", r.path);
            }
        }
        let chat_req =
            seen.iter().find(|r| r.path.ends_with("/chat/completions") && r.body.get("stream").is_none());
        assert_eq!(chat_req.unwrap().body["max_tokens"], 5);
        let plain_stream = seen.iter().find(|r| {
            r.path.ends_with("/chat/completions")
                && r.body.get("stream") == Some(&json!(true))
                && r.body.get("stream_options").is_none()
        });
        assert!(plain_stream.is_some(), "the SDK added stream_options on its own");

        // The SDKs with a provider that leaves usage out or sends it malformed: the harness
        // still reports (exit 0) whatever the SDK made of it.
        mock.clear();
        let no_usage = Some(r#"{"x-mock-behaviour": "no-usage"}"#);
        let malformed = Some(r#"{"x-mock-behaviour": "malformed-usage"}"#);
        let (a, b, c, d) = tokio::join!(
            run("openai-chat-stream-usage", no_usage),
            run("anthropic-messages", no_usage),
            run("openai-chat-stream-usage", malformed),
            run("anthropic-messages-stream", malformed),
        );
        if std::env::var_os("AEGIS_SDK_DUMP").is_some() {
            for v in [&a, &b, &c, &d] {
                eprintln!("{v}");
            }
        }
        assert_eq!(
            (a["ok"].clone(), a["usage"].clone(), a["text"].clone()),
            (json!(true), Value::Null, json!("w w w w w "))
        );
        assert_eq!(c["usage"]["completion_tokens"], "lots");
        assert_eq!(mock.requests().len(), 4);
    }
}
