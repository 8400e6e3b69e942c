# terraform/local: machines that are sandboxes on this host, each behaving like a small VM.
#
# Only the built-in `terraform_data` resource and `local-exec` are used, so this module needs no
# provider download and works offline. What a machine is (see docs/local-machines.md):
#   - its own network namespace with its own address in `machine_network` (one /26 per
#     deployment, on a bridge of its own); it reaches the other machines of its deployment and
#     the backend's agent download address, nothing else of the host or of other deployments;
#   - its own filesystem view (bubblewrap): the host's /usr read-only, a private writable root
#     (its "disk"), nothing of the backend's data directory, workspaces or other machines;
#   - its own PID, IPC and UTS namespaces and user namespace: root inside is an unprivileged uid
#     of its own outside, with no capabilities on the host, no new privileges, and limits on
#     memory, processes and open files;
#   - installed like a cloud machine: the shared bootstrap (terraform/shared/bootstrap) runs
#     inside it, downloads nim-agent from the backend and checks its SHA-256; only the service
#     start differs (no systemd in a sandbox).
# Every value reaches the scripts through the environment, never spliced into a command.

terraform {
  required_version = ">= 1.4"
}

locals {
  names = [for i in range(var.machine_count) : format("%s-%d", var.name_prefix, i)]
  # Host-wide names: any replica on this host finds a machine from its deployment and name.
  deployment_dir = "${var.machines_root}/${var.deployment_id}"
  # The download address and port, which the machines' firewall lets them reach.
  download_host = split("/", trimprefix(var.agent_download_url, "http://"))[0]
}

module "bootstrap" {
  source = "../shared/bootstrap"

  agent_download_url = var.agent_download_url
  agent_sha256       = var.agent_sha256
  agent_port         = var.agent_port
  agent_token        = var.agent_token
  agent_tls_cert     = var.agent_tls_cert
  agent_tls_key      = var.agent_tls_key
}

# The deployment's network: its bridge (claimed by the backend when the deployment was created)
# gets the subnet's first address, which the machines use as their gateway.
resource "terraform_data" "network" {
  input = {
    deployment_id = var.deployment_id
    subnet        = var.machine_network
    dir           = local.deployment_dir
    scripts       = abspath(path.module)
  }

  provisioner "local-exec" {
    interpreter = ["/bin/sh"]
    command     = "${abspath(path.module)}/network.sh"
    environment = {
      ACTION         = "up"
      DEPLOYMENT_ID  = self.input.deployment_id
      SUBNET         = self.input.subnet
      DEPLOYMENT_DIR = self.input.dir
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh"]
    command     = "${self.input.scripts}/network.sh"
    environment = {
      ACTION         = "down"
      DEPLOYMENT_ID  = self.input.deployment_id
      SUBNET         = self.input.subnet
      DEPLOYMENT_DIR = self.input.dir
    }
  }
}

resource "terraform_data" "machine" {
  count = var.machine_count

  # What identifies the machine: changing any of these replaces it. The limits, the agent's
  # credentials and the download address are read at start instead, so a backend restart (a new
  # download port) does not replace running machines.
  input = {
    name          = local.names[count.index]
    deployment_id = var.deployment_id
    address       = cidrhost(var.machine_network, count.index + 2)
    subnet        = var.machine_network
    uid           = var.machine_uid_base + count.index
    dir           = "${local.deployment_dir}/${local.names[count.index]}"
    network       = terraform_data.network.id
    scripts       = abspath(path.module)
  }

  provisioner "local-exec" {
    interpreter = ["/bin/sh"]
    command     = "${abspath(path.module)}/start-machine.sh"
    environment = {
      MACHINE_NAME   = self.input.name
      MACHINE_DIR    = self.input.dir
      DEPLOYMENT_ID  = self.input.deployment_id
      ADDRESS        = self.input.address
      SUBNET         = self.input.subnet
      MACHINE_UID    = self.input.uid
      DOWNLOAD_HOST  = local.download_host
      MEMORY_MB      = var.memory_mb
      MAX_PROCESSES  = var.max_processes
      MAX_OPEN_FILES = var.max_open_files
      BOOT_DELAY     = var.boot_delay_seconds
      USER_DATA      = module.bootstrap.user_data
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh"]
    command     = "${self.input.scripts}/stop-machine.sh"
    environment = {
      MACHINE_DIR = self.input.dir
    }
  }
}
