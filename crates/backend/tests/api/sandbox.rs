//! Local machines are sandboxes: what a hostile user runs on their own `terraform/local` machine
//! reaches nothing of the host, of the backend or of other users' machines. Each test tries the
//! escapes from a command, the way a user would, and asserts how each one fails.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use wire::{deployments::DeploymentView, status::DeploymentStatus};

use crate::helpers::{
    JWT_SECRET, TestApp, agents, app, machines_of, provision, run_command, wait_for_status,
};

/// Credentials a backend may hold in its environment; none may reach a machine.
const CANARIES: [(&str, &str); 4] = [
    ("AWS_SECRET_ACCESS_KEY", "canary-aws-5d1f"),
    ("ARM_CLIENT_SECRET", "canary-arm-77c2"),
    ("GOOGLE_CREDENTIALS", "canary-gcp-9e0a"),
    ("NIM_TEST_CANARY", "canary-nim-31b8"),
];

/// A provisioning server with the canary credentials in its environment.
async fn with_canaries() -> TestApp {
    let mut builder = app().provisioning();
    for (key, value) in CANARIES {
        builder = builder.env(key, value);
    }
    builder.spawn().await
}

async fn ready_local(app: &TestApp, token: &str, name: &str, variables: Value) -> DeploymentView {
    let created =
        provision(app, token, json!({"name": name, "provider": "local", "variables": variables}))
            .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(app, token, &id, DeploymentStatus::Ready).await
}

/// Runs a shell script on one machine and returns its result.
async fn shell(
    app: &TestApp,
    token: &str,
    deployment: &DeploymentView,
    machine: &str,
    script: &str,
) -> Value {
    let id = deployment.id.to_string();
    let command = run_command(
        app,
        token,
        &id,
        json!({"shell": script, "machines": [machine], "timeout_s": 60}),
    )
    .await;
    command["results"][0].clone()
}

/// `name=reached|blocked` lines of a probe script, as a map.
fn outcomes(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The host's own IPv4 addresses (other than loopback and the local machines' range).
fn host_addresses() -> Vec<String> {
    let output =
        std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next())
        .filter(|addr| !addr.starts_with("127.") && !addr.starts_with("10.213."))
        .map(str::to_owned)
        .collect()
}

/// The gateway of a machine's subnet: the host's end of its link.
fn gateway_of(address: &str) -> String {
    let (base, last) = address.rsplit_once('.').unwrap();
    let last: u32 = last.parse().unwrap();
    format!("{base}.{}", (last & !63) + 1)
}

