//! Egress guard tests: SSRF bypass tables, allow-list semantics, the resolver and its cache,
//! real loopback HTTP through reqwest, and a bounded fuzz of `check_url`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::dns::Resolve;

use super::*;

fn guard() -> EgressGuard {
    EgressGuard::new(EgressRules::default())
}

fn guard_with(allowed_ports: &[u16], allow: Vec<AllowRule>) -> EgressGuard {
    EgressGuard::new(EgressRules { allowed_ports: allowed_ports.to_vec(), allow })
}

fn net(s: &str) -> AllowRule {
    AllowRule::Net(s.parse().unwrap())
}

fn host_port(host: &str, port: u16) -> AllowRule {
    AllowRule::HostPort { host: host.into(), port }
}

/// Asserts `check_url` refuses `raw` with a reason containing `word`.
#[track_caller]
fn assert_refused(guard: &EgressGuard, raw: &str, word: &str) {
    match guard.check_url(raw) {
        Ok(t) => panic!("{raw:?} was allowed as {}", t.url),
        Err(denied) => {
            assert!(denied.reason.contains(word), "{raw:?}: reason {:?} lacks {word:?}", denied.reason)
        }
    }
}

#[track_caller]
fn assert_allowed(guard: &EgressGuard, raw: &str) -> Target {
    guard.check_url(raw).unwrap_or_else(|d| panic!("{raw:?} refused: {}", d.reason))
}

// ---------------------------------------------------------------------------------------------
// check_url: SSRF bypass tables
// ---------------------------------------------------------------------------------------------

