//! The wallet writes of the hot path through sea-orm (PostgreSQL, an in-memory
//! SQLite, and every wallet write off the hot path): one conditional UPDATE per
//! hold, so a hold is exact; a settlement claimed with `UPDATE … RETURNING`;
//! alerts claimed once per window. The decisions built from what they read are
//! [`crate::spend`]'s, shared with the SQLite store.

use std::time::Duration;

use app::error::AppError;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use entity::{ledger_entries, wallets};
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect, Set};
use uuid::Uuid;

use crate::db::{internal, now};
use crate::spend::{
    Alert, Reservation, Resolved, SPEND_CEILING_MICROS, crossed_alerts, refusal, windows, zone,
};

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
pub async fn roll_windows(
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

/// `column + amount`, saturated at [`SPEND_CEILING_MICROS`], in portable SQL (no
/// intermediate value can overflow: the comparison subtracts from the ceiling).
fn saturating_add(column: wallets::Column, amount: i64) -> SimpleExpr {
    let amount = amount.clamp(0, SPEND_CEILING_MICROS);
    Expr::case(Expr::col(column).gt(SPEND_CEILING_MICROS - amount), Expr::value(SPEND_CEILING_MICROS))
        .finally(Expr::col(column).add(amount))
        .into()
}

fn within(limit: wallets::Column, spent: wallets::Column, amount: i64) -> Condition {
    Condition::any().add(Expr::col(limit).eq(0i64)).add(
        Expr::col(spent).add(Expr::col(wallets::Column::ReservedMicros)).add(amount).lte(Expr::col(limit)),
    )
}

/// A hold inside the caller's write transaction, which commits it (the
/// proxy's group commit puts the hold and its intent record in one transaction).
/// The hold's ledger row waits in `batch`: [`WalletBatch::flush`] it before commit.
/// A refusal changes nothing but the idempotent window roll-over.
pub async fn reserve_in(
    db: &impl ConnectionTrait,
    batch: &mut WalletBatch,
    agent_id: Uuid,
    request_id: &str,
    amount: i64,
    reservation_ttl: Duration,
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
        expires_at: Set(at + chrono::Duration::from_std(reservation_ttl).unwrap_or_default()),
        resolved_at: Set(None),
    });
    Ok(Reservation::Held)
}

/// Settles a hold at `actual` (charged even when above the estimate: the call
/// Resolves a hold inside the caller's write transaction: `status` is `settled`
/// (charging `actual`), `released` or `expired`. `None` if it was no longer held.
/// Hand the result to `WalletService::announce` once the transaction committed.
pub async fn resolve_in(
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
