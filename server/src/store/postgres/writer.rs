//! Group-commit batches on PostgreSQL in a fixed number of round trips, whatever
//! the batch's size:
//!
//! 1. `BEGIN` (READ COMMITTED);
//! 2. the settlements' ledger rows, still `held`, locked `FOR UPDATE`;
//! 3. every wallet the batch touches, locked `FOR UPDATE` in agent order — one
//!    lock order for every batch of every replica, so batches never deadlock;
//! 4. (in memory) each hold and settlement applied to the locked rows in arrival
//!    order by [`crate::spend::locked`]: exact, because nothing else can change
//!    those rows before this transaction ends;
//! 5. the chain's lock and head, `aegis_audit_head()` (one call; the lock comes
//!    after the row locks, as for every appender);
//! 6. one statement writing the wallets, the resolved and the new ledger rows and
//!    the batch's audit records (data-modifying CTEs over `unnest`ed arrays);
//! 7. `COMMIT`.
//!
//! Steps 2 and 3 are skipped when the batch has no settlement or no wallet, and
//! 5–6 shrink to what is there. A checkpoint that falls due adds one statement.
//! The chain lock is held for steps 5–7: three round trips, not one per write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::error::AppError;
use chrono::{DateTime, Utc};
use entity::{audit_events, wallets};
use sea_orm::sqlx::postgres::{PgConnection, PgPool};
use sea_orm::sqlx::{self, Connection, Postgres, Row};
use uuid::Uuid;

use super::reads::{internal, wallet_columns, wallet_row};
use crate::audit::chain::{ChainState, check_kind};
use crate::audit::{Appended, AuditEntry, Checkpoint, GENESIS_HASH};
use crate::db::now;
use crate::spend::{Reservation, Resolved, locked, refusal};
use crate::store::batch::{BatchTxn, Batches, Write};

/// The settlements' ledger rows that are still held, locked until commit.
const CLAIM_SQL: &str = "SELECT request_id, agent_id, reserved_micros FROM ledger_entries \
     WHERE request_id = ANY($1) AND status = 'held' FOR UPDATE";

/// The touched wallets, locked in agent order.
const LOCK_SQL: &str = concat!(
    "SELECT ",
    wallet_columns!(),
    " FROM wallets WHERE agent_id = ANY($1) ORDER BY agent_id FOR UPDATE"
);

/// Everything the batch changed, in one statement. Every array may be empty.
const WRITE_SQL: &str = "WITH w AS ( \
       UPDATE wallets SET daily_spent_micros = x.ds, monthly_spent_micros = x.ms, reserved_micros = x.r, \
         day_window = x.dw, month_window = x.mw, alert_sent_day = x.asd, alert_sent_month = x.asm, updated_at = x.u \
       FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::text[], $8::text[], \
                   $9::timestamptz[]) AS x(agent_id, ds, ms, r, dw, mw, asd, asm, u) \
       WHERE wallets.agent_id = x.agent_id \
     ), resolved AS ( \
       UPDATE ledger_entries SET status = y.status, settled_micros = y.settled, resolved_at = $10 \
       FROM unnest($11::text[], $12::text[], $13::int8[]) AS y(request_id, status, settled) \
       WHERE ledger_entries.request_id = y.request_id \
     ), held AS ( \
       INSERT INTO ledger_entries (id, agent_id, request_id, status, reserved_micros, settled_micros, day_window, \
         month_window, created_at, expires_at, resolved_at) \
       SELECT h.id, h.agent_id, h.request_id, 'held', h.reserved, NULL, h.dw, h.mw, $10, $14, NULL \
       FROM unnest($15::uuid[], $16::uuid[], $17::text[], $18::int8[], $19::text[], $20::text[]) \
         AS h(id, agent_id, request_id, reserved, dw, mw) \
     ) \
     INSERT INTO audit_events (seq, id, at, sponsor_id, agent_id, request_id, kind, stage, decision, method, host, \
       path, status, cost_micros, duration_us, request_hash, policy_hash, policy_input, detail, prev_hash, hash) \
     SELECT * FROM unnest($21::int8[], $22::uuid[], $23::timestamptz[], $24::uuid[], $25::uuid[], $26::text[], \
       $27::text[], $28::text[], $29::text[], $30::text[], $31::text[], $32::text[], $33::int4[], $34::int8[], \
       $35::int8[], $36::text[], $37::text[], $38::text[], $39::text[], $40::text[], $41::text[])";

