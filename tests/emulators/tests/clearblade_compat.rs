//! Runs the real published `@clearblade/iot` client (pinned in tests/compat/package.json)
//! against the ClearBlade IoT Core emulator over HTTPS: `tests/compat/clearblade-compat.mjs`
//! creates a device with an ES256_PEM key, reads it (by id, by numId, with a field mask),
//! updates its credentials to two keys, lists, deletes it, and checks the client's errors (409,
//! 400, 404, unknown registry, wrong admin token, an injected 503); this test checks it passed
//! and what the emulator saw and holds. Needs `node` and `npm ci --prefix tests/compat`.
//!
//! The client always dials port 443 of the host in its URLs (a `host:port` goes to DNS whole),
//! so the script routes its https.Agent to the emulator's port; see the script's header.

mod support;

use provision_emulators::clearblade::{ClearBladeEmulator, Fault, RecordedRequest};
use serde_json::Value;
use support::{NodeScript, assert_script_passed, compat_dir, require_package, saw, temp_file};

const PROJECT: &str = "provision-test";
const REGION: &str = "us-central1";
const REGISTRY: &str = "balena-devices";
const DEVICE: &str = "balena-compat-1";
const KEPT: &str = "balena-compat-kept";
const THROTTLED: &str = "balena-compat-throttled";

