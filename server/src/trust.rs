//! The trust engine: every agent has a score from 0 to 1000 (new agents start at
//! [`BASELINE`], 500) that its behaviour moves, and a tier derived from it.
//!
//! [`apply`] is the whole formula, a pure function in integer arithmetic, so the
//! same history always gives the same score (README, "Trust"):
//!
//! 1. **Decay.** For every full 24 hours between the last trust event and now,
//!    the score moves 10% of its distance toward 500, rounded up (so it always
//!    arrives): `step = ceil(|500 - score| / 10)`. It is computed at the moment of
//!    the next event, from that event's time.
//! 2. **The event.** `success` +2 below 700 and +1 from 700 (diminishing returns),
//!    and only the first [`DAILY_SUCCESSES`] successes of a UTC day count
//!    (further ones change nothing); `policy_deny` −25, `egress_block` −40,
//!    `budget_hit` −15, `breaker_trip` −50, `approval_rejected` −30.
//! 3. The result is clamped to 0..=1000.
//!
//! Only outcomes that mean something are successes ([`counts_as_success`]): a call
//! performed with a 2xx answer on a host its sponsor vouched for — the call carried
//! one of the sponsor's secrets (whose allowed hosts it matched), went through one
//! of the sponsor's connections, or was approved by the sponsor. A 404 (or any
//! non-2xx) from any host, and a 2xx from a host nobody vouched for, earn nothing.
//! So trust is earned over distinct days at best: from 500 to the trusted tier
//! (700) takes 10 days, from there to verified (900) 20 more (README, "Trust").
//!
//! [`TrustService`] applies it atomically: in one transaction it reads the score,
//! computes, updates `agents.trust_score` only if it still holds the value read
//! (retrying on conflict, so concurrent requests never lose an update), writes one
//! `trust_events` row per non-zero step (`decay`, then the event) and a
//! `trust.changed` audit record. Nothing is written when the score does not change:
//! the state is read first without the writer's lock, and an agent that has used up
//! today's counted successes is remembered in memory ([`SuccessCap`]), so the
//! common case on a busy agent — a success that changes nothing — takes no lock
//! and no transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use app::error::AppError;
use app::model::{TrustEventView, TrustView};
use chrono::{DateTime, Duration, DurationRound, Utc};
use entity::{agents, trust_events};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::audit::{AuditEntry, AuditLog, canonical_json};
use crate::call::Stage;
use crate::db::{internal, now};

pub const MIN_SCORE: i32 = 0;
pub const MAX_SCORE: i32 = 1000;
/// Where new agents start and where idle agents drift back to.
pub const BASELINE: i32 = 500;
/// Gain per counted success below [`SLOW_GAIN_FROM`].
pub const SUCCESS_GAIN: i32 = 2;
/// From this score on, a counted success adds [`SLOW_SUCCESS_GAIN`] only.
pub const SLOW_GAIN_FROM: i32 = 700;
pub const SLOW_SUCCESS_GAIN: i32 = 1;
/// Successes that count within one UTC day; later ones that day add nothing.
pub const DAILY_SUCCESSES: i32 = 10;
/// Each full idle period moves the score `1 / DECAY_DIVISOR` of the way to the baseline.
pub const DECAY_DIVISOR: i32 = 10;
pub const DECAY_PERIOD_SECS: i64 = 24 * 60 * 60;
/// History entries returned by `GET /api/agents/{id}/trust`.
pub const HISTORY_LIMIT: u64 = 100;
/// Attempts of the guarded update before giving up.
const MAX_ATTEMPTS: usize = 8;

/// What moves trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrustEvent {
    /// An allowed call that reached the upstream and meant something
    /// ([`counts_as_success`]).
    Success,
    PolicyDeny,
    EgressBlock,
    BudgetHit,
    BreakerTrip,
    ApprovalRejected,
}

impl TrustEvent {
    pub const ALL: [TrustEvent; 6] = [
        TrustEvent::Success,
        TrustEvent::PolicyDeny,
        TrustEvent::EgressBlock,
        TrustEvent::BudgetHit,
        TrustEvent::BreakerTrip,
        TrustEvent::ApprovalRejected,
    ];

    /// The change this event makes at 500 (before the daily count and the bounds).
    pub fn delta(self) -> i32 {
        match self {
            TrustEvent::Success => SUCCESS_GAIN,
            TrustEvent::PolicyDeny => -25,
            TrustEvent::EgressBlock => -40,
            TrustEvent::BudgetHit => -15,
            TrustEvent::BreakerTrip => -50,
            TrustEvent::ApprovalRejected => -30,
        }
    }