/// Refused by `check_url` under the default rules, with a word the reason must contain.
/// Inspired by public SSRF bypass lists (PayloadsAllTheThings, Smokescreen's tests).
const REFUSED: &[(&str, &str)] = &[
    // Loopback in every IPv4 spelling the WHATWG parser accepts.
    ("http://127.0.0.1/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0177.0000.0000.0001/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0x7f.0x0.0x0.0x1/", "loopback"),
    ("http://0X7F.0.0.1/", "loopback"),
    ("http://127.000.000.001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.127.127.127/", "loopback"),
    ("http://127.0.0.1:80/", "loopback"),
    ("https://127.0.0.1:443/", "loopback"),
    ("HTTP://127.0.0.1/", "loopback"),
    ("http://%31%32%37.0.0.1/", "loopback"),
    ("http://%31%32%37%2e%30%2e%30%2e%31/", "loopback"),
    // Unicode digits and dots: IDNA maps them to ASCII first.
    ("http://①②⑦.0.0.1/", "loopback"),
    ("http://１２７.０.０.１/", "loopback"),
    ("http://127。0。0。1/", "loopback"),
    ("http://127．0．0．1/", "loopback"),
    // Backslashes and missing slashes: special-scheme parsing still finds the host.
    ("http:\\\\127.0.0.1\\", "loopback"),
    ("http:\\\\127.0.0.1/", "loopback"),
    ("http:/127.0.0.1/", "loopback"),
    ("http:127.0.0.1/", "loopback"),
    ("http:///127.0.0.1/", "loopback"),
    // Unspecified ("0" reaches the local host on Linux).
    ("http://0/", "unspecified"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0x0/", "unspecified"),
    ("http://0.0.0.1/", "this network"),
    ("http://[::]/", "unspecified"),
    ("http://[0:0:0:0:0:0:0:0]/", "unspecified"),
    // IPv6 loopback and IPv6 forms embedding IPv4 loopback.
    ("http://[::1]/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[0000::1]:80/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[0:0:0:0:0:ffff:127.0.0.1]/", "loopback"),
    ("http://[::FFFF:7F00:0001]/", "loopback"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://[::7f00:1]/", "loopback"),
    ("http://[64:ff9b::127.0.0.1]/", "loopback"),
    ("http://[64:ff9b:1::1]/", "NAT64"),
    ("http://[2002:7f00:1::]/", "6to4"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fc00::1]/", "unique local"),
    ("http://[fd12:3456::1]/", "unique local"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[2001:2::1]/", "benchmarking"),
    // Cloud metadata, by address (every spelling) and by name.
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.169.254:80/latest/api/token", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://2852039166/", "metadata"),
    ("http://0251.0376.0251.0376/", "metadata"),
    ("http://169.254.43518/", "metadata"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://[::ffff:a9fe:a9fe]/", "metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://169.254.170.2/v2/credentials/x", "metadata"),
    ("http://100.100.100.200/latest/meta-data/", "metadata"),
    // Azure's platform address is public: refused by address, in every spelling the URL
    // parser accepts.
    ("http://168.63.129.16/machine?comp=goalstate", "Azure"),
    ("http://0xa83f8110/", "Azure"),
    ("http://2822734096/", "Azure"),
    ("http://0250.077.0201.020/", "Azure"),
    ("http://168.63.33040/", "Azure"),
    ("http://0xa8.0x3f.0x81.0x10/", "Azure"),
    ("http://[::ffff:168.63.129.16]/", "Azure"),
    ("http://[::ffff:a83f:8110]/", "Azure"),
    ("http://[64:ff9b::a83f:8110]/", "Azure"),
    ("http://161.26.0.10/", "IBM Cloud"),
    ("http://169.254.169.253/", "AWS DNS"),
    ("http://169.254.169.123/", "AWS time"),
    ("http://169.254.0.23/", "Tencent"),
    ("http://[fd00:ec2::253]/", "AWS DNS"),
    ("http://metadata.tencentyun.com/latest/meta-data/", "metadata"),
    ("http://api.metadata.cloud.ibm.com/instance_identity/v1/token", "metadata"),
    ("http://metadata.platformequinix.com/metadata", "metadata"),
    ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", "metadata"),
    ("http://metadata/computeMetadata/v1/", "metadata"),
    ("http://metadata./computeMetadata/v1/", "metadata"),
    ("http://metadata.goog/", "metadata"),
    ("http://instance-data/latest/meta-data/", "metadata"),
    ("http://instance-data.ec2.internal/", "metadata"),
    ("https://kubernetes.default.svc/api", "metadata"),
    ("https://kubernetes.default.svc.cluster.local/api", "metadata"),
    ("http://ｍｅｔａｄａｔａ/", "metadata"),
    // Private-use names.
    ("http://db.internal/", "private-use"),
    ("http://printer.local/", "private-use"),
    ("http://router.home.arpa/", "private-use"),
    // Private and other special IPv4 ranges.
    ("http://10.0.0.1/", "private"),
    ("http://012.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://172.31.255.255/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://0300.0250.0.1/", "private"),
    ("http://3232235521/", "private"),
    ("http://100.64.0.1/", "carrier-grade"),
    ("http://169.254.1.1/", "link-local"),
    ("http://224.0.0.1/", "multicast"),
    ("http://255.255.255.255/", "broadcast"),
    ("http://4294967295/", "broadcast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://192.0.0.170/", "IETF"),
    ("http://192.0.2.1/", "documentation"),
    ("http://198.51.100.7/", "documentation"),
    ("http://203.0.113.9/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    ("http://192.88.99.1/", "6to4 relay"),
    // Userinfo, in any form.
    ("http://evil@127.0.0.1/", "credentials"),
    ("http://127.0.0.1@evil.com/", "credentials"),
    ("http://user:pass@example.com/", "credentials"),
    ("http://user@example.com/", "credentials"),
    ("http://:pass@example.com/", "credentials"),
    ("http://example.com:80@127.0.0.1/", "credentials"),
    ("http://127.0.0.1%2f@evil.com/", "credentials"),
    ("http://foo@evil.com:80@example.com/", "credentials"),
    // Schemes.
    ("file:///etc/passwd", "scheme"),
    ("file://localhost/etc/passwd", "scheme"),
    ("FILE:///etc/passwd", "scheme"),
    ("gopher://127.0.0.1:6379/_INFO", "scheme"),
    ("gopher://example.com/", "scheme"),
    ("ftp://example.com/", "scheme"),
    ("dict://127.0.0.1:11211/stat", "scheme"),
    ("ldap://127.0.0.1/", "scheme"),
    ("sftp://example.com/", "scheme"),
    ("tftp://example.com/", "scheme"),
    ("ws://example.com/", "scheme"),
    ("wss://example.com/", "scheme"),
    ("javascript:alert(1)", "scheme"),
    ("data:text/plain,hello", "scheme"),
    ("jar:http://example.com!/", "scheme"),
    ("netdoc:///etc/passwd", "scheme"),
    ("httpx://example.com/", "scheme"),
    // Missing host, unparseable.
    ("http://", "invalid URL"),
    ("http:///", "invalid URL"),
    ("https://", "invalid URL"),
    ("http://:80/", "invalid URL"),
    ("http://@/", "invalid URL"),
    ("http://?x", "invalid URL"),
    ("http://#x", "invalid URL"),
    ("//example.com/", "invalid URL"),
    ("/path/only", "invalid URL"),
    ("example.com", "invalid URL"),
    ("", "invalid URL"),
    ("http://[::1/", "invalid URL"),
    ("http://[::1]x/", "invalid URL"),
    ("http://[1.2.3.4]/", "invalid URL"),
    ("http://1.2.3.4.5/", "invalid URL"),
    ("http://256.0.0.1/", "invalid URL"),
    ("http://127.0.0.1.1/", "invalid URL"),
    ("http://0x100000000/", "invalid URL"),
    ("http://exa%00mple.com/", "invalid URL"),
    ("http://evil.com%40127.0.0.1/", "invalid URL"),
    ("http://exa mple.com/", "invalid URL"),
    ("http://xn--/", "invalid URL"),
    // IPv6 zone ids are not URL syntax (and would pick an interface).
    ("http://[fe80::1%25eth0]/", "invalid URL"),
    ("http://[fe80::1%eth0]/", "invalid URL"),
    ("http://[::1%251]/", "invalid URL"),
    // Host names no DNS server would serve.
    ("http://a..b/", "host name"),
    ("http://.example.com/", "host name"),
    ("http://./", "host name"),
    ("http://*.example.com/", "host name"),
    ("http://exa$mple.com/", "host name"),
    ("http://example.com../", "host name"),
    // Ports.
    ("http://example.com:22/", "port 22"),
    ("http://example.com:6379/", "port 6379"),
    ("http://example.com:25/", "port 25"),
    ("http://8.8.8.8:22/", "port 22"),
    ("https://example.com:8443/", "port 8443"),
    ("http://example.com:0/", "port 0"),
    ("http://example.com:65535/", "port 65535"),
    ("http://example.com:65536/", "invalid URL"),
    ("http://example.com:99999999999999999999/", "invalid URL"),
    ("http://example.com:-1/", "invalid URL"),
    ("http://example.com:8o/", "invalid URL"),
    ("http://[::1]:22/", ""),
    // Whitespace and control characters.
    (" http://example.com/", "whitespace"),
    ("http://example.com/ ", "whitespace"),
    ("\u{a0}http://example.com/", "whitespace"),
    ("http://127.0.0.1\t/", "control"),
    ("http://exa\nmple.com/", "control"),
    ("http://example.com/\r\nHost: evil", "control"),
    ("http://example.com\u{0}.evil/", "control"),
    ("\u{1}http://example.com/", "control"),
    ("http://example.com/\u{7f}", "control"),
    ("http://example.com/\u{85}", "control"),
    ("ht\ttp://127.0.0.1/", "control"),
];

#[test]
fn ssrf_bypass_table_is_refused() {
    let guard = guard();
    for (raw, word) in REFUSED {
        assert_refused(&guard, raw, word);
    }
}

#[test]
fn refusals_never_echo_credentials() {
    let guard = guard();
    for raw in [
        "http://admin:hunter2@127.0.0.1/",
        "http://admin:hunter2@example.com/",
        "gopher://admin:hunter2@example.com/",
        "http://admin:hunter2@[::1/",
        "http://admin:hunter2@example.com:22/",
    ] {
        let denied = guard.check_url(raw).unwrap_err();
        assert!(!denied.reason.contains("hunter2"), "{raw}: {}", denied.reason);
        assert!(!denied.to_string().contains("hunter2"));
    }
}

#[test]
fn overlong_url_is_refused() {
    let guard = guard();
    let ok = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN - 19));
    assert_eq!(ok.len(), MAX_URL_LEN);
    assert_allowed(&guard, &ok);
    assert_refused(&guard, &format!("{ok}a"), "longer than");
    // Short enough as typed, too long once percent-encoded (2 bytes in, 6 bytes out).
    let encoded = format!("http://example.com/{}", "é".repeat(4000));
    assert!(encoded.len() < MAX_URL_LEN);
    assert_refused(&guard, &encoded, "longer than");
}

/// Public targets that must pass, so the tables above cannot pass by refusing everything.
const ALLOWED: &[(&str, &str, u16)] = &[
    ("http://8.8.8.8/", "8.8.8.8", 80),
    ("https://1.1.1.1/", "1.1.1.1", 443),
    ("http://9.9.9.9:443/", "9.9.9.9", 443),
    ("http://134744072/", "8.8.8.8", 80),
    ("http://0x08080808/", "8.8.8.8", 80),
    ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111", 80),
    ("https://[2001:4860:4860::8888]:443/dns-query?x=1", "2001:4860:4860::8888", 443),
    ("http://[::ffff:8.8.8.8]/", "::ffff:8.8.8.8", 80),
    ("http://[64:ff9b::8.8.8.8]/", "64:ff9b::808:808", 80),
    ("https://example.com/", "example.com", 443),
    ("https://example.com:443/", "example.com", 443),
    ("http://example.com:443/", "example.com", 443),
    ("HTTPS://API.GitHub.COM./repos?page=2#frag", "api.github.com", 443),
    ("http://bücher.de/", "xn--bcher-kva.de", 80),
    ("http://under_score.example/", "under_score.example", 80),
    ("http://internal.example.com/", "internal.example.com", 80),
    ("http://metadata.example.com/", "metadata.example.com", 80),
    // Passes check_url: a loopback name is refused by DNS, not by name (see resolver tests).
    ("http://localhost/", "localhost", 80),
    ("http://example.com\\@127.0.0.1/", "example.com", 80),
];

#[test]
fn public_targets_are_allowed() {
    let guard = guard();
    for (raw, host, port) in ALLOWED {
        let t = assert_allowed(&guard, raw);
        assert_eq!((t.host.as_str(), t.port), (*host, *port), "{raw}");
    }
}

#[test]
fn target_fields() {
    let guard = guard();
    let t = assert_allowed(&guard, "HTTPS://API.GitHub.COM./repos/x%20y?page=2&q=a#frag");
    assert_eq!(t.scheme, "https");
    assert_eq!(t.host, "api.github.com");
    assert_eq!(t.port, 443);
    assert_eq!(t.path, "/repos/x%20y");
    assert_eq!(t.query.as_deref(), Some("page=2&q=a"));
    assert_eq!(t.url.host_str(), Some("api.github.com."));

    let t = assert_allowed(&guard, "http://[2606:4700:4700::1111]:443");
    assert_eq!(t.host, "2606:4700:4700::1111");
    assert_eq!(t.port, 443);
    assert_eq!(t.path, "/");
    assert_eq!(t.query, None);
}

#[test]
fn ports_are_configurable() {
    let guard = guard_with(&[8443], vec![]);
    assert_allowed(&guard, "https://example.com:8443/");
    assert_refused(&guard, "https://example.com/", "port 443");
    assert_refused(&guard, "http://example.com/", "port 80");

    let none = guard_with(&[], vec![]);
    assert_refused(&none, "https://example.com/", "port 443");
}

// ---------------------------------------------------------------------------------------------
// Allow list
// ---------------------------------------------------------------------------------------------

#[test]
fn net_rule_allows_literal_ips_on_any_port() {
    let guard = guard_with(&[80, 443], vec![net("127.0.0.1/32")]);
    assert_allowed(&guard, "http://127.0.0.1:41234/");
    assert_allowed(&guard, "http://127.0.0.1/");
    assert_allowed(&guard, "http://2130706433:9/");
    // The IPv4-mapped form of an allowed IPv4 address is the same destination.
    assert_allowed(&guard, "http://[::ffff:127.0.0.1]:41234/");
    // Just outside the network.
    assert_refused(&guard, "http://127.0.0.2/", "loopback");
    assert_refused(&guard, "http://[::1]:41234/", "port 41234");
    // A name gets no port exception from a Net rule (its port is judged before DNS).
    assert_refused(&guard, "http://localhost:41234/", "port 41234");
    // Other refusals are unaffected.
    assert_refused(&guard, "http://169.254.169.254/", "metadata");
    assert_refused(&guard, "http://u@127.0.0.1:41234/", "credentials");
    assert_refused(&guard, "gopher://127.0.0.1:41234/", "scheme");
}

#[test]
fn net_rule_does_not_unblock_refused_names() {
    let guard = guard_with(&[80, 443], vec![net("10.0.0.0/8")]);
    assert_allowed(&guard, "http://10.1.2.3:8080/");
    assert_refused(&guard, "http://db.internal/", "private-use");
    assert_refused(&guard, "http://metadata.google.internal/", "metadata");
    assert_refused(&guard, "http://11.0.0.0:8080/", "port 8080");
}

#[test]
fn host_port_rule_is_exact_and_pins_the_host() {
    let guard = guard_with(
        &[80, 443],
        vec![
            host_port("LocalHost.", 8080),
            host_port("api.internal", 443),
            host_port("[0::1]", 9000),
            host_port("127.1", 9001),
            host_port("metadata.google.internal", 80),
        ],
    );
    assert_eq!(guard.rules().allow[0], host_port("localhost", 8080), "rules are normalised");
    assert_allowed(&guard, "http://localhost:8080/");
    assert_allowed(&guard, "http://LOCALHOST.:8080/x");
    assert_refused(&guard, "http://localhost/", "only on port 8080");
    assert_refused(&guard, "http://localhost:8081/", "only on port 8080");

    assert_allowed(&guard, "https://api.internal/v1");
    assert_allowed(&guard, "http://api.internal:443/");
    assert_refused(&guard, "http://api.internal/", "only on port 443");
    assert_refused(&guard, "https://other.internal/", "private-use");

    assert_allowed(&guard, "http://[::1]:9000/");
    assert_refused(&guard, "http://[::1]:9001/", "port 9001");
    assert_refused(&guard, "http://[::1]/", "loopback");

    assert_allowed(&guard, "http://127.0.0.1:9001/");
    assert_allowed(&guard, "http://0x7f.1:9001/");
    assert_refused(&guard, "http://127.0.0.1:9000/", "port 9000");

    // An explicit rule for a metadata name is the operator's decision.
    assert_allowed(&guard, "http://metadata.google.internal/");
    assert_refused(&guard, "http://metadata/", "metadata");

    // Userinfo and schemes are still refused for allow-listed targets.
    assert_refused(&guard, "http://u:p@localhost:8080/", "credentials");
    assert_refused(&guard, "ftp://localhost:8080/", "scheme");
}

// ---------------------------------------------------------------------------------------------
// resolve and the reqwest resolver, with a scripted DNS
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakeDns {
    answers: Mutex<HashMap<String, Vec<IpAddr>>>,
    calls: AtomicUsize,
}

impl FakeDns {
    fn set(&self, host: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.answers.lock().unwrap().insert(host.into(), ips);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn guard(self: &Arc<Self>, rules: EgressRules, ttl: Duration) -> EgressGuard {
        let dns = Arc::clone(self);
        let lookup: Arc<LookupFn> = Arc::new(move |host: String| -> LookupFuture {
            let dns = Arc::clone(&dns);
            Box::pin(async move {
                dns.calls.fetch_add(1, Ordering::SeqCst);
                match dns.answers.lock().unwrap().get(&host) {
                    Some(ips) => Ok(ips.clone()),
                    None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
                }
            })
        });
        EgressGuard::with_lookup(rules, lookup, ttl)
    }
}

fn scripted(rules: EgressRules) -> (Arc<FakeDns>, EgressGuard) {
    let dns = Arc::new(FakeDns::default());
    let guard = dns.guard(rules, Duration::from_secs(60));
    (dns, guard)
}

async fn resolve_url(guard: &EgressGuard, raw: &str) -> Result<Vec<SocketAddr>, EgressDenied> {
    guard.resolve(&guard.check_url(raw)?).await
}

/// What the reqwest resolver hands out for `name`.
async fn client_lookup(guard: &EgressGuard, name: &str) -> Result<Vec<SocketAddr>, String> {
    let name = name.parse().map_err(|_| "bad name".to_string())?;
    match guard.resolver().resolve(name).await {
        Ok(addrs) => Ok(addrs.collect()),
        Err(e) => {
            let denied = EgressDenied::find_in(&*e).expect("resolver errors are EgressDenied");
            Err(denied.reason.clone())
        }
    }
}

fn sockets(ips: &[&str], port: u16) -> Vec<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), port)).collect()
}

