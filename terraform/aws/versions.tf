terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.25"
    }
  }
}

# Credentials come from the environment the backend runs in (AWS_PROFILE, AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY, an instance profile, IRSA...); see docs/clouds.md. Nothing is stored.
provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
