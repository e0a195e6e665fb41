//! The wallet writes of a group-commit batch on SQLite, as prepared statements on
//! the writer thread's own connection: the hot path's holds and settlements
//! without a hop to a pool worker per statement.
//!
//! The SQL does what [`crate::store::orm::wallets::reserve_in`] and
//! [`crate::store::orm::wallets::resolve_in`] do (which PostgreSQL, and every
//! other wallet write, use): one conditional UPDATE per hold, so a hold is exact; a settlement
//! claimed with `UPDATE … RETURNING`; alerts claimed once per window. The
//! decisions built from what they read ([`crate::spend::refusal`],
//! [`crate::spend::crossed_alerts`]) are shared. The API suite runs on both backends.

use std::collections::HashMap;
use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::wallets;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use sea_orm::IdenStatic;
use uuid::Uuid;

use super::columns::Columns;
use super::columns::{internal, sql_time};
use crate::db::now;
use crate::spend::{
    Alert, Reservation, Resolved, SPEND_CEILING_MICROS, crossed_alerts, refusal, saturating_add_sql, windows,
    zone,
};

/// A hold: within both limits, and reservations stay under the spend ceiling
/// (`SPEND_CEILING_MICROS`), so no sum here can overflow.
static HOLD_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE wallets SET reserved_micros = reserved_micros + ?1, updated_at = ?2 WHERE agent_id = ?3 \
         AND (daily_limit_micros = 0 OR daily_spent_micros + reserved_micros + ?1 <= daily_limit_micros) \
         AND (monthly_limit_micros = 0 OR monthly_spent_micros + reserved_micros + ?1 <= monthly_limit_micros) \
         AND reserved_micros <= {} - ?1",
        SPEND_CEILING_MICROS
    )
});

/// A settlement: spend saturates at the ceiling instead of overflowing.
static SETTLE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "UPDATE wallets SET reserved_micros = reserved_micros - ?1, daily_spent_micros = {}, \
         monthly_spent_micros = {}, updated_at = ?3 WHERE agent_id = ?4",
        saturating_add_sql("daily_spent_micros", "?2"),
        saturating_add_sql("monthly_spent_micros", "?2"),
    )
});

/// The windows a batch has already rolled over, by agent (read once per batch).
#[derive(Default)]
pub struct Rolled(HashMap<Uuid, (String, String)>);

