//! The AEGIS server: configuration, storage, domain services and the HTTP surface.
//! `main.rs` is only the command line; tests start servers through [`start`].

pub mod actor;
pub mod agents;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod backend;
pub mod bench;
pub mod call;
pub mod channels;
pub mod config;
pub mod connections;
pub mod data_dir;
pub mod db;
pub mod demo;
pub mod digest;
pub mod events;
pub mod http;
pub mod mail;
pub mod mcp;
pub mod metering;
pub mod metrics;
pub mod names;
pub mod nodelay;
pub mod orgs;
pub mod overview;
pub mod paging;
pub mod playground;
pub mod policies;
pub mod proxy;
pub mod rate_limits;
pub mod redis_link;
pub mod rekey;
pub mod secrets;
pub mod spend;
pub mod store;
pub mod trust;
pub mod usage;
pub mod wallets;

use std::net::SocketAddr;
use std::sync::Arc;

use leptos::config::{Env, LeptosOptions};
use tokio::net::TcpListener;

use crate::auth::AuthService;
use crate::auth::throttle::{LoginThrottle, SharedCounter};
use crate::auth::tokens::AccessTokens;
use crate::backend::Services;
use crate::config::Config;
use crate::data_dir::DataDir;

/// Everything that can stop AEGIS from starting, each with a message a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Keys(#[from] data_dir::KeyError),
    #[error("database {url}: {source}")]
    Database { url: String, source: sea_orm::DbErr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("start-up failed: {0}")]
    Other(String),
}

/// Opens storage, runs migrations, seeds built-in policies and builds the services.
pub async fn build_services(config: Config) -> Result<Arc<Services>, StartError> {
    let data = DataDir::open(&config.data_dir)?;
    let jwt_key = data.key("jwt.key", 32, "AEGIS_JWT_SECRET", config.jwt_secret.as_deref())?;
    // Encrypts vault secrets at rest; kept outside the data directory by default.
    let (master_key, retired_keys) = data.master_keys(config.master_key_settings())?;
    // Signs audit checkpoints; its public key verifies them.
    let audit_signer = audit::signer_from(&data, config.audit_signing_key.as_deref())?;

    let url = db::resolve_url(config.database_url.as_deref(), data.path());
    let db_error = |source| StartError::Database { url: config::redact_url(&url), source };
    let db = db::connect_with(&url, config.db_max_connections).await.map_err(db_error)?;
    db::migrate(&db).await.map_err(db_error)?;

    let throttle = LoginThrottle::new(
        Arc::new(SharedCounter::new(config.redis_url.as_deref())),
        config.login_max_failures,
        config.login_max_per_ip,
        config.login_window,
    );
    let tokens = AccessTokens::new(&jwt_key.0, config.access_token_ttl);
    let auth = AuthService::new(db.clone(), tokens, throttle, config.refresh_token_ttl);
    let audit = audit::AuditLog::new(db.clone(), audit_signer, config.audit_checkpoint_every);
    let vault = secrets::vault::Vault::new(&master_key.0)
        .and_then(|v| v.with_retired(&retired_keys.iter().map(|k| k.0.clone()).collect::<Vec<_>>()))
        .map_err(|e| StartError::Other(e.to_string()))?;
    let services = Services::new(config, db, auth, audit, vault, http::proxy::render);
    services.policies.seed_builtins().await.map_err(|e| StartError::Other(e.message))?;
    Ok(services)
}

/// Leptos settings: cargo-leptos passes them as `LEPTOS_*` variables; a plain
/// `aegis` binary falls back to the repository layout.
pub fn leptos_options(config: &Config) -> LeptosOptions {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    LeptosOptions::builder()
        .output_name("aegis")
        .site_root(var("LEPTOS_SITE_ROOT", "target/site"))
        .site_pkg_dir(var("LEPTOS_SITE_PKG_DIR", "pkg"))
        .env(if var("LEPTOS_ENV", "DEV").eq_ignore_ascii_case("PROD") { Env::PROD } else { Env::DEV })
        .site_addr(config.site_addr)
        .reload_port(var("LEPTOS_RELOAD_PORT", "3001").parse().unwrap_or(3001))
        .build()
}

pub struct Running {
    pub addr: SocketAddr,
    pub services: Arc<Services>,
    pub task: tokio::task::JoinHandle<()>,
    /// The background upkeep; it stops with `task` (when it ends or is aborted).
    pub janitor: tokio::task::AbortHandle,
}

