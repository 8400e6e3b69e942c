//! The plan's `DeploymentService`: it owns deployments and their machines. Every read of a
//! deployment on behalf of a user goes through its one owner-scoped lookup (`deployment`), which
//! produces every "no such deployment" (another owner's deployment is not found, never
//! forbidden); creating (`provision.rs`), changing (`update.rs`: update, scale, replace, retry),
//! destroying and cancelling queue runs through the
//! store's conditional updates; `agent_targets` is the one way to the machines' agents; and the
//! run worker asks it for what a run of a deployment needs (`inputs.rs`).

mod inputs;
mod provision;
mod update;

use std::{path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use uuid::Uuid;
use wire::FieldError;

pub use self::provision::ProvisionRequest;
pub(crate) use self::provision::is_sandboxed;
use super::{
    agent_download::AgentDistribution,
    events::EventFeed,
    local_machines::LocalMachines,
    terraform::{ModuleCatalog, TerraformService},
};
use crate::{
    domain::RunKind,
    secrets::SecretBox,
    store::{
        DeploymentDetail, DeploymentQuery, DeploymentRow, DeploymentSummary, MachineRow,
        RunEventRow, RunRow, Store, StoreError,
    },
};

/// The port agents listen on in cloud modules.
pub const DEFAULT_AGENT_PORT: u16 = 7070;

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("invalid input")]
    Validation(Vec<FieldError>),
    #[error("no such deployment")]
    NotFound,
    #[error("the deployment has no machine \"{0}\"")]
    MachineNotFound(String),
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

/// The sealed part of a deployment.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct DeploymentSecrets {
    pub(crate) agent_token: String,
    pub(crate) agent_tls_key: String,
    /// The caller's variables declared `sensitive`.
    pub(crate) variables: Map<String, Value>,
}

/// What the deployment service is built from.
pub struct DeploymentDeps {
    pub store: Store,
    pub catalog: ModuleCatalog,
    pub terraform: Arc<TerraformService>,
    pub secret_box: SecretBox,
    /// Holds the deployments' workspaces.
    pub data_dir: PathBuf,
    /// The agent binary cloud machines download, and from where.
    pub agent_distribution: AgentDistribution,
    /// Local machines on this host: their settings, and whether the host can run them.
    pub local: LocalMachines,
}

/// The plan's `DeploymentService`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeploymentService {
    store: Store,
    catalog: Arc<ModuleCatalog>,
    terraform: Arc<TerraformService>,
    secret_box: SecretBox,
    data_dir: PathBuf,
    agent_distribution: Arc<AgentDistribution>,
    local: Arc<LocalMachines>,
    /// Wakes the run worker when a run is queued.
    work_queued: Arc<Notify>,
    /// Wakes the health checker when a deployment became ready, so its machines' health and
    /// facts show at once rather than at the next interval.
    machines_ready: Arc<Notify>,
    /// Held while a local provision checks the owner's machine limit and creates the
    /// deployment, so two requests of one owner cannot both take the last machines.
    local_limit_lock: Arc<tokio::sync::Mutex<()>>,
}

impl DeploymentService {
    pub fn new(deps: DeploymentDeps) -> Self {
        Self {
            store: deps.store,
            catalog: Arc::new(deps.catalog),
            terraform: deps.terraform,
            secret_box: deps.secret_box,
            data_dir: deps.data_dir,
            agent_distribution: Arc::new(deps.agent_distribution),
            local: Arc::new(deps.local),
            work_queued: Arc::default(),
            machines_ready: Arc::default(),
            local_limit_lock: Arc::default(),
        }
    }

    /// The store, for the services that own the other tables (runs, commands, health).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The provider modules.
    pub fn catalog(&self) -> &ModuleCatalog {
        &self.catalog
    }

    /// The agent binary this server serves.
    pub fn agent_distribution(&self) -> &AgentDistribution {
        &self.agent_distribution
    }

    /// Notified when a run is queued (the run worker waits on it).
    pub(crate) fn work_queued(&self) -> &Notify {
        &self.work_queued
    }

    /// Notified when a deployment became ready (the health checker waits on it).
    pub(crate) fn machines_ready(&self) -> &Notify {
        &self.machines_ready
    }

    /// A deployment of the owner: the one lookup behind every "no such deployment" a user sees
    /// (another owner's is `NotFound` too).
    pub async fn deployment(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> Result<DeploymentRow, DeploymentError> {
        self.store.find_deployment(owner_id, id).await?.ok_or(DeploymentError::NotFound)
    }

    /// The machines of a deployment, in name order.
    pub(crate) async fn machines(
        &self,
        deployment_id: Uuid,
    ) -> Result<Vec<MachineRow>, StoreError> {
        self.store.list_machines(deployment_id).await
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

    /// The owner's deployment's event feed; `EventFeed::follow` starts reading it.
    pub async fn events(&self, owner_id: Uuid, id: Uuid) -> Result<EventFeed, DeploymentError> {
        self.deployment(owner_id, id).await?;
        Ok(EventFeed::new(self.store.clone(), id))
    }
}
