//! Circuit-breaker state per agent (shared by every replica), and an index so
//! the expiry sweep finds due approvals without scanning the table.

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
                    .table("breakers")
                    .col(pk_uuid("agent_id"))
                    // closed | open | half_open
                    .col(string("state"))
                    .col(integer("trips"))
                    .col(string_null("reason"))
                    .col(timestamp_with_time_zone_null("opened_at"))
                    .col(timestamp_with_time_zone_null("open_until"))
                    .col(integer("probes_left"))
                    .col(integer("probes_passed"))
                    .col(timestamp_with_time_zone("updated_at"))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_breakers_agent_id")
                            .from("breakers", "agent_id")
                            .to("agents", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_approvals_status_expires_at")
                    .table("approvals")
                    .col("status")
                    .col("expires_at")
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name("ix_approvals_status_expires_at").table("approvals").to_owned())
            .await?;
        manager.drop_table(Table::drop().table("breakers").take()).await
    }
}