#[test]
fn any_refused_address_refuses_the_set() {
    let ips = |list: &[&str]| list.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpAddr>>();
    let admit = |ip: IpAddr| classify(ip).map_or(Ok(()), Err);
    assert!(all_admitted(&ips(&["8.8.8.8", "1.1.1.1"]), admit).is_ok());
    assert!(all_admitted(&ips(&[]), admit).is_ok());
    for set in [
        &["8.8.8.8", "10.0.0.1"][..],
        &["10.0.0.1", "8.8.8.8"],
        &["8.8.8.8", "2606:4700:4700::1111", "::1"],
        &["::ffff:127.0.0.1"],
        &["1.1.1.1", "169.254.169.254", "9.9.9.9"],
    ] {
        let (ip, _) = all_admitted(&ips(set), admit).unwrap_err();
        assert!(classify(ip).is_some(), "{set:?}");
    }
}

#[tokio::test]
async fn resolve_refuses_a_name_with_any_private_address() {
    let (dns, guard) = scripted(EgressRules::default());
    dns.set("mixed.test", &["8.8.8.8", "10.0.0.1"]);
    dns.set("mixed6.test", &["2606:4700:4700::1111", "::1"]);
    dns.set("mapped.test", &["::ffff:169.254.169.254"]);
    dns.set("public.test", &["1.1.1.1", "2606:4700:4700::1111"]);

    let denied = resolve_url(&guard, "http://mixed.test/").await.unwrap_err();
    assert!(denied.reason.contains("non-public address (private"), "{}", denied.reason);
    // The internal address is not revealed to the agent.
    assert!(!denied.reason.contains("10.0.0.1"), "{}", denied.reason);

    let denied = resolve_url(&guard, "http://mixed6.test/").await.unwrap_err();
    assert!(denied.reason.contains("loopback"), "{}", denied.reason);
    let denied = resolve_url(&guard, "https://mapped.test/").await.unwrap_err();
    assert!(denied.reason.contains("metadata"), "{}", denied.reason);

    let addrs = resolve_url(&guard, "https://public.test/").await.unwrap();
    assert_eq!(addrs, sockets(&["1.1.1.1", "2606:4700:4700::1111"], 443));
}

