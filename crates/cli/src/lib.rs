//! `nimctl`, the command-line client of nim-backend's HTTP API. `main` parses the command line,
//! runs one subcommand on a single-threaded runtime and turns its outcome into an exit status;
//! each subcommand is a function below that calls [`client::Api`] and prints through
//! [`output`].

mod args;
mod client;
mod follow;
mod output;
mod session;
mod vars;

use std::{
    io::{BufRead, IsTerminal, Write},
    process::ExitCode,
};

use anyhow::Context;
use clap::Parser;
use uuid::Uuid;
use wire::{
    InfoResponse,
    commands::{CommandRequest, Scale},
    deployments::{DeploymentView, ProvisionBody},
    status::{CommandStatus, DeploymentStatus, ResultStatus, RunStatus},
};

use crate::{
    args::{Cli, Command, Credentials, Deploy, Global, Output, Run},
    client::{Api, Provisioned},
    output::{Progress, or_dash, table, time},
};

/// What a subcommand ended with, when it ran to the end.
enum Outcome {
    Success,
    /// The operation ran and did not succeed (already reported).
    Failure,
    /// Stopped by Ctrl-C while following.
    Interrupted,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Ctx {
    api: Api,
    output: Output,
    progress: Progress,
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let Global { server, output, quiet, token, sessions } = cli.global;
    let store = session::SessionStore::new(sessions)?;
    let cx =
        Ctx { api: Api::new(&server, token, store)?, output, progress: Progress::Stderr { quiet } };
    match cli.command {
        Command::Signup(credentials) => signup(&cx, credentials).await,
        Command::Login(credentials) => login(&cx, credentials).await,
        Command::Logout => {
            cx.api.logout().await?;
            cx.progress.say(format!("logged out of {}", cx.api.server()));
            Ok(Outcome::Success)
        }
        Command::Whoami => {
            let user = cx.api.me().await?;
            match cx.output {
                Output::Json => output::json(&user)?,
                Output::Table => {
                    println!("{} ({}) on {}", or_dash(user.email), user.id, cx.api.server())
                }
            }
            Ok(Outcome::Success)
        }
        Command::Providers { name } => providers(&cx, name.as_deref()).await,
        Command::Deploy(deploy) => self::deploy(&cx, deploy).await,
        Command::List { status, limit } => list(&cx, status, limit).await,
        Command::Status { deployment } => {
            let id = resolve(&cx.api, &deployment).await?;
            let view = cx.api.deployment(id).await?;
            show_deployment(&cx, &view)?;
            Ok(Outcome::Success)
        }
        Command::Destroy { deployment, yes, detach } => {
            destroy(&cx, &deployment, yes, detach).await
        }
        Command::Run(run) => self::command(&cx, run).await,
        Command::Logs { deployment, run, follow } => logs(&cx, &deployment, run, follow).await,
        Command::Runs { deployment } => runs(&cx, &deployment).await,
        Command::Cancel { deployment, run } => cancel(&cx, &deployment, run).await,
        Command::Commands { deployment } => commands(&cx, &deployment).await,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "nimctl", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
    }
}

// ---- auth ------------------------------------------------------------------------------------

/// The password from standard input or the terminal; typed twice (`confirm`) for a new account.
fn password(credentials: &Credentials, confirm: bool) -> anyhow::Result<String> {
    let password = if credentials.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("failed to read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "no terminal to ask for the password on; pipe it in with --password-stdin"
            );
        }
        let password =
            rpassword::prompt_password("Password: ").context("failed to read the password")?;
        if confirm
            && rpassword::prompt_password("Repeat it: ").context("failed to read the password")?
                != password
        {
            anyhow::bail!("the passwords differ; nothing was changed");
        }
        password
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(password)
}

async fn signup(cx: &Ctx, credentials: Credentials) -> anyhow::Result<Outcome> {
    let password = password(&credentials, true)?;
    let response = cx.api.signup(&credentials.email, &password).await?;
    match cx.output {
        Output::Json => output::json(&response)?,
        Output::Table if response.session.is_some() => {
            println!("signed up and logged in to {} as {}", cx.api.server(), credentials.email)
        }
        Output::Table => println!(
            "signed up as {}; follow the link in the confirmation email, then `nimctl login`",
            credentials.email
        ),
    }
    Ok(Outcome::Success)
}

async fn login(cx: &Ctx, credentials: Credentials) -> anyhow::Result<Outcome> {
    let password = password(&credentials, false)?;
    let session = cx.api.login(&credentials.email, &password).await?;
    match cx.output {
        Output::Json => output::json(&session.user)?,
        Output::Table => {
            println!("logged in to {} as {}", cx.api.server(), or_dash(session.user.email))
        }
    }
    Ok(Outcome::Success)
}

// ---- providers and deployments ---------------------------------------------------------------

