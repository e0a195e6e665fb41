//! Stored answers: what an idempotency key or an approved call answered, kept so it
//! can be given again — bounded, hashed and sealed.
//!
//! - **Bounded.** The upstream body is kept up to [`MAX_STORED_BODY_BYTES`]; past that
//!   the stored copy is cut and says so: `upstream.body_truncated: true`, with the
//!   whole body's size (`upstream.body_bytes`) and SHA-256 (`upstream.body_sha256`),
//!   so a replay answers honestly instead of pretending to be the whole answer.
//! - **Hashed.** The SHA-256 of the whole answer as first given (its JSON) is kept
//!   beside it, computed by streaming the serialiser into the hash: a large answer is
//!   not copied into another string to be hashed or stored.
//! - **Sealed.** The bounded answer is sealed with the vault (AES-256-GCM) under a
//!   context naming its row, like parked requests; the status, hash and size stay in
//!   clear (they reveal nothing of the content).
//! - **Expired.** The janitor deletes idempotency records after
//!   [`IDEMPOTENCY_RETENTION`] and empties approval outcomes
//!   [`OUTCOME_RETENTION`] after the decision (the status and hash stay).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::digest::canonical_json;
use crate::secrets::vault::Vault;

/// Most upstream-body bytes a stored answer keeps (64 KiB).
pub const MAX_STORED_BODY_BYTES: usize = 64 << 10;
/// Idempotency records are deleted this long after their first use (24 h).
pub const IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// An approval's stored outcome body is dropped this long after the decision (7 days).
pub const OUTCOME_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Writes into a SHA-256 without keeping the bytes.
struct HashWriter(Sha256, u64);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SHA-256 (hex) and length of `value`'s JSON, without materialising the JSON.
pub fn hash_json(value: &Value) -> (String, u64) {
    let mut w = HashWriter(Sha256::new(), 0);
    let _ = serde_json::to_writer(&mut w, value);
    (hex::encode(w.0.finalize()), w.1)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_text(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A copy of the execute answer `answer` whose upstream body is at most
/// [`MAX_STORED_BODY_BYTES`] (a cut body is marked, with its full size and hash).
/// Only the small fields are copied; a large body is never copied whole.
pub fn bounded(answer: &Value) -> Value {
    bounded_to(answer, MAX_STORED_BODY_BYTES)
}

fn bounded_to(answer: &Value, max: usize) -> Value {
    let Some(fields) = answer.as_object() else {
        return answer.clone();
    };
    let mut out = Map::new();
    for (k, v) in fields {
        if k != "upstream" {
            out.insert(k.clone(), v.clone());
            continue;
        }
        let Some(up) = v.as_object() else {
            out.insert(k.clone(), v.clone());
            continue;
        };
        let mut kept = Map::new();
        for (uk, uv) in up {
            let text = match (uk.as_str(), uv.as_str()) {
                ("body" | "body_base64", Some(text)) if text.len() > max => text,
                _ => {
                    kept.insert(uk.clone(), uv.clone());
                    continue;
                }
            };
            let (cut, whole_bytes, sha) = if uk == "body" {
                (cut_text(text, max).to_owned(), text.len() as u64, hex::encode(Sha256::digest(text)))
            } else {
                // Whole base64 quanta, so what is kept still decodes.
                let cut = &text[..max / 4 * 4];
                let decoded = B64.decode(text).unwrap_or_default();
                (cut.to_owned(), decoded.len() as u64, hex::encode(Sha256::digest(&decoded)))
            };
            kept.insert(uk.clone(), json!(cut));
            kept.insert("body_truncated".into(), json!(true));
            kept.insert("body_bytes".into(), json!(whole_bytes));
            kept.insert("body_sha256".into(), json!(sha));
        }
        out.insert(k.clone(), Value::Object(kept));
    }
    Value::Object(out)
}

/// Seals `answer` (bounded first) for storage under `context`: a JSON object with
/// the status, the whole answer's SHA-256 and size in clear and the bounded answer sealed.
pub fn seal(vault: &Vault, context: &str, status: u16, answer: &Value) -> String {
    let (sha256, bytes) = hash_json(answer);
    let kept = bounded(answer);
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&kept).unwrap_or_default());
    let (nonce, sealed) = vault.seal_bytes(context, &plain);
    canonical_json(&json!({"v": 2, "status": status, "sha256": sha256, "bytes": bytes,
                           "nonce": hex::encode(nonce), "sealed": B64.encode(sealed)}))
}