#[tokio::test]
async fn resolve_failures_are_denials() {
    let (dns, guard) = scripted(EgressRules::default());
    dns.set("empty.test", &[]);
    dns.set("dup.test", &["1.1.1.1", "1.1.1.1", "8.8.8.8"]);
    let denied = resolve_url(&guard, "http://nxdomain.test/").await.unwrap_err();
    assert!(denied.reason.contains("cannot resolve"), "{}", denied.reason);
    let denied = resolve_url(&guard, "http://empty.test/").await.unwrap_err();
    assert!(denied.reason.contains("no addresses"), "{}", denied.reason);
    let addrs = resolve_url(&guard, "http://dup.test/").await.unwrap();
    assert_eq!(addrs, sockets(&["1.1.1.1", "8.8.8.8"], 80));
}

#[tokio::test]
async fn resolve_does_no_dns_for_literals() {
    let (dns, guard) = scripted(EgressRules::default());
    let addrs = resolve_url(&guard, "http://[2606:4700:4700::1111]/").await.unwrap();
    assert_eq!(addrs, sockets(&["2606:4700:4700::1111"], 80));
    let addrs = resolve_url(&guard, "https://134744072/").await.unwrap();
    assert_eq!(addrs, sockets(&["8.8.8.8"], 443));
    assert_eq!(dns.calls(), 0);
}

