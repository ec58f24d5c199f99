//! # provision-host
//!
//! What the function's three binaries (`provision-lambda`, `provision-azure`,
//! `provision-cloudrun`) share, so that each says only what is its own: its name, how it runs,
//! its own settings and which clouds it serves. A [`Host`] answers `--help` (one template),
//! `--version` and `--check`, sets up the logs, loads the settings and the registry (from the
//! core's table of clouds) and stops with one line naming the bad variable and a non-zero exit
//! when they do not load.

use std::fmt::{Display, Write as _};
use std::io::Write as _;
use std::sync::Arc;

use provision_core::check::{self, CheckRequest};
use provision_core::config::{self, Setting};
use provision_core::registry::clouds::{self, CloudRow};
use provision_core::{Cloud, ConfigError, Registry, Service, Settings};

/// Exit code of a host that cannot start (a bad setting, a bad argument, no port to listen on).
pub const EXIT_CONFIG: i32 = 2;

/// The variable `provision-cloudrun` chooses its cloud with ([`Clouds::Chosen`]).
pub const CLOUD_VARIABLE: &str = "PROVISION_CLOUD";

/// One of the function's binaries, as its `main` describes it.
pub struct Host {
    /// The binary's name: `--help`'s first word and the start of every line it stops with.
    pub name: &'static str,
    /// Its version (`env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// What it is, after the name on `--help`'s first line.
    pub title: &'static str,
    /// How it runs, after the sentence `--help` starts with (one or more lines).
    pub about: &'static str,
    /// Its own settings, listed after the ones every host reads.
    pub settings: &'static [Setting],
    /// The cloud it serves, or how it chooses one.
    pub clouds: Clouds,
    /// Whether log lines carry the time (Lambda's log service adds its own).
    pub timestamps: bool,
}

/// Which cloud a host serves.
#[derive(Clone, Copy, Debug)]
pub enum Clouds {
    /// Always this one (Lambda: AWS IoT Core; the custom handler: Azure IoT Hub).
    One(Cloud),
    /// The one `PROVISION_CLOUD` names among the table's, `default` when it is unset.
    Chosen { default: Cloud },
}

/// What a host runs with, read and checked from the environment.
pub struct Loaded<T> {
    pub settings: Settings,
    pub registry: Arc<dyn Registry>,
    /// What the host reads of its own (its port, its shutdown grace).
    pub own: T,
}

/// A host ready to serve: its settings, its own, and the core's service, warmed up.
pub struct Started<T> {
    pub settings: Settings,
    pub service: Service,
    pub own: T,
}

/// The logs' setting, read by every host.
const RUST_LOG: Setting = (
    "RUST_LOG",
    "log filter (default info; with --check, warn, on stderr)",
);

