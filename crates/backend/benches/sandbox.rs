//! Local machines at scale, printed as tables (a benchmark, not a timed test): 200 sandboxed
//! machines in 4 deployments of 50 provisioned at once, time to ready, memory per idle machine,
//! and one command across all 200. Ceilings measured in the same run: starting one bare
//! sandbox (`sandbox.sh true`, network namespace included) and a command through one agent.
//!
//! The command fan-out through the API is compared with the machine's own ceiling for it
//! (`fanout_ceiling.rs`: per machine, a TLS round trip to a server that spawns the same command),
//! in 3 interleaved rounds; then one deployment's fan-out at several `max_concurrency` values.
//!
//! Run as root: `cargo bench -p backend --bench sandbox` (`MACHINES=100` for fewer; 500 by
//! default, in 10 deployments).

#![allow(unreachable_pub, dead_code)]

#[path = "../tests/api/helpers/mod.rs"]
mod helpers;

mod fanout_ceiling;

use std::time::{Duration, Instant};

use helpers::{TestApp, app};
use serde_json::{Value, json};

const PER_DEPLOYMENT: usize = 50;

async fn get(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(&format!("/infrastructure/{id}"), Some(token)).await.json().await.unwrap()
}

async fn wait_status(app: &TestApp, token: &str, id: &str, status: &str) -> Duration {
    let started = Instant::now();
    loop {
        let deployment = get(app, token, id).await;
        if deployment["status"] == status {
            return started.elapsed();
        }
        assert!(deployment["status"] != "failed", "deployment failed: {deployment:#}");
        assert!(started.elapsed() < Duration::from_secs(900), "timed out waiting for {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Resident memory of every process of a machine (its cgroup), in bytes: PSS, so pages the
/// machines share (the agent's binary, libc) are divided among them.
fn machine_memory(id: &str, machine: &str) -> (u64, u64) {
    let cgroup = format!("{id}-{machine}");
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/nim-local/{cgroup}/cgroup.procs"))
            .unwrap_or_default();
    let mut pss = 0;
    for pid in procs.lines() {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        pss += rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
    }
    let charged = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/nim-local/{cgroup}/memory.usage_in_bytes"
    ))
    .ok()
    .and_then(|t| t.trim().parse().ok())
    .unwrap_or(0);
    (pss, charged)
}

fn mem_available() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Ceiling: one bare sandbox started and stopped by the module's own scripts' tools, without
/// Terraform, the bootstrap or an agent (median of 5).
fn bare_sandbox() -> Duration {
    let mut samples = Vec::new();
    for i in 0..5 {
        let ns = format!("nim-bench-{i}");
        let started = Instant::now();
        let ok = std::process::Command::new("sh")
            .args(["-c", "ip netns add \"$NS\" && ip netns exec \"$NS\" setpriv --reuid=1100000500 --regid=1100000500 --clear-groups --no-new-privs bwrap --unshare-user --uid 0 --gid 0 --unshare-pid --unshare-ipc --unshare-uts --tmpfs / --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev -- /bin/true; s=$?; ip netns del \"$NS\"; exit $s"])
            .env("NS", &ns)
            .status()
            .unwrap()
            .success();
        assert!(ok, "a bare sandbox failed to start");
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[2]
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("MACHINES").ok().and_then(|m| m.parse().ok()).unwrap_or(500);
    let deployments = total.div_ceil(PER_DEPLOYMENT);
    let app = app()
        .provisioning()
        .env("NIM_LOCAL_MAX_MACHINES_PER_USER", total.to_string())
        .env("NIM_READY_TIMEOUT_SECS", "600")
        .env("NIM_HEALTH_INTERVAL_SECS", "3600")
        .spawn()
        .await;
    let token = app.token("fleet@example.com").await;
    let available_before = mem_available();

    let started = Instant::now();
    let mut ids = Vec::new();
    for d in 0..deployments {
        let count = PER_DEPLOYMENT.min(total - d * PER_DEPLOYMENT);
        let body = json!({"name": format!("fleet-{d}"), "provider": "local", "variables": {"machine_count": count, "memory_mb": 64}});
        let response: Value = app.post_as(&token, "/provision", &body).await.json().await.unwrap();
        ids.push(response["deployment"]["id"].as_str().expect("a deployment id").to_owned());
    }
    let mut ready_each = Vec::new();
    for id in &ids {
        wait_status(&app, &token, id, "ready").await;
        ready_each.push(started.elapsed());
    }
    let to_ready = started.elapsed();

    // Idle: let the boot settle, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut pss = 0;
    let mut charged = 0;
    for id in &ids {
        let deployment = get(&app, &token, id).await;
        for machine in deployment["machines"].as_array().unwrap() {
            let (p, c) = machine_memory(id, machine["name"].as_str().unwrap());
            pss += p;
            charged += c;
        }
    }
    let available_after = mem_available();

    // One command on every machine of every deployment at once, against the machine's ceiling
    // for the same fan-out, interleaved.
    const SHELL: &str = "echo $NIM_MACHINE; uname -r";
    const CONCURRENCY: usize = 64;
    // `only`: the index of the one deployment to command; all of them when `None`.
    let fan_out = |max_concurrency: usize, only: Option<usize>| {
        let (app, token) = (&app, &token);
        let ids: Vec<&String> = only.map_or_else(|| ids.iter().collect(), |i| vec![&ids[i]]);
        async move {
            let command = json!({"shell": SHELL, "max_concurrency": max_concurrency});
            let started = Instant::now();
            let calls = ids.iter().map(|id| {
                let command = &command;
                async move {
                    let response = app
                        .client
                        .post(app.url(&format!("/infrastructure/{id}/command")))
                        .bearer_auth(token)
                        .timeout(Duration::from_secs(300))
                        .json(command)
                        .send()
                        .await
                        .unwrap();
                    response.json::<Value>().await.unwrap()
                }
            });
            let results = futures_util::future::join_all(calls).await;
            let succeeded: u64 =
                results.iter().map(|r| r["summary"]["succeeded"].as_u64().unwrap_or(0)).sum();
            (started.elapsed(), succeeded)
        }
    };
    let mut api_times = Vec::new();
    let mut ceiling_times = Vec::new();
    let mut succeeded = 0;
    for _ in 0..3 {
        let (time, ok) = fan_out(CONCURRENCY, None).await;
        api_times.push(time);
        succeeded = ok;
        ceiling_times.push(fanout_ceiling::measure(SHELL, total, CONCURRENCY * deployments).await);
    }
    api_times.sort();
    ceiling_times.sort();
    let (command_time, ceiling_time) = (api_times[1], ceiling_times[1]);
    let mut scaling = Vec::new();
    for max_concurrency in [5, 10, 25, 50] {
        let (time, ok) = fan_out(max_concurrency, Some(0)).await;
        scaling.push((max_concurrency, time, ok));
    }
    // Ceiling for a command: the same command on one machine alone (median of 5).
    let mut one = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let body = json!({"shell": "echo $NIM_MACHINE; uname -r", "machines": ["local-0"]});
        let r: Value = app
            .post_as(&token, &format!("/infrastructure/{}/command", ids[0]), &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "succeeded", "{r:#}");
        one.push(t.elapsed());
    }
    one.sort();
    let one = one[2];
    let bare = bare_sandbox();

    let started_destroy = Instant::now();
    for id in &ids {
        app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    }
    for id in &ids {
        wait_status(&app, &token, id, "destroyed").await;
    }
    let destroy_time = started_destroy.elapsed();

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{total} sandboxed local machines in {deployments} deployments of up to {PER_DEPLOYMENT}, provisioned at once (NIM_MAX_CONCURRENT_RUNS=4)"
    );
    println!("| what | figure | ceiling (same run) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| POST ×{deployments} → all ready | {:.1} s ({:.0} ms per machine) | bare sandbox start {:.0} ms per machine, one after another | {:.1}× |",
        to_ready.as_secs_f64(),
        to_ready.as_secs_f64() * 1e3 / total as f64,
        bare.as_secs_f64() * 1e3,
        to_ready.as_secs_f64() / (bare.as_secs_f64() * total as f64)
    );
    println!(
        "| ready, deployment by deployment | {} | | |",
        ready_each
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| memory per idle machine (PSS of its processes) | {:.2} MiB | | |",
        mib(pss) / total as f64
    );
    println!(
        "| memory per idle machine (its memory cgroup, page cache included) | {:.2} MiB | | |",
        mib(charged) / total as f64
    );
    println!(
        "| host MemAvailable drop for all {total} | {:.0} MiB | | |",
        mib(available_before.saturating_sub(available_after))
    );
    println!(
        "| one command on all {total} ({deployments} commands at once, max_concurrency {CONCURRENCY}; median of 3) | {:.2} s ({:.0} machine-commands/s), {succeeded}/{total} succeeded | the same command on one machine {:.0} ms | {:.1}× |",
        command_time.as_secs_f64(),
        total as f64 / command_time.as_secs_f64(),
        one.as_secs_f64() * 1e3,
        command_time.as_secs_f64() / one.as_secs_f64()
    );
    println!(
        "| the machine's ceiling for that fan-out: {total} TLS round trips to a server spawning the same command, {} at a time (median of 3) | {:.2} s ({:.0}/s) | | API reaches {:.0}% of it |",
        CONCURRENCY * deployments,
        ceiling_time.as_secs_f64(),
        total as f64 / ceiling_time.as_secs_f64(),
        100.0 * ceiling_time.as_secs_f64() / command_time.as_secs_f64()
    );
    println!("| destroy all | {:.1} s | | |", destroy_time.as_secs_f64());
    let n = PER_DEPLOYMENT.min(total);
    println!("\nOne deployment of {n}: the fan-out's time against N / max_concurrency");
    println!("| max_concurrency | rounds (N / max_concurrency) | time | per round | succeeded |");
    println!("|---:|---:|---:|---:|---:|");
    for (max_concurrency, time, ok) in scaling {
        let rounds = n.div_ceil(max_concurrency);
        println!(
            "| {max_concurrency} | {rounds} | {:.0} ms | {:.1} ms | {ok}/{n} |",
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() * 1e3 / rounds as f64
        );
    }
}
