//! The embedded database's hot read path: the API's read models read on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every statement (and every
//! row back) across a channel; for a read of a few cached pages those thread switches were most
//! of the cost of `GET /infrastructure/{id}` (profiled: a third of the CPU in the scheduler).
//! Here the same statement runs on the request's own thread through rusqlite (the same
//! `libsqlite3-sys` as sqlx), on read-only connections with prepared statements cached per
//! connection. In WAL mode a reader never waits for the writer, so a read takes microseconds
//! and does not stall the async worker. The busy timeout is zero: should SQLite ever answer
//! `SQLITE_BUSY` (WAL recovery after a crash, say), or anything else fail, the caller falls back
//! to the sqlx pool, which waits off-thread and classifies the error as every other query does.

use std::{path::PathBuf, sync::Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, Row};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;
use wire::deployments::RunInputs;

use super::{DeploymentSummary, MachineRow, RunRow};

/// At most this many idle connections are kept (one per async worker is all that runs at once).
const MAX_IDLE: usize = 8;
/// Statements cached per connection.
const STATEMENT_CACHE: usize = 16;

#[derive(Debug)]
pub(super) struct SqliteReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl SqliteReads {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()) }
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.busy_timeout(std::time::Duration::ZERO)?;
        // A small page cache per connection: the OS page cache holds the file anyway, and the
        // process stays small (SQLite's default is 2 MiB per connection).
        conn.pragma_update(None, "cache_size", -512)?;
        Ok(conn)
    }

    /// Runs `read` on an idle connection (or a new one).
    pub(super) fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => self.open()?,
        };
        let result = read(&conn);
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}

fn conversion(
    index: usize,
    err: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
}

/// Column readers for sqlx's SQLite encodings: UUIDs as 16-byte blobs, timestamps as RFC 3339
/// text, JSON as text.
pub(super) trait RowExt {
    fn uuid(&self, index: usize) -> rusqlite::Result<Uuid>;
    fn opt_uuid(&self, index: usize) -> rusqlite::Result<Option<Uuid>>;
    fn time(&self, index: usize) -> rusqlite::Result<DateTime<Utc>>;
    fn opt_time(&self, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>>;
    /// A status column, parsed into its enum.
    fn parsed<T: std::str::FromStr<Err = String>>(&self, index: usize) -> rusqlite::Result<T>;
    /// A JSON column as it is stored (checked to be JSON, not parsed into values).
    fn raw_json(&self, index: usize) -> rusqlite::Result<Box<serde_json::value::RawValue>>;
    fn json<T: serde::de::DeserializeOwned>(&self, index: usize) -> rusqlite::Result<Option<T>>;
}

impl RowExt for Row<'_> {
    fn uuid(&self, index: usize) -> rusqlite::Result<Uuid> {
        self.opt_uuid(index)?.ok_or(rusqlite::Error::InvalidColumnType(
            index,
            "uuid".into(),
            rusqlite::types::Type::Null,
        ))
    }

    fn opt_uuid(&self, index: usize) -> rusqlite::Result<Option<Uuid>> {
        let bytes: Option<Vec<u8>> = self.get(index)?;
        bytes.map(|b| Uuid::from_slice(&b).map_err(|err| conversion(index, err))).transpose()
    }

    fn time(&self, index: usize) -> rusqlite::Result<DateTime<Utc>> {
        self.opt_time(index)?.ok_or(rusqlite::Error::InvalidColumnType(
            index,
            "timestamp".into(),
            rusqlite::types::Type::Null,
        ))
    }

    fn opt_time(&self, index: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
        let text: Option<String> = self.get(index)?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|err| conversion(index, err))
        })
        .transpose()
    }

    /// A status column, parsed into its enum.
    fn parsed<T: std::str::FromStr<Err = String>>(&self, index: usize) -> rusqlite::Result<T> {
        let text: String = self.get(index)?;
        text.parse().map_err(|err: String| {
            conversion(index, std::io::Error::new(std::io::ErrorKind::InvalidData, err))
        })
    }

    /// A JSON column as it is stored (checked to be JSON, not parsed into values).
    fn raw_json(&self, index: usize) -> rusqlite::Result<Box<serde_json::value::RawValue>> {
        let text: String = self.get(index)?;
        serde_json::value::RawValue::from_string(text).map_err(|err| conversion(index, err))
    }

    fn json<T: serde::de::DeserializeOwned>(&self, index: usize) -> rusqlite::Result<Option<T>> {
        let text: Option<String> = self.get(index)?;
        text.map(|t| serde_json::from_str(&t).map_err(|err| conversion(index, err))).transpose()
    }
}

/// A [`DeploymentSummary`] from the first eight columns (`SUMMARY_COLUMNS`).
pub(super) fn summary(row: &Row<'_>) -> rusqlite::Result<DeploymentSummary> {
    Ok(DeploymentSummary {
        id: row.uuid(0)?,
        name: row.get(1)?,
        provider: row.get(2)?,
        status: row.parsed(3)?,
        status_reason: row.get(4)?,
        variables: Json(row.raw_json(5)?),
        created_at: row.time(6)?,
        updated_at: row.time(7)?,
    })
}

/// The latest run from `DETAIL_COLUMNS` (starting at column 8), if the deployment has one.
pub(super) fn detail_run(row: &Row<'_>, deployment_id: Uuid) -> rusqlite::Result<Option<RunRow>> {
    let Some(id) = row.opt_uuid(8)? else { return Ok(None) };
    Ok(Some(RunRow {
        id,
        deployment_id,
        kind: row.parsed(9)?,
        status: row.parsed(10)?,
        attempt: row.get(11)?,
        error: row.get(12)?,
        progress_done: row.get(13)?,
        progress_total: row.get(14)?,
        lease_owner: row.get(15)?,
        lease_expires_at: row.opt_time(16)?,
        cancel_requested_at: row.opt_time(17)?,
        created_at: row.time(18)?,
        started_at: row.opt_time(19)?,
        finished_at: row.opt_time(20)?,
        inputs: row.json::<RunInputs>(21)?.map(Json),
        idempotency: None,
    }))
}

/// A machine from `DETAIL_COLUMNS` (starting at column 22), if the row has one.
pub(super) fn detail_machine(
    row: &Row<'_>,
    deployment_id: Uuid,
) -> rusqlite::Result<Option<MachineRow>> {
    let Some(id) = row.opt_uuid(22)? else { return Ok(None) };
    Ok(Some(MachineRow {
        id,
        deployment_id,
        name: row.get(23)?,
        public_ip: row.get(24)?,
        private_ip: row.get(25)?,
        agent_port: row.get(26)?,
        status: row.parsed(27)?,
        last_seen_at: row.opt_time(28)?,
        info: row.json::<Value>(29)?.map(Json),
        created_at: row.time(30)?,
        updated_at: row.time(31)?,
        resource: row.get(32)?,
    }))
}
