//! Property tests (proptest, 256 cases each): agent-supplied requests never panic the
//! request parser, and no spelling of a blocked address gets past the egress guard.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use server::call::request::ExecuteRequest;
use server::proxy::egress::{EgressGuard, EgressRules};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Strings agents might send: arbitrary Unicode, or near-valid pieces.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/=_-]{0,40}",
        "(GET|get|PoSt|DELETE|CONNECT|TRACE| GET|)",
        "(https?|ftp|file|)://[a-z0-9.:@\\[\\]%-]{0,30}(/[ -~]{0,20})?",
    ]
}

fn execute_request() -> impl Strategy<Value = ExecuteRequest> {
    (
        (text(), text(), proptest::collection::btree_map(text(), text(), 0..6)),
        (proptest::option::of(text()), proptest::option::of(text()), proptest::option::of(text())),
        (proptest::option::of(any::<i64>()), proptest::option::of(text()), proptest::option::of(text())),
        any::<bool>(),
    )
        .prop_map(
            |(
                (method, url, headers),
                (body, body_base64, secret),
                (cost, idempotency_key, action),
                follow,
            )| {
                ExecuteRequest {
                    method,
                    url,
                    headers: headers.into_iter().collect::<BTreeMap<_, _>>(),
                    body,
                    body_base64,
                    secret,
                    cost_micros: cost,
                    idempotency_key,
                    action,
                    follow_redirects: follow,
                }
            },
        )
}

/// An address in a range no agent may reach: loopback, private, link-local (and the
/// cloud metadata address in it), this-network, carrier-grade NAT.
fn blocked_v4() -> impl Strategy<Value = Ipv4Addr> {
    let within = |net: u32, len: u32| {
        any::<u32>().prop_map(move |r| Ipv4Addr::from_bits(net | (r & (u32::MAX >> len))))
    };
    prop_oneof![
        within(u32::from(Ipv4Addr::new(127, 0, 0, 0)), 8),
        within(u32::from(Ipv4Addr::new(10, 0, 0, 0)), 8),
        within(u32::from(Ipv4Addr::new(172, 16, 0, 0)), 12),
        within(u32::from(Ipv4Addr::new(192, 168, 0, 0)), 16),
        within(u32::from(Ipv4Addr::new(169, 254, 0, 0)), 16),
        within(u32::from(Ipv4Addr::new(0, 0, 0, 0)), 8),
        within(u32::from(Ipv4Addr::new(100, 64, 0, 0)), 10),
        Just(Ipv4Addr::new(169, 254, 169, 254)),
        Just(Ipv4Addr::new(100, 100, 100, 200)),
    ]
}

/// One octet as the WHATWG parser reads it: decimal, 0x-hex (any case) or 0-octal.
fn octet(v: u32, style: u8, upper: bool) -> String {
    match style % 3 {
        0 => v.to_string(),
        1 if upper => format!("0X{v:X}"),
        1 => format!("0x{v:x}"),
        _ => format!("0{v:o}"),
    }
}

/// `ip` as a URL host, in one of the spellings URL parsers accept.
fn spell(ip: Ipv4Addr, how: u8, styles: [u8; 4], upper: bool) -> String {
    let [a, b, c, d] = ip.octets().map(u32::from);
    let n = ip.to_bits();
    let (hi, lo) = (n >> 16, n & 0xffff);
    match how % 12 {
        0 => format!("{a}.{b}.{c}.{d}"),
        1 => n.to_string(),
        2 => octet(n, 1, upper),
        3 => octet(n, 2, upper),
        4 => format!(
            "{}.{}.{}.{}",
            octet(a, styles[0], upper),
            octet(b, styles[1], upper),
            octet(c, styles[2], upper),
            octet(d, styles[3], upper)
        ),
        // Short forms: the last part fills the remaining bytes.
        5 => format!("{}.{}", octet(a, styles[0], upper), octet(n & 0xff_ffff, styles[1], upper)),
        6 => format!("{a}.{b}.{}", octet(n & 0xffff, styles[2], upper)),
        7 => format!("[::ffff:{a}.{b}.{c}.{d}]"),
        8 => format!("[::FFFF:{hi:X}:{lo:x}]"),
        9 => format!("[::{a}.{b}.{c}.{d}]"),
        10 => format!("[64:ff9b::{hi:x}:{lo:x}]"),
        _ => format!("[0:0:0:0:0:ffff:{a}.{b}.{c}.{d}]"),
    }
}

