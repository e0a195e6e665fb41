//! The two-person rule's votes. An approval parked under the organization's rule
//! needs `approvers_required` distinct members: each approval before the last is a
//! vote (kept, and audited as `approval.vote`), the same member twice is refused,
//! and the N-th distinct member's approval claims the call and performs it
//! ([`super::decide`]). One rejection by a deciding member rejects it.

use app::error::AppError;
use app::model::{ApprovalVote, Role};
use entity::{approval_votes, approvals};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set};
use serde_json::json;
use uuid::Uuid;

use super::ApprovalService;
use super::decide::{decision_entry, pending_and_live};
use crate::actor::Actor;
use crate::db::{internal, now, unique_or_internal};

impl ApprovalService {
    /// Records `approver`'s approval of `row`; answers how many distinct members
    /// have approved it now. The same member twice: `409 already_approved`.
    pub(super) async fn vote(
        &self,
        row: &approvals::Model,
        request_id: &str,
        approver: &Actor,
        reason: Option<&str>,
    ) -> Result<u32, AppError> {
        let mut txn = self.audit.begin().await?;
        // Still pending and live, checked by a write that holds the row until this
        // vote commits: a vote never lands on a decided or expired approval, and
        // the last approver's claim waits for it.
        let live = approvals::Entity::update_many()
            .col_expr(approvals::Column::Status, Expr::col(approvals::Column::Status))
            .filter(pending_and_live(row.id, now()))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        if live.rows_affected != 1 {
            drop(txn);
            return Err(self.not_pending(approver.org, row.id).await);
        }
        approval_votes::ActiveModel {
            approval_id: Set(row.id),
            member_id: Set(approver.member),
            role: Set(approver.role.as_str().to_owned()),
            reason: Set(reason.map(str::to_owned)),
            created_at: Set(now()),
        }
        .insert(txn.conn())
        .await
        .map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict(
                    "already_approved",
                    "you have approved this already: it needs another member's approval",
                ),
            )
        })?;
        let votes = approval_votes::Entity::find()
            .filter(approval_votes::Column::ApprovalId.eq(row.id))
            .count(txn.conn())
            .await
            .map_err(internal)?;
        let votes = u32::try_from(votes).unwrap_or(u32::MAX);
        let detail = json!({"approval_id": row.id, "approver": approver.member, "approver_role": approver.role.as_str(),
                            "reason": reason, "approvals": votes, "approvers_required": row.approvers_required});
        txn.append(decision_entry(row, request_id, "approval.vote", "pending_approval", detail)).await?;
        txn.commit().await?;
        Ok(votes)
    }

    /// Who has approved `id` so far, in order.
    pub async fn votes(&self, id: Uuid) -> Result<Vec<ApprovalVote>, AppError> {
        let rows = approval_votes::Entity::find()
            .filter(approval_votes::Column::ApprovalId.eq(id))
            .order_by_asc(approval_votes::Column::CreatedAt)
            .order_by_asc(approval_votes::Column::MemberId)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|v| ApprovalVote {
                member: v.member_id,
                role: Role::parse(&v.role).unwrap_or(Role::Viewer),
                reason: v.reason,
                at: v.created_at,
            })
            .collect())
    }
}
