//! `aegis demo`: a living dashboard in one command (issue #5).
//!
//! Starts the normal server (the same [`crate::start`] as `serve`) on its own data
//! directory and SQLite database, the bench's mock upstream on loopback (allowed as
//! egress for this process only), sets up a demo sponsor with agents, a policy, a
//! vault secret and a gateway connection through the domain services, prints the
//! sign-in details, and drives a small scripted agent workload ([`plan`]) over real
//! HTTP until Ctrl-C.

pub mod plan;
mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use app::backend::Backend;
use app::error::AppError;
use app::model::*;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::Services;
use crate::bench::Mock;
use crate::config::Config;
use plan::Role;

pub struct Options {
    pub data_dir: PathBuf,
    /// Wipe `data_dir` first (only a directory the demo made).
    pub fresh: bool,
    /// Where to listen; the configured `LEPTOS_SITE_ADDR` when absent.
    pub addr: Option<SocketAddr>,
    /// A database instead of SQLite in `data_dir`.
    pub database_url: Option<String>,
}

/// The sponsor's sign-in, kept in the data directory so a restart reuses it.
#[derive(Serialize, Deserialize)]
struct Sponsor {
    email: String,
    password: String,
}

/// Marks a data directory as the demo's, and holds its sponsor.
const STATE_FILE: &str = "demo.json";
const EMAIL: &str = "demo@example.com";
/// Names of what the set-up creates.
const POLICY: &str = "read-only";
const SECRET: &str = "mock-api-key";
/// The demo's mock upstream: plain http on loopback, on a new port each run.
const DEMO_SECRET_HOSTS: &str = "http://127.0.0.1:*";
const CONNECTION: &str = "mock";

/// Allows reads only; every write is denied by policy.
const READ_ONLY_POLICY: &str = r#"# Demo: reads only.
package aegis

import rego.v1

default decision := "deny"

decision := "allow" if input.action.method in {"GET", "HEAD"}

reasons contains "read-only policy: only GET and HEAD are allowed" if not input.action.method in {"GET", "HEAD"}
"#;

/// The agent the demo makes for `role`.
fn agent_spec(role: Role) -> NewAgent {
    let (description, policy, daily, monthly) = match role {
        Role::Researcher => (
            "Reads papers through the mock API, in execute and gateway mode. Read-only policy.",
            POLICY,
            50_000_000,
            500_000_000,
        ),
        Role::Writer => {
            ("Drafts reports. Under the default policy its writes wait for your approval.", "default", 0, 0)
        }
        Role::Shopper => (
            "Buys quotes at 0.30 each on a 1.00 daily budget: refused once it is spent.",
            "permissive",
            1_000_000,
            5_000_000,
        ),
        Role::Rogue => (
            "Misbehaves: probes the cloud metadata endpoint and storms the API with deletes until its breaker trips.",
            POLICY,
            10_000_000,
            0,
        ),
    };
    NewAgent {
        name: role.agent_name().to_owned(),
        description: Some(description.to_owned()),
        policy: Some(policy.to_owned()),
        daily_limit_micros: Some(daily),
        monthly_limit_micros: Some(monthly),
        tags: Some(vec!["demo".to_owned()]),
    }
}

/// Everything the workload needs: the AEGIS and mock addresses and each agent's key.
pub struct Cast {
    pub aegis: String,
    pub mock: String,
    pub keys: Vec<(Role, String)>,
}

/// A password that meets the policy: 20 hex digits plus upper-case and a symbol.
fn generate_password() -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    format!("Demo-{}", hex::encode(bytes))
}

/// Empties `dir` for `--fresh`, refusing a directory the demo did not make (say,
/// the real `./data` given by mistake).
fn wipe(dir: &Path) -> Result<(), String> {
    let Ok(mut entries) = std::fs::read_dir(dir) else {
        return Ok(()); // nothing there yet
    };
    if entries.next().is_some() && !dir.join(STATE_FILE).exists() {
        return Err(format!(
            "--fresh: {} is not a demo data directory (no {STATE_FILE}); refusing to delete it",
            dir.display()
        ));
    }
    std::fs::remove_dir_all(dir).map_err(|e| format!("--fresh: cannot delete {}: {e}", dir.display()))
}

/// The demo's configuration: the operator's, with the demo's data directory,
/// address and database, and egress allowed to exactly the mock's address.
fn demo_config(mut config: Config, opts: &Options, mock: SocketAddr) -> Result<Config, String> {
    config.data_dir = opts.data_dir.clone();
    config.database_url = opts.database_url.clone();
    if let Some(addr) = opts.addr {
        config.site_addr = addr;
    }
    let mock_rule = crate::proxy::egress::parse_allow_list(&mock.to_string())?;
    config.egress.allow.extend(mock_rule);
    Ok(config)
}

