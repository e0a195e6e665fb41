//! Host normalisation and the names refused before any DNS lookup.

use std::net::IpAddr;

use url::Host;

/// Cloud and cluster metadata/control-plane names. They resolve (through the platform's DNS or
/// search domains) to the endpoints that hand out credentials, so they are refused by name too,
/// not only by address: an allow-listed network or a split-horizon DNS answer must not turn them
/// into a credential leak.
const METADATA_NAMES: &[&str] = &[
    "metadata",                 // GCP, through the search domain
    "metadata.google.internal", // GCP
    "metadata.goog",            // GCP
    "instance-data",            // AWS, through the search domain
    "instance-data.ec2.internal",
    "metadata.tencentyun.com",      // Tencent Cloud
    "api.metadata.cloud.ibm.com",   // IBM Cloud VPC
    "metadata.platformequinix.com", // Equinix Metal
    "metadata.packet.net",          // Equinix Metal (former name)
    "wireserver",                   // Azure, as some agents name 168.63.129.16
    "kubernetes",                   // Kubernetes API server, through search domains
    "kubernetes.default",           // ...
    "kubernetes.default.svc",       // ...
    "kubernetes.default.svc.cluster.local",
];

/// Special-use suffixes that can never name a public service, whatever they resolve to:
/// `.internal` (reserved by ICANN for private use, 2024), `.local` (mDNS, RFC 6762) and
/// `.home.arpa` (RFC 8375). Refusing them by name also catches internal services that sit on
/// public, firewall-protected addresses, which no address check can tell apart. `localhost` and
/// `*.localhost` are deliberately *not* here: they always resolve to loopback, which the address
/// check refuses, and leaving them to it keeps a loopback `Net` rule working for development.
const PRIVATE_SUFFIXES: &[&str] = &["internal", "local", "home.arpa"];

/// The canonical form of a parsed host: lowercase ASCII with no trailing dot for names, the
/// standard text form for IPs (IPv6 without brackets). The `url` crate has already applied the
/// WHATWG host parser (IDNA mapping, percent-decoding, every IPv4 spelling); on top of that a
/// name must be a plausible DNS name (letters, digits, `-`, `_`; no empty labels) so nothing
/// exotic reaches the system resolver.
pub(crate) fn normalize_host<S: AsRef<str>>(host: Host<S>) -> Result<(String, Option<IpAddr>), String> {
    let name = match host {
        Host::Ipv4(ip) => return Ok((ip.to_string(), Some(ip.into()))),
        Host::Ipv6(ip) => return Ok((ip.to_string(), Some(ip.into()))),
        Host::Domain(name) => name.as_ref().to_ascii_lowercase(),
    };
    let name = name.strip_suffix('.').unwrap_or(&name);
    if name.is_empty() || name.len() > 253 {
        return Err("invalid host name".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("invalid host name (empty or overlong label)".into());
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("invalid character in host name".into());
        }
    }
    // The WHATWG parser already turns every numeric spelling into `Host::Ipv4`; this is a
    // backstop so that nothing a resolver would read as an address is treated as a name.
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok((ip.to_string(), Some(ip)));
    }
    Ok((name.to_owned(), None))
}

/// Parses and normalises a host given as text (an allow-list host, or the name reqwest asks
/// its resolver for). Bracketed IPv6 is accepted.
pub(crate) fn normalize_host_str(host: &str) -> Result<(String, Option<IpAddr>), String> {
    let parsed = Host::parse(host).map_err(|_| "invalid host".to_string())?;
    normalize_host(parsed)
}

/// Why a normalised host *name* is refused before DNS, if it is.
pub(crate) fn refused_name(name: &str) -> Option<&'static str> {
    if METADATA_NAMES.contains(&name) {
        return Some("is a cloud metadata / control-plane host name");
    }
    let private = PRIVATE_SUFFIXES
        .iter()
        .any(|suffix| name == *suffix || name.strip_suffix(suffix).is_some_and(|rest| rest.ends_with('.')));
    private.then_some("is under a private-use domain (.internal, .local, .home.arpa)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        let n = |s: &str| normalize_host_str(s).map(|(h, ip)| (h, ip.is_some()));
        assert_eq!(n("Example.COM."), Ok(("example.com".into(), false)));
        assert_eq!(n("127.1"), Ok(("127.0.0.1".into(), true)));
        assert_eq!(n("0x7f000001"), Ok(("127.0.0.1".into(), true)));
        assert_eq!(n("[::FFFF:127.0.0.1]"), Ok(("::ffff:127.0.0.1".into(), true)));
        assert_eq!(n("bücher.de"), Ok(("xn--bcher-kva.de".into(), false)));
        assert_eq!(n("a_b-c.example"), Ok(("a_b-c.example".into(), false)));
        for bad in ["", ".", "a..b", ".a", "a!b", "*.example.com", "a$b", "x..", "exa mple", "a/b"] {
            assert!(n(bad).is_err(), "{bad:?} accepted");
        }
        let long_label = "a".repeat(64);
        assert!(n(&long_label).is_err());
        assert!(n(&"a".repeat(63)).is_ok());
        let long_name = vec!["a".repeat(63); 4].join(".");
        assert!(n(&long_name).is_err());
    }

    #[test]
    fn refused_names() {
        for name in [
            "metadata",
            "metadata.google.internal",
            "metadata.goog",
            "instance-data",
            "instance-data.ec2.internal",
            "metadata.tencentyun.com",      // Tencent Cloud
            "api.metadata.cloud.ibm.com",   // IBM Cloud VPC
            "metadata.platformequinix.com", // Equinix Metal
            "metadata.packet.net",          // Equinix Metal (former name)
            "wireserver",                   // Azure, as some agents name 168.63.129.16
            "kubernetes.default.svc",
            "internal",
            "db.internal",
            "printer.local",
            "nas.home.arpa",
        ] {
            assert!(refused_name(name).is_some(), "{name}");
        }
        for name in [
            "example.com",
            "metadata.example.com",
            "notinternal",
            "internal.example.com",
            "xlocal",
            "localhost",
            "app.localhost",
            "arpa",
            "myhome.arpa",
        ] {
            assert_eq!(refused_name(name), None, "{name}");
        }
    }
}
