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

/// The rules above applied to a wallet row held in memory: for a store that reads
/// the rows a batch touches `FOR UPDATE` (so nothing else changes them before its
/// commit), applies every hold and settlement to them here, and writes each back
/// once (PostgreSQL's, [`crate::store::postgres`]). Each does exactly what the
/// conditional statements of the other stores do (`store/sqlite/wallets.rs`); the
/// unit tests below and the conformance suite hold them to it.
pub mod locked {
    use chrono::{DateTime, Utc};
    use entity::wallets;

    use super::{Alert, Reservation, SPEND_CEILING_MICROS, crossed_alerts, refusal, windows, zone};

    /// Zeroes the spend of windows that have ended (in the wallet's zone).
    /// Whether anything changed.
    pub fn roll(w: &mut wallets::Model, at: DateTime<Utc>) -> bool {
        let (day, month) = windows(at, zone(&w.timezone));
        let mut changed = false;
        if w.day_window != day {
            w.daily_spent_micros = 0;
            w.day_window = day;
            changed = true;
        }
        if w.month_window != month {
            w.monthly_spent_micros = 0;
            w.month_window = month;
            changed = true;
        }
        changed
    }

    /// Holds `amount` if both limits allow it and reservations stay under the
    /// ceiling; otherwise changes nothing and says what was left.
    pub fn hold(w: &mut wallets::Model, amount: i64, at: DateTime<Utc>) -> Reservation {
        let within = |limit: i64, spent: i64| {
            limit == 0
                || i128::from(spent) + i128::from(w.reserved_micros) + i128::from(amount) <= i128::from(limit)
        };
        let fits = within(w.daily_limit_micros, w.daily_spent_micros)
            && within(w.monthly_limit_micros, w.monthly_spent_micros)
            && i128::from(w.reserved_micros) <= i128::from(SPEND_CEILING_MICROS) - i128::from(amount);
        if !fits {
            return refusal(Some(w));
        }
        w.reserved_micros += amount;
        w.updated_at = at;
        Reservation::Held
    }

    /// Resolves a hold of `reserved`, charging `charged` (0 for a release); spend
    /// saturates at the ceiling.
    pub fn settle(w: &mut wallets::Model, reserved: i64, charged: i64, at: DateTime<Utc>) {
        let charged = charged.clamp(0, SPEND_CEILING_MICROS);
        let add = |spent: i64| {
            if spent > SPEND_CEILING_MICROS - charged { SPEND_CEILING_MICROS } else { spent + charged }
        };
        w.reserved_micros -= reserved;
        w.daily_spent_micros = add(w.daily_spent_micros);
        w.monthly_spent_micros = add(w.monthly_spent_micros);
        w.updated_at = at;
    }

    /// Claims the alerts the wallet's spend has crossed and that were not yet sent
    /// for their window (once per window).
    pub fn claim_alerts(w: &mut wallets::Model) -> Vec<Alert> {
        let mut claimed = Vec::new();
        for (alert, column) in crossed_alerts(w) {
            let sent = match column {
                wallets::Column::AlertSentDay => &mut w.alert_sent_day,
                wallets::Column::AlertSentMonth => &mut w.alert_sent_month,
                _ => continue,
            };
            if sent.as_deref() != Some(alert.period.as_str()) {
                *sent = Some(alert.period.clone());
                claimed.push(alert);
            }
        }
        claimed
    }

    #[cfg(test)]
    mod tests {
        use chrono::TimeZone;

        use super::*;

        fn wallet(daily: i64, monthly: i64) -> wallets::Model {
            let at = Utc.with_ymd_and_hms(2026, 12, 6, 12, 0, 0).unwrap();
            wallets::Model {
                agent_id: uuid::Uuid::nil(),
                daily_limit_micros: daily,
                monthly_limit_micros: monthly,
                daily_spent_micros: 0,
                monthly_spent_micros: 0,
                reserved_micros: 0,
                day_window: "2026-12-06".into(),
                month_window: "2026-12".into(),
                timezone: "UTC".into(),
                alert_threshold_pct: Some(80),
                alert_sent_day: None,
                alert_sent_month: None,
                updated_at: at,
            }
        }

