//! `provision-azure`: the balena provisioning function as an Azure Functions custom handler
//! (Azure IoT Hub). The Functions host forwards each HTTP request as it came
//! (`enableForwardingHttpRequest`) to this server on `FUNCTIONS_CUSTOMHANDLER_PORT`.

use std::net::{Ipv4Addr, SocketAddr};

use provision_core::Cloud;
use provision_core::server::Limits;
use provision_host::{Clouds, Host, number_setting};

const HOST: Host = Host {
    name: "provision-azure",
    version: env!("CARGO_PKG_VERSION"),
    title: "the balena provisioning function for Azure Functions (custom handler)",
    about: "The Functions host starts it and forwards /api/provision to it;\nrun by hand for local tests with FUNCTIONS_CUSTOMHANDLER_PORT set.",
    settings: &[(
        "FUNCTIONS_CUSTOMHANDLER_PORT",
        "port to listen on, on 127.0.0.1 (default 8080)",
    )],
    clouds: Clouds::One(Cloud::Azure),
    timestamps: true,
};

#[tokio::main]
async fn main() {
    let started = HOST
        .start(|_| {
            number_setting("FUNCTIONS_CUSTOMHANDLER_PORT", 8080, 0, u16::MAX.into())
                .map(|port| port as u16)
        })
        .await;
    // The Functions host stops a worker with SIGTERM; requests in flight get their budget.
    let limits = Limits::for_budget(started.settings.request_budget);
    let grace = limits.request_timeout;
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, started.own));
    HOST.serve(address, started.service, limits, grace).await;
}
