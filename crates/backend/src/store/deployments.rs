//! Deployments and their machines.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::{RunRow, Store, StoreError, StoreResult, on_db};
use crate::domain::{DeploymentStatus, Lifecycle, MachineStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub provider: String,
    #[sqlx(try_from = "String")]
    pub status: DeploymentStatus,
    pub status_reason: Option<String>,
    pub variables: Json<serde_json::Map<String, Value>>,
    pub backend_variables: Json<serde_json::Map<String, Value>>,
    pub secrets: Vec<u8>,
    pub tls_cert: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MachineRow {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub name: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub agent_port: Option<i64>,
    #[sqlx(try_from = "String")]
    pub status: MachineStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub info: Option<Json<Value>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its Terraform resource address, from the module's `machines` output.
    pub resource: Option<String>,
}

/// A machine as a module's `machines` output describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    pub name: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub agent_port: Option<u16>,
    pub resource: Option<String>,
}

/// The variables an update writes with its run: the plain ones, and the sealed secrets holding
/// the sensitive ones.
#[derive(Debug, Clone)]
pub struct NewValues {
    pub variables: Json<Map<String, Value>>,
    pub secrets: Vec<u8>,
}

impl DeploymentRow {
    pub fn status(&self) -> DeploymentStatus {
        self.status
    }
}

impl From<&MachineRow> for NewMachine {
    fn from(row: &MachineRow) -> Self {
        Self {
            name: row.name.clone(),
            public_ip: row.public_ip.clone(),
            private_ip: row.private_ip.clone(),
            agent_port: row.agent_port.and_then(|p| u16::try_from(p).ok()),
            resource: row.resource.clone(),
        }
    }
}

const DEPLOYMENT_COLUMNS: &str = "id, owner_id, name, provider, status, status_reason, variables, \
    backend_variables, secrets, tls_cert, idempotency_key, request_hash, created_at, updated_at";

const MACHINE_COLUMNS: &str = "id, deployment_id, name, public_ip, private_ip, agent_port, status, \
    last_seen_at, info, created_at, updated_at, resource";

/// Filter and page of a deployment listing.
#[derive(Debug, Clone, Default)]
pub struct DeploymentQuery {
    pub status: Option<DeploymentStatus>,
    /// Only deployments of this name (names need not be unique).
    pub name: Option<String>,
    /// Only deployments older than this one (the previous page's last id).
    pub before: Option<Uuid>,
    pub limit: u32,
}

