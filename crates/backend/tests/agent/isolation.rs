//! What a command can see of the agent that runs it: only the documented base environment, not
//! the config it read from stdin, and (the agent being non-dumpable) none of its `/proc` entries.

use std::{collections::BTreeSet, path::Path};

use nim_backend::services::cloud_client::CallOutcome;
use secrecy::ExposeSecret;
use tokio::process::Command;
use wire::{ExecRequest, ExecResponse};

use crate::helpers::{AGENT_BIN, AgentStdin, Deployment, TestAgent, exec_one};

/// The fixed `PATH` every command gets (docs/agent.md, "How a command runs").
const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A variable the agent is started with that no command may see.
const BACKEND_SECRET: (&str, &str) = ("SOME_BACKEND_SECRET", "xyz-backend-secret");

/// `program` (the agent, or a launcher of it) with nothing in its environment but the agent's
/// settings, a stray secret, and the `HOME`, `LANG` and `PATH` given.
fn agent_command(deployment: &Deployment, program: &str, home_lang: [Option<&str>; 2]) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .current_dir("/")
        .env("NIM_AGENT_LISTEN", "127.0.0.1:0")
        .env("NIM_AGENT_TOKEN", &deployment.token)
        .env("NIM_AGENT_TLS_CERT", &deployment.cert.cert_pem)
        .env("NIM_AGENT_TLS_KEY", deployment.cert.key_pem.expose_secret())
        .env(BACKEND_SECRET.0, BACKEND_SECRET.1)
        // Not the agent's children's PATH: theirs is fixed.
        .env("PATH", "/agent/only/bin:/usr/bin:/bin");
    for (name, value) in ["HOME", "LANG"].into_iter().zip(home_lang) {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
}

async fn run(agent: &TestAgent, request: ExecRequest) -> ExecResponse {
    let result = exec_one(&agent.target, request).await;
    assert_eq!(result.status, CallOutcome::Succeeded, "{result:?}");
    result.response.unwrap()
}

