//! The hot path's point reads on a SQLite file, run inline on the calling thread
//! over connections of their own.
//!
//! A read through sqlx's pool is a hand-off to the connection's worker thread and
//! back — two thread wake-ups, tens to hundreds of µs on a loaded two-core box —
//! for a lookup SQLite answers from its page cache in a few µs. The proxy makes
//! four such reads per call (the agent's key, its wallet, its policy's current
//! version, the granted secret), so on a SQLite file they run here instead. Each
//! statement reads the latest committed state (WAL: a reader never waits for the
//! writer), exactly as the pool's read would.
//!
//! Only the reads live here; the statements sit beside their sea-orm versions in
//! each service (which PostgreSQL, and an in-memory SQLite, keep using).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use sea_orm::{DatabaseConnection, DbBackend};
use uuid::Uuid;

use super::{from_sql_time, sqlite_internal};
use crate::metrics::Metrics;

/// A reader waits at most this long for SQLite's locks (WAL readers only wait
/// while a crashed writer's log is being recovered).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept; more may be open while many readers overlap.
const IDLE_LIMIT: usize = 8;

/// Inline read connections on one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteReads(Arc<Inner>);

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    metrics: Arc<Metrics>,
}

impl SqliteReads {
    /// Inline reads for `db` when it is a SQLite file; `None` otherwise
    /// (PostgreSQL, an in-memory database), where the services use sea-orm.
    pub fn for_file(db: &DatabaseConnection, metrics: Arc<Metrics>) -> Option<Self> {
        if db.get_database_backend() != DbBackend::Sqlite {
            return None;
        }
        let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
        path.is_file().then(|| Self(Arc::new(Inner { path, idle: Mutex::default(), metrics })))
    }

    /// Runs `read` on an idle connection (opened if none is). A connection whose
    /// read failed is dropped rather than reused, so a file that went away or a
    /// broken handle is reopened on the next call.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> Result<T, AppError>) -> Result<T, AppError> {
        let idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open(&self.0.path).map_err(sqlite_internal)?,
        };
        let value = read(&conn)?;
        self.0.metrics.inline_read();
        let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE_LIMIT {
            idle.push(conn);
        }
        Ok(value)
    }
}

impl SqliteReads {
    /// At most one row of `sql` (a cached prepared statement), decoded by `row`.
    pub fn optional_row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        row: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, AppError> {
        self.read(|conn| {
            conn.prepare_cached(sql)
                .and_then(|mut statement| statement.query_row(params, row).optional())
                .map_err(sqlite_internal)
        })
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    // Read-write flags (the WAL index needs them) but `query_only`: nothing here writes.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

/// Column decoders for rows sqlx wrote: a UUID is its 16 bytes, a time RFC 3339
/// text ([`super::sql_time`]). Anything else is a decode error, never a default.
pub trait Columns {
    fn uuid(&self, i: usize) -> rusqlite::Result<Uuid>;
    fn opt_uuid(&self, i: usize) -> rusqlite::Result<Option<Uuid>>;
    fn time(&self, i: usize) -> rusqlite::Result<DateTime<Utc>>;
    fn opt_time(&self, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>>;
}

impl Columns for Row<'_> {
    fn uuid(&self, i: usize) -> rusqlite::Result<Uuid> {
        let bytes: Vec<u8> = self.get(i)?;
        Uuid::from_slice(&bytes).map_err(|e| bad(i, rusqlite::types::Type::Blob, e.to_string()))
    }

    fn opt_uuid(&self, i: usize) -> rusqlite::Result<Option<Uuid>> {
        match self.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            _ => self.uuid(i).map(Some),
        }
    }

    fn time(&self, i: usize) -> rusqlite::Result<DateTime<Utc>> {
        let text: String = self.get(i)?;
        from_sql_time(&text).ok_or_else(|| bad(i, rusqlite::types::Type::Text, "not an RFC 3339 time".into()))
    }

    fn opt_time(&self, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
        match self.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            _ => self.time(i).map(Some),
        }
    }
}

fn bad(i: usize, ty: rusqlite::types::Type, why: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, why.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of `sql` on a scratch connection, through `decode`.
    fn decode<T>(sql: &str, decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        Connection::open_in_memory().unwrap().query_row(sql, [], decode)
    }

    #[test]
    fn columns_decode_what_sqlx_writes_and_refuse_anything_else() {
        let id = Uuid::now_v7();
        let at = crate::storage::now();
        let conn = Connection::open_in_memory().unwrap();
        let (got_id, got_at): (Uuid, DateTime<Utc>) = conn
            .query_row("SELECT ?1, ?2", rusqlite::params![id.as_bytes(), super::super::sql_time(at)], |r| {
                Ok((r.uuid(0)?, r.time(1)?))
            })
            .unwrap();
        assert_eq!((got_id, got_at), (id, at));
        assert_eq!(decode("SELECT NULL", |r| r.opt_uuid(0)).unwrap(), None);
        assert_eq!(decode("SELECT NULL", |r| r.opt_time(0)).unwrap(), None);

        // A UUID of the wrong length, a time that is not RFC 3339, a text where a
        // blob belongs: decode errors, never a default.
        assert!(decode("SELECT x'0102'", |r| r.uuid(0)).is_err());
        assert!(decode("SELECT x'0102'", |r| r.opt_uuid(0)).is_err());
        assert!(decode("SELECT '2026-11-27 10:00:00'", |r| r.time(0)).is_err());
        assert!(decode("SELECT 'yesterday'", |r| r.opt_time(0)).is_err());
        assert!(decode("SELECT 42", |r| r.time(0)).is_err());
    }
}
