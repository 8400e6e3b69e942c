//! `Api`: the typed client of nim-backend's HTTP API, one method per endpoint, taking and
//! returning the `wire` types the backend itself serialises. It owns authentication: the saved
//! session is refreshed shortly before it expires (and once more if the server says it has),
//! and the new one is saved at once because refresh tokens are single-use.

use std::{fmt, sync::Mutex, time::Duration};

use anyhow::Context;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use uuid::Uuid;
use wire::{
    Problem, Session, SignUpResponse, User,
    commands::{CommandPage, CommandRequest, CommandView},
    deployments::{
        DeploymentPage, DeploymentView, PlanSummary, ProvidersResponse, ProvisionBody,
        ProvisionResponse, RunDetail, RunPage, RunView,
    },
    status::DeploymentStatus,
};

use crate::session::SessionStore;

/// How long an ordinary call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A dry run plans in a throwaway workspace, bounded by the server's own request time limit.
const DRY_RUN_TIMEOUT: Duration = Duration::from_secs(600);
/// Refresh a session this long before it expires.
const REFRESH_MARGIN_SECS: i64 = 60;

/// An error answer from the server, shown as its problem details.
#[derive(Debug)]
pub(crate) struct ApiProblem(pub Problem);

impl fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let problem = &self.0;
        write!(f, "{} ({} {})", problem.detail, problem.status, problem.code)?;
        for error in &problem.errors {
            let line = format!("{}: {}", error.field, error.message);
            // A single invalid field is usually the detail itself.
            if line != problem.detail {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ApiProblem {}

/// No usable credentials.
#[derive(Debug)]
pub(crate) struct NotSignedIn(pub String);

impl fmt::Display for NotSignedIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; run `nimctl login --email you@example.com`", self.0)
    }
}

impl std::error::Error for NotSignedIn {}

/// What `PATCH /infrastructure/{id}` answers.
pub(crate) enum Updated {
    Plan(PlanSummary),
    Queued(Box<ProvisionResponse>),
    /// The values given are the ones it has.
    Unchanged,
}

/// What `POST /provision` answers.
pub(crate) enum Provisioned {
    /// `?dry_run=true`.
    Plan(PlanSummary),
    /// The deployment and its queued apply; `replayed` when an idempotency key matched.
    Queued { response: Box<ProvisionResponse>, replayed: bool },
}

enum Credentials {
    /// `--token`: used as it is.
    Fixed(String),
    /// The saved session, loaded on first use.
    Saved(Mutex<Option<Box<Session>>>),
}

pub(crate) struct Api {
    http: reqwest::Client,
    base: Url,
    /// The server's key in the sessions file: its base URL without a trailing slash.
    key: String,
    store: SessionStore,
    credentials: Credentials,
}

