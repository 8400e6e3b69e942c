//! `CommandService`: starting a command (checked, stored with one pending result per machine,
//! then handed to its rollout task), reading and cancelling commands, renewing this replica's
//! command leases, picking up cancels asked of other replicas, and marking commands a dead
//! process left running `interrupted`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sqlx::types::Json;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire::{
    FieldError,
    commands::{CommandRequest, Scale},
};

use super::{
    CANCEL_POLL, CommandError, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT_S,
    request::CommandRequestExt,
    rollout::{self, Plan},
};
use crate::{
    domain::{CommandStatus, DeploymentStatus, ResultStatus},
    services::{
        cloud_client::{AgentTarget, CloudClientService},
        deployments::DeploymentService,
    },
    store::{CommandResultRow, CommandRow, DeploymentRow, NewMachine, Store},
};

/// A command that has been stored and started.
pub struct Started {
    pub command: CommandRow,
    pub results: Vec<CommandResultRow>,
    finished: oneshot::Receiver<()>,
}

impl Started {
    /// Waits until every machine's result and the command's status are stored.
    pub async fn finished(self) {
        // A dropped sender means the task ended without finishing, which only a panic does;
        // what it stored is still read back.
        let _ = self.finished.await;
    }
}

/// The plan's commands part of `DeploymentService`. Cheap to clone.
#[derive(Clone)]
pub struct CommandService {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) deployments: DeploymentService,
    /// This replica's name: the `runner` of the commands it runs.
    runner: String,
    /// How long a claim on a running command holds without renewal.
    lease: std::time::Duration,
    pub(super) cloud: Arc<CloudClientService>,
    /// The cancel switch of each command running in this process.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    idle: Notify,
    pub(super) shutdown: CancellationToken,
}

