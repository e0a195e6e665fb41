//! `channel_deliveries`: the durable outbox. One event for one channel, with its
//! exact payload, until it is delivered or given up on.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "channel_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub channel_id: Uuid,
    pub org_id: Uuid,
    /// The `webhook-id`: the event's id, the same on every attempt.
    pub event_id: String,
    pub event_type: String,
    /// The body as signed and sent.
    pub payload: String,
    /// `pending`, `delivered`, `failed` (gave up), `cancelled` (channel disabled).
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub next_attempt_at: Option<DateTimeUtc>,
    pub locked_until: Option<DateTimeUtc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
