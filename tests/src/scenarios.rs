//! Scenario material every cloud's tests share, so each cloud is held to the same list.

use serde_json::json;

use crate::events::Call;

/// Every caller mistake of the contract, with the exact status and code it must get. None of
/// them may reach an upstream.
pub fn caller_mistakes(uuid: &str) -> Vec<(Call, u16, &'static str)> {
    let json_body = |raw: &str| {
        Call::new("POST", "/provision")
            .raw_body(raw)
            .header("content-type", "application/json")
    };
    let big = "x".repeat(70 * 1024);
    vec![
        (
            Call::new("POST", "/provision").header("content-type", "application/json"),
            400,
            "provision.request.no-body",
        ),
        (json_body("{\"uuid\": "), 400, "provision.request.bad-json"),
        (json_body("[1,2]"), 400, "provision.request.bad-json"),
        (
            json_body(&format!("{{\"uuid\":\"{uuid}\",\"uuid\":\"{uuid}\"}}")),
            400,
            "provision.request.bad-json",
        ),
        (
            Call::post(json!({"uuid": uuid, "rotate": "yes"})),
            400,
            "provision.request.bad-json",
        ),
        (Call::post(json!({})), 400, "provision.request.bad-uuid"),
        (
            Call::post(json!({"uuid": 42})),
            400,
            "provision.request.bad-uuid",
        ),
        (
            Call::post(json!({"uuid": uuid.to_uppercase()})),
            400,
            "provision.request.bad-uuid",
        ),
        (
            Call::post(json!({"uuid": format!("{}' or 1 eq 1 or uuid eq '", &uuid[..8])})),
            400,
            "provision.request.bad-uuid",
        ),
        (
            Call::post(json!({"uuid": uuid, "balena_service": "a' or name eq 'b"})),
            400,
            "provision.request.bad-service",
        ),
        (
            Call::post(json!({"uuid": uuid, "balena_service": 7})),
            400,
            "provision.request.bad-service",
        ),
        (
            Call::post(json!({"uuid": uuid, "csr": "not a csr"})),
            400,
            "provision.request.bad-csr",
        ),
        (Call::get(""), 400, "provision.request.bad-uuid"),
        (Call::get("uuid=abc"), 400, "provision.request.bad-uuid"),
        (
            Call::new("PUT", "/provision").json(json!({"uuid": uuid})),
            405,
            "provision.request.bad-method",
        ),
        (
            Call::new("PATCH", "/provision").json(json!({"uuid": uuid})),
            405,
            "provision.request.bad-method",
        ),
        (
            json_body(&format!("{{\"uuid\":\"{uuid}\",\"pad\":\"{big}\"}}")),
            413,
            "provision.request.too-large",
        ),
        (
            Call::new("POST", "/provision")
                .raw_body(&json!({"uuid": uuid}).to_string())
                .header("content-type", "text/plain"),
            415,
            "provision.request.bad-content-type",
        ),
        (
            Call::new("POST", "/provision").raw_body(&json!({"uuid": uuid}).to_string()),
            415,
            "provision.request.bad-content-type",
        ),
    ]
}

/// Checks one answer to a caller mistake: status, code, a message, JSON, and `Allow` on 405.
pub fn check_mistake(answer: &crate::events::Answer, status: u16, code: &str, described: &str) {
    assert_eq!(
        (answer.status, answer.error_code()),
        (status, code),
        "{described}: {}",
        answer.raw_body
    );
    assert_eq!(
        answer.headers.get("content-type").map(String::as_str),
        Some("application/json"),
        "{described}"
    );
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{described}"
    );
    assert!(answer.body["request_id"].is_string(), "{described}");
    if status == 405 {
        assert_eq!(
            answer.headers.get("allow").map(String::as_str),
            Some("GET, POST, DELETE"),
            "{described}"
        );
    }
}

pub fn describe(call: &Call) -> String {
    format!(
        "{} {:?} {:?}",
        call.method,
        call.headers,
        call.body.as_deref().map(|b| &b[..b.len().min(80)])
    )
}

// ---------------------------------------------------------------------------------------------
// The scenario list every cloud runs, written once against `Stack`. `shared_scenarios!` turns it
// into one test per scenario in a cloud's test file.

use crate::Fault;
use crate::checks::{Target, balena_variable_writes, decode, vars};
use crate::stack::Stack;
use crate::world::{CallerRole, Options};
use provision_emulators::fault_proxy::{Exchange, FaultKind, PlannedFault, Traffic};

/// No fleet or registry secret in anything the function printed (after it stopped, so nothing
/// is still buffered).
async fn assert_no_secret_logged<S: Stack>(world: &S, extra: &[String]) {
    world.stop_functions_and_wait().await;
    let mut needles = world.secret_strings(&[]);
    needles.extend(world.registry_secrets());
    needles.extend(extra.iter().cloned());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let lines = world.logs().lines();
    assert!(
        lines.iter().any(|l| l.contains("answered")),
        "the function logged its requests (debug on): {lines:?}"
    );
    let leaks = world.logs().containing(&needles);
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:?}");
}

