//! The AWS function end to end: the compiled `provision-lambda` binary under the Lambda
//! Runtime API emulator, against moto (AWS IoT) and the balenaCloud emulator, called with
//! function URL events as a device or operator would call it.

use provision_testkit::checks::{Target, assert_aws_gone, assert_aws_provisioned, balena_variable_writes, decode, vars};
use provision_testkit::events::Call;
use provision_testkit::world::{AwsWorld, Options};
use provision_testkit::{Fault, aws, scenarios};
use serde_json::json;

async fn provision_lifecycle(target: Target) {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();

    // A device provisions itself with its own key.
    let created = world.call(Call::post(target.body(&device.uuid)).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_eq!(created.status_text(), "created");
    assert_eq!(created.body["cloud"], "aws");
    assert_eq!(created.body["uuid"], device.uuid.as_str());
    assert_eq!(created.body["device_id"], device.uuid.as_str());
    assert_eq!(created.body["variables"], json!(["AWS_CERT", "AWS_PRIVATE_KEY"]));
    assert!(created.body["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(created.headers.get("content-type").map(String::as_str), Some("application/json"));
    let first = assert_aws_provisioned(&world, &device, target, false).await;
    // The other target stays untouched.
    let other = if target == Target::Device { Target::Service } else { Target::Device };
    assert!(vars(&world, &device, other).is_empty(), "only the asked-for target holds variables");

    // The same request again changes nothing.
    world.balena.clear_requests();
    let again = world.call(Call::post(target.body(&device.uuid)).bearer(&device.key)).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.raw_body);
    assert_eq!(again.status_text(), "already-provisioned");
    assert_eq!(again.body["variables"], json!([]));
    assert_eq!(balena_variable_writes(&world), 0, "nothing written to balenaCloud");
    let same = assert_aws_provisioned(&world, &device, target, false).await;
    assert_eq!(same.id, first.id, "the certificate is unchanged");

    // GET reports it.
    let query = match target {
        Target::Device => format!("uuid={}", device.uuid),
        Target::Service => format!("uuid={}&balena_service=cloud-relay", device.uuid),
    };
    let status = world.call(Call::get(&query).bearer(&device.key)).await.unwrap();
    assert_eq!(status.status, 200, "{}", status.raw_body);
    assert_eq!(status.status_text(), "provisioned");
    assert_eq!(status.body["details"]["registry"]["credentials"][0]["id"], first.id.as_str());
    assert_eq!(status.body["details"]["variables"]["AWS_CERT"], true);
    let stored = vars(&world, &device, target);
    assert!(
        stored.values().all(|v| !status.raw_body.contains(v.as_str())) && !status.raw_body.contains("BEGIN"),
        "GET never returns values"
    );

    // Rotation: a new certificate stored, the old one gone.
    let mut body = target.body(&device.uuid);
    body["rotate"] = json!(true);
    let rotated = world.call(Call::post(body).bearer(&device.key)).await.unwrap();
    assert_eq!(rotated.status, 200, "{}", rotated.raw_body);
    assert_eq!(rotated.status_text(), "rotated");
    let second = assert_aws_provisioned(&world, &device, target, false).await;
    assert_ne!(second.id, first.id, "a new certificate");
    let remaining: Vec<_> = aws::all_certificates(&world.iot).await.unwrap();
    assert!(remaining.iter().all(|(id, _)| *id != first.id), "the old certificate is deleted: {remaining:?}");

    // The operator removes it; then there is nothing to remove.
    let deleted = world.call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token)).await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.raw_body);
    assert_eq!(deleted.status_text(), "deleted");
    assert_eq!(deleted.body["variables"], json!(["AWS_CERT", "AWS_PRIVATE_KEY"]));
    assert_aws_gone(&world, &device, target).await;
    let again = world.call(Call::delete(target.body(&device.uuid)).bearer(&world.secrets.operator_token)).await.unwrap();
    assert_eq!(again.status, 200, "{}", again.raw_body);
    assert_eq!(again.status_text(), "not-provisioned");
    let status = world.call(Call::get(&query).bearer(&device.key)).await.unwrap();
    assert_eq!(status.status_text(), "not-provisioned");

    let leaks = world.logs.containing(&world.secret_strings(&[&device]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:?}");
    world.stop().await;
}

#[tokio::test]
async fn device_variables_lifecycle() {
    provision_lifecycle(Target::Device).await;
}

#[tokio::test]
async fn service_variables_lifecycle() {
    provision_lifecycle(Target::Service).await;
}

