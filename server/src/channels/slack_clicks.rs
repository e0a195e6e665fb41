//! Deciding from Slack: a click on Approve / Reject reaches
//! `POST /api/slack/channels/{id}/interactions`. It is Slack's only if its `v0`
//! signature verifies under that channel's signing secret within five minutes;
//! then the Slack user must be linked to a member of the channel's organization,
//! and the click is decided as that member with their role *now* (a viewer's
//! click decides nothing). Linking is done once, by the member signed in to AEGIS,
//! with a single-use code Slack shows only to that Slack user.

use app::error::AppError;
use app::model::{Access, Role, SessionUser, SlackLinked};
use entity::{channels, memberships, slack_link_tokens, slack_links, users};
use rand::RngCore;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use super::card::ApprovalCard;
use super::slack::{self, APPROVE, REJECT, Refused};
use super::{ChannelService, KIND_SLACK, channel_entry};
use crate::actor::Actor;
use crate::db::{internal, now};
use crate::digest::sha256_hex;

/// How long a link code works.
const LINK_TTL_MINUTES: i64 = 15;
/// The longest interaction body read (Slack's are a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// A request as Slack sent it.
pub struct SlackRequest<'a> {
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// What a verified click asks for.
pub enum Click {
    /// Decide `approval` as `member` (a session in the channel's organization with
    /// the member's current role).
    Decide {
        member: SessionUser,
        approval: Uuid,
        approve: bool,
        channel: Box<channels::Model>,
        slack_user: String,
    },
    /// Answered already (a link offer, or not a decision button).
    Answered,
}

fn refused(r: Refused) -> AppError {
    match r {
        Refused::Signature => {
            AppError::new(401, "slack_signature_invalid", "the Slack request signature does not verify")
        }
        Refused::Stale => AppError::new(
            401,
            "slack_timestamp_stale",
            "the Slack request timestamp is more than five minutes from now",
        ),
    }
}

fn bad_payload(what: &str) -> AppError {
    AppError::bad_request("invalid_slack_payload", format!("the Slack payload has no {what}"))
}

