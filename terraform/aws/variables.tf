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
  description = "How many EC2 instances to run."

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

variable "region" {
  type        = string
  default     = "us-east-1"
  nullable    = false
  description = "AWS region, e.g. us-east-1, eu-west-1."

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "availability_zone" {
  type        = string
  default     = null
  description = "Availability zone; default: the first zone of the region that offers instance_type."

  validation {
    condition     = var.availability_zone == null || can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+[a-z]$", var.availability_zone))
    error_message = "availability_zone must be a zone name such as us-east-1a."
  }
}

variable "instance_type" {
  type        = string
  default     = "t3.small"
  nullable    = false
  description = "EC2 instance type (x86_64). For GPUs pick a GPU type, e.g. g5.xlarge (NVIDIA A10G), g6.xlarge (L4) or p4d.24xlarge (A100)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like t3.small or g5.xlarge."
  }
}

variable "ami_id" {
  type        = string
  default     = null
  description = "AMI to boot (x86_64, with cloud-init). Default: the latest Canonical Ubuntu 24.04 LTS."

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must look like ami-0123456789abcdef0."
  }
}

variable "disk_size_gb" {
  type        = number
  default     = 30
  nullable    = false
  description = "Root volume size in GiB (gp3, encrypted)."

  validation {
    condition     = var.disk_size_gb >= 8 && var.disk_size_gb <= 16384 && floor(var.disk_size_gb) == var.disk_size_gb
    error_message = "disk_size_gb must be a whole number from 8 to 16384."
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

variable "vpc_cidr" {
  type        = string
  default     = "10.42.0.0/16"
  nullable    = false
  description = "Address range of the VPC this module creates; the machines' subnet is its first /24."

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && try(tonumber(split("/", var.vpc_cidr)[1]) <= 24, false)
    error_message = "vpc_cidr must be an IPv4 CIDR of /24 or larger, e.g. 10.42.0.0/16."
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

variable "tags" {
  type        = map(string)
  default     = {}
  nullable    = false
  description = "Extra tags for every resource (the module always adds nim-deployment-id and nim-managed-by)."
}

variable "agent_no_new_privileges" {
  type        = bool
  default     = false
  nullable    = false
  description = "Run the agent with NoNewPrivileges=yes. Safer, but commands lose setuid (sudo from a dropped user) and snaps; see docs/clouds.md."
}
