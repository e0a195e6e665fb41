//! Agents: the identities AI agents use to reach AEGIS. A sponsor creates, lists,
//! updates, suspends, resumes and revokes only their own agents; any other id is
//! "not found".

pub mod api_keys;
pub mod keys;

pub use keys::{KEY_CHECK_WAIT, MAX_KEY_CHECKS_IN_FLIGHT};

use std::collections::HashMap;
use std::sync::Arc;

use app::error::AppError;
use app::model::{
    AgentCreated, AgentPatch, AgentStatus, AgentView, KeyRotated, NewAgent, Page, PageRequest, WalletUpdate,
};
use app::money::MAX_MICROS;
use entity::{agent_keys, agents, policies, wallets};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog};
use crate::db::{internal, now, unique_or_internal};
use crate::events::{self, Event, EventBus};
use crate::policies::{DEFAULT_POLICY, PolicyService};
use crate::store::CallStore;

/// Where a new agent starts: trust's baseline.
pub const INITIAL_TRUST: i32 = crate::trust::BASELINE;
const MAX_TAGS: usize = 20;

/// An agent authenticated by its API key.
#[derive(Debug, Clone)]
pub struct AgentPrincipal {
    pub agent: agents::Model,
    pub key_id: String,
}

/// Agents' names by id, for lists that name whose rows they show; `live_only`
/// leaves deleted agents out (their rows then show no name).
pub async fn names(
    db: &impl ConnectionTrait,
    ids: &[Uuid],
    live_only: bool,
) -> Result<HashMap<Uuid, String>, AppError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = agents::Entity::find()
        .select_only()
        .column(agents::Column::Id)
        .column(agents::Column::Name)
        .filter(agents::Column::Id.is_in(ids.iter().copied()));
    if live_only {
        query = query.filter(agents::Column::DeletedAt.is_null());
    }
    let rows: Vec<(Uuid, String)> = query.into_tuple().all(db).await.map_err(internal)?;
    Ok(rows.into_iter().collect())
}

#[derive(Clone)]
pub struct AgentService {
    db: DatabaseConnection,
    policies: PolicyService,
    audit: AuditLog,
    events: EventBus,
    /// Presented keys checked against the store ([`keys::KeyChecks`]).
    keys: keys::KeyChecks,
}

struct Validated {
    name: Option<String>,
    description: Option<Option<String>>,
    tags: Option<Vec<String>>,
    daily: Option<i64>,
    monthly: Option<i64>,
}

fn validate(
    name: Option<&str>,
    description: Option<&str>,
    tags: Option<&[String]>,
    daily: Option<i64>,
    monthly: Option<i64>,
) -> Result<Validated, AppError> {
    let name = name
        .map(|n| {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
                Err(AppError::validation("name must be 1 to 100 printable characters"))
            } else {
                Ok(n.to_owned())
            }
        })
        .transpose()?;
    let description = description
        .map(|d| {
            let d = d.trim();
            if d.chars().count() > 1000 {
                Err(AppError::validation("description must be at most 1000 characters"))
            } else {
                Ok((!d.is_empty()).then(|| d.to_owned()))
            }
        })
        .transpose()?;
    let tags = tags
        .map(|tags| {
            if tags.len() > MAX_TAGS {
                return Err(AppError::validation(format!("at most {MAX_TAGS} tags")));
            }
            let mut clean: Vec<String> = Vec::with_capacity(tags.len());
            for t in tags {
                let t = t.trim().to_lowercase();
                let ok = !t.is_empty()
                    && t.len() <= 50
                    && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
                if !ok {
                    return Err(AppError::validation(format!(
                        "tag {t:?} must be 1 to 50 of a-z 0-9 - _ : ."
                    )));
                }
                if !clean.contains(&t) {
                    clean.push(t);
                }
            }
            Ok(clean)
        })
        .transpose()?;
    let limit = |label: &str, v: Option<i64>| match v {
        Some(v) if !(0..=MAX_MICROS).contains(&v) => {
            Err(AppError::validation(format!("{label} must be between 0 and {MAX_MICROS} micro-units")))
        }
        v => Ok(v),
    };
    Ok(Validated {
        name,
        description,
        tags,
        daily: limit("daily_limit_micros", daily)?,
        monthly: limit("monthly_limit_micros", monthly)?,
    })
}

fn name_taken() -> AppError {
    AppError::conflict("agent_name_taken", "you already have an agent with this name")
}

