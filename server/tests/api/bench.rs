//! `aegis bench` itself: a tiny in-process run produces a sane report.

use std::time::{Duration, Instant};

use server::bench::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bench_harness_measures_all_targets_and_stages() {
    let started = Instant::now();
    let opts = Options {
        rates: vec![50.0],
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(200),
        concurrency: 4,
        saturation: Duration::from_secs(1),
        max_in_flight: 256,
        ..Options::default()
    };
    let report = run(&opts).await.expect("bench run");
    let json = serde_json::to_value(&report).unwrap();

    let targets = json["targets"].as_array().unwrap();
    let names: Vec<&str> = targets.iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(names, ["direct", "execute", "gateway"]);
    for t in targets {
        let runs = t["fixed"].as_array().unwrap().iter().chain([&t["saturation"]]);
        for r in runs {
            let name = &t["target"];
            assert!(r["throughput_rps"].as_f64().unwrap() > 0.0, "{name}: {r}");
            assert_eq!(r["errors"], 0, "{name}: {r}");
            assert_eq!(r["dropped"], 0, "{name}: {r}");
            let l = &r["latency"];
            let at = |k: &str| l[k].as_u64().unwrap();
            assert!(at("p50_us") > 0, "{name}: {l}");
            assert!(
                at("p50_us") <= at("p90_us") && at("p90_us") <= at("p99_us") && at("p99_us") <= at("max_us"),
                "{name}: {l}"
            );
        }
    }
    assert_eq!(json["added_latency"].as_array().unwrap().len(), 2);
    assert_eq!(json["throughput_ratio"].as_array().unwrap().len(), 2);

    for table in json["stages"].as_array().unwrap() {
        assert!(table["records"].as_u64().unwrap() > 0, "{table}");
        let stages: Vec<&str> =
            table["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
        for wanted in ["reads", "policy", "egress", "budget", "upstream"] {
            assert!(stages.contains(&wanted), "{} lacks {wanted}: {stages:?}", table["target"]);
        }
    }
    let text = server::bench::report::render(&report);
    assert!(text.contains("Where the time goes: execute"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}

/// `aegis bench --json` writes exactly one JSON document on standard output: its
/// log lines (here the warning that, without a home directory, the fresh data
/// directory keeps its own master key) go to standard error.
#[tokio::test]
async fn bench_json_output_is_only_the_document() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aegis"))
        .args([
            "bench",
            "--json",
            "--rates",
            "50",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--concurrency",
            "2",
        ])
        .env_clear()
        .output()
        .await
        .expect("run aegis bench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is one JSON document");
    assert_eq!(report["targets"].as_array().map(Vec::len), Some(3));
    assert!(stderr.contains("master key"), "the log line went to stderr: {stderr}");
}
