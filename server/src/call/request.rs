//! What an agent asks AEGIS to do, parsed and bounded before any stage runs.
//!
//! Two doors lead here: `POST /api/proxy/execute` (a JSON description of the call)
//! and gateway mode (`/api/gw/{connection}/…`, a raw HTTP request from an unmodified
//! SDK). Both become one [`ProxyRequest`].

use std::collections::BTreeMap;

use app::error::AppError;
use app::money::MAX_MICROS;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::json;

use crate::digest::{canonical_json, sha256_hex};

pub const MAX_HEADERS: usize = 64;
const ALLOWED_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The body of `POST /api/proxy/execute`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (any case).
    #[schema(example = "POST")]
    pub method: String,
    /// Absolute `http`/`https` URL of the upstream call.
    #[schema(example = "https://api.github.com/repos/o/r/issues")]
    pub url: String,
    /// Request headers (at most 64). The agent's own `Authorization`/`Cookie` are
    /// dropped unless the policy sets `forward_credentials`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body as text. Send binary as `body_base64` instead (not both).
    #[serde(default)]
    pub body: Option<String>,
    /// The body, base64-encoded.
    #[serde(default)]
    pub body_base64: Option<String>,
    /// Name of a vault secret to inject.
    #[serde(default)]
    pub secret: Option<String>,
    /// The agent's own estimate of what the call costs.
    #[serde(default)]
    pub cost_micros: Option<i64>,
    /// 1 to 128 printable characters. Replaying it returns the first answer.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// A free label such as "github.create_issue", for policy and audit.
    #[serde(default)]
    pub action: Option<String>,
    /// Follow redirects (at most 5; each hop re-checked by the egress guard). Off by
    /// default. With a `secret`, a hop whose scheme, host and port the secret is not
    /// allowed for is not followed: the 3xx itself is the answer. No `Referer` is sent.
    /// Policies see it as `input.action.follow_redirects`.
    #[serde(default)]
    pub follow_redirects: bool,
}

/// Which door a request came through.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    Execute,
    Gateway {
        connection: String,
    },
    /// `/mcp`: a tool call (or AEGIS's listing of an upstream's tools) under an MCP connection.
    Mcp(Box<super::mcp::McpCall>),
}

/// A validated request, the same for both doors.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub secret: Option<String>,
    pub declared_cost_micros: i64,
    /// A floor for the cost estimate set by the connection (gateway mode).
    pub minimum_cost_micros: i64,
    pub idempotency_key: Option<String>,
    pub label: Option<String>,
    pub follow_redirects: bool,
    /// Hand the upstream's body back as it arrives (gateway mode) instead of whole.
    pub stream_response: bool,
    pub origin: Origin,
}

/// The target's host as the egress guard judges it: lower case, no trailing dot, IPv6
/// without brackets (the URL parser already applied IDNA and every IPv4 spelling).
/// The policy input and the audit record both use it, so the host a sponsor writes a
/// rule for is the host the audit log shows.
pub fn normalised_host(url: &url::Url) -> String {
    url.host_str().unwrap_or("").trim_end_matches('.').trim_matches(['[', ']']).to_ascii_lowercase()
}

fn invalid(message: impl Into<String>) -> AppError {
    AppError::new(422, "invalid_request", message)
}

pub fn parse_method(method: &str) -> Result<Method, AppError> {
    let upper = method.trim().to_ascii_uppercase();
    if !ALLOWED_METHODS.contains(&upper.as_str()) {
        return Err(invalid(format!("method must be one of {}", ALLOWED_METHODS.join(", "))));
    }
    Method::from_bytes(upper.as_bytes()).map_err(|_| invalid("invalid method"))
}

pub fn parse_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), AppError> {
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
    let value =
        HeaderValue::from_str(value).map_err(|_| invalid(format!("invalid value for header {name}")))?;
    Ok((name, value))
}

