//! The run worker: claims queued runs (at most `NIM_MAX_CONCURRENT_RUNS` at once, one per
//! deployment by the store's constraint), drives Terraform through init → plan → apply, records
//! every message as a run event, stores the machines Terraform outputs, waits for their agents,
//! and moves the deployment on. It holds each run by a lease it renews; a run whose worker died
//! is found by its lapsed lease, marked interrupted and re-queued once.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    cloud_client::CloudClientService,
    deployments::{PG_BACKEND_CONFIG, PG_BACKEND_OVERRIDE, Provisioning, init_args, is_sandboxed},
    events::EventBus,
    health,
    terraform::{
        Exit, StopSignals, Terraform, Workspace,
        runner::reap_orphan,
        ui::{Progress, UiMessage},
        write_private,
    },
};
use crate::{
    domain::{DeploymentStatus, RunKind, RunStatus},
    store::{DeploymentRow, NewMachine, RunRow, Store, StoreError},
};

/// Advisory lock key serialising `terraform init` and state-workspace creation across replicas
/// ("nim-tfin").
const TERRAFORM_SETUP_LOCK: i64 = 0x6e69_6d2d_7466_696e;
/// Agents asked at once for the health round that comes with `ready`.
const HEALTH_CONCURRENCY: usize = 64;

/// Re-queues after a crash that a run gets before it fails for good.
const MAX_REQUEUES: i64 = 1;

/// What `try_run_next` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ran,
    Empty,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub max_concurrent_runs: usize,
    pub run_timeout: Duration,
    pub ready_timeout: Duration,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
}

#[derive(Clone)]
pub struct RunWorker {
    ctx: Provisioning,
    cloud: Arc<CloudClientService>,
    bus: EventBus,
    settings: WorkerSettings,
    id: String,
}

/// Why a run stopped before Terraform finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancelled,
    Shutdown,
}

/// What a run came to.
#[derive(Clone)]
enum RunEnd {
    Succeeded,
    Failed(String),
    Cancelled,
    TimedOut,
    Shutdown,
}

enum Record {
    Terraform(Box<UiMessage>),
    Step,
    Event(&'static str, Value),
}

impl RunWorker {
    /// `name` identifies this replica in leases and run events (default `<hostname>-<random>`).
    pub fn new(
        ctx: Provisioning,
        cloud: Arc<CloudClientService>,
        bus: EventBus,
        settings: WorkerSettings,
        name: Option<String>,
    ) -> Self {
        let id = name.unwrap_or_else(|| format!("{}-{}", hostname(), Uuid::new_v4().simple()));
        Self { ctx, cloud, bus, settings, id }
    }

    fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// Finds runs left running by a dead worker: each is marked interrupted and re-queued once,
    /// or fails its deployment when it was already re-queued. Returns how many it handled.
    #[tracing::instrument(skip_all)]
    ///
    /// `at_start`: also runs this replica held before a restart under the same name; the
    /// periodic sweep must leave those alone, they are running.
    pub async fn recover(&self, all_running: bool, at_start: bool) -> anyhow::Result<usize> {
        let now = crate::domain::now();
        let me = at_start.then_some(self.id.as_str());
        let stale = self.store().stale_runs(now, all_running, me).await?;
        for run in &stale {
            if let Some(deployment) = self.store().deployment(run.deployment_id).await? {
                let workspace = Workspace::for_deployment(
                    &self.ctx.data_dir,
                    deployment.id,
                    &deployment.provider,
                );
                reap_orphan(&workspace.module_dir);
            }
            let reason = "the backend running it stopped before it finished";
            if run.attempt < MAX_REQUEUES {
                let next = RunRow::queued(run.deployment_id, run.kind(), run.attempt + 1, now);
                if self.store().requeue_run(run.id, reason, &next, now).await? {
                    tracing::warn!(run_id = %run.id, next_run_id = %next.id, "interrupted run re-queued");
                    self.event(run, "run_finished", json!({"run_id": run.id, "status": "interrupted", "error": reason, "requeued_as": next.id})).await;
                }
            } else {
                let failed = format!(
                    "the {} run was interrupted twice; run it again when the cause is fixed",
                    run.kind
                );
                let deployment_status = match run.kind() {
                    RunKind::Apply | RunKind::Destroy => DeploymentStatus::Failed,
                };
                if self
                    .store()
                    .finish_run(
                        run.id,
                        RunStatus::Interrupted,
                        Some(reason),
                        (deployment_status, Some(&failed)),
                        now,
                    )
                    .await?
                {
                    tracing::warn!(run_id = %run.id, "run interrupted again; deployment failed");
                    self.event(
                        run,
                        "run_finished",
                        json!({"run_id": run.id, "status": "interrupted", "error": failed}),
                    )
                    .await;
                }
            }
        }
        if !stale.is_empty() {
            self.ctx.work_queued.notify_one();
        }
        Ok(stale.len())
    }

