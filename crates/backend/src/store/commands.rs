//! Commands sent to deployments' machines and their per-machine results.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use super::{Store, StoreError, StoreResult, on_db};
use crate::domain::{CommandStatus, MachineStatus, ResultStatus};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommandRow {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub owner_id: Uuid,
    pub request: Json<Value>,
    #[sqlx(try_from = "String")]
    pub status: CommandStatus,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl CommandRow {
    pub fn status(&self) -> CommandStatus {
        self.status
    }
}

/// One machine's part of a command, as stored.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct CommandResultRow {
    pub command_id: Uuid,
    pub seq: i64,
    pub machine: String,
    pub address: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: ResultStatus,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub truncated: bool,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl CommandResultRow {
    pub fn status(&self) -> ResultStatus {
        self.status
    }
}

/// A result's status, keyed by its command (a page's summaries).
#[derive(sqlx::FromRow)]
struct ResultStatusRow {
    command_id: Uuid,
    #[sqlx(try_from = "String")]
    status: ResultStatus,
}

/// A page of commands, and `(command id, result status)` for every result of those commands.
pub type CommandsPage = (Vec<CommandRow>, Vec<(Uuid, ResultStatus)>);

const COMMAND_COLUMNS: &str =
    "id, deployment_id, owner_id, request, status, cancel_requested_at, created_at, finished_at";

const RESULT_COLUMNS: &str = "command_id, seq, machine, address, status, exit_code, signal, \
    stdout, stderr, truncated, duration_ms, error, started_at, finished_at";

impl Store {
    /// Extends the leases of the commands `runner` is running.
    pub async fn renew_command_leases(
        &self,
        runner: &str,
        until: DateTime<Utc>,
    ) -> StoreResult<u64> {
        Ok(on_db!(self, |pool| {
            sqlx::query(
                "UPDATE commands SET lease_expires_at = $1 WHERE runner = $2 AND status = 'running'",
            )
            .bind(until)
            .bind(runner)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?)
    }

    /// The running commands of `runner` whose cancel was requested, through any replica.
    pub async fn cancel_requested_commands(&self, runner: &str) -> StoreResult<Vec<Uuid>> {
        Ok(on_db!(self, |pool| {
            sqlx::query_scalar(
                "SELECT id FROM commands \
                 WHERE runner = $1 AND status = 'running' AND cancel_requested_at IS NOT NULL",
            )
            .bind(runner)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Stores a new command and one `pending` result per machine, in one transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command.id))]
    pub async fn create_command(
        &self,
        command: &CommandRow,
        results: &[CommandResultRow],
        runner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<()> {
        let runner = runner.to_owned();
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!(
                "INSERT INTO commands ({COMMAND_COLUMNS}, runner, lease_expires_at) \
                 VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL, $7, $8)"
            ))
            .bind(command.id)
            .bind(command.deployment_id)
            .bind(command.owner_id)
            .bind(command.request.clone())
            .bind(command.status.as_str())
            .bind(command.created_at)
            .bind(runner.clone())
            .bind(lease_until)
            .execute(&mut *tx)
            .await?;
            for result in results {
                // Owned binds inside the loop (see `sync_machines`).
                sqlx::query(
                    "INSERT INTO command_results (command_id, seq, machine, address, status) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(command.id)
                .bind(result.seq)
                .bind(result.machine.clone())
                .bind(result.address.clone())
                .bind(result.status.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await)
        .map_err(StoreError::from)
    }

    /// A command of a deployment (the caller has checked the deployment's owner).
    pub async fn find_command(
        &self,
        deployment_id: Uuid,
        command_id: Uuid,
    ) -> StoreResult<Option<CommandRow>> {
        let sql =
            format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE id = $1 AND deployment_id = $2");
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(command_id)
            .bind(deployment_id)
            .fetch_optional(pool)
            .await)?)
    }

    /// A command's results in the order its machines were given.
    pub async fn command_results(&self, command_id: Uuid) -> StoreResult<Vec<CommandResultRow>> {
        let sql = format!(
            "SELECT {RESULT_COLUMNS} FROM command_results WHERE command_id = $1 ORDER BY seq"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql).bind(command_id).fetch_all(pool).await)?)
    }

    /// A page of a deployment's commands, newest first, with every result's status (for their
    /// summaries), without a query per command.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment_id))]
    pub async fn list_commands(
        &self,
        deployment_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<CommandsPage> {
        let page = "SELECT id FROM commands WHERE deployment_id = $1 AND ($2 IS NULL OR id < $2) \
                    ORDER BY id DESC LIMIT $3";
        let commands =
            format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE id IN ({page}) ORDER BY id DESC");
        let statuses =
            format!("SELECT command_id, status FROM command_results WHERE command_id IN ({page})");
        Ok(on_db!(self, |pool| {
            let rows = sqlx::query_as(&commands)
                .bind(deployment_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let statuses: Vec<ResultStatusRow> = sqlx::query_as(&statuses)
                .bind(deployment_id)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let statuses = statuses.into_iter().map(|r| (r.command_id, r.status)).collect();
            Ok::<_, sqlx::Error>((rows, statuses))
        })?)
    }

    /// Marks pending results `running`: the machines a rollout just sent the command to, in one
    /// transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command_id, count = machines.len()))]
    pub async fn start_command_results(
        &self,
        command_id: Uuid,
        machines: Vec<String>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            for machine in machines {
                sqlx::query(
                    "UPDATE command_results SET status = 'running', started_at = $1 \
                     WHERE command_id = $2 AND machine = $3 AND status = 'pending'",
                )
                .bind(now)
                .bind(command_id)
                .bind(machine)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    /// Records how machines' parts ended, unless they already had (never overwrites a final
    /// status), in one transaction; a machine whose agent answered (`succeeded` or `failed`) is
    /// also marked healthy and seen now. A rollout writes its results in batches: whatever
    /// finished while the previous batch was being written.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %deployment_id, count = results.len()))]
    pub async fn finish_command_results(
        &self,
        deployment_id: Uuid,
        results: Vec<CommandResultRow>,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            for result in results {
                let answered =
                    matches!(result.status(), ResultStatus::Succeeded | ResultStatus::Failed);
                let machine = result.machine.clone();
                sqlx::query(
                    "UPDATE command_results SET status = $1, exit_code = $2, signal = $3, \
                     stdout = $4, stderr = $5, truncated = $6, duration_ms = $7, error = $8, \
                     started_at = COALESCE(started_at, $9), finished_at = $10 \
                     WHERE command_id = $11 AND machine = $12 AND status IN ('pending', 'running')",
                )
                .bind(result.status.as_str())
                .bind(result.exit_code)
                .bind(result.signal)
                .bind(result.stdout)
                .bind(result.stderr)
                .bind(result.truncated)
                .bind(result.duration_ms)
                .bind(result.error)
                .bind(result.started_at)
                .bind(result.finished_at)
                .bind(result.command_id)
                .bind(result.machine)
                .execute(&mut *tx)
                .await?;
                if answered {
                    sqlx::query(
                        "UPDATE machines SET status = $1, last_seen_at = $2, updated_at = $2 \
                         WHERE deployment_id = $3 AND name = $4",
                    )
                    .bind(MachineStatus::Healthy.as_str())
                    .bind(now)
                    .bind(deployment_id)
                    .bind(machine)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await
        }
        .await)?;
        Ok(())
    }

    /// Ends a running command: results not finished yet get `leftover` with `error`, then the
    /// command gets `status`, in one transaction. `false` if it was not running any more.
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command_id, status = %status))]
    pub async fn finish_command(
        &self,
        command_id: Uuid,
        status: CommandStatus,
        leftover: (ResultStatus, String),
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE commands SET status = $1, finished_at = $2 WHERE id = $3 AND status = 'running'",
            )
            .bind(status.as_str())
            .bind(now)
            .bind(command_id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "UPDATE command_results SET status = $1, error = $2, finished_at = $3 \
                 WHERE command_id = $4 AND status IN ('pending', 'running')",
            )
            .bind(leftover.0.as_str())
            .bind(leftover.1)
            .bind(now)
            .bind(command_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::from(err))
    }

    /// Flags a running command for cancellation; `None` when it is not running (or not there).
    #[tracing::instrument(level = "debug", skip_all, fields(command_id = %command_id))]
    pub async fn request_command_cancel(
        &self,
        deployment_id: Uuid,
        command_id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CommandRow>> {
        let sql = format!(
            "UPDATE commands SET cancel_requested_at = COALESCE(cancel_requested_at, $1) \
             WHERE id = $2 AND deployment_id = $3 AND status = 'running' RETURNING {COMMAND_COLUMNS}"
        );
        Ok(on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(now)
            .bind(command_id)
            .bind(deployment_id)
            .fetch_optional(pool)
            .await)?)
    }

    /// Marks every running command `interrupted` (and its unfinished results), at the start of
    /// an embedded backend: whatever was running belonged to the process that died. Returns how
    /// many commands it marked.
    #[tracing::instrument(level = "debug", skip_all)]
    /// Marks `interrupted` the running commands whose runner's lease lapsed before `now` (with
    /// `all_running`, every running command: at the start of the one embedded process they are
    /// all leftovers), keeping the results that had arrived.
    pub async fn interrupt_running_commands(
        &self,
        error: &str,
        now: DateTime<Utc>,
        all_running: bool,
        me: Option<&str>,
    ) -> StoreResult<u64> {
        // `me`: a replica that restarts under the same name knows its own leftovers at once.
        let me = me.map(str::to_owned);
        on_db!(self, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE command_results SET status = 'interrupted', error = $1, finished_at = $2 \
                 WHERE status IN ('pending', 'running') \
                 AND command_id IN (SELECT id FROM commands WHERE status = 'running' \
                 AND ($3 OR lease_expires_at < $2 OR runner = $4))",
            )
            .bind(error)
            .bind(now)
            .bind(all_running)
            .bind(me.clone())
            .execute(&mut *tx)
            .await?;
            let done = sqlx::query(
                "UPDATE commands SET status = 'interrupted', finished_at = $1 \
                 WHERE status = 'running' AND ($2 OR lease_expires_at < $1 OR runner = $3)",
            )
            .bind(now)
            .bind(all_running)
            .bind(me.clone())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        }
        .await)
        .map_err(|err: sqlx::Error| StoreError::from(err))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::types::Json;

    use super::*;
    use crate::{
        domain::{DeploymentStatus, RunKind, now},
        store::{
            RunRow,
            testing::{deployment_row, stores},
        },
    };

    async fn deployment(store: &Store) -> Uuid {
        let row = deployment_row(DeploymentStatus::Ready);
        store
            .create_deployment(&row, &RunRow::queued(row.id, RunKind::Apply, 0, row.created_at))
            .await
            .unwrap();
        row.id
    }

    fn command(deployment_id: Uuid) -> CommandRow {
        CommandRow {
            id: Uuid::now_v7(),
            deployment_id,
            owner_id: Uuid::new_v4(),
            request: Json(json!({"argv": ["true"]})),
            status: CommandStatus::Running,
            cancel_requested_at: None,
            created_at: now(),
            finished_at: None,
        }
    }

    #[tokio::test]
    async fn only_commands_whose_runner_stopped_renewing_are_interrupted() {
        for (store, _guard) in stores().await {
            let deployment_id = deployment(&store).await;
            let (live, dead) = (command(deployment_id), command(deployment_id));
            let at = now();
            store
                .create_command(&live, &[], "replica-a", at + chrono::Duration::seconds(60))
                .await
                .unwrap();
            store
                .create_command(&dead, &[], "replica-b", at + chrono::Duration::seconds(1))
                .await
                .unwrap();

            // replica-a renews; replica-b has died, so its lease lapses.
            let later = at + chrono::Duration::seconds(30);
            assert_eq!(
                store
                    .renew_command_leases("replica-a", later + chrono::Duration::seconds(60))
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(
                store
                    .interrupt_running_commands("gone", later, false, Some("replica-c"))
                    .await
                    .unwrap(),
                1
            );
            let status = |id| {
                let store = store.clone();
                async move { store.find_command(deployment_id, id).await.unwrap().unwrap().status }
            };
            assert_eq!(status(dead.id).await, CommandStatus::Interrupted);
            assert_eq!(status(live.id).await, CommandStatus::Running);
            // At the start of a single embedded process everything still running is a leftover.
            assert_eq!(
                store.interrupt_running_commands("gone", later, true, None).await.unwrap(),
                1
            );
            assert_eq!(status(live.id).await, CommandStatus::Interrupted);
        }
    }

    #[tokio::test]
    async fn results_and_commands_change_only_while_unfinished() {
        for (store, _guard) in stores().await {
            let deployment_id = deployment(&store).await;
            let command = command(deployment_id);
            let result = |machine: &str, seq| CommandResultRow {
                command_id: command.id,
                seq,
                machine: machine.into(),
                ..Default::default()
            };
            let lease = now() + chrono::Duration::seconds(60);
            store
                .create_command(
                    &command,
                    &[result("a", 0), result("b", 1), result("c", 2)],
                    "r",
                    lease,
                )
                .await
                .unwrap();
            store
                .start_command_results(command.id, vec!["a".into(), "b".into()], now())
                .await
                .unwrap();
            let ended = |machine: &str, status| CommandResultRow { status, ..result(machine, 0) };
            store
                .finish_command_results(
                    deployment_id,
                    vec![ended("a", ResultStatus::Succeeded)],
                    now(),
                )
                .await
                .unwrap();
            // A final result is never overwritten, and a started one is not started again.
            store
                .finish_command_results(
                    deployment_id,
                    vec![ended("a", ResultStatus::Failed)],
                    now(),
                )
                .await
                .unwrap();
            store.start_command_results(command.id, vec!["a".into()], now()).await.unwrap();
            let statuses = |store: Store| async move {
                let results = store.command_results(command.id).await.unwrap();
                results.iter().map(|r| (r.machine.clone(), r.status)).collect::<Vec<_>>()
            };
            use ResultStatus::*;
            let expect =
                |c| vec![("a".to_owned(), Succeeded), ("b".into(), Running), ("c".into(), c)];
            assert_eq!(statuses(store.clone()).await, expect(Pending));
            // Ending the command ends what had not finished, once.
            let leftover = (Cancelled, "cancelled".to_owned());
            assert!(
                store
                    .finish_command(command.id, CommandStatus::Cancelled, leftover.clone(), now())
                    .await
                    .unwrap()
            );
            let mut after = expect(Cancelled);
            after[1].1 = Cancelled;
            assert_eq!(statuses(store.clone()).await, after);
            assert!(
                !store
                    .finish_command(command.id, CommandStatus::Failed, leftover, now())
                    .await
                    .unwrap()
            );
            let found = store.find_command(deployment_id, command.id).await.unwrap().unwrap();
            assert_eq!(found.status, CommandStatus::Cancelled);
            assert!(
                store
                    .request_command_cancel(deployment_id, command.id, now())
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
}
