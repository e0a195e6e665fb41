//! The upstream call: the only place AEGIS talks to the outside world. Timeouts
//! and a response size cap bound every call; hop-by-hop headers never cross;
//! credentials the agent tries to send are dropped unless policy says otherwise.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::egress::{EgressDenied, EgressGuard, MAX_REDIRECTS};

pub const USER_AGENT: &str = concat!("AEGIS/", env!("CARGO_PKG_VERSION"), " (+execution proxy)");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// those AEGIS sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Credentials an agent might try to send itself.
const AGENT_CREDENTIALS: &[&str] = &["authorization", "cookie", "x-api-key"];

#[derive(Debug, Clone)]
pub struct UpstreamLimits {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_response_bytes: 10 << 20,
        }
    }
}

pub type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// An answer whose body is still arriving.
pub struct StreamingResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

impl std::fmt::Debug for StreamingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingResponse").field("status", &self.status).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// The egress guard refused a hop (a redirect or a name resolved at connect time).
    Egress(String),
    Timeout,
    TooLarge(usize),
    Unreachable(String),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason())
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    pub fn reason(&self) -> String {
        match self {
            UpstreamError::Egress(r) => r.clone(),
            UpstreamError::Timeout => "upstream timed out".into(),
            UpstreamError::TooLarge(max) => format!("upstream response larger than {max} bytes"),
            UpstreamError::Unreachable(r) => format!("upstream unreachable: {r}"),
        }
    }
}

#[derive(Clone)]
pub struct Upstream {
    direct: reqwest::Client,
    following: reqwest::Client,
    limits: UpstreamLimits,
}

/// A connection or request error without URLs (which could carry a query-param secret).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    kind.to_owned()
}

impl Upstream {
    pub fn new(guard: &EgressGuard, limits: UpstreamLimits) -> Self {
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .dns_resolver(guard.resolver())
                .redirect(redirects)
                .connect_timeout(limits.connect_timeout)
                .timeout(limits.timeout)
                .user_agent(USER_AGENT)
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .expect("static HTTP client configuration")
        };
        Self {
            direct: build(reqwest::redirect::Policy::none()),
            following: build(guard.redirect_policy(MAX_REDIRECTS)),
            limits,
        }
    }

    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    async fn send(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
        follow_redirects: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        let client = if follow_redirects { &self.following } else { &self.direct };
        let response =
            client.request(method, url).headers(headers).body(body).send().await.map_err(classify)?;
        if response.content_length().is_some_and(|l| l as usize > self.limits.max_response_bytes) {
            return Err(UpstreamError::TooLarge(self.limits.max_response_bytes));
        }
        Ok(response)
    }

    /// Performs the call and reads the whole answer. `url` was checked by the egress
    /// guard; the client's resolver re-checks every address it connects to.
    pub async fn call(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
        follow_redirects: bool,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let StreamingResponse { status, headers, body: mut stream } =
            self.call_streaming(method, url, headers, body, follow_redirects).await?;
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            body.extend_from_slice(&chunk?);
        }
        Ok(UpstreamResponse { status, headers, body: body.freeze() })
    }

    /// Performs the call and hands back the answer as it arrives. The size cap still
    /// holds: past it the stream ends with an error (the status is already sent).
    pub async fn call_streaming(
        &self,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: Bytes,
        follow_redirects: bool,
    ) -> Result<StreamingResponse, UpstreamError> {
        let response = self.send(method, url, headers, body, follow_redirects).await?;
        let status = response.status().as_u16();
        let headers = strip_hop_by_hop(response.headers().clone());
        let max = self.limits.max_response_bytes;
        let mut seen = 0usize;
        let body = response.bytes_stream().map(move |chunk| {
            let chunk = chunk.map_err(classify)?;
            seen += chunk.len();
            if seen > max {
                return Err(UpstreamError::TooLarge(max));
            }
            Ok(chunk)
        });
        Ok(StreamingResponse { status, headers, body: Box::pin(body) })
    }
}

/// Tells an egress refusal, a time-out and other failures apart, without URLs
/// (which could carry a query-parameter secret).
fn classify(e: reqwest::Error) -> UpstreamError {
    if let Some(denied) = EgressDenied::find_in(&e) {
        UpstreamError::Egress(denied.reason.clone())
    } else if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        UpstreamError::Unreachable(describe(&e))
    }
}

pub fn strip_hop_by_hop(mut headers: HeaderMap) -> HeaderMap {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    headers
}

/// The headers an agent's request may carry upstream.
pub fn outgoing_headers(agent_headers: &[(HeaderName, HeaderValue)], forward_credentials: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in agent_headers {
        if !forward_credentials && AGENT_CREDENTIALS.contains(&name.as_str()) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let mut headers = strip_hop_by_hop(headers);
    headers.remove(header::USER_AGENT);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> Vec<(HeaderName, HeaderValue)> {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn agent_credentials_and_hop_by_hop_are_dropped() {
        let input = h(&[
            ("authorization", "Bearer agent-supplied"),
            ("cookie", "a=b"),
            ("x-api-key", "k"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "evil.example"),
            ("user-agent", "spoofed"),
            ("content-type", "application/json"),
        ]);
        let out = outgoing_headers(&input, false);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type"]);
        let with_creds = outgoing_headers(&input, true);
        assert!(with_creds.contains_key("authorization") && with_creds.contains_key("cookie"));
        assert!(!with_creds.contains_key("host"));
    }
}