/// A stored answer, read back.
#[derive(Debug, PartialEq)]
pub enum Opened {
    /// Sealed by [`seal`]: the status and the (bounded) answer.
    Answer { status: u16, body: Value },
    /// Its body was dropped by the retention sweep: the status and what is known of it.
    Pruned { status: u16, body: Value },
    /// Written before answers were sealed: the stored JSON as it is.
    Legacy(Value),
    /// Unreadable (wrong key, tampered or corrupt).
    Broken,
}

pub fn open(vault: &Vault, context: &str, stored: &str) -> Opened {
    let Ok(v) = serde_json::from_str::<Value>(stored) else {
        return Opened::Broken;
    };
    if v["v"] != json!(2) {
        return Opened::Legacy(v);
    }
    let Some(status) = v["status"].as_u64().and_then(|s| u16::try_from(s).ok()) else {
        return Opened::Broken;
    };
    if v["pruned"] == json!(true) {
        let body = json!({"pruned": true, "sha256": v["sha256"], "bytes": v["bytes"],
                          "reason": "the stored answer passed its retention time and was dropped"});
        return Opened::Pruned { status, body };
    }
    let nonce = v["nonce"].as_str().and_then(|n| hex::decode(n).ok());
    let sealed = v["sealed"].as_str().and_then(|s| B64.decode(s).ok());
    let (Some(nonce), Some(sealed)) = (nonce, sealed) else {
        return Opened::Broken;
    };
    match vault.open_bytes(context, &nonce, &sealed).ok().and_then(|p| serde_json::from_slice(&p).ok()) {
        Some(body) => Opened::Answer { status, body },
        None => Opened::Broken,
    }
}

/// The stored form once its body is dropped: status, hash and size only.
pub fn pruned(stored: &str) -> String {
    let v: Value = serde_json::from_str(stored).unwrap_or(Value::Null);
    let status = v["status"].as_u64().unwrap_or(0);
    canonical_json(
        &json!({"v": 2, "status": status, "sha256": v["sha256"], "bytes": v["bytes"], "pruned": true}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_are_cut_marked_and_hashed() {
        let body = "é".repeat(100); // 200 bytes
        let answer = json!({"request_id": "req_1", "decision": "allow",
                            "upstream": {"status": 200, "headers": {"a": "b"}, "body": body}});
        let kept = bounded_to(&answer, 51);
        assert_eq!(kept["request_id"], "req_1");
        assert_eq!(kept["upstream"]["status"], 200);
        assert_eq!(kept["upstream"]["headers"], json!({"a": "b"}));
        assert_eq!(kept["upstream"]["body"].as_str().unwrap().len(), 50, "cut on a character boundary");
        assert_eq!(kept["upstream"]["body_truncated"], true);
        assert_eq!(kept["upstream"]["body_bytes"], 200);
        assert_eq!(kept["upstream"]["body_sha256"], hex::encode(Sha256::digest(body.as_bytes())));
        // Small answers are kept whole and unmarked.
        assert_eq!(bounded_to(&answer, 1000), answer);
        // Base64 bodies are cut on whole quanta and hashed as bytes.
        let bytes = vec![7u8; 300];
        let answer = json!({"upstream": {"status": 200, "body_base64": B64.encode(&bytes)}});
        let kept = bounded_to(&answer, 30);
        assert_eq!(kept["upstream"]["body_base64"].as_str().unwrap().len(), 28);
        assert_eq!(kept["upstream"]["body_bytes"], 300);
        assert_eq!(kept["upstream"]["body_sha256"], hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn sealed_answers_open_only_in_their_context_and_hide_the_body() {
        let vault = Vault::new(&[3u8; 32]).unwrap();
        let answer =
            json!({"request_id": "req_1", "upstream": {"status": 201, "body": "top-secret-payload"}});
        let stored = seal(&vault, "ctx-a", 201, &answer);
        assert!(!stored.contains("top-secret-payload"));
        assert_eq!(open(&vault, "ctx-a", &stored), Opened::Answer { status: 201, body: answer.clone() });
        assert_eq!(open(&vault, "ctx-b", &stored), Opened::Broken, "bound to its row");
        let (sha, bytes) = hash_json(&answer);
        assert_eq!(sha, hex::encode(Sha256::digest(serde_json::to_vec(&answer).unwrap())));
        assert_eq!(bytes, serde_json::to_vec(&answer).unwrap().len() as u64);
        match open(&vault, "ctx-a", &pruned(&stored)) {
            Opened::Pruned { status, body } => {
                assert_eq!(status, 201);
                assert_eq!(body["sha256"], sha.as_str());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(open(&vault, "ctx-a", "{\"status\":200}"), Opened::Legacy(_)));
    }
}
