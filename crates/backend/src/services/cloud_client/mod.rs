//! The plan's `CloudClientService`: the backend's side of the agent protocol. It calls the
//! `nim-agent` on each machine of a deployment over HTTPS with the deployment's pinned
//! certificate and bearer token, fans a call out to many machines with bounded concurrency and a
//! per-machine timeout, and returns one result per machine even when some fail. `agent.rs` is
//! the typed client of one agent.

mod agent;

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream};
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use wire::{ExecRequest, ExecResponse, HealthResponse, InfoResponse};

pub use self::agent::{AgentCallError, AgentClient};

use super::certs::{AgentPin, CertError};

/// What the backend knows to reach and trust a deployment's agents: shared by its machines.
pub struct AgentCredentials {
    pub pin: AgentPin,
    pub token: SecretString,
}

impl AgentCredentials {
    /// From the deployment's certificate (PEM) and bearer token, as stored at provision time.
    pub fn new(cert_pem: &str, token: SecretString) -> Result<Self, CertError> {
        Ok(Self { pin: AgentPin::from_pem(cert_pem)?, token })
    }
}

impl fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCredentials").field("pin", &self.pin).finish_non_exhaustive()
    }
}

/// One machine's agent: filled from the deployment's machines by provisioning.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    /// The machine's name, as Terraform output it; results are reported under it.
    pub name: String,
    /// An IP address or host name.
    pub host: String,
    pub port: u16,
    pub credentials: Arc<AgentCredentials>,
}

impl AgentTarget {
    /// `host:port`, with an IPv6 host in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn base_url(&self) -> String {
        format!("https://{}", self.address())
    }
}

/// How one machine's call ended (not its health: that is the domain's `MachineStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    /// The agent answered; for exec, the command exited 0.
    Succeeded,
    /// The command exited non-zero or was killed, or the agent answered with a server error.
    Failed,
    /// The command ran past its timeout, or the agent did not answer in time.
    TimedOut,
    /// No connection: refused, unroutable, or the TLS handshake failed (a wrong certificate).
    Unreachable,
    /// The agent refused the request (401 for a wrong token, 429 when busy, other 4xx).
    Rejected,
}

impl CallOutcome {
    /// The serialized name, as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Unreachable => "unreachable",
            Self::Rejected => "rejected",
        }
    }
}

/// One machine's outcome of a fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct MachineResult<T> {
    pub machine: String,
    pub status: CallOutcome,
    /// The agent's answer, when there was one.
    pub response: Option<T>,
    /// Why the call did not succeed, when there is no exit code to say it.
    pub error: Option<String>,
    /// Wall-clock time of this machine's call, as the backend saw it.
    #[serde(rename = "elapsed_ms", serialize_with = "serialize_millis")]
    pub elapsed: Duration,
}

fn serialize_millis<S: serde::Serializer>(
    elapsed: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// Agents whose health `wait_ready` polls at once.
const READY_CONCURRENCY: usize = 64;

/// Settings of the service as a whole.
#[derive(Debug, Clone)]
pub struct CloudClientConfig {
    /// Bound on TCP connect plus TLS handshake; a machine that does not complete both within it
    /// is `unreachable`.
    pub connect_timeout: Duration,
    /// Bound on one health or info call.
    pub call_timeout: Duration,
    /// Extra time an exec call gets beyond the command's own timeout, for the agent to kill the
    /// command and send back what it printed.
    pub exec_response_margin: Duration,
    /// HTTPS clients (one per pinned certificate, each with its connection pool) kept for reuse.
    pub max_cached_clients: usize,
}

impl Default for CloudClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            exec_response_margin: Duration::from_secs(5),
            max_cached_clients: 1024,
        }
    }
}

/// `wait_ready` gave up: these machines never answered a health check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} of {total} machines did not answer before the deadline: {}", pending.len(), describe(pending))]
pub struct NotReady {
    pub total: usize,
    /// Each machine that did not answer, with its last error.
    pub pending: Vec<(String, String)>,
}

fn describe(pending: &[(String, String)]) -> String {
    pending.iter().map(|(name, error)| format!("{name} ({error})")).collect::<Vec<_>>().join(", ")
}

/// The plan's `CloudClientService`. Cheap to share behind an `Arc`; it keeps one HTTPS client
/// per pinned certificate so that repeated calls to a deployment reuse connections.
pub struct CloudClientService {
    config: CloudClientConfig,
    clients: Mutex<ClientCache>,
}

struct ClientCache {
    clients: HashMap<[u8; 32], (reqwest::Client, Instant)>,
}

