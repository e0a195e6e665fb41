//! `policy_versions`: immutable source text of every version of a policy.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "policy_versions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub policy_id: Uuid,
    pub version: i32,
    #[sea_orm(column_type = "Text")]
    pub source: String,
    pub sha256: String,
    pub created_at: DateTimeUtc,
    pub created_by: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::policies::Entity",
        from = "Column::PolicyId",
        to = "super::policies::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Policy,
}

impl Related<super::policies::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Policy.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
