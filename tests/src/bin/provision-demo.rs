//! `provision-demo`: runs the whole local stack of each cloud and provisions a demo device end
//! to end, printing what each step did to balenaCloud and to the cloud's IoT registry.

use std::time::Duration;

use provision_core::Cloud;
use provision_testkit::checks::{Target, vars};
use provision_testkit::device::{Relay, produce};
use provision_testkit::device_chain::Chain;
use provision_testkit::events::{Answer, Call};
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, AzureWorld, Device, GcpWorld};
use serde_json::json;

const HELP: &str =
    "provision-demo: provision a demo balena device into each cloud's IoT registry, locally

For each cloud asked for, starts its local stack (AWS: moto, the Lambda Runtime API emulator
and the compiled provision-lambda; Azure: the IoT Hub emulator and the compiled provision-azure
custom handler; GCP: the ClearBlade IoT Core emulator and the compiled provision-cloudrun; all:
the balenaCloud emulator), then, as the device (with its own balena API
key), provisions it with service variables for its cloud-relay service, asks again, reads the
status, rotates the certificate, is refused for another device's key, and is deprovisioned by
the operator, twice. Prints each answer, the upstream calls it cost and what changed.

Then the device side, per cloud: cloud-relay starts on a new device without credentials,
provisions it with the device's key, is restarted with the variables balenaCloud delivers (the
demo plays the supervisor), and relays three messages from mosquitto to the cloud's MQTT
stand-in, which accepts only the device's registered credential. Needs mosquitto (scripts/setup
installs it); skipped, saying so, without it.

Usage: scripts/demo [aws|azure|gcp|all]     (installs moto into .venv and builds first)
       provision-demo [aws|azure|gcp|all] [--help]     (default: all)";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return;
    }
    let which = match args.first().map(String::as_str) {
        None | Some("all") => Cloud::ALL.to_vec(),
        Some(name) => match name.parse::<Cloud>() {
            Ok(cloud) => vec![cloud],
            Err(_) => {
                eprintln!(
                    "provision-demo: unknown cloud '{name}': use aws, azure, gcp or all (see --help)"
                );
                std::process::exit(2);
            }
        },
    };
    for cloud in which {
        let result = match cloud {
            Cloud::Aws => run::<AwsWorld>("AWS IoT Core").await,
            Cloud::Azure => run::<AzureWorld>("Azure IoT Hub").await,
            Cloud::Gcp => run::<GcpWorld>("GCP: ClearBlade IoT Core").await,
        };
        let result = match result {
            Ok(()) => device_side(cloud).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            eprintln!("demo failed ({cloud}): {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run<S: Stack>(title: &str) -> anyhow::Result<()> {
    println!("######## {title}");
    println!("starting the emulators and the function ...");
    let world = S::start().await?;
    let device = world.add_device().await;
    println!("{}", world.describe());
    println!(
        "demo device {} with its own API key; its fleet has the service 'cloud-relay'\n",
        device.uuid
    );
    let service = json!({"uuid": device.uuid, "balena_service": "cloud-relay"});

    step(
        &world,
        &device,
        "1. the device provisions itself",
        Call::post(service.clone()).bearer(&device.key),
    )
    .await?;
    step(
        &world,
        &device,
        "2. the same request again",
        Call::post(service.clone()).bearer(&device.key),
    )
    .await?;
    let status =
        Call::get(&format!("uuid={}&balena_service=cloud-relay", device.uuid)).bearer(&device.key);
    step(&world, &device, "3. the device asks for its status", status).await?;
    let mut rotate = service.clone();
    rotate["rotate"] = json!(true);
    step(
        &world,
        &device,
        "4. the device rotates its certificate",
        Call::post(rotate).bearer(&device.key),
    )
    .await?;
    let stranger = world.add_device().await;
    step(
        &world,
        &device,
        "5. another device's key tries the same UUID",
        Call::post(service.clone()).bearer(&stranger.key),
    )
    .await?;
    let operator = &world.secrets.operator_token;
    step(
        &world,
        &device,
        "6. the operator deprovisions it",
        Call::delete(service.clone()).bearer(operator),
    )
    .await?;
    step(
        &world,
        &device,
        "7. and once more",
        Call::delete(service).bearer(operator),
    )
    .await?;
    world.stop_functions_and_wait().await;
    let mut needles = world.secret_strings(&[&device, &stranger]);
    needles.extend(world.registry_secrets());
    let leaks = world
        .logs()
        .containing(&needles.iter().map(String::as_str).collect::<Vec<_>>());
    println!(
        "function and emulator log lines: {}; lines holding a key, token or policy secret: {}",
        world.logs().lines().len(),
        leaks.len()
    );
    world.stop().await;
    println!("done: emulators and function stopped\n");
    Ok(())
}

async fn step<S: Stack>(
    world: &S,
    device: &Device,
    title: &str,
    call: Call,
) -> anyhow::Result<Answer> {
    println!("== {title}: {} /provision", call.method);
    world.balena.clear_requests();
    let registry_before = world.registry_calls();
    let started = std::time::Instant::now();
    let answer = world.call(call).await?;
    println!(
        "   answer {} in {} ms: {}",
        answer.status,
        started.elapsed().as_millis(),
        answer.raw_body
    );
    let calls: Vec<String> = world
        .balena
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.resource))
        .collect();
    let unit = if S::CLOUD == Cloud::Aws {
        "new connections to AWS"
    } else {
        "registry requests"
    };
    println!(
        "   upstream: {} balenaCloud calls {calls:?}; {} {unit}",
        calls.len(),
        world.registry_calls() - registry_before
    );
    let stored = vars(world, device, Target::Service).await;
    let names: Vec<&String> = stored.keys().collect();
    match stored.get(S::CSR_VARS[0]) {
        Some(value) => {
            let shown: String = value.chars().take(40).collect();
            println!(
                "   balenaCloud: service variables {names:?}; {} = {shown}...",
                S::CSR_VARS[0]
            );
        }
        None => println!("   balenaCloud: service variables {names:?}"),
    }
    println!("   {}\n", world.registry_summary(device).await);
    Ok(answer)
}

