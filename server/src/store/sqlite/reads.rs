//! The hot path's point reads on a SQLite file, run inline on the calling thread
//! over connections of their own: the statements, their row decoders, and the
//! connections they run on.
//!
//! A read through sqlx's pool is a hand-off to the connection's worker thread and
//! back — two thread wake-ups, tens to hundreds of µs on a loaded two-core box —
//! for a lookup SQLite answers from its page cache in a few µs. The proxy makes
//! four such reads per call (the agent's key, its wallet, its policy's current
//! version, the granted secret), so on a SQLite file they run here instead. Each
//! statement reads the latest committed state (WAL: a reader never waits for the
//! writer), exactly as the pool's read would.
//!
//! Each statement reads exactly what [`crate::store::orm`]'s sea-orm query reads;
//! the conformance suite (`server/tests/api/store.rs`) holds the two to it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use app::error::AppError;
use entity::{agent_keys, agents, connections, secrets};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use super::columns::{Columns, internal as sqlite_internal};
use crate::metrics::Metrics;

/// A reader waits at most this long for SQLite's locks (WAL readers only wait
/// while a crashed writer's log is being recovered).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept; more may be open while many readers overlap.
const IDLE_LIMIT: usize = 8;

/// Inline read connections on one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct ReadPool(Arc<Inner>);

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    metrics: Arc<Metrics>,
}

impl ReadPool {
    pub fn new(path: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner { path, idle: Mutex::default(), metrics }))
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

/// The unrevoked key with this id and its agent ([`crate::store::CallStore::live_key`]).
pub(super) const LIVE_KEY_SQL: &str = "SELECT k.id, k.agent_id, k.key_id, k.key_hash, k.created_at, k.revoked_at, k.last_used_at, \
     a.id, a.sponsor_id, a.name, a.description, a.status, a.policy_id, a.trust_score, a.tags, \
     a.created_at, a.updated_at, a.suspended_at, a.suspended_reason, a.deleted_at, a.last_seen_at, a.rate_limits \
     FROM agent_keys k LEFT JOIN agents a ON a.id = k.agent_id \
     WHERE k.key_id = ?1 AND k.revoked_at IS NULL LIMIT 1";

pub(super) fn key_and_agent(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(agent_keys::Model, Option<agents::Model>)> {
    let key = agent_keys::Model {
        id: r.uuid(0)?,
        agent_id: r.uuid(1)?,
        key_id: r.get(2)?,
        key_hash: r.get(3)?,
        created_at: r.time(4)?,
        revoked_at: r.opt_time(5)?,
        last_used_at: r.opt_time(6)?,
    };
    let agent = match r.get_ref(7)? {
        rusqlite::types::ValueRef::Null => None,
        _ => Some(agents::Model {
            id: r.uuid(7)?,
            sponsor_id: r.uuid(8)?,
            name: r.get(9)?,
            description: r.get(10)?,
            status: r.get(11)?,
            policy_id: r.opt_uuid(12)?,
            trust_score: r.get(13)?,
            tags: r.get(14)?,
            created_at: r.time(15)?,
            updated_at: r.time(16)?,
            suspended_at: r.opt_time(17)?,
            suspended_reason: r.get(18)?,
            deleted_at: r.opt_time(19)?,
            last_seen_at: r.opt_time(20)?,
            rate_limits: r.get(21)?,
        }),
    };
    Ok((key, agent))
}

/// The sponsor's secret of this name if granted to the agent.
pub(super) const GRANTED_SQL: &str = "SELECT s.id, s.sponsor_id, s.name, s.ciphertext, s.nonce, s.allowed_hosts, s.inject_header, \
     s.inject_format, s.inject_query_param, s.created_at, s.updated_at, s.rotated_at \
     FROM secrets s JOIN secret_grants g ON g.secret_id = s.id \
     WHERE s.sponsor_id = ?1 AND s.name = ?2 AND g.agent_id = ?3 LIMIT 1";

pub(super) fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<secrets::Model> {
    Ok(secrets::Model {
        id: r.uuid(0)?,
        sponsor_id: r.uuid(1)?,
        name: r.get(2)?,
        ciphertext: r.get(3)?,
        nonce: r.get(4)?,
        allowed_hosts: r.get(5)?,
        inject_header: r.get(6)?,
        inject_format: r.get(7)?,
        inject_query_param: r.get(8)?,
        created_at: r.time(9)?,
        updated_at: r.time(10)?,
        rotated_at: r.opt_time(11)?,
    })
}

/// The sponsor's connection of this name and the name of its secret, if any.
pub(super) const BY_NAME_SQL: &str = "SELECT c.id, c.sponsor_id, c.name, c.base_url, c.secret_id, c.cost_micros, c.created_at, \
     c.updated_at, s.name, c.pricing, c.rate_limits, c.kind, c.mcp_tools, c.record_arguments FROM connections c LEFT JOIN secrets s ON s.id = c.secret_id \
     WHERE c.sponsor_id = ?1 AND c.name = ?2 LIMIT 1";

/// The sponsor's connections as metering matches targets against them.
pub(super) const ROUTES_SQL: &str = "SELECT name, base_url, cost_micros, pricing, rate_limits, kind FROM connections WHERE sponsor_id = ?1 ORDER BY name";

pub(super) fn connection_and_secret(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(connections::Model, Option<String>)> {
    let connection = connections::Model {
        id: r.uuid(0)?,
        sponsor_id: r.uuid(1)?,
        name: r.get(2)?,
        base_url: r.get(3)?,
        secret_id: r.opt_uuid(4)?,
        cost_micros: r.get(5)?,
        created_at: r.time(6)?,
        updated_at: r.time(7)?,
        pricing: r.get(9)?,
        rate_limits: r.get(10)?,
        kind: r.get(11)?,
        mcp_tools: r.get(12)?,
        record_arguments: r.get(13)?,
    };
    Ok((connection, r.get(8)?))
}

/// A policy's current version number.
pub(super) const CURRENT_VERSION_SQL: &str = "SELECT current_version FROM policies WHERE id = ?1";

/// One [`crate::store::Route`] of [`ROUTES_SQL`].
pub(super) fn route(r: &rusqlite::Row<'_>) -> rusqlite::Result<crate::store::Route> {
    Ok(crate::store::Route {
        name: r.get(0)?,
        base_url: r.get(1)?,
        cost_micros: r.get(2)?,
        pricing: r.get(3)?,
        rate_limits: r.get(4)?,
        mcp: r.get::<_, String>(5)? == crate::call::mcp::KIND_MCP,
    })
}
