//! The plan's `DeploymentService`: creating deployments (validated against their module before
//! anything runs), reading them, queueing destroys and cancels, and dry runs. Every state change
//! goes through the store's conditional updates; the run worker does the Terraform work.

use std::{path::PathBuf, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;
use wire::FieldError;
use wire::deployments::{PlanSummary, PlannedResource};

use super::{
    agent_download::{AgentDistribution, AgentDownload},
    certs::mint_deployment_cert,
    cloud_client::{AgentCredentials, AgentTarget},
    local_machines::{LocalMachines, SUBNET_PREFIX},
    terraform::{Exit, Module, ModuleCatalog, PluginCache, StopSignals, Terraform, Workspace},
};
use crate::{
    domain::{DeploymentStatus, RunKind},
    secrets::SecretBox,
    store::{
        DeploymentDetail, DeploymentQuery, DeploymentRow, DeploymentSummary, NewMachine,
        RunEventRow, RunRow, Store, StoreError,
    },
};

/// The port agents listen on in cloud modules.
pub const DEFAULT_AGENT_PORT: u16 = 7070;
/// Longest deployment name (a DNS label).
const MAX_NAME_LEN: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("no such deployment")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    #[error("terraform is not available: {0}")]
    TerraformUnavailable(String),
    /// Cloud machines could not download the agent (`NIM_PUBLIC_URL` or the binary missing).
    #[error("{0}")]
    AgentDownloadUnavailable(String),
    /// This host cannot run local machines as sandboxes.
    #[error("{0}")]
    LocalUnavailable(String),
    /// The owner has as many local machines as they may.
    #[error("{0}")]
    LocalMachineLimit(String),
    #[error("terraform plan failed: {0}")]
    PlanFailed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What `POST /provision` asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub name: String,
    pub provider: String,
    pub variables: Map<String, Value>,
}

/// The sealed part of a deployment.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeploymentSecrets {
    pub(crate) agent_token: String,
    pub(crate) agent_tls_key: String,
    /// The caller's variables declared `sensitive`.
    pub(crate) variables: Map<String, Value>,
}

/// Everything the deployment service and the run worker share.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub store: Store,
    pub catalog: Arc<ModuleCatalog>,
    pub terraform: Result<Terraform, String>,
    pub secret_box: SecretBox,
    pub data_dir: PathBuf,
    /// The agent binary cloud machines download, and from where.
    pub agent_distribution: Arc<AgentDistribution>,
    pub cancel_grace: std::time::Duration,
    /// Wakes the run worker when a run is queued.
    pub work_queued: Arc<Notify>,
    /// Wakes the health checker when a deployment became ready, so its machines' health and
    /// facts show at once rather than at the next interval.
    pub machines_ready: Arc<Notify>,
    /// Taken around every `terraform init`: alone while an init may write the shared plugin
    /// cache, beside others once its providers are cached (plan and apply only read it).
    pub plugin_cache: Arc<PluginCache>,
    /// Local machines on this host: their settings, and whether the host can run them.
    pub local: Arc<LocalMachines>,
    /// Held while a local provision checks the owner's machine limit and creates the
    /// deployment, so two requests of one owner cannot both take the last machines.
    pub local_limit_lock: Arc<tokio::sync::Mutex<()>>,
    /// With Postgres, Terraform state lives in it too (Terraform's `pg` backend): the connection
    /// string for Terraform, so any replica can run any deployment's next run.
    pub state_database: Option<SecretString>,
}

/// Where Terraform's `pg` backend keeps state: its own schema beside ours.
pub const TERRAFORM_STATE_SCHEMA: &str = "nim_terraform";
/// The override file that switches a workspace to the `pg` backend.
pub const PG_BACKEND_OVERRIDE: &str = "nim_backend_override.tf";
/// The `pg` backend's settings for `init` (deleted once it ran).
pub const PG_BACKEND_CONFIG: &str = "nim_pg.tfbackend";

impl Provisioning {
    /// The Terraform workspace (state) name of a deployment in the `pg` backend.
    pub fn state_workspace(deployment_id: Uuid) -> String {
        format!("d-{deployment_id}")
    }
}

