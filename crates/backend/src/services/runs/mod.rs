//! The run worker: claims queued runs (at most `NIM_MAX_CONCURRENT_RUNS` at once, one per
//! deployment by the store's constraint) and executes each to a recorded end. The jobs of a run
//! live beside this file: `lease.rs` holds the claim and turns cancel or shutdown into a stop,
//! `steps.rs` drives Terraform and the readiness gate, `recorder.rs` writes the run log, and
//! `outcome.rs` records how the run ended and recovers runs a dead worker left.

mod lease;
mod outcome;
mod recorder;
mod steps;
#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration};

use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    cloud_client::CloudClientService, deployments::DeploymentService, events::EventBus,
    terraform::TerraformService,
};
use crate::store::{RunRow, Store};

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
    deployments: DeploymentService,
    terraform: Arc<TerraformService>,
    cloud: Arc<CloudClientService>,
    bus: EventBus,
    settings: WorkerSettings,
    id: String,
}

impl RunWorker {
    /// `name` identifies this replica in leases and run events (default `<hostname>-<random>`).
    pub fn new(
        deployments: DeploymentService,
        terraform: Arc<TerraformService>,
        cloud: Arc<CloudClientService>,
        bus: EventBus,
        settings: WorkerSettings,
        name: Option<String>,
    ) -> Self {
        let id = name.unwrap_or_else(|| format!("{}-{}", hostname(), Uuid::new_v4().simple()));
        Self { deployments, terraform, cloud, bus, settings, id }
    }

    fn store(&self) -> &Store {
        self.deployments.store()
    }

    /// Claims the oldest queued run and executes it to the end (tests call this directly).
    pub async fn try_run_next(&self, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
        match self.claim().await? {
            Some(run) => {
                self.execute(run, shutdown.child_token()).await;
                Ok(Outcome::Ran)
            }
            None => Ok(Outcome::Empty),
        }
    }

    async fn claim(&self) -> anyhow::Result<Option<RunRow>> {
        let now = crate::domain::now();
        let lease_until = now + chrono::Duration::from_std(self.settings.lease)?;
        Ok(self.store().claim_next_run(&self.id, lease_until, now).await?)
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
            match self.claim().await {
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
                        () = self.deployments.work_queued().notified() => {}
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
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "nim".into())
}