impl CloudClientService {
    pub fn new(config: CloudClientConfig) -> Self {
        Self { config, clients: Mutex::new(ClientCache { clients: HashMap::new() }) }
    }

    /// A client of one machine's agent.
    pub fn agent(&self, target: &AgentTarget) -> Result<AgentClient, AgentCallError> {
        let token = target.credentials.token.expose_secret();
        let mut authorization = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| {
            AgentCallError::Failed("the agent token is not a valid header value".to_owned())
        })?;
        authorization.set_sensitive(true);
        Ok(AgentClient::new(
            self.http_client(&target.credentials.pin)?,
            target.base_url(),
            authorization,
        ))
    }

    fn http_client(&self, pin: &AgentPin) -> Result<reqwest::Client, AgentCallError> {
        let fingerprint = pin.fingerprint();
        let mut cache = self.clients.lock().expect("the client cache lock is never poisoned");
        if let Some((client, last_used)) = cache.clients.get_mut(&fingerprint) {
            *last_used = Instant::now();
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(pin.client_config())
            .connect_timeout(self.config.connect_timeout)
            // Below the agent's 30 s idle close (its header read timeout), so a pooled
            // connection is never reused just as the agent closes it.
            .pool_idle_timeout(Duration::from_secs(20))
            .tcp_nodelay(true)
            // Agents are reached directly; a proxy from the environment must not sit in between.
            .no_proxy()
            .build()
            .map_err(|err| {
                AgentCallError::Failed(format!("failed to build an HTTPS client: {err}"))
            })?;
        if cache.clients.len() >= self.config.max_cached_clients {
            let oldest = cache.clients.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                cache.clients.remove(&oldest);
            }
        }
        cache.clients.insert(fingerprint, (client.clone(), Instant::now()));
        Ok(client)
    }

    /// Asks one machine's agent whether it is up; the readiness gate polls this.
    pub async fn health_one(
        &self,
        machine: &AgentTarget,
        timeout: Duration,
    ) -> MachineResult<HealthResponse> {
        self.call_one(
            machine.clone(),
            |agent| async move { agent.health(timeout).await },
            |_| (CallOutcome::Succeeded, None),
        )
        .await
    }

    /// What one machine is (OS, CPUs, memory, GPUs).
    #[tracing::instrument(skip_all, fields(machine = %machine.name))]
    pub async fn info(&self, machine: &AgentTarget) -> Result<InfoResponse, AgentCallError> {
        self.agent(machine)?.info(self.config.call_timeout).await
    }

    /// Runs one command on one machine. Dropping the future hangs up on the agent, which kills
    /// the command's process group: that is how a command is stopped early.
    pub async fn exec_one(
        &self,
        machine: &AgentTarget,
        request: &ExecRequest,
        timeout: Duration,
    ) -> MachineResult<ExecResponse> {
        let (request, call_timeout) = self.exec_call(request, timeout);
        let request = &request;
        let result = self
            .call_one(
                machine.clone(),
                |agent| async move { agent.exec(request, call_timeout).await },
                exec_status,
            )
            .await;
        crate::metrics::machine_command_finished(result.status.as_str(), result.elapsed);
        result
    }

    /// The request as sent (with `timeout_ms` set from `timeout` when it has none) and the bound
    /// on the whole call.
    fn exec_call(&self, request: &ExecRequest, timeout: Duration) -> (ExecRequest, Duration) {
        let mut request = request.clone();
        let command_timeout = match request.timeout_ms {
            Some(ms) => Duration::from_millis(ms),
            None => {
                request.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
                timeout
            }
        };
        (request, command_timeout + self.config.exec_response_margin)
    }

    /// Polls every machine's health, backing off between rounds, until all have answered or the
    /// deadline passes. Provisioning uses it as its readiness gate.
    #[tracing::instrument(skip_all, fields(machines = machines.len()))]
    pub async fn wait_ready(
        &self,
        machines: &[AgentTarget],
        deadline: Instant,
    ) -> Result<(), NotReady> {
        let mut pending: Vec<AgentTarget> = machines.to_vec();
        let mut errors: Vec<String> =
            vec!["no health check finished before the deadline".to_owned(); machines.len()];
        let mut backoff = Duration::from_millis(100);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let pending = pending.into_iter().map(|m| m.name).zip(errors).collect();
                return Err(NotReady { total: machines.len(), pending });
            }
            let timeout = self.config.call_timeout.min(remaining);
            // Each call owns its target: a closure over borrowed targets makes the future fail
            // rustc's `Send` proof when a caller spawns it (as the run worker does). Completion
            // order does not matter: a slow machine holds only its own slot.
            let calls =
                pending.clone().into_iter().enumerate().map(|(index, machine)| async move {
                    (index, self.health_one(&machine, timeout).await)
                });
            let mut results: Vec<_> =
                stream::iter(calls).buffer_unordered(READY_CONCURRENCY).collect().await;
            results.sort_by_key(|(index, _)| *index);
            let results = results.into_iter().map(|(_, result)| result);
            let (still_pending, still_errors): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .zip(results)
                .filter(|(_, result)| result.status != CallOutcome::Succeeded)
                .map(|(machine, result)| (machine, result.error.unwrap_or_default()))
                .unzip();
            (pending, errors) = (still_pending, still_errors);
            if pending.is_empty() {
                return Ok(());
            }
            tracing::debug!(pending = pending.len(), "machines not ready yet");
            let remaining = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One machine's call, judged into a [`MachineResult`].
    async fn call_one<T, F, Fut>(
        &self,
        machine: AgentTarget,
        call: F,
        judge: fn(&T) -> (CallOutcome, Option<String>),
    ) -> MachineResult<T>
    where
        F: Fn(AgentClient) -> Fut,
        Fut: Future<Output = Result<T, AgentCallError>>,
    {
        let started = Instant::now();
        let outcome = match self.agent(&machine).map(call) {
            Ok(call) => call.await,
            Err(err) => Err(err),
        };
        let elapsed = started.elapsed();
        match outcome {
            Ok(response) => {
                let (status, error) = judge(&response);
                MachineResult {
                    machine: machine.name,
                    status,
                    response: Some(response),
                    error,
                    elapsed,
                }
            }
            Err(err) => {
                tracing::debug!(machine = %machine.name, error = %err, "agent call failed");
                MachineResult {
                    machine: machine.name,
                    status: err.status(),
                    response: None,
                    error: Some(err.to_string()),
                    elapsed,
                }
            }
        }
    }
}

