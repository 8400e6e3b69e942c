//! Following a Terraform run live over `GET /infrastructure/{id}/events` (Server-Sent Events):
//! its log and progress are printed as they happen, the stream is resumed with `Last-Event-ID`
//! when the connection drops, and a run the server re-queued (its replica died) is followed
//! into its new attempt.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::Value;
use uuid::Uuid;
use wire::status::RunStatus;

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
            if let Ok(id) = event.id.parse() {
                last_event = Some(id);
            }
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else { continue };
            if data["run_id"].as_str() != Some(&run_id.to_string()) {
                continue;
            }
            print_event(&event.event, &data, progress);
            if event.event != "run_finished" {
                continue;
            }
            let status = data["status"].as_str().and_then(|s| s.parse().ok());
            let requeued = data["requeued_as"].as_str().and_then(|s| s.parse::<Uuid>().ok());
            match (status, requeued) {
                (Some(RunStatus::Interrupted), Some(next)) => run_id = next,
                (Some(status), _) => {
                    let error = data["error"].as_str().map(str::to_owned);
                    return Ok(Finished { status, error });
                }
                (None, _) => anyhow::bail!("the server sent a run_finished event without a status"),
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
    let text = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
    if kind == "progress" && data["done"].as_u64() == Some(0) {
        // Planning: the total grows, nothing is done yet.
        return;
    }
    let line = match kind {
        "status" => {
            let mut line = format!("==> {}", text("deployment_status"));
            if let Some(worker) = data["worker"].as_str() {
                line.push_str(&format!(" ({} run on {worker})", text("kind")));
            }
            line
        }
        "progress" => format!("    [{}/{}] resources", data["done"], data["total"]),
        "log" => match data["level"].as_str() {
            Some("error") => format!("    error: {}", text("message")),
            Some("warn") => format!("    warning: {}", text("message")),
            _ => format!("    {}", text("message")),
        },
        "run_finished" => match data["requeued_as"].as_str() {
            Some(next) => {
                format!("==> the run was interrupted ({}); re-queued as {next}", text("error"))
            }
            None if data["error"].is_string() => {
                format!("==> run {}: {}", text("status"), text("error"))
            }
            None => format!("==> run {}", text("status")),
        },
        other => format!("    {other}: {data}"),
    };
    progress.say(line);
}
