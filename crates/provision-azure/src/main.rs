//! `provision-azure`: the balena provisioning function as an Azure Functions custom handler
//! (Azure IoT Hub). The Functions host forwards each HTTP request as it came
//! (`enableForwardingHttpRequest`) to this server on `FUNCTIONS_CUSTOMHANDLER_PORT`.

use std::sync::Arc;

const HELP: &str = "provision-azure: the balena provisioning function for Azure Functions (custom handler)

Registers balena devices with Azure IoT Hub and stores their certificates as balenaCloud
variables. The Functions host starts it and forwards /api/provision to it; run by hand for
local tests with FUNCTIONS_CUSTOMHANDLER_PORT set.

Environment:
  BALENA_API_KEY                  the function's own balenaCloud API key (required)
  BALENA_API_URL                  default https://api.balena-cloud.com
  CONNECTION_STRING               IoT Hub connection string of a shared access policy with registry write (required)
  AZURE_IOTHUB_ENDPOINT           base URL override (emulators); tokens stay signed for the HostName
  FUNCTIONS_CUSTOMHANDLER_PORT    port to listen on, on 127.0.0.1 (default 8080)
  PROVISION_OPERATOR_TOKEN        optional operator bearer token (16+ characters)
  PROVISION_ALLOW_UNAUTHENTICATED 'true': callers without credentials may get a device provisioned (no csr, rotate or DELETE)
  PROVISION_ACCEPT_USER_KEYS      'true': a user's or fleet's key that sees the device may act on it
  PROVISION_REQUEST_BUDGET_MS     time budget of one request (default 25000)
  PROVISION_KEY_TYPE              ec-p256 (default) or rsa-2048
  RUST_LOG                        log filter (default info; with --check, warn, on stderr)";

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
            eprintln!("provision-azure: {e}");
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
    let Configured {
        settings,
        registry,
        port,
        limits,
    } = match configure() {
        Ok(configured) => configured,
        Err(e) => {
            eprintln!("provision-azure: {e}");
            std::process::exit(2);
        }
    };
    let service = provision_core::build(&settings, Arc::new(registry));
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("provision-azure: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(port, cloud = service.cloud(), "listening");
    // The Functions host stops a worker with SIGTERM; requests in flight get their budget.
    let grace = limits.request_timeout;
    let shutdown = provision_core::server::shutdown_signal();
    if let Err(e) =
        provision_core::server::serve(listener, Arc::new(service), limits, shutdown, grace).await
    {
        eprintln!("provision-azure: server failed: {e}");
        std::process::exit(1);
    }
}

/// What the handler runs with, read and checked from the environment.
struct Configured {
    settings: provision_core::Settings,
    registry: provision_core::registry::azure::IotHubRegistry,
    port: u16,
    limits: provision_core::server::Limits,
}

fn configure() -> Result<Configured, provision_core::ConfigError> {
    let settings = provision_core::Settings::from_env()?;
    let registry = provision_core::azure_registry_from_env()?;
    let port = match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        None => 8080,
        Some(v) => v.parse::<u16>().map_err(|_| {
            provision_core::ConfigError::new(
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                "must be a port number",
            )
        })?,
    };
    let limits = provision_core::server::Limits::for_budget(settings.request_budget);
    Ok(Configured {
        settings,
        registry,
        port,
        limits,
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
    match configure() {
        Ok(configured) => i32::from(
            !provision_core::check::run_and_print(
                &configured.settings,
                &configured.registry,
                request,
            )
            .await,
        ),
        Err(e) => {
            eprintln!("provision-azure: {e}");
            1
        }
    }
}