        fn at() -> DateTime<Utc> {
            Utc.with_ymd_and_hms(2026, 12, 6, 13, 0, 0).unwrap()
        }

        #[test]
        fn holds_are_exact_at_the_limit_and_count_reservations() {
            let mut w = wallet(5_000_000, 0);
            let held = (0..1000).filter(|_| hold(&mut w, 100_000, at()) == Reservation::Held).count();
            assert_eq!(held, 50, "1,000 holds of 0.10 against 5.00 admit exactly 50");
            assert_eq!(w.reserved_micros, 5_000_000);
            assert_eq!(
                hold(&mut w, 1, at()),
                Reservation::Refused { daily_remaining_micros: Some(0), monthly_remaining_micros: None }
            );
            settle(&mut w, 100_000, 40_000, at());
            assert_eq!(
                (w.reserved_micros, w.daily_spent_micros, w.monthly_spent_micros),
                (4_900_000, 40_000, 40_000)
            );
            assert_eq!(
                hold(&mut w, 60_000, at()),
                Reservation::Held,
                "what the settlement gave back is free again"
            );
            assert_eq!(hold(&mut w, 1, at()), refusal(Some(&w)));
        }

        #[test]
        fn the_monthly_limit_and_the_ceiling_refuse_too() {
            let mut w = wallet(0, 300);
            assert_eq!(hold(&mut w, 300, at()), Reservation::Held);
            assert!(matches!(hold(&mut w, 1, at()), Reservation::Refused { .. }));
            let mut unlimited = wallet(0, 0);
            assert!(matches!(
                hold(&mut unlimited, SPEND_CEILING_MICROS + 1, at()),
                Reservation::Refused { .. }
            ));
            assert_eq!(hold(&mut unlimited, SPEND_CEILING_MICROS, at()), Reservation::Held);
            assert!(matches!(hold(&mut unlimited, 1, at()), Reservation::Refused { .. }));
        }

        #[test]
        fn spend_saturates_at_the_ceiling() {
            let mut w = wallet(0, 0);
            w.daily_spent_micros = SPEND_CEILING_MICROS - 5;
            settle(&mut w, 0, i64::MAX, at());
            assert_eq!(w.daily_spent_micros, SPEND_CEILING_MICROS);
            assert_eq!(w.monthly_spent_micros, SPEND_CEILING_MICROS);
            settle(&mut w, 0, -7, at());
            assert_eq!(w.daily_spent_micros, SPEND_CEILING_MICROS, "a negative charge charges nothing");
        }

        #[test]
        fn windows_roll_in_the_wallets_zone() {
            let mut w = wallet(1000, 1000);
            w.daily_spent_micros = 700;
            w.monthly_spent_micros = 900;
            assert!(!roll(&mut w, at()), "same day, same month");
            w.timezone = "Pacific/Kiritimati".into(); // UTC+14: already the 7th there
            assert!(roll(&mut w, at()));
            assert_eq!((w.daily_spent_micros, w.monthly_spent_micros), (0, 900));
            assert_eq!(w.day_window, "2026-12-07");
            let new_year = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap();
            assert!(roll(&mut w, new_year));
            assert_eq!((w.monthly_spent_micros, w.month_window.as_str()), (0, "2027-01"));
        }

        #[test]
        fn an_alert_is_claimed_once_per_window() {
            let mut w = wallet(1000, 0);
            w.daily_spent_micros = 799;
            assert!(claim_alerts(&mut w).is_empty(), "below 80 %");
            w.daily_spent_micros = 800;
            let alerts = claim_alerts(&mut w);
            assert_eq!(alerts.iter().map(|a| a.window).collect::<Vec<_>>(), ["daily"]);
            assert_eq!(w.alert_sent_day.as_deref(), Some("2026-12-06"));
            assert!(claim_alerts(&mut w).is_empty(), "already sent for this day");
            w.day_window = "2026-12-07".into();
            assert_eq!(claim_alerts(&mut w).len(), 1, "a new day, a new alert");
        }
    }
}
