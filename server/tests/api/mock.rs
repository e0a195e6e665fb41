//! A mock upstream on a loopback port: what agents' calls reach in tests.
#![allow(dead_code)]

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use futures::StreamExt;
use serde_json::{Value, json};

pub struct MockUpstream {
    pub base: String,
    pub port: u16,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    slowish_hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("<binary>"))))
        .collect();
    Json(json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// Echoes the credential it received in a header and in the body, like a careless API.
async fn leak(headers: HeaderMap, uri: Uri) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    ([("x-echo-auth", auth.clone())], format!("you sent: {auth} / {query}")).into_response()
}

/// Streams a first line, then (later, in two pieces) the credential it received.
async fn stream_auth(headers: HeaderMap) -> Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (a, b) = auth.split_at(auth.len() / 2);
    let pieces = vec![(0u64, "first\n".to_owned()), (700, a.to_owned()), (100, format!("{b}\n"))];
    let stream = futures::stream::iter(pieces).then(|(wait, text)| async move {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Ok::<_, std::io::Error>(Bytes::from(text))
    });
    axum::body::Body::from_stream(stream).into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    (StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT), format!("status {code}")).into_response()
}

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn big(Query(q): Query<std::collections::HashMap<String, usize>>) -> Vec<u8> {
    vec![b'x'; q.get("bytes").copied().unwrap_or(1 << 20)]
}

async fn binary() -> Vec<u8> {
    vec![0, 159, 146, 150, 255]
}

async fn redirect(Query(q): Query<std::collections::HashMap<String, String>>) -> Redirect {
    Redirect::temporary(q.get("to").map(String::as_str).unwrap_or("/echo"))
}

impl MockUpstream {
    pub async fn start() -> Self {
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let slowish_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/echo", any(echo))
            .route("/echo/{*rest}", any(echo))
            .route("/leak", any(leak))
            .route("/stream-auth", get(stream_auth))
            .route("/status/{code}", any(status))
            .route("/slow", get(slow))
            .route("/big", get(big))
            .route("/binary", get(binary))
            .route("/redirect", get(redirect))
            .route(
                "/slowish",
                any({
                    // Counted on arrival, answered after `ms` (default 200) milliseconds.
                    let hits = slowish_hits.clone();
                    move |Query(q): Query<std::collections::HashMap<String, u64>>| async move {
                        let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(q.get("ms").copied().unwrap_or(200))).await;
                        Json(json!({"hit": n}))
                    }
                }),
            )
            .route(
                "/counted",
                any({
                    let hits = hits.clone();
                    move || async move {
                        let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        Json(json!({"hit": n}))
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base: format!("http://127.0.0.1:{port}"), port, hits, slowish_hits }
    }

    /// How many calls `/slowish` has received (counted on arrival, before it answers).
    pub fn slowish_hits(&self) -> usize {
        self.slowish_hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times `/counted` was called.
    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// What a [`Recorder`] received: one entry per request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// Everything the request carried, as one text to search for a secret.
    pub fn text(&self) -> String {
        let mut t = format!("{} {}\n", self.method, self.uri);
        for (k, v) in &self.headers {
            t.push_str(&format!("{k}: {v}\n"));
        }
        t
    }
}

/// An upstream on any loopback address (127.0.0.2 stands for "another host") that
/// records every request and answers 200 `recorded`.
pub struct Recorder {
    pub base: String,
    pub port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl Recorder {
    pub async fn start(ip: &str) -> Self {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>> = Default::default();
        let app = axum::Router::new().fallback({
            let seen = seen.clone();
            move |method: Method, uri: Uri, headers: HeaderMap| async move {
                let headers = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                seen.lock().unwrap().push(Recorded {
                    method: method.to_string(),
                    uri: uri.to_string(),
                    headers,
                });
                "recorded"
            }
        });
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base: format!("http://{ip}:{port}"), port, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }
}

/// A server that answers every request with `status` and the given headers and body
/// (to play a redirecting, compressing or echoing upstream).
pub async fn canned(status: u16, headers: Vec<(String, String)>, body: Vec<u8>) -> String {
    let app = axum::Router::new().fallback(move || {
        let (headers, body) = (headers.clone(), body.clone());
        async move {
            let mut r = Response::new(axum::body::Body::from(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut().append(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    axum::http::HeaderValue::from_str(&v).unwrap(),
                );
            }
            r
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://127.0.0.1:{port}")
}