impl Api {
    pub(crate) fn new(
        server: &str,
        token: Option<String>,
        store: SessionStore,
    ) -> anyhow::Result<Self> {
        let mut base = Url::parse(server).with_context(|| {
            format!("--server {server:?} is not a URL like http://127.0.0.1:8080")
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            anyhow::bail!("--server {server:?} must be an http:// or https:// URL");
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let key = base.as_str().trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("nimctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("failed to set up the HTTP client")?;
        let credentials = match token {
            Some(token) => Credentials::Fixed(token),
            None => Credentials::Saved(Mutex::new(None)),
        };
        Ok(Self { http, base, key, store, credentials })
    }

    /// The server, as the user gave it.
    pub(crate) fn server(&self) -> &str {
        &self.key
    }

    fn url(&self, path: &str) -> Url {
        // `path` is ours (no user input but ids), relative to the base.
        self.base.join(path.trim_start_matches('/')).unwrap_or_else(|_| self.base.clone())
    }

    // ---- auth --------------------------------------------------------------------------------

    pub(crate) async fn signup(
        &self,
        email: &str,
        password: &str,
    ) -> anyhow::Result<SignUpResponse> {
        let request = self
            .request(Method::POST, "auth/signup")
            .json(&json!({"email": email, "password": password}));
        let response: SignUpResponse = self.parse(request).await?;
        if let Some(session) = &response.session {
            self.save(session)?;
        }
        Ok(response)
    }

    pub(crate) async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let request = self
            .request(Method::POST, "auth/login")
            .json(&json!({"email": email, "password": password}));
        let session: Session = self.parse(request).await?;
        self.save(&session)?;
        Ok(session)
    }

    /// Ends the session on the server and forgets it here, whatever the server said.
    pub(crate) async fn logout(&self) -> anyhow::Result<()> {
        let result = match self.bearer().await {
            Ok(token) => {
                let request = self.request(Method::POST, "auth/logout").bearer_auth(token);
                self.send(request).await.map(drop)
            }
            Err(err) => Err(err),
        };
        if let Credentials::Saved(_) = self.credentials {
            self.store.set(&self.key, None)?;
        }
        result
    }

    pub(crate) async fn me(&self) -> anyhow::Result<User> {
        self.authed(Method::GET, "auth/me", None::<&()>, CALL_TIMEOUT).await
    }

    fn save(&self, session: &Session) -> anyhow::Result<()> {
        if let Credentials::Saved(current) = &self.credentials {
            self.store.set(&self.key, Some(session))?;
            *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(session.clone()));
        }
        Ok(())
    }

    /// A valid access token: the fixed one, or the saved session's, refreshed when it is about
    /// to expire.
    async fn bearer(&self) -> anyhow::Result<String> {
        let current = match &self.credentials {
            Credentials::Fixed(token) => return Ok(token.clone()),
            Credentials::Saved(current) => current,
        };
        let session = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let session = match session {
            Some(session) => *session,
            None => self
                .store
                .get(&self.key)?
                .ok_or_else(|| NotSignedIn(format!("not signed in to {}", self.key)))?,
        };
        if session.expires_at - REFRESH_MARGIN_SECS > chrono::Utc::now().timestamp() {
            *current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(session.clone()));
            return Ok(session.access_token);
        }
        Ok(self.refresh(&session).await?.access_token)
    }

    async fn refresh(&self, stale: &Session) -> anyhow::Result<Session> {
        let request = self
            .request(Method::POST, "auth/refresh")
            .json(&json!({"refresh_token": stale.refresh_token}));
        match self.parse::<Session>(request).await {
            Ok(session) => {
                self.save(&session)?;
                Ok(session)
            }
            Err(err) if err.downcast_ref::<ApiProblem>().is_some() => {
                // Another nimctl may have refreshed (and used up) the same token a moment ago.
                if let Some(saved) = self.store.get(&self.key)? {
                    if saved.refresh_token != stale.refresh_token
                        && saved.expires_at - REFRESH_MARGIN_SECS > chrono::Utc::now().timestamp()
                    {
                        self.save(&saved)?;
                        return Ok(saved);
                    }
                }
                Err(NotSignedIn(format!("your session with {} has ended ({err:#})", self.key))
                    .into())
            }
            Err(err) => Err(err),
        }
    }

    // ---- deployments -------------------------------------------------------------------------

    pub(crate) async fn providers(&self) -> anyhow::Result<ProvidersResponse> {
        self.authed(Method::GET, "providers", None::<&()>, CALL_TIMEOUT).await
    }

    pub(crate) async fn provision(
        &self,
        body: &ProvisionBody,
        dry_run: bool,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Provisioned> {
        if dry_run {
            let plan = self
                .authed(Method::POST, "provision?dry_run=true", Some(body), DRY_RUN_TIMEOUT)
                .await?;
            return Ok(Provisioned::Plan(plan));
        }
        let response = self
            .authed_send(Method::POST, "provision", Some(body), CALL_TIMEOUT, |request| {
                match idempotency_key {
                    Some(key) => request.header("idempotency-key", key),
                    None => request,
                }
            })
            .await?;
        let replayed = response.headers().get("idempotent-replayed").is_some();
        Ok(Provisioned::Queued { response: Box::new(decode(response).await?), replayed })
    }

    pub(crate) async fn deployments(
        &self,
        name: Option<&str>,
        status: Option<DeploymentStatus>,
        limit: u32,
    ) -> anyhow::Result<DeploymentPage> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(name.map(|name| ("name", name.to_owned())));
        query.extend(status.map(|status| ("status", status.as_str().to_owned())));
        let request = |r: RequestBuilder| r.query(&query);
        let response =
            self.authed_send(Method::GET, "infrastructure", None::<&()>, CALL_TIMEOUT, request);
        decode(response.await?).await
    }

