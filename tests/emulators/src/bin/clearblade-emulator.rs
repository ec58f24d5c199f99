//! Runs the ClearBlade IoT Core emulator as a process until Ctrl-C or SIGTERM. See `--help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use provision_emulators::clearblade::ClearBladeEmulator;
use provision_emulators::cli::{self, Args};

const HELP: &str = "\
clearblade-emulator: a ClearBlade IoT Core (Google Cloud IoT Core successor) emulator for tests
and demos: the admin getRegistryCredentials exchange and the registry's cloudiot_devices
calls, over plain HTTP and over HTTPS with a test CA made at start

USAGE:
    clearblade-emulator [OPTIONS]

OPTIONS:
    --project ID               The project of the service account (default provision-test)
    --registry REGION/ID       A registry to serve, e.g. us-central1/balena-devices.
                               Repeatable. Without any, us-central1/balena-devices.
    --port PORT                Plain HTTP port on 127.0.0.1 (default 0, a free port)
    --tls-port PORT            HTTPS port on 127.0.0.1 (default 0, a free port)
    --ca-out FILE              Write the test CA certificate (PEM) to FILE, e.g. for
                               NODE_EXTRA_CA_CERTS
    --service-account-out FILE Write the service-account JSON to FILE
    --latency-ms MS            Delay every answer by MS milliseconds
    --print-requests           Print each served request to stderr
    -h, --help                 Print this help

On start it prints, one per line, to stdout:
    listening on http://127.0.0.1:PORT
    listening on https://127.0.0.1:PORT
    ca: FILE                   (with --ca-out)
    service account: {\"systemKey\":...,\"token\":...,\"url\":\"http://127.0.0.1:PORT\",\"project\":...}
    CB_SERVICE_ACCOUNT=<base64 of that JSON>

Keys and tokens are random on every start. The service account's url is the plain HTTP one;
getRegistryCredentials answers the regional url on the side it was asked on (HTTP or HTTPS).

EXAMPLE:
    clearblade-emulator --port 8790 --tls-port 8791 --ca-out /tmp/clearblade-ca.pem \\
        --registry us-central1/balena-devices --print-requests
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::exit_code("clearblade-emulator", run()).await
}

async fn run() -> anyhow::Result<()> {
    let Some(mut args) = Args::from_env_or_help(HELP) else {
        return Ok(());
    };

    let mut project = "provision-test".to_string();
    let mut registries: Vec<(String, String)> = Vec::new();
    let mut port = 0u16;
    let mut tls_port = 0u16;
    let mut ca_out: Option<PathBuf> = None;
    let mut sa_out: Option<PathBuf> = None;
    let mut latency = Duration::ZERO;
    let mut print_requests = false;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--project" => project = args.value(&flag)?,
            "--registry" => {
                let v = args.value(&flag)?;
                let Some((region, registry)) = v.split_once('/') else {
                    bail!("{flag} {v:?}: expected REGION/ID");
                };
                registries.push((region.to_string(), registry.to_string()));
            }
            "--port" => port = args.parsed(&flag, "a port number")?,
            "--tls-port" => tls_port = args.parsed(&flag, "a port number")?,
            "--ca-out" => ca_out = Some(PathBuf::from(args.value(&flag)?)),
            "--service-account-out" => sa_out = Some(PathBuf::from(args.value(&flag)?)),
            "--latency-ms" => latency = cli::latency(&flag, &args.value(&flag)?)?,
            "--print-requests" => print_requests = true,
            other => return Err(cli::unknown(other)),
        }
    }
    if registries.is_empty() {
        registries.push(("us-central1".to_string(), "balena-devices".to_string()));
    }
    let pairs: Vec<(&str, &str)> = registries
        .iter()
        .map(|(r, id)| (r.as_str(), id.as_str()))
        .collect();

    let emulator = ClearBladeEmulator::start_on(
        &project,
        &pairs,
        cli::localhost(port),
        cli::localhost(tls_port),
    )
    .await?;
    emulator.set_latency(latency);
    if let Some(path) = &ca_out {
        std::fs::write(path, emulator.ca_pem())
            .with_context(|| format!("writing the CA certificate to {}", path.display()))?;
    }
    let service_account = emulator.service_account_json().to_string();
    if let Some(path) = &sa_out {
        std::fs::write(path, &service_account)
            .with_context(|| format!("writing the service account to {}", path.display()))?;
    }

    println!("listening on {}", emulator.url());
    println!("listening on {}", emulator.tls_url());
    if let Some(path) = &ca_out {
        println!("ca: {}", path.display());
    }
    println!("service account: {service_account}");
    println!("CB_SERVICE_ACCOUNT={}", emulator.service_account_base64());

    cli::serve_until_stopped(
        print_requests,
        || emulator.requests(),
        |r| {
            let registry = r
                .registry
                .as_ref()
                .map_or("-".to_string(), |(region, id)| format!("{region}/{id}"));
            format!(
                "{} {} {} registry={registry}",
                r.status,
                r.method,
                r.path_and_query()
            )
        },
    )
    .await;
    emulator.shutdown().await;
    Ok(())
}
