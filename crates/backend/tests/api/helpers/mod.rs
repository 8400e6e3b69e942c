//! Everything the integration tests share, in one place: `spawn_app()`/`app()` and the server
//! they start (this file), the steps of a test as typed helpers over the wire types (`fleet`:
//! provision, wait for a status, run a command), the event stream read with the parser `nimctl`
//! uses (`events`), and what a test looks at on the host (`machines`: agents, sandboxes, links).
//! Request helpers answer JSON (`Value`) where the JSON itself is what a test asserts; the
//! steps in between answer wire types.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use nim_backend::store::testing::PostgresDatabase;

#[path = "../../support/binaries.rs"]
mod binaries;
mod browser;
mod events;
mod fleet;
mod machines;
#[allow(unused_imports, reason = "the benchmarks that include these helpers run no nimctl")]
pub(crate) use binaries::{agent_binary, nimctl_binary};
use reqwest::{Response, StatusCode, header::CONTENT_TYPE};
use serde_json::{Value, json};
use tempfile::TempDir;
#[allow(
    unused_imports,
    reason = "the benchmarks that include these helpers use few of the steps"
)]
pub use {browser::*, events::*, fleet::*, machines::*};

/// The secret test servers sign tokens with, so tests can mint tokens of their own.
pub const JWT_SECRET: &str = "integration-test-secret-of-at-least-32-bytes";
pub const JWT_ISSUER: &str = "nim-backend";
/// The secrets key test servers share (replicas of one database must).
pub const ENCRYPTION_KEY: &str = "bmltLWludGVncmF0aW9uLXRlc3RzLWtleS0zMmJ5dGU=";

/// A running `nim-backend` process; killed when dropped. With `TEST_DATABASE=postgres` it runs on
/// a fresh Postgres database (dropped with it) instead of SQLite.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: TempDir,
    pub database: Option<PostgresDatabase>,
    /// Where its local machines live (`NIM_LOCAL_MACHINES_DIR`; replicas of a test share one).
    pub machines_dir: PathBuf,
    /// `<address>:<port>` local machines download the agent from (when they are available).
    pub machine_download: Option<String>,
    child: Child,
}

/// What a stopped server leaves for the next one: its directory and database.
pub struct Reuse {
    pub dir: TempDir,
    database: Option<PostgresDatabase>,
}

impl From<TempDir> for Reuse {
    /// A fresh directory prepared by the test (e.g. with a filesystem mounted in it).
    fn from(dir: TempDir) -> Self {
        Self { dir, database: None }
    }
}

impl Reuse {
    /// The Postgres database the server ran on, if it did.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|database| database.url.as_str())
    }
}

