//! The plan's `TerraformService`: everything about running Terraform for a deployment. Which
//! commands a run is made of (init, the Postgres state workspace, plan, apply) and their
//! arguments, the `pg` backend (its override file, its connection string, one named state per
//! deployment), retries, the shared plugin cache and the cluster-wide setup lock, and the one step
//! runner that apply, destroy and dry run share.

use std::{path::Path, sync::Arc, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Exit, PluginCache, StopSignals, Terraform, ui::UiMessage, write_private};
use crate::store::Store;

/// Where Terraform's `pg` backend keeps state: its own schema beside ours.
pub const TERRAFORM_STATE_SCHEMA: &str = "nim_terraform";
/// The override file that switches a workspace to the `pg` backend.
pub const PG_BACKEND_OVERRIDE: &str = "nim_backend_override.tf";
/// The `pg` backend's settings for `init` (deleted once it ran).
pub const PG_BACKEND_CONFIG: &str = "nim_pg.tfbackend";

/// Advisory lock key serialising `terraform init` and state-workspace creation across replicas
/// ("nim-tfin").
const TERRAFORM_SETUP_LOCK: i64 = 0x6e69_6d2d_7466_696e;

/// Pauses between tries of a retried step: about 50 s in all.
const RETRY_DELAYS_MS: [u64; 9] = [250, 500, 1_000, 2_000, 4_000, 8_000, 8_000, 8_000, 16_000];

/// What a run's Terraform commands do to the deployment's resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Create or update what the module declares, destroying and creating again the resources
    /// at the addresses in `replace` (`terraform plan -replace=…`).
    Apply { replace: Vec<String> },
    /// Remove everything the state holds.
    Destroy,
}

/// One Terraform command of a run.
#[derive(Debug, Clone)]
pub struct Step {
    /// `init`, `workspace`, `plan` or `apply`: named in the log and in failure reasons.
    pub name: &'static str,
    pub args: Vec<String>,
    /// Idempotent and racing other replicas: a failure is tried again (`RETRY_DELAYS_MS`).
    retry: bool,
    /// Not safe to run at once across replicas: taken under the cluster-wide setup lock.
    cluster_lock: bool,
}

/// What the step runner tells its caller as it goes.
#[derive(Debug)]
pub enum StepEvent {
    /// A step starts.
    Started(&'static str),
    /// One line of Terraform's JSON UI.
    Ui(Box<UiMessage>),
    /// A note of our own (a retried step's failure).
    Note(String),
}

/// How a list of steps ended.
#[derive(Debug)]
pub enum StepsEnd {
    /// Every step succeeded; `outputs` is the last `outputs` message printed (an apply's).
    Succeeded { outputs: Option<Value> },
    /// `step` did not succeed.
    Stopped { step: &'static str, exit: Exit },
}

/// The Terraform CLI, when found, with what every run of this backend shares. Cheap to share.
#[derive(Debug, Clone)]
pub struct TerraformService {
    terraform: Result<Terraform, String>,
    /// Taken around every `terraform init`: alone while an init may write the shared plugin
    /// cache, beside others once its providers are cached (plan and apply only read it).
    plugin_cache: Arc<PluginCache>,
    /// With Postgres, Terraform state lives in it too (Terraform's `pg` backend): the connection
    /// string for Terraform, so any replica can run any deployment's next run.
    state_database: Option<SecretString>,
    /// For the cluster-wide advisory lock (a no-op on SQLite).
    store: Store,
    /// How long Terraform gets after SIGINT before its group is SIGKILLed.
    cancel_grace: Duration,
}

impl TerraformService {
    /// `terraform` is the discovered CLI or why there is none; `state_database` the Postgres URL
    /// when state lives there.
    pub fn new(
        terraform: Result<Terraform, String>,
        state_database: Option<SecretString>,
        store: Store,
        cancel_grace: Duration,
    ) -> Self {
        Self { terraform, plugin_cache: Arc::default(), state_database, store, cancel_grace }
    }

    /// The CLI, or why it is unavailable.
    pub fn cli(&self) -> Result<&Terraform, &str> {
        self.terraform.as_ref().map_err(String::as_str)
    }

    /// The cloud credential variables a module's runs get (none without a CLI).
    pub fn credentials_for(&self, module: &str) -> Vec<(String, SecretString)> {
        self.terraform.as_ref().map(|t| t.credentials_for(module)).unwrap_or_default()
    }

    /// Stop signals for a run: `cancel`, `deadline`, and this backend's grace period.
    pub fn stop_signals(
        &self,
        cancel: tokio_util::sync::CancellationToken,
        deadline: tokio::time::Instant,
    ) -> StopSignals {
        StopSignals { cancel, deadline, grace: self.cancel_grace }
    }

