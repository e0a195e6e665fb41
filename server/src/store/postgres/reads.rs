//! The hot path's point reads on PostgreSQL: one statement each, prepared once per
//! pool connection (sqlx caches statements by their text) and decoded by hand —
//! no query building and no ORM model conversion on the path. Each reads exactly
//! what [`crate::store::orm`]'s sea-orm query reads; the conformance suite
//! (`server/tests/api/store.rs`) holds them to it.

use app::error::AppError;
use entity::{agent_keys, agents, connections, secrets, wallets};
use sea_orm::sqlx::postgres::PgRow;
use sea_orm::sqlx::{self, Row};

/// A decode or database error: logged, answered as an internal error.
pub(super) fn internal(e: sqlx::Error) -> AppError {
    tracing::error!(error = %e, "postgres hot-path statement failed");
    AppError::internal()
}

/// The unrevoked key with this id and its agent ([`crate::store::CallStore::live_key`]).
pub(super) const LIVE_KEY_SQL: &str = "SELECT k.id, k.agent_id, k.key_id, k.key_hash, k.created_at, k.revoked_at, k.last_used_at, \
     a.id, a.sponsor_id, a.name, a.description, a.status, a.policy_id, a.trust_score, a.tags, \
     a.created_at, a.updated_at, a.suspended_at, a.suspended_reason, a.deleted_at, a.last_seen_at, a.rate_limits \
     FROM agent_keys k LEFT JOIN agents a ON a.id = k.agent_id \
     WHERE k.key_id = $1 AND k.revoked_at IS NULL LIMIT 1";

pub(super) fn key_and_agent(r: &PgRow) -> sqlx::Result<(agent_keys::Model, Option<agents::Model>)> {
    let key = agent_keys::Model {
        id: r.try_get(0)?,
        agent_id: r.try_get(1)?,
        key_id: r.try_get(2)?,
        key_hash: r.try_get(3)?,
        created_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        last_used_at: r.try_get(6)?,
    };
    let agent = match r.try_get::<Option<uuid::Uuid>, _>(7)? {
        None => None,
        Some(id) => Some(agents::Model {
            id,
            sponsor_id: r.try_get(8)?,
            name: r.try_get(9)?,
            description: r.try_get(10)?,
            status: r.try_get(11)?,
            policy_id: r.try_get(12)?,
            trust_score: r.try_get(13)?,
            tags: r.try_get(14)?,
            created_at: r.try_get(15)?,
            updated_at: r.try_get(16)?,
            suspended_at: r.try_get(17)?,
            suspended_reason: r.try_get(18)?,
            deleted_at: r.try_get(19)?,
            last_seen_at: r.try_get(20)?,
            rate_limits: r.try_get(21)?,
        }),
    };
    Ok((key, agent))
}

/// The sponsor's secret of this name if granted to the agent.
pub(super) const GRANTED_SQL: &str = "SELECT s.id, s.sponsor_id, s.name, s.ciphertext, s.nonce, s.allowed_hosts, s.inject_header, \
     s.inject_format, s.inject_query_param, s.created_at, s.updated_at, s.rotated_at \
     FROM secrets s JOIN secret_grants g ON g.secret_id = s.id \
     WHERE s.sponsor_id = $1 AND s.name = $2 AND g.agent_id = $3 LIMIT 1";

pub(super) fn secret_row(r: &PgRow) -> sqlx::Result<secrets::Model> {
    secret_at(r, 0)
}

/// A secret's columns from `at` on (in [`GRANTED_SQL`]'s order).
fn secret_at(r: &PgRow, at: usize) -> sqlx::Result<secrets::Model> {
    Ok(secrets::Model {
        id: r.try_get(at)?,
        sponsor_id: r.try_get(at + 1)?,
        name: r.try_get(at + 2)?,
        ciphertext: r.try_get(at + 3)?,
        nonce: r.try_get(at + 4)?,
        allowed_hosts: r.try_get(at + 5)?,
        inject_header: r.try_get(at + 6)?,
        inject_format: r.try_get(at + 7)?,
        inject_query_param: r.try_get(at + 8)?,
        created_at: r.try_get(at + 9)?,
        updated_at: r.try_get(at + 10)?,
        rotated_at: r.try_get(at + 11)?,
    })
}

/// The sponsor's connection of this name and the name of its secret, if any.
pub(super) const BY_NAME_SQL: &str = "SELECT c.id, c.sponsor_id, c.name, c.base_url, c.secret_id, c.cost_micros, c.created_at, \
     c.updated_at, s.name, c.pricing, c.rate_limits, c.kind, c.mcp_tools, c.record_arguments FROM connections c LEFT JOIN secrets s ON s.id = c.secret_id \
     WHERE c.sponsor_id = $1 AND c.name = $2 LIMIT 1";

/// The sponsor's connections as metering matches targets against them.
pub(super) const ROUTES_SQL: &str = "SELECT name, base_url, cost_micros, pricing, rate_limits, kind FROM connections WHERE sponsor_id = $1 ORDER BY name";

pub(super) fn connection_and_secret(r: &PgRow) -> sqlx::Result<(connections::Model, Option<String>)> {
    let connection = connections::Model {
        id: r.try_get(0)?,
        sponsor_id: r.try_get(1)?,
        name: r.try_get(2)?,
        base_url: r.try_get(3)?,
        secret_id: r.try_get(4)?,
        cost_micros: r.try_get(5)?,
        created_at: r.try_get(6)?,
        updated_at: r.try_get(7)?,
        pricing: r.try_get(9)?,
        rate_limits: r.try_get(10)?,
        kind: r.try_get(11)?,
        mcp_tools: r.try_get(12)?,
        record_arguments: r.try_get(13)?,
    };
    Ok((connection, r.try_get(8)?))
}

