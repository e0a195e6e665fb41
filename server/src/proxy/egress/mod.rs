//! Egress guard (SSRF): which targets AEGIS may connect to.
//!
//! # Threat model
//!
//! Agents choose the URLs AEGIS fetches. A hostile or confused agent will try to make AEGIS reach
//! what only AEGIS can reach: loopback services, the private network, cloud metadata endpoints
//! (which hand out credentials), the Kubernetes API. It can spell an internal address in any way
//! a URL parser accepts (`http://2130706433/`, `http://0x7f.1/`, `http://[::ffff:127.0.0.1]/`),
//! hide it behind a DNS name it controls (including one that answers differently on the second
//! lookup: DNS rebinding), or redirect there from a public server.
//!
//! # Defence, in the style of Stripe's Smokescreen
//!
//! 1. [`EgressGuard::check_url`] parses with the WHATWG URL parser (`url` crate, the one reqwest
//!    itself uses, so there is no parser differential) and refuses anything but http/https, any
//!    userinfo, disallowed ports, literal non-public IPs in every spelling the parser accepts,
//!    metadata host names and private-use domains. No DNS happens here.
//! 2. [`EgressGuard::resolve`] resolves a host name once and refuses if *any* address is not
//!    globally routable (an attacker controls which address a client picks), then caches the
//!    checked addresses briefly.
//! 3. [`EgressGuard::resolver`] is the only resolver the HTTP client gets: it serves those
//!    checked addresses and checks every other name itself, failing closed. So the address that
//!    is connected to is always an address that was checked: no second, unchecked lookup exists
//!    to rebind.
//! 4. [`EgressGuard::redirect_policy`] re-runs `check_url` on every redirect hop and bounds the
//!    chain; a hop's host name is then checked by the resolver at connect time.
//! 5. [`EgressGuard::client_builder`] wires 3 and 4 into a reqwest client and turns off the
//!    environment's HTTP proxy (through a proxy, DNS would happen out of our sight).
//!
//! Addresses are judged by [`classify`] (IANA special-purpose registries; see `classify.rs`).
//! The operator's [`EgressRules`] can open exceptions; by default there are none.
//!
//! # Decisions
//!
//! - **Any userinfo is refused**, even `http://user@host/`: AEGIS injects credentials itself,
//!   and userinfo is the classic way to make a URL look like it goes elsewhere.
//! - **Control characters and surrounding whitespace are refused** rather than silently
//!   stripped as the WHATWG parser would; URLs longer than [`MAX_URL_LEN`] are refused.
//! - **Host names must look like DNS names** (letters, digits, `-`, `_`, no empty labels) after
//!   IDNA mapping, so nothing exotic reaches the system resolver.
//! - **Refused by name before DNS** (unless a `HostPort` rule names them exactly): cloud metadata
//!   and Kubernetes API names, and the private-use domains `.internal`, `.local`, `.home.arpa`
//!   (they may sit on public, firewalled addresses that no address check can recognise).
//!   `localhost` is left to DNS: it resolves to loopback, which is refused unless allow-listed.
//! - **`Net` rules lift the port restriction for literal IPs only.** A host name's port is
//!   judged by `check_url`, before DNS, because reqwest's resolver never learns the port.
//! - **`HostPort` rules pin their host** to the listed ports, for the same reason: that is what
//!   lets the port-blind resolver admit whatever such a host resolves to.
//! - **A host resolving to several addresses is refused if any one is refused**: the attacker's
//!   DNS decides which the client tries first.
//! - The cache is keyed by host name only; that is sound because whether an address is
//!   acceptable for a name never depends on the port (given the two rules above).
//!
//! Refusal reasons ([`EgressDenied`]) are shown to agents: they echo only what the agent itself
//! sent after normalisation (never the raw URL, which may carry credentials) and never the
//! internal address a name resolved to (that would make AEGIS an internal-DNS oracle); the
//! address is logged for operators instead.

