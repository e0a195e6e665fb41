//! The two-person rule as an approval applies it: how many distinct members must
//! approve a call, from its organization's settings, fixed when the call is parked.
//! The settings themselves are changed in [`crate::orgs`].

use app::error::AppError;
use app::model::OrgSettings;
use entity::organizations;
use sea_orm::{ConnectionTrait, EntityTrait};
use uuid::Uuid;

use crate::db::internal;

/// An organization's settings as stored.
pub fn settings_of(org: &organizations::Model) -> OrgSettings {
    OrgSettings {
        approvers_required: u32::try_from(org.approvers_required).unwrap_or(1).max(1),
        approvers_cost_above_micros: org.approvers_cost_above_micros,
        approvers_reasons: org
            .approvers_reasons
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or_default(),
    }
}

/// How many distinct approvers an approval of `org` costing `cost_micros`, asked
/// for with `reasons`, needs.
pub async fn approvers_for<C: ConnectionTrait>(
    db: &C,
    org: Uuid,
    cost_micros: i64,
    reasons: &[String],
) -> Result<u32, AppError> {
    let Some(row) = organizations::Entity::find_by_id(org).one(db).await.map_err(internal)? else {
        return Ok(1);
    };
    Ok(required(&settings_of(&row), cost_micros, reasons))
}

/// The rule itself: covered when above the cost, or for one of the reasons; with
/// neither set, every approval is covered.
pub fn required(rule: &OrgSettings, cost_micros: i64, reasons: &[String]) -> u32 {
    if rule.approvers_required <= 1 {
        return 1;
    }
    let by_cost = rule.approvers_cost_above_micros.map(|above| cost_micros > above);
    let by_reason = (!rule.approvers_reasons.is_empty())
        .then(|| reasons.iter().any(|r| rule.approvers_reasons.contains(r)));
    let covered = match (by_cost, by_reason) {
        (None, None) => true,
        (c, r) => c.unwrap_or(false) || r.unwrap_or(false),
    };
    if covered { rule.approvers_required } else { 1 }
}

/// A rule for tests: `n` approvers above `above`, or for `reasons`.
#[cfg(test)]
pub(crate) fn rule(n: u32, above: Option<i64>, reasons: &[&str]) -> OrgSettings {
    OrgSettings {
        approvers_required: n,
        approvers_cost_above_micros: above,
        approvers_reasons: reasons.iter().map(|r| r.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_covers_costs_above_the_threshold_or_the_named_reasons() {
        let reasons = |r: &[&str]| r.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        // Off.
        assert_eq!(required(&rule(1, Some(0), &["x"]), 10, &reasons(&["x"])), 1);
        // Every approval when neither is set.
        assert_eq!(required(&rule(2, None, &[]), 0, &[]), 2);
        // Strictly above the cost.
        assert_eq!(required(&rule(3, Some(1_000), &[]), 1_000, &[]), 1);
        assert_eq!(required(&rule(3, Some(1_000), &[]), 1_001, &[]), 3);
        // One of the reasons, whatever the cost; or the cost.
        let r = rule(2, Some(5_000), &["wire transfer"]);
        assert_eq!(required(&r, 1, &reasons(&["wire transfer"])), 2);
        assert_eq!(required(&r, 1, &reasons(&["other"])), 1);
        assert_eq!(required(&r, 6_000, &reasons(&["other"])), 2);
    }
}
