//! Where a secret may be sent: a list of destination patterns, each a scheme, a host
//! and a port. A secret is injected only into a request (and into each redirect hop
//! of it) whose destination matches one of its patterns.
//!
//! Grammar: `[http://|https://]host[:port]`
//! - the host is an exact name or IP, or `*.suffix` for any subdomain of `suffix`
//!   (not `suffix` itself); case-insensitive, a trailing dot ignored; IPv6 in
//!   brackets when a scheme or port is given;
//! - no scheme means **https only**: a secret goes over plain http only where the
//!   sponsor wrote `http://` for that host (an explicit, per-secret choice);
//! - no port means the scheme's default port (443, or 80 for `http://`); `:*`
//!   allows any port on that host.
//!
//! Patterns are stored in their canonical text ([`Pattern`]'s `Display`): the
//! defaults are left out, so `api.example.com` stays `api.example.com`.

use std::fmt;

/// Normalises a host for comparison: lower case, no trailing dot, no brackets.
pub fn normalise(host: &str) -> String {
    host.trim().trim_end_matches('.').trim_matches(['[', ']']).to_ascii_lowercase()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Https => 443,
            Scheme::Http => 80,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Exact(u16),
    Any,
}

/// One parsed destination pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub scheme: Scheme,
    /// Normalised; `*.suffix` for a subdomain pattern.
    pub host: String,
    pub port: Port,
}

/// Where a request (or one redirect hop of it) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: u16,
}

impl<'a> Destination<'a> {
    /// The destination of a parsed URL; `None` for URLs without a host or port.
    pub fn of(url: &'a url::Url) -> Option<Self> {
        Some(Self { scheme: url.scheme(), host: url.host_str()?, port: url.port_or_known_default()? })
    }
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = normalise(self.host);
        if host.contains(':') {
            write!(f, "{}://[{host}]:{}", self.scheme, self.port)
        } else {
            write!(f, "{}://{host}:{}", self.scheme, self.port)
        }
    }
}

fn label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Splits `host[:port]` (IPv6 in brackets, or bare without a port).
fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), ()> {
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner.split_once(']').ok_or(())?;
        return match after {
            "" => Ok((host, None)),
            p => Ok((host, Some(p.strip_prefix(':').ok_or(())?))),
        };
    }
    if rest.matches(':').count() > 1 {
        // A bare IPv6 address: it cannot carry a port without brackets.
        return Ok((rest, None));
    }
    match rest.split_once(':') {
        Some((h, p)) => Ok((h, Some(p))),
        None => Ok((rest, None)),
    }
}

impl Pattern {
    /// Validates and normalises one pattern.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let bad = || format!("{pattern:?} is not a host pattern ([http://|https://]host[:port] or *.domain)");
        let text = pattern.trim();
        let lower = text.to_ascii_lowercase();
        let (scheme, rest) = if let Some(r) = lower.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = lower.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if lower.contains("://") {
            return Err(format!("{pattern:?}: only http:// and https:// can be named"));
        } else {
            (Scheme::Https, lower.as_str())
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = split_host_port(rest).map_err(|_| bad())?;
        let port = match port {
            None => Port::Exact(scheme.default_port()),
            Some("*") => Port::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && !p.starts_with('0') => Port::Exact(n),
                _ => return Err(format!("{pattern:?}: the port must be 1 to 65535 or *")),
            },
        };
        let host = host.trim_end_matches('.');
        let name = host.strip_prefix("*.").unwrap_or(host);
        let is_ip = name.parse::<std::net::IpAddr>().is_ok();
        if name.is_empty()
            || name.len() > 253
            || !(is_ip && !host.starts_with("*.") || name.split('.').all(label_ok))
        {
            return Err(bad());
        }
        if host.starts_with("*.") && !name.contains('.') {
            return Err(format!("{pattern:?} is too broad: use *.example.com, not *.com"));
        }
        Ok(Self { scheme, host: host.to_owned(), port })
    }

    pub fn matches(&self, to: &Destination<'_>) -> bool {
        if !to.scheme.eq_ignore_ascii_case(self.scheme.as_str()) {
            return false;
        }
        if let Port::Exact(p) = self.port
            && p != to.port
        {
            return false;
        }
        let host = normalise(to.host);
        match self.host.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => self.host == host,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default_port = self.port == Port::Exact(self.scheme.default_port());
        if self.scheme == Scheme::Http {
            f.write_str("http://")?;
        }
        let ipv6 = self.host.contains(':');
        let bare = self.scheme == Scheme::Https && default_port;
        match (ipv6, bare) {
            (true, false) => write!(f, "[{}]", self.host)?,
            _ => f.write_str(&self.host)?,
        }
        match self.port {
            _ if default_port => Ok(()),
            Port::Any => f.write_str(":*"),
            Port::Exact(p) => write!(f, ":{p}"),
        }
    }
}

