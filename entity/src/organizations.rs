//! `organizations`: who owns agents, secrets, policies, connections, wallets,
//! approvals and an audit view. Every table's `sponsor_id` names one. An
//! organization is founded with its founder's account id.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "organizations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTimeUtc,
    /// The two-person rule: distinct approvers an approval it covers needs (1 = off).
    pub approvers_required: i32,
    /// The rule covers approvals costing more than this (NULL: any cost)…
    pub approvers_cost_above_micros: Option<i64>,
    /// …or whose policy gave one of these reasons (JSON array; NULL/empty: any).
    #[sea_orm(column_type = "Text", nullable)]
    pub approvers_reasons: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
