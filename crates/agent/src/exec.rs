//! Running one command: checking the request, starting the child in its own process group with
//! a clean environment, capturing capped output, and killing the whole group on timeout, on shutdown, or when the
//! request is dropped because the client went away.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io,
    os::unix::process::ExitStatusExt,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    sys::signal::{Signal, killpg},
    unistd::{Pid, geteuid},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use wire::{ExecRequest, ExecResponse, FieldError};

use crate::{config::Limits, error::ApiError};

/// After the command's own process exits, how long to keep reading output that a background
/// process it started may still be writing. Past that the agent answers and leaves the
/// background process running: `cmd &` in a script is how people start daemons.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// `PATH` of every command: the usual system directories, whatever the agent's own `PATH` is.
pub(crate) const COMMAND_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment a command starts with, before the request's `env` is applied on top:
/// `PATH` ([`COMMAND_PATH`]), `HOME` (the agent's, else `/root` for uid 0, else `/`) and `LANG`
/// (the agent's, else `C.UTF-8`); an empty value counts as unset. Nothing else of the agent's
/// own environment reaches a command: the agent may have been started with its token
/// (`NIM_AGENT_TOKEN`), its key, or whatever its launcher had in its environment.
pub(crate) fn command_base_env() -> [(&'static str, OsString); 3] {
    base_env(std::env::var_os("HOME"), std::env::var_os("LANG"), geteuid().is_root())
}

fn base_env(
    home: Option<OsString>,
    lang: Option<OsString>,
    root: bool,
) -> [(&'static str, OsString); 3] {
    let set = |value: Option<OsString>| value.filter(|value| !value.is_empty());
    let home = set(home).unwrap_or_else(|| if root { "/root" } else { "/" }.into());
    let lang = set(lang).unwrap_or_else(|| "C.UTF-8".into());
    [("PATH", COMMAND_PATH.into()), ("HOME", home), ("LANG", lang)]
}

/// A request that passed every check and can be started.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    stdin: Option<String>,
    timeout: Duration,
}

impl ExecPlan {
    /// Checks a request against the limits; every problem is reported, not only the first.
    pub(crate) async fn new(request: ExecRequest, limits: &Limits) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let (program, args) = match (request.argv, request.shell) {
            (Some(_), Some(_)) => {
                errors.push(FieldError::new("shell", "give either argv or shell, not both"));
                (String::new(), Vec::new())
            }
            (None, None) => {
                errors.push(FieldError::new("body", "one of argv or shell is required"));
                (String::new(), Vec::new())
            }
            (Some(argv), None) => {
                let mut argv = argv.into_iter();
                match argv.next() {
                    Some(program) if !program.is_empty() => (program, argv.collect()),
                    _ => {
                        errors.push(FieldError::new("argv", "argv[0] must name a program"));
                        (String::new(), Vec::new())
                    }
                }
            }
            (None, Some(script)) => {
                if script.trim().is_empty() {
                    errors.push(FieldError::new("shell", "must not be empty"));
                }
                ("/bin/sh".to_owned(), vec!["-c".to_owned(), script])
            }
        };
        if std::iter::once(&program).chain(&args).any(|arg| arg.contains('\0')) {
            errors.push(FieldError::new("argv", "arguments must not contain NUL bytes"));
        }
        for (name, value) in &request.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                errors.push(FieldError::new(
                    format!("env.{name}"),
                    "names must be non-empty without `=` or NUL, values without NUL",
                ));
            }
        }
        let timeout = match request.timeout_ms.map(Duration::from_millis) {
            None => limits.default_timeout,
            Some(timeout) if timeout.is_zero() => {
                errors.push(FieldError::new("timeout_ms", "must be at least 1"));
                timeout
            }
            Some(timeout) if timeout > limits.max_timeout => {
                errors.push(FieldError::new(
                    "timeout_ms",
                    format!(
                        "must be at most {} (this agent's maximum)",
                        limits.max_timeout.as_millis()
                    ),
                ));
                timeout
            }
            Some(timeout) => timeout,
        };
        let cwd = request.cwd.map(PathBuf::from);
        if let Some(cwd) = &cwd {
            match tokio::fs::metadata(cwd).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => errors
                    .push(FieldError::new("cwd", format!("{} is not a directory", cwd.display()))),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    errors
                        .push(FieldError::new("cwd", format!("{} does not exist", cwd.display())));
                }
                Err(err) => {
                    errors.push(FieldError::new("cwd", format!("{}: {err}", cwd.display())))
                }
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(Self { program, args, env: request.env, cwd, stdin: request.stdin, timeout })
    }

    /// Runs the command to its end. `shutdown` kills it early (SIGTERM's grace period is over).
    /// Dropping the returned future kills the whole process group.
    ///
    /// Longer than our usual function on purpose: the child, its stdin writer, both capped
    /// pipes, the timeout and the shutdown signal are one select loop over state only it holds;
    /// in one place it shows that output is read to the end whichever way the command stops.
    pub(crate) async fn run(
        self,
        output_cap: usize,
        shutdown: CancellationToken,
    ) -> Result<ExecResponse, ApiError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(command_base_env())
            .envs(&self.env)
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that a timeout can kill everything it started.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        let started = Instant::now();
        let mut child = command.spawn().map_err(|err| {
            ApiError::SpawnFailed(format!("failed to start `{}`: {err}", self.program))
        })?;
        let pid =
            child.id().ok_or_else(|| anyhow::anyhow!("the child exited before it had a pid"))?;
        // Declared after `child` so that it drops first: the group is killed while its leader is
        // still unreaped, and so while the group id cannot have been reused.
        let mut group = GroupGuard::new(pid);
        tracing::debug!(program = %self.program, pid, "command started");

        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (stdin, input) = (child.stdin.take(), self.stdin);
        let mut out = Capture::new(output_cap);
        let mut err = Capture::new(output_cap);
        // The borrows of `out` and `err` end with this block.
        let (status, timed_out) = {
            let mut io = std::pin::pin!(async {
                tokio::join!(
                    feed(stdin, input),
                    read_capped(stdout, &mut out),
                    read_capped(stderr, &mut err)
                )
            });

            let mut io_done = false;
            let deadline = tokio::time::sleep(self.timeout);
            tokio::pin!(deadline);
            let (status, timed_out) = loop {
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map_err(|e| {
                            anyhow::anyhow!("failed to wait for `{}`: {e}", self.program)
                        })?;
                        break (status, false);
                    }
                    _ = &mut io, if !io_done => io_done = true,
                    () = &mut deadline => {
                        group.kill();
                        break (wait_killed(&mut child).await?, true);
                    }
                    () = shutdown.cancelled() => {
                        tracing::warn!(pid, "shutting down: killing a running command");
                        group.kill();
                        break (wait_killed(&mut child).await?, false);
                    }
                }
            };
            // The leader is reaped: from here on the group id may be reused, so never signal it.
            group.disarm();
            if !io_done && tokio::time::timeout(DRAIN_AFTER_EXIT, &mut io).await.is_err() {
                tracing::info!(
                    pid,
                    "a background process still holds the output open; answering without waiting for it"
                );
            }
            (status, timed_out)
        };
        let duration = started.elapsed();
        tracing::info!(
            program = %self.program,
            pid,
            %status,
            timed_out,
            duration_ms = duration.as_millis() as u64,
            "command finished"
        );
        Ok(ExecResponse {
            exit_code: status.code(),
            signal: status.signal(),
            truncated: out.truncated || err.truncated,
            stdout: String::from_utf8_lossy(&out.kept).into_owned(),
            stderr: String::from_utf8_lossy(&err.kept).into_owned(),
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            timed_out,
        })
    }
}

