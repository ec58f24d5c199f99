use cloud_relay::settings::{ProcessEnv, Settings};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut iotedge = None;
    match args.first().map(String::as_str) {
        None => {}
        Some("iotedge-provisioning") => match iotedge_options(&args[1..]) {
            Ok(Some(options)) => iotedge = Some(options),
            Ok(None) => return std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cloud-relay iotedge-provisioning: {e}; see --help");
                return std::process::ExitCode::from(2);
            }
        },
        Some("-h" | "--help") => {
            print!("{}", cloud_relay::help::TEXT);
            return std::process::ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("cloud-relay {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("cloud-relay: unknown argument {other:?}; see cloud-relay --help");
            return std::process::ExitCode::from(2);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_target(false)
        .init();
    let settings = match Settings::from_env(&ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("settings: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match iotedge {
        Some((listen, mode)) => runtime.block_on(cloud_relay::iotedge::run(settings, listen, mode)),
        None => runtime.block_on(cloud_relay::relay::run(settings, &ProcessEnv)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `iotedge-provisioning [--listen URL] [--socket-mode OCTAL]`; `None` when `--help` was asked.
fn iotedge_options(
    args: &[String],
) -> Result<Option<(cloud_relay::iotedge::server::Listen, u32)>, String> {
    use cloud_relay::iotedge::server::{DEFAULT_LISTEN, DEFAULT_SOCKET_MODE};
    let mut listen = DEFAULT_LISTEN.parse()?;
    let mut mode = DEFAULT_SOCKET_MODE;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{}", cloud_relay::help::IOTEDGE);
                return Ok(None);
            }
            "--listen" => {
                listen = it.next().ok_or("--listen needs an address")?.parse()?;
            }
            "--socket-mode" => {
                let text = it.next().ok_or("--socket-mode needs an octal mode")?;
                mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--socket-mode: {text:?} is not an octal mode"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some((listen, mode)))
}
