//! `aegis`: the AEGIS server and its command line.

use clap::{Parser, Subcommand};
use server::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "aegis",
    version,
    about = "AEGIS: a deterministic execution proxy for AI agents"
)]
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
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
    init_logging(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aegis: {e}");
            std::process::ExitCode::FAILURE
        }
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
    let error = |source| server::StartError::Database {
        url: server::config::redact_url(&url),
        source,
    };
    let db = server::db::connect(&url).await.map_err(error)?;
    server::db::migrate(&db).await.map_err(error)?;
    tracing::info!("migrations applied");
    Ok(())
}