/// The writer task's side: a connection of its own, outside the read pool, opened
/// on first use and again after a failed BEGIN or COMMIT.
pub(crate) struct PgBatches {
    pool: PgPool,
    conn: Option<PgConnection>,
    /// Set when the connection may be in any state (a failed BEGIN or COMMIT).
    broken: bool,
    chain: Arc<ChainState>,
}

impl PgBatches {
    pub(crate) fn new(pool: PgPool, chain: Arc<ChainState>) -> Self {
        Self { pool, conn: None, broken: false, chain }
    }
}

/// A wallet row locked by this transaction, and whether it changed.
struct Locked {
    row: wallets::Model,
    dirty: bool,
}

/// A new hold's ledger row.
struct Hold {
    agent_id: Uuid,
    request_id: String,
    amount: i64,
    day: String,
    month: String,
}

pub(crate) struct PgTxn<'a> {
    tx: sqlx::Transaction<'a, Postgres>,
    broken: &'a mut bool,
    chain: &'a ChainState,
    at: DateTime<Utc>,
    reservation_ttl: Duration,
    wallets: HashMap<Uuid, Locked>,
    /// Held ledger rows of this batch's settlements: request id → (agent, amount held).
    claimed: HashMap<String, (Uuid, i64)>,
    /// Resolved ledger rows: (request id, status, charge).
    resolved: Vec<(String, String, Option<i64>)>,
    holds: Vec<Hold>,
    records: Vec<audit_events::Model>,
    checkpoints: Vec<Checkpoint>,
    started: Instant,
}

impl Batches for PgBatches {
    type Txn<'a> = PgTxn<'a>;

    fn exclusive(&self) -> Option<Arc<tokio::sync::Mutex<()>>> {
        None
    }

    async fn begin(&mut self, reservation_ttl: Duration) -> Result<PgTxn<'_>, AppError> {
        let started = Instant::now();
        let Self { pool, conn, broken, chain } = self;
        if std::mem::take(broken) {
            *conn = None;
        }
        if conn.is_none() {
            let options = pool.connect_options();
            let mut opened = PgConnection::connect_with(&options).await.map_err(internal)?;
            // Plan each batch's statements for the arrays it binds. A prepared
            // statement's generic plan is made once, while the tables may still be
            // small, and kept for the connection's life: found in a profile, where
            // the claim and the wallet lock read `ledger_entries` and `wallets` end
            // to end once per batch (3,294 sequential scans, 3.7 M rows in 20 s, a
            // cost growing with the ledger) instead of using their unique indexes.
            sqlx::raw_sql("SET plan_cache_mode = force_custom_plan")
                .execute(&mut opened)
                .await
                .map_err(internal)?;
            *conn = Some(opened);
            // A batch's write spans TCP segments: without this, Nagle's algorithm and
            // the server's delayed ACK stall it 40 ms (crate::nodelay).
            crate::nodelay::for_peers(&crate::nodelay::resolve(options.get_host(), options.get_port()).await);
        }
        let c = conn.as_mut().ok_or_else(AppError::internal)?;
        let tx = match c.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                *broken = true;
                return Err(internal(e));
            }
        };
        Ok(PgTxn {
            tx,
            broken,
            chain,
            at: now(),
            reservation_ttl,
            wallets: HashMap::new(),
            claimed: HashMap::new(),
            resolved: Vec::new(),
            holds: Vec::new(),
            records: Vec::new(),
            checkpoints: Vec::new(),
            started,
        })
    }
}

