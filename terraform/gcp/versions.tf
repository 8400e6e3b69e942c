terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.50"
    }
  }
}

# Credentials come from the environment the backend runs in (GOOGLE_APPLICATION_CREDENTIALS,
# `gcloud auth application-default login`, or the workload identity of the backend's own VM or
# pod); see docs/clouds.md. Nothing is stored.
provider "google" {
  project        = var.project_id
  region         = var.region
  zone           = local.zone
  default_labels = local.labels
}