    async fn event(&self, run: &RunRow, kind: &str, data: Value) {
        match self
            .store()
            .append_event(run.id, run.deployment_id, kind, &data, crate::domain::now())
            .await
        {
            Ok(_) => self.bus.publish(run.deployment_id),
            Err(err) => tracing::warn!(error = %err, "failed to record a run event"),
        }
    }

    /// Claims the oldest queued run and executes it to the end (tests call this directly).
    pub async fn try_run_next(&self, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
        let now = crate::domain::now();
        let lease_until = now + chrono::Duration::from_std(self.settings.lease)?;
        match self.store().claim_next_run(&self.id, lease_until, now).await? {
            Some(run) => {
                self.execute(run, shutdown.child_token()).await;
                Ok(Outcome::Ran)
            }
            None => Ok(Outcome::Empty),
        }
    }

    /// Runs queued runs until `shutdown`, then lets running ones stop (Terraform gets SIGINT and
    /// each run is recorded as interrupted and re-queued for the next start).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(self.settings.max_concurrent_runs));
        let mut tasks = JoinSet::new();
        let mut next_sweep = Instant::now();
        loop {
            while tasks.try_join_next().is_some() {}
            if Instant::now() >= next_sweep {
                // Other replicas' dead workers (their leases lapse); harmless when alone.
                if let Err(err) = self.recover(false, false).await {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "failed to look for interrupted runs"
                    );
                }
                next_sweep = Instant::now() + self.settings.lease / 2;
            }
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit?,
                () = shutdown.cancelled() => break,
            };
            let now = crate::domain::now();
            let lease_until = now + chrono::Duration::from_std(self.settings.lease)?;
            match self.store().claim_next_run(&self.id, lease_until, now).await {
                Ok(Some(run)) => {
                    let worker = self.clone();
                    let stop = shutdown.child_token();
                    tasks.spawn(async move {
                        worker.execute(run, stop).await;
                        drop(permit);
                    });
                }
                Ok(None) => {
                    drop(permit);
                    tokio::select! {
                        () = self.ctx.work_queued.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(err) => {
                    drop(permit);
                    tracing::warn!(error = %err, "failed to claim a run; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        if !tasks.is_empty() {
            tracing::info!(runs = tasks.len(), "stopping running runs");
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Executes one claimed run; never returns an error: whatever happens ends up in the run's
    /// status and the deployment's `status_reason`.
    #[tracing::instrument(skip_all, fields(run_id = %run.id, deployment_id = %run.deployment_id, kind = %run.kind))]
    async fn execute(&self, run: RunRow, shutdown: CancellationToken) {
        let (records, recorder) = self.spawn_recorder(&run);
        let stop_reason = Arc::new(OnceLock::new());
        let cancel = CancellationToken::new();
        let stopping = shutdown.clone();
        let watcher =
            tokio::spawn(self.clone().watch(run.id, shutdown, cancel.clone(), stop_reason.clone()));

        let end = match self.drive(&run, &records, &cancel).await {
            Ok(end) => end,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "run failed");
                RunEnd::Failed(format!("{err:#}"))
            }
        };
        // A stop makes Terraform exit like a cancel; say which kind of stop it was.
        let end = match (end, stop_reason.get()) {
            (RunEnd::Cancelled, Some(StopReason::Shutdown)) => RunEnd::Shutdown,
            (end, _) => end,
        };
        // A full or read-only disk (or a database outage) refuses the record for a while: keep
        // trying, so the run ends recorded once writes work again rather than stuck `running`
        // until the next start. The watcher keeps renewing the lease meanwhile.
        let mut delay = Duration::from_secs(1);
        loop {
            let Err(err) = self.finish(&run, end.clone(), &records).await else { break };
            let transient = err.chain().any(|cause| {
                cause.downcast_ref::<StoreError>().is_some_and(StoreError::is_transient)
            });
            if !transient || stopping.is_cancelled() {
                tracing::error!(
                    error = format!("{err:#}"),
                    "failed to record the end of a run; it will be recovered"
                );
                break;
            }
            tracing::warn!(
                error = format!("{err:#}"),
                retry_in_secs = delay.as_secs(),
                "cannot record the end of a run yet; retrying"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = stopping.cancelled() => {}
            }
            delay = (delay * 2).min(Duration::from_secs(15));
        }
        watcher.abort();
        drop(records);
        let _ = recorder.await;
    }

    /// Renews the lease and turns a cancel request or shutdown into `cancel`.
    async fn watch(
        self,
        run_id: Uuid,
        shutdown: CancellationToken,
        cancel: CancellationToken,
        reason: Arc<OnceLock<StopReason>>,
    ) {
        let renew_every = self.settings.lease / 3;
        let mut next_renewal = Instant::now() + renew_every;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = reason.set(StopReason::Shutdown);
                    cancel.cancel();
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if !cancel.is_cancelled()
                && matches!(self.store().cancel_requested(run_id).await, Ok(true))
            {
                tracing::info!(%run_id, "cancel requested");
                let _ = reason.set(StopReason::Cancelled);
                cancel.cancel();
            }
            if Instant::now() >= next_renewal {
                let until = crate::domain::now()
                    + chrono::Duration::from_std(self.settings.lease).unwrap_or_default();
                match self.store().renew_lease(run_id, &self.id, until).await {
                    Ok(true) => next_renewal = Instant::now() + renew_every,
                    Ok(false) => {
                        tracing::error!(%run_id, "lost the lease of a running run; stopping it");
                        let _ = reason.set(StopReason::Shutdown);
                        cancel.cancel();
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "failed to renew a run lease; retrying")
                    }
                }
            }
        }
    }

    fn spawn_recorder(
        &self,
        run: &RunRow,
    ) -> (mpsc::UnboundedSender<Record>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Record>();
        let (store, bus, run_id, deployment_id) =
            (self.store().clone(), self.bus.clone(), run.id, run.deployment_id);
        let handle = tokio::spawn(async move {
            let mut progress = Progress::default();
            while let Some(record) = rx.recv().await {
                let mut events = Vec::new();
                match record {
                    Record::Terraform(message) => {
                        // The version banner and blank lines of plain output say nothing.
                        if message.kind == "version" || message.message.trim().is_empty() {
                            continue;
                        }
                        events.push(("log", message.log_event()));
                        if let Some((done, total)) = progress.observe(&message) {
                            let _ = store.record_progress(run_id, done as i64, total as i64).await;
                            events.push(("progress", json!({"done": done, "total": total})));
                        }
                    }
                    Record::Step => progress = Progress::default(),
                    Record::Event(kind, data) => events.push((kind, data)),
                }
                for (kind, data) in events {
                    if let Err(err) = store
                        .append_event(run_id, deployment_id, kind, &data, crate::domain::now())
                        .await
                    {
                        tracing::warn!(error = %err, "failed to record a run event");
                    }
                }
                bus.publish(deployment_id);
                if let Err(err) = store.notify_events(deployment_id).await {
                    tracing::warn!(error = %err, "failed to notify other replicas of run events");
                }
            }
        });
        (tx, handle)
    }

    /// The run's steps up to (not including) recording its end.
    async fn drive(
        &self,
        run: &RunRow,
        records: &mpsc::UnboundedSender<Record>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<RunEnd> {
        let deployment =
            self.store().deployment(run.deployment_id).await?.ok_or_else(|| {
                anyhow::anyhow!("deployment {} no longer exists", run.deployment_id)
            })?;
        let status = match run.kind() {
            RunKind::Apply => self.start_apply(deployment.id).await?,
            RunKind::Destroy => DeploymentStatus::Destroying,
        };
        let _ = records.send(Record::Event("status", json!({"deployment_status": status, "run_id": run.id, "run_status": RunStatus::Running, "kind": run.kind, "worker": self.id})));

        let terraform = self.ctx.terraform().map_err(|err| anyhow::anyhow!("{err}"))?.clone();
        let module = self
            .ctx
            .catalog
            .get(&deployment.provider)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "module \"{}\" is no longer in the modules folder",
                    deployment.provider
                )
            })?
            .clone();
        let secrets = self.ctx.open_secrets(&deployment)?;
        let workspace =
            Workspace::for_deployment(&self.ctx.data_dir, deployment.id, &deployment.provider);
        workspace.ensure_modules(self.ctx.catalog.root())?;
        reap_orphan(&workspace.module_dir);
        let (plain, env) = self.ctx.run_inputs(&module, &deployment, &secrets);
        workspace.write_variables(&plain)?;
        let override_file = workspace.module_dir.join(PG_BACKEND_OVERRIDE);
        let backend_config = workspace.module_dir.join(PG_BACKEND_CONFIG);
        let mut init = init_args();
        if let Some(config) = self.ctx.state_backend_config() {
            // State in Postgres: any replica can run this deployment's next run.
            std::fs::write(&override_file, "terraform {\n  backend \"pg\" {}\n}\n")?;
            write_private(&backend_config, config.expose_secret().as_bytes())?;
            init.push(format!("-backend-config={PG_BACKEND_CONFIG}"));
        } else {
            let _ = std::fs::remove_file(&override_file);
        }

