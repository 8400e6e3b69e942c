//! `nimctl`, the command-line client of nim-backend's HTTP API. `main` parses the command line,
//! runs one subcommand on a single-threaded runtime and turns its outcome into an exit status;
//! each subcommand is a function in `verbs/` that calls [`client::Api`] and prints through
//! [`output`].

mod args;
mod client;
mod follow;
mod output;
mod session;
mod vars;
mod verbs;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    args::{Cli, Command, Global, Output},
    client::Api,
    output::{Progress, or_dash},
    verbs::{
        cancel, command, commands, deploy, destroy, list, login, logs, providers, replace, resolve,
        retry, runs, show_deployment, signup, update,
    },
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
        Command::Deploy(request) => deploy(&cx, request).await,
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
        Command::Retry { deployment, detach } => retry(&cx, &deployment, detach).await,
        Command::Update { deployment, vars, dry_run, detach } => {
            update(&cx, &deployment, &vars, None, dry_run, detach).await
        }
        Command::Scale { deployment, count, dry_run, detach } => {
            update(&cx, &deployment, &[], Some(count), dry_run, detach).await
        }
        Command::Replace { deployment, machine, detach } => {
            replace(&cx, &deployment, &machine, detach).await
        }
        Command::Run(request) => command(&cx, request).await,
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
