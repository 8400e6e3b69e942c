//! How a run ends: `execute` runs a claimed run and records its end whatever happens (retrying
//! while the store cannot write), `finish` moves the run and its deployment to their final
//! states, and `recover` handles runs a dead worker left `running` (interrupted, re-queued once).

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use wire::events::{RunEvent, RunFinished, StatusEvent};

use super::{RunWorker, lease::StopReason, recorder, recorder::Records};
use crate::{
    domain::{DeploymentStatus, RunKind, RunStatus},
    services::terraform::runner::reap_orphan,
    store::{RunRow, StoreError},
};

/// Re-queues after a crash that a run gets before it fails for good.
const MAX_REQUEUES: i64 = 1;

/// What a run came to.
#[derive(Clone)]
pub(super) enum RunEnd {
    Succeeded,
    Failed(String),
    Cancelled,
    TimedOut,
    Shutdown,
}

impl RunWorker {
    /// Executes one claimed run; never returns an error: whatever happens ends up in the run's
    /// status and the deployment's `status_reason`.
    #[tracing::instrument(skip_all, fields(run_id = %run.id, deployment_id = %run.deployment_id, kind = %run.kind))]
    pub(super) async fn execute(&self, run: RunRow, shutdown: CancellationToken) {
        let (records, recorder) = recorder::spawn(self.store().clone(), self.bus.clone(), &run);
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
        self.record_end(&run, end, &records, &stopping).await;
        watcher.abort();
        drop(records);
        let _ = recorder.await;
    }

    /// Records the end of a run. A full or read-only disk (or a database outage) refuses the
    /// record for a while: keep trying, so the run ends recorded once writes work again rather
    /// than stuck `running` until the next start. The watcher keeps renewing the lease meanwhile.
    async fn record_end(
        &self,
        run: &RunRow,
        end: RunEnd,
        records: &Records,
        stopping: &CancellationToken,
    ) {
        let mut delay = Duration::from_secs(1);
        loop {
            let Err(err) = self.finish(run, end.clone(), records).await else { break };
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
    }

    /// Records how a run ended.
    async fn finish(&self, run: &RunRow, end: RunEnd, records: &Records) -> anyhow::Result<()> {
        let now = crate::domain::now();
        let kind = run.kind();
        if matches!(end, RunEnd::Shutdown) {
            let reason = "the backend shut down while it ran; re-queued";
            let next = run.requeued(run.attempt, now);
            if self.store().requeue_run(run.id, reason, &next, now).await? {
                crate::metrics::run_finished(kind.as_str(), "interrupted", ran_for(run, now));
                records.event(interrupted(run, reason.to_owned(), Some(next.id)));
            }
            return Ok(());
        }
        let (status, error, deployment) = match end {
            RunEnd::Succeeded => (
                RunStatus::Succeeded,
                None,
                match kind {
                    RunKind::Destroy => DeploymentStatus::Destroyed,
                    RunKind::Apply | RunKind::Update | RunKind::Replace => DeploymentStatus::Ready,
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
                self.deployments.machines_ready().notify_one();
            }
            records.event(RunEvent::Status(StatusEvent {
                deployment_status: deployment,
                run_id: run.id,
                run_status: status,
                kind: None,
                worker: None,
            }));
            records.event(RunEvent::RunFinished(RunFinished {
                run_id: run.id,
                status,
                error,
                requeued_as: None,
            }));
        }
        Ok(())
    }

    /// Finds runs left running by a dead worker: each is marked interrupted and re-queued once,
    /// or fails its deployment when it was already re-queued. Returns how many it handled.
    ///
    /// `at_start`: also runs this replica held before a restart under the same name; the
    /// periodic sweep must leave those alone, they are running.
    #[tracing::instrument(skip_all)]
    pub async fn recover(&self, all_running: bool, at_start: bool) -> anyhow::Result<usize> {
        let now = crate::domain::now();
        let me = at_start.then_some(self.id.as_str());
        let stale = self.store().stale_runs(now, all_running, me).await?;
        for run in &stale {
            if let Some(deployment) = self.store().deployment(run.deployment_id).await? {
                reap_orphan(&self.deployments.workspace(&deployment).module_dir);
            }
            let reason = "the backend running it stopped before it finished";
            if run.attempt < MAX_REQUEUES {
                let next = run.requeued(run.attempt + 1, now);
                if self.store().requeue_run(run.id, reason, &next, now).await? {
                    tracing::warn!(run_id = %run.id, next_run_id = %next.id, "interrupted run re-queued");
                    self.event(run, interrupted(run, reason.to_owned(), Some(next.id))).await;
                }
                continue;
            }
            let failed = format!(
                "the {} run was interrupted twice; run it again when the cause is fixed",
                run.kind
            );
            let deployment_status = DeploymentStatus::Failed;
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
                self.event(run, interrupted(run, failed, None)).await;
            }
        }
        if !stale.is_empty() {
            self.deployments.work_queued().notify_one();
        }
        Ok(stale.len())
    }

    /// Stores one event of a run no recorder is running for.
    async fn event(&self, run: &RunRow, event: RunEvent) {
        let data = event.data();
        match self
            .store()
            .append_event(run.id, run.deployment_id, event.kind(), &data, crate::domain::now())
            .await
        {
            Ok(_) => self.bus.publish(run.deployment_id),
            Err(err) => tracing::warn!(error = %err, "failed to record a run event"),
        }
    }
}

/// `run_finished` of an interrupted run, re-queued as `next` when it was.
fn interrupted(run: &RunRow, error: String, next: Option<uuid::Uuid>) -> RunEvent {
    RunEvent::RunFinished(RunFinished {
        run_id: run.id,
        status: RunStatus::Interrupted,
        error: Some(error),
        requeued_as: next,
    })
}

/// How long a run ran, from its claim to `now` (for its duration metric).
fn ran_for(run: &RunRow, now: chrono::DateTime<chrono::Utc>) -> std::time::Duration {
    run.started_at.and_then(|started| (now - started).to_std().ok()).unwrap_or_default()
}
