//! The cloud modules and the agent bootstrap, as far as they can be checked without a cloud:
//! `terraform fmt`, the agent download route, provisioning's use of `NIM_PUBLIC_URL`, and the
//! shared bootstrap script rendered by Terraform's own `templatefile` and run in a temporary root
//! against the real backend serving the real `nim-agent`.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, agent_binary, app, assert_problem, eventually, json_ok, spawn_app};

fn repo_terraform() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../terraform")
}

/// The Terraform CLI the backend would use: `NIM_TERRAFORM_BIN`, else `terraform`/`tofu` on PATH.
fn terraform() -> Command {
    let binary = std::env::var_os("NIM_TERRAFORM_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            ["terraform", "tofu"].iter().find_map(|name| {
                std::env::split_paths(&std::env::var_os("PATH")?)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
        .expect("terraform (or tofu) must be on PATH, or NIM_TERRAFORM_BIN set (./dev test installs it)");
    let mut command = Command::new(binary);
    command.env("CHECKPOINT_DISABLE", "1").env("TF_IN_AUTOMATION", "1").stdin(Stdio::null());
    command
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn terraform_fmt_finds_nothing_to_change_in_any_module() {
    let output = terraform()
        .args(["fmt", "-check", "-recursive", "-diff"])
        .arg(repo_terraform())
        .output()
        .expect("terraform runs");
    assert!(
        output.status.success(),
        "terraform fmt -check -recursive terraform/ wants changes:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Terraform's own parser over each cloud module: `terraform init` loads and checks the whole
/// configuration (and installs the bootstrap child module) before it looks for providers, which
/// an empty `-plugin-dir` makes it fail to find without any download. Provider-specific
/// arguments can only be checked with the providers, in a real account (docs/clouds.md).
#[test]
fn terraform_loads_each_cloud_module_and_its_bootstrap_up_to_the_provider_download() {
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp").arg("-r").arg(repo_terraform()).arg(copy.path()).status();
    assert!(status.unwrap().success());
    let plugins = copy.path().join("no-plugins");
    std::fs::create_dir(&plugins).unwrap();
    for (module, provider) in
        [("aws", "hashicorp/aws"), ("azure", "hashicorp/azurerm"), ("gcp", "hashicorp/google")]
    {
        let output = terraform()
            .current_dir(copy.path().join("terraform").join(module))
            .env("TF_CLI_CONFIG_FILE", "/dev/null")
            .args(["init", "-backend=false", "-input=false", "-no-color"])
            .arg(format!("-plugin-dir={}", plugins.display()))
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains("problems with the configuration"), "{module}:\n{all}");
        assert!(all.contains("- bootstrap in ../shared/bootstrap"), "{module}:\n{all}");
        assert!(all.contains(&format!("Finding {provider} versions matching")), "{module}:\n{all}");
    }
}

/// An x86_64 ELF header followed by filler: what the download route serves and checks.
fn fake_agent(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut bytes = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0".to_vec();
    bytes.extend((0..200_000u32).map(|i| (i % 251) as u8));
    let path = dir.join("fake-nim-agent");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[tokio::test]
async fn the_agent_download_serves_the_configured_binary_with_its_length_and_sha256() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = fake_agent(dir.path());
    let app = app().env("NIM_AGENT_BINARY", path.to_string_lossy()).spawn().await;

    let response = app.get("/agent/download/linux-x86_64", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/octet-stream");
    assert_eq!(headers["content-length"], bytes.len().to_string().as_str());
    assert_eq!(headers["x-nim-agent-sha256"], sha256_hex(&bytes).as_str());
    assert!(headers["repr-digest"].to_str().unwrap().starts_with("sha-256=:"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // HEAD answers the same headers without the body.
    let head = app.client.head(app.url("/agent/download/linux-x86_64")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["x-nim-agent-sha256"], sha256_hex(&bytes).as_str());

    let problem =
        assert_problem(app.get("/agent/download/windows-x86_64", None).await, 404, "not_found")
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("linux-x86_64"), "{problem}");

    // Replaced on disk after start: refused rather than served with the wrong hash.
    std::fs::write(&path, &bytes[..1000]).unwrap();
    assert_problem(
        app.get("/agent/download/linux-x86_64", None).await,
        503,
        "agent_binary_changed",
    )
    .await;
}

#[tokio::test]
async fn without_an_agent_binary_every_target_is_404_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let app =
        app().env("NIM_AGENT_BINARY", dir.path().join("absent").to_string_lossy()).spawn().await;
    let problem =
        assert_problem(app.get("/agent/download/linux-x86_64", None).await, 404, "not_found").await;
    assert!(problem["detail"].as_str().unwrap().contains("NIM_AGENT_BINARY"), "{problem}");
}

#[tokio::test]
async fn the_server_offers_the_cloud_modules_with_the_agent_download_filled_by_the_backend() {
    let app = spawn_app().await; // the repository's terraform/ folder
    let token = app.token("clouds@example.com").await;
    let providers = json_ok(app.get("/providers", Some(&token)).await).await;
    let names: Vec<_> = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aws", "azure", "gcp", "local"]);
    for provider in &providers["providers"].as_array().unwrap()[..3] {
        let variable = |name: &str| {
            provider["variables"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned()
        };
        for name in ["agent_download_url", "agent_sha256", "agent_token", "deployment_id"] {
            assert_eq!(variable(name).unwrap()["backend_filled"], true, "{name}: {provider:#}");
        }
        assert_eq!(variable("agent_tls_key").unwrap()["sensitive"], true);
        assert_eq!(variable("allowed_cidrs").unwrap()["required"], true);
        assert_eq!(variable("ssh_allowed_cidrs").unwrap()["default"], json!([]));
    }
}

#[tokio::test]
async fn a_cloud_provider_without_nim_public_url_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = fake_agent(dir.path());
    let app = app().env("NIM_AGENT_BINARY", path.to_string_lossy()).spawn().await;
    let token = app.token("nourl@example.com").await;
    for provider in ["aws", "azure", "gcp"] {
        let body = json!({"name": "fleet", "provider": provider, "variables": {"allowed_cidrs": ["203.0.113.7/32"]}});
        let problem = assert_problem(
            app.post_as(&token, "/provision", &body).await,
            503,
            "agent_download_unavailable",
        )
        .await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("NIM_PUBLIC_URL") && detail.contains(provider), "{detail}");
    }
    let list = json_ok(app.get("/infrastructure", Some(&token)).await).await;
    assert_eq!(list["items"], json!([]));
}

#[tokio::test]
async fn a_cloud_deployment_gets_the_download_url_and_sha256_of_the_served_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = fake_agent(dir.path());
    let app = app()
        .provisioning()
        .env("NIM_MODULES_DIR", repo_terraform().to_string_lossy())
        .env("NIM_AGENT_BINARY", path.to_string_lossy())
        .env("NIM_PUBLIC_URL", "https://nim.example.com/")
        .spawn()
        .await;
    let token = app.token("url@example.com").await;
    let body = json!({"name": "fleet", "provider": "gcp", "variables": {"allowed_cidrs": ["203.0.113.7/32"], "machine_count": 2}});
    let response = app.post_as(&token, "/provision", &body).await;
    let created = json_ok(response).await;
    let id = created["deployment"]["id"].as_str().unwrap();

    // The run worker writes the plain variables before running Terraform (which then fails
    // here: no provider can be downloaded).
    let tfvars =
        app.dir.path().join(format!("data/deployments/{id}/modules/gcp/terraform.tfvars.json"));
    eventually(&format!("{}", tfvars.display()), Duration::from_secs(60), || {
        let there = tfvars.exists();
        async move { if there { Ok(()) } else { Err("not written yet".to_owned()) } }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let variables: Value = serde_json::from_slice(&std::fs::read(&tfvars).unwrap()).unwrap();
    assert_eq!(
        variables["agent_download_url"],
        "https://nim.example.com/agent/download/linux-x86_64"
    );
    assert_eq!(variables["agent_sha256"], sha256_hex(&bytes));
    assert_eq!(variables["deployment_id"], id);
    assert_eq!(variables["machine_count"], 2);
    // Secrets travel as TF_VAR_* only.
    for secret in ["agent_token", "agent_tls_key", "agent_tls_cert", "agent_binary"] {
        assert!(variables.get(secret).is_none(), "{secret} in {variables}");
    }
    // The workspace copy holds the shared bootstrap the module refers to.
    assert!(
        app.dir
            .path()
            .join(format!("data/deployments/{id}/modules/shared/bootstrap/main.tf"))
            .exists()
    );
}

// ---- the bootstrap script ------------------------------------------------------------------

struct Rendered {
    script: PathBuf,
    _dir: tempfile::TempDir,
}

/// Evaluates `expression` in `terraform console` over a copy of `terraform/shared/bootstrap`
/// with these variables (the console needs no provider, so this works offline).
fn bootstrap_console(variables: &Value, expression: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo_terraform().join("shared/bootstrap")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(dir.path().join("test.tfvars.json"), variables.to_string()).unwrap();
    let mut console = terraform()
        .current_dir(dir.path())
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .args(["console", "-var-file=test.tfvars.json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    console.stdin.take().unwrap().write_all(format!("{expression}\n").as_bytes()).unwrap();
    console.wait_with_output().unwrap()
}

/// Renders the bootstrap script as the cloud modules do (Terraform's own `templatefile`).
fn render_bootstrap(variables: &Value) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let output = bootstrap_console(variables, "nonsensitive(base64encode(local.user_data))");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "terraform console failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    use base64::Engine;
    let script = base64::engine::general_purpose::STANDARD
        .decode(stdout.trim().trim_matches('"'))
        .unwrap_or_else(|err| panic!("console printed no base64 ({err}): {stdout}"));
    let path = dir.path().join("bootstrap.sh");
    std::fs::write(&path, script).unwrap();
    Rendered { script: path, _dir: dir }
}

struct Secrets {
    token: String,
    cert: String,
    key: String,
}

fn secrets() -> Secrets {
    let cert = nim_backend::services::certs::mint_deployment_cert("bootstrap-test").unwrap();
    Secrets {
        token: "a-token-with-'quotes'-\"and\"-$(dollars)-`ticks`".into(),
        cert: cert.cert_pem,
        key: cert.key_pem.expose_secret().to_owned(),
    }
}

fn variables(app: &TestApp, sha256: &str, secrets: &Secrets, no_new_privileges: bool) -> Value {
    json!({
        "agent_download_url": app.url("/agent/download/linux-x86_64"),
        "agent_sha256": sha256,
        "agent_port": 0,
        "agent_token": secrets.token,
        "agent_tls_cert": secrets.cert,
        "agent_tls_key": secrets.key,
        "no_new_privileges": no_new_privileges,
    })
}

/// Runs the script with a temporary root and a `systemctl` that only records its arguments.
fn run_bootstrap(script: &Path, root: &Path) -> (Output, Vec<String>) {
    let systemctl = root
        .parent()
        .unwrap()
        .join(format!("systemctl-{}", root.file_name().unwrap().to_string_lossy()));
    let calls = systemctl.with_extension("calls");
    std::fs::write(&systemctl, format!("#!/bin/sh\necho \"$*\" >> '{}'\n", calls.display()))
        .unwrap();
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("bash")
        .arg(script)
        .env("NIM_BOOTSTRAP_ROOT", root)
        .env("NIM_BOOTSTRAP_SYSTEMCTL", &systemctl)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    (output, calls.lines().map(str::to_owned).collect())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn the_rendered_bootstrap_installs_the_verified_agent_its_config_and_unit() {
    let agent = agent_binary();
    let bytes = std::fs::read(&agent).unwrap();
    let sha256 = sha256_hex(&bytes);
    let app = app().env("NIM_AGENT_BINARY", agent.to_string_lossy()).spawn().await;
    let secrets = secrets();

    let rendered = render_bootstrap(&variables(&app, &sha256, &secrets, false));
    let syntax = Command::new("bash").arg("-n").arg(&rendered.script).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    if let Ok(output) = Command::new("shellcheck").arg(&rendered.script).output() {
        assert!(
            output.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let text = std::fs::read_to_string(&rendered.script).unwrap();
    assert!(
        text.starts_with("#!/bin/bash\n"),
        "cloud-init runs user data starting with #! as a script"
    );
    assert!(
        !text.contains(&secrets.token) && !text.contains("BEGIN"),
        "secrets must be base64 in the script"
    );
    assert!(text.len() < 16 * 1024, "AWS limits user data to 16 KiB; this is {} bytes", text.len());

    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("root");
    let (output, calls) = run_bootstrap(&rendered.script, &root);
    assert!(
        output.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let installed = root.join("usr/local/bin/nim-agent");
    assert_eq!(std::fs::read(&installed).unwrap(), bytes);
    assert_eq!(mode(&installed), 0o755);
    assert_eq!(mode(&root.join("etc/nim")), 0o700);
    let config_path = root.join("etc/nim/agent.json");
    assert_eq!(mode(&config_path), 0o600);
    let config: Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"listen": "0.0.0.0:0", "token": secrets.token, "tls_cert": secrets.cert, "tls_key": secrets.key})
    );
    let unit_path = root.join("etc/systemd/system/nim-agent.service");
    assert_eq!(mode(&unit_path), 0o644);
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/nim-agent --config /etc/nim/agent.json",
        "Restart=on-failure",
        "KillMode=mixed",
        "After=network-online.target",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line:?}:\n{unit}");
    }
    assert!(!unit.contains("NoNewPrivileges"), "{unit}");
    assert_eq!(calls, ["daemon-reload", "enable nim-agent.service", "restart nim-agent.service"]);
    // No temporary file is left beside the binary.
    let leftovers: Vec<_> = std::fs::read_dir(root.join("usr/local/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["nim-agent"]);

    // The installed agent accepts the written config as is: it starts and answers.
    let mut child = Command::new(&installed)
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let listening: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("agent said {line:?}"));
    let port = listening["listening"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    let client =
        reqwest::Client::builder().no_proxy().danger_accept_invalid_certs(true).build().unwrap();
    let health = client.get(format!("https://127.0.0.1:{port}/v1/health")).send().await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health.unwrap().json::<Value>().await.unwrap()["status"], "ok");

    // Rendered with agent_no_new_privileges, the unit says so.
    let strict = render_bootstrap(&variables(&app, &sha256, &secrets, true));
    let root = scratch.path().join("strict");
    let (output, _) = run_bootstrap(&strict.script, &root);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/nim-agent.service")).unwrap();
    assert!(unit.lines().any(|l| l == "NoNewPrivileges=yes"), "{unit}");
}

#[tokio::test]
async fn the_bootstrap_refuses_an_agent_whose_sha256_differs_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = fake_agent(dir.path());
    let app = app().env("NIM_AGENT_BINARY", path.to_string_lossy()).spawn().await;
    let wrong = "0".repeat(64);
    let rendered = render_bootstrap(&variables(&app, &wrong, &secrets(), false));
    let root = dir.path().join("root");
    let (output, calls) = run_bootstrap(&rendered.script, &root);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a wrong hash must fail the bootstrap: {stderr}");
    assert!(stderr.contains(&format!("expected {wrong}")), "{stderr}");
    assert!(calls.is_empty(), "systemctl was called: {calls:?}");
    assert!(!root.join("etc/nim/agent.json").exists());
    assert!(!root.join("etc/systemd/system/nim-agent.service").exists());
    let bin: Vec<_> = std::fs::read_dir(root.join("usr/local/bin")).unwrap().collect();
    assert!(bin.is_empty(), "nothing may be installed: {bin:?}");

    // A download that fails (404) aborts the same way.
    let mut variables = variables(&app, &wrong, &secrets(), false);
    variables["agent_download_url"] = json!(app.url("/agent/download/linux-sparc"));
    let rendered = render_bootstrap(&variables);
    let root = dir.path().join("root404");
    let (output, calls) = run_bootstrap(&rendered.script, &root);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("failed to download"));
    assert!(calls.is_empty());
}

#[test]
fn the_bootstrap_module_rejects_a_malformed_sha256_or_url() {
    let secrets = secrets();
    for (url, sha) in
        [("http://x.example/a", "abc"), ("http://x.example/a b'", &"a".repeat(64) as &str)]
    {
        let variables = json!({"agent_download_url": url, "agent_sha256": sha, "agent_port": 7070,
            "agent_token": secrets.token, "agent_tls_cert": secrets.cert, "agent_tls_key": secrets.key});
        let output = bootstrap_console(&variables, "nonsensitive(local.user_data)");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !output.status.success() || all.contains("Invalid value for variable"),
            "{url} {sha}: {all}"
        );
        assert!(
            all.contains("agent_sha256 must be") || all.contains("agent_download_url must be"),
            "{all}"
        );
    }
}
