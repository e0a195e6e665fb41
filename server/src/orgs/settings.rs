//! An organization's settings: the two-person rule. Read by every member, changed
//! by owners (audited); applied when a call is parked
//! ([`crate::approvals::rule::approvers_for`]).

use app::error::AppError;
use app::model::{Access, OrgSettings, SessionUser};
use entity::organizations;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use super::{OrgService, org_not_found};
use crate::actor::Actor;
use crate::approvals::rule::settings_of;
use crate::db::internal;

/// Most distinct approvers a rule may ask for.
pub const MAX_APPROVERS: u32 = 10;
const MAX_REASONS: usize = 50;
const MAX_REASON_CHARS: usize = 200;

fn validate(input: OrgSettings) -> Result<OrgSettings, AppError> {
    if !(1..=MAX_APPROVERS).contains(&input.approvers_required) {
        return Err(AppError::validation(format!("approvers_required must be 1 (off) to {MAX_APPROVERS}")));
    }
    if input.approvers_cost_above_micros.is_some_and(|c| c < 0) {
        return Err(AppError::validation("approvers_cost_above_micros must be 0 or more"));
    }
    let mut reasons: Vec<String> = input.approvers_reasons.iter().map(|r| r.trim().to_owned()).collect();
    if reasons.len() > MAX_REASONS
        || reasons
            .iter()
            .any(|r| r.is_empty() || r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control))
    {
        return Err(AppError::validation(format!(
            "approvers_reasons: at most {MAX_REASONS} reasons of 1 to {MAX_REASON_CHARS} printable characters"
        )));
    }
    reasons.sort();
    reasons.dedup();
    Ok(OrgSettings { approvers_reasons: reasons, ..input })
}

impl OrgService {
    pub async fn settings(&self, sponsor: &SessionUser) -> Result<OrgSettings, AppError> {
        let org = sponsor.scope(Access::Read)?;
        let row = organizations::Entity::find_by_id(org).one(&self.db).await.map_err(internal)?;
        Ok(settings_of(&row.ok_or_else(org_not_found)?))
    }

    /// Owners only; audited with the old and new rule.
    pub async fn update_settings(
        &self,
        sponsor: &SessionUser,
        input: OrgSettings,
    ) -> Result<OrgSettings, AppError> {
        let by = Actor::new(sponsor, Access::Settings)?;
        let new = validate(input)?;
        let mut txn = self.audit.begin().await?;
        let old = organizations::Entity::find_by_id(by.org)
            .one(txn.conn())
            .await
            .map_err(internal)?
            .map(|o| settings_of(&o))
            .ok_or_else(org_not_found)?;
        let reasons = serde_json::to_string(&new.approvers_reasons).map_err(|_| AppError::internal())?;
        organizations::Entity::update_many()
            .col_expr(organizations::Column::ApproversRequired, Expr::value(new.approvers_required as i32))
            .col_expr(
                organizations::Column::ApproversCostAboveMicros,
                Expr::value(new.approvers_cost_above_micros),
            )
            .col_expr(organizations::Column::ApproversReasons, Expr::value(reasons))
            .filter(organizations::Column::Id.eq(by.org))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        txn.append(crate::audit::AuditEntry::by_member(
            "org.settings_changed",
            &by,
            serde_json::json!({"from": old, "to": new}),
        ))
        .await?;
        txn.commit().await?;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::rule::rule;

    #[test]
    fn settings_are_validated() {
        assert!(validate(rule(0, None, &[])).is_err());
        assert!(validate(rule(MAX_APPROVERS + 1, None, &[])).is_err());
        assert!(validate(rule(2, Some(-1), &[])).is_err());
        assert!(validate(rule(2, None, &[" "])).is_err());
        assert!(validate(rule(2, None, &["a\nb"])).is_err());
        let ok = validate(rule(2, Some(0), &[" b ", "a", "b"])).unwrap();
        assert_eq!(ok.approvers_reasons, ["a", "b"]);
    }
}
