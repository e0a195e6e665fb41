//! `aegis`: the AEGIS server and its command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use server::audit::{AuditLog, Checkpoint};
use server::config::{Config, LogFormat};

#[derive(Parser)]
#[command(name = "aegis", version, about = "AEGIS: a deterministic execution proxy for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: dashboard and API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Verify the audit log: every record's hash and link, and every signed
    /// checkpoint. Exits 1 naming the first bad seq if anything is wrong.
    VerifyAudit {
        /// Also verify against a checkpoint file (from `aegis audit checkpoint`),
        /// trusting the public key it pins.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
    /// Re-evaluate the decision recorded at audit seq N with the policy version
    /// and input it cites; exits 1 if the verdict differs.
    Replay {
        #[arg(long)]
        seq: i64,
    },
    /// Rotate the vault's master key: a fresh key becomes current, every vault secret
    /// is re-sealed under it, the old key is kept as a retired key (for short-lived
    /// sealed data). Stop AEGIS first; start it again afterwards.
    Rekey,
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Measure the latency and throughput AEGIS adds, against an in-process mock
    /// upstream (and an in-process AEGIS unless --target is given).
    Bench(BenchArgs),
    /// Start AEGIS with a demo sponsor (sign-in printed), agents, a mock upstream and
    /// a simulated agent workload, so the dashboard comes alive. Ctrl-C stops it.
    ///
    /// The demo always uses SQLite in its own data directory, never ./data:
    /// DATABASE_URL and AEGIS_DATA_DIR are ignored (use --database-url to override).
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// The demo's data directory (keys, SQLite database, the demo sponsor's sign-in).
    #[arg(long, default_value = "./data-demo")]
    data_dir: PathBuf,
    /// Delete the demo's data directory first and start over (refused for a
    /// directory the demo did not create).
    #[arg(long)]
    fresh: bool,
    /// Listen address [default: LEPTOS_SITE_ADDR, else 127.0.0.1:3000].
    #[arg(long)]
    addr: Option<std::net::SocketAddr>,
    /// Use this database instead of SQLite in the data directory.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Fixed arrival rates to run, requests per second.
    #[arg(long, value_delimiter = ',', default_value = "200,1000,2000")]
    rates: Vec<f64>,
    /// Measured time of each run (after the warm-up), e.g. 5s or 500ms.
    #[arg(long, default_value = "5s", value_parser = server::bench::parse_duration)]
    duration: std::time::Duration,
    #[arg(long, default_value = "1s", value_parser = server::bench::parse_duration)]
    warmup: std::time::Duration,
    /// Workers of the saturation (closed-loop) run.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured time of the saturation run (default: --duration).
    #[arg(long, value_parser = server::bench::parse_duration)]
    saturation: Option<std::time::Duration>,
    /// Requests in flight at most; past it, scheduled requests are dropped and counted.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Run AEGIS on PostgreSQL: a throw-away database is created on this server and dropped.
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long)]
    redis_url: Option<String>,
    /// Bench an already running AEGIS (http://host:port); it must allow egress to 127.0.0.1.
    #[arg(long)]
    target: Option<String>,
    /// Also run the execute target under each storage configuration available.
    #[arg(long)]
    variants: bool,
    #[arg(long, default_value_t = 1000.0)]
    variant_rate: f64,
    /// With --variants and --database-url: also run the PostgreSQL rows with this
    /// round trip (ms) added between AEGIS and the database (a delaying forwarder).
    #[arg(long, default_value_t = 0)]
    db_delay_ms: u64,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the chain, sign a checkpoint of its head (unless one exists for it)
    /// and write it to FILE, to keep outside the database.
    Checkpoint {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Exit codes of the audit commands.
const EXIT_BROKEN: u8 = 1;
const EXIT_ERROR: u8 = 2;

/// `to_stderr`: for the commands whose standard output is their result (`--json`
/// documents, reports), so a log line never breaks what a program reads.
fn init_logging(format: LogFormat, default_filter: &str, to_stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let writer =
        if to_stderr { BoxMakeWriter::new(std::io::stderr) } else { BoxMakeWriter::new(std::io::stdout) };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aegis: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // The audit commands print their result; logs stay quiet unless asked for.
    let default_filter = match command {
        Command::Serve | Command::Migrate | Command::Rekey => "info,sqlx=warn,sea_orm=warn",
        Command::VerifyAudit { .. } | Command::Audit { .. } | Command::Replay { .. } => "warn",
        Command::Bench(_) | Command::Demo(_) => "warn,sqlx=error,sea_orm=error",
    };
    let prints_result = !matches!(command, Command::Serve | Command::Migrate | Command::Rekey);
    init_logging(config.log_format, default_filter, prints_result);
    let result = match command {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::VerifyAudit { checkpoint } => {
            return verify_audit(config, checkpoint.as_deref()).await;
        }
        Command::Replay { seq } => return replay(config, seq).await,
        Command::Rekey => return rekey(config).await,
        Command::Bench(args) => return bench(args).await,
        Command::Demo(args) => return demo(config, args).await,
        Command::Audit { command: AuditCommand::Checkpoint { out } } => {
            return audit_checkpoint(config, &out).await;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(args: BenchArgs) -> ExitCode {
    let opts = server::bench::Options {
        rates: args.rates,
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
        saturation: args.saturation.unwrap_or(args.duration),
        max_in_flight: args.max_in_flight,
        database_url: args.database_url,
        redis_url: args.redis_url,
        target: args.target,
        variants: args.variants,
        variant_rate: args.variant_rate,
        db_delay: std::time::Duration::from_millis(args.db_delay_ms),
    };
    match server::bench::run(&opts).await {
        Ok(report) if args.json => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", server::bench::report::render(&report));
            ExitCode::SUCCESS
        }
        Err(e) => error(format!("bench: {e}")),
    }
}

async fn demo(config: Config, args: DemoArgs) -> ExitCode {
    let opts = server::demo::Options {
        data_dir: args.data_dir,
        fresh: args.fresh,
        addr: args.addr,
        database_url: args.database_url,
    };
    match server::demo::run(config, opts).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => error(format!("demo: {e}")),
    }
}

async fn serve(config: Config) -> Result<(), server::StartError> {
    let running = server::start(config, None).await?;
    tracing::info!("AEGIS listening on http://{}", running.addr);
    let _ = running.task.await;
    Ok(())
}

async fn migrate(config: Config) -> Result<(), server::StartError> {
    let data = server::data_dir::DataDir::open(&config.data_dir)?;
    let url = server::db::resolve_url(config.database_url.as_deref(), data.path());
    let error = |source| server::StartError::Database { url: server::config::redact_url(&url), source };
    let db = server::db::connect(&url).await.map_err(error)?;
    server::db::migrate(&db).await.map_err(error)?;
    tracing::info!("migrations applied");
    Ok(())
}

/// The audit log of the configured database, with the configured signing key.
/// Does not migrate: the commands only read (or add a checkpoint to) a database
/// AEGIS has already set up.
async fn open_audit(config: &Config) -> Result<AuditLog, server::StartError> {
    let data = server::data_dir::DataDir::open(&config.data_dir)?;
    let signer = server::audit::signer_from(&data, config.audit_signing_key.as_deref())?;
    let url = server::db::resolve_url(config.database_url.as_deref(), data.path());
    let db = server::db::connect(&url)
        .await
        .map_err(|source| server::StartError::Database { url: server::config::redact_url(&url), source })?;
    Ok(AuditLog::new(db, signer, config.audit_checkpoint_every))
}

async fn rekey(config: Config) -> ExitCode {
    match server::rekey::rekey(&config).await {
        Ok(report) => {
            println!(
                "master key {} rotated: key {} -> {}; {} vault secrets and {} webhook signing keys re-sealed",
                report.master_key_file.display(),
                report.old_key_id,
                report.new_key_id,
                report.resealed,
                report.channel_keys
            );
            if report.unreadable.is_empty() {
                ExitCode::SUCCESS
            } else {
                for id in &report.unreadable {
                    eprintln!("aegis: sealed row {id} opens under no known key (left as it is)");
                }
                ExitCode::from(EXIT_BROKEN)
            }
        }
        Err(e) => error(format!("rekey: {e}")),
    }
}

fn error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("aegis: {message}");
    ExitCode::from(EXIT_ERROR)
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(16)]
}

