//! The canonical encoding of an audit record and its hash.
//!
//! A record's hash is `hex(SHA-256(encode(record)))`, where `encode` writes a
//! domain tag and then every stored field except `hash` itself, in a fixed order,
//! each as a type tag followed by a fixed-width or length-prefixed value:
//!
//! ```text
//! encode   = str("aegis.audit.v1") u32be(20) field*20
//! field    = 0x00                          null
//!          | 0x01 u64be(len) bytes[len]    UTF-8 string
//!          | 0x02 i64be                    integer (i32 values widen to i64)
//!          | 0x03 bytes[16]                UUID
//!          | 0x04 i64be                    timestamp: microseconds since the Unix epoch, UTC
//! order    = seq id at sponsor_id agent_id request_id kind stage decision method host
//!            path status cost_micros duration_us request_hash policy_hash
//!            policy_input detail prev_hash
//! ```
//!
//! `str(s)` is `0x01 u64be(len) bytes`. Every value says how long it is, and a
//! null is distinguishable from an empty string, so no two different records share
//! an encoding: moving bytes from one field to the next changes the encoding.

use chrono::{DateTime, Utc};
use entity::audit_events;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// `prev_hash` of the first record (seq 1): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain tag of the record encoding; a new layout gets a new tag.
pub const RECORD_TAG: &str = "aegis.audit.v1";

/// How many fields follow the tag in a record's encoding.
const RECORD_FIELDS: u32 = 20;

const NULL: u8 = 0x00;
const STR: u8 = 0x01;
const INT: u8 = 0x02;
const UUID: u8 = 0x03;
const TIME: u8 = 0x04;

/// Writes tagged, length-prefixed values; see the module documentation.
#[derive(Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.buf.push(STR);
        self.buf.extend_from_slice(&(s.len() as u64).to_be_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self
    }

    pub fn int(&mut self, v: i64) -> &mut Self {
        self.buf.push(INT);
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn uuid(&mut self, v: Uuid) -> &mut Self {
        self.buf.push(UUID);
        self.buf.extend_from_slice(v.as_bytes());
        self
    }

    pub fn time(&mut self, v: DateTime<Utc>) -> &mut Self {
        self.buf.push(TIME);
        self.buf.extend_from_slice(&v.timestamp_micros().to_be_bytes());
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.push(NULL);
        self
    }

    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.str(s),
            None => self.null(),
        }
    }

    pub fn opt_int(&mut self, v: Option<i64>) -> &mut Self {
        match v {
            Some(i) => self.int(i),
            None => self.null(),
        }
    }

    pub fn opt_uuid(&mut self, v: Option<Uuid>) -> &mut Self {
        match v {
            Some(u) => self.uuid(u),
            None => self.null(),
        }
    }

    /// A raw big-endian u32 (used once, for the field count).
    fn count(&mut self, n: u32) -> &mut Self {
        self.buf.extend_from_slice(&n.to_be_bytes());
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// The canonical bytes of a record (everything but its own `hash`).
pub fn encode(r: &audit_events::Model) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(RECORD_TAG)
        .count(RECORD_FIELDS)
        .int(r.seq)
        .uuid(r.id)
        .time(r.at)
        .opt_uuid(r.sponsor_id)
        .opt_uuid(r.agent_id)
        .opt_str(r.request_id.as_deref())
        .str(&r.kind)
        .opt_str(r.stage.as_deref())
        .opt_str(r.decision.as_deref())
        .opt_str(r.method.as_deref())
        .opt_str(r.host.as_deref())
        .opt_str(r.path.as_deref())
        .opt_int(r.status.map(i64::from))
        .int(r.cost_micros)
        .int(r.duration_us)
        .opt_str(r.request_hash.as_deref())
        .opt_str(r.policy_hash.as_deref())
        .opt_str(r.policy_input.as_deref())
        .opt_str(r.detail.as_deref())
        .str(&r.prev_hash);
    e.finish()
}

