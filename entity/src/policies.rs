//! `policies`: named policies; `sponsor_id = NULL` marks a built-in policy.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "policies")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub sponsor_id: Option<Uuid>,
    pub name: String,
    pub description: Option<String>,
    pub builtin: bool,
    pub current_version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
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
    #[sea_orm(has_many = "super::policy_versions::Entity")]
    Versions,
    #[sea_orm(has_many = "super::agents::Entity")]
    Agents,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sponsor.def()
    }
}

impl Related<super::policy_versions::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Versions.def()
    }
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agents.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
