//! An approval as a notification shows it, whatever the channel: the normalised
//! request (method, URL, agent, cost, the policy's reasons), its state, who decided
//! and who approved so far. Never a header value or a body (only the body's size).

use entity::{agents, approval_votes, approvals, channel_deliveries, channels, users};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

/// The approval a delivery is about (its event's `approval_id`), loaded, if any.
pub async fn of_delivery(
    db: &DatabaseConnection,
    channel: &channels::Model,
    row: &channel_deliveries::Model,
) -> Result<Option<ApprovalCard>, sea_orm::DbErr> {
    let payload: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or_default();
    match payload["data"]["details"]["approval_id"].as_str().and_then(|v| v.parse().ok()) {
        Some(id) => ApprovalCard::load(db, channel.org_id, id).await,
        None => Ok(None),
    }
}

/// A URL shown in a notification is cut to this many characters.
pub const MAX_URL: usize = 300;

/// An approval as a message shows it.
pub struct ApprovalCard {
    pub approval: approvals::Model,
    pub agent: String,
    /// Who decided, by name (email), when decided.
    pub decided_by: Option<String>,
    /// Approvals so far under the two-person rule, by name.
    pub votes: Vec<String>,
}

impl ApprovalCard {
    pub async fn load(db: &DatabaseConnection, org: Uuid, id: Uuid) -> Result<Option<Self>, sea_orm::DbErr> {
        let Some(approval) =
            approvals::Entity::find_by_id(id).filter(approvals::Column::SponsorId.eq(org)).one(db).await?
        else {
            return Ok(None);
        };
        let agent =
            agents::Entity::find_by_id(approval.agent_id).one(db).await?.map(|a| a.name).unwrap_or_default();
        let name = |u: users::Model| format!("{} ({})", u.name, u.email);
        let decided_by = match approval.decided_by {
            Some(member) => users::Entity::find_by_id(member).one(db).await?.map(name),
            None => None,
        };
        let mut votes = Vec::new();
        for v in approval_votes::Entity::find()
            .filter(approval_votes::Column::ApprovalId.eq(id))
            .order_by_asc(approval_votes::Column::CreatedAt)
            .all(db)
            .await?
        {
            if let Some(u) = users::Entity::find_by_id(v.member_id).one(db).await? {
                votes.push(name(u));
            }
        }
        Ok(Some(Self { approval, agent, decided_by, votes }))
    }

    /// The URL as shown: cut to [`MAX_URL`] characters, marked when cut.
    pub fn url(&self) -> String {
        let url: String = self.approval.url.chars().take(MAX_URL).collect();
        if self.approval.url.chars().count() > MAX_URL { format!("{url}… (cut)") } else { url }
    }

    /// The policy's reasons, joined.
    pub fn reasons(&self) -> String {
        let reasons: Vec<String> = serde_json::from_str(&self.approval.policy_reasons).unwrap_or_default();
        if reasons.is_empty() { "—".to_owned() } else { reasons.join("; ") }
    }

    /// The cost in dollars, exactly (micro-units).
    pub fn cost(&self) -> String {
        let c = self.approval.cost_micros;
        format!("${}.{:06}", c / 1_000_000, c % 1_000_000)
    }

    /// What is said of the body: its size only.
    pub fn body(&self) -> String {
        match self.approval.body_bytes {
            0 => "none".to_owned(),
            n => format!("{n} bytes, not shown here"),
        }
    }

    /// "Approval requested: POST api.example.com by bot".
    pub fn title(&self) -> String {
        let host = url::Url::parse(&self.approval.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        format!("Approval requested: {} {host} by {}", self.approval.method, self.agent)
    }

    /// The outcome once decided ("Approved by …"), `None` while pending.
    pub fn outcome(&self) -> Option<String> {
        let who = self.decided_by.as_deref().map(|w| format!(" by {w}")).unwrap_or_default();
        Some(match self.approval.status.as_str() {
            "pending" => return None,
            "approved" => format!("Approved{who}"),
            "rejected" => format!("Rejected{who}"),
            "expired" => "Expired: nobody decided in time".to_owned(),
            other => other.to_owned(),
        })
    }
}