        let stop = StopSignals {
            cancel: cancel.clone(),
            deadline: Instant::now() + self.settings.run_timeout,
            grace: self.ctx.cancel_grace,
        };
        let mut plan = vec![
            "plan".to_owned(),
            "-json".into(),
            "-input=false".into(),
            "-lock-timeout=120s".into(),
            "-out=tfplan".into(),
        ];
        if run.kind() == RunKind::Destroy {
            plan.push("-destroy".into());
        }
        let apply = vec![
            "apply".to_owned(),
            "-json".into(),
            "-input=false".into(),
            "-lock-timeout=120s".into(),
            "tfplan".into(),
        ];
        let mut end = RunEnd::Succeeded;
        // Each step, and whether a failure is retried.
        let mut steps: Vec<(&'static str, Vec<String>, bool)> = vec![("init", init, false)];
        if self.ctx.state_database.is_some() {
            // One named state per deployment, created up front: the `default` workspace would
            // hold the pg backend's global creation lock for a whole first apply. Creating the
            // state takes that lock with a single try and no `-lock-timeout`, and every other
            // deployment's plan and apply hold it for an instant, so a failure is retried (the
            // command is idempotent).
            let name = Provisioning::state_workspace(deployment.id);
            let args = ["workspace", "select", "-or-create=true", "-no-color", name.as_str()];
            steps.push(("workspace", args.map(str::to_owned).to_vec(), true));
        }
        steps.extend([("plan", plan, false), ("apply", apply, false)]);
        let runner = Steps {
            terraform: &terraform,
            dir: &workspace.module_dir,
            env: &env,
            stop: &stop,
            records,
            outputs: Default::default(),
        };
        for (step, args, retry) in steps {
            let _ = records.send(Record::Step);
            log(records, format!("terraform {step}"));
            // `init` may fill the shared plugin cache: it runs alone until its provider set is
            // cached, beside other inits after that (`PluginCache`). With Postgres state, `init`
            // creates the state table and `workspace` this deployment's named state: neither is
            // safe to run concurrently across replicas, hence the cluster-wide lock.
            let permit = match step {
                "init" => Some(self.ctx.plugin_cache.before_init(&workspace.module_dir).await?),
                _ => None,
            };
            let cluster = match step {
                "init" | "workspace" => self.store().advisory_lock(TERRAFORM_SETUP_LOCK).await?,
                _ => None,
            };
            let exit = match retry {
                false => runner.run(&args).await,
                true => runner.run_with_retries(&args).await,
            };
            if let Some(lock) = cluster {
                lock.release().await;
            }
            if step == "init" {
                let _ = std::fs::remove_file(&backend_config);
            }
            if let (Some(permit), Ok(Exit::Succeeded)) = (permit, &exit) {
                permit.succeeded(&workspace.module_dir);
            }
            end = match exit? {
                Exit::Succeeded => continue,
                Exit::Failed { summary, .. } => {
                    RunEnd::Failed(format!("terraform {step} failed: {summary}"))
                }
                Exit::Cancelled => RunEnd::Cancelled,
                Exit::TimedOut => RunEnd::TimedOut,
            };
            break;
        }
        workspace.remove_plan();
        if !matches!(end, RunEnd::Succeeded) {
            return Ok(end);
        }
        match run.kind() {
            RunKind::Destroy => {
                self.store().replace_machines(deployment.id, &[], crate::domain::now()).await?;
                if is_sandboxed(&module) {
                    // The module's destroy removed the network; this catches what it could not.
                    if let Err(err) = self.ctx.local.release(deployment.id).await {
                        tracing::warn!(
                            error = format!("{err:#}"),
                            "failed to release the local network"
                        );
                    }
                }
                Ok(RunEnd::Succeeded)
            }
            RunKind::Apply => {
                // `apply -json` prints the outputs when it ends, which saves a `terraform output`
                // (another Terraform start and state read) unless `machines` is sensitive.
                let printed = runner.outputs.lock().ok().and_then(|mut o| o.take());
                let outputs = match printed.filter(|o| o["machines"].get("value").is_some()) {
                    Some(outputs) => outputs,
                    None => terraform.outputs(&workspace.module_dir, &env).await?,
                };
                let machines = parse_machines(&outputs)?;
                self.store()
                    .replace_machines(deployment.id, &machines, crate::domain::now())
                    .await?;
                log(records, format!("waiting for {} agent(s) to answer", machines.len()));
                let end = self.wait_ready(&deployment, &machines, cancel).await?;
                if matches!(end, RunEnd::Succeeded) {
                    // `ready` comes with each machine's health and facts, rather than `unknown`
                    // until the health checker's next round.
                    self.record_health(&deployment).await;
                }
                Ok(end)
            }
        }
    }

