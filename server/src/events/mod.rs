//! Real-time events for sponsors: what happened to their agents, as it happens.
//!
//! Services call [`EventBus::publish`] after a change is committed (an agent created,
//! suspended, resumed or deleted; a proxy call denied). The dashboard listens on
//! `GET /ws` ([`crate::http::ws`]), which calls [`EventBus::subscribe`]: a subscriber
//! only ever receives its own sponsor's events.
//!
//! **Ids** are UUIDv7 strings: unique without coordination between replicas and
//! ordered by time, so "events after `since`" means the same thing on every replica.
//!
//! **Replay.** Each replica keeps the recent events of every sponsor (at most
//! [`REPLAY_MAX_EVENTS`], none older than [`REPLAY_MAX_AGE`]) in the order it received
//! them. A reconnecting dashboard passes the last id it saw and gets everything after
//! it; an id the buffer no longer holds replays every buffered event with a later id.
//!
//! **Fan-out** sits behind [`Fanout`]: [`InProcess`] (one process, `tokio::sync::broadcast`
//! per sponsor) or [`redis_pubsub::RedisFanout`] (several replicas, Redis pub/sub, chosen by
//! `REDIS_URL`). Either way the publishing replica delivers to its own subscribers and
//! buffer at once, so events keep flowing while Redis is down.

pub mod redis_pubsub;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

pub const AGENT_CREATED: &str = "agent.created";
pub const AGENT_SUSPENDED: &str = "agent.suspended";
pub const AGENT_RESUMED: &str = "agent.resumed";
pub const AGENT_DELETED: &str = "agent.deleted";
pub const PROXY_DENIED: &str = "proxy.denied";
pub const APPROVAL_REQUESTED: &str = "approval.requested";
/// Approved or rejected by the sponsor (`data.status`).
pub const APPROVAL_RESOLVED: &str = "approval.resolved";
pub const APPROVAL_EXPIRED: &str = "approval.expired";
pub const BREAKER_TRIPPED: &str = "breaker.tripped";
/// The breaker closed again (half-open probes passed, or the sponsor resumed).
pub const BREAKER_RESET: &str = "breaker.reset";
/// A trip the fleet guard held back: too many of the sponsor's agents already tripped.
pub const BREAKER_HELD: &str = "breaker.held";
/// Spend crossed the wallet's alert threshold (once per day/month window).
pub const BUDGET_ALERT: &str = "budget.alert";
/// A call was refused because a limit is reached.
pub const BUDGET_EXHAUSTED: &str = "budget.exhausted";
pub const TRUST_TIER_CHANGED: &str = "trust.tier_changed";
/// Someone accepted an invitation (`data`: `member`, `role`).
pub const ORG_MEMBER_JOINED: &str = "org.member_joined";
/// A member was removed or left (`data`: `member`, `role`, `by`).
pub const ORG_MEMBER_REMOVED: &str = "org.member_removed";
/// A member's role changed (`data`: `member`, `from`, `to`, `by`).
pub const ORG_MEMBER_ROLE_CHANGED: &str = "org.member_role_changed";
/// A notification channel was disabled after a long failure streak (`data`:
/// `channel_id`, `failures`, `reason`).
pub const CHANNEL_DISABLED: &str = "channel.disabled";

/// At most this many recent events are kept per sponsor for `since` replays.
pub const REPLAY_MAX_EVENTS: usize = 500;
/// Events older than this are dropped from the replay buffer.
pub const REPLAY_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Live events a slow subscriber may fall behind before it is resynchronised from the buffer.
const CHANNEL_CAPACITY: usize = 256;
/// Sponsors with nothing buffered and nobody listening are forgotten this often.
const SWEEP_EVERY: u64 = 1024;

/// One thing that happened, for one sponsor. `data` is small and never holds a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// UUIDv7: unique across replicas, ordered by time.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339, UTC.
    pub time: DateTime<Utc>,
    pub sponsor_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<Uuid>,
    #[serde(default)]
    pub link: Link,
    #[serde(default)]
    pub data: Value,
}

/// Where to read more: the audit record or the approval the event is about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Link {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<Uuid>,
}

impl Event {
    pub fn new(kind: &str, sponsor_id: Uuid, agent_id: Option<Uuid>, data: Value) -> Self {
        Self {
            id: Uuid::now_v7().to_string(),
            kind: kind.to_owned(),
            time: Utc::now(),
            sponsor_id,
            agent_id,
            link: Link::default(),
            data,
        }
    }

    pub fn audit_seq(mut self, seq: i64) -> Self {
        self.link.audit_seq = Some(seq);
        self
    }

    pub fn approval(mut self, id: Uuid) -> Self {
        self.link.approval_id = Some(id);
        self
    }
}

/// Carries an event published on this replica to its sponsor's subscribers.
pub trait Fanout: Send + Sync {
    fn publish(&self, event: Event);
    /// `None` in-process; with a shared transport, whether it is connected right now.
    fn connected(&self) -> Option<bool> {
        None
    }
}