/// The hash a record must carry: lowercase hex SHA-256 of [`encode`].
pub fn record_hash(r: &audit_events::Model) -> String {
    hex::encode(Sha256::digest(encode(r)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample() -> audit_events::Model {
        audit_events::Model {
            seq: 7,
            id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            at: Utc.timestamp_micros(1_790_000_000_123_456).unwrap(),
            sponsor_id: Some(Uuid::from_u128(1)),
            agent_id: Some(Uuid::from_u128(2)),
            request_id: Some("req-1".into()),
            kind: "proxy.outcome".into(),
            stage: Some("upstream".into()),
            decision: Some("allow".into()),
            method: Some("GET".into()),
            host: Some("api.example.com".into()),
            path: Some("/v1/items".into()),
            status: Some(200),
            cost_micros: 1500,
            duration_us: 42_000,
            request_hash: Some("ab".repeat(32)),
            policy_hash: Some("cd".repeat(32)),
            policy_input: Some(r#"{"method":"GET"}"#.into()),
            detail: Some(r#"{"note":"x"}"#.into()),
            prev_hash: "ef".repeat(32),
            hash: String::new(),
        }
    }

    #[test]
    fn layout_is_tagged_and_length_prefixed() {
        let mut r = sample();
        r.request_id = None;
        let bytes = encode(&r);
        // Domain tag: 0x01, u64be(14), "aegis.audit.v1".
        assert_eq!(bytes[0], STR);
        assert_eq!(&bytes[1..9], &14u64.to_be_bytes());
        assert_eq!(&bytes[9..23], RECORD_TAG.as_bytes());
        assert_eq!(&bytes[23..27], &20u32.to_be_bytes());
        // seq: 0x02 + i64be.
        assert_eq!(bytes[27], INT);
        assert_eq!(&bytes[28..36], &7i64.to_be_bytes());
        // id: 0x03 + 16 bytes.
        assert_eq!(bytes[36], UUID);
        assert_eq!(&bytes[37..53], r.id.as_bytes());
        // at: 0x04 + microseconds.
        assert_eq!(bytes[53], TIME);
        assert_eq!(&bytes[54..62], &1_790_000_000_123_456i64.to_be_bytes());
        // sponsor_id, agent_id: UUIDs; request_id: null.
        assert_eq!(bytes[62], UUID);
        assert_eq!(bytes[79], UUID);
        assert_eq!(bytes[96], NULL);
        // kind: 0x01 u64be(13) "proxy.outcome".
        assert_eq!(bytes[97], STR);
        assert_eq!(&bytes[98..106], &13u64.to_be_bytes());
        assert_eq!(&bytes[106..119], b"proxy.outcome");
        // The record ends with prev_hash: 0x01 u64be(64) hex.
        let tail = &bytes[bytes.len() - 73..];
        assert_eq!(tail[0], STR);
        assert_eq!(&tail[1..9], &64u64.to_be_bytes());
        assert_eq!(&tail[9..], "ef".repeat(32).as_bytes());
    }

    #[test]
    fn naive_concatenation_collisions_hash_differently() {
        // "GE" + "Texample.com" and "GET" + "example.com" concatenate to the same bytes.
        let mut a = sample();
        a.method = Some("GE".into());
        a.host = Some("Texample.com".into());
        let mut b = sample();
        b.method = Some("GET".into());
        b.host = Some("example.com".into());
        assert_ne!(encode(&a), encode(&b));
        assert_ne!(record_hash(&a), record_hash(&b));

        // A null and an empty string are different.
        let mut c = sample();
        c.stage = None;
        let mut d = sample();
        d.stage = Some(String::new());
        assert_ne!(record_hash(&c), record_hash(&d));

        // Shifting a value between adjacent optional fields.
        let mut e = sample();
        e.request_hash = Some("x".into());
        e.policy_hash = None;
        let mut f = sample();
        f.request_hash = None;
        f.policy_hash = Some("x".into());
        assert_ne!(record_hash(&e), record_hash(&f));

        // A string that contains what looks like a length prefix and the next field.
        let mut g = sample();
        g.path = Some(format!("/a{}", String::from_utf8_lossy(&[STR])));
        g.request_hash = None;
        let mut h = sample();
        h.path = Some("/a".into());
        h.request_hash = None;
        assert_ne!(record_hash(&g), record_hash(&h));
    }

    #[test]
    fn hash_covers_every_field() {
        let base = sample();
        let h0 = record_hash(&base);
        type Flip = (&'static str, fn(&mut audit_events::Model));
        let flips: Vec<Flip> = vec![
            ("seq", |r| r.seq += 1),
            ("id", |r| r.id = Uuid::from_u128(99)),
            ("at", |r| r.at += chrono::Duration::microseconds(1)),
            ("sponsor_id", |r| r.sponsor_id = Some(Uuid::from_u128(3))),
            ("sponsor_id null", |r| r.sponsor_id = None),
            ("agent_id", |r| r.agent_id = Some(Uuid::from_u128(4))),
            ("agent_id null", |r| r.agent_id = None),
            ("request_id", |r| r.request_id = Some("req-2".into())),
            ("kind", |r| r.kind = "proxy.intent".into()),
            ("stage", |r| r.stage = Some("policy".into())),
            ("decision", |r| r.decision = Some("deny".into())),
            ("method", |r| r.method = Some("POST".into())),
            ("host", |r| r.host = Some("api.example.org".into())),
            ("path", |r| r.path = Some("/v1/item".into())),
            ("status", |r| r.status = Some(201)),
            ("status null", |r| r.status = None),
            ("cost_micros", |r| r.cost_micros += 1),
            ("duration_us", |r| r.duration_us -= 1),
            ("request_hash", |r| r.request_hash = Some("ac".repeat(32))),
            ("policy_hash", |r| r.policy_hash = None),
            ("policy_input", |r| r.policy_input = Some(r#"{"method":"PUT"}"#.into())),
            ("detail", |r| r.detail = None),
            ("prev_hash", |r| r.prev_hash = GENESIS_HASH.into()),
        ];
        let mut seen = std::collections::HashSet::from([h0.clone()]);
        for (field, flip) in flips {
            let mut r = base.clone();
            flip(&mut r);
            let h = record_hash(&r);
            assert_ne!(h, h0, "flipping {field} must change the hash");
            assert!(seen.insert(h), "{field} collides with another flip");
        }
        // The stored hash itself is not an input.
        let mut r = base.clone();
        r.hash = "whatever".into();
        assert_eq!(record_hash(&r), h0);
        assert_eq!(h0.len(), 64);
    }

    #[test]
    fn canonical_json_sorts_keys_and_is_compact() {
        use crate::digest::canonical_json;
        let v = serde_json::json!({"b": 1, "a": {"d": [1, "x"], "c": null}, "é": "\"q\""});
        assert_eq!(canonical_json(&v), r#"{"a":{"c":null,"d":[1,"x"]},"b":1,"é":"\"q\""}"#);
    }
}
