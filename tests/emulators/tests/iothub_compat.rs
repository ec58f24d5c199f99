//! Runs the real published `azure-iothub` Registry (pinned in tests/compat/package.json) against
//! the IoT Hub registry emulator over HTTPS: `tests/compat/iothub-compat.mjs` creates a device
//! with X.509 thumbprints, reads, replaces, lists and deletes it, and checks the SDK's errors
//! (409, 404, 401, 429); this test checks it passed and what the emulator saw. Needs `node` and
//! `npm ci --prefix tests/compat`.
//!
//! azure-iothub has no port setting and always dials `HostName:443`, so the connection string
//! keeps the hub host name (the SDK signs for it, sends it as SNI and checks the certificate
//! against it) and the script routes the SDK's https.Agent to 127.0.0.1:<TLS port>.

mod support;

use provision_emulators::iothub::{Fault, IotHubEmulator, Policy, RecordedRequest};
use support::{NodeScript, TempFile, assert_script_passed, compat_dir, require_package, saw};

const HUB: &str = "provision-test.azure-devices.net";
const KEY: &str = "b3duZXIta2V5LWZvci10aGUtaW90aHViLXRlc3RzLi4=";
const DEVICE: &str = "compat-device-1";
const THROTTLED: &str = "compat-throttled";

#[tokio::test]
async fn real_azure_iothub_works_against_the_emulator() {
    let compat = compat_dir();
    require_package(
        &compat,
        "azure-iothub",
        "tests/compat/node_modules/azure-iothub",
    );

    let emu = IotHubEmulator::start(HUB, vec![Policy::new("iothubowner", KEY, true)])
        .await
        .expect("emulator starts");
    let ca = TempFile::new("iothub-emulator-ca", "pem");
    std::fs::write(&ca.0, emu.ca_pem()).expect("CA file written");
    // The SDK does not retry registry calls: the script expects a ThrottlingError here.
    emu.inject_fault(
        Fault::new(429)
            .method("GET")
            .path(&format!("/devices/{THROTTLED}?"))
            .retry_after(1),
    );

    let output = NodeScript::new(&compat, "iothub-compat.mjs")
        .env(
            "IOTHUB_CONNECTION_STRING",
            emu.connection_string("iothubowner"),
        )
        .env("IOTHUB_TLS_PORT", emu.tls_port().to_string())
        .env("DEVICE_ID", DEVICE)
        .env("IOTHUB_THROTTLED_ID", THROTTLED)
        .env("NODE_EXTRA_CA_CERTS", &ca.0)
        .output(120, "azure-iothub")
        .await;
    let reqs = emu.requests();
    let log: Vec<String> = reqs
        .iter()
        .map(|r| {
            format!(
                "{} {} {} if-match={:?} policy={:?}",
                r.status, r.method, r.path_and_query, r.if_match, r.policy
            )
        })
        .collect();
    let log = log.join("\n");
    assert_script_passed(&output, "azure-iothub", &log);

    // The device and the sas one the script made are gone.
    assert!(emu.device(DEVICE).is_none(), "{log}");
    assert!(emu.device_ids().is_empty(), "{:?}", emu.device_ids());

    // What the SDK sent: every call with api-version 2021-04-12; create without If-Match,
    // update and delete with `"*"`.
    for r in &reqs {
        assert!(
            r.path_and_query.ends_with("?api-version=2021-04-12"),
            "{}",
            r.path_and_query
        );
    }
    let sdk_sas = format!("{DEVICE}-sas");
    assert!(saw(&reqs, "PUT", DEVICE, 200), "{log}");
    assert!(saw(&reqs, "PUT", DEVICE, 409), "{log}");
    assert!(saw(&reqs, "GET", DEVICE, 200), "{log}");
    assert!(saw(&reqs, "PUT", &sdk_sas, 200), "{log}");
    assert!(saw(&reqs, "DELETE", DEVICE, 204), "{log}");
    assert!(saw(&reqs, "DELETE", &sdk_sas, 204), "{log}");
    assert!(saw(&reqs, "GET", DEVICE, 404), "{log}");
    assert!(saw(&reqs, "DELETE", DEVICE, 404), "{log}");
    assert!(saw(&reqs, "GET", DEVICE, 401), "{log}");
    assert!(saw(&reqs, "GET", THROTTLED, 429), "{log}");
    assert!(
        reqs.iter().any(|r| r.method == "GET"
            && r.path_and_query.starts_with("/devices/?")
            && r.status == 200),
        "list: {log}"
    );
    let creates: Vec<&RecordedRequest> = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.status == 200 && r.if_match.is_none())
        .collect();
    assert_eq!(creates.len(), 2, "{log}");
    assert!(
        reqs.iter()
            .filter(|r| r.method == "DELETE" || (r.method == "PUT" && r.if_match.is_some()))
            .all(|r| r.if_match.as_deref() == Some("\"*\"")),
        "{log}"
    );
    // Only the wrong-key call and the injected fault were not served with the policy.
    for r in &reqs {
        assert!(
            r.policy.as_deref() == Some("iothubowner") || matches!(r.status, 401 | 429),
            "{log}"
        );
    }
    emu.shutdown().await;
}