/// An agent lifecycle record: which organization and member (`by`), which agent, and a small canonical JSON detail
/// (never the API key; at most its public prefix).
fn lifecycle(kind: &str, by: &Actor, agent_id: Uuid, detail: serde_json::Value) -> AuditEntry {
    AuditEntry { agent_id: Some(agent_id), ..AuditEntry::by_member(kind, by, detail) }
}

fn revoked() -> AppError {
    AppError::conflict(
        "agent_revoked",
        "this agent has been deleted; its history is kept but it cannot change",
    )
}

impl AgentService {
    /// Every change is recorded in the audit log in the same transaction as the
    /// change itself: both commit, or neither does.
    pub fn new(
        db: DatabaseConnection,
        store: Arc<dyn CallStore>,
        policies: PolicyService,
        audit: AuditLog,
        events: EventBus,
    ) -> Self {
        let keys = keys::KeyChecks::new(store);
        Self { db, policies, audit, events, keys }
    }

    /// Tells the sponsor's dashboards, once the change is committed.
    fn announce(&self, kind: &str, sponsor_id: Uuid, id: Uuid, data: serde_json::Value, audit_seq: i64) {
        self.events.publish(Event::new(kind, sponsor_id, Some(id), data).audit_seq(audit_seq));
    }

    pub async fn create(&self, by: &Actor, input: NewAgent) -> Result<AgentCreated, AppError> {
        let sponsor_id = by.org;
        let v = validate(
            Some(&input.name),
            input.description.as_deref(),
            input.tags.as_deref(),
            input.daily_limit_micros,
            input.monthly_limit_micros,
        )?;
        let policy =
            self.policies.resolve(sponsor_id, input.policy.as_deref().unwrap_or(DEFAULT_POLICY)).await?;
        let at = now();
        let id = Uuid::now_v7();
        let key = api_keys::generate();
        let name = v.name.unwrap_or_default();
        let tags = v.tags.unwrap_or_default();
        let (daily, monthly) = (v.daily.unwrap_or(0), v.monthly.unwrap_or(0));
        let mut txn = self.audit.begin().await?;
        agents::ActiveModel {
            id: Set(id),
            sponsor_id: Set(sponsor_id),
            name: Set(name.clone()),
            description: Set(v.description.flatten()),
            status: Set(AgentStatus::Active.as_str().into()),
            policy_id: Set(Some(policy.id)),
            trust_score: Set(INITIAL_TRUST),
            tags: Set(serde_json::to_string(&tags).map_err(|_| AppError::internal())?),
            created_at: Set(at),
            updated_at: Set(at),
            suspended_at: Set(None),
            suspended_reason: Set(None),
            deleted_at: Set(None),
            last_seen_at: Set(None),
            rate_limits: Set(None),
        }
        .insert(txn.conn())
        .await
        .map_err(|e| unique_or_internal(e, name_taken()))?;
        crate::wallets::insert_new(txn.conn(), id, daily, monthly, at).await?;
        keys::insert(txn.conn(), id, &key).await?;
        let appended = txn
            .append(lifecycle(
                "agent.created",
                by,
                id,
                serde_json::json!({
                    "name": name,
                    "policy": policy.name,
                    "daily_limit_micros": daily,
                    "monthly_limit_micros": monthly,
                    "tags": tags,
                    "key_prefix": api_keys::display_prefix(&key.key_id),
                }),
            ))
            .await?;
        txn.commit().await?;
        self.announce(
            events::AGENT_CREATED,
            sponsor_id,
            id,
            serde_json::json!({"name": name, "policy": policy.name}),
            appended.seq,
        );
        let agent = self.get(sponsor_id, id).await?;
        Ok(AgentCreated { agent, api_key: key.plaintext })
    }

    /// Live agents, newest first. Ids are UUIDv7, so ordering by id is creation order
    /// and the last id of a page is the cursor for the next.
    pub async fn list(&self, sponsor_id: Uuid, page: PageRequest) -> Result<Page<AgentView>, AppError> {
        let (limit, before) = crate::paging::parse(&page)?;
        let mut query = agents::Entity::find()
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .filter(agents::Column::DeletedAt.is_null())
            .order_by_desc(agents::Column::Id)
            .limit(u64::from(limit) + 1);
        if let Some(before) = before {
            query = query.filter(agents::Column::Id.lt(before));
        }
        let mut rows = query.all(&self.db).await.map_err(internal)?;
        let next_cursor = crate::paging::cut(&mut rows, limit, |a| a.id);
        Ok(Page { items: self.views(rows).await?, next_cursor })
    }

    pub async fn get(&self, sponsor_id: Uuid, id: Uuid) -> Result<AgentView, AppError> {
        let agent = self.owned(sponsor_id, id).await?;
        Ok(self.views(vec![agent]).await?.remove(0))
    }

