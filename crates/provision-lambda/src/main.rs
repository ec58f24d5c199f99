//! `provision-lambda`: the balena provisioning function for AWS Lambda (AWS IoT Core).
//!
//! Configuration comes from the environment (see the README); a missing or malformed setting
//! stops the function at start-up with one line naming the variable.

use std::sync::Arc;

use lambda_http::{Error, Request, service_fn};

fn help() -> ! {
    println!(
        "provision-lambda {}\n\n\
         The balena provisioning function for AWS Lambda: registers balena devices with AWS IoT Core\n\
         and stores their credentials as balenaCloud variables. It runs under the Lambda Runtime API\n\
         (AWS_LAMBDA_RUNTIME_API); by hand, run only its read-only --check (below).\n\n\
         Environment:\n\
         \x20 BALENA_API_KEY                  the function's own balenaCloud API key (required)\n\
         \x20 BALENA_API_URL                  default https://api.balena-cloud.com\n\
         \x20 AWS_IOT_POLICY                  IoT policy attached to every device certificate (required)\n\
         \x20 AWS_REGION, AWS_ENDPOINT_URL    the standard AWS SDK settings\n\
         \x20 PROVISION_OPERATOR_TOKEN        optional operator bearer token (16+ characters)\n\
         \x20 PROVISION_ALLOW_UNAUTHENTICATED 'true': callers without credentials may get a device provisioned (no csr, rotate or DELETE)\n\
         \x20 PROVISION_ACCEPT_USER_KEYS      'true': a user's or fleet's key that sees the device may act on it\n\
         \x20 PROVISION_REQUEST_BUDGET_MS     time budget of one request (default 25000)\n\
         \x20 RUST_LOG                        log filter (default info; with --check, warn, on stderr)\n\n\
         {}",
        env!("CARGO_PKG_VERSION"),
        provision_core::check::HELP
    );
    std::process::exit(0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        help();
    }
    match provision_core::check::CheckRequest::from_args(std::env::args().skip(1)) {
        Ok(None) => {}
        Ok(Some(request)) => std::process::exit(check(&request).await),
        Err(e) => {
            eprintln!("provision-lambda: {e}");
            std::process::exit(2);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .without_time()
        .init();

    let service = match configure().await {
        Ok(service) => service,
        Err(e) => {
            // One line naming the variable, and a non-zero exit: Lambda reports the function's
            // initialisation as failed and shows this line in its log.
            eprintln!("provision-lambda: {e}");
            std::process::exit(2);
        }
    };
    let service = Arc::new(service);
    lambda_http::run(service_fn(move |request: Request| {
        let service = service.clone();
        async move {
            Ok::<_, std::convert::Infallible>(provision_lambda::serve(&service, request).await)
        }
    }))
    .await
}

async fn configure() -> Result<provision_core::Service, provision_core::ConfigError> {
    let (settings, registry) = load().await?;
    Ok(provision_core::build(&settings, Arc::new(registry)))
}

/// The settings and the registry, read and checked from the environment.
async fn load() -> Result<
    (
        provision_core::Settings,
        provision_core::registry::aws::AwsIotRegistry,
    ),
    provision_core::ConfigError,
> {
    let settings = provision_core::Settings::from_env()?;
    let registry = provision_core::aws_registry_from_env().await?;
    Ok((settings, registry))
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
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    match load().await {
        Ok((settings, registry)) => {
            i32::from(!provision_core::check::run_and_print(&settings, &registry, request).await)
        }
        Err(e) => {
            eprintln!("provision-lambda: {e}");
            1
        }
    }
}
