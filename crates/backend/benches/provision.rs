//! Provision overhead, printed as a table (not a timed test; compare ratios within one run).
//!
//! 1. `POST /provision` → `ready` for `terraform/local` with 3 sandboxed machines, against running
//!    the same `terraform init && terraform apply` by hand in a shell (which does not wait for
//!    agents).
//! 2. 20 deployments provisioned at once, with the default run concurrency and with 20.
//!
//! Run: `cargo bench -p backend --bench provision`.

#![allow(unreachable_pub, dead_code)]

#[path = "../tests/api/helpers.rs"]
mod helpers;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use helpers::{TestApp, agent_binary, app};
use serde_json::{Value, json};

const ROUNDS: usize = 5;

async fn provision(app: &TestApp, token: &str, name: &str, machines: u32) -> String {
    let body = json!({"name": name, "provider": "local", "variables": {"machine_count": machines}});
    let response: Value = app.post_as(token, "/provision", &body).await.json().await.unwrap();
    response["deployment"]["id"].as_str().expect("a deployment id").to_owned()
}

async fn wait_status(app: &TestApp, token: &str, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let deployment: Value =
            app.get(&format!("/infrastructure/{id}"), Some(token)).await.json().await.unwrap();
        if deployment["status"] == status {
            return;
        }
        assert!(deployment["status"] != "failed", "deployment failed: {deployment:#}");
        assert!(Instant::now() < deadline, "timed out waiting for {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `terraform init && terraform apply` of terraform/local, by hand, in a shell: the same
/// sandboxes (a bridge claimed here as the backend would, the agent downloaded from `download`),
/// without the backend's readiness check.
fn by_hand(round: usize, download: &str) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform");
    for module in ["local", "shared/bootstrap"] {
        let target = modules.join(module);
        std::fs::create_dir_all(&target).unwrap();
        for entry in std::fs::read_dir(repo.join(module)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
        }
    }
    let module = modules.join("local");
    let id = uuid::Uuid::now_v7().to_string();
    // A subnet of the default range no deployment of the bench's backend will take.
    let index = 1000 + round;
    let bridge = format!("nimbr{index}");
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success());
    ip(&["link", "add", "name", &bridge, "type", "bridge"]);
    ip(&["link", "set", "dev", &bridge, "alias", &format!("nim-local {id}")]);
    let machines = dir.path().join("machines");
    std::fs::create_dir_all(machines.join(&id)).unwrap();
    std::fs::write(machines.join(&id).join("network"), format!("bridge={bridge}\n")).unwrap();
    let subnet = format!("10.213.{}.{}/26", (index * 64) / 256, (index * 64) % 256);
    let binary = std::fs::read(agent_binary()).unwrap();
    let sha256: String =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&binary))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let cert = nim_backend::services::certs::mint_deployment_cert("bench").unwrap();
    let vars = json!({"deployment_id": id, "machine_count": 3, "agent_port": 7070,
        "agent_download_url": format!("http://{download}/agent/download/linux-x86_64"),
        "agent_sha256": sha256, "machine_network": subnet, "machine_uid_base": 1_100_000_000u32,
        "machines_root": machines.display().to_string()});
    std::fs::write(module.join("terraform.tfvars.json"), vars.to_string()).unwrap();
    let envs = [
        ("TF_VAR_agent_token", "bench-token-0123456789abcdef".to_owned()),
        ("TF_VAR_agent_tls_cert", cert.cert_pem.clone()),
        ("TF_VAR_agent_tls_key", secrecy::ExposeSecret::expose_secret(&cert.key_pem).to_owned()),
        ("CHECKPOINT_DISABLE", "1".to_owned()),
    ];
    let started = Instant::now();
    let status = Command::new("sh")
        .args(["-c", "terraform init -input=false >/dev/null && terraform apply -auto-approve -input=false >/dev/null"])
        .current_dir(&module)
        .envs(envs.clone())
        .status()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(status.success());
    let destroyed = Command::new("sh")
        .args(["-c", "terraform destroy -auto-approve -input=false >/dev/null"])
        .current_dir(&module)
        .envs(envs)
        .status()
        .unwrap();
    assert!(destroyed.success());
    elapsed
}

async fn burst(concurrency: &str, count: usize) -> Duration {
    let app = app().provisioning().env("NIM_MAX_CONCURRENT_RUNS", concurrency).spawn().await;
    let token = app.token("burst@example.com").await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..count {
        ids.push(provision(&app, &token, &format!("burst-{i}"), 1).await);
    }
    for id in &ids {
        wait_status(&app, &token, id, "ready").await;
    }
    let elapsed = started.elapsed();
    for id in &ids {
        app.delete_as(&token, &format!("/infrastructure/{id}")).await;
    }
    for id in &ids {
        wait_status(&app, &token, id, "destroyed").await;
    }
    elapsed
}

#[tokio::main]
async fn main() {
    let app = app().provisioning().spawn().await;
    let token = app.token("bench@example.com").await;
    let mut ours = Vec::new();
    let mut hand = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        let id = provision(&app, &token, &format!("bench-{round}"), 3).await;
        wait_status(&app, &token, &id, "ready").await;
        ours.push(started.elapsed());
        app.delete_as(&token, &format!("/infrastructure/{id}")).await;
        wait_status(&app, &token, &id, "destroyed").await;
        hand.push(by_hand(round, app.machine_download.as_deref().expect("local machines")));
    }
    let (ours, hand) = (median(ours), median(hand));
    println!("provision overhead, terraform/local with 3 machines (median of {ROUNDS})");
    println!("| what | time |");
    println!("|---|---|");
    println!(
        "| by hand: terraform init && apply (no readiness check) | {:.0} ms |",
        hand.as_secs_f64() * 1e3
    );
    println!(
        "| nim-backend: POST /provision → ready (agents answered) | {:.0} ms |",
        ours.as_secs_f64() * 1e3
    );
    println!("| ratio | {:.2}× |", ours.as_secs_f64() / hand.as_secs_f64());
    drop(app);

    println!();
    println!("20 deployments (1 machine each) provisioned at once: POST ×20 → all ready");
    println!("| NIM_MAX_CONCURRENT_RUNS | time | deployments/s |");
    println!("|---|---|---|");
    for concurrency in ["4", "20"] {
        let elapsed = burst(concurrency, 20).await;
        println!(
            "| {concurrency} | {:.2} s | {:.1} |",
            elapsed.as_secs_f64(),
            20.0 / elapsed.as_secs_f64()
        );
    }
}
