//! The sponsor's vault: secrets agents may use without ever seeing them. Values are
//! encrypted at rest ([`vault`]), decrypted only for the call that injects them, and
//! never returned by any API after they are stored.

pub mod hosts;
pub mod query;
pub mod vault;

use std::collections::HashMap;

use app::error::AppError;
use app::model::{Injection, NewSecret, SecretUpdate, SecretView};
use entity::{agents, secret_grants, secrets};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    Set,
};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog};
use crate::db::{internal, now, unique_or_internal};
use vault::Vault;

const MAX_VALUE_BYTES: usize = 8192;
const MAX_HOSTS: usize = 32;

/// Headers a secret may never be injected into: they control the connection or
/// the message framing, not authentication.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "expect",
];

/// A decrypted secret ready to be injected into one call.
pub struct UsableSecret {
    pub name: String,
    pub value: Zeroizing<String>,
    pub inject: Injection,
    /// Where it may go: checked again on every redirect hop.
    pub allowed: Vec<hosts::Pattern>,
}

impl UsableSecret {
    /// May the secret be sent to `to` (a request, or one redirect hop of it)?
    pub fn may_go_to(&self, to: &hosts::Destination<'_>) -> bool {
        hosts::any_matches(&self.allowed, to)
    }
}

impl std::fmt::Debug for UsableSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsableSecret").field("name", &self.name).field("value", &"<redacted>").finish()
    }
}

/// Why an agent may not use a secret; the reason is safe to show the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDenied(pub String);

#[derive(Clone)]
pub struct SecretService {
    db: DatabaseConnection,
    vault: Vault,
    /// Every change is audited in its own transaction, naming the member.
    audit: AuditLog,
}

fn validate_name(name: &str) -> Result<String, AppError> {
    crate::names::identifier(name, "secret name")
}