/// Create, POST again (no writes), GET, rotate, DELETE twice, with the registry's and
/// balenaCloud's state checked at each step and no secret in the logs.
pub async fn lifecycle<S: Stack>(target: Target) {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;

    // A device provisions itself with its own key.
    let created = world
        .call(Call::post(target.body(&device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_eq!(created.status_text(), "created");
    assert_eq!(created.body["cloud"], S::CLOUD.as_str());
    assert_eq!(created.body["uuid"], device.uuid.as_str());
    assert_eq!(created.body["device_id"], S::device_id(&device.uuid));
    assert_eq!(created.body["variables"], json!(S::all_variables()));
    assert!(
        created.body["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(
        created.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let first = world.assert_provisioned(&device, target, false).await;
    let other_target = if target == Target::Device {
        Target::Service
    } else {
        Target::Device
    };
    assert!(
        vars(&world, &device, other_target).await.is_empty(),
        "only the asked-for target holds variables"
    );

    // The same request again changes nothing.
    world.balena.clear_requests();
    let again = world
        .call(Call::post(target.body(&device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.status_text()),
        (200, "already-provisioned"),
        "{}",
        again.raw_body
    );
    assert_eq!(again.body["variables"], json!([]));
    assert_eq!(
        balena_variable_writes(&world),
        0,
        "nothing written to balenaCloud"
    );
    assert_eq!(
        world.assert_provisioned(&device, target, false).await,
        first,
        "the credential is unchanged"
    );

    // GET reports it, without values.
    let query = match target {
        Target::Device => format!("uuid={}", device.uuid),
        Target::Service => format!(
            "uuid={}&balena_service={}",
            device.uuid,
            crate::world::SERVICE
        ),
    };
    let status = world
        .call(Call::get(&query).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (status.status, status.status_text()),
        (200, "provisioned"),
        "{}",
        status.raw_body
    );
    assert_eq!(
        status.body["details"]["registry"]["credentials"][0]["id"],
        first.id.as_str(),
        "{}",
        status.raw_body
    );
    assert_eq!(
        status.body["details"]["variables"][S::CSR_VARS[0]],
        true,
        "{}",
        status.raw_body
    );
    let stored = vars(&world, &device, target).await;
    assert!(
        stored
            .values()
            .all(|v| !status.raw_body.contains(v.as_str()))
            && !status.raw_body.contains("BEGIN"),
        "GET never returns values"
    );

    // Rotation: a new credential stored, the old one gone from the registry.
    let mut body = target.body(&device.uuid);
    body["rotate"] = json!(true);
    let rotated = world
        .call(Call::post(body).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (rotated.status, rotated.status_text()),
        (200, "rotated"),
        "{}",
        rotated.raw_body
    );
    let second = world.assert_provisioned(&device, target, false).await;
    assert_ne!(second.id, first.id, "a new credential");
    let remaining = world.credentials().await;
    assert!(
        remaining.iter().all(|c| c.id != first.id),
        "the old credential is removed: {remaining:?}"
    );

    // The operator removes it; then there is nothing to remove.
    let deleted = world
        .call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token))
        .await
        .unwrap();
    assert_eq!(
        (deleted.status, deleted.status_text()),
        (200, "deleted"),
        "{}",
        deleted.raw_body
    );
    assert_eq!(deleted.body["variables"], json!(S::all_variables()));
    world.assert_gone(&device, target).await;
    let again = world
        .call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.status_text()),
        (200, "not-provisioned"),
        "{}",
        again.raw_body
    );
    let status = world
        .call(Call::get(&query).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        status.status_text(),
        "not-provisioned",
        "{}",
        status.raw_body
    );

    assert_no_secret_logged(&world, std::slice::from_ref(&device.key)).await;
    world.stop().await;
}

/// 401 for no, unusable or unknown keys; 403 for a key that cannot see the device (also for
/// an unknown UUID); 404 for the operator asking about an unknown UUID. Nothing is created.
pub async fn auth_failures<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let other = world.add_device().await;
    let body = json!({"uuid": device.uuid});

    let missing = world.call(Call::post(body.clone())).await.unwrap();
    assert_eq!(
        (missing.status, missing.error_code()),
        (401, "provision.auth.missing")
    );
    let scheme = world
        .call(Call::post(body.clone()).header("authorization", "Basic Zm9vOmJhcg=="))
        .await
        .unwrap();
    assert_eq!(
        (scheme.status, scheme.error_code()),
        (401, "provision.auth.invalid")
    );
    let unknown = world
        .call(Call::post(body.clone()).bearer("not-a-key-balena-knows"))
        .await
        .unwrap();
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (401, "provision.auth.invalid")
    );
    let forbidden = world
        .call(Call::post(body.clone()).bearer(&other.key))
        .await
        .unwrap();
    assert_eq!(
        (forbidden.status, forbidden.error_code()),
        (403, "provision.auth.forbidden")
    );
    assert!(
        forbidden.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&device.uuid[..7])
    );
    let nobody = world
        .call(
            Call::post(json!({"uuid": "0123456789abcdef0123456789abcdef"}))
                .bearer(&world.secrets.operator_token),
        )
        .await
        .unwrap();
    assert_eq!(
        (nobody.status, nobody.error_code()),
        (404, "provision.device.not-found")
    );
    // A device key for an unknown UUID is 403, not 404: it must not learn which UUIDs exist.
    let probe = world
        .call(Call::post(json!({"uuid": "0123456789abcdef0123456789abcdef"})).bearer(&other.key))
        .await
        .unwrap();
    assert_eq!(
        (probe.status, probe.error_code()),
        (403, "provision.auth.forbidden")
    );

    assert!(!world.has_entry(&device).await, "no registry entry");
    assert!(world.credentials().await.is_empty(), "no credential");
    assert_eq!(balena_variable_writes(&world), 0);
    world.stop().await;
}

