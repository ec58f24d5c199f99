//! The Azure function end to end: the compiled `provision-azure` custom handler, called over
//! HTTP as the Functions host forwards requests, against the IoT Hub and balenaCloud emulators.
//!
//! The scenario list every cloud runs comes from `provision_testkit::shared_scenarios!`; what
//! follows it is Azure's own.

use provision_testkit::checks::{Target, assert_azure_provisioned};
use provision_testkit::events::Call;
use provision_testkit::shared_scenarios;
use provision_testkit::world::AzureWorld;
use serde_json::json;

shared_scenarios!(AzureWorld);

#[tokio::test]
async fn a_device_connection_string_stops_the_handler_with_one_line() {
    let result = AzureWorld::start_with(provision_testkit::world::Options {
        extra_env: vec![(
            "CONNECTION_STRING".into(),
            "HostName=provision-test.azure-devices.net;DeviceId=dev;SharedAccessKey=c2VjcmV0"
                .into(),
        )],
        ..Default::default()
    })
    .await;
    let err = result
        .err()
        .expect("the handler exits instead of listening")
        .to_string();
    assert!(err.contains("exited"), "{err}");
}

/// Rotation interrupted after each of its steps by an injected upstream failure: whatever the
/// step, the certificate stored in balenaCloud is one whose thumbprint IoT Hub has registered,
/// and a retried rotation converges to exactly one registered certificate, the stored one.
#[tokio::test]
async fn an_interrupted_rotation_always_leaves_a_working_certificate() {
    use provision_emulators::iothub::Fault as HubFault;
    use provision_testkit::{Fault, checks::decode};
    enum Step {
        RegisterNew,
        StoreVariables,
        DropOld,
    }
    for step in [Step::RegisterNew, Step::StoreVariables, Step::DropOld] {
        let world = AzureWorld::start().await.unwrap();
        let device = world.add_device().await;
        let created = world
            .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
            .await
            .unwrap();
        assert_eq!(created.status, 201, "{}", created.raw_body);
        match step {
            // The PUT that adds the new thumbprint fails (past the pipeline's retries).
            Step::RegisterNew => world
                .hub
                .inject_fault(HubFault::new(500).method("PUT").times(50)),
            // Storing the new variables fails.
            Step::StoreVariables => world.balena.emulator().inject_fault(
                Fault::new(500)
                    .method("PATCH")
                    .resource("device_environment_variable")
                    .times(50),
            ),
            // The new certificate is stored; removing the old thumbprint fails.
            Step::DropOld => world
                .hub
                .inject_fault(HubFault::new(500).method("PUT").skip(1).times(50)),
        }
        let rotated = world
            .call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key))
            .await
            .unwrap();
        assert_eq!(rotated.status, 502, "{}", rotated.raw_body);
        let stored = decode(&world.balena.device_vars(device.id).await["AZURE_CERT"]);
        let der = x509_parser::pem::parse_x509_pem(stored.as_bytes())
            .unwrap()
            .1
            .contents;
        let thumbprint: String = provision_core::codec::sha256(&der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        let (primary, secondary) = world.hub.thumbprints(&device.uuid).unwrap();
        assert!(
            primary.as_deref() == Some(thumbprint.as_str())
                || secondary.as_deref() == Some(thumbprint.as_str()),
            "the stored certificate is registered: {thumbprint} vs {primary:?} {secondary:?}"
        );
        world.hub.clear_faults();
        world.balena.emulator().clear_faults();
        let retried = world
            .call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key))
            .await
            .unwrap();
        assert_eq!(
            (retried.status, retried.status_text()),
            (200, "rotated"),
            "{}",
            retried.raw_body
        );
        assert_azure_provisioned(&world, &device, Target::Device, false).await;
        world.stop().await;
    }
}
