//! Notification channels: an organization's signed webhooks (issue #20).
//!
//! An event published on a replica ([`crate::events::EventBus::publish`]) is copied to
//! that replica's outbox writer ([`outbox`]), which stores one delivery row per
//! enabled channel that subscribed to its type. The deliverer ([`delivery`]) takes due
//! rows under a lease (so replicas never send one row at once), signs and posts
//! them as Standard Webhooks defines ([`signature`]), and reschedules failures with
//! exponential backoff until the attempts run out. Everything lives in the database:
//! a restart resumes where the last process stopped.
//!
//! Targets pass the same egress guard as agents' calls ([`crate::proxy::egress`]):
//! when the channel is made and again at every attempt, with the guard's resolver, so
//! a webhook cannot reach what an agent could not. Redirects are not followed.

pub mod card;
pub mod catalog;
pub mod delivery;
pub mod email;
pub mod outbox;
pub mod signature;
pub mod slack;
pub mod slack_clicks;

use std::sync::Arc;
use std::time::Duration;

use app::error::AppError;
use app::model::{
    Access, ChannelCreated, ChannelPatch, ChannelView, DeliveryPage, DeliveryView, NewChannel, SessionUser,
};
use entity::{channel_deliveries, channels};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog, canonical_json};
use crate::db::{internal, now};
use crate::proxy::egress::EgressGuard;
use crate::secrets::vault::Vault;

pub const KIND_WEBHOOK: &str = "webhook";
pub const KIND_SLACK: &str = "slack";
pub const KIND_EMAIL: &str = "email";

/// Channels one organization may have.
pub const MAX_CHANNELS: u64 = 20;
/// Deliveries `GET /api/channels/{id}/deliveries` shows (the newest).
pub const LOG_LIMIT: u64 = 100;

/// How webhooks are delivered (`AEGIS_WEBHOOK_*`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Wait before the second attempt; each later one waits twice as long, up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Attempts per delivery before it is given up on (`failed`).
    pub max_attempts: u32,
    /// Failed attempts in a row (over all its deliveries) that disable a channel.
    pub disable_after: u32,
    /// One attempt's whole time (connect, send, answer).
    pub timeout: Duration,
    /// How often the deliverer looks for due deliveries (new events wake it at once).
    pub poll: Duration,
    /// Allow `http://` targets (for local receivers); `https://` only by default.
    pub allow_http: bool,
    /// Slack's Web API (`AEGIS_SLACK_API_URL`): the operator's choice, never a tenant's.
    pub slack_api_url: String,
    /// The server's public origin (`AEGIS_PUBLIC_URL`), for links in messages.
    pub public_url: Option<String>,
    /// The SMTP relay (`AEGIS_SMTP_URL`), for email channels; none when unset.
    pub mailer: Option<crate::mail::Mailer>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(4 * 3600),
            max_attempts: 12,
            disable_after: 50,
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            allow_http: false,
            slack_api_url: slack::DEFAULT_API_URL.to_owned(),
            public_url: None,
            mailer: None,
        }
    }
}

#[derive(Clone)]
pub struct ChannelService {
    db: DatabaseConnection,
    audit: AuditLog,
    vault: Vault,
    egress: EgressGuard,
    config: WebhookConfig,
    pub deliverer: Arc<delivery::Deliverer>,
}

/// The vault context a channel's signing key is sealed under.
pub fn key_context(id: Uuid) -> String {
    format!("aegis-channel:v1:{id}")
}

fn not_found() -> AppError {
    AppError::not_found("channel")
}

fn events_of(row: &channels::Model) -> Vec<String> {
    serde_json::from_str(&row.events).unwrap_or_default()
}

pub(crate) fn view(row: &channels::Model) -> ChannelView {
    let slack = row.kind == KIND_SLACK;
    ChannelView {
        id: row.id,
        kind: row.kind.clone(),
        url: row.url.clone(),
        events: events_of(row),
        enabled: row.enabled,
        disabled_reason: row.disabled_reason.clone(),
        failure_streak: row.failure_streak.max(0) as u32,
        created_at: row.created_at,
        slack_channel: row.slack_channel.clone(),
        interactivity_path: slack.then(|| format!("/api/slack/channels/{}/interactions", row.id)),
    }
}

pub(crate) fn delivery_view(row: &channel_deliveries::Model) -> DeliveryView {
    DeliveryView {
        id: row.id,
        event_id: row.event_id.clone(),
        event_type: row.event_type.clone(),
        status: row.status.clone(),
        attempts: row.attempts.max(0) as u32,
        max_attempts: row.max_attempts.max(0) as u32,
        last_status_code: row.last_status_code.and_then(|c| u16::try_from(c).ok()),
        last_error: row.last_error.clone(),
        next_attempt_at: row.next_attempt_at,
        created_at: row.created_at,
        delivered_at: row.delivered_at,
    }
}

/// Where a URL goes, for the audit: scheme, host and port, never the path or query
/// (a webhook URL's path is often a capability).
fn origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

