//! `provision-bench`: measures the three functions against the local emulators and prints one
//! table per cloud (issue 6, the measuring half). See `HELP`.
//!
//! Every figure comes from the real function binaries running as processes, reached the way
//! their host reaches them (the Lambda Runtime API, or HTTP), with fault proxies in front of
//! balenaCloud and the registry that log every upstream call with its timing: the number of
//! calls and their sequential depth are read from those logs, and the proxies add the latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use provision_core::Cloud;
use provision_core::credentials::{DeviceKey, KeyAlgorithm};
use provision_core::ids::DeviceUuid;
use provision_emulators::fault_proxy::{Exchange, Traffic, sequential_depth};
use provision_emulators::lambda_runtime::{InvocationOutcome, LambdaRuntimeEmulator};
use provision_testkit::checks::Target;
use provision_testkit::events::{Answer, Call};
use provision_testkit::paths;
use provision_testkit::process::{LogBook, Process, free_port};
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, AzureWorld, Device, Functions, GcpWorld, Options};

const HELP: &str = "provision-bench: measure the provisioning functions against the local emulators

For each cloud (AWS: provision-lambda under the Lambda Runtime API emulator, moto; Azure:
provision-azure over HTTP, the IoT Hub emulator; GCP: provision-cloudrun over HTTP, the
ClearBlade emulator; all with the balenaCloud emulator and fault proxies logging every upstream
call) prints one table:

  * per operation (POST new, POST already provisioned, rotate, DELETE): upstream calls, their
    sequential depth (longest chain of calls made one after another, from the proxies' logs),
    wall time with 0 ms and with 50 ms added to every upstream call (median of --runs), and,
    as a cross-check of the proxies' own overhead, with no proxies at all (a world of its own);
  * cold start: process spawn to the first answer (GET /healthz; and a first POST new),
    median of --cold-runs, and the peak resident memory (VmHWM) of a process that served one
    POST (fresh processes with the function's own environment, no proxies);
  * function CPU time (utime+stime) per device over a batch of --batch POSTs, twice: through
    the proxies keeping the function's connections open (as the real services do; moto answers
    every request `Connection: close`), and with no proxies; and the peak RSS (no proxies);
  * binary size, and for AWS the Lambda deployment zip (provided.al2023 layout: `bootstrap`);
  * credential generation per device (EC P-256, RSA-2048), in this process.

Each figure is printed with its target (ok/over) and the published Node function's figure.

Usage: provision-bench [aws|azure|gcp|all]... [options]
  --smoke            one run of everything with tiny batches, on the debug binaries: checks the
                     harness (exit 1 when an operation answers unexpectedly), not timings
  --runs N           runs per wall-time figure (default 5; smoke 1)
  --batch N          devices in the CPU batch (default 200; smoke 5)
  --cold-runs N      cold starts per figure (default 10; smoke 1)
  --release-dir DIR  where the release binaries are (default: PROVISION_BENCH_RELEASE_DIR, else
                     the `release` directory beside this executable's profile directory); the
                     full benchmark runs them, --smoke only reads their sizes if present
  --calls            also print each operation's upstream calls (one +50 ms run, as timed)
  -h, --help         this text

Build first: cargo build --release -p provision-lambda -p provision-azure -p provision-cloudrun
(scripts/bench does it all).";

/// Latencies added to every upstream call for the wall-time figures.
const LATENCIES: [Duration; 2] = [Duration::ZERO, Duration::from_millis(50)];
/// Requests in flight at once in the CPU batch.
const BATCH_CONCURRENCY: usize = 8;

struct Config {
    smoke: bool,
    runs: usize,
    batch: usize,
    cold_runs: usize,
    release_dir: PathBuf,
    clouds: Vec<Cloud>,
    calls: bool,
}

const BINARIES: [&str; 3] = ["provision-lambda", "provision-azure", "provision-cloudrun"];

fn parse_args() -> Result<Config, String> {
    let mut args = std::env::args().skip(1);
    let (mut smoke, mut calls) = (false, false);
    let (mut runs, mut batch, mut cold_runs, mut release_dir) = (None, None, None, None);
    let mut clouds: Vec<Cloud> = Vec::new();
    let number = |flag: &str, value: Option<String>| -> Result<usize, String> {
        value
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} takes a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                let _ = writeln!(std::io::stdout(), "{HELP}");
                std::process::exit(0);
            }
            "--smoke" => smoke = true,
            "--calls" => calls = true,
            "--runs" => runs = Some(number("--runs", args.next())?),
            "--batch" => batch = Some(number("--batch", args.next())?),
            "--cold-runs" => cold_runs = Some(number("--cold-runs", args.next())?),
            "--release-dir" => {
                release_dir = Some(PathBuf::from(
                    args.next().ok_or("--release-dir takes a directory")?,
                ))
            }
            "all" => clouds.extend(Cloud::ALL),
            other => match other.parse::<Cloud>() {
                Ok(cloud) => clouds.push(cloud),
                Err(_) => return Err(format!("unknown argument '{other}' (see --help)")),
            },
        }
    }
    if clouds.is_empty() {
        clouds = Cloud::ALL.to_vec();
    }
    clouds.dedup();
    let release_dir = match release_dir
        .or_else(|| std::env::var_os("PROVISION_BENCH_RELEASE_DIR").map(PathBuf::from))
    {
        Some(dir) => dir,
        None => {
            // This executable sits in <target>/<profile>/.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            exe.parent()
                .and_then(Path::parent)
                .map(|t| t.join("release"))
                .ok_or("cannot tell the target directory; pass --release-dir")?
        }
    };
    Ok(Config {
        smoke,
        runs: runs.unwrap_or(if smoke { 1 } else { 5 }),
        batch: batch.unwrap_or(if smoke { 5 } else { 200 }),
        cold_runs: cold_runs.unwrap_or(if smoke { 1 } else { 10 }),
        release_dir,
        clouds,
        calls,
    })
}

fn release_present(dir: &Path) -> bool {
    BINARIES.iter().all(|b| dir.join(b).is_file())
}

