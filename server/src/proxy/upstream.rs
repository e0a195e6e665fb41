//! The upstream call: the only place AEGIS talks to the outside world. Timeouts
//! and a response size cap bound every call; hop-by-hop headers never cross;
//! credentials the agent tries to send are dropped unless policy says otherwise.
//!
//! # Redirects
//!
//! AEGIS follows redirects itself (only when asked, at most [`MAX_REDIRECTS`]
//! hops), so every hop is judged on its own:
//! - the egress guard checks the hop's URL (and its resolver every address);
//! - an injected secret is sent to a hop only if that hop's scheme, host and port
//!   are allowed for it; otherwise the redirect is **not followed**: the 3xx itself
//!   is the answer (scrubbed like any answer);
//! - credentials the agent forwarded are dropped when the origin changes;
//! - no `Referer` is ever sent, and 301/302 after POST and 303 become GET without
//!   the body, as browsers do.
//!
//! No proxy from the environment (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) is
//! used: behind a proxy the name would be resolved where the egress guard cannot
//! see it, voiding DNS pinning.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::egress::{EgressDenied, EgressGuard, MAX_REDIRECTS};
use crate::secrets::UsableSecret;
use crate::secrets::hosts::Destination;

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

/// Never sent upstream, whichever door the request came through:
/// - `accept-encoding`: a compressed answer would carry an echoed secret past the
///   scrubber (AEGIS asks for `identity` itself);
/// - `range`, `if-range`: a partial answer could cut an echoed secret in pieces the
///   scrubber cannot recognise;
/// - `referer`: may carry a URL with a query-parameter secret;
/// - the proxy-forwarding headers: they describe AEGIS's own hop, and upstreams
///   must not be told anything about the agent's network (or be fooled by a forged one).
const NEVER_FORWARDED: &[&str] = &[
    "accept-encoding",
    "range",
    "if-range",
    "referer",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
];

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

pub use crate::call::upstream::{BodyStream, StreamingResponse, UpstreamError, UpstreamResponse};

#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    guard: EgressGuard,
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

/// One request on the way out: the first, or a redirect hop.
struct Hop {
    method: Method,
    url: url::Url,
    headers: HeaderMap,
    body: Bytes,
}

/// What to do with a redirect answer.
enum Next {
    Follow(Box<Hop>),
    /// Answer the 3xx itself.
    Stop,
}

fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

impl Upstream {
    pub fn new(guard: &EgressGuard, limits: UpstreamLimits) -> Self {
        let client = reqwest::Client::builder()
            .dns_resolver(guard.resolver())
            // Redirects are followed by `call_streaming`, hop by hop.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .user_agent(USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("static HTTP client configuration");
        Self { client, guard: guard.clone(), limits }
    }

    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    async fn send(&self, hop: &Hop) -> Result<reqwest::Response, UpstreamError> {
        let response = self
            .client
            .request(hop.method.clone(), hop.url.clone())
            .headers(hop.headers.clone())
            .body(hop.body.clone())
            .send()
            .await
            .map_err(classify)?;
        if response.content_length().is_some_and(|l| l as usize > self.limits.max_response_bytes) {
            return Err(UpstreamError::TooLarge(self.limits.max_response_bytes));
        }
        Ok(response)
    }

    /// The next hop after a redirect answer, judged as the module docs say.
    fn next_hop(
        &self,
        hop: &Hop,
        response: &reqwest::Response,
        secret: Option<&UsableSecret>,
    ) -> Result<Next, UpstreamError> {
        let status = response.status();
        let Some(location) = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()) else {
            return Ok(Next::Stop);
        };
        let Ok(next) = hop.url.join(location) else {
            return Ok(Next::Stop);
        };
        let target = self
            .guard
            .check_url(next.as_str())
            .map_err(|d| UpstreamError::Egress(format!("redirect refused: {}", d.reason)))?;
        let mut url = target.url;
        url.set_fragment(None);
        if let Some(secret) = secret {
            let allowed = Destination::of(&url).is_some_and(|to| secret.may_go_to(&to));
            if !allowed {
                return Ok(Next::Stop);
            }
        }
        let mut headers = hop.headers.clone();
        headers.remove(header::REFERER);
        if !same_origin(&hop.url, &url) {
            for name in AGENT_CREDENTIALS.iter().chain(&["proxy-authorization"]) {
                headers.remove(*name);
            }
        }
        let (method, body) = match status.as_u16() {
            303 if hop.method != Method::HEAD => (Method::GET, Bytes::new()),
            301 | 302 if hop.method == Method::POST => (Method::GET, Bytes::new()),
            _ => (hop.method.clone(), hop.body.clone()),
        };
        if body.is_empty() && !hop.body.is_empty() {
            for name in [header::CONTENT_TYPE, header::CONTENT_ENCODING, header::CONTENT_LANGUAGE] {
                headers.remove(name);
            }
        }
        if let Some(secret) = secret {
            // Re-injected: a query-parameter secret must be in the new URL (and any
            // value the redirect put there replaced).
            super::secret::inject(secret, &mut headers, &mut url)
                .map_err(|_| UpstreamError::Unreachable("redirect could not carry the secret".into()))?;
        }
        Ok(Next::Follow(Box::new(Hop { method, url, headers, body })))
    }

    /// Performs the call and hands back the answer as it arrives. The size cap still
    /// holds: past it the stream ends with an error (the status is already sent).
    pub async fn call_streaming(
        &self,
        method: Method,
        url: url::Url,
        mut headers: HeaderMap,
        body: Bytes,
        follow_redirects: bool,
        secret: Option<&UsableSecret>,
    ) -> Result<StreamingResponse, UpstreamError> {
        // The agent's own `Accept-Encoding` never got here ([`outgoing_headers`]): ask for
        // an answer the scrubber can read.
        headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let mut hop = Hop { method, url, headers, body };
        let mut followed = 0;
        let response = loop {
            let response = self.send(&hop).await?;
            if !follow_redirects || !response.status().is_redirection() {
                break response;
            }
            match self.next_hop(&hop, &response, secret)? {
                Next::Stop => break response,
                Next::Follow(next) => {
                    if followed == MAX_REDIRECTS {
                        return Err(UpstreamError::Egress(format!(
                            "too many redirects (more than {MAX_REDIRECTS})"
                        )));
                    }
                    followed += 1;
                    hop = *next;
                }
            }
        };
        let status = response.status().as_u16();
        let headers = strip_hop_by_hop(response.headers().clone());
        if secret.is_some()
            && let Some(encoding) = headers.get(header::CONTENT_ENCODING)
            && !encoding.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            return Err(UpstreamError::Encoded(String::from_utf8_lossy(encoding.as_bytes()).into_owned()));
        }
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
        if NEVER_FORWARDED.contains(&name.as_str()) {
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
            ("accept-encoding", "gzip, br"),
            ("range", "bytes=0-3"),
            ("if-range", "x"),
            ("referer", "https://a.example/?k=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "internal"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=10.0.0.1"),
            ("via", "1.1 corp-proxy"),
            ("x-real-ip", "10.0.0.1"),
        ]);
        let out = outgoing_headers(&input, false);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type"]);
        let with_creds = outgoing_headers(&input, true);
        assert!(with_creds.contains_key("authorization") && with_creds.contains_key("cookie"));
        assert!(!with_creds.contains_key("host"));
    }
}
