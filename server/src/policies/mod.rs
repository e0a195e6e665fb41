//! Policies: the built-in ones shipped in `policies/` and those sponsors add.
//! Every version is kept, addressed by the SHA-256 of its source, so a recorded
//! decision can be replayed against the exact policy that made it.

use std::sync::Arc;

use app::error::AppError;
use app::model::{NewPolicy, PolicySummary, PolicyUpdate, PolicyView};
use entity::{policies, policy_versions};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};
use uuid::Uuid;

pub mod contain;
pub mod engine;
pub mod replay;

use crate::actor::Actor;
use crate::audit::{AuditEntry, AuditLog};
use crate::db::{internal, now};
use crate::digest::sha256_hex;
use crate::store::CallStore;

pub const DEFAULT_POLICY: &str = "default";

/// The policies every sponsor can use, compiled into the binary from `policies/`.
pub const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "default",
        "Allow reads for agents in good standing; approval for risky writes and large costs; deny the rest.",
        include_str!("../../../policies/default.rego"),
    ),
    (
        "permissive",
        "Allow every action (egress, secrets and budgets still apply).",
        include_str!("../../../policies/permissive.rego"),
    ),
    (
        "mcp-tools",
        "MCP tools: read-only tools allowed, delete_*/drop_* need approval, admin_* only from trust 800.",
        include_str!("../../../policies/mcp.rego"),
    ),
];

/// Built-in policy ids are derived from their names, so several processes seeding
/// at once converge on the same rows.
pub fn builtin_id(name: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("aegis.policy.{name}").as_bytes())
}

/// Policy versions by (policy, version). Versions are append-only and never change,
/// so an entry never goes stale: a policy update makes a new version, which the
/// per-call read of the policy's `current_version` finds at once, in every replica.
type VersionCache = std::sync::RwLock<std::collections::HashMap<(Uuid, i32), policy_versions::Model>>;

/// Versions kept in memory before the cache starts over.
const VERSION_CACHE_LIMIT: usize = 1024;

#[derive(Clone)]
pub struct PolicyService {
    db: DatabaseConnection,
    /// The hot path's reads ([`crate::store`]).
    store: Arc<dyn CallStore>,
    versions: std::sync::Arc<VersionCache>,
    /// Where changes are audited; a read-only service (`aegis replay`) has none and
    /// refuses changes.
    audit: Option<AuditLog>,
}

impl PolicyService {
    pub fn new(db: DatabaseConnection, store: Arc<dyn CallStore>) -> Self {
        Self { db, store, versions: Default::default(), audit: None }
    }

    /// Changes are audited in their own transaction, naming the member.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    async fn audited(&self) -> Result<crate::audit::AuditTxn, AppError> {
        match &self.audit {
            Some(audit) => audit.begin().await,
            None => {
                tracing::error!("a policy change on a service without an audit log");
                Err(AppError::internal())
            }
        }
    }

    /// Makes the stored built-ins match the shipped sources, adding a version when
    /// a source changed.
    pub async fn seed_builtins(&self) -> Result<(), AppError> {
        for (name, description, source) in BUILTIN {
            let id = builtin_id(name);
            let sha = sha256_hex(source.as_bytes());
            let existing = policies::Entity::find_by_id(id).one(&self.db).await.map_err(internal)?;
            let at = now();
            let version = match existing {
                None => {
                    let inserted = policies::ActiveModel {
                        id: Set(id),
                        sponsor_id: Set(None),
                        name: Set((*name).to_owned()),
                        description: Set(Some((*description).to_owned())),
                        builtin: Set(true),
                        current_version: Set(1),
                        created_at: Set(at),
                        updated_at: Set(at),
                    }
                    .insert(&self.db)
                    .await;
                    if let Err(e) = inserted {
                        // Another process seeded it first; nothing more to do here.
                        tracing::debug!(error = %e, policy = name, "built-in policy already seeded");
                        continue;
                    }
                    1
                }
                Some(p) => {
                    let latest = policy_versions::Entity::find()
                        .filter(policy_versions::Column::PolicyId.eq(id))
                        .order_by_desc(policy_versions::Column::Version)
                        .one(&self.db)
                        .await
                        .map_err(internal)?;
                    if latest.as_ref().is_some_and(|v| v.sha256 == sha) {
                        continue;
                    }
                    let next = latest.map_or(1, |v| v.version + 1);
                    let mut active: policies::ActiveModel = p.into();
                    active.current_version = Set(next);
                    active.updated_at = Set(at);
                    active.update(&self.db).await.map_err(internal)?;
                    next
                }
            };
            let inserted = policy_versions::ActiveModel {
                id: Set(Uuid::now_v7()),
                policy_id: Set(id),
                version: Set(version),
                source: Set((*source).to_owned()),
                sha256: Set(sha),
                created_at: Set(at),
                created_by: Set(None),
            }
            .insert(&self.db)
            .await;
            if let Err(e) = inserted {
                tracing::debug!(error = %e, policy = name, "built-in policy version already seeded");
            }
        }
        Ok(())
    }

    /// Built-ins plus the sponsor's own policies.
    pub async fn list(&self, sponsor_id: Uuid) -> Result<Vec<PolicySummary>, AppError> {
        let rows = policies::Entity::find()
            .filter(visible_to(sponsor_id))
            .order_by_desc(policies::Column::Builtin)
            .order_by_asc(policies::Column::Name)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|p| PolicySummary { id: p.id, name: p.name, description: p.description, builtin: p.builtin })
            .collect())
    }

    /// Finds a policy by name among those the sponsor may use; the sponsor's own
    /// policy wins over a built-in of the same name.
    pub async fn resolve(&self, sponsor_id: Uuid, name: &str) -> Result<policies::Model, AppError> {
        policies::Entity::find()
            .filter(visible_to(sponsor_id))
            .filter(policies::Column::Name.eq(name.trim()))
            .order_by_asc(policies::Column::Builtin)
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::new(422, "unknown_policy", format!("no policy named {:?}", name.trim())))
    }
}