/// Aborts a task when dropped: ties a helper task's life to the task holding it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds AEGIS and serves it on `listener` (or on the configured address).
pub async fn start(config: Config, listener: Option<TcpListener>) -> Result<Running, StartError> {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(config.site_addr)
            .await
            .map_err(|source| StartError::Listen { addr: config.site_addr, source })?,
    };
    let addr = listener.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
    let leptos_options = leptos_options(&config);
    let services = build_services(config).await?;
    let app = http::router(http::AppState { leptos_options, services: services.clone() });
    let janitor = spawn_janitor(services.clone()).abort_handle();
    let janitor_guard = AbortOnDrop(janitor.clone());
    // Notification channels: the outbox writer (this replica's events into delivery
    // rows) and the deliverer; they stop with serving, as the janitor does.
    let deliverer = services.channels.deliverer.clone();
    let channel_tasks = [
        services.events.tap().map(|rx| {
            tokio::spawn(channels::outbox::run(rx, services.db.clone(), deliverer.clone())).abort_handle()
        }),
        Some(tokio::spawn(deliverer.run()).abort_handle()),
    ];
    let channel_guards: Vec<AbortOnDrop> = channel_tasks.into_iter().flatten().map(AbortOnDrop).collect();
    let audit = services.audit.clone();
    let in_flight = services.proxy.in_flight.clone();
    let grace = services.config.shutdown_grace;
    let task = tokio::spawn(async move {
        // Upkeep runs exactly as long as serving does (an in-process instance —
        // the bench's, a test's — may be dropped while its runtime lives on).
        let _janitor = janitor_guard;
        let _channels = channel_guards;
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        // On a signal the listener closes at once; in-flight requests get `grace` to finish.
        let (stopping, mut stop) = tokio::sync::watch::channel(false);
        let signal = async move {
            shutdown_signal().await;
            let _ = stopping.send(true);
        };
        let serve = axum::serve(listener, service).with_graceful_shutdown(signal);
        let deadline = async move {
            let _ = stop.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            served = serve.into_future() => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "server stopped with an error");
                }
            }
            _ = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests outlived the shutdown grace; dropped");
            }
        }
        // Calls whose callers hung up are not connections any more; they finish too,
        // so each performed call still gets its settlement and outcome record.
        in_flight.close();
        if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
            tracing::warn!(calls = in_flight.len(), "proxy calls outlived the shutdown grace; dropped");
        }
        // A signed checkpoint of the final head, so truncation after shutdown shows.
        match tokio::time::timeout(std::time::Duration::from_secs(30), audit.checkpoint()).await {
            Ok(Ok(cp)) => tracing::info!(seq = cp.seq, "final audit checkpoint signed"),
            Ok(Err(e)) => tracing::error!(error = %e.message, "final audit checkpoint failed"),
            Err(_) => tracing::error!("final audit checkpoint timed out"),
        }
    });
    Ok(Running { addr, services, task, janitor })
}

/// Background upkeep, every `AEGIS_JANITOR_INTERVAL_SECS` (5 s): expires approvals
/// nobody decided in time (so agents and dashboards learn promptly), and releases
/// budget holds whose calls never reported back (a crash mid-call) once they pass
/// their expiry, so a dead request cannot block an agent's wallet for ever, and
/// tells the agents of approved calls interrupted that way.
fn spawn_janitor(services: Arc<Services>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(services.config.janitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = services.approvals.expire_due(None).await {
                tracing::error!(error = %e.message, "could not expire approvals");
            }
            match services.wallets.release_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(released = n, "released expired budget holds"),
                Err(e) => tracing::error!(error = %e.message, "could not release expired budget holds"),
            }
            if let Err(e) = services
                .approvals
                .close_interrupted(services.config.reservation_ttl, services.proxy.render)
                .await
            {
                tracing::error!(error = %e.message, "could not close interrupted approved calls");
            }
            // Settled calls into the usage rollups (the dashboard's spend charts).
            if let Err(e) = services.usage.catch_up().await {
                tracing::error!(error = %e.message, "could not fold usage");
            }
            // Stored answers past their retention (idempotency 24 h, approval outcomes 7 days).
            if let Err(e) = services.prune_stored_answers().await {
                tracing::error!(error = %e.message, "could not prune stored answers");
            }
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}
