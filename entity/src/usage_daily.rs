//! `usage_daily`: settled calls per sponsor, UTC day, agent, connection and model,
//! derived from the audit log's outcome records (see `server::usage`). An
//! unmetered call has an empty connection and model.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_daily")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub sponsor_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub model: String,
    pub requests: i64,
    /// Metered calls charged their ceiling (usage unreadable or cut short).
    pub at_ceiling: i64,
    pub tokens_in: i64,
    pub tokens_cached: i64,
    pub tokens_cache_write: i64,
    pub tokens_out: i64,
    /// What was held before the calls (a metered call's ceiling).
    pub held_micros: i64,
    pub cost_micros: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
