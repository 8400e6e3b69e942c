//! Following a Terraform run live over `GET /infrastructure/{id}/events` (Server-Sent Events):
//! its log and progress are printed as they happen, the stream is resumed with `Last-Event-ID`
//! when the connection drops, and a run the server re-queued (its replica died) is followed
//! into its new attempt.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use uuid::Uuid;
use wire::{
    RunEvent,
    events::{ProgressEvent, StreamedEvent},
    status::RunStatus,
};

use crate::{client::Api, output::Progress};

/// Reconnects in a row before giving up on the stream.
const MAX_RECONNECTS: u32 = 8;

/// How a followed run ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: RunStatus,
    pub(crate) error: Option<String>,
}

/// Prints `run_id`'s events, from its first, until it finishes. The stream starts at the
/// deployment's latest run, so `run_id` must be that run (or one it was re-queued from).
pub(crate) async fn run(
    api: &Api,
    deployment: Uuid,
    run_id: Uuid,
    progress: Progress,
) -> anyhow::Result<Finished> {
    let mut run_id = run_id;
    let mut last_event: Option<i64> = None;
    let mut failures = 0;
    loop {
        let stream = match api.events(deployment, last_event).await {
            Ok(response) => response.bytes_stream().eventsource(),
            // A problem answer (404, 401) will not go away by retrying.
            Err(err) if err.downcast_ref::<crate::client::ApiProblem>().is_some() => {
                return Err(err);
            }
            Err(err) => {
                failures += 1;
                if failures > MAX_RECONNECTS {
                    return Err(err.context("lost the event stream"));
                }
                progress.say(format!("    (event stream unavailable: {err:#}; retrying)"));
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        futures_util::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(err) => {
                    progress.say(format!("    (event stream interrupted: {err}; resuming)"));
                    break;
                }
            };
            failures = 0;
            let Ok(streamed) = StreamedEvent::parse(&event.id, &event.event, &event.data) else {
                continue;
            };
            last_event = Some(streamed.id);
            if streamed.run_id != run_id {
                continue;
            }
            print_event(&streamed.kind, &streamed.data, progress);
            if streamed.kind != "run_finished" {
                continue;
            }
            let Ok(RunEvent::RunFinished(finished)) = streamed.event() else {
                anyhow::bail!("the server sent a run_finished event without a status");
            };
            match (finished.status, finished.requeued_as) {
                (RunStatus::Interrupted, Some(next)) => run_id = next,
                (status, _) => return Ok(Finished { status, error: finished.error }),
            }
        }
        failures += 1;
        if failures > MAX_RECONNECTS {
            anyhow::bail!("lost the event stream {MAX_RECONNECTS} times in a row");
        }
        tokio::time::sleep(backoff(failures)).await;
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(failures.min(5)))
}

/// One line per event, for people.
pub(crate) fn print_event(kind: &str, data: &Value, progress: Progress) {
    let Ok(event) = RunEvent::from_parts(kind, data.clone()) else {
        // An event this nimctl does not know: shown as it came.
        progress.say(format!("    {kind}: {data}"));
        return;
    };
    let line = match event {
        // Planning: the total grows, nothing is done yet.
        RunEvent::Progress(ProgressEvent { done: 0, .. }) => return,
        RunEvent::Status(status) => {
            let mut line = format!("==> {}", status.deployment_status);
            if let Some(worker) = status.worker {
                let kind = status.kind.map(|kind| kind.as_str()).unwrap_or_default();
                line.push_str(&format!(" ({kind} run on {worker})"));
            }
            line
        }
        RunEvent::Progress(ProgressEvent { done, total }) => {
            format!("    [{done}/{total}] resources")
        }
        RunEvent::Log(log) => match log.level.as_str() {
            "error" => format!("    error: {}", log.message),
            "warn" => format!("    warning: {}", log.message),
            _ => format!("    {}", log.message),
        },
        RunEvent::RunFinished(finished) => match (finished.requeued_as, finished.error) {
            (Some(next), error) => format!(
                "==> the run was interrupted ({}); re-queued as {next}",
                error.unwrap_or_default()
            ),
            (None, Some(error)) => format!("==> run {}: {error}", finished.status),
            (None, None) => format!("==> run {}", finished.status),
        },
    };
    progress.say(line);
}
