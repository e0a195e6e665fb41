//! `connections`: named upstream APIs (base URL, optional secret, price).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "connections")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub sponsor_id: Uuid,
    pub name: String,
    pub base_url: String,
    pub secret_id: Option<Uuid>,
    pub cost_micros: i64,
    /// The price table as JSON (`app::model::Pricing`); `None`: a flat connection.
    #[sea_orm(column_type = "Text", nullable)]
    pub pricing: Option<String>,
    /// Tokens and requests per minute as JSON (`app::model::RateLimits`); `None`: none.
    #[sea_orm(column_type = "Text", nullable)]
    pub rate_limits: Option<String>,
    /// `http` (gateway mode) or `mcp` (an MCP server behind `/mcp`).
    pub kind: String,
    /// An MCP connection's tool allow-list as a JSON array; `None`: every tool.
    #[sea_orm(column_type = "Text", nullable)]
    pub mcp_tools: Option<String>,
    /// Keep MCP tool calls' arguments in the audit log (otherwise only their hash).
    pub record_arguments: bool,
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
    #[sea_orm(
        belongs_to = "super::secrets::Entity",
        from = "Column::SecretId",
        to = "super::secrets::Column::Id",
        on_update = "NoAction",
        on_delete = "SetNull"
    )]
    Secret,
}

impl Related<super::users::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Sponsor.def()
    }
}

impl Related<super::secrets::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Secret.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
