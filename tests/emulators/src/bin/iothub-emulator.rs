//! Runs the Azure IoT Hub registry emulator as a process until Ctrl-C or SIGTERM. See `--help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use provision_emulators::cli::{self, Args};
use provision_emulators::iothub::{IotHubEmulator, Policy};

const HELP: &str = "\
iothub-emulator: an Azure IoT Hub identity registry (REST, service side) emulator for tests and
demos, over plain HTTP and over HTTPS with a test CA made at start

USAGE:
    iothub-emulator [OPTIONS]

OPTIONS:
    --hub-host HOST            The hub host name tokens are signed for
                               (default provision-test.azure-devices.net)
    --policy NAME=KEY          A shared access policy with registry write rights; KEY is base64.
                               Repeatable. Without any, `iothubowner` with a random key.
    --read-only-policy NAME=KEY
                               A policy without registry write rights (PUT/DELETE get 401)
    --port PORT                Plain HTTP port on 127.0.0.1 (default 0, a free port)
    --tls-port PORT            HTTPS port on 127.0.0.1 (default 0, a free port)
    --ca-out FILE              Write the test CA certificate (PEM) to FILE, e.g. for
                               NODE_EXTRA_CA_CERTS
    --latency-ms MS            Delay every answer by MS milliseconds
    --print-requests           Print each served request to stderr
    -h, --help                 Print this help

On start it prints, one per line, to stdout:
    listening on http://127.0.0.1:PORT
    listening on https://127.0.0.1:PORT
    connection string (<policy>): HostName=...;SharedAccessKeyName=...;SharedAccessKey=...

Clients sign tokens for the hub host but connect to 127.0.0.1 (e.g. the provisioning function
with AZURE_IOTHUB_ENDPOINT=http://127.0.0.1:PORT).

EXAMPLE:
    iothub-emulator --port 8788 --tls-port 8789 --ca-out /tmp/iothub-ca.pem \\
        --policy iothubowner=c2VjcmV0LWtleS1mb3ItdGhlLWRlbW8tMDEyMzQ1Njc=
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::exit_code("iothub-emulator", run()).await
}

fn parse_policy(flag: &str, v: &str, registry_write: bool) -> anyhow::Result<Policy> {
    let (name, key) = v
        .split_once('=')
        .with_context(|| format!("{flag} {v:?}: expected NAME=KEY"))?;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .with_context(|| format!("{flag} {name}: the key is not base64"))?;
    Ok(Policy::new(name, key, registry_write))
}

async fn run() -> anyhow::Result<()> {
    let Some(mut args) = Args::from_env_or_help(HELP) else {
        return Ok(());
    };

    let mut hub_host = "provision-test.azure-devices.net".to_string();
    let mut policies = Vec::new();
    let mut port = 0u16;
    let mut tls_port = 0u16;
    let mut ca_out: Option<PathBuf> = None;
    let mut latency = Duration::ZERO;
    let mut print_requests = false;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--hub-host" => hub_host = args.value(&flag)?,
            "--policy" => policies.push(parse_policy(&flag, &args.value(&flag)?, true)?),
            "--read-only-policy" => {
                policies.push(parse_policy(&flag, &args.value(&flag)?, false)?);
            }
            "--port" => port = args.parsed(&flag, "a port number")?,
            "--tls-port" => tls_port = args.parsed(&flag, "a port number")?,
            "--ca-out" => ca_out = Some(PathBuf::from(args.value(&flag)?)),
            "--latency-ms" => latency = cli::latency(&flag, &args.value(&flag)?)?,
            "--print-requests" => print_requests = true,
            other => return Err(cli::unknown(other)),
        }
    }
    if policies.is_empty() {
        policies.push(Policy::with_random_key("iothubowner", true));
    }
    let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();

    let emulator = IotHubEmulator::start_on(
        &hub_host,
        policies,
        cli::localhost(port),
        cli::localhost(tls_port),
    )
    .await?;
    emulator.set_latency(latency);
    if let Some(path) = &ca_out {
        std::fs::write(path, emulator.ca_pem())
            .with_context(|| format!("writing the CA certificate to {}", path.display()))?;
    }

    println!("listening on {}", emulator.url());
    println!("listening on {}", emulator.tls_url());
    for name in &names {
        println!(
            "connection string ({name}): {}",
            emulator.connection_string(name)
        );
    }

    cli::serve_until_stopped(
        print_requests,
        || emulator.requests(),
        |r| {
            let policy = r.policy.as_deref().unwrap_or("-");
            format!(
                "{} {} {} policy={policy}",
                r.status, r.method, r.path_and_query
            )
        },
    )
    .await;
    emulator.shutdown().await;
    Ok(())
}