/// Validates one pattern and returns its canonical text.
pub fn parse_pattern(pattern: &str) -> Result<String, String> {
    Pattern::parse(pattern).map(|p| p.to_string())
}

/// The parsed patterns of a stored list; an entry that no longer parses matches nothing.
pub fn parse_all(stored: &[String]) -> Vec<Pattern> {
    stored.iter().filter_map(|p| Pattern::parse(p).ok()).collect()
}

pub fn any_matches(patterns: &[Pattern], to: &Destination<'_>) -> bool {
    patterns.iter().any(|p| p.matches(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_validated_and_normalised() {
        let cases = [
            ("API.OpenAI.com.", "api.openai.com"),
            ("*.Example.com", "*.example.com"),
            ("https://api.example.com", "api.example.com"),
            ("https://api.example.com:443/", "api.example.com"),
            ("api.example.com:8443", "api.example.com:8443"),
            ("HTTP://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://127.0.0.1", "http://127.0.0.1"),
            ("http://127.0.0.1:*", "http://127.0.0.1:*"),
            ("203.0.113.7", "203.0.113.7"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:8443", "[2001:db8::1]:8443"),
            ("http://[2001:db8::1]:80", "http://[2001:db8::1]"),
        ];
        for (input, canonical) in cases {
            assert_eq!(parse_pattern(input).as_deref(), Ok(canonical), "{input}");
            // The canonical text parses back to itself.
            assert_eq!(parse_pattern(canonical).as_deref(), Ok(canonical), "{canonical}");
        }
        for bad in [
            "",
            "*",
            "*.com",
            "a*.example.com",
            "exa mple.com",
            "-bad.com",
            "*.*.example.com",
            "ftp://x.com",
            "x.com/path",
            "x.com:0",
            "x.com:65536",
            "x.com:08",
            "x.com:",
            "[2001:db8::1",
            "user@x.com",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
    }

    fn dest(url: &str) -> (String, String, u16) {
        let u = url::Url::parse(url).unwrap();
        (u.scheme().to_owned(), u.host_str().unwrap().to_owned(), u.port_or_known_default().unwrap())
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("api.openai.com", "https://api.openai.com/v1", true),
            ("api.openai.com", "https://API.OPENAI.COM./v1", true),
            // https only, default port only, unless the pattern says otherwise
            ("api.openai.com", "http://api.openai.com/v1", false),
            ("api.openai.com", "https://api.openai.com:8443/v1", false),
            ("api.openai.com:8443", "https://api.openai.com:8443/v1", true),
            ("api.openai.com:*", "https://api.openai.com:9/v1", true),
            ("api.openai.com:*", "http://api.openai.com:9/v1", false),
            ("http://api.example.com", "http://api.example.com/", true),
            ("http://api.example.com", "http://api.example.com:8080/", false),
            ("http://api.example.com", "https://api.example.com/", false),
            ("api.openai.com", "https://evil-api.openai.com/", false),
            ("api.openai.com", "https://api.openai.com.evil.com/", false),
            ("*.example.com", "https://a.example.com/", true),
            ("*.example.com", "https://a.b.example.com/", true),
            ("*.example.com", "https://example.com/", false),
            ("*.example.com", "https://badexample.com/", false),
            ("*.example.com", "https://a.example.com.evil.io/", false),
            ("2001:db8::1", "https://[2001:db8::1]/", true),
            ("http://127.0.0.1:*", "http://127.0.0.1:5000/", true),
            ("http://127.0.0.1:*", "http://127.0.0.2:5000/", false),
        ];
        for (pattern, url, expected) in cases {
            let p = Pattern::parse(pattern).unwrap();
            let (scheme, host, port) = dest(url);
            let d = Destination { scheme: &scheme, host: &host, port };
            assert_eq!(p.matches(&d), expected, "{pattern} vs {url}");
        }
    }
}