/// A single process: straight into the local buffers and channels.
pub struct InProcess {
    hub: Arc<Hub>,
}

impl Fanout for InProcess {
    fn publish(&self, event: Event) {
        self.hub.deliver(event);
    }
}

#[derive(Clone)]
pub struct EventBus {
    hub: Arc<Hub>,
    fanout: Arc<dyn Fanout>,
    /// A copy of every event published on this replica, for the notification
    /// outbox ([`crate::channels::outbox`]); set once by [`EventBus::tap`].
    tap: Arc<OnceLock<mpsc::Sender<Event>>>,
}

/// Events the outbox may fall behind by before new ones are dropped (and counted in the log).
pub const TAP_CAPACITY: usize = 10_000;

impl EventBus {
    pub fn in_process() -> Self {
        let hub = Arc::new(Hub::default());
        Self { fanout: Arc::new(InProcess { hub: hub.clone() }), hub, tap: Arc::default() }
    }

    /// Redis pub/sub when `redis_url` is set, else in-process. Needs a Tokio runtime
    /// (the Redis side runs in a background task that reconnects on its own).
    pub fn from_config(redis_url: Option<&str>) -> Self {
        let Some(url) = redis_url else {
            return Self::in_process();
        };
        let hub = Arc::new(Hub::default());
        match redis_pubsub::RedisFanout::start(url, hub.clone()) {
            Ok(fanout) => Self { hub, fanout: Arc::new(fanout), tap: Arc::default() },
            Err(e) => {
                tracing::error!(error = %e, "REDIS_URL is unusable: events fan out in this process only");
                Self { fanout: Arc::new(InProcess { hub: hub.clone() }), hub, tap: Arc::default() }
            }
        }
    }

    /// Never fails and never blocks: events are best-effort notifications, the audit
    /// log is the record.
    pub fn publish(&self, event: Event) {
        if let Some(tap) = self.tap.get()
            && let Err(e) = tap.try_send(event.clone())
        {
            tracing::error!(kind = %event.kind, reason = %e, "notification outbox is behind: event not queued for channels");
        }
        self.fanout.publish(event);
    }

    /// Every event published on this replica from now on (not the ones other replicas
    /// publish: each event is taken once, by the replica where it happened). Only the
    /// first caller gets the stream.
    pub fn tap(&self) -> Option<mpsc::Receiver<Event>> {
        let (tx, rx) = mpsc::channel(TAP_CAPACITY);
        self.tap.set(tx).ok().map(|()| rx)
    }

    /// Events for `sponsor_id` from now on, preceded by the buffered ones after `since`.
    pub fn subscribe(&self, sponsor_id: Uuid, since: Option<&str>) -> Subscription {
        self.hub.subscribe(self.hub.clone(), sponsor_id, since)
    }

    /// `None` in-process; with Redis, whether it is connected right now.
    pub fn redis_connected(&self) -> Option<bool> {
        self.fanout.connected()
    }
}

struct SponsorStream {
    recent: VecDeque<Event>,
    tx: broadcast::Sender<Event>,
}

impl SponsorStream {
    fn new() -> Self {
        Self { recent: VecDeque::new(), tx: broadcast::channel(CHANNEL_CAPACITY).0 }
    }

    fn trim(&mut self) {
        let oldest = Utc::now() - chrono::Duration::from_std(REPLAY_MAX_AGE).unwrap_or_default();
        while self.recent.len() > REPLAY_MAX_EVENTS || self.recent.front().is_some_and(|e| e.time < oldest) {
            self.recent.pop_front();
        }
    }

    fn after(&self, since: Option<&str>) -> VecDeque<Event> {
        let Some(since) = since else {
            return VecDeque::new();
        };
        match self.recent.iter().position(|e| e.id == since) {
            Some(i) => self.recent.iter().skip(i + 1).cloned().collect(),
            None => self.recent.iter().filter(|e| e.id.as_str() > since).cloned().collect(),
        }
    }
}

/// This replica's per-sponsor replay buffers and live channels.
#[derive(Default)]
pub struct Hub {
    sponsors: Mutex<HashMap<Uuid, SponsorStream>>,
    delivered: AtomicU64,
}

impl Hub {
    /// Buffers the event and hands it to the sponsor's live subscribers.
    pub fn deliver(&self, event: Event) {
        let mut sponsors = self.sponsors.lock().unwrap_or_else(|p| p.into_inner());
        let stream = sponsors.entry(event.sponsor_id).or_insert_with(SponsorStream::new);
        stream.recent.push_back(event.clone());
        stream.trim();
        let _ = stream.tx.send(event);
        if self.delivered.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            sponsors.retain(|_, s| {
                s.trim();
                !s.recent.is_empty() || s.tx.receiver_count() > 0
            });
        }
    }

    fn subscribe(&self, me: Arc<Hub>, sponsor_id: Uuid, since: Option<&str>) -> Subscription {
        let mut sponsors = self.sponsors.lock().unwrap_or_else(|p| p.into_inner());
        let stream = sponsors.entry(sponsor_id).or_insert_with(SponsorStream::new);
        stream.trim();
        // Under the lock: nothing delivered in between is missed or doubled.
        let rx = stream.tx.subscribe();
        let pending = stream.after(since);
        let last_id = pending.back().or(stream.recent.back()).map(|e| e.id.clone());
        Subscription { hub: me, sponsor_id, rx, pending, last_id, skip: HashSet::new() }
    }

    /// Buffered events after `since`; all of them when `since` is `None`.
    fn replay(&self, sponsor_id: Uuid, since: Option<&str>) -> VecDeque<Event> {
        let sponsors = self.sponsors.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stream) = sponsors.get(&sponsor_id) else {
            return VecDeque::new();
        };
        match since {
            Some(_) => stream.after(since),
            None => stream.recent.clone(),
        }
    }
}