impl Host {
    /// Start-up, as every binary does it. `--help`/`-h` and `--version`/`-V` print and exit 0;
    /// `--check` loads the configuration as below, runs the read-only checks and exits 0 only
    /// when all pass (1 when one fails or the configuration does not load, 2 for a bad
    /// argument). Otherwise the logs are set up and the settings, the registry and the host's
    /// own settings (`own`) are loaded; a bad one stops the process with one line naming it and
    /// exit code 2.
    ///
    /// Then start-up does the first request's per-process work (`PROVISION_WARMUP_MS`, see
    /// [`Service::warm`]) and says in one log line what it did; an upstream that does not
    /// answer in time delays start-up by that bound at most and is left to the first request.
    pub async fn start<T>(&self, own: impl Fn(&Settings) -> Result<T, ConfigError>) -> Started<T> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            // Not println!: a reader that stops early (`| head`) is no reason to panic.
            let _ = writeln!(std::io::stdout(), "{}", self.help());
            std::process::exit(0);
        }
        if args.iter().any(|a| a == "--version" || a == "-V") {
            let _ = writeln!(std::io::stdout(), "{} {}", self.name, self.version);
            std::process::exit(0);
        }
        match CheckRequest::from_args(args) {
            Ok(None) => {}
            Ok(Some(request)) => std::process::exit(self.check(&request, own).await),
            Err(e) => self.exit(EXIT_CONFIG, e),
        }
        self.logs("info", false);
        let loaded = match self.load(own).await {
            Ok(loaded) => loaded,
            // Lambda reports the initialisation as failed and shows this line in its log; the
            // Functions host and Cloud Run show it as the process's last words.
            Err(e) => self.exit(EXIT_CONFIG, e),
        };
        let service = provision_core::build(&loaded.settings, loaded.registry);
        if !loaded.settings.warm_up.is_zero() {
            let warm = service.warm(loaded.settings.warm_up).await;
            match warm.complete() {
                true => tracing::info!(
                    elapsed_ms = warm.elapsed.as_millis() as u64,
                    "warmed up in {warm}"
                ),
                false => tracing::warn!(
                    elapsed_ms = warm.elapsed.as_millis() as u64,
                    "warm-up incomplete after {warm}"
                ),
            }
        }
        Started {
            settings: loaded.settings,
            service,
            own: loaded.own,
        }
    }

    /// Stops the process with one line, `<name>: <problem>`, on stderr.
    pub fn exit(&self, code: i32, problem: impl Display) -> ! {
        eprintln!("{}: {problem}", self.name);
        std::process::exit(code)
    }

    /// `--help`: one template, filled with the host's parts and its clouds' settings.
    pub fn help(&self) -> String {
        let rows = self.rows();
        let products: Vec<&str> = rows.iter().map(|row| row.product).collect();
        let registries = match products.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "an IoT registry".to_owned(),
        };
        let mut text = format!(
            "{} {}: {}\n\nRegisters balena devices with {registries} and stores their credentials\nas balenaCloud variables. {}\n\nEnvironment:\n",
            self.name, self.version, self.title, self.about
        );
        // The name in a column of 31, then what it is for; a longer name on a line of its own.
        let line = |text: &mut String, (name, about): Setting| {
            let _ = match name.len() > 31 {
                true => writeln!(text, "  {name}\n  {:<31} {about}", ""),
                false => writeln!(text, "  {name:<31} {about}"),
            };
        };
        if let Clouds::Chosen { default } = self.clouds {
            let names: Vec<String> = rows
                .iter()
                .map(|row| match row.cloud == default {
                    true => format!("{} (default: {})", row.name(), row.product),
                    false => format!("{} ({})", row.name(), row.product),
                })
                .collect();
            let _ = writeln!(text, "  {CLOUD_VARIABLE:<31} {}", names.join(", "));
        }
        for setting in config::SETTINGS
            .iter()
            .chain(self.settings)
            .chain([&RUST_LOG])
        {
            line(&mut text, *setting);
        }
        for row in &rows {
            let _ = writeln!(text, " {} ({}):", row.name(), row.product);
            for setting in row.settings {
                line(&mut text, *setting);
            }
        }
        text.push('\n');
        text.push_str(check::HELP);
        text
    }

    /// The rows of the clouds this host can serve.
    fn rows(&self) -> Vec<&'static CloudRow> {
        match self.clouds {
            Clouds::One(cloud) => clouds::row(cloud).into_iter().collect(),
            Clouds::Chosen { .. } => clouds::CLOUDS.iter().collect(),
        }
    }

    /// The settings, the registry and the host's own settings, as at start-up.
    async fn load<T>(
        &self,
        own: impl Fn(&Settings) -> Result<T, ConfigError>,
    ) -> Result<Loaded<T>, ConfigError> {
        let settings = Settings::from_env()?;
        let row = match self.clouds {
            Clouds::One(cloud) => clouds::row(cloud)
                .unwrap_or_else(|| panic!("{} is built without its cloud, {cloud}", self.name)),
            Clouds::Chosen { default } => clouds::choose(
                CLOUD_VARIABLE,
                std::env::var(CLOUD_VARIABLE).ok().as_deref(),
                default,
            )?,
        };
        let registry = (row.from_env)().await?;
        let own = own(&settings)?;
        Ok(Loaded {
            settings,
            registry,
            own,
        })
    }

    /// `--check`: the configuration loaded as at start-up, then the read-only checks. Gives the
    /// exit code: 0 when every check passed.
    async fn check<T>(
        &self,
        request: &CheckRequest,
        own: impl Fn(&Settings) -> Result<T, ConfigError>,
    ) -> i32 {
        // Logs (warnings unless RUST_LOG says otherwise) go to stderr, apart from the check's
        // lines.
        self.logs("warn", true);
        match self.load(own).await {
            Ok(loaded) => i32::from(
                !check::run_and_print(&loaded.settings, loaded.registry.as_ref(), request).await,
            ),
            Err(e) => {
                eprintln!("{}: {e}", self.name);
                1
            }
        }
    }

    /// The logs: `RUST_LOG`, or `default`; on stderr when `to_stderr`, else on stdout.
    fn logs(&self, default: &str, to_stderr: bool) {
        use tracing_subscriber::EnvFilter;
        use tracing_subscriber::fmt::writer::BoxMakeWriter;
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
        let writer = match to_stderr {
            true => BoxMakeWriter::new(std::io::stderr),
            false => BoxMakeWriter::new(std::io::stdout),
        };
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(writer);
        match self.timestamps {
            true => logs.init(),
            false => logs.without_time().init(),
        }
    }
}

