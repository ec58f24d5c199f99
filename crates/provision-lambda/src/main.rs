//! `provision-lambda`: the balena provisioning function for AWS Lambda (AWS IoT Core).
//!
//! Configuration comes from the environment (see the README, or `--help`); a missing or
//! malformed setting stops the function at start-up with one line naming the variable.

use std::sync::Arc;

use lambda_http::{Error, Request, service_fn};
use provision_core::Cloud;
use provision_host::{Clouds, Host};

const HOST: Host = Host {
    name: "provision-lambda",
    version: env!("CARGO_PKG_VERSION"),
    title: "the balena provisioning function for AWS Lambda",
    about: "It runs under the Lambda Runtime API (AWS_LAMBDA_RUNTIME_API);\nby hand, run only its read-only --check (below).",
    settings: &[],
    clouds: Clouds::One(Cloud::Aws),
    // CloudWatch stamps every line.
    timestamps: false,
};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let service = Arc::new(HOST.start(|_| Ok(())).await.service);
    lambda_http::run(service_fn(move |request: Request| {
        let service = service.clone();
        async move {
            Ok::<_, std::convert::Infallible>(provision_lambda::serve(&service, request).await)
        }
    }))
    .await
}
