//! Configuration from the environment (a `.env` file is honoured). Defaults work out
//! of the box; an invalid value stops start-up with one line naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct Config {
    pub site_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// `None` means the SQLite file `aegis.db` in the data directory.
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    /// PostgreSQL pool size (default [`crate::db::DEFAULT_PG_POOL`]).
    pub db_max_connections: Option<u32>,
    /// `AEGIS_HOT_PATH_STORE=portable`: the hot path through sea-orm on every
    /// database instead of the backend's own store (`fast`, the default). For
    /// comparison (`aegis bench --variants`) and as a fallback.
    pub portable_store: bool,
    /// Hex-encoded keys given explicitly instead of the generated files.
    pub jwt_secret: Option<String>,
    pub master_key: Option<String>,
    /// Where the master key file lives: `AEGIS_MASTER_KEY_FILE`, else
    /// `$XDG_CONFIG_HOME/aegis/master.key`, else `$HOME/.config/aegis/master.key` —
    /// outside the data directory. `None` (no home either) falls back to the data
    /// directory (see `data_dir::master_key_path`).
    pub master_key_file: Option<PathBuf>,
    /// Hex-encoded 32-byte seed of the audit checkpoint signing key.
    pub audit_signing_key: Option<String>,
    /// Sign an audit checkpoint every this many records (0: only on demand).
    pub audit_checkpoint_every: u64,
    /// Mark cookies `Secure`. Defaults to on when `AEGIS_PUBLIC_URL` is https.
    pub secure_cookies: bool,
    /// The origin browsers use to reach AEGIS; checked against `Origin` on form posts.
    pub public_url: Option<String>,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy).
    pub trust_proxy_headers: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub login_max_failures: u64,
    pub login_max_per_ip: u64,
    pub login_window: Duration,
    pub max_body_bytes: usize,
    /// Egress exceptions (`AEGIS_EGRESS_ALLOW`) and allowed ports (`AEGIS_EGRESS_PORTS`).
    pub egress: crate::proxy::egress::EgressRules,
    pub upstream: crate::proxy::upstream::UpstreamLimits,
    /// Largest request body an agent may send through the proxy.
    pub proxy_max_body_bytes: usize,
    /// Agent calls being performed at once, at most; past it calls are shed (503 `overload`).
    pub proxy_max_in_flight: usize,
    /// How long an authenticated agent may take to send its request body (408 past it).
    pub proxy_body_timeout: Duration,
    /// Above this much memory allocated by the whole process, policy builtins stop
    /// inside their loops and evaluations are denied (`AEGIS_POLICY_MEMORY_CEILING_MIB`).
    pub policy_memory_ceiling: u64,
    pub log_format: LogFormat,
    /// How long a parked request waits for its sponsor (`None`: until decided).
    pub approval_ttl: Option<Duration>,
    /// Long-polls (`GET /api/proxy/approvals/{id}?wait=`) one agent may hold at once.
    pub approval_max_waits: usize,
    /// How long `/mcp` holds a tool call that needs approval before answering that it
    /// is pending (`AEGIS_MCP_APPROVAL_WAIT_SECS`, default 60; at most 600).
    pub mcp_approval_wait: Duration,
    pub breaker: crate::proxy::breaker::BreakerConfig,
    /// How often `/ws` sends a heartbeat and re-checks the socket's session.
    pub ws_heartbeat: Duration,
    /// When set, `GET /metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// A budget hold whose call never reported back (a crash) is released after this long.
    pub reservation_ttl: Duration,
    /// How often the janitor expires approvals and releases expired budget holds.
    pub janitor_interval: Duration,
    /// How long a graceful shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
    /// Webhook delivery: backoff, attempts, auto-disable, timeout (`AEGIS_WEBHOOK_*`).
    pub webhooks: crate::channels::WebhookConfig,
}

impl std::fmt::Debug for Config {
    // Keys are never printed, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("site_addr", &self.site_addr)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database_url.as_deref().map(redact_url))
            .field("redis", &self.redis_url.as_deref().map(redact_url))
            .finish_non_exhaustive()
    }
}

