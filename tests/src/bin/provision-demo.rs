//! `provision-demo`: runs the whole local stack and provisions a demo device end to end,
//! printing what each step did to balenaCloud and to AWS IoT Core.

use provision_testkit::aws;
use provision_testkit::checks::{Target, decode};
use provision_testkit::events::{Answer, Call};
use provision_testkit::world::{AwsWorld, Device};
use serde_json::json;

const HELP: &str = "provision-demo: provision a demo balena device into AWS IoT Core, locally

Starts moto (AWS IoT), the balenaCloud and Lambda Runtime API emulators and the compiled
provision-lambda binary, then, as the device (with its own balena API key), provisions it
with service variables for its cloud-relay service, asks again, reads the status, rotates the
certificate, and deprovisions it as the operator. Prints each answer and what changed.

Usage: scripts/demo            (installs moto into .venv and builds first)
       provision-demo [--help]";

#[tokio::main]
async fn main() {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return;
    }
    if let Err(e) = run().await {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    println!("starting moto, the balenaCloud and Lambda Runtime API emulators, and provision-lambda ...");
    let world = AwsWorld::start().await?;
    let device = world.add_device();
    println!("balenaCloud emulator: {}   moto: {}", world.balena.url(), world.moto.endpoint());
    println!("demo device {} with its own API key; its fleet has the service 'cloud-relay'\n", device.uuid);
    let service = json!({"uuid": device.uuid, "balena_service": "cloud-relay"});

    step(&world, &device, "1. the device provisions itself", Call::post(service.clone()).bearer(&device.key)).await?;
    step(&world, &device, "2. the same request again", Call::post(service.clone()).bearer(&device.key)).await?;
    step(
        &world,
        &device,
        "3. the device asks for its status",
        Call::get(&format!("uuid={}&balena_service=cloud-relay", device.uuid)).bearer(&device.key),
    )
    .await?;
    let mut rotate = service.clone();
    rotate["rotate"] = json!(true);
    step(&world, &device, "4. the device rotates its certificate", Call::post(rotate).bearer(&device.key)).await?;
    let stranger = world.add_device();
    step(&world, &device, "5. another device's key tries the same UUID", Call::post(service.clone()).bearer(&stranger.key)).await?;
    step(&world, &device, "6. the operator deprovisions it", Call::delete(service.clone()).bearer(&world.secrets.operator_token)).await?;
    step(&world, &device, "7. and once more", Call::delete(service).bearer(&world.secrets.operator_token)).await?;
    let needles = world.secret_strings(&[&device, &stranger]);
    let leaks = world.logs.containing(&needles.iter().map(String::as_str).collect::<Vec<_>>());
    println!("function and emulator log lines: {}; lines holding an API key or token: {}", world.logs.lines().len(), leaks.len());
    world.stop().await;
    println!("done: emulators and function stopped");
    Ok(())
}

async fn step(world: &AwsWorld, device: &Device, title: &str, call: Call) -> anyhow::Result<Answer> {
    println!("== {title}: {} /provision", call.method);
    world.balena.clear_requests();
    let aws_before = world.aws_proxy.connections();
    let started = std::time::Instant::now();
    let answer = world.call(call).await?;
    println!("   answer {} in {} ms: {}", answer.status, started.elapsed().as_millis(), answer.raw_body);
    let calls: Vec<String> = world.balena.requests().iter().map(|r| format!("{} {}", r.method, r.resource)).collect();
    println!(
        "   upstream: {} balenaCloud calls {calls:?}; {} new connections to AWS",
        calls.len(),
        world.aws_proxy.connections() - aws_before
    );
    let vars = provision_testkit::checks::vars(world, device, Target::Service);
    let mut names: Vec<String> = vars.keys().cloned().collect();
    names.sort();
    match vars.get("AWS_CERT") {
        Some(cert) => {
            let pem = decode(cert);
            let first = pem.lines().nth(1).unwrap_or("");
            println!("   balenaCloud: service variables {names:?}; AWS_CERT begins {}...", &first[..first.len().min(24)]);
        }
        None => println!("   balenaCloud: service variables {names:?}"),
    }
    match aws::thing_certificates(&world.iot, &device.uuid).await? {
        None => println!("   AWS IoT: no thing {}", &device.uuid[..7]),
        Some(certs) => {
            let shown: Vec<String> = certs
                .iter()
                .map(|c| format!("{}… {} policy={:?}", &c.id[..12], if c.active { "ACTIVE" } else { "INACTIVE" }, c.policies))
                .collect();
            println!("   AWS IoT: thing {}… with certificates {shown:?}", &device.uuid[..7]);
        }
    }
    println!();
    Ok(answer)
}
