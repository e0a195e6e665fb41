//! Small helpers every service uses at the database boundary.

use app::error::AppError;
use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{DbErr, SqlErr};

/// Now, at the microsecond precision both SQLite and PostgreSQL store, so a value
/// read back compares equal to the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Storage failures are logged with their detail and reported as a generic error.
pub fn internal(e: DbErr) -> AppError {
    tracing::error!(error = %e, "database error");
    AppError::internal()
}

/// Maps a unique-constraint violation to `conflict`, anything else to [`internal`].
pub fn unique_or_internal(e: DbErr, conflict: AppError) -> AppError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => conflict,
        _ => internal(e),
    }
}

/// A name that also appears in URLs and policy input (secrets, policies, connections,
/// query parameters): 1 to 64 of `A-Z a-z 0-9 _ - .`, trimmed.
pub fn identifier(value: &str, what: &str) -> Result<String, AppError> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(AppError::validation(format!("{what} must be 1 to 64 of A-Z a-z 0-9 _ - .")));
    }
    Ok(value.to_owned())
}

/// SHA-256 as lowercase hex: how tokens and keys are stored.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Canonical JSON for `detail` and `policy_input`: object keys sorted, no
/// insignificant whitespace, whatever serde_json's feature flags are.
pub fn canonical_json(value: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// A transaction that writes: on SQLite it takes the write lock at `BEGIN`
/// (IMMEDIATE), so a transaction that reads first cannot fail with "database is
/// locked" when it later writes after another writer committed.
pub async fn begin_write(db: &sea_orm::DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, AppError> {
    use sea_orm::{DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait};
    let options = match db.get_database_backend() {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
        _ => TransactionOptions::default(),
    };
    db.begin_with_options(options).await.map_err(internal)
}