/// Drops the password from a connection URL before it is shown anywhere.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Config {
    /// Where the vault's master key comes from.
    pub fn master_key_settings(&self) -> crate::data_dir::MasterKeySettings<'_> {
        crate::data_dir::MasterKeySettings {
            env_key: self.master_key.as_deref(),
            file: self.master_key_file.as_deref(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `get`, so tests can supply their own variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let var = |k: &'static str| get(k).filter(|v| !v.trim().is_empty());
        let parse = |k: &'static str, default: &str| -> Result<String, ConfigError> {
            Ok(var(k).unwrap_or_else(|| default.to_owned()))
        };
        let number = |k: &'static str, default: u64| -> Result<u64, ConfigError> {
            match var(k) {
                None => Ok(default),
                Some(v) => v.trim().parse().map_err(|_| ConfigError {
                    var: k,
                    reason: format!("expected a whole number, got {v:?}"),
                }),
            }
        };
        let boolean = |k: &'static str, default: bool| -> Result<bool, ConfigError> {
            match var(k).as_deref().map(str::trim) {
                None => Ok(default),
                Some("1" | "true" | "yes" | "on") => Ok(true),
                Some("0" | "false" | "no" | "off") => Ok(false),
                Some(v) => Err(ConfigError { var: k, reason: format!("expected true or false, got {v:?}") }),
            }
        };

        let percent = |k: &'static str, default: u64| -> Result<u64, ConfigError> {
            let v = number(k, default)?;
            if v > 100 {
                return Err(ConfigError { var: k, reason: "expected a percentage, 0 to 100".into() });
            }
            Ok(v)
        };

        let site_addr = parse("LEPTOS_SITE_ADDR", "127.0.0.1:3000")?;
        let site_addr = site_addr.parse().map_err(|_| ConfigError {
            var: "LEPTOS_SITE_ADDR",
            reason: format!("expected host:port, got {site_addr:?}"),
        })?;

        let database_url = var("DATABASE_URL");
        if let Some(url) = &database_url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(ConfigError {
                var: "DATABASE_URL",
                reason: format!("expected sqlite:… or postgres://…, got {}", redact_url(url)),
            });
        }
        let redis_url = var("REDIS_URL");
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError { var: "REDIS_URL", reason: "expected redis://…".into() });
        }

        let public_url = var("AEGIS_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ConfigError {
                var: "AEGIS_PUBLIC_URL",
                reason: format!("expected http(s)://host, got {u:?}"),
            });
        }
        let https = public_url.as_deref().is_some_and(|u| u.starts_with("https://"));

        let log_format = match parse("AEGIS_LOG_FORMAT", "text")?.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError {
                    var: "AEGIS_LOG_FORMAT",
                    reason: format!("expected text or json, got {other:?}"),
                });
            }
        };

        let access_ttl = number("AEGIS_ACCESS_TOKEN_TTL_SECS", 900)?;
        if !(30..=3600).contains(&access_ttl) {
            return Err(ConfigError {
                var: "AEGIS_ACCESS_TOKEN_TTL_SECS",
                reason: "must be between 30 and 3600".into(),
            });
        }

        // It travels in an Authorization header, so it must be a valid bearer token.
        let metrics_token = var("AEGIS_METRICS_TOKEN").map(|t| t.trim().to_owned());
        if let Some(t) = &metrics_token
            && !t.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ConfigError {
                var: "AEGIS_METRICS_TOKEN",
                reason: "expected visible ASCII characters without spaces".into(),
            });
        }

        Ok(Config {
            site_addr,
            data_dir: PathBuf::from(parse("AEGIS_DATA_DIR", "./data")?),
            database_url,
            redis_url,
            db_max_connections: match var("AEGIS_DB_MAX_CONNECTIONS") {
                None => None,
                Some(_) => Some(number("AEGIS_DB_MAX_CONNECTIONS", 0)?.clamp(2, 1000) as u32),
            },
            portable_store: match var("AEGIS_HOT_PATH_STORE").as_deref().map(str::trim) {
                None | Some("fast") => false,
                Some("portable") => true,
                Some(v) => {
                    return Err(ConfigError {
                        var: "AEGIS_HOT_PATH_STORE",
                        reason: format!("expected fast or portable, got {v:?}"),
                    });
                }
            },
            jwt_secret: var("AEGIS_JWT_SECRET"),
            master_key: var("AEGIS_MASTER_KEY"),
            master_key_file: var("AEGIS_MASTER_KEY_FILE").map(PathBuf::from).or_else(|| {
                var("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))
                    .map(|dir| dir.join("aegis").join("master.key"))
            }),
            audit_signing_key: var("AEGIS_AUDIT_SIGNING_KEY"),
            audit_checkpoint_every: number("AEGIS_AUDIT_CHECKPOINT_EVERY", 1000)?,
            secure_cookies: boolean("AEGIS_SECURE_COOKIES", https)?,
            public_url: public_url.clone(),
            trust_proxy_headers: boolean("AEGIS_TRUST_PROXY_HEADERS", false)?,
            access_token_ttl: Duration::from_secs(access_ttl),
            refresh_token_ttl: Duration::from_secs(number("AEGIS_REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?),
            login_max_failures: number("AEGIS_LOGIN_MAX_FAILURES", 5)?,
            login_max_per_ip: number("AEGIS_LOGIN_MAX_PER_IP", 50)?,
            login_window: Duration::from_secs(number("AEGIS_LOGIN_WINDOW_SECS", 900)?),
            max_body_bytes: number("AEGIS_MAX_BODY_BYTES", 1024 * 1024)? as usize,
            egress: crate::proxy::egress::EgressRules {
                allowed_ports: match var("AEGIS_EGRESS_PORTS") {
                    Some(p) => crate::proxy::egress::parse_ports(&p)
                        .map_err(|reason| ConfigError { var: "AEGIS_EGRESS_PORTS", reason })?,
                    None => vec![80, 443],
                },
                allow: crate::proxy::egress::parse_allow_list(&var("AEGIS_EGRESS_ALLOW").unwrap_or_default())
                    .map_err(|reason| ConfigError { var: "AEGIS_EGRESS_ALLOW", reason })?,
            },
            upstream: crate::proxy::upstream::UpstreamLimits {
                connect_timeout: Duration::from_secs(
                    number("AEGIS_UPSTREAM_CONNECT_TIMEOUT_SECS", 5)?.max(1),
                ),
                timeout: Duration::from_secs(number("AEGIS_UPSTREAM_TIMEOUT_SECS", 30)?.max(1)),
                max_response_bytes: number("AEGIS_UPSTREAM_MAX_BYTES", 10 << 20)? as usize,
            },
            proxy_max_body_bytes: number("AEGIS_PROXY_MAX_BODY_BYTES", 10 << 20)? as usize,
            proxy_max_in_flight: number("AEGIS_PROXY_MAX_IN_FLIGHT", 1024)?.max(1) as usize,
            proxy_body_timeout: Duration::from_secs(
                number("AEGIS_PROXY_BODY_TIMEOUT_SECS", 30)?.clamp(1, 3600),
            ),
            policy_memory_ceiling: number(
                "AEGIS_POLICY_MEMORY_CEILING_MIB",
                crate::policies::engine::PROCESS_MEMORY_CEILING >> 20,
            )?
            .clamp(64, 1 << 20)
                << 20,
            log_format,
            metrics_token,
            reservation_ttl: Duration::from_secs(
                number("AEGIS_RESERVATION_TTL_SECS", crate::wallets::RESERVATION_TTL.as_secs())?.max(1),
            ),
            janitor_interval: Duration::from_secs(number("AEGIS_JANITOR_INTERVAL_SECS", 5)?.clamp(1, 3600)),
            shutdown_grace: Duration::from_secs(number("AEGIS_SHUTDOWN_GRACE_SECS", 30)?),
            webhooks: {
                let d = crate::channels::WebhookConfig::default();
                crate::channels::WebhookConfig {
                    retry_base: Duration::from_millis(
                        number("AEGIS_WEBHOOK_RETRY_BASE_MS", d.retry_base.as_millis() as u64)?
                            .clamp(10, 3_600_000),
                    ),
                    retry_max: Duration::from_secs(
                        number("AEGIS_WEBHOOK_RETRY_MAX_SECS", d.retry_max.as_secs())?.clamp(1, 7 * 86_400),
                    ),
                    max_attempts: number("AEGIS_WEBHOOK_MAX_ATTEMPTS", d.max_attempts.into())?.clamp(1, 100)
                        as u32,
                    disable_after: number("AEGIS_WEBHOOK_DISABLE_AFTER", d.disable_after.into())?
                        .clamp(1, 100_000) as u32,
                    timeout: Duration::from_secs(
                        number("AEGIS_WEBHOOK_TIMEOUT_SECS", d.timeout.as_secs())?.clamp(1, 60),
                    ),
                    poll: Duration::from_millis(
                        number("AEGIS_WEBHOOK_POLL_MS", d.poll.as_millis() as u64)?.clamp(50, 60_000),
                    ),
                    allow_http: boolean("AEGIS_WEBHOOK_ALLOW_HTTP", d.allow_http)?,
                    slack_api_url: match var("AEGIS_SLACK_API_URL") {
                        Some(u) if u.starts_with("https://") || u.starts_with("http://") => {
                            u.trim_end_matches('/').to_owned()
                        }
                        Some(_) => {
                            return Err(ConfigError {
                                var: "AEGIS_SLACK_API_URL",
                                reason: "expected http(s)://host/path".into(),
                            });
                        }
                        None => d.slack_api_url,
                    },
                    public_url: public_url.clone(),
                    mailer: match var("AEGIS_SMTP_URL") {
                        Some(url) => {
                            let from = parse("AEGIS_SMTP_FROM", "AEGIS <aegis@localhost>")?;
                            let timeout = Duration::from_secs(
                                number("AEGIS_WEBHOOK_TIMEOUT_SECS", d.timeout.as_secs())?.clamp(1, 60),
                            );
                            Some(
                                crate::mail::Mailer::new(&url, &from, timeout)
                                    .map_err(|e| ConfigError { var: e.var, reason: e.reason.into() })?,
                            )
                        }
                        None => None,
                    },
                }
            },
            ws_heartbeat: Duration::from_secs(number("AEGIS_WS_HEARTBEAT_SECS", 15)?.clamp(1, 300)),
            approval_max_waits: number("AEGIS_APPROVAL_MAX_WAITS", 8)?.clamp(1, 10_000) as usize,
            mcp_approval_wait: Duration::from_secs(number("AEGIS_MCP_APPROVAL_WAIT_SECS", 60)?.min(600)),
            approval_ttl: match number("AEGIS_APPROVAL_TTL_SECS", 15 * 60)? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            breaker: crate::proxy::breaker::BreakerConfig {
                window: Duration::from_secs(number("AEGIS_BREAKER_WINDOW_SECS", 60)?.max(1)),
                min_samples: number("AEGIS_BREAKER_MIN_SAMPLES", 10)?.max(1),
                denial_rate_pct: percent("AEGIS_BREAKER_DENIAL_RATE_PCT", 50)?,
                error_rate_pct: percent("AEGIS_BREAKER_ERROR_RATE_PCT", 50)?,
                burst: number("AEGIS_BREAKER_BURST", 600)?,
                spend_micros: number("AEGIS_BREAKER_SPEND_MICROS", 100_000_000)?,
                new_hosts: number("AEGIS_BREAKER_NEW_HOSTS", 10)?,
                cooldown: Duration::from_secs(number("AEGIS_BREAKER_COOLDOWN_SECS", 30)?.max(1)),
                cooldown_max: Duration::from_secs(number("AEGIS_BREAKER_COOLDOWN_MAX_SECS", 3600)?.max(1)),
                probes: number("AEGIS_BREAKER_PROBES", 3)?.clamp(1, 100) as i32,
                fleet_max_pct: percent("AEGIS_BREAKER_FLEET_MAX_PCT", 50)?,
                fleet_min_agents: number("AEGIS_BREAKER_FLEET_MIN_AGENTS", 4)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_out_of_the_box() {
        let c = with(&[]).unwrap();
        assert_eq!(c.site_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert!(c.database_url.is_none() && c.redis_url.is_none());
        assert!(!c.secure_cookies);
        assert_eq!(c.access_token_ttl, Duration::from_secs(900));
        assert!(!c.portable_store, "the backend's own hot-path store by default");
        assert!(with(&[("AEGIS_HOT_PATH_STORE", "portable")]).unwrap().portable_store);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (var, value) in [
            ("LEPTOS_SITE_ADDR", "nowhere"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "http://x"),
            ("AEGIS_LOGIN_MAX_FAILURES", "five"),
            ("AEGIS_SECURE_COOKIES", "maybe"),
            ("AEGIS_LOG_FORMAT", "xml"),
            ("AEGIS_ACCESS_TOKEN_TTL_SECS", "86400"),
            ("AEGIS_PUBLIC_URL", "ftp://x"),
            ("AEGIS_EGRESS_ALLOW", "not a cidr/99"),
            ("AEGIS_EGRESS_PORTS", "http"),
            ("AEGIS_HOT_PATH_STORE", "fastest"),
            ("AEGIS_BREAKER_DENIAL_RATE_PCT", "150"),
            ("AEGIS_APPROVAL_TTL_SECS", "soon"),
            ("AEGIS_METRICS_TOKEN", "two words"),
        ] {
            let err = with(&[(var, value)]).err().unwrap_or_else(|| panic!("{var}={value} accepted"));
            assert_eq!(err.var, var);
            assert!(err.to_string().starts_with(&format!("invalid configuration: {var}:")));
        }
    }

    #[test]
    fn https_public_url_turns_on_secure_cookies() {
        assert!(with(&[("AEGIS_PUBLIC_URL", "https://aegis.example")]).unwrap().secure_cookies);
    }

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        let shown = redact_url("postgres://aegis:s3cret@db:5432/aegis");
        assert_eq!(shown, "postgres://aegis:***@db:5432/aegis");
        let cfg = with(&[("DATABASE_URL", "postgres://aegis:s3cret@db/aegis")]).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}
