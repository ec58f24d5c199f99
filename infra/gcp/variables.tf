# Inputs of the one-time GCP setup (infra/gcp). None of them is a secret: the secret values
# (balena API key, ClearBlade service account, operator token) are added to Secret Manager out
# of band and never pass through Terraform (deploy/gcp/README.md). The Cloud Run service's own
# settings (scaling, timeout, environment) are in deploy/gcp/service.yaml and deploy/gcp/deploy.sh.

variable "project_id" {
  description = "GCP project that runs the service (Cloud Run, Secret Manager, Artifact Registry)."
  type        = string
}

variable "region" {
  description = "Region of the Artifact Registry repository (deploy/gcp/deploy.sh --region)."
  type        = string
  default     = "us-central1"
}

variable "service_account_id" {
  description = "account_id of the service's runtime service account (<id>@<project>.iam.gserviceaccount.com, deploy/gcp/deploy.sh --service-account)."
  type        = string
  default     = "balena-provision-run"
}

variable "artifact_repository_id" {
  description = "Artifact Registry Docker repository for the provision-cloudrun image (deploy/gcp/deploy.sh --repository)."
  type        = string
  default     = "balena-provision"
}

variable "operator_token_enabled" {
  description = "Create the provision-operator-token secret (deploy/gcp/service.yaml reads it as PROVISION_OPERATOR_TOKEN unless deploy.sh --no-operator-token). Add a version before the first deployment."
  type        = bool
  default     = true
}

variable "deployers" {
  description = "Members (user:..., group:..., serviceAccount:...) that run deploy/gcp/deploy.sh: they get roles/iam.serviceAccountUser on the runtime service account only (deploying a revision that runs as it requires that)."
  type        = list(string)
  default     = []
}
