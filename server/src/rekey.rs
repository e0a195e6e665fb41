//! `aegis rekey`: rotating the vault's master key, an operator's command that ties
//! the configuration, the key files of the data directory, the database and the
//! vault together (none of which needs to know the others for it).

use std::path::PathBuf;

use entity::{channels, secrets};
use rand::RngCore;
use sea_orm::{ActiveModelTrait, EntityTrait, Set, TransactionTrait};
use uuid::Uuid;

use crate::config::Config;
use crate::data_dir::{DataDir, KeyBytes, master_key_path, retire_key, write_key_file};
use crate::secrets::vault::Vault;

/// What `aegis rekey` did.
#[derive(Debug)]
pub struct RekeyReport {
    pub master_key_file: PathBuf,
    pub old_key_id: String,
    pub new_key_id: String,
    /// Vault secrets re-sealed under the new key.
    pub resealed: u64,
    /// Webhook signing keys re-sealed under the new key.
    pub channel_keys: u64,
    /// Vault secrets that no known key opens (left as they are; their values are lost).
    pub unreadable: Vec<Uuid>,
}

/// `aegis rekey`: rotates the master key. A fresh key becomes current; every vault
/// secret and webhook signing key is re-sealed under it (with its key id and its sponsor in the associated
/// data: this also migrates ciphertexts from before key ids) in one transaction; the
/// old key is kept as a retired key (`<key file>.retired`), so the short-lived
/// sealed data (parked requests, stored answers) still opens. Run it with AEGIS
/// stopped: a running process does not know the new key until it restarts.
///
/// Crash-safe: the new key is written to the retired file before anything is sealed
/// with it, and the old one before the key file is replaced (atomically), so every
/// key a ciphertext may name is always on disk.
pub async fn rekey(config: &Config) -> Result<RekeyReport, String> {
    if config.master_key.is_some() {
        return Err("the master key comes from AEGIS_MASTER_KEY: rekey works on a key file \
                    (unset AEGIS_MASTER_KEY and set AEGIS_MASTER_KEY_FILE)"
            .into());
    }
    let data = DataDir::open(&config.data_dir).map_err(|e| e.to_string())?;
    let path = master_key_path(&data, config.master_key_settings());
    if !path.exists() {
        return Err(format!("no master key at {}: nothing to rotate", path.display()));
    }
    let (current, retired) = data.master_keys(config.master_key_settings()).map_err(|e| e.to_string())?;
    let mut known: Vec<Vec<u8>> = vec![current.0.clone()];
    known.extend(retired.iter().map(|k| k.0.clone()));
    let old = Vault::new(&current.0).and_then(|v| v.with_retired(&known)).map_err(|e| e.to_string())?;
    let mut fresh = vec![0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    let new_key = KeyBytes(fresh);
    let new = Vault::new(&new_key.0).and_then(|v| v.with_retired(&known)).map_err(|e| e.to_string())?;

    // 1. Every start-up knows the new key before anything is sealed with it.
    retire_key(&path, &new_key).map_err(|e| e.to_string())?;

    // 2. Re-seal every vault secret, all or nothing.
    let url = crate::db::resolve_url(config.database_url.as_deref(), data.path());
    let db = crate::db::connect(&url).await.map_err(|e| format!("database: {e}"))?;
    crate::db::migrate(&db).await.map_err(|e| format!("database: {e}"))?;
    let txn = db.begin().await.map_err(|e| format!("database: {e}"))?;
    let rows = secrets::Entity::find().all(&txn).await.map_err(|e| format!("database: {e}"))?;
    let (mut resealed, mut unreadable) = (0u64, Vec::new());
    for row in rows {
        let Ok(value) = old.open(row.sponsor_id, row.id, &row.nonce, &row.ciphertext) else {
            tracing::error!(secret = %row.id, "vault secret opens under no known key; left as it is");
            unreadable.push(row.id);
            continue;
        };
        let (nonce, ciphertext) = new.seal(row.sponsor_id, row.id, &value);
        let mut active: secrets::ActiveModel = row.into();
        active.nonce = Set(nonce);
        active.ciphertext = Set(ciphertext);
        active.update(&txn).await.map_err(|e| format!("database: {e}"))?;
        resealed += 1;
    }
    // Webhook signing keys are long-lived too: re-sealed with them.
    let mut channel_keys = 0u64;
    for row in channels::Entity::find().all(&txn).await.map_err(|e| format!("database: {e}"))? {
        let context = crate::channels::key_context(row.id);
        let Ok(key) = old.open_bytes(&context, &row.secret_nonce, &row.secret_sealed) else {
            tracing::error!(channel = %row.id, "webhook signing key opens under no known key; left as it is");
            unreadable.push(row.id);
            continue;
        };
        let (nonce, sealed) = new.seal_bytes(&context, &key);
        let mut active: channels::ActiveModel = row.into();
        active.secret_nonce = Set(nonce);
        active.secret_sealed = Set(sealed);
        active.update(&txn).await.map_err(|e| format!("database: {e}"))?;
        channel_keys += 1;
    }
    txn.commit().await.map_err(|e| format!("database: {e}"))?;

    // 3. The old key retires; the new one becomes current.
    retire_key(&path, &current).map_err(|e| e.to_string())?;
    write_key_file(&path, &hex::encode(&new_key.0)).map_err(|e| e.to_string())?;
    Ok(RekeyReport {
        master_key_file: path,
        old_key_id: old.key_id_hex(),
        new_key_id: new.key_id_hex(),
        resealed,
        channel_keys,
        unreadable,
    })
}
