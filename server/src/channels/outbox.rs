//! The outbox writer: turns the events this replica publishes into delivery rows,
//! one per enabled channel subscribed to the event's type, then wakes the deliverer.
//!
//! Events arrive through [`crate::events::EventBus::tap`], after the change they
//! describe was committed. Batches are written in one statement; a row already there
//! for the same channel and event id is left alone, so offering an event twice
//! enqueues it once. While the database refuses writes the batch is retried (new
//! events wait in the tap's bounded queue).

use std::time::Duration;

use entity::{channel_deliveries, channels};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set};
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::catalog;
use super::delivery::{Deliverer, PENDING};
use crate::db::now;
use crate::events::Event;

/// Events written per statement, at most.
const BATCH: usize = 256;

/// The body every attempt sends: Standard Webhooks' `type`, `timestamp`, `data`.
/// `data` is the event as the dashboard's socket shows it (its `data` never holds a
/// secret value or a request body).
pub fn payload(event: &Event) -> String {
    let body = json!({
        "type": event.kind,
        "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "event_id": event.id,
            "org_id": event.sponsor_id,
            "agent_id": event.agent_id,
            "link": event.link,
            "details": event.data,
        },
    });
    body.to_string()
}

pub fn delivery_row(
    channel: &channels::Model,
    event: &Event,
    max_attempts: u32,
) -> channel_deliveries::ActiveModel {
    channel_deliveries::ActiveModel {
        id: Set(Uuid::now_v7()),
        channel_id: Set(channel.id),
        org_id: Set(channel.org_id),
        event_id: Set(event.id.clone()),
        event_type: Set(event.kind.clone()),
        payload: Set(payload(event)),
        status: Set(PENDING.into()),
        attempts: Set(0),
        max_attempts: Set(max_attempts.min(i32::MAX as u32) as i32),
        next_attempt_at: Set(Some(now())),
        locked_until: Set(None),
        last_status_code: Set(None),
        last_error: Set(None),
        created_at: Set(now()),
        delivered_at: Set(None),
    }
}

/// Stores one batch; returns how many deliveries it enqueued.
pub async fn store(db: &DatabaseConnection, events: &[Event], max_attempts: u32) -> Result<usize, DbErr> {
    let events: Vec<&Event> =
        events.iter().filter(|e| catalog::SUBSCRIBABLE.contains(&e.kind.as_str())).collect();
    if events.is_empty() {
        return Ok(0);
    }
    let mut orgs: Vec<Uuid> = events.iter().map(|e| e.sponsor_id).collect();
    orgs.sort();
    orgs.dedup();
    let channels = channels::Entity::find()
        .filter(channels::Column::OrgId.is_in(orgs))
        .filter(channels::Column::Enabled.eq(true))
        .all(db)
        .await?;
    // Each channel's filter, parsed once per batch.
    let channels: Vec<(channels::Model, Vec<String>)> = channels
        .into_iter()
        .map(|c| {
            let kinds = serde_json::from_str(&c.events).unwrap_or_default();
            (c, kinds)
        })
        .collect();
    let rows: Vec<_> = events
        .iter()
        .flat_map(|e| {
            channels
                .iter()
                .filter(move |(c, kinds)| c.org_id == e.sponsor_id && kinds.contains(&e.kind))
                .map(move |(c, _)| delivery_row(c, e, max_attempts))
        })
        .collect();
    let n = rows.len();
    if n > 0 {
        channel_deliveries::Entity::insert_many(rows).on_conflict_do_nothing().exec(db).await?;
    }
    Ok(n)
}

/// Runs for as long as the tap is open.
pub async fn run(
    mut rx: mpsc::Receiver<Event>,
    db: DatabaseConnection,
    deliverer: std::sync::Arc<Deliverer>,
) {
    let max_attempts = deliverer.config().max_attempts;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut wait = Duration::from_millis(100);
        loop {
            match store(&db, &batch, max_attempts).await {
                Ok(0) => break,
                Ok(_) => {
                    deliverer.wake();
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, events = batch.len(), "could not queue notifications; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}
