//! Scoped grants: an approval may also allow up to N more calls with the same
//! method, origin (scheme, host, port), vault secret and path prefix within T
//! minutes, for at most X micro-units in total. Their limits are checked when the
//! approval is given ([`checked`], [`prefix_for`]); using one is a single
//! conditional UPDATE ([`ApprovalService::use_grant`]), so a grant cannot be overdrawn.

use app::error::AppError;
use app::model::{ApprovalStatus, GrantRequest};
use app::money::MAX_MICROS;
use entity::approvals;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::ApprovalService;
use super::summary::{Summary, summaries};
use crate::db::{internal, now};

pub const MAX_GRANT_ACTIONS: i32 = 1000;
pub const MAX_GRANT_MINUTES: i32 = 24 * 60;
const MAX_PATH_PREFIX_CHARS: usize = 2048;

/// A requested grant within its limits: 1 to [`MAX_GRANT_ACTIONS`] actions, 1 to
/// [`MAX_GRANT_MINUTES`] minutes, a money cap in range and a valid path prefix.
pub(super) fn checked(g: &GrantRequest) -> Result<GrantRequest, AppError> {
    if !(1..=MAX_GRANT_ACTIONS).contains(&g.max_actions) {
        return Err(AppError::validation(format!("grant.max_actions must be 1 to {MAX_GRANT_ACTIONS}")));
    }
    if !(1..=MAX_GRANT_MINUTES).contains(&g.minutes) {
        return Err(AppError::validation(format!("grant.minutes must be 1 to {MAX_GRANT_MINUTES}")));
    }
    if g.max_micros.is_some_and(|m| !(0..=MAX_MICROS).contains(&m)) {
        return Err(AppError::validation("grant.max_micros must be 0 or more"));
    }
    if g.path_prefix.as_deref().is_some_and(|p| !valid_prefix(p)) {
        return Err(AppError::validation(
            "grant.path_prefix must start with / and hold no ?, #, \\, %, control characters or dot segments",
        ));
    }
    Ok(g.clone())
}

/// The path prefix of a grant given with the approval of a call to `url`: the one
/// asked for, else [`default_prefix`]. It must cover the approved path.
pub(super) fn prefix_for(g: &GrantRequest, url: &str) -> Result<String, AppError> {
    let path = url::Url::parse(url).map(|u| u.path().to_owned()).unwrap_or_default();
    let prefix = g.path_prefix.clone().unwrap_or_else(|| default_prefix(&path));
    if !path_covered(&prefix, &path) {
        return Err(AppError::validation(format!("grant.path_prefix must cover the approved path ({path})")));
    }
    Ok(prefix)
}

/// `scheme://host:port` of a URL, lower-cased, the port explicit.
fn origin_of(url: &url::Url) -> Option<String> {
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str()?.to_ascii_lowercase(),
        url.port_or_known_default()?
    ))
}

/// Whether `path` lies under `prefix`: equal, or `prefix` ends with `/` and starts
/// `path`, or `path` continues `prefix` with a `/` (so `/v1` covers `/v1/x`, not `/v10`).
pub fn path_covered(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix)
    } else {
        path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The default path prefix of a grant: the approved path up to its last `/`.
pub(super) fn default_prefix(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => path[..=i].to_owned(),
        None => "/".to_owned(),
    }
}

/// Not `/`, `?`, `#`, a dot segment or an escape: a literal path prefix as `url` normalises paths.
fn valid_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && prefix.chars().count() <= MAX_PATH_PREFIX_CHARS
        && !prefix.contains(['?', '#', '\\', '%'])
        && !prefix.chars().any(char::is_control)
        && !prefix.split('/').any(|seg| seg == "." || seg == "..")
}

impl ApprovalService {
    /// Uses one action of a live grant covering this call: same agent and method,
    /// same origin (scheme, host, port), same vault secret (or none for both), a
    /// path under the grant's prefix, time left, actions left, and money left if
    /// capped. Returns its id.
    pub async fn use_grant(
        &self,
        agent_id: Uuid,
        method: &str,
        url: &str,
        secret: Option<&str>,
        estimate_micros: i64,
    ) -> Result<Option<Uuid>, AppError> {
        let Some((origin, path)) =
            url::Url::parse(url).ok().and_then(|u| Some((origin_of(&u)?, u.path().to_owned())))
        else {
            return Ok(None);
        };
        let at = now();
        let mut find = summaries()
            .filter(approvals::Column::AgentId.eq(agent_id))
            .filter(approvals::Column::Status.eq(ApprovalStatus::Approved.as_str()))
            .filter(approvals::Column::GrantUntil.gt(at))
            .filter(approvals::Column::Method.eq(method));
        find = match secret {
            Some(name) => find.filter(approvals::Column::SecretName.eq(name)),
            None => find.filter(approvals::Column::SecretName.is_null()),
        };
        let candidates = find
            .order_by_asc(approvals::Column::GrantUntil)
            .into_model::<Summary>()
            .all(&self.db)
            .await
            .map_err(internal)?;
        let covers = |g: &Summary| {
            let Ok(granted) = url::Url::parse(&g.url) else { return false };
            let prefix = g.grant_path_prefix.clone().unwrap_or_else(|| default_prefix(granted.path()));
            origin_of(&granted).as_deref() == Some(origin.as_str()) && path_covered(&prefix, &path)
        };
        for grant in candidates.into_iter().filter(covers) {
            let used = approvals::Entity::update_many()
                .col_expr(
                    approvals::Column::GrantUsedActions,
                    Expr::col(approvals::Column::GrantUsedActions).add(1),
                )
                .col_expr(
                    approvals::Column::GrantSpentMicros,
                    Expr::col(approvals::Column::GrantSpentMicros).add(estimate_micros),
                )
                .filter(approvals::Column::Id.eq(grant.id))
                .filter(approvals::Column::GrantUntil.gt(at))
                .filter(
                    Expr::col(approvals::Column::GrantUsedActions)
                        .lt(Expr::col(approvals::Column::GrantMaxActions)),
                )
                .filter(
                    Condition::any().add(approvals::Column::GrantMaxMicros.is_null()).add(
                        Expr::col(approvals::Column::GrantSpentMicros)
                            .add(estimate_micros)
                            .lte(Expr::col(approvals::Column::GrantMaxMicros)),
                    ),
                )
                .exec(&self.db)
                .await
                .map_err(internal)?;
            if used.rows_affected == 1 {
                return Ok(Some(grant.id));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_prefixes_cover_whole_segments_only() {
        assert!(path_covered("/v1/", "/v1/things"));
        assert!(path_covered("/v1", "/v1/things") && path_covered("/v1", "/v1"));
        assert!(!path_covered("/v1", "/v10/x") && !path_covered("/v1/", "/v10"));
        assert!(!path_covered("/v1/", "/admin") && !path_covered("/v1/", "/v1"));
        assert_eq!(default_prefix("/v1/things"), "/v1/");
        assert_eq!(default_prefix("/"), "/");
        for bad in ["v1/", "/v1/../", "/./", "/v1?x", "/v1#", "/v1%2F", "/a\\b", "/a\nb"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
        assert!(valid_prefix("/") && valid_prefix("/v1/") && valid_prefix("/v1..x/"));
    }
}
