//! `aegis bench`: measures what AEGIS adds to a call (issue #6).
//!
//! Starts a mock upstream and (unless `target` is given) an AEGIS instance in this
//! process, sets up a sponsor, agents, a secret and a gateway connection over the
//! public API, then drives three targets — `direct` (the mock itself), `execute`
//! and `gateway` — at fixed rates (open loop) and to saturation (closed loop), and
//! reads the per-stage timings back from the audit log.

pub mod floors;
pub mod load;
pub mod nginx;
pub mod relay;
pub mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::config::Config;
use load::Target;
use report::{Report, Settings, StageAccumulator, StageTable, TargetReport, VariantRow};

#[derive(Debug, Clone)]
pub struct Options {
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Workers of the saturation (closed-loop) run.
    pub concurrency: usize,
    pub saturation: Duration,
    pub max_in_flight: usize,
    /// A PostgreSQL server to run against (a throw-away database is made on it).
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// An already running AEGIS (`http://host:port`) instead of an in-process one.
    pub target: Option<String>,
    pub variants: bool,
    pub variant_rate: f64,
    /// Round trip added between AEGIS and PostgreSQL in the `--variants` rows
    /// marked `far` (a delaying forwarder); zero: no such rows.
    pub db_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rates: vec![200.0, 1000.0, 2000.0],
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            concurrency: 64,
            saturation: Duration::from_secs(5),
            max_in_flight: 4096,
            database_url: None,
            redis_url: None,
            target: None,
            variants: false,
            variant_rate: 1000.0,
            db_delay: Duration::ZERO,
        }
    }
}

/// `5s`, `500ms` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v * scale)),
        _ => Err(format!("expected a duration like 5s or 500ms, got {s:?}")),
    }
}