#[tokio::test]
async fn resolve_rechecks_a_modified_target() {
    let (dns, guard) = scripted(EgressRules::default());
    dns.set("public.test", &["1.1.1.1"]);
    let target = guard.check_url("http://public.test/").unwrap();

    let mut forged = target.clone();
    forged.host = "127.0.0.1".into();
    assert!(guard.resolve(&forged).await.is_err());

    let mut forged = target.clone();
    forged.url = url::Url::parse("http://127.0.0.1/").unwrap();
    forged.host = "127.0.0.1".into();
    let denied = guard.resolve(&forged).await.unwrap_err();
    assert!(denied.reason.contains("loopback"), "{}", denied.reason);

    let mut forged = target;
    forged.port = 22;
    assert!(guard.resolve(&forged).await.is_err());
}

#[tokio::test]
async fn net_rule_admits_resolved_addresses() {
    let (dns, guard) = scripted(EgressRules { allowed_ports: vec![80, 443], allow: vec![net("10.0.0.0/8")] });
    dns.set("mixed.test", &["8.8.8.8", "10.0.0.1"]);
    dns.set("other.test", &["8.8.8.8", "192.168.0.1"]);
    let addrs = resolve_url(&guard, "http://mixed.test/").await.unwrap();
    assert_eq!(addrs, sockets(&["8.8.8.8", "10.0.0.1"], 80));
    assert!(resolve_url(&guard, "http://other.test/").await.is_err());
}

#[tokio::test]
async fn host_port_rule_admits_whatever_the_host_resolves_to() {
    let (dns, guard) =
        scripted(EgressRules { allowed_ports: vec![80, 443], allow: vec![host_port("svc.test", 8443)] });
    dns.set("svc.test", &["10.0.0.5", "127.0.0.1"]);
    let addrs = resolve_url(&guard, "https://svc.test:8443/").await.unwrap();
    assert_eq!(addrs, sockets(&["10.0.0.5", "127.0.0.1"], 8443));
    assert_eq!(client_lookup(&guard, "svc.test").await.unwrap(), sockets(&["10.0.0.5", "127.0.0.1"], 0));
    // Pinned: the same host on another (even generally allowed) port is refused up front.
    assert!(resolve_url(&guard, "https://svc.test/").await.is_err());
}

#[tokio::test]
async fn client_resolver_serves_exactly_the_checked_addresses() {
    let (dns, guard) = scripted(EgressRules::default());
    dns.set("public.test", &["1.1.1.1", "2606:4700:4700::1111"]);
    resolve_url(&guard, "https://public.test/").await.unwrap();
    assert_eq!(dns.calls(), 1);

    // The attacker's DNS now answers with loopback (rebinding): the client still gets the
    // checked addresses, and asks DNS no second time.
    dns.set("public.test", &["127.0.0.1"]);
    let expected = sockets(&["1.1.1.1", "2606:4700:4700::1111"], 0);
    assert_eq!(client_lookup(&guard, "public.test").await.unwrap(), expected);
    assert_eq!(client_lookup(&guard, "PUBLIC.test.").await.unwrap(), expected);
    assert_eq!(dns.calls(), 1);

    // A fresh `resolve` looks up again and refuses the new answer.
    assert!(resolve_url(&guard, "https://public.test/").await.is_err());
    assert_eq!(dns.calls(), 2);
}