fn channel_entry(kind: &str, org: Uuid, detail: serde_json::Value, by: Option<&Actor>) -> AuditEntry {
    match by {
        Some(by) => AuditEntry::by_member(kind, by, detail),
        None => AuditEntry {
            sponsor_id: Some(org),
            kind: kind.to_owned(),
            detail: Some(canonical_json(&detail)),
            ..AuditEntry::default()
        },
    }
}

impl ChannelService {
    pub fn new(
        db: DatabaseConnection,
        audit: AuditLog,
        vault: Vault,
        egress: EgressGuard,
        events: crate::events::EventBus,
        config: WebhookConfig,
    ) -> Self {
        let deliverer = Arc::new(delivery::Deliverer::new(
            db.clone(),
            audit.clone(),
            vault.clone(),
            egress.clone(),
            events,
            config.clone(),
        ));
        Self { db, audit, vault, egress, config, deliverer }
    }

    /// A URL a webhook may target: the egress guard's rules, `https` unless allowed.
    fn check_target(&self, raw: &str) -> Result<url::Url, AppError> {
        let target = self
            .egress
            .check_url(raw.trim())
            .map_err(|d| AppError::bad_request("webhook_url_refused", format!("url: {}", d.reason)))?;
        if target.scheme != "https" && !self.config.allow_http {
            return Err(AppError::bad_request(
                "webhook_url_refused",
                "url: webhooks are sent over https only",
            ));
        }
        Ok(target.url)
    }

    /// The organization's channel, read on `db` (the pool, or a write's transaction).
    async fn owned(db: &impl ConnectionTrait, org: Uuid, id: Uuid) -> Result<channels::Model, AppError> {
        channels::Entity::find_by_id(id)
            .filter(channels::Column::OrgId.eq(org))
            .one(db)
            .await
            .map_err(internal)?
            .ok_or_else(not_found)
    }