    /// The `reason` stored in `trust_events` and shown in the history.
    pub fn reason(self) -> &'static str {
        match self {
            TrustEvent::Success => "success",
            TrustEvent::PolicyDeny => "policy_deny",
            TrustEvent::EgressBlock => "egress_block",
            TrustEvent::BudgetHit => "budget_hit",
            TrustEvent::BreakerTrip => "breaker_trip",
            TrustEvent::ApprovalRejected => "approval_rejected",
        }
    }

    /// The event a proxy denial at `stage` counts as. Only policy, egress and budget
    /// denials move trust for now: a breaker denial is the consequence of a
    /// suspension (not new behaviour), secret denials are usually a sponsor's
    /// configuration, and unauthenticated calls belong to no agent.
    pub fn for_denial(stage: Stage) -> Option<Self> {
        match stage {
            Stage::Policy => Some(TrustEvent::PolicyDeny),
            Stage::Egress => Some(TrustEvent::EgressBlock),
            Stage::Budget => Some(TrustEvent::BudgetHit),
            _ => None,
        }
    }
}

/// Trust tiers: untrusted < 300 ≤ probation < 500 ≤ standard < 700 ≤ trusted < 900 ≤ verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Untrusted,
    Probation,
    Standard,
    Trusted,
    Verified,
}

impl Tier {
    pub fn of(score: i32) -> Self {
        match score {
            ..300 => Tier::Untrusted,
            300..500 => Tier::Probation,
            500..700 => Tier::Standard,
            700..900 => Tier::Trusted,
            _ => Tier::Verified,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Untrusted => "untrusted",
            Tier::Probation => "probation",
            Tier::Standard => "standard",
            Tier::Trusted => "trusted",
            Tier::Verified => "verified",
        }
    }
}

/// Whether a performed call that got `status` earns trust: a 2xx on a host its
/// sponsor `vouched` for (a secret of theirs was injected, so its allowed hosts
/// matched; or it went through one of their connections; or they approved it).
pub fn counts_as_success(status: u16, vouched: bool) -> bool {
    (200..300).contains(&status) && vouched
}

/// What one counted success adds at `score`: less as trust grows.
pub fn success_gain(score: i32) -> i32 {
    if score < SLOW_GAIN_FROM { SUCCESS_GAIN } else { SLOW_SUCCESS_GAIN }
}

/// The tier name of a score.
pub fn tier(score: i32) -> &'static str {
    Tier::of(score).as_str()
}

/// Everything the formula needs to know about the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustState {
    pub score: i32,
    /// Time of the last trust change (the agent's creation before the first).
    pub last_event_at: DateTime<Utc>,
    /// Successes already counted in the UTC day of `now`.
    pub successes_today: i32,
}

/// One application of the formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Full idle periods since the last event.
    pub idle_days: i64,
    /// The decay toward the baseline (0 when none).
    pub decay: i32,
    /// What the event itself changed, after the cap and the bounds.
    pub event_delta: i32,
    pub score: i32,
}

impl Applied {
    pub fn total(&self) -> i32 {
        self.decay + self.event_delta
    }
}

/// The start of the UTC day holding `at`: the window of the success count.
pub fn day_start(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(Duration::days(1)).unwrap_or(at)
}

/// The score after `days` full idle periods.
pub fn decayed(mut score: i32, days: i64) -> i32 {
    for _ in 0..days {
        let distance = BASELINE - score;
        if distance == 0 {
            break;
        }
        let step = (distance.abs() + DECAY_DIVISOR - 1) / DECAY_DIVISOR;
        score += step * distance.signum();
    }
    score
}

/// The formula: decay for the idle time, then the event, within the bounds.
pub fn apply(state: TrustState, event: TrustEvent, now: DateTime<Utc>) -> Applied {
    let idle_secs = (now - state.last_event_at).num_seconds().max(0);
    let idle_days = idle_secs / DECAY_PERIOD_SECS;
    let before = state.score.clamp(MIN_SCORE, MAX_SCORE);
    let after_decay = decayed(before, idle_days);
    let wanted = match event {
        TrustEvent::Success if state.successes_today >= DAILY_SUCCESSES => 0,
        TrustEvent::Success => success_gain(after_decay),
        other => other.delta(),
    };
    let score = (after_decay + wanted).clamp(MIN_SCORE, MAX_SCORE);
    Applied { idle_days, decay: after_decay - before, event_delta: score - after_decay, score }
}

