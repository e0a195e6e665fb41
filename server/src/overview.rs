//! The overview's numbers (`GET /api/dashboard/stats` and the `/` page).
//!
//! Everything is computed with aggregate queries (`COUNT`/`SUM … GROUP BY`), so the
//! work done in memory is bounded by the number of buckets, stages, tiers and wallet
//! time zones, never by the number of audit records. "Today" is the UTC day.

use app::error::AppError;
use app::model::{AuditQuery, DashboardStats, SpendSummary, StageCount, StatsBucket, StatsRange, TierCount};
use chrono::{DateTime, Duration, DurationRound, Utc};
use entity::{agents, approvals, audit_events, wallets};
use sea_orm::sea_query::{Alias, CaseStatement, Expr, ExprTrait, Func};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::db::internal;
use crate::trust::Tier;

/// The records that are an agent call's final word: performed, failed or denied.
/// (Intents and approval requests are steps on the way, not outcomes.)
const DECIDED_KINDS: [&str; 2] = ["proxy.outcome", "proxy.denied"];
const LATEST_EVENTS: &str = "10";

/// `COALESCE(SUM(col), 0)` as a 64-bit integer on every database (PostgreSQL's
/// `SUM(bigint)` is a `numeric`).
fn sum(col: impl sea_orm::sea_query::IntoColumnRef) -> Expr {
    Expr::from(Func::coalesce([Expr::from(Func::sum(Expr::col(col))), Expr::val(0i64)]))
        .cast_as(Alias::new("bigint"))
}

fn count() -> Expr {
    Expr::from(Func::count(Expr::col(audit_events::Column::Seq))).cast_as(Alias::new("bigint"))
}

/// The start of every bucket of `range` ending with the one `at` falls in, oldest first.
pub fn bucket_starts(range: StatsRange, at: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let (step, n) = match range {
        StatsRange::Day => (Duration::hours(1), 24),
        StatsRange::Month => (Duration::days(1), 30),
    };
    let current = at.duration_trunc(step).unwrap_or(at);
    (0..n).rev().map(|i| current - step * i).collect()
}

pub async fn stats(
    db: &DatabaseConnection,
    audit: &AuditLog,
    sponsor_id: Uuid,
    range: StatsRange,
    at: DateTime<Utc>,
) -> Result<DashboardStats, AppError> {
    let today = at.duration_trunc(Duration::days(1)).unwrap_or(at);
    let decided_today = audit_events::Entity::find()
        .filter(audit_events::Column::SponsorId.eq(sponsor_id))
        .filter(audit_events::Column::Kind.is_in(DECIDED_KINDS))
        .filter(audit_events::Column::At.gte(today));

    let actions_today: i64 = decided_today
        .clone()
        .select_only()
        .expr(count())
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)?
        .unwrap_or(0);
    let denials: Vec<(Option<String>, i64)> = decided_today
        .filter(audit_events::Column::Decision.eq("deny"))
        .select_only()
        .column(audit_events::Column::Stage)
        .expr(count())
        .group_by(audit_events::Column::Stage)
        .into_tuple()
        .all(db)
        .await
        .map_err(internal)?;
    let mut denials_by_stage: Vec<StageCount> = denials
        .into_iter()
        .map(|(stage, count)| StageCount { stage: stage.unwrap_or_else(|| "unknown".into()), count })
        .collect();
    denials_by_stage.sort_by(|a, b| b.count.cmp(&a.count).then(a.stage.cmp(&b.stage)));

    Ok(DashboardStats {
        range,
        generated_at: at,
        actions_today,
        denials_by_stage,
        spend: spend(db, sponsor_id, at).await?,
        pending_approvals: pending_approvals(db, sponsor_id).await?,
        active_agents: agents_with_status(db, sponsor_id, "active").await?,
        suspended_agents: agents_with_status(db, sponsor_id, "suspended").await?,
        trust_tiers: trust_tiers(db, sponsor_id).await?,
        series: series(db, sponsor_id, range, at).await?,
        latest: latest(audit, sponsor_id).await?,
    })
}