impl CommandService {
    /// `shutdown` interrupts every running command (the agents kill what they run).
    pub fn new(
        deployments: DeploymentService,
        cloud: Arc<CloudClientService>,
        shutdown: CancellationToken,
        runner: String,
        lease: std::time::Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                deployments,
                runner,
                lease,
                cloud,
                running: Mutex::new(HashMap::new()),
                idle: Notify::new(),
                shutdown,
            }),
        }
    }

    /// Marks commands a dead process left running `interrupted`, keeping the results that had
    /// finished: at start every running one on SQLite (one process), and with Postgres those whose
    /// runner's lease lapsed (other replicas' live commands are left alone).
    ///
    /// `at_start`: also this replica's own commands (a restart under the same `NIM_REPLICA_NAME`);
    /// the periodic sweep must leave them alone, they are running.
    pub async fn recover(&self, all_running: bool, at_start: bool) -> anyhow::Result<u64> {
        let error = "the backend stopped before this machine's result arrived";
        let now = crate::domain::now();
        let store = self.store();
        let me = at_start.then_some(self.inner.runner.as_str());
        Ok(store.interrupt_running_commands(error, now, all_running, me).await?)
    }

    /// Renews this replica's command leases every third of the lease, and (for replicas sharing
    /// Postgres) interrupts commands whose runner stopped renewing, until `shutdown`.
    pub async fn keep_leases_until_stopped(self, shutdown: CancellationToken) {
        let renew_every = self.inner.lease / 3;
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(CANCEL_POLL.min(renew_every)) => {}
                () = shutdown.cancelled() => return,
            }
            if self.running_count() > 0 {
                self.pick_up_cancels().await;
            }
            if renewed.elapsed() < renew_every {
                continue;
            }
            renewed = tokio::time::Instant::now();
            let until = crate::domain::now()
                + chrono::Duration::from_std(self.inner.lease).unwrap_or_default();
            if let Err(err) = self.store().renew_command_leases(&self.inner.runner, until).await {
                tracing::warn!(error = %err, "failed to renew command leases; retrying");
            }
            if self.store().is_postgres() {
                match self.recover(false, false).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        commands = n,
                        "commands of a stopped replica marked interrupted"
                    ),
                    Err(err) => tracing::warn!(
                        error = format!("{err:#}"),
                        "failed to look for interrupted commands"
                    ),
                }
            }
        }
    }

    /// Waits until no command runs in this process.
    /// Cancels the commands this replica runs whose cancel was asked of another replica (the
    /// request is only a column in the shared database).
    async fn pick_up_cancels(&self) {
        let requested = match self.store().cancel_requested_commands(&self.inner.runner).await {
            Ok(requested) => requested,
            Err(err) => {
                tracing::warn!(error = %err, "failed to look for cancel requests; retrying");
                return;
            }
        };
        let running = self.inner.running.lock().expect("never poisoned");
        for command_id in requested {
            if let Some(token) = running.get(&command_id).filter(|token| !token.is_cancelled()) {
                tracing::info!(%command_id, "command cancel requested through another replica");
                token.cancel();
            }
        }
    }

    pub async fn wait_idle(&self) {
        loop {
            let idle = self.inner.idle.notified();
            if self.running_count() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Drops a command from the running ones (its task ended, or it was never stored).
    fn forget(&self, command_id: Uuid) {
        let mut running = self.inner.running.lock().expect("never poisoned");
        running.remove(&command_id);
        if running.is_empty() {
            self.inner.idle.notify_waiters();
        }
    }

    fn running_count(&self) -> usize {
        self.inner.running.lock().expect("never poisoned").len()
    }

    fn store(&self) -> &Store {
        self.inner.deployments.store()
    }

    /// The owner's deployment, through the deployment service's one owner-scoped lookup.
    async fn deployment(&self, owner_id: Uuid, id: Uuid) -> Result<DeploymentRow, CommandError> {
        Ok(self.inner.deployments.deployment(owner_id, id).await?)
    }

    /// Checks a command, stores it with a pending result per machine, and starts it.
    #[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
    pub async fn start(
        &self,
        owner_id: Uuid,
        deployment_id: Uuid,
        mut request: CommandRequest,
    ) -> Result<Started, CommandError> {
        let errors = request.check();
        let deployment = self.deployment(owner_id, deployment_id).await?;
        if !errors.is_empty() {
            return Err(CommandError::Validation(errors));
        }
        if deployment.status() != DeploymentStatus::Ready {
            return Err(CommandError::NotReady(deployment.status()));
        }
        let chosen = self.choose_machines(deployment_id, request.machines.as_deref()).await?;
        let targets = self.inner.deployments.agent_targets(&deployment, &chosen)?;
        request.timeout_s = Some(request.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
        request.max_concurrency =
            Some(request.max_concurrency.unwrap_or(Scale::Count(DEFAULT_MAX_CONCURRENCY)));

        let now = crate::domain::now();
        let command = CommandRow {
            id: Uuid::now_v7(),
            deployment_id,
            owner_id,
            request: Json(serde_json::to_value(&request).map_err(anyhow::Error::from)?),
            status: CommandStatus::Running,
            cancel_requested_at: None,
            created_at: now,
            finished_at: None,
        };
        let results: Vec<CommandResultRow> = targets
            .iter()
            .enumerate()
            .map(|(seq, target)| CommandResultRow {
                command_id: command.id,
                seq: seq as i64,
                machine: target.name.clone(),
                address: Some(target.address()),
                status: ResultStatus::Pending,
                ..CommandResultRow::default()
            })
            .collect();
        // Registered before it is stored, so a cancel can never find it stored but unregistered.
        let cancel = CancellationToken::new();
        self.inner.running.lock().expect("never poisoned").insert(command.id, cancel.clone());
        let lease_until =
            crate::domain::now() + chrono::Duration::from_std(self.inner.lease).unwrap_or_default();
        if let Err(err) =
            self.store().create_command(&command, &results, &self.inner.runner, lease_until).await
        {
            self.forget(command.id);
            return Err(err.into());
        }

        let total = targets.len();
        let plan = Plan {
            command_id: command.id,
            deployment_id: deployment.id,
            exec: request.exec_request(command.id),
            timeout: request.timeout(),
            concurrency: request
                .max_concurrency
                .map_or(DEFAULT_MAX_CONCURRENCY as usize, |s| s.of(total))
                .max(1),
            max_errors: request.max_errors.map_or(usize::MAX, |s| s.of(total)),
        };
        tracing::info!(command_id = %command.id, machines = total, "command started");
        let finished = self.spawn_rollout(plan, targets, cancel);
        Ok(Started { command, results, finished })
    }

    /// The machines a command goes to: those it names (every one must exist), else all.
    async fn choose_machines(
        &self,
        deployment_id: Uuid,
        names: Option<&[String]>,
    ) -> Result<Vec<NewMachine>, CommandError> {
        let machines = self.inner.deployments.machines(deployment_id).await?;
        let chosen: Vec<NewMachine> = match names {
            None => machines.iter().map(NewMachine::from).collect(),
            Some(names) => {
                let by_name: HashMap<&str, _> =
                    machines.iter().map(|m| (m.name.as_str(), m)).collect();
                let unknown: Vec<FieldError> = names
                    .iter()
                    .enumerate()
                    .filter(|(_, name)| !by_name.contains_key(name.as_str()))
                    .map(|(index, name)| {
                        FieldError::new(
                            format!("machines[{index}]"),
                            format!("this deployment has no machine named \"{name}\""),
                        )
                    })
                    .collect();
                if !unknown.is_empty() {
                    return Err(CommandError::Validation(unknown));
                }
                names.iter().map(|name| NewMachine::from(by_name[name.as_str()])).collect()
            }
        };
        if chosen.is_empty() {
            return Err(CommandError::Validation(vec![FieldError::new(
                "machines",
                "the deployment has no machines",
            )]));
        }
        Ok(chosen)
    }

    /// Runs a stored command's rollout in a task of its own; the receiver hears when it ended.
    fn spawn_rollout(
        &self,
        plan: Plan,
        targets: Vec<AgentTarget>,
        cancel: CancellationToken,
    ) -> oneshot::Receiver<()> {
        let (done, finished) = oneshot::channel();
        let service = self.clone();
        tokio::spawn(async move {
            let command_id = plan.command_id;
            if let Err(err) = rollout::execute(&service.inner, plan, targets, cancel).await {
                tracing::error!(%command_id, error = format!("{err:#}"), "failed to record a command's progress");
                // Its results can no longer be trusted to arrive: end it now if the database
                // answers again, else the next start marks it interrupted.
                let leftover = (
                    ResultStatus::Interrupted,
                    "the backend failed to record this machine's result".to_owned(),
                );
                let store = service.store();
                if let Err(err) = store
                    .finish_command(
                        command_id,
                        CommandStatus::Interrupted,
                        leftover,
                        crate::domain::now(),
                    )
                    .await
                {
                    tracing::error!(%command_id, error = %err, "failed to end a command; the next start marks it interrupted");
                }
            }
            service.forget(command_id);
            let _ = done.send(());
        });
        finished
    }

    /// A command with its results.
    pub async fn get(
        &self,
        owner_id: Uuid,
        deployment_id: Uuid,
        command_id: Uuid,
    ) -> Result<(CommandRow, Vec<CommandResultRow>), CommandError> {
        self.deployment(owner_id, deployment_id).await?;
        self.with_results(deployment_id, command_id).await
    }

    /// A command of a deployment already checked to be the caller's, with its results.
    async fn with_results(
        &self,
        deployment_id: Uuid,
        command_id: Uuid,
    ) -> Result<(CommandRow, Vec<CommandResultRow>), CommandError> {
        let store = self.store();
        let command =
            store.find_command(deployment_id, command_id).await?.ok_or(CommandError::NotFound)?;
        let results = store.command_results(command_id).await?;
        Ok((command, results))
    }

    /// A page of a deployment's commands, newest first, each with its results' statuses.
    pub async fn list(
        &self,
        owner_id: Uuid,
        deployment_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<(CommandRow, Vec<ResultStatus>)>, CommandError> {
        self.deployment(owner_id, deployment_id).await?;
        let (commands, statuses) = self.store().list_commands(deployment_id, before, limit).await?;
        let mut by_command: HashMap<Uuid, Vec<ResultStatus>> = HashMap::new();
        for (command_id, status) in statuses {
            by_command.entry(command_id).or_default().push(status);
        }
        Ok(commands
            .into_iter()
            .map(|c| {
                let statuses = by_command.remove(&c.id).unwrap_or_default();
                (c, statuses)
            })
            .collect())
    }

    /// Cancels a running command: machines not started are `cancelled`; running ones are hung
    /// up on, and their agents kill the command's process group.
    #[tracing::instrument(skip_all, fields(command_id = %command_id))]
    pub async fn cancel(
        &self,
        owner_id: Uuid,
        deployment_id: Uuid,
        command_id: Uuid,
    ) -> Result<(CommandRow, Vec<CommandResultRow>), CommandError> {
        self.deployment(owner_id, deployment_id).await?;
        let store = self.store();
        match store.request_command_cancel(deployment_id, command_id, crate::domain::now()).await? {
            Some(_) => {
                let token =
                    self.inner.running.lock().expect("never poisoned").get(&command_id).cloned();
                match token {
                    Some(token) => {
                        tracing::info!("command cancel requested");
                        token.cancel();
                    }
                    // Running on another replica, which sees the request within `CANCEL_POLL`
                    // (or, if that replica died, the command is marked interrupted).
                    None => tracing::info!("command cancel requested of another replica"),
                }
            }
            None => {
                let command = store
                    .find_command(deployment_id, command_id)
                    .await?
                    .ok_or(CommandError::NotFound)?;
                return Err(CommandError::NotRunning(command.status()));
            }
        }
        self.with_results(deployment_id, command_id).await
    }
}
