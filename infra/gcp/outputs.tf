output "service_account_email" {
  description = "Runtime service account of the service (deploy/gcp/deploy.sh --service-account)."
  value       = google_service_account.run.email
}

output "image_repository" {
  description = "Where to push the image: <this>/provision-cloudrun:<tag>."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${google_artifact_registry_repository.images.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "secret_ids" {
  description = "Environment variable => Secret Manager secret id; add a version to each before the first deployment."
  value       = { for name, secret in google_secret_manager_secret.secrets : name => secret.secret_id }
}