    /// One health round for a deployment's machines; a failure is only logged (the health
    /// checker tries again).
    async fn record_health(&self, deployment: &DeploymentRow) {
        let checked = async {
            let machines = self.store().list_machines(deployment.id).await?;
            let checks = health::targets(&self.ctx, deployment, &machines)?;
            health::check_machines(&self.ctx, &self.cloud, checks, HEALTH_CONCURRENCY).await;
            anyhow::Ok(())
        };
        if let Err(err) = checked.await {
            tracing::warn!(error = format!("{err:#}"), "failed to record the machines' health");
        }
    }

    /// Moves a deployment into its applying state: `provisioning` the first time (or after a
    /// failure), `updating` when it was ready.
    async fn start_apply(&self, deployment_id: Uuid) -> anyhow::Result<DeploymentStatus> {
        const FIRST: &[DeploymentStatus] =
            &[DeploymentStatus::Pending, DeploymentStatus::Provisioning, DeploymentStatus::Failed];
        const LATER: &[DeploymentStatus] = &[DeploymentStatus::Ready, DeploymentStatus::Updating];
        let now = crate::domain::now();
        let store = self.store();
        if store
            .transition_deployment(deployment_id, FIRST, DeploymentStatus::Provisioning, None, now)
            .await?
        {
            return Ok(DeploymentStatus::Provisioning);
        }
        store
            .transition_deployment(deployment_id, LATER, DeploymentStatus::Updating, None, now)
            .await?;
        Ok(DeploymentStatus::Updating)
    }

