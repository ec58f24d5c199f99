//! `provision-cloudrun`: the balena provisioning function as an HTTP server for Google Cloud
//! Run, serving ClearBlade IoT Core (the Cloud IoT Core successor) by default, or any cloud of
//! the build's table of clouds when `PROVISION_CLOUD` names it: one container an operator can
//! also run on their own machines or Kubernetes.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use provision_core::Cloud;
use provision_core::server::Limits;
use provision_host::{Clouds, Host, number_setting};

const HOST: Host = Host {
    name: "provision-cloudrun",
    version: env!("CARGO_PKG_VERSION"),
    title: "the balena provisioning function as an HTTP server (Cloud Run)",
    about: "Serves POST/GET/DELETE on / and /provision, and GET /healthz.",
    settings: &[
        (
            "PORT",
            "port to listen on, on all interfaces (default 8080; Cloud Run sets it)",
        ),
        (
            "PROVISION_SHUTDOWN_GRACE_MS",
            "how long requests in flight may finish after SIGTERM (default 9000)",
        ),
    ],
    clouds: Clouds::Chosen {
        default: Cloud::Gcp,
    },
    timestamps: true,
};

#[tokio::main]
async fn main() {
    let started = HOST
        .start(|_| {
            let port = number_setting("PORT", 8080, 1, u16::MAX.into())? as u16;
            let grace = number_setting("PROVISION_SHUTDOWN_GRACE_MS", 9_000, 0, 3_600_000)?;
            Ok((port, Duration::from_millis(grace)))
        })
        .await;
    let (port, grace) = started.own;
    let limits = Limits::for_budget(started.settings.request_budget);
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    HOST.serve(address, started.service, limits, grace).await;
}