/// A replayable history: folds events in order, keeping the state [`apply`] needs
/// the way [`TrustService`] derives it from the stored rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub state: TrustState,
    day: DateTime<Utc>,
}

impl Replay {
    pub fn new(score: i32, created_at: DateTime<Utc>) -> Self {
        Self {
            state: TrustState { score, last_event_at: created_at, successes_today: 0 },
            day: day_start(created_at),
        }
    }

    pub fn event(&mut self, event: TrustEvent, at: DateTime<Utc>) -> Applied {
        if day_start(at) != self.day {
            self.day = day_start(at);
            self.state.successes_today = 0;
        }
        let applied = apply(self.state, event, at);
        if applied.total() != 0 {
            self.state.score = applied.score;
            self.state.last_event_at = at;
            if event == TrustEvent::Success && applied.event_delta > 0 {
                self.state.successes_today += 1;
            }
        }
        applied
    }
}

/// A change that crossed a tier boundary, for whoever wants to announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierChange {
    pub from: Tier,
    pub to: Tier,
}

/// What a recorded event did to the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustChange {
    pub before: i32,
    pub after: i32,
    pub audit_seq: i64,
    pub tier_change: Option<TierChange>,
}

/// Agents whose successes can change nothing until the next UTC day.
///
/// Exact, not a guess: within one UTC day the count of counted successes only
/// grows (nothing takes it back), so once it reaches [`DAILY_SUCCESSES`] every
/// further success that day adds 0 — and decays nothing either, since the last
/// change was a success that very day. No replica can make the fact untrue, so it
/// needs no invalidation; it simply stops applying when the day turns.
#[derive(Clone, Default)]
pub struct SuccessCap {
    reached: Arc<Mutex<HashMap<Uuid, DateTime<Utc>>>>,
}

/// Agents remembered at most; past it, entries of earlier hours are dropped.
const SUCCESS_CAP_LIMIT: usize = 100_000;

impl SuccessCap {
    /// Whether `agent_id` has used up the counted successes of the day holding `at`.
    pub fn reached(&self, agent_id: Uuid, at: DateTime<Utc>) -> bool {
        let reached = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        reached.get(&agent_id) == Some(&day_start(at))
    }

    /// Remembers that `agent_id` used up the counted successes of the day holding `at`.
    pub fn remember(&self, agent_id: Uuid, at: DateTime<Utc>) {
        let day = day_start(at);
        let mut reached = self.reached.lock().unwrap_or_else(|e| e.into_inner());
        if reached.len() >= SUCCESS_CAP_LIMIT {
            reached.retain(|_, d| *d >= day);
            if reached.len() >= SUCCESS_CAP_LIMIT {
                reached.clear();
            }
        }
        reached.insert(agent_id, day);
    }
}

#[derive(Clone)]
pub struct TrustService {
    db: sea_orm::DatabaseConnection,
    audit: AuditLog,
    events: crate::events::EventBus,
    success_cap: SuccessCap,
}

impl TrustService {
    pub fn new(db: sea_orm::DatabaseConnection, audit: AuditLog, events: crate::events::EventBus) -> Self {
        Self { db, audit, events, success_cap: SuccessCap::default() }
    }

    /// Applies `event` to the agent's score now. `Ok(None)` when the score does not
    /// change (nothing is written then).
    pub async fn record(
        &self,
        agent: &agents::Model,
        event: TrustEvent,
        request_id: Option<&str>,
    ) -> Result<Option<TrustChange>, AppError> {
        let at = now();
        if event == TrustEvent::Success && self.success_cap.reached(agent.id, at) {
            return Ok(None);
        }
        // Read without the writer's lock first: most events on a busy agent change
        // nothing, and those need no transaction. (A change found here is computed
        // again under the lock below, from what is current then.)
        let Some(state) = read_state(&self.db, agent, at).await? else { return Ok(None) };
        if apply(state, event, at).total() == 0 {
            if event == TrustEvent::Success && state.successes_today >= DAILY_SUCCESSES {
                self.success_cap.remember(agent.id, at);
            }
            return Ok(None);
        }
        for _ in 0..MAX_ATTEMPTS {
            if let Some(done) = self.attempt(agent, event, request_id).await? {
                return Ok(done);
            }
        }
        tracing::error!(agent = %agent.id, "trust update kept conflicting; giving up");
        Err(AppError::internal())
    }

