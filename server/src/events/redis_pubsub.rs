//! Redis pub/sub fan-out between replicas.
//!
//! Every replica publishes its events on one channel ([`CHANNEL`]) as
//! `{"origin": <replica id>, "event": {…}}` and subscribes to it, feeding the events
//! of other replicas into its own [`Hub`] (so every replica's replay buffer holds
//! every sponsor's events and `since` works whichever replica a dashboard reconnects
//! to). Its own events it has already delivered locally, so it skips them.
//!
//! Failure: the publishing replica always delivers locally first, so while Redis is
//! down events still reach the subscribers on the same replica. One warning is logged
//! when Redis becomes unreachable (not one per event); a background task reconnects
//! with exponential back-off (0.5 s to 30 s) and logs when fan-out is restored.
//! Pub/sub is at-most-once: events published by other replicas during an outage do
//! not reach this replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Event, Fanout, Hub};

pub const CHANNEL: &str = "aegis:events";
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Events waiting to be published; beyond this they are delivered locally only.
const QUEUE: usize = 4096;

#[derive(Serialize, Deserialize)]
struct Envelope {
    origin: Uuid,
    event: Event,
}

pub struct RedisFanout {
    hub: Arc<Hub>,
    origin: Uuid,
    outgoing: mpsc::Sender<String>,
    connected: Arc<AtomicBool>,
}

impl RedisFanout {
    /// Starts the background connection; returns at once, connected or not.
    pub fn start(url: &str, hub: Arc<Hub>) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let origin = Uuid::now_v7();
        let (outgoing, rx) = mpsc::channel(QUEUE);
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(client, origin, hub.clone(), connected.clone(), rx));
        Ok(Self { hub, origin, outgoing, connected })
    }
}

impl Fanout for RedisFanout {
    fn publish(&self, event: Event) {
        let envelope = self
            .connected
            .load(Ordering::Relaxed)
            .then(|| serde_json::to_string(&Envelope { origin: self.origin, event: event.clone() }).ok())
            .flatten();
        self.hub.deliver(event);
        if let Some(payload) = envelope
            && self.outgoing.try_send(payload).is_err()
        {
            tracing::debug!("Redis event queue full; event delivered on this replica only");
        }
    }

    fn connected(&self) -> Option<bool> {
        Some(self.connected.load(Ordering::Relaxed))
    }
}

async fn connect(
    client: &redis::Client,
) -> Result<(redis::aio::MultiplexedConnection, redis::aio::PubSub), String> {
    let both = async {
        let conn = client.get_multiplexed_async_connection().await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        Ok::<_, redis::RedisError>((conn, pubsub))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, both).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CONNECT_TIMEOUT:?}")),
    }
}

async fn run(
    client: redis::Client,
    origin: Uuid,
    hub: Arc<Hub>,
    connected: Arc<AtomicBool>,
    mut outgoing: mpsc::Receiver<String>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut in_outage = false;
    loop {
        match connect(&client).await {
            Ok((mut conn, pubsub)) => {
                connected.store(true, Ordering::Relaxed);
                if in_outage {
                    tracing::warn!("Redis is back: events fan out across replicas again");
                } else {
                    tracing::info!("events fan out across replicas through Redis");
                }
                backoff = MIN_BACKOFF;
                let mut messages = pubsub.into_on_message();
                let reason = loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(m) => receive(&hub, origin, &m),
                            None => break "subscription closed".to_owned(),
                        },
                        payload = outgoing.recv() => match payload {
                            Some(p) => {
                                let sent = redis::cmd("PUBLISH")
                                    .arg(CHANNEL)
                                    .arg(p)
                                    .query_async::<i64>(&mut conn)
                                    .await;
                                if let Err(e) = sent {
                                    break e.to_string();
                                }
                            }
                            None => return,
                        },
                    }
                };
                connected.store(false, Ordering::Relaxed);
                in_outage = true;
                tracing::warn!(
                    error = %reason,
                    "lost Redis: events reach subscribers on this replica only until it returns"
                );
            }
            Err(e) => {
                if !in_outage {
                    in_outage = true;
                    tracing::warn!(
                        error = %e,
                        "Redis unreachable: events reach subscribers on this replica only; retrying"
                    );
                }
            }
        }
        // Anything queued meanwhile was already delivered locally.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                payload = outgoing.recv() => if payload.is_none() { return },
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn receive(hub: &Hub, origin: Uuid, message: &redis::Msg) {
    let payload = message.get_payload_bytes();
    // This replica's own events come back too; they were delivered locally already.
    // Envelopes are serialised origin first, so they are told apart without parsing.
    if payload.starts_with(own_prefix(origin).as_bytes()) {
        return;
    }
    match serde_json::from_slice::<Envelope>(payload) {
        Ok(envelope) if envelope.origin == origin => {}
        Ok(envelope) => hub.deliver(envelope.event),
        Err(e) => tracing::debug!(error = %e, "ignored a malformed event from Redis"),
    }
}

fn own_prefix(origin: Uuid) -> String {
    format!("{{\"origin\":\"{origin}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_start_with_their_origin() {
        let origin = Uuid::now_v7();
        let event = Event::new("agent.created", Uuid::now_v7(), None, serde_json::json!({"k": 1}));
        let text = serde_json::to_string(&Envelope { origin, event }).unwrap();
        assert!(text.starts_with(&own_prefix(origin)), "{text}");
        assert!(!text.starts_with(&own_prefix(Uuid::now_v7())));
    }
}
