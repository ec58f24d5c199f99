//! The Azure function end to end: the compiled `provision-azure` custom handler, called over
//! HTTP as the Functions host forwards requests, against the IoT Hub and balenaCloud emulators.

use provision_testkit::checks::{Target, assert_azure_gone, assert_azure_provisioned};
use provision_testkit::events::Call;
use provision_testkit::world::AzureWorld;
use serde_json::json;

async fn lifecycle(target: Target) {
    let world = AzureWorld::start().await.unwrap();
    let device = world.add_device();

    let created = world.call(Call::post(target.body(&device.uuid)).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_eq!(created.body["cloud"], "azure");
    assert_eq!(created.body["variables"], json!(["AZURE_CERT", "AZURE_PRIVATE_KEY"]));
    let first = assert_azure_provisioned(&world, &device, target, false);

    world.balena.clear_requests();
    let again = world.call(Call::post(target.body(&device.uuid)).bearer(&device.key)).await.unwrap();
    assert_eq!((again.status, again.status_text()), (200, "already-provisioned"), "{}", again.raw_body);
    assert!(world.balena.requests().iter().all(|r| r.method == "GET"), "nothing written to balenaCloud");

    let mut body = target.body(&device.uuid);
    body["rotate"] = json!(true);
    let rotated = world.call(Call::post(body).bearer(&device.key)).await.unwrap();
    assert_eq!((rotated.status, rotated.status_text()), (200, "rotated"), "{}", rotated.raw_body);
    let second = assert_azure_provisioned(&world, &device, target, false);
    assert_ne!(first, second, "a new certificate is registered, the old one is gone");

    let deleted = world.call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token)).await.unwrap();
    assert_eq!((deleted.status, deleted.status_text()), (200, "deleted"), "{}", deleted.raw_body);
    assert_azure_gone(&world, &device, target);
    let again = world.call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token)).await.unwrap();
    assert_eq!((again.status, again.status_text()), (200, "not-provisioned"), "{}", again.raw_body);

    let other = world.add_device();
    let forbidden = world.call(Call::post(target.body(&device.uuid)).bearer(&other.key)).await.unwrap();
    assert_eq!((forbidden.status, forbidden.error_code()), (403, "provision.auth.forbidden"));

    let mut needles = world.secret_strings(&[&device, &other]);
    needles.push(world.policy_key.clone());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    world.functions.stop_and_wait().await;
    assert!(world.logs.lines().iter().any(|l| l.contains("answered")), "the handler logged its requests");
    let leaks = world.logs.containing(&needles);
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:?}");
    world.stop().await;
}

#[tokio::test]
async fn device_variables_lifecycle() {
    lifecycle(Target::Device).await;
}

#[tokio::test]
async fn service_variables_lifecycle() {
    lifecycle(Target::Service).await;
}

#[tokio::test]
async fn a_device_connection_string_stops_the_handler_with_one_line() {
    let result = AzureWorld::start_with(provision_testkit::world::Options {
        extra_env: vec![(
            "CONNECTION_STRING".into(),
            "HostName=provision-test.azure-devices.net;DeviceId=dev;SharedAccessKey=c2VjcmV0".into(),
        )],
        ..Default::default()
    })
    .await;
    let err = result.err().expect("the handler exits instead of listening").to_string();
    assert!(err.contains("exited"), "{err}");
}