#[tokio::main]
async fn main() {
    let config = match parse_args() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("provision-bench: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    if !config.smoke {
        if !release_present(&config.release_dir) {
            eprintln!(
                "provision-bench: the release binaries are not in {} ({}): build them with\n  cargo build --release -p provision-lambda -p provision-azure -p provision-cloudrun\nor pass --release-dir (or run scripts/bench)",
                config.release_dir.display(),
                BINARIES.join(", ")
            );
            std::process::exit(2);
        }
        paths::use_binaries_from(config.release_dir.clone());
    }
    print_header(&config);

    let mut failures = Vec::new();
    for cloud in config.clouds.clone() {
        let outcome = match cloud {
            Cloud::Aws => bench::<AwsWorld>(&config).await,
            Cloud::Azure => bench::<AzureWorld>(&config).await,
            Cloud::Gcp => bench::<GcpWorld>(&config).await,
        };
        match outcome {
            Ok(problems) => failures.extend(problems.into_iter().map(|p| format!("{cloud}: {p}"))),
            Err(e) => {
                println!("\n{cloud}: the benchmark could not run: {e:#}");
                failures.push(format!("{cloud}: {e:#}"));
            }
        }
    }
    println!(
        "\nprovision-bench finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        println!("{} unexpected outcome(s):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        std::process::exit(1);
    }
}

