//! The host side of `terraform/local`: what this host must have for local machines to be real
//! sandboxes, the machine-facing address they download the agent from, and each deployment's
//! own subnet. The sandboxes themselves are built by the module's scripts (bubblewrap, `ip netns`,
//! nftables); this service only decides what must be decided before Terraform runs.
//!
//! A deployment's subnet is claimed by creating its bridge (`nimbr<index>`): the kernel's link
//! names are host-wide and creating one is atomic, so two servers on one host (replicas of one
//! database, or servers of different databases) can never hand out the same subnet. The bridge's
//! alias names the deployment, and `<machines dir>/<deployment id>/network` records which bridge
//! it is, so any replica finds it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::terraform::find_on_path;
use uuid::Uuid;

/// Prefix of every deployment's subnet: 64 addresses, .1 the host, up to 61 machines.
pub const SUBNET_PREFIX: u8 = 26;
/// The host interface holding the machine-facing address (a bridge with no ports: this kernel
/// family has no `dummy` everywhere, and a bridge holds an address just as well).
const GATEWAY_LINK: &str = "nim-gw0";
/// The commands the module's scripts need, with the Debian package of each.
const TOOLS: [(&str, &str); 6] = [
    ("bwrap", "bubblewrap"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("sha256sum", "coreutils"),
];

/// Settings of local machines (from `Config`).
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub network: Ipv4Net,
    pub machines_dir: PathBuf,
    pub uid_base: u32,
    pub max_machines_per_user: u32,
}

/// A deployment's share of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub index: u32,
    pub net: Ipv4Net,
}

/// Local machines on this host: either usable, or why not.
#[derive(Debug, Clone)]
pub struct LocalMachines {
    pub settings: LocalSettings,
    /// `Err` says what the host lacks and how to fix it; provisioning then answers 503.
    pub available: Result<(), String>,
    /// `http://<machine-facing address>:<port>` of this server's machine listener, once bound.
    pub download_base: Option<String>,
}

impl LocalSettings {
    /// Parses and checks `NIM_LOCAL_NETWORK`.
    pub fn parse_network(text: &str) -> anyhow::Result<Ipv4Net> {
        let net: Ipv4Net = text
            .parse()
            .with_context(|| format!("NIM_LOCAL_NETWORK \"{text}\" is not an IPv4 CIDR range"))?;
        if !(16..=22).contains(&net.prefix_len()) {
            bail!("NIM_LOCAL_NETWORK must be a /16 to a /22, not a /{}", net.prefix_len());
        }
        if !net.network().is_private() {
            bail!("NIM_LOCAL_NETWORK must be a private range (10/8, 172.16/12, 192.168/16)");
        }
        Ok(net.trunc())
    }

    /// Subnets in the range; index 0 is the host's own (the machine-facing address).
    fn subnet_count(&self) -> u32 {
        1 << (SUBNET_PREFIX - self.network.prefix_len())
    }

    fn subnet(&self, index: u32) -> Subnet {
        let base = u32::from(self.network.network()) + (index << (32 - SUBNET_PREFIX));
        let net = Ipv4Net::new(Ipv4Addr::from(base), SUBNET_PREFIX).expect("a /26 is valid");
        Subnet { index, net }
    }

    /// The subnet a plan is made with (nothing is claimed for a plan).
    pub fn placeholder_subnet(&self) -> Subnet {
        self.subnet(1)
    }

    /// The host's address machines download the agent from: the range's first host address.
    pub fn gateway_address(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network.network()) + 1)
    }

    /// Host uid of machine 0 of a subnet (machine i is this plus i): unique per machine on the
    /// host, because subnets are.
    pub fn uid_base_of(&self, subnet: &Subnet) -> u32 {
        self.uid_base + subnet.index * 64
    }

    /// Where a deployment's machines keep their disks.
    pub fn deployment_dir(&self, deployment_id: Uuid) -> PathBuf {
        self.machines_dir.join(deployment_id.to_string())
    }
}