impl Provisioning {
    /// With Postgres state, the `pg` backend's settings as a `-backend-config` file's text. They
    /// reach Terraform through `init` only (which keeps them in the workspace's `.terraform`,
    /// mode 0700), never through the environment, so no `local-exec` child of a later plan or
    /// apply (and nothing a local machine runs) ever holds the database password.
    pub(crate) fn state_backend_config(&self) -> Option<SecretString> {
        let url = self.state_database.as_ref()?;
        let settings = [
            ("conn_str", terraform_conn_str(url).expose_secret().to_owned()),
            ("schema_name", TERRAFORM_STATE_SCHEMA.to_owned()),
        ];
        let text: String = settings
            .iter()
            .map(|(key, value)| format!("{key} = {}\n", serde_json::Value::from(value.as_str())))
            .collect();
        Some(SecretString::from(text))
    }

    pub fn terraform(&self) -> Result<&Terraform, DeploymentError> {
        self.terraform.as_ref().map_err(|err| DeploymentError::TerraformUnavailable(err.clone()))
    }

    pub(crate) fn open_secrets(
        &self,
        deployment: &DeploymentRow,
    ) -> anyhow::Result<DeploymentSecrets> {
        Ok(serde_json::from_slice(&self.secret_box.open(&deployment.secrets)?)?)
    }