/// The device half: cloud-relay provisions its device and relays to the cloud's stand-in.
async fn device_side(cloud: Cloud) -> anyhow::Result<()> {
    println!("######## the device side ({cloud:?}): cloud-relay");
    if !mosquitto_installed() {
        println!("skipped: mosquitto is not installed (scripts/setup installs it)\n");
        return Ok(());
    }
    let chain = Chain::start(cloud).await?;
    println!(
        "a new device {}; mosquitto on 127.0.0.1:{}; the cloud's MQTT stand-in on 127.0.0.1:{}",
        chain.device.uuid,
        chain.broker.port,
        chain.stand_in.port()
    );
    let limit = Duration::from_secs(60);
    let mut relay = Relay::start("cloud-relay", &chain.env_with(&[]), &chain.logs)?;
    let line = relay.wait_for_line("provisioning: created", limit).await?;
    println!("== cloud-relay, no credentials yet, asks the function with the device's key:");
    println!("   {}", relay_message(&line));
    relay.terminate().await?;
    let env = chain.env_with_variables(&[]).await;
    let names: Vec<&str> = env
        .iter()
        .filter(|(k, _)| {
            k.starts_with("AWS_C")
                || k.starts_with("AWS_P")
                || k.starts_with("AZURE_C")
                || k.starts_with("AZURE_P")
                || k.starts_with("GCP_")
        })
        .map(|(k, _)| k.as_str())
        .collect();
    println!("== the supervisor restarts it with the variables balenaCloud now holds: {names:?}");
    relay.restart(&env)?;
    let line = relay.wait_for_line("cloud: connected", limit).await?;
    println!("   {}", relay_message(&line));
    produce(chain.broker.port, "sensors", 0..3).await?;
    println!(
        "== three messages published to mosquitto on 'sensors' (QoS 1); the stand-in received:"
    );
    for r in chain.stand_in.wait_for_received(3, limit).await? {
        println!(
            "   as device {} on {} {}: {}",
            r.device,
            r.topic,
            if r.properties.is_empty() {
                String::new()
            } else {
                format!("{:?}", r.properties)
            },
            String::from_utf8_lossy(&r.payload)
        );
    }
    relay.stop().await;
    chain.stop().await;
    println!("done: relay, broker and emulators stopped\n");
    Ok(())
}

/// A relay log line without its label and timestamp.
fn relay_message(line: &str) -> &str {
    line.split_once(" INFO ")
        .or_else(|| line.split_once(" WARN "))
        .map_or(line, |(_, message)| message)
}

fn mosquitto_installed() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join("mosquitto").is_file())
}
