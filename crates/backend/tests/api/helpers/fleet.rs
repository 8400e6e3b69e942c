//! The steps of a test, typed over the wire types: provision, wait until a deployment is in a
//! state, run a command and wait for it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use wire::{
    deployments::{DeploymentView, MachineView, RunPage},
    status::{DeploymentStatus, MachineStatus, RunKind, RunStatus},
};

use super::{TestApp, eventually, json_ok};

/// How long any run may take in these tests before they give up (a loaded 2-core machine).
pub const RUN_WAIT: Duration = Duration::from_secs(120);

/// `POST /provision`, checked to be a 202; its JSON body.
pub async fn provision(app: &TestApp, token: &str, body: Value) -> Value {
    let response = app.post_as(token, "/provision", &body).await;
    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "{}",
        response.text().await.unwrap_or_default()
    );
    response.json().await.unwrap()
}

/// Provisions and waits until the deployment is ready; returns its id.
pub async fn provision_ready(app: &TestApp, token: &str, body: Value) -> String {
    let created = provision(app, token, body).await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(app, token, &id, DeploymentStatus::Ready).await;
    id
}

/// `GET /infrastructure/{id}`, typed.
pub async fn deployment(app: &TestApp, token: &str, id: &str) -> DeploymentView {
    let body = json_ok(app.get(&format!("/infrastructure/{id}"), Some(token)).await).await;
    serde_json::from_value(body.clone())
        .unwrap_or_else(|err| panic!("not a deployment ({err}): {body:#}"))
}

/// Polls the deployment until `done(deployment)` holds.
pub async fn wait_for(
    app: &TestApp,
    token: &str,
    id: &str,
    what: &str,
    done: impl Fn(&DeploymentView) -> bool,
) -> DeploymentView {
    eventually(what, RUN_WAIT, || async {
        let deployment = deployment(app, token, id).await;
        if done(&deployment) { Ok(deployment) } else { Err(format!("{deployment:#?}")) }
    })
    .await
}

/// Waits until the deployment's latest run is a `kind` run under way with `total` resources
/// planned: its plan is done and Terraform is applying.
pub async fn wait_for_apply(
    app: &TestApp,
    token: &str,
    id: &str,
    kind: RunKind,
    total: i64,
) -> DeploymentView {
    let what = format!("the {kind} run's apply of {total} resources to start");
    wait_for(app, token, id, &what, |d| {
        d.latest_run.as_ref().is_some_and(|r| {
            r.kind == kind && r.status == RunStatus::Running && r.progress.total == total
        })
    })
    .await
}

/// `GET /infrastructure/{id}/runs`: each run's kind and status, newest first.
pub async fn run_kinds(app: &TestApp, token: &str, id: &str) -> Vec<(RunKind, RunStatus)> {
    let body = json_ok(app.get(&format!("/infrastructure/{id}/runs"), Some(token)).await).await;
    let page: RunPage = serde_json::from_value(body.clone())
        .unwrap_or_else(|err| panic!("not a page of runs ({err}): {body:#}"));
    page.items.iter().map(|run| (run.kind, run.status)).collect()
}

pub async fn wait_for_status(
    app: &TestApp,
    token: &str,
    id: &str,
    status: DeploymentStatus,
) -> DeploymentView {
    wait_for(app, token, id, status.as_str(), |d| d.status == status).await
}

pub async fn send_command(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!("/infrastructure/{id}/command")))
        .bearer_auth(token)
        .timeout(Duration::from_secs(120))
        .json(&body)
        .send()
        .await
        .expect("request failed")
}

/// Sends a command, waits for its answer and checks it is a 200.
pub async fn run_command(app: &TestApp, token: &str, id: &str, body: Value) -> Value {
    json_ok(send_command(app, token, id, body).await).await
}

/// Sends a command with `wait=false`; checks the 202 and returns its body.
pub async fn start(app: &TestApp, token: &str, id: &str, body: Value) -> (Value, String) {
    let response = app
        .client
        .post(app.url(&format!("/infrastructure/{id}/command?wait=false")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    (response.json().await.unwrap(), location)
}

pub async fn get_command(app: &TestApp, token: &str, id: &str, command_id: &str) -> Value {
    json_ok(app.get(&format!("/infrastructure/{id}/commands/{command_id}"), Some(token)).await)
        .await
}

/// Polls a command until `done(command)` holds.
pub async fn wait_for_command(
    app: &TestApp,
    token: &str,
    id: &str,
    command_id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, Duration::from_secs(60), || async {
        let command = get_command(app, token, id, command_id).await;
        if done(&command) { Ok(command) } else { Err(format!("{command:#}")) }
    })
    .await
}

/// Whether the deployment lists machines and every one of them is in `status`.
pub fn every_machine(deployment: &DeploymentView, status: MachineStatus) -> bool {
    deployment.machines.as_deref().is_some_and(|machines| {
        !machines.is_empty() && machines.iter().all(|machine| machine.status == status)
    })
}

/// The deployment's machines (a single deployment's view always lists them).
pub fn machines_of(deployment: &DeploymentView) -> &[MachineView] {
    deployment.machines.as_deref().expect("a deployment's own view lists its machines")
}
