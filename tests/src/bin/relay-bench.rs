//! `relay-bench`: measures `cloud-relay` (issue 14): QoS 1 throughput from the local broker to
//! the cloud's MQTT stand-in, the relay's peak memory and binary size, and what a cloud outage
//! at a steady rate costs (loss, duplicates, time to drain). See `HELP`.

use std::time::{Duration, Instant};

use provision_core::Cloud;
use provision_testkit::device::{Relay, delivered_variables, delivery, payload};
use provision_testkit::device_chain::{Chain, ChainPorts};
use provision_testkit::events::Call;

const HELP: &str = "relay-bench: measure cloud-relay against the local chain

The chain is the AWS one: the balenaCloud emulator, provision-cloudrun serving the AWS registry
(moto), the AWS IoT MQTT stand-in (client certificates checked against moto, the project's
device policy enforced), the real mosquitto as the local broker. The relay provisions its
device with the device's key, is restarted with the variables, then:

  * throughput: --messages QoS 1 messages published to the local broker as fast as a producer
    can; messages per second from the first publish to the last arrival at the stand-in;
  * outage: the stand-in down for --outage-seconds while a producer publishes at --rate per
    second; then up: messages lost (must be 0), duplicates, and the time to drain the queue;
  * the relay's peak RSS (VmHWM) over the whole run, and its binary size.

Targets (issue 14, this machine): >= 5,000 messages/s, peak RSS < 8 MiB, no loss across a 30 s
outage at 5,000/s.

Usage: relay-bench [options]
  --smoke              tiny figures, to check the harness (1,000 messages, a 2 s outage at 500/s);
                       judges only that nothing is lost
  --messages N         throughput messages (default 50000)
  --outage-seconds S   outage length (default 30)
  --rate R             messages per second during the outage (default 5000)
  --relay PATH         the cloud-relay binary (default: CLOUD_RELAY_BIN, else the `device`
                       profile's build beside this profile's, else this profile's;
                       scripts/bench relay passes the static musl build the block deploys)
  --relay-runner CMD   run the relay under CMD, a command line given the binary as its last
                       argument (the same as CLOUD_RELAY_RUNNER): a build for another CPU under
                       qemu-user, e.g. `--relay-runner qemu-arm` (scripts/bench deployed); the
                       process measured is then the emulator, so its RSS is qemu's and its
                       throughput is emulated, neither a figure of the device
  --node-relay DIR     measure the published Node cloud-relay instead (DIR holds its index.js,
                       lib/ and node_modules; never part of this repository): its AWS path, with
                       mosquitto on 127.0.0.1:1883 and the stand-in on 8883, the ports it cannot
                       be told otherwise, and CLOUD_CONSUMER_TOPIC set to the topic the device
                       policy allows (its default, sensors, is refused)
  -h, --help           this text
";

/// How long without a new arrival ends the wait after an outage: longer than the relay's
/// longest reconnection backoff (60 s), so a relay still waiting to retry is not counted lossy.
const OUTAGE_QUIET: Duration = Duration::from_secs(90);

