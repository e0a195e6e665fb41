//! Wallets: exact, atomic spending limits in integer micro-units.
//!
//! Reserve-then-settle. Before a call the estimate is reserved with ONE conditional
//! UPDATE (`… WHERE spent + reserved + estimate <= limit`), so concurrent requests —
//! in one process or many sharing a database — can never overspend; there is no
//! read-check-write. After the call the reservation is settled at the actual cost,
//! or released. Settlement is idempotent per request id.
//!
//! Windows are calendar days and months in the wallet's time zone (IANA name,
//! default UTC). A wallet may set an alert threshold (a percentage of each limit):
//! the first settlement that crosses it in a window emits one `budget.alert` event,
//! claimed with a conditional UPDATE so replicas never announce it twice.

pub mod sqlite_batch;

use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use entity::{ledger_entries, wallets};
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect, Set,
};
use uuid::Uuid;

use crate::events::{self, Event, EventBus};
use crate::storage::sqlite_reads::SqliteReads;
use crate::storage::{begin_write, internal, now};

/// A hold left behind by a crash is released after this long, unless configured
/// otherwise (`AEGIS_RESERVATION_TTL_SECS`).
pub const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Held,
    /// Over a limit: what was left of each at the time.
    Refused {
        daily_remaining_micros: Option<i64>,
        monthly_remaining_micros: Option<i64>,
    },
}

#[derive(Clone)]
pub struct WalletService {
    db: DatabaseConnection,
    /// [`Self::get`] inline on a SQLite file (the proxy reads the wallet on every call).
    reads: Option<SqliteReads>,
    events: EventBus,
    reservation_ttl: Duration,
}

/// An IANA time zone name (`Europe/Paris`), or a 422 naming the field.
pub fn parse_timezone(name: &str) -> Result<Tz, AppError> {
    name.trim().parse::<Tz>().map_err(|_| {
        AppError::new(
            422,
            "invalid_timezone",
            format!("{name:?} is not an IANA time zone such as Europe/Paris"),
        )
    })
}

/// A stored zone; an unreadable one (never written by AEGIS) counts as UTC.
pub(crate) fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

/// The calendar windows spend is counted in, in `tz`.
pub fn windows(at: DateTime<Utc>, tz: Tz) -> (String, String) {
    let local = at.with_timezone(&tz);
    (local.format("%Y-%m-%d").to_string(), local.format("%Y-%m").to_string())
}

/// When the current day and month windows of `tz` end, as instants.
pub fn next_resets(at: DateTime<Utc>, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
    use chrono::{Datelike, NaiveDate, TimeZone};
    let today = at.with_timezone(&tz).date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    let (y, m) = if today.month() == 12 { (today.year() + 1, 1) } else { (today.year(), today.month() + 1) };
    let next_month = NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(tomorrow);
    // Local midnight; where a DST change skips it, the first instant of that day.
    let start = |d: NaiveDate| {
        (0..24)
            .find_map(|h| tz.from_local_datetime(&d.and_hms_opt(h, 0, 0)?).earliest())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(at)
    };
    (start(tomorrow), start(next_month))
}

/// What one write transaction of holds and settlements (the proxy's group commit
/// batch) has done so far: the windows already rolled over, by agent, so each
/// wallet's windows are read once, not once per write; and the new holds' ledger
/// rows, inserted together by [`Self::flush`] (one statement, not one per hold).
/// Only valid within that one transaction.
#[derive(Debug, Default)]
pub struct WalletBatch {
    rolled: std::collections::HashMap<Uuid, (String, String)>,
    holds: Vec<ledger_entries::ActiveModel>,
}