async fn verify_audit(config: Config, checkpoint: Option<&Path>) -> ExitCode {
    let pinned = match checkpoint.map(Checkpoint::import).transpose() {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let audit = match open_audit(&config).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let report = match audit.verify(pinned.as_ref()).await {
        Ok(r) => r,
        Err(e) => return error(format!("audit verification failed to run: {}", e.message)),
    };
    if !report.valid {
        let seq = report.first_bad_seq.map_or_else(|| "-".to_owned(), |s| s.to_string());
        eprintln!(
            "aegis: audit log BROKEN at seq {seq}: {} ({} records verified before it)",
            report.reason.as_deref().unwrap_or("unknown"),
            report.checked
        );
        return ExitCode::from(EXIT_BROKEN);
    }
    let anchor = match &report.checkpoint {
        Some(cp) => {
            format!("checkpoint seq {} ({}, key {}) verified", cp.seq, cp.source, short(&cp.public_key))
        }
        None => "no signed checkpoint yet".to_owned(),
    };
    println!(
        "audit log intact: {} records, head {}; {anchor}",
        report.checked,
        short(report.head_hash.as_deref().unwrap_or(server::audit::GENESIS_HASH))
    );
    ExitCode::SUCCESS
}

async fn audit_checkpoint(config: Config, out: &Path) -> ExitCode {
    let audit = match open_audit(&config).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let cp = match audit.checkpoint().await {
        Ok(cp) => cp,
        Err(e) if e.code == "audit_chain_broken" => {
            eprintln!("aegis: {}", e.message);
            return ExitCode::from(EXIT_BROKEN);
        }
        Err(e) => return error(format!("cannot sign a checkpoint: {}", e.message)),
    };
    if let Err(e) = cp.export(out) {
        return error(format!("{}: {e}", out.display()));
    }
    println!(
        "checkpoint seq {} head {} (key {}) written to {}",
        cp.seq,
        short(&cp.head_hash),
        short(&cp.public_key),
        out.display()
    );
    ExitCode::SUCCESS
}

async fn replay(config: Config, seq: i64) -> ExitCode {
    let data = match server::data_dir::DataDir::open(&config.data_dir) {
        Ok(d) => d,
        Err(e) => return error(e),
    };
    let url = server::db::resolve_url(config.database_url.as_deref(), data.path());
    let db = match server::db::connect(&url).await {
        Ok(db) => db,
        Err(e) => return error(format!("database {}: {e}", server::config::redact_url(&url))),
    };
    let policies = server::policies::PolicyService::new(
        db.clone(),
        std::sync::Arc::new(server::store::orm::OrmStore::read_only(db.clone())),
    );
    let engine = std::sync::Arc::new(server::policies::engine::PolicyEngine::new());
    match server::policies::replay::replay(&db, &policies, &engine, seq, None).await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            if report.matches {
                ExitCode::SUCCESS
            } else {
                eprintln!("aegis: replay of seq {seq} does NOT match the recorded decision");
                ExitCode::from(EXIT_BROKEN)
            }
        }
        Err(e) => error(format!("cannot replay seq {seq}: {}", e.message)),
    }
}
