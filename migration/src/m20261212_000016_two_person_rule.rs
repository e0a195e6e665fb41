//! The two-person rule (issue #20): an organization can require N distinct
//! approvers for an approval whose cost is above a threshold or whose policy gave
//! one of a set of reasons.
//!
//! - `organizations.approvers_required` (1 = off), `approvers_cost_above_micros`
//!   (NULL: any cost), `approvers_reasons` (JSON array; NULL or empty: any reason).
//! - `approvals.approvers_required`: fixed when the call is parked, so changing the
//!   rule later does not move approvals already waiting.
//! - `approval_votes`: one row per member who approved, until the N-th performs it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            ("organizations", integer("approvers_required").default(1).to_owned()),
            ("organizations", big_integer_null("approvers_cost_above_micros")),
            ("organizations", text_null("approvers_reasons")),
            ("approvals", integer("approvers_required").default(1).to_owned()),
        ];
        for (table, mut column) in columns {
            manager.alter_table(Table::alter().table(table).add_column(&mut column).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table("approval_votes")
                    .col(uuid("approval_id"))
                    .col(uuid("member_id"))
                    .col(string_len("role", 16))
                    .col(string_null("reason"))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(
                        Index::create().name("pk_approval_votes").col("approval_id").col("member_id"),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_approval_votes_approval_id")
                            .from("approval_votes", "approval_id")
                            .to("approvals", "id")
                            .on_delete(ForeignKeyAction::Cascade)
                            .on_update(ForeignKeyAction::NoAction),
                    )
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("approval_votes").to_owned()).await?;
        for (table, column) in [
            ("approvals", "approvers_required"),
            ("organizations", "approvers_reasons"),
            ("organizations", "approvers_cost_above_micros"),
            ("organizations", "approvers_required"),
        ] {
            manager.alter_table(Table::alter().table(table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