impl WalletBatch {
    async fn roll(
        &mut self,
        db: &impl ConnectionTrait,
        agent_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<(String, String), AppError> {
        if let Some(done) = self.rolled.get(&agent_id) {
            return Ok(done.clone());
        }
        let done = roll_windows(db, agent_id, at).await?;
        self.rolled.insert(agent_id, done.clone());
        Ok(done)
    }

    /// Inserts the held ledger rows. Before commit: a hold is its wallet's
    /// reservation plus this row. Nothing in the batch reads them before (a
    /// request's settlement always comes in a later batch than its hold).
    pub async fn flush(&mut self, db: &impl ConnectionTrait) -> Result<(), AppError> {
        let holds = std::mem::take(&mut self.holds);
        if !holds.is_empty() {
            ledger_entries::Entity::insert_many(holds).exec_without_returning(db).await.map_err(internal)?;
        }
        Ok(())
    }
}

/// Zeroes the spend of windows that have ended and returns the current (day,
/// month) windows in the wallet's time zone. Idempotent and safe to race.
async fn roll_windows(
    db: &impl ConnectionTrait,
    agent_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(String, String), AppError> {
    // One read; the conditional UPDATEs run only when a window has actually ended
    // (rarely: once a day), and stay safe to race when they do.
    let stored: Option<(String, String, String)> = wallets::Entity::find_by_id(agent_id)
        .select_only()
        .column(wallets::Column::Timezone)
        .column(wallets::Column::DayWindow)
        .column(wallets::Column::MonthWindow)
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)?;
    let Some((tz, stored_day, stored_month)) = stored else {
        return Ok(windows(at, Tz::UTC));
    };
    let (day, month) = windows(at, zone(&tz));
    if stored_day != day {
        wallets::Entity::update_many()
            .col_expr(wallets::Column::DailySpentMicros, Expr::value(0i64))
            .col_expr(wallets::Column::DayWindow, Expr::value(day.clone()))
            .filter(wallets::Column::AgentId.eq(agent_id))
            .filter(wallets::Column::DayWindow.ne(day.clone()))
            .exec(db)
            .await
            .map_err(internal)?;
    }
    if stored_month != month {
        wallets::Entity::update_many()
            .col_expr(wallets::Column::MonthlySpentMicros, Expr::value(0i64))
            .col_expr(wallets::Column::MonthWindow, Expr::value(month.clone()))
            .filter(wallets::Column::AgentId.eq(agent_id))
            .filter(wallets::Column::MonthWindow.ne(month.clone()))
            .exec(db)
            .await
            .map_err(internal)?;
    }
    Ok((day, month))
}

/// A hold resolved inside a transaction: the alerts it claimed are announced
/// ([`WalletService::announce`]) only once that transaction committed.
pub struct Resolved {
    agent_id: Uuid,
    alerts: Vec<Alert>,
}

impl Resolved {
    /// Whether [`WalletService::announce`] has anything to say.
    pub fn has_alerts(&self) -> bool {
        !self.alerts.is_empty()
    }
}

/// A threshold crossed for the first time in a window.
struct Alert {
    window: &'static str,
    period: String,
    spent_micros: i64,
    limit_micros: i64,
    threshold_pct: i32,
}

/// Claims the day and month alerts a settlement crossed (once per window).
async fn claim_alerts(db: &impl ConnectionTrait, agent_id: Uuid) -> Result<Vec<Alert>, AppError> {
    let Some(w) = wallets::Entity::find_by_id(agent_id).one(db).await.map_err(internal)? else {
        return Ok(Vec::new());
    };
    let mut alerts = Vec::new();
    for (alert, sent_col) in crossed_alerts(&w) {
        let claimed = wallets::Entity::update_many()
            .col_expr(sent_col, Expr::value(alert.period.clone()))
            .filter(wallets::Column::AgentId.eq(agent_id))
            .filter(Condition::any().add(sent_col.is_null()).add(sent_col.ne(alert.period.clone())))
            .exec(db)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if claimed {
            alerts.push(alert);
        }
    }
    Ok(alerts)
}

/// The windows whose spend has reached the wallet's alert threshold, each with the
/// column that records the window its alert was sent for (claimed by the caller).
fn crossed_alerts(w: &wallets::Model) -> Vec<(Alert, wallets::Column)> {
    let Some(pct) = w.alert_threshold_pct.filter(|p| *p > 0) else { return Vec::new() };
    let crossed =
        |spent: i64, limit: i64| limit > 0 && i128::from(spent) * 100 >= i128::from(limit) * i128::from(pct);
    [
        ("daily", w.daily_spent_micros, w.daily_limit_micros, &w.day_window, wallets::Column::AlertSentDay),
        (
            "monthly",
            w.monthly_spent_micros,
            w.monthly_limit_micros,
            &w.month_window,
            wallets::Column::AlertSentMonth,
        ),
    ]
    .into_iter()
    .filter(|(_, spent, limit, _, _)| crossed(*spent, *limit))
    .map(|(window, spent, limit, period, sent_col)| {
        let alert = Alert {
            window,
            period: period.clone(),
            spent_micros: spent,
            limit_micros: limit,
            threshold_pct: pct,
        };
        (alert, sent_col)
    })
    .collect()
}

/// A refused hold: what was left of each limit (nothing without a wallet).
fn refusal(wallet: Option<&wallets::Model>) -> Reservation {
    let remaining =
        |limit: i64, spent: i64, reserved: i64| (limit > 0).then(|| Ord::max(limit - spent - reserved, 0));
    match wallet {
        Some(w) => Reservation::Refused {
            daily_remaining_micros: remaining(w.daily_limit_micros, w.daily_spent_micros, w.reserved_micros),
            monthly_remaining_micros: remaining(
                w.monthly_limit_micros,
                w.monthly_spent_micros,
                w.reserved_micros,
            ),
        },
        None => Reservation::Refused { daily_remaining_micros: Some(0), monthly_remaining_micros: Some(0) },
    }
}

/// `limit = 0 OR spent + reserved + amount <= limit`
/// The most a wallet's spend counters and its reservations can hold: 10^18
/// micro-units (a trillion units). A wallet without limits that reaches it stays at
/// it (spend is recorded saturated, and the ledger keeps every charge exactly); a
/// hold that would take reservations past it is refused. Far below `i64::MAX`
/// (≈ 9.2 × 10^18), so `spent + reserved + amount` can never overflow in SQL, where
/// SQLite would turn an overflowing sum into a float and PostgreSQL would raise
/// (and the failed batch would be retried write by write, slowing every tenant).
pub const SPEND_CEILING_MICROS: i64 = 1_000_000_000_000_000_000;

/// `column + amount`, saturated at [`SPEND_CEILING_MICROS`], in portable SQL (no
/// intermediate value can overflow: the comparison subtracts from the ceiling).
fn saturating_add(column: wallets::Column, amount: i64) -> SimpleExpr {
    let amount = amount.clamp(0, SPEND_CEILING_MICROS);
    Expr::case(Expr::col(column).gt(SPEND_CEILING_MICROS - amount), Expr::value(SPEND_CEILING_MICROS))
        .finally(Expr::col(column).add(amount))
        .into()
}

/// The portable SQL of [`saturating_add`] for the writer thread's statements: `{col}`
/// saturated at the ceiling after adding `?{param}`.
pub(crate) fn saturating_add_sql(col: &str, param: &str) -> String {
    format!(
        "CASE WHEN {col} > {SPEND_CEILING_MICROS} - {param} THEN {SPEND_CEILING_MICROS} ELSE {col} + {param} END"
    )
}

fn within(limit: wallets::Column, spent: wallets::Column, amount: i64) -> Condition {
    Condition::any().add(Expr::col(limit).eq(0i64)).add(
        Expr::col(spent).add(Expr::col(wallets::Column::ReservedMicros)).add(amount).lte(Expr::col(limit)),
    )
}

impl WalletService {
    /// `reservation_ttl`: how long a hold may stay unresolved before the janitor releases it.
    pub fn new(
        db: DatabaseConnection,
        reads: Option<SqliteReads>,
        events: EventBus,
        reservation_ttl: Duration,
    ) -> Self {
        Self { db, reads, events, reservation_ttl }
    }