mod classify;
mod host;
mod rules;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

pub use classify::classify;
pub use rules::{AllowRule, EgressRules, IpNet, parse_allow_list, parse_ports};

use host::{normalize_host, normalize_host_str, refused_name};

/// Redirect hops AEGIS follows before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// Longest URL accepted. Real API URLs are far shorter; this bounds the work per request.
pub const MAX_URL_LEN: usize = 8 * 1024;
/// How long checked addresses are served to the HTTP client. Only long enough to bridge
/// `resolve` and the connection (and a short redirect chain): a stale entry is still a checked
/// entry, but there is no reason to outlive the real DNS TTL by much.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Bound on cached host names; past it expired entries are dropped, then everything.
const CACHE_MAX_ENTRIES: usize = 1024;
/// A lookup that takes longer than this is refused rather than left to hang the request.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// A checked target (after parsing, before DNS).
#[derive(Debug, Clone)]
pub struct Target {
    /// The parsed URL; hand exactly this to the HTTP client (no re-parsing, no differential).
    pub url: Url,
    /// `http` or `https`.
    pub scheme: String,
    /// Lowercase, no trailing dot, IPv6 without brackets.
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
}

/// Why a target is refused. `reason` is safe to show to the agent: it never contains secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDenied {
    pub reason: String,
}

impl EgressDenied {
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }

    /// Finds the refusal behind an error from a client built with [`EgressGuard::resolver`] /
    /// [`EgressGuard::redirect_policy`] (a `reqwest::Error` wraps it several layers deep), so
    /// callers can tell "refused by the egress guard" from "upstream failed".
    pub fn find_in<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a EgressDenied> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(denied) = e.downcast_ref::<EgressDenied>() {
                return Some(denied);
            }
            current = e.source();
        }
        None
    }
}

impl fmt::Display for EgressDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "egress denied: {}", self.reason)
    }
}

impl StdError for EgressDenied {}

/// How host names are turned into addresses. The system resolver in production; tests inject
/// fixed answers (a name resolving to a public *and* a private address, answers that change).
type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
type LookupFn = dyn Fn(String) -> LookupFuture + Send + Sync;

fn system_lookup() -> Arc<LookupFn> {
    Arc::new(|host: String| -> LookupFuture {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    })
}

/// The egress guard. Cheap to clone; clones share the rules and the address cache.
#[derive(Clone)]
pub struct EgressGuard {
    inner: Arc<Inner>,
}

struct Inner {
    rules: EgressRules,
    /// Host names named by `HostPort` rules, with their ports (see [`AllowRule::HostPort`]).
    pinned: HashMap<String, Vec<u16>>,
    cache: Mutex<HashMap<String, CacheEntry>>,
    lookup: Arc<LookupFn>,
    ttl: Duration,
}

struct CacheEntry {
    ips: Vec<IpAddr>,
    expires: Instant,
}

impl fmt::Debug for EgressGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressGuard").field("rules", &self.inner.rules).finish_non_exhaustive()
    }
}

impl EgressGuard {
    pub fn new(rules: EgressRules) -> Self {
        Self::with_lookup(rules, system_lookup(), CACHE_TTL)
    }

    fn with_lookup(mut rules: EgressRules, lookup: Arc<LookupFn>, ttl: Duration) -> Self {
        // Rules built in code rather than by `parse_allow_list` may spell hosts differently
        // ("API.internal.", "[::1]"); compare in the same canonical form as URL hosts. A host
        // that does not normalise can never match a checked URL, which is the safe outcome.
        let mut pinned: HashMap<String, Vec<u16>> = HashMap::new();
        for rule in &mut rules.allow {
            if let AllowRule::HostPort { host, port } = rule
                && let Ok((canonical, ip)) = normalize_host_str(host)
            {
                *host = canonical;
                if ip.is_none() {
                    pinned.entry(host.clone()).or_default().push(*port);
                }
            }
        }
        Self { inner: Arc::new(Inner { rules, pinned, cache: Mutex::new(HashMap::new()), lookup, ttl }) }
    }

