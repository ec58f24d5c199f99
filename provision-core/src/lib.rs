//! # provision-core
//!
//! Everything the balena provisioning functions decide, for every cloud: the HTTP contract
//! (`api`), who the caller is (`auth`), the balenaCloud client (`balena`), the cloud IoT
//! registries (`registry`), key pairs and certificates (`credentials`), and the provisioning
//! state machine (`flow`). Hosts (Lambda, Azure Functions, Cloud Run) build a [`Service`] once
//! with [`build`] and hand it each `http::Request`.

pub mod api;
pub mod auth;
pub mod balena;
pub mod check;
pub mod codec;
pub mod config;
pub mod credentials;
pub mod error;
pub mod flow;
pub mod ids;
pub mod registry;
pub mod rejected_keys;
pub mod retry;
pub mod secret;
#[cfg(feature = "server")]
pub mod server;
pub mod text;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

pub use api::{RequestId, Service};
pub use config::{ConfigError, Settings};
pub use registry::{Cloud, Registry};

/// One HTTP client for the whole process: connection pools and TLS set up once.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("balena-provision/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// Builds the service from settings and a registry.
pub fn build(settings: &Settings, registry: Arc<dyn Registry>) -> Service {
    let balena = balena::BalenaClient::new(
        http_client(),
        &settings.balena_api_url,
        settings.balena_api_key.clone(),
        retry::RetryPolicy::with_attempt_timeout(settings.upstream_timeout),
    );
    let provisioner = flow::Provisioner::new(balena, registry, settings.request_budget)
        .with_key_algorithm(settings.key_algorithm)
        .accepting_user_keys(settings.auth.accept_user_keys);
    Service::new(provisioner, settings.auth.clone())
}

/// The AWS IoT Core registry from the standard AWS environment and `AWS_IOT_POLICY`.
#[cfg(feature = "aws")]
pub async fn aws_registry_from_env() -> Result<registry::aws::AwsIotRegistry, ConfigError> {
    let policy = config::required(&|name| std::env::var(name).ok(), "AWS_IOT_POLICY")?;
    let attempt = config::upstream_timeout(&|name| std::env::var(name).ok())?;
    let sdk = registry::aws::AwsIotRegistry::sdk_config(attempt).await;
    if sdk.region().is_none() {
        return Err(ConfigError::new("AWS_REGION", "is required and not set"));
    }
    Ok(registry::aws::AwsIotRegistry::new(
        aws_sdk_iot::Client::new(&sdk),
        policy.expose().to_owned(),
    ))
}

/// The Azure IoT Hub registry from `CONNECTION_STRING` (a service policy's, never a device's)
/// and the optional `AZURE_IOTHUB_ENDPOINT` override.
#[cfg(feature = "azure")]
pub fn azure_registry_from_env() -> Result<registry::azure::IotHubRegistry, ConfigError> {
    let lookup = |name: &str| std::env::var(name).ok();
    let connection = config::required(&lookup, "CONNECTION_STRING")?;
    let connection = registry::azure::ConnectionString::parse(connection.expose())?;
    let endpoint = lookup("AZURE_IOTHUB_ENDPOINT").filter(|v| !v.trim().is_empty());
    if let Some(url) = &endpoint {
        config::url_setting("AZURE_IOTHUB_ENDPOINT", url)?;
    }
    let attempt = config::upstream_timeout(&lookup)?;
    // azure_core's pipeline has no per-try limit of its own: the transport's timeout is one.
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(attempt)
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("balena-provision/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            ConfigError::new(
                "PROVISION_UPSTREAM_TIMEOUT_MS",
                format!("cannot build the HTTP client: {e}"),
            )
        })?;
    registry::azure::IotHubRegistry::new(http, connection, endpoint.as_deref())
}

/// The ClearBlade IoT Core registry from `GCP_PROJECT_ID`, `GCP_REGION`, `CB_REGISTRY_ID` and
/// `CB_SERVICE_ACCOUNT` (base64 of the service-account JSON), as balena's published function.
#[cfg(feature = "gcp")]
pub fn clearblade_registry_from_env()
-> Result<registry::clearblade::ClearBladeRegistry, ConfigError> {
    use registry::clearblade::{ClearBladeRegistry, RegistryPath, ServiceAccount};
    let lookup = |name: &str| std::env::var(name).ok();
    let project = config::required(&lookup, "GCP_PROJECT_ID")?;
    let region = config::required(&lookup, "GCP_REGION")?;
    let registry = config::required(&lookup, "CB_REGISTRY_ID")?;
    let path = RegistryPath::new(project.expose(), region.expose(), registry.expose())?;
    let account =
        ServiceAccount::from_base64(config::required(&lookup, "CB_SERVICE_ACCOUNT")?.expose())?;
    let attempt = config::upstream_timeout(&lookup)?;
    Ok(ClearBladeRegistry::new(http_client(), account, path)
        .with_retry(retry::RetryPolicy::with_attempt_timeout(attempt)))
}
