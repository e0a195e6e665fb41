//! The parked request: everything needed to perform a call again, byte for byte
//! ([`ParkedRequest`]), sealed with the vault's AES-256-GCM key under its
//! approval's id so nothing the agent sent (its credentials included) is stored in
//! clear, and a row copied to another id does not open.

use app::error::AppError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use entity::approvals;
use http::{HeaderName, HeaderValue, Method};
use sea_orm::EntityTrait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::summary::Summary;
use super::{ApprovalService, UNREADABLE_REQUEST_ID, not_found};
use crate::call::request::{Origin, ProxyRequest};
use crate::db::internal;
use crate::digest::canonical_json;

/// The parked request: everything needed to perform it again, byte for byte.
/// (No `Debug`: it holds the agent's header values.)
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct ParkedRequest {
    pub(super) request_id: String,
    method: String,
    url: String,
    pub(super) headers: Vec<(String, String)>,
    body_base64: String,
    pub(super) secret: Option<String>,
    declared_cost_micros: i64,
    minimum_cost_micros: i64,
    label: Option<String>,
    follow_redirects: bool,
    connection: Option<String>,
    /// An MCP tool call's server, tool and arguments (absent on other calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mcp: Option<crate::call::mcp::McpCall>,
}

impl ParkedRequest {
    pub(super) fn of(request: &ProxyRequest, request_id: &str) -> Self {
        Self {
            request_id: request_id.to_owned(),
            method: request.method.as_str().to_owned(),
            url: request.url.clone(),
            headers: request
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body_base64: B64.encode(&request.body),
            secret: request.secret.clone(),
            declared_cost_micros: request.declared_cost_micros,
            minimum_cost_micros: request.minimum_cost_micros,
            label: request.label.clone(),
            follow_redirects: request.follow_redirects,
            connection: match &request.origin {
                Origin::Gateway { connection } => Some(connection.clone()),
                Origin::Mcp(call) => Some(call.server.clone()),
                Origin::Execute => None,
            },
            mcp: request.mcp().cloned(),
        }
    }

    pub(super) fn body(&self) -> Vec<u8> {
        B64.decode(&self.body_base64).unwrap_or_default()
    }

    /// The request to perform. Answers are always read whole: the agent collects
    /// them later from the approval, even for a gateway call.
    pub(super) fn into_request(self) -> Result<ProxyRequest, String> {
        let method = Method::from_bytes(self.method.as_bytes()).map_err(|_| "stored method is invalid")?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| "stored header name is invalid")?;
            let value = HeaderValue::from_str(v).map_err(|_| "stored header value is invalid")?;
            headers.push((name, value));
        }
        let body = Bytes::from(self.body());
        Ok(ProxyRequest {
            method,
            url: self.url,
            headers,
            body,
            secret: self.secret,
            declared_cost_micros: self.declared_cost_micros,
            minimum_cost_micros: self.minimum_cost_micros,
            idempotency_key: None,
            label: self.label,
            follow_redirects: self.follow_redirects,
            stream_response: false,
            origin: match (self.mcp, self.connection) {
                (Some(mcp), _) => Origin::Mcp(Box::new(mcp)),
                (None, Some(connection)) => Origin::Gateway { connection },
                (None, None) => Origin::Execute,
            },
        })
    }
}

/// The sealing context of a parked request: its approval's id.
fn context(id: Uuid) -> String {
    format!("aegis-approval:v1:{id}")
}

/// The sealing context of an approval's stored outcome ([`answer`](super::answer)).
pub(super) fn outcome_context(id: Uuid) -> String {
    format!("aegis-approval-outcome:v1:{id}")
}

impl ApprovalService {
    pub(super) fn seal(&self, id: Uuid, parked: &ParkedRequest) -> String {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(parked).unwrap_or_default());
        let (nonce, sealed) = self.vault.seal_bytes(&context(id), &plain);
        canonical_json(&json!({"v": 1, "nonce": hex::encode(nonce), "sealed": B64.encode(sealed)}))
    }

    pub(super) fn open(&self, row: &approvals::Model) -> Result<ParkedRequest, AppError> {
        let fail = || {
            tracing::error!(approval = %row.id, "a parked request could not be opened (wrong key or tampered row)");
            AppError::internal()
        };
        let stored: Value = serde_json::from_str(&row.request_json).map_err(|_| fail())?;
        let nonce = stored["nonce"].as_str().and_then(|n| hex::decode(n).ok()).ok_or_else(fail)?;
        let sealed = stored["sealed"].as_str().and_then(|s| B64.decode(s).ok()).ok_or_else(fail)?;
        let plain = self.vault.open_bytes(&context(row.id), &nonce, &sealed).map_err(|_| fail())?;
        serde_json::from_slice(&plain).map_err(|_| fail())
    }

    /// The request id of a row: its column, or (a row parked before the column
    /// existed) from its sealed request, opened once; [`UNREADABLE_REQUEST_ID`] when
    /// that cannot be opened.
    pub(super) async fn request_id_of(&self, row: &Summary) -> Result<String, AppError> {
        if let Some(id) = &row.request_id {
            return Ok(id.clone());
        }
        let full = approvals::Entity::find_by_id(row.id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        // A row no key opens (`open` logs it) must not break a whole list, a poll
        // or the janitor's sweep (issue #16, item 24): it is named as unreadable.
        Ok(self.open(&full).map(|p| p.request_id).unwrap_or_else(|_| UNREADABLE_REQUEST_ID.to_owned()))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::secrets::vault::Vault;

    /// A request with a credential header and a binary body (the views' tests use it too).
    pub(in crate::approvals) fn request() -> ProxyRequest {
        let input: crate::call::request::ExecuteRequest = serde_json::from_value(json!({
            "method": "post", "url": "https://api.example.com/v1/things?x=1",
            "headers": {"Authorization": "Bearer agent-own", "X-Trace": "7"},
            "body_base64": B64.encode([0u8, 1, 2, 255]), "secret": "gh", "cost_micros": 42,
            "action": "things.create", "follow_redirects": true
        }))
        .unwrap();
        input.into_proxy_request(1 << 20).unwrap()
    }

    #[test]
    fn a_parked_request_comes_back_exactly() {
        let original = request();
        let parked = ParkedRequest::of(&original, "req_1");
        let json = serde_json::to_vec(&parked).unwrap();
        let back: ParkedRequest = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.request_id, "req_1");
        let restored = back.into_request().unwrap();
        assert_eq!(restored.request_hash(), original.request_hash(), "hash-bound: nothing changed");
        assert_eq!(restored.body, original.body);
        assert!(!restored.stream_response);
    }

    #[test]
    fn sealed_requests_open_only_under_their_own_id() {
        let vault = Vault::new(&[9u8; 32]).unwrap();
        let parked = ParkedRequest::of(&request(), "req_1");
        let plain = serde_json::to_vec(&parked).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (nonce, sealed) = vault.seal_bytes(&context(a), &plain);
        assert!(!sealed.windows(9).any(|w| w == b"agent-own"), "the agent's credential is not in clear");
        assert!(vault.open_bytes(&context(a), &nonce, &sealed).is_ok());
        assert!(
            vault.open_bytes(&context(b), &nonce, &sealed).is_err(),
            "a row moved to another id does not open"
        );
    }
}
