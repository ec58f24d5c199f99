# One-time GCP setup for the provisioning function on Cloud Run (deploy/gcp/README.md):
# APIs, the service's own service account, its Secret Manager secrets (no values) and the
# Artifact Registry repository for the image. The Cloud Run service itself is described once, in
# deploy/gcp/service.yaml, and deployed from it by deploy/gcp/deploy.sh (gcloud run services
# replace); the secrets made here are the ones that file reads.

locals {
  services = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", # deploy/gcp/deploy.sh builds the image with Cloud Build
    "iam.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
  ])

  # Environment variable => Secret Manager secret id, as deploy/gcp/service.yaml reads them
  # (its env entries with valueFrom.secretKeyRef). The values are added out of band (`gcloud
  # secrets versions add`), never through Terraform: a value given to Terraform is written in
  # clear into its state.
  service = yamldecode(file("${path.module}/../../deploy/gcp/service.yaml"))
  all_secrets = {
    for env in local.service.spec.template.spec.containers[0].env :
    env.name => env.valueFrom.secretKeyRef.name if can(env.valueFrom.secretKeyRef.name)
  }
  secrets = {
    for name, id in local.all_secrets : name => id
    if name != "PROVISION_OPERATOR_TOKEN" || var.operator_token_enabled
  }
}

resource "google_project_service" "apis" {
  for_each = local.services

  service            = each.value
  disable_on_destroy = false
}

# The identity the service runs as. It has no project-level role at all: only
# secretAccessor on its own secrets, below. Cloud Run writes the container's stdout/stderr
# to Cloud Logging without a role, and pulls the image with its own service agent.
resource "google_service_account" "run" {
  account_id   = var.service_account_id
  display_name = "balena provisioning function (Cloud Run)"
  description  = "Runtime identity of the balena provisioning function: reads its own Secret Manager secrets, nothing else."

  depends_on = [google_project_service.apis]
}

resource "google_service_account_iam_member" "deployers" {
  for_each = toset(var.deployers)

  service_account_id = google_service_account.run.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

resource "google_secret_manager_secret" "secrets" {
  # Automatic replication with Google-managed encryption keys; a customer-managed key would
  # add a KMS key ring this setup does not otherwise need (user_managed replication with
  # customer_managed_encryption, if a policy requires it).
  for_each = local.secrets

  secret_id = each.value
  labels = {
    app = "balena-provision"
  }

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Least privilege: the runtime service account reads exactly these secrets, one binding per
# secret (no project-wide secretAccessor).
resource "google_secret_manager_secret_iam_member" "run_reads" {
  for_each = local.secrets

  secret_id = google_secret_manager_secret.secrets[each.key].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.run.email}"
}

resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption keys: the repository holds the function's public build output only, no data or secrets.
  repository_id = var.artifact_repository_id
  location      = var.region
  format        = "DOCKER"
  description   = "provision-cloudrun images (deploy/gcp/deploy.sh)"

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s" # 30 days; the 10 most recent versions are kept regardless
    }
  }

  depends_on = [google_project_service.apis]
}