#[tokio::test]
async fn client_resolver_checks_names_it_has_not_seen() {
    let (dns, guard) = scripted(EgressRules::default());
    dns.set("hop.test", &["8.8.8.8"]);
    dns.set("evil.test", &["1.1.1.1", "169.254.169.254"]);
    dns.set("metadata.google.internal", &["8.8.8.8"]);

    assert_eq!(client_lookup(&guard, "hop.test").await.unwrap(), sockets(&["8.8.8.8"], 0));
    let reason = client_lookup(&guard, "evil.test").await.unwrap_err();
    assert!(reason.contains("metadata"), "{reason}");
    let calls = dns.calls();
    // Refused by name before any lookup, whatever DNS would say.
    let reason = client_lookup(&guard, "metadata.google.internal").await.unwrap_err();
    assert!(reason.contains("metadata"), "{reason}");
    let reason = client_lookup(&guard, "db.internal").await.unwrap_err();
    assert!(reason.contains("private-use"), "{reason}");
    assert_eq!(dns.calls(), calls);
    // Literals that reach the resolver are judged too.
    assert!(client_lookup(&guard, "0x7f.1").await.is_err());
    assert!(client_lookup(&guard, "127.0.0.1").await.is_err());
    assert_eq!(client_lookup(&guard, "8.8.8.8").await.unwrap(), sockets(&["8.8.8.8"], 0));
    let reason = client_lookup(&guard, "nxdomain.test").await.unwrap_err();
    assert!(reason.contains("cannot resolve"), "{reason}");
}

#[tokio::test]
async fn expired_cache_entries_are_checked_again() {
    let dns = Arc::new(FakeDns::default());
    let guard = dns.guard(EgressRules::default(), Duration::ZERO);
    dns.set("rebind.test", &["1.1.1.1"]);
    resolve_url(&guard, "http://rebind.test/").await.unwrap();
    dns.set("rebind.test", &["127.0.0.1"]);
    let reason = client_lookup(&guard, "rebind.test").await.unwrap_err();
    assert!(reason.contains("loopback"), "{reason}");
    assert_eq!(dns.calls(), 2);
}

#[tokio::test]
async fn cache_stays_bounded() {
    let (dns, guard) = scripted(EgressRules::default());
    for i in 0..(CACHE_MAX_ENTRIES + 10) {
        let host = format!("h{i}.test");
        dns.set(&host, &["1.1.1.1"]);
        resolve_url(&guard, &format!("http://{host}/")).await.unwrap();
    }
    assert!(guard.inner.cache.lock().unwrap().len() <= CACHE_MAX_ENTRIES);
}

/// The system resolver: `localhost` passes `check_url` in all its spellings, and `resolve`
/// refuses it because it resolves to loopback.
#[tokio::test]
async fn localhost_is_refused_by_resolution() {
    let guard = guard();
    for raw in [
        "http://localhost/",
        "http://LOCALHOST/",
        "http://localhost./",
        "https://LocalHost.:443/",
        "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
        "http://%6c%6f%63%61%6c%68%6f%73%74/",
    ] {
        let target = assert_allowed(&guard, raw);
        assert_eq!(target.host, "localhost", "{raw}");
        let denied = guard.resolve(&target).await.unwrap_err();
        assert!(denied.reason.contains("loopback"), "{raw}: {}", denied.reason);
    }
    let reason = client_lookup(&guard, "localhost").await.unwrap_err();
    assert!(reason.contains("loopback"), "{reason}");
}

// ---------------------------------------------------------------------------------------------
// Real HTTP over loopback through reqwest
// ---------------------------------------------------------------------------------------------

mod loopback {
    use axum::Router;
    use axum::extract::Path;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    use super::*;

    /// Serves `app` on 127.0.0.1 and returns the port.
    async fn serve(app: Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    fn found(location: String) -> impl IntoResponse {
        (StatusCode::FOUND, [(header::LOCATION, location)])
    }

    async fn upstream() -> u16 {
        serve(Router::new().route("/", get(|| async { "ok" }))).await
    }

    /// A server with redirects: to `other`'s port on 127.0.0.1, to the metadata address, to
    /// `localhost:<other>`, and a relative chain `/chain/{n}` of n hops.
    async fn redirector(other: u16) -> u16 {
        let app = Router::new()
            .route("/", get(|| async { "redirector" }))
            .route("/to-loopback", get(move || async move { found(format!("http://127.0.0.1:{other}/")) }))
            .route("/to-metadata", get(|| async { found("http://169.254.169.254/latest/meta-data/".into()) }))
            .route("/to-localhost", get(move || async move { found(format!("http://localhost:{other}/")) }))
            .route("/to-gopher", get(move || async move { found(format!("gopher://127.0.0.1:{other}/")) }))
            .route(
                "/chain/{n}",
                get(|Path(n): Path<u32>| async move {
                    if n == 0 {
                        "done".into_response()
                    } else {
                        found(format!("/chain/{}", n - 1)).into_response()
                    }
                }),
            );
        serve(app).await
    }

    /// Safety net for these tests only: the client's sockets are bound to 127.0.0.1, so even a
    /// broken guard cannot send a packet to a real non-loopback address (the kernel refuses to
    /// route a loopback source elsewhere). Every legitimate connection here is to loopback.
    const LOOPBACK_ONLY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn guarded_client(guard: &EgressGuard) -> reqwest::Client {
        guard.client_builder().local_address(LOOPBACK_ONLY).timeout(Duration::from_secs(10)).build().unwrap()
    }

    /// A client without the guard: shows the server is really there, so a refusal through the
    /// guarded client is the guard's doing.
    fn unguarded() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap()
    }