    /// How long a call may go unresolved before it is deemed dead (a crash).
    pub fn reservation_ttl(&self) -> Duration {
        self.reservation_ttl
    }

    /// Atomically holds `amount` for `request_id` if both limits allow it.
    pub async fn reserve(
        &self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        let txn = begin_write(&self.db).await?;
        let mut batch = WalletBatch::default();
        let reservation = self.reserve_in(&txn, &mut batch, agent_id, request_id, amount).await?;
        match reservation {
            Reservation::Held => {
                batch.flush(&txn).await?;
                txn.commit().await.map_err(internal)?
            }
            Reservation::Refused { .. } => txn.rollback().await.map_err(internal)?,
        }
        Ok(reservation)
    }

    /// [`Self::reserve`] inside the caller's write transaction, which commits it (the
    /// proxy's group commit puts the hold and its intent record in one transaction).
    /// The hold's ledger row waits in `batch`: [`WalletBatch::flush`] it before commit.
    /// A refusal changes nothing but the idempotent window roll-over.
    pub async fn reserve_in(
        &self,
        db: &impl ConnectionTrait,
        batch: &mut WalletBatch,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        let at = now();
        let (day, month) = batch.roll(db, agent_id, at).await?;
        let held = wallets::Entity::update_many()
            .col_expr(wallets::Column::ReservedMicros, Expr::col(wallets::Column::ReservedMicros).add(amount))
            .col_expr(wallets::Column::UpdatedAt, Expr::value(at))
            .filter(wallets::Column::AgentId.eq(agent_id))
            .filter(within(wallets::Column::DailyLimitMicros, wallets::Column::DailySpentMicros, amount))
            .filter(within(wallets::Column::MonthlyLimitMicros, wallets::Column::MonthlySpentMicros, amount))
            .filter(
                Expr::col(wallets::Column::ReservedMicros)
                    .lte(SPEND_CEILING_MICROS - amount.clamp(0, SPEND_CEILING_MICROS)),
            )
            .exec(db)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if !held {
            let wallet = wallets::Entity::find_by_id(agent_id).one(db).await.map_err(internal)?;
            return Ok(refusal(wallet.as_ref()));
        }
        batch.holds.push(ledger_entries::ActiveModel {
            id: Set(Uuid::now_v7()),
            agent_id: Set(agent_id),
            request_id: Set(request_id.to_owned()),
            status: Set("held".into()),
            reserved_micros: Set(amount),
            settled_micros: Set(None),
            day_window: Set(day),
            month_window: Set(month),
            created_at: Set(at),
            expires_at: Set(at + chrono::Duration::from_std(self.reservation_ttl).unwrap_or_default()),
            resolved_at: Set(None),
        });
        Ok(Reservation::Held)
    }

