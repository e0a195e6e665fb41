//! Slack channels (issue #20).
//!
//! - `channels.slack_channel`: where a Slack channel posts (a Slack conversation id);
//!   the bot token and signing secret are sealed together in `secret_sealed`.
//! - `slack_links`: a Slack user (of a workspace) linked to a member of the
//!   organization, once, by the member signed in to AEGIS; a click is decided as
//!   that member with their current role.
//! - `slack_link_tokens`: single-use, expiring offers to link, stored as SHA-256.
//! - `slack_messages`: the message posted for an approval on a channel, so later
//!   events update it in place.

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
            .alter_table(
                Table::alter().table("channels").add_column(string_len_null("slack_channel", 80)).to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("slack_links")
                    .col(uuid("org_id"))
                    .col(string_len("team_id", 32))
                    .col(string_len("slack_user_id", 32))
                    .col(uuid("member_id"))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(Index::create().col("org_id").col("team_id").col("slack_user_id"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_slack_links_org_id")
                            .from("slack_links", "org_id")
                            .to("organizations", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("slack_link_tokens")
                    .col(string_len("token_hash", 64).primary_key())
                    .col(uuid("org_id"))
                    .col(string_len("team_id", 32))
                    .col(string_len("slack_user_id", 32))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone("created_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_slack_link_tokens_org_id")
                            .from("slack_link_tokens", "org_id")
                            .to("organizations", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("slack_messages")
                    .col(uuid("channel_id"))
                    .col(uuid("approval_id"))
                    .col(string_len("slack_channel", 80))
                    .col(string_len("ts", 32))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(Index::create().col("channel_id").col("approval_id"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_slack_messages_channel_id")
                            .from("slack_messages", "channel_id")
                            .to("channels", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("slack_messages").to_owned()).await?;
        manager.drop_table(Table::drop().table("slack_link_tokens").to_owned()).await?;
        manager.drop_table(Table::drop().table("slack_links").to_owned()).await?;
        manager.alter_table(Table::alter().table("channels").drop_column("slack_channel").to_owned()).await
    }
}