fn blocked_v6() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[::1]".to_owned()),
        Just("[0:0:0:0:0:0:0:1]".to_owned()),
        Just("[::]".to_owned()),
        Just("[fd00:ec2::254]".to_owned()),
        any::<u128>().prop_map(|r| format!("[{}]", std::net::Ipv6Addr::from_bits(0xfe80 << 112 | (r >> 16)))),
        any::<u128>().prop_map(|r| format!("[{}]", std::net::Ipv6Addr::from_bits(0xfc << 120 | (r >> 8)))),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Whatever an agent sends, turning it into a proxy request answers Ok or a 4xx, never panics.
    #[test]
    fn arbitrary_execute_requests_never_panic(req in execute_request(), max in 0usize..4096) {
        if let Err(e) = req.into_proxy_request(max) {
            prop_assert!((400..500).contains(&e.status), "{} {}", e.status, e.message);
        }
    }

    /// No spelling of a blocked IPv4 address is allowed, whatever decorates the URL.
    #[test]
    fn blocked_ipv4_in_any_spelling_is_refused(
        ip in blocked_v4(),
        how in any::<u8>(),
        styles in any::<[u8; 4]>(),
        upper in any::<bool>(),
        scheme in "(http|HTTP|https|hTtPs)",
        trailing_dot in any::<bool>(),
        userinfo in proptest::option::of("[a-z]{1,5}(:[a-z]{0,5})?"),
        port in proptest::option::of(prop_oneof![Just(80u16), Just(443u16), any::<u16>()]),
        path in "(/[a-zA-Z0-9._~-]{0,10}){0,3}",
    ) {
        let mut host = spell(ip, how, styles, upper);
        if trailing_dot && !host.starts_with('[') {
            host.push('.');
        }
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        let url = format!("{scheme}://{userinfo}{host}{port}{path}");
        let guard = EgressGuard::new(EgressRules::default());
        prop_assert!(guard.check_url(&url).is_err(), "{url} ({ip}) was allowed");
    }

    /// The spellings are real: a public address spelled the same way is accepted as itself.
    #[test]
    fn ipv4_spellings_denote_the_address(
        bits in any::<u32>(),
        how in 0u8..7,
        styles in any::<[u8; 4]>(),
        upper in any::<bool>(),
    ) {
        let ip = Ipv4Addr::from_bits(bits);
        prop_assume!(EgressGuard::classify(ip.into()).is_none());
        let url = format!("http://{}/", spell(ip, how, styles, upper));
        let target = EgressGuard::new(EgressRules::default()).check_url(&url);
        prop_assert_eq!(target.map(|t| t.host), Ok(ip.to_string()), "{}", url);
    }

    #[test]
    fn blocked_ipv6_is_refused(host in blocked_v6(), scheme in "(http|https)", path in "(/[a-z]{0,8}){0,2}") {
        let url = format!("{scheme}://{host}{path}");
        prop_assert!(EgressGuard::new(EgressRules::default()).check_url(&url).is_err(), "{url} was allowed");
    }

    /// Arbitrary input, bare or after a scheme, is refused or accepted but never panics.
    #[test]
    fn arbitrary_urls_never_panic(s in any::<String>(), t in text()) {
        let guard = EgressGuard::new(EgressRules::default());
        for url in [s.clone(), format!("http://{s}"), format!("https://{t}/"), t.clone()] {
            if let Ok(target) = guard.check_url(&url) {
                // What was accepted must not be a blocked literal address.
                if let Ok(ip) = target.host.parse::<std::net::IpAddr>() {
                    prop_assert!(EgressGuard::classify(ip).is_none(), "{url} reached {ip}");
                }
            }
        }
    }
}
