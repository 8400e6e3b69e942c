//! Provision overhead, printed as a table (not a timed test; compare ratios within one run).
//!
//! `POST /provision` → `ready` for `terraform/local`, one deployment of 3 sandboxed machines and
//! 20 deployments of 1 machine at once, against the ceiling of the same Terraform steps the
//! backend runs (`init`, `plan -out`, `apply` of that plan) in a fresh copy of the module, plus a
//! readiness poll of the agents (every 50 ms, over their pinned TLS), run by hand, at once, for
//! the same number of deployments. Each figure is the median of `ROUNDS` rounds, the backend and
//! the by-hand runs interleaved (their order swapped every round).
//!
//! Run (as root, like local machines need): `cargo bench -p backend --bench provision`.

#![allow(unreachable_pub, dead_code)]

#[path = "../tests/api/helpers/mod.rs"]
mod helpers;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use helpers::{TestApp, agent_binary, app};
use serde_json::{Value, json};
use tokio::process::Command;

const ROUNDS: usize = 3;
/// Deployments at once, and machines in each.
const SHAPES: [(usize, u32); 2] = [(1, 3), (20, 1)];

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs benches without `--bench`: stay quick.
        return;
    }
    let app = app()
        .provisioning()
        .env("NIM_MAX_CONCURRENT_RUNS", "20")
        .env("NIM_LOCAL_MAX_MACHINES_PER_USER", "64")
        .spawn()
        .await;
    let token = app.token("bench@example.com").await;
    let hand = ByHand::new(app.machine_download.as_deref().expect("local machines available"));

    let mut figures = vec![(Vec::new(), Vec::new()); SHAPES.len()];
    for round in 0..ROUNDS {
        for (shape, &(count, machines)) in SHAPES.iter().enumerate() {
            let (ours, theirs) = &mut figures[shape];
            if round % 2 == 0 {
                ours.push(backend(&app, &token, round, count, machines).await);
                theirs.push(hand.run(count, machines).await);
            } else {
                theirs.push(hand.run(count, machines).await);
                ours.push(backend(&app, &token, round, count, machines).await);
            }
        }
    }

    println!(
        "provision overhead, terraform/local (median of {ROUNDS} interleaved rounds, goal: ratio ≤ 1.10)"
    );
    println!(
        "| deployments at once × machines | by hand: init, plan -out, apply, poll agents | nim-backend: POST → ready | ratio |"
    );
    println!("|---|---|---|---|");
    for (&(count, machines), (ours, theirs)) in SHAPES.iter().zip(figures) {
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "| {count} × {machines} | {:.0} ms | {:.0} ms | {:.2}× |",
            theirs.as_secs_f64() * 1e3,
            ours.as_secs_f64() * 1e3,
            ours.as_secs_f64() / theirs.as_secs_f64()
        );
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// `count` deployments POSTed at once until every one is `ready`: the last one's `updated_at`
/// (the moment the backend recorded `ready`) less the moment before the first POST, so the
/// bench's own polling adds nothing. Destroys them after (not timed).
async fn backend(
    app: &TestApp,
    token: &str,
    round: usize,
    count: usize,
    machines: u32,
) -> Duration {
    let started = SystemTime::now();
    let posts = (0..count).map(|i| {
        let body = json!({"name": format!("b{round}-{count}-{i}"), "provider": "local",
            "variables": {"machine_count": machines}});
        async move {
            let response: Value =
                app.post_as(token, "/provision", &body).await.json().await.unwrap();
            response["deployment"]["id"].as_str().expect("a deployment id").to_owned()
        }
    });
    let ids = futures_util::future::join_all(posts).await;
    let ready = wait_all(app, token, &ids, "ready").await;
    for id in &ids {
        app.delete_as(token, &format!("/infrastructure/{id}")).await;
    }
    wait_all(app, token, &ids, "destroyed").await;
    ready.duration_since(started).unwrap_or_default()
}

