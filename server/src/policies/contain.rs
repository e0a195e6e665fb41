//! Containment for evaluations that cannot be interrupted.
//!
//! regorus checks its limits (time, instructions, memory) between VM instructions
//! and inside the loops of the builtins that allocate. One thing it cannot cut off:
//! a single instruction over a value whose parts are shared. `a1 := [a0, a0]`,
//! `a2 := [a1, a1]`, … costs one instruction and a few bytes a level, and after
//! forty levels one comparison (`a40 == b40`, a set holding both, a lookup keyed by
//! one) walks 2^40 leaves. No limit fires and a thread cannot be killed.
//!
//! So nothing a sponsor wrote runs on an async worker. [`Evaluators`] is a small
//! pool of dedicated threads; the caller waits for its answer at most a deadline.
//! A watchdog looks at the running jobs: one still running after
//! [`Evaluators::stuck_after`] is *abandoned* — its thread is lowered to the least
//! scheduling priority (nice 19: it only gets the CPU nobody else wants), leaves the
//! pool, and a new thread takes its place. The abandoned job's tag (the sponsor)
//! stays *held* until that thread ends, and a held tag's jobs are refused without
//! running: one sponsor strands at most as many threads as the pool has at once,
//! and never again until they end. Past [`MAX_ABANDONED`] stranded threads in the
//! process no replacement is started: the pool shrinks and evaluations fail closed
//! (denied) rather than the process growing without end.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Stranded (abandoned, still running) threads in the whole process, at most.
pub const MAX_ABANDONED: usize = 64;
/// Stack of an evaluator thread. regorus recurses once a rule in a chain of rules
/// (tens of KiB a level in debug builds, less in release) and a sponsor's source may
/// hold thousands: a stack overflow would abort the whole process. Address space
/// only: the pages a thread never touches cost nothing.
pub const STACK_BYTES: usize = 256 << 20;
/// Jobs waiting for a thread, at most; past it a call is refused at once.
const MAX_QUEUED: usize = 4096;

static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// Why a job gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contained {
    /// It started and did not finish within the deadline (it is abandoned, and its
    /// tag held, when the watchdog sees it).
    Overran,
    /// It never started: every thread was busy (or the queue full) for the whole
    /// deadline. Not the job's fault.
    Busy,
    /// Its tag has a stranded job still running: refused without running.
    Held,
    /// It panicked.
    Failed,
}

type Task = Box<dyn FnOnce() + Send>;

const WAITING: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;
const REFUSED: u8 = 3;

struct Job {
    tag: Option<Arc<str>>,
    progress: Arc<AtomicU8>,
    task: Task,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Tags with a job running now: one job a tag at a time, so one sponsor's
    /// stuck job takes one thread, never the pool.
    running: HashMap<Arc<str>, usize>,
}

enum State {
    Idle,
    Busy { since: Instant, tag: Option<Arc<str>> },
    Abandoned,
}

struct Worker {
    state: Mutex<State>,
    /// The kernel's id of the thread, to lower its priority.
    tid: AtomicI32,
}

struct Inner {
    name: &'static str,
    size: usize,
    stuck_after: Duration,
    queue: Mutex<Queue>,
    ready: Condvar,
    workers: Mutex<Vec<Arc<Worker>>>,
    /// Tags with a stranded job, and how many.
    held: Mutex<HashMap<Arc<str>, usize>>,
}

// Lock order: a worker's state, then the queue, then `held`; `workers` alone.

/// A pool of threads for code that may not finish (see the module's docs). Its
/// threads live as long as the process.
#[derive(Clone)]
pub struct Evaluators {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Evaluators {
    /// `size` threads (at least one); a job running longer than `stuck_after` is
    /// abandoned.
    pub fn new(name: &'static str, size: usize, stuck_after: Duration) -> Self {
        let inner = Arc::new(Inner {
            name,
            size: size.max(1),
            stuck_after,
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            workers: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
        });
        for _ in 0..inner.size {
            spawn_worker(&inner);
        }
        let watched = inner.clone();
        let tick = (stuck_after / 4).max(Duration::from_millis(5));
        std::thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || watchdog(watched, tick))
            .expect("spawn the evaluators' watchdog");
        Self { inner }
    }

