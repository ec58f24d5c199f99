//! `cloud-relay iotedge-provisioning`: Azure IoT Edge's external provisioning endpoint, fed by
//! the variables the function stores. `iotedged` asks it for its identity
//! (`GET /device/provisioninginformation`) instead of holding a connection string; the answer
//! comes from `AZURE_HUB_HOST`, `AZURE_CERT` and `AZURE_PRIVATE_KEY` (or, with
//! `PROVISION_KEEP_KEY=true`, the key kept on the device and the certificate written beside
//! it). Until the variables are there it asks the function, with the device's key, as the relay
//! does, and answers 503 with `Retry-After`.

pub mod answer;
pub mod assignment;
pub mod server;

use crate::kept_key::KeptKey;
use crate::settings::{Cloud, ProcessEnv, Settings};

/// Runs the endpoint with the process environment until the process ends.
pub async fn run(
    settings: Settings,
    listen: server::Listen,
    socket_mode: u32,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        settings.cloud == Cloud::Azure,
        "iotedge-provisioning serves Azure IoT Edge: CLOUD_PROVIDER must be AZURE (or AZURE_HUB_HOST set)"
    );
    let kept = if settings.keep_key {
        Some(KeptKey::load_or_create(&settings.data_dir)?)
    } else {
        None
    };
    let http = crate::provisioning::http_client()?;
    let endpoint = server::Endpoint::new(settings, ProcessEnv, kept, http)?;
    server::serve(endpoint, &listen, socket_mode).await
}
