//! SeaORM entities for the AEGIS database.
//!
//! One module per table. All ids are [`uuid::Uuid`](sea_orm::prelude::Uuid),
//! all timestamps are `chrono::DateTime<Utc>` ([`DateTimeUtc`](sea_orm::prelude::DateTimeUtc)),
//! and money is `i64` micro-units. The schema itself is created by the
//! `migration` crate; these entities must match it column for column.

pub mod prelude;

pub mod agent_keys;
pub mod agents;
pub mod approval_votes;
pub mod approvals;
pub mod audit_checkpoints;
pub mod audit_events;
pub mod breakers;
pub mod channel_deliveries;
pub mod channels;
pub mod connections;
pub mod idempotency_records;
pub mod invitations;
pub mod ledger_entries;
pub mod memberships;
pub mod organizations;
pub mod policies;
pub mod policy_versions;
pub mod refresh_families;
pub mod refresh_tokens;
pub mod secret_grants;
pub mod secrets;
pub mod slack_link_tokens;
pub mod slack_links;
pub mod slack_messages;
pub mod trust_events;
pub mod usage_cursor;
pub mod usage_daily;
pub mod users;
pub mod wallets;