fn print_header(config: &Config) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_string(), |(_, v)| v.trim().to_string());
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "provision-bench{}",
        if config.smoke {
            " --smoke (checks the harness; the timings mean nothing)"
        } else {
            ""
        }
    );
    println!(
        "machine: {model}; {processors} logical CPUs ({usable} usable); {} {os}, Linux {}; {rustc}",
        std::env::consts::ARCH,
        kernel.trim()
    );
    let functions = if config.smoke {
        BINARIES
            .iter()
            .map(|b| {
                paths::binary(b).map_or_else(|e| format!("{b}: {e}"), |p| p.display().to_string())
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        format!("release builds in {}", config.release_dir.display())
    };
    println!("functions: {functions}");
    println!(
        "runs: wall times median of {} per latency (0 ms, +50 ms per upstream call); cold starts median of {}; CPU batch of {} devices ({} at once)",
        config.runs, config.cold_runs, config.batch, BATCH_CONCURRENCY
    );
    println!(
        "harness: this benchmark is a {} build; the emulators run in it (moto in Python), so wall times include the emulators' own time; \
         credential figures are measured in this process",
        if cfg!(debug_assertions) {
            "dev (deps opt-level 1)"
        } else {
            "release"
        }
    );
}

/// How a function's host reaches it.
#[derive(Clone, Copy)]
enum Host {
    /// A process polling the Lambda Runtime API.
    Lambda,
    /// An HTTP server on the port in `port_var`, with routes under `prefix`.
    Http {
        port_var: &'static str,
        prefix: &'static str,
    },
}

/// The published Node functions' figures, for the comparison column.
struct Node {
    post_depth: &'static str,
    delete_depth: &'static str,
    post_50: &'static str,
    second_post: &'static str,
    deployed: &'static str,
    credential: &'static str,
}

/// What the benchmark needs of a world beyond the shared `Stack`.
trait Bench: Stack {
    const TITLE: &'static str;
    const BINARY: &'static str;
    const HOST: Host;
    const NODE: Node;
    /// What the host and emulators are, for the table's title.
    const SETUP: &'static str;
    fn functions(&self) -> &Functions;
    /// The per-device credential work the flow does after making the key.
    fn credential_work(key: &DeviceKey, uuid: &DeviceUuid) -> Result<String, String>;
    const WORK: &'static str;
}

impl Bench for AwsWorld {
    const TITLE: &'static str = "AWS IoT Core";
    const BINARY: &'static str = "provision-lambda";
    const HOST: Host = Host::Lambda;
    const NODE: Node = Node {
        post_depth: "12",
        delete_depth: "13",
        post_50: "~1.3 s",
        second_post: "400",
        deployed: "116 MiB deployed deps",
        credential: "—",
    };
    const SETUP: &'static str =
        "through the Lambda Runtime API emulator; moto; balenaCloud emulator";
    fn functions(&self) -> &Functions {
        &self.functions
    }
    fn credential_work(key: &DeviceKey, uuid: &DeviceUuid) -> Result<String, String> {
        key.csr_pem(uuid)
    }
    const WORK: &'static str = "key + CSR";
}

impl Bench for AzureWorld {
    const TITLE: &'static str = "Azure IoT Hub";
    const BINARY: &'static str = "provision-azure";
    const HOST: Host = Host::Http {
        port_var: "FUNCTIONS_CUSTOMHANDLER_PORT",
        prefix: "/api",
    };
    const NODE: Node = Node {
        post_depth: "8",
        delete_depth: "8",
        post_50: "—",
        second_post: "500",
        deployed: "—",
        credential: "~430 ms CPU",
    };
    const SETUP: &'static str = "custom handler over HTTP; IoT Hub emulator; balenaCloud emulator";
    fn functions(&self) -> &Functions {
        &self.functions
    }
    fn credential_work(key: &DeviceKey, uuid: &DeviceUuid) -> Result<String, String> {
        // What the flow stores: the self-signed certificate IoT Hub registers by thumbprint.
        key.self_signed_pem(uuid, 365)
    }
    const WORK: &'static str = "key + self-signed cert";
}

impl Bench for GcpWorld {
    const TITLE: &'static str = "GCP / ClearBlade IoT Core";
    const BINARY: &'static str = "provision-cloudrun";
    const HOST: Host = Host::Http {
        port_var: "PORT",
        prefix: "",
    };
    const NODE: Node = Node {
        post_depth: "13",
        delete_depth: "13",
        post_50: "—",
        second_post: "500",
        deployed: "—",
        credential: "—",
    };
    const SETUP: &'static str =
        "Cloud Run server over HTTP; ClearBlade emulator; balenaCloud emulator";
    fn functions(&self) -> &Functions {
        &self.functions
    }
    fn credential_work(key: &DeviceKey, _uuid: &DeviceUuid) -> Result<String, String> {
        // What the flow registers: the public key as PEM.
        Ok(key.public_key_pem().pem)
    }
    const WORK: &'static str = "key + public PEM";
}

/// One line of a cloud's table.
struct Row {
    measure: String,
    ours: String,
    target: String,
    verdict: &'static str,
    node: String,
}

fn row(measure: impl Into<String>, ours: impl Into<String>) -> Row {
    Row {
        measure: measure.into(),
        ours: ours.into(),
        target: String::new(),
        verdict: "",
        node: String::new(),
    }
}

impl Row {
    fn target(mut self, target: impl Into<String>, ok: bool) -> Row {
        self.target = target.into();
        self.verdict = if ok { "ok" } else { "over" };
        self
    }
    fn node(mut self, node: impl Into<String>) -> Row {
        self.node = node.into();
        self
    }
}

fn print_table(title: &str, rows: &[Row]) {
    let mut out = String::new();
    let _ = writeln!(out, "\n== {title}");
    let w = rows
        .iter()
        .map(|r| r.measure.chars().count())
        .max()
        .unwrap_or(10)
        .max(7);
    let wo = rows
        .iter()
        .map(|r| r.ours.chars().count())
        .max()
        .unwrap_or(10)
        .max(4);
    let wt = rows
        .iter()
        .map(|r| r.target.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        out,
        "{:<w$}  {:<wo$}  {:<wt$}  {:<7} Node (published)",
        "measure", "ours", "target", "verdict"
    );
    for r in rows {
        let line = format!(
            "{:<w$}  {:<wo$}  {:<wt$}  {:<7} {}",
            r.measure, r.ours, r.target, r.verdict, r.node
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    print!("{out}");
}

/// The operations measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    New,
    Again,
    Rotate,
    Delete,
    /// A caller whose key balenaCloud does not know (a new key each run: never one the
    /// instance remembers as refused).
    Refused,
}

impl Op {
    const ALL: [Op; 5] = [Op::New, Op::Again, Op::Rotate, Op::Delete, Op::Refused];

    fn name(self) -> &'static str {
        match self {
            Op::New => "POST new",
            Op::Again => "POST already provisioned",
            Op::Rotate => "rotate",
            Op::Delete => "DELETE",
            Op::Refused => "POST refused (unknown key)",
        }
    }

    fn expected(self) -> (u16, &'static str) {
        match self {
            Op::New => (201, "created"),
            Op::Again => (200, "already-provisioned"),
            Op::Rotate => (200, "rotated"),
            Op::Delete => (200, "deleted"),
            Op::Refused => (401, ""),
        }
    }

    /// A device in the state the operation starts from.
    async fn prepare<S: Stack>(self, world: &S) -> anyhow::Result<Device> {
        let device = world.add_device().await;
        if !matches!(self, Op::New | Op::Refused) {
            let answer = world.call(post(&device)).await?;
            anyhow::ensure!(
                answer.status == 201,
                "preparing '{}': POST answered {}: {}",
                self.name(),
                answer.status,
                answer.raw_body
            );
        }
        Ok(device)
    }

    fn call<S: Stack>(self, world: &S, device: &Device) -> Call {
        match self {
            Op::New | Op::Again => post(device),
            Op::Rotate => {
                let mut body = Target::Device.body(&device.uuid);
                body["rotate"] = serde_json::json!(true);
                Call::post(body).bearer(&device.key)
            }
            Op::Delete => Call::delete(Target::Device.body(&device.uuid))
                .bearer(&world.secrets.operator_token),
            Op::Refused => Call::post(Target::Device.body(&device.uuid))
                .bearer(&format!("unknown-{}", uuid::Uuid::new_v4().simple())),
        }
    }
}

fn post(device: &Device) -> Call {
    Call::post(Target::Device.body(&device.uuid)).bearer(&device.key)
}

fn answered(answer: &Answer) -> String {
    if answer.status < 300 {
        format!("{} {}", answer.status, answer.status_text())
    } else {
        format!("{} {}", answer.status, answer.error_code())
    }
}

/// Benchmarks one cloud and prints its table; returns the unexpected outcomes.
async fn bench<S: Bench>(config: &Config) -> anyhow::Result<Vec<String>> {
    let (mut rows, mut process_rows, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    // Without proxies: the operations' plain wall times, cold starts, a CPU batch.
    let direct = direct::<S>(config, &mut process_rows, &mut failures).await?;
    // With the fault proxies: calls, their depth, and the wall times at 0 and +50 ms per call.
    let options = Options {
        faults: true,
        // As the real services are reached: every new connection a TLS handshake.
        tls: true,
        extra_env: vec![("RUST_LOG".into(), "info".into())],
        ..Options::default()
    };
    let world = S::start_with(options)
        .await
        .with_context(|| format!("starting the {} world", S::CLOUD))?;
    let measured = async {
        let notes = measure(&world, config, &direct, &mut rows, &mut failures).await?;
        // The CPU batch again, through the proxies keeping the function's connections open
        // (`measure` set it), as AWS's endpoint does and moto does not: the headline figure.
        let traffic = world
            .faults()
            .context("the world has no fault proxies")?
            .traffic
            .clone();
        let pid = function_pid(&world).await?;
        let mut kept = Vec::new();
        batch(
            &world,
            config,
            pid,
            Front::KeepAlive(&traffic),
            &mut kept,
            &mut failures,
        )
        .await?;
        // Beside the batch without proxies.
        let at = process_rows
            .iter()
            .position(|r: &Row| r.measure.starts_with("CPU per device"))
            .unwrap_or(process_rows.len());
        process_rows.splice(at..at, kept);
        anyhow::Ok(notes)
    }
    .await;
    world.stop().await;
    let notes = measured?;
    rows.extend(process_rows);
    sizes::<S>(config, &mut rows, &mut failures);
    credentials::<S>(config, &mut rows, &mut failures);
    let binary = paths::binary(S::BINARY)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    print_table(
        &format!("{}: {} ({binary}) {}", S::TITLE, S::BINARY, S::SETUP),
        &rows,
    );
    for note in notes {
        println!("note: {note}");
    }
    Ok(failures)
}

/// The operations through the fault proxies, against a running world with them.
/// Returns notes for under the table.
async fn measure<S: Bench>(
    world: &S,
    config: &Config,
    direct: &BTreeMap<&'static str, Duration>,
    rows: &mut Vec<Row>,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<String>> {
    let traffic = world
        .faults()
        .context("the world has no fault proxies")?
        .traffic
        .clone();
    // As the real services do, whatever the stand-in behind the proxy does (moto closes).
    traffic.set_keep_alive(true);

    // The first request of a process also fetches what it then caches (ClearBlade's registry
    // credentials): one POST first, so the operations below are a warm process's.
    let warm = world.add_device().await;
    let answer = world.call(post(&warm)).await?;
    if answer.status != 201 {
        failures.push(format!(
            "warm-up POST answered {}: {}",
            answer.status, answer.raw_body
        ));
    }

    let mut timelines = Vec::new();
    // What the proxies themselves add at 0 ms: the proxied wall time less the one without them.
    let mut overhead: Option<(Duration, &'static str, usize)> = None;
    let mut warm_new = None;
    for op in Op::ALL {
        let measured = operation(world, &traffic, op, config.runs, failures).await?;
        if op == Op::New {
            warm_new = measured.wall_median(Duration::ZERO);
        }
        rows.extend(measured.rows::<S>(op, direct.get(op.name()).copied()));
        let proxied = measured.wall_median(Duration::ZERO);
        if let (Some(proxied), Some(plain)) = (proxied, direct.get(op.name())) {
            let added = proxied.saturating_sub(*plain);
            let depth = measured
                .depth
                .get(&50)
                .and_then(|d| d.iter().max().copied())
                .unwrap_or(0);
            if overhead.is_none_or(|(most, _, _)| added > most) {
                overhead = Some((added, op.name(), depth));
            }
        }
        timelines.push((op, measured.timeline));
    }
    rows.extend(fresh_first_post(world, &traffic, config.runs, warm_new, failures).await?);
    traffic.clear();
    let mut notes = Vec::new();
    if let Some((added, op, depth)) = overhead
        && added > Duration::from_millis(20)
    {
        notes.push(format!(
            "the fault proxies themselves add up to {} to an operation at 0 ms ({op}, depth {depth}: its proxied wall time less the one \
             without proxies), and the +50 ms figures include it too; a stall of ~40 ms per upstream call is the mark of a relay that \
             writes a message in pieces without TCP_NODELAY (Nagle's algorithm against delayed ACKs)",
            ms(added)
        ));
    }

    if config.calls {
        for (op, timeline) in timelines {
            println!(
                "\n{} {}: upstream calls of one run with +50 ms per call (ms since the request)",
                S::CLOUD,
                op.name()
            );
            for e in timeline {
                let end = e.finished.map_or_else(
                    || "…".to_string(),
                    |f| format!("{:.0}", f.as_secs_f64() * 1e3),
                );
                println!(
                    "  {:>5.0} – {:>5}  {} {}",
                    e.started.as_secs_f64() * 1e3,
                    end,
                    e.status.map_or("-".into(), |s| s.to_string()),
                    e.label
                );
            }
        }
    }
    Ok(notes)
}

/// The process id of the world's (first) function process.
async fn function_pid<S: Bench>(world: &S) -> anyhow::Result<u32> {
    world
        .functions()
        .pids()
        .await
        .first()
        .copied()
        .context("no function process")
}

/// The first POST new of fresh processes (the world's function's environment, through the
/// proxies), each once ready: its upstream calls, their depth and its wall time at 0 and +50 ms
/// per call, against `warm`, the same POST of the warm process at 0 ms. What start-up did
/// before ready is not in the proxies' log: it is cleared once the process is ready.
async fn fresh_first_post<S: Bench>(
    world: &S,
    traffic: &Traffic,
    runs: usize,
    warm: Option<Duration>,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let env = environ(function_pid(world).await?)?;
    let binary = paths::binary(S::BINARY)?;
    let mut measured = Measured::default();
    for latency in LATENCIES {
        for _ in 0..runs {
            let device = world.add_device().await;
            let fresh = Fresh::start(&binary, &env, S::HOST).await?;
            let _ = settled(traffic).await;
            traffic.clear();
            traffic.set_latency(latency);
            let started = Instant::now();
            let answer = fresh.call(post(&device)).await;
            let wall = started.elapsed();
            let log = settled(traffic).await;
            traffic.set_latency(Duration::ZERO);
            measured.record(latency, &log, wall, opened(traffic, failures));
            fresh.stop().await;
            let answer = answer.context("the fresh process's first POST got no answer")?;
            if (answer.status, answer.status_text()) != (201, "created") {
                failures.push(format!(
                    "a fresh process's first POST answered {}: {}",
                    answer.status, answer.raw_body
                ));
            }
        }
    }
    let name = "POST new, first of a fresh process";
    let at = |map: &BTreeMap<u128, Vec<usize>>, latency: u128| {
        map.get(&latency).cloned().unwrap_or_default()
    };
    let calls: Vec<usize> = measured.calls.values().flatten().copied().collect();
    let (d0, d50) = (at(&measured.depth, 0), at(&measured.depth, 50));
    let deepest = d50.iter().copied().max().unwrap_or(0);
    let mut depth = range(&d50);
    if range(&d0) != depth {
        depth = format!("{depth} (at 0 ms: {})", range(&d0));
    }
    // Every run is a fresh process's first request: the connections its warm-up opened serve
    // it, and what it opens on top shows what the warm-up left out.
    let opened: Vec<String> = {
        let mut all: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for run in &measured.connections {
            for (u, n) in run {
                all.entry(u).or_default().push(*n);
            }
        }
        all.iter()
            .map(|(u, n)| format!("{u} {}", range(n)))
            .collect()
    };
    let mut rows = vec![
        row(format!("{name}: upstream calls"), range(&calls)),
        row(format!("{name}: sequential depth"), depth).target("≤ 3", deepest <= 3),
        row(
            format!("{name}: new TLS connections after start-up"),
            if opened.is_empty() {
                "none".to_string()
            } else {
                opened.join(", ")
            },
        ),
    ];
    for latency in LATENCIES {
        let Some(m) = measured.wall_median(latency) else {
            continue;
        };
        if latency.is_zero() {
            let mut r = row(format!("{name}: wall, 0 ms per call"), ms(m));
            if let Some(warm) = warm {
                r = r.target(
                    format!("≤ warm + 10 ms ({})", ms(warm + Duration::from_millis(10))),
                    m <= warm + Duration::from_millis(10),
                );
            }
            rows.push(r);
        } else {
            rows.push(row(
                format!("{name}: wall, +{} ms per call", latency.as_millis()),
                ms(m),
            ));
        }
    }
    Ok(rows)
}

#[derive(Default)]
struct Measured {
    /// Per latency: upstream calls, depth and wall time of each run.
    calls: BTreeMap<u128, Vec<usize>>,
    depth: BTreeMap<u128, Vec<usize>>,
    wall: BTreeMap<u128, Vec<Duration>>,
    answers: Vec<String>,
    /// The calls of the last run with latency.
    timeline: Vec<Exchange>,
    /// The connections the function opened to each upstream's proxy, per run in order.
    connections: Vec<BTreeMap<&'static str, usize>>,
}

impl Measured {
    /// The median wall time of the runs at `latency`.
    fn wall_median(&self, latency: Duration) -> Option<Duration> {
        self.wall.get(&latency.as_millis()).and_then(|w| median(w))
    }

    /// One run at `latency`: its upstream calls (`log`), their depth, its wall time and the
    /// connections it opened.
    fn record(
        &mut self,
        latency: Duration,
        log: &[Exchange],
        wall: Duration,
        connections: BTreeMap<&'static str, usize>,
    ) {
        let key = latency.as_millis();
        self.calls.entry(key).or_default().push(log.len());
        self.depth
            .entry(key)
            .or_default()
            .push(sequential_depth(log));
        self.wall.entry(key).or_default().push(wall);
        self.connections.push(connections);
    }

    /// New connections per upstream: the first run's, and the most any later run opened, with
    /// the later runs' total (a warm process reuses its connections: the target is none after
    /// the first).
    fn connections_row(&self, name: &str) -> Option<Row> {
        let (first, later) = self.connections.split_first()?;
        let upstreams: std::collections::BTreeSet<&str> = self
            .connections
            .iter()
            .flat_map(|c| c.keys().copied())
            .collect();
        let most_later = |u: &str| later.iter().filter_map(|c| c.get(u)).max().copied();
        let text: Vec<String> = upstreams
            .iter()
            .map(|u| match most_later(u) {
                Some(n) => format!(
                    "{u} {} then ≤ {n} ({} in {} later runs)",
                    first.get(u).unwrap_or(&0),
                    later.iter().filter_map(|c| c.get(u)).sum::<usize>(),
                    later.len()
                ),
                None => format!("{u} {}", first.get(u).unwrap_or(&0)),
            })
            .collect();
        let warm_opens_none = upstreams.iter().all(|u| most_later(u).unwrap_or(0) == 0);
        let text = if text.is_empty() {
            "none".to_string()
        } else {
            text.join(", ")
        };
        let r = row(
            format!("{name}: new TLS connections (first run, then later runs)"),
            text,
        );
        Some(match later.is_empty() {
            true => r,
            false => r.target("none after the first", warm_opens_none),
        })
    }

    fn rows<S: Bench>(&self, op: Op, direct: Option<Duration>) -> Vec<Row> {
        let name = op.name();
        let at = |map: &BTreeMap<u128, Vec<usize>>, latency: u128| {
            map.get(&latency).cloned().unwrap_or_default()
        };
        let mut rows = Vec::new();
        let mut answers = self.answers.clone();
        answers.dedup();
        let mut answer = row(format!("{name}: answer"), answers.join(" / "));
        if op == Op::Again {
            answer = answer.node(S::NODE.second_post);
        }
        rows.push(answer);
        let calls: Vec<usize> = self.calls.values().flatten().copied().collect();
        rows.push(row(format!("{name}: upstream calls"), range(&calls)));
        // The depth as the code is written shows best with latency: calls made at once then
        // overlap for certain; without it, a fast upstream may answer one before the next starts.
        let (d0, d50) = (at(&self.depth, 0), at(&self.depth, 50));
        let mut depth = range(&d50);
        if range(&d0) != depth {
            depth = format!("{depth} (at 0 ms: {})", range(&d0));
        }
        let deepest = d50.iter().copied().max().unwrap_or(0);
        let mut depth_row = row(format!("{name}: sequential depth"), depth);
        depth_row = match op {
            Op::New => depth_row
                .target("≤ 3", deepest <= 3)
                .node(S::NODE.post_depth),
            Op::Again => depth_row.target("≤ 2", deepest <= 2),
            Op::Delete => depth_row
                .target("≤ 3", deepest <= 3)
                .node(S::NODE.delete_depth),
            Op::Rotate => {
                let most = if S::CLOUD == Cloud::Aws { 5 } else { 4 };
                depth_row.target(format!("≤ {most}"), deepest <= most)
            }
            // The proof (whoami) and the device read beside it, at once, answer it.
            Op::Refused => depth_row.target("≤ 1", deepest <= 1),
        };
        rows.push(depth_row);
        rows.extend(self.connections_row(name));
        for latency in LATENCIES {
            let Some(m) = self.wall_median(latency) else {
                continue;
            };
            let label = if latency.is_zero() {
                format!("{name}: wall, 0 ms per call")
            } else {
                format!("{name}: wall, +{} ms per call", latency.as_millis())
            };
            let mut r = row(label, ms(m));
            if op == Op::New && !latency.is_zero() {
                r = r
                    .target("< 200 ms", m < Duration::from_millis(200))
                    .node(S::NODE.post_50);
            }
            rows.push(r);
        }
        if let Some(direct) = direct {
            rows.push(row(
                format!("{name}: wall, no proxies (cross-check)"),
                ms(direct),
            ));
        }
        rows
    }
}

/// "4", or "4–5" when runs differ.
fn range(values: &[usize]) -> String {
    match (values.iter().min(), values.iter().max()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "-".into(),
    }
}

async fn operation<S: Bench>(
    world: &S,
    traffic: &Traffic,
    op: Op,
    runs: usize,
    failures: &mut Vec<String>,
) -> anyhow::Result<Measured> {
    let mut measured = Measured::default();
    for latency in LATENCIES {
        for _ in 0..runs {
            let device = op.prepare(world).await?;
            traffic.set_latency(latency);
            traffic.clear();
            let started = Instant::now();
            let answer = world.call(op.call(world, &device)).await;
            let wall = started.elapsed();
            let log = settled(traffic).await;
            traffic.set_latency(Duration::ZERO);
            let answer = answer.with_context(|| format!("{} got no answer", op.name()))?;
            let (status, text) = op.expected();
            if answer.status != status || answer.status_text() != text {
                failures.push(format!(
                    "{} answered {} (expected {status} {text}): {}",
                    op.name(),
                    answer.status,
                    answer.raw_body
                ));
            }
            if log.is_empty() {
                failures.push(format!(
                    "{}: no upstream call went through the proxies",
                    op.name()
                ));
            }
            measured.record(latency, &log, wall, opened(traffic, failures));
            measured.answers.push(answered(&answer));
            if !latency.is_zero() {
                measured.timeline = log;
            }
        }
    }
    Ok(measured)
}

/// In a world without the fault proxies (the function talks to the emulators directly): the
/// wall time of each operation, median of `runs` (a cross-check of the proxies' own overhead),
/// then the cold starts and the CPU batch, whose figures the proxies would only slow down.
async fn direct<S: Bench>(
    config: &Config,
    rows: &mut Vec<Row>,
    failures: &mut Vec<String>,
) -> anyhow::Result<BTreeMap<&'static str, Duration>> {
    let options = Options {
        extra_env: vec![("RUST_LOG".into(), "info".into())],
        ..Options::default()
    };
    let world = S::start_with(options)
        .await
        .with_context(|| format!("starting the {} world without proxies", S::CLOUD))?;
    let measured = async {
        let warm = world.add_device().await;
        let answer = world.call(post(&warm)).await?;
        if answer.status != 201 {
            failures.push(format!(
                "warm-up POST (no proxies) answered {}: {}",
                answer.status, answer.raw_body
            ));
        }
        let mut medians = BTreeMap::new();
        for op in Op::ALL {
            let mut walls = Vec::new();
            for _ in 0..config.runs {
                let device = op.prepare(&world).await?;
                let started = Instant::now();
                let answer = world.call(op.call(&world, &device)).await?;
                walls.push(started.elapsed());
                let (status, text) = op.expected();
                if answer.status != status || answer.status_text() != text {
                    failures.push(format!(
                        "{} (no proxies) answered {} (expected {status} {text}): {}",
                        op.name(),
                        answer.status,
                        answer.raw_body
                    ));
                }
            }
            if let Some(m) = median(&walls) {
                medians.insert(op.name(), m);
            }
        }
        let pid = function_pid(&world).await?;
        cold_starts(&world, config, pid, rows, failures).await?;
        batch(&world, config, pid, Front::Direct, rows, failures).await?;
        anyhow::Ok(medians)
    }
    .await;
    world.stop().await;
    measured
}

/// The proxies' log once every call in it has finished (at most a second after the answer).
/// The connections the function opened to each upstream since the log was cleared. The
/// proxies are reached over TLS: each connection is a handshake, which the fronts count too.
fn opened(traffic: &Traffic, failures: &mut Vec<String>) -> BTreeMap<&'static str, usize> {
    let (connections, handshakes) = (traffic.connections(), traffic.handshakes());
    if connections != handshakes {
        failures.push(format!(
            "new connections {connections:?} are not the TLS handshakes {handshakes:?}"
        ));
    }
    connections
}

async fn settled(traffic: &Traffic) -> Vec<Exchange> {
    for _ in 0..200 {
        let log = traffic.log();
        if log.iter().all(|e| e.finished.is_some()) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    traffic.log()
}

/// Cold starts: fresh processes of the world's binary with the world's function's own
/// environment (read from /proc), on a port or runtime API of their own: spawn to ready (its
/// first answer, `GET /healthz`), of which start-up's warm-up (what the process logs), then its
/// first POST new, and its peak memory after it.
async fn cold_starts<S: Bench>(
    world: &S,
    config: &Config,
    pid: u32,
    rows: &mut Vec<Row>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let env = environ(pid)?;
    let binary = paths::binary(S::BINARY)?;
    let (mut ready, mut warm_up, mut first_post, mut peak) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..config.cold_runs {
        let device = world.add_device().await;
        let fresh = Fresh::start(&binary, &env, S::HOST).await?;
        ready.push(fresh.ready);
        match fresh.warm_up().await {
            Some(took) => warm_up.push(took),
            None => failures.push(format!(
                "cold start: no complete warm-up logged; the process's last lines:\n{}",
                fresh.tail()
            )),
        }
        let started = Instant::now();
        let answer = fresh.call(post(&device)).await;
        first_post.push(started.elapsed());
        let hwm = fresh.stop().await;
        let answer = answer?;
        if (answer.status, answer.status_text()) != (201, "created") {
            failures.push(format!(
                "cold start: the first POST answered {}: {}",
                answer.status, answer.raw_body
            ));
        }
        match hwm {
            Some(kib) => peak.push(kib),
            None => failures.push("cold start: could not read the process's VmHWM".into()),
        }
    }
    let host = match S::HOST {
        Host::Lambda => "runtime API",
        Host::Http { .. } => "HTTP",
    };
    if let (Some(m), Some(w)) = (median(&ready), median(&warm_up)) {
        let own = m.saturating_sub(w);
        rows.push(
            row(
                format!("cold start: spawn → ready (GET /healthz 200, {host})"),
                ms(m),
            )
            .node("module load 200–360 ms"),
        );
        rows.push(
            row(
                "cold start: of which warm-up (connecting to the upstreams)",
                ms(w),
            )
            .target("shown apart", true),
        );
        rows.push(
            row("cold start: spawn → ready, less the warm-up", ms(own))
                .target("< 30 ms", own < Duration::from_millis(30)),
        );
    }
    if let Some(m) = median(&first_post) {
        rows.push(row("cold start: ready → first POST new 201", ms(m)));
    }
    if let Some(m) = median_u64(&peak) {
        let single = row("peak RSS (VmHWM), process after one POST new", mib(m))
            .node("~78 MiB after one request");
        rows.push(match S::HOST {
            Host::Lambda => single.target("< 16 MiB", m < 16 * 1024),
            Host::Http { .. } => single,
        });
    }
    Ok(())
}

/// A fresh process of the function, spawned with `env` on a port or runtime API of its own,
/// and ready: it has answered `GET /healthz` (through the runtime API for Lambda), which it
/// does only once start-up, its warm-up included, is over.
struct Fresh {
    process: Process,
    logs: LogBook,
    serving: Serving,
    /// Spawn to ready.
    ready: Duration,
}

enum Serving {
    Lambda(LambdaRuntimeEmulator),
    Http { port: u16, prefix: &'static str },
}

impl Fresh {
    async fn start(binary: &Path, env: &[(String, String)], host: Host) -> anyhow::Result<Fresh> {
        let logs = LogBook::default();
        let healthz = Call::new("GET", "/healthz");
        let (process, serving, ready, answer) = match host {
            Host::Lambda => {
                let runtime = LambdaRuntimeEmulator::start().await?;
                let env = with(env, "AWS_LAMBDA_RUNTIME_API", &runtime.runtime_api());
                let (invoker, event) = (runtime.clone(), healthz.function_url_event());
                let invocation =
                    tokio::spawn(
                        async move { invoker.invoke(event, Duration::from_secs(30)).await },
                    );
                tokio::task::yield_now().await;
                let started = Instant::now();
                let process = spawn(binary, &env, &logs)?;
                let invoked = invocation.await?;
                let ready = started.elapsed();
                let answer = invoked.and_then(|i| lambda_answer(i.outcome));
                (process, Serving::Lambda(runtime), ready, answer)
            }
            Host::Http { port_var, prefix } => {
                let port = free_port()?;
                let env = with(env, port_var, &port.to_string());
                let request = raw_request(&healthz, prefix);
                let started = Instant::now();
                let process = spawn(binary, &env, &logs)?;
                let exchanged = tokio::task::spawn_blocking(move || {
                    exchange_when_listening(port, &request, Duration::from_secs(20))
                })
                .await?;
                let ready = started.elapsed();
                let answer = exchanged.map(raw_answer);
                (process, Serving::Http { port, prefix }, ready, answer)
            }
        };
        let fresh = Fresh {
            process,
            logs,
            serving,
            ready,
        };
        match answer {
            Ok(answer) if answer.status == 200 => Ok(fresh),
            Ok(answer) => {
                let tail = fresh.tail();
                fresh.stop().await;
                anyhow::bail!(
                    "the fresh process answered GET /healthz {}: {}; its last lines:\n{tail}",
                    answer.status,
                    answer.raw_body
                )
            }
            Err(e) => {
                let tail = fresh.tail();
                fresh.stop().await;
                Err(e.context(format!(
                    "the fresh process did not answer GET /healthz; its last lines:\n{tail}"
                )))
            }
        }
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        match &self.serving {
            Serving::Lambda(runtime) => {
                let invoked = runtime
                    .invoke(call.function_url_event(), Duration::from_secs(30))
                    .await?;
                lambda_answer(invoked.outcome)
            }
            Serving::Http { port, prefix } => {
                let (port, request) = (*port, raw_request(&call, prefix));
                tokio::task::spawn_blocking(move || {
                    exchange_when_listening(port, &request, Duration::from_secs(30))
                })
                .await?
                .map(raw_answer)
            }
        }
    }

    /// How long start-up's warm-up took, as the process logged it (`warmed up in N ms`);
    /// `None` when it logged none within two seconds of being ready (the line is written
    /// before the process serves, but read from its output by a task of this one), or an
    /// incomplete one.
    async fn warm_up(&self) -> Option<Duration> {
        for _ in 0..200 {
            let logged = self.logs.lines().iter().find_map(|line| {
                let rest = line.split("warmed up in ").nth(1)?;
                let ms: u64 = rest.split(' ').next()?.parse().ok()?;
                Some(Duration::from_millis(ms))
            });
            if logged.is_some() {
                return logged;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    fn tail(&self) -> String {
        let lines = self.logs.lines();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Stops the process; gives its peak resident memory.
    async fn stop(self) -> Option<u64> {
        let hwm = self.process.child.id().and_then(peak_rss_kib);
        self.process.stop().await;
        if let Serving::Lambda(runtime) = self.serving {
            runtime.shutdown().await;
        }
        hwm
    }
}

fn lambda_answer(outcome: InvocationOutcome) -> anyhow::Result<Answer> {
    match outcome {
        InvocationOutcome::Response(value) => Answer::from_lambda_response(&value),
        InvocationOutcome::Error(error) => {
            anyhow::bail!("the Lambda process reported an invocation error: {error}")
        }
    }
}

fn raw_answer((status, headers, raw_body): RawAnswer) -> Answer {
    let body = serde_json::from_str(&raw_body).unwrap_or(serde_json::Value::Null);
    Answer {
        status,
        headers,
        body,
        raw_body,
    }
}

fn spawn(binary: &Path, env: &[(String, String)], logs: &LogBook) -> anyhow::Result<Process> {
    let mut command = tokio::process::Command::new(binary);
    command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    Process::spawn("cold", command, logs)
}

fn with(env: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = env.iter().filter(|(k, _)| k != name).cloned().collect();
    env.push((name.to_string(), value.to_string()));
    env
}

/// A whole HTTP/1.1 request for `call`, closing the connection after the answer.
fn raw_request(call: &Call, prefix: &str) -> Vec<u8> {
    let mut target = format!("{prefix}{}", call.path);
    if !call.query.is_empty() {
        target = format!("{target}?{}", call.query);
    }
    let body = call.body.clone().unwrap_or_default();
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: {}\r\n",
        call.method,
        body.len()
    );
    for (name, value) in &call.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

type RawAnswer = (u16, BTreeMap<String, String>, String);

/// Connects as soon as the port listens (trying every 0.2 ms), sends `request` and reads the
/// whole answer.
fn exchange_when_listening(
    port: u16,
    request: &[u8],
    limit: Duration,
) -> anyhow::Result<RawAnswer> {
    let deadline = Instant::now() + limit;
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e)
                if Instant::now() < deadline
                    && e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => anyhow::bail!("nothing listened on port {port}: {e}"),
        }
    };
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete answer head")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(raw.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// What stands between the function and the emulators in a CPU batch.
#[derive(Clone, Copy)]
enum Front<'a> {
    /// Nothing: the function talks to the emulators, and moto answers every request
    /// `Connection: close`, so each AWS call opens a new connection.
    Direct,
    /// The world's fault proxies, keeping the function's connections open whatever the
    /// emulator behind does (as the real services do), at 0 ms added latency.
    KeepAlive(&'a Traffic),
}

impl Front<'_> {
    fn name(self) -> &'static str {
        match self {
            Front::Direct => {
                "direct to the emulators (AWS's, moto, closes every connection: a new one per call)"
            }
            Front::KeepAlive(_) => {
                "through keep-alive proxies (connections kept, as the real services do)"
            }
        }
    }
}

/// The CPU time per device of a batch of POSTs for new devices, through the world's (warm)
/// function process, and (`Front::Direct`) that process's peak resident memory over its life.
async fn batch<S: Bench>(
    world: &S,
    config: &Config,
    pid: u32,
    front: Front<'_>,
    rows: &mut Vec<Row>,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    let hz = clock_ticks_per_second();
    let mut devices: Vec<Device> = Vec::new();
    for _ in 0..config.batch {
        devices.push(world.add_device().await);
    }
    if let Front::KeepAlive(traffic) = front {
        traffic.set_keep_alive(true);
        traffic.set_latency(Duration::ZERO);
        let _ = settled(traffic).await;
        traffic.clear();
    }
    let before = cpu_ticks(pid)?;
    let switches_before = context_switches(pid);
    let started = Instant::now();
    let answers: Vec<anyhow::Result<Answer>> = futures::stream::iter(devices.iter())
        .map(|d| world.call(post(d)))
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect()
        .await;
    let wall = started.elapsed();
    let after = cpu_ticks(pid)?;
    let switches = context_switches(pid)
        .zip(switches_before)
        .map(|(a, b)| a - b);
    let created = answers
        .iter()
        .filter(|a| {
            a.as_ref()
                .is_ok_and(|a| a.status == 201 && a.status_text() == "created")
        })
        .count();
    if created != devices.len() {
        let odd: Vec<String> = answers
            .iter()
            .filter_map(|a| match a {
                Ok(a) if a.status == 201 => None,
                Ok(a) => Some(answered(a)),
                Err(e) => Some(format!("{e:#}")),
            })
            .take(3)
            .collect();
        failures.push(format!(
            "batch: {created} of {} POSTs answered 201 created ({odd:?})",
            devices.len()
        ));
    }
    let cpu = Duration::from_secs_f64((after - before) as f64 / hz as f64);
    let per_device = cpu / devices.len().max(1) as u32;
    // Through the proxies, the connections the function opened during the batch: the proof
    // that they were kept (a pool of at most one per request in flight).
    let opened = match front {
        Front::Direct => String::new(),
        Front::KeepAlive(traffic) => {
            let opened = traffic.connections();
            traffic.clear();
            let list = opened
                .iter()
                .map(|(upstream, n)| format!("{upstream} {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "; new connections: {}",
                if list.is_empty() { "none" } else { &list }
            )
        }
    };
    rows.push(row(
        format!(
            "CPU per device, batch of {} POST new (utime+stime), {}",
            devices.len(),
            front.name()
        ),
        format!(
            "{} ({} ±{} in all, {:.1} s wall; {} context switches per device{opened})",
            ms(per_device),
            ms(cpu),
            ms(Duration::from_secs_f64(1.0 / hz as f64)),
            wall.as_secs_f64(),
            switches.map_or_else(
                || "?".to_string(),
                |n| format!("{:.0}", n as f64 / devices.len().max(1) as f64)
            ),
        ),
    ));
    if let Front::KeepAlive(_) = front {
        return Ok(());
    }
    match peak_rss_kib(pid) {
        Some(kib) => rows.push(row(
            "peak RSS (VmHWM), warm process after the batch",
            mib(kib),
        )),
        None => failures.push("batch: could not read the process's VmHWM".into()),
    }
    Ok(())
}

/// Sizes of the function's binary (and for Lambda, of its deployment zip).
fn sizes<S: Bench>(config: &Config, rows: &mut Vec<Row>, failures: &mut Vec<String>) {
    let release = config.release_dir.join(S::BINARY);
    let (path, release_build) = if release.is_file() {
        (release, true)
    } else {
        match paths::binary(S::BINARY) {
            Ok(path) => (path, false),
            Err(e) => {
                failures.push(format!("size: {e:#}"));
                return;
            }
        }
    };
    let note = if release_build {
        " (release)"
    } else {
        " (debug build: no release build found)"
    };
    match std::fs::metadata(&path) {
        Ok(meta) => rows.push(row(format!("binary size{note}"), mib(meta.len() / 1024))),
        Err(e) => failures.push(format!("size of {}: {e}", path.display())),
    }
    if matches!(S::HOST, Host::Lambda) {
        match lambda_zip_size(&path) {
            Ok(bytes) => {
                let r = row(
                    format!("Lambda zip (bootstrap, deflate){note}"),
                    mib(bytes / 1024),
                )
                .node(S::NODE.deployed);
                rows.push(if release_build {
                    r.target("< 8 MiB", bytes < 8 * 1024 * 1024)
                } else {
                    r
                });
            }
            Err(e) => failures.push(format!("Lambda zip: {e:#}")),
        }
    }
}

/// Zips the binary as `bootstrap` (mode 755, deflated, as SAM's provided.al2023 layout and
/// cargo-lambda make it) into a temporary directory with Python's zipfile; the zip's size.
fn lambda_zip_size(binary: &Path) -> anyhow::Result<u64> {
    let dir = std::env::temp_dir().join(format!("provision-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let zip = dir.join("bootstrap.zip");
    const SCRIPT: &str = "import sys, zipfile
info = zipfile.ZipInfo('bootstrap', date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = 0o100755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(sys.argv[1], 'rb') as f, zipfile.ZipFile(sys.argv[2], 'w') as z:
    z.writestr(info, f.read())";
    let python = ["python3", "python"].into_iter().find(|p| {
        std::process::Command::new(p)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let python = python
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::venv().join("bin/python"));
    let status = std::process::Command::new(python)
        .args(["-c", SCRIPT])
        .arg(binary)
        .arg(&zip)
        .status()?;
    anyhow::ensure!(status.success(), "python zipfile failed");
    let size = std::fs::metadata(&zip)?.len();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(size)
}

/// Credential generation per device: the key alone, and the key with the per-device work the
/// flow does with it.
fn credentials<S: Bench>(config: &Config, rows: &mut Vec<Row>, failures: &mut Vec<String>) {
    let uuid = DeviceUuid::parse(&uuid::Uuid::new_v4().simple().to_string()).expect("a UUID");
    for (algorithm, name, runs) in [
        (
            KeyAlgorithm::EcP256,
            "EC P-256",
            if config.smoke { 5 } else { 200 },
        ),
        (
            KeyAlgorithm::Rsa2048,
            "RSA-2048",
            if config.smoke { 1 } else { 10 },
        ),
    ] {
        let (mut keys, mut whole) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            let key = match DeviceKey::generate_with(algorithm) {
                Ok(key) => key,
                Err(e) => {
                    failures.push(format!("{name} key: {e}"));
                    return;
                }
            };
            keys.push(started.elapsed());
            match S::credential_work(&key, &uuid) {
                Ok(pem) if !pem.is_empty() => {}
                Ok(_) => failures.push(format!("{name}: {} made nothing", S::WORK)),
                Err(e) => failures.push(format!("{name}: {}: {e}", S::WORK)),
            }
            let _ = provision_core::codec::base64_encode(key.private_pem().expose().as_bytes());
            whole.push(started.elapsed());
        }
        let (Some(key), Some(all)) = (median(&keys), median(&whole)) else {
            continue;
        };
        let key_row = row(
            format!("credential: {name} key generation (median of {runs})"),
            ms(key),
        );
        rows.push(if algorithm == KeyAlgorithm::EcP256 {
            key_row.target("< 1 ms", key < Duration::from_millis(1))
        } else {
            key_row
        });
        let mut all_row = row(
            format!("credential: {name} {} per device", S::WORK),
            ms(all),
        );
        if algorithm == KeyAlgorithm::Rsa2048 {
            all_row = all_row.node(S::NODE.credential);
        }
        rows.push(all_row);
    }
}

// ---- /proc readings

/// A process's environment.
fn environ(pid: u32) -> anyhow::Result<Vec<(String, String)>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("reading /proc/{pid}/environ"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let text = String::from_utf8_lossy(e);
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// VmHWM of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .context("unreadable /proc/<pid>/stat")
    };
    Ok(field(14)? + field(15)?)
}

/// Context switches (voluntary and not) of all a process's threads: each is the process put to
/// sleep or set aside and woken again.
fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

// ---- figures

fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

fn median_u64(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    match ms {
        m if m < 1.0 => format!("{m:.3} ms"),
        m if m < 10.0 => format!("{m:.2} ms"),
        m if m < 100.0 => format!("{m:.1} ms"),
        m if m < 10_000.0 => format!("{m:.0} ms"),
        m => format!("{:.1} s", m / 1e3),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}
