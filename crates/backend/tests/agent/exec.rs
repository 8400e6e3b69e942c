//! `POST /v1/exec` end to end: commands, exit codes, signals, inputs, timeouts and output caps.

use std::time::{Duration, Instant};

use nim_backend::services::cloud_client::CallOutcome;
use wire::ExecRequest;

use crate::helpers::{
    Deployment, exec_one, process_tree_script, read_pids, start_exec, survivors_after,
};

#[tokio::test]
async fn exec_runs_argv_directly_without_a_shell() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let result = exec_one(&agent.target, ExecRequest::argv(["echo", "$HOME", "a  b"])).await;

    assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
    let response = result.response.unwrap();
    assert_eq!(response.stdout, "$HOME a  b\n");
    assert_eq!(
        (response.exit_code, response.signal, response.truncated, response.timed_out),
        (Some(0), None, false, false)
    );
    assert!(result.error.is_none());
}

#[tokio::test]
async fn exec_runs_shell_scripts_and_reports_non_zero_exits_as_failed() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let result =
        exec_one(&agent.target, ExecRequest::shell("echo $((40 + 2)); echo oops >&2; exit 3"))
            .await;

    assert_eq!(result.status, CallOutcome::Failed);
    let response = result.response.unwrap();
    assert_eq!((response.stdout.as_str(), response.stderr.as_str()), ("42\n", "oops\n"));
    assert_eq!(response.exit_code, Some(3));
    assert!(result.error.is_none(), "an exit code says it all");
}

#[tokio::test]
async fn exec_reports_the_signal_that_ended_a_command() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let result = exec_one(&agent.target, ExecRequest::shell("kill -TERM $$")).await;

    assert_eq!(result.status, CallOutcome::Failed);
    let response = result.response.unwrap();
    assert_eq!((response.exit_code, response.signal), (None, Some(15)));
    assert!(result.error.unwrap().contains("signal 15"));
}

#[tokio::test]
async fn exec_passes_env_cwd_and_stdin_to_the_command() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().canonicalize().unwrap().display().to_string();

    let request = ExecRequest::shell(r#"echo "$GREETING"; pwd; cat"#)
        .with_env("GREETING", "hello from env")
        .with_cwd(&cwd)
        .with_stdin("line one\nline two\n");
    let result = exec_one(&agent.target, request).await;

    assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
    assert_eq!(
        result.response.unwrap().stdout,
        format!("hello from env\n{cwd}\nline one\nline two\n")
    );
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_tree() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");

    let started = Instant::now();
    let request = ExecRequest::shell(process_tree_script(&pids_file)).with_timeout_ms(1_000);
    let result = exec_one(&agent.target, request).await;

    assert_eq!(result.status, CallOutcome::TimedOut, "{result:?}");
    let response = result.response.unwrap();
    assert!(response.timed_out);
    assert_eq!(response.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let pids = read_pids(&pids_file, 2).await;
    assert_eq!(
        survivors_after(&pids, Duration::from_secs(10)).await,
        Vec::<i32>::new(),
        "sh and its background sleep must both be gone"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_gets_its_command_tree_killed() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let pids_file = dir.path().join("pids");

    let request = ExecRequest::shell(process_tree_script(&pids_file)).with_timeout_ms(100_000);
    let call = start_exec(&deployment, &agent, &request);
    let pids = read_pids(&pids_file, 2).await;
    assert!(pids.iter().all(|pid| crate::helpers::process_alive(*pid)), "the command is running");
    call.abort();

    assert_eq!(
        survivors_after(&pids, Duration::from_secs(15)).await,
        Vec::<i32>::new(),
        "hanging up must kill the command's whole group"
    );
}

#[tokio::test]
async fn output_beyond_the_cap_is_dropped_and_flagged_without_being_buffered() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    // 50 MiB on stdout, a little on stderr.
    let result =
        exec_one(&agent.target, ExecRequest::shell("yes | head -c 52428800; echo done >&2")).await;

    assert_eq!(result.status, CallOutcome::Succeeded, "{:?}", result.error);
    let response = result.response.unwrap();
    assert!(response.truncated);
    assert_eq!(response.stdout.len(), 1024 * 1024, "exactly the default 1 MiB cap is kept");
    assert!(response.stdout.starts_with("y\ny\n"));
    assert_eq!(response.stderr, "done\n");
    let peak_kib = peak_rss_kib(agent.child.id().unwrap());
    assert!(peak_kib < 48 * 1024, "the agent peaked at {peak_kib} KiB: it must not hold 50 MiB");
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/pid/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_background_process_holding_the_output_open_does_not_hold_the_answer() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let started = Instant::now();
    let result = exec_one(&agent.target, ExecRequest::shell("sleep 20 & echo started")).await;

    assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
    assert_eq!(result.response.unwrap().stdout, "started\n");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
}