async fn providers(cx: &Ctx, name: Option<&str>) -> anyhow::Result<Outcome> {
    let providers = cx.api.providers().await?;
    let Some(name) = name else {
        output::show(cx.output, &providers, |providers| {
            table(
                ["PROVIDER", "VARIABLES"],
                providers.providers.iter().map(|p| {
                    let names: Vec<_> = p.settable().map(|v| v.name.as_str()).collect();
                    [p.name.clone(), names.join(", ")]
                }),
            )
        })?;
        return Ok(Outcome::Success);
    };
    let provider = find_provider(providers.providers, name)?;
    output::show(cx.output, &provider, |provider| {
        table(
            ["VARIABLE", "TYPE", "DEFAULT", "DESCRIPTION"],
            provider.settable().map(|v| {
                let default = match &v.default {
                    _ if v.required => "(required)".to_owned(),
                    Some(default) => default.to_string(),
                    None => "null".to_owned(),
                };
                let mut description = v.description.clone().unwrap_or_default().replace('\n', " ");
                if v.sensitive {
                    description = format!("(sensitive) {description}");
                }
                [v.name.clone(), v.ty.clone(), default, description]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

fn find_provider(
    providers: Vec<wire::deployments::ProviderView>,
    name: &str,
) -> anyhow::Result<wire::deployments::ProviderView> {
    let names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
    providers.into_iter().find(|p| p.name == name).with_context(|| {
        format!("this server has no provider `{name}`; it has: {}", names.join(", "))
    })
}

async fn deploy(cx: &Ctx, deploy: Deploy) -> anyhow::Result<Outcome> {
    let provider = find_provider(cx.api.providers().await?.providers, &deploy.provider)?;
    let variables = vars::collect(&provider, &deploy.var_files, deploy.count, &deploy.vars)?;
    let body =
        ProvisionBody { name: deploy.name.clone(), provider: provider.name.clone(), variables };
    if !deploy.dry_run && deploy.idempotency_key.is_none() && !deploy.allow_duplicate_name {
        // Names need not be unique to the API, but a second live `web` is almost always a
        // mistake (and a second bill), and makes the name ambiguous here.
        let page = cx.api.deployments(Some(&deploy.name), None, 100).await?;
        let existing = page.items.iter().find(|d| d.status != DeploymentStatus::Destroyed);
        if let Some(existing) = existing {
            anyhow::bail!(
                "you already have a deployment named `{}` ({}, {}); destroy it, pick another \
                 name, or pass --allow-duplicate-name",
                existing.name,
                existing.id,
                existing.status
            );
        }
    }
    if deploy.dry_run {
        cx.progress.say(format!(
            "==> planning {} on {} (nothing will be created)",
            body.name, body.provider
        ));
    }
    let (response, replayed) =
        match cx.api.provision(&body, deploy.dry_run, deploy.idempotency_key.as_deref()).await? {
            Provisioned::Plan(plan) => {
                match cx.output {
                    Output::Json => output::json(&plan)?,
                    Output::Table => {
                        print!(
                            "{}",
                            table(
                                ["ACTION", "RESOURCE"],
                                plan.resources
                                    .iter()
                                    .map(|r| [r.action.clone(), r.address.clone()])
                            )
                        );
                        println!(
                            "Plan: {} to add, {} to change, {} to destroy.",
                            plan.add, plan.change, plan.destroy
                        );
                    }
                }
                return Ok(Outcome::Success);
            }
            Provisioned::Queued { response, replayed } => (response, replayed),
        };
    let id = response.deployment.id;
    if replayed {
        cx.progress
            .say(format!("==> {} already exists for this idempotency key ({id})", body.name));
    } else {
        cx.progress.say(format!("==> {} ({id}) queued on {}", body.name, body.provider));
    }
    if deploy.detach {
        match cx.output {
            Output::Json => output::json(&response)?,
            Output::Table => println!("{id}"),
        }
        return Ok(Outcome::Success);
    }
    follow_to_end(cx, id, response.run.id).await
}

/// Follows a run until it ends, then shows the deployment; Ctrl-C stops following (not the run).
async fn follow_to_end(cx: &Ctx, id: Uuid, run_id: Uuid) -> anyhow::Result<Outcome> {
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

async fn list(cx: &Ctx, status: Option<DeploymentStatus>, limit: u32) -> anyhow::Result<Outcome> {
    let page = cx.api.deployments(None, status, limit).await?;
    output::show(cx.output, &page, |page| {
        table(
            ["ID", "NAME", "PROVIDER", "STATUS", "CREATED"],
            page.items.iter().map(|d| {
                [
                    d.id.to_string(),
                    d.name.clone(),
                    d.provider.clone(),
                    d.status.to_string(),
                    time(Some(d.created_at)),
                ]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

fn show_deployment(cx: &Ctx, view: &DeploymentView) -> anyhow::Result<()> {
    if cx.output == Output::Json {
        return output::json(view);
    }
    println!("{} ({})", view.name, view.id);
    println!("provider:  {}", view.provider);
    let degraded =
        if view.degraded == Some(true) { " (degraded: some agents do not answer)" } else { "" };
    println!("status:    {}{degraded}", view.status);
    if let Some(reason) = &view.status_reason {
        println!("reason:    {reason}");
    }
    if let Some(run) = &view.latest_run {
        println!(
            "last run:  {} {} ({}/{} resources) {}",
            run.kind,
            run.status,
            run.progress.done,
            run.progress.total,
            time(run.finished_at.or(run.started_at).or(Some(run.created_at)))
        );
    }
    let machines = view.machines.as_deref().unwrap_or_default();
    if !machines.is_empty() {
        println!();
        print!(
            "{}",
            table(
                ["MACHINE", "PUBLIC IP", "PRIVATE IP", "AGENT", "HEALTH", "LAST SEEN", "SYSTEM"],
                machines.iter().map(|m| {
                    let address = match (&m.public_ip, m.agent_port) {
                        (Some(ip), Some(port)) => format!("{ip}:{port}"),
                        (Some(ip), None) => ip.clone(),
                        _ => "-".to_owned(),
                    };
                    [
                        m.name.clone(),
                        or_dash(m.public_ip.as_ref()),
                        or_dash(m.private_ip.as_ref()),
                        address,
                        m.status.to_string(),
                        time(m.last_seen_at),
                        system(m.info.as_ref()),
                    ]
                })
            )
        );
    }
    Ok(())
}

/// What the agent last reported of its machine: `Ubuntu 24.04.1 LTS, 4 CPU, 15.5 GiB, 1x NVIDIA A10G`.
fn system(info: Option<&serde_json::Value>) -> String {
    let info = info.and_then(|info| serde_json::from_value::<InfoResponse>(info.clone()).ok());
    let Some(info) = info else { return "-".to_owned() };
    let gib = info.memory_total_bytes as f64 / f64::from(1u32 << 30);
    let mut text = format!("{}, {} CPU, {gib:.1} GiB", info.os, info.cpus);
    if let Some(gpu) = info.gpus.first() {
        text.push_str(&format!(", {}x {}", info.gpus.len(), gpu.name));
    }
    text
}

/// A deployment by id, or by name: the one live deployment of that name, else the newest.
async fn resolve(api: &Api, reference: &str) -> anyhow::Result<Uuid> {
    if let Ok(id) = Uuid::parse_str(reference) {
        return Ok(id);
    }
    let page = api.deployments(Some(reference), None, 100).await?;
    let live: Vec<_> =
        page.items.iter().filter(|d| d.status != DeploymentStatus::Destroyed).collect();
    match live.as_slice() {
        [one] => Ok(one.id),
        [] => page.items.first().map(|d| d.id).with_context(|| {
            format!("you have no deployment named `{reference}` (see `nimctl list`)")
        }),
        many => {
            let ids: Vec<String> =
                many.iter().map(|d| format!("{} ({})", d.id, d.status)).collect();
            anyhow::bail!(
                "{} deployments are named `{reference}`; give an id: {}",
                many.len(),
                ids.join(", ")
            )
        }
    }
}

async fn destroy(cx: &Ctx, reference: &str, yes: bool, detach: bool) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let view = cx.api.deployment(id).await?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("not destroying {} without confirmation; pass --yes", view.name);
        }
        let machines = view.machines.as_ref().map_or(0, Vec::len);
        eprint!(
            "Destroy {} ({id}) and its {machines} machine(s) on {}? Type its name to confirm: ",
            view.name, view.provider
        );
        std::io::stderr().flush().ok();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).context("failed to read the answer")?;
        if answer.trim() != view.name {
            eprintln!("not destroyed");
            return Ok(Outcome::Failure);
        }
    }
    let response = cx.api.destroy(id).await?;
    cx.progress.say(format!("==> destroying {} ({id})", view.name));
    if detach {
        match cx.output {
            Output::Json => output::json(&response)?,
            Output::Table => println!("{id}"),
        }
        return Ok(Outcome::Success);
    }
    follow_to_end(cx, id, response.run.id).await
}

// ---- runs --------------------------------------------------------------------------------------

async fn runs(cx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
    let id = resolve(&cx.api, reference).await?;
    let page = cx.api.runs(id).await?;
    output::show(cx.output, &page, |page| {
        table(
            ["RUN", "KIND", "STATUS", "ATTEMPT", "STARTED", "FINISHED", "ERROR"],
            page.items.iter().map(|r| {
                [
                    r.id.to_string(),
                    r.kind.to_string(),
                    r.status.to_string(),
                    r.attempt.to_string(),
                    time(r.started_at),
                    time(r.finished_at),
                    or_dash(r.error.as_ref()),
                ]
            }),
        )
    })?;
    Ok(Outcome::Success)
}

async fn logs(
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

async fn cancel(cx: &Ctx, reference: &str, run: Option<Uuid>) -> anyhow::Result<Outcome> {
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

// ---- commands ----------------------------------------------------------------------------------

async fn command(cx: &Ctx, run: Run) -> anyhow::Result<Outcome> {
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

async fn commands(cx: &Ctx, reference: &str) -> anyhow::Result<Outcome> {
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