async fn wait_killed(child: &mut tokio::process::Child) -> Result<ExitStatus, ApiError> {
    Ok(child.wait().await.map_err(|e| anyhow::anyhow!("failed to reap a killed command: {e}"))?)
}

/// Kills the command's whole process group when dropped while armed: a timeout, a shutdown, or
/// a client that hung up (axum drops the handler's future) all end here.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    fn new(leader: u32) -> Self {
        let pgid = Pid::from_raw(i32::try_from(leader).expect("pids fit in i32"));
        Self { pgid, armed: true }
    }

    fn kill(&mut self) {
        if self.armed {
            match killpg(self.pgid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(err) => {
                    tracing::error!(pgid = %self.pgid, error = %err, "failed to kill a process group")
                }
            }
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            tracing::info!(pgid = %self.pgid, "request dropped: killing its process group");
            self.kill();
        }
    }
}

/// One output stream: the first `cap` bytes, and whether more came.
struct Capture {
    kept: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capture {
    fn new(cap: usize) -> Self {
        Self { kept: Vec::new(), cap, truncated: false }
    }
}

/// Reads `stream` to its end, keeping at most the cap and discarding the rest as it arrives, so
/// a chatty command neither blocks on a full pipe nor grows the agent's memory.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>, capture: &mut Capture) {
    let Some(mut stream) = stream else { return };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return,
            Ok(n) => {
                let room = capture.cap - capture.kept.len();
                let keep = n.min(room);
                capture.kept.extend_from_slice(&chunk[..keep]);
                capture.truncated |= keep < n;
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                tracing::warn!(error = %err, "failed to read a command's output");
                return;
            }
        }
    }
}

/// Writes the request's stdin, then closes it. A command that exits without reading it all is
/// not an error.
async fn feed(stdin: Option<tokio::process::ChildStdin>, input: Option<String>) {
    let (Some(mut stdin), Some(input)) = (stdin, input) else { return };
    if let Err(err) = stdin.write_all(input.as_bytes()).await
        && err.kind() != io::ErrorKind::BrokenPipe
    {
        tracing::warn!(error = %err, "failed to write a command's stdin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(env: [(&'static str, OsString); 3]) -> Vec<(&'static str, String)> {
        env.into_iter().map(|(name, value)| (name, value.into_string().unwrap())).collect()
    }

    #[test]
    fn the_base_environment_keeps_the_agents_home_and_lang() {
        let env = base_env(Some("/home/nim".into()), Some("de_DE.UTF-8".into()), true);
        assert_eq!(
            values(env),
            [
                ("PATH", COMMAND_PATH.to_owned()),
                ("HOME", "/home/nim".into()),
                ("LANG", "de_DE.UTF-8".into())
            ]
        );
    }

    #[test]
    fn without_home_or_lang_root_gets_slash_root_and_others_slash() {
        assert_eq!(
            values(base_env(None, Some("".into()), true)),
            [
                ("PATH", COMMAND_PATH.to_owned()),
                ("HOME", "/root".into()),
                ("LANG", "C.UTF-8".into())
            ]
        );
        assert_eq!(
            values(base_env(Some("".into()), None, false)),
            [("PATH", COMMAND_PATH.to_owned()), ("HOME", "/".into()), ("LANG", "C.UTF-8".into())]
        );
    }
}
