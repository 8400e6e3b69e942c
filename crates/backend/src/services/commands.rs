//! Commands to a deployment's machines (the plan's "Sending Command to Existing Deployment"):
//! checking a command, storing it with one pending result per machine before anything is sent,
//! fanning it out through `CloudClientService` with AWS SSM Run Command's rollout controls
//! (`max_concurrency`, `max_errors`), recording each machine's result as it arrives, cancelling,
//! and marking commands a dead backend left running as `interrupted`.
//!
//! A command runs in a task of its own, not in the request that created it: a client that hangs
//! up does not stop it (cancelling does), and `?wait=false` is the same code path.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use sqlx::types::Json;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire::{
    ExecRequest, ExecResponse, FieldError,
    commands::{CommandRequest, Scale},
};

use super::{
    cloud_client::{AgentTarget, CloudClientService, MachineResult, MachineStatus},
    deployments::Provisioning,
};
use crate::{
    domain::{CommandStatus, DeploymentStatus, ResultStatus},
    store::{CommandResultRow, CommandRow, NewMachine, StoreError},
};

/// `timeout_s` when the request has none.
pub const DEFAULT_TIMEOUT_S: u64 = 60;
/// Largest `timeout_s`: a waiting call lasts as long as its command, so it must stay bounded.
pub const MAX_TIMEOUT_S: u64 = 3600;
/// `max_concurrency` when the request has none (SSM's default is 50; the agent fan-out's is 64).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 64;
/// Largest `max_concurrency` count: each machine in flight holds a connection and a task.
pub const MAX_CONCURRENCY: u32 = 1000;

/// How often a replica running commands looks for cancels asked of another replica.
const CANCEL_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("no such deployment or command")]
    NotFound,
    #[error("the deployment is {0}; commands can only be sent to a ready deployment")]
    NotReady(DeploymentStatus),
    #[error("the command already finished ({0}); only running commands can be cancelled")]
    NotRunning(CommandStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Checks the range; `what` names the field in the message.
fn check_scale(scale: Scale, field: &str, max_count: u32, errors: &mut Vec<FieldError>) {
    match scale {
        Scale::Count(count) if count == 0 || count > max_count => errors.push(FieldError::new(
            field,
            format!("must be a count from 1 to {max_count} or a percentage from 1% to 100%"),
        )),
        Scale::Percent(percent) if percent == 0 || percent > 100 => {
            errors.push(FieldError::new(field, "a percentage must be from 1% to 100%".to_owned()))
        }
        _ => {}
    }
}

/// What the backend adds to the wire type: its checks and what the agents are sent.
trait CommandRequestExt {
    fn check(&self) -> Vec<FieldError>;
    fn timeout(&self) -> Duration;
    fn exec_request(&self, command_id: Uuid) -> ExecRequest;
}

impl CommandRequestExt for CommandRequest {
    /// Every problem with the request that does not need the deployment.
    fn check(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        match (&self.argv, &self.shell) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("shell", "give either argv or shell, not both"))
            }
            (None, None) => {
                errors.push(FieldError::new("argv", "one of argv or shell is required"))
            }
            (Some(argv), None) if argv.first().is_none_or(|p| p.is_empty()) => {
                errors.push(FieldError::new("argv", "argv[0] must name a program"))
            }
            (None, Some(shell)) if shell.trim().is_empty() => {
                errors.push(FieldError::new("shell", "must not be empty"))
            }
            _ => {}
        }
        let texts = self.argv.iter().flatten().chain(&self.shell).chain(&self.cwd);
        if texts.into_iter().any(|text| text.contains('\0')) {
            errors.push(FieldError::new("argv", "arguments must not contain NUL bytes"));
        }
        for (name, value) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "names must be non-empty without `=` or NUL, values without NUL",
                ));
            }
        }
        if let Some(timeout) = self.timeout_s {
            if !(1..=MAX_TIMEOUT_S).contains(&timeout) {
                errors.push(FieldError::new(
                    "timeout_s",
                    format!("must be from 1 to {MAX_TIMEOUT_S} seconds"),
                ));
            }
        }
        if let Some(machines) = &self.machines {
            if machines.is_empty() {
                errors.push(FieldError::new(
                    "machines",
                    "must name at least one machine (leave it out for all of them)",
                ));
            }
            let mut seen = HashSet::new();
            for (index, name) in machines.iter().enumerate() {
                if !seen.insert(name) {
                    errors.push(FieldError::new(
                        format!("machines[{index}]"),
                        format!("\"{name}\" is named twice"),
                    ));
                }
            }
        }
        if let Some(scale) = self.max_concurrency {
            check_scale(scale, "max_concurrency", MAX_CONCURRENCY, &mut errors);
        }
        if let Some(scale) = self.max_errors {
            check_scale(scale, "max_errors", u32::MAX, &mut errors);
        }
        errors
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
    }

    /// What each agent is sent; `NIM_MACHINE` is added per machine.
    fn exec_request(&self, command_id: Uuid) -> ExecRequest {
        let mut env = self.env.clone();
        env.insert("NIM_COMMAND_ID".into(), command_id.to_string());
        ExecRequest {
            argv: self.argv.clone(),
            shell: self.shell.clone(),
            env,
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            timeout_ms: Some(self.timeout().as_millis() as u64),
        }
    }
}

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

