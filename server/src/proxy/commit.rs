//! Group commit of the proxy's hot-path writes.
//!
//! Every performed call writes twice: before the upstream call, the budget hold
//! and the `proxy.intent` record; after it, the settlement (or release) and the
//! `proxy.outcome` record. Each pair is one transaction, so a hold never exists
//! without its intent. One writer task per process owns these transactions: it
//! takes whatever writes are queued (up to [`MAX_BATCH`]), applies them all in ONE
//! transaction — one fsync for the batch — and only then answers each waiter. The
//! guarantees stay per request: a caller learns its intent is recorded only once
//! it is durable, and it performs the call only after that.
//!
//! Inside a batch, wallet rows are touched first, in agent order, and the audit
//! records are appended last, in arrival order (the chain's seq/prev_hash order).
//! On PostgreSQL that keeps one lock order for every batch in every replica — row
//! locks, then the chain's advisory lock — so batches of two replicas never
//! deadlock on each other; holds stay exact because each is still the wallet's
//! conditional UPDATE.
//!
//! If any statement of a batch fails, the batch is rolled back and each write is
//! retried alone, so one bad write fails only itself. A failed COMMIT is not
//! retried (its outcome is unknown): every waiter gets the error, and nothing is
//! performed for an intent whose commit failed.
//!
//! On a SQLite file the writer is a thread of its own with its own connection
//! ([`sqlite`]): callers queue on it directly, and it applies each batch as the
//! same statements, prepared once — no hop through an async task, and no round
//! trip to a pool worker per statement. PostgreSQL (and an in-memory SQLite) use
//! the writer task, which applies the batch through sea-orm ([`Writer::apply`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use app::error::AppError;
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::audit::{Appended, AuditEntry, AuditLog, AuditTxn};
use crate::metrics::Metrics;
use crate::wallets::{Reservation, Resolved, WalletBatch, WalletService};

mod sqlite;

/// Most writes in one transaction: bounds how long the chain lock is held.
pub const MAX_BATCH: usize = 128;

/// The hold and intent of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Intent {
    /// Held and recorded, durably.
    Recorded(Appended),
    /// Over a limit; nothing was recorded.
    Refused(Reservation),
}

/// The settlement and outcome of one request.
#[derive(Debug)]
pub struct Outcome {
    /// Whether this resolved the hold (false: it was already resolved).
    pub resolved: bool,
    pub appended: Appended,
}

/// What the writer has done so far (also exported as metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed: one fsync each.
    pub commits: u64,
    /// Writes those transactions carried.
    pub writes: u64,
    /// Batches rolled back and retried write by write.
    pub retried_batches: u64,
}

#[derive(Clone)]
enum Write {
    Intent {
        agent_id: Uuid,
        request_id: String,
        amount: i64,
        entry: AuditEntry,
    },
    /// `charge`: settle at this cost, or release when `None`.
    Outcome {
        agent_id: Uuid,
        request_id: String,
        charge: Option<i64>,
        entry: AuditEntry,
    },
}

impl Write {
    fn agent_id(&self) -> Uuid {
        match self {
            Write::Intent { agent_id, .. } | Write::Outcome { agent_id, .. } => *agent_id,
        }
    }
}

enum Done {
    Intent(Intent),
    Outcome(Outcome),
}

struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Done, AppError>>,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    retried_batches: AtomicU64,
}

impl Counters {
    /// One transaction of `writes` writes committed.
    fn committed(&self, metrics: &Metrics, writes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        metrics.group_committed(writes);
    }
}

/// What the writer task needs; it holds no sender, so it ends when the last
/// [`GroupCommit`] handle is dropped.
#[derive(Clone)]
struct Writer {
    audit: AuditLog,
    wallets: WalletService,
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
}

/// What one write came to, with the hold it resolved (whose alerts are announced
/// once committed).
type Finished = (Done, Option<Resolved>);

/// What each write of a batch came to, in the batch's order.
type Applied = Vec<Result<Finished, AppError>>;

