//! The rules of spending against a wallet's limits, shared by every store that
//! applies holds and settlements ([`crate::store`]) and by the wallets service:
//! the calendar windows spend is counted in, what a refused hold reports, which
//! alert thresholds a settlement crossed, and the ceiling no counter passes.
//! Pure functions of a wallet row: no I/O here.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use entity::wallets;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    Held,
    /// Over a limit: what was left of each at the time.
    Refused {
        daily_remaining_micros: Option<i64>,
        monthly_remaining_micros: Option<i64>,
    },
}

/// A stored zone; an unreadable one (never written by AEGIS) counts as UTC.
pub fn zone(name: &str) -> Tz {
    name.parse().unwrap_or(Tz::UTC)
}

/// The calendar windows spend is counted in, in `tz`.
pub fn windows(at: DateTime<Utc>, tz: Tz) -> (String, String) {
    let local = at.with_timezone(&tz);
    (local.format("%Y-%m-%d").to_string(), local.format("%Y-%m").to_string())
}

/// A hold resolved inside a transaction: the alerts it claimed are announced
/// (`WalletService::announce`) only once that transaction committed.
pub struct Resolved {
    pub agent_id: Uuid,
    pub alerts: Vec<Alert>,
}

impl Resolved {
    /// Whether `WalletService::announce` has anything to say.
    pub fn has_alerts(&self) -> bool {
        !self.alerts.is_empty()
    }
}

/// A threshold crossed for the first time in a window.
pub struct Alert {
    pub window: &'static str,
    pub period: String,
    pub spent_micros: i64,
    pub limit_micros: i64,
    pub threshold_pct: i32,
}

/// The windows whose spend has reached the wallet's alert threshold, each with the
/// column that records the window its alert was sent for (claimed by the caller).
pub fn crossed_alerts(w: &wallets::Model) -> Vec<(Alert, wallets::Column)> {
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
pub fn refusal(wallet: Option<&wallets::Model>) -> Reservation {
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

/// The most a wallet's spend counters and its reservations can hold: 10^18
/// micro-units (a trillion units). A wallet without limits that reaches it stays at
/// it (spend is recorded saturated, and the ledger keeps every charge exactly); a
/// hold that would take reservations past it is refused. Far below `i64::MAX`
/// (≈ 9.2 × 10^18), so `spent + reserved + amount` can never overflow in SQL, where
/// SQLite would turn an overflowing sum into a float and PostgreSQL would raise
/// (and the failed batch would be retried write by write, slowing every tenant).
pub const SPEND_CEILING_MICROS: i64 = 1_000_000_000_000_000_000;

/// The portable SQL of `saturating_add` (sea-orm) for SQL written as text: `{col}`
/// saturated at the ceiling after adding `?{param}`.
pub fn saturating_add_sql(col: &str, param: &str) -> String {
    format!(
        "CASE WHEN {col} > {SPEND_CEILING_MICROS} - {param} THEN {SPEND_CEILING_MICROS} ELSE {col} + {param} END"
    )
}
