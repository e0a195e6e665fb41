//! Email, over SMTP (`AEGIS_SMTP_URL`, with `lettre`): an email channel sends the
//! events it subscribes to to the organization's members whose role can act on
//! them (approvals to those who decide, everything else to owners and admins), and
//! invitations go to the invitee. An approval's email carries the normalised request
//! and a link to it in the dashboard: **a link alone never approves**, the page
//! asks for a sign-in and the decision is made there.

use app::model::Role;
use entity::{channel_deliveries, channels, memberships, users};
use lettre::message::Mailbox;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::Value;

use super::card::ApprovalCard;
use super::slack::approval_link;
use crate::mail::Mailer;

/// Who receives an event: approvals go to members who can decide them, the rest to
/// owners and admins.
async fn recipients(
    db: &DatabaseConnection,
    channel: &channels::Model,
    event_type: &str,
) -> Result<Vec<Mailbox>, String> {
    let least = if event_type.starts_with("approval.") { Role::Approver } else { Role::Admin };
    let members = memberships::Entity::find()
        .filter(memberships::Column::OrgId.eq(channel.org_id))
        .find_also_related(users::Entity)
        .all(db)
        .await
        .map_err(|_| "the organization's members could not be read".to_owned())?;
    Ok(members
        .into_iter()
        .filter(|(m, _)| Role::parse(&m.role).is_some_and(|r| r >= least))
        .filter_map(|(_, u)| u)
        .filter(|u| u.disabled_at.is_none())
        .filter_map(|u| u.email.parse().ok())
        .collect())
}

/// An approval as an email: the normalised request and the link (sign-in required).
pub fn approval_text(card: &ApprovalCard, link: Option<&str>) -> (String, String) {
    let a = &card.approval;
    let subject = match card.outcome() {
        None => card.title(),
        Some(outcome) => format!("{}: {outcome}", card.title()),
    };
    let mut text = format!(
        "{}\n\nMethod: {}\nURL: {}\nAgent: {}\nCost: {}\nPolicy's reasons: {}\nBody: {}\n",
        card.title(),
        a.method,
        card.url(),
        card.agent,
        card.cost(),
        card.reasons(),
        card.body(),
    );
    if let Some(outcome) = card.outcome() {
        text.push_str(&format!("\nOutcome: {outcome}\n"));
    } else if a.approvers_required > 1 {
        text.push_str(&format!(
            "\nNeeds {} approvers; approved so far: {}\n",
            a.approvers_required,
            card.votes.len()
        ));
    }
    match link {
        Some(link) => text.push_str(&format!(
            "\nReview and decide in AEGIS (you will be asked to sign in; this link alone decides nothing):\n{link}\n"
        )),
        None => text.push_str("\nReview and decide on the Approvals page of the AEGIS dashboard.\n"),
    }
    (subject, text)
}

/// Sends a delivery: an approval's email, or a short notice of another event.
pub async fn deliver(
    db: &DatabaseConnection,
    mailer: Option<&Mailer>,
    public_url: Option<&str>,
    row: &channel_deliveries::Model,
    channel: &channels::Model,
) -> Result<(), String> {
    let mailer = mailer.ok_or("email is not configured on this server (AEGIS_SMTP_URL)")?;
    let to = recipients(db, channel, &row.event_type).await?;
    let card = super::card::of_delivery(db, channel, row)
        .await
        .map_err(|_| "the approval could not be read".to_owned())?;
    let (subject, text) = match card {
        Some(card) => approval_text(&card, approval_link(public_url, card.approval.id).as_deref()),
        None => {
            let payload: Value = serde_json::from_str(&row.payload).unwrap_or(Value::Null);
            let details: String = payload["data"]["details"].to_string().chars().take(2000).collect();
            (format!("AEGIS: {}", row.event_type), format!("{}\n\n{details}\n", row.event_type))
        }
    };
    mailer.send(&to, &subject, text).await
}