impl Rolled {
    /// Zeroes the spend of windows that have ended; the current (day, month).
    fn roll(
        &mut self,
        tx: &Transaction,
        agent_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(String, String), AppError> {
        if let Some(done) = self.0.get(&agent_id) {
            return Ok(done.clone());
        }
        let stored: Option<(String, String, String)> = tx
            .prepare_cached("SELECT timezone, day_window, month_window FROM wallets WHERE agent_id = ?1")
            .and_then(|mut s| {
                s.query_row([agent_id.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
            })
            .map_err(internal)?;
        let done = match stored {
            None => windows(at, chrono_tz::Tz::UTC),
            Some((tz, stored_day, stored_month)) => {
                let (day, month) = windows(at, zone(&tz));
                if stored_day != day {
                    tx.prepare_cached(
                        "UPDATE wallets SET daily_spent_micros = 0, day_window = ?1 WHERE agent_id = ?2 AND day_window <> ?1",
                    )
                    .and_then(|mut s| s.execute(params![day, agent_id.as_bytes()]))
                    .map_err(internal)?;
                }
                if stored_month != month {
                    tx.prepare_cached(
                        "UPDATE wallets SET monthly_spent_micros = 0, month_window = ?1 WHERE agent_id = ?2 AND month_window <> ?1",
                    )
                    .and_then(|mut s| s.execute(params![month, agent_id.as_bytes()]))
                    .map_err(internal)?;
                }
                (day, month)
            }
        };
        self.0.insert(agent_id, done.clone());
        Ok(done)
    }
}

/// Holds `amount` for `request_id` if both limits allow it (with its ledger row).
pub fn reserve(
    tx: &Transaction,
    rolled: &mut Rolled,
    agent_id: Uuid,
    request_id: &str,
    amount: i64,
    reservation_ttl: Duration,
) -> Result<Reservation, AppError> {
    let at = now();
    let (day, month) = rolled.roll(tx, agent_id, at)?;
    let held = tx
        .prepare_cached(&HOLD_SQL)
        .and_then(|mut s| s.execute(params![amount, sql_time(at), agent_id.as_bytes()]))
        .map_err(internal)?
        == 1;
    if !held {
        return Ok(refusal(wallet(tx, agent_id)?.as_ref()));
    }
    let expires_at = at + chrono::Duration::from_std(reservation_ttl).unwrap_or_default();
    tx.prepare_cached(
        "INSERT INTO ledger_entries (id, agent_id, request_id, status, reserved_micros, settled_micros, \
         day_window, month_window, created_at, expires_at, resolved_at) \
         VALUES (?1, ?2, ?3, 'held', ?4, NULL, ?5, ?6, ?7, ?8, NULL)",
    )
    .and_then(|mut s| {
        s.execute(params![
            Uuid::now_v7().as_bytes(),
            agent_id.as_bytes(),
            request_id,
            amount,
            day,
            month,
            sql_time(at),
            sql_time(expires_at)
        ])
    })
    .map_err(internal)?;
    Ok(Reservation::Held)
}

/// Resolves the hold of `request_id`: `settled` at `actual`, or `released`.
/// `None` if it was no longer held.
pub fn resolve(
    tx: &Transaction,
    rolled: &mut Rolled,
    request_id: &str,
    status: &str,
    actual: Option<i64>,
) -> Result<Option<Resolved>, AppError> {
    let at = now();
    let claimed: Option<(Uuid, i64)> = tx
        .prepare_cached(
            "UPDATE ledger_entries SET status = ?1, settled_micros = ?2, resolved_at = ?3 \
             WHERE request_id = ?4 AND status = 'held' RETURNING agent_id, reserved_micros",
        )
        .and_then(|mut s| {
            s.query_row(params![status, actual, sql_time(at), request_id], |r| Ok((r.uuid(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(internal)?;
    let Some((agent_id, reserved)) = claimed else { return Ok(None) };
    rolled.roll(tx, agent_id, at)?;
    let charged = actual.unwrap_or(0);
    tx.prepare_cached(&SETTLE_SQL)
        .and_then(|mut s| s.execute(params![reserved, charged, sql_time(at), agent_id.as_bytes()]))
        .map_err(internal)?;
    let alerts = if charged > 0 { claim_alerts(tx, agent_id)? } else { Vec::new() };
    Ok(Some(Resolved { agent_id, alerts }))
}

fn claim_alerts(tx: &Transaction, agent_id: Uuid) -> Result<Vec<Alert>, AppError> {
    let Some(w) = wallet(tx, agent_id)? else { return Ok(Vec::new()) };
    let mut alerts = Vec::new();
    for (alert, sent_col) in crossed_alerts(&w) {
        let col = sent_col.as_str();
        let claimed = tx
            .prepare_cached(&format!(
                "UPDATE wallets SET {col} = ?1 WHERE agent_id = ?2 AND ({col} IS NULL OR {col} <> ?1)"
            ))
            .and_then(|mut s| s.execute(params![alert.period, agent_id.as_bytes()]))
            .map_err(internal)?
            == 1;
        if claimed {
            alerts.push(alert);
        }
    }
    Ok(alerts)
}

/// The wallet row: the hot path's wallet read, and what a refusal or an alert is computed from.
pub fn wallet(conn: &Connection, agent_id: Uuid) -> Result<Option<wallets::Model>, AppError> {
    conn.prepare_cached(
        "SELECT daily_limit_micros, monthly_limit_micros, daily_spent_micros, monthly_spent_micros, reserved_micros, \
         day_window, month_window, timezone, alert_threshold_pct, alert_sent_day, alert_sent_month, updated_at \
         FROM wallets WHERE agent_id = ?1",
    )
    .and_then(|mut s| s.query_row([agent_id.as_bytes()], |r| wallet_row(agent_id, r)).optional())
    .map_err(internal)
}

fn wallet_row(agent_id: Uuid, r: &Row) -> rusqlite::Result<wallets::Model> {
    Ok(wallets::Model {
        agent_id,
        daily_limit_micros: r.get(0)?,
        monthly_limit_micros: r.get(1)?,
        daily_spent_micros: r.get(2)?,
        monthly_spent_micros: r.get(3)?,
        reserved_micros: r.get(4)?,
        day_window: r.get(5)?,
        month_window: r.get(6)?,
        timezone: r.get(7)?,
        alert_threshold_pct: r.get(8)?,
        alert_sent_day: r.get(9)?,
        alert_sent_month: r.get(10)?,
        // A time that does not parse is a decode error like any other, never a default.
        updated_at: r.time(11)?,
    })
}
