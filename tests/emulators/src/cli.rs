//! What the emulator binaries (`balena-emulator`, `iothub-emulator`) share: argument reading,
//! the exit code, and serving until Ctrl-C or SIGTERM while printing the requests served.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context as _, anyhow};

/// Runs `run`, printing its error as `<program>: <error>` and exiting 1 when it fails.
pub async fn exit_code(program: &str, run: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command-line arguments after the program name, read flag by flag.
#[derive(Debug)]
pub struct Args {
    args: std::vec::IntoIter<String>,
}

impl Args {
    /// The process's arguments; `None` after printing `help` to stdout when `-h` or `--help` is
    /// among them.
    pub fn from_env_or_help(help: &str) -> Option<Args> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "-h" || a == "--help") {
            print!("{help}");
            return None;
        }
        Some(Args {
            args: args.into_iter(),
        })
    }

    /// The next flag, `None` at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }

    /// The value after `flag`.
    pub fn value(&mut self, flag: &str) -> anyhow::Result<String> {
        self.args
            .next()
            .with_context(|| format!("{flag} needs a value (see --help)"))
    }

    /// The value after `flag`, parsed; `what` says what it must be (`a number`, `HOST:PORT`).
    pub fn parsed<T>(&mut self, flag: &str, what: &str) -> anyhow::Result<T>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let value = self.value(flag)?;
        parse(flag, &value, what)
    }
}

/// `value` (given to `flag`) parsed; `what` says what it must be (`a number`, `HOST:PORT`).
pub fn parse<T>(flag: &str, value: &str, what: &str) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .parse()
        .with_context(|| format!("{flag} needs {what}"))
}

/// `--latency-ms MS` as a duration.
pub fn latency(flag: &str, value: &str) -> anyhow::Result<Duration> {
    parse(flag, value, "a number").map(Duration::from_millis)
}

/// The error for an argument the program does not know.
pub fn unknown(flag: &str) -> anyhow::Error {
    anyhow!("unknown argument {flag:?} (see --help)")
}

/// `127.0.0.1:port`.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits for Ctrl-C or SIGTERM. With `print_requests`, meanwhile prints each new request of
/// `requests()` (the emulator's request log) to stderr as `line` makes it, every 200 ms.
pub async fn serve_until_stopped<R>(
    print_requests: bool,
    requests: impl Fn() -> Vec<R>,
    line: impl Fn(&R) -> String,
) {
    let mut printed = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick(), if print_requests => {
                let requests = requests();
                for r in requests.iter().skip(printed) {
                    eprintln!("{}", line(r));
                }
                printed = requests.len();
            }
        }
    }
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
