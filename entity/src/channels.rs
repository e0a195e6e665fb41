//! `channels`: an organization's notification endpoint (a signed webhook or a Slack
//! channel). The signing secret (a Slack channel's bot token and signing secret) is sealed by the vault; `failure_streak` counts failed attempts in
//! a row and disables the channel when it grows too long.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub org_id: Uuid,
    pub kind: String,
    pub url: String,
    /// JSON array of event types.
    pub events: String,
    pub secret_nonce: Vec<u8>,
    pub secret_sealed: Vec<u8>,
    pub enabled: bool,
    pub failure_streak: i32,
    pub disabled_reason: Option<String>,
    pub created_by: Uuid,
    pub created_at: DateTimeUtc,
    /// A Slack channel's conversation id (`kind` `slack`).
    pub slack_channel: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
