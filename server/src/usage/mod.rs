//! Usage rollups: what each sponsor's agents spent, by day, agent, connection and
//! model, for the dashboard and `GET /api/usage`.
//!
//! The audit log's `proxy.outcome` records are the account; `usage_daily` is a
//! view of them kept off the hot path. [`UsageService::catch_up`] folds the
//! records after `usage_cursor.seq` into it ([`fold`]) and moves the cursor in the
//! same transaction, conditionally on the cursor it started from: two replicas
//! folding at once cannot count a record twice (the second finds the cursor moved
//! and rolls back), and a crash loses nothing (the cursor did not move either).
//! Audit `seq`s become visible in order (each is assigned under the chain lock,
//! held until its transaction commits), so a record is never skipped. The
//! janitor folds every few seconds; a report folds first, so it is current.

pub mod fold;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use app::error::AppError;
use app::model::{AgentUsage, ConnectionUsage, DayUsage, ModelUsage, UsageQuery, UsageReport, UsageTotals};
use chrono::{Duration, Utc};
use entity::{audit_events, usage_cursor, usage_daily};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::db::{begin_write, internal};

/// Outcome records folded per transaction.
const CHUNK: u64 = 500;
/// Chunks one catch-up folds at most (a report after a long outage answers with
/// what is folded so far; `through_seq` says how far that is).
const MAX_CHUNKS: usize = 40;
const MAX_DAYS: u32 = 90;
const DEFAULT_DAYS: u32 = 30;

#[derive(Clone)]
pub struct UsageService {
    db: DatabaseConnection,
    /// One catch-up at a time in this process (others across replicas are
    /// harmless, only wasted).
    folding: Arc<tokio::sync::Mutex<()>>,
}

impl UsageService {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, folding: Arc::default() }
    }

    /// Folds the outcome records not yet in the rollups; returns how many it folded.
    pub async fn catch_up(&self) -> Result<u64, AppError> {
        let _one = self.folding.lock().await;
        let mut folded = 0;
        for _ in 0..MAX_CHUNKS {
            let chunk = self.fold_chunk().await?;
            folded += chunk.folded;
            if !chunk.more {
                break;
            }
        }
        Ok(folded)
    }

    async fn cursor(&self) -> Result<i64, AppError> {
        let row = usage_cursor::Entity::find_by_id(1).one(&self.db).await.map_err(internal)?;
        Ok(row.map_or(0, |c| c.seq))
    }

    async fn fold_chunk(&self) -> Result<Chunk, AppError> {
        let from = self.cursor().await?;
        let records = audit_events::Entity::find()
            .select_only()
            .columns([
                audit_events::Column::Seq,
                audit_events::Column::At,
                audit_events::Column::SponsorId,
                audit_events::Column::AgentId,
                audit_events::Column::Decision,
                audit_events::Column::CostMicros,
                audit_events::Column::Detail,
            ])
            .filter(audit_events::Column::Kind.eq("proxy.outcome"))
            .filter(audit_events::Column::Seq.gt(from))
            .order_by_asc(audit_events::Column::Seq)
            .limit(CHUNK)
            .into_tuple::<Record>()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let Some(last) = records.last().map(|r| r.0) else { return Ok(Chunk { folded: 0, more: false }) };
        let n = records.len() as u64;
        let rows = fold::fold_all(records.iter().map(|(_, at, sponsor, agent, decision, cost, detail)| {
            fold::Outcome {
                at: *at,
                sponsor_id: *sponsor,
                agent_id: *agent,
                decision: decision.as_deref(),
                cost_micros: *cost,
                detail: detail.as_deref(),
            }
        }));
        // The cursor first: it takes the write lock (SQLite) or the row lock
        // (PostgreSQL) before anything else, and says whether another folder won.
        let txn = begin_write(&self.db).await?;
        let moved = usage_cursor::Entity::update_many()
            .col_expr(usage_cursor::Column::Seq, Expr::value(last))
            .filter(usage_cursor::Column::Id.eq(1))
            .filter(usage_cursor::Column::Seq.eq(from))
            .exec(&txn)
            .await
            .map_err(internal)?;
        if moved.rows_affected != 1 {
            // Folded meanwhile elsewhere (try again from where it got to);
            // dropping `txn` rolls back.
            return Ok(Chunk { folded: 0, more: true });
        }
        add_rows(&txn, rows).await?;
        txn.commit().await.map_err(internal)?;
        tracing::debug!(records = n, through = last, "usage folded");
        Ok(Chunk { folded: n, more: n == CHUNK })
    }

    /// A sponsor's usage over the last `days` UTC days (today included).
    pub async fn report(&self, sponsor_id: Uuid, q: &UsageQuery) -> Result<UsageReport, AppError> {
        let days = match q.days {
            Some(d) if !(1..=MAX_DAYS).contains(&d) => {
                return Err(AppError::bad_request("invalid_days", format!("days must be 1 to {MAX_DAYS}")));
            }
            d => d.unwrap_or(DEFAULT_DAYS),
        };
        if let Err(e) = self.catch_up().await {
            // The report is still right through `through_seq`.
            tracing::error!(error = %e.message, "usage could not be folded");
        }
        let today = Utc::now().date_naive();
        let first = today - Duration::days(i64::from(days) - 1);
        let (from, to) = (first.format("%Y-%m-%d").to_string(), today.format("%Y-%m-%d").to_string());
        let mut query = usage_daily::Entity::find()
            .filter(usage_daily::Column::SponsorId.eq(sponsor_id))
            .filter(usage_daily::Column::Day.gte(from.clone()));
        if let Some(agent) = q.agent_id {
            query = query.filter(usage_daily::Column::AgentId.eq(agent));
        }
        let rows = query.all(&self.db).await.map_err(internal)?;
        // The rows are the sponsor's, so are their agents; deleted ones show no name.
        let ids: Vec<Uuid> = rows.iter().map(|r| r.agent_id).collect::<BTreeSet<_>>().into_iter().collect();
        let names = crate::agents::names(&self.db, &ids, true).await?;
        let days = first.iter_days().take_while(|d| *d <= today).map(|d| d.format("%Y-%m-%d").to_string());
        let mut report = summarise(&rows, days, &names);
        report.from = from;
        report.to = to;
        report.through_seq = self.cursor().await?;
        Ok(report)
    }
}

