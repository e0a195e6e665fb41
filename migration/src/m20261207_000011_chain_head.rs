//! PostgreSQL: `aegis_audit_head()` takes the audit chain's lock and reads its head
//! in one round trip. The lock is the transaction-scoped advisory lock every
//! appender takes (`AUDIT_LOCK_KEY` in `server/src/audit/chain.rs`); the head is
//! read by a second statement inside the function, which (being VOLATILE, at
//! READ COMMITTED) takes its snapshot after the lock is granted, so it sees every
//! append committed before. SQLite: no-op (its appenders take an in-process lock).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        // 4703243766113326404 = 0x4145_4749_5341_5544 ("AEGISAUD").
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE OR REPLACE FUNCTION aegis_audit_head(OUT head_seq bigint, OUT head_hash text) \
                 LANGUAGE plpgsql VOLATILE AS $$ \
                 BEGIN \
                   PERFORM pg_advisory_xact_lock(4703243766113326404); \
                   SELECT seq, hash INTO head_seq, head_hash FROM audit_events ORDER BY seq DESC LIMIT 1; \
                 END $$",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager.get_connection().execute_unprepared("DROP FUNCTION IF EXISTS aegis_audit_head()").await?;
        Ok(())
    }
}
