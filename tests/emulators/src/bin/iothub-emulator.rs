//! Runs the Azure IoT Hub registry emulator as a process until Ctrl-C or SIGTERM. See `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
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
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("iothub-emulator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return Ok(());
    }

    let mut hub_host = "provision-test.azure-devices.net".to_string();
    let mut policies = Vec::new();
    let mut port = 0u16;
    let mut tls_port = 0u16;
    let mut ca_out: Option<PathBuf> = None;
    let mut latency = Duration::ZERO;
    let mut print_requests = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{flag} needs a value (see --help)"))
        };
        match flag.as_str() {
            "--hub-host" => hub_host = value()?,
            "--policy" => policies.push(parse_policy(&flag, &value()?, true)?),
            "--read-only-policy" => policies.push(parse_policy(&flag, &value()?, false)?),
            "--port" => port = value()?.parse().context("--port needs a port number")?,
            "--tls-port" => {
                tls_port = value()?.parse().context("--tls-port needs a port number")?
            }
            "--ca-out" => ca_out = Some(PathBuf::from(value()?)),
            "--latency-ms" => {
                let ms: u64 = value()?.parse().context("--latency-ms needs a number")?;
                latency = Duration::from_millis(ms);
            }
            "--print-requests" => print_requests = true,
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if policies.is_empty() {
        let key: Vec<u8> = uuid::Uuid::new_v4()
            .as_bytes()
            .iter()
            .chain(uuid::Uuid::new_v4().as_bytes())
            .copied()
            .collect();
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        policies.push(Policy::new("iothubowner", &key, true));
    }
    let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();

    let emulator = IotHubEmulator::start_on(
        &hub_host,
        policies,
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
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

    let mut printed = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick(), if print_requests => {
                let requests = emulator.requests();
                for r in requests.iter().skip(printed) {
                    eprintln!("{} {} {} policy={}", r.status, r.method, r.path_and_query,
                        r.policy.as_deref().unwrap_or("-"));
                }
                printed = requests.len();
            }
        }
    }
    emulator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