    /// The agents of a deployment's machines, each reached at its public address (else its
    /// private one) on its own port (else the deployment's), trusted through the deployment's
    /// pinned certificate and token. Commands, the health checker and the run worker's readiness
    /// gate all reach machines through this.
    pub(crate) fn agent_targets(
        &self,
        deployment: &DeploymentRow,
        machines: &[NewMachine],
    ) -> anyhow::Result<Vec<AgentTarget>> {
        let token = self.open_secrets(deployment)?.agent_token;
        let credentials = Arc::new(AgentCredentials::new(&deployment.tls_cert, token.into())?);
        let default_port = deployment
            .backend_variables
            .0
            .get("agent_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(DEFAULT_AGENT_PORT);
        Ok(machines
            .iter()
            .map(|machine| AgentTarget {
                name: machine.name.clone(),
                host: machine
                    .public_ip
                    .clone()
                    .or_else(|| machine.private_ip.clone())
                    .unwrap_or_default(),
                port: machine.agent_port.unwrap_or(default_port),
                credentials: credentials.clone(),
            })
            .collect())
    }

    /// The variables of a run: plain ones for `terraform.tfvars.json`, secrets as `TF_VAR_*`.
    /// Only variables the module declares are passed.
    pub(crate) fn run_inputs(
        &self,
        module: &Module,
        deployment: &DeploymentRow,
        secrets: &DeploymentSecrets,
    ) -> (Map<String, Value>, Vec<(String, SecretString)>) {
        let mut plain = deployment.variables.0.clone();
        for (name, value) in &deployment.backend_variables.0 {
            plain.insert(name.clone(), value.clone());
        }
        plain.insert("deployment_id".into(), json!(deployment.id.to_string()));
        // New machines get the agent this backend serves now; without one (NIM_PUBLIC_URL unset
        // since), the values stored at provision time keep destroy and re-plan working. Modules
        // ignore later changes of the bootstrap, so running machines are never replaced for it.
        if let Ok(download) = self.agent_download(module) {
            plain.insert("agent_download_url".into(), json!(download.url));
            plain.insert("agent_sha256".into(), json!(download.sha256));
        }
        plain.retain(|name, _| module.variables.contains_key(name));

        let mut env = vec![
            ("TF_VAR_agent_token".to_owned(), SecretString::from(secrets.agent_token.clone())),
            ("TF_VAR_agent_tls_cert".to_owned(), SecretString::from(deployment.tls_cert.clone())),
            ("TF_VAR_agent_tls_key".to_owned(), SecretString::from(secrets.agent_tls_key.clone())),
        ];
        env.extend(
            self.terraform.as_ref().map(|t| t.credentials_for(&module.name)).unwrap_or_default(),
        );
        for (name, value) in &secrets.variables {
            // Strings are taken literally; other types are parsed as HCL, of which JSON is a subset.
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            env.push((format!("TF_VAR_{name}"), SecretString::from(text)));
        }
        (plain, env)
    }

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
    fn agent_download(&self, module: &Module) -> Result<AgentDownload, String> {
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

    /// Refuses a local provision that cannot run here, or that would take the owner past their
    /// machine limit. Call with `local_limit_lock` held until the deployment is stored.
    async fn check_local(
        &self,
        owner_id: Uuid,
        module: &Module,
        plain: &Map<String, Value>,
    ) -> Result<(), DeploymentError> {
        self.require_local(module)?;
        let wanted = local_machine_count(module, plain)?;
        let mut held = 0;
        for deployment in self.store.live_deployments_of(owner_id, &module.name).await? {
            held += module.machine_count(&deployment.variables.0).unwrap_or(1);
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
        let cert = mint_deployment_cert(&id.to_string()).map_err(anyhow::Error::from)?;
        let (sensitive, plain): (Map<String, Value>, Map<String, Value>) =
            request.variables.into_iter().partition(|(name, _)| module.variables[name].sensitive);
        let secrets = DeploymentSecrets {
            agent_token: new_agent_token(),
            agent_tls_key: cert.key_pem.expose_secret().to_owned(),
            variables: sensitive,
        };
        let _limit = match is_sandboxed(module) {
            true => {
                let guard = self.local_limit_lock.lock().await;
                self.check_local(owner_id, module, &plain).await?;
                Some(guard)
            }
            false => None,
        };
        let backend_variables = self.backend_variables(module, id, true).await?;
        let now = crate::domain::now();
        let deployment = DeploymentRow {
            id,
            owner_id,
            name: request.name,
            provider: request.provider,
            status: DeploymentStatus::Pending,
            status_reason: None,
            variables: Json(plain),
            backend_variables: Json(backend_variables),
            secrets: self
                .secret_box
                .seal(&serde_json::to_vec(&secrets).map_err(anyhow::Error::from)?),
            tls_cert: cert.cert_pem,
            idempotency_key: idempotency_key.clone(),
            request_hash: Some(request_hash.clone()),
            created_at: now,
            updated_at: now,
        };
        let run = RunRow::queued(id, RunKind::Apply, 0, now);
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
        let terraform = self.terraform()?;
        let (workspace, _guard) = Workspace::temporary(&self.data_dir, &module.name)?;
        workspace.ensure_modules(self.catalog.root())?;

        let id = Uuid::now_v7();
        let cert = mint_deployment_cert(&id.to_string()).map_err(anyhow::Error::from)?;
        let (sensitive, plain): (Map<String, Value>, Map<String, Value>) =
            request.variables.into_iter().partition(|(name, _)| module.variables[name].sensitive);
        if is_sandboxed(module) {
            self.require_local(module)?;
            local_machine_count(module, &plain)?;
        }
        let backend_variables = self.backend_variables(module, id, false).await?;
        let deployment = DeploymentRow {
            id,
            owner_id: Uuid::nil(),
            name: request.name,
            provider: request.provider,
            status: DeploymentStatus::Pending,
            status_reason: None,
            variables: Json(plain),
            backend_variables: Json(backend_variables),
            secrets: Vec::new(),
            tls_cert: cert.cert_pem,
            idempotency_key: None,
            request_hash: None,
            created_at: crate::domain::now(),
            updated_at: crate::domain::now(),
        };
        let secrets = DeploymentSecrets {
            agent_token: new_agent_token(),
            agent_tls_key: cert.key_pem.expose_secret().to_owned(),
            variables: sensitive,
        };
        let (plain, env) = self.run_inputs(module, &deployment, &secrets);
        workspace.write_variables(&plain)?;

        let stop = StopSignals { cancel: Default::default(), deadline, grace: self.cancel_grace };
        let (sink, mut messages) = mpsc::unbounded_channel();
        let init = {
            let permit = self.plugin_cache.before_init(&workspace.module_dir).await?;
            let init =
                terraform.run(&workspace.module_dir, &init_args(), &env, &stop, &sink).await?;
            if init == Exit::Succeeded {
                permit.succeeded(&workspace.module_dir);
            }
            init
        };
        if let Exit::Failed { summary, .. } = init {
            return Err(DeploymentError::PlanFailed(summary));
        }
        while messages.try_recv().is_ok() {}
        let plan = terraform
            .run(
                &workspace.module_dir,
                &["plan".into(), "-json".into(), "-input=false".into()],
                &env,
                &stop,
                &sink,
            )
            .await?;
        drop(sink);
        let mut summary = PlanSummary { add: 0, change: 0, destroy: 0, resources: Vec::new() };
        while let Some(message) = messages.recv().await {
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
        match plan {
            Exit::Succeeded => Ok(summary),
            Exit::Failed { summary, .. } => Err(DeploymentError::PlanFailed(summary)),
            Exit::Cancelled | Exit::TimedOut => {
                Err(DeploymentError::PlanFailed("the plan took too long and was stopped".into()))
            }
        }
    }

    /// A deployment of the owner (another owner's is `NotFound`).
    pub async fn deployment(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<DeploymentRow, DeploymentError> {
        self.store.find_deployment(owner_id, id).await?.ok_or(DeploymentError::NotFound)
    }

    pub async fn list(
        &self,
        owner_id: Uuid,
        query: &DeploymentQuery,
    ) -> Result<Vec<DeploymentSummary>, DeploymentError> {
        Ok(self.store.list_deployments(owner_id, query).await?)
    }

    /// A deployment of the owner with its machines and latest run (another owner's is
    /// `NotFound`), read in one statement.
    pub async fn detail(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<DeploymentDetail, DeploymentError> {
        self.store.deployment_detail(owner_id, id).await?.ok_or(DeploymentError::NotFound)
    }

    /// Queues the destroy of a deployment.
    #[tracing::instrument(skip_all, fields(deployment_id = %id))]
    pub async fn destroy(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<(DeploymentRow, RunRow), DeploymentError> {
        let deployment = self.deployment(owner_id, id).await?;
        let now = crate::domain::now();
        let run = RunRow::queued(id, RunKind::Destroy, 0, now);
        match self.store.queue_destroy(&run, now).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(DeploymentError::Conflict(format!(
                    "the deployment is {}; it cannot be destroyed now",
                    deployment.status()
                )));
            }
            Err(StoreError::Conflict("runs_one_active_per_deployment")) => {
                return Err(DeploymentError::Conflict(
                    "another run of this deployment is queued or running; cancel it or wait for it to finish".into(),
                ));
            }
            Err(err) => return Err(err.into()),
        }
        self.work_queued.notify_one();
        let deployment = self.deployment(owner_id, id).await?;
        Ok((deployment, run))
    }

    pub async fn runs(
        &self,
        owner_id: Uuid,
        id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<RunRow>, DeploymentError> {
        self.deployment(owner_id, id).await?;
        Ok(self.store.list_runs(id, before, limit).await?)
    }

    pub async fn run(
        &self,
        owner_id: Uuid,
        id: Uuid,
        run_id: Uuid,
    ) -> Result<(RunRow, Vec<RunEventRow>), DeploymentError> {
        self.deployment(owner_id, id).await?;
        let run = self.store.find_run(id, run_id).await?.ok_or(DeploymentError::NotFound)?;
        let events = self.store.run_events(run_id).await?;
        Ok((run, events))
    }

    /// Asks a queued or running run to stop.
    pub async fn cancel(
        &self,
        owner_id: Uuid,
        id: Uuid,
        run_id: Uuid,
    ) -> Result<RunRow, DeploymentError> {
        self.deployment(owner_id, id).await?;
        if let Some(run) = self.store.request_cancel(id, run_id, crate::domain::now()).await? {
            return Ok(run);
        }
        let run = self.store.find_run(id, run_id).await?.ok_or(DeploymentError::NotFound)?;
        Err(DeploymentError::Conflict(format!(
            "the run is already {}; only queued or running runs can be cancelled",
            run.status
        )))
    }
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

/// The database URL as Terraform's `pg` backend (lib/pq) needs it: lib/pq requires TLS unless told
/// otherwise, so a URL without `sslmode` gets `disable` for a loopback host and `require` for any
/// other (set `sslmode` in `DATABASE_URL` to choose).
fn terraform_conn_str(url: &SecretString) -> SecretString {
    let url = url.expose_secret();
    if url.contains("sslmode=") {
        return SecretString::from(url.to_owned());
    }
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_part = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host = host_part.rsplit('@').next().unwrap_or_default();
    let loopback = ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| host.starts_with(h));
    let mode = if loopback { "disable" } else { "require" };
    let separator = if url.contains('?') { '&' } else { '?' };
    SecretString::from(format!("{url}{separator}sslmode={mode}"))
}

/// `terraform init` arguments.
pub(crate) fn init_args() -> Vec<String> {
    vec!["init".into(), "-input=false".into(), "-lock-timeout=120s".into(), "-no-color".into()]
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

    #[test]
    fn terraform_gets_an_explicit_sslmode() {
        let conn = |url: &str| {
            terraform_conn_str(&SecretString::from(url.to_owned())).expose_secret().to_owned()
        };
        assert_eq!(
            conn("postgres://u@127.0.0.1:5432/db"),
            "postgres://u@127.0.0.1:5432/db?sslmode=disable"
        );
        assert_eq!(
            conn("postgres://u:p@db.example.co:5432/db?x=1"),
            "postgres://u:p@db.example.co:5432/db?x=1&sslmode=require"
        );
        assert_eq!(
            conn("postgres://u@localhost/db?sslmode=verify-full"),
            "postgres://u@localhost/db?sslmode=verify-full"
        );
    }
}
