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