    async fn get_text(client: &reqwest::Client, url: &str) -> Result<String, reqwest::Error> {
        client.get(url).send().await?.error_for_status()?.text().await
    }

    #[track_caller]
    fn denial(result: Result<String, reqwest::Error>) -> String {
        let err = result.expect_err("request should have been refused");
        EgressDenied::find_in(&err).unwrap_or_else(|| panic!("not an egress denial: {err:?}")).reason.clone()
    }

    #[tokio::test]
    async fn resolver_refuses_localhost_without_a_net_rule() {
        let port = upstream().await;
        let url = format!("http://localhost:{port}/");
        assert_eq!(get_text(&unguarded(), &url).await.unwrap(), "ok");

        // The port is allowed, so only the address check stands in the way.
        let guard = guard_with(&[port], vec![]);
        let target = assert_allowed(&guard, &url);
        let denied = guard.resolve(&target).await.unwrap_err();
        assert!(denied.reason.contains("loopback"), "{}", denied.reason);
        // Even a caller that skips `resolve` cannot get there: the client's resolver refuses.
        let reason = denial(get_text(&guarded_client(&guard), target.url.as_str()).await);
        assert!(reason.contains("loopback"), "{reason}");
    }

    #[tokio::test]
    async fn net_rule_lets_the_same_request_through() {
        let port = upstream().await;
        let url = format!("http://localhost:{port}/");
        // Both loopbacks, since `localhost` may also resolve to ::1 (the server is on 127.0.0.1;
        // the client falls back to it).
        let guard = guard_with(&[port], vec![net("127.0.0.0/8"), net("::1/128")]);
        let target = guard.check_url(&url).unwrap();
        let addrs = guard.resolve(&target).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == port));
        assert_eq!(get_text(&guarded_client(&guard), target.url.as_str()).await.unwrap(), "ok");

        // With Net(127.0.0.1/32) a literal target is reachable on its random port, although
        // only 80 and 443 are allowed ports.
        let guard = guard_with(&[80, 443], vec![net("127.0.0.1/32")]);
        let literal = format!("http://127.0.0.1:{port}/");
        let target = guard.check_url(&literal).unwrap();
        assert_eq!(guard.resolve(&target).await.unwrap(), vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        assert_eq!(get_text(&guarded_client(&guard), &literal).await.unwrap(), "ok");
        // ... and not without it.
        let denied = guard_with(&[80, 443], vec![]).check_url(&literal).unwrap_err();
        assert!(denied.reason.contains(&format!("port {port}")), "{}", denied.reason);
    }

    #[tokio::test]
    async fn redirects_are_checked_at_every_hop() {
        let other = upstream().await;
        let port = redirector(other).await;
        let base = format!("http://127.0.0.1:{port}");
        let plain = unguarded();
        assert_eq!(get_text(&plain, &format!("{base}/to-loopback")).await.unwrap(), "ok");
        assert_eq!(get_text(&plain, &format!("{base}/to-localhost")).await.unwrap(), "ok");

        // The redirector itself is allow-listed exactly; the other server's port is an allowed
        // port, so only the address stands between a hop and it.
        let guard = guard_with(&[80, 443, other], vec![host_port("127.0.0.1", port)]);
        let client = guarded_client(&guard);
        assert_eq!(get_text(&client, &format!("{base}/")).await.unwrap(), "redirector");

        let reason = denial(get_text(&client, &format!("{base}/to-loopback")).await);
        assert!(reason.contains("redirect refused") && reason.contains("loopback"), "{reason}");
        let reason = denial(get_text(&client, &format!("{base}/to-metadata")).await);
        assert!(reason.contains("redirect refused") && reason.contains("metadata"), "{reason}");
        let reason = denial(get_text(&client, &format!("{base}/to-gopher")).await);
        assert!(reason.contains("scheme"), "{reason}");
        // A name hop passes `check_url`; the resolver refuses it at connect time.
        let reason = denial(get_text(&client, &format!("{base}/to-localhost")).await);
        assert!(reason.contains("non-public") && reason.contains("loopback"), "{reason}");

        // Chains: 5 hops are followed, the 6th is refused.
        assert_eq!(get_text(&client, &format!("{base}/chain/5")).await.unwrap(), "done");
        let reason = denial(get_text(&client, &format!("{base}/chain/6")).await);
        assert!(reason.contains("too many redirects"), "{reason}");

        // Allow-listing the destination lets the same hop through.
        let guard = guard_with(&[80, 443], vec![net("127.0.0.1/32")]);
        let client = guarded_client(&guard);
        assert_eq!(get_text(&client, &format!("{base}/to-loopback")).await.unwrap(), "ok");
        let reason = denial(get_text(&client, &format!("{base}/to-metadata")).await);
        assert!(reason.contains("metadata"), "{reason}");
    }

    #[tokio::test]
    async fn redirect_limit_is_the_argument() {
        let port = redirector(1).await;
        let guard = guard_with(&[80, 443], vec![host_port("127.0.0.1", port)]);
        let client = reqwest::Client::builder()
            .dns_resolver(guard.resolver())
            .redirect(guard.redirect_policy(2))
            .no_proxy()
            .local_address(LOOPBACK_ONLY)
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(get_text(&client, &format!("{base}/chain/2")).await.unwrap(), "done");
        let reason = denial(get_text(&client, &format!("{base}/chain/3")).await);
        assert!(reason.contains("more than 2"), "{reason}");
    }
}

