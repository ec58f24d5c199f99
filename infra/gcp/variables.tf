# Inputs of the one-time GCP setup (infra/gcp). None of them is a secret: the secret values
# (balena API key, ClearBlade service account, operator token) are added to Secret Manager out
# of band and never pass through Terraform (deploy/gcp/README.md).

variable "project_id" {
  description = "GCP project that runs the service (Cloud Run, Secret Manager, Artifact Registry)."
  type        = string
}

variable "region" {
  description = "Region of the Cloud Run service and the Artifact Registry repository."
  type        = string
  default     = "us-central1"
}

variable "service_name" {
  description = "Cloud Run service name (deploy/gcp/deploy.sh --service)."
  type        = string
  default     = "balena-provision"
}

variable "service_account_id" {
  description = "account_id of the service's runtime service account (<id>@<project>.iam.gserviceaccount.com)."
  type        = string
  default     = "balena-provision-run"
}

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository for the provision-cloudrun image."
  type        = string
  default     = "balena-provision"
}

variable "image" {
  description = <<-EOT
    Container image of the first revision, e.g.
    us-central1-docker.pkg.dev/PROJECT/balena-provision/provision-cloudrun:TAG. Empty (the
    default): the Cloud Run service is not created yet; a revision cannot start before the
    secrets have a version and the image exists. Later releases are rolled out with
    deploy/gcp/deploy.sh; Terraform ignores image changes so that an apply never rolls one back.
  EOT
  type        = string
  default     = ""
}

variable "clearblade_project_id" {
  description = "GCP_PROJECT_ID: project of the ClearBlade IoT Core registry. Empty: project_id."
  type        = string
  default     = ""
}

variable "clearblade_region" {
  description = "GCP_REGION: region of the ClearBlade IoT Core registry (us-central1, europe-west1, asia-east1). Empty: region."
  type        = string
  default     = ""
}

variable "clearblade_registry_id" {
  description = "CB_REGISTRY_ID: the ClearBlade IoT Core registry the devices are created in."
  type        = string
}

variable "balena_api_url" {
  description = "BALENA_API_URL (openBalena has its own)."
  type        = string
  default     = "https://api.balena-cloud.com"
}

variable "operator_token_enabled" {
  description = "Create the provision-operator-token secret and pass it as PROVISION_OPERATOR_TOKEN. Add a version before the service is created."
  type        = bool
  default     = true
}

variable "allow_unauthenticated_callers" {
  description = "PROVISION_ALLOW_UNAUTHENTICATED: true accepts callers without any credential (the published functions' behaviour). Keep false."
  type        = bool
  default     = false
}

variable "public_invoker" {
  description = <<-EOT
    Grant roles/run.invoker to allUsers. True (the default) is intended: devices call the
    service with their own balena API key, which the function checks against balenaCloud; they
    have no Google identity to present. False puts Cloud Run IAM in front (callers then need a
    Google ID token as well), which only operator-side callers can do.
  EOT
  type        = bool
  default     = true
}

variable "request_budget_ms" {
  description = "PROVISION_REQUEST_BUDGET_MS: time budget of one request, upstream retries included."
  type        = number
  default     = 25000
}

variable "key_type" {
  description = "PROVISION_KEY_TYPE: ec-p256 or rsa-2048."
  type        = string
  default     = "ec-p256"

  validation {
    condition     = contains(["ec-p256", "rsa-2048"], var.key_type)
    error_message = "key_type must be ec-p256 or rsa-2048."
  }
}

variable "rust_log" {
  description = "RUST_LOG log filter."
  type        = string
  default     = "info"
}

variable "timeout_seconds" {
  description = "Cloud Run request timeout; above request_budget_ms so the function always answers first."
  type        = number
  default     = 60
}

# Limits at the edge: max_instances x concurrency is the most requests in flight at once. A
# flood of requests beyond it waits briefly in Cloud Run's queue and is then refused with 429,
# instead of using up the balenaCloud key's rate limit or the ClearBlade registry's quotas.
# Cloud Run has no request-rate throttling of its own. deploy/gcp/deploy.sh and
# deploy/gcp/service.yaml use the same defaults (scripts/lint-gcp checks they agree).

variable "concurrency" {
  description = "max_instance_request_concurrency: requests one instance serves at once. Default 40: the function is I/O bound (it mostly waits for balenaCloud and ClearBlade), and with max_instances 10 it caps requests in flight at 400."
  type        = number
  default     = 40

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000 (Cloud Run's limit)."
  }
}

variable "min_instances" {
  description = "Minimum instances (0: scale to zero; a cold start of the static binary is well under a second)."
  type        = number
  default     = 0
}

variable "max_instances" {
  description = "scaling.max_instance_count: the most instances Cloud Run starts. Default 10: caps cost and, with concurrency, the parallel calls on the balenaCloud key and the ClearBlade registry under a flood of requests; raise it only as far as those allow."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1
    error_message = "max_instances must be at least 1: the cap must exist."
  }
}

variable "cpu" {
  description = "CPU limit of an instance."
  type        = string
  default     = "1"
}

variable "memory" {
  description = "Memory limit of an instance."
  type        = string
  default     = "256Mi"
}

variable "deletion_protection" {
  description = "Refuse to destroy the Cloud Run service from Terraform."
  type        = bool
  default     = true
}

variable "deployers" {
  description = "Members (user:..., group:..., serviceAccount:...) that run deploy/gcp/deploy.sh: they get roles/iam.serviceAccountUser on the runtime service account only (deploying a revision that runs as it requires that)."
  type        = list(string)
  default     = []
}
