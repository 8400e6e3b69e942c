//! The worker's claim step, driven directly (`try_run_next`, as the zero-to-production worker's
//! tests do) on a server built in-process on each database this machine offers, with real
//! Terraform running the `failing` fixture module: no HTTP, no polling, one step at a time.

use std::path::Path;

use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Outcome;
use crate::{
    app::Application,
    config::Config,
    domain::{DeploymentStatus, RunStatus},
    services::deployments::ProvisionRequest,
    store::testing::PostgresDatabase,
};

const KEY: &str = "bmltLXdvcmtlci10ZXN0cy1rZXktb2YtMzItYnl0ZXM=";

/// A modules folder holding the `failing` fixture with the module contract's variables.
fn modules(into: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let failing = into.join("modules/failing");
    std::fs::create_dir_all(&failing).unwrap();
    for (from, to) in [
        ("tests/fixtures/modules/failing/main.tf", "main.tf"),
        ("../../terraform/local/variables.tf", "variables.tf"),
    ] {
        std::fs::copy(root.join(from), failing.join(to)).unwrap();
    }
    into.join("modules")
}

/// A server's parts on SQLite and, when a server answers, on a fresh Postgres database.
async fn applications(dir: &Path) -> Vec<(&'static str, Application, Option<PostgresDatabase>)> {
    let config = |name: &str, database: Option<&PostgresDatabase>| {
        let mut config = Config::defaults();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.join(name).join("data");
        config.local_machines_dir = dir.join(name).join("machines");
        config.modules_dir = Some(modules(&dir.join(name)));
        config.encryption_key = Some(SecretString::from(KEY));
        config.jwt_secret = Some(SecretString::from("worker-tests-signing-secret-of-32-bytes+"));
        // The `failing` module never boots a machine, so no agent is ever downloaded; any file
        // stands in for the binary the backend offers (this test's own).
        config.agent_binary = Some(std::env::current_exe().unwrap());
        config.replica_name = Some(format!("worker-test-{name}"));
        config.database_url = database.map(|database| SecretString::from(database.url.clone()));
        config
    };
    let mut applications =
        vec![("sqlite", Application::build(config("sqlite", None)).await.unwrap(), None)];
    if let Some(database) = PostgresDatabase::create().await {
        let application = Application::build(config("postgres", Some(&database))).await.unwrap();
        applications.push(("postgres", application, Some(database)));
    }
    applications
}

/// A deployment of the `failing` module whose one machine refuses with `<name> refuses`.
fn failing(name: &str) -> ProvisionRequest {
    let variables = json!({"reason": format!("{name} refuses"), "machine_count": 1});
    ProvisionRequest {
        name: name.to_owned(),
        provider: "failing".to_owned(),
        variables: variables.as_object().unwrap().clone(),
    }
}

#[tokio::test]
async fn one_claim_step_runs_the_oldest_queued_run_to_its_recorded_end() {
    let dir = tempfile::tempdir().unwrap();
    for (database, application, _guard) in applications(dir.path()).await {
        let worker = application.worker();
        let shutdown = CancellationToken::new();
        assert_eq!(worker.try_run_next(&shutdown).await.unwrap(), Outcome::Empty, "{database}");

        let owner = Uuid::new_v4();
        let (first, first_run, _) =
            worker.deployments.provision(owner, failing("first"), None).await.unwrap();
        let (second, second_run, _) =
            worker.deployments.provision(owner, failing("second"), None).await.unwrap();

        // One step: the oldest queued run, and only it, runs to a recorded end.
        assert_eq!(worker.try_run_next(&shutdown).await.unwrap(), Outcome::Ran, "{database}");
        let (run, events) = worker.deployments.run(owner, first.id, first_run.id).await.unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{database}: {run:?}");
        assert!(run.lease_owner.is_none() && run.finished_at.is_some(), "{database}: {run:?}");
        let error = run.error.as_deref().unwrap();
        assert!(error.contains("first refuses"), "{database}: {error}");
        let deployment = worker.deployments.deployment(owner, first.id).await.unwrap();
        assert_eq!(deployment.status, DeploymentStatus::Failed, "{database}");
        let reason = deployment.status_reason.as_deref().unwrap();
        assert!(reason.starts_with("terraform apply failed"), "{database}: {reason}");
        let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"status"), "{database}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"run_finished"), "{database}: {kinds:?}");
        assert!(events.windows(2).all(|pair| pair[0].seq < pair[1].seq), "{database}");

        let (waiting, _) = worker.deployments.run(owner, second.id, second_run.id).await.unwrap();
        assert_eq!(waiting.status, RunStatus::Queued, "{database}: the second run waits");

        // The next step takes the second run; then the queue is empty.
        assert_eq!(worker.try_run_next(&shutdown).await.unwrap(), Outcome::Ran, "{database}");
        let (run, _) = worker.deployments.run(owner, second.id, second_run.id).await.unwrap();
        assert_eq!(run.status, RunStatus::Failed, "{database}");
        assert!(run.error.as_deref().unwrap().contains("second refuses"), "{database}");
        assert_eq!(worker.try_run_next(&shutdown).await.unwrap(), Outcome::Empty, "{database}");
    }
}

#[tokio::test]
async fn a_step_asked_to_stop_before_it_starts_interrupts_the_run_and_queues_it_again() {
    let dir = tempfile::tempdir().unwrap();
    for (database, application, _guard) in applications(dir.path()).await {
        let worker = application.worker();
        let owner = Uuid::new_v4();
        let (deployment, run, _) =
            worker.deployments.provision(owner, failing("stopped"), None).await.unwrap();
        let shutdown = CancellationToken::new();
        shutdown.cancel();

        assert_eq!(worker.try_run_next(&shutdown).await.unwrap(), Outcome::Ran, "{database}");
        let (interrupted, _) = worker.deployments.run(owner, deployment.id, run.id).await.unwrap();
        assert_eq!(interrupted.status, RunStatus::Interrupted, "{database}: {interrupted:?}");
        let runs = worker.deployments.runs(owner, deployment.id, None, 10).await.unwrap();
        let queued: Vec<_> = runs.iter().filter(|r| r.status == RunStatus::Queued).collect();
        assert_eq!(queued.len(), 1, "{database}: a shutdown re-queues the run: {runs:?}");
        assert_eq!(queued[0].attempt, 0, "{database}: a shutdown uses up no retry");
        let status = worker.deployments.deployment(owner, deployment.id).await.unwrap().status;
        assert_ne!(status, DeploymentStatus::Failed, "{database}");
    }
}