    /// The Terraform workspace (state) name of a deployment in the `pg` backend.
    pub fn state_workspace(deployment_id: Uuid) -> String {
        format!("d-{deployment_id}")
    }

    /// With Postgres state, the `pg` backend's settings as a `-backend-config` file's text. They
    /// reach Terraform through `init` only (which keeps them in the workspace's `.terraform`,
    /// mode 0700), never through the environment, so no `local-exec` child of a later plan or
    /// apply (and nothing a local machine runs) ever holds the database password.
    fn state_backend_config(&self) -> Option<SecretString> {
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

    /// The steps of a run in the deployment's workspace `dir`: init (with Postgres state: the
    /// `pg` backend, then the deployment's named state), plan to a file, apply that file. Writes
    /// (or removes) the backend override and settings files `init` reads.
    pub fn run_steps(
        &self,
        dir: &Path,
        deployment_id: Uuid,
        plan: &Plan,
    ) -> anyhow::Result<Vec<Step>> {
        let override_file = dir.join(PG_BACKEND_OVERRIDE);
        let mut init = init_args();
        if let Some(config) = self.state_backend_config() {
            // State in Postgres: any replica can run this deployment's next run.
            std::fs::write(&override_file, "terraform {\n  backend \"pg\" {}\n}\n")?;
            write_private(&dir.join(PG_BACKEND_CONFIG), config.expose_secret().as_bytes())?;
            init.push(format!("-backend-config={PG_BACKEND_CONFIG}"));
        } else {
            let _ = std::fs::remove_file(&override_file);
        }
        let mut steps = vec![Step { name: "init", args: init, retry: false, cluster_lock: true }];
        if self.state_database.is_some() {
            // One named state per deployment, created up front: the `default` workspace would
            // hold the pg backend's global creation lock for a whole first apply. Creating the
            // state takes that lock with a single try and no `-lock-timeout`, and every other
            // deployment's plan and apply hold it for an instant, so a failure is retried (the
            // command is idempotent).
            let name = Self::state_workspace(deployment_id);
            let args = ["workspace", "select", "-or-create=true", "-no-color", name.as_str()];
            steps.push(Step {
                name: "workspace",
                args: args.map(str::to_owned).to_vec(),
                retry: true,
                cluster_lock: true,
            });
        }
        let mut plan_args = strings(&["plan", "-json", "-input=false", "-lock-timeout=120s"]);
        plan_args.push("-out=tfplan".into());
        match plan {
            Plan::Destroy => plan_args.push("-destroy".into()),
            Plan::Apply { replace } => {
                plan_args.extend(replace.iter().map(|address| format!("-replace={address}")))
            }
        }
        let apply = strings(&["apply", "-json", "-input=false", "-lock-timeout=120s", "tfplan"]);
        steps.push(Step { name: "plan", args: plan_args, retry: false, cluster_lock: false });
        steps.push(Step { name: "apply", args: apply, retry: false, cluster_lock: false });
        Ok(steps)
    }

    /// The steps of a run up to its plan, which is printed, not saved, with the variables of
    /// `var_file` over the workspace's own: what a dry run of a change to an existing deployment
    /// runs in its workspace (its module copy, `.terraform` and state, which the plan locks as a
    /// run's would), leaving its files as they are.
    pub fn preview_steps(
        &self,
        dir: &Path,
        deployment_id: Uuid,
        plan: &Plan,
        var_file: &Path,
    ) -> anyhow::Result<Vec<Step>> {
        let mut steps = self.run_steps(dir, deployment_id, plan)?;
        steps.retain(|step| step.name != "apply");
        for step in steps.iter_mut().filter(|step| step.name == "plan") {
            step.args.retain(|arg| arg != "-out=tfplan");
            step.args.push(format!("-var-file={}", var_file.display()));
        }
        Ok(steps)
    }

    /// The steps of a dry run in a throwaway workspace with local state: init, then a plan that
    /// is printed, not saved.
    pub fn dry_run_steps(&self) -> Vec<Step> {
        vec![
            Step { name: "init", args: init_args(), retry: false, cluster_lock: false },
            Step {
                name: "plan",
                args: strings(&["plan", "-json", "-input=false"]),
                retry: false,
                cluster_lock: false,
            },
        ]
    }

    /// Runs `steps` in `dir` in order until one does not succeed, telling `observe` each step's
    /// start and every message it prints, in order (a step's messages all arrive before the
    /// next step starts).
    pub async fn run(
        &self,
        dir: &Path,
        steps: Vec<Step>,
        env: &[(String, SecretString)],
        stop: &StopSignals,
        observe: &(dyn Fn(StepEvent) + Send + Sync),
    ) -> anyhow::Result<StepsEnd> {
        let terraform = self.cli().map_err(|reason| anyhow::anyhow!("{reason}"))?;
        let runner = Runner { terraform, dir, env, stop, observe };
        let mut outputs = None;
        for step in steps {
            observe(StepEvent::Started(step.name));
            // `init` may fill the shared plugin cache: it runs alone until its provider set is
            // cached, beside other inits after that (`PluginCache`). With Postgres state, `init`
            // creates the state table and `workspace` this deployment's named state: neither is
            // safe to run concurrently across replicas, hence the cluster-wide lock.
            let permit = match step.name {
                "init" => Some(self.plugin_cache.before_init(dir).await?),
                _ => None,
            };
            let cluster = match step.cluster_lock {
                true => self.store.advisory_lock(TERRAFORM_SETUP_LOCK).await?,
                false => None,
            };
            let exit = match step.retry {
                false => runner.run(&step.args).await,
                true => runner.run_with_retries(&step.args).await,
            };
            if let Some(lock) = cluster {
                lock.release().await;
            }
            if step.name == "init" {
                let _ = std::fs::remove_file(dir.join(PG_BACKEND_CONFIG));
            }
            if let (Some(permit), Ok((Exit::Succeeded, _))) = (permit, &exit) {
                permit.succeeded(dir);
            }
            let (exit, printed) = exit?;
            outputs = printed.or(outputs);
            if exit != Exit::Succeeded {
                return Ok(StepsEnd::Stopped { step: step.name, exit });
            }
        }
        Ok(StepsEnd::Succeeded { outputs })
    }

    /// The module's outputs after an apply: those its `-json` stream printed when they include
    /// `machines` (saving another Terraform start and state read), else `terraform output`.
    pub async fn outputs(
        &self,
        dir: &Path,
        env: &[(String, SecretString)],
        printed: Option<Value>,
    ) -> anyhow::Result<Value> {
        match printed.filter(|o| o["machines"].get("value").is_some()) {
            Some(outputs) => Ok(outputs),
            None => {
                let terraform = self.cli().map_err(|reason| anyhow::anyhow!("{reason}"))?;
                terraform.outputs(dir, env).await
            }
        }
    }
}

/// Runs Terraform commands in one workspace, with one environment, stop signals and observer.
struct Runner<'a> {
    terraform: &'a Terraform,
    dir: &'a Path,
    env: &'a [(String, SecretString)],
    stop: &'a StopSignals,
    observe: &'a (dyn Fn(StepEvent) + Send + Sync),
}

impl Runner<'_> {
    /// Runs one Terraform command, passing its messages on before it returns, so a step's log
    /// and progress never mix with the next one's. Also returns the `outputs` it printed.
    async fn run(&self, args: &[String]) -> anyhow::Result<(Exit, Option<Value>)> {
        let (sink, mut messages) = mpsc::unbounded_channel::<UiMessage>();
        let forward = async {
            let mut outputs = None;
            while let Some(mut message) = messages.recv().await {
                if message.kind == "outputs" {
                    outputs = message.outputs.take();
                }
                (self.observe)(StepEvent::Ui(Box::new(message)));
            }
            outputs
        };
        let exit = async {
            let exit = self.terraform.run(self.dir, args, self.env, self.stop, &sink).await;
            drop(sink);
            exit
        };
        let (exit, outputs) = tokio::join!(exit, forward);
        Ok((exit?, outputs))
    }

