//! Is an IP address globally routable? If not, why not.
//!
//! **Why hand-written tables and not a crate.** `std`'s `Ipv4Addr::is_global` is still unstable.
//! The one maintained-looking crate with an `is_global` (`ip_network` 0.4, last released 2021)
//! counts global-scope IPv6 multicast as global, does not look inside IPv4-mapped or NAT64
//! addresses, predates newer registry entries (3fff::/20, 5f00::/16, 100:0:0:1::/64) and cannot
//! say *why* an address is refused. The tables below follow the IANA IPv4 and IPv6 Special-Purpose
//! Address Registries (plus multicast and the IPv4 broadcast address from the address-space
//! registries), are short enough to review line by line, and every entry is covered by a
//! first/last/neighbour test.
//!
//! **Where the IANA registry says "globally reachable" but we still refuse** (nothing an agent
//! needs lives there, and refusing is the safe side): 192.0.0.9 and 192.0.0.10 (PCP/TURN anycast)
//! inside 192.0.0.0/24, 192.88.99.0/24 (deprecated 6to4 relays, RFC 7526: they forward into
//! IPv6), every 2001::/23 exception (anycast services, AMT, AS112, ORCHIDv2, DET), Teredo and
//! 6to4 as a whole (tunnels whose far end is an IPv4 address we would otherwise not see), and all
//! IPv6 outside 2000::/3: IANA has allocated only 2000::/3 as global unicast, so everything else
//! is refused by default and a future special range there cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges that are not globally routable, most specific first (the first match gives the
/// reason). Reasons are shown to agents: they name the range, never anything secret.
const V4_BLOCKED: &[(Ipv4Addr, u8, &str)] = &[
    // Cloud metadata endpoints first, so the reason names them (each is also inside a wider
    // blocked range below).
    (Ipv4Addr::new(169, 254, 169, 254), 32, "cloud metadata endpoint (169.254.169.254)"),
    (Ipv4Addr::new(169, 254, 170, 2), 32, "cloud metadata endpoint (169.254.170.2, ECS task credentials)"),
    (Ipv4Addr::new(100, 100, 100, 200), 32, "cloud metadata endpoint (100.100.100.200)"),
    // Cloud platform service addresses. Most sit inside ranges refused anyway (link-local,
    // CGNAT, unique-local); these are on *public* addresses, so no range check catches them:
    // - Azure's WireServer / platform DNS / health-probe source, 168.63.129.16 (Microsoft Learn,
    //   "What is IP address 168.63.129.16?", learn.microsoft.com/azure/virtual-network/what-is-ip-address-168-63-129-16).
    //   It serves the VM agent's goal state and certificates, i.e. credentials.
    // - IBM Cloud's service network 161.26.0.0/16 (IBM Cloud docs, "Service network": DNS
    //   resolvers 161.26.0.10/.11, NTP, and the internal service endpoints of classic
    //   infrastructure, cloud.ibm.com/docs/security-groups?topic=security-groups-ibm-cloud-ip-ranges).
    // Listed before any range so the reason names the platform.
    (Ipv4Addr::new(168, 63, 129, 16), 32, "cloud platform endpoint (Azure 168.63.129.16)"),
    (Ipv4Addr::new(161, 26, 0, 0), 16, "cloud platform service network (IBM Cloud 161.26.0.0/16)"),
    // Addresses inside refused ranges, named for the reason they give (sources as above, plus
    // AWS EC2 user guide "Instance metadata" / "Amazon DNS server" / "Amazon Time Sync";
    // Tencent Cloud "Instance metadata"; Oracle Cloud "Getting instance metadata"):
    (Ipv4Addr::new(169, 254, 169, 253), 32, "cloud platform endpoint (AWS DNS 169.254.169.253)"),
    (Ipv4Addr::new(169, 254, 169, 123), 32, "cloud platform endpoint (AWS time sync 169.254.169.123)"),
    (Ipv4Addr::new(169, 254, 0, 23), 32, "cloud metadata endpoint (Tencent 169.254.0.23)"),
    (Ipv4Addr::new(192, 0, 0, 192), 32, "cloud metadata endpoint (Oracle legacy 192.0.0.192)"),
    // 0.0.0.0 connects to the local host on Linux.
    (Ipv4Addr::new(0, 0, 0, 0), 32, "unspecified address (0.0.0.0)"),
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private network (10.0.0.0/8)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "shared address space / carrier-grade NAT (100.64.0.0/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local (169.254.0.0/16)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private network (172.16.0.0/12)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments (192.0.0.0/24)"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation (192.0.2.0/24)"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "deprecated 6to4 relay anycast (192.88.99.0/24)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private network (192.168.0.0/16)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (198.18.0.0/15)"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation (198.51.100.0/24)"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation (203.0.113.0/24)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast (255.255.255.255)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// What to do with an IPv6 range.
#[derive(Clone, Copy)]
enum V6 {
    /// Refuse, with this reason.
    Block(&'static str),
    /// The last 32 bits are an IPv4 address the packet really goes to (or, for the deprecated
    /// IPv4-compatible form, that some stacks treat it as): judge that address instead.
    EmbedsV4,
}

/// IPv6 ranges, most specific first (the first match decides).
const V6_RANGES: &[(Ipv6Addr, u8, V6)] = &[
    (
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254),
        128,
        V6::Block("cloud metadata endpoint (fd00:ec2::254)"),
    ),
    // AWS Nitro's IPv6 DNS and time-sync endpoints (inside fc00::/7, named for the reason).
    (
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0253),
        128,
        V6::Block("cloud platform endpoint (AWS DNS fd00:ec2::253)"),
    ),
    (
        Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0123),
        128,
        V6::Block("cloud platform endpoint (AWS time sync fd00:ec2::123)"),
    ),
    (Ipv6Addr::UNSPECIFIED, 128, V6::Block("unspecified address (::)")),
    (Ipv6Addr::LOCALHOST, 128, V6::Block("loopback (::1)")),
    // ::ffff:a.b.c.d — a dual-stack socket connects to a.b.c.d itself.
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96, V6::EmbedsV4),
    // ::a.b.c.d — deprecated IPv4-compatible form (RFC 4291); judged by the IPv4 inside.
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96, V6::EmbedsV4),
    // 64:ff9b::a.b.c.d — the well-known NAT64 prefix (RFC 6052). Judged by the IPv4 inside
    // rather than refused outright: on an IPv6-only host with DNS64 every IPv4-only API resolves
    // to this prefix, so refusing it would cut off the IPv4 internet.
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96, V6::EmbedsV4),
    // Local-use NAT64 (RFC 8215): operator-chosen layout, so we cannot know what is embedded.
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, V6::Block("local-use NAT64 (64:ff9b:1::/48)")),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, V6::Block("discard-only (100::/64)")),
    (Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0), 64, V6::Block("dummy prefix (100:0:0:1::/64)")),
    // Teredo carries an obfuscated IPv4 server and client address; tunnelling to them is never
    // what an API call needs, so the whole prefix is refused.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, V6::Block("Teredo tunnelling (2001::/32)")),
    (Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 48, V6::Block("benchmarking (2001:2::/48)")),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, V6::Block("IETF protocol assignments (2001::/23)")),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, V6::Block("documentation (2001:db8::/32)")),
    // 6to4 embeds an IPv4 address in bits 16..48; refused whole, like Teredo (deprecated relays,
    // and a tunnel to an IPv4 address is never what an API call needs).
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, V6::Block("6to4 tunnelling (2002::/16)")),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, V6::Block("documentation (3fff::/20)")),
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16, V6::Block("segment-routing SIDs (5f00::/16)")),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, V6::Block("unique local (fc00::/7)")),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, V6::Block("link-local (fe80::/10)")),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, V6::Block("site-local, deprecated (fec0::/10)")),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, V6::Block("multicast (ff00::/8)")),
];

