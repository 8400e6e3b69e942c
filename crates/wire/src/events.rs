//! The events of a run, as the backend stores them and `GET /infrastructure/{id}/events` streams
//! them: the SSE event name is the variant (`status`, `log`, `progress`, `run_finished`) and its
//! data the variant's fields, to which the stream adds `run_id` and `at`. The run worker writes
//! these and `nimctl` reads them back, so the two cannot drift.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::status::{DeploymentStatus, RunKind, RunStatus};

/// One event of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum RunEvent {
    /// The deployment and the run moved on.
    Status(StatusEvent),
    /// A line of Terraform's output, or a step of the backend's own.
    Log(LogEvent),
    /// Resources done of planned.
    Progress(ProgressEvent),
    /// The run ended (or was interrupted and re-queued as `requeued_as`).
    RunFinished(RunFinished),
}

/// `status`: where the deployment and the run are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub deployment_status: DeploymentStatus,
    pub run_id: Uuid,
    pub run_status: RunStatus,
    /// When a run starts: its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RunKind>,
    /// When a run starts: the replica running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// `log`: one line of the run's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEvent {
    /// `info`, `warn` or `error`.
    pub level: String,
    pub message: String,
    /// Terraform's message type (`planned_change`, `apply_complete`, `diagnostic`, `text` for
    /// a line that was not JSON); absent on the backend's own lines.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub terraform_type: Option<String>,
    /// The resource address the line is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl LogEvent {
    /// A line of the backend's own, at `info`.
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            level: "info".to_owned(),
            message: message.into(),
            terraform_type: None,
            resource: None,
        }
    }
}

/// `progress`: resources done of planned in the whole run (the total is the plan's, so it does
/// not start again when the apply begins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressEvent {
    pub done: u64,
    pub total: u64,
}

/// `run_finished`: how the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    pub run_id: Uuid,
    pub status: RunStatus,
    /// Why it did not succeed (`null` when it did).
    pub error: Option<String>,
    /// The run that takes over an interrupted one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requeued_as: Option<Uuid>,
}

impl RunEvent {
    /// The event's name: the SSE `event` field and the stored `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Log(_) => "log",
            Self::Progress(_) => "progress",
            Self::RunFinished(_) => "run_finished",
        }
    }

    /// The event's fields as a JSON object: the stored and streamed `data`.
    pub fn data(&self) -> Value {
        let fields = match self {
            Self::Status(event) => serde_json::to_value(event),
            Self::Log(event) => serde_json::to_value(event),
            Self::Progress(event) => serde_json::to_value(event),
            Self::RunFinished(event) => serde_json::to_value(event),
        };
        fields.expect("run events serialise to JSON")
    }

    /// An event from its name and data (fields it does not know, like the stream's `run_id`
    /// and `at`, are ignored).
    pub fn from_parts(kind: &str, data: Value) -> Result<Self, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "data": data }))
    }
}

/// One event as `GET /infrastructure/{id}/events` streams it: the SSE `id`, `event` and `data`
/// fields read back. `nimctl` and the integration tests read the stream through this one type
/// (with `eventsource-stream` for the framing), so the format has a single reader.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedEvent {
    /// Orders every event of the deployment; resumes the stream as `Last-Event-ID`.
    pub id: i64,
    /// The run the event is of (the stream adds it to every event's data).
    pub run_id: Uuid,
    /// When it happened (added by the stream too).
    pub at: DateTime<Utc>,
    /// The SSE event name: the [`RunEvent`] variant, or one this reader does not know.
    pub kind: String,
    /// The event's data as sent, `run_id` and `at` included.
    pub data: Value,
}

/// What every streamed event's data carries besides its variant's fields.
#[derive(Deserialize)]
struct Envelope {
    run_id: Uuid,
    at: DateTime<Utc>,
}

impl StreamedEvent {
    /// Reads one SSE event's fields. Fails when the id is not a number or the data is not an
    /// object with the stream's `run_id` and `at`; an unknown `kind` is kept (see [`Self::event`]).
    pub fn parse(id: &str, kind: &str, data: &str) -> Result<Self, StreamError> {
        let id = id
            .trim()
            .parse()
            .map_err(|_| StreamError(format!("event id {id:?} is not a number")))?;
        let data: Value = serde_json::from_str(data)
            .map_err(|err| StreamError(format!("event {id}'s data is not JSON: {err}")))?;
        let envelope: Envelope = serde_json::from_value(data.clone())
            .map_err(|err| StreamError(format!("event {id} has no run_id and at: {err}")))?;
        Ok(Self { id, run_id: envelope.run_id, at: envelope.at, kind: kind.to_owned(), data })
    }

    /// The typed event; `Err` for a kind (or fields) this version does not know.
    pub fn event(&self) -> Result<RunEvent, serde_json::Error> {
        RunEvent::from_parts(&self.kind, self.data.clone())
    }
}

/// A streamed event that is not one the backend sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError(pub String);

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StreamError {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_have_the_json_the_stream_always_sent() {
        let run_id = Uuid::nil();
        let started = RunEvent::Status(StatusEvent {
            deployment_status: DeploymentStatus::Provisioning,
            run_id,
            run_status: RunStatus::Running,
            kind: Some(RunKind::Apply),
            worker: Some("w".into()),
        });
        assert_eq!(started.kind(), "status");
        assert_eq!(
            started.data(),
            json!({"deployment_status": "provisioning", "run_id": run_id, "run_status": "running", "kind": "apply", "worker": "w"})
        );
        let finished = RunEvent::RunFinished(RunFinished {
            run_id,
            status: RunStatus::Succeeded,
            error: None,
            requeued_as: None,
        });
        assert_eq!(
            finished.data(),
            json!({"run_id": run_id, "status": "succeeded", "error": null})
        );
        assert_eq!(
            RunEvent::Log(LogEvent::info("x")).data(),
            json!({"level": "info", "message": "x"})
        );
        let progress = RunEvent::Progress(ProgressEvent { done: 1, total: 3 });
        assert_eq!(progress.data(), json!({"done": 1, "total": 3}));

        let streamed =
            json!({"done": 1, "total": 3, "run_id": run_id, "at": "2026-01-01T00:00:00Z"});
        assert_eq!(RunEvent::from_parts("progress", streamed).unwrap(), progress);
        assert!(RunEvent::from_parts("bogus", json!({})).is_err());
    }

    #[test]
    fn streamed_events_are_read_with_their_envelope_and_unknown_kinds_kept() {
        let run_id = Uuid::nil();
        let data = json!({"done": 2, "total": 3, "run_id": run_id, "at": "2026-01-01T00:00:00Z"});
        let streamed = StreamedEvent::parse("7", "progress", &data.to_string()).unwrap();
        assert_eq!((streamed.id, streamed.run_id, streamed.kind.as_str()), (7, run_id, "progress"));
        assert_eq!(streamed.at.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(
            streamed.event().unwrap(),
            RunEvent::Progress(ProgressEvent { done: 2, total: 3 })
        );

        let unknown = StreamedEvent::parse("8", "future_kind", &data.to_string()).unwrap();
        assert!(unknown.event().is_err());
        assert!(StreamedEvent::parse("x", "progress", &data.to_string()).is_err());
        assert!(StreamedEvent::parse("9", "progress", "{\"done\": 1}").is_err());
        assert!(StreamedEvent::parse("9", "progress", "not json").is_err());
    }
}