#[tokio::test]
async fn auth_failures() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    let other = world.add_device();
    let body = json!({"uuid": device.uuid});

    let missing = world.call(Call::post(body.clone())).await.unwrap();
    assert_eq!((missing.status, missing.error_code()), (401, "provision.auth.missing"));
    let scheme = world.call(Call::post(body.clone()).header("authorization", "Basic Zm9vOmJhcg==")).await.unwrap();
    assert_eq!((scheme.status, scheme.error_code()), (401, "provision.auth.invalid"));
    let unknown = world.call(Call::post(body.clone()).bearer("not-a-key-balena-knows")).await.unwrap();
    assert_eq!((unknown.status, unknown.error_code()), (401, "provision.auth.invalid"));
    let forbidden = world.call(Call::post(body.clone()).bearer(&other.key)).await.unwrap();
    assert_eq!((forbidden.status, forbidden.error_code()), (403, "provision.auth.forbidden"));
    assert!(forbidden.body["error"]["message"].as_str().unwrap().contains(&device.uuid[..7]));
    let nobody = world
        .call(Call::post(json!({"uuid": "0123456789abcdef0123456789abcdef"})).bearer(&world.secrets.operator_token))
        .await
        .unwrap();
    assert_eq!((nobody.status, nobody.error_code()), (404, "provision.device.not-found"));
    // A device key for an unknown UUID is 403, not 404: it must not learn which UUIDs exist.
    let probe = world.call(Call::post(json!({"uuid": "0123456789abcdef0123456789abcdef"})).bearer(&other.key)).await.unwrap();
    assert_eq!((probe.status, probe.error_code()), (403, "provision.auth.forbidden"));

    // None of that created anything.
    assert!(!aws::thing_exists(&world.iot, &device.uuid).await.unwrap());
    assert!(aws::all_certificates(&world.iot).await.unwrap().is_empty());
    assert_eq!(balena_variable_writes(&world), 0);
    world.stop().await;
}

#[tokio::test]
async fn unauthenticated_mode_serves_the_published_behaviour() {
    let world = AwsWorld::start_with(Options { allow_unauthenticated: true, ..Options::default() }).await.unwrap();
    let device = world.add_device();
    let created = world.call(Call::post(json!({"uuid": device.uuid, "balena_service": "cloud-relay"}))).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_aws_provisioned(&world, &device, Target::Service, false).await;
    // A key that is given is still checked.
    let other = world.add_device();
    let forbidden = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&other.key)).await.unwrap();
    assert_eq!(forbidden.status, 403);
    world.stop().await;
}

#[tokio::test]
async fn caller_mistakes_make_no_upstream_call() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    for (call, status, code) in scenarios::caller_mistakes(&device.uuid) {
        let described = scenarios::describe(&call);
        let answer = world.call(call.bearer(&device.key)).await.unwrap();
        scenarios::check_mistake(&answer, status, code, &described);
    }
    assert!(world.balena.requests().is_empty(), "no balenaCloud call: {:?}", world.balena.requests().len());
    assert_eq!(world.aws_proxy.connections(), 0, "no AWS call");
    // Health check answers without any upstream either.
    let health = world.call(Call::new("GET", "/healthz")).await.unwrap();
    assert_eq!((health.status, health.body.clone()), (200, json!({"status": "ok"})));
    assert!(world.balena.requests().is_empty());
    assert_eq!(world.aws_proxy.connections(), 0);
    world.stop().await;
}

#[tokio::test]
async fn a_device_keeps_its_key_with_a_csr() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, device.uuid.as_str());
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();

    let created = world.call(Call::post(json!({"uuid": device.uuid, "csr": csr})).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_eq!(created.body["variables"], json!(["AWS_CERT"]));
    let cert = assert_aws_provisioned(&world, &device, Target::Device, true).await;
    use rcgen::PublicKeyData;
    assert_eq!(provision_testkit::checks::cert_public_key(&cert.pem), key.der_bytes(), "the certificate is for the device's key");
    let again = world.call(Call::post(json!({"uuid": device.uuid, "csr": csr})).bearer(&device.key)).await.unwrap();
    assert_eq!(again.status_text(), "already-provisioned", "{}", again.raw_body);

    // A CSR for another device is refused.
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.distinguished_name.push(rcgen::DnType::CommonName, "00000000000000000000000000000000");
    let foreign = other.serialize_request(&key).unwrap().pem().unwrap();
    let refused = world.call(Call::post(json!({"uuid": device.uuid, "csr": foreign})).bearer(&device.key)).await.unwrap();
    assert_eq!((refused.status, refused.error_code()), (400, "provision.request.bad-csr"));
    world.stop().await;
}

#[tokio::test]
async fn a_half_provisioned_device_is_repaired() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    let created = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    let first = assert_aws_provisioned(&world, &device, Target::Device, false).await;

    // Someone deletes the private key variable by hand: the device cannot connect any more.
    let cert_var = world.balena.device_vars(device.id)["AWS_CERT"].clone();
    let reseeded = world.balena.device_vars(device.id);
    assert!(reseeded.contains_key("AWS_PRIVATE_KEY"));
    world.balena.set_device_var(device.id, "AWS_PRIVATE_KEY", "");
    let status = world.call(Call::get(&format!("uuid={}", device.uuid)).bearer(&device.key)).await.unwrap();
    assert_eq!(status.status_text(), "partial", "{}", status.raw_body);

    let repaired = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!(repaired.status, 200, "{}", repaired.raw_body);
    assert_eq!(repaired.status_text(), "repaired");
    let second = assert_aws_provisioned(&world, &device, Target::Device, false).await;
    assert_ne!(second.id, first.id);
    assert_ne!(world.balena.device_vars(device.id)["AWS_CERT"], cert_var);
    world.stop().await;
}

