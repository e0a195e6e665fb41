//! Encryption at rest for vault secrets (and parked requests, stored answers):
//! AES-256-GCM under the master key, a fresh random nonce per seal, and associated
//! data binding each ciphertext to its row (for vault secrets: the sponsor's id and
//! the secret's id), so a ciphertext moved to another row or tenant no longer decrypts.
//!
//! **Key ids.** Every seal records which master key sealed it: the stored nonce is
//! `key id (8 bytes) ‖ nonce (12 bytes)`, the key id being the first 8 bytes of
//! SHA-256 over a label and the key. A ciphertext from before key ids (a bare 12-byte
//! nonce) is opened with the current key (then any retired one). The vault holds
//! the current key and the retired ones (`aegis rekey` retires a key after
//! re-sealing the vault's secrets under the new one), so what was sealed under a
//! retired key still opens.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

const NONCE_LEN: usize = 12;
pub const KEY_ID_LEN: usize = 8;

#[derive(Clone)]
struct Key {
    id: [u8; KEY_ID_LEN],
    cipher: Aes256Gcm,
}

impl Key {
    fn new(bytes: &[u8]) -> Result<Self, VaultError> {
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| VaultError::BadKey)?;
        Ok(Self { id: key_id(bytes), cipher })
    }

    fn open(&self, aad: &str, nonce: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
            .ok()
            .map(Zeroizing::new)
    }
}

/// The id a master key's ciphertexts carry: not secret, not reversible.
pub fn key_id(key: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::new().chain_update(b"aegis-master-key-id:v1:").chain_update(key).finalize();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

#[derive(Clone)]
pub struct Vault {
    current: Key,
    retired: Vec<Key>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("the master key must be 32 bytes")]
    BadKey,
    #[error("secret could not be decrypted (wrong master key or tampered data)")]
    Undecryptable,
}

/// Associated data of a vault secret sealed with a key id: bound to its sponsor and row.
fn secret_aad(sponsor_id: Uuid, secret_id: Uuid) -> String {
    format!("aegis-secret:v2:{sponsor_id}:{secret_id}")
}

/// Associated data of a vault secret sealed before key ids (row only).
fn legacy_secret_aad(secret_id: Uuid) -> String {
    format!("aegis-secret:v1:{secret_id}")
}

impl Vault {
    pub fn new(master_key: &[u8]) -> Result<Self, VaultError> {
        Ok(Self { current: Key::new(master_key)?, retired: Vec::new() })
    }

    /// Also opens what retired master keys sealed.
    pub fn with_retired<K: AsRef<[u8]>>(mut self, keys: &[K]) -> Result<Self, VaultError> {
        for k in keys {
            let key = Key::new(k.as_ref())?;
            if key.id != self.current.id && !self.retired.iter().any(|r| r.id == key.id) {
                self.retired.push(key);
            }
        }
        Ok(self)
    }

    /// The current master key's id, hex.
    pub fn key_id_hex(&self) -> String {
        hex::encode(self.current.id)
    }

    /// Whether `stored_nonce` was sealed by something other than the current key
    /// (a retired key, or before key ids): `aegis rekey` re-seals those.
    pub fn is_stale(&self, stored_nonce: &[u8]) -> bool {
        stored_nonce.len() != KEY_ID_LEN + NONCE_LEN || stored_nonce[..KEY_ID_LEN] != self.current.id
    }

    /// Seals a vault secret of `sponsor_id`. Returns (key id ‖ nonce, ciphertext-with-tag).
    pub fn seal(&self, sponsor_id: Uuid, secret_id: Uuid, plaintext: &str) -> (Vec<u8>, Vec<u8>) {
        self.seal_bytes(&secret_aad(sponsor_id, secret_id), plaintext.as_bytes())
    }

