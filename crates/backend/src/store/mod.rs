//! The store: the only place in the backend that contains SQL.
//!
//! One [`Store`] value serves every service. Behind it, [`Db`] holds the pool of whichever
//! database `DATABASE_URL` chose (SQLite or Postgres); each query is written once, in SQL both
//! dialects accept (`$1` placeholders, `RETURNING`, partial unique indexes), and [`on_db!`] runs
//! that same text against the active pool. Timestamps and ids are bound from Rust so no
//! dialect-specific function is needed. The few real differences (the run claim's `SKIP LOCKED`,
//! advisory locks, `NOTIFY`) are branches on [`Store::is_postgres`]. The schemas are per dialect:
//! `migrations/sqlite/` and, for Postgres, `supabase/migrations/` at the repository root.

mod commands;
mod deployments;
#[cfg(test)]
mod lifecycle_tests;
mod metrics;
mod runs;
mod sessions;
mod sqlite_reads;
mod users;
mod views;

use std::{str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use commands::{CommandResultRow, CommandRow, CommandsPage};
pub use deployments::{DeploymentQuery, DeploymentRow, MachineRow, NewMachine, NewValues};
pub use runs::{RunEventRow, RunRow};
pub use sessions::{AuthSessionRow, RefreshOutcome, SessionSelector};
pub use users::UserRow;
pub use views::{DeploymentDetail, DeploymentSummary, bench_sql};

/// Runs `$body` with `$pool` bound to the active database's pool. The body is expanded once per
/// database, so it is type-checked against each driver while its SQL text stays shared.
macro_rules! on_db {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
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
    /// The database's storage refuses writes: disk full, read-only filesystem, I/O errors.
    /// Reads usually keep working; writes work again once space (or write access) returns.
    #[error("database storage full or read-only")]
    Storage(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A status change its transition table forbids was asked for: a bug, refused before any
    /// write.
    #[error(transparent)]
    IllegalMove(#[from] crate::domain::IllegalMove),
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
            // Connections that cannot be made or broke mid-way (a server restarting, a network
            // cut during the handshake) and Postgres' connection/shutdown error classes.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err),
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")) =>
            {
                Self::Unavailable(err)
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|code| storage_code(&code)) => {
                Self::Storage(err)
            }
            _ => Self::Database(err),
        }
    }

    /// Whether the same write may succeed later without anyone changing the request: the
    /// database or its disk is back.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Storage(_))
    }
}

/// Error codes meaning the database's storage refuses writes. SQLite reports its (extended)
/// result code, whose low byte is the primary one: `SQLITE_READONLY` (8), `SQLITE_IOERR` (10),
/// `SQLITE_FULL` (13), `SQLITE_CANTOPEN` (14). Postgres: `disk_full` (53100), `io_error`
/// (58030), `read_only_sql_transaction` (25006, a standby or a read-only database).
fn storage_code(code: &str) -> bool {
    match code.parse::<i32>() {
        Ok(sqlite) if !code.starts_with('0') && code.len() < 5 => {
            matches!(sqlite & 0xff, 8 | 10 | 13 | 14)
        }
        _ => matches!(code, "53100" | "58030" | "25006"),
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
        "runs_deployment_idempotency_key" => "runs.deployment_id, runs.idempotency_key",
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
    Postgres(PgPool),
}

/// The Postgres schema holding our tables (Supabase exposes `public` through its REST API).
pub const PG_SCHEMA: &str = "nim";

/// How long a pooled Postgres connection may sit idle before its next use is preceded by a ping.
const PG_IDLE_PING_AFTER: Duration = Duration::from_secs(10);
/// The `NOTIFY` channel carrying deployment ids of new run events between replicas.
const EVENTS_CHANNEL: &str = "nim_run_events";
/// Advisory lock key serialising schema creation and migrations across replicas ("nim-migrate").
const MIGRATION_LOCK: i64 = 0x6e69_6d2d_6d69_6772;

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// The embedded database's on-thread read path (none for Postgres or an in-memory file).
    reads: Option<std::sync::Arc<sqlite_reads::SqliteReads>>,
}