/// A bounded id from a Slack payload (team, user).
fn slack_id(v: &Value, what: &str) -> Result<String, AppError> {
    v.as_str()
        .filter(|s| (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .ok_or_else(|| bad_payload(what))
}

impl ChannelService {
    /// Verifies and reads a click. Refusals before the signature verifies say
    /// nothing of the channel beyond "not found".
    pub async fn slack_click(&self, channel_id: Uuid, req: SlackRequest<'_>) -> Result<Click, AppError> {
        let channel = channels::Entity::find_by_id(channel_id)
            .filter(channels::Column::Kind.eq(KIND_SLACK))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(super::not_found)?;
        let keys = slack::keys(&self.vault, &channel).ok_or_else(|| {
            tracing::error!(channel = %channel.id, "a Slack channel's keys could not be opened");
            AppError::internal()
        })?;
        slack::verify(
            &keys.signing_secret,
            req.timestamp,
            req.signature,
            req.body,
            chrono::Utc::now().timestamp(),
        )
        .map_err(refused)?;

        let payload = url::form_urlencoded::parse(req.body)
            .find(|(k, _)| k == "payload")
            .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .ok_or_else(|| bad_payload("payload"))?;
        if payload["type"] != "block_actions" {
            return Ok(Click::Answered);
        }
        let team = slack_id(&payload["team"]["id"], "team")?;
        let user = slack_id(&payload["user"]["id"], "user")?;
        let action = &payload["actions"][0];
        let approve = match action["action_id"].as_str() {
            Some(APPROVE) => true,
            Some(REJECT) => false,
            _ => return Ok(Click::Answered),
        };
        let approval: Uuid = action["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad_payload("approval id"))?;
        if !channel.enabled {
            self.slack_tell(&channel, &user, "This AEGIS channel is turned off; decide in the dashboard.")
                .await;
            return Ok(Click::Answered);
        }

        let link = slack_links::Entity::find_by_id((channel.org_id, team.clone(), user.clone()))
            .one(&self.db)
            .await
            .map_err(internal)?;
        // The member as they are now: still in the organization, account not disabled.
        let membership = match &link {
            Some(link) => memberships::Entity::find()
                .filter(memberships::Column::OrgId.eq(channel.org_id))
                .filter(memberships::Column::UserId.eq(link.member_id))
                .find_also_related(users::Entity)
                .one(&self.db)
                .await
                .map_err(internal)?,
            None => None,
        };
        let (Some(link), Some((membership, user_row))) = (link, membership) else {
            self.offer_link(&channel, &team, &user).await?;
            return Ok(Click::Answered);
        };
        // A disabled account cannot sign in; its Slack link decides nothing either.
        if user_row.is_none_or(|u| u.disabled_at.is_some()) {
            self.slack_tell(&channel, &user, "Your AEGIS account is disabled; nothing was decided.").await;
            return Ok(Click::Answered);
        }
        let role = Role::parse(&membership.role).unwrap_or(Role::Viewer);
        let member = SessionUser::new(link.member_id, Uuid::nil(), channel.org_id, role);
        Ok(Click::Decide { member, approval, approve, channel: Box::new(channel), slack_user: user })
    }

    /// A single-use code, shown only to that Slack user, that links them to the
    /// member who redeems it while signed in.
    async fn offer_link(&self, channel: &channels::Model, team: &str, user: &str) -> Result<(), AppError> {
        let mut raw = [0u8; 24];
        rand::rng().fill_bytes(&mut raw);
        let token = format!("slk_{}", hex::encode(raw));
        // Offers no longer usable go first, so clicks cannot pile them up.
        slack_link_tokens::Entity::delete_many()
            .filter(slack_link_tokens::Column::ExpiresAt.lt(now()))
            .exec(&self.db)
            .await
            .map_err(internal)?;
        slack_link_tokens::Entity::insert(slack_link_tokens::ActiveModel {
            token_hash: Set(sha256_hex(token.as_bytes())),
            org_id: Set(channel.org_id),
            team_id: Set(team.to_owned()),
            slack_user_id: Set(user.to_owned()),
            expires_at: Set(now() + chrono::Duration::minutes(LINK_TTL_MINUTES)),
            created_at: Set(now()),
        })
        .exec(&self.db)
        .await
        .map_err(internal)?;
        let text = format!(
            "Your Slack account is not linked to a member of this AEGIS organization, so nothing was decided. \
             To link it, sign in to AEGIS and send this code within {LINK_TTL_MINUTES} minutes: \
             `POST /api/slack/links {{\"token\": \"{token}\"}}`. Then click again."
        );
        self.slack_tell(channel, user, &text).await;
        Ok(())
    }

    /// Tells one Slack user something only they see (best effort: logged if Slack refuses).
    pub async fn slack_tell(&self, channel: &channels::Model, user: &str, text: &str) {
        let Some(keys) = slack::keys(&self.vault, channel) else { return };
        let body = json!({"channel": channel.slack_channel, "user": user, "text": text});
        if let Err((_, e)) = self.deliverer.slack().call(&keys.bot_token, "chat.postEphemeral", &body).await {
            tracing::warn!(channel = %channel.id, error = %e, "could not answer a Slack click");
        }
    }

    /// Shows an approval's current state in its Slack message (best effort).
    pub async fn slack_refresh(&self, channel: &channels::Model, approval: Uuid) {
        let Some(keys) = slack::keys(&self.vault, channel) else { return };
        let card = match ApprovalCard::load(&self.db, channel.org_id, approval).await {
            Ok(Some(card)) => card,
            _ => return,
        };
        let link = slack::approval_link(self.config.public_url.as_deref(), approval);
        if let Err((_, e)) =
            slack::refresh(&self.db, self.deliverer.slack(), &keys.bot_token, channel, &card, link.as_deref())
                .await
        {
            tracing::warn!(channel = %channel.id, error = %e, "could not update a Slack message");
        }
    }

    /// `POST /api/slack/links`: the signed-in member redeems a link code; their
    /// organization must be the code's. Audited as `channel.slack_linked`.
    pub async fn slack_link(&self, sponsor: &SessionUser, token: &str) -> Result<SlackLinked, AppError> {
        let by = Actor::new(sponsor, Access::Read)?;
        let invalid = || {
            AppError::new(
                404,
                "slack_link_invalid",
                "no such link code (used, expired or another organization's)",
            )
        };
        let hash = sha256_hex(token.trim().as_bytes());
        let mut txn = self.audit.begin().await?;
        let offer = slack_link_tokens::Entity::find_by_id(hash.clone())
            .filter(slack_link_tokens::Column::OrgId.eq(by.org))
            .one(txn.conn())
            .await
            .map_err(internal)?
            .ok_or_else(invalid)?;
        let used = slack_link_tokens::Entity::delete_by_id(hash).exec(txn.conn()).await.map_err(internal)?;
        if used.rows_affected != 1 || offer.expires_at < now() {
            return Err(invalid());
        }
        slack_links::Entity::insert(slack_links::ActiveModel {
            org_id: Set(by.org),
            team_id: Set(offer.team_id.clone()),
            slack_user_id: Set(offer.slack_user_id.clone()),
            member_id: Set(by.member),
            created_at: Set(now()),
        })
        .on_conflict(
            OnConflict::columns([
                slack_links::Column::OrgId,
                slack_links::Column::TeamId,
                slack_links::Column::SlackUserId,
            ])
            .update_columns([slack_links::Column::MemberId, slack_links::Column::CreatedAt])
            .to_owned(),
        )
        .exec(txn.conn())
        .await
        .map_err(internal)?;
        let detail = json!({"team_id": offer.team_id, "slack_user_id": offer.slack_user_id});
        txn.append(channel_entry("channel.slack_linked", by.org, detail, Some(&by))).await?;
        txn.commit().await?;
        Ok(SlackLinked { team_id: offer.team_id, slack_user_id: offer.slack_user_id })
    }
}
