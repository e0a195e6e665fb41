//! The policy playground (`POST /api/policies/evaluate`): the proxy's own policy input,
//! a decision and its reasons, and nothing performed or recorded.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Sponsor, TestServer};

async fn evaluate(s: &TestServer, sponsor: &Sponsor, body: Value) -> crate::support::Response {
    s.post("/api/policies/evaluate", Some(&sponsor.access), body).await
}

async fn audit_count(s: &TestServer, sponsor: &Sponsor) -> usize {
    let r = s.get("/api/audit?limit=200", &sponsor.access).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().unwrap().len()
}

async fn policy_id(s: &TestServer, sponsor: &Sponsor, name: &str) -> String {
    let r = s.get("/api/policies", &sponsor.access).await;
    let list = r.body.as_array().unwrap();
    let p = list.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} in {}", r.text));
    p["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_playground_decides_without_performing_anything() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("play").await;
    let (agent, _key) = s.agent(&sponsor, "play-bot").await; // the default policy, trust 500
    let agent_id = agent["id"].as_str().unwrap();
    let before = audit_count(&s, &sponsor).await;

    // The built-in default: reads pass, writes at standard trust wait, costly reads wait.
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/x"}),
    )
    .await;
    assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    assert!(r.body["error"].is_null(), "{}", r.text);
    // The input is the proxy's policy input document.
    let input: Value = serde_json::from_str(r.body["input"].as_str().unwrap()).unwrap();
    assert_eq!(input["action"]["host"], "api.example.com");
    assert_eq!(input["agent"]["id"], agent_id);
    assert_eq!(input["agent"]["tier"], "standard");
    assert!(input["wallet"].is_object() && input["time"]["hour"].is_number(), "{input}");

    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "post", "url": "https://api.example.com/x", "body": "{}"}),
    )
    .await;
    assert_eq!(r.body["decision"], "require_approval", "{}", r.text);
    assert_eq!(r.body["reasons"], json!(["writes need approval below trust 700"]));
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/x", "cost_micros": 2_000_000}),
    )
    .await;
    assert_eq!(r.body["decision"], "require_approval", "{}", r.text);
    assert_eq!(r.body["reasons"], json!(["cost above 1.00 needs approval"]));

    // Another stored policy, by id: the built-in permissive one allows even a DELETE.
    let permissive = policy_id(&s, &sponsor, "permissive").await;
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "policy_id": permissive, "method": "DELETE", "url": "https://api.example.com/x"}),
    )
    .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["reasons"]),
        (Some("allow"), &json!(["permissive policy"]))
    );

    // Unsaved source: an edit tried before it is saved.
    let hosts = "package aegis\nimport rego.v1\ndefault decision := \"deny\"\n\
        decision := \"allow\" if input.action.host == \"api.github.com\"\n\
        reasons contains \"host not allowed\" if decision == \"deny\"\n";
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "source": hosts, "method": "POST", "url": "https://evil.example/x"}),
    )
    .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["reasons"]),
        (Some("deny"), &json!(["host not allowed"]))
    );
    let r = evaluate(
        &s,
        &sponsor,
        json!({"agent_id": agent_id, "source": hosts, "method": "POST", "url": "https://api.github.com/x"}),
    )
    .await;
    assert_eq!(r.body["decision"], "allow", "{}", r.text);

    // Nothing was performed, audited or reserved.
    assert_eq!(audit_count(&s, &sponsor).await, before, "the playground wrote to the audit log");
    let wallet = s.get(&format!("/api/agents/{agent_id}/wallet"), &sponsor.access).await;
    assert_eq!(
        (wallet.body["reserved_micros"].as_i64(), wallet.body["daily_spent_micros"].as_i64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn the_playground_refuses_bad_input_and_other_sponsors() {
    let s = TestServer::start().await;
    let sponsor = s.sponsor("play-bad").await;
    let (agent, _) = s.agent(&sponsor, "bot").await;
    let agent_id = agent["id"].as_str().unwrap();
    let get = |extra: Value| {
        let mut body = json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };

    // A compile error: 422 with the compiler's message, pointing at the line.
    let r = evaluate(&s, &sponsor, get(json!({"source": "package aegis\nimport rego.v1\ndecision := )\n"})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"), "{}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("policy.rego:3:"), "line info in {message:?}");
    let r = evaluate(&s, &sponsor, get(json!({"source": "package other\ndecision := \"allow\""}))).await;
    assert_eq!(r.code(), "policy_invalid");

    for (extra, code) in [
        (json!({"method": "TRACE"}), "invalid_request"),
        (json!({"url": "not a url"}), "invalid_request"),
        (json!({"cost_micros": -1}), "invalid_request"),
    ] {
        let r = evaluate(&s, &sponsor, get(extra.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, code), "{extra}: {}", r.text);
    }
    let r = evaluate(&s, &sponsor, get(json!({"surprise": true}))).await;
    assert!(r.status.is_client_error(), "{}", r.text);

    // Another sponsor's agent or policy is not found; so is an unknown one.
    let other = s.sponsor("play-other").await;
    let r = evaluate(&s, &other, get(json!({}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let mine = s
        .post(
            "/api/policies",
            Some(&sponsor.access),
            json!({"name": "mine", "source": "package aegis\ndecision := \"allow\""}),
        )
        .await;
    assert_eq!(mine.status, StatusCode::CREATED, "{}", mine.text);
    let (theirs, _) = s.agent(&other, "their-bot").await;
    let r = evaluate(
        &s,
        &other,
        json!({"agent_id": theirs["id"], "policy_id": mine.body["id"], "method": "GET", "url": "https://a.example/"}),
    )
    .await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"), "{}", r.text);
    let r = evaluate(&s, &sponsor, get(json!({"agent_id": uuid::Uuid::new_v4()}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = s.post("/api/policies/evaluate", None, get(json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// `decision := "allow" if { EXPR }`.
fn allow_if(expr: &str) -> String {
    format!("package aegis\nimport rego.v1\ndecision := \"allow\" if {{ {expr} }}\n")
}

/// Three nested loops of a thousand: a billion steps unless cut off.
const LOOPING: &str = "count([x | some a in numbers.range(1, 1000); some b in numbers.range(1, 1000); \
                       some c in numbers.range(1, 1000); x := a + b + c]) > 0";

/// Each rule doubles the string before it: 16 GiB by the last if nothing stopped it.
fn memory_hog() -> String {
    let mut source = String::from("package aegis\nimport rego.v1\ns0 := \"0123456789abcdef\"\n");
    for i in 1..=30 {
        source.push_str(&format!("s{i} := concat(\"\", [s{p}, s{p}])\n", p = i - 1));
    }
    source.push_str("decision := \"allow\" if count(s30) > 0\n");
    source
}

/// Values built from shared parts: each level is one instruction and a few bytes,
/// and the one comparison at the end walks 2^depth leaves — no limit of the engine
/// fires inside it. (The leaves come from the input, so nothing is folded at compile
/// time.)
pub(crate) fn shared_parts_compared(depth: usize) -> String {
    let mut source = String::from(
        "package aegis\nimport rego.v1\na0 := [input.action.method]\nb0 := [input.action.method]\n",
    );
    for i in 1..=depth {
        source.push_str(&format!("a{i} := [a{p}, a{p}]\nb{i} := [b{p}, b{p}]\n", p = i - 1));
    }
    source.push_str(&format!("decision := \"allow\" if a{depth} == b{depth}\n"));
    source
}

/// The 99th percentile of `n` sequential allowed calls.
async fn p99_of_calls(s: &TestServer, key: &str, url: &str, n: usize) -> std::time::Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let r = s.execute(key, json!({"method": "GET", "url": url})).await;
        times.push(started.elapsed());
        assert_eq!((r.status, r.body["decision"].as_str()), (StatusCode::OK, Some("allow")), "{}", r.text);
    }
    times.sort();
    times[(n * 99 / 100).min(n - 1)]
}

/// A hot-path answer: denied at stage `policy` at one of the engine's limits, within `bound`.
fn denied_at_a_limit_within(
    r: &crate::support::Response,
    took: std::time::Duration,
    bound: std::time::Duration,
) {
    assert_eq!((r.status, r.body["stage"].as_str()), (StatusCode::FORBIDDEN, Some("policy")), "{}", r.text);
    assert!(r.body["reason"].as_str().unwrap().contains("resource limit exceeded"), "{}", r.text);
    assert!(took < bound, "answered after {took:?}");
}

/// A sponsor's own Rego can neither crash nor stall the server: each hostile policy
/// gets a clear answer in bounded time — refused before it runs (`policy_invalid`),
/// or cut off at a limit (`policy_limit_exceeded` in a dry run, a deny at stage
/// `policy` on the hot path) — while another tenant's calls keep their latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policies_get_a_clear_answer_while_other_tenants_are_served() {
    let mock = crate::mock::MockUpstream::start().await;
    let s = TestServer::start_with(&[("AEGIS_EGRESS_ALLOW", "127.0.0.1/32")]).await;
    let victim = s.sponsor("victim").await;
    let (_, victim_key) = s.agent_with(&victim, json!({"name": "calm", "policy": "permissive"})).await;
    let echo = mock.url("/echo");
    p99_of_calls(&s, &victim_key, &echo, 5).await; // warm up
    let before = p99_of_calls(&s, &victim_key, &echo, 50).await;

    let attacker = s.sponsor("attacker").await;
    let (agent, _) = s.agent(&attacker, "hostile").await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let dry_run = |source: String| {
        let body = json!({"agent_id": agent_id, "method": "GET", "url": "https://api.example.com/x",
                          "cost_micros": 1_000_000_000_000i64, "source": source});
        async { s.post("/api/policies/evaluate", Some(&attacker.access), body).await }
    };
    let bound = std::time::Duration::from_secs(5);
    let hostile = [
        (
            "range over the input",
            allow_if("count(numbers.range(1, input.action.cost_micros)) > 0"),
            "policy_invalid",
        ),
        ("huge literal range", allow_if("count(numbers.range(0, 1000000000000)) > 0"), "policy_invalid"),
        ("cidr_expand ::/0", allow_if("count(net.cidr_expand(\"::/0\")) > 0"), "policy_invalid"),
        ("huge sprintf width", allow_if("sprintf(\"%999999999d\", [1]) != \"\""), "policy_invalid"),
        ("string doubling", memory_hog(), "policy_limit_exceeded"),
        ("deep loop", allow_if(LOOPING), "policy_limit_exceeded"),
        ("shared parts compared", shared_parts_compared(48), "policy_limit_exceeded"),
    ];
    for (name, source, code) in &hostile {
        let started = std::time::Instant::now();
        let r = dry_run(source.clone()).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, *code), "{name}: {}", r.text);
        assert!(started.elapsed() < bound, "{name}: answered after {:?}", started.elapsed());
        // Refused as a stored policy too (those that run out of limits compile fine).
        if *code == "policy_invalid" {
            let r = s
                .post("/api/policies", Some(&attacker.access), json!({"name": "hostile", "source": source}))
                .await;
            assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "policy_invalid"), "{name}");
        }
    }

    // On the hot path: a deny at stage `policy`, in bounded time.
    let r = s
        .post(
            "/api/policies",
            Some(&attacker.access),
            json!({"name": "looping", "source": allow_if(LOOPING)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, hostile_key) = s.agent_with(&attacker, json!({"name": "loops", "policy": "looping"})).await;
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let r = s.execute(&hostile_key, json!({"method": "GET", "url": echo})).await;
        denied_at_a_limit_within(&r, started.elapsed(), bound);
    }

    // Stuck inside one instruction (no limit fires): the call is still denied in
    // bounded time, and the sponsor's next calls are refused without running.
    let attacker2 = s.sponsor("attacker2").await;
    let r = s
        .post(
            "/api/policies",
            Some(&attacker2.access),
            json!({"name": "shared", "source": shared_parts_compared(48)}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let (_, stuck_key) = s.agent_with(&attacker2, json!({"name": "stuck", "policy": "shared"})).await;
    let stuck_calls = (0..4).map(|_| async {
        let started = std::time::Instant::now();
        let r = s.execute(&stuck_key, json!({"method": "GET", "url": echo})).await;
        (r, started.elapsed())
    });
    let victim_during_stall = p99_of_calls(&s, &victim_key, &echo, 20);
    let (stuck, during_stall) = tokio::join!(futures::future::join_all(stuck_calls), victim_during_stall);
    for (r, took) in stuck {
        denied_at_a_limit_within(&r, took, bound);
    }
    let started = std::time::Instant::now();
    let r = s.execute(&stuck_key, json!({"method": "GET", "url": echo})).await;
    assert_eq!(r.body["stage"].as_str(), Some("policy"), "{}", r.text);
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "refused without running");
    // The victim's calls were all answered (p99_of_calls asserts 200); their latency
    // is a benchmark's number (printed here and by `make bench-isolation`), never
    // asserted: one storage stall on a noisy VM moves a p99 more than a regression.
    eprintln!(
        "[isolation] policies: victim p99 {before:?} before, {during_stall:?} while a policy was stuck"
    );

    // The attack, sustained (two callers each on dry runs and on the hot path), while
    // the other tenant's calls are measured again.
    let done = std::sync::atomic::AtomicBool::new(false);
    let attack = |source: String| {
        let (done, dry_run, s, hostile_key, echo) = (&done, &dry_run, &s, &hostile_key, &echo);
        async move {
            let mut answered = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let started = std::time::Instant::now();
                let r = dry_run(source.clone()).await;
                assert!(
                    [StatusCode::UNPROCESSABLE_ENTITY, StatusCode::SERVICE_UNAVAILABLE].contains(&r.status),
                    "{}",
                    r.text
                );
                assert!(["policy_limit_exceeded", "policy_busy"].contains(&r.code()), "{}", r.text);
                assert!(started.elapsed() < bound, "answered after {:?}", started.elapsed());
                // Denied at stage policy — or, once enough denials piled up, by the
                // circuit breaker that suspends the agent.
                let r = s.execute(hostile_key, json!({"method": "GET", "url": echo})).await;
                assert!(
                    ["policy", "breaker"].contains(&r.body["stage"].as_str().unwrap_or("")),
                    "{}",
                    r.text
                );
                answered += 2;
            }
            answered
        }
    };
    let measure = async {
        let during = p99_of_calls(&s, &victim_key, &echo, 50).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        during
    };
    let (during, a, b) = tokio::join!(measure, attack(memory_hog()), attack(allow_if(LOOPING)));
    assert!(a + b >= 4, "the attack ran: {a} + {b} answers");
    eprintln!(
        "[isolation] policies: victim p99 {before:?} before, {during:?} during the attack ({a} + {b} hostile answers)"
    );

    // The server is still up and serving everyone.
    p99_of_calls(&s, &victim_key, &echo, 3).await;
}
