//! SIGTERM: the agent stops accepting, lets running commands finish within the grace period,
//! and kills the ones that do not.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use wire::ExecRequest;

use crate::helpers::{Deployment, raw_client, start_exec};

async fn wait_for(file: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_a_running_command_finish_within_the_grace_period() {
    let deployment = Deployment::new();
    let mut agent = deployment.spawn_agent(&["--shutdown-grace-secs", "30"]).await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");

    let request =
        ExecRequest::shell(format!("touch '{}'; sleep 1; echo finished", started.display()));
    let call = start_exec(&deployment, &agent, &request);
    wait_for(&started).await;
    agent.signal(Signal::SIGTERM);

    let response = call.await.unwrap().expect("the command's answer arrives");
    assert_eq!((response.exit_code, response.stdout.as_str()), (Some(0), "finished\n"));
    let status = tokio::time::timeout(Duration::from_secs(20), agent.child.wait())
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_kills_commands_still_running_after_the_grace_period() {
    let deployment = Deployment::new();
    let mut agent = deployment.spawn_agent(&["--shutdown-grace-secs", "1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");

    let request = ExecRequest::shell(format!("touch '{}'; sleep 100", started.display()));
    let call = start_exec(&deployment, &agent, &request);
    wait_for(&started).await;
    let signalled = Instant::now();
    agent.signal(Signal::SIGTERM);

    let response = call.await.unwrap().expect("the killed command is still answered");
    assert_eq!((response.exit_code, response.signal, response.timed_out), (None, Some(9), false));
    let status = tokio::time::timeout(Duration::from_secs(20), agent.child.wait())
        .await
        .expect("the agent exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(20), "took {:?}", signalled.elapsed());
    // And no new connection is accepted.
    let refused = raw_client(&deployment.cert.cert_pem).get(agent.url("/v1/health")).send().await;
    assert!(refused.is_err());
}