    pub async fn update(&self, by: &Actor, id: Uuid, patch: AgentPatch) -> Result<AgentView, AppError> {
        let sponsor_id = by.org;
        let v = validate(
            patch.name.as_deref(),
            patch.description.as_deref(),
            patch.tags.as_deref(),
            patch.daily_limit_micros,
            patch.monthly_limit_micros,
        )?;
        let agent = self.live(sponsor_id, id).await?;
        let policy = match patch.policy.as_deref() {
            Some(name) => Some(self.policies.resolve(sponsor_id, name).await?),
            None => None,
        };
        // What changed, with the new values (the description only by name).
        let mut changes = serde_json::Map::new();
        let mut txn = self.audit.begin().await?;
        let mut active: agents::ActiveModel = agent.into();
        if let Some(name) = v.name {
            changes.insert("name".into(), name.clone().into());
            active.name = Set(name);
        }
        if let Some(description) = v.description {
            changes.insert("description".into(), serde_json::Value::Bool(true));
            active.description = Set(description);
        }
        if let Some(tags) = v.tags {
            active.tags = Set(serde_json::to_string(&tags).map_err(|_| AppError::internal())?);
            changes.insert("tags".into(), tags.into());
        }
        if let Some(policy) = policy {
            changes.insert("policy".into(), policy.name.into());
            active.policy_id = Set(Some(policy.id));
        }
        if let Some(limits) = patch.rate_limits {
            changes.insert("rate_limits".into(), serde_json::to_value(&limits).unwrap_or_default());
            active.rate_limits = Set(crate::rate_limits::saved(limits)?);
        }
        active.updated_at = Set(now());
        active.update(txn.conn()).await.map_err(|e| unique_or_internal(e, name_taken()))?;
        let wallet = WalletUpdate {
            daily_limit_micros: v.daily,
            monthly_limit_micros: v.monthly,
            ..WalletUpdate::default()
        };
        crate::wallets::apply_update(txn.conn(), id, &wallet, &mut changes).await?;
        txn.append(lifecycle("agent.updated", by, id, serde_json::json!({ "changed": changes }))).await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    /// Changes an agent's wallet settings: limits, time zone, alert threshold.
    /// Audited as `agent.updated` with what changed.
    pub async fn update_wallet(&self, by: &Actor, id: Uuid, update: WalletUpdate) -> Result<(), AppError> {
        let sponsor_id = by.org;
        let v = validate(None, None, None, update.daily_limit_micros, update.monthly_limit_micros)?;
        let timezone = match update.timezone.as_deref() {
            Some(tz) => Some(crate::wallets::parse_timezone(tz)?.name().to_owned()),
            None => None,
        };
        if update.alert_threshold_pct.is_some_and(|p| !(0..=100).contains(&p)) {
            return Err(AppError::validation("alert_threshold_pct must be 0 (off) to 100"));
        }
        self.live(sponsor_id, id).await?;
        let update =
            WalletUpdate { daily_limit_micros: v.daily, monthly_limit_micros: v.monthly, timezone, ..update };
        let mut changes = serde_json::Map::new();
        let mut txn = self.audit.begin().await?;
        crate::wallets::apply_update(txn.conn(), id, &update, &mut changes).await?;
        if !changes.is_empty() {
            txn.append(lifecycle("agent.updated", by, id, serde_json::json!({ "changed": changes }))).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Issues a new key and revokes every earlier one in the same transaction.
    pub async fn rotate_key(&self, by: &Actor, id: Uuid) -> Result<KeyRotated, AppError> {
        let sponsor_id = by.org;
        self.live(sponsor_id, id).await?;
        let key = api_keys::generate();
        let key_prefix = api_keys::display_prefix(&key.key_id);
        let mut txn = self.audit.begin().await?;
        keys::revoke_all(txn.conn(), id).await?;
        keys::insert(txn.conn(), id, &key).await?;
        txn.append(lifecycle("agent.key_rotated", by, id, serde_json::json!({ "key_prefix": key_prefix })))
            .await?;
        txn.commit().await?;
        Ok(KeyRotated { agent_id: id, api_key: key.plaintext, key_prefix })
    }

    pub async fn suspend(&self, by: &Actor, id: Uuid, reason: Option<String>) -> Result<AgentView, AppError> {
        let sponsor_id = by.org;
        let agent = self.live(sponsor_id, id).await?;
        let reason = reason.map(|r| r.trim().chars().take(500).collect::<String>()).filter(|r| !r.is_empty());
        if agent.status != AgentStatus::Suspended.as_str() {
            let reason = reason.unwrap_or_else(|| "suspended by sponsor".into());
            let mut txn = self.audit.begin().await?;
            let mut active: agents::ActiveModel = agent.into();
            let at = now();
            active.status = Set(AgentStatus::Suspended.as_str().into());
            active.suspended_at = Set(Some(at));
            active.suspended_reason = Set(Some(reason.clone()));
            active.updated_at = Set(at);
            active.update(txn.conn()).await.map_err(internal)?;
            // A sponsor's suspension stays until the sponsor lifts it: no half-open.
            close_breaker_by_sponsor(txn.conn(), id).await?;
            let appended = txn
                .append(lifecycle("agent.suspended", by, id, serde_json::json!({ "reason": reason })))
                .await?;
            txn.commit().await?;
            self.announce(
                events::AGENT_SUSPENDED,
                sponsor_id,
                id,
                serde_json::json!({ "reason": reason }),
                appended.seq,
            );
        }
        self.get(sponsor_id, id).await
    }

    pub async fn resume(&self, by: &Actor, id: Uuid) -> Result<AgentView, AppError> {
        let sponsor_id = by.org;
        let agent = self.live(sponsor_id, id).await?;
        if agent.status != AgentStatus::Active.as_str() {
            let from = agent.status.clone();
            let mut txn = self.audit.begin().await?;
            let mut active: agents::ActiveModel = agent.into();
            active.status = Set(AgentStatus::Active.as_str().into());
            active.suspended_at = Set(None);
            active.suspended_reason = Set(None);
            active.updated_at = Set(now());
            active.update(txn.conn()).await.map_err(internal)?;
            let breaker_reset = close_breaker_by_sponsor(txn.conn(), id).await?;
            let appended = txn
                .append(lifecycle(
                    "agent.resumed",
                    by,
                    id,
                    serde_json::json!({ "from": from, "breaker_reset": breaker_reset }),
                ))
                .await?;
            txn.commit().await?;
            if breaker_reset {
                self.announce(
                    events::BREAKER_RESET,
                    sponsor_id,
                    id,
                    serde_json::json!({ "by": "sponsor" }),
                    appended.seq,
                );
            }
            self.announce(
                events::AGENT_RESUMED,
                sponsor_id,
                id,
                serde_json::json!({ "from": from }),
                appended.seq,
            );
        }
        self.get(sponsor_id, id).await
    }

    /// Revokes the agent and its keys. The row and its history stay.
    pub async fn delete(&self, by: &Actor, id: Uuid) -> Result<AgentView, AppError> {
        let sponsor_id = by.org;
        let agent = self.owned(sponsor_id, id).await?;
        if agent.deleted_at.is_none() {
            let name = agent.name.clone();
            let mut txn = self.audit.begin().await?;
            let at = now();
            let mut active: agents::ActiveModel = agent.into();
            active.status = Set(AgentStatus::Revoked.as_str().into());
            active.deleted_at = Set(Some(at));
            active.updated_at = Set(at);
            active.update(txn.conn()).await.map_err(internal)?;
            keys::revoke_all(txn.conn(), id).await?;
            let appended =
                txn.append(lifecycle("agent.deleted", by, id, serde_json::json!({ "name": name }))).await?;
            txn.commit().await?;
            self.announce(
                events::AGENT_DELETED,
                sponsor_id,
                id,
                serde_json::json!({ "name": name }),
                appended.seq,
            );
        }
        self.get(sponsor_id, id).await
    }

    /// The agent as the pipeline sees it, for work done on its behalf later (an
    /// approved request). A deleted agent is still found: the breaker stage
    /// refuses it.
    pub async fn principal(&self, id: Uuid) -> Result<AgentPrincipal, AppError> {
        let agent = agents::Entity::find_by_id(id)
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("agent"))?;
        Ok(AgentPrincipal { agent, key_id: String::new() })
    }

    /// Finds the agent a presented API key belongs to. Unknown, malformed, revoked and
    /// wrong keys are all the same `None`.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<AgentPrincipal>, AppError> {
        self.keys.authenticate(presented).await
    }

    /// The agent if it belongs to the sponsor; otherwise "not found", whether it
    /// exists for someone else or not at all.
    pub(crate) async fn owned(&self, sponsor_id: Uuid, id: Uuid) -> Result<agents::Model, AppError> {
        agents::Entity::find_by_id(id)
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("agent"))
    }

