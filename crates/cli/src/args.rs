//! The command line: every subcommand and flag, with the `--help` text in the doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wire::status::DeploymentStatus;

/// The command-line client of nim-backend: sign in, provision machines on AWS, Azure, GCP or
/// locally, run commands on them, and tear them down.
///
/// Exit status: 0 on success; 1 when the request or the operation failed (a deployment that
/// ended `failed`, a command that did not succeed on every machine); 2 for a usage error.
#[derive(Debug, Parser)]
#[command(name = "nimctl", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// The nim-backend to talk to.
    #[arg(long, env = "NIM_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub(crate) server: String,
    /// `table` for people, `json` for scripts (the API's own JSON, one document per command).
    #[arg(long, short = 'o', env = "NIM_OUTPUT", value_enum, default_value_t = Output::Table, global = true)]
    pub(crate) output: Output,
    /// Print no progress to standard error; results still go to standard output.
    #[arg(long, short = 'q', global = true)]
    pub(crate) quiet: bool,
    /// An access token to use instead of the saved session (it is not refreshed or saved).
    #[arg(long, env = "NIM_TOKEN", hide_env_values = true, global = true)]
    pub(crate) token: Option<String>,
    /// Where sessions are saved [default: $XDG_CONFIG_HOME/nimctl/sessions.json, else
    /// ~/.config/nimctl/sessions.json].
    #[arg(long, env = "NIMCTL_SESSIONS", global = true)]
    pub(crate) sessions: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create an account (the built-in provider signs you in at once).
    Signup(Credentials),
    /// Sign in and save the session for this server.
    Login(Credentials),
    /// End the session and forget it.
    Logout,
    /// Show who you are signed in as.
    Whoami,
    /// List the provider modules, or show one module's variables.
    Providers {
        /// A module name (`aws`, `azure`, `gcp`, `local`, ...).
        name: Option<String>,
    },
    /// Provision a deployment and follow it until it is ready.
    Deploy(Deploy),
    /// List your deployments, newest first.
    List {
        /// Only deployments in this status.
        #[arg(long, value_parser = parse_status)]
        status: Option<DeploymentStatus>,
        /// How many to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
    },
    /// Show a deployment: status, machines and their health, latest run.
    Status {
        /// A deployment's name or id.
        deployment: String,
    },
    /// Destroy a deployment and follow the destroy until it is gone.
    Destroy {
        /// A deployment's name or id.
        deployment: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Return once the destroy is queued instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Run a failed deployment's last apply again, keeping what it made, and follow it.
    Retry {
        /// A deployment's name or id.
        deployment: String,
        /// Return once the retry is queued instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Change a deployment's variables (`null` resets one to the module's default) and follow
    /// the update until it is ready.
    Update {
        /// A deployment's name or id.
        deployment: String,
        /// A variable, `KEY=VALUE` (repeatable), typed as the module declares it; `KEY=null`
        /// resets it to the module's default.
        #[arg(long = "var", value_name = "KEY=VALUE", required = true)]
        vars: Vec<String>,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the update is queued instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Change how many machines a deployment has (machines that stay are untouched; on a
    /// scale-down the highest-numbered go) and follow it.
    Scale {
        /// A deployment's name or id.
        deployment: String,
        /// The number of machines.
        #[arg(long)]
        count: u32,
        /// Print what would change and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the update is queued instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Destroy one machine of a deployment and create it again, and follow it.
    Replace {
        /// A deployment's name or id.
        deployment: String,
        /// The machine's name (from `nimctl status`).
        machine: String,
        /// Return once the replace is queued instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// Run a command on a deployment's machines and print each machine's result.
    Run(Run),
    /// Show a run's log (the latest run by default).
    Logs {
        /// A deployment's name or id.
        deployment: String,
        /// A run id from `nimctl runs`.
        #[arg(long)]
        run: Option<uuid::Uuid>,
        /// Keep following new events until the run ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// List a deployment's Terraform runs, newest first.
    Runs {
        /// A deployment's name or id.
        deployment: String,
    },
    /// Cancel a deployment's queued or running Terraform run.
    Cancel {
        /// A deployment's name or id.
        deployment: String,
        /// The run to cancel (default: the active one).
        #[arg(long)]
        run: Option<uuid::Uuid>,
    },
    /// List the commands sent to a deployment, newest first.
    Commands {
        /// A deployment's name or id.
        deployment: String,
    },
    /// Print a shell completion script: `nimctl completions bash > /etc/bash_completion.d/nimctl`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub(crate) struct Credentials {
    /// Your email address.
    #[arg(long, env = "NIM_EMAIL")]
    pub(crate) email: String,
    /// Read the password from standard input (one line) instead of prompting for it.
    #[arg(long)]
    pub(crate) password_stdin: bool,
}

#[derive(Debug, Args)]
pub(crate) struct Deploy {
    /// A name for the deployment: 1-63 lowercase letters, digits and hyphens, starting with a
    /// letter.
    pub(crate) name: String,
    /// The provider module (see `nimctl providers`).
    #[arg(long, short = 'p')]
    pub(crate) provider: String,
    /// How many machines (the module's `machine_count`).
    #[arg(long, short = 'n')]
    pub(crate) count: Option<u32>,
    /// A module variable, `KEY=VALUE`. Taken as text for `string` variables, as JSON or HCL for
    /// others: `--var disk_size_gb=100 --var 'allowed_cidrs=["203.0.113.7/32"]'`. Repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub(crate) vars: Vec<String>,
    /// Variables from a file: a JSON object (`.json`) or Terraform variable definitions
    /// (`.tfvars`). `--var` and `--count` win over it. Repeatable.
    #[arg(long = "var-file", value_name = "FILE")]
    pub(crate) var_files: Vec<PathBuf>,
    /// Plan only: show what would be created, and create nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Return once the deployment is queued instead of following it.
    #[arg(long)]
    pub(crate) detach: bool,
    /// Makes retrying safe: the same key and request return the original deployment instead of
    /// creating a second one.
    #[arg(long)]
    pub(crate) idempotency_key: Option<String>,
    /// Deploy even if a live deployment already has this name (names then need ids to tell
    /// them apart).
    #[arg(long)]
    pub(crate) allow_duplicate_name: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["argv", "shell"]))]
pub(crate) struct Run {
    /// A deployment's name or id.
    pub(crate) deployment: String,
    /// Only these machines (repeatable; default: all of them).
    #[arg(long = "machine", short = 'm', value_name = "NAME")]
    pub(crate) machines: Vec<String>,
    /// Seconds each machine's command may run before it is killed (1-3600).
    #[arg(long, default_value_t = 60)]
    pub(crate) timeout: u64,
    /// Machines running it at once: a count or a percentage (`25%`).
    #[arg(long)]
    pub(crate) max_concurrency: Option<String>,
    /// Stop starting machines once this many (or this percentage) have failed.
    #[arg(long)]
    pub(crate) max_errors: Option<String>,
    /// An environment variable for the command, `KEY=VALUE` (repeatable; stored with the
    /// command, so no secrets).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub(crate) env: Vec<String>,
    /// The working directory on the machines.
    #[arg(long)]
    pub(crate) cwd: Option<String>,
    /// A script for `/bin/sh -c` instead of a program.
    #[arg(long, short = 's')]
    pub(crate) shell: Option<String>,
    /// The program and its arguments, after `--`.
    #[arg(last = true, value_name = "ARGV")]
    pub(crate) argv: Vec<String>,
}

fn parse_status(text: &str) -> Result<DeploymentStatus, String> {
    text.parse().map_err(|_| {
        let all: Vec<_> = DeploymentStatus::ALL.iter().map(|s| s.as_str()).collect();
        format!("expected one of {}", all.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_a_program_after_the_separator_or_a_script() {
        let cli = Cli::try_parse_from(["nimctl", "run", "web", "--", "uname", "-a"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.argv, ["uname", "-a"]);
        assert!(run.shell.is_none());
        let cli = Cli::try_parse_from(["nimctl", "run", "web", "--shell", "nproc"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.shell.as_deref(), Some("nproc"));
        // Neither, or both, is a usage error.
        assert!(Cli::try_parse_from(["nimctl", "run", "web"]).is_err());
        assert!(Cli::try_parse_from(["nimctl", "run", "web", "-s", "x", "--", "y"]).is_err());
    }

    #[test]
    fn completions_cover_every_subcommand() {
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "nimctl",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        for subcommand in ["deploy", "destroy", "run", "logs", "providers"] {
            assert!(script.contains(subcommand), "{subcommand} missing");
        }
    }

    #[test]
    fn list_rejects_an_unknown_status_naming_the_valid_ones() {
        let err = Cli::try_parse_from(["nimctl", "list", "--status", "bogus"]).unwrap_err();
        assert!(err.to_string().contains("pending, provisioning, ready"), "{err}");
    }
}
