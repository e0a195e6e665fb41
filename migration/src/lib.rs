//! Database migrations for AEGIS (SQLite and PostgreSQL).
//!
//! Run them with [`Migrator`]:
//!
//! ```no_run
//! # async fn run(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
//! use migration::{Migrator, MigratorTrait};
//! Migrator::up(db, None).await?;
//! # Ok(())
//! # }
//! ```

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_initial;
mod m20261126_000002_audit_guards;
mod m20261127_000003_breakers;
mod m20261206_000010_approvals_hardening;
mod m20261207_000011_chain_head;
mod m20261208_000012_metering;
mod m20261209_000013_usage;
mod m20261210_000014_mcp;
mod m20261211_000015_organizations;
mod m20261212_000016_two_person_rule;
mod m20261213_000017_channels;
mod m20261214_000018_slack;

/// The AEGIS migrator: every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_initial::Migration),
            Box::new(m20261126_000002_audit_guards::Migration),
            Box::new(m20261127_000003_breakers::Migration),
            Box::new(m20261206_000010_approvals_hardening::Migration),
            Box::new(m20261207_000011_chain_head::Migration),
            Box::new(m20261208_000012_metering::Migration),
            Box::new(m20261209_000013_usage::Migration),
            Box::new(m20261210_000014_mcp::Migration),
            Box::new(m20261211_000015_organizations::Migration),
            Box::new(m20261212_000016_two_person_rule::Migration),
            Box::new(m20261213_000017_channels::Migration),
            Box::new(m20261214_000018_slack::Migration),
        ]
    }
}