/// `PROVISION_ALLOW_UNAUTHENTICATED=true` lets a caller without credentials (balena's published
/// cloud-relay block) get a device provisioned with credentials the function makes, and no
/// more: a CSR, a rotation or a removal without credentials is 401 with nothing changed, GET
/// has no `details`. A key that is given is still checked.
pub async fn unauthenticated_mode<S: Stack>() {
    let world = S::start_with(Options {
        allow_unauthenticated: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(Target::Service.body(&device.uuid)))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let first = world
        .assert_provisioned(&device, Target::Service, false)
        .await;
    let again = world
        .call(Call::post(Target::Service.body(&device.uuid)))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.status_text()),
        (200, "already-provisioned"),
        "{}",
        again.raw_body
    );

    // Everything that would hand the device's identity to someone else, or take it away.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr_for = |cn: &str| csr_pem(&key, cn);
    let fresh = world.add_device().await;
    let mut rotate = Target::Service.body(&device.uuid);
    rotate["rotate"] = json!(true);
    let refused = [
        (
            "a CSR for a provisioned device",
            Call::post(
                json!({"uuid": device.uuid, "balena_service": crate::world::SERVICE, "csr": csr_for(&device.uuid)}),
            ),
        ),
        (
            "a CSR for a new device",
            Call::post(json!({"uuid": fresh.uuid, "csr": csr_for(&fresh.uuid)})),
        ),
        ("a rotation", Call::post(rotate)),
        (
            "a removal",
            Call::delete(Target::Service.body(&device.uuid)),
        ),
    ];
    world.balena.clear_requests();
    let registry_before = world.registry_calls();
    for (what, call) in refused {
        let answer = world.call(call).await.unwrap();
        assert_eq!(
            (answer.status, answer.error_code()),
            (401, "provision.auth.missing"),
            "{what}: {}",
            answer.raw_body
        );
        assert!(
            answer.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("needs credentials"),
            "{what}: {}",
            answer.raw_body
        );
    }
    assert_eq!(
        world.balena.requests().len(),
        0,
        "refused before any balenaCloud call"
    );
    assert_eq!(
        world.registry_calls(),
        registry_before,
        "refused before any registry call"
    );
    assert_eq!(
        world
            .assert_provisioned(&device, Target::Service, false)
            .await,
        first,
        "the credential is unchanged"
    );
    assert!(
        !world.has_entry(&fresh).await,
        "nothing registered for the new device"
    );

    let status = world
        .call(Call::get(&format!(
            "uuid={}&balena_service={}",
            device.uuid,
            crate::world::SERVICE
        )))
        .await
        .unwrap();
    assert_eq!(
        (status.status, status.status_text()),
        (200, "provisioned"),
        "{}",
        status.raw_body
    );
    assert!(
        status.body.get("details").is_none(),
        "no details without credentials: {}",
        status.raw_body
    );

    let other = world.add_device().await;
    let forbidden = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&other.key))
        .await
        .unwrap();
    assert_eq!(
        (forbidden.status, forbidden.error_code()),
        (403, "provision.auth.forbidden")
    );
    // The device's own key may do everything.
    let mut rotate = Target::Service.body(&device.uuid);
    rotate["rotate"] = json!(true);
    let rotated = world
        .call(Call::post(rotate).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(rotated.status_text(), "rotated", "{}", rotated.raw_body);
    world.stop().await;
}

/// Authority is identity: a fleet member's key sees every device of its fleets but is not any
/// of them. By default an observer's, a member's and the fleet's own key may change nothing
/// (403, saying to use the device's own key or the operator token; nothing changes upstream);
/// with `PROVISION_ACCEPT_USER_KEYS=true` a member's may, the fleet's (which sees no device)
/// still may not. On the real server another user key plays observer and member (see
/// [`crate::world::Fleet::caller_key`]).
pub async fn a_user_key_is_not_the_device<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let keys = vec![
        (
            "an observer's key",
            world.caller_key(CallerRole::Observer).await,
        ),
        ("a member's key", world.caller_key(CallerRole::Member).await),
        ("the fleet's key", world.caller_key(CallerRole::Fleet).await),
    ];
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = csr_pem(&key_pair, &device.uuid);
    world.balena.clear_requests();
    for (whose, key) in &keys {
        for (what, body, delete) in [
            ("POST", json!({"uuid": device.uuid}), false),
            (
                "rotate",
                json!({"uuid": device.uuid, "rotate": true}),
                false,
            ),
            ("csr", json!({"uuid": device.uuid, "csr": csr}), false),
            ("DELETE", json!({"uuid": device.uuid}), true),
        ] {
            let call = if delete {
                Call::delete(body)
            } else {
                Call::post(body)
            };
            let answer = world.call(call.bearer(key)).await.unwrap();
            assert_eq!(
                (answer.status, answer.error_code()),
                (403, "provision.auth.forbidden"),
                "{whose}, {what}: {}",
                answer.raw_body
            );
            assert!(
                answer.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("own key"),
                "{whose}, {what}: the answer says what to use: {}",
                answer.raw_body
            );
        }
    }
    assert!(!world.has_entry(&device).await, "no registry entry");
    assert!(world.credentials().await.is_empty(), "no credential");
    let writes = world
        .balena
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert_eq!(writes, 0, "nothing written to balenaCloud");
    world.stop().await;

    // The operator's opt-in: a user key that sees the device may act on it.
    let world = S::start_with(Options {
        extra_env: vec![("PROVISION_ACCEPT_USER_KEYS".into(), "true".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let user_key = world.caller_key(CallerRole::Member).await;
    let fleet_key = world.caller_key(CallerRole::Fleet).await;
    let refused = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&fleet_key))
        .await
        .unwrap();
    assert_eq!(
        (refused.status, refused.error_code()),
        (403, "provision.auth.forbidden"),
        "the fleet's key sees no device: {}",
        refused.raw_body
    );
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&user_key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&user_key))
        .await
        .unwrap();
    assert_eq!(deleted.status_text(), "deleted", "{}", deleted.raw_body);
    world.assert_gone(&device, Target::Device).await;
    world.stop().await;
}

/// Every caller mistake gets its status and code before any upstream call; so does `/healthz`.
pub async fn caller_mistakes_make_no_upstream_call<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    for (call, status, code) in caller_mistakes(&device.uuid) {
        let described = describe(&call);
        let answer = world.call(call.bearer(&device.key)).await.unwrap();
        check_mistake(&answer, status, code, &described);
    }
    let health = world.call(Call::new("GET", "/healthz")).await.unwrap();
    assert_eq!(
        (health.status, health.body.clone()),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(world.balena.requests().len(), 0, "no balenaCloud call");
    assert_eq!(world.registry_calls(), 0, "no registry call");
    world.stop().await;
}

