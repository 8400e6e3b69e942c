# The module contract (filled by the backend) first, then what a user may choose.

variable "deployment_id" {
  type        = string
  description = "The deployment this module belongs to (set by the backend)."
}

variable "machine_count" {
  type        = number
  default     = 1
  description = "How many local machines (sandboxes) to run."
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
  description = "TCP port each machine's agent listens on, on its own address (set by the backend)."
}

variable "agent_download_url" {
  type        = string
  description = "Where machines download nim-agent: the backend's machine-facing address (set by the backend)."
}

variable "agent_sha256" {
  type        = string
  description = "SHA-256 of the agent binary; machines refuse any other file (set by the backend)."
}

variable "machine_network" {
  type        = string
  description = "The deployment's own /26 of NIM_LOCAL_NETWORK; .1 is the host's end, machines get .2, .3, ... (set by the backend)."
}

variable "machine_uid_base" {
  type        = number
  description = "Host uid of machine 0's root; machine i is this plus i (set by the backend)."
}

variable "machines_root" {
  type        = string
  description = "Host directory holding every local machine's disk, by deployment id and machine name (set by the backend from NIM_LOCAL_MACHINES_DIR)."
}

variable "memory_mb" {
  type        = number
  default     = 512
  description = "Memory each machine may use, in MiB (its processes are killed by the OOM killer beyond it)."

  validation {
    condition     = var.memory_mb >= 64 && var.memory_mb <= 8192 && floor(var.memory_mb) == var.memory_mb
    error_message = "memory_mb must be a whole number from 64 to 8192."
  }
}

variable "max_processes" {
  type        = number
  default     = 256
  description = "Processes (and threads) each machine may run at once."

  validation {
    condition     = var.max_processes >= 16 && var.max_processes <= 4096 && floor(var.max_processes) == var.max_processes
    error_message = "max_processes must be a whole number from 16 to 4096."
  }
}

variable "max_open_files" {
  type        = number
  default     = 1024
  description = "Open files each process of a machine may have."

  validation {
    condition     = var.max_open_files >= 64 && var.max_open_files <= 65536 && floor(var.max_open_files) == var.max_open_files
    error_message = "max_open_files must be a whole number from 64 to 65536."
  }
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