/// A policy's current version number.
pub(super) const CURRENT_VERSION_SQL: &str = "SELECT current_version FROM policies WHERE id = $1";

/// Every column of a wallet row, in [`wallet_row`]'s order (a macro, so the
/// statements that use it stay `&'static str`).
macro_rules! wallet_columns {
    () => {
        "agent_id, daily_limit_micros, monthly_limit_micros, daily_spent_micros, monthly_spent_micros, \
         reserved_micros, day_window, month_window, timezone, alert_threshold_pct, alert_sent_day, \
         alert_sent_month, updated_at"
    };
}
pub(super) use wallet_columns;

/// The hot path's wallet read.
pub(super) const WALLET_SQL: &str =
    concat!("SELECT ", wallet_columns!(), " FROM wallets WHERE agent_id = $1");

pub(super) fn wallet_row(r: &PgRow) -> sqlx::Result<wallets::Model> {
    wallet_at(r, 0)
}

/// A wallet's columns from `at` on (in [`wallet_columns`]'s order).
fn wallet_at(r: &PgRow, at: usize) -> sqlx::Result<wallets::Model> {
    Ok(wallets::Model {
        agent_id: r.try_get(at)?,
        daily_limit_micros: r.try_get(at + 1)?,
        monthly_limit_micros: r.try_get(at + 2)?,
        daily_spent_micros: r.try_get(at + 3)?,
        monthly_spent_micros: r.try_get(at + 4)?,
        reserved_micros: r.try_get(at + 5)?,
        day_window: r.try_get(at + 6)?,
        month_window: r.try_get(at + 7)?,
        timezone: r.try_get(at + 8)?,
        alert_threshold_pct: r.try_get(at + 9)?,
        alert_sent_day: r.try_get(at + 10)?,
        alert_sent_month: r.try_get(at + 11)?,
        updated_at: r.try_get(at + 12)?,
    })
}

/// [`crate::store::CallStore::call_rows`] as one statement: the wallet (13
/// columns, all NULL without one), the policy's current version, the granted
/// secret (12 columns, all NULL without one). `$4` NULL asks for no secret.
pub(super) const CALL_ROWS_SQL: &str = concat!(
    "SELECT w.agent_id, w.daily_limit_micros, w.monthly_limit_micros, w.daily_spent_micros, ",
    "w.monthly_spent_micros, w.reserved_micros, w.day_window, w.month_window, w.timezone, ",
    "w.alert_threshold_pct, w.alert_sent_day, w.alert_sent_month, w.updated_at, ",
    "(SELECT current_version FROM policies WHERE id = $2), ",
    "s.id, s.sponsor_id, s.name, s.ciphertext, s.nonce, s.allowed_hosts, s.inject_header, ",
    "s.inject_format, s.inject_query_param, s.created_at, s.updated_at, s.rotated_at, ",
    "(SELECT json_agg(json_build_array(c.name, c.base_url, c.cost_micros, c.pricing, c.rate_limits, c.kind) ORDER BY c.name)::text ",
    "FROM connections c WHERE c.sponsor_id = $3) ",
    "FROM (SELECT 1) AS one ",
    "LEFT JOIN wallets w ON w.agent_id = $1 ",
    "LEFT JOIN LATERAL (SELECT s.* FROM secrets s JOIN secret_grants g ON g.secret_id = s.id ",
    "WHERE s.sponsor_id = $3 AND s.name = $4 AND g.agent_id = $1 LIMIT 1) s ON true"
);

pub(super) fn call_rows(r: &PgRow) -> sqlx::Result<crate::store::CallRows> {
    let wallet = match r.try_get::<Option<uuid::Uuid>, _>(0)? {
        Some(_) => Some(wallet_at(r, 0)?),
        None => None,
    };
    let granted_secret = match r.try_get::<Option<uuid::Uuid>, _>(14)? {
        Some(_) => Some(secret_at(r, 14)?),
        None => None,
    };
    // The connections as one JSON array of [name, base_url, cost_micros, pricing, rate_limits, kind].
    type RouteRow = (String, String, i64, Option<String>, Option<String>, String);
    let routes = match r.try_get::<Option<String>, _>(26)? {
        Some(text) => serde_json::from_str::<Vec<RouteRow>>(&text)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
            .into_iter()
            .map(|(name, base_url, cost_micros, pricing, rate_limits, kind)| crate::store::Route {
                name,
                base_url,
                cost_micros,
                pricing,
                rate_limits,
                mcp: kind == crate::call::mcp::KIND_MCP,
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(crate::store::CallRows { wallet, policy_version: r.try_get(13)?, granted_secret, routes })
}

/// One [`crate::store::Route`] of [`ROUTES_SQL`].
pub(super) fn route(r: &PgRow) -> sqlx::Result<crate::store::Route> {
    Ok(crate::store::Route {
        name: r.try_get(0)?,
        base_url: r.try_get(1)?,
        cost_micros: r.try_get(2)?,
        pricing: r.try_get(3)?,
        rate_limits: r.try_get(4)?,
        mcp: r.try_get::<String, _>(5)? == crate::call::mcp::KIND_MCP,
    })
}
