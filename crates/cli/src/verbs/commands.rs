//! Commands across a deployment's machines: running one and the history.

use anyhow::Context;
use wire::{
    commands::{CommandRequest, Scale},
    status::{CommandStatus, ResultStatus},
};

use super::deployments::resolve;
use crate::{
    Ctx, Outcome,
    args::{Output, Run},
    output::{self, table, time},
};

pub(crate) async fn command(cx: &Ctx, run: Run) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, &run.deployment).await?;
    let scale = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<Scale>> {
        text.as_deref()
            .map(|text| {
                serde_json::from_value::<Scale>(serde_json::Value::String(text.to_owned()))
                    .map_err(|err| anyhow::anyhow!("--{flag} {text:?}: {err}"))
            })
            .transpose()
    };
    let mut env = std::collections::BTreeMap::new();
    for pair in &run.env {
        let (key, value) =
            pair.split_once('=').with_context(|| format!("--env {pair:?} is not KEY=VALUE"))?;
        env.insert(key.to_owned(), value.to_owned());
    }
    let request = CommandRequest {
        argv: (!run.argv.is_empty()).then_some(run.argv),
        shell: run.shell,
        env,
        cwd: run.cwd,
        stdin: None,
        timeout_s: Some(run.timeout),
        machines: (!run.machines.is_empty()).then_some(run.machines),
        max_concurrency: scale("max-concurrency", &run.max_concurrency)?,
        max_errors: scale("max-errors", &run.max_errors)?,
    };
    let view = cx.api.command(id, &request).await?;
    if cx.output == Output::Json {
        output::json(&view)?;
    } else {
        for result in view.results.iter().flatten() {
            let mut how = result.status.to_string();
            if let Some(code) = result.exit_code {
                how.push_str(&format!(", exit {code}"));
            }
            if let Some(signal) = result.signal {
                how.push_str(&format!(", signal {signal}"));
            }
            if let Some(ms) = result.duration_ms {
                how.push_str(&format!(", {ms} ms"));
            }
            println!("=== {} ({how})", result.machine);
            for (stream, text) in [("", &result.stdout), ("stderr: ", &result.stderr)] {
                for line in text.as_deref().unwrap_or_default().lines() {
                    println!("{stream}{line}");
                }
            }
            if result.truncated {
                println!("(output truncated)");
            }
            if let Some(error) = &result.error {
                if result.status != ResultStatus::Succeeded {
                    println!("error: {error}");
                }
            }
        }
        let s = &view.summary;
        cx.progress.say(format!(
            "{}: {} of {} machines succeeded ({} failed, {} timed out, {} unreachable, {} skipped)",
            view.status, s.succeeded, s.total, s.failed, s.timed_out, s.unreachable, s.skipped
        ));
    }
    Ok(if view.status == CommandStatus::Succeeded { Outcome::Success } else { Outcome::Failure })
}

pub(crate) async fn commands(cx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let page = cx.api.commands(id).await?;
    output::show(cx.output, &page, |page| {
        table(
            ["COMMAND", "STATUS", "SUCCEEDED", "CREATED", "RUNS"],
            page.items.iter().map(|c| {
                let what = match (&c.request["shell"], &c.request["argv"]) {
                    (serde_json::Value::String(shell), _) => shell.clone(),
                    (_, serde_json::Value::Array(argv)) => {
                        argv.iter().filter_map(|a| a.as_str()).collect::<Vec<_>>().join(" ")
                    }
                    _ => "-".to_owned(),
                };
                [
                    c.id.to_string(),
                    c.status.to_string(),
                    format!("{}/{}", c.summary.succeeded, c.summary.total),
                    time(Some(c.created_at)),
                    what.replace('\n', "; "),
                ]
            }),
        )
    })?;
    Ok(Outcome::Success)
}
