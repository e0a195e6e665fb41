//! `secrets`: encrypted credentials a sponsor lets agents use without
//! ever seeing them.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "secrets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub sponsor_id: Uuid,
    pub name: String,
    #[sea_orm(column_type = "Blob")]
    pub ciphertext: Vec<u8>,
    #[sea_orm(column_type = "Blob")]
    pub nonce: Vec<u8>,
    /// JSON array of host patterns, stored as TEXT.
    #[sea_orm(column_type = "Text")]
    pub allowed_hosts: String,
    pub inject_header: Option<String>,
    pub inject_format: Option<String>,
    pub inject_query_param: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub rotated_at: Option<DateTimeUtc>,
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
    #[sea_orm(has_many = "super::secret_grants::Entity")]
    SecretGrants,
    #[sea_orm(has_many = "super::connections::Entity")]
    Connections,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sponsor.def()
    }
}

impl Related<super::secret_grants::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::SecretGrants.def()
    }
}

/// Agents this secret is granted to, through `secret_grants`.
impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        super::secret_grants::Relation::Agent.def()
    }

    fn via() -> Option<RelationDef> {
        Some(super::secret_grants::Relation::Secret.def().rev())
    }
}

impl Related<super::connections::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Connections.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
