//! Changing a deployment that exists: `update` merges new variable values over its own (scaling
//! is a `machine_count` change), validates them like a provision, and queues an `update` run that
//! writes them with it in one transaction; `preview_update` plans the change in a throwaway copy
//! of its workspace; `replace` queues a run that destroys one machine and creates it again; and
//! `retry` runs a failed deployment's last apply again. Each applying run records what it applies
//! (secrets redacted) and what changed.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use uuid::Uuid;
use wire::{
    FieldError,
    deployments::{PlanSummary, ReplaceTarget},
};

use super::{
    DeploymentError, DeploymentSecrets, DeploymentService, is_sandboxed,
    provision::{run_inputs_record, split_variables},
};
use crate::{
    domain::{DeploymentStatus, RunKind},
    services::terraform::{Module, Plan, Workspace},
    store::{DeploymentRow, NewValues, RunRow, StoreError},
};

/// States a deployment can be changed from: a `ready` one, and a `failed` one (its change may be
/// what fixes it).
const CHANGEABLE: [DeploymentStatus; 2] = [DeploymentStatus::Ready, DeploymentStatus::Failed];

/// A deployment's variables after a change, and what the change is.
struct Change {
    module: Module,
    secrets: DeploymentSecrets,
    /// Every user variable before and after, sensitive ones included.
    before: Map<String, Value>,
    after: Map<String, Value>,
}

impl DeploymentService {
    /// Refuses a change of a deployment that is not ready or failed, saying why.
    async fn changeable(&self, deployment: &DeploymentRow) -> Result<(), DeploymentError> {
        use DeploymentStatus::*;
        let why = match deployment.status {
            Ready => return Ok(()),
            Failed => {
                let last = self.store.list_runs(deployment.id, None, 1).await?.pop();
                match last {
                    Some(run) if run.kind == RunKind::Destroy => {
                        "its last run was a destroy that failed; destroy it again instead"
                            .to_owned()
                    }
                    _ => return Ok(()),
                }
            }
            Destroyed => "the deployment is destroyed".to_owned(),
            Pending | Provisioning | Updating | Destroying => format!(
                "the deployment is {}: a run of it is queued or running; wait for it to finish or cancel it",
                deployment.status
            ),
        };
        Err(DeploymentError::Conflict(why))
    }

    /// The deployment's variables with `patch` merged over them (`null` removes one, so the
    /// module's default applies), checked like a provision's.
    async fn change(
        &self,
        owner_id: Uuid,
        deployment: &DeploymentRow,
        patch: Map<String, Value>,
    ) -> Result<Change, DeploymentError> {
        self.changeable(deployment).await?;
        let module = self.module_of(deployment)?;
        if patch.is_empty() {
            return Err(DeploymentError::Validation(vec![FieldError::new(
                "variables",
                "give at least one variable to change (null resets one to the module's default)",
            )]));
        }
        let secrets = self.open_secrets(deployment)?;
        let mut before = deployment.variables.0.clone();
        before.extend(secrets.variables.clone());
        let mut after = before.clone();
        let mut errors = Vec::new();
        for (name, value) in patch {
            if value.is_null() {
                // A reset is checked as a name only; the value it leaves is the module's default.
                match module.variables.get(&name) {
                    Some(variable) if !variable.backend_filled() => {}
                    Some(_) => errors.push(FieldError::new(
                        format!("variables.{name}"),
                        "is set by the backend and cannot be given",
                    )),
                    None => errors.push(FieldError::new(
                        format!("variables.{name}"),
                        format!("module \"{}\" has no variable \"{name}\"", module.name),
                    )),
                }
                after.remove(&name);
            } else {
                after.insert(name, value);
            }
        }
        errors.extend(module.validate_variables(&after));
        if !errors.is_empty() {
            return Err(DeploymentError::Validation(errors));
        }
        if is_sandboxed(&module) {
            let (plain, _) = split_variables(&module, after.clone());
            self.check_local(owner_id, &module, &plain, Some(deployment.id)).await?;
        }
        Ok(Change { module, secrets, before, after })
    }

    /// The module a deployment was made with.
    fn module_of(&self, deployment: &DeploymentRow) -> Result<Module, DeploymentError> {
        self.catalog.get(&deployment.provider).cloned().ok_or_else(|| {
            DeploymentError::Conflict(format!(
                "its provider \"{}\" is no longer served here; it can only be destroyed",
                deployment.provider
            ))
        })
    }