fn failed(what: &str) -> impl Fn(AppError) -> String + '_ {
    move |e| format!("{what}: {} ({})", e.message, e.code)
}

/// Keeps the sponsor's sign-in for the next run, readable by its owner only (like the keys).
fn save(path: &Path, sponsor: &Sponsor) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(serde_json::to_string_pretty(sponsor).unwrap_or_default().as_bytes())
}

/// Signs in as the demo sponsor, registering it on first run.
async fn sponsor(services: &Services, dir: &Path) -> Result<(Sponsor, SessionUser), String> {
    let client = ClientMeta { ip: None, user_agent: Some("aegis demo".into()) };
    let state = dir.join(STATE_FILE);
    let (sponsor, auth) = match std::fs::read_to_string(&state) {
        Ok(text) => {
            let sponsor: Sponsor =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", state.display()))?;
            let credentials =
                Credentials { email: sponsor.email.clone(), password: sponsor.password.clone() };
            let auth = services.login(credentials, client).await.map_err(failed("demo sign-in"))?;
            (sponsor, auth)
        }
        Err(_) => {
            let sponsor = Sponsor { email: EMAIL.to_owned(), password: generate_password() };
            let registration = Registration {
                email: sponsor.email.clone(),
                password: sponsor.password.clone(),
                name: "Demo Sponsor".to_owned(),
            };
            let auth = services.register(registration, client).await.map_err(|e| {
                format!("cannot create the demo sponsor: {} (use --fresh to start over)", e.message)
            })?;
            save(&state, &sponsor).map_err(|e| format!("{}: {e}", state.display()))?;
            (sponsor, auth)
        }
    };
    let session =
        services.sponsor_session(&auth.tokens.access_token, None).await.map_err(failed("demo session"))?;
    Ok((sponsor, session))
}

/// Creates (or, on a restart, finds) the policy, agents, secret and connection,
/// all through the same services the API uses. Existing agents get fresh keys:
/// keys are shown once and the demo keeps none on disk.
async fn setup(
    services: &Services,
    me: &SessionUser,
    mock: &str,
) -> Result<Vec<(Role, Uuid, String)>, String> {
    let policies = services.list_policies(me).await.map_err(failed("policies"))?;
    if !policies.iter().any(|p| p.name == POLICY) {
        let policy = NewPolicy {
            name: POLICY.into(),
            description: Some("Demo: GET and HEAD only".into()),
            source: READ_ONLY_POLICY.into(),
        };
        services.create_policy(me, policy).await.map_err(failed("read-only policy"))?;
    }
    let existing = services
        .list_agents(me, PageRequest { limit: Some(200), cursor: None })
        .await
        .map_err(failed("agents"))?
        .items;
    let mut agents = Vec::new();
    for role in Role::ALL {
        let (id, key) = match existing.iter().find(|a| a.name == role.agent_name()) {
            Some(agent) => {
                let rotated = services.rotate_agent_key(me, agent.id).await.map_err(failed("agent key"))?;
                (agent.id, rotated.api_key)
            }
            None => {
                let created = services.create_agent(me, agent_spec(role)).await.map_err(failed("agent"))?;
                (created.agent.id, created.api_key)
            }
        };
        agents.push((role, id, key));
    }
    let granted: Vec<Uuid> = agents.iter().map(|(_, id, _)| *id).collect();
    let secrets = services.list_secrets(me).await.map_err(failed("secrets"))?;
    match secrets.iter().find(|s| s.name == SECRET) {
        Some(secret) => {
            // Also brings a demo database from before secrets named their scheme up to date.
            let update = SecretUpdate {
                agents: Some(granted),
                allowed_hosts: Some(vec![DEMO_SECRET_HOSTS.into()]),
                ..Default::default()
            };
            services.update_secret(me, secret.id, update).await.map_err(failed("secret"))?;
        }
        None => {
            let mut value = [0u8; 16];
            rand::rng().fill_bytes(&mut value);
            let secret = NewSecret {
                name: SECRET.into(),
                value: format!("mock-{}", hex::encode(value)),
                allowed_hosts: vec![DEMO_SECRET_HOSTS.into()],
                inject: Injection::Header {
                    header: "Authorization".into(),
                    format: "Bearer {secret}".into(),
                },
                agents: granted,
            };
            services.create_secret(me, secret).await.map_err(failed("secret"))?;
        }
    }
    // The mock listens on a new port each run: replace the connection.
    for old in services.list_connections(me).await.map_err(failed("connections"))? {
        if old.name == CONNECTION {
            services.delete_connection(me, old.id).await.map_err(failed("connection"))?;
        }
    }
    let connection = NewConnection {
        pricing: None,
        rate_limits: None,
        name: CONNECTION.into(),
        base_url: format!("{mock}/ok"),
        secret: Some(SECRET.into()),
        cost_micros: Some(1_000),
        kind: None,
        tools: None,
        record_arguments: None,
    };
    services.create_connection(me, connection).await.map_err(failed("connection"))?;
    Ok(agents)
}