    /// Whether `tag` has a stranded job still running.
    pub fn is_held(&self, tag: &str) -> bool {
        let held = lock(&self.inner.held);
        !held.is_empty() && held.contains_key(tag)
    }

    /// Threads of this pool that take jobs now.
    pub fn live(&self) -> usize {
        lock(&self.inner.workers).len()
    }

    /// Stranded threads in the whole process.
    pub fn abandoned() -> usize {
        ABANDONED.load(Ordering::Relaxed)
    }

    /// Runs `job` on a pool thread and waits for its answer at most `deadline`.
    /// Jobs with the same tag run one at a time.
    pub async fn run<T: Send + 'static>(
        &self,
        tag: Option<&str>,
        deadline: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Contained> {
        if tag.is_some_and(|t| self.is_held(t)) {
            return Err(Contained::Held);
        }
        let progress = Arc::new(AtomicU8::new(WAITING));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seen = progress.clone();
        let task: Task = Box::new(move || {
            if seen.compare_exchange(WAITING, STARTED, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return; // its caller gave up before it started
            }
            let _ = tx.send(job());
        });
        {
            let mut queue = lock(&self.inner.queue);
            if queue.jobs.len() >= MAX_QUEUED {
                return Err(Contained::Busy);
            }
            queue.jobs.push_back(Job { tag: tag.map(Arc::from), progress: progress.clone(), task });
        }
        self.inner.ready.notify_one();
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) if progress.load(Ordering::Acquire) == REFUSED => Err(Contained::Held),
            Ok(Err(_)) => Err(Contained::Failed),
            Err(_) => {
                match progress.compare_exchange(WAITING, CANCELLED, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => Err(Contained::Busy),
                    Err(REFUSED) => Err(Contained::Held),
                    Err(_) => Err(Contained::Overran),
                }
            }
        }
    }
}

fn spawn_worker(inner: &Arc<Inner>) {
    let me = Arc::new(Worker { state: Mutex::new(State::Idle), tid: AtomicI32::new(0) });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (pool, worker) = (inner.clone(), me.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("{}-eval", inner.name))
        .stack_size(STACK_BYTES)
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            worker.tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
            let _ = ready_tx.send(());
            // Take jobs only once the pool counts this thread.
            if go_rx.recv().is_ok() {
                work(&pool, &worker)
            }
        });
    match spawned {
        Ok(_) => {
            let _ = ready_rx.recv();
            lock(&inner.workers).push(me);
            let _ = go_tx.send(());
        }
        Err(e) => tracing::error!(pool = inner.name, error = %e, "could not start an evaluator thread"),
    }
}

/// The next job this thread may run: the first whose tag is not running now. Jobs
/// whose tag is held are refused on the way.
fn next_job(inner: &Inner) -> Job {
    let mut queue = lock(&inner.queue);
    loop {
        let mut i = 0;
        while i < queue.jobs.len() {
            let tag = queue.jobs[i].tag.clone();
            if let Some(tag) = &tag {
                if lock(&inner.held).contains_key(tag) {
                    if let Some(job) = queue.jobs.remove(i) {
                        job.progress.store(REFUSED, Ordering::Release);
                        drop(job); // its answer channel closes: the caller sees `Held`
                    }
                    continue;
                }
                if queue.running.contains_key(tag) {
                    i += 1;
                    continue;
                }
                *queue.running.entry(tag.clone()).or_insert(0) += 1;
            }
            if let Some(job) = queue.jobs.remove(i) {
                return job;
            }
        }
        queue = inner.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
    }
}