struct Args {
    /// Only the harness is checked: no target but "nothing lost" is judged.
    smoke: bool,
    /// Measure the published Node relay (its AWS path) from this directory instead.
    node_relay: Option<std::path::PathBuf>,
    messages: u64,
    outage: Duration,
    rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        smoke: false,
        node_relay: None,
        messages: 50_000,
        outage: Duration::from_secs(30),
        rate: 5_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value"))
                .and_then(|v| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{name}: {v:?} is not a number"))
                })
        };
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--smoke" => {
                args.smoke = true;
                args.messages = 1_000;
                args.outage = Duration::from_secs(2);
                args.rate = 500;
            }
            "--messages" => args.messages = value("--messages")?,
            "--outage-seconds" => args.outage = Duration::from_secs(value("--outage-seconds")?),
            "--rate" => args.rate = value("--rate")?.max(1),
            "--node-relay" => {
                args.node_relay = Some(it.next().ok_or("--node-relay needs a directory")?.into());
            }
            "--relay" => {
                let path = it.next().ok_or("--relay needs a path")?;
                // Before any thread starts: the harness reads it when it spawns the relay.
                unsafe { std::env::set_var("CLOUD_RELAY_BIN", path) };
            }
            "--relay-runner" => {
                let runner = it.next().ok_or("--relay-runner needs a command")?;
                // Before any thread starts, as for --relay.
                unsafe { std::env::set_var("CLOUD_RELAY_RUNNER", runner) };
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::var_os("CLOUD_RELAY_BIN").is_none()
        && let Ok(exe) = std::env::current_exe()
        && let Some(release) = exe
            .parent()
            .and_then(|d| d.parent())
            .map(|t| t.join("device").join("cloud-relay"))
        && release.is_file()
    {
        unsafe { std::env::set_var("CLOUD_RELAY_BIN", release) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(args)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Publishes `seqs` to the local broker at QoS 1, `per_tick` messages every 10 ms (0: as fast
/// as the broker acknowledges), returning when every one is acknowledged.
async fn publish(port: u16, seqs: std::ops::Range<u64>, per_second: u64) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(format!("bench-producer-{}", seqs.start), "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut events) = AsyncClient::new(options, 2048);
    let total = seqs.end - seqs.start;
    let sender = tokio::spawn(async move {
        let started = Instant::now();
        for (n, seq) in seqs.enumerate() {
            if per_second > 0 {
                let due = started + Duration::from_secs_f64(n as f64 / per_second as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            client
                .publish("sensors", QoS::AtLeastOnce, false, payload(seq))
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        match tokio::time::timeout(Duration::from_secs(120), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("the producer lost the broker: {e}"),
            Err(_) => anyhow::bail!("the broker acknowledged {acked} of {total} in 120 s"),
        }
    }
    let _ = sender.await??.disconnect().await;
    Ok(())
}

/// Waits until every message of the range has arrived at the stand-in, or none has arrived for
/// `quiet` (a relay that loses messages); returns when the last one came and the report.
async fn settle(
    chain: &Chain,
    range: std::ops::Range<u64>,
    quiet: Duration,
) -> (Instant, provision_testkit::device::Delivery) {
    let (mut seen, mut last) = (0, Instant::now());
    loop {
        let received = chain.stand_in.received();
        let seqs: Vec<u64> = received
            .iter()
            .filter_map(|r| provision_testkit::device::seq_of(&r.payload))
            .collect();
        let report = delivery(&seqs, range.clone());
        if received.len() != seen {
            seen = received.len();
            last = Instant::now();
        }
        if report.missing.is_empty() || last.elapsed() > quiet {
            return (last, report);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What is measured: our relay, or the published Node one.
enum Subject {
    Ours(Relay),
    Node(provision_testkit::process::Process),
}

impl Subject {
    fn pid(&self) -> Option<u32> {
        match self {
            Subject::Ours(relay) => relay.pid(),
            Subject::Node(process) => process.child.id(),
        }
    }

    async fn stop(self) {
        match self {
            Subject::Ours(relay) => relay.stop().await,
            Subject::Node(process) => process.stop().await,
        }
    }
}

/// The published Node relay's AWS path, provisioned by our function (the Node block's own
/// provisioning call has no credential), connected to the stand-in.
async fn start_node(chain: &Chain, dir: &std::path::Path) -> anyhow::Result<Subject> {
    use base64::Engine as _;
    let answer = chain
        .call(
            Call::post(
                serde_json::json!({"uuid": chain.device.uuid, "balena_service": "cloud-relay"}),
            )
            .bearer(&chain.device.key),
        )
        .await?;
    anyhow::ensure!(answer.status == 201, "provisioning: {}", answer.raw_body);
    let vars = delivered_variables(&chain.fleet().balena, &chain.device).await;
    let mut command = tokio::process::Command::new("node");
    command
        .arg(dir.join("index.js"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RESIN_DEVICE_UUID", &chain.device.uuid)
        .env("AWS_DATA_ENDPOINT", "127.0.0.1")
        .env(
            "AWS_CERT",
            vars.get("AWS_CERT").cloned().unwrap_or_default(),
        )
        .env(
            "AWS_PRIVATE_KEY",
            vars.get("AWS_PRIVATE_KEY").cloned().unwrap_or_default(),
        )
        .env(
            "AWS_ROOT_CA",
            base64::engine::general_purpose::STANDARD.encode(chain.stand_in.ca_pem()),
        )
        .env(
            "CLOUD_CONSUMER_TOPIC",
            format!("balena/{}/sensors", chain.device.uuid),
        );
    let process =
        provision_testkit::process::Process::spawn("node-cloud-relay", command, &chain.logs)?;
    chain
        .stand_in
        .wait_for_connections(1, Duration::from_secs(60))
        .await?;
    // Ready once it says it is subscribed locally and connected to the cloud (before that,
    // the AWS SDK queues publishes offline and drains them at 4 per second).
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = |what: &str| {
        chain
            .logs
            .lines()
            .iter()
            .any(|l| l.starts_with("[node-cloud-relay]") && l.contains(what))
    };
    while !(said("Subscribed") && said("Connected to IoT Core messaging")) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the Node relay did not get ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // aws-iot-device-sdk calls a connection stable after minimumConnectionTimeMs (20 s); until
    // then it queues publishes offline and drains them at one per drainTimeMs (250 ms). Measure
    // it at its best: once stable.
    tokio::time::sleep(Duration::from_secs(25)).await;
    Ok(Subject::Node(process))
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let (chain, subject, name) = match &args.node_relay {
        Some(dir) => {
            let ports = ChainPorts {
                broker: Some(1883),
                stand_in: Some(8883),
            };
            let chain = Chain::start_with(Cloud::Aws, ports).await?;
            let subject = start_node(&chain, dir).await?;
            (
                chain,
                subject,
                "published Node cloud-relay (AWS path)".to_string(),
            )
        }
        None => {
            let binary = provision_testkit::paths::binary("cloud-relay")?;
            let chain = Chain::start(Cloud::Aws).await?;
            let relay: Relay = chain.provisioned_relay(&[]).await?;
            let runner = provision_testkit::paths::runner("cloud-relay")
                .map(|r| format!(" under `{r}` (figures of the emulator)"))
                .unwrap_or_default();
            (
                chain,
                Subject::Ours(relay),
                format!("cloud-relay {}{runner}", binary.display()),
            )
        }
    };
    let pid = subject
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the relay has no pid"))?;
    let mut ok = true;
    let smoke = args.smoke;
    let mut row = |what: &str, figure: String, target: &str, met: Option<bool>| {
        // A smoke run judges only loss (its rows say "lost").
        let met = met.filter(|_| !smoke || what.contains("lost"));
        let verdict = match met {
            Some(true) => "ok",
            Some(false) => {
                ok = false;
                "OVER"
            }
            None => "",
        };
        println!("  {what:<52} {figure:>16}  {target:<14} {verdict}");
    };

    println!("{name} (AWS chain: TLS client certificate, the device policy enforced)");
    let idle_rss = peak_rss_kib(pid);
    // Throughput.
    let n = args.messages;
    let started = Instant::now();
    let port = chain.broker.port;
    let producer = tokio::spawn(async move { publish(port, 0..n, 0).await });
    let (last, report) = settle(&chain, 0..n, Duration::from_secs(10)).await;
    producer.await??;
    let arrived = n - report.missing.len() as u64;
    let rate = arrived as f64 / last.duration_since(started).as_secs_f64();
    row(
        &format!("throughput, {n} messages, broker to cloud"),
        format!("{rate:.0} msg/s"),
        ">= 5000",
        Some(rate >= 5000.0),
    );
    row(
        "throughput run: messages lost",
        report.missing.len().to_string(),
        "0",
        Some(report.missing.is_empty()),
    );
    let throughput_rss = peak_rss_kib(pid);

    // Outage at a steady rate.
    let before = chain.stand_in.received().len();
    let count = args.rate * args.outage.as_secs();
    let (first, end) = (n, n + count);
    chain.stand_in.go_down().await;
    let went_down = Instant::now();
    publish(chain.broker.port, first..end, args.rate).await?;
    let outage = went_down.elapsed();
    chain.stand_in.come_up().await?;
    let back = Instant::now();
    let (last, _) = settle(&chain, first..end, OUTAGE_QUIET).await;
    let received = chain.stand_in.received();
    let seqs: Vec<u64> = received[before..]
        .iter()
        .filter_map(|r| provision_testkit::device::seq_of(&r.payload))
        .collect();
    let report = delivery(&seqs, first..end);
    row(
        &format!(
            "outage {:.0} s at {}/s: messages lost of {count}",
            outage.as_secs_f64(),
            args.rate
        ),
        report.missing.len().to_string(),
        "0",
        Some(report.missing.is_empty()),
    );
    row(
        "outage: duplicates (QoS 1 at-least-once)",
        report.duplicates.to_string(),
        "",
        None,
    );
    row(
        "outage: time to drain once the cloud is back",
        format!("{:.2} s", last.duration_since(back).as_secs_f64()),
        "",
        None,
    );

    for (phase, kib) in [
        ("connected, idle", idle_rss),
        ("after the throughput run", throughput_rss),
    ] {
        if let Some(kib) = kib {
            row(
                &format!("peak RSS (VmHWM), {phase}"),
                format!("{:.2} MiB", kib as f64 / 1024.0),
                "",
                None,
            );
        }
    }
    match peak_rss_kib(pid) {
        Some(kib) => row(
            "peak RSS (VmHWM) over the whole run",
            format!("{:.2} MiB", kib as f64 / 1024.0),
            "< 8 MiB",
            Some(kib < 8 * 1024),
        ),
        None => row(
            "peak RSS over the whole run: the process had exited",
            "-".into(),
            "< 8 MiB",
            Some(false),
        ),
    }
    if let Subject::Ours(_) = &subject {
        let binary = provision_testkit::paths::binary("cloud-relay")?;
        let size = std::fs::metadata(&binary)?.len();
        row(
            "binary size",
            format!("{:.2} MiB", size as f64 / (1024.0 * 1024.0)),
            "",
            None,
        );
    }
    subject.stop().await;
    chain.stop().await;
    Ok(ok)
}