    pub(crate) async fn deployment(&self, id: Uuid) -> anyhow::Result<DeploymentView> {
        self.authed(Method::GET, &format!("infrastructure/{id}"), None::<&()>, CALL_TIMEOUT).await
    }

    pub(crate) async fn destroy(&self, id: Uuid) -> anyhow::Result<ProvisionResponse> {
        self.authed(Method::DELETE, &format!("infrastructure/{id}"), None::<&()>, CALL_TIMEOUT)
            .await
    }

    /// `POST /infrastructure/{id}/retry`: a failed deployment's last apply, queued again.
    pub(crate) async fn retry(&self, id: Uuid) -> anyhow::Result<ProvisionResponse> {
        let path = format!("infrastructure/{id}/retry");
        self.authed(Method::POST, &path, Some(&json!({})), CALL_TIMEOUT).await
    }

    /// `PATCH /infrastructure/{id}` (`dry_run`: its plan). `None` when nothing changes.
    pub(crate) async fn update(
        &self,
        id: Uuid,
        variables: serde_json::Map<String, serde_json::Value>,
        dry_run: bool,
    ) -> anyhow::Result<Updated> {
        let body = json!({"variables": variables});
        let path = format!("infrastructure/{id}");
        if dry_run {
            let path = format!("{path}?dry_run=true");
            let plan = self.authed(Method::PATCH, &path, Some(&body), DRY_RUN_TIMEOUT).await?;
            return Ok(Updated::Plan(plan));
        }
        let response: wire::deployments::UpdateResponse =
            self.authed(Method::PATCH, &path, Some(&body), CALL_TIMEOUT).await?;
        Ok(match response.run {
            Some(run) => Updated::Queued(Box::new(ProvisionResponse {
                deployment: response.deployment,
                run,
            })),
            None => Updated::Unchanged,
        })
    }

    /// `POST /infrastructure/{id}/machines/{name}/replace`.
    pub(crate) async fn replace(
        &self,
        id: Uuid,
        machine: &str,
    ) -> anyhow::Result<ProvisionResponse> {
        if machine.is_empty()
            || !machine.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            anyhow::bail!("`{machine}` is not a machine name (see `nimctl status`)");
        }
        let path = format!("infrastructure/{id}/machines/{machine}/replace");
        self.authed(Method::POST, &path, Some(&json!({})), CALL_TIMEOUT).await
    }

    pub(crate) async fn runs(&self, id: Uuid) -> anyhow::Result<RunPage> {
        self.authed(
            Method::GET,
            &format!("infrastructure/{id}/runs?limit=100"),
            None::<&()>,
            CALL_TIMEOUT,
        )
        .await
    }

    pub(crate) async fn run(&self, id: Uuid, run_id: Uuid) -> anyhow::Result<RunDetail> {
        let path = format!("infrastructure/{id}/runs/{run_id}");
        self.authed(Method::GET, &path, None::<&()>, CALL_TIMEOUT).await
    }

    pub(crate) async fn cancel_run(&self, id: Uuid, run_id: Uuid) -> anyhow::Result<RunView> {
        let path = format!("infrastructure/{id}/runs/{run_id}/cancel");
        self.authed(Method::POST, &path, Some(&json!({})), CALL_TIMEOUT).await
    }

    /// `GET /infrastructure/{id}/events`: the open event stream, after `last_event_id` when set.
    pub(crate) async fn events(
        &self,
        id: Uuid,
        last_event_id: Option<i64>,
    ) -> anyhow::Result<Response> {
        // No overall timeout: the stream lasts as long as the run (the server sends keep-alives).
        let path = format!("infrastructure/{id}/events");
        self.authed_send(Method::GET, &path, None::<&()>, Duration::ZERO, |request| {
            match last_event_id {
                Some(last) => request.header("last-event-id", last.to_string()),
                None => request,
            }
        })
        .await
    }

    // ---- commands ----------------------------------------------------------------------------

    /// Runs a command and waits for every machine's result.
    pub(crate) async fn command(
        &self,
        id: Uuid,
        request: &CommandRequest,
    ) -> anyhow::Result<CommandView> {
        // The call lasts as long as the slowest machine: its timeout, plus time to connect.
        let limit = Duration::from_secs(request.timeout_s.unwrap_or(60) + 60);
        self.authed(Method::POST, &format!("infrastructure/{id}/command"), Some(request), limit)
            .await
    }

    pub(crate) async fn commands(&self, id: Uuid) -> anyhow::Result<CommandPage> {
        let path = format!("infrastructure/{id}/commands?limit=100");
        self.authed(Method::GET, &path, None::<&()>, CALL_TIMEOUT).await
    }

    // ---- plumbing ----------------------------------------------------------------------------

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).timeout(CALL_TIMEOUT)
    }

    async fn authed<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        decode(self.authed_send(method, path, body, timeout, |request| request).await?).await
    }

    /// Sends an authenticated request; on a 401 from a saved session, refreshes it and tries
    /// once more (the token may have been revoked or the clocks disagree).
    async fn authed_send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
        extra: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let build = |token: &str| {
            let mut request = self.http.request(method.clone(), self.url(path)).bearer_auth(token);
            if !timeout.is_zero() {
                request = request.timeout(timeout);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            extra(request)
        };
        let token = self.bearer().await?;
        let response = self.transmit(build(&token)).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return check(response).await;
        }
        let Credentials::Saved(current) = &self.credentials else { return check(response).await };
        let stale = current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(stale) = stale else { return check(response).await };
        let fresh = self.refresh(&stale).await?;
        check(self.transmit(build(&fresh.access_token)).await?).await
    }

    async fn parse<T: DeserializeOwned>(&self, request: RequestBuilder) -> anyhow::Result<T> {
        decode(self.send(request).await?).await
    }

    async fn send(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        check(self.transmit(request).await?).await
    }

    async fn transmit(&self, request: RequestBuilder) -> anyhow::Result<Response> {
        request.send().await.map_err(|err| {
            let why = if err.is_timeout() {
                "it did not answer in time".to_owned()
            } else if err.is_connect() {
                "could not connect (is it running? set --server or NIM_SERVER)".to_owned()
            } else {
                format!("{err}")
            };
            anyhow::anyhow!("cannot reach nim-backend at {}: {why}", self.key)
        })
    }
}