impl LocalMachines {
    /// Checks what the host has and prepares the machine-facing address. Never fails: a host
    /// without what sandboxes need still serves everything but local provisioning.
    pub async fn prepare(settings: LocalSettings) -> Self {
        let available = Self::check_host(&settings).await;
        if let Err(reason) = &available {
            tracing::warn!(reason = %reason, "local machines are unavailable: provisioning `local` will answer 503");
        }
        Self { settings, available, download_base: None }
    }

    async fn check_host(settings: &LocalSettings) -> Result<(), String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("local machines are sandboxes with their own network namespace, which only root can create: run nim-backend as root (or in a container/VM where it is root)".into());
        }
        let missing: Vec<String> = TOOLS
            .iter()
            .filter(|(tool, _)| find_on_path(tool).is_none())
            .map(|(tool, package)| format!("{tool} (Debian package {package})"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "local machines need {} on PATH: install them (e.g. `apt-get install bubblewrap iproute2 nftables`; ./dev does)",
                missing.join(", ")
            ));
        }
        let cgroups =
            ["/sys/fs/cgroup/cgroup.controllers", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids"];
        let v2 = Path::new(cgroups[0]).exists();
        let v1 = Path::new(cgroups[1]).is_dir() && Path::new(cgroups[2]).is_dir();
        if !v2 && !v1 {
            return Err("local machines need the memory and pids cgroup controllers (cgroup v2, or v1 mounted at /sys/fs/cgroup/memory and /sys/fs/cgroup/pids) to limit each machine".into());
        }
        std::fs::create_dir_all(&settings.machines_dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                // Machines' uids must traverse to their own disks; nothing here is listable.
                std::fs::set_permissions(
                    &settings.machines_dir,
                    std::fs::Permissions::from_mode(0o711),
                )
            })
            .map_err(|err| {
                format!(
                    "failed to create {} (NIM_LOCAL_MACHINES_DIR): {err}",
                    settings.machines_dir.display()
                )
            })?;
        // The user namespace of a sandbox is created by the machine's unprivileged uid.
        let probe = Command::new("setpriv")
            .args(["--reuid", &settings.uid_base.to_string(), "--regid"])
            .arg(settings.uid_base.to_string())
            .args([
                "--clear-groups",
                "bwrap",
                "--unshare-user",
                "--unshare-pid",
                "--ro-bind",
                "/",
                "/",
                "true",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|err| format!("failed to run bwrap: {err}"))?;
        if !probe.status.success() {
            return Err(format!(
                "bubblewrap cannot create an unprivileged user namespace here ({}): enable them (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)",
                String::from_utf8_lossy(&probe.stderr).trim()
            ));
        }
        let gateway = format!("{}/32", settings.gateway_address());
        if !Path::new("/sys/class/net").join(GATEWAY_LINK).exists() {
            // Another server may create it at the same moment: only the address step must work.
            let _ = ip(&["link", "add", "name", GATEWAY_LINK, "type", "bridge"]).await;
        }
        // Addresses of the range that no deployment holds go nowhere, rather than out of the
        // host through its default route (each deployment's /26 on its bridge is more specific).
        let range = settings.network.to_string();
        for args in [
            &["addr", "replace", gateway.as_str(), "dev", GATEWAY_LINK][..],
            &["link", "set", "dev", GATEWAY_LINK, "up"],
            &["route", "replace", "unreachable", range.as_str()],
        ] {
            ip(args).await.map_err(|err| format!("failed to set up the machine-facing address {gateway} on {GATEWAY_LINK}: {err:#}"))?;
        }
        Ok(())
    }

    /// Why local machines cannot be used, if they cannot.
    pub fn unavailable(&self) -> Option<&str> {
        self.available.as_ref().err().map(String::as_str)
    }

    /// Claims a free subnet for a deployment (or returns the one it has): creates its bridge and
    /// records it in the deployment's directory.
    #[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
    pub async fn claim(&self, deployment_id: Uuid) -> anyhow::Result<Subnet> {
        if let Some(subnet) = self.claimed(deployment_id)? {
            return Ok(subnet);
        }
        let count = self.settings.subnet_count();
        let start = u32::from_be_bytes(
            Sha256::digest(deployment_id.as_bytes())[..4].try_into().expect("4 bytes"),
        );
        let alias = alias_of(deployment_id);
        for step in 0..count {
            let index = (start.wrapping_add(step)) % count;
            if index == 0 {
                continue;
            }
            let bridge = bridge_name(index);
            if ip(&["link", "add", "name", &bridge, "type", "bridge"]).await.is_err() {
                continue;
            }
            ip(&["link", "set", "dev", &bridge, "alias", &alias]).await?;
            let dir = self.settings.deployment_dir(deployment_id);
            let written = std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
                    std::fs::write(dir.join("network"), format!("bridge={bridge}\n"))
                })
                .with_context(|| format!("failed to record the network of {}", dir.display()));
            if let Err(err) = written {
                let _ = ip(&["link", "del", "dev", &bridge]).await;
                return Err(err);
            }
            let subnet = self.settings.subnet(index);
            tracing::info!(bridge, subnet = %subnet.net, "local network claimed");
            return Ok(subnet);
        }
        bail!(
            "every subnet of NIM_LOCAL_NETWORK {} is in use: destroy deployments or set a larger range",
            self.settings.network
        )
    }

    /// The subnet a deployment already holds, from its directory.
    fn claimed(&self, deployment_id: Uuid) -> anyhow::Result<Option<Subnet>> {
        let file = self.settings.deployment_dir(deployment_id).join("network");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("failed to read {}", file.display()));
            }
        };
        let index = text
            .trim()
            .strip_prefix("bridge=nimbr")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..self.settings.subnet_count()).contains(n))
            .with_context(|| format!("{} names no bridge of NIM_LOCAL_NETWORK", file.display()))?;
        Ok(Some(self.settings.subnet(index)))
    }

    /// Gives a deployment's subnet back: deletes its bridge (when it is still the deployment's)
    /// and its directory. The module's destroy does the same; this also covers a deployment
    /// whose creation failed after the claim, or whose destroy ran without the module.
    #[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
    pub async fn release(&self, deployment_id: Uuid) -> anyhow::Result<()> {
        if let Ok(Some(subnet)) = self.claimed(deployment_id) {
            let bridge = bridge_name(subnet.index);
            let alias_file = Path::new("/sys/class/net").join(&bridge).join("ifalias");
            if std::fs::read_to_string(alias_file)
                .is_ok_and(|a| a.trim() == alias_of(deployment_id))
            {
                ip(&["link", "del", "dev", &bridge]).await?;
            }
        }
        let dir = self.settings.deployment_dir(deployment_id);
        match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("failed to remove {}", dir.display()))
            }
            _ => Ok(()),
        }
    }
}