/// Only 2000::/3 is allocated as global unicast; everything outside it (and outside the ranges
/// handled above) is reserved by the IETF.
const V6_GLOBAL_UNICAST: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
const V6_NOT_GLOBAL_UNICAST: &str = "reserved, outside global unicast 2000::/3";

fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    // `len == 0` would shift by 32 bits; no table entry uses it.
    len == 0 || (ip.to_bits() ^ net.to_bits()) >> (32 - u32::from(len)) == 0
}

fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    len == 0 || (ip.to_bits() ^ net.to_bits()) >> (128 - u32::from(len)) == 0
}

/// Why `ip` must not be connected to, or `None` when it is globally routable.
///
/// This knows nothing of the allow list: [`super::EgressGuard`] applies that first.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    V4_BLOCKED.iter().find(|(net, len, _)| v4_in(ip, *net, *len)).map(|(_, _, reason)| *reason)
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    match V6_RANGES.iter().find(|(net, len, _)| v6_in(ip, *net, *len)) {
        Some((_, _, V6::Block(reason))) => Some(reason),
        Some((_, _, V6::EmbedsV4)) => {
            // The low 32 bits; the truncation is the point.
            classify_v4(Ipv4Addr::from_bits(ip.to_bits() as u32))
        }
        None if v6_in(ip, V6_GLOBAL_UNICAST.0, V6_GLOBAL_UNICAST.1) => None,
        None => Some(V6_NOT_GLOBAL_UNICAST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `None`: must be allowed. `Some(word)`: must be refused with a reason containing `word`.
    /// Each range: its first and last address, and the neighbours just outside it.
    const CASES: &[(&str, Option<&str>)] = &[
        // 0.0.0.0/8
        ("0.0.0.0", Some("unspecified")),
        ("0.0.0.1", Some("this network")),
        ("0.255.255.255", Some("this network")),
        ("1.0.0.0", None),
        // 10.0.0.0/8
        ("9.255.255.255", None),
        ("10.0.0.0", Some("private")),
        ("10.255.255.255", Some("private")),
        ("11.0.0.0", None),
        // 100.64.0.0/10
        ("100.63.255.255", None),
        ("100.64.0.0", Some("carrier-grade NAT")),
        ("100.127.255.255", Some("carrier-grade NAT")),
        ("100.128.0.0", None),
        ("100.100.100.200", Some("metadata")),
        ("100.100.100.199", Some("carrier-grade NAT")),
        // 127.0.0.0/8
        ("126.255.255.255", None),
        ("127.0.0.0", Some("loopback")),
        ("127.0.0.1", Some("loopback")),
        ("127.255.255.255", Some("loopback")),
        ("128.0.0.0", None),
        // 169.254.0.0/16 and the metadata addresses inside it
        ("169.253.255.255", None),
        ("169.254.0.0", Some("link-local")),
        ("169.254.169.253", Some("AWS DNS")),
        ("169.254.169.254", Some("metadata")),
        ("169.254.169.255", Some("link-local")),
        ("169.254.170.2", Some("metadata")),
        ("169.254.255.255", Some("link-local")),
        ("169.255.0.0", None),
        // 172.16.0.0/12
        ("172.15.255.255", None),
        ("172.16.0.0", Some("private")),
        ("172.31.255.255", Some("private")),
        ("172.32.0.0", None),
        // 192.0.0.0/24 (including the registry's "globally reachable" PCP/TURN anycast)
        ("191.255.255.255", None),
        ("192.0.0.0", Some("IETF")),
        ("192.0.0.9", Some("IETF")),
        ("192.0.0.255", Some("IETF")),
        ("192.0.1.0", None),
        // 192.0.2.0/24
        ("192.0.1.255", None),
        ("192.0.2.0", Some("documentation")),
        ("192.0.2.255", Some("documentation")),
        ("192.0.3.0", None),
        // 192.88.99.0/24
        ("192.88.98.255", None),
        ("192.88.99.0", Some("6to4 relay")),
        ("192.88.99.255", Some("6to4 relay")),
        ("192.88.100.0", None),
        // 192.168.0.0/16
        ("192.167.255.255", None),
        ("192.168.0.0", Some("private")),
        ("192.168.255.255", Some("private")),
        ("192.169.0.0", None),
        // 198.18.0.0/15
        ("198.17.255.255", None),
        ("198.18.0.0", Some("benchmarking")),
        ("198.19.255.255", Some("benchmarking")),
        ("198.20.0.0", None),
        // 198.51.100.0/24
        ("198.51.99.255", None),
        ("198.51.100.0", Some("documentation")),
        ("198.51.100.255", Some("documentation")),
        ("198.51.101.0", None),
        // 203.0.113.0/24
        ("203.0.112.255", None),
        ("203.0.113.0", Some("documentation")),
        ("203.0.113.255", Some("documentation")),
        ("203.0.114.0", None),
        // 224.0.0.0/4, 240.0.0.0/4, broadcast
        ("223.255.255.255", None),
        ("224.0.0.0", Some("multicast")),
        ("239.255.255.255", Some("multicast")),
        ("240.0.0.0", Some("reserved")),
        ("255.255.255.254", Some("reserved")),
        ("255.255.255.255", Some("broadcast")),
        // Global IPv4 samples.
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("9.9.9.9", None),
        ("192.31.196.1", None), // AS112: globally reachable per IANA
        // IPv6: ::, ::1, IPv4-compatible ::/96
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::2", Some("this network")),
        ("::7f00:1", Some("loopback")),
        ("::a00:1", Some("private")),
        ("::808:808", None),
        ("::ffff:ffff", Some("broadcast")),
        ("::1:0:0", Some("reserved, outside")),
        // IPv4-mapped ::ffff:0:0/96
        ("::fffe:ffff:ffff", Some("reserved, outside")),
        ("::ffff:0.0.0.0", Some("unspecified")),
        ("::ffff:127.0.0.1", Some("loopback")),
        ("::ffff:169.254.169.254", Some("metadata")),
        ("::ffff:168.63.129.16", Some("Azure")),
        ("::ffff:a83f:8110", Some("Azure")),
        ("64:ff9b::a83f:8110", Some("Azure")),
        ("::a83f:8110", Some("Azure")),
        ("fd00:ec2::253", Some("AWS DNS")),
        ("fd00:ec2::123", Some("AWS time")),
        ("::ffff:10.1.2.3", Some("private")),
        ("::ffff:8.8.8.8", None),
        ("::ffff:255.255.255.255", Some("broadcast")),
        ("::1:0:0:0", Some("reserved, outside")),
        // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
        ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("64:ff9b::", Some("unspecified")),
        ("64:ff9b::8.8.8.8", None),
        ("64:ff9b::127.0.0.1", Some("loopback")),
        ("64:ff9b::169.254.169.254", Some("metadata")),
        ("64:ff9b::ffff:ffff", Some("broadcast")),
        ("64:ff9b::1:0:0", Some("reserved, outside")),
        ("64:ff9b:1::", Some("local-use NAT64")),
        ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some("local-use NAT64")),
        ("64:ff9b:2::", Some("reserved, outside")),
        // 100::/64 and 100:0:0:1::/64
        ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("100::", Some("discard")),
        ("100::ffff:ffff:ffff:ffff", Some("discard")),
        ("100:0:0:1::", Some("dummy")),
        ("100:0:0:1:ffff:ffff:ffff:ffff", Some("dummy")),
        ("100:0:0:2::", Some("reserved, outside")),
        // 2000::/3 boundary
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("2000::", None),
        ("3fff:1000::", None),
        ("4000::", Some("reserved, outside")),
        // 2001::/23, Teredo 2001::/32, benchmarking 2001:2::/48
        ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001::", Some("Teredo")),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some("Teredo")),
        ("2001:1::", Some("IETF")),
        ("2001:1::1", Some("IETF")),
        ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", Some("IETF")),
        ("2001:2::", Some("benchmarking")),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some("benchmarking")),
        ("2001:2:1::", Some("IETF")),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Some("IETF")),
        ("2001:200::", None),
        // 2001:db8::/32
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db8::", Some("documentation")),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Some("documentation")),
        ("2001:db9::", None),
        // 6to4 2002::/16
        ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2002::", Some("6to4")),
        ("2002:7f00:1::", Some("6to4")),
        ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("6to4")),
        ("2003::", None),
        // 3fff::/20
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("3fff::", Some("documentation")),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Some("documentation")),
        // 5f00::/16
        ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("5f00::", Some("segment-routing")),
        ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("segment-routing")),
        ("5f01::", Some("reserved, outside")),
        // fc00::/7 and the AWS metadata address inside it
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("fc00::", Some("unique local")),
        ("fd00:ec2::254", Some("metadata")),
        ("fd00:ec2::253", Some("AWS DNS")),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("unique local")),
        ("fe00::", Some("reserved, outside")),
        // fe80::/10 and fec0::/10
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("reserved, outside")),
        ("fe80::", Some("link-local")),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("link-local")),
        ("fec0::", Some("site-local")),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("site-local")),
        // ff00::/8, including global-scope multicast
        ("ff00::", Some("multicast")),
        ("ff0e::1", Some("multicast")),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("multicast")),
        // Global IPv6 samples.
        ("2606:4700:4700::1111", None),
        ("2001:4860:4860::8888", None),
        ("2a00:1450:4001:800::200e", None),
        ("2620:fe::fe", None),
    ];

    #[test]
    fn every_boundary_and_neighbour() {
        let mut failures = Vec::new();
        for (addr, expected) in CASES {
            let ip: IpAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
            let got = classify(ip);
            let ok = match (expected, got) {
                (None, None) => true,
                (Some(word), Some(reason)) => reason.contains(word),
                _ => false,
            };
            if !ok {
                failures.push(format!("{addr}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_table_entry_is_reachable() {
        // An entry shadowed by earlier, wider ones would never give its reason: its first, second
        // or last address must be classified with that entry's own reason.
        for (net, len, reason) in V4_BLOCKED {
            let first = net.to_bits();
            let last = first | u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            let hits = [first, first.saturating_add(1), last]
                .into_iter()
                .any(|a| classify_v4(Ipv4Addr::from_bits(a)) == Some(*reason));
            assert!(hits, "{net}/{len} never yields {reason:?}");
        }
        for (net, len, action) in V6_RANGES {
            if let V6::Block(reason) = action {
                let first = net.to_bits();
                let last = first | u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
                let hits = [first, first.saturating_add(1), last]
                    .into_iter()
                    .any(|a| classify_v6(Ipv6Addr::from_bits(a)) == Some(*reason));
                assert!(hits, "{net}/{len} never yields {reason:?}");
            }
        }
    }

    #[test]
    fn prefix_match_edges() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert!(v4_in(ip, Ipv4Addr::new(10, 1, 2, 3), 32));
        assert!(!v4_in(ip, Ipv4Addr::new(10, 1, 2, 4), 32));
        assert!(v4_in(ip, Ipv4Addr::new(0, 0, 0, 0), 0));
        assert!(v4_in(ip, Ipv4Addr::new(11, 0, 0, 0), 7));
        assert!(!v4_in(ip, Ipv4Addr::new(11, 0, 0, 0), 8));
        let ip6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert!(v6_in(ip6, ip6, 128));
        assert!(!v6_in(ip6, "2001:db8::2".parse().unwrap(), 128));
        assert!(v6_in(ip6, Ipv6Addr::UNSPECIFIED, 0));
    }
}
