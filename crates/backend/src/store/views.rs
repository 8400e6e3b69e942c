//! The API's read models: what `GET /infrastructure` and `GET /infrastructure/{id}` show, each read
//! by one statement that selects only the columns the response uses (never a deployment's
//! secrets, certificate or backend variables).

use chrono::{DateTime, Utc};
use serde_json::{Value, value::RawValue};
use sqlx::types::Json;
use uuid::Uuid;

use super::{DeploymentQuery, MachineRow, RunRow, Store, StoreResult, on_db, sqlite_reads};
use wire::deployments::RunInputs;

use crate::domain::{DeploymentStatus, MachineStatus, RunKind, RunStatus};

/// A deployment as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentSummary {
    pub id: Uuid,
    pub name: String,
    pub provider: String,
    #[sqlx(try_from = "String")]
    pub status: DeploymentStatus,
    pub status_reason: Option<String>,
    /// The object as stored: responses pass it through unparsed.
    pub variables: Json<Box<RawValue>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeploymentSummary {
    pub fn status(&self) -> DeploymentStatus {
        self.status
    }
}

impl From<super::DeploymentRow> for DeploymentSummary {
    fn from(row: super::DeploymentRow) -> Self {
        Self {
            id: row.id,
            name: row.name,
            provider: row.provider,
            status: row.status,
            status_reason: row.status_reason,
            variables: Json(
                serde_json::value::to_raw_value(&row.variables.0).expect("a JSON map serializes"),
            ),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// A deployment with its machines (by name) and its latest run.
#[derive(Debug, Clone)]
pub struct DeploymentDetail {
    pub deployment: DeploymentSummary,
    pub machines: Vec<MachineRow>,
    pub latest_run: Option<RunRow>,
}

// Aliased: SQLite leaves the name of an unaliased `d.id` unspecified.
const SUMMARY_COLUMNS: &str = "d.id AS id, d.name AS name, d.provider AS provider, \
    d.status AS status, d.status_reason AS status_reason, d.variables AS variables, \
    d.created_at AS created_at, d.updated_at AS updated_at";

/// The latest run's and each machine's columns, prefixed (`r_`, `m_`) so one row carries all
/// three tables; `LEFT JOIN`s make them NULL for a deployment without runs or machines.
const DETAIL_COLUMNS: &str = "r.id AS r_id, r.kind AS r_kind, r.status AS r_status, \
    r.attempt AS r_attempt, r.error AS r_error, r.progress_done AS r_progress_done, \
    r.progress_total AS r_progress_total, r.lease_owner AS r_lease_owner, \
    r.lease_expires_at AS r_lease_expires_at, r.cancel_requested_at AS r_cancel_requested_at, \
    r.created_at AS r_created_at, r.started_at AS r_started_at, r.finished_at AS r_finished_at, \
    r.inputs AS r_inputs, \
    m.id AS m_id, m.name AS m_name, m.public_ip AS m_public_ip, m.private_ip AS m_private_ip, \
    m.agent_port AS m_agent_port, m.status AS m_status, m.last_seen_at AS m_last_seen_at, \
    m.info AS m_info, m.created_at AS m_created_at, m.updated_at AS m_updated_at, \
    m.resource AS m_resource";

/// `GET /infrastructure/{id}` in one statement; `$1` the deployment, `$2` its owner.
pub(super) fn detail_sql() -> String {
    format!(
        "SELECT {SUMMARY_COLUMNS}, {DETAIL_COLUMNS} FROM deployments d \
         LEFT JOIN runs r ON r.id = \
             (SELECT id FROM runs WHERE deployment_id = d.id ORDER BY id DESC LIMIT 1) \
         LEFT JOIN machines m ON m.deployment_id = d.id \
         WHERE d.id = $1 AND d.owner_id = $2 ORDER BY m.name"
    )
}

/// `GET /infrastructure` in one statement: `$1` the owner, then the optional status, page cursor
/// and name, and the page size.
pub(super) fn list_sql() -> String {
    format!(
        "SELECT {SUMMARY_COLUMNS} FROM deployments d \
         WHERE d.owner_id = $1 AND ($2 IS NULL OR d.status = $2) AND ($3 IS NULL OR d.id < $3) \
         AND ($4 IS NULL OR d.name = $4) ORDER BY d.id DESC LIMIT $5"
    )
}

#[derive(sqlx::FromRow)]
struct DetailRow {
    #[sqlx(flatten)]
    deployment: DeploymentSummary,
    r_id: Option<Uuid>,
    r_kind: Option<String>,
    r_status: Option<String>,
    r_attempt: Option<i64>,
    r_error: Option<String>,
    r_progress_done: Option<i64>,
    r_progress_total: Option<i64>,
    r_lease_owner: Option<String>,
    r_lease_expires_at: Option<DateTime<Utc>>,
    r_cancel_requested_at: Option<DateTime<Utc>>,
    r_created_at: Option<DateTime<Utc>>,
    r_started_at: Option<DateTime<Utc>>,
    r_finished_at: Option<DateTime<Utc>>,
    r_inputs: Option<Json<RunInputs>>,
    m_id: Option<Uuid>,
    m_name: Option<String>,
    m_public_ip: Option<String>,
    m_private_ip: Option<String>,
    m_agent_port: Option<i64>,
    m_status: Option<String>,
    m_last_seen_at: Option<DateTime<Utc>>,
    m_info: Option<Json<Value>>,
    m_created_at: Option<DateTime<Utc>>,
    m_updated_at: Option<DateTime<Utc>>,
    m_resource: Option<String>,
}

/// A status column of a `LEFT JOIN`ed table: `None` where the join found no row.
fn joined<T: std::str::FromStr<Err = String>>(
    text: Option<&str>,
    column: &str,
) -> Result<Option<T>, sqlx::Error> {
    text.map(|t| {
        t.parse().map_err(|err: String| sqlx::Error::ColumnDecode {
            index: column.to_owned(),
            source: err.into(),
        })
    })
    .transpose()
}

impl DetailRow {
    fn run(&self) -> Result<Option<RunRow>, sqlx::Error> {
        let (Some(id), Some(created_at)) = (self.r_id, self.r_created_at) else { return Ok(None) };
        let kind: Option<RunKind> = joined(self.r_kind.as_deref(), "r_kind")?;
        let status: Option<RunStatus> = joined(self.r_status.as_deref(), "r_status")?;
        let (Some(kind), Some(status)) = (kind, status) else { return Ok(None) };
        Ok(Some(RunRow {
            id,
            deployment_id: self.deployment.id,
            kind,
            status,
            attempt: self.r_attempt.unwrap_or_default(),
            error: self.r_error.clone(),
            progress_done: self.r_progress_done.unwrap_or_default(),
            progress_total: self.r_progress_total.unwrap_or_default(),
            lease_owner: self.r_lease_owner.clone(),
            lease_expires_at: self.r_lease_expires_at,
            cancel_requested_at: self.r_cancel_requested_at,
            created_at,
            started_at: self.r_started_at,
            finished_at: self.r_finished_at,
            inputs: self.r_inputs.clone(),
            idempotency: None,
        }))
    }

    fn machine(self) -> Result<Option<MachineRow>, sqlx::Error> {
        let status = joined::<MachineStatus>(self.m_status.as_deref(), "m_status")?;
        let (Some(id), Some(name), Some(status), Some(created_at), Some(updated_at)) =
            (self.m_id, self.m_name, status, self.m_created_at, self.m_updated_at)
        else {
            return Ok(None);
        };
        Ok(Some(MachineRow {
            id,
            deployment_id: self.deployment.id,
            name,
            public_ip: self.m_public_ip,
            private_ip: self.m_private_ip,
            agent_port: self.m_agent_port,
            status,
            last_seen_at: self.m_last_seen_at,
            info: self.m_info,
            created_at,
            updated_at,
            resource: self.m_resource,
        }))
    }
}

impl Store {
    /// A deployment of `owner_id` with its machines and latest run, in one statement; another
    /// owner's deployment is `None`, exactly like a missing one.
    #[tracing::instrument(level = "debug", skip_all, fields(deployment_id = %id))]
    pub async fn deployment_detail(
        &self,
        owner_id: Uuid,
        id: Uuid,
    ) -> StoreResult<Option<DeploymentDetail>> {
        let sql = detail_sql();
        if let Some(reads) = &self.reads {
            let read = reads.with(|conn| {
                let mut statement = conn.prepare_cached(&sql)?;
                let mut rows = statement.query(rusqlite::named_params! {
                    "$1": id.as_bytes().as_slice(),
                    "$2": owner_id.as_bytes().as_slice(),
                })?;
                let Some(row) = rows.next()? else { return Ok(None) };
                let deployment = sqlite_reads::summary(row)?;
                let latest_run = sqlite_reads::detail_run(row, id)?;
                let mut machines: Vec<MachineRow> =
                    sqlite_reads::detail_machine(row, id)?.into_iter().collect();
                while let Some(row) = rows.next()? {
                    machines.extend(sqlite_reads::detail_machine(row, id)?);
                }
                Ok(Some(DeploymentDetail { deployment, machines, latest_run }))
            });
            match read {
                Ok(detail) => return Ok(detail),
                Err(err) => tracing::debug!(error = %err, "fast read failed; using the pool"),
            }
        }
        let rows: Vec<DetailRow> = on_db!(self, |pool| sqlx::query_as(&sql)
            .bind(id)
            .bind(owner_id)
            .fetch_all(pool)
            .await)?;
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else { return Ok(None) };
        let deployment = first.deployment.clone();
        let latest_run = first.run()?;
        let machines = std::iter::once(first)
            .chain(rows)
            .filter_map(|row| row.machine().transpose())
            .collect::<Result<_, _>>()?;
        Ok(Some(DeploymentDetail { deployment, machines, latest_run }))
    }

    /// The owner's deployments, newest first (ids are time-ordered UUIDv7).
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn list_deployments(
        &self,
        owner_id: Uuid,
        query: &DeploymentQuery,
    ) -> StoreResult<Vec<DeploymentSummary>> {
        let sql = list_sql();
        let status = query.status.map(DeploymentStatus::as_str);
        if let Some(reads) = &self.reads {
            let read = reads.with(|conn| {
                let mut statement = conn.prepare_cached(&sql)?;
                let rows = statement.query_map(
                    rusqlite::named_params! {
                        "$1": owner_id.as_bytes().as_slice(),
                        "$2": status,
                        "$3": query.before.as_ref().map(|id| id.as_bytes().as_slice()),
                        "$4": query.name.as_deref(),
                        "$5": i64::from(query.limit),
                    },
                    sqlite_reads::summary,
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            });
            match read {
                Ok(list) => return Ok(list),
                Err(err) => tracing::debug!(error = %err, "fast read failed; using the pool"),
            }
        }
        Ok(on_db!(self, |pool| {
            sqlx::query_as(&sql)
                .bind(owner_id)
                .bind(status)
                .bind(query.before)
                .bind(query.name.as_deref())
                .bind(i64::from(query.limit))
                .fetch_all(pool)
                .await
        })?)
    }
}

/// The statements `GET /infrastructure/{id}` and `GET /infrastructure?limit=` run, with their
/// arguments written in as Postgres literals: what the HTTP benchmark hands `pgbench` as the
/// database's own ceiling for those endpoints. Built from the same text as the queries above.
pub mod bench_sql {
    fn literal(sql: &str, args: &[&str]) -> String {
        // Highest placeholder first, so `$1` does not match the start of `$10`.
        args.iter()
            .enumerate()
            .rev()
            .fold(sql.to_owned(), |sql, (i, arg)| sql.replace(&format!("${}", i + 1), arg))
    }

    /// The statement for the deployment `id` of `owner`.
    pub fn get_deployment(id: &str, owner: &str) -> String {
        literal(&super::detail_sql(), &[&format!("'{id}'::uuid"), &format!("'{owner}'::uuid")])
            + ";\n"
    }

    /// The first page of `owner`'s deployments.
    pub fn list_deployments(owner: &str, limit: u32) -> String {
        let args = [
            &format!("'{owner}'::uuid"),
            "NULL::text",
            "NULL::uuid",
            "NULL::text",
            &limit.to_string(),
        ];
        literal(&super::list_sql(), &args) + ";\n"
    }
}
