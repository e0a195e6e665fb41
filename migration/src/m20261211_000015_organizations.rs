//! Organizations (issue #20): an organization owns agents, secrets, policies,
//! connections, wallets, approvals and its audit view; people belong to it as
//! members with one role.
//!
//! - `organizations`: one row per organization.
//! - `memberships`: `(org_id, user_id)` with `role` (`owner`, `admin`, `approver`,
//!   `viewer`).
//! - `invitations`: single-use, expiring invitations; only the token's SHA-256 is kept.
//!
//! Every existing account becomes the owner of a one-member organization whose id is
//! the account's id. The tables' `sponsor_id` columns already hold that id, so they
//! now name the organization and no agent, secret or audit record changes. New
//! accounts get the same: an organization is founded with its founder's id.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

fn fk(table: &'static str, column: &'static str, parent: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{table}_{column}"))
        .from(table, column)
        .to(parent, "id")
        .on_delete(ForeignKeyAction::Cascade)
        .on_update(ForeignKeyAction::NoAction)
        .take()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("organizations")
                    .col(pk_uuid("id"))
                    .col(string("name"))
                    .col(timestamp_with_time_zone("created_at"))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("memberships")
                    .col(uuid("org_id"))
                    .col(uuid("user_id"))
                    .col(string_len("role", 16))
                    .col(timestamp_with_time_zone("created_at"))
                    .primary_key(Index::create().name("pk_memberships").col("org_id").col("user_id"))
                    .foreign_key(&mut fk("memberships", "org_id", "organizations"))
                    .foreign_key(&mut fk("memberships", "user_id", "users"))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ix_memberships_user_id").table("memberships").col("user_id").take(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("invitations")
                    .col(pk_uuid("id"))
                    .col(uuid("org_id"))
                    .col(string("email"))
                    .col(string_len("role", 16))
                    .col(string_len_uniq("token_hash", 64))
                    .col(uuid("invited_by"))
                    .col(timestamp_with_time_zone("created_at"))
                    .col(timestamp_with_time_zone("expires_at"))
                    .col(timestamp_with_time_zone_null("accepted_at"))
                    .col(uuid_null("accepted_by"))
                    .foreign_key(&mut fk("invitations", "org_id", "organizations"))
                    .foreign_key(&mut fk("invitations", "invited_by", "users"))
                    .take(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ix_invitations_org_id").table("invitations").col("org_id").take(),
            )
            .await?;
        // Every account founds its own organization, with the same id.
        let db = manager.get_connection();
        db.execute_unprepared(
            "INSERT INTO organizations (id, name, created_at) SELECT id, name, created_at FROM users",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO memberships (org_id, user_id, role, created_at) \
             SELECT id, id, 'owner', created_at FROM users",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["invitations", "memberships", "organizations"] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
