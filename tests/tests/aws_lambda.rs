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

/// Only what the function made: a certificate someone else attached to the thing (made with
/// `CreateKeysAndCertificate`, not for the device's UUID) and one of the device's that is also
/// attached to another thing are never deactivated or deleted. GET reports them in `details`
/// (the device stays `provisioned`: they are not stale), rotate leaves them attached, and
/// DELETE only detaches them before it deletes the thing.
#[tokio::test]
async fn certificates_the_function_did_not_make_survive_rotate_and_delete() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);

    // An operator's certificate, attached to the device's thing.
    let operators = world
        .iot
        .create_keys_and_certificate()
        .set_as_active(true)
        .send()
        .await
        .unwrap();
    let operators_arn = operators.certificate_arn().unwrap().to_string();
    let operators_id = operators.certificate_id().unwrap().to_string();
    // A certificate for the device's UUID that another thing uses too.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let shared = world
        .iot
        .create_certificate_from_csr()
        .certificate_signing_request(provision_testkit::scenarios::csr_pem(&key, &device.uuid))
        .set_as_active(true)
        .send()
        .await
        .unwrap();
    let shared_arn = shared.certificate_arn().unwrap().to_string();
    let shared_id = shared.certificate_id().unwrap().to_string();
    world
        .iot
        .create_thing()
        .thing_name("another-thing")
        .send()
        .await
        .unwrap();
    for (thing, arn) in [
        (device.uuid.as_str(), &operators_arn),
        (device.uuid.as_str(), &shared_arn),
        ("another-thing", &shared_arn),
    ] {
        world
            .iot
            .attach_thing_principal()
            .thing_name(thing)
            .principal(arn)
            .send()
            .await
            .unwrap();
    }
    let foreign = [operators_id.clone(), shared_id.clone()];
    let active = |certs: Vec<(String, bool)>| {
        foreign
            .iter()
            .map(|id| certs.iter().any(|(c, on)| c == id && *on))
            .collect::<Vec<bool>>()
    };

    let status = world
        .call(Call::get(&format!("uuid={}&details=true", device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(status.status_text(), "provisioned", "{}", status.raw_body);
    let listed = status.body["details"]["registry"]["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let foreign_of = |id: &str| {
        listed
            .iter()
            .find(|c| c["id"] == id)
            .map(|c| c["foreign"].clone())
    };
    assert_eq!(
        foreign_of(&operators_id),
        Some(json!("made-elsewhere")),
        "{}",
        status.raw_body
    );
    assert_eq!(
        foreign_of(&shared_id),
        Some(json!("attached-elsewhere")),
        "{}",
        status.raw_body
    );

    let rotated = world
        .call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(rotated.status_text(), "rotated", "{}", rotated.raw_body);
    let attached: Vec<String> = aws::thing_certificates(&world.iot, &device.uuid)
        .await
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(
        foreign.iter().all(|id| attached.contains(id)),
        "rotate leaves them attached: {attached:?}"
    );
    assert_eq!(
        active(aws::all_certificates(&world.iot).await.unwrap()),
        vec![true, true],
        "and active"
    );

    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(deleted.status_text(), "deleted", "{}", deleted.raw_body);
    assert!(!world.has_entry(&device).await, "the thing is gone");
    assert_eq!(
        active(aws::all_certificates(&world.iot).await.unwrap()),
        vec![true, true],
        "DELETE neither deactivated nor deleted them"
    );
    let still: Vec<String> = aws::thing_certificates(&world.iot, "another-thing")
        .await
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        still,
        vec![shared_id],
        "the other thing keeps its certificate"
    );
    world.stop().await;
}
