//! `provision-cloudrun`: the balena provisioning function as an HTTP server for Google Cloud
//! Run, serving ClearBlade IoT Core (the Cloud IoT Core successor) by default, or AWS IoT Core
//! or Azure IoT Hub when `PROVISION_CLOUD` says so: one container an operator can also run on
//! their own machines or Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use provision_core::ConfigError;
use provision_core::server::Limits;

const HELP: &str = "provision-cloudrun: the balena provisioning function as an HTTP server (Cloud Run)

Registers balena devices with an IoT registry and stores their credentials as balenaCloud
variables. Serves POST/GET/DELETE on / and /provision, and GET /healthz.

Environment:
  PORT                            port to listen on, on all interfaces (default 8080; Cloud Run sets it)
  PROVISION_CLOUD                 gcp (default: ClearBlade IoT Core), aws or azure
  BALENA_API_KEY                  the function's own balenaCloud API key (required)
  BALENA_API_URL                  default https://api.balena-cloud.com
  PROVISION_OPERATOR_TOKEN        optional operator bearer token (16+ characters)
  PROVISION_ALLOW_UNAUTHENTICATED 'true': callers without credentials may get a device provisioned (no csr, rotate or DELETE)
  PROVISION_ACCEPT_USER_KEYS      'true': a user's or fleet's key that sees the device may act on it
  PROVISION_REQUEST_BUDGET_MS     time budget of one request (default 25000)
  PROVISION_KEY_TYPE              ec-p256 (default) or rsa-2048
  PROVISION_SHUTDOWN_GRACE_MS     how long requests in flight may finish after SIGTERM (default 9000)
  RUST_LOG                        log filter (default info; with --check, warn, on stderr)
 gcp:
  GCP_PROJECT_ID, GCP_REGION, CB_REGISTRY_ID   where the ClearBlade registry is (required)
  CB_SERVICE_ACCOUNT              base64 of the ClearBlade service-account JSON (required)
 aws:
  AWS_REGION, AWS_IOT_POLICY, and the standard AWS environment (AWS_ENDPOINT_URL for emulators)
 azure:
  CONNECTION_STRING               IoT Hub policy connection string with registry write (required)
  AZURE_IOTHUB_ENDPOINT           base URL override (emulators)";

#[tokio::main]
async fn main() {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{HELP}\n\n{}", provision_core::check::HELP);
        return;
    }
    match provision_core::check::CheckRequest::from_args(std::env::args().skip(1)) {
        Ok(None) => {}
        Ok(Some(request)) => std::process::exit(check(&request).await),
        Err(e) => {
            eprintln!("provision-cloudrun: {e}");
            std::process::exit(2);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let configured = match configure().await {
        Ok(configured) => configured,
        Err(e) => {
            eprintln!("provision-cloudrun: {e}");
            std::process::exit(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", configured.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "provision-cloudrun: cannot listen on port {}: {e}",
                configured.port
            );
            std::process::exit(2);
        }
    };
    let service = Arc::new(provision_core::build(
        &configured.settings,
        configured.registry,
    ));
    tracing::info!(port = configured.port, cloud = service.cloud(), "listening");
    let shutdown = provision_core::server::shutdown_signal();
    if let Err(e) = provision_core::server::serve(
        listener,
        service,
        configured.limits,
        shutdown,
        configured.grace,
    )
    .await
    {
        eprintln!("provision-cloudrun: server failed: {e}");
        std::process::exit(1);
    }
    tracing::info!("stopped");
}

/// What the server runs with, read and checked from the environment.
struct Configured {
    settings: provision_core::Settings,
    registry: Arc<dyn provision_core::registry::Registry>,
    port: u16,
    limits: Limits,
    grace: Duration,
}

async fn configure() -> Result<Configured, ConfigError> {
    let settings = provision_core::Settings::from_env()?;
    let port = number_setting("PORT", 8080, 1, u16::MAX as u64)? as u16;
    let grace = Duration::from_millis(number_setting(
        "PROVISION_SHUTDOWN_GRACE_MS",
        9_000,
        0,
        3_600_000,
    )?);
    let cloud = std::env::var("PROVISION_CLOUD")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "gcp".into());
    let registry: Arc<dyn provision_core::registry::Registry> = match cloud.trim() {
        #[cfg(feature = "gcp")]
        "gcp" => Arc::new(provision_core::clearblade_registry_from_env()?),
        #[cfg(feature = "aws")]
        "aws" => Arc::new(provision_core::aws_registry_from_env().await?),
        #[cfg(feature = "azure")]
        "azure" => Arc::new(provision_core::azure_registry_from_env()?),
        other => {
            let built: Vec<&str> = [
                cfg!(feature = "gcp").then_some("gcp"),
                cfg!(feature = "aws").then_some("aws"),
                cfg!(feature = "azure").then_some("azure"),
            ]
            .into_iter()
            .flatten()
            .collect();
            return Err(ConfigError::new(
                "PROVISION_CLOUD",
                format!("is '{other}': this build serves {}", built.join(", ")),
            ));
        }
    };
    Ok(Configured {
        limits: Limits::for_budget(settings.request_budget),
        settings,
        registry,
        port,
        grace,
    })
}

/// `--check`: the configuration loaded as at start-up, then the read-only checks. Gives the
/// exit code: 0 when every check passed.
async fn check(request: &provision_core::check::CheckRequest) -> i32 {
    // Logs (warnings unless RUST_LOG says otherwise) go to stderr, apart from the check's lines.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    match configure().await {
        Ok(configured) => i32::from(
            !provision_core::check::run_and_print(
                &configured.settings,
                configured.registry.as_ref(),
                request,
            )
            .await,
        ),
        Err(e) => {
            eprintln!("provision-cloudrun: {e}");
            1
        }
    }
}

fn number_setting(
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}"),
            )),
        },
    }
}
