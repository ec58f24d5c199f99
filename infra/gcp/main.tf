# One-time GCP setup for the provisioning function on Cloud Run (deploy/gcp/README.md):
# APIs, the service's own service account, its Secret Manager secrets (no values), the
# Artifact Registry repository for the image, and, once `image` is set, the Cloud Run service
# with its public invoker binding.

locals {
  services = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com", # deploy/gcp/deploy.sh builds the image with Cloud Build
    "iam.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
  ])

  # Environment variable => Secret Manager secret id. The values are added out of band
  # (`gcloud secrets versions add`), never through Terraform: a value given to Terraform is
  # written in clear into its state. The right-hand sides are secret *names*, not values;
  # checkov's secrets scan reads `..._KEY = "..."` and `..._TOKEN = "..."` as secrets, hence the
  # skips (one comment covers the line below it).
  all_secrets = {
    #checkov:skip=CKV_SECRET_6:Not a secret: the Secret Manager secret id (name) of the balena API key; the value is added out of band.
    BALENA_API_KEY     = "balena-api-key"
    CB_SERVICE_ACCOUNT = "clearblade-service-account"
    #checkov:skip=CKV_SECRET_6:Not a secret: the Secret Manager secret id (name) of the operator token; the value is added out of band.
    PROVISION_OPERATOR_TOKEN = "provision-operator-token"
  }
  secrets = {
    for name, id in local.all_secrets : name => id
    if name != "PROVISION_OPERATOR_TOKEN" || var.operator_token_enabled
  }

  # Plain settings (nothing secret). PORT is set by Cloud Run itself.
  env = {
    PROVISION_CLOUD                 = "gcp"
    BALENA_API_URL                  = var.balena_api_url
    PROVISION_ALLOW_UNAUTHENTICATED = tostring(var.allow_unauthenticated_callers)
    PROVISION_REQUEST_BUDGET_MS     = tostring(var.request_budget_ms)
    PROVISION_KEY_TYPE              = var.key_type
    RUST_LOG                        = var.rust_log
    GCP_PROJECT_ID                  = var.clearblade_project_id != "" ? var.clearblade_project_id : var.project_id
    GCP_REGION                      = var.clearblade_region != "" ? var.clearblade_region : var.region
    CB_REGISTRY_ID                  = var.clearblade_registry_id
  }

  create_service = var.image != ""
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
  description  = "Runtime identity of ${var.service_name}: reads its own Secret Manager secrets, nothing else."

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

resource "google_cloud_run_v2_service" "provision" {
  count = local.create_service ? 1 : 0

  name                = var.service_name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL" # devices call it from anywhere on the internet
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.run.email
    timeout                          = "${var.timeout_seconds}s"
    max_instance_request_concurrency = var.concurrency

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image

      ports {
        name           = "http1"
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.cpu
          memory = var.memory
        }
        cpu_idle          = true # CPU only while serving requests (request-based billing)
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.secrets
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secrets[env.key].secret_id
              version = "latest"
            }
          }
        }
      }

      # GET /healthz answers 200 without touching any upstream.
      startup_probe {
        http_get {
          path = "/healthz"
          port = 8080
        }
        initial_delay_seconds = 0
        period_seconds        = 1
        timeout_seconds       = 1
        failure_threshold     = 10
      }

      liveness_probe {
        http_get {
          path = "/healthz"
          port = 8080
        }
        period_seconds    = 30
        timeout_seconds   = 2
        failure_threshold = 3
      }
    }
  }

  lifecycle {
    # Releases are rolled out by deploy/gcp/deploy.sh (gcloud run deploy) with the same
    # settings as here; Terraform must not roll the image back, nor fight over the client
    # fields gcloud sets.
    ignore_changes = [
      client,
      client_version,
      template[0].containers[0].image,
    ]
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.run_reads,
  ]
}

# Public invoker: intended. Devices authenticate to the function itself with their own balena
# API key (checked against balenaCloud) or the operator token; they have no Google identity to
# get an ID token with. Cloud Run IAM in front would turn every device request into a 403 before
# the function sees it. With public_invoker = false, only callers holding roles/run.invoker
# (and presenting a Google ID token besides their bearer token) can call it.
resource "google_cloud_run_v2_service_iam_member" "public" {
  count = local.create_service && var.public_invoker ? 1 : 0

  project  = google_cloud_run_v2_service.provision[0].project
  location = google_cloud_run_v2_service.provision[0].location
  name     = google_cloud_run_v2_service.provision[0].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