/// Allow/deny/error counts and spend per bucket, in one `GROUP BY` over a `CASE`
/// that names each record's bucket.
async fn series(
    db: &DatabaseConnection,
    sponsor_id: Uuid,
    range: StatsRange,
    at: DateTime<Utc>,
) -> Result<Vec<StatsBucket>, AppError> {
    let starts = bucket_starts(range, at);
    // Newest first, so the first start a record is at or after is its own bucket.
    let bucket: Expr = starts
        .iter()
        .enumerate()
        .rev()
        .fold(CaseStatement::new(), |case, (i, start)| {
            case.case(audit_events::Column::At.gte(*start), Expr::val(i as i32))
        })
        .finally(Expr::val(-1i32))
        .into();
    let rows: Vec<(i32, Option<String>, i64, i64)> = audit_events::Entity::find()
        .filter(audit_events::Column::SponsorId.eq(sponsor_id))
        .filter(audit_events::Column::Kind.is_in(DECIDED_KINDS))
        .filter(audit_events::Column::At.gte(starts[0]))
        .select_only()
        .expr_as(bucket, "bucket")
        .column(audit_events::Column::Decision)
        .expr(count())
        .expr(sum(audit_events::Column::CostMicros))
        // By the alias: the CASE's bound parameters would make a repeated expression
        // look different to PostgreSQL.
        .group_by(Expr::cust("bucket"))
        .group_by(audit_events::Column::Decision)
        .into_tuple()
        .all(db)
        .await
        .map_err(internal)?;
    let mut series: Vec<StatsBucket> = starts
        .iter()
        .map(|start| StatsBucket { start: *start, allow: 0, deny: 0, error: 0, spend_micros: 0 })
        .collect();
    for (i, decision, count, spent) in rows {
        let Some(b) = usize::try_from(i).ok().and_then(|i| series.get_mut(i)) else { continue };
        match decision.as_deref() {
            Some("allow") => b.allow += count,
            Some("deny") => b.deny += count,
            _ => b.error += count,
        }
        b.spend_micros += spent;
    }
    Ok(series)
}

/// Spend in each wallet's current windows (a wallet whose window has ended has spent
/// nothing in the current one yet), against the summed limits of live agents.
async fn spend(
    db: &DatabaseConnection,
    sponsor_id: Uuid,
    at: DateTime<Utc>,
) -> Result<SpendSummary, AppError> {
    let live_wallets = || {
        wallets::Entity::find()
            .inner_join(agents::Entity)
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .filter(agents::Column::DeletedAt.is_null())
    };
    // One row per (time zone, day window, month window): a handful, not one per agent.
    let windows: Vec<(String, String, String, i64, i64)> = live_wallets()
        .select_only()
        .column(wallets::Column::Timezone)
        .column(wallets::Column::DayWindow)
        .column(wallets::Column::MonthWindow)
        .expr(sum(wallets::Column::DailySpentMicros))
        .expr(sum(wallets::Column::MonthlySpentMicros))
        .group_by(wallets::Column::Timezone)
        .group_by(wallets::Column::DayWindow)
        .group_by(wallets::Column::MonthWindow)
        .into_tuple()
        .all(db)
        .await
        .map_err(internal)?;
    let mut summary = SpendSummary::default();
    for (tz, day, month, daily, monthly) in windows {
        let (current_day, current_month) = crate::wallets::windows(at, crate::wallets::zone(&tz));
        if day == current_day {
            summary.today_micros += daily;
        }
        if month == current_month {
            summary.month_micros += monthly;
        }
    }
    let limits: Option<(i64, i64)> = live_wallets()
        .select_only()
        .expr(sum(wallets::Column::DailyLimitMicros))
        .expr(sum(wallets::Column::MonthlyLimitMicros))
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)?;
    (summary.daily_limit_micros, summary.monthly_limit_micros) = limits.unwrap_or_default();
    // A limit of 0 means "no limit", so it adds nothing above; count those agents.
    summary.unlimited_agents = live_wallets()
        .filter(
            sea_orm::Condition::any()
                .add(wallets::Column::DailyLimitMicros.eq(0i64))
                .add(wallets::Column::MonthlyLimitMicros.eq(0i64)),
        )
        .select_only()
        .expr(
            Expr::from(Func::count(Expr::col((wallets::Entity, wallets::Column::AgentId))))
                .cast_as(Alias::new("bigint")),
        )
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)?
        .unwrap_or(0);
    Ok(summary)
}

