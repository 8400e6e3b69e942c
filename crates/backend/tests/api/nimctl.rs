//! `nimctl` against a real server: the real binary, run as a user would, with its session in a
//! temporary file. These live here, beside the harness that starts `nim-backend`, because what
//! they check is the CLI and the API together.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Stdio};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

use crate::helpers::{TestApp, app, nimctl_binary};

/// What one `nimctl` invocation did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "nimctl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn fails_with(self, message: &str) -> Self {
        assert_eq!(
            self.code, 1,
            "expected exit 1:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(self.stderr.contains(message), "stderr lacks {message:?}:\n{}", self.stderr);
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| panic!("{err}: {}", self.stdout))
    }
}

/// A user of `nimctl`: its own sessions file, pointed at one server.
struct User {
    server: String,
    home: TempDir,
}

impl User {
    fn of(app: &TestApp) -> Self {
        Self { server: app.url(""), home: tempfile::tempdir().expect("temp dir") }
    }

    fn sessions(&self) -> PathBuf {
        self.home.path().join("config/nimctl/sessions.json")
    }

    async fn nimctl(&self, args: &[&str]) -> Ran {
        self.nimctl_with_stdin(args, None).await
    }

    async fn nimctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Ran {
        let mut command = tokio::process::Command::new(nimctl_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("NIM") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(args)
            .env("NIM_SERVER", &self.server)
            // The server is on loopback: no proxy of the environment's may be asked.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            // The default location under the user's config folder, in a temporary home.
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nimctl starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).await.expect("stdin written");
        }
        let output = child.wait_with_output().await.expect("nimctl ran");
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn sign_up(&self, email: &str) {
        self.nimctl_with_stdin(
            &["signup", "--email", email, "--password-stdin"],
            Some("correct horse battery\n"),
        )
        .await
        .ok();
    }
}