#[tokio::test]
async fn real_clearblade_iot_works_against_the_emulator() {
    let compat = compat_dir();
    require_package(
        &compat,
        "@clearblade/iot",
        "tests/compat/node_modules/@clearblade/iot",
    );

    let emu = ClearBladeEmulator::start(PROJECT, &[(REGION, REGISTRY), ("europe-west1", "other")])
        .await
        .expect("emulator starts");
    // The client speaks HTTPS only: the service account points at the TLS side.
    let mut service_account = emu.service_account_json();
    service_account["url"] = Value::String(emu.tls_url());
    let sa = temp_file("clearblade-sa", "json", &service_account.to_string());
    let ca = temp_file("clearblade-emulator-ca", "pem", &emu.ca_pem());
    let key1 = rcgen::KeyPair::generate().expect("key").public_key_pem();
    let key2 = rcgen::KeyPair::generate().expect("key").public_key_pem();
    emu.inject_fault(
        Fault::new(503)
            .method("GET")
            .path(&format!("/devices/{THROTTLED}"))
            .retry_after(1),
    );

    let output = NodeScript::new(&compat, "clearblade-compat.mjs")
        .env("CLEARBLADE_CONFIGURATION", &sa.0)
        .env("CB_REGION", REGION)
        .env("CB_REGISTRY", REGISTRY)
        .env("DEVICE_ID", DEVICE)
        .env("KEPT_DEVICE_ID", KEPT)
        .env("KEY1_PEM", &key1)
        .env("KEY2_PEM", &key2)
        .env("CB_THROTTLED_ID", THROTTLED)
        .env("NODE_EXTRA_CA_CERTS", &ca.0)
        .output(120, "@clearblade/iot")
        .await;
    let reqs = emu.requests();
    let log: Vec<String> = reqs
        .iter()
        .map(|r| {
            format!(
                "{} {} {} tls={} registry={:?} body={}",
                r.status,
                r.method,
                r.path_and_query(),
                r.tls,
                r.registry,
                r.body
            )
        })
        .collect();
    let log = log.join("\n");
    assert_script_passed(&output, "@clearblade/iot", &log);

    // State: the first device is gone, the kept one has the two keys in the order sent.
    assert!(emu.device(REGION, REGISTRY, DEVICE).is_none(), "{log}");
    assert_eq!(emu.device_ids(REGION, REGISTRY), vec![KEPT.to_string()]);
    assert_eq!(
        emu.public_keys(REGION, REGISTRY, KEPT),
        Some(vec![key2.clone(), key1.clone()])
    );
    let kept = emu.device(REGION, REGISTRY, KEPT).expect("kept device");
    assert_eq!(kept["credentials"][0]["publicKey"]["format"], "ES256_PEM");

    // Everything went over TLS.
    assert!(reqs.iter().all(|r| r.tls), "{log}");

    // The credentials exchange: once per (region, registry) and client (the client caches it),
    // with the admin key in the path and {"region","registry","project"} in that order.
    let exchanges: Vec<&RecordedRequest> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/getRegistryCredentials"))
        .collect();
    let expected_path = format!(
        "/api/v/1/code/{}/getRegistryCredentials",
        emu.admin_system_key()
    );
    assert!(
        exchanges
            .iter()
            .all(|r| r.method == "POST" && r.path == expected_path && r.query.is_empty()),
        "{log}"
    );
    let good = exchanges
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.body.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        good,
        vec![format!(
            r#"{{"region":"{REGION}","registry":"{REGISTRY}","project":"{PROJECT}"}}"#
        )],
        "{log}"
    );
    assert!(
        exchanges.iter().any(|r| r.status == 404),
        "unknown registry: {log}"
    );
    assert!(
        exchanges.iter().any(|r| r.status == 401),
        "wrong admin token: {log}"
    );

    // The device calls, as the client sends them.
    let (key, _) = emu
        .registry_credentials(REGION, REGISTRY)
        .expect("registry");
    let devices_path = format!("/api/v/4/webhook/execute/{key}/cloudiot_devices");
    let name = emu.device_path(REGION, REGISTRY, DEVICE);
    for r in reqs.iter().filter(|r| r.path.contains("/webhook/")) {
        assert_eq!(r.path, devices_path, "{log}");
    }
    let create = reqs
        .iter()
        .find(|r| r.method == "POST" && r.device.as_deref() == Some(DEVICE) && r.status == 200)
        .expect("create");
    assert_eq!(create.query, "", "create sends no parent");
    let body: Value = serde_json::from_str(&create.body).expect("create body is JSON");
    assert_eq!(body["id"], DEVICE);
    assert_eq!(body["credentials"][0]["publicKey"]["format"], "ES256_PEM");
    assert!(saw(&reqs, "POST", DEVICE, 409), "{log}");
    assert!(saw(&reqs, "POST", &format!("{DEVICE}-bad"), 400), "{log}");
    assert!(
        reqs.iter()
            .any(|r| r.method == "GET" && r.query == format!("name={name}") && r.status == 200),
        "get by id, name unencoded: {log}"
    );
    assert!(
        reqs.iter().any(|r| r.method == "GET"
            && r.query == format!("name={name}&fieldMask=metadata")
            && r.status == 200),
        "{log}"
    );
    let update = reqs
        .iter()
        .find(|r| r.method == "PATCH" && r.status == 200)
        .expect("update");
    assert_eq!(update.query, format!("name={name}&updateMask=credentials"));
    let body: Value = serde_json::from_str(&update.body).expect("update body is JSON");
    assert_eq!(
        body["name"],
        name.as_str(),
        "the device JSON carries its name"
    );
    assert_eq!(body["credentials"][0]["publicKey"]["key"], key2.as_str());
    assert!(
        reqs.iter().any(|r| r.method == "PATCH"
            && r.query == format!("name={name}&updateMask=undefined")
            && r.status == 400),
        "an update without a mask sends updateMask=undefined: {log}"
    );
    assert!(
        reqs.iter().any(|r| r.method == "GET"
            && r.query.starts_with("parent=projects%2F")
            && r.body.starts_with("{\"parent\":")
            && r.status == 200),
        "list: URLSearchParams query and a {{\"parent\"}} body on a GET: {log}"
    );
    assert!(saw(&reqs, "DELETE", DEVICE, 200), "{log}");
    assert!(saw(&reqs, "GET", DEVICE, 404), "{log}");
    assert!(saw(&reqs, "DELETE", DEVICE, 404), "{log}");
    assert!(saw(&reqs, "GET", THROTTLED, 503), "{log}");
    emu.shutdown().await;
}
