//! Handing an approved MCP tool call's result to the agent (issue #21): an MCP
//! client that gave up waiting retries the same call (same tool, same arguments:
//! the same request hash); that retry is answered by the approval — the call is
//! performed once, when the sponsor approves — and each approval's result is
//! handed out once (`delivered_at`), so the next identical call is a new one.

use app::error::AppError;
use app::model::ApprovalStatus;
use entity::approvals;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::ApprovalService;
use crate::db::{internal, now};

impl ApprovalService {
    /// The newest approval of exactly this request by this agent that is still
    /// pending, or approved and not yet handed out.
    pub async fn undelivered(&self, agent_id: Uuid, request_hash: &str) -> Result<Option<Uuid>, AppError> {
        let statuses = [ApprovalStatus::Pending.as_str(), ApprovalStatus::Approved.as_str()];
        approvals::Entity::find()
            .select_only()
            .column(approvals::Column::Id)
            .filter(approvals::Column::AgentId.eq(agent_id))
            .filter(approvals::Column::RequestHash.eq(request_hash))
            .filter(approvals::Column::Status.is_in(statuses))
            .filter(approvals::Column::DeliveredAt.is_null())
            .order_by_desc(approvals::Column::CreatedAt)
            .into_tuple::<Uuid>()
            .one(&self.db)
            .await
            .map_err(internal)
    }

    /// Marks approval `id`'s result as handed to the agent (idempotent).
    pub async fn mark_delivered(&self, agent_id: Uuid, id: Uuid) -> Result<(), AppError> {
        approvals::Entity::update_many()
            .col_expr(approvals::Column::DeliveredAt, Expr::value(now()))
            .filter(approvals::Column::Id.eq(id))
            .filter(approvals::Column::AgentId.eq(agent_id))
            .filter(approvals::Column::DeliveredAt.is_null())
            .exec(&self.db)
            .await
            .map_err(internal)?;
        Ok(())
    }
}
