//! The hash-chained, tamper-evident audit log.

use app::error::AppError;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

/// What a caller records; the log adds seq, time, prev_hash and hash.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    pub sponsor_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub kind: String,
    pub stage: Option<String>,
    pub decision: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub cost_micros: i64,
    pub duration_us: i64,
    pub request_hash: Option<String>,
    pub policy_hash: Option<String>,
    /// Canonical JSON of the policy input (never secrets).
    pub policy_input: Option<String>,
    /// Canonical JSON with anything else worth keeping (never secrets or bodies).
    pub detail: Option<String>,
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    pub hash: String,
}

#[derive(Clone)]
pub struct AuditLog {
    #[allow(dead_code)]
    db: DatabaseConnection,
}

impl AuditLog {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Appends one record; it is durably committed when this returns.
    pub async fn append(&self, _entry: AuditEntry) -> Result<Appended, AppError> {
        Err(AppError::new(
            501,
            "not_implemented",
            "audit log not implemented yet",
        ))
    }
}
