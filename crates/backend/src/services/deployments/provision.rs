//! Creating deployments: a request is validated against its module before anything is created
//! or run, secrets are sealed, an `Idempotency-Key` replays the deployment it created, local
//! provisions are held to the owner's machine limit, and a dry run plans the request in a
//! throwaway workspace through the same Terraform steps as a run.

use std::sync::Mutex;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use uuid::Uuid;
use wire::FieldError;
use wire::deployments::{
    PlanSummary, PlannedResource, REDACTED, ReplaceTarget, RunInputs, VariableChange,
};

use super::{DEFAULT_AGENT_PORT, DeploymentError, DeploymentSecrets, DeploymentService};
use crate::{
    domain::{DeploymentStatus, RunKind},
    services::{
        agent_download::AgentDownload,
        certs::mint_deployment_cert,
        local_machines::SUBNET_PREFIX,
        terraform::{Exit, Module, StepEvent, StepsEnd, Workspace, ui::UiMessage},
    },
    store::{DeploymentRow, RunRow, StoreError},
};

/// Longest deployment name (a DNS label).
const MAX_NAME_LEN: usize = 63;

/// What `POST /provision` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub name: String,
    pub provider: String,
    pub variables: Map<String, Value>,
}

impl DeploymentService {
    /// Validates a provision request against the catalog; returns the module.
    fn validate(&self, request: &ProvisionRequest) -> Result<&Module, DeploymentError> {
        let mut errors = Vec::new();
        if let Err(message) = check_name(&request.name) {
            errors.push(FieldError::new("name", message));
        }
        let Some(module) = self.catalog.get(&request.provider) else {
            let valid: Vec<_> = self.catalog.names().collect();
            errors.push(FieldError::new(
                "provider",
                format!(
                    "unknown provider \"{}\"; valid providers: {}",
                    request.provider,
                    valid.join(", ")
                ),
            ));
            return Err(DeploymentError::Validation(errors));
        };
        errors.extend(module.validate_variables(&request.variables));
        match errors.is_empty() {
            true => Ok(module),
            false => Err(DeploymentError::Validation(errors)),
        }
    }

    /// Where this module's machines download the agent: the machine-facing address of this host
    /// for local sandboxes, `NIM_PUBLIC_URL` for clouds.
    pub(super) fn agent_download(&self, module: &Module) -> Result<AgentDownload, String> {
        match is_sandboxed(module) {
            true => self.agent_distribution.local_download(self.local.download_base.as_deref()),
            false => self.agent_distribution.cloud_download(),
        }
    }

    /// The backend-filled variables of a new deployment: the agent port, the agent download for
    /// modules that declare it, and for local sandboxes their subnet, uids and disks. With
    /// `claim` (a real provision rather than a plan) the subnet is claimed for `deployment_id`.
    /// Fails before anything is created when machines could not get the agent.
    async fn backend_variables(
        &self,
        module: &Module,
        deployment_id: Uuid,
        claim: bool,
    ) -> Result<Map<String, Value>, DeploymentError> {
        let mut variables = Map::new();
        variables.insert("agent_port".into(), json!(DEFAULT_AGENT_PORT));
        if module.variables.contains_key("agent_download_url") {
            let download = self.agent_download(module).map_err(|reason| {
                DeploymentError::AgentDownloadUnavailable(format!(
                    "provider \"{}\" cannot be used: {reason}",
                    module.name
                ))
            })?;
            variables.insert("agent_download_url".into(), json!(download.url));
            if module.variables.contains_key("agent_sha256") {
                variables.insert("agent_sha256".into(), json!(download.sha256));
            }
        }
        if is_sandboxed(module) {
            let settings = &self.local.settings;
            let subnet = match claim {
                true => self.local.claim(deployment_id).await?,
                // A plan needs a well-formed subnet, not a claimed one.
                false => settings.placeholder_subnet(),
            };
            variables.insert("machine_network".into(), json!(subnet.net.to_string()));
            variables.insert("machine_uid_base".into(), json!(settings.uid_base_of(&subnet)));
            variables
                .insert("machines_root".into(), json!(settings.machines_dir.display().to_string()));
        }
        Ok(variables)
    }

