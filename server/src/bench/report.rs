//! The report: every number in one serialisable value, the per-stage breakdown read
//! back from the audit log, and the human-readable tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use super::load::{Latency, RunResult};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub os: String,
    pub arch: String,
    /// `release` or `debug`: a debug build is several times slower.
    pub build: &'static str,
}

impl Machine {
    pub fn describe() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        });
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            os: std::env::consts::OS.to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            build: if cfg!(debug_assertions) { "debug" } else { "release" },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rates: Vec<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub concurrency: usize,
    pub max_in_flight: usize,
    /// `sqlite`, `postgres` or `remote` (an already running AEGIS).
    pub database: String,
    pub redis: bool,
    pub aegis: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// `direct`, `execute` or `gateway`.
    pub target: String,
    pub fixed: Vec<RunResult>,
    pub saturation: RunResult,
}

/// AEGIS minus direct at the same rate (negative means noise won).
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub target: String,
    pub rate: f64,
    pub added_p50_us: i64,
    pub added_p99_us: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub target: String,
    /// AEGIS saturation throughput / direct saturation throughput.
    pub throughput_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: String,
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// Share of the mean total (`duration_us`) of the records.
    pub share_pct: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTable {
    pub target: String,
    /// `proxy.outcome` records read (every run of the target, warm-ups included).
    pub records: u64,
    pub stages: Vec<StageRow>,
    /// The pipeline's own total per request (`duration_us` of the record).
    pub total: StageRow,
}

#[derive(Debug, Clone, Serialize)]
pub struct VariantRow {
    pub variant: String,
    pub description: String,
    pub fixed: RunResult,
    pub saturation: RunResult,
    pub policy_share_pct: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub targets: Vec<TargetReport>,
    pub added_latency: Vec<Added>,
    pub throughput_ratio: Vec<Ratio>,
    pub stages: Vec<StageTable>,
    pub variants: Vec<VariantRow>,
    /// The floors of `--variants` ([`super::floors`]).
    pub floors: Option<super::floors::Floors>,
    /// The scale-out goals as ratios of this run (with `--variants`).
    pub goals: Vec<Goal>,
}

/// One of the scale-out goals, as a ratio measured in this run.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: Option<f64>,
    pub wanted: String,
}

