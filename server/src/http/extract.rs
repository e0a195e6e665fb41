//! Extractors for the JSON API. Each turns a framework rejection into the API's
//! error shape with a 4xx status, and each authenticates exactly one kind of caller.

use std::net::SocketAddr;

use app::error::AppError;
use app::model::{ClientMeta, SessionUser};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::agents::AgentPrincipal;

pub struct ApiJson<T>(pub T);

/// `application/json` or any `application/*+json`, as axum's own `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime.strip_prefix("application/").is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(AppError::new(
                415,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            )
            .into());
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::new(413, "payload_too_large", "request body is too large")
            } else {
                AppError::bad_request("invalid_json", "the request body could not be read")
            }
        })?;
        // Every body of this API is a JSON object. serde would otherwise fill a struct
        // from an array too (`["name"]` as `{"name": …}`), which no client means.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(AppError::new(422, "invalid_request", "the body must be a JSON object").into());
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(rejection).into()),
        }
    }
}

/// A JSON body that may be left out entirely: no body means `T::default()`. A body
/// that is present is checked exactly like [`ApiJson`].
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let headers = req.headers();
        let empty = !headers.contains_key(header::TRANSFER_ENCODING)
            && headers.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
        if empty {
            return Ok(Self(T::default()));
        }
        ApiJson::<T>::from_request(req, state).await.map(|ApiJson(v)| Self(v))
    }
}

fn json_rejection(r: JsonRejection) -> AppError {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::new(413, "payload_too_large", "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => AppError::new(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => AppError::new(422, "invalid_request", r.body_text()),
        _ => AppError::bad_request("invalid_json", r.body_text()),
    }
}

pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r: PathRejection| AppError::bad_request("invalid_path", r.body_text()).into())
    }
}

pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r: QueryRejection| AppError::bad_request("invalid_query", r.body_text()).into())
    }
}

pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `X-AEGIS-Org: <id>`: the organization a request acts in (default: the caller's own).
pub fn org_header(headers: &HeaderMap) -> Result<Option<uuid::Uuid>, AppError> {
    let Some(value) = headers.get(ORG_HEADER) else { return Ok(None) };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<uuid::Uuid>().ok())
        .map(Some)
        .ok_or_else(|| AppError::bad_request("invalid_org", "X-AEGIS-Org must be an organization id"))
}

pub const ORG_HEADER: &str = "x-aegis-org";

/// A member authenticated by an access token in `Authorization: Bearer`, acting in
/// the organization `X-AEGIS-Org` names (else their default one).
pub struct Sponsor(pub SessionUser);

impl FromRequestParts<AppState> for Sponsor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| AppError::unauthorized("send an access token as Authorization: Bearer"))?;
        let org = org_header(&parts.headers)?;
        Ok(Self(state.services.sponsor_session(token, org).await?))
    }
}

/// An agent authenticated by its AEGIS key, from `Authorization: Bearer` or
/// `x-api-key` (the two ways SDKs send keys).
pub struct Agent(pub AgentPrincipal);

impl FromRequestParts<AppState> for Agent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(&parts.headers)
            .or_else(|| parts.headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .ok_or_else(|| AppError::unauthorized("send the agent's AEGIS key as Authorization: Bearer"))?;
        match state.services.agents.authenticate(presented).await? {
            Some(principal) => Ok(Self(principal)),
            None => Err(AppError::new(401, "invalid_api_key", "unknown or revoked agent key").into()),
        }
    }
}

/// Where the request came from. The socket peer, unless AEGIS is told it sits
/// behind a proxy: then the right-most `X-Forwarded-For` hop that is not the proxy
/// itself, read across *every* `X-Forwarded-For` line in order (a client may send a
/// line of its own; the proxy's hop is the last one). A hop that is not an IP
/// address means the chain cannot be trusted: the peer is used.
pub fn client_meta(
    parts_headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    trust_proxy: bool,
) -> ClientMeta {
    let peer_ip = peer.map(|p| p.0.ip());
    let forwarded = trust_proxy.then(|| forwarded_client(parts_headers, peer_ip)).flatten();
    ClientMeta {
        ip: forwarded.or(peer_ip).map(|ip| ip.to_string()),
        user_agent: parts_headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(300).collect()),
    }
}

fn forwarded_client(headers: &HeaderMap, proxy: Option<std::net::IpAddr>) -> Option<std::net::IpAddr> {
    let mut hops = Vec::new();
    for line in headers.get_all("x-forwarded-for") {
        hops.extend(line.to_str().ok()?.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    for hop in hops.iter().rev() {
        let ip = hop.parse::<std::net::IpAddr>().ok()?;
        if Some(ip) != proxy {
            return Some(ip);
        }
    }
    None
}

impl FromRequestParts<AppState> for ClientMetaExt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Self(parts.extensions.get::<ClientMeta>().cloned().unwrap_or_default()))
    }
}

/// The [`ClientMeta`] the outer middleware attached to the request.
pub struct ClientMetaExt(pub ClientMeta);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!json_content_type(&h));
        for (value, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("application/jsonx", false),
            ("text/plain", false),
        ] {
            h.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(json_content_type(&h), ok, "{value}");
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        let peer = ConnectInfo("127.0.0.1:9".parse::<SocketAddr>().unwrap());
        assert_eq!(client_meta(&h, Some(&peer), false).ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(client_meta(&h, Some(&peer), true).ip.as_deref(), Some("5.6.7.8"));
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_meta(&h, Some(&peer), true).ip.as_deref(), Some("127.0.0.1"));
    }

    /// A client's own line comes first and the proxy appends a line of its own: the
    /// right-most hop across all lines is the one the proxy saw.
    #[test]
    fn forwarded_for_reads_every_line_right_to_left() {
        let peer = ConnectInfo("10.0.0.5:9".parse::<SocketAddr>().unwrap());
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        assert_eq!(client_meta(&h, Some(&peer), true).ip.as_deref(), Some("1.2.3.4"));
        // The proxy's own address appended as a hop is skipped.
        h.append("x-forwarded-for", "10.0.0.5".parse().unwrap());
        assert_eq!(client_meta(&h, Some(&peer), true).ip.as_deref(), Some("1.2.3.4"));
        // A forged garbage hop to the right of the real one voids the chain.
        let mut g = HeaderMap::new();
        g.append("x-forwarded-for", "1.2.3.4, nonsense".parse().unwrap());
        assert_eq!(client_meta(&g, Some(&peer), true).ip.as_deref(), Some("10.0.0.5"));
        let mut v6 = HeaderMap::new();
        v6.append("x-forwarded-for", "2001:db8::1".parse().unwrap());
        assert_eq!(client_meta(&v6, Some(&peer), true).ip.as_deref(), Some("2001:db8::1"));
    }
}
