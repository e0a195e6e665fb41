//! Approvals and stored answers, hardened (issue #16 items 6, 14, 15):
//!
//! - plain columns for what the sponsor's list and the agent's poll need (the
//!   request id, the header names, the body size), so neither opens the sealed
//!   request; rows parked before this migration keep NULL there and are opened
//!   once when read;
//! - a grant's path prefix (grants now bind the secret and a path prefix too);
//! - indexes for the janitor's retention sweeps of stored answers.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const APPROVAL_COLUMNS: [&str; 4] = ["request_id", "header_names", "body_bytes", "grant_path_prefix"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            string_null("request_id"),
            // JSON array of lower-case header names.
            text_null("header_names"),
            big_integer("body_bytes").default(0).take(),
            string_null("grant_path_prefix"),
        ];
        for mut column in columns {
            manager.alter_table(Table::alter().table("approvals").add_column(&mut column).take()).await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_approvals_status_decided_at")
                    .table("approvals")
                    .col("status")
                    .col("decided_at")
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_idempotency_records_created_at")
                    .table("idempotency_records")
                    .col("created_at")
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_idempotency_records_created_at")
                    .table("idempotency_records")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name("ix_approvals_status_decided_at").table("approvals").to_owned())
            .await?;
        for column in APPROVAL_COLUMNS {
            manager.alter_table(Table::alter().table("approvals").drop_column(column).take()).await?;
        }
        Ok(())
    }
}