    /// Merges `patch` over the deployment's variables and queues an `update` run that applies
    /// them, or (same `Idempotency-Key`, same request) returns the run queued before. No run
    /// when nothing changes. The booleans: whether it was a replay.
    #[tracing::instrument(skip_all, fields(deployment_id = %id))]
    pub async fn update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        patch: Map<String, Value>,
        idempotency_key: Option<String>,
    ) -> Result<(DeploymentRow, Option<RunRow>, bool), DeploymentError> {
        let deployment = self.deployment(owner_id, id).await?;
        let request_hash =
            Sha256::digest(serde_json::to_vec(&patch).map_err(anyhow::Error::from)?).to_vec();
        if let Some(key) = &idempotency_key {
            if let Some(run) = self.replay_update(id, key, &request_hash).await? {
                return Ok((self.deployment(owner_id, id).await?, Some(run), true));
            }
        }
        // Held while the local machine limit is checked and the change stored.
        let _limit = self.local_limit_lock.lock().await;
        let Change { module, secrets, before, after } =
            self.change(owner_id, &deployment, patch).await?;
        if before == after {
            return Ok((deployment, None, false));
        }
        let inputs = run_inputs_record(&module, &before, &after, None);
        let (plain, sensitive) = split_variables(&module, after);
        let sealed = DeploymentSecrets { variables: sensitive, ..secrets };
        let values = NewValues {
            variables: Json(plain),
            secrets: self
                .secret_box
                .seal(&serde_json::to_vec(&sealed).map_err(anyhow::Error::from)?),
        };
        let now = crate::domain::now();
        let mut run = RunRow::applying(id, RunKind::Update, inputs, now);
        run.idempotency = idempotency_key.clone().map(|key| (key, request_hash.clone()));
        let queued = self
            .store
            .queue_run_and_move(&run, &CHANGEABLE, DeploymentStatus::Updating, Some(&values), now)
            .await;
        match queued {
            Ok(true) => {}
            // The same request raced itself: the loser answers with the winner's run.
            Err(StoreError::Conflict("runs_deployment_idempotency_key")) => {
                let key = idempotency_key.as_deref().unwrap_or_default();
                let run = self
                    .replay_update(id, key, &request_hash)
                    .await?
                    .ok_or(DeploymentError::IdempotencyMismatch)?;
                return Ok((self.deployment(owner_id, id).await?, Some(run), true));
            }
            Ok(false) | Err(StoreError::Conflict(_)) => return Err(queued_first()),
            Err(err) => return Err(err.into()),
        }
        tracing::info!(run_id = %run.id, "update queued");
        self.work_queued.notify_one();
        Ok((self.deployment(owner_id, id).await?, Some(run), false))
    }

    async fn replay_update(
        &self,
        id: Uuid,
        key: &str,
        request_hash: &[u8],
    ) -> Result<Option<RunRow>, DeploymentError> {
        match self.store.find_run_by_idempotency_key(id, key).await? {
            None => Ok(None),
            Some((run, Some(hash))) if hash == request_hash => Ok(Some(run)),
            Some(_) => Err(DeploymentError::IdempotencyMismatch),
        }
    }

    /// Plans what `update` would do with `patch`, in a throwaway copy of the deployment's
    /// workspace against its state; changes nothing.
    #[tracing::instrument(skip_all, fields(deployment_id = %id))]
    pub async fn preview_update(
        &self,
        owner_id: Uuid,
        id: Uuid,
        patch: Map<String, Value>,
        deadline: tokio::time::Instant,
    ) -> Result<PlanSummary, DeploymentError> {
        let deployment = self.deployment(owner_id, id).await?;
        let Change { module, secrets, before, after } =
            self.change(owner_id, &deployment, patch).await?;
        self.terraform
            .cli()
            .map_err(|reason| DeploymentError::TerraformUnavailable(reason.to_owned()))?;
        // Planned where its runs run (a copy elsewhere would differ in every path the module
        // records), with the new values in a file of their own over the workspace's.
        let own = self.workspace(&deployment);
        if !own.module_dir.is_dir() {
            return Err(DeploymentError::Conflict(
                "nothing of this deployment was applied yet; retry it instead".into(),
            ));
        }
        let (scratch, _guard) = Workspace::temporary(&self.data_dir, &module.name)?;
        let (plain, sensitive) = split_variables(&module, after);
        let changed = DeploymentRow { variables: Json(plain), ..deployment.clone() };
        let secrets = DeploymentSecrets { variables: sensitive, ..secrets };
        let (mut plain, env) = self.run_inputs(&module, &changed, &secrets);
        // A variable reset to its default is still in the workspace's own file: name the default.
        let reset: Vec<(String, Value)> = before
            .keys()
            .filter(|name| !plain.contains_key(*name))
            .filter_map(|name| {
                let variable = module.variables.get(name).filter(|v| !v.sensitive)?;
                Some((name.clone(), variable.default.clone()?))
            })
            .collect();
        plain.extend(reset);
        let var_file = scratch.root.join("change.tfvars.json");
        crate::services::terraform::workspace::write_private(
            &var_file,
            &serde_json::to_vec(&plain).map_err(anyhow::Error::from)?,
        )?;
        let plan = Plan::Apply { replace: Vec::new() };
        let steps =
            self.terraform.preview_steps(&own.module_dir, deployment.id, &plan, &var_file)?;
        self.plan(&own.module_dir, steps, &env, deadline).await
    }

    /// Queues a `replace` run: the machine `name` is destroyed and created again (its
    /// resource, by `terraform plan -replace`), the others untouched.
    #[tracing::instrument(skip_all, fields(deployment_id = %id, machine = %name))]
    pub async fn replace(
        &self,
        owner_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> Result<(DeploymentRow, RunRow), DeploymentError> {
        let deployment = self.deployment(owner_id, id).await?;
        let machine = self
            .store
            .find_machine(id, name)
            .await?
            .ok_or_else(|| DeploymentError::MachineNotFound(name.to_owned()))?;
        self.changeable(&deployment).await?;
        let module = self.module_of(&deployment)?;
        let resource = machine.resource.ok_or_else(|| {
            DeploymentError::Conflict(format!(
                "machine \"{name}\" has no resource address: its deployment was applied before modules gave one; update or retry it once, then replace"
            ))
        })?;
        let target = ReplaceTarget { machine: machine.name, resource };
        let run = self.applying_run(&module, &deployment, RunKind::Replace, Some(target))?;
        self.queue_change(&run, &CHANGEABLE, DeploymentStatus::Updating).await?;
        tracing::info!(run_id = %run.id, "replace queued");
        Ok((self.deployment(owner_id, id).await?, run))
    }

    /// Runs a failed deployment's last apply again from the state it has: what exists stays,
    /// Terraform makes what is missing, and the machines go through the readiness check again.
    /// A failed first apply is retried as an `apply` (`failed → provisioning`), a failed update
    /// or replace as an `update` of the variables it has (`failed → updating`).
    #[tracing::instrument(skip_all, fields(deployment_id = %id))]
    pub async fn retry(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<(DeploymentRow, RunRow), DeploymentError> {
        let deployment = self.deployment(owner_id, id).await?;
        if deployment.status != DeploymentStatus::Failed {
            return Err(DeploymentError::Conflict(format!(
                "the deployment is {}; only a failed deployment can be retried",
                deployment.status
            )));
        }
        let last = self.store.list_runs(id, None, 1).await?.pop();
        let (kind, to) = match last.map(|run| run.kind) {
            Some(RunKind::Destroy) => {
                return Err(DeploymentError::Conflict(
                    "its last run was a destroy; destroy it again instead of retrying".into(),
                ));
            }
            Some(RunKind::Update | RunKind::Replace) => {
                (RunKind::Update, DeploymentStatus::Updating)
            }
            Some(RunKind::Apply) | None => (RunKind::Apply, DeploymentStatus::Provisioning),
        };
        let module = self.module_of(&deployment)?;
        let run = self.applying_run(&module, &deployment, kind, None)?;
        self.queue_change(&run, &[DeploymentStatus::Failed], to).await?;
        tracing::info!(run_id = %run.id, kind = %kind, "retry queued");
        Ok((self.deployment(owner_id, id).await?, run))
    }

    /// A run applying the deployment's variables as they are.
    fn applying_run(
        &self,
        module: &Module,
        deployment: &DeploymentRow,
        kind: RunKind,
        replace: Option<ReplaceTarget>,
    ) -> Result<RunRow, DeploymentError> {
        let mut variables = deployment.variables.0.clone();
        variables.extend(self.open_secrets(deployment)?.variables);
        let inputs = run_inputs_record(module, &variables, &variables, replace);
        Ok(RunRow::applying(deployment.id, kind, inputs, crate::domain::now()))
    }

    /// Queues `run`, moving its deployment from one of `from` to `to`.
    async fn queue_change(
        &self,
        run: &RunRow,
        from: &[DeploymentStatus],
        to: DeploymentStatus,
    ) -> Result<(), DeploymentError> {
        match self.store.queue_run_and_move(run, from, to, None, run.created_at).await {
            Ok(true) => {
                self.work_queued.notify_one();
                Ok(())
            }
            Ok(false) | Err(StoreError::Conflict(_)) => Err(queued_first()),
            Err(err) => Err(err.into()),
        }
    }
}

/// Another request moved the deployment first (a destroy, another change).
fn queued_first() -> DeploymentError {
    DeploymentError::Conflict(
        "another run of this deployment was queued first; see its runs".into(),
    )
}
