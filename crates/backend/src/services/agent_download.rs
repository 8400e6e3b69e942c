//! How cloud machines get `nim-agent`: the binary this backend was configured with
//! (`NIM_AGENT_BINARY`), hashed once at start, served at `GET /agent/download/{target}`, and
//! announced to cloud modules as `agent_download_url` + `agent_sha256` (the machine refuses any
//! file with another hash, so the download itself needs no authentication or TLS for integrity).

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// The route machines download the agent from; `{target}` is [`AgentBinary::target`].
pub const DOWNLOAD_PATH: &str = "/agent/download";

/// The target the shipped cloud modules boot (x86_64 Ubuntu images).
pub const CLOUD_TARGET: &str = "linux-x86_64";

/// The agent binary as found at start.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    pub path: PathBuf,
    /// `linux-x86_64`, `linux-aarch64`, ...: read from the file's ELF header, so a binary built
    /// for another machine is served under the right name.
    pub target: String,
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

impl AgentBinary {
    /// Reads and hashes the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut file = File::open(path)
            .with_context(|| format!("failed to open the agent binary {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut header = Vec::with_capacity(20);
        let mut buffer = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buffer)
                .with_context(|| format!("failed to read the agent binary {}", path.display()))?;
            if n == 0 {
                break;
            }
            if header.len() < 20 {
                let take = (20 - header.len()).min(n);
                header.extend_from_slice(&buffer[..take]);
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        let target = elf_target(&header).with_context(|| {
            format!("{} is not a Linux executable (ELF) this backend knows", path.display())
        })?;
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { path: path.to_owned(), target: target.to_owned(), sha256, size })
    }
}

/// The target of an ELF executable from its header's class, byte order and `e_machine`.
fn elf_target(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let little_endian = header[5] == 1;
    let machine = match little_endian {
        true => u16::from_le_bytes([header[18], header[19]]),
        false => u16::from_be_bytes([header[18], header[19]]),
    };
    match (header[4], little_endian, machine) {
        (2, true, 0x3e) => Some("linux-x86_64"),
        (2, true, 0xb7) => Some("linux-aarch64"),
        (2, true, 0xf3) => Some("linux-riscv64"),
        _ => None,
    }
}

/// The agent binary (when there is one) and the public URL machines reach this backend at.
#[derive(Debug, Clone, Default)]
pub struct AgentDistribution {
    pub binary: Option<AgentBinary>,
    /// `NIM_PUBLIC_URL` without a trailing slash.
    pub public_url: Option<String>,
    /// Why there is no binary, for error messages.
    pub missing_reason: Option<String>,
}

/// What cloud modules get: `agent_download_url` and `agent_sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDownload {
    pub url: String,
    pub sha256: String,
}

impl AgentDistribution {
    /// Loads the binary at `path`; a missing or unusable file is remembered, not fatal (only
    /// cloud provisioning needs it, and it says why it cannot run).
    pub fn new(path: &Path, public_url: Option<String>) -> Self {
        match AgentBinary::load(path) {
            Ok(binary) => Self { binary: Some(binary), public_url, missing_reason: None },
            Err(err) => Self { binary: None, public_url, missing_reason: Some(format!("{err:#}")) },
        }
    }

    /// The binary served for `target`, if this backend has one.
    pub fn binary_for(&self, target: &str) -> Option<&AgentBinary> {
        self.binary.as_ref().filter(|binary| binary.target == target)
    }

    /// Where local machines download the agent: this server's machine-facing listener
    /// (`http://<address>:<port>`, when local machines are available), for this host's target.
    pub fn local_download(&self, base: Option<&str>) -> Result<AgentDownload, String> {
        let Some(base) = base else {
            return Err(
                "this server has no machine-facing address (local machines are unavailable)".into(),
            );
        };
        let binary = self.binary.as_ref().ok_or_else(|| {
            format!(
                "there is no agent binary to install: {}",
                self.missing_reason.as_deref().unwrap_or("NIM_AGENT_BINARY is missing")
            )
        })?;
        Ok(AgentDownload {
            url: format!("{base}{DOWNLOAD_PATH}/{}", binary.target),
            sha256: binary.sha256.clone(),
        })
    }

    /// Where machines of the shipped cloud modules download the agent, or why they cannot.
    pub fn cloud_download(&self) -> Result<AgentDownload, String> {
        let Some(public_url) = &self.public_url else {
            return Err("machines download nim-agent from this backend, but NIM_PUBLIC_URL is not set; set it to the URL the machines can reach this server at (e.g. https://nim.example.com)".into());
        };
        let Some(binary) = &self.binary else {
            return Err(format!(
                "machines download nim-agent from this backend, but it has no agent binary to serve ({}); build nim-agent or set NIM_AGENT_BINARY",
                self.missing_reason.as_deref().unwrap_or("none configured")
            ));
        };
        if binary.target != CLOUD_TARGET {
            return Err(format!(
                "the agent binary {} is built for {}, but cloud machines run {CLOUD_TARGET}; set NIM_AGENT_BINARY to a {CLOUD_TARGET} build",
                binary.path.display(),
                binary.target
            ));
        }
        Ok(AgentDownload {
            url: format!("{public_url}{DOWNLOAD_PATH}/{}", binary.target),
            sha256: binary.sha256.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(machine: u16) -> Vec<u8> {
        let mut bytes = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0".to_vec();
        bytes.extend_from_slice(&machine.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 100]);
        bytes
    }

    #[test]
    fn the_binary_is_hashed_and_its_target_read_from_the_elf_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nim-agent");
        let bytes = elf(0x3e);
        std::fs::write(&path, &bytes).unwrap();
        let binary = AgentBinary::load(&path).unwrap();
        assert_eq!(binary.target, "linux-x86_64");
        assert_eq!(binary.size, bytes.len() as u64);
        let expected: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(binary.sha256, expected);

        std::fs::write(&path, elf(0xb7)).unwrap();
        assert_eq!(AgentBinary::load(&path).unwrap().target, "linux-aarch64");
        std::fs::write(&path, b"#!/bin/sh\necho not an agent\n").unwrap();
        let err = format!("{:#}", AgentBinary::load(&path).unwrap_err());
        assert!(err.contains("not a Linux executable"), "{err}");
    }

    #[test]
    fn cloud_downloads_need_a_public_url_and_an_x86_64_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nim-agent");
        std::fs::write(&path, elf(0x3e)).unwrap();

        let none = AgentDistribution::new(&path, None);
        assert!(none.cloud_download().unwrap_err().contains("NIM_PUBLIC_URL"));

        let served = AgentDistribution::new(&path, Some("https://nim.example.com".into()));
        let download = served.cloud_download().unwrap();
        assert_eq!(download.url, "https://nim.example.com/agent/download/linux-x86_64");
        assert_eq!(download.sha256.len(), 64);
        assert!(served.binary_for("linux-x86_64").is_some());
        assert!(served.binary_for("linux-aarch64").is_none());

        let missing =
            AgentDistribution::new(&dir.path().join("absent"), Some("https://n.example".into()));
        let err = missing.cloud_download().unwrap_err();
        assert!(err.contains("NIM_AGENT_BINARY") && err.contains("absent"), "{err}");

        std::fs::write(&path, elf(0xb7)).unwrap();
        let arm = AgentDistribution::new(&path, Some("https://n.example".into()));
        assert!(arm.cloud_download().unwrap_err().contains("linux-aarch64"));
    }
}