    async fn wait_ready(
        &self,
        deployment: &DeploymentRow,
        machines: &[NewMachine],
        cancel: &CancellationToken,
    ) -> anyhow::Result<RunEnd> {
        let targets = self.ctx.agent_targets(deployment, machines)?;
        let deadline = std::time::Instant::now() + self.settings.ready_timeout;
        tokio::select! {
            ready = self.cloud.wait_ready(&targets, deadline) => match ready {
                Ok(()) => Ok(RunEnd::Succeeded),
                Err(not_ready) => Ok(RunEnd::Failed(not_ready.to_string())),
            },
            () = cancel.cancelled() => Ok(RunEnd::Cancelled),
        }
    }

    /// Records how a run ended.
    async fn finish(
        &self,
        run: &RunRow,
        end: RunEnd,
        records: &mpsc::UnboundedSender<Record>,
    ) -> anyhow::Result<()> {
        let now = crate::domain::now();
        let kind = run.kind();
        if matches!(end, RunEnd::Shutdown) {
            let reason = "the backend shut down while it ran; re-queued";
            let next = RunRow::queued(run.deployment_id, kind, run.attempt, now);
            if self.store().requeue_run(run.id, reason, &next, now).await? {
                crate::metrics::run_finished(kind.as_str(), "interrupted", ran_for(run, now));
                let data = json!({"run_id": run.id, "status": RunStatus::Interrupted, "error": reason, "requeued_as": next.id});
                let _ = records.send(Record::Event("run_finished", data));
            }
            return Ok(());
        }
        let (status, error, deployment) = match end {
            RunEnd::Succeeded => (
                RunStatus::Succeeded,
                None,
                match kind {
                    RunKind::Apply => DeploymentStatus::Ready,
                    RunKind::Destroy => DeploymentStatus::Destroyed,
                },
            ),
            RunEnd::Failed(reason) => (RunStatus::Failed, Some(reason), DeploymentStatus::Failed),
            RunEnd::Cancelled => (
                RunStatus::Cancelled,
                Some(format!("the {kind} was cancelled")),
                DeploymentStatus::Failed,
            ),
            RunEnd::TimedOut | RunEnd::Shutdown => (
                RunStatus::Failed,
                Some(format!(
                    "the {kind} timed out after {} s",
                    self.settings.run_timeout.as_secs()
                )),
                DeploymentStatus::Failed,
            ),
        };
        if self
            .store()
            .finish_run(run.id, status, error.as_deref(), (deployment, error.as_deref()), now)
            .await?
        {
            tracing::info!(status = %status, deployment_status = %deployment, "run finished");
            crate::metrics::run_finished(kind.as_str(), status.as_str(), ran_for(run, now));
            if deployment == DeploymentStatus::Ready {
                self.ctx.machines_ready.notify_one();
            }
            let _ = records.send(Record::Event(
                "status",
                json!({"deployment_status": deployment, "run_id": run.id, "run_status": status}),
            ));
            let _ = records.send(Record::Event(
                "run_finished",
                json!({"run_id": run.id, "status": status, "error": error}),
            ));
        }
        Ok(())
    }
}

