//! Invitations: an owner or admin invites a person by email, as a role no stronger
//! than their own. The invitation is a single-use link that expires; only the
//! token's SHA-256 is stored. Accepting needs the invitee signed in (an account of
//! their own, made at sign-up) with the address the invitation was sent to: a link
//! forwarded to someone else joins no one.

use std::time::Duration;

use app::error::AppError;
use app::model::{Access, InvitationCreated, InvitationView, NewInvitation, OrgView, SessionUser};
use entity::{invitations, memberships, users};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use super::OrgService;
use crate::actor::Actor;
use crate::db::{internal, now, unique_or_internal};
use crate::digest::{random_hex, sha256_hex};

/// How long an invitation link works.
pub const INVITATION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Invitation tokens start with this, so a leaked one is recognisable.
const TOKEN_PREFIX: &str = "inv_";

/// Pending invitations an organization may have at once.
const MAX_PENDING: u64 = 200;

fn invitation_not_found() -> AppError {
    AppError::new(404, "invitation_not_found", "no such invitation, or it was already used or revoked")
}

impl OrgService {
    pub async fn invite(
        &self,
        sponsor: &SessionUser,
        input: NewInvitation,
    ) -> Result<InvitationCreated, AppError> {
        let by = Actor::new(sponsor, Access::Invite)?;
        let org = by.org;
        if input.role > by.role {
            return Err(AppError::new(
                403,
                "forbidden_role",
                format!("the {} role cannot invite someone as {}", by.role.as_str(), input.role.as_str()),
            ));
        }
        let email = crate::auth::normalise_email(&input.email)?;
        let at = now();
        let pending = invitations::Entity::find()
            .filter(invitations::Column::OrgId.eq(org))
            .filter(invitations::Column::AcceptedAt.is_null())
            .filter(invitations::Column::ExpiresAt.gt(at))
            .count(&self.db)
            .await
            .map_err(internal)?;
        if pending >= MAX_PENDING {
            return Err(AppError::conflict(
                "too_many_invitations",
                format!("at most {MAX_PENDING} pending invitations: revoke some first"),
            ));
        }
        let token = format!("{TOKEN_PREFIX}{}", random_hex(32));
        let id = Uuid::now_v7();
        let expires_at = at + chrono::Duration::from_std(INVITATION_TTL).map_err(|_| AppError::internal())?;
        let mut txn = self.audit.begin().await?;
        invitations::ActiveModel {
            id: Set(id),
            org_id: Set(org),
            email: Set(email.clone()),
            role: Set(input.role.as_str().to_owned()),
            token_hash: Set(sha256_hex(token.as_bytes())),
            invited_by: Set(sponsor.user_id),
            created_at: Set(at),
            expires_at: Set(expires_at),
            accepted_at: Set(None),
            accepted_by: Set(None),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        txn.append(crate::audit::AuditEntry::by_member(
            "org.invitation_created",
            &by,
            serde_json::json!({"invitation": id, "email": email, "role": input.role.as_str()}),
        ))
        .await?;
        txn.commit().await?;
        let origin = self.public_url.as_deref().unwrap_or("").trim_end_matches('/');
        let invite_url = format!("{origin}/join?token={token}");
        self.email_invitation(&email, input.role, &invite_url, expires_at, &sponsor.user_id);
        Ok(InvitationCreated { id, invite_url, token, expires_at })
    }

    /// Emails the invitee their link, when SMTP and the public URL are configured
    /// (a relative link is no use in an email). Best effort, after the commit: the
    /// inviter has the link in the answer either way.
    fn email_invitation(
        &self,
        email: &str,
        role: app::model::Role,
        invite_url: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
        inviter: &Uuid,
    ) {
        let (Some(mailer), Some(_)) = (self.mailer.clone(), self.public_url.as_ref()) else { return };
        let Ok(to) = email.parse::<lettre::message::Mailbox>() else { return };
        let (db, invite_url, inviter) = (self.db.clone(), invite_url.to_owned(), *inviter);
        tokio::spawn(async move {
            let who = match entity::users::Entity::find_by_id(inviter).one(&db).await {
                Ok(Some(u)) => format!("{} ({})", u.name, u.email),
                _ => "A member".to_owned(),
            };
            let text = format!(
                "{who} invites you to their organization on AEGIS as {}.\n\n\
                 Accept (sign up or sign in first; the link works once, until {}):\n{invite_url}\n\n\
                 If you did not expect this, ignore this email.\n",
                role.as_str(),
                expires_at.format("%Y-%m-%d %H:%M UTC"),
            );
            if let Err(e) = mailer.send(&[to], "You are invited to an AEGIS organization", text).await {
                tracing::warn!(error = %e, "the invitation email was not sent");
            }
        });
    }

    pub async fn invitations(&self, sponsor: &SessionUser) -> Result<Vec<InvitationView>, AppError> {
        let org = sponsor.scope(Access::Read)?;
        let at = now();
        let rows = invitations::Entity::find()
            .filter(invitations::Column::OrgId.eq(org))
            .order_by_desc(invitations::Column::CreatedAt)
            .limit(MAX_PENDING * 2)
            .all(&self.db)
            .await
            .map_err(internal)?;
        rows.into_iter()
            .map(|i| {
                let status = match (i.accepted_at, i.expires_at > at) {
                    (Some(_), _) => "accepted",
                    (None, true) => "pending",
                    (None, false) => "expired",
                };
                Ok(InvitationView {
                    id: i.id,
                    email: i.email,
                    role: super::stored_role(&i.role)?,
                    invited_by: i.invited_by,
                    created_at: i.created_at,
                    expires_at: i.expires_at,
                    status: status.to_owned(),
                })
            })
            .collect()
    }

    /// Withdraws a pending invitation (its link stops working).
    pub async fn revoke_invitation(&self, sponsor: &SessionUser, id: Uuid) -> Result<(), AppError> {
        let by = Actor::new(sponsor, Access::Invite)?;
        let org = by.org;
        let mut txn = self.audit.begin().await?;
        let gone = invitations::Entity::delete_many()
            .filter(invitations::Column::Id.eq(id))
            .filter(invitations::Column::OrgId.eq(org))
            .filter(invitations::Column::AcceptedAt.is_null())
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        if gone.rows_affected != 1 {
            return Err(invitation_not_found());
        }
        txn.append(crate::audit::AuditEntry::by_member(
            "org.invitation_revoked",
            &by,
            serde_json::json!({"invitation": id}),
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Joins the invitation's organization as `who` (signed in; the invitation must
    /// be addressed to their email). Single use: a second acceptance, an expired or a
    /// revoked invitation is refused.
    pub async fn accept(&self, who: &SessionUser, token: &str) -> Result<OrgView, AppError> {
        let token = token.trim();
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return Err(invitation_not_found());
        }
        let hash = sha256_hex(token.as_bytes());
        let invitation = invitations::Entity::find()
            .filter(invitations::Column::TokenHash.eq(hash))
            .one(&self.db)
            .await
            .map_err(internal)?
            .filter(|i| i.accepted_at.is_none())
            .ok_or_else(invitation_not_found)?;
        let at = now();
        if invitation.expires_at <= at {
            return Err(AppError::new(
                410,
                "invitation_expired",
                "this invitation has expired: ask for a new one",
            ));
        }
        let user = users::Entity::find_by_id(who.user_id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::unauthorized("account no longer exists"))?;
        // Compared as stored (both normalised); not secret, so a plain comparison.
        if user.email != invitation.email {
            return Err(AppError::new(
                403,
                "invitation_email_mismatch",
                "this invitation was sent to another address: sign in with that account",
            ));
        }
        let role = super::stored_role(&invitation.role)?;
        let org = invitation.org_id;
        let mut txn = self.audit.begin().await?;
        // Single use, also against a concurrent acceptance of the same token. An
        // existing member's acceptance fails on the membership's key below, which
        // rolls this claim back with it.
        let claimed = invitations::Entity::update_many()
            .col_expr(invitations::Column::AcceptedAt, Expr::value(at))
            .col_expr(invitations::Column::AcceptedBy, Expr::value(who.user_id))
            .filter(invitations::Column::Id.eq(invitation.id))
            .filter(invitations::Column::AcceptedAt.is_null())
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        if claimed.rows_affected != 1 {
            return Err(invitation_not_found());
        }
        memberships::ActiveModel {
            org_id: Set(org),
            user_id: Set(who.user_id),
            role: Set(role.as_str().to_owned()),
            created_at: Set(at),
        }
        .insert(txn.conn())
        .await
        .map_err(|e| {
            unique_or_internal(
                e,
                AppError::conflict("already_member", "you are already a member of this organization"),
            )
        })?;
        // The joiner acts as the new member they now are.
        let joined = Actor { org, member: who.user_id, role };
        let detail = serde_json::json!({"invitation": invitation.id, "member": who.user_id, "invited_by": invitation.invited_by});
        let appended =
            txn.append(crate::audit::AuditEntry::by_member("org.member_joined", &joined, detail)).await?;
        txn.commit().await?;
        let data = serde_json::json!({"member": who.user_id, "role": role.as_str()});
        self.announce(crate::events::ORG_MEMBER_JOINED, org, data, appended.seq);
        self.list_mine(who.user_id).await?.into_iter().find(|o| o.id == org).ok_or_else(super::org_not_found)
    }
}
