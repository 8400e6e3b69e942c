terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.55"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.1"
    }
  }
}

# Credentials come from the environment the backend runs in (ARM_CLIENT_ID + ARM_CLIENT_SECRET
# or ARM_USE_OIDC / ARM_USE_MSI, ARM_TENANT_ID, ARM_SUBSCRIPTION_ID, or an `az login` session);
# see docs/clouds.md. Nothing is stored.
provider "azurerm" {
  subscription_id = var.subscription_id

  features {
    resource_group {
      # The group holds only this deployment's resources; destroy removes it whole.
      prevent_deletion_if_contains_resources = false
    }
  }
}
