# The module contract (filled by the backend) first, then what a user may choose.

variable "deployment_id" {
  type        = string
  description = "The deployment this module belongs to (set by the backend)."
}

variable "machine_count" {
  type        = number
  default     = 1
  description = "How many local machines (agent processes) to run."
  nullable    = false

  validation {
    condition     = var.machine_count >= 1 && var.machine_count <= 50 && floor(var.machine_count) == var.machine_count
    error_message = "machine_count must be a whole number from 1 to 50."
  }
}

variable "agent_token" {
  type        = string
  sensitive   = true
  description = "Bearer token the agents require (set by the backend)."
}

variable "agent_tls_cert" {
  type        = string
  sensitive   = true
  description = "PEM certificate the agents serve (set by the backend, which pins it)."
}

variable "agent_tls_key" {
  type        = string
  sensitive   = true
  description = "PEM private key of agent_tls_cert (set by the backend)."
}

variable "agent_port" {
  type        = number
  description = "First agent port when agent_ports is empty (set by the backend)."
}

variable "agent_ports" {
  type        = list(number)
  default     = []
  description = "One free loopback port per machine (set by the backend)."
}

variable "agent_binary" {
  type        = string
  description = "Path of the nim-agent binary to run (set by the backend from NIM_AGENT_BINARY)."
}

variable "name_prefix" {
  type        = string
  default     = "local"
  description = "Machines are named <name_prefix>-0, <name_prefix>-1, ..."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,30}$", var.name_prefix))
    error_message = "name_prefix must be 1-31 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "boot_delay_seconds" {
  type        = number
  default     = 0
  description = "Seconds each machine waits before starting its agent, to imitate a slow cloud boot."

  validation {
    condition     = var.boot_delay_seconds >= 0 && var.boot_delay_seconds <= 600
    error_message = "boot_delay_seconds must be between 0 and 600."
  }
}
