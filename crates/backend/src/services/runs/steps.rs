//! The steps of a run up to its end: the deployment moves into its running state, Terraform runs
//! (`TerraformService`'s steps: init, plan, apply), the machines an apply outputs are stored and
//! their agents awaited (the readiness gate), and `ready` comes with one health round.

use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire::events::{RunEvent, StatusEvent};

use super::{RunWorker, outcome::RunEnd, recorder::Records};
use crate::{
    domain::{DeploymentStatus, Lifecycle, RunKind, RunStatus},
    services::{
        health,
        terraform::{Exit, Plan, StepsEnd},
    },
    store::{DeploymentRow, NewMachine, RunRow},
};

/// Agents asked at once for the health round that comes with `ready`.
const HEALTH_CONCURRENCY: usize = 64;

impl RunWorker {
    /// The run's steps up to (not including) recording its end.
    pub(super) async fn drive(
        &self,
        run: &RunRow,
        records: &Records,
        cancel: &CancellationToken,
    ) -> anyhow::Result<RunEnd> {
        let deployment = self.deployments.of_run(run.deployment_id).await?;
        let status = match run.kind() {
            RunKind::Destroy => DeploymentStatus::Destroying,
            kind => self.start_apply(deployment.id, kind).await?,
        };
        records.event(RunEvent::Status(StatusEvent {
            deployment_status: status,
            run_id: run.id,
            run_status: RunStatus::Running,
            kind: Some(run.kind()),
            worker: Some(self.id.clone()),
        }));

        self.terraform
            .cli()
            .map_err(|reason| anyhow::anyhow!("terraform is not available: {reason}"))?;
        let inputs = self.deployments.prepare_run(&deployment)?;
        let dir = &inputs.workspace.module_dir;
        let replaced: Vec<String> =
            run.replace_target().map(|target| target.machine.clone()).into_iter().collect();
        let plan = match run.kind() {
            RunKind::Destroy => Plan::Destroy,
            _ => Plan::Apply {
                replace: run.replace_target().map(|t| t.resource.clone()).into_iter().collect(),
            },
        };
        if let Some(target) = run.replace_target() {
            records.log(format!("replacing machine {} ({})", target.machine, target.resource));
        }
        let steps = self.terraform.run_steps(dir, deployment.id, &plan)?;
        let stop =
            self.terraform.stop_signals(cancel.clone(), Instant::now() + self.settings.run_timeout);
        let observe = |event| records.step(event);
        let end = self.terraform.run(dir, steps, &inputs.env, &stop, &observe).await;
        inputs.workspace.remove_plan();
        let outputs = match end? {
            StepsEnd::Succeeded { outputs } => outputs,
            StepsEnd::Stopped { step, exit } => return Ok(stopped(step, exit)),
        };
        match run.kind() {
            RunKind::Destroy => {
                self.deployments.destroyed(deployment.id, &inputs.module).await?;
                Ok(RunEnd::Succeeded)
            }
            RunKind::Apply | RunKind::Update | RunKind::Replace => {
                let outputs = self.terraform.outputs(dir, &inputs.env, outputs).await?;
                let machines = parse_machines(&outputs)?;
                self.deployments.store_machines(deployment.id, &machines, &replaced).await?;
                records.log(format!("waiting for {} agent(s) to answer", machines.len()));
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
            let machines = self.deployments.machines(deployment.id).await?;
            let checks = health::targets(&self.deployments, deployment, &machines)?;
            health::check_machines(&self.deployments, &self.cloud, checks, HEALTH_CONCURRENCY)
                .await;
            anyhow::Ok(())
        };
        if let Err(err) = checked.await {
            tracing::warn!(error = format!("{err:#}"), "failed to record the machines' health");
        }
    }

    /// Moves a deployment into its applying state. A first apply: `provisioning` from every
    /// state the table lets move there (the first time, or after a failure), else `updating`.
    /// An update or replace: `updating` (where its queueing already moved it).
    async fn start_apply(
        &self,
        deployment_id: Uuid,
        kind: RunKind,
    ) -> anyhow::Result<DeploymentStatus> {
        let now = crate::domain::now();
        let store = self.store();
        let targets: &[DeploymentStatus] = match kind {
            RunKind::Apply => &[DeploymentStatus::Provisioning, DeploymentStatus::Updating],
            _ => &[DeploymentStatus::Updating],
        };
        for &to in targets {
            let from = DeploymentStatus::sources(to);
            if store.transition_deployment(deployment_id, &from, to, None, now).await? {
                return Ok(to);
            }
        }
        Ok(DeploymentStatus::Updating)
    }

    async fn wait_ready(
        &self,
        deployment: &DeploymentRow,
        machines: &[NewMachine],
        cancel: &CancellationToken,
    ) -> anyhow::Result<RunEnd> {
        let targets = self.deployments.agent_targets(deployment, machines)?;
        let deadline = std::time::Instant::now() + self.settings.ready_timeout;
        tokio::select! {
            ready = self.cloud.wait_ready(&targets, deadline) => match ready {
                Ok(()) => Ok(RunEnd::Succeeded),
                Err(not_ready) => Ok(RunEnd::Failed(not_ready.to_string())),
            },
            () = cancel.cancelled() => Ok(RunEnd::Cancelled),
        }
    }
}

/// What a step that did not succeed makes of the run.
fn stopped(step: &str, exit: Exit) -> RunEnd {
    match exit {
        Exit::Failed { summary, .. } => {
            RunEnd::Failed(format!("terraform {step} failed: {summary}"))
        }
        Exit::Cancelled => RunEnd::Cancelled,
        Exit::TimedOut => RunEnd::TimedOut,
        // `StepsEnd::Stopped` never carries a success; were it to, the run went on fine.
        Exit::Succeeded => RunEnd::Succeeded,
    }
}

/// The module's `machines` output: a list of `{name, public_ip, private_ip, resource,
/// agent_port?}` (`resource` may be missing from a module copy made before the contract had it).
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
                resource: text("resource").filter(|address| is_resource_address(address)),
            })
        })
        .collect()
}

/// `type.name[index]` or `module.x.type.name["key"]`: what `-replace=` takes. Anything else is
/// not trusted into an argument (the module is the operator's, but its outputs may hold values
/// a user gave).
fn is_resource_address(address: &str) -> bool {
    !address.is_empty()
        && address.len() <= 512
        && !address.starts_with('-')
        && address.chars().all(|c| c.is_ascii_alphanumeric() || "_-.[]\"".contains(c))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn machines_are_read_from_the_output() {
        let outputs = json!({"machines": {"sensitive": false, "value": [
            {"name": "m-0", "public_ip": "203.0.113.5", "private_ip": "10.0.0.5"},
            {"name": "m-1", "public_ip": null, "private_ip": "10.0.0.6", "agent_port": 7071,
             "resource": "terraform_data.machine[1]"},
            {"name": "m-2", "public_ip": null, "private_ip": null, "resource": "-destroy x"}
        ]}});
        let machines = parse_machines(&outputs).unwrap();
        assert_eq!(machines[0].public_ip.as_deref(), Some("203.0.113.5"));
        assert_eq!(machines[1].public_ip, None);
        assert_eq!(machines[1].agent_port, Some(7071));
        assert_eq!(machines[0].resource, None);
        assert_eq!(machines[1].resource.as_deref(), Some("terraform_data.machine[1]"));
        assert_eq!(machines[2].resource, None, "not an address");
        assert!(parse_machines(&json!({"machines": {"value": [{"public_ip": "x"}]}})).is_err());
        assert!(parse_machines(&json!({})).is_err());
    }
}