/// A pool thread: takes jobs until one of them is abandoned, then ends with it.
fn work(inner: &Inner, me: &Worker) {
    loop {
        let job = next_job(inner);
        *lock(&me.state) = State::Busy { since: Instant::now(), tag: job.tag.clone() };
        // A panic drops the job's answer channel: its caller sees `Failed`.
        let _ = catch_unwind(AssertUnwindSafe(job.task));
        let mut state = lock(&me.state);
        if !matches!(*state, State::Abandoned) {
            *state = State::Idle;
            drop(state);
            if let Some(tag) = &job.tag {
                let mut queue = lock(&inner.queue);
                if let Some(n) = queue.running.get_mut(tag) {
                    *n -= 1;
                    if *n == 0 {
                        queue.running.remove(tag);
                    }
                }
                drop(queue);
                // A job of this tag may have been passed over for it.
                inner.ready.notify_one();
            }
            continue;
        }
        // The watchdog moved this job's tag from `running` to `held`.
        if let Some(tag) = &job.tag {
            let mut held = lock(&inner.held);
            if let Some(n) = held.get_mut(tag) {
                *n -= 1;
                if *n == 0 {
                    held.remove(tag);
                }
            }
        }
        drop(state);
        ABANDONED.fetch_sub(1, Ordering::Relaxed);
        tracing::warn!(pool = inner.name, "a stranded policy evaluation ended");
        return;
    }
}