impl Report {
    /// The scale-out goals this run has the rows for (issue #18's numbering).
    pub fn compute_goals(&self) -> Vec<Goal> {
        let sat = |name: &str| {
            self.variants.iter().find(|v| v.variant == name).map(|v| v.saturation.throughput_rps)
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let mut goals = vec![
            Goal {
                goal: "1. one PostgreSQL replica / one SQLite replica (saturation)".into(),
                measured: ratio(sat("pg"), sat("sqlite+redis").or(sat("sqlite"))),
                wanted: ">= 0.5".into(),
            },
            Goal {
                goal: "2. two PostgreSQL replicas / one, database far".into(),
                measured: ratio(sat("pgx2-far"), sat("pg-far")),
                wanted: ">= 1.6".into(),
            },
            Goal {
                goal: "2. two PostgreSQL replicas / one, database local".into(),
                measured: ratio(sat("pgx2"), sat("pg")),
                wanted: ">= 1.0".into(),
            },
        ];
        if let Some(pg) = self.variants.iter().find(|v| v.variant == "pg") {
            goals.push(Goal {
                goal: format!(
                    "3. one PostgreSQL replica at {} req/s: share shed or failed",
                    pg.fixed.rate.unwrap_or(0.0)
                ),
                measured: Some((pg.fixed.errors + pg.fixed.dropped) as f64 / pg.fixed.sent.max(1) as f64),
                wanted: "0".into(),
            });
        }
        let floor = self.floors.as_ref().and_then(|f| f.sqlite_txn_p50_us);
        // The SQLite variant's latency at its fixed rate minus the direct target's at the same rate.
        let added = |at: fn(&Latency) -> u64| {
            self.variants.iter().find(|v| v.variant == "sqlite").and_then(|v| {
                let direct = self.targets.iter().find(|t| t.target == "direct")?;
                let base = direct.fixed.iter().find(|d| d.rate == v.fixed.rate)?;
                Some(at(&v.fixed.latency) as f64 - at(&base.latency) as f64)
            })
        };
        goals.push(Goal {
            goal: "4. one SQLite replica / a bare nginx proxy_pass (saturation)".into(),
            measured: ratio(sat("sqlite"), self.floors.as_ref().and_then(|f| f.nginx_proxy_rps)),
            wanted: ">= 0.25".into(),
        });
        goals.push(Goal {
            goal: "5. SQLite added p50 / two bare durable SQLite transactions".into(),
            measured: ratio(added(|l| l.p50_us), floor.map(|f| 2.0 * f as f64)),
            wanted: "<= 1.3".into(),
        });
        goals.push(Goal {
            goal: "5. SQLite added p99, ms".into(),
            measured: added(|l| l.p99_us).map(|us| us / 1000.0),
            wanted: "<= 2".into(),
        });
        goals
    }
}

impl Report {
    /// Added latency and throughput ratio of each AEGIS target against `direct`.
    pub fn compare(&mut self) {
        let Some(direct) = self.targets.iter().find(|t| t.target == "direct").cloned() else { return };
        for t in self.targets.iter().filter(|t| t.target != "direct") {
            for run in &t.fixed {
                let Some(base) = direct.fixed.iter().find(|d| d.rate == run.rate) else { continue };
                // Without a single success there is no latency to compare.
                if run.ok == 0 || base.ok == 0 {
                    continue;
                }
                self.added_latency.push(Added {
                    target: t.target.clone(),
                    rate: run.rate.unwrap_or(0.0),
                    added_p50_us: run.latency.p50_us as i64 - base.latency.p50_us as i64,
                    added_p99_us: run.latency.p99_us as i64 - base.latency.p99_us as i64,
                });
            }
            let d = direct.saturation.throughput_rps;
            self.throughput_ratio.push(Ratio {
                target: t.target.clone(),
                throughput_ratio: if d > 0.0 { t.saturation.throughput_rps / d } else { 0.0 },
            });
        }
    }
}

/// Collects per-stage timings from `proxy.outcome` records (their `detail.stages`).
#[derive(Default)]
pub struct StageAccumulator {
    stages: BTreeMap<String, (usize, Vec<u64>)>,
    totals: Vec<u64>,
}

fn row(stage: &str, mut v: Vec<u64>, total_mean: f64) -> StageRow {
    v.sort_unstable();
    let pick = |q: f64| v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
    let mean = if v.is_empty() { 0.0 } else { v.iter().sum::<u64>() as f64 / v.len() as f64 };
    StageRow {
        stage: stage.to_owned(),
        count: v.len() as u64,
        mean_us: mean,
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        share_pct: if total_mean > 0.0 { 100.0 * mean / total_mean } else { 0.0 },
    }
}

impl StageAccumulator {
    /// Adds one audit record as the API returns it.
    pub fn add(&mut self, record: &Value) {
        let detail: Option<Value> = record["detail"].as_str().and_then(|d| serde_json::from_str(d).ok());
        let Some(stages) = detail.as_ref().and_then(|d| d["stages"].as_array()) else { return };
        for s in stages {
            if let (Some(name), Some(us)) = (s["stage"].as_str(), s["micros"].as_u64()) {
                let next = self.stages.len();
                self.stages.entry(name.to_owned()).or_insert((next, Vec::new())).1.push(us);
            }
        }
        if let Some(us) = record["duration_us"].as_u64() {
            self.totals.push(us);
        }
    }

