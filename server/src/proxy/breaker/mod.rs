//! Stage `breaker`: an agent that misbehaves is stopped before it does more harm.
//!
//! After every call the agent's sliding window ([`windows`]) is updated and five
//! detectors look at it ([`detect`]): denial rate, upstream error rate, request
//! burst, spend velocity and first-seen hosts. When one fires, the breaker
//! **trips**: the agent is suspended (every call denied at this stage), the trip is
//! audited and announced, and trust drops (`breaker_trip`).
//!
//! **Recovery.** The sponsor resumes the agent, or the breaker goes **half-open**
//! after a cool-down of `cooldown × trips` (capped at `cooldown_max`): the next
//! `probes` calls are let through one by one; if all succeed the breaker closes and
//! the agent is active again, and the first failure trips it again for longer.
//!
//! **Fleet guard.** Automatic trips never suspend more than `fleet_max_pct` of a
//! sponsor's live agents (for sponsors with at least `fleet_min_agents`): past
//! that, one bad policy or one broken upstream is a sponsor's problem to look at,
//! not a reason to stop the whole fleet, so the trip is held (audited and
//! announced as `breaker.held`) instead.
//!
//! State lives in the `breakers` table (shared by replicas, every transition one
//! conditional UPDATE); the windows live in Redis when configured.

pub mod windows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use app::error::AppError;
use app::model::AgentStatus;
use chrono::Utc;
use entity::{agents, breakers};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QuerySelect, Set};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditLog};
use crate::db::{internal, now};
use crate::digest::canonical_json;
use crate::events::{self, Event, EventBus};
use crate::trust::{TrustEvent, TrustService};
use windows::{Kind, Observation, Stats, Windows};

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub window: Duration,
    /// Rates are judged only with at least this many calls in the window.
    pub min_samples: u64,
    /// 0 turns a detector off.
    pub denial_rate_pct: u64,
    pub error_rate_pct: u64,
    /// Calls per window.
    pub burst: u64,
    /// Micro-units spent per window.
    pub spend_micros: u64,
    /// Never-before-called hosts per window.
    pub new_hosts: u64,
    pub cooldown: Duration,
    pub cooldown_max: Duration,
    pub probes: i32,
    pub fleet_max_pct: u64,
    pub fleet_min_agents: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_samples: 10,
            denial_rate_pct: 50,
            error_rate_pct: 50,
            burst: 600,
            spend_micros: 100_000_000,
            new_hosts: 10,
            cooldown: Duration::from_secs(30),
            cooldown_max: Duration::from_secs(3600),
            probes: 3,
            fleet_max_pct: 50,
            fleet_min_agents: 4,
        }
    }
}

/// The first detector that fires on `stats`, as a sentence for the sponsor.
pub fn detect(stats: &Stats, c: &BreakerConfig) -> Option<String> {
    let secs = c.window.as_secs();
    if c.burst > 0 && stats.total > c.burst {
        return Some(format!("request burst: {} calls in {secs} s (limit {})", stats.total, c.burst));
    }
    if c.spend_micros > 0 && stats.spend_micros > c.spend_micros as i64 {
        return Some(format!(
            "spend velocity: {} micro-units in {secs} s (limit {})",
            stats.spend_micros, c.spend_micros
        ));
    }
    if c.new_hosts > 0 && stats.new_hosts > c.new_hosts {
        return Some(format!(
            "first-seen hosts: {} new hosts in {secs} s (limit {})",
            stats.new_hosts, c.new_hosts
        ));
    }
    if c.denial_rate_pct > 0
        && stats.total >= c.min_samples
        && stats.denied * 100 >= stats.total * c.denial_rate_pct
    {
        return Some(format!(
            "denial rate: {} of {} calls denied in {secs} s (limit {}%)",
            stats.denied, stats.total, c.denial_rate_pct
        ));
    }
    if c.error_rate_pct > 0
        && stats.performed >= c.min_samples
        && stats.upstream_errors * 100 >= stats.performed * c.error_rate_pct
    {
        return Some(format!(
            "upstream error rate: {} of {} calls failed in {secs} s (limit {}%)",
            stats.upstream_errors, stats.performed, c.error_rate_pct
        ));
    }
    None
}

