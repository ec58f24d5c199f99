//! The AWS function end to end: the compiled `provision-lambda` binary under the Lambda
//! Runtime API emulator, against moto (AWS IoT) and the balenaCloud emulator, called with
//! function URL events as a device or operator would call it.
//!
//! The scenario list every cloud runs comes from `provision_testkit::shared_scenarios!`; what
//! follows it is AWS's own.

use provision_testkit::checks::Target;
use provision_testkit::events::Call;
use provision_testkit::stack::Stack;
use provision_testkit::world::{AwsWorld, Options};
use provision_testkit::{aws, shared_scenarios};
use serde_json::json;

shared_scenarios!(AwsWorld);

/// Rotation deletes the old certificate outright, and a failed write leaves at most an
/// inactive one: moto's whole certificate list shows it.
#[tokio::test]
async fn rotation_deletes_the_old_certificate() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let first = world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let rotated = world
        .call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(rotated.status_text(), "rotated", "{}", rotated.raw_body);
    let second = world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let ids: Vec<String> = aws::all_certificates(&world.iot)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        ids,
        vec![second.id],
        "only the new certificate exists (not {})",
        first.id
    );
    world.stop().await;
}

#[tokio::test]
async fn a_missing_policy_setting_stops_the_function_with_one_line() {
    let world = AwsWorld::start_with(Options {
        extra_env: vec![("AWS_IOT_POLICY".into(), String::new())],
        startup_fails: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let status = world.wait_for_exit().await;
    assert!(!status.success(), "the function exits non-zero");
    world.stop_functions_and_wait().await;
    let lines = world.logs.lines();
    let named: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("AWS_IOT_POLICY"))
        .collect();
    assert_eq!(named.len(), 1, "one line names the variable: {lines:?}");
    world.stop().await;
}