/// The address to show: a wildcard listen address is reached via loopback.
fn browser_url(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("http://127.0.0.1:{}", addr.port())
    } else {
        format!("http://{addr}")
    }
}

/// Runs the demo until Ctrl-C (or SIGTERM).
pub async fn run(config: Config, opts: Options) -> Result<(), String> {
    if opts.fresh {
        wipe(&opts.data_dir)?;
    }
    let mock = Mock::start().await?;
    let config = demo_config(config, &opts, mock.addr)?;
    let running = crate::start(config, None).await.map_err(|e| e.to_string())?;
    let url = browser_url(running.addr);
    let prepared = async {
        let (sponsor, me) = sponsor(&running.services, &opts.data_dir).await?;
        let agents = setup(&running.services, &me, &mock.base).await?;
        Ok::<_, String>((sponsor, agents))
    }
    .await;
    let (sponsor, agents) = match prepared {
        Ok(p) => p,
        Err(e) => {
            running.task.abort();
            mock.stop();
            return Err(e);
        }
    };
    println!();
    println!("AEGIS demo is running at {url}");
    println!("Sign in with:");
    println!("    email     {}", sponsor.email);
    println!("    password  {}", sponsor.password);
    println!();
    println!("Data: {} (its own database, never ./data).", opts.data_dir.display());
    println!("Four agents are calling a mock API on {} through AEGIS:", mock.base);
    for (role, _, _) in &agents {
        println!("    {:20} {}", role.agent_name(), agent_spec(*role).description.unwrap_or_default());
    }
    println!("Approve the report-writer's writes at {url}/approvals. Ctrl-C stops everything.");
    println!();
    use std::io::Write;
    let _ = std::io::stdout().flush();

    let cast = Cast {
        aegis: format!("http://{}", running.addr),
        mock: mock.base.clone(),
        keys: agents.into_iter().map(|(role, _, key)| (role, key)).collect(),
    };
    let driver = tokio::spawn(workload::run(cast));
    let mut server = running.task;
    // The server task stops by itself on Ctrl-C or SIGTERM (graceful shutdown);
    // the workload stops first so it does not hammer a closing listener.
    let server_done = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = &mut server => true,
    };
    driver.abort();
    eprintln!("aegis demo: stopping");
    if !server_done {
        let _ = server.await;
    }
    mock.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_meet_the_password_policy_and_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert!(crate::auth::password::check_policy(&a).is_ok(), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn fresh_refuses_a_directory_the_demo_did_not_make() {
        let dir = std::env::temp_dir().join(format!("aegis-demo-wipe-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("aegis.db"), b"precious").unwrap();
        let err = wipe(&dir).unwrap_err();
        assert!(err.contains("not a demo data directory"), "{err}");
        assert!(dir.join("aegis.db").exists());
        std::fs::write(dir.join(STATE_FILE), b"{}").unwrap();
        wipe(&dir).unwrap();
        assert!(!dir.exists());
        wipe(&dir).unwrap(); // a missing directory is fine
    }

    #[test]
    fn egress_is_opened_to_the_mock_only() {
        let opts = Options {
            data_dir: "./data-demo".into(),
            fresh: false,
            addr: Some("127.0.0.1:4999".parse().unwrap()),
            database_url: None,
        };
        let base = Config::from_lookup(|k| (k == "DATABASE_URL").then(|| "sqlite://elsewhere.db".to_owned()))
            .unwrap();
        let config = demo_config(base, &opts, "127.0.0.1:41234".parse().unwrap()).unwrap();
        assert_eq!(config.database_url, None, "the demo ignores DATABASE_URL");
        assert_eq!(config.data_dir, PathBuf::from("./data-demo"));
        assert_eq!(config.site_addr.port(), 4999);
        let guard = crate::proxy::egress::EgressGuard::new(config.egress.clone());
        assert!(guard.check_url("http://127.0.0.1:41234/ok").is_ok());
        assert!(guard.check_url("http://127.0.0.1:41235/ok").is_err());
        assert!(guard.check_url(plan::METADATA_URL).is_err());
    }
}