/// Whether this test run asked for Postgres (`TEST_DATABASE=postgres`).
pub fn postgres_requested() -> bool {
    std::env::var("TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// Builder for a test server's environment.
pub struct AppBuilder {
    envs: Vec<(String, String)>,
    dir: Option<TempDir>,
    database: Option<PostgresDatabase>,
    signing_secret: bool,
    provisioning: bool,
}

pub fn app() -> AppBuilder {
    AppBuilder {
        envs: Vec::new(),
        dir: None,
        database: None,
        signing_secret: true,
        provisioning: false,
    }
}

pub async fn spawn_app() -> TestApp {
    app().spawn().await
}

impl AppBuilder {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.envs.push((key.to_owned(), value.into()));
        self
    }

    /// Reuse a stopped server's directory and database (a restart).
    pub fn dir(mut self, reuse: Reuse) -> Self {
        self.dir = Some(reuse.dir);
        self.database = reuse.database;
        self
    }

    /// Run on this Postgres database (shared with other servers of the test).
    pub fn postgres(mut self, url: &str) -> Self {
        self.envs.push(("DATABASE_URL".to_owned(), url.to_owned()));
        self
    }

    /// Start with no configuration at all: no signing secret, no data directory setting (the
    /// default `./data` then lands in the process's working directory, the temporary dir).
    pub fn bare(mut self) -> Self {
        self.signing_secret = false;
        self
    }

    /// Provisioning with real Terraform: the repository's `terraform/local` plus the test
    /// fixtures as modules, the real `nim-agent`, and short grace periods.
    pub fn provisioning(mut self) -> Self {
        self.provisioning = true;
        self
    }

    pub async fn spawn(mut self) -> TestApp {
        let dir = self.dir.take().unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let (mut command, machines_dir) = self.command(&dir).await;
        let mut child = command.spawn().expect("failed to start nim-backend");
        let download = Arc::new(std::sync::OnceLock::new());
        let addr = wait_for_listening(&mut child, download.clone());
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        TestApp {
            addr,
            client,
            dir,
            database: self.database,
            machines_dir,
            machine_download: download.get().cloned(),
            child,
        }
    }

    /// Runs `nim-backend` with this environment and `args` to the end (a server expected to
    /// refuse to start, or a subcommand); returns what it printed and its directory.
    pub async fn run(mut self, args: &[&str]) -> (std::process::Output, Reuse) {
        let dir = self.dir.take().unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let (mut command, _) = self.command(&dir).await;
        let output = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("failed to run nim-backend");
        (output, Reuse { dir, database: self.database })
    }

    /// The server's command line and environment, and its local machines' directory.
    async fn command(&mut self, dir: &TempDir) -> (Command, PathBuf) {
        let explicit_database = self.envs.iter().any(|(key, _)| key == "DATABASE_URL");
        // `bare()` is about the embedded defaults, so it stays on SQLite.
        if self.database.is_none()
            && !explicit_database
            && self.signing_secret
            && postgres_requested()
        {
            self.database = Some(
                PostgresDatabase::create()
                    .await
                    .expect("TEST_DATABASE=postgres but no Postgres answers"),
            );
        }
        let mut command = backend_command(dir.path());
        command
            .env("NIM_LISTEN", "127.0.0.1:0")
            .env("NIM_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.signing_secret {
            command
                .env("NIM_DATA_DIR", dir.path().join("data"))
                .env("NIM_JWT_SECRET", JWT_SECRET)
                .env("NIM_ENCRYPTION_KEY", ENCRYPTION_KEY);
        }
        if self.provisioning {
            let modules = dir.path().join("modules");
            let modules = if modules.exists() { modules } else { modules_dir(dir.path()) };
            command
                .env("NIM_MODULES_DIR", modules)
                .env("NIM_AGENT_BINARY", agent_binary())
                .env("NIM_RUN_CANCEL_GRACE_SECS", "10")
                .env("NIM_READY_TIMEOUT_SECS", "30");
        }
        if let Some(database) = &self.database {
            command.env("DATABASE_URL", &database.url);
        }
        // A stable name per data directory: a restarted server (same directory) is the same
        // replica and takes back its own leftovers at once instead of waiting for their leases.
        let name =
            dir.path().file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        command.env("NIM_REPLICA_NAME", format!("test{name}"));
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        let machines_dir = self
            .envs
            .iter()
            .find(|(key, _)| key == "NIM_LOCAL_MACHINES_DIR")
            .map_or_else(|| dir.path().join("machines"), |(_, value)| PathBuf::from(value));
        command.env("NIM_LOCAL_MACHINES_DIR", &machines_dir);
        (command, machines_dir)
    }
}

/// The `nim-backend` binary run in `cwd`, with nothing of the developer's environment: no
/// `NIM_*`, `SUPABASE_*` or `DATABASE_URL`, and no `.env` of the checkout (`cwd` is a temp dir).
pub fn backend_command(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nim-backend"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("NIM_") || key.starts_with("SUPABASE_") || key == "DATABASE_URL" {
            command.env_remove(&*key);
        }
    }
    command.current_dir(cwd);
    command
}

