//! Micro-benchmarks of the proxy's hot path, one stage at a time:
//! `cargo bench -p server -- --warm-up-time 1 --measurement-time 3`.
//!
//! The storage benchmarks use a temp-dir SQLite database set up exactly as the
//! server does (WAL, synchronous=FULL, migrations), through `build_services`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use server::agents::api_keys;
use server::audit::AuditEntry;
use server::config::Config;
use server::policies::engine::{Compiled, PolicyEngine, compile};
use server::proxy::egress::EgressGuard;

const DEFAULT_POLICY: &str = include_str!("../../policies/default.rego");

fn policy_input() -> serde_json::Value {
    json!({
        "agent": {"id": "a", "name": "bot", "trust": 500, "tier": "standard", "tags": ["prod"], "sponsor": "s"},
        "action": {"method": "GET", "url": "https://api.example.com/v1/x?y=1", "scheme": "https",
                   "host": "api.example.com", "port": 443, "path": "/v1/x", "query": "y=1",
                   "headers": ["content-type"], "cost_micros": 0, "label": null, "secret": "example"},
        "wallet": {"daily_spent_micros": 0, "daily_limit_micros": 0, "monthly_spent_micros": 0,
                   "monthly_limit_micros": 0, "reserved_micros": 0},
        "time": {"now": "2026-11-26T12:00:00Z", "weekday": "Thu", "hour": 12}
    })
}