fn lines(text: &str) -> BTreeSet<&str> {
    text.lines().collect()
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[tokio::test]
async fn a_command_gets_only_the_base_environment_and_the_requests_env() {
    let deployment = Deployment::new();
    let command = agent_command(&deployment, AGENT_BIN.as_str(), [Some("/srv/nim-home"), None]);
    let agent = deployment.spawn_configured(command, "env").await;

    let response =
        run(&agent, ExecRequest::argv(["env"]).with_env("NIM_MACHINE", "machine-1")).await;

    let expected_path = format!("PATH={COMMAND_PATH}");
    assert_eq!(
        lines(&response.stdout),
        BTreeSet::from([
            expected_path.as_str(),
            "HOME=/srv/nim-home",
            "LANG=C.UTF-8",
            "NIM_MACHINE=machine-1",
        ]),
        "exactly the base variables and the request's"
    );
    assert!(!response.stdout.contains("NIM_AGENT_"), "{}", response.stdout);
    assert!(!response.stdout.contains(BACKEND_SECRET.0), "{}", response.stdout);
    assert!(!response.stdout.contains(&deployment.token), "the token leaked: {}", response.stdout);
}

#[tokio::test]
async fn the_agents_lang_is_kept_home_falls_back_by_uid_and_the_request_env_wins() {
    let deployment = Deployment::new();
    let command = agent_command(&deployment, AGENT_BIN.as_str(), [None, Some("de_DE.UTF-8")]);
    let agent = deployment.spawn_configured(command, "env").await;

    let plain = run(&agent, ExecRequest::argv(["env"])).await;
    let overridden = run(
        &agent,
        ExecRequest::argv(["/usr/bin/env"])
            .with_env("PATH", "/custom/bin")
            .with_env("LANG", "fr_FR.UTF-8"),
    )
    .await;

    let home = if running_as_root() { "HOME=/root" } else { "HOME=/" };
    let expected_path = format!("PATH={COMMAND_PATH}");
    assert_eq!(
        lines(&plain.stdout),
        BTreeSet::from([expected_path.as_str(), home, "LANG=de_DE.UTF-8"])
    );
    assert_eq!(
        lines(&overridden.stdout),
        BTreeSet::from(["PATH=/custom/bin", home, "LANG=fr_FR.UTF-8"])
    );
}

#[tokio::test]
async fn an_agent_given_config_dash_reads_its_settings_piped_on_stdin() {
    let deployment = Deployment::new();
    let mut command = Command::new(AGENT_BIN.as_str());
    command.arg("--config").arg("-").env_clear();
    let agent = deployment
        .spawn_configured_with(command, "stdin", AgentStdin::Pipe(deployment.config_json()))
        .await;

    let response = run(&agent, ExecRequest::argv(["echo", "hello"])).await;
    assert_eq!(response.stdout, "hello\n");
    let wrong = nim_backend::services::cloud_client::AgentTarget {
        credentials: deployment.with_token("not-the-deployment-token"),
        ..agent.target.clone()
    };
    let refused = exec_one(&wrong, ExecRequest::argv(["true"])).await;
    assert_eq!(refused.status, CallOutcome::Rejected, "{refused:?}");
}

#[tokio::test]
async fn a_command_cannot_read_the_config_the_agent_read_from_stdin() {
    let deployment = Deployment::new();
    // A file rather than a pipe: without the agent detaching its stdin, a command could reopen
    // this file through /proc/<agent>/fd/0 and read the token from the start.
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("agent.json");
    std::fs::write(&config_file, deployment.config_json()).unwrap();
    let mut command = Command::new(AGENT_BIN.as_str());
    command.env_clear().env("NIM_AGENT_CONFIG", "-");
    let stdin = AgentStdin::File(std::fs::File::open(&config_file).unwrap());
    let agent = deployment.spawn_configured_with(command, "stdin", stdin).await;

    let response = run(
        &agent,
        ExecRequest::shell(
            "echo $PPID; readlink /proc/$PPID/fd/0; cat /proc/$PPID/fd/0; echo end-of-agent-stdin; cat",
        ),
    )
    .await;

    assert!(!response.stdout.contains(&deployment.token), "the token leaked: {response:?}");
    let pid = agent.pid();
    if running_as_root() {
        assert_eq!(response.stdout, format!("{pid}\n/dev/null\nend-of-agent-stdin\n"));
    } else {
        // The agent is non-dumpable: its fd directory is root's.
        assert_eq!(response.stdout, format!("{pid}\nend-of-agent-stdin\n"));
    }
    assert!(Path::new(&config_file).exists(), "the test's own copy is untouched");
}

#[tokio::test]
async fn a_command_of_the_agents_own_uid_cannot_read_its_proc_entries() {
    if !running_as_root() {
        eprintln!(
            "SKIPPED a_command_of_the_agents_own_uid_cannot_read_its_proc_entries: it needs root to start the agent as uid 65534"
        );
        return;
    }
    let Some(setpriv) =
        ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| Path::new(p).exists())
    else {
        eprintln!(
            "SKIPPED a_command_of_the_agents_own_uid_cannot_read_its_proc_entries: setpriv (util-linux) is not installed"
        );
        return;
    };
    let deployment = Deployment::new();
    let mut command = agent_command(&deployment, setpriv, [None, None]);
    command.args(["--reuid=65534", "--regid=65534", "--clear-groups", AGENT_BIN.as_str()]);
    // setpriv execs the agent, so the agent keeps this pid.
    let agent = deployment.spawn_configured(command, "nobody").await;
    let pid = agent.pid();

    let response = run(
        &agent,
        ExecRequest::shell(
            "echo $(id -u) $PPID $HOME; cat /proc/$$/environ >/dev/null && echo own-environ-readable; \
             cat /proc/$PPID/environ; ls /proc/$PPID/fd; head -c 1 /proc/$PPID/mem; exit 0",
        ),
    )
    .await;

    assert_eq!(
        response.stdout,
        format!("65534 {pid} /\nown-environ-readable\n"),
        "same uid, the agent as parent, and nothing read from it"
    );
    for entry in ["environ", "fd", "mem"] {
        let line = response
            .stderr
            .lines()
            .find(|line| line.contains(&format!("/proc/{pid}/{entry}")))
            .unwrap_or_else(|| panic!("no error about {entry}: {}", response.stderr));
        assert!(line.ends_with("Permission denied"), "{line}");
    }
    assert!(!response.stderr.contains(&deployment.token), "{}", response.stderr);
}
