//! Prometheus metrics, rendered at `GET /metrics` in the Prometheus text format.
//!
//! One registry per [`crate::backend::Services`], not a global recorder: tests run
//! several servers in one process and each must count only its own traffic.
//!
//! Labels are a fixed, small vocabulary (decisions and stage names): never a URL,
//! a header, a host or an agent, so nothing secret reaches a label and the number
//! of series stays bounded. The LLM counters add the sponsor-chosen connection name
//! and the price-table entry a model was priced by (bounded by the tables, never
//! the free-form model string an agent sent).

use std::time::Duration;

use entity::approvals;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sea_orm::{ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter};

/// `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Seconds; from 100 µs (a policy evaluation) to 30 s (the upstream timeout).
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// A scrape never waits long for the database: a stuck pool must not stall Prometheus.
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    decision: &'static str,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    connection: String,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    connection: String,
    model: String,
    source: &'static str,
}

pub struct Metrics {
    registry: Registry,
    proxy_requests: Family<RequestLabels, Counter>,
    stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram>,
    request_seconds: Histogram,
    spend_micros: Counter,
    breaker_trips: Counter,
    audit_append_seconds: Histogram,
    group_commits: Counter,
    group_commit_writes: Counter,
    inline_reads: Counter,
    llm_tokens: Family<TokenLabels, Counter>,
    llm_cost_micros: Family<CostLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let proxy_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "aegis_proxy_requests",
            "Proxy requests by decision (allow, deny, error, pending_approval) and the stage that \
             answered (none when allowed)",
            proxy_requests.clone(),
        );
        let stage_seconds: Family<StageLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "aegis_proxy_stage_duration_seconds",
            "Time spent in each pipeline stage, from the decision record",
            stage_seconds.clone(),
        );
        let request_seconds = latency_histogram();
        registry.register(
            "aegis_proxy_request_duration_seconds",
            "Time through the whole pipeline, upstream call included",
            request_seconds.clone(),
        );
        let spend_micros = Counter::default();
        registry.register(
            "aegis_spend_settled_micros",
            "Spend settled against agents' wallets, in micro-units",
            spend_micros.clone(),
        );
        let breaker_trips = Counter::default();
        registry.register("aegis_breaker_trips", "Circuit breaker trips", breaker_trips.clone());
        let audit_append_seconds = latency_histogram();
        registry.register(
            "aegis_audit_append_duration_seconds",
            "Audit transactions, from taking the chain lock to a durable commit",
            audit_append_seconds.clone(),
        );
        let group_commits = Counter::default();
        registry.register(
            "aegis_group_commits",
            "Transactions (one fsync each) committed by the proxy's group-commit writer",
            group_commits.clone(),
        );
        let group_commit_writes = Counter::default();
        registry.register(
            "aegis_group_commit_writes",
            "Hot-path writes (hold + intent, settlement + outcome) those transactions carried",
            group_commit_writes.clone(),
        );
        let inline_reads = Counter::default();
        registry.register(
            "aegis_db_inline_reads",
            "Hot-path point reads run inline on the SQLite file instead of through the pool",
            inline_reads.clone(),
        );
        let llm_tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "aegis_llm_tokens",
            "Tokens of metered LLM calls by connection, price-table model and kind (input, cached_input, \
             cache_write, output), as the provider's usage reported them",
            llm_tokens.clone(),
        );
        let llm_cost_micros = Family::<CostLabels, Counter>::default();
        registry.register(
            "aegis_llm_cost_micros",
            "Settled cost of metered LLM calls, in micro-units, by connection, price-table model and how \
             the figure was obtained (usage, ceiling, declared)",
            llm_cost_micros.clone(),
        );
        Self {
            llm_tokens,
            llm_cost_micros,
            registry,
            proxy_requests,
            stage_seconds,
            request_seconds,
            spend_micros,
            breaker_trips,
            audit_append_seconds,
            group_commits,
            group_commit_writes,
            inline_reads,
        }
    }

    /// One proxy request answered with `decision`; `stage` is where it stopped, or `none`.
    pub fn proxy_request(&self, decision: &'static str, stage: &'static str) {
        self.proxy_requests.get_or_create(&RequestLabels { decision, stage }).inc();
    }

    /// One stage's time, as the pipeline's decision record measured it.
    pub fn stage(&self, stage: &'static str, micros: u64) {
        self.stage_seconds.get_or_create(&StageLabels { stage }).observe(micros as f64 / 1e6);
    }

    pub fn request_duration(&self, micros: u64) {
        self.request_seconds.observe(micros as f64 / 1e6);
    }

    pub fn settled(&self, micros: i64) {
        self.spend_micros.inc_by(u64::try_from(micros).unwrap_or(0));
    }

    /// A metered LLM call settled: its tokens by kind (`input`, `cached_input`,
    /// `cache_write`, `output`) and its cost, and how the cost was obtained.
    pub fn metered(
        &self,
        connection: &str,
        model: &str,
        tokens: [(&'static str, i64); 4],
        source: &'static str,
        micros: i64,
    ) {
        for (kind, n) in tokens {
            let labels = TokenLabels { connection: connection.to_owned(), model: model.to_owned(), kind };
            self.llm_tokens.get_or_create(&labels).inc_by(u64::try_from(n).unwrap_or(0));
        }
        let labels = CostLabels { connection: connection.to_owned(), model: model.to_owned(), source };
        self.llm_cost_micros.get_or_create(&labels).inc_by(u64::try_from(micros).unwrap_or(0));
    }

    pub fn breaker_tripped(&self) {
        self.breaker_trips.inc();
    }

    pub fn audit_appended(&self, took: Duration) {
        self.audit_append_seconds.observe(took.as_secs_f64());
    }

    /// One group commit carrying `writes` hot-path writes.
    pub fn group_committed(&self, writes: usize) {
        self.group_commits.inc();
        self.group_commit_writes.inc_by(writes as u64);
    }

    /// One hot-path read done inline on a SQLite file ([`crate::store::sqlite::reads`]).
    pub fn inline_read(&self) {
        self.inline_reads.inc();
    }

    /// The text exposition: the counters and histograms above, then gauges read
    /// from the database now (so they are right across restarts and replicas). A
    /// gauge that cannot be read is left out rather than reported stale.
    pub async fn render(&self, db: &DatabaseConnection) -> String {
        let mut now = Registry::default();
        match pending_approvals(db).await {
            Ok(n) => {
                let g: Gauge = Gauge::default();
                g.set(n);
                now.register("aegis_approvals_pending", "Approvals waiting for a sponsor", g);
            }
            Err(reason) => tracing::warn!(%reason, "metrics: could not count pending approvals"),
        }
        if let Some((size, idle)) = pool_state(db) {
            let (open, idle_g): (Gauge, Gauge) = (Gauge::default(), Gauge::default());
            open.set(i64::from(size));
            idle_g.set(i64::try_from(idle).unwrap_or(i64::MAX));
            now.register("aegis_db_pool_connections", "Open database connections in the pool", open);
            now.register("aegis_db_pool_idle_connections", "Idle database connections in the pool", idle_g);
        }
        let mut out = String::new();
        // Writing to a String cannot fail; an error here would be a bug in the encoder.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry)
            .and_then(|()| prometheus_text::encode(&mut out, &now))
        {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

async fn pending_approvals(db: &DatabaseConnection) -> Result<i64, String> {
    let count = approvals::Entity::find()
        .filter(approvals::Column::Status.eq(app::model::ApprovalStatus::Pending.as_str()))
        .count(db);
    match tokio::time::timeout(SCRAPE_DB_TIMEOUT, count).await {
        Ok(Ok(n)) => Ok(i64::try_from(n).unwrap_or(i64::MAX)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// (open, idle) connections of the sqlx pool behind `db`.
fn pool_state(db: &DatabaseConnection) -> Option<(u32, usize)> {
    // The backend is checked first: the pool getters panic on the other backend.
    match db.get_database_backend() {
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            Some((pool.size(), pool.num_idle()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_with_their_labels() {
        let m = Metrics::new();
        m.proxy_request("deny", "egress");
        m.stage("policy", 1500);
        m.settled(1234);
        m.settled(-5);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("aegis_proxy_requests_total{decision=\"deny\",stage=\"egress\"} 1\n"), "{out}");
        assert!(
            out.contains("aegis_proxy_stage_duration_seconds_bucket{stage=\"policy\",le=\"0.0025\"} 1\n")
        );
        assert!(out.contains("aegis_proxy_stage_duration_seconds_bucket{stage=\"policy\",le=\"0.001\"} 0\n"));
        assert!(out.contains("aegis_spend_settled_micros_total 1234\n"), "{out}");
    }
}