const MAX_SOURCE_BYTES: usize = 64 * 1024;

pub(crate) fn check_source_size(source: &str) -> Result<(), AppError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(AppError::validation(format!("policy source must be at most {MAX_SOURCE_BYTES} bytes")));
    }
    Ok(())
}

/// A sponsor's source must be small enough and compile (on the engine's bounded
/// pool, never cached; see [`engine::vet`] for what it refuses).
pub(crate) async fn validate_source(source: &str) -> Result<(), AppError> {
    check_source_size(source)?;
    engine::validate(source.to_owned()).await
}

fn validate_policy_name(name: &str) -> Result<String, AppError> {
    crate::names::identifier(name, "policy name")
}

impl PolicyService {
    /// A sponsor's own policy. The source must compile; the compiler's message is
    /// returned with a 422 when it does not.
    /// Audited as `policy.created` (version 1 and its source's SHA-256).
    pub async fn create(&self, by: &Actor, input: NewPolicy) -> Result<PolicyView, AppError> {
        let sponsor_id = by.org;
        let name = validate_policy_name(&input.name)?;
        validate_source(&input.source).await?;
        let taken = policies::Entity::find()
            .filter(visible_to(sponsor_id))
            .filter(policies::Column::Name.eq(&name))
            .one(&self.db)
            .await
            .map_err(internal)?;
        if taken.is_some() {
            return Err(AppError::conflict("policy_name_taken", "a policy with this name already exists"));
        }
        let at = now();
        let id = Uuid::now_v7();
        let detail = serde_json::json!({"policy": id, "name": name, "version": 1,
                                        "sha256": sha256_hex(input.source.as_bytes())});
        let mut txn = self.audited().await?;
        policies::ActiveModel {
            id: Set(id),
            sponsor_id: Set(Some(sponsor_id)),
            name: Set(name),
            description: Set(input.description.map(|d| d.trim().chars().take(1000).collect())),
            builtin: Set(false),
            current_version: Set(1),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(txn.conn())
        .await
        .map_err(internal)?;
        insert_version(txn.conn(), id, 1, &input.source, Some(sponsor_id)).await?;
        txn.append(AuditEntry::by_member("policy.created", by, detail)).await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    pub async fn get(&self, sponsor_id: Uuid, id: Uuid) -> Result<PolicyView, AppError> {
        let policy = policies::Entity::find_by_id(id)
            .filter(visible_to(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("policy"))?;
        let version = self.current_version(&policy).await?;
        Ok(PolicyView {
            id: policy.id,
            name: policy.name,
            description: policy.description,
            builtin: policy.builtin,
            version: version.version,
            sha256: version.sha256,
            source: version.source,
            updated_at: policy.updated_at,
        })
    }

    /// A new version of one of the sponsor's own policies. Built-ins are read-only.
    /// Audited as `policy.updated` (the new version and its source's SHA-256).
    pub async fn update(&self, by: &Actor, id: Uuid, update: PolicyUpdate) -> Result<PolicyView, AppError> {
        let sponsor_id = by.org;
        let policy = policies::Entity::find_by_id(id)
            .filter(visible_to(sponsor_id))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| AppError::not_found("policy"))?;
        if policy.builtin {
            return Err(AppError::new(
                403,
                "builtin_policy",
                "built-in policies cannot be changed; create your own",
            ));
        }
        if let Some(source) = &update.source {
            validate_source(source).await?;
        }
        let mut txn = self.audited().await?;
        let next = policy.current_version + 1;
        let mut detail = serde_json::json!({"policy": id, "name": policy.name,
                                            "description_changed": update.description.is_some()});
        let mut active: policies::ActiveModel = policy.into();
        if let Some(source) = &update.source {
            insert_version(txn.conn(), id, next, source, Some(sponsor_id)).await?;
            active.current_version = Set(next);
            detail["version"] = next.into();
            detail["sha256"] = sha256_hex(source.as_bytes()).into();
        }
        if let Some(d) = update.description {
            active.description =
                Set(Some(d.trim().chars().take(1000).collect()).filter(|d: &String| !d.is_empty()));
        }
        active.updated_at = Set(now());
        active.update(txn.conn()).await.map_err(internal)?;
        txn.append(AuditEntry::by_member("policy.updated", by, detail)).await?;
        txn.commit().await?;
        self.get(sponsor_id, id).await
    }

    pub async fn current_version(
        &self,
        policy: &policies::Model,
    ) -> Result<policy_versions::Model, AppError> {
        policy_versions::Entity::find()
            .filter(policy_versions::Column::PolicyId.eq(policy.id))
            .filter(policy_versions::Column::Version.eq(policy.current_version))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                tracing::error!(policy = %policy.id, "policy has no current version");
                AppError::internal()
            })
    }