    /// One guarded attempt: `Ok(None)` when another request changed the score
    /// between the read and the update (then nothing was written; try again).
    async fn attempt(
        &self,
        agent: &agents::Model,
        event: TrustEvent,
        request_id: Option<&str>,
    ) -> Result<Option<Option<TrustChange>>, AppError> {
        let mut txn = self.audit.begin().await?;
        let db = txn.conn();
        // Take the agent's row lock first (PostgreSQL; SQLite's `BEGIN IMMEDIATE`
        // already serialises writers), so concurrent events for one agent queue
        // here instead of failing the guarded update below again and again.
        agents::Entity::update_many()
            .col_expr(agents::Column::TrustScore, Expr::col(agents::Column::TrustScore))
            .filter(agents::Column::Id.eq(agent.id))
            .exec(db)
            .await
            .map_err(internal)?;
        let at = now();
        let Some(state) = read_state(db, agent, at).await? else { return Ok(Some(None)) };
        let score = state.score;
        let applied = apply(state, event, at);
        if applied.total() == 0 {
            return Ok(Some(None));
        }
        // Guarded by the value read: a concurrent change makes this touch no row.
        let updated = agents::Entity::update_many()
            .col_expr(agents::Column::TrustScore, Expr::value(applied.score))
            .filter(agents::Column::Id.eq(agent.id))
            .filter(agents::Column::TrustScore.eq(score))
            .exec(db)
            .await
            .map_err(internal)?;
        if updated.rows_affected != 1 {
            return Ok(None);
        }
        let (from, to) = (Tier::of(score), Tier::of(applied.score));
        let appended = txn
            .append(AuditEntry {
                sponsor_id: Some(agent.sponsor_id),
                agent_id: Some(agent.id),
                request_id: request_id.map(str::to_owned),
                kind: "trust.changed".into(),
                detail: Some(canonical_json(&json!({
                    "reason": event.reason(),
                    "delta": applied.total(),
                    "event_delta": applied.event_delta,
                    "decay": applied.decay,
                    "idle_days": applied.idle_days,
                    "previous_score": score,
                    "score": applied.score,
                    "previous_tier": from.as_str(),
                    "tier": to.as_str(),
                }))),
                ..AuditEntry::default()
            })
            .await?;
        let mut running = score;
        for (reason, delta) in [("decay", applied.decay), (event.reason(), applied.event_delta)] {
            if delta == 0 {
                continue;
            }
            running += delta;
            insert_event(txn.conn(), agent.id, at, delta, running, reason, appended.seq).await?;
        }
        txn.commit().await?;
        let tier_change = (from != to).then_some(TierChange { from, to });
        if let Some(change) = tier_change {
            tracing::info!(agent = %agent.id, from = change.from.as_str(), to = change.to.as_str(), "trust tier changed");
            self.events.publish(
                crate::events::Event::new(
                    crate::events::TRUST_TIER_CHANGED,
                    agent.sponsor_id,
                    Some(agent.id),
                    json!({"from": change.from.as_str(), "to": change.to.as_str(), "score": applied.score,
                           "reason": event.reason()}),
                )
                .audit_seq(appended.seq),
            );
        }
        Ok(Some(Some(TrustChange {
            before: score,
            after: applied.score,
            audit_seq: appended.seq,
            tier_change,
        })))
    }

    /// The score, tier and latest history of one of the sponsor's agents.
    pub async fn view(&self, sponsor_id: Uuid, agent_id: Uuid) -> Result<TrustView, AppError> {
        let agent = agents::Entity::find_by_id(agent_id)
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("agent"))?;
        let history = trust_events::Entity::find()
            .filter(trust_events::Column::AgentId.eq(agent_id))
            .order_by_desc(trust_events::Column::At)
            .order_by_desc(trust_events::Column::Id)
            .limit(HISTORY_LIMIT)
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|e| TrustEventView {
                at: e.at,
                delta: e.delta,
                score_after: e.score_after,
                reason: e.reason,
            })
            .collect();
        Ok(TrustView {
            agent_id,
            score: agent.trust_score,
            tier: tier(agent.trust_score).to_owned(),
            history,
        })
    }
}