struct Inner {
    ctx: Provisioning,
    /// This replica's name: the `runner` of the commands it runs.
    runner: String,
    /// How long a claim on a running command holds without renewal.
    lease: std::time::Duration,
    cloud: Arc<CloudClientService>,
    /// The cancel switch of each command running in this process.
    running: Mutex<HashMap<Uuid, CancellationToken>>,
    idle: Notify,
    shutdown: CancellationToken,
}

impl CommandService {
    /// `shutdown` interrupts every running command (the agents kill what they run).
    pub fn new(
        ctx: Provisioning,
        cloud: Arc<CloudClientService>,
        shutdown: CancellationToken,
        runner: String,
        lease: std::time::Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ctx,
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
        let store = &self.inner.ctx.store;
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
            if let Err(err) =
                self.inner.ctx.store.renew_command_leases(&self.inner.runner, until).await
            {
                tracing::warn!(error = %err, "failed to renew command leases; retrying");
            }
            if self.inner.ctx.store.is_postgres() {
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
        let requested =
            match self.inner.ctx.store.cancel_requested_commands(&self.inner.runner).await {
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

    async fn deployment(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<crate::store::DeploymentRow, CommandError> {
        self.inner.ctx.store.find_deployment(owner_id, id).await?.ok_or(CommandError::NotFound)
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
        let machines = self.inner.ctx.store.list_machines(deployment_id).await?;
        let chosen: Vec<NewMachine> = match &request.machines {
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
        let targets = self.inner.ctx.agent_targets(&deployment, &chosen)?;
        request.timeout_s = Some(request.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
        request.max_concurrency =
            Some(request.max_concurrency.unwrap_or(Scale::Count(DEFAULT_MAX_CONCURRENCY)));

        let now = crate::domain::now();
        let command = CommandRow {
            id: Uuid::now_v7(),
            deployment_id,
            owner_id,
            request: Json(serde_json::to_value(&request).map_err(anyhow::Error::from)?),
            status: CommandStatus::Running.as_str().to_owned(),
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
                status: ResultStatus::Pending.as_str().to_owned(),
                ..CommandResultRow::default()
            })
            .collect();
        // Registered before it is stored, so a cancel can never find it stored but unregistered.
        let cancel = CancellationToken::new();
        self.inner.running.lock().expect("never poisoned").insert(command.id, cancel.clone());
        let lease_until =
            crate::domain::now() + chrono::Duration::from_std(self.inner.lease).unwrap_or_default();
        if let Err(err) = self
            .inner
            .ctx
            .store
            .create_command(&command, &results, &self.inner.runner, lease_until)
            .await
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
        let (done, finished) = oneshot::channel();
        let service = self.clone();
        tracing::info!(command_id = %command.id, machines = total, "command started");
        tokio::spawn(async move {
            let command_id = plan.command_id;
            if let Err(err) = execute(&service.inner, plan, targets, cancel).await {
                tracing::error!(%command_id, error = format!("{err:#}"), "failed to record a command's progress");
                // Its results can no longer be trusted to arrive: end it now if the database
                // answers again, else the next start marks it interrupted.
                let leftover = (
                    ResultStatus::Interrupted,
                    "the backend failed to record this machine's result".to_owned(),
                );
                let store = &service.inner.ctx.store;
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
        Ok(Started { command, results, finished })
    }

    /// A command with its results.
    pub async fn get(
        &self,
        owner_id: Uuid,
        deployment_id: Uuid,
        command_id: Uuid,
    ) -> Result<(CommandRow, Vec<CommandResultRow>), CommandError> {
        self.deployment(owner_id, deployment_id).await?;
        let store = &self.inner.ctx.store;
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
        let (commands, statuses) =
            self.inner.ctx.store.list_commands(deployment_id, before, limit).await?;
        let mut by_command: HashMap<Uuid, Vec<ResultStatus>> = HashMap::new();
        for (command_id, status) in statuses {
            by_command
                .entry(command_id)
                .or_default()
                .push(status.parse().unwrap_or(ResultStatus::Failed));
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
        let store = &self.inner.ctx.store;
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
        self.get(owner_id, deployment_id, command_id).await
    }
}

/// What the command's task needs to run it.
struct Plan {
    command_id: Uuid,
    deployment_id: Uuid,
    exec: ExecRequest,
    timeout: Duration,
    concurrency: usize,
    max_errors: usize,
}

/// Why machines were left unstarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    MaxErrors,
    Cancelled,
    Shutdown,
}

/// Runs a stored command to its end and records everything; the rollout loop. Each machine's
/// future owns its data, so the task's future is `Send` (see `CloudClientService::fan_out`).
async fn execute(
    inner: &Inner,
    plan: Plan,
    targets: Vec<AgentTarget>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let store = &inner.ctx.store;
    let command_id = plan.command_id;
    let call = |target: AgentTarget| {
        let cloud = inner.cloud.clone();
        let mut exec = plan.exec.clone();
        exec.env.insert("NIM_MACHINE".into(), target.name.clone());
        let timeout = plan.timeout;
        async move {
            let started_at = crate::domain::now();
            let result = cloud.exec_one(&target, &exec, timeout).await;
            (started_at, result)
        }
    };
    let mut queue = targets.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut in_flight_names: HashSet<String> = HashSet::new();
    let mut statuses: Vec<ResultStatus> = Vec::new();
    let mut errors = 0usize;
    let mut stop = None;
    // Writes are batched: the machines a refill sends to go `running` in one transaction, and
    // every result that finished meanwhile is recorded in one transaction with the machines'
    // sign of life. Under load a batch is whatever completed while the previous one was being
    // written, so writing never throttles the rollout to one transaction per machine.
    loop {
        let mut sending = Vec::new();
        while stop.is_none() && in_flight.len() < plan.concurrency {
            if errors >= plan.max_errors {
                stop = Some(Stop::MaxErrors);
                break;
            }
            let Some(target) = queue.next() else { break };
            sending.push(target.name.clone());
            in_flight_names.insert(target.name.clone());
            in_flight.push(call(target));
        }
        if !sending.is_empty() {
            store.start_command_results(command_id, sending, crate::domain::now()).await?;
        }
        if in_flight.is_empty() {
            break;
        }
        tokio::select! {
            Some(first) = in_flight.next() => {
                let mut finished = vec![first];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    finished.push(more);
                }
                let rows: Vec<CommandResultRow> = finished
                    .into_iter()
                    .map(|(started_at, result)| {
                        in_flight_names.remove(&result.machine);
                        let row = result_row(command_id, started_at, result);
                        let status = row.status();
                        errors += usize::from(status.is_error());
                        statuses.push(status);
                        row
                    })
                    .collect();
                store.finish_command_results(plan.deployment_id, rows, crate::domain::now()).await?;
            }
            () = cancel.cancelled(), if stop.is_none() || stop == Some(Stop::MaxErrors) => {
                stop = Some(Stop::Cancelled);
                break;
            }
            () = inner.shutdown.cancelled() => {
                stop = Some(Stop::Shutdown);
                break;
            }
        }
    }
    // Dropping the calls still in flight hangs up on their agents, which kill the commands.
    drop(in_flight);
    let now = crate::domain::now();
    let (stopped, leftover, leftover_error) = match stop {
        Some(Stop::Cancelled) => (
            ResultStatus::Cancelled,
            ResultStatus::Cancelled,
            "the command was cancelled before it was sent to this machine",
        ),
        Some(Stop::Shutdown) => (
            ResultStatus::Interrupted,
            ResultStatus::Interrupted,
            "the backend shut down before this machine was reached",
        ),
        _ => (
            ResultStatus::Skipped,
            ResultStatus::Skipped,
            "not sent: max_errors machines had already failed",
        ),
    };
    let error = match stopped {
        ResultStatus::Cancelled => {
            "cancelled while it ran: the backend hung up and the agent killed the command's process group"
        }
        _ => {
            "the backend shut down while it ran: it hung up and the agent killed the command's process group"
        }
    };
    let hung_up: Vec<CommandResultRow> = in_flight_names
        .into_iter()
        .map(|machine| CommandResultRow {
            command_id,
            machine,
            status: stopped.as_str().to_owned(),
            error: Some(error.to_owned()),
            finished_at: Some(now),
            ..CommandResultRow::default()
        })
        .collect();
    statuses.extend(hung_up.iter().map(|_| stopped));
    if !hung_up.is_empty() {
        store.finish_command_results(plan.deployment_id, hung_up, now).await?;
    }
    statuses.extend(queue.map(|_| leftover));
    let status = CommandStatus::roll_up(&statuses);
    store.finish_command(command_id, status, (leftover, leftover_error.to_owned()), now).await?;
    crate::metrics::command_finished(status.as_str());
    tracing::info!(%command_id, %status, "command finished");
    Ok(())
}

/// One machine's outcome as stored.
fn result_row(
    command_id: Uuid,
    started_at: chrono::DateTime<Utc>,
    result: MachineResult<ExecResponse>,
) -> CommandResultRow {
    let status = match result.status {
        MachineStatus::Succeeded => ResultStatus::Succeeded,
        MachineStatus::Failed => ResultStatus::Failed,
        MachineStatus::TimedOut => ResultStatus::TimedOut,
        MachineStatus::Unreachable => ResultStatus::Unreachable,
        MachineStatus::Rejected => ResultStatus::Rejected,
    };
    let elapsed_ms = i64::try_from(result.elapsed.as_millis()).unwrap_or(i64::MAX);
    let mut row = CommandResultRow {
        command_id,
        machine: result.machine,
        status: status.as_str().to_owned(),
        error: result.error,
        duration_ms: Some(elapsed_ms),
        started_at: Some(started_at),
        finished_at: Some(crate::domain::now()),
        ..CommandResultRow::default()
    };
    if let Some(response) = result.response {
        row.exit_code = response.exit_code.map(i64::from);
        row.signal = response.signal.map(i64::from);
        row.stdout = Some(response.stdout);
        row.stderr = Some(response.stderr);
        row.truncated = response.truncated;
        row.duration_ms = Some(i64::try_from(response.duration_ms).unwrap_or(i64::MAX));
    }
    row
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let fields = |r: CommandRequest| r.check().into_iter().map(|e| e.field).collect::<Vec<_>>();
        assert_eq!(fields(CommandRequest::default()), ["argv"]);
        let ok = CommandRequest { argv: Some(vec!["true".into()]), ..CommandRequest::default() };
        assert!(fields(ok.clone()).is_empty());
        assert_eq!(fields(CommandRequest { shell: Some("x".into()), ..ok.clone() }), ["shell"]);
        assert_eq!(fields(CommandRequest { timeout_s: Some(3601), ..ok.clone() }), ["timeout_s"]);
        assert_eq!(fields(CommandRequest { timeout_s: Some(0), ..ok.clone() }), ["timeout_s"]);
        assert_eq!(
            fields(CommandRequest { machines: Some(vec!["a".into(), "a".into()]), ..ok.clone() }),
            ["machines[1]"]
        );
        assert_eq!(fields(CommandRequest { machines: Some(vec![]), ..ok.clone() }), ["machines"]);
        assert_eq!(
            fields(CommandRequest { max_concurrency: Some(Scale::Count(0)), ..ok.clone() }),
            ["max_concurrency"]
        );
        assert_eq!(
            fields(CommandRequest { max_errors: Some(Scale::Percent(101)), ..ok.clone() }),
            ["max_errors"]
        );
        let env = BTreeMap::from([("A=B".to_owned(), "x".to_owned())]);
        assert_eq!(fields(CommandRequest { env, ..ok }), ["env.A=B"]);
    }
}
