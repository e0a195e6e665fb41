//! Wallets: exact, atomic spending limits in integer micro-units.
//!
//! Reserve-then-settle. Before a call the estimate is reserved with ONE conditional
//! UPDATE (`… WHERE spent + reserved + estimate <= limit`), so concurrent requests —
//! in one process or many sharing a database — can never overspend; there is no
//! read-check-write. After the call the reservation is settled at the actual cost,
//! or released. Settlement is idempotent per request id.

use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::{ledger_entries, wallets};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    Set, TransactionTrait,
};
use uuid::Uuid;

use crate::storage::{internal, now};

/// A hold left behind by a crash is released after this long.
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
}

/// The calendar windows (UTC) spend is counted in.
pub fn windows(at: DateTime<Utc>) -> (String, String) {
    (at.format("%Y-%m-%d").to_string(), at.format("%Y-%m").to_string())
}

/// When the current day and month windows (UTC) end.
pub fn next_resets(at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    use chrono::{Datelike, NaiveDate, TimeZone};
    let today = at.date_naive();
    let tomorrow = today.succ_opt().unwrap_or(today);
    let (y, m) = if today.month() == 12 { (today.year() + 1, 1) } else { (today.year(), today.month() + 1) };
    let next_month = NaiveDate::from_ymd_opt(y, m, 1).unwrap_or(tomorrow);
    let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default());
    (midnight(tomorrow), midnight(next_month))
}

/// Zeroes the spend of windows that have ended. Idempotent and safe to race.
async fn roll_windows(db: &impl ConnectionTrait, agent_id: Uuid, at: DateTime<Utc>) -> Result<(), AppError> {
    let (day, month) = windows(at);
    wallets::Entity::update_many()
        .col_expr(wallets::Column::DailySpentMicros, Expr::value(0i64))
        .col_expr(wallets::Column::DayWindow, Expr::value(day.clone()))
        .filter(wallets::Column::AgentId.eq(agent_id))
        .filter(wallets::Column::DayWindow.ne(day))
        .exec(db)
        .await
        .map_err(internal)?;
    wallets::Entity::update_many()
        .col_expr(wallets::Column::MonthlySpentMicros, Expr::value(0i64))
        .col_expr(wallets::Column::MonthWindow, Expr::value(month.clone()))
        .filter(wallets::Column::AgentId.eq(agent_id))
        .filter(wallets::Column::MonthWindow.ne(month))
        .exec(db)
        .await
        .map_err(internal)?;
    Ok(())
}

/// `limit = 0 OR spent + reserved + amount <= limit`
fn within(limit: wallets::Column, spent: wallets::Column, amount: i64) -> Condition {
    Condition::any().add(Expr::col(limit).eq(0i64)).add(
        Expr::col(spent).add(Expr::col(wallets::Column::ReservedMicros)).add(amount).lte(Expr::col(limit)),
    )
}

