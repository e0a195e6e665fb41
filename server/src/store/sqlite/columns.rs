//! How the hot path's SQLite statements encode and decode columns so their rows
//! are exactly sqlx's: a UUID is its 16 bytes, a time RFC 3339 text with
//! `+00:00`. Anything else read back is a decode error, never a default.

use app::error::AppError;
use chrono::{DateTime, Utc};
use rusqlite::Row;
use uuid::Uuid;

/// The same for the SQLite store's own connections ([`crate::store::sqlite`]).
pub fn internal(e: rusqlite::Error) -> AppError {
    tracing::error!(error = %e, "database error");
    AppError::internal()
}

/// A time as SQLite stores it when sea-orm/sqlx write it (RFC 3339, `+00:00`), so
/// rows written by the writer thread read back, compare and sort like the others.
pub fn sql_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// The inverse of [`sql_time`].
pub fn from_sql_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
}

/// Column decoders for rows sqlx wrote: a UUID is its 16 bytes, a time RFC 3339
/// text ([`sql_time`]). Anything else is a decode error, never a default.
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
    use rusqlite::Connection;

    use super::*;

    /// One row of `sql` on a scratch connection, through `decode`.
    fn decode<T>(sql: &str, decode: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        Connection::open_in_memory().unwrap().query_row(sql, [], decode)
    }

    #[test]
    fn columns_decode_what_sqlx_writes_and_refuse_anything_else() {
        let id = Uuid::now_v7();
        let at = crate::db::now();
        let conn = Connection::open_in_memory().unwrap();
        let (got_id, got_at): (Uuid, DateTime<Utc>) = conn
            .query_row("SELECT ?1, ?2", rusqlite::params![id.as_bytes(), sql_time(at)], |r| {
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
