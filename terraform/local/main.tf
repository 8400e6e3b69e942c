# terraform/local: "machines" that are nim-agent processes on this host's loopback.
#
# Only the built-in `terraform_data` resource and `local-exec` are used, so this module needs no
# provider download and works offline. Each machine is an agent started in its own session
# (it outlives Terraform, like a VM would); the destroy-time provisioner stops it. It follows the
# same contract as the cloud modules, so the backend drives it the same way.

terraform {
  required_version = ">= 1.4"
}

locals {
  names = [for i in range(var.machine_count) : format("%s-%d", var.name_prefix, i)]
  # The backend picks one free port per machine (they all share 127.0.0.1); without that list,
  # machines use consecutive ports from agent_port.
  ports = length(var.agent_ports) > 0 ? var.agent_ports : [for i in range(var.machine_count) : var.agent_port + i]
}

resource "terraform_data" "machine" {
  count = var.machine_count

  input = {
    name    = local.names[count.index]
    port    = local.ports[count.index]
    dir     = "${abspath(path.root)}/machines/${local.names[count.index]}"
    scripts = abspath(path.module)
  }

  provisioner "local-exec" {
    interpreter = ["/bin/sh"]
    command     = "${abspath(path.module)}/start-agent.sh"
    environment = {
      MACHINE_DIR  = self.input.dir
      AGENT_BINARY = var.agent_binary
      BOOT_DELAY   = var.boot_delay_seconds
      AGENT_CONFIG = jsonencode({
        listen   = "127.0.0.1:${self.input.port}"
        token    = var.agent_token
        tls_cert = var.agent_tls_cert
        tls_key  = var.agent_tls_key
      })
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh"]
    command     = "${self.input.scripts}/stop-agent.sh"
    environment = {
      MACHINE_DIR = self.input.dir
    }
  }
}