fn validate_value(value: &str) -> Result<(), AppError> {
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Err(AppError::validation(format!("secret value must be 1 to {MAX_VALUE_BYTES} bytes")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(AppError::validation("secret value must not contain control characters"));
    }
    Ok(())
}

fn validate_hosts(hosts: &[String]) -> Result<Vec<String>, AppError> {
    if hosts.is_empty() || hosts.len() > MAX_HOSTS {
        return Err(AppError::validation(format!("allowed_hosts needs 1 to {MAX_HOSTS} host patterns")));
    }
    let mut out: Vec<String> = Vec::new();
    for h in hosts {
        let p = hosts::parse_pattern(h).map_err(AppError::validation)?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn validate_injection(inject: &Injection) -> Result<Injection, AppError> {
    match inject {
        Injection::Header { header, format } => {
            let header = header.trim().to_ascii_lowercase();
            let token = !header.is_empty()
                && header.len() <= 64
                && header.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token || FORBIDDEN_HEADERS.contains(&header.as_str()) {
                return Err(AppError::validation(format!("{header:?} cannot carry a secret")));
            }
            if format.matches("{secret}").count() != 1
                || format.len() > 256
                || format.chars().any(|c| c.is_control())
            {
                return Err(AppError::validation("inject.format must contain {secret} exactly once"));
            }
            Ok(Injection::Header { header, format: format.clone() })
        }
        Injection::QueryParam { query_param } => {
            let query_param = crate::names::identifier(query_param, "inject.query_param")?;
            Ok(Injection::QueryParam { query_param })
        }
    }
}

/// A stored secret's destination patterns.
pub fn allowed_patterns(row: &secrets::Model) -> Vec<hosts::Pattern> {
    let stored: Vec<String> = serde_json::from_str(&row.allowed_hosts).unwrap_or_default();
    hosts::parse_all(&stored)
}

fn injection_of(row: &secrets::Model) -> Injection {
    match (&row.inject_header, &row.inject_query_param) {
        (Some(header), _) => Injection::Header {
            header: header.clone(),
            format: row.inject_format.clone().unwrap_or_else(|| "{secret}".into()),
        },
        (None, Some(q)) => Injection::QueryParam { query_param: q.clone() },
        (None, None) => {
            Injection::Header { header: "authorization".into(), format: "Bearer {secret}".into() }
        }
    }
}

fn set_injection(active: &mut secrets::ActiveModel, inject: &Injection) {
    match inject {
        Injection::Header { header, format } => {
            active.inject_header = Set(Some(header.clone()));
            active.inject_format = Set(Some(format.clone()));
            active.inject_query_param = Set(None);
        }
        Injection::QueryParam { query_param } => {
            active.inject_header = Set(None);
            active.inject_format = Set(None);
            active.inject_query_param = Set(Some(query_param.clone()));
        }
    }
}

fn name_taken() -> AppError {
    AppError::conflict("secret_name_taken", "you already have a secret with this name")
}

impl SecretService {
    pub fn new(db: DatabaseConnection, vault: Vault, audit: AuditLog) -> Self {
        Self { db, vault, audit }
    }

    /// Audited as `secret.created` (name, hosts, injection, grants; never the value).
    pub async fn create(&self, by: &Actor, input: NewSecret) -> Result<SecretView, AppError> {
        let sponsor_id = by.org;
        let name = validate_name(&input.name)?;
        validate_value(&input.value)?;
        let allowed_hosts = validate_hosts(&input.allowed_hosts)?;
        let inject = validate_injection(&input.inject)?;
        let agents = self.own_live_agents(sponsor_id, &input.agents).await?;
        let id = Uuid::now_v7();
        let (nonce, ciphertext) = self.vault.seal(sponsor_id, id, &input.value);
        let at = now();
        let detail = serde_json::json!({"secret": id, "name": name, "allowed_hosts": allowed_hosts,
                                        "inject": inject, "agents": agents});
        let mut txn = self.audit.begin().await?;
        let mut row = secrets::ActiveModel {
            id: Set(id),
            sponsor_id: Set(sponsor_id),
            name: Set(name),
            ciphertext: Set(ciphertext),
            nonce: Set(nonce),
            allowed_hosts: Set(serde_json::to_string(&allowed_hosts).map_err(|_| AppError::internal())?),
            inject_header: Set(None),
            inject_format: Set(None),
            inject_query_param: Set(None),
            created_at: Set(at),
            updated_at: Set(at),
            rotated_at: Set(None),
        };
        set_injection(&mut row, &inject);
        row.insert(txn.conn()).await.map_err(|e| unique_or_internal(e, name_taken()))?;
        replace_grants(txn.conn(), id, &agents).await?;
        txn.append(AuditEntry::by_member("secret.created", by, detail)).await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    pub async fn list(&self, sponsor_id: Uuid) -> Result<Vec<SecretView>, AppError> {
        let rows = secrets::Entity::find()
            .filter(secrets::Column::SponsorId.eq(sponsor_id))
            .order_by_asc(secrets::Column::Name)
            .all(&self.db)
            .await
            .map_err(internal)?;
        self.views(rows).await
    }

    pub async fn get(&self, sponsor_id: Uuid, id: Uuid) -> Result<SecretView, AppError> {
        let row = self.owned(sponsor_id, id).await?;
        Ok(self.views(vec![row]).await?.remove(0))
    }

    /// Audited as `secret.updated`: which fields changed (`value_rotated`, never a value).
    pub async fn update(&self, by: &Actor, id: Uuid, update: SecretUpdate) -> Result<SecretView, AppError> {
        let sponsor_id = by.org;
        let row = self.owned(sponsor_id, id).await?;
        if let Some(v) = &update.value {
            validate_value(v)?;
        }
        let hosts = update.allowed_hosts.as_deref().map(validate_hosts).transpose()?;
        let inject = update.inject.as_ref().map(validate_injection).transpose()?;
        let agents = match &update.agents {
            Some(ids) => Some(self.own_live_agents(sponsor_id, ids).await?),
            None => None,
        };
        let at = now();
        let mut detail =
            serde_json::json!({"secret": id, "name": row.name, "value_rotated": update.value.is_some()});
        if let Some(hosts) = &hosts {
            detail["allowed_hosts"] = serde_json::json!(hosts);
        }
        if let Some(inject) = &inject {
            detail["inject"] = serde_json::json!(inject);
        }
        if let Some(agents) = &agents {
            detail["agents"] = serde_json::json!(agents);
        }
        let mut txn = self.audit.begin().await?;
        let mut active: secrets::ActiveModel = row.into();
        if let Some(value) = &update.value {
            let (nonce, ciphertext) = self.vault.seal(sponsor_id, id, value);
            active.nonce = Set(nonce);
            active.ciphertext = Set(ciphertext);
            active.rotated_at = Set(Some(at));
        }
        if let Some(hosts) = hosts {
            active.allowed_hosts = Set(serde_json::to_string(&hosts).map_err(|_| AppError::internal())?);
        }
        if let Some(inject) = &inject {
            set_injection(&mut active, inject);
        }
        active.updated_at = Set(at);
        active.update(txn.conn()).await.map_err(internal)?;
        if let Some(agents) = agents {
            replace_grants(txn.conn(), id, &agents).await?;
        }
        txn.append(AuditEntry::by_member("secret.updated", by, detail)).await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    /// Grants (or revokes) one agent's use of one secret: a single row inserted or
    /// deleted, so simultaneous grants to other agents never undo each other.
    /// Audited as `secret.granted` or `secret.grant_revoked`.
    pub async fn set_grant(
        &self,
        by: &Actor,
        id: Uuid,
        agent_id: Uuid,
        granted: bool,
    ) -> Result<SecretView, AppError> {
        let sponsor_id = by.org;
        let row = self.owned(sponsor_id, id).await?;
        if granted {
            self.own_live_agents(sponsor_id, &[agent_id]).await?;
        }
        let mut txn = self.audit.begin().await?;
        if granted {
            secret_grants::Entity::insert(secret_grants::ActiveModel {
                secret_id: Set(id),
                agent_id: Set(agent_id),
                created_at: Set(now()),
            })
            .on_conflict_do_nothing()
            .exec(txn.conn())
            .await
            .map_err(internal)?;
        } else {
            secret_grants::Entity::delete_by_id((id, agent_id)).exec(txn.conn()).await.map_err(internal)?;
        }
        let kind = if granted { "secret.granted" } else { "secret.grant_revoked" };
        let detail = serde_json::json!({"secret": id, "name": row.name, "agent": agent_id});
        txn.append(AuditEntry { agent_id: Some(agent_id), ..AuditEntry::by_member(kind, by, detail) })
            .await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    /// Refused while a connection uses the secret: deleting it would silently send
    /// that connection's calls upstream without credentials.
    /// Audited as `secret.deleted`.
    pub async fn delete(&self, by: &Actor, id: Uuid) -> Result<(), AppError> {
        let row = self.owned(by.org, id).await?;
        let users: Vec<String> = entity::connections::Entity::find()
            .filter(entity::connections::Column::SecretId.eq(id))
            .all(&self.db)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|c| c.name)
            .collect();
        if !users.is_empty() {
            return Err(AppError::conflict(
                "secret_in_use",
                format!("connections use this secret: {}; delete them first", users.join(", ")),
            ));
        }
        let mut txn = self.audit.begin().await?;
        secrets::Entity::delete_by_id(id).exec(txn.conn()).await.map_err(internal)?;
        let detail = serde_json::json!({"secret": id, "name": row.name});
        txn.append(AuditEntry::by_member("secret.deleted", by, detail)).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Decrypts a granted secret ([`crate::store::CallStore::call_rows`]) for a call to `to`, if the secret may go
    /// there (scheme, host and port).
    pub fn open(
        &self,
        granted: Option<&secrets::Model>,
        name: &str,
        to: &hosts::Destination<'_>,
    ) -> Result<Result<UsableSecret, SecretDenied>, AppError> {
        let Some(row) = granted else {
            return Ok(Err(SecretDenied(format!("no secret named {name:?} is granted to this agent"))));
        };
        let allowed = allowed_patterns(row);
        if !hosts::any_matches(&allowed, to) {
            return Ok(Err(SecretDenied(format!("secret {name:?} may not be sent to {to}"))));
        }
        let value = self.vault.open(row.sponsor_id, row.id, &row.nonce, &row.ciphertext).map_err(|e| {
            tracing::error!(secret = %row.id, error = %e, "vault secret could not be decrypted");
            AppError::internal()
        })?;
        Ok(Ok(UsableSecret { name: row.name.clone(), inject: injection_of(row), value, allowed }))
    }

    /// Finds a sponsor's secret by name (for connections).
    pub async fn find_by_name(
        &self,
        sponsor_id: Uuid,
        name: &str,
    ) -> Result<Option<secrets::Model>, AppError> {
        secrets::Entity::find()
            .filter(secrets::Column::SponsorId.eq(sponsor_id))
            .filter(secrets::Column::Name.eq(name))
            .one(&self.db)
            .await
            .map_err(internal)
    }

    async fn owned(&self, sponsor_id: Uuid, id: Uuid) -> Result<secrets::Model, AppError> {
        secrets::Entity::find_by_id(id)
            .filter(secrets::Column::SponsorId.eq(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("secret"))
    }

    /// The given agent ids, each checked to be one of the sponsor's live agents.
    /// Foreign and unknown ids get the same answer.
    async fn own_live_agents(&self, sponsor_id: Uuid, ids: &[Uuid]) -> Result<Vec<Uuid>, AppError> {
        let mut wanted: Vec<Uuid> = ids.to_vec();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(wanted);
        }
        let found = agents::Entity::find()
            .filter(agents::Column::Id.is_in(wanted.clone()))
            .filter(agents::Column::SponsorId.eq(sponsor_id))
            .filter(agents::Column::DeletedAt.is_null())
            .all(&self.db)
            .await
            .map_err(internal)?;
        if found.len() != wanted.len() {
            return Err(AppError::new(422, "unknown_agent", "agents must be ids of your own live agents"));
        }
        Ok(wanted)
    }

    async fn views(&self, rows: Vec<secrets::Model>) -> Result<Vec<SecretView>, AppError> {
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let mut grants: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for g in secret_grants::Entity::find()
            .filter(secret_grants::Column::SecretId.is_in(ids))
            .order_by_asc(secret_grants::Column::AgentId)
            .all(&self.db)
            .await
            .map_err(internal)?
        {
            grants.entry(g.secret_id).or_default().push(g.agent_id);
        }
        Ok(rows
            .into_iter()
            .map(|r| SecretView {
                id: r.id,
                inject: injection_of(&r),
                allowed_hosts: serde_json::from_str(&r.allowed_hosts).unwrap_or_default(),
                agents: grants.remove(&r.id).unwrap_or_default(),
                name: r.name,
                created_at: r.created_at,
                updated_at: r.updated_at,
                rotated_at: r.rotated_at,
            })
            .collect())
    }
}

async fn replace_grants(db: &impl ConnectionTrait, secret_id: Uuid, agents: &[Uuid]) -> Result<(), AppError> {
    secret_grants::Entity::delete_many()
        .filter(secret_grants::Column::SecretId.eq(secret_id))
        .exec(db)
        .await
        .map_err(internal)?;
    let at = now();
    for agent_id in agents {
        secret_grants::ActiveModel {
            secret_id: Set(secret_id),
            agent_id: Set(*agent_id),
            created_at: Set(at),
        }
        .insert(db)
        .await
        .map_err(internal)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injection_validation() {
        let h =
            |header: &str, format: &str| Injection::Header { header: header.into(), format: format.into() };
        assert_eq!(
            validate_injection(&h("Authorization", "Bearer {secret}")).unwrap(),
            h("authorization", "Bearer {secret}")
        );
        assert!(validate_injection(&h("x-api-key", "{secret}")).is_ok());
        for bad in [
            h("Host", "{secret}"),
            h("content-length", "{secret}"),
            h("bad header", "{secret}"),
            h("x", "no placeholder"),
            h("x", "{secret}{secret}"),
            h("x", "a\r\nb {secret}"),
        ] {
            assert!(validate_injection(&bad).is_err(), "{bad:?}");
        }
        assert!(validate_injection(&Injection::QueryParam { query_param: "api_key".into() }).is_ok());
        assert!(validate_injection(&Injection::QueryParam { query_param: "a&b".into() }).is_err());
    }

    #[test]
    fn values_and_names() {
        assert!(validate_value("sk-123").is_ok());
        assert!(validate_value("").is_err());
        assert!(validate_value("a\nb").is_err());
        assert!(validate_value(&"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
        assert_eq!(validate_name(" openai ").unwrap(), "openai");
        assert!(validate_name("has space").is_err());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = UsableSecret {
            name: "n".into(),
            value: Zeroizing::new("sk-topsecret".into()),
            inject: Injection::QueryParam { query_param: "k".into() },
            allowed: vec![],
        };
        assert!(!format!("{s:?}").contains("topsecret"));
    }
}
