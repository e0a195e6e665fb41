//! `breakers`: an agent's circuit-breaker state, shared by every replica.
//! No row means closed with no trips.

use sea_orm::entity::prelude::*;

/// The values of `state`.
pub const CLOSED: &str = "closed";
pub const OPEN: &str = "open";
pub const HALF_OPEN: &str = "half_open";

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "breakers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub agent_id: Uuid,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// Automatic trips so far; the cool-down grows with it.
    pub trips: i32,
    pub reason: Option<String>,
    pub opened_at: Option<DateTimeUtc>,
    /// When an open breaker lets probes through (half-open).
    pub open_until: Option<DateTimeUtc>,
    /// Half-open: probe calls still to be admitted, and probes that succeeded.
    pub probes_left: i32,
    pub probes_passed: i32,
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
