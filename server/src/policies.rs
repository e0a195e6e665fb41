//! Policies: the built-in ones shipped in `policies/` and those sponsors add.
//! Every version is kept, addressed by the SHA-256 of its source, so a recorded
//! decision can be replayed against the exact policy that made it.

use app::error::AppError;
use app::model::{PolicySummary, SessionUser};
use entity::{policies, policy_versions};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Set,
};
use uuid::Uuid;

use crate::storage::{internal, now, sha256_hex};

pub const DEFAULT_POLICY: &str = "default";

/// The policies every sponsor can use, compiled into the binary from `policies/`.
pub const BUILTIN: &[(&str, &str, &str)] = &[
    (
        "default",
        "Allow reads for agents in good standing; approval for risky writes and large costs; deny the rest.",
        include_str!("../../policies/default.rego"),
    ),
    (
        "permissive",
        "Allow every action (egress, secrets and budgets still apply).",
        include_str!("../../policies/permissive.rego"),
    ),
];

/// Built-in policy ids are derived from their names, so several processes seeding
/// at once converge on the same rows.
pub fn builtin_id(name: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("aegis.policy.{name}").as_bytes(),
    )
}

#[derive(Clone)]
pub struct PolicyService {
    db: DatabaseConnection,
}

impl PolicyService {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Makes the stored built-ins match the shipped sources, adding a version when
    /// a source changed.
    pub async fn seed_builtins(&self) -> Result<(), AppError> {
        for (name, description, source) in BUILTIN {
            let id = builtin_id(name);
            let sha = sha256_hex(source.as_bytes());
            let existing = policies::Entity::find_by_id(id)
                .one(&self.db)
                .await
                .map_err(internal)?;
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
    pub async fn list(&self, sponsor: &SessionUser) -> Result<Vec<PolicySummary>, AppError> {
        let rows = policies::Entity::find()
            .filter(visible_to(sponsor.user_id))
            .order_by_desc(policies::Column::Builtin)
            .order_by_asc(policies::Column::Name)
            .all(&self.db)
            .await
            .map_err(internal)?;
        Ok(rows
            .into_iter()
            .map(|p| PolicySummary {
                id: p.id,
                name: p.name,
                description: p.description,
                builtin: p.builtin,
            })
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
            .ok_or_else(|| {
                AppError::new(
                    422,
                    "unknown_policy",
                    format!("no policy named {:?}", name.trim()),
                )
            })
    }
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
