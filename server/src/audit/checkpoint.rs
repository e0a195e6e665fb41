//! Signed checkpoints: an Ed25519 signature over `{seq, head hash, time}`.
//!
//! The signed message is the same tagged, length-prefixed encoding as a record:
//!
//! ```text
//! 0x01 u64be(25) "aegis.audit.checkpoint.v1"   domain tag
//! 0x02 i64be(seq)
//! 0x01 u64be(64) head_hash (lowercase hex)
//! 0x04 i64be(at, microseconds since the Unix epoch, UTC)
//! ```
//!
//! Checkpoints are stored in `audit_checkpoints` and can be exported to a JSON file
//! that pins the public key, so the chain can be checked against a copy kept
//! outside the database.

use std::path::Path;

use app::error::AppError;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use entity::audit_checkpoints;
use serde::{Deserialize, Serialize};

use super::record::Encoder;

pub const CHECKPOINT_TAG: &str = "aegis.audit.checkpoint.v1";
/// The `format` field of an exported checkpoint file.
pub const FILE_FORMAT: &str = "aegis-audit-checkpoint-v1";

/// A signed statement that the chain's record `seq` had hash `head_hash` at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub head_hash: String,
    pub at: DateTime<Utc>,
    /// Ed25519 public key, 32 bytes as hex.
    pub public_key: String,
    /// Ed25519 signature over [`message`], 64 bytes as hex.
    pub signature: String,
}

impl From<audit_checkpoints::Model> for Checkpoint {
    fn from(m: audit_checkpoints::Model) -> Self {
        Self {
            seq: m.seq,
            head_hash: m.head_hash,
            at: m.at,
            public_key: m.public_key,
            signature: m.signature,
        }
    }
}

/// The bytes a checkpoint's signature covers.
pub fn message(seq: i64, head_hash: &str, at: DateTime<Utc>) -> Vec<u8> {
    let mut e = Encoder::new();
    e.str(CHECKPOINT_TAG).int(seq).str(head_hash).time(at);
    e.finish()
}

impl Checkpoint {
    /// Whether the signature is valid for this checkpoint under `public_key_hex`
    /// (the key the verifier trusts, not necessarily the one the row names).
    pub fn signature_valid_for(&self, public_key_hex: &str) -> bool {
        let Some(key) = parse_public_key(public_key_hex) else {
            return false;
        };
        let Some(signature) = hex::decode(&self.signature).ok().and_then(|b| Signature::from_slice(&b).ok())
        else {
            return false;
        };
        key.verify(&message(self.seq, &self.head_hash, self.at), &signature).is_ok()
    }

    /// Writes the checkpoint as a JSON file pinning its public key.
    pub fn export(&self, path: &Path) -> std::io::Result<()> {
        let file = CheckpointFile { format: FILE_FORMAT.into(), checkpoint: self.clone() };
        let mut text = serde_json::to_string_pretty(&file).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }

    /// Reads a file written by [`Checkpoint::export`].
    pub fn import(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: CheckpointFile = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a checkpoint file: {e}", path.display()))?;
        if file.format != FILE_FORMAT {
            return Err(format!(
                "{}: unknown format {:?} (expected {FILE_FORMAT})",
                path.display(),
                file.format
            ));
        }
        Ok(file.checkpoint)
    }
}

#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    format: String,
    #[serde(flatten)]
    checkpoint: Checkpoint,
}

fn parse_public_key(hex_key: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = hex::decode(hex_key).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The checkpoint signing key, from a 32-byte seed. Debug output hides it.
#[derive(Clone)]
pub struct CheckpointSigner {
    key: SigningKey,
    public_hex: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner(public key {})", self.public_hex)
    }
}

impl CheckpointSigner {
    pub fn from_seed(seed: &[u8]) -> Result<Self, AppError> {
        let seed: [u8; 32] = seed.try_into().map_err(|_| {
            tracing::error!("the audit signing key must be 32 bytes");
            AppError::internal()
        })?;
        let key = SigningKey::from_bytes(&seed);
        let public_hex = hex::encode(key.verifying_key().as_bytes());
        Ok(Self { key, public_hex })
    }

    pub fn public_key_hex(&self) -> &str {
        &self.public_hex
    }

    pub fn sign(&self, seq: i64, head_hash: &str, at: DateTime<Utc>) -> Checkpoint {
        let signature = self.key.sign(&message(seq, head_hash, at));
        Checkpoint {
            seq,
            head_hash: head_hash.to_owned(),
            at,
            public_key: self.public_hex.clone(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn signer(byte: u8) -> CheckpointSigner {
        CheckpointSigner::from_seed(&[byte; 32]).unwrap()
    }

    #[test]
    fn signatures_verify_only_for_the_signed_values_and_key() {
        let s = signer(7);
        let at = Utc.timestamp_micros(1_790_000_000_000_001).unwrap();
        let cp = s.sign(42, &"ab".repeat(32), at);
        assert!(cp.signature_valid_for(s.public_key_hex()));
        assert!(!cp.signature_valid_for(signer(8).public_key_hex()));
        for tampered in [
            Checkpoint { seq: 41, ..cp.clone() },
            Checkpoint { head_hash: "ac".repeat(32), ..cp.clone() },
            Checkpoint { at: at + chrono::Duration::microseconds(1), ..cp.clone() },
            Checkpoint { signature: "00".repeat(64), ..cp.clone() },
            Checkpoint { signature: "zz".into(), ..cp.clone() },
        ] {
            assert!(!tampered.signature_valid_for(s.public_key_hex()));
        }
        assert!(!cp.signature_valid_for("not hex"));
    }

    #[test]
    fn the_public_key_is_derived_from_the_seed_and_debug_hides_the_seed() {
        let a = signer(1);
        assert_eq!(a.public_key_hex(), signer(1).public_key_hex());
        assert_ne!(a.public_key_hex(), signer(2).public_key_hex());
        assert!(!format!("{a:?}").contains(&"01".repeat(32)));
        assert!(CheckpointSigner::from_seed(&[0; 31]).is_err());
    }

    #[test]
    fn export_and_import_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.json");
        let cp = signer(3).sign(5, &"cd".repeat(32), Utc::now());
        cp.export(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(FILE_FORMAT) && text.contains(&cp.public_key));
        assert_eq!(Checkpoint::import(&path).unwrap(), cp);
        std::fs::write(&path, r#"{"format":"other"}"#).unwrap();
        assert!(Checkpoint::import(&path).is_err());
    }
}