    pub fn finish(self, target: &str) -> StageTable {
        let total = row("total", self.totals, 0.0);
        let mut stages: Vec<(usize, String, Vec<u64>)> =
            self.stages.into_iter().map(|(name, (order, v))| (order, name, v)).collect();
        // Pipeline order, as first seen.
        stages.sort_by_key(|(order, ..)| *order);
        StageTable {
            target: target.to_owned(),
            records: total.count,
            stages: stages.into_iter().map(|(_, name, v)| row(&name, v, total.mean_us)).collect(),
            total: StageRow { share_pct: 100.0, ..total },
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn latency_cells(l: &Latency) -> String {
    format!("{:>9} {:>9} {:>9} {:>9}", ms(l.p50_us), ms(l.p90_us), ms(l.p99_us), ms(l.max_us))
}

fn run_line(label: &str, r: &RunResult) -> String {
    format!(
        "{label:<10} {:>9} {} {:>10.1} {:>7} {:>7}\n",
        r.rate.map_or_else(|| format!("c={}", r.concurrency.unwrap_or(0)), |v| format!("{v:.0}")),
        latency_cells(&r.latency),
        r.throughput_rps,
        r.errors,
        r.dropped
    )
}

/// The human-readable form.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "machine: {} CPUs ({}), {}/{}, {} build",
        m.cpus,
        m.cpu_model.as_deref().unwrap_or("unknown model"),
        m.os,
        m.arch,
        m.build
    );
    let s = &r.settings;
    let _ = writeln!(
        out,
        "aegis: {} ({}{}); {:.1} s per run after {:.1} s warm-up; saturation with {} workers; \
         at most {} in flight\n",
        s.aegis,
        s.database,
        if s.redis { " + redis" } else { "" },
        s.duration_s,
        s.warmup_s,
        s.concurrency,
        s.max_in_flight
    );
    let _ = writeln!(
        out,
        "Latency (ms, from the scheduled send time; open loop at fixed rates, closed loop = saturation)"
    );
    let header = format!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>7}\n",
        "target", "rate/s", "p50", "p90", "p99", "max", "achieved/s", "errors", "dropped"
    );
    out.push_str(&header);
    for t in &r.targets {
        for run in &t.fixed {
            out.push_str(&run_line(&t.target, run));
        }
        out.push_str(&run_line(&t.target, &t.saturation));
    }
    for t in &r.targets {
        for e in t.fixed.iter().chain([&t.saturation]).flat_map(|x| &x.error_samples) {
            let _ = writeln!(out, "  {} error: {e}", t.target);
        }
    }
    if !r.added_latency.is_empty() {
        let _ = writeln!(out, "\nAdded by AEGIS (AEGIS minus direct at the same rate, ms)");
        let _ = writeln!(out, "{:<10} {:>9} {:>10} {:>10}", "target", "rate/s", "added p50", "added p99");
        for a in &r.added_latency {
            let _ = writeln!(
                out,
                "{:<10} {:>9.0} {:>10.3} {:>10.3}",
                a.target,
                a.rate,
                a.added_p50_us as f64 / 1000.0,
                a.added_p99_us as f64 / 1000.0
            );
        }
        for x in &r.throughput_ratio {
            let _ =
                writeln!(out, "{:<10} saturation throughput = {:.4} x direct", x.target, x.throughput_ratio);
        }
    }
    for t in &r.stages {
        let _ = writeln!(
            out,
            "\nWhere the time goes: {} ({} proxy.outcome records, µs; `total` is the record's duration_us)",
            t.target, t.records
        );
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>9} {:>8} {:>8} {:>7}",
            "stage", "count", "mean", "p50", "p99", "share"
        );
        for s in t.stages.iter().chain([&t.total]) {
            let _ = writeln!(
                out,
                "{:<10} {:>8} {:>9.1} {:>8} {:>8} {:>6.1}%",
                s.stage, s.count, s.mean_us, s.p50_us, s.p99_us, s.share_pct
            );
        }
    }
    if !r.variants.is_empty() {
        let _ = writeln!(out, "\nVariants (execute target; policy is always evaluated, its share shown)");
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>9} {:>9} {:>10} {:>7} {:>12} {:>8}",
            "variant", "rate/s", "p50 ms", "p99 ms", "achieved/s", "errors", "saturation/s", "policy%"
        );
        for v in &r.variants {
            let _ = writeln!(
                out,
                "{:<16} {:>7.0} {:>9} {:>9} {:>10.1} {:>7} {:>12.1} {:>7.1}%",
                v.variant,
                v.fixed.rate.unwrap_or(0.0),
                ms(v.fixed.latency.p50_us),
                ms(v.fixed.latency.p99_us),
                v.fixed.throughput_rps,
                v.fixed.errors + v.saturation.errors,
                v.saturation.throughput_rps,
                v.policy_share_pct.unwrap_or(0.0)
            );
        }
        for v in &r.variants {
            let _ = writeln!(out, "  {}: {}", v.variant, v.description);
        }
    }
    if let Some(f) = &r.floors {
        let us = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        let tps = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "\nFloors: bare durable SQLite transaction p50 {} / p99 {} us; durable PostgreSQL \
             transactions (TPC-B-like, 32 clients) {} /s local, {} /s far; a bare nginx \
             proxy_pass to the mock {} req/s",
            us(f.sqlite_txn_p50_us),
            us(f.sqlite_txn_p99_us),
            tps(f.postgres_tps),
            tps(f.postgres_delayed_tps),
            tps(f.nginx_proxy_rps)
        );
        let _ = writeln!(out, "Goals (ratios of this run):");
        for g in &r.goals {
            let m = g.measured.map_or("-".to_owned(), |m| format!("{m:.2}"));
            let _ = writeln!(out, "  {:<66} {:>7}  (wanted {})", g.goal, m, g.wanted);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::floors::Floors;

    fn run(throughput_rps: f64, rate: Option<f64>, p50_us: u64, p99_us: u64) -> RunResult {
        RunResult {
            mode: if rate.is_some() { "open" } else { "closed" },
            rate,
            concurrency: None,
            duration_s: 5.0,
            sent: 5000,
            ok: 5000,
            errors: 0,
            dropped: 0,
            throughput_rps,
            latency: Latency { p50_us, p99_us, ..Default::default() },
            error_samples: Vec::new(),
        }
    }

    fn variant(name: &str, saturation: f64) -> VariantRow {
        VariantRow {
            variant: name.into(),
            description: String::new(),
            fixed: run(1000.0, Some(1000.0), 900, 2600),
            saturation: run(saturation, None, 0, 0),
            policy_share_pct: None,
        }
    }

    fn report(variants: Vec<VariantRow>) -> Report {
        Report {
            machine: Machine::describe(),
            settings: Settings {
                rates: vec![1000.0],
                duration_s: 5.0,
                warmup_s: 1.0,
                concurrency: 64,
                max_in_flight: 4096,
                database: "postgres".into(),
                redis: true,
                aegis: "in-process".into(),
            },
            targets: vec![TargetReport {
                target: "direct".into(),
                fixed: vec![run(1000.0, Some(1000.0), 100, 400)],
                saturation: run(20_000.0, None, 0, 0),
            }],
            added_latency: Vec::new(),
            throughput_ratio: Vec::new(),
            stages: Vec::new(),
            variants,
            floors: Some(Floors {
                sqlite_txn_p50_us: Some(300),
                sqlite_txn_p99_us: Some(900),
                postgres_tps: None,
                postgres_delayed_tps: None,
                nginx_proxy_rps: Some(12_000.0),
            }),
            goals: Vec::new(),
        }
    }

    fn measured(goals: &[Goal], prefix: &str) -> Vec<Option<f64>> {
        goals.iter().filter(|g| g.goal.starts_with(prefix)).map(|g| g.measured).collect()
    }

    #[test]
    fn goals_are_the_issues_ratios_of_one_run() {
        let mut pg = variant("pg", 1800.0);
        pg.fixed.errors = 10;
        pg.fixed.dropped = 40;
        let r = report(vec![
            variant("sqlite", 3000.0),
            variant("sqlite+redis", 4000.0),
            pg,
            variant("pgx2", 2000.0),
            variant("pg-far", 500.0),
            variant("pgx2-far", 900.0),
        ]);
        let goals = r.compute_goals();
        // Against SQLite with Redis when the run has it (the same shape as PostgreSQL + Redis).
        assert_eq!(measured(&goals, "1."), [Some(0.45)]);
        assert_eq!(measured(&goals, "2."), [Some(1.8), Some(2000.0 / 1800.0)]);
        assert_eq!(measured(&goals, "3."), [Some(0.01)], "shed and failed of those sent");
        // The SQLite row without Redis: AEGIS's own cost, against nginx doing the same hop.
        assert_eq!(measured(&goals, "4."), [Some(0.25)]);
        // (900 - 100) µs added against two 300 µs transactions; (2600 - 400) µs at p99.
        assert_eq!(measured(&goals, "5."), [Some(800.0 / 600.0), Some(2.2)]);
    }

    #[test]
    fn goals_without_their_variants_are_unmeasured() {
        let goals = report(vec![variant("sqlite", 3000.0)]).compute_goals();
        assert_eq!(measured(&goals, "1."), [None]);
        assert_eq!(measured(&goals, "2."), [None, None]);
        assert!(measured(&goals, "3.").is_empty(), "no PostgreSQL row, no goal 3");
        assert_eq!(measured(&goals, "4."), [Some(0.25)]);
        let mut without_nginx = report(vec![variant("sqlite", 3000.0)]);
        without_nginx.floors.as_mut().unwrap().nginx_proxy_rps = None;
        assert_eq!(measured(&without_nginx.compute_goals(), "4."), [None], "no nginx, no ratio");
        assert_eq!(measured(&goals, "5.").len(), 2);
    }
}
