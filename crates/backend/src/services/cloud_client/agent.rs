//! The typed client of one agent (`/v1/health`, `/v1/info`, `/v1/exec`) and how a failed call
//! is classified: unreachable, timed out, refused, or failed.

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::de::DeserializeOwned;
use wire::{ExecRequest, ExecResponse, HealthResponse, InfoResponse, Problem};

use super::CallOutcome;

/// Why a call to one agent failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentCallError {
    #[error("cannot reach the agent: {0}")]
    Unreachable(String),
    #[error("the agent did not answer within {} ms", .0.as_millis())]
    TimedOut(Duration),
    #[error("the agent refused the request ({status}): {detail}")]
    Rejected { status: u16, detail: String },
    #[error("the agent failed: {0}")]
    Failed(String),
}

impl AgentCallError {
    pub fn status(&self) -> CallOutcome {
        match self {
            Self::Unreachable(_) => CallOutcome::Unreachable,
            Self::TimedOut(_) => CallOutcome::TimedOut,
            Self::Rejected { .. } => CallOutcome::Rejected,
            Self::Failed(_) => CallOutcome::Failed,
        }
    }
}

/// A typed client of one agent: one method per endpoint, wire types in and out.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base_url: String,
    authorization: HeaderValue,
}

impl AgentClient {
    pub(super) fn new(http: reqwest::Client, base_url: String, authorization: HeaderValue) -> Self {
        Self { http, base_url, authorization }
    }

    pub async fn health(&self, timeout: Duration) -> Result<HealthResponse, AgentCallError> {
        let request = self.http.get(format!("{}/v1/health", self.base_url));
        send(request, timeout).await
    }

    pub async fn info(&self, timeout: Duration) -> Result<InfoResponse, AgentCallError> {
        let request = self
            .http
            .get(format!("{}/v1/info", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone());
        send(request, timeout).await
    }

    /// Runs a command; `timeout` bounds the whole call, so it should exceed the command's own.
    pub async fn exec(
        &self,
        request: &ExecRequest,
        timeout: Duration,
    ) -> Result<ExecResponse, AgentCallError> {
        let request = self
            .http
            .post(format!("{}/v1/exec", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .json(request);
        send(request, timeout).await
    }
}

async fn send<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<T, AgentCallError> {
    let response = request.timeout(timeout).send().await.map_err(|err| classify(&err, timeout))?;
    let status = response.status();
    if status.is_success() {
        return response.json::<T>().await.map_err(|err| match classify(&err, timeout) {
            AgentCallError::TimedOut(t) => AgentCallError::TimedOut(t),
            _ => AgentCallError::Failed(format!("unreadable answer: {}", error_chain(&err))),
        });
    }
    let body = response.text().await.unwrap_or_default();
    let detail = match serde_json::from_str::<Problem>(&body) {
        Ok(problem) => problem.detail,
        Err(_) => body.chars().take(500).collect(),
    };
    if status.is_client_error() {
        Err(AgentCallError::Rejected { status: status.as_u16(), detail })
    } else {
        Err(AgentCallError::Failed(format!("{status}: {detail}")))
    }
}

fn classify(err: &reqwest::Error, timeout: Duration) -> AgentCallError {
    // A connect timeout is both a connect error and a timeout: the machine is unreachable.
    if err.is_connect() {
        AgentCallError::Unreachable(error_chain(err))
    } else if err.is_timeout() {
        AgentCallError::TimedOut(timeout)
    } else {
        AgentCallError::Unreachable(error_chain(err))
    }
}

/// reqwest's own message is only "error sending request"; the causes say what happened.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
