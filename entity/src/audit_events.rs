//! `audit_events`: the hash-chained audit log.
//!
//! `seq` is assigned by the application (not auto-increment). `sponsor_id`
//! and `agent_id` deliberately have no foreign keys: audit rows must outlive
//! the users and agents they mention.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    #[sea_orm(unique)]
    pub id: Uuid,
    pub at: DateTimeUtc,
    pub sponsor_id: Option<Uuid>,
    pub agent_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub kind: String,
    pub stage: Option<String>,
    pub decision: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub status: Option<i32>,
    pub cost_micros: i64,
    pub duration_us: i64,
    pub request_hash: Option<String>,
    pub policy_hash: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub policy_input: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub detail: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