/// The mock upstream: a small JSON body for any path under `/ok`, on a random
/// loopback port. `aegis demo` uses it too.
pub struct Mock {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    pub async fn start() -> Result<Self, String> {
        async fn ok() -> axum::Json<Value> {
            axum::Json(json!({"ok": true, "items": [1, 2, 3], "note": "aegis bench mock"}))
        }
        let app = axum::Router::new()
            .route("/ok", axum::routing::any(ok))
            .route("/ok/{*rest}", axum::routing::any(ok));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("mock upstream: cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("mock upstream: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { base: format!("http://{addr}"), addr, task })
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// One AEGIS in this process, with its own data directory.
struct Instance {
    base: String,
    running: Option<crate::Running>,
    dir: Option<PathBuf>,
}

impl Instance {
    /// An AEGIS on `database_url` as it is (SQLite in its temp dir when `None`).
    async fn launch(
        database_url: Option<&str>,
        redis_url: Option<&str>,
        extra: &[(&'static str, &str)],
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("aegis-bench-{}", uuid::Uuid::new_v4().simple()));
        let mut instance = Instance { base: String::new(), running: None, dir: Some(dir.clone()) };
        let mut vars: HashMap<&str, String> = HashMap::from([
            ("AEGIS_DATA_DIR", dir.display().to_string()),
            ("AEGIS_EGRESS_ALLOW", "127.0.0.1/32".to_owned()),
            // The breaker would (rightly) trip on a benchmark's burst of calls.
            ("AEGIS_BREAKER_DENIAL_RATE_PCT", "0".to_owned()),
            ("AEGIS_BREAKER_BURST", "0".to_owned()),
            ("AEGIS_BREAKER_SPEND_MICROS", "0".to_owned()),
            ("AEGIS_BREAKER_NEW_HOSTS", "0".to_owned()),
        ]);
        if let Some(url) = database_url {
            vars.insert("DATABASE_URL", url.to_owned());
        }
        if let Some(r) = redis_url {
            vars.insert("REDIS_URL", r.to_owned());
        }
        for (k, v) in extra {
            vars.insert(k, (*v).to_owned());
        }
        let config = Config::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string());
        let started = match config {
            Ok(config) => {
                let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .map_err(|e| format!("cannot listen: {e}"));
                match listener {
                    Ok(l) => crate::start(config, Some(l)).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(running) => {
                instance.base = format!("http://{}", running.addr);
                instance.running = Some(running);
                Ok(instance)
            }
            Err(e) => {
                instance.stop().await;
                Err(format!("cannot start AEGIS: {e}"))
            }
        }
    }

    async fn stop(self) {
        if let Some(running) = self.running {
            running.task.abort();
            let _ = running.task.await;
            running.services.db.clone().close().await.ok();
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn create_database(admin: &str, name: &str) -> Result<String, String> {
    use sea_orm::ConnectionTrait;
    let mut url = url::Url::parse(admin).map_err(|e| format!("--database-url: {e}"))?;
    let conn = sea_orm::Database::connect(admin)
        .await
        .map_err(|e| format!("PostgreSQL {}: {e}", crate::config::redact_url(admin)))?;
    conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .map_err(|e| format!("cannot create database {name}: {e}"))?;
    let _ = conn.close().await;
    url.set_path(name);
    Ok(url.to_string())
}

async fn drop_database(admin: &str, name: &str) {
    use sea_orm::ConnectionTrait;
    match sea_orm::Database::connect(admin).await {
        Ok(conn) => {
            if let Err(e) =
                conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await
            {
                eprintln!("aegis bench: could not drop database {name}: {e}");
            }
            let _ = conn.close().await;
        }
        Err(e) => eprintln!("aegis bench: could not drop database {name}: {e}"),
    }
}

/// What the set-up made: the sponsor's token and one agent per AEGIS target, so
/// each target's audit records can be read back separately.
struct Setup {
    token: String,
    execute: (String, String),
    gateway: (String, String),
}

const SECRET: &str = "bench-mock";
const CONNECTION: &str = "benchmock";

async fn call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    let mut rb = client.post(url).json(&body);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    let resp = rb.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("POST {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("POST {url}: {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("POST {url}: bad JSON: {e}"))
}

fn field(v: &Value, pointer: &str) -> Result<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("no {pointer} in {v}"))
}

async fn setup(client: &reqwest::Client, base: &str, mock: &str) -> Result<Setup, String> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("bench-{run}@example.com");
    let r = call(
        client,
        &format!("{base}/api/auth/register"),
        None,
        json!({"email": email, "password": format!("bench {run} horse"), "name": "aegis bench"}),
    )
    .await?;
    let token = field(&r, "/access_token")?;
    let mut agents = Vec::new();
    for target in ["execute", "gateway"] {
        let r = call(
            client,
            &format!("{base}/api/agents"),
            Some(&token),
            json!({"name": format!("bench-{target}-{}", &run[..8]), "policy": "permissive",
                   "daily_limit_micros": 1_000_000_000_000i64}),
        )
        .await?;
        agents.push((field(&r, "/agent/id")?, field(&r, "/api_key")?));
    }
    call(
        client,
        &format!("{base}/api/secrets"),
        Some(&token),
        json!({"name": SECRET, "value": format!("bench-secret-{run}"), "allowed_hosts": ["http://127.0.0.1:*"],
               "inject": {"header": "authorization", "format": "Bearer {secret}"},
               "agents": [agents[0].0, agents[1].0]}),
    )
    .await?;
    call(
        client,
        &format!("{base}/api/connections"),
        Some(&token),
        json!({"name": CONNECTION, "base_url": format!("{mock}/ok"), "secret": SECRET}),
    )
    .await?;
    let gateway = agents.pop().unwrap_or_default();
    let execute = agents.pop().unwrap_or_default();
    Ok(Setup { token, execute, gateway })
}

fn targets(base: &str, mock: &str, s: &Setup) -> Vec<Target> {
    let execute_body = json!({"method": "GET", "url": format!("{mock}/ok/v1/items"), "secret": SECRET});
    vec![
        Target {
            name: "direct".into(),
            method: Method::GET,
            url: format!("{mock}/ok/v1/items"),
            bearer: None,
            body: None,
        },
        Target {
            name: "execute".into(),
            method: Method::POST,
            url: format!("{base}/api/proxy/execute"),
            bearer: Some(s.execute.1.clone()),
            body: Some(execute_body.to_string().into()),
        },
        Target {
            name: "gateway".into(),
            method: Method::GET,
            url: format!("{base}/api/gw/{CONNECTION}/v1/items"),
            bearer: Some(s.gateway.1.clone()),
            body: None,
        },
    ]
}

/// Reads the agent's `proxy.outcome` records back (newest first, at most `cap`).
async fn stage_table(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    agent: &str,
    target: &str,
    cap: usize,
) -> Result<StageTable, String> {
    let mut acc = StageAccumulator::default();
    let (mut cursor, mut read) = (None::<String>, 0usize);
    loop {
        let mut url = format!("{base}/api/audit?agent={agent}&kind=proxy.outcome&limit=200");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = client.get(&url).bearer_auth(token).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let page: Value = resp.json().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("GET {url}: {status}: {page}"));
        }
        for item in page["items"].as_array().into_iter().flatten() {
            acc.add(item);
            read += 1;
        }
        cursor = match &page["next_cursor"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if cursor.is_none() || read >= cap {
            break;
        }
    }
    Ok(acc.finish(target))
}

fn client() -> Result<reqwest::Client, String> {
    // No proxy from the environment: every request must go straight to loopback.
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// The whole benchmark; progress goes to stderr.
pub async fn run(opts: &Options) -> Result<Report, String> {
    let mock = Mock::start().await?;
    let result = run_with_mock(opts, &mock.base).await;
    mock.stop();
    result
}

async fn run_with_mock(opts: &Options, mock: &str) -> Result<Report, String> {
    let client = client()?;
    let deployment = match &opts.target {
        Some(t) => Deployment::remote(t),
        None => Deployment::start(&Shape::main(opts), opts).await?,
    };
    let measured = measure(opts, &client, &deployment.base, mock).await;
    deployment.stop().await;
    let (targets, stages) = measured?;
    let mut report = Report {
        machine: report::Machine::describe(),
        settings: Settings {
            rates: opts.rates.clone(),
            duration_s: opts.duration.as_secs_f64(),
            warmup_s: opts.warmup.as_secs_f64(),
            concurrency: opts.concurrency,
            max_in_flight: opts.max_in_flight,
            database: match (&opts.target, &opts.database_url) {
                (Some(_), _) => "remote".into(),
                (None, Some(_)) => "postgres".into(),
                (None, None) => "sqlite".into(),
            },
            redis: opts.target.is_none() && opts.redis_url.is_some(),
            aegis: opts.target.clone().unwrap_or_else(|| "in-process".into()),
        },
        targets,
        added_latency: Vec::new(),
        throughput_ratio: Vec::new(),
        stages,
        variants: Vec::new(),
        floors: None,
        goals: Vec::new(),
    };
    report.compare();
    if opts.variants {
        if opts.target.is_some() {
            eprintln!("aegis bench: --variants needs the in-process AEGIS; skipped with --target");
        } else {
            report.variants = variants(opts, mock).await?;
            report.floors = Some(measure_floors(opts, mock).await);
            report.goals = report.compute_goals();
        }
    }
    Ok(report)
}

async fn measure(
    opts: &Options,
    client: &reqwest::Client,
    base: &str,
    mock: &str,
) -> Result<(Vec<TargetReport>, Vec<StageTable>), String> {
    let s = setup(client, base, mock).await?;
    let mut reports = Vec::new();
    for t in targets(base, mock, &s) {
        let mut fixed = Vec::new();
        for &rate in &opts.rates {
            eprintln!("aegis bench: {} at {rate} req/s", t.name);
            fixed.push(
                load::open_loop(client, &t, rate, opts.warmup, opts.duration, opts.max_in_flight).await,
            );
        }
        eprintln!("aegis bench: {} saturation with {} workers", t.name, opts.concurrency);
        let saturation = load::closed_loop(client, &t, opts.concurrency, opts.warmup, opts.saturation).await;
        reports.push(TargetReport { target: t.name, fixed, saturation });
    }
    let mut stages = Vec::new();
    for (target, (agent, _)) in [("execute", &s.execute), ("gateway", &s.gateway)] {
        stages.push(stage_table(client, base, &s.token, agent, target, 100_000).await?);
    }
    Ok((reports, stages))
}

/// One storage configuration of `--variants`.
struct Shape {
    name: String,
    description: String,
    postgres: bool,
    redis: Option<String>,
    /// The hot path through sea-orm (`AEGIS_HOT_PATH_STORE=portable`): the
    /// PostgreSQL hot path as it was before its own store.
    portable: bool,
    replicas: usize,
    /// Behind the `--db-delay-ms` forwarder.
    far: bool,
}

impl Shape {
    /// The main run's: one replica on the run's database (SQLite without a URL) and Redis.
    fn main(opts: &Options) -> Self {
        Shape {
            name: "main".into(),
            description: String::new(),
            postgres: opts.database_url.is_some(),
            redis: opts.redis_url.clone(),
            portable: false,
            replicas: 1,
            far: false,
        }
    }
}

/// The shapes this run can measure: SQLite (with Redis if given); with a
/// PostgreSQL URL, its own store and the portable one, one and two replicas
/// (behind a round-robin balancer), local and — with `--db-delay-ms` — far.
fn shapes(opts: &Options) -> Vec<Shape> {
    let sqlite = |name: &str, description: &str, redis: Option<String>| Shape {
        name: name.into(),
        description: description.into(),
        postgres: false,
        redis,
        ..Shape::main(opts)
    };
    let mut list = vec![sqlite("sqlite", "SQLite (WAL) in a temp dir, no Redis", None)];
    if opts.redis_url.is_some() {
        list.push(sqlite(
            "sqlite+redis",
            "SQLite, Redis for shared state and events",
            opts.redis_url.clone(),
        ));
    }
    if opts.database_url.is_none() {
        return list;
    }
    let with = if opts.redis_url.is_some() { "PostgreSQL and Redis" } else { "PostgreSQL, no Redis" };
    let delays: &[bool] = if opts.db_delay.is_zero() { &[false] } else { &[false, true] };
    for &far in delays {
        for portable in [true, false] {
            for replicas in [1, 2] {
                let suffix = |on: bool, text: &str| if on { text.to_owned() } else { String::new() };
                let name = format!(
                    "pg{}{}{}",
                    suffix(portable, "-orm"),
                    suffix(replicas > 1, "x2"),
                    suffix(far, "-far")
                );
                let description = format!(
                    "{with}; {} store; {replicas} replica{}{}",
                    if portable { "sea-orm (portable)" } else { "PostgreSQL's own" },
                    suffix(replicas > 1, "s behind a round-robin balancer"),
                    suffix(far, &format!("; database {} ms away (round trip)", opts.db_delay.as_millis())),
                );
                list.push(Shape { name, description, portable, replicas, far, ..Shape::main(opts) });
            }
        }
    }
    list
}

/// A shape running: its replicas, the relays in front of them and of the
/// database, and the throw-away database.
struct Deployment {
    base: String,
    instances: Vec<Instance>,
    _relays: Vec<relay::Relay>,
    pg: Option<(String, String)>,
}

impl Deployment {
    /// An AEGIS running elsewhere (`--target`): nothing to start or stop.
    fn remote(base: &str) -> Self {
        Deployment {
            base: base.trim_end_matches('/').to_owned(),
            instances: Vec::new(),
            _relays: Vec::new(),
            pg: None,
        }
    }

    async fn start(shape: &Shape, opts: &Options) -> Result<Self, String> {
        let mut d = Deployment { base: String::new(), instances: Vec::new(), _relays: Vec::new(), pg: None };
        match d.launch(shape, opts).await {
            Ok(()) => Ok(d),
            Err(e) => {
                d.stop().await;
                Err(e)
            }
        }
    }

    async fn launch(&mut self, shape: &Shape, opts: &Options) -> Result<(), String> {
        let mut url = None;
        if shape.postgres {
            let admin = opts.database_url.as_deref().ok_or("no --database-url")?;
            let name = format!("aegis_bench_{}", uuid::Uuid::new_v4().simple());
            let created = create_database(admin, &name).await?;
            self.pg = Some((admin.to_owned(), name));
            url = Some(if shape.far {
                let (far, forwarder) = behind_delay(&created, opts.db_delay).await?;
                self._relays.push(forwarder);
                far
            } else {
                created
            });
        }
        // Replicas share their keys, as a deployment's must (a secret sealed by one
        // opens on the other, a session signed by one is valid on the other); one
        // replica makes its own on first run, as AEGIS does.
        let key = || format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        let (jwt, master, signing) = (key(), key(), key());
        let mut extra: Vec<(&'static str, &str)> = Vec::new();
        if shape.replicas > 1 {
            extra.extend([
                ("AEGIS_JWT_SECRET", jwt.as_str()),
                ("AEGIS_MASTER_KEY", master.as_str()),
                ("AEGIS_AUDIT_SIGNING_KEY", signing.as_str()),
            ]);
        }
        if shape.portable {
            extra.push(("AEGIS_HOT_PATH_STORE", "portable"));
        }
        for _ in 0..shape.replicas {
            self.instances.push(Instance::launch(url.as_deref(), shape.redis.as_deref(), &extra).await?);
        }
        self.base = if shape.replicas > 1 {
            let addrs = self.instances.iter().filter_map(|i| i.running.as_ref().map(|r| r.addr)).collect();
            let balancer = relay::Relay::start(addrs, Duration::ZERO).await.map_err(|e| e.to_string())?;
            let base = format!("http://{}", balancer.addr);
            self._relays.push(balancer);
            base
        } else {
            self.instances.first().map(|i| i.base.clone()).ok_or("no replica")?
        };
        Ok(())
    }

    async fn stop(self) {
        for instance in self.instances {
            instance.stop().await;
        }
        drop(self._relays);
        if let Some((admin, name)) = self.pg {
            drop_database(&admin, &name).await;
        }
    }
}

/// `url` rewritten to reach its server through a forwarder adding `round_trip`
/// (the forwarder runs while the returned relay lives).
async fn behind_delay(url: &str, round_trip: Duration) -> Result<(String, relay::Relay), String> {
    let mut parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(5432);
    let server = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("PostgreSQL host does not resolve")?;
    let forwarder = relay::Relay::start(vec![server], round_trip / 2).await.map_err(|e| e.to_string())?;
    parsed.set_host(Some("127.0.0.1")).map_err(|e| e.to_string())?;
    parsed.set_port(Some(forwarder.addr.port())).map_err(|_| "cannot set port")?;
    Ok((parsed.to_string(), forwarder))
}

/// The execute target under each storage configuration, one row each.
async fn variants(opts: &Options, mock: &str) -> Result<Vec<VariantRow>, String> {
    let mut rows = Vec::new();
    for shape in shapes(opts) {
        eprintln!("aegis bench: variant {}", shape.name);
        // A client of its own: dropping it closes the connections this row opened
        // (thousands when a slow row queues), so no row inherits another's sockets.
        let client = &client()?;
        let deployment = match Deployment::start(&shape, opts).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("aegis bench: variant {}: not measured: {e}", shape.name);
                continue;
            }
        };
        let base = deployment.base.clone();
        let row = async {
            let s = setup(client, &base, mock).await?;
            let t = targets(&base, mock, &s).swap_remove(1);
            let fixed = load::open_loop(
                client,
                &t,
                opts.variant_rate,
                opts.warmup,
                opts.duration,
                opts.max_in_flight,
            )
            .await;
            let saturation =
                load::closed_loop(client, &t, opts.concurrency, opts.warmup, opts.saturation).await;
            // A row that fell far behind may still be working off its queue: its
            // stage times are then unreadable, which costs the row its policy share
            // only, not the run.
            let policy_share_pct =
                match stage_table(client, &base, &s.token, &s.execute.0, "execute", 100_000).await {
                    Ok(table) => table.stages.iter().find(|r| r.stage == "policy").map(|r| r.share_pct),
                    Err(e) => {
                        eprintln!("aegis bench: variant {}: stage times unread: {e}", shape.name);
                        None
                    }
                };
            Ok::<_, String>(VariantRow {
                variant: shape.name.clone(),
                description: format!("{}; open loop at {} req/s", shape.description, opts.variant_rate),
                fixed,
                saturation,
                policy_share_pct,
            })
        }
        .await;
        deployment.stop().await;
        match row {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("aegis bench: variant {}: not measured: {e}", shape.name),
        }
    }
    Ok(rows)
}

/// Saturation of a bare nginx `proxy_pass` to the mock, with the same closed
/// loop as every saturation row.
async fn nginx_floor(opts: &Options, binary: &std::path::Path, mock: &str) -> Result<f64, String> {
    let upstream: SocketAddr =
        mock.trim_start_matches("http://").parse().map_err(|e| format!("mock address {mock}: {e}"))?;
    let proxy = nginx::Proxy::start(binary, upstream).await?;
    eprintln!("aegis bench: floor: a bare nginx proxy_pass, saturation with {} workers", opts.concurrency);
    let target = Target {
        name: "nginx".into(),
        method: Method::GET,
        url: format!("{}/ok/v1/items", proxy.base),
        bearer: None,
        body: None,
    };
    let run = load::closed_loop(&client()?, &target, opts.concurrency, opts.warmup, opts.saturation).await;
    drop(proxy);
    if run.ok == 0 {
        return Err(format!("no request through nginx succeeded: {:?}", run.error_samples));
    }
    Ok(run.throughput_rps)
}

/// The floors of this run ([`floors`]).
async fn measure_floors(opts: &Options, mock: &str) -> floors::Floors {
    let mut out = floors::Floors::default();
    match nginx::binary() {
        Some(binary) => match nginx_floor(opts, &binary, mock).await {
            Ok(rps) => out.nginx_proxy_rps = Some(rps),
            Err(e) => eprintln!("aegis bench: nginx floor: {e}"),
        },
        None => eprintln!("aegis bench: no nginx (AEGIS_BENCH_NGINX, PATH, /usr/sbin): goal 4 unmeasured"),
    }
    let dir = std::env::temp_dir().join(format!("aegis-bench-floor-{}", uuid::Uuid::new_v4().simple()));
    if std::fs::create_dir_all(&dir).is_ok() {
        eprintln!("aegis bench: floor: bare durable SQLite transactions");
        match floors::sqlite_txn(&dir, 500) {
            Ok((p50, p99)) => (out.sqlite_txn_p50_us, out.sqlite_txn_p99_us) = (Some(p50), Some(p99)),
            Err(e) => eprintln!("aegis bench: SQLite floor: {e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(admin) = opts.database_url.as_deref() {
        let name = format!("aegis_bench_{}", uuid::Uuid::new_v4().simple());
        match create_database(admin, &name).await {
            Ok(url) => {
                eprintln!("aegis bench: floor: durable PostgreSQL transactions (32 clients)");
                match floors::postgres_tps(&url, 32, opts.duration).await {
                    Ok(tps) => out.postgres_tps = Some(tps),
                    Err(e) => eprintln!("aegis bench: PostgreSQL floor: {e}"),
                }
                if !opts.db_delay.is_zero() {
                    match behind_delay(&url, opts.db_delay).await {
                        Ok((far, _forwarder)) => match floors::postgres_tps(&far, 32, opts.duration).await {
                            Ok(tps) => out.postgres_delayed_tps = Some(tps),
                            Err(e) => eprintln!("aegis bench: PostgreSQL floor (far): {e}"),
                        },
                        Err(e) => eprintln!("aegis bench: forwarder: {e}"),
                    }
                }
                drop_database(admin, &name).await;
            }
            Err(e) => eprintln!("aegis bench: PostgreSQL floor: {e}"),
        }
    }
    out
}