    /// Seals arbitrary bytes bound to `context` (e.g. `aegis-approval:v1:<id>`).
    /// Returns (key id ‖ nonce, ciphertext-with-tag); store both as they are.
    pub fn seal_bytes(&self, context: &str, plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .current
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .expect("AES-GCM encryption of a bounded input cannot fail");
        let mut stored = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN);
        stored.extend_from_slice(&self.current.id);
        stored.extend_from_slice(&nonce);
        (stored, ciphertext)
    }

    /// Opens what [`Vault::seal_bytes`] sealed under `context`, with whichever known
    /// key its id names (a bare nonce from before key ids: the current key, then
    /// the retired ones).
    pub fn open_bytes(
        &self,
        context: &str,
        stored_nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.open_with(context, context, stored_nonce, ciphertext)
    }

    fn open_with(
        &self,
        context: &str,
        legacy_context: &str,
        stored_nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let keys = || std::iter::once(&self.current).chain(&self.retired);
        let opened = match stored_nonce.len() {
            NONCE_LEN => keys().find_map(|k| k.open(legacy_context, stored_nonce, ciphertext)),
            n if n == KEY_ID_LEN + NONCE_LEN => {
                let (id, nonce) = stored_nonce.split_at(KEY_ID_LEN);
                keys().find(|k| k.id == id).and_then(|k| k.open(context, nonce, ciphertext))
            }
            _ => None,
        };
        opened.ok_or(VaultError::Undecryptable)
    }

    /// Opens a vault secret of `sponsor_id`.
    pub fn open(
        &self,
        sponsor_id: Uuid,
        secret_id: Uuid,
        stored_nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<String>, VaultError> {
        let plain = self.open_with(
            &secret_aad(sponsor_id, secret_id),
            &legacy_secret_aad(secret_id),
            stored_nonce,
            ciphertext,
        )?;
        String::from_utf8(plain.to_vec()).map(Zeroizing::new).map_err(|_| VaultError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ciphertext as the vault sealed it before key ids and sponsor binding.
    fn legacy_seal(key: &[u8], secret_id: Uuid, plaintext: &str) -> (Vec<u8>, Vec<u8>) {
        let cipher = Aes256Gcm::new_from_slice(key).unwrap();
        let nonce = [5u8; NONCE_LEN];
        let aad = legacy_secret_aad(secret_id);
        let c = cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .unwrap();
        (nonce.to_vec(), c)
    }

    #[test]
    fn round_trip_with_fresh_nonces_and_the_key_id() {
        let v = Vault::new(&[7u8; 32]).unwrap();
        let (sponsor, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (n1, c1) = v.seal(sponsor, id, "sk-live-123");
        let (n2, c2) = v.seal(sponsor, id, "sk-live-123");
        assert_ne!(n1, n2, "a nonce is never reused");
        assert_ne!(c1, c2);
        assert_eq!(n1.len(), KEY_ID_LEN + NONCE_LEN);
        assert_eq!(hex::encode(&n1[..KEY_ID_LEN]), v.key_id_hex(), "the ciphertext names its key");
        assert!(!c1.windows(11).any(|w| w == b"sk-live-123"), "ciphertext does not contain the value");
        assert_eq!(v.open(sponsor, id, &n1, &c1).unwrap().as_str(), "sk-live-123");
        assert!(!v.is_stale(&n1));
    }

    #[test]
    fn tampering_wrong_key_moved_rows_and_other_sponsors_fail() {
        let v = Vault::new(&[7u8; 32]).unwrap();
        let (sponsor, id) = (Uuid::new_v4(), Uuid::new_v4());
        let (n, mut c) = v.seal(sponsor, id, "value");
        assert_eq!(
            v.open(sponsor, Uuid::new_v4(), &n, &c).unwrap_err(),
            VaultError::Undecryptable,
            "bound to its row"
        );
        assert!(v.open(Uuid::new_v4(), id, &n, &c).is_err(), "bound to its sponsor");
        assert!(Vault::new(&[8u8; 32]).unwrap().open(sponsor, id, &n, &c).is_err(), "other master key");
        let mut bare = n.clone();
        bare.drain(..KEY_ID_LEN);
        assert!(v.open(sponsor, id, &bare, &c).is_err(), "the key id cannot be stripped to downgrade");
        c[0] ^= 1;
        assert!(v.open(sponsor, id, &n, &c).is_err(), "flipped bit");
        assert!(v.open(sponsor, id, &n[..5], &c).is_err(), "short nonce");
        assert_eq!(Vault::new(&[1u8; 16]).err(), Some(VaultError::BadKey));
    }

    #[test]
    fn legacy_ciphertexts_open_with_the_current_key() {
        let id = Uuid::new_v4();
        let (n, c) = legacy_seal(&[7u8; 32], id, "old");
        let v = Vault::new(&[7u8; 32]).unwrap();
        assert_eq!(v.open(Uuid::new_v4(), id, &n, &c).unwrap().as_str(), "old");
        assert!(v.is_stale(&n), "rekey re-seals it with a key id");
        // After a rekey the old key is retired, and still opens it.
        let rotated = Vault::new(&[9u8; 32]).unwrap().with_retired(&[[7u8; 32]]).unwrap();
        assert_eq!(rotated.open(Uuid::new_v4(), id, &n, &c).unwrap().as_str(), "old");
    }

    #[test]
    fn retired_keys_open_what_they_sealed_and_new_seals_use_the_current_key() {
        let (sponsor, id) = (Uuid::new_v4(), Uuid::new_v4());
        let old = Vault::new(&[7u8; 32]).unwrap();
        let (n, c) = old.seal(sponsor, id, "v");
        let new = Vault::new(&[9u8; 32]).unwrap().with_retired(&[[7u8; 32]]).unwrap();
        assert_eq!(new.open(sponsor, id, &n, &c).unwrap().as_str(), "v");
        assert!(new.is_stale(&n));
        let (n2, _) = new.seal(sponsor, id, "v");
        assert!(!new.is_stale(&n2));
        assert_ne!(n2[..KEY_ID_LEN], n[..KEY_ID_LEN]);
        assert!(Vault::new(&[9u8; 32]).unwrap().open(sponsor, id, &n, &c).is_err(), "unknown key id");
    }

    /// `aegis rekey` end to end on a real (SQLite) database: a secret sealed under
    /// the old key and one from before key ids (no key id, no sponsor in the
    /// associated data) are both re-sealed under a fresh key; the old key is retired,
    /// so what it sealed elsewhere still opens; a row no key opens is reported and
    /// does not stop the others.
    #[tokio::test]
    async fn rekey_rotates_the_master_key_and_migrates_every_secret() {
        use app::backend::Backend;
        use entity::secrets;
        use sea_orm::{ActiveModelTrait, EntityTrait, Set};

        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("conf").join("aegis").join("master.key");
        let env = std::collections::HashMap::from([
            ("AEGIS_DATA_DIR".to_owned(), dir.path().join("data").display().to_string()),
            ("AEGIS_MASTER_KEY_FILE".to_owned(), key_file.display().to_string()),
        ]);
        let config = crate::config::Config::from_lookup(|k| env.get(k).cloned()).unwrap();
        let services = crate::build_services(config.clone()).await.unwrap();
        assert!(
            key_file.exists() && !dir.path().join("data").join("master.key").exists(),
            "outside the data dir"
        );
        let auth = services
            .register(
                serde_json::from_value(serde_json::json!({
                    "email": "rekey@example.com", "password": "Rekey-Pass-123", "name": "R"
                }))
                .unwrap(),
                app::model::ClientMeta::default(),
            )
            .await
            .unwrap();
        let user = auth.user.id;
        let member = services.sponsor_session(&auth.tokens.access_token, None).await.unwrap();
        let channel = services
            .create_channel(
                &member,
                app::model::NewChannel {
                    kind: "webhook".into(),
                    url: Some("https://hooks.example.com/aegis".into()),
                    events: vec!["approval.requested".into()],
                    bot_token: None,
                    signing_secret: None,
                    slack_channel: None,
                },
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        for name in ["a", "legacy", "broken"] {
            let secret = services
                .create_secret(
                    &member,
                    serde_json::from_value(serde_json::json!({
                        "name": name, "value": format!("value-{name}"), "allowed_hosts": ["api.example.com"],
                        "inject": {"header": "x-api-key"}, "agents": []
                    }))
                    .unwrap(),
                )
                .await
                .unwrap();
            ids.push(secret.id);
        }
        let old_key = hex::decode(std::fs::read_to_string(&key_file).unwrap().trim()).unwrap();
        // A row as sealed before key ids; and a row no key opens.
        let (n, c) = legacy_seal(&old_key, ids[1], "value-legacy");
        let legacy =
            secrets::ActiveModel { id: Set(ids[1]), nonce: Set(n), ciphertext: Set(c), ..Default::default() };
        legacy.update(&services.db).await.unwrap();
        let broken = secrets::ActiveModel {
            id: Set(ids[2]),
            nonce: Set(vec![0; 20]),
            ciphertext: Set(vec![1; 40]),
            ..Default::default()
        };
        broken.update(&services.db).await.unwrap();
        // Something else the old key sealed (a parked request, say).
        let (other_n, other_c) = Vault::new(&old_key).unwrap().seal_bytes("aegis-approval:v1:x", b"parked");

        let report = crate::rekey::rekey(&config).await.unwrap();
        assert_eq!((report.resealed, report.unreadable.clone()), (2, vec![ids[2]]));
        assert_eq!(report.old_key_id, hex::encode(key_id(&old_key)));
        let new_key = hex::decode(std::fs::read_to_string(&key_file).unwrap().trim()).unwrap();
        assert_ne!(new_key, old_key);
        assert_eq!(report.new_key_id, hex::encode(key_id(&new_key)));

        // What a restarted AEGIS loads: the new key, the old one retired.
        let data = crate::data_dir::DataDir::open(&config.data_dir).unwrap();
        let (current, retired) = data.master_keys(config.master_key_settings()).unwrap();
        assert_eq!(current.0, new_key);
        assert!(retired.iter().any(|k| k.0 == old_key));
        let vault = Vault::new(&current.0)
            .unwrap()
            .with_retired(&retired.iter().map(|k| k.0.clone()).collect::<Vec<_>>())
            .unwrap();
        for (id, value) in [(ids[0], "value-a"), (ids[1], "value-legacy")] {
            let row = secrets::Entity::find_by_id(id).one(&services.db).await.unwrap().unwrap();
            assert_eq!(
                hex::encode(&row.nonce[..KEY_ID_LEN]),
                report.new_key_id,
                "re-sealed under the new key"
            );
            assert_eq!(vault.open(user, id, &row.nonce, &row.ciphertext).unwrap().as_str(), value);
            assert!(Vault::new(&old_key).unwrap().open(user, id, &row.nonce, &row.ciphertext).is_err());
        }
        assert_eq!(&*vault.open_bytes("aegis-approval:v1:x", &other_n, &other_c).unwrap(), b"parked");
        // The webhook's signing key too: under the new key, the same key as shown once.
        assert_eq!(report.channel_keys, 1);
        let row = entity::channels::Entity::find_by_id(channel.id).one(&services.db).await.unwrap().unwrap();
        assert_eq!(hex::encode(&row.secret_nonce[..KEY_ID_LEN]), report.new_key_id);
        let context = crate::channels::key_context(channel.id);
        let key = vault.open_bytes(&context, &row.secret_nonce, &row.secret_sealed).unwrap();
        assert_eq!(Some(crate::channels::signature::display(&key)), channel.secret);
        assert!(
            Vault::new(&old_key)
                .unwrap()
                .open_bytes(&context, &row.secret_nonce, &row.secret_sealed)
                .is_err()
        );
    }
}
