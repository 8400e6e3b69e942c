//! `GET /v1/info`: what this machine is, read from `uname`, `/proc` and `/etc/os-release`, plus
//! the GPUs `nvidia-smi` lists when it is installed. The agent targets Linux.

use std::{io, process::Stdio, time::Duration};

use anyhow::Context;
use wire::{GpuInfo, InfoResponse};

/// `nvidia-smi` can hang on a wedged driver; the info call must not.
const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn machine_info() -> anyhow::Result<InfoResponse> {
    let mut info = tokio::task::spawn_blocking(read_system)
        .await
        .context("the system-information task failed")??;
    match list_gpus().await {
        Ok(gpus) => info.gpus = gpus,
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "failed to list GPUs");
            info.gpu_error = Some(format!("{err:#}"));
        }
    }
    Ok(info)
}

fn read_system() -> anyhow::Result<InfoResponse> {
    let uname = nix::sys::utsname::uname().context("failed to call uname")?;
    let hostname = nix::unistd::gethostname().context("failed to read the hostname")?;
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| os_release_name(&text))
        .unwrap_or_else(|| uname.sysname().to_string_lossy().into_owned());
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").context("failed to read /proc/meminfo")?;
    let uptime = std::fs::read_to_string("/proc/uptime").context("failed to read /proc/uptime")?;
    let uptime_secs = uptime
        .split_whitespace()
        .next()
        .and_then(|secs| secs.parse::<f64>().ok())
        .context("failed to parse /proc/uptime")?;
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok(InfoResponse {
        hostname: hostname.to_string_lossy().into_owned(),
        os,
        kernel: uname.release().to_string_lossy().into_owned(),
        arch: uname.machine().to_string_lossy().into_owned(),
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal")
            .context("no MemTotal in /proc/meminfo")?,
        memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable").unwrap_or(0),
        // Whole seconds are enough for uptime; the fraction is dropped on purpose.
        uptime_secs: uptime_secs as u64,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        gpus: Vec::new(),
        gpu_error: None,
    })
}

/// `PRETTY_NAME` (else `NAME`) of an os-release file.
fn os_release_name(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

/// A `/proc/meminfo` entry (`MemTotal:  16318504 kB`) in bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The GPUs `nvidia-smi` reports; none when it is not installed.
async fn list_gpus() -> anyhow::Result<Vec<GpuInfo>> {
    let child = tokio::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,name,uuid,memory.total", "--format=csv,noheader,nounits"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).context("failed to start nvidia-smi"),
    };
    let output = tokio::time::timeout(NVIDIA_SMI_TIMEOUT, child.wait_with_output())
        .await
        .context("nvidia-smi did not answer within 10 s")?
        .context("failed to run nvidia-smi")?;
    if !output.status.success() {
        anyhow::bail!(
            "nvidia-smi failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_gpu_line)
        .collect()
}

fn parse_gpu_line(line: &str) -> anyhow::Result<GpuInfo> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [index, name, uuid, memory] = fields[..] else {
        anyhow::bail!("unexpected nvidia-smi line {line:?}");
    };
    Ok(GpuInfo {
        index: index.parse().with_context(|| format!("bad GPU index in {line:?}"))?,
        name: name.to_owned(),
        uuid: uuid.to_owned(),
        memory_total_mib: memory.parse().with_context(|| format!("bad GPU memory in {line:?}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_prefers_the_pretty_name() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(os_release_name(text).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
    }

    #[test]
    fn meminfo_entries_are_converted_from_kibibytes() {
        let text = "MemTotal:       16318504 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(meminfo_bytes(text, "MemTotal"), Some(16_318_504 * 1024));
        assert_eq!(meminfo_bytes(text, "MemAvailable"), Some(1024 * 1024));
    }

    #[test]
    fn nvidia_smi_csv_lines_become_gpus() {
        let gpu = parse_gpu_line("0, NVIDIA A100-SXM4-40GB, GPU-5f2c, 40960").unwrap();
        assert_eq!(
            gpu,
            GpuInfo {
                index: 0,
                name: "NVIDIA A100-SXM4-40GB".into(),
                uuid: "GPU-5f2c".into(),
                memory_total_mib: 40960
            }
        );
    }
}
