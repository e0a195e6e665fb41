//! The deliverer: sends due deliveries, records each attempt, reschedules failures
//! with exponential backoff, and disables a channel after a long failure streak.
//!
//! Replicas share the work through leases: a row is taken by one conditional update
//! (`locked_until` in the past or unset), so only one replica sends it at a time; a
//! replica that dies mid-attempt leaves a lease that simply runs out. At-least-once:
//! a crash after the receiver answered but before the row was updated sends it
//! again, with the same `webhook-id` for the receiver to drop.
//!
//! Fairness: each round takes at most [`PER_CHANNEL`] rows per channel, so one
//! organization's slow or dead endpoint holds at most that many of the round's slots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use entity::{channel_deliveries, channels};
use futures::StreamExt;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::json;
use tokio::sync::Notify;

use super::{WebhookConfig, channel_entry, key_context, signature};
use crate::audit::AuditLog;
use crate::db::{internal, now};
use crate::events::{self, Event, EventBus};
use crate::proxy::egress::{EgressDenied, EgressGuard};
use crate::secrets::vault::Vault;
use app::error::AppError;

pub const PENDING: &str = "pending";
pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

/// Due rows looked at per round.
const ROUND: u64 = 64;
/// Rows of one channel sent per round, at most.
const PER_CHANNEL: usize = 4;
/// Attempts in flight at once.
const CONCURRENCY: usize = 16;
/// An error text kept in the log is cut to this many characters.
const MAX_ERROR: usize = 300;

/// Rows no replica holds a live lease on at `t`.
fn unleased(t: chrono::DateTime<chrono::Utc>) -> Condition {
    Condition::any()
        .add(channel_deliveries::Column::LockedUntil.is_null())
        .add(channel_deliveries::Column::LockedUntil.lt(t))
}

pub struct Deliverer {
    db: DatabaseConnection,
    audit: AuditLog,
    vault: Vault,
    egress: EgressGuard,
    events: EventBus,
    config: WebhookConfig,
    client: reqwest::Client,
    slack: super::slack::SlackApi,
    wake: Notify,
}

/// What one attempt came to.
struct Outcome {
    status_code: Option<u16>,
    error: Option<String>,
}

impl Deliverer {
    pub fn new(
        db: DatabaseConnection,
        audit: AuditLog,
        vault: Vault,
        egress: EgressGuard,
        events: EventBus,
        config: WebhookConfig,
    ) -> Self {
        let client = egress
            .client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent("AEGIS-Webhooks/1")
            .build()
            .expect("the webhook HTTP client builds");
        let slack = super::slack::SlackApi::new(&config.slack_api_url, config.timeout);
        Self { db, audit, vault, egress, events, config, client, slack, wake: Notify::new() }
    }