fn cpu_bound(c: &mut Criterion) {
    let engine = PolicyEngine::new();
    let input = policy_input();
    // The first call compiles and caches; the benchmark measures the cached path the
    // proxy takes on every request: the compiled-policy lookup, the input handed to
    // the engine as a value, the run and reading the verdict (plus cloning the input,
    // which the proxy does not need to).
    let first = engine.evaluate(DEFAULT_POLICY, &input);
    assert!(first.error.is_none(), "{first:?}");
    c.bench_function("policy/evaluate default (cached compile)", |b| {
        b.iter(|| engine.evaluate(DEFAULT_POLICY, std::hint::black_box(&input)))
    });

    // The same, as the proxy runs it: contained on the evaluators' threads (a hop to
    // a pool thread and back to the async task), on a two-worker runtime.
    let contained = std::sync::Arc::new(PolicyEngine::new());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // A shipped policy runs inline; a sponsor's (here the same rules, as a sponsor's
    // copy) takes the hop.
    let sponsors_copy = format!("{DEFAULT_POLICY}\n# a sponsor's copy\n");
    for (name, source) in
        [("shipped, inline", DEFAULT_POLICY.to_owned()), ("a sponsor's, pool hop", sponsors_copy)]
    {
        c.bench_function(&format!("policy/evaluate default, contained ({name})"), |b| {
            b.iter(|| {
                let (engine, input, source) = (contained.clone(), input.clone(), source.clone());
                runtime.block_on(async move { engine.evaluate_contained(source, input).await })
            })
        });
    }
    c.bench_function("policy/pool hop alone (an empty job)", |b| {
        let pool = server::policies::contain::Evaluators::new("bench", 2, std::time::Duration::from_secs(1));
        b.iter(|| runtime.block_on(pool.run(Some("s"), std::time::Duration::from_secs(1), || 1u8)))
    });

    // The two engines alone, on the same input value (no hashing, no JSON): what the
    // RVM saves over the tree-walking interpreter.
    let compiled =
        Compiled::new(DEFAULT_POLICY, compile(DEFAULT_POLICY).expect("the default policy compiles"));
    assert!(compiled.on_vm());
    let value = regorus::Value::from(input.clone());
    c.bench_function("policy/default on the RVM (engine only)", |b| {
        b.iter(|| compiled.eval(std::hint::black_box(value.clone())))
    });
    c.bench_function("policy/default on the interpreter (engine only)", |b| {
        b.iter(|| compiled.eval_on_interpreter(std::hint::black_box(value.clone())))
    });

    // The response scrubber on 1 MiB of JSON-ish text with the secret echoed a few
    // times (raw, percent-encoded, base64): its cost per byte of answer, next to a
    // plain copy of the same bytes.
    let secret = server::secrets::UsableSecret {
        name: "bench".into(),
        value: zeroize::Zeroizing::new("sk-live-0123456789abcdefABCDEF".into()),
        inject: app::model::Injection::Header {
            header: "authorization".into(),
            format: "Bearer {secret}".into(),
        },
        allowed: vec![],
    };
    let mut body = String::new();
    while body.len() < 1 << 20 {
        body.push_str(r#"{"id":"msg_01ABCdef","object":"chat.completion","text":"Lorem ipsum dolor sit amet, %20 \u00e9 c2stbGl2ZS0w ","n":12345},"#);
    }
    body.push_str("sk-live-0123456789abcdefABCDEF sk%2Dlive-0123456789abcdefABCDEF c2stbGl2ZS0wMTIzNDU2Nzg5YWJjZGVmQUJDREVG");
    let body = body.into_bytes();
    c.bench_function("secret/scrub 1 MiB answer", |b| {
        b.iter(|| server::proxy::secret::Scrubber::all(&secret, std::hint::black_box(&body)))
    });
    c.bench_function("secret/copy 1 MiB answer (baseline)", |b| {
        b.iter(|| std::hint::black_box(&body).to_vec())
    });

    let guard = EgressGuard::new(Default::default());
    c.bench_function("egress/check_url", |b| {
        b.iter(|| guard.check_url(std::hint::black_box("https://api.example.com/v1/items?limit=10")))
    });

    let key = api_keys::generate();
    c.bench_function("agent key/parse + verify", |b| {
        b.iter(|| {
            let presented = std::hint::black_box(key.plaintext.as_str());
            api_keys::key_id(presented).is_some() && api_keys::matches(presented, &key.hash)
        })
    });
}

fn storage(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let vars = HashMap::from([("AEGIS_DATA_DIR", dir.path().join("data").display().to_string())]);
    let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("config");
    let (services, sponsor, agent) = rt.block_on(async {
        let services = server::build_services(config).await.expect("services");
        let registration = serde_json::from_value(
            json!({"email": "bench@example.com", "password": "bench correct horse 9", "name": "bench"}),
        )
        .expect("registration");
        let user = services.auth.register(registration, Default::default()).await.expect("register");
        let new_agent = serde_json::from_value(
            json!({"name": "bench", "policy": "permissive", "daily_limit_micros": 1_000_000_000_000i64}),
        )
        .expect("new agent");
        // The account's own organization (same id), acting as its owner.
        let owner =
            server::actor::Actor { org: user.user.id, member: user.user.id, role: app::model::Role::Owner };
        let agent = services.agents.create(&owner, new_agent).await.expect("agent");
        (services, user.user.id, agent.agent.id)
    });

    let n = AtomicU64::new(0);
    c.bench_function("audit/append (SQLite, synchronous=FULL)", |b| {
        b.iter(|| {
            let entry = AuditEntry {
                sponsor_id: Some(sponsor),
                agent_id: Some(agent),
                request_id: Some(format!("req_bench_{}", n.fetch_add(1, Ordering::Relaxed))),
                kind: "proxy.outcome".into(),
                decision: Some("allow".into()),
                method: Some("GET".into()),
                host: Some("api.example.com".into()),
                path: Some("/v1/x".into()),
                status: Some(200),
                detail: Some(r#"{"stages":[]}"#.into()),
                ..Default::default()
            };
            rt.block_on(services.audit.append(entry)).expect("append")
        })
    });

    // The same point read both ways: what the inline reads save per read.
    c.bench_function("wallet/read inline (SQLite file, rusqlite)", |b| {
        b.iter(|| rt.block_on(services.wallets.get(agent)).expect("read").expect("wallet"))
    });
    c.bench_function("wallet/read through the pool (sea-orm, sqlx)", |b| {
        use sea_orm::EntityTrait;
        b.iter(|| {
            rt.block_on(entity::wallets::Entity::find_by_id(agent).one(&services.db))
                .expect("read")
                .expect("wallet")
        })
    });

    c.bench_function("wallet/reserve + settle (SQLite)", |b| {
        b.iter(|| {
            let id = format!("req_wallet_{}", n.fetch_add(1, Ordering::Relaxed));
            rt.block_on(async {
                services.wallets.reserve(agent, &id, 10).await.expect("reserve");
                services.wallets.settle(&id, 10).await.expect("settle")
            })
        })
    });
}

criterion_group!(benches, cpu_bound, storage);
criterion_main!(benches);