    /// Settles a hold at `actual` (charged even when above the estimate: the call
    /// happened). Returns false if it was already settled or released.
    pub async fn settle(&self, request_id: &str, actual: i64) -> Result<bool, AppError> {
        self.resolve(request_id, "settled", Some(actual)).await
    }

    /// Releases a hold without charging (the call failed or never happened).
    pub async fn release(&self, request_id: &str) -> Result<bool, AppError> {
        self.resolve(request_id, "released", None).await
    }

    async fn resolve(&self, request_id: &str, status: &str, actual: Option<i64>) -> Result<bool, AppError> {
        let txn = begin_write(&self.db).await?;
        let Some(resolved) =
            self.resolve_in(&txn, &mut WalletBatch::default(), request_id, status, actual).await?
        else {
            txn.rollback().await.map_err(internal)?;
            return Ok(false);
        };
        txn.commit().await.map_err(internal)?;
        self.announce(resolved).await;
        Ok(true)
    }

    /// Resolves a hold inside the caller's write transaction: `status` is `settled`
    /// (charging `actual`), `released` or `expired`. `None` if it was no longer held.
    /// Hand the result to [`Self::announce`] once the transaction committed.
    pub async fn resolve_in(
        &self,
        db: &impl ConnectionTrait,
        batch: &mut WalletBatch,
        request_id: &str,
        status: &str,
        actual: Option<i64>,
    ) -> Result<Option<Resolved>, AppError> {
        let at = now();
        // Claimed and read back in one statement (RETURNING).
        let claimed = ledger_entries::Entity::update_many()
            .col_expr(ledger_entries::Column::Status, Expr::value(status))
            .col_expr(ledger_entries::Column::SettledMicros, Expr::value(actual))
            .col_expr(ledger_entries::Column::ResolvedAt, Expr::value(at))
            .filter(ledger_entries::Column::RequestId.eq(request_id))
            .filter(ledger_entries::Column::Status.eq("held"))
            .exec_with_returning(db)
            .await
            .map_err(internal)?;
        let Some(entry) = claimed.into_iter().next() else {
            return Ok(None);
        };
        batch.roll(db, entry.agent_id, at).await?;
        let charged = actual.unwrap_or(0);
        wallets::Entity::update_many()
            .col_expr(
                wallets::Column::ReservedMicros,
                Expr::col(wallets::Column::ReservedMicros).sub(entry.reserved_micros),
            )
            .col_expr(
                wallets::Column::DailySpentMicros,
                saturating_add(wallets::Column::DailySpentMicros, charged),
            )
            .col_expr(
                wallets::Column::MonthlySpentMicros,
                saturating_add(wallets::Column::MonthlySpentMicros, charged),
            )
            .col_expr(wallets::Column::UpdatedAt, Expr::value(at))
            .filter(wallets::Column::AgentId.eq(entry.agent_id))
            .exec(db)
            .await
            .map_err(internal)?;
        let alerts = if charged > 0 { claim_alerts(db, entry.agent_id).await? } else { Vec::new() };
        Ok(Some(Resolved { agent_id: entry.agent_id, alerts }))
    }

    /// Publishes the budget alerts a committed resolution claimed.
    pub async fn announce(&self, resolved: Resolved) {
        self.announce_alerts(resolved.agent_id, resolved.alerts).await;
    }

