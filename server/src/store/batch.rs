//! Group commit of the proxy's hot-path writes, written once over [`Batches`].
//!
//! Every performed call writes twice: before the upstream call, the budget hold
//! and the `proxy.intent` record; after it, the settlement (or release) and the
//! `proxy.outcome` record. Each pair is one transaction, so a hold never exists
//! without its intent. One writer per process owns these transactions: it takes
//! whatever writes are queued (up to [`MAX_BATCH`]), applies them all in ONE
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
//! Where the writer runs is the store's choice ([`super::CallStore::start_writer`]):
//! the SQLite store drives [`Writer::serve`] on a thread of its own, sea-orm on a
//! task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use app::error::AppError;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::CallStore;
use crate::audit::{Appended, AuditEntry};
use crate::metrics::Metrics;
use crate::spend::{Reservation, Resolved};

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

/// The settlement and outcome record of one request.
#[derive(Debug)]
pub struct Settled {
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

/// One queued write.
#[derive(Clone)]
pub(crate) enum Write {
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

    fn entry(&self) -> &AuditEntry {
        match self {
            Write::Intent { entry, .. } | Write::Outcome { entry, .. } => entry,
        }
    }
}

enum Done {
    Intent(Intent),
    Settled(Settled),
}

pub(crate) struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Done, AppError>>,
}

/// One open transaction of a store, as the batch algorithm drives it. Dropping it
/// uncommitted rolls it back.
pub(crate) trait BatchTxn {
    /// Before the batch's first wallet write, with all its writes: a store may
    /// read and lock what they touch at once (PostgreSQL does). Nothing by default.
    async fn prepare(&mut self, writes: &[Write]) -> Result<(), AppError> {
        let _ = writes;
        Ok(())
    }
    /// Holds `amount` for `request_id` if both limits allow it (with its ledger row).
    async fn reserve(
        &mut self,
        agent_id: Uuid,
        request_id: &str,
        amount: i64,
    ) -> Result<Reservation, AppError>;
    /// Resolves the hold of `request_id`: `settled` at `charge`, or `released`.
    /// `None` if it was no longer held.
    async fn resolve(
        &mut self,
        request_id: &str,
        status: &str,
        charge: Option<i64>,
    ) -> Result<Option<Resolved>, AppError>;
    /// After the last wallet write of the batch (rows it keeps back go in now).
    async fn wallets_done(&mut self) -> Result<(), AppError>;
    /// Chains `entry` after the head; durable once committed.
    async fn append(&mut self, entry: AuditEntry) -> Result<Appended, AppError>;
    /// After the last append (records and checkpoints it keeps back go in now).
    async fn records_done(&mut self) -> Result<(), AppError>;
    /// COMMIT. An error here means the outcome is unknown.
    async fn commit(self) -> Result<(), AppError>;
}

/// A store's side of group commit: opening one transaction at a time.
pub(crate) trait Batches {
    type Txn<'a>: BatchTxn
    where
        Self: 'a;

    /// Held from before a batch is gathered until it is answered, when appends
    /// elsewhere in the process must take turns with the writer (SQLite's
    /// in-process chain lock); whatever queues up while another holder has it
    /// joins this batch. `None` when the transaction itself serialises appends.
    fn exclusive(&self) -> Option<Arc<tokio::sync::Mutex<()>>>;

    async fn begin(&mut self, reservation_ttl: Duration) -> Result<Self::Txn<'_>, AppError>;
}

/// Budget alerts of a committed settlement, announced off the writer.
pub type Announce = Arc<dyn Fn(Resolved) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    writes: AtomicU64,
    retried_batches: AtomicU64,
}

/// The writer: its queue and what it answers with. Runs until the last
/// [`GroupCommit`] handle is dropped.
pub struct Writer {
    queue: mpsc::UnboundedReceiver<Queued>,
    reservation_ttl: Duration,
    announce: Announce,
    metrics: Arc<Metrics>,
    counters: Arc<Counters>,
}

/// Why a transaction did not commit.
enum Failed {
    /// A statement failed; the transaction was rolled back.
    Apply(AppError),
    /// COMMIT failed: its outcome is unknown, so it is not retried.
    Commit(AppError),
}

/// What one write came to, with the hold it resolved (whose alerts are announced
/// once committed).
type Finished = (Done, Option<Resolved>);

/// What each write of a batch came to, in the batch's order.
type Results = Vec<Result<Finished, AppError>>;