    /// Slack's Web API (also for answers to clicks).
    pub fn slack(&self) -> &super::slack::SlackApi {
        &self.slack
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// New work: the loop looks now instead of at its next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until stopped: every `poll`, or at once when woken.
    pub async fn run(self: Arc<Self>) {
        loop {
            let _ = tokio::time::timeout(self.config.poll, self.wake.notified()).await;
            loop {
                match self.round().await {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = %e.message, "webhook delivery round failed");
                        break;
                    }
                }
            }
        }
    }

    /// One round: takes due rows of enabled channels and attempts them. Returns how
    /// many it attempted.
    pub async fn round(&self) -> Result<usize, AppError> {
        let t = now();
        let enabled = Query::select()
            .column(channels::Column::Id)
            .from(channels::Entity)
            .and_where(channels::Column::Enabled.eq(true))
            .to_owned();
        let due = channel_deliveries::Entity::find()
            .filter(channel_deliveries::Column::Status.eq(PENDING))
            .filter(channel_deliveries::Column::NextAttemptAt.lte(t))
            .filter(unleased(t))
            .filter(channel_deliveries::Column::ChannelId.in_subquery(enabled))
            .order_by_asc(channel_deliveries::Column::NextAttemptAt)
            .limit(ROUND)
            .all(&self.db)
            .await
            .map_err(internal)?;
        let mut per_channel: HashMap<uuid::Uuid, usize> = HashMap::new();
        let mut taken = Vec::new();
        for row in due {
            let n = per_channel.entry(row.channel_id).or_default();
            if *n < PER_CHANNEL && self.lease(&row).await? {
                *n += 1;
                taken.push(row);
            }
        }
        let ids: Vec<_> = per_channel.keys().copied().collect();
        let channels: HashMap<_, _> = channels::Entity::find()
            .filter(channels::Column::Id.is_in(ids))
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|c| (c.id, c))
            .collect();
        let n = taken.len();
        futures::stream::iter(taken)
            .for_each_concurrent(CONCURRENCY, |row| {
                let channel = channels.get(&row.channel_id).cloned();
                async move {
                    let Some(channel) = channel else { return };
                    if let Err(e) = self.attempt(row, &channel, true).await {
                        tracing::error!(error = %e.message, "could not record a webhook attempt");
                    }
                }
            })
            .await;
        Ok(n)
    }

    /// Takes the row for one attempt, unless another replica has it.
    async fn lease(&self, row: &channel_deliveries::Model) -> Result<bool, AppError> {
        let t = now();
        let until =
            t + chrono::Duration::from_std(self.config.timeout + Duration::from_secs(30)).unwrap_or_default();
        let res = channel_deliveries::Entity::update_many()
            .col_expr(channel_deliveries::Column::LockedUntil, Expr::value(until))
            .filter(channel_deliveries::Column::Id.eq(row.id))
            .filter(channel_deliveries::Column::Status.eq(PENDING))
            .filter(unleased(t))
            .exec(&self.db)
            .await
            .map_err(internal)?;
        Ok(res.rows_affected == 1)
    }

    /// A test send: the row was just made by this request, so no lease is needed.
    pub async fn attempt_now(
        &self,
        row: channel_deliveries::Model,
        channel: &channels::Model,
    ) -> Result<channel_deliveries::Model, AppError> {
        self.attempt(row, channel, false).await
    }

    /// Sends once and records what happened; `counts` says whether the attempt
    /// belongs to the channel's failure streak (test sends do not).
    async fn attempt(
        &self,
        row: channel_deliveries::Model,
        channel: &channels::Model,
        counts: bool,
    ) -> Result<channel_deliveries::Model, AppError> {
        let outcome = self.send(&row, channel).await;
        let attempts = row.attempts + 1;
        let t = now();
        let delivered = outcome.error.is_none();
        let (status, next) = if delivered {
            (DELIVERED, None)
        } else if attempts >= row.max_attempts {
            (FAILED, None)
        } else {
            (PENDING, Some(t + chrono::Duration::from_std(self.backoff(attempts as u32)).unwrap_or_default()))
        };
        let code = outcome.status_code.map(i32::from);
        channel_deliveries::Entity::update_many()
            .col_expr(channel_deliveries::Column::Attempts, Expr::value(attempts))
            .col_expr(channel_deliveries::Column::Status, Expr::value(status))
            .col_expr(channel_deliveries::Column::NextAttemptAt, Expr::value(next))
            .col_expr(
                channel_deliveries::Column::LockedUntil,
                Expr::value(Option::<chrono::DateTime<chrono::Utc>>::None),
            )
            .col_expr(channel_deliveries::Column::LastStatusCode, Expr::value(code))
            .col_expr(channel_deliveries::Column::LastError, Expr::value(outcome.error.clone()))
            .col_expr(channel_deliveries::Column::DeliveredAt, Expr::value(delivered.then_some(t)))
            .filter(channel_deliveries::Column::Id.eq(row.id))
            .exec(&self.db)
            .await
            .map_err(internal)?;
        if counts {
            self.count(channel, delivered, outcome.error.as_deref()).await?;
        }
        Ok(channel_deliveries::Model {
            attempts,
            status: status.into(),
            next_attempt_at: next,
            locked_until: None,
            last_status_code: code,
            last_error: outcome.error,
            delivered_at: delivered.then_some(t),
            ..row
        })
    }

    /// The wait before attempt `attempts + 1`: `retry_base · 2^(attempts-1)`, capped,
    /// with ±10 % jitter so a recovering receiver is not hit by every retry at once.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = self.config.retry_base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.config.retry_max);
        capped.mul_f64(0.9 + rand::random::<f64>() * 0.2)
    }

    /// Signs and posts one attempt. Errors are described without the URL (its path
    /// or query may be a capability) and without what a host name resolved to.
    async fn send(&self, row: &channel_deliveries::Model, channel: &channels::Model) -> Outcome {
        if channel.kind == super::KIND_EMAIL {
            let (mailer, public_url) = (self.config.mailer.as_ref(), self.config.public_url.as_deref());
            return match super::email::deliver(&self.db, mailer, public_url, row, channel).await {
                Ok(()) => Outcome { status_code: None, error: None },
                Err(error) => Outcome { status_code: None, error: Some(error) },
            };
        }
        if channel.kind == super::KIND_SLACK {
            let public_url = self.config.public_url.as_deref();
            return match super::slack::deliver(&self.db, &self.slack, &self.vault, public_url, row, channel)
                .await
            {
                Ok(code) => Outcome { status_code: Some(code), error: None },
                Err((code, error)) => Outcome { status_code: code, error: Some(error) },
            };
        }
        let fail = |error: String| Outcome { status_code: None, error: Some(error) };
        let target = match self.egress.check_url(&channel.url) {
            Ok(t) => t,
            Err(d) => return fail(format!("refused by egress rules: {}", d.reason)),
        };
        let key = match self.vault.open_bytes(
            &key_context(channel.id),
            &channel.secret_nonce,
            &channel.secret_sealed,
        ) {
            Ok(k) => k,
            Err(_) => return fail("the signing key could not be opened".into()),
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = signature::sign(&key, &row.event_id, timestamp, row.payload.as_bytes());
        let sent = self
            .client
            .post(target.url)
            .header("content-type", "application/json")
            .header("webhook-id", &row.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.payload.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                Outcome { status_code: Some(resp.status().as_u16()), error: None }
            }
            Ok(resp) => {
                let code = resp.status();
                Outcome {
                    status_code: Some(code.as_u16()),
                    error: Some(format!("the endpoint answered {code}")),
                }
            }
            Err(e) => {
                let text = if let Some(d) = EgressDenied::find_in(&e) {
                    format!("refused by egress rules: {}", d.reason)
                } else if e.is_timeout() {
                    format!("no answer within {} s", self.config.timeout.as_secs())
                } else if e.is_connect() {
                    "could not connect".to_owned()
                } else {
                    e.without_url().to_string()
                };
                fail(text.chars().take(MAX_ERROR).collect())
            }
        }
    }

    /// Keeps the channel's failure streak; disables it (once, with a notice and an
    /// audit record) when the streak reaches `disable_after`.
    async fn count(
        &self,
        channel: &channels::Model,
        delivered: bool,
        error: Option<&str>,
    ) -> Result<(), AppError> {
        let update = channels::Entity::update_many().filter(channels::Column::Id.eq(channel.id));
        if delivered {
            update
                .col_expr(channels::Column::FailureStreak, Expr::value(0))
                .exec(&self.db)
                .await
                .map_err(internal)?;
            return Ok(());
        }
        update
            .col_expr(
                channels::Column::FailureStreak,
                sea_orm::sea_query::ExprTrait::add(
                    Expr::col(channels::Column::FailureStreak),
                    Expr::value(1),
                ),
            )
            .exec(&self.db)
            .await
            .map_err(internal)?;
        let limit = self.config.disable_after.min(i32::MAX as u32) as i32;
        let now_row = channels::Entity::find_by_id(channel.id).one(&self.db).await.map_err(internal)?;
        if !now_row.is_some_and(|c| c.enabled && c.failure_streak >= limit) {
            return Ok(());
        }
        let reason = format!(
            "disabled after {limit} failed attempts in a row; last: {}",
            error.unwrap_or("unknown error")
        );
        let mut txn = self.audit.begin().await?;
        let disabled = channels::Entity::update_many()
            .col_expr(channels::Column::Enabled, Expr::value(false))
            .col_expr(channels::Column::DisabledReason, Expr::value(Some(reason.clone())))
            .filter(channels::Column::Id.eq(channel.id))
            .filter(channels::Column::Enabled.eq(true))
            .filter(channels::Column::FailureStreak.gte(limit))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        if disabled.rows_affected == 0 {
            return Ok(());
        }
        let appended = txn
            .append(channel_entry(
                "channel.disabled",
                channel.org_id,
                json!({"channel": channel.id, "failures": limit, "reason": reason}),
                None,
            ))
            .await?;
        txn.commit().await?;
        tracing::warn!(channel = %channel.id, failures = limit, "webhook channel disabled after a failure streak");
        self.events.publish(
            Event::new(
                events::CHANNEL_DISABLED,
                channel.org_id,
                None,
                json!({"channel_id": channel.id, "failures": limit, "reason": reason}),
            )
            .audit_seq(appended.seq),
        );
        Ok(())
    }
}
