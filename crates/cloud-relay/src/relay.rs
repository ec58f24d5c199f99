//! The relay as a whole: the queue, the local broker side always, and on the cloud side either
//! the connection (the variables hold credentials) or provisioning (they do not yet).

use anyhow::Context as _;

use crate::kept_key::KeptKey;
use crate::link::{self, Credentials};
use crate::provisioning::{self, FunctionClient, Pacing, Request};
use crate::queue::Queue;
use crate::settings::{Env, Settings};
use crate::{local, uplink};

/// Runs until SIGTERM or SIGINT (the supervisor stops and restarts the service when its
/// variables change). Errors only on what a restart cannot mend (an unwritable data directory).
pub async fn run(settings: Settings, env: &(impl Env + ?Sized)) -> anyhow::Result<()> {
    let queue = Queue::open(&settings.data_dir, settings.queue_max_bytes)?;
    let stats = queue.stats();
    tracing::info!(
        "queue: {} message(s) waiting ({} bytes of {}), {} dropped so far, in {}",
        stats.messages,
        stats.bytes,
        settings.queue_max_bytes,
        stats.dropped,
        settings.data_dir.display()
    );
    let kept = if settings.keep_key {
        Some(KeptKey::load_or_create(&settings.data_dir)?)
    } else {
        None
    };
    let credentials = link::read(&settings, env, kept.as_ref())?;
    let trusted_ca_pem = trusted_ca(&settings)?;
    let cloud = async {
        match credentials {
            Credentials::Complete(link) => {
                tracing::info!("cloud: credentials found; relaying to {link}");
                uplink::run(&link, trusted_ca_pem.as_deref(), queue.clone()).await;
                Ok(())
            }
            Credentials::Missing { absent } => {
                tracing::info!(
                    "cloud: not provisioned yet ({} not set); messages are queued meanwhile",
                    absent.join(", ")
                );
                provision(&settings, kept.as_ref(), false).await
            }
            Credentials::KeyMismatch => {
                tracing::warn!(
                    "cloud: the certificate in the variables is not for the kept key; asking \
                     for a certificate of the kept key"
                );
                provision(&settings, kept.as_ref(), true).await
            }
        }
    };
    tokio::select! {
        () = local::run(&settings, queue.clone()) => {}
        result = cloud => result?,
        () = shutdown() => tracing::info!("stopping: every message acknowledged locally is on disk"),
    }
    Ok(())
}

/// The CA the cloud connection trusts instead of the public roots: `CLOUD_CA_CERT`, else (AWS,
/// as the Node block) the file at `AWS_ROOT_CA_PATH`.
fn trusted_ca(settings: &Settings) -> anyhow::Result<Option<String>> {
    if let Some(pem) = &settings.cloud_ca_pem {
        return Ok(Some(pem.clone()));
    }
    match (&settings.aws_root_ca_path, settings.cloud) {
        (Some(path), crate::settings::Cloud::Aws) => std::fs::read_to_string(path)
            .map(Some)
            .with_context(|| format!("AWS_ROOT_CA_PATH: reading {}", path.display())),
        _ => Ok(None),
    }
}

async fn provision(
    settings: &Settings,
    kept: Option<&KeptKey>,
    rotate: bool,
) -> anyhow::Result<()> {
    let Some(url) = settings.provision_url.clone() else {
        tracing::error!(
            "provisioning: PROVISION_URL is not set, so the device cannot ask for credentials; \
             set it (a fleet variable) and the supervisor restarts this service"
        );
        std::future::pending::<()>().await;
        return Ok(());
    };
    if settings.api_key.is_none() {
        tracing::warn!(
            "provisioning: no BALENA_API_KEY (label io.balena.features.balena-api missing); \
             the function refuses a caller that does not prove it is the device"
        );
    }
    let http = crate::provisioning::http_client()?;
    let request = Request {
        csr: kept.map(|k| k.csr_pem(&settings.device_uuid)).transpose()?,
        rotate,
    };
    let function = FunctionClient::new(http.clone(), settings, url);
    provisioning::run(settings, &function, &http, request, Pacing::default()).await;
    Ok(())
}

async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
