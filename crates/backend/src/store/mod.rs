//! The store: the only place in the backend that contains SQL.
//!
//! One [`Store`] value serves every service. Behind it, [`Db`] holds the pool of whichever
//! database `DATABASE_URL` chose; each query is written once, in SQL both dialects accept
//! (`$1` placeholders, `RETURNING`, `ON CONFLICT`), and [`on_db!`] runs that same text against the
//! active pool. Timestamps and ids are bound from Rust so no dialect-specific function is needed.
//! Adding Postgres means adding a `Db` variant, its migrations and the few queries whose dialects
//! really differ; services do not change.

mod commands;
mod deployments;
mod runs;
mod sessions;
mod users;

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use commands::{CommandResultRow, CommandRow, CommandsPage};
pub use deployments::{
    DeploymentQuery, DeploymentRow, DeploymentStatusText, MachineRow, NewMachine,
};
pub use runs::{RunEventRow, RunRow};
pub use sessions::{AuthSessionRow, RefreshOutcome, SessionSelector};
pub use users::UserRow;

/// Runs `$body` with `$pool` bound to the active database's pool. The body is expanded once per
/// database, so it is type-checked against each driver while its SQL text stays shared.
macro_rules! on_db {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
        }
    };
}
pub(crate) use on_db;

/// Errors the store reports; callers decide what each means to their own users.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint refused the write; carries the constraint's name.
    #[error("unique constraint {0} violated")]
    Conflict(&'static str),
    /// The database could not be reached in time (pool timeout, connection refused, I/O).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Classifies a driver error; `constraints` lists the unique constraints the caller expects
    /// so that a violation can be reported by name rather than checked for beforehand.
    fn classify(err: sqlx::Error, constraints: &[&'static str]) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                // Postgres names the constraint; SQLite names the columns in the message
                // ("UNIQUE constraint failed: users.email"), so each constraint is matched on
                // both forms.
                let message = db.message();
                let found = constraints.iter().find(|name| {
                    db.constraint() == Some(**name)
                        || constraint_columns(name).is_some_and(|cols| message.ends_with(cols))
                });
                match found {
                    Some(name) => Self::Conflict(name),
                    None => Self::Database(err),
                }
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable(err)
            }
            _ => Self::Database(err),
        }
    }
}

/// The columns SQLite reports for each named unique constraint.
fn constraint_columns(name: &str) -> Option<&'static str> {
    Some(match name {
        "users_email_key" => "users.email",
        "refresh_tokens_token_hash_key" => "refresh_tokens.token_hash",
        "deployments_owner_idempotency_key" => "deployments.owner_id, deployments.idempotency_key",
        "machines_deployment_name_key" => "machines.deployment_id, machines.name",
        "runs_one_active_per_deployment" => "runs.deployment_id",
        _ => return None,
    })
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::classify(err, &[])
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
}

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
}

impl Store {
    /// Connects to `url` and brings the schema up to date.
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<Self> {
        use anyhow::Context;
        let raw = url.expose_secret();
        let redacted = crate::config::redact_database_url(url);
        let db = if raw.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(raw)
                .with_context(|| format!("invalid SQLite database URL {redacted}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .with_context(|| format!("failed to open the database {redacted}"))?;
            sqlx::migrate!("migrations/sqlite")
                .run(&pool)
                .await
                .with_context(|| format!("failed to migrate the database {redacted}"))?;
            Db::Sqlite(pool)
        } else {
            anyhow::bail!(
                "unsupported DATABASE_URL {redacted}: expected sqlite://… (Postgres support is not built yet)"
            );
        };
        Ok(Self { db })
    }

    /// Whether the database answers a trivial query within `timeout`.
    pub async fn ping(&self, timeout: Duration) -> StoreResult<()> {
        let query =
            async { on_db!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(drop)) };
        match tokio::time::timeout(timeout, query).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Closes every connection; waits for checked-out ones to come back.
    pub async fn close(&self) {
        on_db!(self, |pool| pool.close().await)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A store on a fresh SQLite file in its own temporary directory.
    pub(crate) async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url =
            SecretString::from(format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()));
        (Store::connect(&url, 4).await.unwrap(), dir)
    }
}
