//! The audit log is append-only. On PostgreSQL, triggers refuse UPDATE, DELETE
//! and TRUNCATE on `audit_events` and `audit_checkpoints`, so even a bug or a
//! careless statement cannot quietly rewrite history (the hash chain and signed
//! checkpoints still detect what someone with enough privilege does anyway).
//! SQLite deployments are single-process and rely on verification alone: no-op.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const TABLES: [&str; 2] = ["audit_events", "audit_checkpoints"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE OR REPLACE FUNCTION aegis_audit_append_only() RETURNS trigger \
             LANGUAGE plpgsql AS $$ \
             BEGIN \
               RAISE EXCEPTION 'aegis: % on % is not allowed: the audit log is append-only', \
                 TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege'; \
             END $$",
        )
        .await?;
        for table in TABLES {
            // Statement-level, so they fire even when no row matches.
            db.execute_unprepared(&format!(
                "CREATE TRIGGER {table}_append_only \
                 BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION aegis_audit_append_only()"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for table in TABLES {
            db.execute_unprepared(&format!("DROP TRIGGER IF EXISTS {table}_append_only ON {table}")).await?;
        }
        db.execute_unprepared("DROP FUNCTION IF EXISTS aegis_audit_append_only()").await?;
        Ok(())
    }
}