/// The writer task's queue and state, until the first write starts it.
type Unstarted = (mpsc::UnboundedReceiver<Queued>, Writer);

/// The handle callers queue writes on. Clones share one writer task, started on
/// first use (inside the runtime).
#[derive(Clone)]
pub struct GroupCommit {
    route: Route,
    counters: Arc<Counters>,
}

/// Where writes are queued.
#[derive(Clone)]
enum Route {
    /// A SQLite file: straight onto the writer thread's queue.
    Thread(sqlite::SqliteWriter),
    /// Elsewhere: the writer task, which applies batches through sea-orm.
    Task { queue: mpsc::UnboundedSender<Queued>, pending: Arc<Mutex<Option<Unstarted>>> },
}

impl GroupCommit {
    pub fn new(
        db: &DatabaseConnection,
        audit: AuditLog,
        wallets: WalletService,
        metrics: Arc<Metrics>,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        if let Some(thread) = sqlite::SqliteWriter::for_file(db, &audit, &wallets, &metrics, &counters) {
            return Self { route: Route::Thread(thread), counters };
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let writer = Writer { audit, wallets, metrics, counters: counters.clone() };
        let pending = Arc::new(Mutex::new(Some((rx, writer))));
        Self { route: Route::Task { queue, pending }, counters }
    }

    /// Holds `amount` for `request_id` and records `entry` (the intent) in the same
    /// transaction; durable when this returns `Recorded`.
    pub async fn intent(
        &self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
        entry: AuditEntry,
    ) -> Result<Intent, AppError> {
        let write = Write::Intent { agent_id, request_id: request_id.to_owned(), amount, entry };
        match self.submit(write).await? {
            Done::Intent(intent) => Ok(intent),
            Done::Outcome(_) => Err(AppError::internal()),
        }
    }

    /// Settles the hold at `charge` (or releases it, `None`) and records `entry`
    /// (the outcome) in the same transaction.
    pub async fn outcome(
        &self,
        agent_id: Uuid,
        request_id: &str,
        charge: Option<i64>,
        entry: AuditEntry,
    ) -> Result<Outcome, AppError> {
        let write = Write::Outcome { agent_id, request_id: request_id.to_owned(), charge, entry };
        match self.submit(write).await? {
            Done::Outcome(outcome) => Ok(outcome),
            Done::Intent(_) => Err(AppError::internal()),
        }
    }

    /// Where batches are applied: `"sqlite-thread"` (a SQLite file) or `"sea-orm"`.
    pub fn backend(&self) -> &'static str {
        match self.route {
            Route::Thread(_) => "sqlite-thread",
            Route::Task { .. } => "sea-orm",
        }
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            retried_batches: self.counters.retried_batches.load(Ordering::Relaxed),
        }
    }

    async fn submit(&self, write: Write) -> Result<Done, AppError> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued { write, reply };
        let sent = match &self.route {
            Route::Thread(thread) => thread.queue(queued),
            Route::Task { queue, pending } => {
                let taken = pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some((rx, writer)) = taken {
                    tokio::spawn(writer.run(rx));
                }
                queue.send(queued).is_ok()
            }
        };
        if !sent {
            tracing::error!("the group-commit writer is gone");
            return Err(AppError::internal());
        }
        answer.await.unwrap_or_else(|_| {
            tracing::error!("the group-commit writer dropped a write");
            Err(AppError::internal())
        })
    }
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        while let Some(first) = rx.recv().await {
            // Whatever queued up while the previous batch was committing goes next.
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&self, batch: Vec<Queued>) {
        let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().map(|q| (q.write, q.reply)).unzip();
        let applied = self.commit_orm(writes).await;
        for resolved in answer(replies, applied) {
            self.wallets.announce(resolved).await;
        }
    }

    async fn commit_orm(&self, writes: Vec<Write>) -> Applied {
        let n = writes.len();
        match self.apply(&writes).await {
            Ok((txn, applied)) => match self.finish(txn, n).await {
                Ok(()) => applied.into_iter().map(Ok).collect(),
                Err(e) => failed_all(e, n),
            },
            Err(e) if n == 1 => vec![Err(e)],
            Err(_) => {
                // Rolled back (the transaction was dropped): each write alone, so
                // only the one that fails is refused.
                self.counters.retried_batches.fetch_add(1, Ordering::Relaxed);
                let mut results = Vec::with_capacity(n);
                for write in writes {
                    let one = std::slice::from_ref(&write);
                    results.push(match self.apply(one).await {
                        Ok((txn, mut applied)) => self
                            .finish(txn, 1)
                            .await
                            .and_then(|()| applied.pop().ok_or_else(AppError::internal)),
                        Err(e) => Err(e),
                    });
                }
                results
            }
        }
    }

    async fn finish(&self, txn: AuditTxn, writes: usize) -> Result<(), AppError> {
        txn.commit().await?;
        self.counters.committed(&self.metrics, writes);
        Ok(())
    }

    /// All of `writes` in one uncommitted transaction: wallet rows first in agent
    /// order, then the audit records in arrival order.
    async fn apply(&self, writes: &[Write]) -> Result<(AuditTxn, Vec<Finished>), AppError> {
        let mut txn = self.audit.begin().await?;
        let mut batch = WalletBatch::default();
        let mut order: Vec<usize> = (0..writes.len()).collect();
        order.sort_by_key(|&i| writes[i].agent_id());
        let mut wallet_results: Vec<Option<WalletResult>> = (0..writes.len()).map(|_| None).collect();
        for i in order {
            let result = match &writes[i] {
                Write::Intent { agent_id, request_id, amount, .. } => WalletResult::Reserved(
                    self.wallets.reserve_in(txn.conn(), &mut batch, *agent_id, request_id, *amount).await?,
                ),
                Write::Outcome { request_id, charge, .. } => {
                    let status = if charge.is_some() { "settled" } else { "released" };
                    WalletResult::Resolved(
                        self.wallets.resolve_in(txn.conn(), &mut batch, request_id, status, *charge).await?,
                    )
                }
            };
            wallet_results[i] = Some(result);
        }
        batch.flush(txn.conn()).await?;
        let mut applied = Vec::with_capacity(writes.len());
        for (write, result) in writes.iter().zip(wallet_results) {
            let (Write::Intent { entry, .. } | Write::Outcome { entry, .. }) = write;
            applied.push(match result.ok_or_else(AppError::internal)? {
                WalletResult::Reserved(Reservation::Held) => {
                    (Done::Intent(Intent::Recorded(txn.hold(entry.clone()).await?)), None)
                }
                WalletResult::Reserved(refused) => (Done::Intent(Intent::Refused(refused)), None),
                WalletResult::Resolved(resolved) => {
                    let appended = txn.hold(entry.clone()).await?;
                    (Done::Outcome(Outcome { resolved: resolved.is_some(), appended }), resolved)
                }
            });
        }
        // The batch's records, inserted together; a failure here rolls back and
        // retries write by write like any other.
        txn.flush().await?;
        Ok((txn, applied))
    }
}

/// Answers every waiter with its own result (a waiter that went away — its client
/// hung up — changes nothing). Returns the holds the batch resolved, whose budget
/// alerts are announced now that they are committed.
fn answer(replies: Vec<oneshot::Sender<Result<Done, AppError>>>, applied: Applied) -> Vec<Resolved> {
    let mut resolved_holds = Vec::new();
    for (reply, result) in replies.into_iter().zip(applied) {
        let _ = reply.send(result.map(|(done, resolved)| {
            resolved_holds.extend(resolved);
            done
        }));
    }
    resolved_holds
}

/// The same error for each of `n` writes (a failed COMMIT: nothing of the batch is durable).
fn failed_all(e: AppError, n: usize) -> Applied {
    (0..n).map(|_| Err(e.clone())).collect()
}

enum WalletResult {
    Reserved(Reservation),
    Resolved(Option<Resolved>),
}
