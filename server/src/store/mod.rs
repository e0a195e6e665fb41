//! The hot-path store: exactly what a proxied call needs from the database on its
//! own path, behind one port ([`CallStore`]) with one implementation per backend.
//!
//! A call needs five point reads — the agent's live key with its agent, its wallet,
//! its policy's current version, the secret granted to it and, in gateway mode, the
//! connection — and two durable writes, each one entry of a group-commit batch:
//! the budget hold with its `proxy.intent` record before the upstream call, the
//! settlement with its `proxy.outcome` record after it. The batch algorithm
//! (gather, apply in one lock order, commit, answer each caller, retry one by one
//! when a batch fails) is written once in [`batch`], over [`batch::Batches`].
//!
//! Implementations:
//! - [`sqlite`]: a SQLite file. Reads run inline on the calling thread over
//!   connections of their own; batches are applied on a writer thread of its own
//!   as prepared statements. All SQLite-specific SQL of the hot path lives there.
//! - [`postgres`]: PostgreSQL. Reads are one static statement each over the pool;
//!   a batch costs a fixed number of round trips whatever its size (the touched
//!   rows locked `FOR UPDATE`, the rules applied in memory by
//!   [`crate::spend::locked`], everything written back in one statement). All
//!   PostgreSQL-specific SQL of the hot path lives there.
//! - [`orm`]: sea-orm, portable: an in-memory SQLite, and any database with
//!   `AEGIS_HOT_PATH_STORE=portable` (what PostgreSQL used before its own store;
//!   `aegis bench --variants` measures both).
//!
//! Everything off the hot path uses sea-orm directly. The same conformance suite
//! (`server/tests/api/store.rs`) runs against every implementation: a SQLite file
//! (SQLite's store and sea-orm's), an in-memory SQLite, PostgreSQL when its URL is
//! set (PostgreSQL's store and sea-orm's).

pub mod batch;
pub mod orm;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use app::error::AppError;
use entity::{agent_keys, agents, connections, secrets, wallets};
use sea_orm::DatabaseConnection;
use uuid::Uuid;

pub use batch::{CommitStats, GroupCommit, Intent, MAX_BATCH, Settled};

use crate::audit::AuditLog;
use crate::metrics::Metrics;

/// One read's answer, later (boxed so the port stays object-safe: one allocation
/// per read, against a read of microseconds at best).
pub type Read<'a, T> = Pin<Box<dyn Future<Output = Result<T, AppError>> + Send + 'a>>;

/// A sponsor's connection as metering matches a call's target against it
/// ([`CallStore::routes`], read on every call; `crate::metering::route_for`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub base_url: String,
    /// The least a call under it costs (today's flat price).
    pub cost_micros: i64,
    /// Saved [`app::model::Pricing`] JSON; `None` for flat.
    pub pricing: Option<String>,
    /// Saved [`app::model::RateLimits`] JSON; `None` for none.
    pub rate_limits: Option<String>,
    /// An MCP server's connection: reached only through `/mcp` (stage `door`).
    pub mcp: bool,
}

/// What [`CallStore::call_rows`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRows {
    pub wallet: Option<wallets::Model>,
    pub policy_version: Option<i32>,
    pub granted_secret: Option<secrets::Model>,
    /// The sponsor's connections, as [`CallStore::routes`] reads them.
    pub routes: Vec<Route>,
}

/// What a call reads and writes on its own path. Every read sees the latest
/// committed state; a failed read is an error (the caller fails closed), never a
/// default.
pub trait CallStore: Send + Sync {
    /// Which implementation this is: `"sqlite"`, `"postgres"` or `"sea-orm"`.
    fn name(&self) -> &'static str;

    /// The unrevoked key with this key id, with its agent (`None` if that row is
    /// gone). The caller checks the secret part and the agent's deletion.
    fn live_key<'a>(
        &'a self,
        key_id: &'a str,
    ) -> Read<'a, Option<(agent_keys::Model, Option<agents::Model>)>>;

    /// The agent's wallet row.
    fn wallet(&self, agent_id: Uuid) -> Read<'_, Option<wallets::Model>>;

    /// The current version number of a policy.
    fn current_version(&self, policy_id: Uuid) -> Read<'_, Option<i32>>;

    /// The sponsor's secret `name`, if it is granted to `agent_id`.
    fn granted_secret<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<secrets::Model>>;

    /// The sponsor's connection `name`, with the name of its secret if it has one.
    fn connection<'a>(
        &'a self,
        sponsor_id: Uuid,
        name: &'a str,
    ) -> Read<'a, Option<(connections::Model, Option<String>)>>;

    /// The sponsor's connections, as metering matches a call's target against
    /// them (`crate::metering::route_for`); read on every call.
    fn routes(&self, sponsor_id: Uuid) -> Read<'_, Vec<Route>>;

    /// A call's reads together (stage `reads`): the agent's wallet, the current
    /// version of `policy_id`, the sponsor's secret `secret` if it is granted to the
    /// agent (none asked: `None`) and the sponsor's connections. Each part equals its
    /// own read above; by default the four are made at once, and a store may make
    /// them one statement (PostgreSQL's does: one round trip and one statement for
    /// the server to run instead of four).
    fn call_rows<'a>(
        &'a self,
        sponsor_id: Uuid,
        agent_id: Uuid,
        policy_id: Uuid,
        secret: Option<&'a str>,
    ) -> Read<'a, CallRows> {
        Box::pin(async move {
            let granted = async {
                match secret {
                    Some(name) => self.granted_secret(sponsor_id, agent_id, name).await,
                    None => Ok(None),
                }
            };
            let (wallet, policy_version, granted_secret, routes) = tokio::join!(
                self.wallet(agent_id),
                self.current_version(policy_id),
                granted,
                self.routes(sponsor_id)
            );
            Ok(CallRows {
                wallet: wallet?,
                policy_version: policy_version?,
                granted_secret: granted_secret?,
                routes: routes?,
            })
        })
    }

    /// Starts the writer that applies this store's group-commit batches (see
    /// [`batch::Writer::serve`], announcing on `runtime`). Called once, on the first write.
    fn start_writer(&self, writer: batch::Writer, runtime: tokio::runtime::Handle);
}

/// The store for `db`: sea-orm's when `portable` (`AEGIS_HOT_PATH_STORE=portable`),
/// else PostgreSQL's on PostgreSQL, the SQLite one on a SQLite file, sea-orm
/// otherwise (an in-memory SQLite).
pub fn open(
    db: &DatabaseConnection,
    audit: &AuditLog,
    metrics: Arc<Metrics>,
    portable: bool,
) -> Arc<dyn CallStore> {
    if portable {
        return Arc::new(orm::OrmStore::new(db.clone(), audit.clone()));
    }
    if let Some(store) = postgres::PgStore::for_postgres(db, audit) {
        return Arc::new(store);
    }
    match sqlite::SqliteStore::for_file(db, audit, metrics) {
        Some(store) => Arc::new(store),
        None => Arc::new(orm::OrmStore::new(db.clone(), audit.clone())),
    }
}