/// Runs a run's Terraform commands in its workspace, with its environment, stop signals and log.
struct Steps<'a> {
    terraform: &'a Terraform,
    dir: &'a std::path::Path,
    env: &'a [(String, SecretString)],
    stop: &'a StopSignals,
    records: &'a mpsc::UnboundedSender<Record>,
    /// The `outputs` message of the last command that printed one (an apply's).
    outputs: std::sync::Mutex<Option<Value>>,
}

/// Pauses between tries of a retried step: about 50 s in all.
const RETRY_DELAYS_MS: [u64; 9] = [250, 500, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000, 16_000];

impl Steps<'_> {
    /// Runs one Terraform command, forwarding its messages to the run log before it returns, so
    /// a step's log and progress never mix with the next one's.
    async fn run(&self, args: &[String]) -> anyhow::Result<Exit> {
        let (sink, mut messages) = mpsc::unbounded_channel::<UiMessage>();
        let forward = {
            let records = self.records.clone();
            tokio::spawn(async move {
                let mut outputs = None;
                while let Some(mut message) = messages.recv().await {
                    if message.kind == "outputs" {
                        outputs = message.outputs.take();
                    }
                    let _ = records.send(Record::Terraform(Box::new(message)));
                }
                outputs
            })
        };
        let exit = self.terraform.run(self.dir, args, self.env, self.stop, &sink).await;
        drop(sink);
        if let Ok(Some(outputs)) = forward.await
            && let Ok(mut last) = self.outputs.lock()
        {
            *last = Some(outputs);
        }
        exit
    }

    /// Runs an idempotent Terraform command until it succeeds, is stopped, or has failed
    /// `RETRY_DELAYS_MS.len() + 1` times. A failed try's output is summarised in the log; the
    /// last try's is logged in full.
    async fn run_with_retries(&self, args: &[String]) -> anyhow::Result<Exit> {
        for delay in RETRY_DELAYS_MS.map(Duration::from_millis) {
            let (sink, mut messages) = mpsc::unbounded_channel::<UiMessage>();
            let exit = self.terraform.run(self.dir, args, self.env, self.stop, &sink).await;
            drop(sink);
            let Ok(Exit::Failed { summary, .. }) = &exit else {
                while let Ok(message) = messages.try_recv() {
                    let _ = self.records.send(Record::Terraform(Box::new(message)));
                }
                return exit;
            };
            log(self.records, format!("{}; trying again in {delay:?}", summary.trim()));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancel.cancelled() => return Ok(Exit::Cancelled),
            }
        }
        self.run(args).await
    }
}

