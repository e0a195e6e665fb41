//! `wallets`: per-agent spending limits and running totals (micro-units).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "wallets")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent_id: Uuid,
    pub daily_limit_micros: i64,
    pub monthly_limit_micros: i64,
    pub daily_spent_micros: i64,
    pub monthly_spent_micros: i64,
    pub reserved_micros: i64,
    /// Current day window, e.g. `2026-11-26`.
    pub day_window: String,
    /// Current month window, e.g. `2026-11`.
    pub month_window: String,
    pub timezone: String,
    pub alert_threshold_pct: Option<i32>,
    pub alert_sent_day: Option<String>,
    pub alert_sent_month: Option<String>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::agents::Entity",
        from = "Column::AgentId",
        to = "super::agents::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Agent,
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
