//! A deployment's runs: following one to its end, the history, the logs, cancelling.

use uuid::Uuid;
use wire::status::RunStatus;

use super::deployments::{resolve, show_deployment};
use crate::{
    Ctx, Outcome,
    args::Output,
    follow,
    output::{self, Progress, or_dash, table, time},
};

/// Follows a run until it ends, then shows the deployment; Ctrl-C stops following (not the run).
pub(crate) async fn follow_to_end(cx: &Ctx, id: Uuid, run_id: Uuid) -> anyhow::Result<Outcome> {
    let finished = tokio::select! {
        finished = follow::run(&cx.api, id, run_id, cx.progress) => finished?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!(
                "\nstopped following; the run goes on on the server. \
                 `nimctl status {id}` shows it, `nimctl cancel {id}` stops it"
            );
            return Ok(Outcome::Interrupted);
        }
    };
    let view = cx.api.deployment(id).await?;
    show_deployment(cx, &view)?;
    if finished.status == RunStatus::Succeeded {
        Ok(Outcome::Success)
    } else {
        eprintln!(
            "error: the run {}: {}",
            finished.status,
            finished.error.or(view.status_reason).unwrap_or_default()
        );
        Ok(Outcome::Failure)
    }
}

pub(crate) async fn runs(cx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let page = cx.api.runs(id).await?;
    output::show(cx.output, &page, |page| {
        table(
            ["RUN", "KIND", "STATUS", "ATTEMPT", "STARTED", "FINISHED", "CHANGES", "ERROR"],
            page.items.iter().map(|r| {
                [
                    r.id.to_string(),
                    r.kind.to_string(),
                    r.status.to_string(),
                    r.attempt.to_string(),
                    time(r.started_at),
                    time(r.finished_at),
                    changes(r),
                    or_dash(r.error.as_ref()),
                ]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

pub(crate) async fn logs(
    cx: &Ctx,
    reference: &str,
    run: Option<Uuid>,
    follow: bool,
) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let latest = cx.api.deployment(id).await?.latest_run;
    let run_id = match (run, &latest) {
        (Some(run), _) => run,
        (None, Some(latest)) => latest.id,
        (None, None) => anyhow::bail!("{reference} has no runs yet"),
    };
    let is_latest = latest.as_ref().is_some_and(|l| l.id == run_id);
    if follow && is_latest && cx.output == Output::Table {
        // The event stream replays the latest run from its start, then follows it.
        return Ok(match follow::run(&cx.api, id, run_id, Progress::Stdout).await?.status {
            RunStatus::Succeeded => Outcome::Success,
            _ => Outcome::Failure,
        });
    }
    let detail = cx.api.run(id, run_id).await?;
    match cx.output {
        Output::Json => output::json(&detail)?,
        Output::Table => {
            for event in &detail.events {
                follow::print_event(&event.kind, &event.data, Progress::Stdout);
            }
            if follow && detail.run.status.is_active() {
                anyhow::bail!("only the latest run can be followed");
            }
        }
    }
    Ok(Outcome::Success)
}

pub(crate) async fn cancel(
    cx: &Ctx,
    reference: &str,
    run: Option<Uuid>,
) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let run_id = match run {
        Some(run) => run,
        None => match cx.api.deployment(id).await?.latest_run {
            Some(run) if run.status.is_active() => run.id,
            Some(run) => anyhow::bail!(
                "{reference} has no active run (its last {} {})",
                run.kind,
                run.status
            ),
            None => anyhow::bail!("{reference} has no runs"),
        },
    };
    let run = cx.api.cancel_run(id, run_id).await?;
    match cx.output {
        Output::Json => output::json(&run)?,
        Output::Table if run.status == RunStatus::Cancelled => {
            println!("cancelled the {} {}", run.kind, run.id)
        }
        Output::Table => println!(
            "asked the {} {} to stop; Terraform is interrupted and the deployment ends `failed`",
            run.kind, run.id
        ),
    }
    Ok(Outcome::Success)
}

/// What a run changed: its variable changes (`machine_count: 2 → 5`), or the machine it replaced.
fn changes(run: &wire::deployments::RunView) -> String {
    let Some(inputs) = &run.inputs else { return "-".into() };
    let mut parts: Vec<String> = inputs.changes.iter().map(ToString::to_string).collect();
    parts.extend(inputs.replace.as_ref().map(|target| format!("replaced {}", target.machine)));
    match parts.is_empty() {
        true => "-".into(),
        false => parts.join(", "),
    }
}