impl Store {
    /// Connects to `url` and brings the schema up to date.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn connect(url: &SecretString, max_connections: u32) -> anyhow::Result<Self> {
        use anyhow::Context;
        let raw = url.expose_secret();
        let redacted = crate::config::redact_database_url(url);
        let mut reads = None;
        let db = if raw.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(raw)
                .with_context(|| format!("invalid SQLite database URL {redacted}"))?;
            create_private_file(options.get_filename())?;
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            // No ping before each use: a local file does not drop connections, and the ping
            // would be a second round trip to the connection's worker thread per query.
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("failed to open the database {redacted}"))?;
            let in_memory = raw.contains(":memory:") || raw.contains("mode=memory");
            match in_memory {
                // A new database every time: nothing a table rebuild could cascade into.
                true => sqlx::migrate!("migrations/sqlite")
                    .run(&pool)
                    .await
                    .map_err(|err| migration_error(err, &redacted))?,
                false => migrate_sqlite(&options, &redacted).await?,
            }
            if !in_memory {
                reads = Some(std::sync::Arc::new(sqlite_reads::SqliteReads::new(
                    options.get_filename().to_path_buf(),
                )));
            }
            Db::Sqlite(pool)
        } else if raw.starts_with("postgres:") || raw.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(raw)
                .with_context(|| format!("invalid Postgres database URL {redacted}"))?
                .options([("search_path", PG_SCHEMA)])
                .application_name("nim-backend");
            // A ping only for a connection that sat idle (a server restart or a pooler's idle
            // timeout may have closed it meanwhile): a busy pool's connections are known alive,
            // and a ping per query would double every read's round trips.
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for > PG_IDLE_PING_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(options)
                .await
                .with_context(|| format!("failed to connect to the database {redacted}"))?;
            migrate_postgres(&pool).await.map_err(|err| migration_error(err, &redacted))?;
            Db::Postgres(pool)
        } else {
            anyhow::bail!(
                "unsupported DATABASE_URL {redacted}: expected sqlite://… or postgres://…"
            );
        };
        Ok(Self { db, reads })
    }

    /// Tells every replica that `deployment_id` has new run events (Postgres `NOTIFY`; the
    /// payload is only the id). A no-op on SQLite, which has one process.
    pub async fn notify_events(&self, deployment_id: uuid::Uuid) -> StoreResult<()> {
        if let Db::Postgres(pool) = &self.db {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(deployment_id.to_string())
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Forwards other replicas' event notifications to `wake` until the process ends (Postgres
    /// only). A lost connection is re-established; wake-ups missed meanwhile are harmless,
    /// because subscribers read events from the table by id.
    pub async fn listen_events(&self, wake: impl Fn(uuid::Uuid) + Send + 'static) {
        let Db::Postgres(pool) = &self.db else { return };
        loop {
            let listener = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
                listener.listen(EVENTS_CHANNEL).await?;
                loop {
                    let notification = listener.recv().await?;
                    if let Ok(id) = notification.payload().parse() {
                        wake(id);
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            if let Err(err) = listener.await {
                tracing::warn!(error = %err, "lost the run-event notification channel; reconnecting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Takes a cluster-wide lock (a Postgres session advisory lock on its own connection), held
    /// until [`AdvisoryLock::release`]; every replica sharing the database waits on the same key.
    /// `None` on SQLite, where there is one process and an in-process lock does the job.
    pub async fn advisory_lock(&self, key: i64) -> StoreResult<Option<AdvisoryLock>> {
        let Db::Postgres(pool) = &self.db else { return Ok(None) };
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)").bind(key).execute(&mut *conn).await?;
        Ok(Some(AdvisoryLock { conn, key }))
    }

    /// Which database this is, for logs and dialect-specific SQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
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

/// A held Postgres advisory lock; see [`Store::advisory_lock`].
pub struct AdvisoryLock {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    key: i64,
}

impl AdvisoryLock {
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut *self.conn)
            .await;
        if unlocked.is_err() {
            // The session ends with the connection, and the lock with it.
            let _ = self.conn.close().await;
        }
    }
}

/// Applies the SQLite migrations on a connection of its own with foreign keys off: a migration
/// that rebuilds a table (SQLite's way to change a constraint) drops the old one, which with
/// foreign keys on would delete the rows referencing it. Foreign keys are checked afterwards.
async fn migrate_sqlite(options: &SqliteConnectOptions, database: &str) -> anyhow::Result<()> {
    use sqlx::{Connection, sqlite::SqliteConnection};
    let mut conn = SqliteConnection::connect_with(&options.clone().foreign_keys(false)).await?;
    sqlx::migrate!("migrations/sqlite")
        .run(&mut conn)
        .await
        .map_err(|err| migration_error(err, database))?;
    let broken: Vec<(String, Option<i64>, String)> =
        sqlx::query_as("SELECT \"table\", rowid, parent FROM pragma_foreign_key_check")
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    if let Some((table, row, parent)) = broken.first() {
        anyhow::bail!(
            "after its migrations, row {} of table {table} of {database} refers to a missing row of {parent} ({} such rows): restore a backup",
            row.unwrap_or_default(),
            broken.len()
        );
    }
    Ok(())
}

/// Creates our schema and applies the migrations (the files in `supabase/migrations/`, which a
/// Supabase project can also apply itself) while holding an advisory lock, so replicas starting
/// together migrate once and never see a half-made schema.
async fn migrate_postgres(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
    let result = async {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            .execute(&mut *conn)
            .await?;
        sqlx::migrate!("../../supabase/migrations").run(&mut *conn).await
    }
    .await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
    result
}

/// Migrations are forward-only: a database that has a migration this binary does not know was
/// migrated by a newer version, and running against its schema could corrupt it. That and a
/// changed migration get a message saying what to do rather than sqlx's.
fn migration_error(err: sqlx::migrate::MigrateError, database: &str) -> anyhow::Error {
    use sqlx::migrate::MigrateError;
    let version = env!("CARGO_PKG_VERSION");
    match err {
        MigrateError::VersionMissing(migration) => anyhow::anyhow!(
            "the database {database} was migrated by a newer nim-backend: it has migration {migration}, which this version ({version}) does not know. Refusing to start against a schema it does not understand; run the newer version again, or restore a backup made before the upgrade (migrations only go forward)"
        ),
        MigrateError::VersionMismatch(migration) => anyhow::anyhow!(
            "migration {migration} of the database {database} differs from the one this version ({version}) ships; the database was migrated by a different build. Refusing to start; run the build that migrated it"
        ),
        other => {
            anyhow::Error::new(other).context(format!("failed to migrate the database {database}"))
        }
    }
}

/// Creates a missing SQLite database file empty and 0600 before SQLite opens it: SQLite gives its
/// `-wal` and `-shm` files the database file's mode, so all three stay private.
fn create_private_file(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.as_os_str().is_empty() || path == std::path::Path::new(":memory:") {
        return Ok(());
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => {
            Err(anyhow::Error::new(err).context(format!("failed to create {}", path.display())))
        }
    }
}

/// The database file a `sqlite:` URL names.
pub fn sqlite_file(url: &SecretString) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let options = SqliteConnectOptions::from_str(url.expose_secret()).with_context(|| {
        format!("invalid SQLite database URL {}", crate::config::redact_database_url(url))
    })?;
    Ok(options.get_filename().to_owned())
}

/// Writes a consistent copy of the SQLite database at `source` to `target` (which must not
/// exist) while other processes use it: `VACUUM INTO` reads one snapshot, so the copy is the
/// database as of one transaction, compacted, without its WAL.
pub async fn backup_sqlite(
    source: &std::path::Path,
    target: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let options = SqliteConnectOptions::new()
        .filename(source)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30));
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .with_context(|| format!("failed to open the database {}", source.display()))?;
    let target_text = target.to_str().context("the backup path is not valid UTF-8")?;
    sqlx::query("VACUUM INTO $1")
        .bind(target_text)
        .execute(&mut conn)
        .await
        .with_context(|| format!("failed to copy the database into {}", target.display()))?;
    sqlx::Connection::close(conn).await?;
    Ok(())
}

/// Throwaway databases for tests (this crate's and the integration tests'): a fresh SQLite file,
/// or a fresh database on the Postgres server at `TEST_POSTGRES_URL` (default
/// `postgres://postgres@127.0.0.1:5432`), dropped again when the guard is. Behind the `testing`
/// feature, which only tests turn on.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;

    /// The Postgres server tests use.
    pub fn postgres_server() -> String {
        std::env::var("TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
    }

    /// A database created for one test and dropped (with its connections) afterwards.
    pub struct PostgresDatabase {
        pub url: String,
        name: String,
    }

    impl PostgresDatabase {
        /// Creates a fresh database, or `None` (after saying so loudly) when no Postgres server
        /// answers. Under `CI=true` an unreachable server is a failure, never a skip.
        pub async fn create() -> Option<Self> {
            let server = postgres_server();
            let admin = match sqlx::PgPool::connect(&format!("{server}/postgres")).await {
                Ok(pool) => pool,
                Err(err) => {
                    if std::env::var("CI").is_ok_and(|v| v == "true") {
                        panic!("CI=true but Postgres at {server} is unreachable: {err}");
                    }
                    eprintln!(
                        "\n*** SKIPPING a Postgres test: {server} is unreachable ({err}); set TEST_POSTGRES_URL ***\n"
                    );
                    return None;
                }
            };
            let name = format!("nim_test_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .expect("create database");
            admin.close().await;
            Some(Self { url: format!("{server}/{name}"), name })
        }
    }

    impl Drop for PostgresDatabase {
        fn drop(&mut self) {
            let (server, name) = (postgres_server(), self.name.clone());
            // Drop may run inside a runtime; do the async work on a thread of its own.
            let _ = std::thread::spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                runtime.block_on(async {
                    let admin = sqlx::PgPool::connect(&format!("{server}/postgres")).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&admin)
                        .await
                        .ok()?;
                    admin.close().await;
                    Some(())
                })
            })
            .join();
        }
    }

    /// A deployment of a fresh owner in `status`, for store tests.
    pub fn deployment_row(status: crate::domain::DeploymentStatus) -> DeploymentRow {
        let at = crate::domain::now();
        DeploymentRow {
            id: uuid::Uuid::now_v7(),
            owner_id: uuid::Uuid::new_v4(),
            name: "d".into(),
            provider: "local".into(),
            status,
            status_reason: None,
            variables: sqlx::types::Json(Default::default()),
            backend_variables: sqlx::types::Json(Default::default()),
            secrets: vec![1, 2, 3],
            tls_cert: "cert".into(),
            idempotency_key: None,
            request_hash: None,
            created_at: at,
            updated_at: at,
        }
    }

    /// A store on each database kind this machine can offer: SQLite always, Postgres when a server
    /// answers. Keep the guard alive as long as the store.
    pub async fn stores() -> Vec<(Store, Box<dyn std::any::Any>)> {
        let mut stores: Vec<(Store, Box<dyn std::any::Any>)> = Vec::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let url =
            SecretString::from(format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()));
        stores.push((Store::connect(&url, 4).await.expect("sqlite store"), Box::new(dir)));
        if let Some(database) = PostgresDatabase::create().await {
            let url = SecretString::from(database.url.clone());
            stores
                .push((Store::connect(&url, 8).await.expect("postgres store"), Box::new(database)));
        }
        stores
    }
}
