terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # Pinned exactly: a provider upgrade is a reviewed change. `terraform init` writes
      # .terraform.lock.hcl with the checksums of this version; commit it with the first init
      # (it cannot be made in CI here: no access to registry.terraform.io).
      version = "6.50.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
