//! Load generation: an open-loop generator (fixed arrival rate) and a closed loop
//! (N workers back to back) for saturation throughput.
//!
//! The open loop schedules request i at `t0 + i/rate` whatever has completed, and
//! measures latency from that scheduled time: a server that falls behind shows up
//! as queueing in the latencies instead of slowing the generator down (no
//! coordinated omission).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Method;
use serde::Serialize;

/// One kind of request, sent again and again.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub method: Method,
    pub url: String,
    pub bearer: Option<String>,
    pub body: Option<bytes::Bytes>,
}

/// Latencies in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// The result of one measured run (warm-up excluded).
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// `open` (fixed arrival rate) or `closed` (saturation).
    pub mode: &'static str,
    /// Requests per second asked for (open loop).
    pub rate: Option<f64>,
    /// Workers (closed loop).
    pub concurrency: Option<usize>,
    pub duration_s: f64,
    /// Requests started in the measured window.
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    /// Open loop: requests not sent because the in-flight bound was reached.
    pub dropped: u64,
    /// Successful requests per second over the measured window.
    pub throughput_rps: f64,
    pub latency: Latency,
    /// A few distinct error messages, to tell what went wrong.
    pub error_samples: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 minutes, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Tally {
    hist: Histogram<u64>,
    ok: u64,
    errors: u64,
    error_samples: Vec<String>,
    last_done: Option<Instant>,
}

impl Tally {
    fn new() -> Self {
        Self { hist: histogram(), ok: 0, errors: 0, error_samples: Vec::new(), last_done: None }
    }

    fn record(&mut self, latency: Duration, result: Result<(), String>, done: Instant) {
        match result {
            Ok(()) => {
                self.ok += 1;
                self.hist.saturating_record((latency.as_micros() as u64).max(1));
            }
            Err(e) => {
                self.errors += 1;
                if self.error_samples.len() < 3 && !self.error_samples.contains(&e) {
                    self.error_samples.push(e);
                }
            }
        }
        self.last_done = Some(self.last_done.map_or(done, |d| d.max(done)));
    }
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends one request and reads the whole answer; anything but 200 is an error.
pub async fn send(client: &reqwest::Client, t: &Target) -> Result<(), String> {
    let mut rb = client.request(t.method.clone(), &t.url);
    if let Some(k) = &t.bearer {
        rb = rb.bearer_auth(k);
    }
    if let Some(b) = &t.body {
        rb = rb.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.clone());
    }
    let resp = rb.send().await.map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| format!("reading the answer failed: {e}"))?;
    if status != reqwest::StatusCode::OK {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("status {}: {text}", status.as_u16()));
    }
    Ok(())
}

/// Open loop at `rate` requests per second for `warmup + duration`; only requests
/// scheduled after the warm-up are measured.
pub async fn open_loop(
    client: &reqwest::Client,
    target: &Target,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    max_in_flight: usize,
) -> RunResult {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let handle = tokio::runtime::Handle::current();
    let (client, target) = (client.clone(), Arc::new(target.clone()));
    let t0 = Instant::now() + Duration::from_millis(5);
    let measure_from = t0 + warmup;
    let total = ((warmup + duration).as_secs_f64() * rate).round() as u64;

    // Pacing runs on its own OS thread: the runtime's timer has 1 ms granularity,
    // which would add up to a millisecond to every measured latency. A thread sleep
    // is late by tens of microseconds, and lateness still counts (it is measured
    // from the scheduled time).
    let generator = {
        let (tally, in_flight) = (tally.clone(), in_flight.clone());
        tokio::task::spawn_blocking(move || {
            let (mut sent, mut dropped) = (0u64, 0u64);
            for i in 0..total {
                let at = t0 + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let measured = at >= measure_from;
                if in_flight.load(Ordering::Relaxed) >= max_in_flight {
                    dropped += u64::from(measured);
                    continue;
                }
                sent += u64::from(measured);
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (client, target, tally, in_flight) =
                    (client.clone(), target.clone(), tally.clone(), in_flight.clone());
                handle.spawn(async move {
                    let result = send(&client, &target).await;
                    let done = Instant::now();
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    if measured {
                        lock(&tally).record(done - at, result, done);
                    }
                });
            }
            (sent, dropped)
        })
    };
    let (sent, dropped) = generator.await.unwrap_or((0, 0));
    // Let the stragglers finish (the client's own timeout bounds this).
    let deadline = Instant::now() + Duration::from_secs(60);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t = lock(&tally);
    let unfinished = sent.saturating_sub(t.ok + t.errors);
    // Over the time it actually took: a server that fell behind finishes late.
    let span = t.last_done.map_or(duration, |d| d.saturating_duration_since(measure_from)).max(duration);
    RunResult {
        mode: "open",
        rate: Some(rate),
        concurrency: None,
        duration_s: duration.as_secs_f64(),
        sent,
        ok: t.ok,
        errors: t.errors + unfinished,
        dropped,
        throughput_rps: t.ok as f64 / span.as_secs_f64(),
        latency: Latency::of(&t.hist),
        error_samples: t.error_samples.clone(),
    }
}

/// Closed loop: `workers` tasks each send the next request as soon as the last
/// one is answered, for `warmup + duration`; measures saturation throughput.
pub async fn closed_loop(
    client: &reqwest::Client,
    target: &Target,
    workers: usize,
    warmup: Duration,
    duration: Duration,
) -> RunResult {
    let tally = Arc::new(Mutex::new(Tally::new()));
    let start = Instant::now();
    let (measure_from, end) = (start + warmup, start + warmup + duration);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (client, target, tally) = (client.clone(), target.clone(), tally.clone());
        tasks.spawn(async move {
            let mut sent = 0u64;
            loop {
                let began = Instant::now();
                if began >= end {
                    break;
                }
                let result = send(&client, &target).await;
                let done = Instant::now();
                // Only requests that started and finished inside the window count.
                if began >= measure_from && done <= end {
                    sent += 1;
                    lock(&tally).record(done - began, result, done);
                }
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(n) = tasks.join_next().await {
        sent += n.unwrap_or(0);
    }
    let t = lock(&tally);
    RunResult {
        mode: "closed",
        rate: None,
        concurrency: Some(workers),
        duration_s: duration.as_secs_f64(),
        sent,
        ok: t.ok,
        errors: t.errors,
        dropped: 0,
        throughput_rps: t.ok as f64 / duration.as_secs_f64(),
        latency: Latency::of(&t.hist),
        error_samples: t.error_samples.clone(),
    }
}