impl ExecuteRequest {
    pub fn into_proxy_request(self, max_body_bytes: usize) -> Result<ProxyRequest, AppError> {
        let method = parse_method(&self.method)?;
        if self.url.trim().is_empty() {
            return Err(invalid("url is required"));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(invalid(format!("at most {MAX_HEADERS} headers")));
        }
        let headers = self.headers.iter().map(|(k, v)| parse_header(k, v)).collect::<Result<Vec<_>, _>>()?;
        let body = match (self.body, self.body_base64) {
            (Some(_), Some(_)) => return Err(invalid("send body or body_base64, not both")),
            (Some(text), None) => Bytes::from(text),
            (None, Some(b64)) => {
                Bytes::from(B64.decode(b64.trim()).map_err(|_| invalid("body_base64 is not valid base64"))?)
            }
            (None, None) => Bytes::new(),
        };
        if body.len() > max_body_bytes {
            return Err(AppError::new(
                413,
                "payload_too_large",
                format!("body is larger than {max_body_bytes} bytes"),
            ));
        }
        let cost = self.cost_micros.unwrap_or(0);
        if !(0..=MAX_MICROS).contains(&cost) {
            return Err(invalid("cost_micros must be between 0 and 10^15"));
        }
        let idempotency_key = self.idempotency_key.map(|k| k.trim().to_owned());
        if let Some(k) = &idempotency_key
            && (k.is_empty() || k.len() > 128 || k.chars().any(char::is_control))
        {
            return Err(invalid("idempotency_key must be 1 to 128 printable characters"));
        }
        let label = self.action.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
        if label.as_ref().is_some_and(|l| l.len() > 100 || l.chars().any(char::is_control)) {
            return Err(invalid("action must be at most 100 printable characters"));
        }
        let secret = self.secret.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(ProxyRequest {
            method,
            url: self.url.trim().to_owned(),
            headers,
            body,
            secret,
            declared_cost_micros: cost,
            minimum_cost_micros: 0,
            idempotency_key,
            label,
            follow_redirects: self.follow_redirects,
            stream_response: false,
            origin: Origin::Execute,
        })
    }
}

fn bad_path(message: impl Into<String>) -> AppError {
    AppError::bad_request("invalid_path", message)
}

/// Whether a raw path segment is `.` or `..`, spelled raw or percent-encoded.
fn is_dot_segment(segment: &str) -> bool {
    let decoded = segment.replace("%2e", ".").replace("%2E", ".");
    decoded == "." || decoded == ".."
}

/// The upstream URL of a gateway call: the connection's `base_url` joined, segment
/// by segment, with the rest of the request's path **as the agent sent it** (raw,
/// still percent-encoded) and its query.
///
/// The path must stay under the base URL's path, so anything that could climb out of
/// it or change the URL's structure once decoded is refused: dot segments (`.`, `..`,
/// raw or encoded as `%2e`), encoded `/`, `\`, `?` and `#` (`%2F`, `%5C`, `%3F`,
/// `%23`), a raw backslash, and encoded control characters. Everything else is passed
/// on exactly as written, so `a%20b` reaches the upstream as `a%20b`.
pub fn gateway_url(base_url: &str, raw_suffix: &str, raw_query: Option<&str>) -> Result<String, AppError> {
    let base = url::Url::parse(base_url).map_err(|_| bad_path("the connection's base URL does not parse"))?;
    let suffix = raw_suffix.strip_prefix('/').unwrap_or(raw_suffix);
    for segment in suffix.split('/') {
        if is_dot_segment(segment) {
            return Err(bad_path("the path must not contain '.' or '..' segments"));
        }
        if segment.contains('\\') {
            return Err(bad_path("the path must not contain a backslash"));
        }
        let bytes = segment.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b != b'%' {
                continue;
            }
            let hex = segment.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                None => return Err(bad_path("the path has a malformed percent escape")),
                Some(b'/' | b'\\' | b'?' | b'#') => {
                    return Err(bad_path("the path must not contain encoded '/', '\\', '?' or '#'"));
                }
                Some(c) if c < 0x20 || c == 0x7f => {
                    return Err(bad_path("the path must not contain encoded control characters"));
                }
                Some(_) => {}
            }
        }
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = format!(
        "{}{}",
        base.as_str().split(['?', '#']).next().unwrap_or("").trim_end_matches('/'),
        raw_suffix
    );
    if let Some(q) = raw_query {
        url.push('?');
        url.push_str(q);
    }
    // What the URL parser makes of it must still lie under the base path.
    let joined = url::Url::parse(&url).map_err(|_| bad_path("the path does not form a valid URL"))?;
    let path = joined.path();
    let under = path == base_path
        || path == format!("{base_path}/")
        || path.strip_prefix(base_path).is_some_and(|rest| rest.starts_with('/'));
    if !under
        || joined.host_str() != base.host_str()
        || joined.port_or_known_default() != base.port_or_known_default()
    {
        return Err(bad_path("the path leaves the connection's base URL"));
    }
    Ok(url)
}

impl ProxyRequest {
    /// Digest of what was asked: method, URL, header names and values, body digest.
    /// Bodies and headers are never stored, only this hash.
    pub fn request_hash(&self) -> String {
        let mut headers: Vec<(String, String)> =
            self.headers.iter().map(|(k, v)| (k.as_str().to_owned(), sha256_hex(v.as_bytes()))).collect();
        headers.sort();
        sha256_hex(
            canonical_json(&json!({
                "method": self.method.as_str(),
                "url": self.url,
                "headers": headers,
                "body_sha256": sha256_hex(&self.body),
                "secret": self.secret,
                "cost_micros": self.declared_cost_micros,
                "follow_redirects": self.follow_redirects,
            }))
            .as_bytes(),
        )
    }

