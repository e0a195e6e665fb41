//! Notification channels (issue #20): an organization's webhook endpoints and the
//! durable outbox of their deliveries.
//!
//! - `channels`: one endpoint of one organization: its kind (`webhook`), target URL,
//!   event filter (JSON array), signing secret sealed by the vault (never stored in
//!   the clear), and its health: `enabled`, `failure_streak`, `disabled_reason`.
//! - `channel_deliveries`: one event for one channel, kept until delivered or given up
//!   on, so a restart loses nothing. `(channel_id, event_id)` is unique: an event is
//!   enqueued once per channel however often it is offered. `next_attempt_at` orders
//!   the work; `locked_until` is a replica's lease on a row while it delivers it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("channels")
                    .col(uuid("id").primary_key())
                    .col(uuid("org_id"))
                    .col(string_len("kind", 16))
                    .col(text("url"))
                    .col(text("events"))
                    .col(blob("secret_nonce"))
                    .col(blob("secret_sealed"))
                    .col(boolean("enabled").default(true))
                    .col(integer("failure_streak").default(0))
                    .col(text_null("disabled_reason"))
                    .col(uuid("created_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_channels_org_id")
                            .from("channels", "org_id")
                            .to("organizations", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(Index::create().name("idx_channels_org").table("channels").col("org_id").to_owned())
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("channel_deliveries")
                    .col(uuid("id").primary_key())
                    .col(uuid("channel_id"))
                    .col(uuid("org_id"))
                    .col(string_len("event_id", 64))
                    .col(string_len("event_type", 64))
                    .col(text("payload"))
                    .col(string_len("status", 16))
                    .col(integer("attempts").default(0))
                    .col(integer("max_attempts"))
                    .col(timestamp_with_time_zone_null("next_attempt_at"))
                    .col(timestamp_with_time_zone_null("locked_until"))
                    .col(integer_null("last_status_code"))
                    .col(text_null("last_error"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone_null("delivered_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_channel_deliveries_channel_id")
                            .from("channel_deliveries", "channel_id")
                            .to("channels", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_channel_deliveries_event")
                    .table("channel_deliveries")
                    .col("channel_id")
                    .col("event_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_channel_deliveries_due")
                    .table("channel_deliveries")
                    .col("status")
                    .col("next_attempt_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("channel_deliveries").to_owned()).await?;
        manager.drop_table(Table::drop().table("channels").to_owned()).await
    }
}