/// Turns an error status into [`ApiProblem`] (or a plain message when the body is not one).
async fn check(response: Response) -> anyhow::Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<Problem>(&text) {
        Ok(problem) => Err(ApiProblem(problem).into()),
        Err(_) => {
            let text: String = text.chars().take(300).collect();
            anyhow::bail!("the server answered {status}: {}", text.trim())
        }
    }
}

async fn decode<T: DeserializeOwned>(response: Response) -> anyhow::Result<T> {
    let url = response.url().path().to_owned();
    let bytes =
        response.bytes().await.with_context(|| format!("failed to read the answer of {url}"))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!("the answer of {url} is not what this nimctl expects (is the server a different version?)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> anyhow::Result<Api> {
        let dir = std::env::temp_dir().join("nimctl-unused.json");
        Api::new(server, None, SessionStore::new(Some(dir)).unwrap())
    }

    #[test]
    fn servers_are_http_urls_and_paths_join_under_them() {
        let api = client("http://127.0.0.1:8080").unwrap();
        assert_eq!(api.server(), "http://127.0.0.1:8080");
        assert_eq!(api.url("infrastructure/x").as_str(), "http://127.0.0.1:8080/infrastructure/x");
        // A server behind a path prefix keeps it.
        let api = client("https://example.com/nim/").unwrap();
        assert_eq!(api.server(), "https://example.com/nim");
        assert_eq!(api.url("auth/me").as_str(), "https://example.com/nim/auth/me");
        for bad in ["127.0.0.1:8080", "ftp://example.com", "not a url"] {
            assert!(client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn problems_read_as_their_detail_code_and_fields() {
        let problem = Problem {
            kind: Problem::type_uri("validation_failed"),
            title: "Validation failed".into(),
            status: 422,
            detail: "the request has invalid fields".into(),
            code: "validation_failed".into(),
            errors: vec![wire::FieldError::new("variables.region", "must be a string")],
        };
        assert_eq!(
            ApiProblem(problem).to_string(),
            "the request has invalid fields (422 validation_failed)\n  variables.region: must be a string"
        );
    }
}
