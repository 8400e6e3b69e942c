//! What a test looks at on the host: the agents of its local machines, their sandboxes' files
//! and processes, their links.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::Value;

use super::{TestApp, eventually};

/// Agents of this test's deployments still running: `nim-agent` processes in the cgroup of a
/// machine under the test's machines directory.
pub fn agents(app: &TestApp) -> Vec<u32> {
    let deployments: Vec<String> = std::fs::read_dir(&app.machines_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    local_agents()
        .into_iter()
        .filter(|(_, cgroup)| deployments.iter().any(|d| cgroup.contains(d)))
        .map(|(pid, _)| pid)
        .collect()
}

/// Every `nim-agent` process on the host with its cgroups.
fn local_agents() -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "nim-agent")
        {
            if let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) {
                found.push((pid, cgroup));
            }
        }
    }
    found
}

/// Nothing of a deployment's local machines is left on the host: no disk, no network namespace,
/// no link (veth or bridge, whose alias names the deployment).
pub fn assert_no_trace(app: &TestApp, id: &str) {
    assert!(!app.machines_dir.join(id).exists(), "the machines' disks are left");
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&namespaces.stdout).contains(id), "a namespace is left");
    let links = std::process::Command::new("ip").args(["-d", "link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(id), "a link is left");
}

/// Whether something speaking TLS + HTTP answers as an agent at a machine's address (the
/// backend pins the deployment's certificate; this only asks whether an agent is there).
pub async fn agent_answers(address: &str) -> bool {
    let client = reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(format!("https://{address}:7070/v1/health")).send().await {
        Ok(response) => response.json::<Value>().await.is_ok_and(|body| body["status"] == "ok"),
        Err(_) => false,
    }
}

/// The pid a command wrote into `file` (`echo $$ > file`), once it has.
pub async fn read_pid(file: &std::path::Path) -> u32 {
    eventually(&format!("a pid in {}", file.display()), Duration::from_secs(10), || {
        let text = std::fs::read_to_string(file);
        async move {
            let text = text.map_err(|err| err.to_string())?;
            text.trim().parse().map_err(|_| format!("{text:?}"))
        }
    })
    .await
}

/// A local machine's directory on the host.
pub fn machine_dir(app: &TestApp, id: &str, machine: &str) -> PathBuf {
    app.machines_dir.join(id).join(machine)
}

/// A file a command wrote as `/tmp/markers/<name>` on a machine, seen from the host through the
/// machine's disk (the sandbox sees nothing of the host's files, and the host reads its disk).
pub fn marker(app: &TestApp, id: &str, machine: &str, name: &str) -> PathBuf {
    machine_dir(app, id, machine).join("disk/tmp/markers").join(name)
}

/// The host pid of the process a machine knows as `pid` (in its own pid namespace).
pub fn host_pid(id: &str, machine: &str, pid: u32) -> u32 {
    let cgroup = format!("{id}-{machine}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(host) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let in_machine =
            std::fs::read_to_string(entry.path().join("cgroup")).is_ok_and(|c| c.contains(&cgroup));
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let inner = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|p| p.parse::<u32>().ok());
        if in_machine && inner == Some(pid) {
            return host;
        }
    }
    panic!("no process {pid} on machine {machine}");
}

pub fn alive(pid: u32) -> bool {
    // A zombie has no cmdline; it is gone for our purposes.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Waits (up to 10 s) for the process `pid`, which ran `what`, to be gone.
pub async fn gone(pid: u32, what: &str) {
    eventually(&format!("{what} (pid {pid}) to stop"), Duration::from_secs(10), || {
        let running = alive(pid);
        async move { if running { Err("still running".to_owned()) } else { Ok(()) } }
    })
    .await;
}

/// The host end of a machine's link (from the sandbox's own record).
pub fn veth(app: &TestApp, id: &str, machine: &str) -> String {
    let env = std::fs::read_to_string(machine_dir(app, id, machine).join("sandbox.env")).unwrap();
    env.lines().find_map(|l| l.strip_prefix("VETH=")).unwrap().to_owned()
}

/// Takes a machine's link down (a partition: the machine and its agent keep running) or up.
pub fn set_link(app: &TestApp, id: &str, machine: &str, up: bool) {
    let state = if up { "up" } else { "down" };
    let status = Command::new("ip")
        .args(["link", "set", "dev", &veth(app, id, machine), state])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The host pid of the agent of one machine of a deployment.
pub fn agent_of(id: &str, machine: &str) -> Option<u32> {
    let cgroup = format!("/{id}-{machine}");
    local_agents()
        .into_iter()
        .find(|(_, groups)| groups.lines().any(|line| line.ends_with(&cgroup)))
        .map(|(pid, _)| pid)
}