#[tokio::test]
async fn nimctl_signs_up_deploys_runs_commands_and_destroys_local_machines() {
    let app = app().provisioning().spawn().await;
    let user = User::of(&app);

    user.nimctl(&["whoami"]).await.fails_with("not signed in");
    user.sign_up("cli@example.com").await;
    let mode = std::fs::metadata(user.sessions()).expect("session saved").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the session file is readable by its owner only");
    let me = user.nimctl(&["-o", "json", "whoami"]).await.ok().json();
    assert_eq!(me["email"], "cli@example.com");

    let providers = user.nimctl(&["providers", "local"]).await.ok();
    assert!(providers.stdout.contains("machine_count"), "{}", providers.stdout);
    assert!(!providers.stdout.contains("agent_token"), "backend-filled variables are hidden");

    // Caught here, before the server is asked: a variable the module does not have.
    user.nimctl(&["deploy", "fleet", "-p", "local", "--var", "bogus=1"])
        .await
        .fails_with("the local module has no variable `bogus`");
    // Caught by the server: its problem details, field by field.
    user.nimctl(&["deploy", "Not_A_Name", "-p", "local", "--var", r#"boot_delay_seconds="x""#])
        .await
        .fails_with("2 fields are invalid (422 validation_failed)\n  name: must be")
        .fails_with("\n  variables.boot_delay_seconds: expected number, got a string");
    let plan = user.nimctl(&["deploy", "fleet", "-p", "local", "-n", "2", "--dry-run"]).await.ok();
    assert!(plan.stdout.contains("Plan: 3 to add, 0 to change, 0 to destroy."), "{}", plan.stdout);
    let listed = user.nimctl(&["-o", "json", "list"]).await.ok().json();
    assert_eq!(listed["items"], serde_json::json!([]), "a dry run creates nothing");

    let deployed = user.nimctl(&["deploy", "fleet", "-p", "local", "-n", "2"]).await.ok();
    assert!(deployed.stderr.contains("Apply complete! Resources: 3 added"), "{}", deployed.stderr);
    assert!(deployed.stderr.contains("[3/3] resources"), "{}", deployed.stderr);
    assert!(deployed.stdout.contains("status:    ready"), "{}", deployed.stdout);
    let local1 = deployed.stdout.lines().find(|l| l.starts_with("local-1 ")).expect("local-1");
    assert!(local1.contains("  10.213.") && local1.contains(" healthy "), "{local1}");
    assert!(local1.contains(" CPU, "), "the agent's facts are shown: {local1}");

    // A second live `fleet` would be ambiguous (and a second bill): refused unless asked for.
    user.nimctl(&["deploy", "fleet", "-p", "local"])
        .await
        .fails_with("you already have a deployment named `fleet`");

    let status = user.nimctl(&["-o", "json", "status", "fleet"]).await.ok().json();
    assert_eq!(status["status"], "ready");
    assert_eq!(status["machines"].as_array().expect("machines").len(), 2);
    let id = status["id"].as_str().expect("id").to_owned();

    let ran =
        user.nimctl(&["run", "fleet", "--", "sh", "-c", "echo hello from $NIM_MACHINE"]).await.ok();
    for machine in ["local-0", "local-1"] {
        assert!(
            ran.stdout.contains(&format!("=== {machine} (succeeded, exit 0")),
            "{}",
            ran.stdout
        );
        assert!(ran.stdout.contains(&format!("hello from {machine}")), "{}", ran.stdout);
    }
    let failed =
        user.nimctl(&["run", "fleet", "-m", "local-1", "--shell", "echo oops >&2; exit 3"]).await;
    let failed = failed.fails_with("failed: 0 of 1 machines succeeded");
    assert!(failed.stdout.contains("=== local-1 (failed, exit 3"), "{}", failed.stdout);
    assert!(failed.stdout.contains("stderr: oops"), "{}", failed.stdout);
    assert!(!failed.stdout.contains("local-0"), "only the machine asked for ran it");
    let history = user.nimctl(&["commands", "fleet"]).await.ok();
    assert!(history.stdout.contains("echo oops >&2; exit 3"), "{}", history.stdout);

    let logs = user.nimctl(&["logs", "fleet"]).await.ok();
    assert!(logs.stdout.contains("Apply complete!"), "the log is the result: {}", logs.stdout);

    // No terminal to confirm on, and no --yes: nothing is destroyed.
    user.nimctl(&["destroy", "fleet"]).await.fails_with("pass --yes");
    assert_eq!(user.nimctl(&["-o", "json", "status", &id]).await.ok().json()["status"], "ready");
    let destroyed = user.nimctl(&["destroy", "fleet", "--yes"]).await.ok();
    assert!(destroyed.stdout.contains("status:    destroyed"), "{}", destroyed.stdout);
    // A destroyed deployment is still found by name (the newest of that name).
    let runs = user.nimctl(&["runs", "fleet"]).await.ok();
    assert!(runs.stdout.contains("destroy  succeeded"), "{}", runs.stdout);

    user.nimctl(&["logout"]).await.ok();
    user.nimctl(&["whoami"]).await.fails_with("not signed in");
}

#[tokio::test]
async fn nimctl_refreshes_an_expiring_session_and_exits_non_zero_when_a_deployment_fails() {
    let app = app().provisioning().spawn().await;
    let user = User::of(&app);
    user.sign_up("refresh@example.com").await;

    // Make the saved session look about to expire: nimctl must refresh it and save the new one
    // (refresh tokens are single-use).
    let path = user.sessions();
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let session = file["servers"].as_object_mut().unwrap().values_mut().next().unwrap();
    let old_refresh = session["refresh_token"].as_str().unwrap().to_owned();
    session["expires_at"] = 0.into();
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    user.nimctl(&["whoami"]).await.ok();
    let file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let session = file["servers"].as_object().unwrap().values().next().unwrap();
    assert_ne!(session["refresh_token"], old_refresh.as_str());
    assert!(session["expires_at"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    // The old refresh token was used up by that refresh.
    assert_eq!(app.refresh(&old_refresh).await.status(), 400);

    let failed = user
        .nimctl(&["deploy", "broken", "-p", "failing", "--var", "reason=no disk today"])
        .await
        .fails_with("refusing to boot: no disk today");
    assert!(failed.stdout.contains("status:    failed"), "{}", failed.stdout);

    // A failed apply is retried, followed to its end, and keeps what it made.
    user.nimctl(&["deploy", "twice", "-p", "flaky", "--count", "1"])
        .await
        .fails_with("failing once on purpose");
    // The failed deployment keeps its name, and `deploy` says how to free it.
    user.nimctl(&["deploy", "twice", "-p", "flaky", "--count", "1"])
        .await
        .fails_with("(`nimctl retry");
    let retried = user.nimctl(&["retry", "twice"]).await.ok();
    assert!(retried.stderr.contains("==> retrying the apply of twice"), "{}", retried.stderr);
    assert!(retried.stdout.contains("status:    ready"), "{}", retried.stdout);
    assert!(
        retried.stdout.contains("flaky-0") || retried.stdout.contains("local-0"),
        "{}",
        retried.stdout
    );
    user.nimctl(&["retry", "twice"]).await.fails_with("only a failed deployment can be retried");

    // Scale it (a dry run first), replace a machine, and read what each run changed.
    let plan = user.nimctl(&["scale", "twice", "--count", "2", "--dry-run"]).await.ok();
    assert!(plan.stdout.contains("Plan: 1 to add, 0 to change, 0 to destroy."), "{}", plan.stdout);
    let scaled = user.nimctl(&["scale", "twice", "--count", "2"]).await.ok();
    assert!(scaled.stderr.contains("==> updating twice"), "{}", scaled.stderr);
    assert!(scaled.stdout.contains("-1 "), "two machines: {}", scaled.stdout);
    let same = user.nimctl(&["update", "twice", "--var", "machine_count=2"]).await.ok();
    assert!(same.stderr.contains("nothing to do"), "{}", same.stderr);
    user.nimctl(&["update", "twice", "--var", "machine_count=0"]).await.fails_with("machine_count");
    let replaced = user.nimctl(&["replace", "twice", "flaky-1"]).await;
    let replaced = match replaced.code {
        0 => replaced,
        _ => user.nimctl(&["replace", "twice", "local-1"]).await.ok(),
    };
    assert!(replaced.stdout.contains("status:    ready"), "{}", replaced.stdout);
    let runs = user.nimctl(&["runs", "twice"]).await.ok();
    assert!(runs.stdout.contains("machine_count: 1 → 2"), "{}", runs.stdout);
    assert!(runs.stdout.contains("replaced "), "{}", runs.stdout);

    // A bad --server is a usage problem reported as such.
    let ran = user.nimctl(&["--server", "ftp://example.com", "whoami"]).await;
    assert_eq!(ran.code, 1);
    assert!(ran.stderr.contains("must be an http:// or https:// URL"), "{}", ran.stderr);
}
