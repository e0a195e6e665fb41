//! The operator's egress configuration: allowed ports and the allow list, and their parsers.

use std::net::IpAddr;

pub use ipnet::IpNet;

use super::host::normalize_host;

/// What an operator allows beyond "globally routable addresses on ports 80 and 443".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRules {
    /// Ports any globally routable target may use.
    pub allowed_ports: Vec<u16>,
    /// Exceptions; empty by default.
    pub allow: Vec<AllowRule>,
}

impl Default for EgressRules {
    fn default() -> Self {
        Self { allowed_ports: vec![80, 443], allow: Vec::new() }
    }
}

/// One allow-list exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// Addresses in this network are acceptable even if not globally routable. For a literal IP
    /// target (`http://127.0.0.1:41234/`) this also lifts the port restriction, so tests and
    /// development can reach a mock upstream on a random port. A hostname target still needs an
    /// allowed port (or a `HostPort` rule): its port is checked before DNS, and the resolver
    /// reqwest calls never learns the port.
    Net(IpNet),
    /// Exactly this host on exactly this port, whatever it resolves to. A host named by a
    /// `HostPort` rule is *pinned* to its listed ports: `http://api.internal:80/` is refused when
    /// only `api.internal:443` is listed, even though 80 is an allowed port. The pin is what makes
    /// the port-blind reqwest resolver safe: every URL that reaches it for this host was checked
    /// to use a listed port. (To also reach such a host on a standard port, list that port too.)
    HostPort { host: String, port: u16 },
}

/// Parses a comma-separated allow list: CIDRs (`10.0.0.0/8`, `::1/128`), bare IPs (a single
/// address) and `host:port` pairs (`localhost:8080`, `[::1]:9000`, `api.internal:443`).
/// Empty entries are ignored, so `""` is an empty list. An IPv6 address with a port must be
/// bracketed: unbracketed `::1:9000` is the address `::1:9000`.
pub fn parse_allow_list(s: &str) -> Result<Vec<AllowRule>, String> {
    s.split(',').map(str::trim).filter(|entry| !entry.is_empty()).map(parse_allow_rule).collect()
}

fn parse_allow_rule(entry: &str) -> Result<AllowRule, String> {
    let bad = |why: &str| format!("invalid egress allow-list entry {entry:?}: {why}");
    if entry.contains('/') {
        // `trunc` drops host bits: 10.1.2.3/8 means 10.0.0.0/8, as most CIDR parsers read it.
        return entry
            .parse::<IpNet>()
            .map(|net| AllowRule::Net(net.trunc()))
            .map_err(|_| bad("expected a CIDR such as 10.0.0.0/8 or fd00::/8"));
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Ok(AllowRule::Net(IpNet::from(ip)));
    }
    let (host, port) =
        entry.rsplit_once(':').ok_or_else(|| bad("expected a CIDR, an IP address or host:port"))?;
    let port = parse_port(port).map_err(|why| bad(&why))?;
    let parsed = url::Host::parse(host).map_err(|_| bad("invalid host"))?;
    let (host, _) = normalize_host(parsed).map_err(|why| bad(&why))?;
    Ok(AllowRule::HostPort { host, port })
}

/// Parses a comma-separated port list such as `80,443,8443`. Empty entries are ignored, so `""`
/// allows no port (only `HostPort` rules and literal IPs in `Net` rules can then be reached).
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    let mut ports = s
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| parse_port(entry).map_err(|why| format!("invalid port {entry:?}: {why}")))
        .collect::<Result<Vec<_>, _>>()?;
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        // `parse` accepts a leading '+'; a port is digits only.
        Ok(port) if port != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err("expected a port number from 1 to 65535".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> AllowRule {
        AllowRule::Net(s.parse().unwrap())
    }

    fn hp(host: &str, port: u16) -> AllowRule {
        AllowRule::HostPort { host: host.into(), port }
    }

    #[test]
    fn default_rules() {
        let rules = EgressRules::default();
        assert_eq!(rules.allowed_ports, vec![80, 443]);
        assert!(rules.allow.is_empty());
    }

    #[test]
    fn allow_list_example() {
        let rules =
            parse_allow_list("127.0.0.0/8, ::1/128, localhost:8080, [::1]:9000, api.internal:443").unwrap();
        assert_eq!(
            rules,
            vec![
                net("127.0.0.0/8"),
                net("::1/128"),
                hp("localhost", 8080),
                hp("::1", 9000),
                hp("api.internal", 443),
            ]
        );
    }

    #[test]
    fn allow_list_normalises() {
        assert_eq!(parse_allow_list("").unwrap(), vec![]);
        assert_eq!(parse_allow_list(" , ,").unwrap(), vec![]);
        assert_eq!(
            parse_allow_list("10.1.2.3/8,192.168.1.5,fd00::1").unwrap(),
            vec![net("10.0.0.0/8"), net("192.168.1.5/32"), net("fd00::1/128")]
        );
        // Hosts get the same normalisation as URL hosts: lowercase, no trailing dot, canonical IPs.
        assert_eq!(
            parse_allow_list("API.Internal.:443, 127.1:8080, [0:0::1]:9000").unwrap(),
            vec![hp("api.internal", 443), hp("127.0.0.1", 8080), hp("::1", 9000)]
        );
    }

    #[test]
    fn allow_list_errors_name_the_entry() {
        for bad in [
            "10.0.0.0/33",
            "nonsense/8",
            "localhost",
            "localhost:0",
            "localhost:65536",
            "localhost:+80",
            "localhost:http",
            "::1:9000:x",
            "[::1:9000",
            "a b:80",
            "user@host:80",
            "http://host:80",
            ":80",
            "bad_chars!:80",
        ] {
            let err = parse_allow_list(&format!("10.0.0.0/8, {bad}")).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80,443,8443").unwrap(), vec![80, 443, 8443]);
        assert_eq!(parse_ports(" 443 , 80, 443 ").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("").unwrap(), Vec::<u16>::new());
        for bad in ["0", "65536", "-1", "+80", "http", "80 443", "1e3"] {
            let err = parse_ports(&format!("80,{bad}")).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }
}