/// Records a step of our own in the run log.
/// How long a run ran, from its claim to `now` (for its duration metric).
fn ran_for(run: &RunRow, now: chrono::DateTime<chrono::Utc>) -> Duration {
    run.started_at.and_then(|started| (now - started).to_std().ok()).unwrap_or_default()
}

fn log(records: &mpsc::UnboundedSender<Record>, message: String) {
    let _ = records.send(Record::Event("log", json!({"level": "info", "message": message})));
}

/// The module's `machines` output: a list of `{name, public_ip, private_ip, agent_port?}`.
fn parse_machines(outputs: &Value) -> anyhow::Result<Vec<NewMachine>> {
    let bad = || {
        anyhow::anyhow!(
            "the module's `machines` output is not a list of {{name, public_ip, private_ip}}"
        )
    };
    let list = outputs
        .get("machines")
        .and_then(|o| o.get("value"))
        .and_then(Value::as_array)
        .ok_or_else(bad)?;
    list.iter()
        .map(|machine| {
            let text = |key: &str| machine.get(key).and_then(Value::as_str).map(str::to_owned);
            Ok(NewMachine {
                name: text("name").ok_or_else(bad)?,
                public_ip: text("public_ip"),
                private_ip: text("private_ip"),
                agent_port: machine
                    .get("agent_port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok()),
            })
        })
        .collect()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "nim".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_are_read_from_the_output() {
        let outputs = json!({"machines": {"sensitive": false, "value": [
            {"name": "m-0", "public_ip": "203.0.113.5", "private_ip": "10.0.0.5"},
            {"name": "m-1", "public_ip": null, "private_ip": "10.0.0.6", "agent_port": 7071}
        ]}});
        let machines = parse_machines(&outputs).unwrap();
        assert_eq!(machines[0].public_ip.as_deref(), Some("203.0.113.5"));
        assert_eq!(machines[1].public_ip, None);
        assert_eq!(machines[1].agent_port, Some(7071));
        assert!(parse_machines(&json!({"machines": {"value": [{"public_ip": "x"}]}})).is_err());
        assert!(parse_machines(&json!({})).is_err());
    }
}
