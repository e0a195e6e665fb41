//! `users`: sponsor accounts (humans who own agents, secrets and policies).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub disabled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::refresh_families::Entity")]
    RefreshFamilies,
    #[sea_orm(has_many = "super::policies::Entity")]
    Policies,
    #[sea_orm(has_many = "super::agents::Entity")]
    Agents,
    #[sea_orm(has_many = "super::secrets::Entity")]
    Secrets,
    #[sea_orm(has_many = "super::connections::Entity")]
    Connections,
    #[sea_orm(has_many = "super::approvals::Entity")]
    Approvals,
}

impl Related<super::refresh_families::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RefreshFamilies.def()
    }
}

impl Related<super::policies::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Policies.def()
    }
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agents.def()
    }
}

impl Related<super::secrets::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Secrets.def()
    }
}

impl Related<super::connections::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Connections.def()
    }
}

impl Related<super::approvals::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Approvals.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
