//! Runs the real published `balena-sdk` (pinned in tests/compat/package.json) against the
//! emulator: `tests/compat/balena-sdk-compat.mjs` reads a device, sets, reads, upserts and
//! removes device and service variables and tags, and this test checks it passed and what the
//! emulator saw. Needs `node` and `npm ci --prefix tests/compat`.

mod support;

use std::time::Duration;

use provision_emulators::balena::{BalenaEmulator, Fault};
use support::{NodeScript, assert_script_passed, compat_dir, position, require_package, saw};

const KEY: &str = "compat-user-key";
const UUID: &str = "0123456789abcdef0123456789abcdef";
const SERVICE: &str = "main";

#[tokio::test]
async fn real_balena_sdk_works_against_the_emulator() {
    let compat = compat_dir();
    require_package(&compat, "balena-sdk", "tests/compat/node_modules");

    let emu = BalenaEmulator::start().await.expect("emulator starts");
    let app = emu.add_application("CompatFleet");
    emu.add_service(app, SERVICE);
    let device = emu.add_device(app, UUID);
    emu.add_user_key(KEY);
    // The second device read is answered 429 once; the SDK, created with
    // retryRateLimitedRequests, must wait Retry-After and retry.
    emu.inject_fault(
        Fault::new(429)
            .method("GET")
            .resource("device")
            .retry_after(1)
            .skip(1),
    );

    let output = NodeScript::new(&compat, "balena-sdk-compat.mjs")
        .args([emu.url().as_str(), KEY, UUID, SERVICE])
        .output(180, "balena-sdk")
        .await;
    let reqs = emu.requests();
    let log: Vec<String> = reqs
        .iter()
        .map(|r| format!("{} {} {}", r.status, r.method, r.path_and_query))
        .collect();
    assert_script_passed(&output, "balena-sdk", &log.join("\n"));

    // Every request the SDK sent was understood: nothing but the injected 429, the upserts'
    // 409s and successes.
    for r in &reqs {
        assert!(
            matches!(r.status, 200 | 201 | 409 | 429),
            "unexpected answer: {} {} {}",
            r.status,
            r.method,
            r.path_and_query
        );
        assert_eq!(r.key.as_deref(), Some(KEY), "{}", r.path_and_query);
    }
    let rate_limited = position(&reqs, "GET", "device", 429).expect("the injected 429 was served");
    assert_eq!(
        reqs[rate_limited + 1].method,
        "GET",
        "the SDK retried the rate-limited read"
    );
    assert_eq!(
        reqs[rate_limited + 1].path_and_query,
        reqs[rate_limited].path_and_query
    );
    assert!(
        reqs[rate_limited + 1]
            .started
            .duration_since(reqs[rate_limited].finished)
            >= Duration::from_millis(900)
    );

    // The variables existed during the run (created, then upserted through 409 + PATCH, then
    // removed) and are gone at the end.
    for resource in [
        "device_environment_variable",
        "device_service_environment_variable",
        "device_tag",
    ] {
        let created = position(&reqs, "POST", resource, 201)
            .unwrap_or_else(|| panic!("no created {resource}"));
        let conflict = position(&reqs, "POST", resource, 409)
            .unwrap_or_else(|| panic!("no upsert 409 on {resource}"));
        let patched = position(&reqs, "PATCH", resource, 200)
            .unwrap_or_else(|| panic!("no upsert PATCH on {resource}"));
        let removed = position(&reqs, "DELETE", resource, 200)
            .unwrap_or_else(|| panic!("no DELETE of {resource}"));
        assert!(
            created < conflict && conflict < patched && patched < removed,
            "{resource} order"
        );
    }
    assert!(saw(&reqs, "GET", "service_install", 200));
    assert!(
        emu.device_vars(device).is_empty(),
        "{:?}",
        emu.device_vars(device)
    );
    assert!(emu.service_vars(device, SERVICE).is_empty());
    assert!(emu.device_tags(device).is_empty());
    emu.shutdown().await;
}