    pub fn rules(&self) -> &EgressRules {
        &self.inner.rules
    }

    /// Why an address is refused, or `None` when it is globally routable (allow list not
    /// applied; see [`classify`]).
    pub fn classify(ip: IpAddr) -> Option<&'static str> {
        classify(ip)
    }

    /// Parses and checks without DNS: only http/https; the port must be allowed; no userinfo at
    /// all; a host must be present; literal IPs (every WHATWG spelling) are checked here; cloud
    /// metadata names and private-use domains are refused. Unparseable input is an
    /// `EgressDenied`, never a panic.
    pub fn check_url(&self, raw: &str) -> Result<Target, EgressDenied> {
        if raw.len() > MAX_URL_LEN {
            return Err(EgressDenied::new(format!("URL is longer than {MAX_URL_LEN} bytes")));
        }
        // The WHATWG parser silently drops tabs and newlines and trims control characters and
        // spaces at the ends. An agent has no honest reason to send them, and they are the raw
        // material of header injection and of "what you checked is not what you logged"; refuse.
        if raw.chars().any(char::is_control) {
            return Err(EgressDenied::new("URL contains control characters"));
        }
        if raw.trim() != raw {
            return Err(EgressDenied::new("URL has leading or trailing whitespace"));
        }
        // The parser's error messages describe the problem, never echo the input.
        let url = Url::parse(raw).map_err(|e| EgressDenied::new(format!("invalid URL: {e}")))?;
        // Percent-encoding can make the serialised URL (what the client sends, and what
        // `resolve` re-checks) longer than the input.
        if url.as_str().len() > MAX_URL_LEN {
            return Err(EgressDenied::new(format!("URL is longer than {MAX_URL_LEN} bytes")));
        }
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(EgressDenied::new(format!("scheme {scheme:?} is not allowed (only http and https)")));
        }
        // Any userinfo, even a lone user name: it is never needed (AEGIS injects credentials
        // itself) and is the classic way to make a URL look like it goes somewhere else.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EgressDenied::new("URL must not contain credentials (user:password@)"));
        }
        let host = url.host().ok_or_else(|| EgressDenied::new("URL has no host"))?;
        let (host, ip) = normalize_host(host).map_err(EgressDenied::new)?;
        let port = url.port_or_known_default().ok_or_else(|| EgressDenied::new("URL has no port"))?;
        self.check_host_port(&host, ip, port)?;
        Ok(Target {
            scheme: scheme.to_owned(),
            host,
            port,
            path: url.path().to_owned(),
            query: url.query().map(str::to_owned),
            url,
        })
    }

    /// Resolves the host once and refuses if any address is not globally routable (unless
    /// allow-listed). The checked addresses are cached so that [`EgressGuard::resolver`] hands
    /// the HTTP client exactly these. A literal IP is returned as is, without DNS.
    pub async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, EgressDenied> {
        // `Target`'s fields are public, so it may not be what `check_url` returned: re-check the
        // URL the client will actually use, and insist the fields agree with it.
        let checked = self.check_url(target.url.as_str())?;
        if checked.host != target.host || checked.port != target.port {
            return Err(EgressDenied::new("target host or port differs from its URL"));
        }
        let port = checked.port;
        if let Ok(ip) = checked.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = self.inner.lookup_and_check(&checked.host).await?;
        Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    /// A reqwest DNS resolver that only ever hands out checked addresses: the cache filled by
    /// [`EgressGuard::resolve`] or, for other names (a redirect hop), its own checked lookup.
    /// Use it with `reqwest::ClientBuilder::dns_resolver` (or use [`EgressGuard::client_builder`]).
    /// Its errors are [`EgressDenied`] (see [`EgressDenied::find_in`]).
    ///
    /// reqwest only calls a resolver for names: a literal IP in a URL is connected to directly,
    /// which is why `check_url` (and the redirect policy, which calls it) must judge literals.
    pub fn resolver(&self) -> Arc<EgressResolver> {
        Arc::new(EgressResolver { guard: self.clone() })
    }

    /// A redirect policy that re-checks every hop with [`EgressGuard::check_url`] and refuses
    /// the chain after `max` hops (same counting as `reqwest::redirect::Policy::limited`).
    pub fn redirect_policy(&self, max: usize) -> reqwest::redirect::Policy {
        let guard = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds the original URL and every hop already followed.
            if attempt.previous().len() > max {
                return attempt.error(EgressDenied::new(format!("too many redirects (more than {max})")));
            }
            match guard.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(denied) => {
                    attempt.error(EgressDenied::new(format!("redirect refused: {}", denied.reason)))
                }
            }
        })
    }

    /// A reqwest client builder with the guard's resolver, its redirect policy
    /// ([`MAX_REDIRECTS`] hops) and no proxy: reqwest otherwise honours `HTTP(S)_PROXY` from the
    /// environment, and behind a proxy the name would be resolved where no check can see it.
    /// Callers add timeouts and the like; they must not add a proxy or `resolve` overrides.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .dns_resolver(self.resolver())
            .redirect(self.redirect_policy(MAX_REDIRECTS))
            .no_proxy()
    }

    /// Everything about a (normalised) host and port that can be judged without DNS.
    fn check_host_port(&self, host: &str, ip: Option<IpAddr>, port: u16) -> Result<(), EgressDenied> {
        let rules = &self.inner.rules;
        let host_port_allowed = rules
            .allow
            .iter()
            .any(|r| matches!(r, AllowRule::HostPort { host: h, port: p } if h == host && *p == port));
        match ip {
            None => {
                if host_port_allowed {
                    return Ok(());
                }
                if let Some(ports) = self.inner.pinned.get(host) {
                    return Err(EgressDenied::new(format!(
                        "{host} is allow-listed only on port {}",
                        join_ports(ports)
                    )));
                }
                if let Some(why) = refused_name(host) {
                    return Err(EgressDenied::new(format!("{host} {why}")));
                }
                if !rules.allowed_ports.contains(&port) {
                    return Err(port_refused(port));
                }
                Ok(())
            }
            Some(ip) => {
                if host_port_allowed {
                    return Ok(());
                }
                let in_net = self.inner.in_allowed_net(ip);
                if !in_net && !rules.allowed_ports.contains(&port) {
                    return Err(port_refused(port));
                }
                match classify(ip) {
                    Some(why) if !in_net => {
                        Err(EgressDenied::new(format!("{ip} is not a public address: {why}")))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

fn port_refused(port: u16) -> EgressDenied {
    EgressDenied::new(format!("port {port} is not allowed"))
}

fn join_ports(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
}

/// Returns `Err` naming the first address of `ips` that `admit` refuses; all must pass, since
/// the client may connect to any of them (and an attacker's DNS decides which comes first).
fn all_admitted(
    ips: &[IpAddr],
    admit: impl Fn(IpAddr) -> Result<(), &'static str>,
) -> Result<(), (IpAddr, &'static str)> {
    ips.iter().try_for_each(|&ip| admit(ip).map_err(|why| (ip, why)))
}

impl Inner {
    fn in_allowed_net(&self, ip: IpAddr) -> bool {
        // `to_canonical` turns ::ffff:a.b.c.d into a.b.c.d so an IPv4 rule covers its mapped form.
        let canonical = ip.to_canonical();
        self.rules.allow.iter().any(|rule| match rule {
            AllowRule::Net(net) => net.contains(&ip) || net.contains(&canonical),
            AllowRule::HostPort { .. } => false,
        })
    }

    fn admit(&self, ip: IpAddr) -> Result<(), &'static str> {
        if self.in_allowed_net(ip) {
            return Ok(());
        }
        classify(ip).map_or(Ok(()), Err)
    }

    fn cached(&self, host: &str) -> Option<Vec<IpAddr>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(host).filter(|entry| entry.expires > Instant::now()).map(|entry| entry.ips.clone())
    }

    fn remember(&self, host: &str, ips: &[IpAddr]) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.retain(|_, entry| entry.expires > now);
            if cache.len() >= CACHE_MAX_ENTRIES {
                // Dropping entries only costs lookups: every miss is looked up and checked again.
                cache.clear();
            }
        }
        cache.insert(host.to_owned(), CacheEntry { ips: ips.to_vec(), expires: now + self.ttl });
    }

    /// Looks `host` (a normalised name, already past `check_host_port` or a pinned host) up,
    /// checks every address and caches the result. Never serves the cache: that is the
    /// resolver's job; this is the "resolve once per request" lookup.
    async fn lookup_and_check(&self, host: &str) -> Result<Vec<IpAddr>, EgressDenied> {
        let answer = tokio::time::timeout(DNS_TIMEOUT, (self.lookup)(host.to_owned())).await;
        let mut ips = match answer {
            Ok(Ok(ips)) => ips,
            Ok(Err(e)) => {
                tracing::debug!(host, error = %e, "egress: DNS lookup failed");
                return Err(EgressDenied::new(format!("cannot resolve {host}")));
            }
            Err(_) => return Err(EgressDenied::new(format!("resolving {host} timed out"))),
        };
        let mut seen = std::collections::HashSet::new();
        ips.retain(|ip| seen.insert(*ip));
        if ips.is_empty() {
            return Err(EgressDenied::new(format!("{host} has no addresses")));
        }
        // A host named by a `HostPort` rule is acceptable whatever it resolves to: `check_url`
        // pins it to its listed ports, so whichever port the client uses is a listed one.
        if !self.pinned.contains_key(host)
            && let Err((ip, why)) = all_admitted(&ips, |ip| self.admit(ip))
        {
            // The address goes to the operator's log, not to the agent.
            tracing::warn!(host, %ip, reason = why, "egress: refused a name resolving to a non-public address");
            return Err(EgressDenied::new(format!("{host} resolves to a non-public address ({why})")));
        }
        self.remember(host, &ips);
        Ok(ips)
    }

    /// What the reqwest resolver does for one name: checked cache, else a checked lookup.
    async fn resolve_for_client(&self, name: &str) -> Result<Vec<IpAddr>, EgressDenied> {
        let (host, ip) = normalize_host_str(name).map_err(EgressDenied::new)?;
        // reqwest connects to literal IPs without asking; one can still arrive here if the
        // client's URI spells it in a form std does not parse (e.g. "0x7f.1"). Judge it.
        if let Some(ip) = ip {
            return match self.admit(ip) {
                Ok(()) => Ok(vec![ip]),
                Err(why) => Err(EgressDenied::new(format!("{ip} is not a public address: {why}"))),
            };
        }
        if let Some(ips) = self.cached(&host) {
            return Ok(ips);
        }
        // A redirect hop was already through `check_url`; checking the name again costs nothing
        // and keeps this resolver safe on its own (a pinned host was explicitly allowed).
        if !self.pinned.contains_key(&host)
            && let Some(why) = refused_name(&host)
        {
            return Err(EgressDenied::new(format!("{host} {why}")));
        }
        self.lookup_and_check(&host).await
    }
}

/// The resolver returned by [`EgressGuard::resolver`].
#[derive(Clone, Debug)]
pub struct EgressResolver {
    guard: EgressGuard,
}

impl Resolve for EgressResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let inner = Arc::clone(&self.guard.inner);
        Box::pin(async move {
            let ips = inner.resolve_for_client(name.as_str()).await?;
            // Port 0: reqwest substitutes the URL's port (or the scheme's default).
            let addrs: Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests;