    pub async fn list(&self, sponsor: &SessionUser) -> Result<Vec<ChannelView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        let rows = channels::Entity::find()
            .filter(channels::Column::OrgId.eq(org))
            .order_by_asc(channels::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows.iter().map(view).collect())
    }

    pub async fn create(&self, sponsor: &SessionUser, input: NewChannel) -> Result<ChannelCreated, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        let id = Uuid::new_v4();
        // What the kind needs: where it goes, what is sealed, what is shown once.
        let slack_fields = [&input.bot_token, &input.signing_secret, &input.slack_channel];
        let (url, slack_channel, sealed_bytes, shown) = match input.kind.as_str() {
            KIND_WEBHOOK if slack_fields.iter().any(|f| f.is_some()) => {
                return Err(AppError::validation(
                    "bot_token, signing_secret and slack_channel are for kind \"slack\"",
                ));
            }
            KIND_SLACK | KIND_EMAIL if input.url.is_some() => {
                return Err(AppError::validation(format!("url: not used by {} channels", input.kind)));
            }
            KIND_EMAIL if slack_fields.iter().any(|f| f.is_some()) => {
                return Err(AppError::validation(
                    "bot_token, signing_secret and slack_channel are for kind \"slack\"",
                ));
            }
            KIND_SLACK if input.url.is_some() => {
                return Err(AppError::validation(
                    "url: a Slack channel posts through the Slack app (bot_token, slack_channel)",
                ));
            }
            KIND_WEBHOOK => {
                let url = self.check_target(input.url.as_deref().unwrap_or_default())?;
                let key = signature::new_key();
                let shown = signature::display(&key);
                (url, None, zeroize::Zeroizing::new(key.to_vec()), Some(shown))
            }
            KIND_SLACK => {
                let (conversation, keys) = slack::validate(
                    input.bot_token.as_deref(),
                    input.signing_secret.as_deref(),
                    input.slack_channel.as_deref(),
                )?;
                let url = url::Url::parse(&format!("https://slack.com/app_redirect?channel={conversation}"))
                    .map_err(|_| AppError::internal())?;
                let bytes = serde_json::to_vec(&keys).map_err(|_| AppError::internal())?;
                (url, Some(conversation), zeroize::Zeroizing::new(bytes), None)
            }
            KIND_EMAIL => {
                if self.config.mailer.is_none() {
                    return Err(AppError::bad_request(
                        "email_not_configured",
                        "kind: this server sends no email (its operator has not set AEGIS_SMTP_URL)",
                    ));
                }
                // To the organization's members by role; nothing to seal.
                let url = url::Url::parse("mailto:members-by-role").map_err(|_| AppError::internal())?;
                (url, None, zeroize::Zeroizing::new(Vec::new()), None)
            }
            _ => return Err(AppError::validation("kind: must be \"webhook\", \"slack\" or \"email\"")),
        };
        let events = catalog::validate(&input.events)?;
        let mut txn = self.audit.begin().await?;
        let count = channels::Entity::find()
            .filter(channels::Column::OrgId.eq(by.org))
            .count(txn.conn())
            .await
            .map_err(internal)?;
        if count >= MAX_CHANNELS {
            return Err(AppError::conflict(
                "channel_limit",
                format!("an organization has at most {MAX_CHANNELS} channels"),
            ));
        }
        let (nonce, sealed) = self.vault.seal_bytes(&key_context(id), &sealed_bytes);
        let row = channels::ActiveModel {
            id: Set(id),
            org_id: Set(by.org),
            kind: Set(input.kind.clone()),
            slack_channel: Set(slack_channel),
            url: Set(url.to_string()),
            events: Set(serde_json::to_string(&events).map_err(|_| AppError::internal())?),
            secret_nonce: Set(nonce),
            secret_sealed: Set(sealed),
            enabled: Set(true),
            failure_streak: Set(0),
            disabled_reason: Set(None),
            created_by: Set(by.member),
            created_at: Set(now()),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        txn.append(channel_entry(
            "channel.created",
            by.org,
            json!({"channel": id, "kind": input.kind, "origin": origin(&url), "events": events}),
            Some(&by),
        ))
        .await?;
        txn.commit().await?;
        Ok(ChannelCreated { id, secret: shown, channel: view(&row) })
    }

    /// Re-enabling clears the failure streak; pending deliveries resume.
    pub async fn update(
        &self,
        sponsor: &SessionUser,
        id: Uuid,
        patch: ChannelPatch,
    ) -> Result<ChannelView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        let events = patch.events.as_deref().map(catalog::validate).transpose()?;
        let mut txn = self.audit.begin().await?;
        let row = Self::owned(txn.conn(), by.org, id).await?;
        let mut update = channels::Entity::update_many().filter(channels::Column::Id.eq(id));
        if let Some(events) = &events {
            let text = serde_json::to_string(events).map_err(|_| AppError::internal())?;
            update = update.col_expr(channels::Column::Events, Expr::value(text));
        }
        if let Some(enabled) = patch.enabled {
            update = update.col_expr(channels::Column::Enabled, Expr::value(enabled));
            if enabled {
                update = update
                    .col_expr(channels::Column::FailureStreak, Expr::value(0))
                    .col_expr(channels::Column::DisabledReason, Expr::value(Option::<String>::None));
            } else {
                update = update.col_expr(
                    channels::Column::DisabledReason,
                    Expr::value(Some(format!("disabled by {}", by.member))),
                );
            }
        }
        if events.is_some() || patch.enabled.is_some() {
            update.exec(txn.conn()).await.map_err(internal)?;
            txn.append(channel_entry(
                "channel.updated",
                by.org,
                json!({"channel": id, "events": events, "enabled": patch.enabled, "was_enabled": row.enabled}),
                Some(&by),
            ))
            .await?;
        }
        let row = channels::Entity::find_by_id(id)
            .one(txn.conn())
            .await
            .map_err(internal)?
            .ok_or_else(not_found)?;
        txn.commit().await?;
        if row.enabled {
            self.deliverer.wake();
        }
        Ok(view(&row))
    }

    /// The channel and its delivery log go; nothing more is sent to it.
    pub async fn delete(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        let mut txn = self.audit.begin().await?;
        let row = Self::owned(txn.conn(), by.org, id).await?;
        channel_deliveries::Entity::delete_many()
            .filter(channel_deliveries::Column::ChannelId.eq(id))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        channels::Entity::delete_by_id(id).exec(txn.conn()).await.map_err(internal)?;
        let origin = url::Url::parse(&row.url).map(|u| origin(&u)).unwrap_or_default();
        txn.append(channel_entry(
            "channel.deleted",
            by.org,
            json!({"channel": id, "origin": origin}),
            Some(&by),
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }

    pub async fn deliveries(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryPage, AppError> {
        let org = sponsor.scope(Access::Read)?;
        Self::owned(&self.db, org, id).await?;
        let rows = channel_deliveries::Entity::find()
            .filter(channel_deliveries::Column::ChannelId.eq(id))
            .order_by_desc(channel_deliveries::Column::CreatedAt)
            .order_by_desc(channel_deliveries::Column::Id)
            .limit(LOG_LIMIT)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(DeliveryPage { items: rows.iter().map(delivery_view).collect() })
    }

    /// One `channel.test` event, sent now (even to a disabled channel, to check it
    /// before turning it back on), attempted once; it does not count toward the
    /// failure streak. Returns the delivery as the log records it.
    pub async fn test(&self, sponsor: &SessionUser, id: Uuid) -> Result<DeliveryView, AppError> {
        let by = Actor::new(sponsor, Access::Write)?;
        let channel = Self::owned(&self.db, by.org, id).await?;
        let event = crate::events::Event::new(
            catalog::CHANNEL_TEST,
            by.org,
            None,
            json!({"channel_id": id, "by": by.member}),
        );
        let mut row = outbox::delivery_row(&channel, &event, 1);
        // Not due for the deliverer: this request sends it, once.
        row.next_attempt_at = Set(None);
        let row = row.insert(&self.db).await.map_err(internal)?;
        let done = self.deliverer.attempt_now(row, &channel).await?;
        Ok(delivery_view(&done))
    }
}
