//! Organizations (issue #20): who a request acts for, the members and their roles,
//! and invitations.
//!
//! An organization owns agents, secrets, policies, connections, wallets, approvals
//! and its audit view; every table's `sponsor_id` names it. A person signs in as
//! themself and acts in one organization per request: the one `X-AEGIS-Org` names,
//! else the one they founded (its id is their account id), else the first they
//! joined. [`OrgService::session`] resolves that membership; the role check itself
//! is [`SessionUser::scope`], the only way to the organization's id.
//!
//! Every change of membership is in the audit log, in the same transaction as the
//! change, naming the member who made it and their role.

pub mod invitations;
pub mod settings;

use app::error::AppError;
use app::model::{Access, MemberPatch, MemberView, OrgView, Role, SessionUser};
use entity::{memberships, organizations, users};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog};
use crate::auth::tokens::Identity;
use crate::db::internal;
use crate::events::{self, Event, EventBus};

#[derive(Clone)]
pub struct OrgService {
    db: DatabaseConnection,
    audit: AuditLog,
    /// Membership changes reach the organization's dashboards.
    events: EventBus,
    /// Where invitation links point (`AEGIS_PUBLIC_URL`), if configured.
    public_url: Option<String>,
    /// Invitations are emailed when SMTP is configured (`AEGIS_SMTP_URL`).
    mailer: Option<crate::mail::Mailer>,
}

/// The answer for an organization the caller is not a member of, and for one that
/// does not exist: the same, so ids cannot be probed.
fn org_not_found() -> AppError {
    AppError::new(404, "org_not_found", "no such organization of yours")
}

fn member_not_found() -> AppError {
    AppError::not_found("member")
}

fn stored_role(role: &str) -> Result<Role, AppError> {
    Role::parse(role).ok_or_else(|| {
        tracing::error!(role, "a membership has an unknown role");
        AppError::internal()
    })
}

impl OrgService {
    pub fn new(
        db: DatabaseConnection,
        audit: AuditLog,
        events: EventBus,
        public_url: Option<String>,
        mailer: Option<crate::mail::Mailer>,
    ) -> Self {
        Self { db, audit, events, public_url, mailer }
    }

    /// Tells the organization's dashboards, once the change is committed.
    fn announce(&self, kind: &str, org: Uuid, data: serde_json::Value, audit_seq: i64) {
        self.events.publish(Event::new(kind, org, None, data).audit_seq(audit_seq));
    }

    /// The member `who` acting in `requested` (else their default organization).
    /// Not a member, or no such organization: `404 org_not_found`.
    pub async fn session(&self, who: Identity, requested: Option<Uuid>) -> Result<SessionUser, AppError> {
        let membership = match requested {
            Some(org) => memberships::Entity::find_by_id((org, who.user_id))
                .one(&self.db)
                .await
                .map_err(internal)?
                .ok_or_else(org_not_found)?,
            None => match self.default_membership(who.user_id).await? {
                Some(m) => m,
                None => return Ok(SessionUser::without_organization(who.user_id, who.session_id)),
            },
        };
        let role = stored_role(&membership.role)?;
        Ok(SessionUser::new(who.user_id, who.session_id, membership.org_id, role))
    }

    /// The one they founded if they are still in it, else the first they joined.
    async fn default_membership(&self, user: Uuid) -> Result<Option<memberships::Model>, AppError> {
        if let Some(own) =
            memberships::Entity::find_by_id((user, user)).one(&self.db).await.map_err(internal)?
        {
            return Ok(Some(own));
        }
        memberships::Entity::find()
            .filter(memberships::Column::UserId.eq(user))
            .order_by_asc(memberships::Column::CreatedAt)
            .order_by_asc(memberships::Column::OrgId)
            .one(&self.db)
            .await
            .map_err(internal)
    }

    /// Every organization `user` belongs to.
    pub async fn list_mine(&self, user: Uuid) -> Result<Vec<OrgView>, AppError> {
        let rows = memberships::Entity::find()
            .filter(memberships::Column::UserId.eq(user))
            .order_by_asc(memberships::Column::CreatedAt)
            .order_by_asc(memberships::Column::OrgId)
            .find_also_related(organizations::Entity)
            .all(&self.db)
            .await
            .map_err(internal)?;
        // The default, as `default_membership` picks it, from the rows in hand.
        let default = rows.iter().find(|(m, _)| m.org_id == user).or(rows.first()).map(|(m, _)| m.org_id);
        let mut out = Vec::with_capacity(rows.len());
        for (m, org) in rows {
            let Some(org) = org else { continue };
            out.push(OrgView {
                id: org.id,
                name: org.name,
                role: stored_role(&m.role)?,
                default: Some(org.id) == default,
                created_at: org.created_at,
            });
        }
        out.sort_by(|a, b| b.default.cmp(&a.default).then(a.created_at.cmp(&b.created_at)));
        Ok(out)
    }