fn bridge_name(index: u32) -> String {
    format!("nimbr{index}")
}

fn alias_of(deployment_id: Uuid) -> String {
    format!("nim-local {deployment_id}")
}

/// Runs `ip <args>`; the error carries its stderr.
async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("failed to run `ip` (iproute2)")?;
    if !output.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(range: &str) -> LocalSettings {
        LocalSettings {
            network: LocalSettings::parse_network(range).unwrap(),
            machines_dir: PathBuf::from("/nonexistent"),
            uid_base: 1_000_000_000,
            max_machines_per_user: 16,
        }
    }

    #[test]
    fn subnets_tile_the_range_after_the_hosts_own() {
        let s = settings("10.213.0.0/16");
        assert_eq!(s.subnet_count(), 1024);
        assert_eq!(s.gateway_address(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(s.subnet(1).net.to_string(), "10.213.0.64/26");
        assert_eq!(s.subnet(1023).net.to_string(), "10.213.255.192/26");
        assert_eq!(s.uid_base_of(&s.subnet(2)), 1_000_000_128);
    }

    #[test]
    fn the_range_must_be_private_and_sized() {
        for bad in ["10.0.0.0/8", "10.0.0.0/24", "8.8.0.0/16", "nonsense"] {
            assert!(LocalSettings::parse_network(bad).is_err(), "{bad}");
        }
        assert_eq!(
            LocalSettings::parse_network("192.168.7.9/22").unwrap().to_string(),
            "192.168.4.0/22"
        );
    }
}