    async fn live(&self, sponsor_id: Uuid, id: Uuid) -> Result<agents::Model, AppError> {
        let agent = self.owned(sponsor_id, id).await?;
        if agent.deleted_at.is_some() {
            return Err(revoked());
        }
        Ok(agent)
    }

    /// Builds views for a batch of agents with one query per related table.
    pub async fn views(&self, rows: Vec<agents::Model>) -> Result<Vec<AgentView>, AppError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|a| a.id).collect();
        let policy_ids: Vec<Uuid> = rows.iter().filter_map(|a| a.policy_id).collect();
        let policy_names: HashMap<Uuid, String> = policies::Entity::find()
            .filter(policies::Column::Id.is_in(policy_ids))
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|p| (p.id, p.name))
            .collect();
        let wallets: HashMap<Uuid, wallets::Model> = wallets::Entity::find()
            .filter(wallets::Column::AgentId.is_in(ids.clone()))
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|w| (w.agent_id, w))
            .collect();
        let keys: HashMap<Uuid, String> = agent_keys::Entity::find()
            .filter(agent_keys::Column::AgentId.is_in(ids))
            .filter(agent_keys::Column::RevokedAt.is_null())
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|k| (k.agent_id, api_keys::display_prefix(&k.key_id)))
            .collect();
        Ok(rows
            .into_iter()
            .map(|a| {
                let wallet = wallets.get(&a.id);
                AgentView {
                    id: a.id,
                    policy: a
                        .policy_id
                        .and_then(|p| policy_names.get(&p).cloned())
                        .unwrap_or_else(|| DEFAULT_POLICY.into()),
                    status: AgentStatus::parse(&a.status).unwrap_or(AgentStatus::Suspended),
                    trust_score: a.trust_score,
                    tier: crate::trust::tier(a.trust_score).to_owned(),
                    tags: serde_json::from_str(&a.tags).unwrap_or_default(),
                    daily_limit_micros: wallet.map_or(0, |w| w.daily_limit_micros),
                    monthly_limit_micros: wallet.map_or(0, |w| w.monthly_limit_micros),
                    key_prefix: keys.get(&a.id).cloned(),
                    name: a.name,
                    description: a.description,
                    created_at: a.created_at,
                    updated_at: a.updated_at,
                    suspended_at: a.suspended_at,
                    suspended_reason: a.suspended_reason,
                    last_seen_at: a.last_seen_at,
                    rate_limits: a.rate_limits.as_deref().and_then(|l| serde_json::from_str(l).ok()),
                }
            })
            .collect())
    }
}