    async fn announce_alerts(&self, agent_id: Uuid, alerts: Vec<Alert>) {
        if alerts.is_empty() {
            return;
        }
        let sponsor: Option<Uuid> = match entity::agents::Entity::find_by_id(agent_id)
            .select_only()
            .column(entity::agents::Column::SponsorId)
            .into_tuple()
            .one(&self.db)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(agent = %agent_id, error = %e, "could not announce a budget alert");
                return;
            }
        };
        let Some(sponsor) = sponsor else { return };
        for a in alerts {
            tracing::warn!(agent = %agent_id, window = a.window, spent = a.spent_micros, limit = a.limit_micros, "budget alert");
            self.events.publish(Event::new(
                events::BUDGET_ALERT,
                sponsor,
                Some(agent_id),
                serde_json::json!({"window": a.window, "period": a.period, "spent_micros": a.spent_micros,
                                   "limit_micros": a.limit_micros, "threshold_pct": a.threshold_pct}),
            ));
        }
    }

    /// Releases holds whose call never reported back (a crash mid-call).
    pub async fn release_expired(&self) -> Result<u64, AppError> {
        let expired = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::Status.eq("held"))
            .filter(ledger_entries::Column::ExpiresAt.lt(now()))
            .all(&self.db)
            .await
            .map_err(internal)?;
        let mut released = 0;
        for entry in expired {
            if self.resolve(&entry.request_id, "expired", None).await? {
                released += 1;
            }
        }
        Ok(released)
    }

    /// The wallet as sponsors see it, with the current windows rolled over first so
    /// yesterday's spend never shows as today's.
    pub async fn view(&self, agent_id: Uuid) -> Result<app::model::WalletView, AppError> {
        let at = now();
        roll_windows(&self.db, agent_id, at).await?;
        let w = self.get(agent_id).await?.ok_or_else(|| AppError::not_found("wallet"))?;
        let (daily_resets_at, monthly_resets_at) = next_resets(at, zone(&w.timezone));
        Ok(app::model::WalletView {
            agent_id,
            daily_limit_micros: w.daily_limit_micros,
            monthly_limit_micros: w.monthly_limit_micros,
            daily_spent_micros: w.daily_spent_micros,
            monthly_spent_micros: w.monthly_spent_micros,
            reserved_micros: w.reserved_micros,
            alert_threshold_pct: w.alert_threshold_pct,
            timezone: w.timezone,
            daily_resets_at,
            monthly_resets_at,
        })
    }

    pub async fn get(&self, agent_id: Uuid) -> Result<Option<wallets::Model>, AppError> {
        if let Some(reads) = &self.reads {
            return reads.read(|conn| sqlite_batch::wallet(conn, agent_id));
        }
        wallets::Entity::find_by_id(agent_id).one(&self.db).await.map_err(internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn windows_reset_at_the_next_utc_midnight_and_month_start() {
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        let (day, month) = next_resets(at, Tz::UTC);
        assert_eq!(day, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (day, month) = next_resets(Utc.with_ymd_and_hms(2028, 2, 28, 12, 0, 0).unwrap(), Tz::UTC);
        assert_eq!(day, Utc.with_ymd_and_hms(2028, 2, 29, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2028, 3, 1, 0, 0, 0).unwrap());
        assert_eq!(windows(at, Tz::UTC), ("2026-12-31".to_owned(), "2026-12".to_owned()));
    }

    #[test]
    fn windows_follow_the_wallets_time_zone() {
        let tokyo: Tz = parse_timezone("Asia/Tokyo").unwrap();
        // 2026-12-31 20:00 UTC is already 2027-01-01 05:00 in Tokyo.
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 20, 0, 0).unwrap();
        assert_eq!(windows(at, tokyo), ("2027-01-01".to_owned(), "2027-01".to_owned()));
        let (day, month) = next_resets(at, tokyo);
        assert_eq!(day, Utc.with_ymd_and_hms(2027, 1, 1, 15, 0, 0).unwrap(), "Tokyo midnight is 15:00 UTC");
        assert_eq!(month, Utc.with_ymd_and_hms(2027, 1, 31, 15, 0, 0).unwrap());
        // New York, the night clocks go forward (2026-03-08): midnight still exists, 24 h later is 23 h.
        let ny: Tz = parse_timezone("America/New_York").unwrap();
        let (day, _) = next_resets(Utc.with_ymd_and_hms(2026, 3, 8, 12, 0, 0).unwrap(), ny);
        assert_eq!(day, Utc.with_ymd_and_hms(2026, 3, 9, 4, 0, 0).unwrap(), "EDT midnight is 04:00 UTC");
        // Santiago skips midnight on its DST day (2026-09-06): the day starts at 01:00.
        let scl: Tz = parse_timezone("America/Santiago").unwrap();
        let (day, _) = next_resets(Utc.with_ymd_and_hms(2026, 9, 5, 12, 0, 0).unwrap(), scl);
        assert_eq!(day.with_timezone(&scl).format("%Y-%m-%d %H:%M").to_string(), "2026-09-06 01:00");
        assert_eq!(parse_timezone("Mars/Olympus").unwrap_err().code, "invalid_timezone");
    }
}
