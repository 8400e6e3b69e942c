//! Fan-out across many agents: one result per machine, dead machines bounded by their own
//! timeout, and the readiness gate.

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use nim_backend::services::cloud_client::{
    AgentTarget, CallOutcome, CloudClientConfig, CloudClientService,
};
use nix::sys::signal::Signal;
use wire::ExecRequest;

use crate::helpers::{Deployment, EXEC_TIMEOUT, exec_all, health_all, service};

#[tokio::test]
async fn fan_out_to_20_agents_with_5_stopped_returns_every_result_within_one_timeout() {
    let deployment = Deployment::new();
    let mut agents = deployment.spawn_agents(20).await;
    // Three are frozen (TCP still connects, TLS never answers), two are gone (connection refused).
    for agent in &agents[15..18] {
        agent.signal(Signal::SIGSTOP);
    }
    for agent in &mut agents[18..] {
        agent.child.kill().await.unwrap();
    }
    let targets: Vec<AgentTarget> = agents.iter().map(|a| a.target.clone()).collect();
    let connect_timeout = Duration::from_secs(3);
    let service = CloudClientService::new(CloudClientConfig {
        connect_timeout,
        ..CloudClientConfig::default()
    });

    let started = Instant::now();
    let request = ExecRequest::argv(["echo", "ok"]);
    let results = exec_all(&service, &targets, &request, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();

    assert_eq!(results.len(), 20);
    for (result, target) in results.iter().zip(&targets) {
        assert_eq!(result.machine, target.name, "results come back in the machines' order");
    }
    for result in &results[..15] {
        assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
        assert_eq!(result.response.as_ref().unwrap().stdout, "ok\n");
    }
    for result in &results[15..] {
        assert_eq!(result.status, CallOutcome::Unreachable, "{result:?}");
        assert!(
            result.error.as_deref().is_some_and(|e| e.contains("cannot reach the agent")),
            "{result:?}"
        );
    }
    // Three frozen machines each cost the connect timeout, but in parallel: well under 3x it.
    assert!(elapsed >= connect_timeout, "the frozen agents were waited for ({elapsed:?})");
    assert!(elapsed < connect_timeout * 2 + Duration::from_secs(2), "fan-out took {elapsed:?}");
    for agent in &agents[15..18] {
        agent.signal(Signal::SIGKILL);
    }
}

#[tokio::test]
async fn health_reports_each_machine_separately() {
    let deployment = Deployment::new();
    let mut agents = deployment.spawn_agents(3).await;
    agents[1].child.kill().await.unwrap();
    let targets: Vec<AgentTarget> = agents.iter().map(|a| a.target.clone()).collect();

    let results = health_all(&service(), &targets).await;

    let statuses: Vec<CallOutcome> = results.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [CallOutcome::Succeeded, CallOutcome::Unreachable, CallOutcome::Succeeded]
    );
    assert_eq!(results[0].response.as_ref().unwrap().status, "ok");
}

#[tokio::test]
async fn wait_ready_returns_once_a_late_agent_starts() {
    let deployment = Deployment::new();
    let port = free_port();
    let service = service();
    let late = AgentTarget {
        name: "late".into(),
        host: "127.0.0.1".into(),
        port,
        credentials: deployment.credentials.clone(),
    };
    let early = deployment.spawn_agent(&[]).await;
    let targets = [early.target.clone(), late];

    let listen = format!("127.0.0.1:{port}");
    let start_late = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        deployment.spawn_agent(&["--listen", &listen]).await
    };
    let (ready, _late_agent) = tokio::join!(
        service.wait_ready(&targets, Instant::now() + Duration::from_secs(60)),
        start_late
    );

    ready.expect("both agents answer before the deadline");
}

#[tokio::test]
async fn wait_ready_names_the_machines_that_never_answered() {
    let deployment = Deployment::new();
    let up = deployment.spawn_agent(&[]).await;
    let down = AgentTarget {
        name: "down".into(),
        host: "127.0.0.1".into(),
        port: free_port(),
        credentials: deployment.credentials.clone(),
    };

    let started = Instant::now();
    let err = service()
        .wait_ready(&[up.target.clone(), down], Instant::now() + Duration::from_millis(1500))
        .await
        .unwrap_err();

    assert_eq!(err.total, 2);
    assert_eq!(err.pending.len(), 1);
    assert_eq!(err.pending[0].0, "down");
    assert!(err.to_string().contains("down (cannot reach the agent"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn wait_ready_past_its_deadline_names_every_machine() {
    let deployment = Deployment::new();
    let machines: Vec<AgentTarget> = ["a", "b"]
        .into_iter()
        .map(|name| AgentTarget {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: free_port(),
            credentials: deployment.credentials.clone(),
        })
        .collect();

    let err = service().wait_ready(&machines, Instant::now()).await.unwrap_err();

    let names: Vec<&str> = err.pending.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}

#[tokio::test]
async fn repeated_calls_to_a_deployment_reuse_one_connection() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;
    let service = service();
    let machines = std::slice::from_ref(&agent.target);

    assert_eq!(health_all(&service, machines).await[0].status, CallOutcome::Succeeded);
    let first = open_connections_to(agent.addr.port());
    for _ in 0..5 {
        let results =
            exec_all(&service, machines, &ExecRequest::argv(["true"]), EXEC_TIMEOUT).await;
        assert_eq!(results[0].status, CallOutcome::Succeeded);
        assert_eq!(health_all(&service, machines).await[0].status, CallOutcome::Succeeded);
    }
    service.info(&agent.target).await.unwrap();

    assert_eq!(first.len(), 1, "one connection after the first call: {first:?}");
    assert_eq!(
        open_connections_to(agent.addr.port()),
        first,
        "later calls use the same connection"
    );
}

/// Local addresses of the established loopback connections to `port` (`/proc/net/tcp`).
fn open_connections_to(port: u16) -> Vec<String> {
    const ESTABLISHED: &str = "01";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[2].ends_with(&remote) && fields[3] == ESTABLISHED).then(|| fields[1].to_owned())
        })
        .collect()
}