/// What [`apply`] needs, as stored: the score, the last change, today's counted
/// successes (one `success` row each).
/// `None` when the agent is gone.
async fn read_state(
    db: &impl ConnectionTrait,
    agent: &agents::Model,
    at: DateTime<Utc>,
) -> Result<Option<TrustState>, AppError> {
    let Some(score) = agents::Entity::find_by_id(agent.id)
        .select_only()
        .column(agents::Column::TrustScore)
        .into_tuple::<i32>()
        .one(db)
        .await
        .map_err(internal)?
    else {
        return Ok(None);
    };
    let last_event_at: Option<DateTime<Utc>> = trust_events::Entity::find()
        .select_only()
        .column(trust_events::Column::At)
        .filter(trust_events::Column::AgentId.eq(agent.id))
        .order_by_desc(trust_events::Column::At)
        .limit(1)
        .into_tuple()
        .one(db)
        .await
        .map_err(internal)?;
    let successes = trust_events::Entity::find()
        .filter(trust_events::Column::AgentId.eq(agent.id))
        .filter(trust_events::Column::Reason.eq(TrustEvent::Success.reason()))
        .filter(trust_events::Column::At.gte(day_start(at)))
        .count(db)
        .await
        .map_err(internal)?;
    Ok(Some(TrustState {
        score,
        last_event_at: last_event_at.unwrap_or(agent.created_at),
        successes_today: i32::try_from(successes).unwrap_or(i32::MAX),
    }))
}

