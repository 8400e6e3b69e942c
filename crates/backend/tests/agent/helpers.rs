//! Starting real agents for tests: one [`Deployment`] mints a certificate and token, and
//! [`Deployment::spawn_agent`] runs the built `nim-agent` binary on a free loopback port.

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use nim_backend::services::{
    certs::{AgentPin, DeploymentCert, mint_deployment_cert},
    cloud_client::{
        AgentCredentials, AgentTarget, CloudClientConfig, CloudClientService, MachineResult,
    },
};
use secrecy::{ExposeSecret, SecretString};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};
use wire::{ExecRequest, ExecResponse, HealthResponse};

#[path = "../support/binaries.rs"]
#[allow(dead_code, reason = "the agent's tests run only the agent")]
mod binaries;

/// The `nim-agent` binary, built beside `nim-backend`.
pub(crate) static AGENT_BIN: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| binaries::agent_binary().display().to_string());

/// A deployment's secrets: the certificate its agents serve and the token they expect.
pub(crate) struct Deployment {
    pub(crate) cert: DeploymentCert,
    pub(crate) token: String,
    pub(crate) credentials: Arc<AgentCredentials>,
}

impl Deployment {
    pub(crate) fn new() -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let cert = mint_deployment_cert(&id).expect("minting a certificate works");
        let token = format!("test-token-{}", uuid::Uuid::new_v4().simple());
        let credentials = Arc::new(
            AgentCredentials::new(&cert.cert_pem, SecretString::from(token.clone()))
                .expect("a minted certificate is a valid pin"),
        );
        Self { cert, token, credentials }
    }

    /// Credentials with this deployment's pin but another token.
    pub(crate) fn with_token(&self, token: &str) -> Arc<AgentCredentials> {
        Arc::new(
            AgentCredentials::new(&self.cert.cert_pem, SecretString::from(token.to_owned()))
                .unwrap(),
        )
    }

    /// A `nim-agent` serving this deployment's certificate on 127.0.0.1, port chosen by the OS.
    pub(crate) async fn spawn_agent(&self, extra_args: &[&str]) -> TestAgent {
        let mut command = Command::new(AGENT_BIN.as_str());
        command
            .args(extra_args)
            .env("NIM_AGENT_LISTEN", "127.0.0.1:0")
            .env("NIM_AGENT_TOKEN", &self.token)
            .env("NIM_AGENT_TLS_CERT", &self.cert.cert_pem)
            .env("NIM_AGENT_TLS_KEY", self.cert.key_pem.expose_secret());
        self.spawn_configured(command, "agent").await
    }

    pub(crate) async fn spawn_agents(&self, count: usize) -> Vec<TestAgent> {
        let agents = (0..count).map(|_| self.spawn_agent(&[]));
        futures_util::future::join_all(agents).await
    }

    /// The settings of [`Deployment::spawn_agent`] as `--config` JSON, the key as PEM text.
    pub(crate) fn config_json(&self) -> String {
        serde_json::json!({
            "listen": "127.0.0.1:0",
            "token": self.token,
            "tls_cert": self.cert.cert_pem,
            "tls_key": self.cert.key_pem.expose_secret(),
        })
        .to_string()
    }

    /// Runs a prepared `nim-agent` command, stdin null, and waits for its `{"listening": ...}`
    /// line.
    pub(crate) async fn spawn_configured(&self, command: Command, name: &str) -> TestAgent {
        self.spawn_configured_with(command, name, AgentStdin::Null).await
    }

    /// [`Deployment::spawn_configured`] with the agent's stdin given by `stdin`.
    pub(crate) async fn spawn_configured_with(
        &self,
        mut command: Command,
        name: &str,
        stdin: AgentStdin,
    ) -> TestAgent {
        let (stdio, input) = match stdin {
            AgentStdin::Null => (Stdio::null(), None),
            AgentStdin::Pipe(input) => (Stdio::piped(), Some(input)),
            AgentStdin::File(file) => (Stdio::from(file), None),
        };
        command
            .stdin(stdio)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true);
        let mut child = command.spawn().expect("nim-agent starts");
        if let Some(input) = input {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes()).await.expect("the agent reads its stdin");
            // Dropping the pipe is the end of file the agent reads to.
            drop(pipe);
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the agent announces its address within 30 s")
            .expect("the agent's stdout is readable");
        let announced: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|err| panic!("the first stdout line {line:?} is JSON: {err}"));
        let addr: SocketAddr =
            announced["listening"].as_str().expect("a listening address").parse().unwrap();
        TestAgent {
            target: AgentTarget {
                name: format!("{name}-{}", addr.port()),
                host: addr.ip().to_string(),
                port: addr.port(),
                credentials: self.credentials.clone(),
            },
            addr,
            child,
        }
    }
}