#[tokio::test]
async fn a_local_machine_reaches_nothing_of_the_host_or_of_other_users() {
    let app = with_canaries().await;
    let alice = app.token("alice@example.com").await;
    let mallory = app.token("mallory@example.com").await;
    let theirs = ready_local(&app, &alice, "theirs", json!({"machine_count": 1})).await;
    let mine = ready_local(&app, &mallory, "mine", json!({"machine_count": 2})).await;

    let data_dir = app.dir.path().join("data");
    // What the probes look for is there on the host.
    assert!(data_dir.join("deployments").is_dir(), "{}", data_dir.display());
    let their_machine = machines_of(&theirs)[0].public_ip.clone().unwrap();
    let their_disk = app.machines_dir.join(theirs.id.to_string()).join("local-0/disk");
    assert!(their_disk.join("etc/passwd").exists(), "the other machine's disk is on the host");
    // Nor can any other account of the host enter a machine's disk.
    let outsider = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
        .arg(their_disk.join("etc"))
        .output()
        .unwrap();
    assert!(!outsider.status.success(), "uid 65534 lists a machine's /etc");
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("Permission denied"));
    let my_peer = machines_of(&mine)[1].public_ip.clone().unwrap();
    let gateway = gateway_of(&my_peer);
    let api_port = app.addr.port().to_string();
    let backend_pid = app.pid().to_string();
    let workspace = data_dir.join("deployments");
    let download = app.machine_download.clone().expect("the machine-facing listener");

    let mut checks = vec![
        ("data_dir_absolute", format!("ls {}/deployments", data_dir.display())),
        (
            "data_dir_relative",
            format!("cd / && ls ../../../../../../..{}/deployments", data_dir.display()),
        ),
        ("data_dir_through_proc", format!("ls /proc/1/root{}/deployments", data_dir.display())),
        ("workspace", format!("ls {}", workspace.display())),
        ("other_machine_disk", format!("ls {}", their_disk.display())),
        ("host_process_visible", format!("test -e /proc/{backend_pid}")),
        ("host_process_signal", format!("kill -0 {backend_pid}")),
        ("postgres_on_loopback", "exec 3<>/dev/tcp/127.0.0.1/5432".to_owned()),
        ("postgres_on_gateway", format!("exec 3<>/dev/tcp/{gateway}/5432")),
        ("api_on_loopback", format!("exec 3<>/dev/tcp/127.0.0.1/{api_port}")),
        ("api_on_gateway", format!("exec 3<>/dev/tcp/{gateway}/{api_port}")),
        ("api_on_download_address", format!("exec 3<>/dev/tcp/10.213.0.1/{api_port}")),
        ("other_users_machine", format!("exec 3<>/dev/tcp/{their_machine}/7070")),
        ("own_peer", format!("exec 3<>/dev/tcp/{my_peer}/7070")),
        ("agent_download", format!("exec 3<>/dev/tcp/{}", download.replace(':', "/"))),
    ];
    for address in host_addresses() {
        checks.push(("postgres_on_host_address", format!("exec 3<>/dev/tcp/{address}/5432")));
        checks.push(("api_on_host_address", format!("exec 3<>/dev/tcp/{address}/{api_port}")));
    }
    let script: String = checks
        .iter()
        .map(|(name, probe)| {
            format!(
                "if timeout 3 bash -c '{probe}' >/dev/null 2>&1; then echo {name}=reached; else echo {name}=blocked; fi\n"
            )
        })
        .collect();
    let result = shell(&app, &mallory, &mine, "local-0", &script).await;
    assert_eq!(result["status"], "succeeded", "{result:#}");
    let seen = outcomes(result["stdout"].as_str().unwrap());
    for (name, _) in &checks {
        let expected = match *name {
            "own_peer" | "agent_download" => "reached",
            _ => "blocked",
        };
        assert_eq!(seen.get(*name).map(String::as_str), Some(expected), "{name}: {result:#}");
    }

    // Nothing secret in the environment, in any process's environment, or in any file.
    let secrets = shell(
        &app,
        &mallory,
        &mine,
        "local-0",
        "env; echo ---; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; \
         grep -rIl -e 'PRIVATE KEY' -e 'BEGIN CERT' / --exclude-dir=proc --exclude-dir=usr --exclude-dir=sys --exclude-dir=dev 2>/dev/null; \
         ls -a /etc/nim; echo ---; ls /proc | grep -c '^[0-9]'",
    )
    .await;
    let text = secrets["stdout"].as_str().unwrap();
    let sections: Vec<&str> = text.split("---\n").collect();
    assert_eq!(sections.len(), 4, "{secrets:#}");
    let env: Vec<&str> = sections[0].lines().collect();
    let names: Vec<&str> = env.iter().filter_map(|l| l.split_once('=')).map(|(k, _)| k).collect();
    for name in &names {
        assert!(
            ["PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "NIM_MACHINE", "NIM_COMMAND_ID"]
                .contains(name),
            "unexpected variable {name} in a command's environment: {env:?}"
        );
    }
    for needle in CANARIES.iter().map(|(_, v)| *v).chain([
        JWT_SECRET,
        "TF_VAR_",
        "PG_CONN_STR",
        "AGENT_CONFIG",
        "NIM_AGENT",
        "DATABASE_URL",
        "USER_DATA",
    ]) {
        assert!(!text.contains(needle), "{needle} is visible on the machine: {text}");
    }
    assert!(!text.contains("agent.json"), "the agent's config is on the machine's disk: {text}");
    assert!(!sections[2].contains("PRIVATE KEY"), "{text}");
    let processes: u32 = sections[3].trim().parse().unwrap();
    assert!(processes < 10, "the machine sees {processes} processes: not its own pid namespace?");

    // Root inside is an unprivileged uid of its own outside, without capabilities or new privileges.
    let identity = shell(
        &app,
        &mallory,
        &mine,
        "local-0",
        "id -u; cat /proc/self/uid_map; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status",
    )
    .await;
    let identity = identity["stdout"].as_str().unwrap().to_owned();
    let mut lines = identity.lines();
    assert_eq!(lines.next(), Some("0"), "{identity}");
    let map: Vec<u64> =
        lines.next().unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!((map[0], map[2]), (0, 1), "{identity}");
    assert!(map[1] >= 1_000_000_000, "root maps to host uid {} : {identity}", map[1]);
    assert!(identity.contains("CapEff:\t0000000000000000"), "{identity}");
    assert!(identity.contains("NoNewPrivs:\t1"), "{identity}");
    // On the host, every agent runs as such a uid, one per machine.
    let mut uids: Vec<u32> = agents(&app).iter().map(|pid| host_uid(*pid)).collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), 3, "three machines, three uids: {uids:?}");
    assert!(uids.iter().all(|uid| *uid >= 1_000_000_000), "{uids:?}");
}