    /// Refuses a sandboxed module on a host that cannot build sandboxes, saying why.
    fn require_local(&self, module: &Module) -> Result<(), DeploymentError> {
        match self.local.unavailable() {
            Some(reason) => Err(DeploymentError::LocalUnavailable(format!(
                "provider \"{}\" cannot be used on this server: {reason}",
                module.name
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a local provision (or a change of the deployment `changing`) that cannot run
    /// here, or that would take the owner past their machine limit. Call with
    /// `local_limit_lock` held until the deployment or its change is stored.
    pub(super) async fn check_local(
        &self,
        owner_id: Uuid,
        module: &Module,
        plain: &Map<String, Value>,
        changing: Option<Uuid>,
    ) -> Result<(), DeploymentError> {
        self.require_local(module)?;
        let wanted = local_machine_count(module, plain)?;
        let mut held = 0;
        for deployment in self.store.live_deployments_of(owner_id, &module.name).await? {
            if Some(deployment.id) != changing {
                held += module.machine_count(&deployment.variables.0).unwrap_or(1);
            }
        }
        let limit = u64::from(self.local.settings.max_machines_per_user);
        if held + wanted > limit {
            return Err(DeploymentError::LocalMachineLimit(format!(
                "you have {held} local machine(s) and asked for {wanted} more; at most {limit} may exist per user (NIM_LOCAL_MAX_MACHINES_PER_USER): destroy some first"
            )));
        }
        Ok(())
    }

    /// Creates a deployment and its queued apply run, or (same `Idempotency-Key`, same request)
    /// returns the one created before. The boolean says whether it was a replay.
    #[tracing::instrument(skip_all, fields(owner_id = %owner_id, provider = %request.provider))]
    pub async fn provision(
        &self,
        owner_id: Uuid,
        request: ProvisionRequest,
        idempotency_key: Option<String>,
    ) -> Result<(DeploymentRow, RunRow, bool), DeploymentError> {
        let request_hash =
            Sha256::digest(serde_json::to_vec(&request).map_err(anyhow::Error::from)?).to_vec();
        if let Some(key) = &idempotency_key {
            if let Some(existing) = self.replay(owner_id, key, &request_hash).await? {
                return Ok(existing);
            }
        }
        let module = self.validate(&request)?;

        let id = Uuid::now_v7();
        let given = request.variables.clone();
        let (plain, sensitive) = split_variables(module, request.variables);
        let _limit = match is_sandboxed(module) {
            true => {
                let guard = self.local_limit_lock.lock().await;
                self.check_local(owner_id, module, &plain, None).await?;
                Some(guard)
            }
            false => None,
        };
        let backend_variables = self.backend_variables(module, id, true).await?;
        let draft = Draft { id, name: request.name, provider: request.provider, plain, sensitive };
        let (mut deployment, secrets) = draft.into_rows(owner_id, backend_variables)?;
        deployment.secrets =
            self.secret_box.seal(&serde_json::to_vec(&secrets).map_err(anyhow::Error::from)?);
        deployment.idempotency_key = idempotency_key.clone();
        deployment.request_hash = Some(request_hash.clone());
        let now = deployment.created_at;
        let inputs = run_inputs_record(module, &Map::new(), &given, None);
        let run = RunRow::applying(id, RunKind::Apply, inputs, now);
        let created = self.store.create_deployment(&deployment, &run).await;
        if created.is_err() && is_sandboxed(module) {
            if let Err(err) = self.local.release(id).await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "failed to release the local network of a deployment not created"
                );
            }
        }
        match created {
            Ok(()) => {}
            // Two identical requests raced: the loser answers with the winner's deployment.
            Err(StoreError::Conflict("deployments_owner_idempotency_key")) => {
                let key = idempotency_key.as_deref().unwrap_or_default();
                return self
                    .replay(owner_id, key, &request_hash)
                    .await?
                    .ok_or(DeploymentError::IdempotencyMismatch);
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(deployment_id = %id, "deployment created; apply queued");
        self.work_queued.notify_one();
        Ok((deployment, run, false))
    }

    async fn replay(
        &self,
        owner_id: Uuid,
        key: &str,
        request_hash: &[u8],
    ) -> Result<Option<(DeploymentRow, RunRow, bool)>, DeploymentError> {
        let Some(existing) = self.store.find_deployment_by_idempotency_key(owner_id, key).await?
        else {
            return Ok(None);
        };
        if existing.request_hash.as_deref() != Some(request_hash) {
            return Err(DeploymentError::IdempotencyMismatch);
        }
        let first_run = self
            .store
            .list_runs(existing.id, None, u32::MAX)
            .await?
            .pop()
            .ok_or_else(|| anyhow::anyhow!("deployment {} has no run", existing.id))?;
        Ok(Some((existing, first_run, true)))
    }

    /// Plans a provision request in a throwaway workspace; creates nothing.
    #[tracing::instrument(skip_all, fields(provider = %request.provider))]
    pub async fn dry_run(
        &self,
        request: ProvisionRequest,
        deadline: tokio::time::Instant,
    ) -> Result<PlanSummary, DeploymentError> {
        let module = self.validate(&request)?;
        self.terraform
            .cli()
            .map_err(|reason| DeploymentError::TerraformUnavailable(reason.to_owned()))?;
        let (workspace, _guard) = Workspace::temporary(&self.data_dir, &module.name)?;
        workspace.ensure_modules(self.catalog.root())?;

        let id = Uuid::now_v7();
        let (plain, sensitive) = split_variables(module, request.variables);
        if is_sandboxed(module) {
            self.require_local(module)?;
            local_machine_count(module, &plain)?;
        }
        let backend_variables = self.backend_variables(module, id, false).await?;
        let draft = Draft { id, name: request.name, provider: request.provider, plain, sensitive };
        let (deployment, secrets) = draft.into_rows(Uuid::nil(), backend_variables)?;
        let (plain, env) = self.run_inputs(module, &deployment, &secrets);
        workspace.write_variables(&plain)?;

        let steps = self.terraform.dry_run_steps();
        self.plan(&workspace.module_dir, steps, &env, deadline).await
    }

    /// Runs the `steps` of a plan that changes nothing in `dir`, and sums up what the plan would
    /// do.
    pub(super) async fn plan(
        &self,
        dir: &std::path::Path,
        steps: Vec<crate::services::terraform::Step>,
        env: &[(String, secrecy::SecretString)],
        deadline: tokio::time::Instant,
    ) -> Result<PlanSummary, DeploymentError> {
        let stop = self.terraform.stop_signals(Default::default(), deadline);
        // Only the plan's messages make the summary.
        let planned: Mutex<Vec<UiMessage>> = Mutex::default();
        let planning = std::sync::atomic::AtomicBool::new(false);
        let observe = |event: StepEvent| match event {
            StepEvent::Started(step) => {
                planning.store(step == "plan", std::sync::atomic::Ordering::Relaxed)
            }
            StepEvent::Ui(message) if planning.load(std::sync::atomic::Ordering::Relaxed) => {
                planned.lock().expect("never poisoned").push(*message)
            }
            StepEvent::Ui(_) | StepEvent::Note(_) => {}
        };
        let end = self.terraform.run(dir, steps, env, &stop, &observe).await?;
        match end {
            StepsEnd::Succeeded { .. } => {
                Ok(plan_summary(planned.into_inner().expect("never poisoned")))
            }
            StepsEnd::Stopped { exit: Exit::Failed { summary, .. }, .. } => {
                Err(DeploymentError::PlanFailed(summary))
            }
            StepsEnd::Stopped { .. } => {
                Err(DeploymentError::PlanFailed("the plan took too long and was stopped".into()))
            }
        }
    }
}

/// What a plan's messages say it would change, resources in a stable order.
fn plan_summary(messages: Vec<UiMessage>) -> PlanSummary {
    let mut summary = PlanSummary { add: 0, change: 0, destroy: 0, resources: Vec::new() };
    for message in messages {
        if let Some(change) = &message.change {
            if message.kind == "planned_change" {
                summary.resources.push(PlannedResource {
                    address: change.resource.addr.clone(),
                    action: change.action.clone(),
                });
            }
        }
        if let Some(changes) = message.changes {
            summary.add = changes.add;
            summary.change = changes.change;
            summary.destroy = changes.remove;
        }
    }
    // Terraform plans resources concurrently; answer in a stable order.
    summary.resources.sort_by(|a, b| a.address.cmp(&b.address));
    summary
}

/// A deployment being created: what a provision and a dry run both build from the request.
struct Draft {
    id: Uuid,
    name: String,
    provider: String,
    plain: Map<String, Value>,
    sensitive: Map<String, Value>,
}

impl Draft {
    /// The deployment's row (without idempotency) and its secrets: a certificate minted for it,
    /// a new agent token, its sensitive variables.
    fn into_rows(
        self,
        owner_id: Uuid,
        backend_variables: Map<String, Value>,
    ) -> anyhow::Result<(DeploymentRow, DeploymentSecrets)> {
        let cert = mint_deployment_cert(&self.id.to_string())?;
        let secrets = DeploymentSecrets {
            agent_token: new_agent_token(),
            agent_tls_key: cert.key_pem.expose_secret().to_owned(),
            variables: self.sensitive,
        };
        let now = crate::domain::now();
        let row = DeploymentRow {
            id: self.id,
            owner_id,
            name: self.name,
            provider: self.provider,
            status: DeploymentStatus::Pending,
            status_reason: None,
            variables: Json(self.plain),
            backend_variables: Json(backend_variables),
            secrets: Vec::new(),
            tls_cert: cert.cert_pem,
            idempotency_key: None,
            request_hash: None,
            created_at: now,
            updated_at: now,
        };
        Ok((row, secrets))
    }
}

/// What a run applies: the variables after it (secrets redacted), what differs from `before`,
/// and the machine it replaces.
pub(super) fn run_inputs_record(
    module: &Module,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    replace: Option<ReplaceTarget>,
) -> RunInputs {
    let shown = |name: &str, value: &Value| match module.variables.get(name) {
        Some(variable) if variable.sensitive => json!(REDACTED),
        _ => value.clone(),
    };
    let mut names: Vec<&String> = before.keys().chain(after.keys()).collect();
    names.sort();
    names.dedup();
    let changes = names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| VariableChange {
            name: name.clone(),
            from: before.get(name).map(|value| shown(name, value)),
            to: after.get(name).map(|value| shown(name, value)),
        })
        .collect();
    let variables = after.iter().map(|(name, value)| (name.clone(), shown(name, value))).collect();
    RunInputs { variables, changes, replace }
}

/// The request's variables: plain ones, and those the module declares sensitive.
pub(super) fn split_variables(
    module: &Module,
    variables: Map<String, Value>,
) -> (Map<String, Value>, Map<String, Value>) {
    let (sensitive, plain) =
        variables.into_iter().partition(|(name, _)| module.variables[name].sensitive);
    (plain, sensitive)
}

/// Most machines a local deployment may ask for: its subnet's addresses after the host's; the
/// module's own validation may allow fewer.
const MAX_LOCAL_MACHINES: u64 = (1 << (32 - SUBNET_PREFIX)) - 3;

/// Whether a module's machines are local sandboxes (it takes a subnet of this host's range).
pub(crate) fn is_sandboxed(module: &Module) -> bool {
    module.variables.contains_key("machine_network")
}

fn local_machine_count(
    module: &Module,
    plain: &Map<String, Value>,
) -> Result<u64, DeploymentError> {
    let count = module.machine_count(plain).unwrap_or(1);
    if count > MAX_LOCAL_MACHINES {
        return Err(DeploymentError::Validation(vec![FieldError::new(
            "variables.machine_count",
            format!("at most {MAX_LOCAL_MACHINES} machines fit in a local deployment's network"),
        )]));
    }
    Ok(count)
}

/// 1–63 characters: lowercase letters, digits and hyphens, starting with a letter and not ending
/// with a hyphen (a DNS label, so clouds accept it in resource names).
fn check_name(name: &str) -> Result<(), String> {
    let valid = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match valid {
        true => Ok(()),
        false => Err(format!(
            "must be 1-{MAX_NAME_LEN} lowercase letters, digits or hyphens, start with a letter and not end with a hyphen"
        )),
    }
}

/// A new bearer token for a deployment's agents (256 random bits).
fn new_agent_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["a", "web-1", "x".repeat(63).as_str()] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "1web", "web-", "we_b", "../x", "x".repeat(64).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