/// `succeeded` only for exit 0; a timeout is `timed_out` even though the agent answered.
fn exec_status(response: &ExecResponse) -> (CallOutcome, Option<String>) {
    if response.timed_out {
        (
            CallOutcome::TimedOut,
            Some(format!(
                "the command ran past its timeout and was killed after {} ms",
                response.duration_ms
            )),
        )
    } else {
        match (response.exit_code, response.signal) {
            (Some(0), _) => (CallOutcome::Succeeded, None),
            (Some(_), _) => (CallOutcome::Failed, None),
            (None, Some(signal)) => {
                (CallOutcome::Failed, Some(format!("the command was killed by signal {signal}")))
            }
            (None, None) => {
                (CallOutcome::Failed, Some("the command ended without an exit status".to_owned()))
            }
        }
    }
}

impl Default for CloudClientService {
    fn default() -> Self {
        Self::new(CloudClientConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        let cert = super::super::certs::mint_deployment_cert("d").unwrap();
        let credentials =
            Arc::new(AgentCredentials::new(&cert.cert_pem, "t".repeat(32).into()).unwrap());
        let target = AgentTarget { name: "m".into(), host: "::1".into(), port: 7070, credentials };
        assert_eq!(target.base_url(), "https://[::1]:7070");
    }

    #[test]
    fn exit_status_decides_the_machine_status() {
        let exited = |code| ExecResponse { exit_code: Some(code), ..ExecResponse::default() };
        assert_eq!(exec_status(&exited(0)).0, CallOutcome::Succeeded);
        assert_eq!(exec_status(&exited(3)), (CallOutcome::Failed, None));
        let killed = ExecResponse { signal: Some(9), ..ExecResponse::default() };
        assert_eq!(exec_status(&killed).0, CallOutcome::Failed);
        assert!(exec_status(&killed).1.unwrap().contains("signal 9"));
        let timed_out =
            ExecResponse { signal: Some(9), timed_out: true, ..ExecResponse::default() };
        assert_eq!(exec_status(&timed_out).0, CallOutcome::TimedOut);
    }

    #[test]
    fn the_client_cache_is_bounded() {
        let service = CloudClientService::new(CloudClientConfig {
            max_cached_clients: 2,
            ..CloudClientConfig::default()
        });
        for i in 0..3 {
            let cert = super::super::certs::mint_deployment_cert(&i.to_string()).unwrap();
            service.http_client(&AgentPin::from_pem(&cert.cert_pem).unwrap()).unwrap();
        }
        assert_eq!(service.clients.lock().unwrap().clients.len(), 2);
    }
}
