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

use std::sync::Arc;
use std::time::Duration;

use app::error::AppError;
use app::model::{Page, PageRequest, WalletEntry, WalletUpdate};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use entity::{ledger_entries, wallets};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use crate::db::{begin_write, internal, now};
use crate::events::{self, Event, EventBus};
use crate::spend::Alert;
pub(crate) use crate::spend::zone;
pub use crate::spend::{Reservation, Resolved, SPEND_CEILING_MICROS, windows};
use crate::store::CallStore;
use crate::store::orm::wallets::{WalletBatch, reserve_in, resolve_in, roll_windows};

/// A hold left behind by a crash is released after this long, unless configured
/// otherwise (`AEGIS_RESERVATION_TTL_SECS`).
pub const RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
pub struct WalletService {
    db: DatabaseConnection,
    /// [`Self::get`]: the proxy reads the wallet on every call.
    store: Arc<dyn CallStore>,
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

/// `limit = 0 OR spent + reserved + amount <= limit`
impl WalletService {
    /// `reservation_ttl`: how long a hold may stay unresolved before the janitor releases it.
    pub fn new(
        db: DatabaseConnection,
        store: Arc<dyn CallStore>,
        events: EventBus,
        reservation_ttl: Duration,
    ) -> Self {
        Self { db, store, events, reservation_ttl }
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
        let reservation =
            reserve_in(&txn, &mut batch, agent_id, request_id, amount, self.reservation_ttl).await?;
        match reservation {
            Reservation::Held => {
                batch.flush(&txn).await?;
                txn.commit().await.map_err(internal)?
            }
            Reservation::Refused { .. } => txn.rollback().await.map_err(internal)?,
        }
        Ok(reservation)
    }

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
            resolve_in(&txn, &mut WalletBatch::default(), request_id, status, actual).await?
        else {
            txn.rollback().await.map_err(internal)?;
            return Ok(false);
        };
        txn.commit().await.map_err(internal)?;
        self.announce(resolved).await;
        Ok(true)
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
    /// The agent's holds, newest first (ledger ids are UUIDv7: the last id of a
    /// page is the cursor for the next): held before each call against settled.
    pub async fn history(&self, agent_id: Uuid, page: PageRequest) -> Result<Page<WalletEntry>, AppError> {
        let (limit, before) = crate::paging::parse(&page)?;
        let mut query = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::AgentId.eq(agent_id))
            .order_by_desc(ledger_entries::Column::Id)
            .limit(u64::from(limit) + 1);
        if let Some(before) = before {
            query = query.filter(ledger_entries::Column::Id.lt(before));
        }
        let mut rows = query.all(&self.db).await.map_err(internal)?;
        let next_cursor = crate::paging::cut(&mut rows, limit, |r| r.id);
        let items = rows
            .into_iter()
            .map(|r| WalletEntry {
                request_id: r.request_id,
                status: r.status,
                held_micros: r.reserved_micros,
                settled_micros: r.settled_micros,
                created_at: r.created_at,
                resolved_at: r.resolved_at,
            })
            .collect();
        Ok(Page { items, next_cursor })
    }

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
        self.store.wallet(agent_id).await
    }
}

/// The wallet of a new agent: its limits, no spend, UTC windows from `at`. In the
/// caller's transaction (the agent's creation).
pub(crate) async fn insert_new(
    db: &impl ConnectionTrait,
    agent_id: Uuid,
    daily: i64,
    monthly: i64,
    at: DateTime<Utc>,
) -> Result<(), AppError> {
    let (day_window, month_window) = windows(at, Tz::UTC);
    wallets::ActiveModel {
        agent_id: Set(agent_id),
        daily_limit_micros: Set(daily),
        monthly_limit_micros: Set(monthly),
        daily_spent_micros: Set(0),
        monthly_spent_micros: Set(0),
        reserved_micros: Set(0),
        day_window: Set(day_window),
        month_window: Set(month_window),
        timezone: Set("UTC".into()),
        alert_threshold_pct: Set(None),
        alert_sent_day: Set(None),
        alert_sent_month: Set(None),
        updated_at: Set(at),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    Ok(())
}

/// Writes the wallet fields present in `update` (already validated) and notes
/// each in `changes`. A new time zone starts new windows at the next call.
pub(crate) async fn apply_update(
    db: &impl sea_orm::ConnectionTrait,
    id: Uuid,
    update: &WalletUpdate,
    changes: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), AppError> {
    let mut stmt = wallets::Entity::update_many().filter(wallets::Column::AgentId.eq(id));
    if let Some(daily) = update.daily_limit_micros {
        stmt = stmt.col_expr(wallets::Column::DailyLimitMicros, Expr::value(daily));
        changes.insert("daily_limit_micros".into(), daily.into());
    }
    if let Some(monthly) = update.monthly_limit_micros {
        stmt = stmt.col_expr(wallets::Column::MonthlyLimitMicros, Expr::value(monthly));
        changes.insert("monthly_limit_micros".into(), monthly.into());
    }
    if let Some(tz) = &update.timezone {
        stmt = stmt.col_expr(wallets::Column::Timezone, Expr::value(tz.clone()));
        changes.insert("timezone".into(), tz.clone().into());
    }
    if let Some(pct) = update.alert_threshold_pct {
        let pct = (pct > 0).then_some(pct);
        stmt = stmt.col_expr(wallets::Column::AlertThresholdPct, Expr::value(pct));
        changes.insert("alert_threshold_pct".into(), pct.into());
    }
    if !changes.is_empty() {
        stmt.exec(db).await.map_err(internal)?;
    }
    Ok(())
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