async fn insert_event(
    db: &impl ConnectionTrait,
    agent_id: Uuid,
    at: DateTime<Utc>,
    delta: i32,
    score_after: i32,
    reason: &str,
    audit_seq: i64,
) -> Result<(), AppError> {
    trust_events::ActiveModel {
        id: Set(Uuid::now_v7()),
        agent_id: Set(agent_id),
        at: Set(at),
        delta: Set(delta),
        score_after: Set(score_after),
        reason: Set(reason.to_owned()),
        audit_seq: Set(Some(audit_seq)),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
    }

    fn state(score: i32) -> TrustState {
        TrustState { score, last_event_at: t0(), successes_today: 0 }
    }

    #[test]
    fn each_event_has_its_delta() {
        let table = [
            (TrustEvent::Success, 502),
            (TrustEvent::PolicyDeny, 475),
            (TrustEvent::EgressBlock, 460),
            (TrustEvent::BudgetHit, 485),
            (TrustEvent::BreakerTrip, 450),
            (TrustEvent::ApprovalRejected, 470),
        ];
        for (event, expected) in table {
            let a = apply(state(500), event, t0());
            assert_eq!((a.score, a.decay, a.event_delta), (expected, 0, expected - 500), "{event:?}");
        }
        assert_eq!(TrustEvent::ALL.len(), table.len());
    }

    #[test]
    fn ten_successes_count_per_utc_day_with_diminishing_returns() {
        let s = TrustState { successes_today: 9, ..state(600) };
        assert_eq!(apply(s, TrustEvent::Success, t0()).score, 602);
        let s = TrustState { successes_today: 10, ..state(600) };
        assert_eq!(apply(s, TrustEvent::Success, t0()).total(), 0);
        // From 700 a success adds 1.
        assert_eq!(apply(state(699), TrustEvent::Success, t0()).score, 701);
        assert_eq!(apply(state(700), TrustEvent::Success, t0()).score, 701);
        assert_eq!(apply(state(950), TrustEvent::Success, t0()).score, 951);
        // Penalties are never capped.
        let s = TrustState { successes_today: 10, ..state(600) };
        assert_eq!(apply(s, TrustEvent::PolicyDeny, t0()).score, 575);

        // A replay: 400 successes in one day add 20; the next UTC day adds again.
        let mut r = Replay::new(500, t0());
        for i in 0..400 {
            r.event(TrustEvent::Success, t0() + Duration::seconds(i));
        }
        assert_eq!(r.state.score, 520);
        r.event(TrustEvent::Success, t0() + Duration::hours(12));
        assert_eq!(r.state.score, 522);
    }

    #[test]
    fn at_best_trusted_takes_ten_days_and_verified_thirty() {
        // Twenty successes every day (only ten count), from a new agent.
        let mut r = Replay::new(BASELINE, t0());
        let mut reached = HashMap::new();
        for day in 0..60 {
            for i in 0..20 {
                r.event(TrustEvent::Success, t0() + Duration::days(day) + Duration::minutes(i));
            }
            reached.entry(Tier::of(r.state.score)).or_insert(day + 1);
        }
        assert_eq!(reached[&Tier::Trusted], 10, "500 → 700: 10 days × 10 × +2");
        assert_eq!(reached[&Tier::Verified], 30, "700 → 900: 20 days × 10 × +1");
        assert_eq!(r.state.score, 1000);
    }

    #[test]
    fn only_meaningful_outcomes_are_successes() {
        assert!(counts_as_success(200, true) && counts_as_success(204, true));
        for status in [100, 301, 304, 400, 401, 404, 429, 500, 503] {
            assert!(!counts_as_success(status, true), "{status}");
        }
        assert!(!counts_as_success(200, false), "a host nobody vouched for");
    }

    #[test]
    fn scores_stay_within_bounds() {
        assert_eq!(apply(state(1000), TrustEvent::Success, t0()).total(), 0);
        assert_eq!(apply(state(999), TrustEvent::Success, t0()).score, 1000);
        assert_eq!(apply(state(10), TrustEvent::BreakerTrip, t0()).score, 0);
        assert_eq!(apply(state(0), TrustEvent::EgressBlock, t0()).total(), 0);
        let mut r = Replay::new(500, t0());
        for i in 0..100 {
            r.event(TrustEvent::BreakerTrip, t0() + Duration::seconds(i));
        }
        assert_eq!(r.state.score, 0);
    }

    #[test]
    fn idle_days_decay_toward_the_baseline() {
        // (start, idle days, score after decay)
        let table = [
            (800, 0, 800),
            (800, 1, 770),
            (800, 2, 743),
            (800, 10, 602),
            (200, 1, 230),
            (200, 2, 257),
            (200, 10, 398),
            (1000, 1, 950),
            (0, 10, 329),
            (505, 1, 504),
            (505, 10, 500),
            (800, 10_000, 500),
        ];
        for (start, days, expected) in table {
            assert_eq!(decayed(start, days), expected, "{start} after {days} days");
        }
        // Through `apply`: only full 24-hour periods count, measured at the event.
        let s = state(800);
        let a = apply(s, TrustEvent::PolicyDeny, t0() + Duration::hours(47));
        assert_eq!((a.idle_days, a.decay, a.event_delta, a.score), (1, -30, -25, 745));
        let a = apply(s, TrustEvent::Success, t0() + Duration::days(2));
        // (From 700 a success adds 1.)
        assert_eq!((a.idle_days, a.decay, a.score), (2, -57, 744));
        let a = apply(s, TrustEvent::Success, t0() + Duration::hours(23));
        assert_eq!((a.idle_days, a.score), (0, 801));
        // A clock that went backwards decays nothing.
        assert_eq!(apply(s, TrustEvent::Success, t0() - Duration::days(3)).decay, 0);
    }

    #[test]
    fn the_success_cap_is_remembered_for_its_utc_day_only() {
        // t0 is noon UTC.
        let cap = SuccessCap::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(!cap.reached(a, t0()));
        cap.remember(a, t0() + Duration::minutes(5));
        assert!(cap.reached(a, t0()), "same UTC day");
        assert!(cap.reached(a, t0() + Duration::minutes(719)));
        assert!(!cap.reached(b, t0()), "another agent");
        assert!(!cap.reached(a, t0() + Duration::hours(12)), "the next day gains again");
        assert!(
            !cap.reached(a, t0() - Duration::hours(12) - Duration::minutes(1)),
            "an earlier day is not this one"
        );
        cap.remember(a, t0() + Duration::hours(13));
        assert!(!cap.reached(a, t0()));
        assert!(cap.reached(a, t0() + Duration::hours(20)));
    }

    #[test]
    fn tiers() {
        let table = [
            (0, "untrusted"),
            (299, "untrusted"),
            (300, "probation"),
            (499, "probation"),
            (500, "standard"),
            (699, "standard"),
            (700, "trusted"),
            (899, "trusted"),
            (900, "verified"),
            (1000, "verified"),
        ];
        for (score, name) in table {
            assert_eq!(tier(score), name, "{score}");
        }
    }

    #[test]
    fn replaying_a_history_is_deterministic() {
        let history: Vec<(TrustEvent, DateTime<Utc>)> = (0..500i64)
            .map(|i| {
                let event = TrustEvent::ALL[((i * 7 + i / 3) % 11).min(5) as usize];
                let event = if i % 3 == 0 { event } else { TrustEvent::Success };
                (event, t0() + Duration::minutes(i * i % 4000 + i * 17))
            })
            .collect();
        let run = || {
            let mut r = Replay::new(BASELINE, t0());
            let steps: Vec<Applied> = history.iter().map(|(e, at)| r.event(*e, *at)).collect();
            (r.state, steps)
        };
        let (first, second) = (run(), run());
        assert_eq!(first, second);
        assert!((MIN_SCORE..=MAX_SCORE).contains(&first.0.score));
    }
}
