//! # provision-core
//!
//! Everything the balena provisioning functions decide, for every cloud: the HTTP contract
//! (`api`), who the caller is (`auth`), the balenaCloud client (`balena`), the cloud IoT
//! registries (`registry`), key pairs and certificates (`credentials`), and the provisioning
//! state machine (`flow`). Hosts (Lambda, Azure Functions, Cloud Run) build a [`Service`] once
//! with [`build`], from [`Settings`] and a registry of the table of clouds
//! ([`registry::clouds`]: each registry reads its own settings), and hand it each
//! `http::Request`.

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

pub use api::{RequestId, Service};
pub use config::{ConfigError, Settings};
pub use registry::{Cloud, Registry};
pub use upstream::http_client;

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