impl PgTxn<'_> {
    /// The chain's head, with its lock taken (held until commit).
    async fn head(&mut self) -> Result<(i64, String), AppError> {
        let row = sqlx::query("SELECT head_seq, head_hash FROM aegis_audit_head()")
            .fetch_one(&mut *self.tx)
            .await
            .map_err(internal)?;
        let seq: Option<i64> = row.try_get(0).map_err(internal)?;
        let hash: Option<String> = row.try_get(1).map_err(internal)?;
        Ok(match (seq, hash) {
            (Some(seq), Some(hash)) => (seq, hash),
            _ => (0, GENESIS_HASH.to_owned()),
        })
    }

    async fn write(&mut self) -> Result<(), AppError> {
        let dirty: Vec<&wallets::Model> = self.wallets.values().filter(|w| w.dirty).map(|w| &w.row).collect();
        if dirty.is_empty() && self.resolved.is_empty() && self.holds.is_empty() && self.records.is_empty() {
            return Ok(());
        }
        let expires_at = self.at + chrono::Duration::from_std(self.reservation_ttl).unwrap_or_default();
        let col =
            |f: fn(&audit_events::Model) -> Option<String>| self.records.iter().map(f).collect::<Vec<_>>();
        let query = sqlx::query(WRITE_SQL)
            .bind(dirty.iter().map(|w| w.agent_id).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.daily_spent_micros).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.monthly_spent_micros).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.reserved_micros).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.day_window.clone()).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.month_window.clone()).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.alert_sent_day.clone()).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.alert_sent_month.clone()).collect::<Vec<_>>())
            .bind(dirty.iter().map(|w| w.updated_at).collect::<Vec<_>>())
            .bind(self.at)
            .bind(self.resolved.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
            .bind(self.resolved.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
            .bind(self.resolved.iter().map(|r| r.2).collect::<Vec<_>>())
            .bind(expires_at)
            .bind(self.holds.iter().map(|_| Uuid::now_v7()).collect::<Vec<_>>())
            .bind(self.holds.iter().map(|h| h.agent_id).collect::<Vec<_>>())
            .bind(self.holds.iter().map(|h| h.request_id.clone()).collect::<Vec<_>>())
            .bind(self.holds.iter().map(|h| h.amount).collect::<Vec<_>>())
            .bind(self.holds.iter().map(|h| h.day.clone()).collect::<Vec<_>>())
            .bind(self.holds.iter().map(|h| h.month.clone()).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.seq).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.id).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.at).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.sponsor_id).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.agent_id).collect::<Vec<_>>())
            .bind(col(|r| r.request_id.clone()))
            .bind(self.records.iter().map(|r| r.kind.clone()).collect::<Vec<_>>())
            .bind(col(|r| r.stage.clone()))
            .bind(col(|r| r.decision.clone()))
            .bind(col(|r| r.method.clone()))
            .bind(col(|r| r.host.clone()))
            .bind(col(|r| r.path.clone()))
            .bind(self.records.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.cost_micros).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.duration_us).collect::<Vec<_>>())
            .bind(col(|r| r.request_hash.clone()))
            .bind(col(|r| r.policy_hash.clone()))
            .bind(col(|r| r.policy_input.clone()))
            .bind(col(|r| r.detail.clone()))
            .bind(self.records.iter().map(|r| r.prev_hash.clone()).collect::<Vec<_>>())
            .bind(self.records.iter().map(|r| r.hash.clone()).collect::<Vec<_>>());
        query.execute(&mut *self.tx).await.map_err(internal)?;
        Ok(())
    }
}

