//! The device side, end to end: `cloud-relay` provisions its device with the device's own key
//! through the real function binary, is restarted with the variables balenaCloud delivers, and
//! relays messages from the real mosquitto to the cloud's MQTT stand-in, which accepts only
//! credentials the registry emulator (or moto) says are the device's.

use std::time::Duration;

use provision_core::Cloud;
use provision_testkit::device::{Relay, ScratchDir, produce};
use provision_testkit::device_chain::{Chain, stored_variable_names};
use provision_testkit::events::Call;
use provision_testkit::process::LogBook;
use provision_testkit::world::CallerRole;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

/// No secret in any line the relay printed.
async fn assert_no_secret_logged(chain: &Chain, relay: &Relay) {
    let secrets = chain.secrets().await;
    for line in relay.lines() {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "the relay logged a secret: {line}"
            );
        }
        assert!(!line.contains("BEGIN"), "the relay logged a PEM: {line}");
        assert!(!line.contains("eyJ"), "the relay logged a token: {line}");
    }
}

/// The chain for one cloud: provisioning by the relay itself, 1,000 messages (half queued
/// before the credentials arrived), then a rotation and a DELETE whose old credentials the
/// cloud refuses while the new ones deliver.
async fn whole_chain(cloud: Cloud) {
    let chain = Chain::start(cloud).await.expect("chain starts");
    // Messages produced before the device is provisioned are queued, not lost.
    let mut relay = Relay::start("cloud-relay", &chain.env_with(&[]), &chain.logs).unwrap();
    relay
        .wait_for_line("local broker: subscribed", LONG)
        .await
        .unwrap();
    produce(chain.broker.port, "sensors", 0..500).await.unwrap();
    relay
        .wait_for_line("provisioning: created", LONG)
        .await
        .unwrap();
    while chain.supervisor.updates() == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The supervisor restarts the service with its new variables; the queue carries over.
    relay.terminate().await.unwrap();
    let names = stored_variable_names(&chain).await;
    assert!(
        names.iter().any(|n| n.ends_with("_PRIVATE_KEY")),
        "{names:?}"
    );
    relay.restart(&chain.env_with_variables(&[]).await).unwrap();
    produce(chain.broker.port, "sensors", 500..1000)
        .await
        .unwrap();
    let report = chain.wait_for_delivery(0..1000, LONG).await.unwrap();
    eprintln!("{cloud:?}: 1000 messages, {} duplicates", report.duplicates);
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    assert_eq!(report.out_of_order, 0, "out of order");

    // Rotation: the old credential is refused once the new one is stored.
    let old_env = chain.env_with_variables(&[]).await;
    let answer = chain
        .call(
            Call::post(
                json!({"uuid": chain.device.uuid, "balena_service": "cloud-relay", "rotate": true}),
            )
            .bearer(&chain.device.key),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.raw_body);
    assert_eq!(answer.body["status"], "rotated");
    relay.terminate().await.unwrap();
    let refusals = chain.stand_in.refusals().len();
    relay.restart(&old_env).unwrap();
    chain
        .stand_in
        .wait_for_refusals(refusals + 1, LONG)
        .await
        .expect("the rotated-away credential is refused");
    relay.terminate().await.unwrap();
    relay.restart(&chain.env_with_variables(&[]).await).unwrap();
    produce(chain.broker.port, "sensors", 1000..1100)
        .await
        .unwrap();
    let report = chain.wait_for_delivery(0..1100, LONG).await.unwrap();
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);

    // DELETE: the credential the device still holds is refused.
    let deleted_env = chain.env_with_variables(&[]).await;
    let answer = chain
        .call(
            Call::delete(json!({"uuid": chain.device.uuid, "balena_service": "cloud-relay"}))
                .bearer(&chain.device.key),
        )
        .await
        .unwrap();
    assert_eq!(answer.body["status"], "deleted", "{}", answer.raw_body);
    relay.terminate().await.unwrap();
    let refusals = chain.stand_in.refusals().len();
    relay.restart(&deleted_env).unwrap();
    chain
        .stand_in
        .wait_for_refusals(refusals + 1, LONG)
        .await
        .expect("the deleted credential is refused");
    assert!(relay.running(), "a refused relay keeps running");
    assert_no_secret_logged(&chain, &relay).await;
    relay.stop().await;
    chain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_whole_chain() {
    whole_chain(Cloud::Aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_whole_chain() {
    whole_chain(Cloud::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_whole_chain() {
    whole_chain(Cloud::Gcp).await;
}

/// `PROVISION_KEEP_KEY=true`: no private key variable in balenaCloud, and the relay connects
/// with the key it kept.
async fn kept_key(cloud: Cloud) {
    let chain = Chain::start(cloud).await.expect("chain starts");
    let relay = chain
        .provisioned_relay(&[("PROVISION_KEEP_KEY", "true")])
        .await
        .unwrap();
    let names = stored_variable_names(&chain).await;
    assert!(
        !names.iter().any(|n| n.ends_with("_PRIVATE_KEY")),
        "a private key went through balenaCloud: {names:?}"
    );
    produce(chain.broker.port, "sensors", 0..100).await.unwrap();
    let report = chain.wait_for_delivery(0..100, LONG).await.unwrap();
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    let key_file = chain.queue_dir.0.join("device-key.pem");
    let key = std::fs::read_to_string(&key_file).unwrap();
    for line in relay.lines() {
        assert!(!line.contains(key.lines().nth(1).unwrap()), "{line}");
    }

    // The kept key is lost (a wiped volume): the relay makes a new one and asks for a
    // certificate of it (a CSR with rotate) instead of failing to connect forever.
    let mut relay = relay;
    relay.terminate().await.unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let updates = chain.supervisor.updates();
    let keep = [("PROVISION_KEEP_KEY", "true")];
    relay
        .restart(&chain.env_with_variables(&keep).await)
        .unwrap();
    relay
        .wait_for_line("not for the kept key", LONG)
        .await
        .expect("the lost key is noticed");
    // A new certificate (ClearBlade: the new key registered), "rotated" or "repaired" as the
    // function sees it.
    relay
        .wait_for_line("waiting for balenaCloud to deliver the variables", LONG)
        .await
        .expect("a credential for the new key");
    while chain.supervisor.updates() == updates {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.terminate().await.unwrap();
    relay
        .restart(&chain.env_with_variables(&keep).await)
        .unwrap();
    produce(chain.broker.port, "sensors", 100..200)
        .await
        .unwrap();
    let report = chain.wait_for_delivery(0..200, LONG).await.unwrap();
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    let names = stored_variable_names(&chain).await;
    assert!(
        !names.iter().any(|n| n.ends_with("_PRIVATE_KEY")),
        "{names:?}"
    );
    relay.stop().await;
    chain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kept_key() {
    kept_key(Cloud::Aws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_kept_key() {
    kept_key(Cloud::Azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_kept_key() {
    kept_key(Cloud::Gcp).await;
}

/// The cloud down while messages keep coming, the relay killed with SIGKILL mid-stream, the
/// local broker restarted: every message arrives (duplicates counted, as QoS 1 allows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_and_kills_lose_nothing() {
    let mut chain = Chain::start(Cloud::Azure).await.expect("chain starts");
    let mut relay = chain.provisioned_relay(&[]).await.unwrap();
    let env = chain.env_with_variables(&[]).await;

    // The cloud goes away; the relay queues.
    chain.stand_in.go_down().await;
    produce(chain.broker.port, "sensors", 0..300).await.unwrap();
    chain.stand_in.come_up().await.unwrap();

    // SIGKILL while the queue drains and more arrive.
    let port = chain.broker.port;
    let producer = tokio::spawn(async move { produce(port, "sensors", 300..600).await });
    chain.stand_in.wait_for_received(150, LONG).await.unwrap();
    relay.kill().await;
    producer.await.unwrap().unwrap();
    relay.restart(&env).unwrap();
    chain.stand_in.wait_for_received(600, LONG).await.unwrap();

    // The local broker restarts; the relay reconnects and its session is kept.
    produce(chain.broker.port, "sensors", 600..800)
        .await
        .unwrap();
    chain.broker.restart().await.unwrap();
    relay
        .wait_for_lines("local broker: subscribed", 2, LONG)
        .await
        .unwrap();
    produce(chain.broker.port, "sensors", 800..1000)
        .await
        .unwrap();

    let report = chain.wait_for_delivery(0..1000, LONG).await.unwrap();
    eprintln!(
        "outages: 1000 messages, {} duplicates (QoS 1 at-least-once), {} out of order",
        report.duplicates, report.out_of_order
    );
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    relay.stop().await;
    chain.stop().await;
}

/// A queue bounded at 64 KiB with the cloud away: the oldest messages are dropped, counted and
/// logged, and the newest arrive once the cloud is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_says_so() {
    let chain = Chain::start(Cloud::Gcp).await.expect("chain starts");
    let bound = [("RELAY_QUEUE_MAX_BYTES", "65536")];
    let mut relay = chain.provisioned_relay(&bound).await.unwrap();
    chain.stand_in.go_down().await;
    // 200 messages of exactly 1 KiB: 64 fit.
    publish_padded(chain.broker.port, 0..200).await;
    relay
        .wait_for_line("136 dropped in all", LONG)
        .await
        .expect("the relay says how many it dropped");
    chain.stand_in.come_up().await.unwrap();
    let report = chain.wait_for_delivery(136..200, LONG).await.unwrap();
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    let seqs = chain.received_seqs(&chain.stand_in.received()).unwrap();
    assert!(seqs.iter().all(|s| *s >= 136), "an old message survived");
    relay.terminate().await.unwrap();
    // The count survives a restart.
    relay
        .restart(&chain.env_with_variables(&bound).await)
        .unwrap();
    relay
        .wait_for_line("136 dropped so far", LONG)
        .await
        .unwrap();
    relay.stop().await;
    chain.stop().await;
}

async fn publish_padded(port: u16, seqs: std::ops::Range<u64>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new("padded-producer", "127.0.0.1", port);
    options.set_inflight(10);
    let (client, mut events) = AsyncClient::new(options, 16);
    let total = seqs.end - seqs.start;
    tokio::spawn(async move {
        for seq in seqs {
            let mut payload = format!("{{\"seq\":{seq},\"pad\":\"").into_bytes();
            payload.resize(1022, b'x');
            payload.extend_from_slice(b"\"}");
            client
                .publish("sensors", QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
            acked += 1;
        }
    }
}

/// The function's refusals and silences: one clear log line each, a backoff, and no exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_refusals_back_off_without_exiting() {
    let chain = Chain::start(Cloud::Azure).await.expect("chain starts");
    let member_key = chain.fleet().caller_key(CallerRole::Member).await;
    let busy = BusyFunction::start().await;
    let closed_port = provision_testkit::process::free_port().unwrap();
    let closed = format!("http://127.0.0.1:{closed_port}/provision");
    let logs = LogBook::default();
    // (relay name, its settings, the log line it must print)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "wrong-key",
            vec![("BALENA_API_KEY", "not-a-key")],
            "refused (401 provision.auth.invalid",
        ),
        (
            "member-key",
            vec![("BALENA_API_KEY", member_key.as_str())],
            "refused (403 provision.auth.forbidden",
        ),
        (
            "no-key",
            vec![("BALENA_API_KEY", "")],
            "has no BALENA_API_KEY: add the label io.balena.features.balena-api",
        ),
        (
            "busy",
            vec![("PROVISION_URL", busy.url.as_str())],
            "asking again in 1.0s (its Retry-After)",
        ),
        (
            "unreachable",
            vec![("PROVISION_URL", closed.as_str())],
            "the function is unreachable",
        ),
    ];
    let mut relays = Vec::new();
    for (name, extra, _) in &cases {
        let mut dir_extra = extra.clone();
        let dir = ScratchDir::new(name).unwrap();
        let dir_text = dir.0.display().to_string();
        dir_extra.push(("RELAY_QUEUE_DIR", dir_text.as_str()));
        let relay = Relay::start(name, &chain.env_with(&dir_extra), &logs).unwrap();
        relays.push((relay, dir));
    }
    for ((relay, _), (name, _, expected)) in relays.iter_mut().zip(&cases) {
        let line = relay
            .wait_for_line(expected, LONG)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name}: {line}");
        if matches!(*name, "wrong-key" | "member-key" | "no-key") {
            // Refusals back off from 30 s: not a crash loop.
            let wait: f64 = line
                .rsplit("asking again in ")
                .next()
                .and_then(|w| w.trim_end_matches('s').parse().ok())
                .unwrap_or_else(|| panic!("{name}: no wait in {line}"));
            assert!(wait >= 24.0, "{name}: backs off only {wait}s");
        }
        if matches!(*name, "busy" | "unreachable") {
            // Asked again, after the wait.
            relay
                .wait_for_lines(expected, 2, LONG)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(relay.running(), "{name}: the relay exited");
    }
    assert!(busy.calls() >= 2);
    for (relay, _) in relays {
        relay.stop().await;
    }
    chain.stop().await;
}

/// A function that answers every POST 503 with `Retry-After: 1`, as ours does when its
/// upstreams stay throttled.
struct BusyFunction {
    url: String,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl BusyFunction {
    async fn start() -> BusyFunction {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/provision",
            axum::routing::post(move || async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1"), ("content-type", "application/json")],
                    r#"{"code":"provision.upstream.throttled","message":"throttled"}"#,
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/provision", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        BusyFunction { url, calls }
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn help_names_every_setting_and_bad_arguments_are_refused() {
    let binary = provision_testkit::paths::binary("cloud-relay").unwrap();
    let out = std::process::Command::new(&binary)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for name in [
        "CLOUD_PROVIDER",
        "PROVISION_URL",
        "BALENA_DEVICE_UUID",
        "BALENA_SERVICE_NAME",
        "BALENA_API_KEY",
        "BALENA_SUPERVISOR_ADDRESS",
        "PROVISION_KEEP_KEY",
        "LOCAL_MQTT_URL",
        "PRODUCER_TOPIC",
        "CLOUD_CONSUMER_TOPIC",
        "AWS_DATA_ENDPOINT",
        "AWS_TOPIC_ROOT",
        "AWS_ROOT_CA_PATH",
        "AZURE_HUB_HOST",
        "MESSAGING_HOST",
        "GCP_TOKEN_LIFETIME",
        "GCP_RENEWAL_START",
        "CLOUD_CA_CERT",
        "RELAY_QUEUE_DIR",
        "RELAY_QUEUE_MAX_BYTES",
    ] {
        assert!(help.contains(name), "--help does not mention {name}");
    }
    let out = std::process::Command::new(&binary)
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A setting error names the variable and exits 2 (the container's log says why).
    let out = std::process::Command::new(&binary)
        .env_clear()
        .env("CLOUD_PROVIDER", "IBM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("CLOUD_PROVIDER"), "{text}");
}

/// ClearBlade closes a connection when its token expires: the relay renews its token and its
/// connection before that (here every 3 s of a 6 s token), and nothing is lost across renewals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_tokens_are_renewed_before_they_expire() {
    let chain = Chain::start(Cloud::Gcp).await.expect("chain starts");
    let short = [("GCP_TOKEN_LIFETIME", "0.1"), ("GCP_RENEWAL_START", "0.05")];
    let relay = chain.provisioned_relay(&short).await.unwrap();
    let mut next = 0;
    while relay
        .lines()
        .iter()
        .filter(|l| l.contains("renewing the connection"))
        .count()
        < 2
    {
        produce(chain.broker.port, "sensors", next..next + 20)
            .await
            .unwrap();
        next += 20;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    produce(chain.broker.port, "sensors", next..next + 20)
        .await
        .unwrap();
    next += 20;
    let report = chain.wait_for_delivery(0..next, LONG).await.unwrap();
    assert!(report.missing.is_empty(), "lost {:?}", report.missing);
    let connections = chain.stand_in.connections();
    assert!(connections.len() >= 3, "{} connections", connections.len());
    assert!(connections.iter().all(|c| c.expires_at.is_some()));
    relay.stop().await;
    chain.stop().await;
}