/// Closes an agent's breaker because its sponsor resumed or suspended it by hand
/// (a sponsor's decision overrides the automatic one). Returns whether it was open
/// or half-open. Runs in the caller's transaction.
async fn close_breaker_by_sponsor(db: &impl ConnectionTrait, agent_id: Uuid) -> Result<bool, AppError> {
    use entity::breakers::{self, CLOSED};
    Ok(breakers::Entity::update_many()
        .col_expr(breakers::Column::State, Expr::value(CLOSED))
        .col_expr(breakers::Column::UpdatedAt, Expr::value(now()))
        .filter(breakers::Column::AgentId.eq(agent_id))
        .filter(breakers::Column::State.ne(CLOSED))
        .exec(db)
        .await
        .map_err(internal)?
        .rows_affected
        == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_table() {
        assert!(validate(Some("bot"), None, None, Some(0), Some(MAX_MICROS)).is_ok());
        let (long_name, long_desc) = ("n".repeat(101), "d".repeat(1001));
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<Vec<String>>, Option<i64>);
        let cases: Vec<Case> = vec![
            (Some(""), None, None, None),
            (Some(&long_name), None, None, None),
            (Some("a\nb"), None, None, None),
            (Some("ok"), Some(&long_desc), None, None),
            (Some("ok"), None, Some(vec!["has space".into()]), None),
            (Some("ok"), None, Some((0..21).map(|i| format!("t{i}")).collect()), None),
            (Some("ok"), None, None, Some(-1)),
            (Some("ok"), None, None, Some(MAX_MICROS + 1)),
        ];
        for (name, desc, tags, daily) in cases {
            let err = validate(name, desc, tags.as_deref(), daily, None).err().expect("should be rejected");
            assert_eq!(err.status, 422);
        }
    }

    #[test]
    fn tags_are_normalised_and_deduplicated() {
        let v = validate(None, None, Some(&["Prod".into(), "prod".into(), "team:ml".into()]), None, None)
            .unwrap();
        assert_eq!(v.tags.unwrap(), vec!["prod", "team:ml"]);
    }

    #[test]
    fn empty_description_clears() {
        assert_eq!(validate(None, Some("  "), None, None, None).unwrap().description, Some(None));
    }
}