impl BatchTxn for PgTxn<'_> {
    async fn prepare(&mut self, writes: &[Write]) -> Result<(), AppError> {
        let mut agents: Vec<Uuid> = Vec::with_capacity(writes.len());
        let mut settling: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for write in writes {
            match write {
                Write::Intent { agent_id, .. } => agents.push(*agent_id),
                Write::Outcome { request_id, .. } => {
                    if seen.insert(request_id.as_str()) {
                        settling.push(request_id.clone());
                    }
                }
            }
        }
        if !settling.is_empty() {
            let rows =
                sqlx::query(CLAIM_SQL).bind(&settling).fetch_all(&mut *self.tx).await.map_err(internal)?;
            for r in rows {
                let request_id: String = r.try_get(0).map_err(internal)?;
                let agent_id: Uuid = r.try_get(1).map_err(internal)?;
                let reserved: i64 = r.try_get(2).map_err(internal)?;
                agents.push(agent_id);
                self.claimed.insert(request_id, (agent_id, reserved));
            }
        }
        agents.sort_unstable();
        agents.dedup();
        if !agents.is_empty() {
            let rows =
                sqlx::query(LOCK_SQL).bind(&agents).fetch_all(&mut *self.tx).await.map_err(internal)?;
            for r in rows {
                let mut row = wallet_row(&r).map_err(internal)?;
                let dirty = locked::roll(&mut row, self.at);
                self.wallets.insert(row.agent_id, Locked { row, dirty });
            }
        }
        Ok(())
    }

    async fn reserve(
        &mut self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError> {
        let Some(w) = self.wallets.get_mut(&agent_id) else { return Ok(refusal(None)) };
        let reservation = locked::hold(&mut w.row, amount, self.at);
        if reservation == Reservation::Held {
            w.dirty = true;
            self.holds.push(Hold {
                agent_id,
                request_id: request_id.to_owned(),
                amount,
                day: w.row.day_window.clone(),
                month: w.row.month_window.clone(),
            });
        }
        Ok(reservation)
    }

    async fn resolve(
        &mut self,
        request_id: &str,
        status: &str,
        charge: Option<i64>,
    ) -> Result<Option<Resolved>, AppError> {
        let Some((agent_id, reserved)) = self.claimed.remove(request_id) else { return Ok(None) };
        self.resolved.push((request_id.to_owned(), status.to_owned(), charge));
        let charged = charge.unwrap_or(0);
        let alerts = match self.wallets.get_mut(&agent_id) {
            Some(w) => {
                locked::settle(&mut w.row, reserved, charged, self.at);
                w.dirty = true;
                if charged > 0 { locked::claim_alerts(&mut w.row) } else { Vec::new() }
            }
            None => Vec::new(),
        };
        Ok(Some(Resolved { agent_id, alerts }))
    }

    async fn wallets_done(&mut self) -> Result<(), AppError> {
        // Written with the records, in one statement (the rows stay locked till then).
        Ok(())
    }

    async fn append(&mut self, entry: AuditEntry) -> Result<Appended, AppError> {
        check_kind(&entry)?;
        let (head_seq, head_hash) = match self.records.last() {
            Some(last) => (last.seq, last.hash.clone()),
            None => self.head().await?,
        };
        let linked = self.chain.link(entry, head_seq, head_hash);
        self.checkpoints.extend(linked.checkpoint);
        self.records.push(linked.record);
        Ok(linked.appended)
    }

    async fn records_done(&mut self) -> Result<(), AppError> {
        self.write().await?;
        for cp in std::mem::take(&mut self.checkpoints) {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, head_hash, at, signature, public_key) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(cp.seq)
            .bind(cp.head_hash)
            .bind(cp.at)
            .bind(cp.signature)
            .bind(cp.public_key)
            .execute(&mut *self.tx)
            .await
            .map_err(internal)?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), AppError> {
        let Self { tx, broken, chain, records, started, .. } = self;
        if let Err(e) = tx.commit().await {
            *broken = true;
            return Err(internal(e));
        }
        if !records.is_empty()
            && let Some(m) = chain.metrics.get()
        {
            m.audit_appended(started.elapsed());
        }
        Ok(())
    }
}
