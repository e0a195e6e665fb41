//! Usage rollups (issue #19's dashboard): `usage_daily` holds, per sponsor, UTC
//! day, agent, connection and model, the calls settled, their tokens, what was
//! held for them (a metered call's ceiling) and what was charged. It is derived
//! from the audit log's `proxy.outcome` records — the canonical account — by an
//! indexer off the hot path; `usage_cursor` is the last audit `seq` folded in,
//! advanced in the same transaction as the rows it produced, so every outcome is
//! counted exactly once and the table can always be rebuilt from the log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UsageDaily {
    Table,
    SponsorId,
    Day,
    AgentId,
    Connection,
    Model,
    Requests,
    AtCeiling,
    TokensIn,
    TokensCached,
    TokensCacheWrite,
    TokensOut,
    HeldMicros,
    CostMicros,
}

#[derive(DeriveIden)]
enum UsageCursor {
    Table,
    Id,
    Seq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let count = |c: UsageDaily| ColumnDef::new(c).big_integer().not_null().default(0).to_owned();
        manager
            .create_table(
                Table::create()
                    .table(UsageDaily::Table)
                    .col(ColumnDef::new(UsageDaily::SponsorId).uuid().not_null())
                    .col(ColumnDef::new(UsageDaily::Day).string_len(10).not_null())
                    .col(ColumnDef::new(UsageDaily::AgentId).uuid().not_null())
                    .col(ColumnDef::new(UsageDaily::Connection).string().not_null())
                    .col(ColumnDef::new(UsageDaily::Model).string().not_null())
                    .col(count(UsageDaily::Requests))
                    .col(count(UsageDaily::AtCeiling))
                    .col(count(UsageDaily::TokensIn))
                    .col(count(UsageDaily::TokensCached))
                    .col(count(UsageDaily::TokensCacheWrite))
                    .col(count(UsageDaily::TokensOut))
                    .col(count(UsageDaily::HeldMicros))
                    .col(count(UsageDaily::CostMicros))
                    .primary_key(
                        Index::create()
                            .col(UsageDaily::SponsorId)
                            .col(UsageDaily::Day)
                            .col(UsageDaily::AgentId)
                            .col(UsageDaily::Connection)
                            .col(UsageDaily::Model),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UsageCursor::Table)
                    .col(ColumnDef::new(UsageCursor::Id).integer().not_null().primary_key())
                    .col(ColumnDef::new(UsageCursor::Seq).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        // Nothing is folded in yet: the indexer starts at the log's beginning.
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(UsageCursor::Table)
                    .columns([UsageCursor::Id, UsageCursor::Seq])
                    .values_panic([1.into(), 0i64.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(UsageCursor::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(UsageDaily::Table).to_owned()).await
    }
}
