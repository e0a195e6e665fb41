//! What the sponsor is shown of where a parked call goes: the URL exactly as it will
//! be fetched (parsed and normalised the way the upstream client parses it), with
//! the host both as resolved (ASCII / punycode) and in Unicode, so a URL crafted to
//! look like another host (`https://evil.example\.api.example.com/`, whose host is
//! `evil.example`; a homograph in another script) reads as what it is.

use app::model::ApprovalTarget;

/// What replaces a credential when shown.
pub const MASK: &str = "••••••";

/// The normalised target of `url`; `masked_query_param` (a secret injected as a query
/// parameter) is shown as it will be added, masked. `None` if `url` does not parse.
pub fn target_of(url: &str, masked_query_param: Option<&str>) -> Option<ApprovalTarget> {
    let mut parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_owned();
    let host_unicode = match parsed.host()? {
        url::Host::Domain(d) => {
            let (unicode, result) = idna::domain_to_unicode(d);
            if result.is_ok() { unicode } else { d.to_owned() }
        }
        _ => host.clone(),
    };
    if let Some(param) = masked_query_param {
        // Where the injection will put the secret, exactly as it will (one rule).
        crate::secrets::query::set_query_param(&mut parsed, param, MASK);
    }
    Some(ApprovalTarget {
        url: parsed.as_str().to_owned(),
        scheme: parsed.scheme().to_owned(),
        host,
        host_unicode,
        port: parsed.port_or_known_default(),
        path: parsed.path().to_owned(),
        query: parsed.query().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backslash_does_not_make_a_subdomain() {
        let t = target_of("https://evil.example\\.api.example.com/", None).unwrap();
        assert_eq!(t.host, "evil.example");
        assert_eq!(t.host_unicode, "evil.example");
        assert_eq!(t.path, "/.api.example.com/");
        assert_eq!(t.url, "https://evil.example/.api.example.com/");
        assert_eq!(t.port, Some(443));
    }

    #[test]
    fn international_hosts_show_punycode_and_unicode() {
        // Cyrillic "а" in place of the Latin "a".
        let t = target_of("https://\u{0430}pi.example.com/v1/x?q=1", None).unwrap();
        assert_eq!(t.host, "xn--pi-6kc.example.com");
        assert_eq!(t.host_unicode, "\u{0430}pi.example.com");
        assert!(t.url.starts_with("https://xn--pi-6kc.example.com/v1/x"));
        let t = target_of("HTTPS://API.Example.COM:8443/a/../b/./c?x=1#frag", None).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("api.example.com", Some(8443), "/b/c"));
        assert_eq!(t.query.as_deref(), Some("x=1"));
    }

    #[test]
    fn an_injected_query_secret_is_shown_masked() {
        let t = target_of("https://api.example.com/v1?key=agent-guess&x=1", Some("key")).unwrap();
        assert_eq!(
            t.query.as_deref(),
            Some("x=1&key=%E2%80%A2%E2%80%A2%E2%80%A2%E2%80%A2%E2%80%A2%E2%80%A2")
        );
        assert!(!t.url.contains("agent-guess"));
        assert!(target_of("not a url", None).is_none());
    }
}