type Record = (i64, chrono::DateTime<Utc>, Option<Uuid>, Option<Uuid>, Option<String>, i64, Option<String>);

/// What one chunk folded, and whether there may be more.
struct Chunk {
    folded: u64,
    more: bool,
}

/// Adds each key's totals to its row (created at zero).
async fn add_rows(
    txn: &impl ConnectionTrait,
    rows: BTreeMap<fold::Key, UsageTotals>,
) -> Result<(), AppError> {
    use usage_daily::Column as C;
    if rows.is_empty() {
        return Ok(());
    }
    let sums = [
        C::Requests,
        C::AtCeiling,
        C::TokensIn,
        C::TokensCached,
        C::TokensCacheWrite,
        C::TokensOut,
        C::HeldMicros,
        C::CostMicros,
    ];
    let mut upsert = OnConflict::columns([C::SponsorId, C::Day, C::AgentId, C::Connection, C::Model]);
    for c in sums {
        upsert.value(c, Expr::col((usage_daily::Entity, c)).add(Expr::col((Excluded, c))));
    }
    let models = rows.into_iter().map(|(k, t)| usage_daily::ActiveModel {
        sponsor_id: Set(k.sponsor_id),
        day: Set(k.day),
        agent_id: Set(k.agent_id),
        connection: Set(k.connection),
        model: Set(k.model),
        requests: Set(t.requests),
        at_ceiling: Set(t.at_ceiling),
        tokens_in: Set(t.tokens_in),
        tokens_cached: Set(t.tokens_cached),
        tokens_cache_write: Set(t.tokens_cache_write),
        tokens_out: Set(t.tokens_out),
        held_micros: Set(t.held_micros),
        cost_micros: Set(t.cost_micros),
    });
    // Chunks small enough for SQLite's bound-parameter limit (13 a row).
    let models: Vec<_> = models.collect();
    for chunk in models.chunks(60) {
        usage_daily::Entity::insert_many(chunk.to_vec())
            .on_conflict(upsert.clone())
            .exec_without_returning(txn)
            .await
            .map_err(internal)?;
    }
    Ok(())
}

/// `excluded`: the row an upsert proposed (SQLite and PostgreSQL alike).
#[derive(Clone, Copy)]
struct Excluded;

impl sea_orm::sea_query::Iden for Excluded {
    fn unquoted(&self) -> &str {
        "excluded"
    }
}