    /// The MCP request this call performs, if it came through `/mcp`.
    pub fn mcp(&self) -> Option<&super::mcp::McpCall> {
        match &self.origin {
            Origin::Mcp(call) => Some(call),
            _ => None,
        }
    }

    pub fn header_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.headers.iter().map(|(k, _)| k.as_str().to_owned()).collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ExecuteRequest {
        serde_json::from_value(json!({"method": "get", "url": "https://api.example.com/x"})).unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let mut r = base();
        r.headers.insert("X-Trace".into(), "1".into());
        r.body_base64 = Some(B64.encode([0u8, 159, 146, 150]));
        let p = r.into_proxy_request(1024).unwrap();
        assert_eq!(p.method, Method::GET);
        assert_eq!(p.body.as_ref(), &[0u8, 159, 146, 150]);
        assert_eq!(p.header_names(), vec!["x-trace"]);
    }

    #[test]
    fn rejects_bad_input() {
        type Mutation = Box<dyn Fn(&mut ExecuteRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("method", Box::new(|r| r.method = "TRACE".into())),
            ("method garbage", Box::new(|r| r.method = "G E T".into())),
            ("empty url", Box::new(|r| r.url = " ".into())),
            (
                "header name",
                Box::new(|r| {
                    r.headers.insert("bad header".into(), "x".into());
                }),
            ),
            (
                "header value",
                Box::new(|r| {
                    r.headers.insert("x".into(), "a\r\nInjected: 1".into());
                }),
            ),
            (
                "both bodies",
                Box::new(|r| {
                    r.body = Some("a".into());
                    r.body_base64 = Some("YQ==".into());
                }),
            ),
            ("bad base64", Box::new(|r| r.body_base64 = Some("***".into()))),
            ("negative cost", Box::new(|r| r.cost_micros = Some(-1))),
            ("huge cost", Box::new(|r| r.cost_micros = Some(MAX_MICROS + 1))),
            ("empty idempotency key", Box::new(|r| r.idempotency_key = Some(" ".into()))),
            ("long idempotency key", Box::new(|r| r.idempotency_key = Some("k".repeat(129)))),
        ];
        for (name, mutate) in cases {
            let mut r = base();
            mutate(&mut r);
            let err = r.into_proxy_request(1024).expect_err(name);
            assert_eq!(err.status, 422, "{name}");
        }
        let mut big = base();
        big.body = Some("x".repeat(2000));
        assert_eq!(big.into_proxy_request(1024).unwrap_err().status, 413);
    }

    #[test]
    fn gateway_paths_stay_under_the_base_url() {
        let base = "https://api.example.com/v1";
        let ok = [
            ("", None, "https://api.example.com/v1"),
            ("/", None, "https://api.example.com/v1/"),
            ("/chat/completions", Some("a=1&b=%2F"), "https://api.example.com/v1/chat/completions?a=1&b=%2F"),
            ("/items/a%20b/%E2%9C%93", None, "https://api.example.com/v1/items/a%20b/%E2%9C%93"),
            ("/file.v2..txt/...", None, "https://api.example.com/v1/file.v2..txt/..."),
        ];
        for (suffix, query, expected) in ok {
            assert_eq!(gateway_url(base, suffix, query).unwrap(), expected, "{suffix}");
        }
        let refused = [
            "/..",
            "/../admin",
            "/a/../../admin",
            "/..%2F..%2Fheaders",
            "/%2e%2e/admin",
            "/.%2E/admin",
            "/%2E/x",
            "/./x",
            "/x%3Fa=1",
            "/x%23frag",
            "/a%2fb",
            "/a%5Cb",
            "/a\\b",
            "/a%00b",
            "/a%zz",
            "/a%2",
        ];
        for suffix in refused {
            let e = gateway_url(base, suffix, None).expect_err(suffix);
            assert_eq!((e.status, e.code.as_str()), (400, "invalid_path"), "{suffix}");
        }
        // A base URL without a path works the same way.
        assert_eq!(gateway_url("http://127.0.0.1:9", "/a", None).unwrap(), "http://127.0.0.1:9/a");
        assert!(gateway_url("http://127.0.0.1:9", "/..", None).is_err());
    }

    #[test]
    fn request_hash_covers_what_was_asked() {
        let a = base().into_proxy_request(1024).unwrap();
        let mut b = a.clone();
        assert_eq!(a.request_hash(), b.request_hash());
        b.body = Bytes::from_static(b"x");
        assert_ne!(a.request_hash(), b.request_hash());
        let mut c = a.clone();
        c.url.push('?');
        assert_ne!(a.request_hash(), c.request_hash());
    }
}