/// A CSR for the device's own key: the certificate carries that key, no private key is stored,
/// the same request again is idempotent, and a CSR naming another device is refused.
pub async fn a_device_keeps_its_key_with_a_csr<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr_for = |cn: &str| csr_pem(&key, cn);
    let csr = csr_for(&device.uuid);

    let created = world
        .call(Call::post(json!({"uuid": device.uuid, "csr": csr})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_eq!(created.body["variables"], json!(S::CSR_VARS));
    let registered = world
        .assert_provisioned(&device, Target::Device, true)
        .await;
    use rcgen::PublicKeyData;
    assert_eq!(
        registered.public_key,
        key.der_bytes(),
        "the registered credential is for the device's key"
    );
    let again = world
        .call(Call::post(json!({"uuid": device.uuid, "csr": csr})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        again.status_text(),
        "already-provisioned",
        "{}",
        again.raw_body
    );

    // Rotating with a CSR for the key already registered (a device that asks twice) leaves the
    // device provisioned for that key: the new credential is never retired as its own
    // predecessor (ClearBlade names a credential by its key, so there "new" is "old").
    let rotated = world
        .call(
            Call::post(json!({"uuid": device.uuid, "csr": csr, "rotate": true}))
                .bearer(&device.key),
        )
        .await
        .unwrap();
    assert_eq!(rotated.status, 200, "{}", rotated.raw_body);
    let registered = world
        .assert_provisioned(&device, Target::Device, true)
        .await;
    assert_eq!(
        registered.public_key,
        key.der_bytes(),
        "after a same-key rotation the device's key is still registered"
    );

    let foreign = csr_for("00000000000000000000000000000000");
    let refused = world
        .call(Call::post(json!({"uuid": device.uuid, "csr": foreign})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (refused.status, refused.error_code()),
        (400, "provision.request.bad-csr")
    );
    world.stop().await;
}

/// `PROVISION_KEY_TYPE=rsa-2048`: the device gets an RSA-2048 key, and the registry that key.
pub async fn rsa_keys_on_request<S: Stack>() {
    let world = S::start_with(Options {
        extra_env: vec![("PROVISION_KEY_TYPE".into(), "rsa-2048".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let registered = world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let stored_key = decode(&world.balena.device_vars(device.id).await[S::KEY_VAR]);
    let key = rcgen::KeyPair::from_pem(&stored_key).expect("the stored private key parses");
    assert!(
        key.is_compatible(&rcgen::PKCS_RSA_SHA256),
        "the stored key is RSA"
    );
    // An RSA-2048 public key (modulus and exponent, DER) is 270 bytes.
    assert_eq!(
        registered.public_key.len(),
        270,
        "a 2048-bit RSA key is registered"
    );
    let again = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        again.status_text(),
        "already-provisioned",
        "{}",
        again.raw_body
    );
    world.stop().await;
}

/// Someone empties the private key variable by hand: GET says `partial`, POST repairs it with
/// fresh credentials.
pub async fn a_half_provisioned_device_is_repaired<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let first = world
        .assert_provisioned(&device, Target::Device, false)
        .await;

    world.balena.set_device_var(device.id, S::KEY_VAR, "").await;
    let status = world
        .call(Call::get(&format!("uuid={}", device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(status.status_text(), "partial", "{}", status.raw_body);

    let repaired = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (repaired.status, repaired.status_text()),
        (200, "repaired"),
        "{}",
        repaired.raw_body
    );
    let second = world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    assert_ne!(second.id, first.id, "fresh credentials");
    world.stop().await;
}

/// Every variable write fails (past the retries) after the registry holds the new credential:
/// 502 naming the step, no active credential left, no variable, the lock released; a retry
/// converges.
pub async fn a_failed_balena_write_leaves_no_orphan<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    world.balena.emulator().inject_fault(
        Fault::new(500)
            .method("POST")
            .resource("device_environment_variable")
            .times(100),
    );
    let failed = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (failed.status, failed.error_code()),
        (502, "provision.upstream.balena"),
        "{}",
        failed.raw_body
    );
    let message = failed.body["error"]["message"].as_str().unwrap();
    // Which upstream and step failed, and how; the upstream's own text goes to the logs only.
    assert!(
        message.contains("storing the variables")
            && message.contains("unavailable")
            && message.contains("request_id")
            && !message.contains("Internal Server Error"),
        "{}",
        failed.raw_body
    );
    assert!(
        world.registry_calls() > 0,
        "the registry was reached before the write failed"
    );
    let active = world.active_credentials().await;
    assert!(
        active.is_empty(),
        "no credential left that would let a device in: {active:?}"
    );
    assert!(
        world.balena.device_vars(device.id).await.is_empty(),
        "no variable left behind"
    );
    assert_eq!(
        world.held_lock(&device, Target::Device).await,
        None,
        "the lock is released"
    );

    world.balena.emulator().clear_faults();
    let retried = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(retried.status, 201, "{}", retried.raw_body);
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    world.stop().await;
}

/// A 503 on a write and a 429 with Retry-After on a read are retried within the request.
pub async fn a_transient_balena_failure_is_retried<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    world.balena.emulator().inject_fault(
        Fault::new(503)
            .method("POST")
            .resource("device_environment_variable")
            .times(1),
    );
    world.balena.emulator().inject_fault(
        Fault::new(429)
            .method("GET")
            .resource("device")
            .retry_after(1)
            .times(1),
    );
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    world.stop().await;
}

/// Eight POSTs at once for one device over four function instances: one `created`, the rest
/// `already-provisioned`, one credential, no lock left.
pub async fn eight_concurrent_posts_end_with_one_credential<S: Stack>() {
    let world = S::start_with(Options {
        instances: 4,
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let calls = (0..8)
        .map(|_| world.call(Call::post(Target::Service.body(&device.uuid)).bearer(&device.key)));
    let answers = futures::future::join_all(calls).await;
    let statuses: Vec<String> = answers
        .into_iter()
        .map(|a| {
            let a = a.unwrap();
            assert!(a.status == 200 || a.status == 201, "{}", a.raw_body);
            a.status_text().to_string()
        })
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "created").count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| s == "created" || s == "already-provisioned"),
        "{statuses:?}"
    );
    let registered = world
        .assert_provisioned(&device, Target::Service, false)
        .await;
    assert_eq!(
        world.active_credentials().await,
        vec![registered.id],
        "one active credential in the registry"
    );
    assert_eq!(
        world.held_lock(&device, Target::Service).await,
        None,
        "no lock held"
    );
    world.stop().await;
}

/// Keys, tokens, the generated private key and registry secrets never reach the logs, also
/// when calls fail.
pub async fn no_secret_reaches_the_logs<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let key_var = world.balena.device_vars(device.id).await[S::KEY_VAR].clone();
    let key_pem = decode(&key_var);
    world
        .call(Call::post(json!({"uuid": device.uuid})).bearer("wrong-key-0123456789"))
        .await
        .unwrap();
    world
        .balena
        .emulator()
        .inject_fault(Fault::new(500).method("GET").times(100));
    let failed = world
        .call(
            Call::post(json!({"uuid": device.uuid, "rotate": true}))
                .bearer(&world.secrets.operator_token),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, 502, "{}", failed.raw_body);
    world.balena.emulator().clear_faults();

    let mut secrets = vec![
        device.key.clone(),
        "wrong-key-0123456789".to_string(),
        key_var.clone(),
    ];
    secrets.extend(
        key_pem
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_string),
    );
    assert!(
        key_pem.contains("PRIVATE KEY"),
        "the stored key is a PEM private key"
    );
    assert_no_secret_logged(&world, &secrets).await;
    world.stop().await;
}

/// A malformed setting stops the function at start-up with one line naming it, no panic.
pub async fn a_bad_setting_stops_the_function_with_one_line<S: Stack>() {
    for (name, value) in [
        ("PROVISION_ALLOW_UNAUTHENTICATED", "yes"),
        // Keys and credentials never cross a network in clear text: http only to loopback.
        ("BALENA_API_URL", "http://api.balena-cloud.com"),
    ] {
        let world = S::start_with(Options {
            extra_env: vec![(name.into(), value.into())],
            startup_fails: true,
            ..Options::default()
        })
        .await
        .unwrap();
        let status = world.wait_for_exit().await;
        assert!(
            !status.success(),
            "{name}={value}: the function exits non-zero"
        );
        world.stop_functions_and_wait().await;
        let lines = world.logs().lines();
        let named: Vec<_> = lines.iter().filter(|l| l.contains(name)).collect();
        assert_eq!(
            named.len(),
            1,
            "{name}={value}: one line names the variable: {lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("panicked") || l.contains("backtrace")),
            "{lines:?}"
        );
        world.stop().await;
    }
}

/// Every case of the hostile-input corpus gets its exact status and code (JSON, with a request
/// id), and only the cases that need balenaCloud reach an upstream; nothing is ever written.
pub async fn hostile_corpus<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let other = world.add_device().await;
    let cases = crate::corpus::load();
    assert!(
        cases.len() >= 80,
        "the corpus holds at least 80 requests: {}",
        cases.len()
    );
    let material = crate::corpus::Material::new(&device.uuid);
    let callers = crate::corpus::Callers {
        device_key: &device.key,
        other_key: &other.key,
        operator_token: &world.secrets.operator_token,
    };
    let mut failures = Vec::new();
    for case in &cases {
        let (balena_before, registry_before) =
            (world.balena.requests().len(), world.registry_calls());
        let answer = match world.call(case.call(&material, &callers)).await {
            Ok(answer) => answer,
            Err(e) => {
                failures.push(format!("{}: no answer: {e:#}", case.name));
                continue;
            }
        };
        let upstream = world.balena.requests().len() - balena_before + world.registry_calls()
            - registry_before;
        let code = answer.body["error"]["code"].as_str().map(str::to_string);
        let mut wrong = Vec::new();
        if answer.status != case.expect.status {
            wrong.push(format!(
                "status {} (expected {})",
                answer.status, case.expect.status
            ));
        }
        if let Some(expected) = &case.expect.code {
            if code.as_deref() != Some(expected.as_str()) {
                wrong.push(format!("code {code:?} (expected {expected})"));
            }
            if answer.headers.get("content-type").map(String::as_str) != Some("application/json")
                || !answer.body["request_id"].is_string()
            {
                wrong.push("not a JSON error with a request id".into());
            }
        }
        if !case.upstream && upstream > 0 {
            wrong.push(format!("{upstream} upstream calls (expected none)"));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {} — {}",
                case.name,
                wrong.join(", "),
                &answer.raw_body[..answer.raw_body.len().min(200)]
            ));
        }
    }
    assert_eq!(
        balena_variable_writes(&world),
        0,
        "nothing written to balenaCloud"
    );
    assert!(world.credentials().await.is_empty(), "nothing registered");
    assert!(
        failures.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    println!(
        "hostile corpus ({}): {} cases, all as expected",
        S::CLOUD,
        cases.len()
    );
    world.stop().await;
}