    /// Runs an idempotent Terraform command until it succeeds, is stopped, or has failed
    /// `RETRY_DELAYS_MS.len() + 1` times. A failed try's output is summarised in the log; the
    /// last try's is logged in full.
    async fn run_with_retries(&self, args: &[String]) -> anyhow::Result<(Exit, Option<Value>)> {
        for delay in RETRY_DELAYS_MS.map(Duration::from_millis) {
            let (sink, mut messages) = mpsc::unbounded_channel::<UiMessage>();
            let exit = self.terraform.run(self.dir, args, self.env, self.stop, &sink).await;
            drop(sink);
            let Ok(Exit::Failed { summary, .. }) = &exit else {
                while let Ok(message) = messages.try_recv() {
                    (self.observe)(StepEvent::Ui(Box::new(message)));
                }
                return Ok((exit?, None));
            };
            (self.observe)(StepEvent::Note(format!(
                "{}; trying again in {delay:?}",
                summary.trim()
            )));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancel.cancelled() => return Ok((Exit::Cancelled, None)),
            }
        }
        self.run(args).await
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|&arg| arg.to_owned()).collect()
}

/// `terraform init` arguments.
fn init_args() -> Vec<String> {
    strings(&["init", "-input=false", "-lock-timeout=120s", "-no-color"])
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

#[cfg(test)]
mod tests {
    use super::*;

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