#[tokio::test]
async fn a_failed_balena_write_leaves_no_orphan_and_a_retry_converges() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    // Every variable write fails (past the function's retries) after the certificate exists.
    world.balena.inject_fault(Fault::new(500).method("POST").resource("device_environment_variable").times(100));
    let failed = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!((failed.status, failed.error_code()), (502, "provision.upstream.balena"), "{}", failed.raw_body);
    assert!(failed.body["error"]["message"].as_str().unwrap().contains("storing the variables"));
    let certs = aws::all_certificates(&world.iot).await.unwrap();
    assert!(certs.iter().all(|(_, active)| !active), "no active orphan certificate: {certs:?}");
    assert!(world.balena.device_vars(device.id).is_empty(), "no variable left behind");
    assert!(world.balena.device_tags(device.id).is_empty(), "the lease is released");

    world.balena.clear_faults();
    let retried = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!(retried.status, 201, "{}", retried.raw_body);
    assert_aws_provisioned(&world, &device, Target::Device, false).await;
    world.stop().await;
}

#[tokio::test]
async fn a_transient_balena_failure_is_retried() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    world.balena.inject_fault(Fault::new(503).method("POST").resource("device_environment_variable").times(1));
    world.balena.inject_fault(Fault::new(429).method("GET").resource("device").retry_after(1).times(1));
    let created = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.raw_body);
    assert_aws_provisioned(&world, &device, Target::Device, false).await;
    world.stop().await;
}

#[tokio::test]
async fn eight_concurrent_posts_end_with_one_certificate() {
    let world = AwsWorld::start_with(Options { instances: 4, ..Options::default() }).await.unwrap();
    let device = world.add_device();
    let calls = (0..8).map(|_| world.call(Call::post(json!({"uuid": device.uuid, "balena_service": "cloud-relay"})).bearer(&device.key)));
    let answers = futures::future::join_all(calls).await;
    let mut statuses: Vec<String> = answers
        .into_iter()
        .map(|a| {
            let a = a.unwrap();
            assert!(a.status == 200 || a.status == 201, "{}", a.raw_body);
            a.status_text().to_string()
        })
        .collect();
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| *s == "created").count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| s == "created" || s == "already-provisioned"), "{statuses:?}");
    assert_aws_provisioned(&world, &device, Target::Service, false).await;
    assert!(world.balena.device_tags(device.id).is_empty(), "no lease left");
    world.stop().await;
}

#[tokio::test]
async fn no_secret_reaches_the_logs() {
    let world = AwsWorld::start().await.unwrap();
    let device = world.add_device();
    let created = world.call(Call::post(json!({"uuid": device.uuid})).bearer(&device.key)).await.unwrap();
    assert_eq!(created.status, 201);
    let key_var = world.balena.device_vars(device.id)["AWS_PRIVATE_KEY"].clone();
    let key_pem = decode(&key_var);
    // Failures too: a rejected key, a forbidden key, an upstream error.
    world.call(Call::post(json!({"uuid": device.uuid})).bearer("wrong-key-0123456789")).await.unwrap();
    world.balena.inject_fault(Fault::new(500).method("GET").times(100));
    let failed = world.call(Call::post(json!({"uuid": device.uuid, "rotate": true})).bearer(&world.secrets.operator_token)).await.unwrap();
    assert_eq!(failed.status, 502);
    world.balena.clear_faults();
    world.stop_functions_and_wait().await;

    let mut secrets = world.secret_strings(&[&device]);
    secrets.push("wrong-key-0123456789".into());
    secrets.push(key_var.clone());
    // Any line of the PEM body would do; take the longest.
    secrets.extend(key_pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 20).map(str::to_string));
    let needles: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let lines = world.logs.lines();
    assert!(lines.iter().any(|l| l.contains("answered")), "the function logged its requests (debug on): {lines:?}");
    let leaks = world.logs.containing(&needles);
    assert!(leaks.is_empty(), "secrets in the logs: {leaks:?}");
    world.stop().await;
}

#[tokio::test]
async fn a_bad_setting_stops_the_function_with_one_line() {
    let world = AwsWorld::start_with(Options {
        extra_env: vec![("AWS_IOT_POLICY".into(), String::new()), ("PROVISION_ALLOW_UNAUTHENTICATED".into(), "yes".into())],
        ..Options::default()
    })
    .await
    .unwrap();
    let status = world.wait_for_exit().await;
    assert!(!status.success(), "the function exits non-zero");
    let lines = world.logs.lines();
    let named: Vec<_> = lines.iter().filter(|l| l.contains("PROVISION_ALLOW_UNAUTHENTICATED")).collect();
    assert_eq!(named.len(), 1, "one line names the variable: {lines:?}");
    assert!(!lines.iter().any(|l| l.contains("panicked") || l.contains("backtrace")), "{lines:?}");
    world.stop().await;
}