/// The device lock's generations: a change follows the latest tag (a stale earlier one is
/// ignored), tags whose time is long past are deleted beside a later take (the latest stays),
/// a live lock held by another request makes POST and DELETE answer `busy`, and a fast path
/// leaves its lock done without a release: the DELETE right after it does not wait.
pub async fn lock_generations<S: Stack>() {
    // A short budget: waiting for the lock gives up at half of it.
    let budget = (
        "PROVISION_REQUEST_BUDGET_MS".to_string(),
        "4000".to_string(),
    );
    let world = S::start_with(Options {
        extra_env: vec![budget],
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let operator = world.secrets.operator_token.clone();
    // Two old generations, both long expired (one a done removal, one released).
    world
        .balena
        .set_device_tag(
            device.id,
            "provision-lock-6",
            "old-request until 1000 goal gone",
        )
        .await;
    world
        .balena
        .set_device_tag(
            device.id,
            "provision-lock-7",
            "old-request until 2000 released",
        )
        .await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let tags = world.balena.device_tags(device.id).await;
    assert!(
        !tags.contains_key("provision-lock-6"),
        "an old generation is deleted: {tags:?}"
    );
    assert!(
        tags.contains_key("provision-lock-7"),
        "the generation it followed stays: {tags:?}"
    );
    let lock = &tags["provision-lock-8"];
    assert!(
        lock.contains(" goal key ") && !lock.ends_with("released"),
        "the fast path names its goal instead of a release: {lock}"
    );
    assert_eq!(
        world.held_lock(&device, Target::Device).await,
        None,
        "done: the device is provisioned with that key"
    );

    // Another request's live lock, a generation later: both POST (rotate) and DELETE wait, then
    // answer busy with Retry-After, changing nothing.
    world
        .balena
        .set_device_tag(
            device.id,
            "provision-lock-9",
            &format!("someone-else until {}", live_until()),
        )
        .await;
    let vars_before = world.balena.device_vars(device.id).await;
    for call in [
        Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key),
        Call::delete(json!({"uuid": device.uuid})).bearer(&operator),
    ] {
        let answer = world.call(call).await.unwrap();
        assert_eq!(
            (answer.status, answer.error_code()),
            (503, "provision.device.busy"),
            "{}",
            answer.raw_body
        );
        assert!(
            answer.headers.contains_key("retry-after"),
            "{}",
            answer.raw_body
        );
    }
    assert_eq!(
        world.balena.device_vars(device.id).await,
        vars_before,
        "nothing changed while another request held the lock"
    );
    world
        .balena
        .set_device_tag(
            device.id,
            "provision-lock-9",
            &format!("someone-else until {} released", live_until()),
        )
        .await;

    // DELETE follows at once (generation 10), and leaves its own lock done.
    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&operator))
        .await
        .unwrap();
    assert_eq!(
        (deleted.status, deleted.status_text()),
        (200, "deleted"),
        "{}",
        deleted.raw_body
    );
    world.assert_gone(&device, Target::Device).await;
    let tags = world.balena.device_tags(device.id).await;
    assert!(
        tags.get("provision-lock-10")
            .is_some_and(|v| v.contains(" goal gone")),
        "{tags:?}"
    );
    assert_eq!(world.held_lock(&device, Target::Device).await, None);
    // And a new POST follows that (generation 11).
    let again = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(again.status, 201, "{}", again.raw_body);
    assert!(
        world
            .balena
            .device_tags(device.id)
            .await
            .contains_key("provision-lock-11")
    );
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    // A done lock is about one target's variables: a request for the service's variables
    // judges it by the registry and goes ahead at once, not busy.
    let service = world
        .call(Call::post(Target::Service.body(&device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert!(matches!(service.status, 200 | 201), "{}", service.raw_body);
    assert!(
        world
            .balena
            .device_tags(device.id)
            .await
            .contains_key("provision-lock-12"),
        "{:?}",
        world.balena.device_tags(device.id).await
    );
    world.stop().await;
}

/// Twenty POSTs and DELETEs for one device, interleaved and all at once over four instances:
/// each answers (no deadlock, no 5xx but the contract's `busy`), the device ends either fully
/// provisioned or fully removed, and one more POST converges to one credential.
pub async fn twenty_interleaved_posts_and_deletes<S: Stack>() {
    let world = S::start_with(Options {
        instances: 4,
        ..Options::default()
    })
    .await
    .unwrap();
    let device = world.add_device().await;
    let operator = world.secrets.operator_token.clone();
    let calls = (0..20).map(|n| {
        let call = if n % 2 == 0 {
            Call::post(Target::Service.body(&device.uuid)).bearer(&device.key)
        } else {
            Call::delete(Target::Service.body(&device.uuid)).bearer(&operator)
        };
        world.call(call)
    });
    for answer in futures::future::join_all(calls).await {
        let answer = answer.unwrap();
        let ok = matches!(answer.status, 200 | 201)
            || (answer.status == 503 && answer.error_code() == "provision.device.busy");
        assert!(ok, "{} {}", answer.status, answer.raw_body);
    }
    assert_eq!(
        world.held_lock(&device, Target::Service).await,
        None,
        "no lock held"
    );
    if vars(&world, &device, Target::Service).await.is_empty() {
        world.assert_gone(&device, Target::Service).await;
        assert!(
            world.active_credentials().await.is_empty(),
            "removed: no credential left active"
        );
    } else {
        let registered = world
            .assert_provisioned(&device, Target::Service, false)
            .await;
        assert_eq!(
            world.active_credentials().await,
            vec![registered.id],
            "provisioned: one active credential"
        );
    }
    let last = world
        .call(Call::post(Target::Service.body(&device.uuid)).bearer(&device.key))
        .await
        .unwrap();
    assert!(matches!(last.status, 200 | 201), "{}", last.raw_body);
    let registered = world
        .assert_provisioned(&device, Target::Service, false)
        .await;
    assert_eq!(
        world.active_credentials().await,
        vec![registered.id],
        "one active credential in the registry"
    );
    world.stop().await;
}

/// A refused caller is cheap and learns nothing: no write, at most two balenaCloud calls, and
/// the same key again within the instance's memory of refusals costs no upstream call at all.
pub async fn a_refused_caller_is_cheap<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let other = world.add_device().await;
    for (whose, key, status) in [
        ("an unknown key", "not-a-key-balena-knows".to_string(), 401),
        ("another device's key", other.key.clone(), 403),
        (
            "an observer's key",
            world.caller_key(CallerRole::Observer).await,
            403,
        ),
        (
            "a member's key",
            world.caller_key(CallerRole::Member).await,
            403,
        ),
        (
            "the fleet's key",
            world.caller_key(CallerRole::Fleet).await,
            403,
        ),
    ] {
        world.balena.clear_requests();
        let registry_at_first = world.registry_calls();
        let first = world
            .call(Call::post(json!({"uuid": device.uuid})).bearer(&key))
            .await
            .unwrap();
        assert_eq!(first.status, status, "{whose}: {}", first.raw_body);
        assert_eq!(
            world.registry_calls(),
            registry_at_first,
            "{whose}: no registry call, even the first time"
        );
        let calls = world.balena.requests();
        assert!(
            calls.len() <= 2,
            "{whose}: at most two balenaCloud calls: {calls:?}"
        );
        assert!(
            calls.iter().all(|c| c.method == "GET"),
            "{whose}: no write: {calls:?}"
        );

        world.balena.clear_requests();
        let registry_before = world.registry_calls();
        for call in [
            Call::post(json!({"uuid": device.uuid})),
            Call::delete(json!({"uuid": device.uuid})),
            Call::post(json!({"uuid": "0123456789abcdef0123456789abcdef"})),
        ] {
            let again = world.call(call.bearer(&key)).await.unwrap();
            assert_eq!(again.status, status, "{whose}, again: {}", again.raw_body);
        }
        assert_eq!(
            world.balena.requests().len(),
            0,
            "{whose}, again: no balenaCloud call"
        );
        assert_eq!(
            world.registry_calls(),
            registry_before,
            "{whose}, again: no registry call"
        );
    }
    // The device's own key is not affected by what was refused before.
    let created = world
        .call(Call::post(json!({"uuid": other.uuid})).bearer(&other.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert!(
        !world.has_entry(&device).await,
        "nothing registered for the device asked about"
    );
    world.stop().await;
}

/// balenaCloud freezes a device (its own key then sees nothing, though `whoami` still names
/// it): the device's key may change nothing, before or after it was provisioned. Emulator only:
/// open-balena has no freezing.
pub async fn a_frozen_device_changes_nothing<S: Stack>() {
    let world = S::start().await.unwrap();
    let fresh = world.add_device().await;
    let provisioned = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": provisioned.uuid})).bearer(&provisioned.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let before = world.active_credentials().await;
    world.freeze(&fresh);
    world.freeze(&provisioned);
    world.balena.clear_requests();
    let registry_before = world.registry_calls();
    for (device, call) in [
        (&fresh, Call::post(json!({"uuid": fresh.uuid}))),
        (
            &provisioned,
            Call::post(json!({"uuid": provisioned.uuid, "rotate": true})),
        ),
        (
            &provisioned,
            Call::delete(json!({"uuid": provisioned.uuid})),
        ),
    ] {
        let described = describe(&call);
        let answer = world.call(call.bearer(&device.key)).await.unwrap();
        assert_eq!(
            (answer.status, answer.error_code()),
            (403, "provision.auth.forbidden"),
            "{described}: {}",
            answer.raw_body
        );
        assert!(
            answer.raw_body.contains("frozen"),
            "{described}: says why: {}",
            answer.raw_body
        );
    }
    assert_eq!(world.registry_calls(), registry_before, "no registry call");
    assert!(
        world.balena.requests().iter().all(|r| r.method == "GET"),
        "no write to balenaCloud"
    );
    assert_eq!(world.active_credentials().await, before, "nothing changed");
    assert!(!world.has_entry(&fresh).await, "nothing registered");
    world.stop().await;
}

/// A refused caller's answer does not cut off the device read made beside its proof: the read
/// ends, and its connection stays open for the next request (each new connection to
/// balenaCloud is a TLS handshake). The read is made slow, so the refusal is known first.
pub async fn a_refused_caller_closes_no_connection<S: Stack>() {
    let world = S::start_with(Options {
        faults: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let traffic = world.faults().expect("fault proxies").traffic.clone();
    traffic.set_keep_alive(true);
    let device = world.add_device().await;
    // A new unknown key each time: a refused key is remembered and then costs no call.
    let refused = |n: usize| {
        Call::post(json!({"uuid": device.uuid})).bearer(&format!("not-a-key-balena-knows-{n}"))
    };
    let is_read = |e: &Exchange| e.target.starts_with("/v7/device?");
    let first = world.call(refused(1)).await.unwrap();
    assert_eq!(first.status, 401, "{}", first.raw_body);
    let read = settled(&traffic, |log| log.iter().any(is_read))
        .await
        .into_iter()
        .find(is_read)
        .expect("the device read beside the proof")
        .label;
    traffic.plan(PlannedFault {
        label: read.clone(),
        occurrence: 1,
        kind: FaultKind::Slow { millis: 500 },
        attempts: 1,
    });
    let second = world.call(refused(2)).await.unwrap();
    assert_eq!(second.status, 401, "{}", second.raw_body);
    let log = settled(&traffic, |log| {
        log.iter().any(|e| e.label == read && e.fault.is_some())
    })
    .await;
    let slowed = log
        .iter()
        .find(|e| e.label == read && e.fault.is_some())
        .expect("the slowed read");
    assert!(
        slowed.status.is_some(),
        "the slowed read was given up mid-answer: {log:?}"
    );
    assert_eq!(
        traffic.closed().get("balena"),
        None,
        "the function closed a connection to balenaCloud: {log:?}"
    );
    world.stop().await;
}

/// The proxies' log once `ready` holds and every balenaCloud exchange in it has been answered
/// (or failed).
async fn settled(traffic: &Traffic, ready: impl Fn(&[Exchange]) -> bool) -> Vec<Exchange> {
    for _ in 0..3000 {
        let log = traffic.log();
        let balena_answered = log
            .iter()
            .filter(|e| e.label.starts_with("balena "))
            .all(|e| e.finished.is_some());
        if ready(&log) && balena_answered {
            return log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!(
        "the proxies' log did not settle in 30 s: {:?}",
        traffic.log()
    );
}

/// A POST for a device balenaCloud shows nothing of ours on registers without reading the
/// registry first (see `Provisioner::prove`); a registry entry it did not know of (an
/// operator's, or one an older version left) is found when creating it fails, read under the
/// lock, and used: the device ends provisioned with one credential, as from an empty registry.
pub async fn an_entry_the_function_did_not_know_is_read_before_use<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    world.add_bare_entry(&device).await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (created.status, created.status_text()),
        (201, "created"),
        "{}",
        created.raw_body
    );
    let registered = world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    assert_eq!(world.active_credentials().await, vec![registered.id]);
    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(deleted.status_text(), "deleted", "{}", deleted.raw_body);
    world.assert_gone(&device, Target::Device).await;
    world.stop().await;
}

/// A device deleted from balenaCloud while a request works on it (just as the request takes
/// its lock, which pinejs then refuses with a foreign-key 409): 404
/// `provision.device.not-found`, not 503 busy, and nothing registered is left behind.
/// Emulator only: it deletes the device at that exact step.
pub async fn a_device_deleted_while_its_lock_is_taken_is_not_found<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    world
        .balena
        .emulator()
        .delete_device_on("POST", "device_tag", device.id);
    let answer = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&world.secrets.operator_token))
        .await
        .unwrap();
    assert_eq!(
        (answer.status, answer.error_code()),
        (404, "provision.device.not-found"),
        "{}",
        answer.raw_body
    );
    assert!(
        world.active_credentials().await.is_empty(),
        "no credential left active"
    );
    world.stop().await;
}

/// A PEM CSR for `key` with common name `cn`, as a device that keeps its key sends it.
pub fn csr_pem(key: &rcgen::KeyPair, cn: &str) -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// An expiry a live holder would set: a minute from now.
pub fn live_until() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000
}

/// A device's own key may write its tags, so the lock must survive what a device can forge: a
/// generation at `u64::MAX` (no overflow, no panic), an expiry centuries ahead (garbage, not a
/// lock), a malformed value. None of them wedges the device: rotation and removal go through.
pub async fn forged_lock_tags_neither_panic_nor_wedge<S: Stack>() {
    let world = S::start().await.unwrap();
    let device = world.add_device().await;
    let created = world
        .call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    for (key, value) in [
        (
            "provision-lock-18446744073709551615",
            "forger until 99999999999999",
        ),
        ("provision-lock-1000", "forger until 99999999999999"),
        ("provision-lock-999", "garbage"),
    ] {
        world.balena.set_device_tag(device.id, key, value).await;
    }
    let rotated = world
        .call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(
        (rotated.status, rotated.status_text()),
        (200, "rotated"),
        "{}",
        rotated.raw_body
    );
    world
        .assert_provisioned(&device, Target::Device, false)
        .await;
    let tags = world.balena.device_tags(device.id).await;
    assert!(
        tags.contains_key("provision-lock-1001"),
        "the next change follows the highest sane generation: {tags:?}"
    );
    let deleted = world
        .call(Call::delete(json!({"uuid": device.uuid})).bearer(&device.key))
        .await
        .unwrap();
    assert_eq!(deleted.status_text(), "deleted", "{}", deleted.raw_body);
    world.assert_gone(&device, Target::Device).await;
    world.stop_functions_and_wait().await;
    let lines = world.logs().lines();
    assert!(
        !lines.iter().any(|l| l.contains("panicked")),
        "no panic: {lines:?}"
    );
    world.stop().await;
}

/// One `#[tokio::test]` per shared scenario for a world type, so every cloud runs the whole
/// list on the balenaCloud emulator: `provision_testkit::shared_scenarios!(AwsWorld);`
#[macro_export]
macro_rules! shared_scenarios {
    ($world:ty) => {
        mod shared {
            use super::*;
            $crate::scenarios_on_any_balena!($world);
            $crate::scenarios_needing_the_balena_emulator!($world);
        }
    };
}

/// The shared scenarios on the real balenaCloud API server (open-balena-api), in a module of
/// their own: `provision_testkit::shared_scenarios_on_open_balena!(aws, AwsWorld);`. They need
/// `OPEN_BALENA_URL` (see `open_balena`) and fail, saying so, without it.
#[macro_export]
macro_rules! shared_scenarios_on_open_balena {
    ($module:ident, $world:ty) => {
        mod $module {
            use super::*;
            $crate::scenarios_on_any_balena!($crate::stack::OnOpenBalena<$world>);
        }
    };
}

/// The scenarios that need nothing of balenaCloud but its API: they run on the emulator and on
/// the real server.
#[macro_export]
macro_rules! scenarios_on_any_balena {
    ($world:ty) => {
        #[tokio::test]
        async fn device_variables_lifecycle() {
            $crate::scenarios::lifecycle::<$world>($crate::checks::Target::Device).await;
        }
        #[tokio::test]
        async fn service_variables_lifecycle() {
            $crate::scenarios::lifecycle::<$world>($crate::checks::Target::Service).await;
        }
        #[tokio::test]
        async fn auth_failures() {
            $crate::scenarios::auth_failures::<$world>().await;
        }
        #[tokio::test]
        async fn unauthenticated_mode() {
            $crate::scenarios::unauthenticated_mode::<$world>().await;
        }
        #[tokio::test]
        async fn forged_lock_tags_neither_panic_nor_wedge() {
            $crate::scenarios::forged_lock_tags_neither_panic_nor_wedge::<$world>().await;
        }
        #[tokio::test]
        async fn a_refused_caller_is_cheap() {
            $crate::scenarios::a_refused_caller_is_cheap::<$world>().await;
        }
        #[tokio::test]
        async fn a_refused_caller_closes_no_connection() {
            $crate::scenarios::a_refused_caller_closes_no_connection::<$world>().await;
        }
        #[tokio::test]
        async fn an_entry_the_function_did_not_know_is_read_before_use() {
            $crate::scenarios::an_entry_the_function_did_not_know_is_read_before_use::<$world>()
                .await;
        }
        #[tokio::test]
        async fn a_user_key_is_not_the_device() {
            $crate::scenarios::a_user_key_is_not_the_device::<$world>().await;
        }
        #[tokio::test]
        async fn caller_mistakes_make_no_upstream_call() {
            $crate::scenarios::caller_mistakes_make_no_upstream_call::<$world>().await;
        }
        #[tokio::test]
        async fn a_device_keeps_its_key_with_a_csr() {
            $crate::scenarios::a_device_keeps_its_key_with_a_csr::<$world>().await;
        }
        #[tokio::test]
        async fn rsa_keys_on_request() {
            $crate::scenarios::rsa_keys_on_request::<$world>().await;
        }
        #[tokio::test]
        async fn lock_generations() {
            $crate::scenarios::lock_generations::<$world>().await;
        }
        #[tokio::test]
        async fn a_half_provisioned_device_is_repaired() {
            $crate::scenarios::a_half_provisioned_device_is_repaired::<$world>().await;
        }
        #[tokio::test]
        async fn eight_concurrent_posts_end_with_one_credential() {
            $crate::scenarios::eight_concurrent_posts_end_with_one_credential::<$world>().await;
        }
        #[tokio::test]
        async fn twenty_interleaved_posts_and_deletes() {
            $crate::scenarios::twenty_interleaved_posts_and_deletes::<$world>().await;
        }
        #[tokio::test]
        async fn hostile_corpus() {
            $crate::scenarios::hostile_corpus::<$world>().await;
        }
        #[tokio::test]
        async fn a_bad_setting_stops_the_function_with_one_line() {
            $crate::scenarios::a_bad_setting_stops_the_function_with_one_line::<$world>().await;
        }
    };
}

/// The scenarios that inject balenaCloud failures through the emulator (a failing write, a
/// transient 429/503, failing reads for the secret audit): on the emulator only.
#[macro_export]
macro_rules! scenarios_needing_the_balena_emulator {
    ($world:ty) => {
        #[tokio::test]
        async fn a_device_deleted_while_its_lock_is_taken_is_not_found() {
            $crate::scenarios::a_device_deleted_while_its_lock_is_taken_is_not_found::<$world>()
                .await;
        }
        #[tokio::test]
        async fn a_frozen_device_changes_nothing() {
            $crate::scenarios::a_frozen_device_changes_nothing::<$world>().await;
        }
        #[tokio::test]
        async fn a_failed_balena_write_leaves_no_orphan() {
            $crate::scenarios::a_failed_balena_write_leaves_no_orphan::<$world>().await;
        }
        #[tokio::test]
        async fn a_transient_balena_failure_is_retried() {
            $crate::scenarios::a_transient_balena_failure_is_retried::<$world>().await;
        }
        #[tokio::test]
        async fn no_secret_reaches_the_logs() {
            $crate::scenarios::no_secret_reaches_the_logs::<$world>().await;
        }
    };
}
