//! The GCP function end to end: the compiled `provision-cloudrun` serving ClearBlade IoT Core,
//! called over HTTP as Cloud Run forwards requests, against the ClearBlade and balenaCloud
//! emulators. Also: the same binary serving AWS and Azure, and SIGTERM mid-request.
//!
//! The scenario list every cloud runs comes from `provision_testkit::shared_scenarios!`.

use provision_testkit::checks::Target;
use provision_testkit::events::Call;
use provision_testkit::shared_scenarios;
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, AzureWorld, GcpWorld, Options};
use serde_json::json;

shared_scenarios!(GcpWorld);

/// One container serves any of the three clouds: `PROVISION_CLOUD=aws|azure|gcp`.
async fn serves<S: Stack>() {
    let world = S::start_with(Options {
        cloudrun: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (created.status, created.body["cloud"].as_str()),
        (201, Some(S::CLOUD.as_str())),
        "{}",
        created.raw_body
    );
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&world.secrets.operator_token))
        .await
        .unwrap();
    assert_eq!(deleted.status_text(), "deleted", "{}", deleted.raw_body);
    world.assert_gone(&device, Target::Device).await;
    let lines = world.logs().lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[provision-cloudrun#0]") && l.contains("listening")),
        "provision-cloudrun served it: {lines:?}"
    );
    world.stop().await;
}

#[tokio::test]
async fn cloudrun_serves_aws() {
    serves::<AwsWorld>().await;
}

#[tokio::test]
async fn cloudrun_serves_azure() {
    serves::<AzureWorld>().await;
}

#[tokio::test]
async fn cloudrun_serves_gcp() {
    serves::<GcpWorld>().await;
}

/// SIGTERM while a request is in flight (Cloud Run scaling in): the request completes with its
/// normal answer, new connections are refused, and the process exits 0.
#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish() {
    let world = GcpWorld::start().await.unwrap();
    let device = world.add_device().await;
    // Every balenaCloud answer takes a while, so the request is surely in flight.
    world
        .balena
        .emulator()
        .set_latency(std::time::Duration::from_millis(400));
    let call = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key));
    let terminate = async {
        // Once balenaCloud has seen the request, it is in flight.
        while world.balena.requests().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        world.functions.terminate_first().await.unwrap();
    };
    let (answer, ()) = tokio::join!(call, terminate);
    let answer = answer.unwrap();
    assert_eq!(
        (answer.status, answer.status_text()),
        (201, "created"),
        "{}",
        answer.raw_body
    );
    let status = world.functions.wait_for_exit().await;
    assert!(
        status.success(),
        "the process exits 0 after SIGTERM: {status:?}"
    );
    world
        .balena
        .emulator()
        .set_latency(std::time::Duration::ZERO);
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let refused = world
        .call(Call::get(&format!("uuid={}", device.uuid)).bearer(&device.key))
        .await;
    assert!(refused.is_err(), "no new requests after shutdown");
    world.stop().await;
}

/// Two hundred devices provisioned at once through one Cloud Run process: every one answers
/// `created` and ends fully provisioned; nothing is lost and no lock is left.
#[tokio::test]
async fn two_hundred_devices_through_one_process() {
    let world = GcpWorld::start().await.unwrap();
    let mut devices = Vec::new();
    for _ in 0..200 {
        devices.push(world.add_device().await);
    }
    let calls = devices
        .iter()
        .map(|d| world.call(Call::post(json!({"uuid": d.uuid})).bearer(&d.key)));
    let answers = futures::future::join_all(calls).await;
    for (device, answer) in devices.iter().zip(answers) {
        let answer = answer.unwrap();
        assert_eq!(
            (answer.status, answer.status_text()),
            (201, "created"),
            "{}: {}",
            device.uuid,
            answer.raw_body
        );
    }
    for device in &devices {
        world
            .assert_provisioned(device, Target::Device, false)
            .await;
        assert_eq!(
            world.held_lock(device, Target::Device).await,
            None,
            "no lock held"
        );
    }
    assert_eq!(
        world.active_credentials().await.len(),
        200,
        "one key per device, no more"
    );
    world.stop().await;
}