/// What a test agent's standard input is.
pub(crate) enum AgentStdin {
    Null,
    /// A pipe that gets this text, then end of file.
    Pipe(String),
    /// An open file, as a shell's `< file` gives it.
    File(std::fs::File),
}

/// A running agent process; killed when dropped.
pub(crate) struct TestAgent {
    pub(crate) target: AgentTarget,
    pub(crate) addr: SocketAddr,
    pub(crate) child: Child,
}

impl TestAgent {
    pub(crate) fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id().expect("the agent is running") as i32)
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("the agent can be signalled");
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

/// The service under test, with timeouts that suit a loaded two-core test machine.
pub(crate) fn service() -> CloudClientService {
    CloudClientService::new(CloudClientConfig {
        connect_timeout: Duration::from_secs(3),
        ..CloudClientConfig::default()
    })
}

/// A command's timeout when the request sets none (the backend's default, 60 s).
pub(crate) const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Calls in flight at once in `exec_all` (a command's default `max_concurrency`).
const EXEC_CONCURRENCY: usize = 64;

/// Runs one command on one agent through the service.
pub(crate) async fn exec_one(
    target: &AgentTarget,
    request: ExecRequest,
) -> MachineResult<ExecResponse> {
    service().exec_one(target, &request, EXEC_TIMEOUT).await
}

/// Runs one command on every machine through `service`, at most 64 at once, results in the
/// machines' order: the calls a command's rollout makes, without its bookkeeping.
pub(crate) async fn exec_all(
    service: &CloudClientService,
    targets: &[AgentTarget],
    request: &ExecRequest,
    timeout: Duration,
) -> Vec<MachineResult<ExecResponse>> {
    // As a rollout does: a slow machine holds only its own slot.
    let calls = targets.iter().enumerate().map(|(index, target)| async move {
        (index, service.exec_one(target, request, timeout).await)
    });
    let mut results: Vec<_> =
        futures_util::stream::iter(calls).buffer_unordered(EXEC_CONCURRENCY).collect().await;
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Asks every machine's agent whether it is up, at once, results in the machines' order.
pub(crate) async fn health_all(
    service: &CloudClientService,
    targets: &[AgentTarget],
) -> Vec<MachineResult<HealthResponse>> {
    let timeout = CloudClientConfig::default().call_timeout;
    futures_util::future::join_all(targets.iter().map(|t| service.health_one(t, timeout))).await
}

/// A plain HTTPS client that trusts only `pin`, for requests the service would never send.
pub(crate) fn raw_client(pin: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(AgentPin::from_pem(pin).unwrap().client_config())
        .no_proxy()
        .build()
        .unwrap()
}

/// Sends `POST /v1/exec` straight to `agent` in a task; aborting the task hangs up on it.
pub(crate) fn start_exec(
    deployment: &Deployment,
    agent: &TestAgent,
    request: &ExecRequest,
) -> tokio::task::JoinHandle<reqwest::Result<ExecResponse>> {
    let call = raw_client(&deployment.cert.cert_pem)
        .post(agent.url("/v1/exec"))
        .bearer_auth(&deployment.token)
        .json(request)
        .send();
    tokio::spawn(async move { call.await?.error_for_status()?.json::<ExecResponse>().await })
}

/// Whether a process exists and is not a zombie.
pub(crate) fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
            !state.starts_with('Z')
        }
    }
}

/// Waits until none of `pids` is alive; returns the survivors after `within`.
pub(crate) async fn survivors_after(pids: &[i32], within: Duration) -> Vec<i32> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|pid| process_alive(*pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pids a test script wrote into `file`, one per line, once the file is complete.
pub(crate) async fn read_pids(file: &Path, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if pids.len() >= count {
                return pids;
            }
        }
        assert!(Instant::now() < deadline, "{} never listed {count} pids", file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A script that records its own pid and a background child's in `pids`, then sleeps.
pub(crate) fn process_tree_script(pids: &Path) -> String {
    format!("sleep 100 & echo $! >> '{0}'; echo $$ >> '{0}'; sleep 100", pids.display())
}