impl WalletService {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Atomically holds `amount` for `request_id` if both limits allow it.
    pub async fn reserve(
        &self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        let at = now();
        let txn = self.db.begin().await.map_err(internal)?;
        roll_windows(&txn, agent_id, at).await?;
        let held = wallets::Entity::update_many()
            .col_expr(wallets::Column::ReservedMicros, Expr::col(wallets::Column::ReservedMicros).add(amount))
            .col_expr(wallets::Column::UpdatedAt, Expr::value(at))
            .filter(wallets::Column::AgentId.eq(agent_id))
            .filter(within(wallets::Column::DailyLimitMicros, wallets::Column::DailySpentMicros, amount))
            .filter(within(wallets::Column::MonthlyLimitMicros, wallets::Column::MonthlySpentMicros, amount))
            .exec(&txn)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if !held {
            let wallet = wallets::Entity::find_by_id(agent_id).one(&txn).await.map_err(internal)?;
            txn.rollback().await.map_err(internal)?;
            let remaining = |limit: i64, spent: i64, reserved: i64| {
                (limit > 0).then(|| Ord::max(limit - spent - reserved, 0))
            };
            return Ok(match wallet {
                Some(w) => Reservation::Refused {
                    daily_remaining_micros: remaining(
                        w.daily_limit_micros,
                        w.daily_spent_micros,
                        w.reserved_micros,
                    ),
                    monthly_remaining_micros: remaining(
                        w.monthly_limit_micros,
                        w.monthly_spent_micros,
                        w.reserved_micros,
                    ),
                },
                None => Reservation::Refused {
                    daily_remaining_micros: Some(0),
                    monthly_remaining_micros: Some(0),
                },
            });
        }
        let (day, month) = windows(at);
        ledger_entries::ActiveModel {
            id: Set(Uuid::now_v7()),
            agent_id: Set(agent_id),
            request_id: Set(request_id.to_owned()),
            status: Set("held".into()),
            reserved_micros: Set(amount),
            settled_micros: Set(None),
            day_window: Set(day),
            month_window: Set(month),
            created_at: Set(at),
            expires_at: Set(at + chrono::Duration::from_std(RESERVATION_TTL).unwrap_or_default()),
            resolved_at: Set(None),
        }
        .insert(&txn)
        .await
        .map_err(internal)?;
        txn.commit().await.map_err(internal)?;
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
        let at = now();
        let txn = self.db.begin().await.map_err(internal)?;
        let claimed = ledger_entries::Entity::update_many()
            .col_expr(ledger_entries::Column::Status, Expr::value(status))
            .col_expr(ledger_entries::Column::SettledMicros, Expr::value(actual))
            .col_expr(ledger_entries::Column::ResolvedAt, Expr::value(at))
            .filter(ledger_entries::Column::RequestId.eq(request_id))
            .filter(ledger_entries::Column::Status.eq("held"))
            .exec(&txn)
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if !claimed {
            txn.rollback().await.map_err(internal)?;
            return Ok(false);
        }
        let entry = ledger_entries::Entity::find()
            .filter(ledger_entries::Column::RequestId.eq(request_id))
            .one(&txn)
            .await
            .map_err(internal)?
            .ok_or_else(AppError::internal)?;
        roll_windows(&txn, entry.agent_id, at).await?;
        let charged = actual.unwrap_or(0);
        wallets::Entity::update_many()
            .col_expr(
                wallets::Column::ReservedMicros,
                Expr::col(wallets::Column::ReservedMicros).sub(entry.reserved_micros),
            )
            .col_expr(
                wallets::Column::DailySpentMicros,
                Expr::col(wallets::Column::DailySpentMicros).add(charged),
            )
            .col_expr(
                wallets::Column::MonthlySpentMicros,
                Expr::col(wallets::Column::MonthlySpentMicros).add(charged),
            )
            .col_expr(wallets::Column::UpdatedAt, Expr::value(at))
            .filter(wallets::Column::AgentId.eq(entry.agent_id))
            .exec(&txn)
            .await
            .map_err(internal)?;
        txn.commit().await.map_err(internal)?;
        Ok(true)
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
        let (daily_resets_at, monthly_resets_at) = next_resets(at);
        Ok(app::model::WalletView {
            agent_id,
            daily_limit_micros: w.daily_limit_micros,
            monthly_limit_micros: w.monthly_limit_micros,
            daily_spent_micros: w.daily_spent_micros,
            monthly_spent_micros: w.monthly_spent_micros,
            reserved_micros: w.reserved_micros,
            timezone: w.timezone,
            daily_resets_at,
            monthly_resets_at,
        })
    }

    pub async fn get(&self, agent_id: Uuid) -> Result<Option<wallets::Model>, AppError> {
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
        let (day, month) = next_resets(at);
        assert_eq!(day, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap());
        let (day, month) = next_resets(Utc.with_ymd_and_hms(2028, 2, 28, 12, 0, 0).unwrap());
        assert_eq!(day, Utc.with_ymd_and_hms(2028, 2, 29, 0, 0, 0).unwrap());
        assert_eq!(month, Utc.with_ymd_and_hms(2028, 3, 1, 0, 0, 0).unwrap());
        assert_eq!(windows(at), ("2026-12-31".to_owned(), "2026-12".to_owned()));
    }
}
