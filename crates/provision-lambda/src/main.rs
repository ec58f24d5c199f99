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
         (AWS_LAMBDA_RUNTIME_API); it is not a command to run by hand.\n\n\
         Environment:\n\
         \x20 BALENA_API_KEY                  the function's own balenaCloud API key (required)\n\
         \x20 BALENA_API_URL                  default https://api.balena-cloud.com\n\
         \x20 AWS_IOT_POLICY                  IoT policy attached to every device certificate (required)\n\
         \x20 AWS_REGION, AWS_ENDPOINT_URL    the standard AWS SDK settings\n\
         \x20 PROVISION_OPERATOR_TOKEN        optional operator bearer token (16+ characters)\n\
         \x20 PROVISION_ALLOW_UNAUTHENTICATED 'true' accepts callers without credentials\n\
         \x20 PROVISION_REQUEST_BUDGET_MS     time budget of one request (default 25000)\n\
         \x20 RUST_LOG                        log filter (default info)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(0)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        help();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
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
        async move { Ok::<_, std::convert::Infallible>(provision_lambda::serve(&service, request).await) }
    }))
    .await
}

async fn configure() -> Result<provision_core::Service, provision_core::ConfigError> {
    let settings = provision_core::Settings::from_env()?;
    let registry = provision_core::aws_registry_from_env().await?;
    Ok(provision_core::build(&settings, Arc::new(registry)))
}