/// Rollup rows summed by model, connection, agent and day; dearest first (days in
/// order, each of `days` present).
fn summarise(
    rows: &[usage_daily::Model],
    days: impl Iterator<Item = String>,
    names: &HashMap<Uuid, String>,
) -> UsageReport {
    let mut totals = UsageTotals::default();
    let mut by_model: BTreeMap<(String, String), UsageTotals> = BTreeMap::new();
    let mut by_connection: BTreeMap<String, UsageTotals> = BTreeMap::new();
    let mut by_agent: BTreeMap<Uuid, UsageTotals> = BTreeMap::new();
    let mut by_day: BTreeMap<String, UsageTotals> = days.map(|d| (d, UsageTotals::default())).collect();
    for r in rows {
        let t = UsageTotals {
            requests: r.requests,
            at_ceiling: r.at_ceiling,
            tokens_in: r.tokens_in,
            tokens_cached: r.tokens_cached,
            tokens_cache_write: r.tokens_cache_write,
            tokens_out: r.tokens_out,
            held_micros: r.held_micros,
            cost_micros: r.cost_micros,
        };
        totals.add(&t);
        by_model.entry((r.connection.clone(), r.model.clone())).or_default().add(&t);
        by_connection.entry(r.connection.clone()).or_default().add(&t);
        by_agent.entry(r.agent_id).or_default().add(&t);
        if let Some(day) = by_day.get_mut(&r.day) {
            day.add(&t);
        }
    }
    let dearest = |a: &UsageTotals, b: &UsageTotals| {
        b.cost_micros.cmp(&a.cost_micros).then(b.tokens().cmp(&a.tokens()))
    };
    let mut by_model: Vec<ModelUsage> = by_model
        .into_iter()
        .map(|((connection, model), totals)| ModelUsage { connection, model, totals })
        .collect();
    by_model.sort_by(|a, b| dearest(&a.totals, &b.totals));
    let mut by_connection: Vec<ConnectionUsage> = by_connection
        .into_iter()
        .map(|(connection, totals)| ConnectionUsage { connection, totals })
        .collect();
    by_connection.sort_by(|a, b| dearest(&a.totals, &b.totals));
    let mut by_agent: Vec<AgentUsage> = by_agent
        .into_iter()
        .map(|(agent_id, totals)| AgentUsage { agent_id, agent_name: names.get(&agent_id).cloned(), totals })
        .collect();
    by_agent.sort_by(|a, b| dearest(&a.totals, &b.totals));
    UsageReport {
        from: String::new(),
        to: String::new(),
        totals,
        by_model,
        by_connection,
        by_agent,
        by_day: by_day.into_iter().map(|(day, totals)| DayUsage { day, totals }).collect(),
        through_seq: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, agent: u128, connection: &str, model: &str, cost: i64, out: i64) -> usage_daily::Model {
        usage_daily::Model {
            sponsor_id: Uuid::from_u128(1),
            day: day.into(),
            agent_id: Uuid::from_u128(agent),
            connection: connection.into(),
            model: model.into(),
            requests: 1,
            at_ceiling: 0,
            tokens_in: 10,
            tokens_cached: 0,
            tokens_cache_write: 0,
            tokens_out: out,
            held_micros: cost * 3,
            cost_micros: cost,
        }
    }

    #[test]
    fn a_report_sums_by_model_connection_agent_and_day_dearest_first() {
        let rows = [
            row("2026-12-06", 1, "llm", "gpt-4o-mini", 100, 5),
            row("2026-12-07", 1, "llm", "gpt-4o", 900, 7),
            row("2026-12-07", 2, "claude", "claude-sonnet-4-6", 400, 9),
            row("2026-12-07", 2, "llm", "gpt-4o-mini", 50, 1),
        ];
        let days = ["2026-12-05", "2026-12-06", "2026-12-07"].map(String::from);
        let names = HashMap::from([(Uuid::from_u128(1), "one".to_owned())]);
        let r = summarise(&rows, days.into_iter(), &names);
        assert_eq!((r.totals.requests, r.totals.cost_micros, r.totals.held_micros), (4, 1450, 4350));
        let models: Vec<_> = r.by_model.iter().map(|m| (m.model.as_str(), m.totals.cost_micros)).collect();
        assert_eq!(models, [("gpt-4o", 900), ("claude-sonnet-4-6", 400), ("gpt-4o-mini", 150)]);
        let conns: Vec<_> =
            r.by_connection.iter().map(|c| (c.connection.as_str(), c.totals.cost_micros)).collect();
        assert_eq!(conns, [("llm", 1050), ("claude", 400)]);
        let agents: Vec<_> = r
            .by_agent
            .iter()
            .map(|a| (a.agent_name.as_deref(), a.totals.tokens_out, a.totals.cost_micros))
            .collect();
        assert_eq!(agents, [(Some("one"), 12, 1000), (None, 10, 450)]);
        let days: Vec<_> = r.by_day.iter().map(|d| (d.day.as_str(), d.totals.cost_micros)).collect();
        assert_eq!(days, [("2026-12-05", 0), ("2026-12-06", 100), ("2026-12-07", 1350)]);
    }
}
