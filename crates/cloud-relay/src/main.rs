use cloud_relay::settings::{ProcessEnv, Settings};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
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
    match runtime.block_on(cloud_relay::relay::run(settings, &ProcessEnv)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
