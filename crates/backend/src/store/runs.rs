//! Terraform runs: the queue the worker claims from, leases, cancellation, and the event log.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, on_db};
use wire::deployments::{ReplaceTarget, RunInputs};

use crate::domain::{DeploymentStatus, Lifecycle, RunKind, RunStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub deployment_id: Uuid,
    #[sqlx(try_from = "String")]
    pub kind: RunKind,
    #[sqlx(try_from = "String")]
    pub status: RunStatus,
    pub attempt: i64,
    pub error: Option<String>,
    pub progress_done: i64,
    pub progress_total: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// What an applying run applies (`None` for a destroy).
    pub inputs: Option<Json<RunInputs>>,
    /// An update's `Idempotency-Key` and the hash of its request; written with the run, never
    /// read back with it.
    #[sqlx(skip)]
    pub idempotency: Option<(String, Vec<u8>)>,
}

impl RunRow {
    /// A new queued run.
    pub fn queued(deployment_id: Uuid, kind: RunKind, attempt: i64, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            deployment_id,
            kind,
            status: RunStatus::Queued,
            attempt,
            error: None,
            progress_done: 0,
            progress_total: 0,
            lease_owner: None,
            lease_expires_at: None,
            cancel_requested_at: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            inputs: None,
            idempotency: None,
        }
    }

    /// A new queued run that applies `inputs`.
    pub fn applying(
        deployment_id: Uuid,
        kind: RunKind,
        inputs: RunInputs,
        now: DateTime<Utc>,
    ) -> Self {
        Self { inputs: Some(Json(inputs)), ..Self::queued(deployment_id, kind, 0, now) }
    }

    /// The run that takes an interrupted one's place: same kind and inputs, one attempt more
    /// (`attempt` as given: a shutdown re-queues without counting).
    pub fn requeued(&self, attempt: i64, now: DateTime<Utc>) -> Self {
        Self {
            inputs: self.inputs.clone(),
            ..Self::queued(self.deployment_id, self.kind, attempt, now)
        }
    }

    /// The machine a `replace` run replaces.
    pub fn replace_target(&self) -> Option<&ReplaceTarget> {
        self.inputs.as_ref().and_then(|inputs| inputs.0.replace.as_ref())
    }

    pub fn kind(&self) -> RunKind {
        self.kind
    }

    pub fn status(&self) -> RunStatus {
        self.status
    }
}

const RUN_COLUMNS: &str = "id, deployment_id, kind, status, attempt, error, progress_done, \
    progress_total, lease_owner, lease_expires_at, cancel_requested_at, created_at, started_at, finished_at, \
    inputs";

/// One stored event of a run.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunEventRow {
    pub id: i64,
    pub run_id: Uuid,
    pub deployment_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub data: Json<Value>,
}

/// Expands to the INSERT of a run, for any executor of any dialect.
macro_rules! insert_run_query {
    ($run:expr) => {
        sqlx::query(
            "INSERT INTO runs (id, deployment_id, kind, status, attempt, error, progress_done, \
             progress_total, created_at, inputs, idempotency_key, request_hash) \
             VALUES ($1, $2, $3, $4, $5, NULL, 0, 0, $6, $7, $8, $9)",
        )
        .bind($run.id)
        .bind($run.deployment_id)
        .bind($run.kind.as_str())
        .bind($run.status.as_str())
        .bind($run.attempt)
        .bind($run.created_at)
        .bind($run.inputs.clone())
        .bind($run.idempotency.as_ref().map(|(key, _)| key.clone()))
        .bind($run.idempotency.as_ref().map(|(_, hash)| hash.clone()))
    };
}

pub(super) use insert_run_query;

impl Store {
    /// Claims the oldest queued run for `worker`, holding it until `lease_until`. One atomic
    /// conditional UPDATE: two workers can never claim the same run.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim_next_run(
        &self,
        worker: &str,
        lease_until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<RunRow>> {
        // Postgres: SKIP LOCKED lets replicas claim different runs at once instead of queueing
        // on the same row. SQLite has one writer at a time, so the plain subquery is atomic.
        let lock = if self.is_postgres() { " FOR UPDATE SKIP LOCKED" } else { "" };
        RunStatus::check(&[RunStatus::Queued], RunStatus::Running)?;
        let sql = format!(
            "UPDATE runs SET status = 'running', lease_owner = $1, lease_expires_at = $2, started_at = $3 \
             WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1{lock}) \
             AND status = 'queued' RETURNING {RUN_COLUMNS}"
        );
        Ok(on_db!(self, |pool| {
            sqlx::query_as(&sql).bind(worker).bind(lease_until).bind(now).fetch_optional(pool).await
        })?)
    }