async fn pending_approvals(db: &DatabaseConnection, sponsor_id: Uuid) -> Result<i64, AppError> {
    approvals::Entity::find()
        .filter(approvals::Column::SponsorId.eq(sponsor_id))
        .filter(approvals::Column::Status.eq("pending"))
        .select_only()
        .expr(Expr::from(Func::count(Expr::col(approvals::Column::Id))).cast_as(Alias::new("bigint")))
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)
        .map(Option::unwrap_or_default)
}

async fn agents_with_status(
    db: &DatabaseConnection,
    sponsor_id: Uuid,
    status: &str,
) -> Result<i64, AppError> {
    agents::Entity::find()
        .filter(agents::Column::SponsorId.eq(sponsor_id))
        .filter(agents::Column::DeletedAt.is_null())
        .filter(agents::Column::Status.eq(status))
        .select_only()
        .expr(Expr::from(Func::count(Expr::col(agents::Column::Id))).cast_as(Alias::new("bigint")))
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)
        .map(Option::unwrap_or_default)
}

/// Live agents per tier. Grouped by score (at most one row per possible score),
/// then folded into tiers with the one definition in [`crate::trust`].
async fn trust_tiers(db: &DatabaseConnection, sponsor_id: Uuid) -> Result<Vec<TierCount>, AppError> {
    let scores: Vec<(i32, i64)> = agents::Entity::find()
        .filter(agents::Column::SponsorId.eq(sponsor_id))
        .filter(agents::Column::DeletedAt.is_null())
        .select_only()
        .column(agents::Column::TrustScore)
        .expr(Expr::from(Func::count(Expr::col(agents::Column::Id))).cast_as(Alias::new("bigint")))
        .group_by(agents::Column::TrustScore)
        .into_tuple()
        .all(db)
        .await
        .map_err(internal)?;
    let tiers = [Tier::Untrusted, Tier::Probation, Tier::Standard, Tier::Trusted, Tier::Verified];
    Ok(tiers
        .into_iter()
        .map(|tier| TierCount {
            tier: tier.as_str().to_owned(),
            count: scores.iter().filter(|(score, _)| Tier::of(*score) == tier).map(|(_, n)| n).sum(),
        })
        .collect())
}

async fn latest(audit: &AuditLog, sponsor_id: Uuid) -> Result<Vec<app::model::AuditRecord>, AppError> {
    let query = AuditQuery { limit: Some(LATEST_EVENTS.into()), ..AuditQuery::default() };
    let (filter, limit) = crate::audit::query::parse_query(&query, sponsor_id)?;
    Ok(audit.list(&filter, limit).await?.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn buckets_end_with_the_current_one() {
        let at = Utc.with_ymd_and_hms(2026, 11, 27, 13, 45, 10).unwrap();
        let hours = bucket_starts(StatsRange::Day, at);
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[23], Utc.with_ymd_and_hms(2026, 11, 27, 13, 0, 0).unwrap());
        assert_eq!(hours[0], Utc.with_ymd_and_hms(2026, 11, 26, 14, 0, 0).unwrap());
        let days = bucket_starts(StatsRange::Month, at);
        assert_eq!(days.len(), 30);
        assert_eq!(days[29], Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap());
        assert_eq!(days[0], Utc.with_ymd_and_hms(2026, 10, 29, 0, 0, 0).unwrap());
    }
}
