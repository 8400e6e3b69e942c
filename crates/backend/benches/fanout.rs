//! Fan-out benchmark: starts N real agents on loopback (N = 1, 50, 200) and runs `true` on all of
//! them through `CloudClientService` at a command's default concurrency (64), printing machines per second and
//! per-machine latency. Not a timed test: run it with `cargo bench -p backend --bench fanout` to
//! compare changes. `NIM_BENCH_SIZES=1,50` picks other sizes. Run by `cargo test --all-targets`
//! (without cargo bench's `--bench` flag) it only checks itself with one agent.

use std::time::{Duration, Instant};

use nim_backend::services::cloud_client::{CallOutcome, CloudClientService};
use wire::ExecRequest;

#[path = "../tests/agent/helpers.rs"]
#[allow(dead_code, reason = "the benchmark uses only the spawning half of the test helpers")]
mod helpers;

#[tokio::main]
async fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let sizes: Vec<usize> = match std::env::var("NIM_BENCH_SIZES") {
        Ok(sizes) => sizes
            .split(',')
            .map(|n| n.trim().parse().expect("NIM_BENCH_SIZES holds numbers"))
            .collect(),
        Err(_) if benchmarking => vec![1, 50, 200],
        Err(_) => vec![1],
    };
    println!("| agents | rounds | start (s) | machines/s | p50 (ms) | p99 (ms) |");
    println!("|-------:|-------:|----------:|-----------:|---------:|---------:|");
    for n in sizes {
        let row = run(n).await;
        println!(
            "| {n:>6} | {:>6} | {:>9.2} | {:>10.0} | {:>8.2} | {:>8.2} |",
            row.rounds, row.start_secs, row.machines_per_sec, row.p50_ms, row.p99_ms
        );
    }
}

struct Row {
    rounds: usize,
    start_secs: f64,
    machines_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn run(n: usize) -> Row {
    let deployment = helpers::Deployment::new();
    let started = Instant::now();
    let agents = deployment.spawn_agents(n).await;
    let start_secs = started.elapsed().as_secs_f64();
    let targets: Vec<_> = agents.iter().map(|a| a.target.clone()).collect();
    let service = CloudClientService::default();
    let request = ExecRequest::argv(["true"]);
    service
        .wait_ready(&targets, Instant::now() + Duration::from_secs(60))
        .await
        .expect("agents start");
    // One untimed round opens the connections that the timed rounds reuse.
    helpers::exec_all(&service, &targets, &request, helpers::EXEC_TIMEOUT).await;

    let rounds = (2000 / n).clamp(5, 200);
    let mut latencies = Vec::with_capacity(rounds * n);
    let timed = Instant::now();
    for _ in 0..rounds {
        for result in helpers::exec_all(&service, &targets, &request, helpers::EXEC_TIMEOUT).await {
            assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
            latencies.push(result.elapsed);
        }
    }
    let total = timed.elapsed();
    latencies.sort();
    let quantile = |q: f64| {
        latencies[((latencies.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
    };
    Row {
        rounds,
        start_secs,
        machines_per_sec: (rounds * n) as f64 / total.as_secs_f64(),
        p50_ms: quantile(0.50),
        p99_ms: quantile(0.99),
    }
}
