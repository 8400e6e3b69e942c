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
  description = "How many virtual machines to run."

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

variable "subscription_id" {
  type        = string
  default     = null
  description = "Azure subscription id. Default: ARM_SUBSCRIPTION_ID from the backend's environment (azurerm 4 requires one or the other)."

  validation {
    condition     = var.subscription_id == null || can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.subscription_id))
    error_message = "subscription_id must be a GUID."
  }
}

variable "location" {
  type        = string
  default     = "eastus"
  nullable    = false
  description = "Azure region (location), e.g. eastus, westeurope."

  validation {
    condition     = can(regex("^[a-z][a-z0-9]+$", var.location))
    error_message = "location must be an Azure region name such as eastus or westeurope (lowercase, no spaces)."
  }
}

variable "zone" {
  type        = string
  default     = null
  description = "Availability zone (\"1\", \"2\" or \"3\"). Default: none (regional placement)."

  validation {
    condition     = var.zone == null || contains(["1", "2", "3"], coalesce(var.zone, "x"))
    error_message = "zone must be \"1\", \"2\" or \"3\"."
  }
}

variable "vm_size" {
  type        = string
  default     = "Standard_B2s"
  nullable    = false
  description = "VM size (x86_64). For GPUs pick a GPU size, e.g. Standard_NC4as_T4_v3 (T4), Standard_NC24ads_A100_v4 (A100) or Standard_NV36ads_A10_v5 (A10); check your GPU quota first."

  validation {
    condition     = can(regex("^(Standard|Basic)_[A-Za-z0-9_-]+$", var.vm_size))
    error_message = "vm_size must look like Standard_B2s or Standard_NC4as_T4_v3."
  }
}

variable "image" {
  type = object({
    publisher = string
    offer     = string
    sku       = string
    version   = string
  })
  default = {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
    version   = "latest"
  }
  nullable    = false
  description = "Marketplace image to boot (x86_64, with cloud-init). Default: Canonical Ubuntu 24.04 LTS, latest build."
}

variable "os_disk_type" {
  type        = string
  default     = "StandardSSD_LRS"
  nullable    = false
  description = "OS disk storage type: Standard_LRS, StandardSSD_LRS or Premium_LRS (Premium needs a size that supports it)."

  validation {
    condition     = contains(["Standard_LRS", "StandardSSD_LRS", "Premium_LRS", "StandardSSD_ZRS", "Premium_ZRS"], var.os_disk_type)
    error_message = "os_disk_type must be one of Standard_LRS, StandardSSD_LRS, Premium_LRS, StandardSSD_ZRS, Premium_ZRS."
  }
}

variable "disk_size_gb" {
  type        = number
  default     = 30
  nullable    = false
  description = "OS disk size in GiB."

  validation {
    condition     = var.disk_size_gb >= 30 && var.disk_size_gb <= 4095 && floor(var.disk_size_gb) == var.disk_size_gb
    error_message = "disk_size_gb must be a whole number from 30 to 4095."
  }
}

variable "ssh_public_key" {
  type        = string
  default     = null
  description = "OpenSSH public key for the `ubuntu` user. Default: none (a throwaway key is generated and discarded; SSH stays unusable)."

  validation {
    condition     = var.ssh_public_key == null || can(regex("^ssh-(rsa|ed25519) [A-Za-z0-9+/=]+( .*)?$", var.ssh_public_key))
    error_message = "ssh_public_key must be one OpenSSH public key line (ssh-rsa or ssh-ed25519)."
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

variable "vnet_cidr" {
  type        = string
  default     = "10.42.0.0/16"
  nullable    = false
  description = "Address range of the virtual network this module creates; the machines' subnet is its first /24."

  validation {
    condition     = can(cidrnetmask(var.vnet_cidr)) && try(tonumber(split("/", var.vnet_cidr)[1]) <= 24, false)
    error_message = "vnet_cidr must be an IPv4 CIDR of /24 or larger, e.g. 10.42.0.0/16."
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
  description = "Extra tags for every resource (Azure tag names may not contain < > % & \\ ? /) (the module always adds nim-deployment-id and nim-managed-by)."
}

variable "agent_no_new_privileges" {
  type        = bool
  default     = false
  nullable    = false
  description = "Run the agent with NoNewPrivileges=yes. Safer, but commands lose setuid (sudo from a dropped user) and snaps; see docs/clouds.md."
}
