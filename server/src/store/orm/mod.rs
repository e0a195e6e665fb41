//! The hot-path store through sea-orm: PostgreSQL, and an in-memory SQLite. Its
//! group-commit writer is a task; each batch is one [`AuditTxn`] carrying the
//! wallet writes ([`wallets`]) and the chained records.

pub mod wallets;

use std::time::Duration;

use app::error::AppError;
use entity::{agent_keys, agents, connections, policies, secret_grants, secrets};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use self::wallets::{WalletBatch, reserve_in, resolve_in};
use super::batch::{BatchTxn, Batches, Writer};
use super::{CallStore, Read};
use crate::audit::{Appended, AuditEntry, AuditLog, AuditTxn};
use crate::db::internal;
use crate::spend::{Reservation, Resolved};

/// The sea-orm store. Cheap to clone.
#[derive(Clone)]
pub struct OrmStore {
    db: DatabaseConnection,
    /// Where batches append; `None` for a tool that only reads.
    audit: Option<AuditLog>,
}

impl OrmStore {
    pub fn new(db: DatabaseConnection, audit: AuditLog) -> Self {
        Self { db, audit: Some(audit) }
    }

    /// A store for tools that only read (`aegis replay`): a write through it fails.
    pub fn read_only(db: DatabaseConnection) -> Self {
        Self { db, audit: None }
    }
}

impl CallStore for OrmStore {
    fn name(&self) -> &'static str {
        "sea-orm"
    }

    fn live_key<'a>(
        &'a self,
        key_id: &'a str,
    ) -> Read<'a, Option<(agent_keys::Model, Option<agents::Model>)>> {
        Box::pin(async move {
            agent_keys::Entity::find()
                .filter(agent_keys::Column::KeyId.eq(key_id))
                .filter(agent_keys::Column::RevokedAt.is_null())
                .find_also_related(agents::Entity)
                .one(&self.db)
                .await
                .map_err(internal)
        })
    }

    fn wallet(&self, agent_id: Uuid) -> Read<'_, Option<entity::wallets::Model>> {
        Box::pin(async move {
            entity::wallets::Entity::find_by_id(agent_id).one(&self.db).await.map_err(internal)
        })
    }

    fn current_version(&self, policy_id: Uuid) -> Read<'_, Option<i32>> {
        Box::pin(async move {
            policies::Entity::find_by_id(policy_id)
                .select_only()
                .column(policies::Column::CurrentVersion)
                .into_tuple()
                .one(&self.db)
                .await
                .map_err(internal)
        })
    }

    fn granted_secret<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<secrets::Model>> {
        Box::pin(async move {
            secrets::Entity::find()
                .inner_join(secret_grants::Entity)
                .filter(secrets::Column::SponsorId.eq(sponsor_id))
                .filter(secrets::Column::Name.eq(name))
                .filter(secret_grants::Column::AgentId.eq(agent_id))
                .one(&self.db)
                .await
                .map_err(internal)
        })
    }

    fn connection<'a>(
        &'a self,
        sponsor_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<(connections::Model, Option<String>)>> {
        Box::pin(async move {
            connections::Entity::find()
                .filter(connections::Column::SponsorId.eq(sponsor_id))
                .filter(connections::Column::Name.eq(name))
                .find_also_related(secrets::Entity)
                .one(&self.db)
                .await
                .map_err(internal)
                .map(|r| r.map(|(c, s)| (c, s.map(|s| s.name))))
        })
    }

    fn routes(&self, sponsor_id: Uuid) -> Read<'_, Vec<crate::store::Route>> {
        Box::pin(async move {
            let rows = connections::Entity::find()
                .filter(connections::Column::SponsorId.eq(sponsor_id))
                .order_by_asc(connections::Column::Name)
                .all(&self.db)
                .await
                .map_err(internal)?;
            Ok(rows
                .into_iter()
                .map(|c| crate::store::Route {
                    name: c.name,
                    base_url: c.base_url,
                    cost_micros: c.cost_micros,
                    pricing: c.pricing,
                    rate_limits: c.rate_limits,
                    mcp: c.kind == crate::call::mcp::KIND_MCP,
                })
                .collect())
        })
    }

    fn start_writer(&self, writer: Writer, runtime: tokio::runtime::Handle) {
        match &self.audit {
            Some(audit) => {
                drop(runtime.spawn(writer.serve(OrmBatches { audit: audit.clone() }, runtime.clone())))
            }
            // The queue's receiver goes with the writer: every write fails closed.
            None => tracing::error!("a read-only store was asked to write"),
        }
    }
}

/// Batches through sea-orm: one [`AuditTxn`] each (it takes the chain's lock:
/// the advisory lock on PostgreSQL, the in-process one on SQLite).
struct OrmBatches {
    audit: AuditLog,
}

struct OrmTxn {
    txn: AuditTxn,
    wallets: WalletBatch,
    reservation_ttl: Duration,
}

impl Batches for OrmBatches {
    type Txn<'a> = OrmTxn;

    fn exclusive(&self) -> Option<std::sync::Arc<tokio::sync::Mutex<()>>> {
        None
    }

    async fn begin(&mut self, reservation_ttl: Duration) -> Result<OrmTxn, AppError> {
        Ok(OrmTxn { txn: self.audit.begin().await?, wallets: WalletBatch::default(), reservation_ttl })
    }
}

impl BatchTxn for OrmTxn {
    async fn reserve(
        &mut self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        reserve_in(self.txn.conn(), &mut self.wallets, agent_id, request_id, amount, self.reservation_ttl)
            .await
    }

    async fn resolve(
        &mut self,
        request_id: &str,
        status: &str,
        charge: Option<i64>,
    ) -> Result<Option<Resolved>, AppError> {
        resolve_in(self.txn.conn(), &mut self.wallets, request_id, status, charge).await
    }

    async fn wallets_done(&mut self) -> Result<(), AppError> {
        self.wallets.flush(self.txn.conn()).await
    }

    async fn append(&mut self, entry: AuditEntry) -> Result<Appended, AppError> {
        self.txn.hold(entry).await
    }

    async fn records_done(&mut self) -> Result<(), AppError> {
        self.txn.flush().await
    }

    async fn commit(self) -> Result<(), AppError> {
        self.txn.commit().await.map(drop)
    }
}
