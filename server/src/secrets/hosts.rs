//! Host patterns for secrets: a secret is injected only into requests whose host
//! matches one of its patterns — an exact host, or `*.suffix` for any subdomain of
//! `suffix` (not `suffix` itself). Case-insensitive; a trailing dot is ignored.

/// Normalises a host for comparison: lower case, no trailing dot.
pub fn normalise(host: &str) -> String {
    host.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// Validates and normalises one pattern.
pub fn parse_pattern(pattern: &str) -> Result<String, String> {
    let p = normalise(pattern);
    let name = p.strip_prefix("*.").unwrap_or(&p);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let is_ip = name.parse::<std::net::IpAddr>().is_ok()
        || name.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok();
    if name.is_empty()
        || name.len() > 253
        || !(is_ip && !p.starts_with("*.") || name.split('.').all(label_ok))
    {
        return Err(format!("{pattern:?} is not a host name or a *.domain pattern"));
    }
    if p.starts_with("*.") && !name.contains('.') {
        return Err(format!("{pattern:?} is too broad: use *.example.com, not *.com"));
    }
    Ok(p.trim_matches(['[', ']']).to_owned())
}

pub fn matches(pattern: &str, host: &str) -> bool {
    let host = normalise(host);
    let host = host.trim_matches(['[', ']']);
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern == host,
    }
}

pub fn any_matches(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|p| matches(p, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_validated_and_normalised() {
        assert_eq!(parse_pattern("API.OpenAI.com.").unwrap(), "api.openai.com");
        assert_eq!(parse_pattern("*.Example.com").unwrap(), "*.example.com");
        assert_eq!(parse_pattern("203.0.113.7").unwrap(), "203.0.113.7");
        assert_eq!(parse_pattern("[2001:db8::1]").unwrap(), "2001:db8::1");
        for bad in [
            "",
            "*",
            "*.com",
            "a*.example.com",
            "exa mple.com",
            "-bad.com",
            "*.*.example.com",
            "http://x.com",
            "x.com/path",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("api.openai.com", "api.openai.com", true),
            ("api.openai.com", "API.OPENAI.COM.", true),
            ("api.openai.com", "evil-api.openai.com", false),
            ("api.openai.com", "api.openai.com.evil.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "badexample.com", false),
            ("*.example.com", "a.example.com.evil.io", false),
            ("2001:db8::1", "[2001:db8::1]", true),
        ];
        for (pattern, host, expected) in cases {
            assert_eq!(matches(pattern, host), expected, "{pattern} vs {host}");
        }
    }
}
