//! `approvals`: requests held for a sponsor's decision, and the standing
//! grants an approval can carry.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "approvals")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub sponsor_id: Uuid,
    pub agent_id: Uuid,
    pub status: String,
    pub request_hash: String,
    #[sea_orm(column_type = "Text")]
    pub request_json: String,
    pub method: String,
    pub url: String,
    pub action_label: Option<String>,
    pub secret_name: Option<String>,
    pub cost_micros: i64,
    /// JSON array of strings, stored as TEXT.
    #[sea_orm(column_type = "Text")]
    pub policy_reasons: String,
    pub trust_at_request: i32,
    pub created_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
    pub decided_at: Option<DateTimeUtc>,
    pub decided_by: Option<Uuid>,
    pub decision_reason: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub outcome_json: Option<String>,
    pub outcome_audit_seq: Option<i64>,
    pub grant_max_actions: Option<i32>,
    pub grant_used_actions: i32,
    pub grant_until: Option<DateTimeUtc>,
    pub grant_max_micros: Option<i64>,
    pub grant_spent_micros: i64,
    /// The pipeline's request id, in clear so polls and lists need not open the
    /// sealed request (NULL on rows parked before it existed).
    pub request_id: Option<String>,
    /// JSON array of the lower-case header names the agent sent (values stay sealed).
    #[sea_orm(column_type = "Text", nullable)]
    pub header_names: Option<String>,
    pub body_bytes: i64,
    /// A grant covers only URLs whose path starts with this prefix.
    pub grant_path_prefix: Option<String>,
    /// When an approved MCP tool call's result was handed to the agent's retry.
    pub delivered_at: Option<DateTimeUtc>,
    /// Distinct members who must approve (the two-person rule; 1 otherwise).
    pub approvers_required: i32,
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
        belongs_to = "super::agents::Entity",
        from = "Column::AgentId",
        to = "super::agents::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Agent,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sponsor.def()
    }
}

impl Related<super::agents::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Agent.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