/// The cool-down after the `trips`-th trip: `cooldown × trips`, capped.
pub fn cooldown(c: &BreakerConfig, trips: i32) -> Duration {
    Ord::min(c.cooldown.saturating_mul(Ord::max(trips, 1) as u32), c.cooldown_max)
}

/// How a call got past this stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Breaker closed: an ordinary call.
    Closed,
    /// Breaker half-open: this call is one of the probes that decide.
    Probe,
}

pub use entity::breakers::{CLOSED, HALF_OPEN, OPEN};

#[derive(Clone)]
pub struct BreakerService {
    db: sea_orm::DatabaseConnection,
    audit: AuditLog,
    events: EventBus,
    trust: TrustService,
    windows: Arc<dyn Windows>,
    pub config: BreakerConfig,
    /// When each agent's last held trip was announced (one per window).
    held: Arc<Mutex<HashMap<Uuid, Instant>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl BreakerService {
    pub fn new(
        db: sea_orm::DatabaseConnection,
        audit: AuditLog,
        events: EventBus,
        trust: TrustService,
        windows: Arc<dyn Windows>,
        config: BreakerConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self { db, audit, events, trust, windows, config, held: Arc::default(), metrics }
    }

    /// Whether `agent` may act now: `Ok(Err(reason))` when it may not.
    pub async fn admit(&self, agent: &agents::Model) -> Result<Result<Admission, String>, AppError> {
        match AgentStatus::parse(&agent.status) {
            Some(AgentStatus::Active) => return Ok(Ok(Admission::Closed)),
            Some(AgentStatus::Suspended) => {}
            // Revoked agents cannot authenticate; anything unknown fails closed.
            _ => return Ok(Err("agent is not active".into())),
        }
        let suspended = || {
            format!(
                "agent is suspended: {}",
                agent.suspended_reason.as_deref().unwrap_or("suspended by its sponsor")
            )
        };
        let Some(row) = breakers::Entity::find_by_id(agent.id).one(&self.db).await.map_err(internal)? else {
            return Ok(Err(suspended()));
        };
        let at = now();
        if row.state == OPEN {
            match row.open_until {
                Some(until) if until > at => {
                    return Ok(Err(format!(
                        "{}; probe calls are let through from {}",
                        suspended(),
                        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    )));
                }
                _ => {
                    // Cool-down over: this call is the first probe (one replica wins).
                    let won = breakers::Entity::update_many()
                        .col_expr(breakers::Column::State, Expr::value(HALF_OPEN))
                        .col_expr(breakers::Column::ProbesLeft, Expr::value(self.config.probes - 1))
                        .col_expr(breakers::Column::ProbesPassed, Expr::value(0))
                        .col_expr(breakers::Column::UpdatedAt, Expr::value(at))
                        .filter(breakers::Column::AgentId.eq(agent.id))
                        .filter(breakers::Column::State.eq(OPEN))
                        .exec(&self.db)
                        .await
                        .map_err(internal)?
                        .rows_affected
                        == 1;
                    if won {
                        tracing::info!(agent = %agent.id, "breaker half-open: probing");
                        return Ok(Ok(Admission::Probe));
                    }
                }
            }
        }
        let row = breakers::Entity::find_by_id(agent.id).one(&self.db).await.map_err(internal)?;
        if row.as_ref().is_some_and(|r| r.state == HALF_OPEN) {
            let won = breakers::Entity::update_many()
                .col_expr(breakers::Column::ProbesLeft, Expr::col(breakers::Column::ProbesLeft).sub(1))
                .filter(breakers::Column::AgentId.eq(agent.id))
                .filter(breakers::Column::State.eq(HALF_OPEN))
                .filter(breakers::Column::ProbesLeft.gt(0))
                .exec(&self.db)
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if won {
                return Ok(Ok(Admission::Probe));
            }
            return Ok(Err(format!(
                "{}; the breaker is half-open and its probes are in flight",
                suspended()
            )));
        }
        Ok(Err(suspended()))
    }

    /// A probe that decided nothing (parked for approval, storage failure) gives its slot back.
    pub async fn return_probe(&self, agent: &agents::Model) {
        let returned = breakers::Entity::update_many()
            .col_expr(breakers::Column::ProbesLeft, Expr::col(breakers::Column::ProbesLeft).add(1))
            .filter(breakers::Column::AgentId.eq(agent.id))
            .filter(breakers::Column::State.eq(HALF_OPEN))
            .exec(&self.db)
            .await;
        if let Err(e) = returned {
            tracing::error!(agent = %agent.id, error = %e, "could not return a breaker probe");
        }
    }

    /// Counts a finished call and trips the breaker if a detector fires. Bookkeeping
    /// after the fact: failures are logged, never change the answer already given.
    pub async fn observe(&self, agent: &agents::Model, obs: Observation, admission: Admission) {
        if let Err(e) = self.observe_inner(agent, obs, admission).await {
            tracing::error!(agent = %agent.id, error = %e.message, "breaker bookkeeping failed");
        }
    }

    async fn observe_inner(
        &self,
        agent: &agents::Model,
        obs: Observation,
        admission: Admission,
    ) -> Result<(), AppError> {
        if admission == Admission::Probe {
            if obs.kind != Kind::Ok {
                let why = match obs.kind {
                    Kind::Denied => "a half-open probe was denied",
                    _ => "a half-open probe failed upstream",
                };
                return self.trip(agent, why.to_owned(), true).await;
            }
            breakers::Entity::update_many()
                .col_expr(breakers::Column::ProbesPassed, Expr::col(breakers::Column::ProbesPassed).add(1))
                .filter(breakers::Column::AgentId.eq(agent.id))
                .filter(breakers::Column::State.eq(HALF_OPEN))
                .exec(&self.db)
                .await
                .map_err(internal)?;
            return self.close_if_probed(agent).await;
        }
        let stats = match self.windows.observe(agent.id, &obs, self.config.window).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(agent = %agent.id, error = %e, "breaker window unavailable");
                return Ok(());
            }
        };
        match detect(&stats, &self.config) {
            Some(reason) => self.trip(agent, reason, false).await,
            None => Ok(()),
        }
    }

    /// Would one more automatic suspension exceed the fleet guard's share?
    async fn fleet_guard_holds(&self, sponsor_id: Uuid) -> Result<Option<(u64, u64)>, AppError> {
        let live: Vec<Uuid> = agents::Entity::find()
            .select_only()
            .column(agents::Column::Id)
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .filter(agents::Column::DeletedAt.is_null())
            .into_tuple()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let total = live.len() as u64;
        if total < Ord::max(self.config.fleet_min_agents, 1) {
            return Ok(None);
        }
        let tripped = breakers::Entity::find()
            .filter(breakers::Column::AgentId.is_in(live))
            .filter(breakers::Column::State.ne(CLOSED))
            .count(&self.db)
            .await
            .map_err(internal)?;
        Ok(((tripped + 1) * 100 > total * self.config.fleet_max_pct).then_some((tripped, total)))
    }

    async fn trip(&self, agent: &agents::Model, reason: String, from_probe: bool) -> Result<(), AppError> {
        if !from_probe && let Some((tripped, total)) = self.fleet_guard_holds(agent.sponsor_id).await? {
            return self.hold(agent, &reason, tripped, total).await;
        }
        let at = now();
        let mut txn = self.audit.begin().await?;
        let existing = breakers::Entity::find_by_id(agent.id).one(txn.conn()).await.map_err(internal)?;
        let trips = existing.as_ref().map_or(0, |r| r.trips) + 1;
        let until = at + chrono::Duration::from_std(cooldown(&self.config, trips)).unwrap_or_default();
        let won = if from_probe {
            breakers::Entity::update_many()
                .filter(breakers::Column::State.eq(HALF_OPEN))
                .filter(breakers::Column::AgentId.eq(agent.id))
                .col_expr(breakers::Column::State, Expr::value(OPEN))
                .col_expr(breakers::Column::Trips, Expr::value(trips))
                .col_expr(breakers::Column::Reason, Expr::value(reason.clone()))
                .col_expr(breakers::Column::OpenedAt, Expr::value(at))
                .col_expr(breakers::Column::OpenUntil, Expr::value(until))
                .col_expr(breakers::Column::ProbesLeft, Expr::value(0))
                .col_expr(breakers::Column::UpdatedAt, Expr::value(at))
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1
        } else {
            // Only an active agent trips; a concurrent trip or a sponsor got there first otherwise.
            let suspended = agents::Entity::update_many()
                .col_expr(agents::Column::Status, Expr::value(AgentStatus::Suspended.as_str()))
                .col_expr(agents::Column::SuspendedAt, Expr::value(at))
                .col_expr(agents::Column::SuspendedReason, Expr::value(format!("circuit breaker: {reason}")))
                .col_expr(agents::Column::UpdatedAt, Expr::value(at))
                .filter(agents::Column::Id.eq(agent.id))
                .filter(agents::Column::Status.eq(AgentStatus::Active.as_str()))
                .exec(txn.conn())
                .await
                .map_err(internal)?
                .rows_affected
                == 1;
            if suspended {
                let row = breakers::ActiveModel {
                    agent_id: Set(agent.id),
                    state: Set(OPEN.into()),
                    trips: Set(trips),
                    reason: Set(Some(reason.clone())),
                    opened_at: Set(Some(at)),
                    open_until: Set(Some(until)),
                    probes_left: Set(0),
                    probes_passed: Set(0),
                    updated_at: Set(at),
                };
                if existing.is_some() {
                    row.update(txn.conn()).await.map_err(internal)?;
                } else {
                    row.insert(txn.conn()).await.map_err(internal)?;
                }
            }
            suspended
        };
        if !won {
            return Ok(());
        }
        let detail = json!({"reason": reason, "trips": trips, "open_until": until, "from_probe": from_probe});
        let appended = txn.append(self.entry(agent, "breaker.tripped", "deny", &detail)).await?;
        txn.commit().await?;
        self.metrics.breaker_tripped();
        tracing::warn!(agent = %agent.id, reason = %reason, trips, "circuit breaker tripped");
        if let Err(e) = self.windows.clear(agent.id).await {
            tracing::warn!(agent = %agent.id, error = %e, "could not clear the breaker window");
        }
        self.events.publish(
            Event::new(events::BREAKER_TRIPPED, agent.sponsor_id, Some(agent.id), detail)
                .audit_seq(appended.seq),
        );
        if let Err(e) = self.trust.record(agent, TrustEvent::BreakerTrip, None).await {
            tracing::error!(agent = %agent.id, error = %e.message, "trust update after a trip failed");
        }
        Ok(())
    }

    async fn hold(
        &self,
        agent: &agents::Model,
        reason: &str,
        tripped: u64,
        total: u64,
    ) -> Result<(), AppError> {
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            if held.get(&agent.id).is_some_and(|at| at.elapsed() < self.config.window) {
                return Ok(());
            }
            held.insert(agent.id, Instant::now());
        }
        let detail = json!({"reason": reason, "tripped_agents": tripped, "live_agents": total,
                            "fleet_max_pct": self.config.fleet_max_pct});
        let appended = self.audit.append(self.entry(agent, "breaker.held", "allow", &detail)).await?;
        tracing::warn!(agent = %agent.id, reason, "breaker trip held by the fleet guard");
        self.events.publish(
            Event::new(events::BREAKER_HELD, agent.sponsor_id, Some(agent.id), detail)
                .audit_seq(appended.seq),
        );
        Ok(())
    }

    async fn close_if_probed(&self, agent: &agents::Model) -> Result<(), AppError> {
        let at = now();
        let mut txn = self.audit.begin().await?;
        let closed = breakers::Entity::update_many()
            .col_expr(breakers::Column::State, Expr::value(CLOSED))
            .col_expr(breakers::Column::UpdatedAt, Expr::value(at))
            .filter(breakers::Column::AgentId.eq(agent.id))
            .filter(breakers::Column::State.eq(HALF_OPEN))
            .filter(breakers::Column::ProbesPassed.gte(self.config.probes))
            .exec(txn.conn())
            .await
            .map_err(internal)?
            .rows_affected
            == 1;
        if !closed {
            return Ok(());
        }
        agents::Entity::update_many()
            .col_expr(agents::Column::Status, Expr::value(AgentStatus::Active.as_str()))
            .col_expr(agents::Column::SuspendedAt, Expr::value(Option::<chrono::DateTime<Utc>>::None))
            .col_expr(agents::Column::SuspendedReason, Expr::value(Option::<String>::None))
            .col_expr(agents::Column::UpdatedAt, Expr::value(at))
            .filter(agents::Column::Id.eq(agent.id))
            .filter(agents::Column::Status.eq(AgentStatus::Suspended.as_str()))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        let detail = json!({"by": "probes", "probes": self.config.probes});
        let appended = txn.append(self.entry(agent, "breaker.reset", "allow", &detail)).await?;
        txn.commit().await?;
        tracing::info!(agent = %agent.id, "breaker closed: probes passed");
        self.events.publish(
            Event::new(events::BREAKER_RESET, agent.sponsor_id, Some(agent.id), detail)
                .audit_seq(appended.seq),
        );
        Ok(())
    }

    fn entry(
        &self,
        agent: &agents::Model,
        kind: &str,
        decision: &str,
        detail: &serde_json::Value,
    ) -> AuditEntry {
        AuditEntry {
            sponsor_id: Some(agent.sponsor_id),
            agent_id: Some(agent.id),
            kind: kind.to_owned(),
            stage: Some("breaker".into()),
            decision: Some(decision.to_owned()),
            detail: Some(canonical_json(detail)),
            ..AuditEntry::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(total: u64, denied: u64, errors: u64, spend: i64, new_hosts: u64) -> Stats {
        Stats {
            total,
            denied,
            upstream_errors: errors,
            performed: total - denied,
            spend_micros: spend,
            new_hosts,
        }
    }

    #[test]
    fn each_detector_fires_at_its_threshold_and_not_below() {
        let c = BreakerConfig::default();
        assert_eq!(detect(&stats(9, 9, 0, 0, 0), &c), None, "too few samples to judge a rate");
        assert!(detect(&stats(10, 5, 0, 0, 0), &c).unwrap().starts_with("denial rate"));
        assert_eq!(detect(&stats(10, 4, 0, 0, 0), &c), None);
        assert!(detect(&stats(10, 0, 5, 0, 0), &c).unwrap().starts_with("upstream error rate"));
        assert_eq!(detect(&stats(10, 0, 4, 0, 0), &c), None);
        assert!(detect(&stats(601, 0, 0, 0, 0), &c).unwrap().starts_with("request burst"));
        assert_eq!(detect(&stats(600, 0, 0, 0, 0), &c), None);
        assert!(detect(&stats(1, 0, 0, 100_000_001, 0), &c).unwrap().starts_with("spend velocity"));
        assert_eq!(detect(&stats(1, 0, 0, 100_000_000, 0), &c), None);
        assert!(detect(&stats(11, 0, 0, 0, 11), &c).unwrap().starts_with("first-seen hosts"));
        assert_eq!(detect(&stats(10, 0, 0, 0, 10), &c), None);
        let off = BreakerConfig { denial_rate_pct: 0, ..c };
        assert_eq!(detect(&stats(10, 10, 0, 0, 0), &off), None, "0 turns a detector off");
    }

    #[test]
    fn cooldown_escalates_with_trips_and_is_capped() {
        let c = BreakerConfig::default();
        assert_eq!(cooldown(&c, 1), Duration::from_secs(30));
        assert_eq!(cooldown(&c, 3), Duration::from_secs(90));
        assert_eq!(cooldown(&c, 1000), Duration::from_secs(3600));
    }
}
