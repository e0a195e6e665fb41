//! Encryption at rest for vault secrets: AES-256-GCM under the master key, a fresh
//! random nonce per seal, and the secret's id as associated data so a ciphertext
//! moved to another row no longer decrypts.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct Vault {
    cipher: Aes256Gcm,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the master key must be 32 bytes")]
    BadKey,
    #[error("secret could not be decrypted (wrong master key or tampered data)")]
    Undecryptable,
}

fn aad(secret_id: Uuid) -> String {
    format!("aegis-secret:v1:{secret_id}")
}

impl Vault {
    pub fn new(master_key: &[u8]) -> Result<Self, VaultError> {
        Aes256Gcm::new_from_slice(master_key).map(|cipher| Self { cipher }).map_err(|_| VaultError::BadKey)
    }

    /// Returns (nonce, ciphertext-with-tag).
    pub fn seal(&self, secret_id: Uuid, plaintext: &str) -> (Vec<u8>, Vec<u8>) {
        self.seal_bytes(&aad(secret_id), plaintext.as_bytes())
    }

    /// Seals arbitrary bytes bound to `context` (e.g. `aegis-approval:v1:<id>`).
    /// Returns (nonce, ciphertext-with-tag).
    pub fn seal_bytes(&self, context: &str, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("AES-GCM encryption of a bounded input cannot fail");
        (nonce.to_vec(), ciphertext)
    }

    pub fn open_bytes(
        &self,
        context: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Undecryptable)?;
        self.cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: context.as_bytes() })
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Undecryptable)
    }

    pub fn open(
        &self,
        secret_id: Uuid,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<String>, VaultError> {
        let plain = self.open_bytes(&aad(secret_id), nonce, ciphertext)?;
        String::from_utf8(plain.to_vec()).map(Zeroizing::new).map_err(|_| VaultError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fresh_nonces() {
        let v = Vault::new(&[7u8; 32]).unwrap();
        let id = Uuid::new_v4();
        let (n1, c1) = v.seal(id, "sk-live-123");
        let (n2, c2) = v.seal(id, "sk-live-123");
        assert_ne!(n1, n2, "a nonce is never reused");
        assert_ne!(c1, c2);
        assert!(!c1.windows(11).any(|w| w == b"sk-live-123"), "ciphertext does not contain the value");
        assert_eq!(v.open(id, &n1, &c1).unwrap().as_str(), "sk-live-123");
    }

    #[test]
    fn tampering_wrong_key_and_moved_rows_fail() {
        let v = Vault::new(&[7u8; 32]).unwrap();
        let id = Uuid::new_v4();
        let (n, mut c) = v.seal(id, "value");
        assert_eq!(
            v.open(Uuid::new_v4(), &n, &c).unwrap_err(),
            VaultError::Undecryptable,
            "bound to its row"
        );
        assert!(Vault::new(&[8u8; 32]).unwrap().open(id, &n, &c).is_err(), "other master key");
        c[0] ^= 1;
        assert!(v.open(id, &n, &c).is_err(), "flipped bit");
        assert!(v.open(id, &n[..5], &c).is_err(), "short nonce");
        assert_eq!(Vault::new(&[1u8; 16]).err(), Some(VaultError::BadKey));
    }
}