impl Store {
    /// Creates a deployment and its first run in one transaction. A reused idempotency key is
    /// `Conflict("deployments_owner_idempotency_key")`.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment.id))]
    pub async fn create_deployment(
        &self,
        deployment: &DeploymentRow,
        run: &RunRow,
    ) -> StoreResult<()> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ))
            .bind(deployment.id)
            .bind(deployment.owner_id)
            .bind(&deployment.name)
            .bind(&deployment.provider)
            .bind(deployment.status.as_str())
            .bind(&deployment.status_reason)
            .bind(&deployment.variables)
            .bind(&deployment.backend_variables)
            .bind(&deployment.secrets)
            .bind(&deployment.tls_cert)
            .bind(&deployment.idempotency_key)
            .bind(&deployment.request_hash)
            .bind(deployment.created_at)
            .bind(deployment.updated_at)
            .execute(&mut *tx)
            .await?;
            super::runs::insert_run_query!(run).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await)
        .map_err(|err| StoreError::classify(err, &["deployments_owner_idempotency_key"]))
    }

    /// A deployment of `owner_id`; another owner's deployment is `None`, exactly like a missing one.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    pub async fn find_deployment(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<DeploymentRow>> {
        let sql =
            format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1 AND owner_id = $2");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(id)
            .bind(owner_id)
            .fetch_optional(pool)
            .await)?)
    }

    /// A deployment whatever its owner, for the run worker.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    pub async fn deployment(&self, id: Uuid) -> StoreResult<Option<DeploymentRow>> {
        let sql = format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql).bind(id).fetch_optional(pool).await)?)
    }

    /// An owner's deployments of a provider that are not destroyed (for per-user limits).
    #[tracing::instrument(level = "debug", skip_all, fields(owner_id = %owner_id))]
    pub async fn live_deployments_of(
        &self,
        owner_id: Uuid,
        provider: &str,
    ) -> StoreResult<Vec<DeploymentRow>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments \
             WHERE owner_id = $1 AND provider = $2 AND status <> 'destroyed'"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(owner_id)
            .bind(provider)
            .fetch_all(pool)
            .await)?)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn find_deployment_by_idempotency_key(
        &self,
        owner_id: Uuid,
        key: &str,
    ) -> StoreResult<Option<DeploymentRow>> {
        let sql = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE owner_id = $1 AND idempotency_key = $2"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(owner_id)
            .bind(key)
            .fetch_optional(pool)
            .await)?)
    }

    /// Moves a deployment to `to` if it is in one of `from`; `false` when it was not (someone
    /// else moved it first). Never read-then-write. A `from` the transition table does not let
    /// move to `to` is refused before anything is written.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id, to = %to))]
    pub async fn transition_deployment(
        &self,
        id: Uuid,
        from: &[DeploymentStatus],
        to: DeploymentStatus,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        DeploymentStatus::check(from, to)?;
        let sql = format!(
            "UPDATE deployments SET status = $1, status_reason = $2, updated_at = $3 \
             WHERE id = $4 AND status IN ({})",
            DeploymentStatus::sql_list(from)
        );
        let done = on_db!(self, |pool| {
            // Owned binds: a borrowed `&str` argument makes the future's `Send` proof fail for
            // callers that spawn it (rustc's higher-ranked lifetime limitation).
            sqlx::query(&sql)
                .bind(to.as_str())
                .bind(reason.map(str::to_owned))
                .bind(now)
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Queues `run` (a destroy) and moves the deployment to `destroying`, in one transaction.
    /// `Ok(false)` when the table does not let its state move to `destroying`; a run already queued or
    /// running is `Conflict("runs_one_active_per_deployment")`.
    pub async fn queue_destroy(&self, run: &RunRow, now: DateTime<Utc>) -> StoreResult<bool> {
        let to = DeploymentStatus::Destroying;
        self.queue_run_and_move(run, &DeploymentStatus::sources(to), to, None, now).await
    }

    /// Queues `run` and moves the deployment from one of `from` to `to` (writing its new
    /// `values`, for an update), in one transaction. `Ok(false)` when the deployment is in none
    /// of `from`; a run already queued or running is `Conflict("runs_one_active_per_deployment")`,
    /// a reused update key `Conflict("runs_deployment_idempotency_key")`; a move the table does
    /// not allow is refused before anything is written.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %run.deployment_id, to = %to))]
    pub async fn queue_run_and_move(
        &self,
        run: &RunRow,
        from: &[DeploymentStatus],
        to: DeploymentStatus,
        values: Option<&NewValues>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        DeploymentStatus::check(from, to)?;
        let sql = format!(
            "UPDATE deployments SET status = $1, status_reason = NULL, updated_at = $2, \
             variables = COALESCE($4, variables), secrets = COALESCE($5, secrets) \
             WHERE id = $3 AND status IN ({})",
            DeploymentStatus::sql_list(from)
        );
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            // The insert comes first: the one-active-run index refuses it while a run is active,
            // before the deployment's status is touched.
            super::runs::insert_run_query!(run).execute(&mut *tx).await?;
            let query = sqlx::query(&sql)
                .bind(to.as_str())
                .bind(now)
                .bind(run.deployment_id)
                .bind(values.map(|v| v.variables.clone()))
                .bind(values.map(|v| v.secrets.clone()));
            if query.execute(&mut *tx).await?.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(|err: sqlx::Error| {
            StoreError::classify(
                err,
                &["runs_one_active_per_deployment", "runs_deployment_idempotency_key"],
            )
        })
    }

    /// Makes a deployment's machines those of its latest Terraform outputs: a machine that
    /// stays keeps its row (health, facts, last seen) with its addresses brought up to date, one
    /// gone is deleted, a new one (or one in `renewed`: replaced, so a new machine of the same
    /// name) starts `unknown`.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment_id, count = machines.len()))]
    pub async fn sync_machines(
        &self,
        deployment_id: Uuid,
        machines: &[NewMachine],
        renewed: &[String],
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            // A write first: SQLite then takes the write lock at once, where a read first would
            // have to upgrade later and fail (SQLITE_BUSY_SNAPSHOT) if another write came in
            // between; Postgres holds the deployment's row, so its syncs run one at a time.
            sqlx::query("UPDATE deployments SET updated_at = updated_at WHERE id = $1")
                .bind(deployment_id)
                .execute(&mut *tx)
                .await?;
            let existing: Vec<(String,)> =
                sqlx::query_as("SELECT name FROM machines WHERE deployment_id = $1")
                    .bind(deployment_id)
                    .fetch_all(&mut *tx)
                    .await?;
            let keep = |name: &str| {
                machines.iter().any(|m| m.name == name) && !renewed.iter().any(|r| r == name)
            };
            for (name,) in existing.iter().filter(|(name,)| !keep(name)) {
                sqlx::query("DELETE FROM machines WHERE deployment_id = $1 AND name = $2")
                    .bind(deployment_id)
                    .bind(name.clone())
                    .execute(&mut *tx)
                    .await?;
            }
            for machine in machines {
                // Owned binds inside the loop: borrowed ones defeat rustc's `Send` proof for
                // spawned callers.
                let kept = keep(&machine.name) && existing.iter().any(|(n,)| *n == machine.name);
                let query = match kept {
                    true => sqlx::query(
                        "UPDATE machines SET public_ip = $3, private_ip = $4, agent_port = $5, \
                         resource = $6, updated_at = $7 WHERE deployment_id = $1 AND name = $2",
                    ),
                    false => sqlx::query(
                        "INSERT INTO machines (deployment_id, name, public_ip, private_ip, \
                         agent_port, resource, created_at, updated_at, id, status) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
                    ),
                };
                let query = query
                    .bind(deployment_id)
                    .bind(machine.name.clone())
                    .bind(machine.public_ip.clone())
                    .bind(machine.private_ip.clone())
                    .bind(machine.agent_port.map(i64::from))
                    .bind(machine.resource.clone())
                    .bind(now);
                match kept {
                    true => query.execute(&mut *tx).await?,
                    false => {
                        query
                            .bind(Uuid::now_v7())
                            .bind(MachineStatus::Unknown.as_str())
                            .execute(&mut *tx)
                            .await?
                    }
                };
            }
            tx.commit().await
        }
        .await)
        .map_err(|err| StoreError::classify(err, &["machines_deployment_name_key"]))
    }

    /// The machine of a deployment with this name.
    pub async fn find_machine(
        &self,
        deployment_id: Uuid,
        name: &str,
    ) -> StoreResult<Option<MachineRow>> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE deployment_id = $1 AND name = $2"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(deployment_id)
            .bind(name)
            .fetch_optional(pool)
            .await)?)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment_id))]
    pub async fn list_machines(&self, deployment_id: Uuid) -> StoreResult<Vec<MachineRow>> {
        let sql = format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE deployment_id = $1 ORDER BY name"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql).bind(deployment_id).fetch_all(pool).await)?)
    }

    /// Every ready deployment and the machines of each, for the health checker (two queries
    /// whatever the number of deployments).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn ready_deployments_with_machines(
        &self,
    ) -> StoreResult<Vec<(DeploymentRow, Vec<MachineRow>)>> {
        let deployments = format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE status = 'ready' ORDER BY id"
        );
        let machines = format!(
            "SELECT {} FROM machines m JOIN deployments d ON d.id = m.deployment_id \
             WHERE d.status = 'ready' ORDER BY m.deployment_id, m.name",
            MACHINE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
        );
        let (deployments, machines): (Vec<DeploymentRow>, Vec<MachineRow>) =
            on_db!(self, |pool| {
                let deployments = sqlx::query_as(&deployments).fetch_all(pool).await?;
                let machines = sqlx::query_as(&machines).fetch_all(pool).await?;
                Ok::<_, sqlx::Error>((deployments, machines))
            })?;
        let mut grouped: std::collections::HashMap<Uuid, Vec<MachineRow>> =
            std::collections::HashMap::new();
        for machine in machines {
            grouped.entry(machine.deployment_id).or_default().push(machine);
        }
        Ok(deployments
            .into_iter()
            .map(|d| {
                let machines = grouped.remove(&d.id).unwrap_or_default();
                (d, machines)
            })
            .collect())
    }

    /// Records what the health checker saw of a machine.
    #[tracing::instrument(level = "debug", skip_all, fields(machine_id = %id))]
    pub async fn record_machine_health(
        &self,
        id: Uuid,
        status: MachineStatus,
        info: Option<&Value>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let seen = (status == MachineStatus::Healthy).then_some(now);
        on_db!(self, |pool| {
            sqlx::query(
                "UPDATE machines SET status = $1, last_seen_at = COALESCE($2, last_seen_at), \
                 info = COALESCE($3, info), updated_at = $4 WHERE id = $5",
            )
            .bind(status.as_str())
            .bind(seen)
            .bind(info.map(Json))
            .bind(now)
            .bind(id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(())
    }
}
