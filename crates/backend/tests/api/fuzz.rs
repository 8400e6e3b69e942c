//! Schemathesis against a live server: every operation of `/openapi.json`, with a valid token
//! and real ids (a ready deployment, its run and a command, created first), under the checks
//! `not_a_server_error`, `status_code_conformance`, `content_type_conformance`,
//! `response_schema_conformance` and `ignored_auth`; then another user's token on those ids,
//! which must answer nothing but 404. `./dev test` installs Schemathesis into `.tools/` and
//! runs this test (it is `#[ignore]`d in plain `cargo test`, which may have no Python).

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::json;

use wire::status::DeploymentStatus;

use crate::helpers::{TestApp, app, provision, run_command, wait_for_status};

/// Examples per operation and phase: enough to reach every status an operation documents,
/// little enough for CI (a pass takes about a minute on two cores).
const MAX_EXAMPLES: u32 = 10;
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,ignored_auth";

/// `NIM_SCHEMATHESIS`, else `.tools/venv/bin/st` of the checkout. Missing: skipped loudly, or
/// a failure under CI, where `./dev test` must have installed it.
fn schemathesis() -> Option<PathBuf> {
    let path = std::env::var_os("NIM_SCHEMATHESIS").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/st")
    });
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "schemathesis is not installed at {} (./dev test installs it)",
        path.display()
    );
    eprintln!("*** SKIPPED the schemathesis pass: {} does not exist ***", path.display());
    None
}

/// Runs `st run` against `app` with `args`; returns its exit success and prints its output's
/// summary (the lines from `SUMMARY` on, and every failure).
async fn run_schemathesis(st: &PathBuf, app: &TestApp, config: &PathBuf, args: &[&str]) -> bool {
    let hooks = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let output = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(config)
        .arg("--no-color")
        .arg("run")
        .arg(app.url("/openapi.json"))
        .args(["--workers", "2", "--request-timeout", "60"])
        .args(["--seed", "1"])
        .args(args)
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "nim_hooks")
        .env("NO_PROXY", "127.0.0.1")
        // Its reports and Hypothesis' database land beside the config, not in the checkout.
        .current_dir(config.parent().expect("the config is in a directory"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .expect("schemathesis finished within 10 minutes")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let from = stdout.find("=== FAILURES").or_else(|| stdout.find("=== SUMMARY")).unwrap_or(0);
    eprintln!("{}", &stdout[from..]);
    if !output.status.success() {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    output.status.success()
}

/// The real ids for every path parameter, and the bounds that keep a pass short: a few
/// examples of the operations that run Terraform (a dry run plans), and event streams read for
/// a moment (they stay open while the deployment lives).
/// `/auth/logout` gets a user of its own: a `scope=global` logout would end the owner's
/// sessions, and `/auth/me` would answer nothing but 401 for the rest of the pass.
fn config_file(id: &str, run_id: &str, command_id: &str, logout_token: &str) -> String {
    format!(
        r#"generation.max-examples = {MAX_EXAMPLES}

[parameters]
"path.id" = "{id}"
"path.run_id" = "{run_id}"
"path.command_id" = "{command_id}"
"path.file" = "swagger-ui.css"
"path.target" = "x86_64-unknown-linux-gnu"

[[operations]]
include-path = "/infrastructure/{{id}}/events"
request-timeout = 2
max-stream-events = 5

[[operations]]
include-path = "/auth/logout"
headers = {{ Authorization = "Bearer {logout_token}" }}

[[operations]]
include-path = "/provision"
generation.max-examples = 4
"#
    )
}

#[tokio::test]
#[ignore = "needs Schemathesis; ./dev test installs it and runs this"]
async fn schemathesis_finds_the_api_exactly_as_documented_and_other_users_ids_are_404() {
    let Some(st) = schemathesis() else { return };
    let app = app()
        .provisioning()
        // The fuzzer signs up and logs in far more often than a person; what it provisions
        // stays small.
        .env("NIM_AUTH_RATE_LIMIT_PER_MINUTE", "1000000")
        .env("NIM_LOCAL_MAX_MACHINES_PER_USER", "3")
        .spawn()
        .await;
    let owner = app.token("fuzz-owner@example.com").await;
    let other = app.token("fuzz-other@example.com").await;
    let created = provision(
        &app,
        &owner,
        json!({"name": "fuzzed", "provider": "local", "variables": {"machine_count": 1}}),
    )
    .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    let run_id = created["run"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &owner, &id, DeploymentStatus::Ready).await;
    let command = run_command(&app, &owner, &id, json!({"argv": ["true"]})).await;
    let command_id = command["id"].as_str().unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("schemathesis.toml");
    let logout_token = app.token("fuzz-logout@example.com").await;
    std::fs::write(&config, config_file(&id, &run_id, &command_id, &logout_token)).unwrap();

    // Another user, the first user's ids: nothing but 404 (first, while they all exist).
    let other_header = format!("Authorization: Bearer {other}");
    let foreign = run_schemathesis(
        &st,
        &app,
        &config,
        &[
            "--header",
            &other_header,
            "--include-path-regex",
            r"\{id\}",
            "--mode",
            "positive",
            "--phases",
            "examples,coverage,fuzzing",
            "--checks",
            "not_a_server_error,only_not_found",
        ],
    )
    .await;
    // The owner, every operation, every check.
    let owner_header = format!("Authorization: Bearer {owner}");
    let conforms =
        run_schemathesis(&st, &app, &config, &["--header", &owner_header, "--checks", CHECKS])
            .await;
    assert!(foreign, "another user's token reached the first user's resources (output above)");
    assert!(conforms, "schemathesis found the API unlike its document (output above)");
}
