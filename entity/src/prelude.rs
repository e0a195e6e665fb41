//! Every table's `Entity`, under its table name in `PascalCase`.

pub use super::agent_keys::Entity as AgentKeys;
pub use super::agents::Entity as Agents;
pub use super::approval_votes::Entity as ApprovalVotes;
pub use super::approvals::Entity as Approvals;
pub use super::audit_checkpoints::Entity as AuditCheckpoints;
pub use super::audit_events::Entity as AuditEvents;
pub use super::breakers::Entity as Breakers;
pub use super::channel_deliveries::Entity as ChannelDeliveries;
pub use super::channels::Entity as Channels;
pub use super::connections::Entity as Connections;
pub use super::idempotency_records::Entity as IdempotencyRecords;
pub use super::invitations::Entity as Invitations;
pub use super::ledger_entries::Entity as LedgerEntries;
pub use super::memberships::Entity as Memberships;
pub use super::organizations::Entity as Organizations;
pub use super::policies::Entity as Policies;
pub use super::policy_versions::Entity as PolicyVersions;
pub use super::refresh_families::Entity as RefreshFamilies;
pub use super::refresh_tokens::Entity as RefreshTokens;
pub use super::secret_grants::Entity as SecretGrants;
pub use super::secrets::Entity as Secrets;
pub use super::trust_events::Entity as TrustEvents;
pub use super::usage_cursor::Entity as UsageCursor;
pub use super::usage_daily::Entity as UsageDaily;
pub use super::users::Entity as Users;
pub use super::wallets::Entity as Wallets;
