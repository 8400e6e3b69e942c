//! The rollout of one stored command, after AWS SSM Run Command: at most `max_concurrency`
//! machines in flight, no new machine once `max_errors` have not succeeded, cancel and shutdown;
//! each machine's result is recorded as it arrives and the rest as skipped, cancelled or
//! interrupted.

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire::{ExecRequest, ExecResponse};

use super::service::Inner;
use crate::{
    domain::{CommandStatus, ResultStatus},
    services::cloud_client::{AgentTarget, CallOutcome, MachineResult},
    store::{CommandResultRow, Store},
};

/// What the command's task needs to run it.
pub(super) struct Plan {
    pub(super) command_id: Uuid,
    pub(super) deployment_id: Uuid,
    pub(super) exec: ExecRequest,
    pub(super) timeout: Duration,
    pub(super) concurrency: usize,
    pub(super) max_errors: usize,
}

/// Why machines were left unstarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    MaxErrors,
    Cancelled,
    Shutdown,
}

/// Runs a stored command to its end and records everything; the rollout loop. Each machine's
/// future owns its data, so the task's future is `Send` (a closure over borrowed targets fails
/// rustc's `Send` proof when the task is spawned). A little over our usual length on purpose:
/// the refill, the batched writes and the three ways to stop share the loop's state, and one
/// loop shows that no machine starts after a stop; what is left is `record_leftovers`.
pub(super) async fn execute(
    inner: &Inner,
    plan: Plan,
    targets: Vec<AgentTarget>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let store = inner.deployments.store();
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
    let leftover = Leftover { stop, hung_up: in_flight_names, unsent: queue.len() };
    record_leftovers(store, &plan, leftover, statuses).await
}

/// The machines a rollout did not finish when it stopped.
struct Leftover {
    stop: Option<Stop>,
    /// In flight when it stopped: hung up on.
    hung_up: HashSet<String>,
    /// Never sent the command.
    unsent: usize,
}

/// Records the machines a rollout left (hung up on, never sent) and the command's rolled-up
/// status, given the statuses of the machines that finished.
async fn record_leftovers(
    store: &Store,
    plan: &Plan,
    leftover: Leftover,
    mut statuses: Vec<ResultStatus>,
) -> anyhow::Result<()> {
    let command_id = plan.command_id;
    let now = crate::domain::now();
    // Machines hung up on and machines never sent get the same status; only the reason differs.
    let (stopped, leftover_error) = match leftover.stop {
        Some(Stop::Cancelled) => (
            ResultStatus::Cancelled,
            "the command was cancelled before it was sent to this machine",
        ),
        Some(Stop::Shutdown) => {
            (ResultStatus::Interrupted, "the backend shut down before this machine was reached")
        }
        _ => (ResultStatus::Skipped, "not sent: max_errors machines had already failed"),
    };
    let error = match stopped {
        ResultStatus::Cancelled => {
            "cancelled while it ran: the backend hung up and the agent killed the command's process group"
        }
        _ => {
            "the backend shut down while it ran: it hung up and the agent killed the command's process group"
        }
    };
    let hung_up: Vec<CommandResultRow> = leftover
        .hung_up
        .into_iter()
        .map(|machine| CommandResultRow {
            command_id,
            machine,
            status: stopped,
            error: Some(error.to_owned()),
            finished_at: Some(now),
            ..CommandResultRow::default()
        })
        .collect();
    statuses.extend(hung_up.iter().map(|_| stopped));
    if !hung_up.is_empty() {
        store.finish_command_results(plan.deployment_id, hung_up, now).await?;
    }
    statuses.extend(std::iter::repeat_n(stopped, leftover.unsent));
    let status = CommandStatus::roll_up(&statuses);
    store.finish_command(command_id, status, (stopped, leftover_error.to_owned()), now).await?;
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
        CallOutcome::Succeeded => ResultStatus::Succeeded,
        CallOutcome::Failed => ResultStatus::Failed,
        CallOutcome::TimedOut => ResultStatus::TimedOut,
        CallOutcome::Unreachable => ResultStatus::Unreachable,
        CallOutcome::Rejected => ResultStatus::Rejected,
    };
    let elapsed_ms = i64::try_from(result.elapsed.as_millis()).unwrap_or(i64::MAX);
    let mut row = CommandResultRow {
        command_id,
        machine: result.machine,
        status,
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
