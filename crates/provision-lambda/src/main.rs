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
        // The runtime loop runs on the main thread; the request is served on the workers,
        // where the HTTP clients' own tasks run. An HTTP/1 connection goes back to its pool in
        // a task the client spawns once the answer has been read: spawned from the main
        // thread, that task waits for a worker to wake, and a call made right after the
        // previous one found no idle connection and opened a new one more often.
        let served = tokio::spawn(async move { provision_lambda::serve(&service, request).await });
        async move {
            match served.await {
                Ok(response) => Ok::<_, Error>(response),
                // A panic stays the handler's own, as if it had not been spawned.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(e.into()),
            }
        }
    }))
    .await
}
