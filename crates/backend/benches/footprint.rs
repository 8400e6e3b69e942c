//! Footprint benchmark: starts a real `nim-agent` (the build of this bench's profile, release under
//! `cargo bench`) with a deployment's certificate and prints its idle resident memory, its memory
//! after 10,000 health calls over its real TLS, and the binary's size, beside the goals (idle RSS
//! ≤ 8 MiB and flat after the calls; binary ≤ 10 MiB). Not a timed test: run it with
//! `cargo bench -p backend --bench footprint`. Run by `cargo test --all-targets` (without cargo
//! bench's `--bench` flag) it does nothing.

use std::time::{Duration, Instant};

#[path = "../tests/agent/helpers.rs"]
#[allow(dead_code, reason = "the benchmark uses only the spawning half of the test helpers")]
mod helpers;

const CALLS: usize = 10_000;
/// Calls in flight at once.
const CONCURRENCY: usize = 8;
const MIB: f64 = 1024.0 * 1024.0;

#[tokio::main]
async fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let binary =
        std::fs::metadata(helpers::AGENT_BIN.as_str()).expect("the agent binary exists").len();
    let deployment = helpers::Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;
    let pid = agent.child.id().expect("the agent runs");
    let client = helpers::raw_client(&deployment.cert.cert_pem);
    let health = agent.url("/v1/health");
    // One call first, so "idle" is an agent that has served (TLS set up, first connection).
    assert!(client.get(&health).send().await.unwrap().status().is_success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss(pid);

    // Two halves of the calls, each mostly on pooled connections and a tenth on new ones (a full
    // TLS handshake each, as a health checker without a pool makes them). The first half also
    // touches code and allocator arenas for the first time; "flat" is what the second adds.
    let started = Instant::now();
    let half = calls_in_half(&client, &deployment.cert.cert_pem, &health).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_half = rss(pid);
    calls_in_half(&client, &deployment.cert.cert_pem, &health).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss(pid);
    let peak = status_kib(pid, "VmHWM:");

    let mib = |bytes: u64| bytes as f64 / MIB;
    let yes = |met: bool| if met { "met" } else { "not met" };
    let calls = 2 * half;
    println!(
        "nim-agent footprint ({calls} health calls, {CONCURRENCY} at once, a tenth on new TLS connections, in {took:.2?})"
    );
    println!("| what | figure | goal | |");
    println!("|---|---|---|---|");
    println!(
        "| idle RSS (after one call) | {:.2} MiB | ≤ 8 MiB | {} |",
        mib(idle),
        yes(idle <= 8 << 20)
    );
    println!(
        "| RSS after {half} calls | {:.2} MiB (+{:.2} on idle) | | |",
        mib(after_half),
        mib(after_half.saturating_sub(idle))
    );
    let growth = after.saturating_sub(after_half);
    println!(
        "| RSS after {calls} calls | {:.2} MiB (+{:.2} on idle, +{:.3} in the second {half}) | flat: ≤ +0.1 MiB in the second {half}, and ≤ 8 MiB | {} |",
        mib(after),
        mib(after.saturating_sub(idle)),
        mib(growth),
        yes(growth <= 100 << 10 && after <= 8 << 20)
    );
    println!("| peak RSS (VmHWM) | {:.2} MiB | | |", mib(peak));
    println!(
        "| release binary | {:.2} MiB | ≤ 10 MiB | {} |",
        mib(binary),
        yes(binary <= 10 << 20)
    );
}

/// Half of the calls, `CONCURRENCY` at once: nine tenths on `client`'s pooled connections, a
/// tenth each on a client of its own. Returns how many calls it made.
async fn calls_in_half(client: &reqwest::Client, pin: &str, health: &str) -> usize {
    let per_task = CALLS / 2 / CONCURRENCY;
    let tasks = (0..CONCURRENCY).map(|_| {
        let (client, pin, health) = (client.clone(), pin.to_owned(), health.to_owned());
        tokio::spawn(async move {
            for call in 0..per_task {
                let fresh;
                let client = match call % 10 {
                    0 => {
                        fresh = helpers::raw_client(&pin);
                        &fresh
                    }
                    _ => &client,
                };
                let response = client.get(&health).send().await.unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
            }
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task.unwrap();
    }
    per_task * CONCURRENCY
}

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}
