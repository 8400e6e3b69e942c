//! The agent's protocol edges: health without a token, info, token checks, certificate pinning,
//! request validation, the concurrency limit and the config file.

use std::time::{Duration, Instant};

use nim_backend::services::cloud_client::{AgentTarget, CallOutcome};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use tokio::process::Command;
use wire::{ExecRequest, Problem};

use crate::helpers::{
    AGENT_BIN, Deployment, exec_one, health_all, raw_client, service, start_exec,
};

#[tokio::test]
async fn health_answers_without_a_token() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let response =
        raw_client(&deployment.cert.cert_pem).get(agent.url("/v1/health")).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let health: wire::HealthResponse = response.json().await.unwrap();
    assert_eq!(health.status, "ok");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn info_describes_the_machine() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let info = service().info(&agent.target).await.unwrap();

    assert_eq!(info.hostname, nix::unistd::gethostname().unwrap().to_string_lossy());
    assert_eq!(info.kernel, nix::sys::utsname::uname().unwrap().release().to_string_lossy());
    assert!(info.cpus >= 1 && info.memory_total_bytes > 0 && info.uptime_secs > 0, "{info:?}");
    assert!(info.memory_available_bytes <= info.memory_total_bytes);
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!info.os.is_empty());
    // This machine has no nvidia-smi: that is not an error.
    assert!(info.gpus.is_empty() && info.gpu_error.is_none(), "{info:?}");
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_with_401() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&[]).await;

    let wrong = AgentTarget {
        credentials: deployment.with_token("not-the-deployment-token"),
        ..agent.target.clone()
    };
    let result = exec_one(&wrong, ExecRequest::argv(["true"])).await;
    assert_eq!(result.status, CallOutcome::Rejected);
    assert!(result.error.as_deref().unwrap().contains("(401)"), "{:?}", result.error);
    let info = service().info(&wrong).await.unwrap_err();
    assert_eq!(info.status(), CallOutcome::Rejected);

    let response = raw_client(&deployment.cert.cert_pem)
        .post(agent.url("/v1/exec"))
        .json(&ExecRequest::argv(["true"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Problem = response.json().await.unwrap();
    assert_eq!(problem.code, "unauthorized");
}

#[tokio::test]
async fn an_agent_presenting_another_certificate_is_refused() {
    let pinned = Deployment::new();
    let impostor = Deployment::new();
    let agent = impostor.spawn_agent(&[]).await;
    // The backend expects `pinned`'s certificate at this address, and even sends its token.
    let target = AgentTarget { credentials: pinned.credentials.clone(), ..agent.target.clone() };

    let results = health_all(&service(), std::slice::from_ref(&target)).await;

    assert_eq!(results[0].status, CallOutcome::Unreachable);
    let error = results[0].error.as_deref().unwrap();
    assert!(error.contains("other than the one pinned"), "{error}");
    let exec = exec_one(&target, ExecRequest::argv(["true"])).await;
    assert_eq!(exec.status, CallOutcome::Unreachable, "no request reaches an unpinned agent");
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_problem() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&["--max-timeout-ms", "5000"]).await;
    let client = raw_client(&deployment.cert.cert_pem);
    let post = |body: &'static str| {
        client
            .post(agent.url("/v1/exec"))
            .bearer_auth(&deployment.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: [(&str, StatusCode, &str, &str); 8] = [
        (r#"{"argv": ["true"]"#, StatusCode::BAD_REQUEST, "invalid_json", "EOF"),
        (
            r#"{"argv": []}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "argv: argv[0] must name a program",
        ),
        (
            r#"{"argv": ["true"], "sehll": "x"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "unknown field `sehll`",
        ),
        (
            r#"{"argv": ["true"], "cwd": "/no/such/dir"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "cwd: /no/such/dir does not exist",
        ),
        (
            r#"{"argv": ["true"], "shell": "true"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "either argv or shell",
        ),
        (
            r#"{}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "one of argv or shell is required",
        ),
        (
            r#"{"argv": ["true"], "timeout_ms": 60000}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "timeout_ms: must be at most 5000",
        ),
        (
            r#"{"argv": ["/no/such/program"]}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "spawn_failed",
            "failed to start `/no/such/program`",
        ),
    ];
    for (body, status, code, detail) in cases {
        let response = post(body).await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        assert_eq!(response.headers()["content-type"], "application/problem+json");
        let problem: Problem = response.json().await.unwrap();
        assert_eq!(problem.code, code, "{body}");
        assert!(problem.detail.contains(detail), "{body}: {:?} lacks {detail:?}", problem.detail);
    }
}

#[tokio::test]
async fn commands_over_the_concurrency_limit_are_refused_with_429() {
    let deployment = Deployment::new();
    let agent = deployment.spawn_agent(&["--max-concurrent-execs", "2"]).await;
    let dir = tempfile::tempdir().unwrap();

    // Two commands that hold their slots until the test hangs up on them.
    let blockers: Vec<_> = (0..2)
        .map(|i| {
            let marker = dir.path().join(format!("started-{i}"));
            let request = ExecRequest::shell(format!("touch '{}'; sleep 100", marker.display()));
            start_exec(&deployment, &agent, &request)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..2).all(|i| dir.path().join(format!("started-{i}")).exists()) {
        assert!(Instant::now() < deadline, "the blocking commands never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let result = exec_one(&agent.target, ExecRequest::argv(["true"])).await;
    assert_eq!(result.status, CallOutcome::Rejected);
    let error = result.error.as_deref().unwrap();
    assert!(error.contains("(429)") && error.contains("2 commands are already running"), "{error}");

    for blocker in blockers {
        blocker.abort();
    }
    // The slots come back once the blocked requests are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = exec_one(&agent.target, ExecRequest::argv(["true"])).await;
        if result.status == CallOutcome::Succeeded {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed: {result:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn settings_can_come_from_a_json_config_file() {
    let deployment = Deployment::new();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("agent.key");
    std::fs::write(&key_file, deployment.cert.key_pem.expose_secret()).unwrap();
    let config_file = dir.path().join("agent.json");
    let config = serde_json::json!({
        "listen": "127.0.0.1:0",
        "token": deployment.token,
        "tls_cert": deployment.cert.cert_pem,
        "tls_key": key_file,
        "output_cap_bytes": 4,
    });
    std::fs::write(&config_file, config.to_string()).unwrap();
    let mut command = Command::new(AGENT_BIN.as_str());
    command.arg("--config").arg(&config_file).env_clear();

    let agent = deployment.spawn_configured(command, "configured").await;
    let result = exec_one(&agent.target, ExecRequest::argv(["echo", "hello"])).await;

    let response = result.response.unwrap();
    assert_eq!((response.stdout.as_str(), response.truncated), ("hell", true));
}

#[tokio::test]
async fn a_missing_setting_stops_the_agent_with_a_message_naming_it() {
    let output = Command::new(AGENT_BIN.as_str())
        .env_clear()
        .env("NIM_AGENT_LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NIM_AGENT_TOKEN"), "{stderr}");
}