    pub async fn members(&self, sponsor: &SessionUser) -> Result<Vec<MemberView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        members_of(&self.db, org, None).await
    }

    /// Owners change roles; the last owner cannot be demoted.
    pub async fn set_role(
        &self,
        sponsor: &SessionUser,
        member: Uuid,
        patch: MemberPatch,
    ) -> Result<MemberView, AppError> {
        let by = Actor::new(sponsor, Access::Members)?;
        let org = by.org;
        let mut txn = self.audit.begin().await?;
        lock_org(txn.conn(), org).await?;
        let current = find_member(txn.conn(), org, member).await?;
        let from = stored_role(&current.role)?;
        if from == patch.role {
            drop(txn);
            return one_member(&self.db, org, member).await;
        }
        if from == Role::Owner && owners(txn.conn(), org).await? <= 1 {
            return Err(last_owner());
        }
        memberships::Entity::update_many()
            .col_expr(memberships::Column::Role, Expr::value(patch.role.as_str()))
            .filter(memberships::Column::OrgId.eq(org))
            .filter(memberships::Column::UserId.eq(member))
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        let change = serde_json::json!({"member": member, "from": from.as_str(), "to": patch.role.as_str()});
        let appended =
            txn.append(AuditEntry::by_member("org.member_role_changed", &by, change.clone())).await?;
        txn.commit().await?;
        let mut data = change;
        data["by"] = by.audit_json();
        self.announce(events::ORG_MEMBER_ROLE_CHANGED, org, data, appended.seq);
        one_member(&self.db, org, member).await
    }

    /// Owners remove anyone; every member may remove themself (leave). The last
    /// owner cannot go.
    pub async fn remove(&self, sponsor: &SessionUser, member: Uuid) -> Result<(), AppError> {
        let by = Actor::new(sponsor, if member == sponsor.user_id { Access::Read } else { Access::Members })?;
        let org = by.org;
        let mut txn = self.audit.begin().await?;
        lock_org(txn.conn(), org).await?;
        let current = find_member(txn.conn(), org, member).await?;
        let role = stored_role(&current.role)?;
        if role == Role::Owner && owners(txn.conn(), org).await? <= 1 {
            return Err(last_owner());
        }
        memberships::Entity::delete_by_id((org, member)).exec(txn.conn()).await.map_err(internal)?;
        let kind = if member == sponsor.user_id { "org.member_left" } else { "org.member_removed" };
        let appended = txn
            .append(AuditEntry::by_member(
                kind,
                &by,
                serde_json::json!({"member": member, "role": role.as_str()}),
            ))
            .await?;
        txn.commit().await?;
        let data = serde_json::json!({"member": member, "role": role.as_str(), "by": by.audit_json()});
        self.announce(events::ORG_MEMBER_REMOVED, org, data, appended.seq);
        Ok(())
    }
}

fn last_owner() -> AppError {
    AppError::conflict(
        "last_owner",
        "an organization keeps at least one owner: make someone else owner first",
    )
}

/// Serialises changes of one organization's members (PostgreSQL: the row lock;
/// SQLite: its single writer).
async fn lock_org<C: ConnectionTrait>(db: &C, org: Uuid) -> Result<(), AppError> {
    organizations::Entity::find_by_id(org)
        .lock_exclusive()
        .one(db)
        .await
        .map_err(internal)?
        .ok_or_else(org_not_found)
        .map(drop)
}

async fn find_member<C: ConnectionTrait>(
    db: &C,
    org: Uuid,
    member: Uuid,
) -> Result<memberships::Model, AppError> {
    memberships::Entity::find_by_id((org, member))
        .one(db)
        .await
        .map_err(internal)?
        .ok_or_else(member_not_found)
}

async fn owners<C: ConnectionTrait>(db: &C, org: Uuid) -> Result<u64, AppError> {
    memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(org))
        .filter(memberships::Column::Role.eq(Role::Owner.as_str()))
        .count(db)
        .await
        .map_err(internal)
}

async fn one_member<C: ConnectionTrait>(db: &C, org: Uuid, member: Uuid) -> Result<MemberView, AppError> {
    members_of(db, org, Some(member)).await?.into_iter().next().ok_or_else(member_not_found)
}

/// The organization's members (or just `only`), oldest first.
async fn members_of<C: ConnectionTrait>(
    db: &C,
    org: Uuid,
    only: Option<Uuid>,
) -> Result<Vec<MemberView>, AppError> {
    let mut query = memberships::Entity::find().filter(memberships::Column::OrgId.eq(org));
    if let Some(member) = only {
        query = query.filter(memberships::Column::UserId.eq(member));
    }
    let rows = query
        .order_by_asc(memberships::Column::CreatedAt)
        .order_by_asc(memberships::Column::UserId)
        .find_also_related(users::Entity)
        .all(db)
        .await
        .map_err(internal)?;
    rows.into_iter()
        .filter_map(|(m, u)| u.map(|u| (m, u)))
        .map(|(m, u)| {
            Ok(MemberView {
                id: u.id,
                email: u.email,
                name: u.name,
                role: stored_role(&m.role)?,
                joined_at: m.created_at,
            })
        })
        .collect()
}