#[tokio::test]
async fn a_machine_cannot_take_more_memory_or_processes_than_its_limits() {
    let app = app().provisioning().spawn().await;
    let token = app.token("bomb@example.com").await;
    let deployment = ready_local(
        &app,
        &token,
        "bomb",
        json!({"machine_count": 1, "memory_mb": 128, "max_processes": 64}),
    )
    .await;

    let forks = shell(
        &app,
        &token,
        &deployment,
        "local-0",
        "python3 -c '
import os, time
n = 0
try:
    for _ in range(1000):
        if os.fork() == 0:
            time.sleep(20)
            os._exit(0)
        n += 1
except OSError as err:
    print(\"fork failed after\", n, err.strerror)
'",
    )
    .await;
    let out = forks["stdout"].as_str().unwrap();
    let started: u32 = out
        .strip_prefix("fork failed after ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the fork loop was not stopped: {forks:#}"));
    assert!(started < 64, "{started} processes started: {forks:#}");

    let memory = shell(
        &app,
        &token,
        &deployment,
        "local-0",
        "python3 -c 'b = bytearray(512 * 1024 * 1024); b[::4096] = b\"x\" * (len(b) // 4096); print(\"allocated\")'",
    )
    .await;
    assert!(!memory["stdout"].as_str().unwrap().contains("allocated"), "{memory:#}");
    assert_ne!(memory["exit_code"], 0, "{memory:#}");
    // The machine is still there, the host too.
    let after = shell(&app, &token, &deployment, "local-0", "echo alive").await;
    assert_eq!(after["stdout"], "alive\n", "{after:#}");
}

#[tokio::test]
async fn a_user_cannot_have_more_local_machines_than_the_limit() {
    let app = app().provisioning().env("NIM_LOCAL_MAX_MACHINES_PER_USER", "3").spawn().await;
    let token = app.token("greedy@example.com").await;
    ready_local(&app, &token, "two", json!({"machine_count": 2})).await;
    let refused = app
        .post_as(
            &token,
            "/provision",
            &json!({"name": "two-more", "provider": "local", "variables": {"machine_count": 2}}),
        )
        .await;
    let problem = crate::helpers::assert_problem(refused, 409, "local_machine_limit").await;
    assert!(problem["detail"].as_str().unwrap().contains("at most 3"), "{problem:#}");
    // Another user has their own allowance.
    let other = app.token("modest@example.com").await;
    ready_local(&app, &other, "three", json!({"machine_count": 3})).await;
}

fn host_uid(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn terraform_gives_a_modules_local_exec_no_credential_and_no_database_password() {
    let app = with_canaries().await;
    let token = app.token("probe@example.com").await;
    let created =
        provision(&app, &token, json!({"name": "probe", "provider": "envdump", "variables": {}}))
            .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    wait_for_status(&app, &token, &id, DeploymentStatus::Ready).await;
    let file = app.dir.path().join(format!("data/deployments/{id}/modules/envdump/local-exec.env"));
    let env = std::fs::read_to_string(&file).unwrap();
    for (name, value) in CANARIES {
        assert!(!env.contains(value), "{name} reached a local-exec child: {env}");
    }
    for needle in ["PG_CONN_STR", "postgres://", "DATABASE_URL", JWT_SECRET, "NIM_ENCRYPTION_KEY"] {
        assert!(!env.contains(needle), "{needle} reached a local-exec child: {env}");
    }
    // What it does get: Terraform's own settings and the allow-listed basics.
    assert!(env.contains("TF_IN_AUTOMATION=1") && env.contains("PATH="), "{env}");
    if app.database.is_some() {
        // On Postgres the state really is in the pg backend, set up through `init` alone.
        let state =
            std::fs::read_to_string(app.dir.path().join(format!(
                "data/deployments/{id}/modules/envdump/.terraform/terraform.tfstate"
            )))
            .unwrap();
        assert!(state.contains("\"type\": \"pg\""), "{state}");
        let config =
            app.dir.path().join(format!("data/deployments/{id}/modules/envdump/nim_pg.tfbackend"));
        assert!(!config.exists(), "the backend config file outlived init");
    }
}

#[tokio::test]
async fn without_what_sandboxes_need_local_is_503_and_says_how_to_fix_it() {
    // No bubblewrap (nor anything else) on PATH; Terraform itself is found by its full path.
    let terraform = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|dir| dir.join("terraform"))
        .find(|path| path.is_file())
        .expect("terraform on PATH");
    let app = app()
        .provisioning()
        .env("PATH", "/nonexistent")
        .env("NIM_TERRAFORM_BIN", terraform.to_string_lossy())
        .spawn()
        .await;
    assert!(app.machine_download.is_none(), "no machine-facing listener without sandboxes");
    let token = app.token("laptop@example.com").await;
    let body = json!({"name": "nope", "provider": "local", "variables": {}});
    for path in ["/provision", "/provision?dry_run=true"] {
        let refused = app.post_as(&token, path, &body).await;
        let problem =
            crate::helpers::assert_problem(refused, 503, "local_sandbox_unavailable").await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("bwrap (Debian package bubblewrap)"), "{detail}");
    }
    // Nothing was created, and the rest of the server works.
    let list = crate::helpers::json_ok(app.get("/infrastructure", Some(&token)).await).await;
    assert_eq!(list["items"], json!([]));
}
