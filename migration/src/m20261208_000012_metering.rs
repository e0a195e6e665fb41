//! Metered cost (issue #19):
//! - `connections.pricing`: the connection's price table as JSON
//!   (`app::model::Pricing`), NULL for a flat connection. Calls under a priced
//!   connection's base URL are metered from the provider's `usage`.
//! - `connections.rate_limits`, `agents.rate_limits`: tokens and requests per
//!   minute as JSON (`app::model::RateLimits`), NULL for none.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Connections {
    Table,
    Pricing,
    RateLimits,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    RateLimits,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        for column in [Connections::Pricing, Connections::RateLimits] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Connections::Table)
                        .add_column(ColumnDef::new(column).text().null())
                        .to_owned(),
                )
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(ColumnDef::new(Agents::RateLimits).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(Table::alter().table(Agents::Table).drop_column(Agents::RateLimits).to_owned())
            .await?;
        for column in [Connections::RateLimits, Connections::Pricing] {
            manager
                .alter_table(Table::alter().table(Connections::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
