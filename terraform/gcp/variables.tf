# The module contract (filled by the backend) first, then what a user may choose.

variable "deployment_id" {
  type        = string
  description = "The deployment this module belongs to (set by the backend); names and tags every resource."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,39}$", var.deployment_id))
    error_message = "deployment_id must be 1-40 lowercase letters, digits or hyphens."
  }
}

variable "machine_count" {
  type        = number
  default     = 1
  nullable    = false
  description = "How many Compute Engine instances to run."

  validation {
    condition     = var.machine_count >= 1 && var.machine_count <= 100 && floor(var.machine_count) == var.machine_count
    error_message = "machine_count must be a whole number from 1 to 100."
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
  description = "TCP port the agents listen on (set by the backend)."

  validation {
    condition     = var.agent_port >= 1 && var.agent_port <= 65535 && floor(var.agent_port) == var.agent_port
    error_message = "agent_port must be a whole number from 1 to 65535."
  }
}

variable "agent_download_url" {
  type        = string
  description = "URL the machines download nim-agent from (set by the backend from NIM_PUBLIC_URL)."
}

variable "agent_sha256" {
  type        = string
  description = "SHA-256 of that agent binary (set by the backend); machines refuse any other file."
}

variable "project_id" {
  type        = string
  default     = null
  description = "GCP project id. Default: the provider's own (GOOGLE_PROJECT / GOOGLE_CLOUD_PROJECT in the backend's environment)."

  validation {
    condition     = var.project_id == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project id (6-30 lowercase letters, digits or hyphens)."
  }
}

variable "region" {
  type        = string
  default     = "us-central1"
  nullable    = false
  description = "GCP region, e.g. us-central1, europe-west4."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a GCP region such as us-central1."
  }
}

variable "zone" {
  type        = string
  default     = null
  description = "Zone in region. Default: <region>-a (GPUs are not offered in every zone: check `gcloud compute accelerator-types list`)."

  validation {
    condition     = var.zone == null || can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.zone))
    error_message = "zone must be a GCP zone such as us-central1-a."
  }
}

variable "machine_type" {
  type        = string
  default     = "e2-small"
  nullable    = false
  description = "Machine type (x86_64). GPUs: an N1 type with gpu_type/gpu_count (e.g. n1-standard-4 + nvidia-tesla-t4), or an accelerator-optimized type with GPUs built in (a2-highgpu-1g, a3-highgpu-8g, g2-standard-4)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]+$", var.machine_type))
    error_message = "machine_type must look like e2-small or n1-standard-4."
  }
}

variable "image" {
  type        = string
  default     = null
  description = "Boot image (self link or projects/<p>/global/images/<name>). Default: the newest Ubuntu 24.04 LTS (family ubuntu-2404-lts-amd64)."
}

variable "disk_type" {
  type        = string
  default     = "pd-balanced"
  nullable    = false
  description = "Boot disk type: pd-standard, pd-balanced, pd-ssd (or hyperdisk-balanced on types that need it)."

  validation {
    condition     = contains(["pd-standard", "pd-balanced", "pd-ssd", "hyperdisk-balanced"], var.disk_type)
    error_message = "disk_type must be one of pd-standard, pd-balanced, pd-ssd, hyperdisk-balanced."
  }
}

variable "gpu_type" {
  type        = string
  default     = "nvidia-tesla-t4"
  nullable    = false
  description = "Accelerator type attached when gpu_count > 0 (N1 machine types), e.g. nvidia-tesla-t4, nvidia-l4, nvidia-tesla-v100."

  validation {
    condition     = can(regex("^nvidia-[a-z0-9-]+$", var.gpu_type))
    error_message = "gpu_type must be an accelerator type such as nvidia-tesla-t4."
  }
}

variable "gpu_count" {
  type        = number
  default     = 0
  nullable    = false
  description = "GPUs of gpu_type per machine (0, 1, 2, 4 or 8). Machines with GPUs stop for host maintenance (on_host_maintenance = TERMINATE)."

  validation {
    condition     = contains([0, 1, 2, 4, 8], var.gpu_count)
    error_message = "gpu_count must be 0, 1, 2, 4 or 8."
  }
}

variable "spot" {
  type        = bool
  default     = false
  nullable    = false
  description = "Use Spot VMs (much cheaper; Google may stop them at any time)."
}

variable "disk_size_gb" {
  type        = number
  default     = 30
  nullable    = false
  description = "Boot disk size in GiB."

  validation {
    condition     = var.disk_size_gb >= 10 && var.disk_size_gb <= 65536 && floor(var.disk_size_gb) == var.disk_size_gb
    error_message = "disk_size_gb must be a whole number from 10 to 65536."
  }
}

variable "ssh_public_key" {
  type        = string
  default     = null
  description = "OpenSSH public key for the `ubuntu` user. Default: none (SSH stays unusable)."

  validation {
    condition     = var.ssh_public_key == null || can(regex("^(ssh-(rsa|ed25519)|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+( .*)?$", var.ssh_public_key))
    error_message = "ssh_public_key must be one OpenSSH public key line (ssh-ed25519, ssh-rsa or ecdsa-sha2-*)."
  }
}

variable "allowed_cidrs" {
  type        = list(string)
  nullable    = false
  description = "IPv4 CIDRs allowed to reach the agent port: the backend's egress address(es), e.g. [\"203.0.113.7/32\"]. The agent needs the deployment's token and pinned certificate, but keep this narrow."

  validation {
    condition     = length(var.allowed_cidrs) >= 1 && alltrue([for c in var.allowed_cidrs : can(cidrnetmask(c))])
    error_message = "allowed_cidrs must hold at least one IPv4 CIDR such as 203.0.113.7/32."
  }
}

variable "ssh_allowed_cidrs" {
  type        = list(string)
  default     = []
  nullable    = false
  description = "IPv4 CIDRs allowed to reach port 22. Default: none (SSH closed)."

  validation {
    condition     = alltrue([for c in var.ssh_allowed_cidrs : can(cidrnetmask(c))])
    error_message = "ssh_allowed_cidrs must hold IPv4 CIDRs such as 198.51.100.0/24."
  }
}

variable "subnet_cidr" {
  type        = string
  default     = "10.42.0.0/24"
  nullable    = false
  description = "Address range of the machines' subnet in the network this module creates."

  validation {
    condition     = can(cidrnetmask(var.subnet_cidr)) && try(tonumber(split("/", var.subnet_cidr)[1]) <= 24, false)
    error_message = "subnet_cidr must be an IPv4 CIDR of /24 or larger, e.g. 10.42.0.0/24."
  }
}

variable "name_prefix" {
  type        = string
  default     = "nim"
  nullable    = false
  description = "Resources are named <name_prefix>-<deployment_id>[-<n>]."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.name_prefix))
    error_message = "name_prefix must be 1-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "labels" {
  type        = map(string)
  default     = {}
  nullable    = false
  description = "Extra labels for every resource that takes labels (lowercase keys and values; the module always adds nim-deployment-id and nim-managed-by)."

  validation {
    condition     = alltrue([for k, v in var.labels : can(regex("^[a-z][a-z0-9_-]{0,62}$", k)) && can(regex("^[a-z0-9_-]{0,63}$", v))])
    error_message = "labels must have lowercase keys (starting with a letter) and values of letters, digits, _ and -, at most 63 characters."
  }
}

variable "agent_no_new_privileges" {
  type        = bool
  default     = false
  nullable    = false
  description = "Run the agent with NoNewPrivileges=yes. Safer, but commands lose setuid (sudo from a dropped user) and snaps; see docs/clouds.md."
}