/// Waits until every deployment has `status`; returns the latest of their `updated_at` as first
/// seen with it (a later health round may touch it again).
async fn wait_all(app: &TestApp, token: &str, ids: &[String], status: &str) -> SystemTime {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = std::collections::HashMap::new();
    loop {
        for id in ids {
            if seen.contains_key(id) {
                continue;
            }
            let deployment: Value =
                app.get(&format!("/infrastructure/{id}"), Some(token)).await.json().await.unwrap();
            assert!(deployment["status"] != "failed", "deployment failed: {deployment:#}");
            if deployment["status"] == status {
                let at: chrono::DateTime<chrono::Utc> =
                    deployment["updated_at"].as_str().unwrap().parse().unwrap();
                seen.insert(id.clone(), SystemTime::from(at));
            }
        }
        if seen.len() == ids.len() {
            return seen.into_values().max().unwrap_or(SystemTime::UNIX_EPOCH);
        }
        assert!(Instant::now() < deadline, "timed out waiting for {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The by-hand ceiling: terraform/local's module with its variables set as the backend would
/// (a bridge claimed here, the agent downloaded from the backend), one slot per deployment at once.
struct ByHand {
    dir: tempfile::TempDir,
    download: String,
    sha256: String,
    cert: nim_backend::services::certs::DeploymentCert,
    http: reqwest::Client,
}

const HAND_TOKEN: &str = "bench-token-0123456789abcdef";

impl ByHand {
    fn new(download: &str) -> Self {
        let binary = std::fs::read(agent_binary()).unwrap();
        let sha256: String =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&binary))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        let cert = nim_backend::services::certs::mint_deployment_cert("bench").unwrap();
        let pin = nim_backend::services::certs::AgentPin::from_pem(&cert.cert_pem).unwrap();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pin.client_config())
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugin-cache")).unwrap();
        Self { dir, download: download.to_owned(), sha256, cert, http }
    }

    /// `count` deployments at once: each its init, plan and apply, then its agents polled until
    /// every one answers. Destroys them after (not timed).
    async fn run(&self, count: usize, machines: u32) -> Duration {
        let slots: Vec<PathBuf> = (0..count).map(|slot| self.prepare(slot, machines)).collect();
        let started = Instant::now();
        let runs = slots.iter().map(|module| async move {
            self.terraform(module, &["init", "-input=false", "-no-color"]).await;
            self.terraform(module, &["plan", "-json", "-input=false", "-out=tfplan"]).await;
            let applied =
                self.terraform(module, &["apply", "-json", "-input=false", "tfplan"]).await;
            self.poll_agents(&applied).await;
        });
        futures_util::future::join_all(runs).await;
        let elapsed = started.elapsed();
        let destroys = slots.iter().map(|module| async move {
            self.terraform(module, &["destroy", "-auto-approve", "-input=false", "-no-color"])
                .await;
        });
        futures_util::future::join_all(destroys).await;
        for slot in 0..count {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &format!("nimbr{}", 1000 + slot)])
                .stderr(std::process::Stdio::null())
                .status();
        }
        elapsed
    }

    /// A fresh copy of the modules for one slot, like a new deployment's workspace.
    fn prepare(&self, slot: usize, machines: u32) -> PathBuf {
        let root = self.dir.path().join(format!("slot-{slot}"));
        let _ = std::fs::remove_dir_all(&root);
        let modules = root.join("modules");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform");
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
        // Subnets from the top of the default range, which the bench's backend never reaches.
        let index = 1000 + slot;
        let bridge = format!("nimbr{index}");
        let ip = |args: &[&str]| {
            assert!(std::process::Command::new("ip").args(args).status().unwrap().success())
        };
        ip(&["link", "add", "name", &bridge, "type", "bridge"]);
        ip(&["link", "set", "dev", &bridge, "alias", &format!("nim-local {id}")]);
        let machines_root = root.join("machines");
        std::fs::create_dir_all(machines_root.join(&id)).unwrap();
        std::fs::write(machines_root.join(&id).join("network"), format!("bridge={bridge}\n"))
            .unwrap();
        let subnet = format!("10.213.{}.{}/26", (index * 64) / 256, (index * 64) % 256);
        let vars = json!({"deployment_id": id, "machine_count": machines, "agent_port": 7070,
            "agent_download_url": format!("http://{}/agent/download/linux-x86_64", self.download),
            "agent_sha256": self.sha256, "machine_network": subnet,
            "machine_uid_base": 1_100_000_000u32 + index as u32 * 64,
            "machines_root": machines_root.display().to_string()});
        std::fs::write(module.join("terraform.tfvars.json"), vars.to_string()).unwrap();
        module
    }

    /// One Terraform command in `module`, as the backend runs it (same environment knobs);
    /// returns its stdout.
    async fn terraform(&self, module: &Path, args: &[&str]) -> String {
        let key = secrecy::ExposeSecret::expose_secret(&self.cert.key_pem).to_owned();
        let output = Command::new("terraform")
            .args(args)
            .current_dir(module)
            .envs([
                ("TF_VAR_agent_token", HAND_TOKEN.to_owned()),
                ("TF_VAR_agent_tls_cert", self.cert.cert_pem.clone()),
                ("TF_VAR_agent_tls_key", key),
                ("TF_IN_AUTOMATION", "1".to_owned()),
                ("CHECKPOINT_DISABLE", "1".to_owned()),
                ("TF_PLUGIN_CACHE_DIR", self.dir.path().join("plugin-cache").display().to_string()),
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "terraform {args:?} failed: {}{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// Reads the machines from the apply's `outputs` message and asks each agent for its health
    /// every 50 ms until it answers.
    async fn poll_agents(&self, applied: &str) {
        let outputs: Value = applied
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|message| message["type"] == "outputs")
            .expect("apply printed its outputs");
        let machines = outputs["outputs"]["machines"]["value"].as_array().unwrap().clone();
        let http = Arc::new(self.http.clone());
        let polls = machines.into_iter().map(|machine| {
            let http = http.clone();
            async move {
                let url = format!(
                    "https://{}:{}/v1/health",
                    machine["public_ip"].as_str().unwrap(),
                    machine["agent_port"]
                );
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Ok(response) = http.get(&url).send().await
                        && response.status().is_success()
                    {
                        return;
                    }
                    assert!(Instant::now() < deadline, "{url} never answered");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        futures_util::future::join_all(polls).await;
    }
}