/// Reads the server's JSON log lines until it says where it listens; keeps draining stderr after
/// that (a full pipe would block the server), echoing it when `TEST_LOG` is set.
fn wait_for_listening(child: &mut Child, download: Arc<std::sync::OnceLock<String>>) -> SocketAddr {
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let echo = std::env::var_os("TEST_LOG").is_some();
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[nim-backend] {line}");
            }
            let Ok(value) = serde_json::from_str::<Value>(&line) else { continue };
            if value["message"].as_str().is_some_and(|m| m.starts_with("local machines ready")) {
                if let Some(bound) = value["bound"].as_str() {
                    let _ = download.set(bound.to_owned());
                }
            }
            if value["message"] == "listening" {
                if let Some(addr) = value["addr"].as_str().and_then(|a| a.parse().ok()) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => addr,
        Err(_) => {
            let status = child.try_wait().ok().flatten();
            let _ = child.kill();
            panic!(
                "nim-backend did not start listening (exit status: {status:?}); run with TEST_LOG=1"
            );
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Machines of deployments a test did not destroy outlive their backend, as VMs would;
        // they must not outlive the test.
        reap_local_machines(&self.machines_dir);
        for pid in processes_mentioning(&self.dir.path().to_string_lossy()) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Stops every local machine under a machines directory and deletes the deployments' networks,
/// with the module's own script (what a destroy of the network runs: it stops every machine of
/// the deployment first).
pub fn reap_local_machines(machines_dir: &Path) {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform/local");
    let Ok(deployments) = std::fs::read_dir(machines_dir) else { return };
    for deployment in deployments.flatten() {
        let Ok(id) = deployment.file_name().into_string() else { continue };
        let _ = Command::new("sh")
            .arg(scripts.join("network.sh"))
            .env("ACTION", "down")
            .env("DEPLOYMENT_ID", &id)
            .env("SUBNET", "0.0.0.0/26")
            .env("DEPLOYMENT_DIR", deployment.path())
            .stdout(Stdio::null())
            .status();
    }
}

impl TestApp {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request failed")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request failed")
    }

    /// A JSON POST as a signed-in user.
    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request failed")
    }

    pub async fn delete_as(&self, token: &str, path: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(token).send().await.expect("request failed")
    }

    /// Signs up a fresh user and returns their access token.
    pub async fn token(&self, email: &str) -> String {
        let session = self.signed_in_user(email).await;
        session["access_token"].as_str().expect("access_token").to_owned()
    }

    /// Sends SIGTERM without waiting (see [`TestApp::exit_status`]).
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Sends SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        request.send().await.expect("request failed")
    }

    pub async fn sign_up(&self, email: &str, password: &str) -> Response {
        self.post_json("/auth/signup", &json!({ "email": email, "password": password })).await
    }

    pub async fn log_in(&self, email: &str, password: &str) -> Response {
        self.post_json("/auth/login", &json!({ "email": email, "password": password })).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/auth/refresh", &json!({ "refresh_token": refresh_token })).await
    }

    pub async fn log_out(&self, token: &str, scope: Option<&str>) -> Response {
        let path = scope.map_or("/auth/logout".to_owned(), |s| format!("/auth/logout?scope={s}"));
        self.client.post(self.url(&path)).bearer_auth(token).send().await.expect("request failed")
    }

    /// Signs a new user up and logs them in; returns the login session.
    pub async fn signed_in_user(&self, email: &str) -> Value {
        let password = "correct horse battery";
        assert_eq!(self.sign_up(email, password).await.status(), StatusCode::CREATED);
        json_ok(self.log_in(email, password).await).await
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        // Runs get SIGINT and the test servers' 10 s cancel grace; on a loaded machine the
        // whole shutdown may take a while longer than that grace.
        eventually("nim-backend to exit after SIGTERM", Duration::from_secs(30), || {
            let exited = self.child.try_wait().expect("try_wait");
            async move { exited.ok_or_else(|| "still running".to_owned()) }
        })
        .await
    }

    /// Stops the server (if still running) and hands back its directory, to start another
    /// server on the same data.
    pub fn into_dir(mut self) -> Reuse {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        // The machines outlive this server (as VMs would) and belong to the next one.
        self.machines_dir = dir.path().join("machines");
        Reuse { dir: std::mem::replace(&mut self.dir, dir), database: self.database.take() }
    }
}

/// Asserts a 2xx answer and returns its JSON body.
pub async fn json_ok(response: Response) -> Value {
    let status = response.status();
    let body = response.text().await.expect("body");
    assert!(status.is_success(), "expected success, got {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
}

/// Asserts a problem+json answer with this status and code; returns the body.
pub async fn assert_problem(response: Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    let problem: Value = serde_json::from_str(&body).expect("problem body is JSON");
    assert_eq!(problem["code"], code, "body: {body}");
    assert_eq!(problem["status"], status, "body: {body}");
    assert_eq!(problem["type"], format!("urn:nim:problem:{code}"));
    assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    problem
}

/// The `field` of each entry of a validation problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .map_or(Vec::new(), |errors| errors.iter().filter_map(|e| e["field"].as_str()).collect())
}

pub fn exists(path: &Path) -> bool {
    path.try_exists().unwrap_or(false)
}

/// Polls `probe` until it answers `Ok`, and returns that. `Err` carries what it saw this time,
/// which the failure after `timeout` shows with `what` it was waiting for. Polls quickly at
/// first, then every quarter second.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let seen = match probe().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up after {timeout:?} waiting for {what}; last seen: {seen}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// A modules folder with the repository's `terraform/local` and the test fixtures. Fixtures
/// hold only what is particular to them: each gets the local module's `variables.tf` (the
/// module contract), so the contract is declared in one place.
pub fn modules_dir(into: &Path) -> PathBuf {
    let root = into.join("modules");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform/local");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/modules");
    copy_dir(&repo, &root.join("local"));
    // terraform/local boots its machines with the clouds' shared bootstrap.
    copy_dir(&repo.join("../shared"), &root.join("shared"));
    // `flaky`: terraform/local whose first apply of each deployment fails (a retry succeeds).
    copy_dir(&repo, &root.join("flaky"));
    let once = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/flaky/once.tf");
    std::fs::copy(once, root.join("flaky/once.tf")).expect("flaky fixture");
    for entry in std::fs::read_dir(fixtures).expect("fixtures") {
        let entry = entry.expect("fixture");
        let target = root.join(entry.file_name());
        copy_dir(&entry.path(), &target);
        std::fs::copy(repo.join("variables.tf"), target.join("variables.tf")).expect("contract");
    }
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            let mode = std::fs::metadata(entry.path()).expect("stat").permissions();
            std::fs::set_permissions(&target, mode).expect("chmod");
        }
    }
}

/// Processes whose command line mentions `needle` (e.g. a test's own temp dir), from /proc.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(pid);
        }
    }
    found
}
