# terraform/gcp: nim machines as Compute Engine instances in a VPC network of their own.
#
# Everything is created per deployment (network, subnet, firewall rules, instances), named
# <name_prefix>-<deployment_id> and labelled nim-deployment-id = <deployment_id> (firewall rules,
# which take no labels, carry the id in their name and description). Machines boot
# terraform/shared/bootstrap (as `user-data` metadata, which cloud-init on Ubuntu images runs),
# which installs and starts nim-agent; the agent port is reachable only from allowed_cidrs, SSH
# only from ssh_allowed_cidrs (none by default).

locals {
  name = "${var.name_prefix}-${var.deployment_id}"
  zone = coalesce(var.zone, "${var.region}-a")
  labels = merge(var.labels, {
    "nim-deployment-id" = var.deployment_id
    "nim-managed-by"    = "nim-backend"
  })
  # Accelerator-optimized families come with their GPUs attached; like machines with
  # guest_accelerator they cannot live-migrate.
  builtin_gpus = can(regex("^(a2|a3|a4|g2|g4)-", var.machine_type))
  has_gpus     = var.gpu_count > 0 || local.builtin_gpus
  network_tag  = local.name
}

# Canonical's Ubuntu 24.04 LTS, the newest image of the family.
data "google_compute_image" "ubuntu" {
  family  = "ubuntu-2404-lts-amd64"
  project = "ubuntu-os-cloud"
}

module "bootstrap" {
  source = "../shared/bootstrap"

  agent_download_url = var.agent_download_url
  agent_sha256       = var.agent_sha256
  agent_port         = var.agent_port
  agent_token        = var.agent_token
  agent_tls_cert     = var.agent_tls_cert
  agent_tls_key      = var.agent_tls_key
  no_new_privileges  = var.agent_no_new_privileges
}

resource "google_compute_network" "this" {
  name                    = local.name
  description             = "nim deployment ${var.deployment_id}"
  auto_create_subnetworks = false
}

resource "google_compute_subnetwork" "machines" {
  name          = local.name
  description   = "nim deployment ${var.deployment_id}"
  region        = var.region
  network       = google_compute_network.this.id
  ip_cidr_range = var.subnet_cidr
}

resource "google_compute_firewall" "agent" {
  name          = "${local.name}-agent"
  description   = "nim deployment ${var.deployment_id}: nim-agent from allowed_cidrs"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = var.allowed_cidrs
  target_tags   = [local.network_tag]

  allow {
    protocol = "tcp"
    ports    = [tostring(var.agent_port)]
  }
}

resource "google_compute_firewall" "ssh" {
  count = length(var.ssh_allowed_cidrs) > 0 ? 1 : 0

  name          = "${local.name}-ssh"
  description   = "nim deployment ${var.deployment_id}: SSH from ssh_allowed_cidrs"
  network       = google_compute_network.this.id
  direction     = "INGRESS"
  source_ranges = var.ssh_allowed_cidrs
  target_tags   = [local.network_tag]

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }
}

resource "google_compute_instance" "machine" {
  count = var.machine_count

  name         = "${local.name}-${count.index}"
  machine_type = var.machine_type
  zone         = local.zone
  tags         = [local.network_tag]
  labels       = local.labels

  allow_stopping_for_update = true

  boot_disk {
    auto_delete = true

    initialize_params {
      image  = coalesce(var.image, data.google_compute_image.ubuntu.self_link)
      size   = var.disk_size_gb
      type   = var.disk_type
      labels = local.labels
    }
  }

  network_interface {
    subnetwork = google_compute_subnetwork.machines.id

    # An ephemeral public address, so the backend can reach the agent.
    access_config {}
  }

  metadata = merge(
    {
      "user-data"              = module.bootstrap.user_data
      "block-project-ssh-keys" = "true"
    },
    var.ssh_public_key == null ? {} : { "ssh-keys" = "ubuntu:${var.ssh_public_key}" },
  )

  dynamic "guest_accelerator" {
    for_each = var.gpu_count > 0 ? [1] : []
    content {
      type  = var.gpu_type
      count = var.gpu_count
    }
  }

  scheduling {
    # GPUs cannot live-migrate: such machines stop for host maintenance and restart after it.
    on_host_maintenance = local.has_gpus || var.spot ? "TERMINATE" : "MIGRATE"
    automatic_restart   = !var.spot
    preemptible         = var.spot
    provisioning_model  = var.spot ? "SPOT" : "STANDARD"
    # A reclaimed Spot machine stops (keeping its disk) rather than vanishing from under Terraform.
    instance_termination_action = var.spot ? "STOP" : null
  }

  lifecycle {
    # User data only matters at first boot; a new agent build or re-apply must not touch running
    # machines (new machines get the current values), nor must a newer Ubuntu image.
    ignore_changes = [metadata["user-data"], boot_disk[0].initialize_params[0].image]

    precondition {
      condition     = !(var.gpu_count > 0 && local.builtin_gpus)
      error_message = "machine_type ${var.machine_type} has GPUs built in; leave gpu_count at 0."
    }

    precondition {
      condition     = var.gpu_count == 0 || can(regex("^n1-", var.machine_type))
      error_message = "gpu_type/gpu_count attach to N1 machine types only (e.g. n1-standard-4); ${var.machine_type} is not one."
    }
  }
}
