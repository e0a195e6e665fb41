//! `agents`: AI agents owned by a sponsor.
//!
//! `(sponsor_id, name)` is unique among live agents only (partial unique
//! index `ux_agents_sponsor_name_live ... WHERE deleted_at IS NULL`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "agents")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub sponsor_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub status: String,
    pub policy_id: Option<Uuid>,
    pub trust_score: i32,
    /// JSON array of strings, stored as TEXT (default `'[]'`).
    #[sea_orm(column_type = "Text")]
    pub tags: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub suspended_at: Option<DateTimeUtc>,
    pub suspended_reason: Option<String>,
    pub deleted_at: Option<DateTimeUtc>,
    pub last_seen_at: Option<DateTimeUtc>,
    /// Tokens and requests per minute as JSON (`app::model::RateLimits`); `None`: none.
    #[sea_orm(column_type = "Text", nullable)]
    pub rate_limits: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::users::Entity",
        from = "Column::SponsorId",
        to = "super::users::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Sponsor,
    #[sea_orm(
        belongs_to = "super::policies::Entity",
        from = "Column::PolicyId",
        to = "super::policies::Column::Id",
        on_update = "NoAction",
        on_delete = "SetNull"
    )]
    Policy,
    #[sea_orm(has_many = "super::agent_keys::Entity")]
    AgentKeys,
    #[sea_orm(has_many = "super::secret_grants::Entity")]
    SecretGrants,
    #[sea_orm(has_one = "super::wallets::Entity")]
    Wallet,
    #[sea_orm(has_many = "super::ledger_entries::Entity")]
    LedgerEntries,
    #[sea_orm(has_many = "super::approvals::Entity")]
    Approvals,
    #[sea_orm(has_many = "super::trust_events::Entity")]
    TrustEvents,
    #[sea_orm(has_many = "super::idempotency_records::Entity")]
    IdempotencyRecords,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sponsor.def()
    }
}

impl Related<super::policies::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Policy.def()
    }
}

impl Related<super::agent_keys::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AgentKeys.def()
    }
}

impl Related<super::secret_grants::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::SecretGrants.def()
    }
}

/// Secrets granted to this agent, through `secret_grants`.
impl Related<super::secrets::Entity> for Entity {
    fn to() -> RelationDef {
        super::secret_grants::Relation::Secret.def()
    }

    fn via() -> Option<RelationDef> {
        Some(super::secret_grants::Relation::Agent.def().rev())
    }
}

impl Related<super::wallets::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Wallet.def()
    }
}

impl Related<super::ledger_entries::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::LedgerEntries.def()
    }
}

impl Related<super::approvals::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Approvals.def()
    }
}

impl Related<super::trust_events::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::TrustEvents.def()
    }
}

impl Related<super::idempotency_records::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::IdempotencyRecords.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
