# terraform/shared/bootstrap: the user data every cloud machine boots with. One template for
# AWS, Azure and GCP, so the three install and run nim-agent the same way.
#
# This folder holds no provider module (the backend's module loader skips folders without
# `.tf` files at the top of the modules folder, and this one is a level deeper); the cloud
# modules call it as `module "bootstrap" { source = "../shared/bootstrap" }`, which works in a
# deployment's workspace too because the backend copies the whole modules folder.

terraform {
  required_version = ">= 1.4"
}

variable "agent_download_url" {
  type        = string
  description = "Where the machine downloads nim-agent (the backend's /agent/download/<target>)."

  validation {
    condition     = can(regex("^https?://[^\\s'\"\\\\]+$", var.agent_download_url))
    error_message = "agent_download_url must be an http(s) URL without spaces or quotes."
  }
}

variable "agent_sha256" {
  type        = string
  description = "SHA-256 of the agent binary, lowercase hex; the machine refuses any other file."

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.agent_sha256))
    error_message = "agent_sha256 must be 64 lowercase hexadecimal characters."
  }
}

variable "agent_port" {
  type        = number
  description = "TCP port the agent listens on, on every interface."

  validation {
    condition     = var.agent_port >= 0 && var.agent_port <= 65535 && floor(var.agent_port) == var.agent_port
    error_message = "agent_port must be a whole number from 0 to 65535."
  }
}

variable "agent_token" {
  type        = string
  sensitive   = true
  description = "Bearer token the agent requires."
}

variable "agent_tls_cert" {
  type        = string
  sensitive   = true
  description = "PEM certificate the agent serves."
}

variable "agent_tls_key" {
  type        = string
  sensitive   = true
  description = "PEM private key of agent_tls_cert."
}

variable "no_new_privileges" {
  type        = bool
  default     = false
  description = "Add NoNewPrivileges=yes to the agent's unit (see docs/clouds.md before enabling)."
}

locals {
  user_data = templatefile("${path.module}/agent-bootstrap.sh.tftpl", {
    agent_download_url = var.agent_download_url
    agent_sha256       = var.agent_sha256
    no_new_privileges  = var.no_new_privileges
    # docs/agent.md: PEM text is accepted in place of a path.
    agent_config = jsonencode({
      listen   = "0.0.0.0:${var.agent_port}"
      token    = var.agent_token
      tls_cert = var.agent_tls_cert
      tls_key  = var.agent_tls_key
    })
  })
}

output "user_data" {
  description = "The bootstrap script, as plain text (cloud-init runs user data starting with #! as a script)."
  value       = local.user_data
  sensitive   = true
}
