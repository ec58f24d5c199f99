//! Runs the balenaCloud API emulator as a process, seeded from the command line, until Ctrl-C
//! or SIGTERM. See `--help`.

use std::collections::HashMap;

use anyhow::{Context, bail};
use provision_emulators::balena::BalenaEmulator;
use provision_emulators::cli::{self, Args};

const HELP: &str = "\
balena-emulator: a balenaCloud API (pinejs/OData v7) emulator for tests and demos

USAGE:
    balena-emulator [OPTIONS]

Seeding options are applied in order and may be repeated; later ones refer to earlier ones by
application name or device uuid.

OPTIONS:
    --listen ADDR              Address to bind (default 127.0.0.1:0, a free port)
    --port PORT                Same as --listen 127.0.0.1:PORT
    --app NAME                 Create an application
    --service APP:NAME         Create a service NAME in application APP
    --device APP:UUID          Create a device (installs every service of APP on it)
    --user-key KEY             Accept KEY as a user API key (full access)
    --device-key UUID:KEY      Accept KEY as the device API key of device UUID
    --device-var UUID:NAME=VALUE
                               Set a device environment variable
    --service-var UUID:SERVICE:NAME=VALUE
                               Set a service variable on a device's install of SERVICE
    --device-tag UUID:KEY=VALUE
                               Set a device tag
    --latency-ms MS            Delay every answer by MS milliseconds
    --print-requests           Print each served request to stderr
    -h, --help                 Print this help

On start it prints one line to stdout: `listening on http://127.0.0.1:PORT`.

EXAMPLE:
    balena-emulator --port 8787 --app fleet --service fleet:main \\
        --device fleet:0123456789abcdef0123456789abcdef --user-key secret
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cli::exit_code("balena-emulator", run()).await
}

async fn run() -> anyhow::Result<()> {
    let Some(mut args) = Args::from_env_or_help(HELP) else {
        return Ok(());
    };

    let mut listen = cli::localhost(0);
    let mut print_requests = false;
    let mut seeds: Vec<(String, String)> = Vec::new();
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--listen" => listen = args.parsed(&flag, "HOST:PORT")?,
            "--port" => listen = cli::localhost(args.parsed(&flag, "a port number")?),
            "--print-requests" => print_requests = true,
            "--app" | "--service" | "--device" | "--user-key" | "--device-key" | "--device-var"
            | "--service-var" | "--device-tag" | "--latency-ms" => {
                let v = args.value(&flag)?;
                seeds.push((flag, v));
            }
            other => return Err(cli::unknown(other)),
        }
    }

    let emulator = BalenaEmulator::start_on(listen).await?;
    let mut apps: HashMap<String, i64> = HashMap::new();
    let mut devices: HashMap<String, i64> = HashMap::new();
    let app_id = |apps: &HashMap<String, i64>, name: &str| {
        apps.get(name)
            .copied()
            .with_context(|| format!("no --app {name:?} before this"))
    };
    let device_id = |devices: &HashMap<String, i64>, uuid: &str| {
        devices
            .get(uuid)
            .copied()
            .with_context(|| format!("no --device ...:{uuid} before this"))
    };
    for (flag, v) in seeds {
        let split = |sep: char| {
            v.split_once(sep)
                .with_context(|| format!("{flag} {v:?}: expected a {sep:?} (see --help)"))
        };
        match flag.as_str() {
            "--app" => {
                apps.insert(v.clone(), emulator.add_application(&v));
            }
            "--service" => {
                let (app, name) = split(':')?;
                emulator.add_service(app_id(&apps, app)?, name);
            }
            "--device" => {
                let (app, uuid) = split(':')?;
                devices.insert(
                    uuid.to_string(),
                    emulator.add_device(app_id(&apps, app)?, uuid),
                );
            }
            "--user-key" => emulator.add_user_key(&v),
            "--device-key" => {
                let (uuid, key) = split(':')?;
                emulator.add_device_key(device_id(&devices, uuid)?, key);
            }
            "--device-var" | "--device-tag" => {
                let (uuid, assignment) = split(':')?;
                let (name, value) = assignment
                    .split_once('=')
                    .with_context(|| format!("{flag} {v:?}: expected NAME=VALUE"))?;
                let device = device_id(&devices, uuid)?;
                if flag == "--device-var" {
                    emulator.set_device_var(device, name, value);
                } else {
                    emulator.set_device_tag(device, name, value);
                }
            }
            "--service-var" => {
                let (uuid, rest) = split(':')?;
                let (service, assignment) = rest
                    .split_once(':')
                    .with_context(|| format!("{flag} {v:?}: expected UUID:SERVICE:NAME=VALUE"))?;
                let (name, value) = assignment
                    .split_once('=')
                    .with_context(|| format!("{flag} {v:?}: expected NAME=VALUE"))?;
                let device = device_id(&devices, uuid)?;
                if emulator.service_install_id(device, service).is_none() {
                    bail!("{flag} {v:?}: device {uuid} has no service {service:?}");
                }
                emulator.set_service_var(device, service, name, value);
            }
            "--latency-ms" => emulator.set_latency(cli::latency(&flag, &v)?),
            _ => {}
        }
    }

    println!("listening on {}", emulator.url());
    cli::serve_until_stopped(
        print_requests,
        || emulator.requests(),
        |r| {
            let key = r.key.as_deref().unwrap_or("-");
            format!("{} {} {} key={key}", r.status, r.method, r.path_and_query)
        },
    )
    .await;
    emulator.shutdown().await;
    Ok(())
}
