//! The MCP gateway (issue #21):
//! - `connections.kind`: `http` (today's connections, the default) or `mcp` (an MCP
//!   server reached over Streamable HTTP at `base_url`).
//! - `connections.mcp_tools`: an MCP connection's allow-list of tool names as a JSON
//!   array, NULL for every tool the server lists.
//! - `connections.record_arguments`: keep an MCP tool call's arguments in the audit
//!   log (by default only their SHA-256 is kept).
//! - `approvals.delivered_at`: when the result of an approved MCP tool call was handed
//!   to the agent's retry of the same call (each approved result is handed out once).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Connections {
    Table,
    Kind,
    McpTools,
    RecordArguments,
}

#[derive(DeriveIden)]
enum Approvals {
    Table,
    DeliveredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            ColumnDef::new(Connections::Kind).string_len(16).not_null().default("http").to_owned(),
            ColumnDef::new(Connections::McpTools).text().null().to_owned(),
            ColumnDef::new(Connections::RecordArguments).boolean().not_null().default(false).to_owned(),
        ];
        for mut column in columns {
            manager
                .alter_table(Table::alter().table(Connections::Table).add_column(&mut column).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Approvals::Table)
                    .add_column(ColumnDef::new(Approvals::DeliveredAt).timestamp_with_time_zone().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(Approvals::Table).drop_column(Approvals::DeliveredAt).to_owned(),
            )
            .await?;
        for column in [Connections::RecordArguments, Connections::McpTools, Connections::Kind] {
            manager
                .alter_table(Table::alter().table(Connections::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }
}
