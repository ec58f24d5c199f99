//! `relay-bench`: measures `cloud-relay` (issue 14): QoS 1 throughput from the local broker to
//! the cloud's MQTT stand-in, the relay's peak memory and binary size, and what a cloud outage
//! at a steady rate costs (loss, duplicates, time to drain). See `HELP`.

use std::time::{Duration, Instant};

use provision_testkit::device::{Relay, delivery, payload};
use provision_testkit::device_chain::{Chain, ChainCloud};

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
                       profile's build beside this profile's, else this profile's)
  -h, --help           this text
";

struct Args {
    /// Only the harness is checked: no target but "nothing lost" is judged.
    smoke: bool,
    messages: u64,
    outage: Duration,
    rate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        smoke: false,
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
            "--relay" => {
                let path = it.next().ok_or("--relay needs a path")?;
                // Before any thread starts: the harness reads it when it spawns the relay.
                unsafe { std::env::set_var("CLOUD_RELAY_BIN", path) };
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

/// Waits until `count` messages (first arrivals) from the range are at the stand-in.
async fn wait_all(
    chain: &Chain,
    range: std::ops::Range<u64>,
    limit: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        let received = chain.stand_in.received();
        let seqs: Vec<u64> = received
            .iter()
            .filter_map(|r| provision_testkit::device::seq_of(&r.payload))
            .collect();
        if delivery(&seqs, range.clone()).missing.is_empty() {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not every message arrived within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let binary = provision_testkit::paths::binary("cloud-relay")?;
    println!("relay: {}", binary.display());
    let chain = Chain::start(ChainCloud::Aws).await?;
    let relay: Relay = chain.provisioned_relay(&[]).await?;
    let pid = relay
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

    println!("cloud-relay (AWS chain, QoS 1 both sides, TLS to the stand-in)");
    let idle_rss = peak_rss_kib(pid);
    // Throughput.
    let n = args.messages;
    let started = Instant::now();
    let port = chain.broker.port;
    let producer = tokio::spawn(async move { publish(port, 0..n, 0).await });
    let done = wait_all(&chain, 0..n, Duration::from_secs(600)).await?;
    producer.await??;
    let rate = n as f64 / done.duration_since(started).as_secs_f64();
    row(
        &format!("throughput, {n} messages, broker to cloud"),
        format!("{rate:.0} msg/s"),
        ">= 5000",
        Some(rate >= 5000.0),
    );

    let throughput_rss = peak_rss_kib(pid);

    // Outage at a steady rate.
    let before = chain.stand_in.received().len();
    let count = args.rate * args.outage.as_secs();
    let (first, last) = (n, n + count);
    chain.stand_in.go_down().await;
    let went_down = Instant::now();
    publish(chain.broker.port, first..last, args.rate).await?;
    let outage = went_down.elapsed();
    chain.stand_in.come_up().await?;
    let back = Instant::now();
    let drained = wait_all(&chain, first..last, Duration::from_secs(600)).await;
    let received = chain.stand_in.received();
    let seqs: Vec<u64> = received[before..]
        .iter()
        .filter_map(|r| provision_testkit::device::seq_of(&r.payload))
        .collect();
    let report = delivery(&seqs, first..last);
    row(
        &format!(
            "outage {:.0} s at {}/s: messages lost of {count}",
            outage.as_secs_f64(),
            args.rate
        ),
        report.missing.len().to_string(),
        "0",
        Some(report.missing.is_empty() && drained.is_ok()),
    );
    row(
        "outage: duplicates (QoS 1 at-least-once)",
        report.duplicates.to_string(),
        "",
        None,
    );
    if let Ok(at) = drained {
        row(
            "outage: time to drain the queue once the cloud is back",
            format!("{:.2} s", at.duration_since(back).as_secs_f64()),
            "",
            None,
        );
    }

    for (phase, kib) in [
        ("connected, idle", idle_rss),
        ("after the throughput run", throughput_rss),
    ] {
        if let Some(kib) = kib {
            row(
                &format!("relay peak RSS (VmHWM), {phase}"),
                format!("{:.2} MiB", kib as f64 / 1024.0),
                "",
                None,
            );
        }
    }
    match peak_rss_kib(pid) {
        Some(kib) => row(
            "relay peak RSS (VmHWM) over the whole run",
            format!("{:.2} MiB", kib as f64 / 1024.0),
            "< 8 MiB",
            Some(kib < 8 * 1024),
        ),
        None => {
            row(
                "relay peak RSS",
                "unreadable".into(),
                "< 8 MiB",
                Some(false),
            );
        }
    }
    let size = std::fs::metadata(&binary)?.len();
    row(
        "binary size",
        format!("{:.2} MiB", size as f64 / (1024.0 * 1024.0)),
        "",
        None,
    );
    relay.stop().await;
    chain.stop().await;
    Ok(ok)
}
