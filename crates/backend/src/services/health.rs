//! The machine health checker: every interval it asks the agent of every machine of every ready
//! deployment for `/v1/info` (at most `concurrency` calls at once, across deployments) and
//! records the machine's `status` (`healthy` / `unreachable`), `last_seen_at` and info. A
//! deployment with an unreachable machine shows `degraded`; its lifecycle status never changes
//! here.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use uuid::Uuid;

use super::{
    cloud_client::{AgentTarget, CloudClientService},
    deployments::DeploymentService,
};
use crate::{
    domain::MachineStatus,
    store::{DeploymentRow, MachineRow, NewMachine},
};

#[derive(Clone)]
pub struct HealthChecker {
    deployments: DeploymentService,
    cloud: Arc<CloudClientService>,
    interval: Duration,
    concurrency: usize,
}

impl HealthChecker {
    pub fn new(
        deployments: DeploymentService,
        cloud: Arc<CloudClientService>,
        interval: Duration,
        concurrency: usize,
    ) -> Self {
        Self { deployments, cloud, interval, concurrency: concurrency.max(1) }
    }

    /// Checks every machine of every ready deployment once; returns how many it checked.
    #[tracing::instrument(skip_all)]
    pub async fn check_once(&self) -> anyhow::Result<usize> {
        let mut checks = Vec::new();
        for (deployment, machines) in
            self.deployments.store().ready_deployments_with_machines().await?
        {
            match targets(&self.deployments, &deployment, &machines) {
                Ok(targets) => checks.extend(targets),
                Err(err) => tracing::warn!(
                    deployment_id = %deployment.id,
                    error = format!("{err:#}"),
                    "cannot reach this deployment's agents"
                ),
            }
        }
        let count = checks.len();
        check_machines(&self.deployments, &self.cloud, checks, self.concurrency).await;
        Ok(count)
    }

    /// Checks at every interval, and at once when a deployment became ready, until `shutdown`.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let round = tokio::select! {
                round = self.check_once() => round,
                () = shutdown.cancelled() => return Ok(()),
            };
            if let Err(err) = round {
                tracing::warn!(error = format!("{err:#}"), "machine health check failed");
            }
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = self.deployments.machines_ready().notified() => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// Each machine's id and how to reach its agent.
pub(crate) fn targets(
    deployments: &DeploymentService,
    deployment: &DeploymentRow,
    machines: &[MachineRow],
) -> anyhow::Result<Vec<(Uuid, AgentTarget)>> {
    let spec: Vec<NewMachine> = machines.iter().map(NewMachine::from).collect();
    let targets = deployments.agent_targets(deployment, &spec)?;
    Ok(machines.iter().map(|m| m.id).zip(targets).collect())
}

/// Asks each machine's agent for `/v1/info`, at most `concurrency` at once, and records the
/// machine `healthy` (with the info) or `unreachable`.
pub(crate) async fn check_machines(
    deployments: &DeploymentService,
    cloud: &CloudClientService,
    checks: Vec<(Uuid, AgentTarget)>,
    concurrency: usize,
) {
    stream::iter(checks)
        .map(|(machine_id, target)| async move {
            (machine_id, target.name.clone(), cloud.info(&target).await)
        })
        .buffer_unordered(concurrency.max(1))
        .for_each(|(machine_id, name, info)| async move {
            let now = crate::domain::now();
            let recorded = match info {
                Ok(info) => {
                    let info = serde_json::to_value(&info).ok();
                    deployments
                        .store()
                        .record_machine_health(
                            machine_id,
                            MachineStatus::Healthy,
                            info.as_ref(),
                            now,
                        )
                        .await
                }
                Err(err) => {
                    tracing::info!(machine = %name, error = %err, "machine unreachable");
                    deployments
                        .store()
                        .record_machine_health(machine_id, MachineStatus::Unreachable, None, now)
                        .await
                }
            };
            if let Err(err) = recorded {
                tracing::warn!(error = %err, "failed to record a machine's health");
            }
        })
        .await;
}
