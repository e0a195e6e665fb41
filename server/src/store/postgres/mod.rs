//! The hot-path store on PostgreSQL: sqlx directly, static SQL, no ORM on the path.
//!
//! - Reads ([`reads`]): one statement each over sea-orm's own sqlx pool,
//!   prepared once per connection (sqlx caches statements by text); the policy
//!   stage's three reads (wallet, policy version, granted secret) as one.
//! - Batches ([`writer`]): a task with a connection of its own (outside the
//!   pool, so reads never wait behind it). Each batch costs a fixed number of
//!   round trips whatever its size: claim the settlements' ledger rows, lock the
//!   touched wallets `FOR UPDATE` in agent order, apply every hold and settlement
//!   to those rows in memory ([`crate::spend::locked`], the same rules the other
//!   stores' SQL applies), take the chain lock and read its head
//!   (`aegis_audit_head()`), then write wallets, new holds and audit records in
//!   one statement, and COMMIT. The chain lock is held for the last three round
//!   trips only. All PostgreSQL-specific SQL of the hot path lives here.

pub mod reads;
pub(crate) mod writer;

use std::sync::Arc;

use entity::{agent_keys, agents, connections, secrets, wallets};
use sea_orm::sqlx::postgres::{PgPool, PgRow};
use sea_orm::sqlx::{self, Row};
use sea_orm::{DatabaseConnection, DbBackend};
use uuid::Uuid;

use self::reads::internal;
use self::writer::PgBatches;
use super::batch::Writer;
use super::{CallRows, CallStore, Read};
use crate::audit::AuditLog;
use crate::audit::chain::ChainState;

/// The PostgreSQL store.
pub struct PgStore {
    pool: PgPool,
    /// Where batches append; `None` for a tool that only reads.
    chain: Option<Arc<ChainState>>,
}

impl PgStore {
    /// The store for `db` when it is PostgreSQL; `None` otherwise.
    pub fn for_postgres(db: &DatabaseConnection, audit: &AuditLog) -> Option<Self> {
        (db.get_database_backend() == DbBackend::Postgres).then(|| Self {
            pool: db.get_postgres_connection_pool().clone(),
            chain: Some(audit.chain_state()),
        })
    }

    /// A store for tools that only read: a write through it fails.
    pub fn read_only(db: &DatabaseConnection) -> Option<Self> {
        (db.get_database_backend() == DbBackend::Postgres)
            .then(|| Self { pool: db.get_postgres_connection_pool().clone(), chain: None })
    }

    /// At most one row of `query`, decoded by `row`.
    fn row<'a, T: Send + 'a>(
        &'a self,
        query: sqlx::query::Query<'a, sqlx::Postgres, sqlx::postgres::PgArguments>,
        row: fn(&PgRow) -> sqlx::Result<T>,
    ) -> Read<'a, Option<T>> {
        Box::pin(async move {
            match query.fetch_optional(&self.pool).await.map_err(internal)? {
                Some(r) => row(&r).map(Some).map_err(internal),
                None => Ok(None),
            }
        })
    }
}

impl CallStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn live_key<'a>(
        &'a self,
        key_id: &'a str,
    ) -> Read<'a, Option<(agent_keys::Model, Option<agents::Model>)>> {
        self.row(sqlx::query(reads::LIVE_KEY_SQL).bind(key_id), reads::key_and_agent)
    }

    fn wallet(&self, agent_id: Uuid) -> Read<'_, Option<wallets::Model>> {
        self.row(sqlx::query(reads::WALLET_SQL).bind(agent_id), reads::wallet_row)
    }

    fn current_version(&self, policy_id: Uuid) -> Read<'_, Option<i32>> {
        self.row(sqlx::query(reads::CURRENT_VERSION_SQL).bind(policy_id), |r| r.try_get(0))
    }

    fn granted_secret<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<secrets::Model>> {
        let query = sqlx::query(reads::GRANTED_SQL).bind(sponsor_id).bind(name).bind(agent_id);
        self.row(query, reads::secret_row)
    }

    fn connection<'a>(
        &'a self,
        sponsor_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<(connections::Model, Option<String>)>> {
        let query = sqlx::query(reads::BY_NAME_SQL).bind(sponsor_id).bind(name);
        self.row(query, reads::connection_and_secret)
    }

    fn routes(&self, sponsor_id: Uuid) -> Read<'_, Vec<crate::store::Route>> {
        let query = sqlx::query(reads::ROUTES_SQL).bind(sponsor_id);
        Box::pin(async move {
            let rows = query.fetch_all(&self.pool).await.map_err(internal)?;
            rows.iter().map(reads::route).collect::<sqlx::Result<Vec<_>>>().map_err(internal)
        })
    }

    fn call_rows<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        policy_id: Uuid,
        secret: Option<&'a str>,
    ) -> Read<'a, CallRows> {
        let query =
            sqlx::query(reads::CALL_ROWS_SQL).bind(agent_id).bind(policy_id).bind(sponsor_id).bind(secret);
        Box::pin(async move {
            let row = query.fetch_one(&self.pool).await.map_err(internal)?;
            reads::call_rows(&row).map_err(internal)
        })
    }

    fn start_writer(&self, writer: Writer, runtime: tokio::runtime::Handle) {
        match &self.chain {
            Some(chain) => {
                let batches = PgBatches::new(self.pool.clone(), chain.clone());
                drop(runtime.spawn(writer.serve(batches, runtime.clone())));
            }
            // The queue's receiver goes with the writer: every write fails closed.
            None => tracing::error!("a read-only store was asked to write"),
        }
    }
}