    /// The source an agent's decisions are made with: its policy's current version,
    /// or the built-in default when it has none.
    pub async fn source_for(&self, policy_id: Option<Uuid>) -> Result<policy_versions::Model, AppError> {
        let id = Self::decides_with(policy_id);
        let current = self.store.current_version(id).await?;
        self.source_at(id, current).await
    }

    /// The policy an agent's decisions are made with: its own, or the built-in default.
    pub fn decides_with(policy_id: Option<Uuid>) -> Uuid {
        policy_id.unwrap_or_else(|| builtin_id(DEFAULT_POLICY))
    }

    /// Version `current` (as just read) of policy `id`, from the cache when it is
    /// there. A policy without a current version is an error (fail closed).
    pub async fn source_at(
        &self,
        id: Uuid,
        current: Option<i32>,
    ) -> Result<policy_versions::Model, AppError> {
        let Some(current) = current else { return Err(AppError::internal()) };
        let cached = self.versions.read().unwrap_or_else(|e| e.into_inner()).get(&(id, current)).cloned();
        if let Some(version) = cached {
            return Ok(version);
        }
        let version = policy_versions::Entity::find()
            .filter(policy_versions::Column::PolicyId.eq(id))
            .filter(policy_versions::Column::Version.eq(current))
            .one(&self.db)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                tracing::error!(policy = %id, "policy has no current version");
                AppError::internal()
            })?;
        let mut cache = self.versions.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= VERSION_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert((id, current), version.clone());
        Ok(version)
    }

    /// Any stored version by its source digest (for replay).
    pub async fn version_by_sha(&self, sha256: &str) -> Result<Option<policy_versions::Model>, AppError> {
        policy_versions::Entity::find()
            .filter(policy_versions::Column::Sha256.eq(sha256))
            .one(&self.db)
            .await
            .map_err(internal)
    }
}

async fn insert_version(
    db: &impl sea_orm::ConnectionTrait,
    policy_id: Uuid,
    version: i32,
    source: &str,
    created_by: Option<Uuid>,
) -> Result<(), AppError> {
    policy_versions::ActiveModel {
        id: Set(Uuid::now_v7()),
        policy_id: Set(policy_id),
        version: Set(version),
        source: Set(source.to_owned()),
        sha256: Set(sha256_hex(source.as_bytes())),
        created_at: Set(now()),
        created_by: Set(created_by),
    }
    .insert(db)
    .await
    .map_err(internal)?;
    Ok(())
}

fn visible_to(sponsor_id: Uuid) -> Condition {
    Condition::any()
        .add(policies::Column::SponsorId.eq(sponsor_id))
        .add(policies::Column::SponsorId.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_ids_are_stable_and_distinct() {
        assert_eq!(builtin_id("default"), builtin_id("default"));
        assert_ne!(builtin_id("default"), builtin_id("permissive"));
    }

    #[test]
    fn builtins_ship_with_sources() {
        for (name, _, source) in BUILTIN {
            assert!(source.contains("package aegis"), "{name}");
        }
    }
}