/// A whole number setting of the host's own, `default` when unset, within `min..=max`.
pub fn number_setting(
    name: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                name,
                format!("must be a whole number from {min} to {max}"),
            )),
        },
    }
}

#[cfg(feature = "server")]
impl Host {
    /// Serves the core's HTTP server on `address` until SIGTERM or Ctrl-C, requests in flight
    /// given `grace` to finish; stops the process with one line when it cannot listen (exit 2)
    /// or the server fails (exit 1).
    pub async fn serve(
        &self,
        address: std::net::SocketAddr,
        service: Service,
        limits: provision_core::server::Limits,
        grace: std::time::Duration,
    ) {
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(e) => self.exit(EXIT_CONFIG, format!("cannot listen on {address}: {e}")),
        };
        tracing::info!(port = address.port(), cloud = service.cloud(), "listening");
        let shutdown = provision_core::server::shutdown_signal();
        if let Err(e) =
            provision_core::server::serve(listener, Arc::new(service), limits, shutdown, grace)
                .await
        {
            self.exit(1, format!("server failed: {e}"));
        }
        tracing::info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(clouds: Clouds) -> Host {
        Host {
            name: "provision-test",
            version: "0.0.0",
            title: "a host under test",
            about: "It serves nothing.",
            settings: &[("PORT", "port to listen on")],
            clouds,
            timestamps: true,
        }
    }

    /// Whether `help` has a line for the setting `name`.
    fn lists(help: &str, name: &str) -> bool {
        help.lines()
            .any(|line| line.strip_prefix("  ").is_some_and(|l| l.starts_with(name)))
    }

    #[test]
    fn help_lists_every_setting_of_the_host_and_its_clouds() {
        let help = host(Clouds::Chosen {
            default: Cloud::Gcp,
        })
        .help();
        assert!(
            help.starts_with("provision-test 0.0.0: a host under test\n"),
            "{help}"
        );
        for (name, _) in config::SETTINGS.iter().chain([&("PORT", ""), &RUST_LOG]) {
            assert!(lists(&help, name), "{name}:\n{help}");
        }
        for row in clouds::CLOUDS {
            assert!(help.contains(row.product), "{}:\n{help}", row.product);
            for (name, _) in row.settings {
                assert!(lists(&help, name), "{name}:\n{help}");
            }
        }
        assert!(help.contains(CLOUD_VARIABLE), "{help}");
        assert!(help.ends_with(check::HELP), "{help}");
    }

    #[test]
    fn a_host_of_one_cloud_lists_only_its_settings() {
        let Some(first) = clouds::CLOUDS.first() else {
            return;
        };
        let help = host(Clouds::One(first.cloud)).help();
        assert!(!help.contains(CLOUD_VARIABLE), "{help}");
        for row in clouds::CLOUDS.iter().skip(1) {
            for (name, _) in row.settings {
                assert!(!help.contains(name), "{name}:\n{help}");
            }
        }
    }

    #[test]
    fn host_numbers_are_bounded() {
        assert_eq!(
            number_setting("PROVISION_TEST_UNSET_NUMBER", 7, 1, 9).ok(),
            Some(7)
        );
    }
}