fn watchdog(inner: Arc<Inner>, tick: Duration) {
    loop {
        std::thread::sleep(tick);
        let now = Instant::now();
        let mut stranded = Vec::new();
        lock(&inner.workers).retain(|w| {
            let mut state = lock(&w.state);
            let State::Busy { since, tag } = &*state else { return true };
            if now.duration_since(*since) < inner.stuck_after {
                return true;
            }
            let tag = tag.clone();
            *state = State::Abandoned;
            if let Some(tag) = &tag {
                let mut queue = lock(&inner.queue);
                if let Some(n) = queue.running.get_mut(tag) {
                    *n -= 1;
                    if *n == 0 {
                        queue.running.remove(tag);
                    }
                }
                *lock(&inner.held).entry(tag.clone()).or_insert(0) += 1;
            }
            // Least priority: a stranded evaluation only gets the CPU nobody else wants.
            // SAFETY: setpriority on one of this process's own threads.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, w.tid.load(Ordering::Relaxed) as libc::id_t, 19) };
            stranded.push(tag);
            false
        });
        let any = !stranded.is_empty();
        for tag in stranded {
            let count = ABANDONED.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(
                pool = inner.name,
                tag = tag.as_deref().unwrap_or("-"),
                stranded = count,
                "a policy evaluation did not finish: its thread is abandoned and its sponsor held"
            );
            if count > MAX_ABANDONED {
                tracing::error!(
                    pool = inner.name,
                    stranded = count,
                    "too many stranded policy evaluations: no replacement thread; evaluations fail closed until they end"
                );
            }
        }
        // Replace what left (past the cap, once stranded threads end).
        let live = lock(&inner.workers).len();
        if live < inner.size && ABANDONED.load(Ordering::Relaxed) <= MAX_ABANDONED {
            for _ in live..inner.size {
                spawn_worker(&inner);
            }
        }
        if any {
            // Queued jobs of the tags now held are refused.
            inner.ready.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A job that ignores every limit until it is let go.
    fn uncooperative(go: Arc<AtomicBool>) -> impl FnOnce() -> u32 + Send + 'static {
        move || {
            while !go.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
            7
        }
    }

    /// Runs [`uncooperative`] under `tag` on a task of its own.
    fn spawn_uncooperative(
        pool: &Evaluators,
        tag: &'static str,
        deadline: Duration,
        go: &Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<Result<u32, Contained>> {
        let (pool, go) = (pool.clone(), go.clone());
        tokio::spawn(async move { pool.run(Some(tag), deadline, uncooperative(go)).await })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_never_ends_is_abandoned_its_tag_held_and_the_pool_keeps_serving() {
        let pool = Evaluators::new("test", 1, Duration::from_millis(200));
        assert_eq!(pool.run(Some("a"), Duration::from_secs(1), || 1).await, Ok(1));

        let go = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let stuck = pool.run(Some("evil"), Duration::from_millis(300), uncooperative(go.clone())).await;
        assert_eq!(stuck, Err(Contained::Overran));
        assert!(started.elapsed() < Duration::from_secs(2));

        // The only thread is taken, yet another sponsor's job is served by its replacement.
        let mut other = None;
        for _ in 0..50 {
            match pool.run(Some("b"), Duration::from_millis(200), || 2).await {
                Ok(v) => {
                    other = Some(v);
                    break;
                }
                Err(Contained::Busy) => continue,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(other, Some(2));
        assert!(pool.is_held("evil"));
        assert!(!pool.is_held("b"));
        assert_eq!(pool.run(Some("evil"), Duration::from_secs(1), || 3).await, Err(Contained::Held));
        assert_eq!(pool.live(), 1);

        // When the stranded job ends, its tag is free again.
        go.store(true, Ordering::Relaxed);
        for _ in 0..100 {
            if !pool.is_held("evil") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!pool.is_held("evil"));
        assert_eq!(pool.run(Some("evil"), Duration::from_secs(1), || 4).await, Ok(4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_never_started_is_busy_not_overrun_and_never_runs_late() {
        let pool = Evaluators::new("test", 1, Duration::from_secs(30));
        let go = Arc::new(AtomicBool::new(false));
        let blocker = {
            let pool = pool.clone();
            let go = go.clone();
            tokio::spawn(async move { pool.run(None, Duration::from_secs(10), uncooperative(go)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let late = pool
            .run(Some("x"), Duration::from_millis(100), move || flag.store(true, Ordering::Relaxed))
            .await;
        assert_eq!(late, Err(Contained::Busy));
        assert!(!pool.is_held("x"));
        go.store(true, Ordering::Relaxed);
        assert_eq!(blocker.await.unwrap(), Ok(7));
        assert_eq!(pool.run(None, Duration::from_secs(1), || 5).await, Ok(5));
        assert!(!ran.load(Ordering::Relaxed), "a job whose caller gave up must not run");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_job_a_tag_at_a_time_so_a_stuck_sponsor_takes_one_thread_not_the_pool() {
        let pool = Evaluators::new("test", 2, Duration::from_secs(30));
        let go = Arc::new(AtomicBool::new(false));
        let first = spawn_uncooperative(&pool, "evil", Duration::from_secs(10), &go);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run(Some("evil"), Duration::from_secs(10), || 8).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The second thread is free for everyone else, not taken by the same sponsor.
        assert_eq!(pool.run(Some("b"), Duration::from_secs(1), || 9).await, Ok(9));
        assert_eq!(pool.run(None, Duration::from_secs(1), || 10).await, Ok(10));
        assert!(!second.is_finished(), "the sponsor's second job waits for its first");
        go.store(true, Ordering::Relaxed);
        assert_eq!(first.await.unwrap(), Ok(7));
        assert_eq!(second.await.unwrap(), Ok(8));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_jobs_of_a_sponsor_with_a_stranded_job_are_refused_without_running() {
        let pool = Evaluators::new("test", 2, Duration::from_millis(200));
        let go = Arc::new(AtomicBool::new(false));
        let stuck = spawn_uncooperative(&pool, "evil", Duration::from_secs(5), &go);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued =
            pool.run(Some("evil"), Duration::from_secs(5), move || flag.store(true, Ordering::Relaxed));
        assert_eq!(queued.await, Err(Contained::Held));
        assert!(!ran.load(Ordering::Relaxed));
        assert!(pool.is_held("evil"));
        assert_eq!(pool.live(), 2, "the stranded thread was replaced");
        // A stranded job is never killed: let go, it still answers its caller.
        go.store(true, Ordering::Relaxed);
        assert_eq!(stuck.await.unwrap(), Ok(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_fails_and_the_thread_lives_on() {
        let pool = Evaluators::new("test", 1, Duration::from_secs(30));
        let r: Result<u8, _> = pool.run(None, Duration::from_secs(1), || panic!("boom")).await;
        assert_eq!(r, Err(Contained::Failed));
        assert_eq!(pool.run(None, Duration::from_secs(1), || 6).await, Ok(6));
        assert_eq!(pool.live(), 1);
    }
}