/// One sponsor's events, in the order this replica received them. A subscriber that
/// falls behind the live channel is caught up from the replay buffer.
pub struct Subscription {
    hub: Arc<Hub>,
    sponsor_id: Uuid,
    rx: broadcast::Receiver<Event>,
    pending: VecDeque<Event>,
    last_id: Option<String>,
    /// Ids already sent from the buffer after falling behind, still queued live.
    skip: HashSet<String>,
}

impl Subscription {
    /// The next event; `None` once the bus is gone. Cancel-safe.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last_id = Some(event.id.clone());
                return Some(event);
            }
            match self.rx.recv().await {
                Ok(event) => {
                    if self.skip.remove(&event.id) {
                        continue;
                    }
                    self.last_id = Some(event.id.clone());
                    return Some(event);
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(sponsor = %self.sponsor_id, missed, "event subscriber lagged; replaying");
                    self.pending = self.hub.replay(self.sponsor_id, self.last_id.as_deref());
                    self.skip = self.pending.iter().map(|e| e.id.clone()).collect();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The same events as a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = Event> + Send {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|e| (e, s)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sponsor: Uuid, kind: &str) -> Event {
        Event::new(kind, sponsor, None, serde_json::json!({}))
    }

    #[tokio::test]
    async fn subscribers_only_see_their_sponsor() {
        let bus = EventBus::in_process();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut sa = bus.subscribe(a, None);
        let mut sb = bus.subscribe(b, None);
        bus.publish(event(a, AGENT_CREATED));
        bus.publish(event(b, AGENT_DELETED));
        assert_eq!(sa.next().await.unwrap().kind, AGENT_CREATED);
        assert_eq!(sb.next().await.unwrap().kind, AGENT_DELETED);
        let nothing = tokio::time::timeout(Duration::from_millis(50), sa.next()).await;
        assert!(nothing.is_err(), "sponsor A saw another sponsor's event");
    }

    #[tokio::test]
    async fn since_replays_after_the_id() {
        let bus = EventBus::in_process();
        let a = Uuid::now_v7();
        let events: Vec<Event> = (0..5).map(|_| event(a, AGENT_CREATED)).collect();
        for e in &events {
            bus.publish(e.clone());
        }
        let mut s = bus.subscribe(a, Some(&events[1].id));
        for e in &events[2..] {
            assert_eq!(s.next().await.unwrap().id, e.id);
        }
        // Unknown (older) id: everything later than it.
        let mut s = bus.subscribe(a, Some("00000000-0000-7000-8000-000000000000"));
        assert_eq!(s.next().await.unwrap().id, events[0].id);
        // No `since`: live events only.
        let mut s = bus.subscribe(a, None);
        assert!(tokio::time::timeout(Duration::from_millis(20), s.next()).await.is_err());
    }

    #[tokio::test]
    async fn buffer_is_bounded_and_lagging_subscribers_catch_up() {
        let bus = EventBus::in_process();
        let a = Uuid::now_v7();
        let mut s = bus.subscribe(a, None);
        let events: Vec<Event> = (0..REPLAY_MAX_EVENTS + 10).map(|_| event(a, AGENT_CREATED)).collect();
        for e in &events {
            bus.publish(e.clone());
        }
        // More than the channel holds: the subscriber resumes from the buffer, in order,
        // without duplicates (the oldest ten fell out of the buffer).
        let mut got = Vec::new();
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(50), s.next()).await {
            got.push(e.id);
        }
        let want: Vec<String> = events[10..].iter().map(|e| e.id.clone()).collect();
        assert_eq!(got, want);
        let replay = bus.hub.replay(a, Some("00000000-0000-7000-8000-000000000000"));
        assert_eq!(replay.len(), REPLAY_MAX_EVENTS);
    }

    #[test]
    fn the_wire_shape() {
        let sponsor = Uuid::now_v7();
        let e = Event::new(PROXY_DENIED, sponsor, Some(sponsor), serde_json::json!({"stage": "breaker"}))
            .audit_seq(7);
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], PROXY_DENIED);
        assert_eq!(v["link"], serde_json::json!({"audit_seq": 7}));
        assert!(DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).is_ok());
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}