impl Writer {
    /// Gathers whatever queued up, applies it as one transaction of `batches`,
    /// answers each waiter, announces the budget alerts it claimed; until the
    /// queue closes. Alerts are announced on `runtime` (the writer may run on a
    /// thread of its own).
    pub(crate) async fn serve<B: Batches>(mut self, mut batches: B, runtime: tokio::runtime::Handle) {
        let exclusive = batches.exclusive();
        while let Some(first) = self.queue.recv().await {
            let held = match &exclusive {
                Some(lock) => Some(lock.lock().await),
                None => None,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            let (writes, replies): (Vec<Write>, Vec<_>) =
                batch.into_iter().map(|q| (q.write, q.reply)).unzip();
            let applied = self.commit(&mut batches, &writes).await;
            drop(held);
            for resolved in answer(replies, applied).into_iter().filter(Resolved::has_alerts) {
                runtime.spawn((self.announce)(resolved));
            }
        }
    }

    async fn commit<B: Batches>(&self, batches: &mut B, writes: &[Write]) -> Results {
        let n = writes.len();
        match self.transact(batches, writes).await {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            Err(Failed::Commit(e)) => (0..n).map(|_| Err(e.clone())).collect(),
            Err(Failed::Apply(e)) if n == 1 => vec![Err(e)],
            Err(Failed::Apply(_)) => {
                // Rolled back: each write alone, so only the one that fails is refused.
                self.counters.retried_batches.fetch_add(1, Ordering::Relaxed);
                let mut results = Vec::with_capacity(n);
                for write in writes {
                    results.push(match self.transact(batches, std::slice::from_ref(write)).await {
                        Ok(mut one) => one.pop().ok_or_else(AppError::internal),
                        Err(Failed::Apply(e) | Failed::Commit(e)) => Err(e),
                    });
                }
                results
            }
        }
    }

    /// All of `writes` in one transaction, committed.
    async fn transact<B: Batches>(&self, batches: &mut B, writes: &[Write]) -> Result<Vec<Finished>, Failed> {
        let mut txn = batches.begin(self.reservation_ttl).await.map_err(Failed::Apply)?;
        let applied = apply(&mut txn, writes).await.map_err(Failed::Apply)?;
        txn.commit().await.map_err(Failed::Commit)?;
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.writes.fetch_add(writes.len() as u64, Ordering::Relaxed);
        self.metrics.group_committed(writes.len());
        Ok(applied)
    }
}

/// The batch's statements, uncommitted: wallet rows first in agent order, then the
/// audit records in arrival order.
async fn apply<T: BatchTxn>(txn: &mut T, writes: &[Write]) -> Result<Vec<Finished>, AppError> {
    enum Wallet {
        Reserved(Reservation),
        Resolved(Option<Resolved>),
    }
    txn.prepare(writes).await?;
    let mut order: Vec<usize> = (0..writes.len()).collect();
    order.sort_by_key(|&i| writes[i].agent_id());
    let mut wallet: Vec<Option<Wallet>> = (0..writes.len()).map(|_| None).collect();
    for i in order {
        wallet[i] = Some(match &writes[i] {
            Write::Intent { agent_id, request_id, amount, .. } => {
                Wallet::Reserved(txn.reserve(*agent_id, request_id, *amount).await?)
            }
            Write::Outcome { request_id, charge, .. } => {
                let status = if charge.is_some() { "settled" } else { "released" };
                Wallet::Resolved(txn.resolve(request_id, status, *charge).await?)
            }
        });
    }
    txn.wallets_done().await?;
    let mut applied = Vec::with_capacity(writes.len());
    for (write, result) in writes.iter().zip(wallet) {
        applied.push(match result.ok_or_else(AppError::internal)? {
            Wallet::Reserved(Reservation::Held) => {
                (Done::Intent(Intent::Recorded(txn.append(write.entry().clone()).await?)), None)
            }
            Wallet::Reserved(refused) => (Done::Intent(Intent::Refused(refused)), None),
            Wallet::Resolved(resolved) => {
                let appended = txn.append(write.entry().clone()).await?;
                (Done::Settled(Settled { resolved: resolved.is_some(), appended }), resolved)
            }
        });
    }
    // A failure here rolls back and retries write by write like any other.
    txn.records_done().await?;
    Ok(applied)
}

/// Answers every waiter with its own result (a waiter that went away — its client
/// hung up — changes nothing). Returns the holds the batch resolved, whose budget
/// alerts are announced now that they are committed.
fn answer(replies: Vec<oneshot::Sender<Result<Done, AppError>>>, applied: Results) -> Vec<Resolved> {
    let mut resolved_holds = Vec::new();
    for (reply, result) in replies.into_iter().zip(applied) {
        let _ = reply.send(result.map(|(done, resolved)| {
            resolved_holds.extend(resolved);
            done
        }));
    }
    resolved_holds
}

/// The handle callers queue writes on. Clones share one writer, started on first
/// use (inside the runtime) by the store.
#[derive(Clone)]
pub struct GroupCommit {
    store: Arc<dyn CallStore>,
    queue: mpsc::UnboundedSender<Queued>,
    /// The writer until the first write hands it to the store.
    unstarted: Arc<Mutex<Option<Writer>>>,
    started: Arc<Once>,
    counters: Arc<Counters>,
}

impl GroupCommit {
    /// `reservation_ttl`: how long a hold may stay unresolved; `announce`: publishes
    /// the budget alerts a committed settlement claimed.
    pub fn new(
        store: Arc<dyn CallStore>,
        reservation_ttl: Duration,
        announce: Announce,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let counters = Arc::<Counters>::default();
        let writer = Writer { queue: rx, reservation_ttl, announce, metrics, counters: counters.clone() };
        let unstarted = Arc::new(Mutex::new(Some(writer)));
        Self { store, queue, unstarted, started: Arc::new(Once::new()), counters }
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
            Done::Settled(_) => Err(AppError::internal()),
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
    ) -> Result<Settled, AppError> {
        let write = Write::Outcome { agent_id, request_id: request_id.to_owned(), charge, entry };
        match self.submit(write).await? {
            Done::Settled(settled) => Ok(settled),
            Done::Intent(_) => Err(AppError::internal()),
        }
    }

    /// Which store applies the batches (`"sqlite"`, `"postgres"` or `"sea-orm"`).
    pub fn backend(&self) -> &'static str {
        self.store.name()
    }

    pub fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            retried_batches: self.counters.retried_batches.load(Ordering::Relaxed),
        }
    }

    async fn submit(&self, write: Write) -> Result<Done, AppError> {
        // After the first write, one atomic load.
        self.started.call_once(|| {
            if let Some(writer) = self.unstarted.lock().unwrap_or_else(|e| e.into_inner()).take() {
                self.store.start_writer(writer, tokio::runtime::Handle::current());
            }
        });
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Queued { write, reply }).is_err() {
            tracing::error!("the group-commit writer is gone");
            return Err(AppError::internal());
        }
        answer.await.unwrap_or_else(|_| {
            tracing::error!("the group-commit writer dropped a write");
            Err(AppError::internal())
        })
    }
}