    /// Extends the lease of a run this worker holds; `false` if it no longer holds it.
    pub async fn renew_lease(
        &self,
        run_id: Uuid,
        worker: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let done = on_db!(self, |pool| {
            sqlx::query(
                "UPDATE runs SET lease_expires_at = $1 \
                 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
            )
            .bind(until)
            .bind(run_id)
            .bind(worker)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Ends a running run and moves its deployment, in one transaction. `false` if the run was
    /// not running any more (nothing changes then). The deployment moves only from a state the
    /// table lets move to `deployment.0`; from any other the run's end is still recorded (the run
    /// is over whatever its deployment says) and the refusal is logged, since it means some other
    /// writer moved the deployment while the run held it.
    #[tracing::instrument(level = "debug", skip_all, fields(run_id = %run_id, status = %status))]
    pub async fn finish_run(
        &self,
        run_id: Uuid,
        status: RunStatus,
        error: Option<&str>,
        deployment: (DeploymentStatus, Option<&str>),
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        RunStatus::check(&[RunStatus::Running], status)?;
        let (to, reason) = deployment;
        let move_deployment = format!(
            "UPDATE deployments SET status = $1, status_reason = $2, updated_at = $3 \
             WHERE id = $4 AND status IN ({})",
            DeploymentStatus::sql_list(&DeploymentStatus::sources(to))
        );
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let finished: Option<(Uuid,)> = sqlx::query_as(
                "UPDATE runs SET status = $1, error = $2, finished_at = $3, lease_owner = NULL, \
                 lease_expires_at = NULL WHERE id = $4 AND status = 'running' RETURNING deployment_id",
            )
            .bind(status.as_str())
            .bind(error)
            .bind(now)
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((deployment_id,)) = finished else {
                tx.rollback().await?;
                return Ok(false);
            };
            let moved = sqlx::query(&move_deployment)
                .bind(to.as_str())
                .bind(reason)
                .bind(now)
                .bind(deployment_id)
                .execute(&mut *tx)
                .await?;
            if moved.rows_affected() == 0 {
                tracing::warn!(%deployment_id, to = %to, "the run ended but its deployment may not move there from where it is");
            }
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::from(err))
    }

    /// Records progress of a running run.
    pub async fn record_progress(&self, run_id: Uuid, done: i64, total: i64) -> StoreResult<()> {
        on_db!(self, |pool| {
            sqlx::query("UPDATE runs SET progress_done = $1, progress_total = $2 WHERE id = $3")
                .bind(done)
                .bind(total)
                .bind(run_id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(())
    }

    /// Asks a run to stop. A queued run is cancelled on the spot (and its deployment marked
    /// failed, from a state the table lets fail); a running one gets `cancel_requested_at`, which its worker acts on. Returns the
    /// run as it is afterwards, or `None` if it is not active.
    #[tracing::instrument(level = "debug", skip_all, fields(run_id = %run_id))]
    pub async fn request_cancel(
        &self,
        deployment_id: Uuid,
        run_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<RunRow>> {
        RunStatus::check(&[RunStatus::Queued], RunStatus::Cancelled)?;
        let fail_deployment = format!(
            "UPDATE deployments SET status = '{}', status_reason = $1, updated_at = $2 \
             WHERE id = $3 AND status IN ({})",
            DeploymentStatus::Failed,
            DeploymentStatus::sql_list(&DeploymentStatus::sources(DeploymentStatus::Failed))
        );
        let cancel_queued = format!(
            "UPDATE runs SET status = 'cancelled', cancel_requested_at = $1, finished_at = $1, \
             error = 'cancelled before it started' \
             WHERE id = $2 AND deployment_id = $3 AND status = 'queued' RETURNING {RUN_COLUMNS}"
        );
        let flag_running = format!(
            "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $1) \
             WHERE id = $2 AND deployment_id = $3 AND status = 'running' RETURNING {RUN_COLUMNS}"
        );
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let cancelled: Option<RunRow> = sqlx::query_as(&cancel_queued)
                .bind(now)
                .bind(run_id)
                .bind(deployment_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(run) = cancelled {
                sqlx::query(&fail_deployment)
                    .bind(format!("the {} run was cancelled before it started", run.kind))
                    .bind(now)
                    .bind(deployment_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Some(run));
            }
            let flagged: Option<RunRow> = sqlx::query_as(&flag_running)
                .bind(now)
                .bind(run_id)
                .bind(deployment_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(flagged)
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::from(err))
    }

    /// Whether cancellation was requested for a run.
    pub async fn cancel_requested(&self, run_id: Uuid) -> StoreResult<bool> {
        let row: Option<(Option<DateTime<Utc>>,)> = on_db!(self, |pool| {
            sqlx::query_as("SELECT cancel_requested_at FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(pool)
                .await
        })?;
        Ok(matches!(row, Some((Some(_),))))
    }

    /// Running runs whose lease lapsed before `now` (or, with `all_running`, every running run:
    /// at the start of a single embedded process they are all leftovers of a dead one).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn stale_runs(
        &self,
        now: DateTime<Utc>,
        all_running: bool,
        me: Option<&str>,
    ) -> StoreResult<Vec<RunRow>> {
        // `me`: a replica that restarts under the same name knows its own leftovers at once.
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' \
             AND ($1 OR lease_expires_at < $2 OR lease_owner = $3)"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(all_running)
            .bind(now)
            .bind(me)
            .fetch_all(pool)
            .await)?)
    }

    /// Marks a running run interrupted and queues `next` in its place, in one transaction, so a
    /// crash in between cannot leave the deployment without its run. `false` if the run was not
    /// running any more.
    #[tracing::instrument(level = "debug", skip_all, fields(run_id = %run_id))]
    pub async fn requeue_run(
        &self,
        run_id: Uuid,
        reason: &str,
        next: &RunRow,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        RunStatus::check(&[RunStatus::Running], RunStatus::Interrupted)?;
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE runs SET status = 'interrupted', error = $1, finished_at = $2, lease_owner = NULL, \
                 lease_expires_at = NULL WHERE id = $3 AND status = 'running'",
            )
            .bind(reason)
            .bind(now)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_run_query!(next).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::classify(err, &["runs_one_active_per_deployment"]))
    }

    /// Queues a run for a deployment (a re-queue after an interruption).
    pub async fn queue_run(&self, run: &RunRow) -> StoreResult<()> {
        on_db!(self, |pool| insert_run_query!(run).execute(pool).await.map(drop))
            .map_err(|err| StoreError::classify(err, &["runs_one_active_per_deployment"]))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment_id))]
    pub async fn list_runs(
        &self,
        deployment_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<RunRow>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE deployment_id = $1 AND ($2 IS NULL OR id < $2) \
             ORDER BY id DESC LIMIT $3"
        );
        Ok(on_db!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(deployment_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
        })?)
    }

    pub async fn find_run(&self, deployment_id: Uuid, run_id: Uuid) -> StoreResult<Option<RunRow>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1 AND deployment_id = $2");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(run_id)
            .bind(deployment_id)
            .fetch_optional(pool)
            .await)?)
    }

    /// The run of a deployment queued with this `Idempotency-Key`, and its request's hash.
    pub async fn find_run_by_idempotency_key(
        &self,
        deployment_id: Uuid,
        key: &str,
    ) -> StoreResult<Option<(RunRow, Option<Vec<u8>>)>> {
        #[derive(sqlx::FromRow)]
        struct Keyed {
            #[sqlx(flatten)]
            run: RunRow,
            request_hash: Option<Vec<u8>>,
        }
        let sql = format!(
            "SELECT {RUN_COLUMNS}, request_hash FROM runs \
             WHERE deployment_id = $1 AND idempotency_key = $2"
        );
        let keyed: Option<Keyed> = on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(deployment_id)
            .bind(key)
            .fetch_optional(pool)
            .await)?;
        Ok(keyed.map(|keyed| (keyed.run, keyed.request_hash)))
    }

    pub async fn latest_run(&self, deployment_id: Uuid) -> StoreResult<Option<RunRow>> {
        Ok(self.list_runs(deployment_id, None, 1).await?.into_iter().next())
    }

    /// Appends an event to a run's log; returns its id (the deployment-wide SSE event id).
    pub async fn append_event(
        &self,
        run_id: Uuid,
        deployment_id: Uuid,
        kind: &str,
        data: &Value,
        now: DateTime<Utc>,
    ) -> StoreResult<RunEventRow> {
        Ok(on_db!(self, |pool| {
            sqlx::query_as(
                "INSERT INTO run_events (run_id, deployment_id, seq, at, kind, data) \
                 VALUES ($1, $2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM run_events WHERE run_id = $1), $3, $4, $5) \
                 RETURNING id, run_id, deployment_id, seq, at, kind, data",
            )
            .bind(run_id)
            .bind(deployment_id)
            .bind(now)
            .bind(kind)
            .bind(Json(data))
            .fetch_one(pool)
            .await
        })?)
    }

    /// A deployment's events with id above `after`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        deployment_id: Uuid,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<RunEventRow>> {
        Ok(on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT id, run_id, deployment_id, seq, at, kind, data FROM run_events \
                 WHERE deployment_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(deployment_id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
        })?)
    }

    /// The id of the deployment's newest event that is not `run_id`'s (0 when none): a stream
    /// that starts after it begins with `run_id`'s first event, even one not stored yet, because
    /// a later run's events always have higher ids.
    pub async fn last_event_id_before_run(
        &self,
        deployment_id: Uuid,
        run_id: Uuid,
    ) -> StoreResult<i64> {
        let row: Option<(Option<i64>,)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT MAX(id) FROM run_events WHERE deployment_id = $1 AND run_id <> $2",
            )
            .bind(deployment_id)
            .bind(run_id)
            .fetch_optional(pool)
            .await
        })?;
        Ok(row.and_then(|(id,)| id).unwrap_or(0))
    }

    /// A run's whole log, in order.
    pub async fn run_events(&self, run_id: Uuid) -> StoreResult<Vec<RunEventRow>> {
        Ok(on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT id, run_id, deployment_id, seq, at, kind, data FROM run_events \
                 WHERE run_id = $1 ORDER BY seq",
            )
            .bind(run_id)
            .fetch_all(pool)
            .await
        })?)
    }
}