// ---------------------------------------------------------------------------------------------
// Bounded fuzz: check_url never panics, and never lets a non-public literal through
// ---------------------------------------------------------------------------------------------

#[test]
fn fuzz_check_url() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SCHEMES: &[&str] = &[
        "http://",
        "https://",
        "HTTP://",
        "hTtPs://",
        "http:",
        "http:/",
        "http:\\\\",
        "http:///",
        "ftp://",
        "file://",
        "gopher://",
        "javascript:",
        "data:",
        "",
        "//",
        "ws://",
        "http://\\",
    ];
    const USERINFO: &[&str] = &["", "", "", "", "a@", "a:b@", "@", ":@", "127.0.0.1@", "x%40y@"];
    const HOSTS: &[&str] = &[
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0x7f.1",
        "0",
        "0.0.0.0",
        "[::]",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
        "[fe80::1%25eth0]",
        "169.254.169.254",
        "100.100.100.200",
        "10.0.0.1",
        "192.168.1.1",
        "8.8.8.8",
        "1.1.1.1",
        "[2606:4700:4700::1111]",
        "example.com",
        "localhost",
        "LOCALHOST.",
        "metadata.google.internal",
        "%31%32%37.0.0.1",
        "①②⑦.0.0.1",
        "１２７.０.０.１",
        "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ",
        "xn--",
        "a..b",
        "[::127.0.0.1]",
        "0x7f.0x0.0x0.0x1",
        "127.000.000.001",
        "017700000001",
        "[2002:7f00:1::]",
        "[2001::1]",
        "3232235521",
        "0xa9fea9fe",
        "4294967295",
        "4294967296",
        "[::ffff:8.8.8.8]",
        "[64:ff9b::8.8.8.8]",
        "134744072",
        "127。0。0。1",
        "[fd00:ec2::254]",
        "",
    ];
    const PUBLIC_HOSTS: &[&str] = &[
        "8.8.8.8",
        "1.1.1.1",
        "134744072",
        "[2606:4700:4700::1111]",
        "example.com",
        "EXAMPLE.com.",
        "bücher.de",
        "[::ffff:8.8.8.8]",
    ];
    const PORTS: &[&str] = &[
        "",
        "",
        "",
        ":80",
        ":443",
        ":22",
        ":6379",
        ":0",
        ":65535",
        ":65536",
        ":99999999999",
        ":",
        ":08",
        ":+80",
        ":-1",
        ":0x50",
    ];
    const TAILS: &[&str] = &[
        "",
        "/",
        "/a/b?c=d#e",
        "?x",
        "#f",
        "\\x",
        "/%2e%2e/",
        "@evil.com",
        ":80@evil",
        "/..;/",
        " x",
        "\t",
        "\u{0}",
        "%00",
        "/\r\n",
        "@127.0.0.1",
        "#@127.0.0.1",
    ];
    const NOISE: &[&str] = &[
        "\u{0}", "\t", "\n", " ", "@", "%", "%2", "[", "]", ":", "\\", "/", ".", "0", "x", "①", "。", "．",
        "\u{200b}", "\u{ad}", "é", "ß", "😀", "\u{fffd}", "#", "?", "%40", "%2f", "xn--",
    ];

    let guard = guard();
    let mut rng = StdRng::seed_from_u64(0x5eed_e9e5);
    let pick = |rng: &mut StdRng, list: &[&'static str]| list[rng.random_range(0..list.len())];
    let mut allowed = 0;
    for case in 0..2_000 {
        let mut s = if case % 10 == 9 {
            // Entirely random characters, mostly ASCII.
            (0..rng.random_range(0..40))
                .map(|_| {
                    if rng.random_bool(0.8) {
                        char::from(rng.random_range(0u8..128))
                    } else {
                        rng.random::<char>()
                    }
                })
                .collect::<String>()
        } else {
            [
                pick(&mut rng, SCHEMES),
                if rng.random_bool(0.7) { "" } else { pick(&mut rng, USERINFO) },
                if rng.random_bool(0.3) { pick(&mut rng, PUBLIC_HOSTS) } else { pick(&mut rng, HOSTS) },
                if rng.random_bool(0.5) { "" } else { pick(&mut rng, PORTS) },
                pick(&mut rng, TAILS),
            ]
            .concat()
        };
        for _ in 0..rng.random_range(0..3) {
            let boundaries: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
            let at = boundaries[rng.random_range(0..boundaries.len())];
            if rng.random_bool(0.5) {
                s.insert_str(at, pick(&mut rng, NOISE));
            } else if let Some(c) = s[at..].chars().next() {
                s.replace_range(at..at + c.len_utf8(), "");
            }
        }

        let Ok(target) = guard.check_url(&s) else {
            continue;
        };
        allowed += 1;
        assert!(matches!(target.scheme.as_str(), "http" | "https"), "{s:?}");
        assert!([80, 443].contains(&target.port), "{s:?}");
        assert!(target.url.username().is_empty() && target.url.password().is_none(), "{s:?}");
        if let Ok(ip) = target.host.parse::<IpAddr>() {
            assert_eq!(classify(ip), None, "{s:?} allowed {ip}");
        } else {
            assert_eq!(host::refused_name(&target.host), None, "{s:?}");
        }
        // What the client will use re-checks to the same destination.
        let again = guard
            .check_url(target.url.as_str())
            .unwrap_or_else(|d| panic!("{s:?} -> {} refused on recheck: {}", target.url, d.reason));
        assert_eq!((again.host, again.port), (target.host.clone(), target.port), "{s:?}");
    }
    // The generator must exercise the Ok path too, or the assertions above prove nothing.
    assert!(allowed > 20, "only {allowed} cases were allowed");
}
