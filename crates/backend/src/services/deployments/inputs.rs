//! What runs, commands and health checks need of a deployment: its agents (`agent_targets`, the
//! one place that turns machines into pinned `AgentTarget`s) and, for a run, its module, its
//! prepared workspace and its variables (plain ones to `terraform.tfvars.json`, secrets as
//! `TF_VAR_*`). Also what a run leaves behind: the machines it stored.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{DEFAULT_AGENT_PORT, DeploymentSecrets, DeploymentService, is_sandboxed};
use crate::{
    services::{
        cloud_client::{AgentCredentials, AgentTarget},
        terraform::{Module, Workspace, runner::reap_orphan},
    },
    store::{DeploymentRow, NewMachine},
};

/// A deployment's workspace, ready for Terraform.
pub(crate) struct RunInputs {
    pub(crate) module: Module,
    pub(crate) workspace: Workspace,
    /// Secrets and cloud credentials, as Terraform's environment.
    pub(crate) env: Vec<(String, SecretString)>,
}

impl DeploymentService {
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

    /// The deployment a run belongs to (whoever owns it).
    pub(crate) async fn of_run(&self, deployment_id: Uuid) -> anyhow::Result<DeploymentRow> {
        self.store
            .deployment(deployment_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("deployment {deployment_id} no longer exists"))
    }

    /// The deployment's workspace (whether or not it exists yet).
    pub(crate) fn workspace(&self, deployment: &DeploymentRow) -> Workspace {
        Workspace::for_deployment(&self.data_dir, deployment.id, &deployment.provider)
    }

    /// Prepares a run: the module copy in the deployment's workspace (a Terraform a dead backend
    /// left there reaped), its variables written, its environment.
    pub(crate) fn prepare_run(&self, deployment: &DeploymentRow) -> anyhow::Result<RunInputs> {
        let module = self
            .catalog
            .get(&deployment.provider)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "module \"{}\" is no longer in the modules folder",
                    deployment.provider
                )
            })?
            .clone();
        let secrets = self.open_secrets(deployment)?;
        let workspace = self.workspace(deployment);
        workspace.ensure_modules(self.catalog.root())?;
        reap_orphan(&workspace.module_dir);
        let (plain, env) = self.run_inputs(&module, deployment, &secrets);
        workspace.write_variables(&plain)?;
        Ok(RunInputs { module, workspace, env })
    }

    /// Stores the machines an apply output: kept ones keep their rows, gone ones go, new ones
    /// and those in `renewed` (replaced) start over.
    pub(crate) async fn store_machines(
        &self,
        deployment_id: Uuid,
        machines: &[NewMachine],
        renewed: &[String],
    ) -> anyhow::Result<()> {
        let now = crate::domain::now();
        Ok(self.store.sync_machines(deployment_id, machines, renewed, now).await?)
    }

    /// After a destroy: no machines, and a local deployment's network released (the module's
    /// destroy removed it; this catches what it could not).
    pub(crate) async fn destroyed(
        &self,
        deployment_id: Uuid,
        module: &Module,
    ) -> anyhow::Result<()> {
        self.store_machines(deployment_id, &[], &[]).await?;
        if is_sandboxed(module) {
            if let Err(err) = self.local.release(deployment_id).await {
                tracing::warn!(error = format!("{err:#}"), "failed to release the local network");
            }
        }
        Ok(())
    }

    /// The variables of a run: plain ones for `terraform.tfvars.json`, secrets as `TF_VAR_*`.
    /// Only variables the module declares are passed.
    pub(super) fn run_inputs(
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
        env.extend(self.terraform.credentials_for(&module.name));
        for (name, value) in &secrets.variables {
            // Strings are taken literally; other types are parsed as HCL, of which JSON is a subset.
            let text = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            env.push((format!("TF_VAR_{name}"), SecretString::from(text)));
        }
        (plain, env)
    }
}
