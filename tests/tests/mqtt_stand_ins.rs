//! The clouds' MQTT stand-ins, checked with a real MQTT client (`mosquitto_pub`, Debian's
//! `mosquitto-clients`): a genuine credential of each cloud connects and publishes, and each
//! kind of wrong credential or topic is refused as the cloud refuses it, and recorded.
//!
//! Azure IoT Hub and ClearBlade IoT Core judge against the project's emulators (devices seeded
//! into them); AWS IoT Core against moto through the AWS SDK, with certificates issued by
//! CreateCertificateFromCsr and the project's device policy (infra/aws/iot-setup.yaml).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_iot::types::CertificateStatus;
use provision_emulators::clearblade::ClearBladeEmulator;
use provision_emulators::iothub::{IotHubEmulator, Policy};
use provision_emulators::mqtt::azure::AzureAuthenticator;
use provision_emulators::mqtt::clearblade::ClearBladeAuthenticator;
use provision_emulators::mqtt::jwt::{self, Algorithm};
use provision_emulators::mqtt::{MqttStandIn, Refusal, RefusalKind};
use provision_testkit::aws::{self, Moto};
use provision_testkit::aws_mqtt::AwsAuthenticator;
use provision_testkit::process::LogBook;
use serde_json::json;
use tokio::process::Command;

/// Generous: waits end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(30);

/// A directory for the client's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "provision-mqtt-stand-ins-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `mosquitto_pub` run: MQTT 3.1.1 over TLS 1.2 to the stand-in, one message.
struct Publish<'a> {
    stand_in: &'a MqttStandIn,
    client_id: &'a str,
    topic: &'a str,
    qos: u8,
    /// (certificate PEM, private key PEM).
    certificate: Option<(&'a str, &'a str)>,
    username: Option<&'a str>,
    password: Option<&'a str>,
}

/// How a `mosquitto_pub` run ended.
struct Outcome {
    success: bool,
    output: String,
}

impl Publish<'_> {
    fn new<'a>(stand_in: &'a MqttStandIn, client_id: &'a str, topic: &'a str) -> Publish<'a> {
        Publish {
            stand_in,
            client_id,
            topic,
            qos: 1,
            certificate: None,
            username: None,
            password: None,
        }
    }

    async fn run(&self) -> Outcome {
        let scratch = Scratch::new();
        let ca = scratch.file("ca.pem", &self.stand_in.ca_pem());
        let mut command = Command::new("mosquitto_pub");
        command
            .args(["-h", "127.0.0.1", "-p", &self.stand_in.port().to_string()])
            .arg("--cafile")
            .arg(&ca)
            .args(["--tls-version", "tlsv1.2", "-V", "mqttv311", "-d"])
            .args(["-i", self.client_id, "-t", self.topic])
            .args(["-q", &self.qos.to_string(), "-m", "{\"temperature\":21}"]);
        if let Some((cert, key)) = self.certificate {
            command
                .arg("--cert")
                .arg(scratch.file("cert.pem", cert))
                .arg("--key")
                .arg(scratch.file("key.pem", key));
        }
        if let Some(u) = self.username {
            command.args(["-u", u]);
        }
        if let Some(p) = self.password {
            command.args(["-P", p]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("mosquitto_pub could not start ({e}): run scripts/setup (mosquitto-clients)")
        });
        let out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("mosquitto_pub did not end in time")
            .expect("mosquitto_pub output");
        Outcome {
            success: out.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Runs and expects success.
    async fn succeeds(&self) {
        let outcome = self.run().await;
        assert!(
            outcome.success,
            "mosquitto_pub as {} to {} failed: {}; refusals: {:?}",
            self.client_id,
            self.topic,
            outcome.output,
            self.stand_in.refusals()
        );
    }

    /// Runs, expects failure, and returns the refusal it caused (the `n`th, from 1).
    async fn is_refused(&self, n: usize) -> Refusal {
        let outcome = self.run().await;
        assert!(
            !outcome.success,
            "mosquitto_pub as {} to {} should have failed: {}",
            self.client_id, self.topic, outcome.output
        );
        let refusals = self
            .stand_in
            .wait_for_refusals(n, WAIT)
            .await
            .expect("the refusal is recorded");
        assert_eq!(refusals.len(), n, "one refusal per attempt: {refusals:?}");
        let refusal = refusals[n - 1].clone();
        assert_eq!(refusal.client_id, self.client_id, "{refusal}");
        refusal
    }
}

/// A device key and a self-signed certificate for it (what provision-core issues for Azure).
fn self_signed(name: &str) -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("certificate");
    (key, cert)
}

fn sha256_upper(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

// ----- Azure IoT Hub ---------------------------------------------------------------------------

const HUB_HOST: &str = "stand-ins.azure-devices.net";

async fn azure() -> (IotHubEmulator, AzureAuthenticator, MqttStandIn) {
    let hub = IotHubEmulator::start(HUB_HOST, vec![Policy::with_random_key("owner", true)])
        .await
        .expect("hub");
    let auth = AzureAuthenticator::new(hub.clone());
    let stand_in = MqttStandIn::start("Azure IoT Hub", Arc::new(auth.clone()))
        .await
        .expect("stand-in");
    (hub, auth, stand_in)
}

fn seed_azure_device(hub: &IotHubEmulator, id: &str, thumbprint: &str) {
    hub.seed_device(json!({
        "deviceId": id,
        "authentication": {"type": "selfSigned",
                           "x509Thumbprint": {"primaryThumbprint": thumbprint}}
    }));
}

#[tokio::test]
async fn azure_registered_certificate_connects_and_publishes() {
    let (hub, auth, stand_in) = azure().await;
    let (key, cert) = self_signed("balena-1");
    seed_azure_device(&hub, "balena-1", &sha256_upper(cert.der()));
    let username = auth.username("balena-1");
    let topic = format!(
        "{}topic=sensors&%24.ct=application%2Fjson",
        AzureAuthenticator::events_topic("balena-1")
    );
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    Publish {
        certificate: Some((&cert_pem, &key_pem)),
        username: Some(&username),
        ..Publish::new(&stand_in, "balena-1", &topic)
    }
    .succeeds()
    .await;
    let received = stand_in.wait_for_received(1, WAIT).await.expect("message");
    assert_eq!(received[0].device, "balena-1");
    assert_eq!(received[0].topic, "devices/balena-1/messages/events/");
    assert_eq!(
        received[0].properties,
        vec![
            ("topic".to_string(), "sensors".to_string()),
            ("$.ct".to_string(), "application/json".to_string())
        ]
    );
    assert_eq!(received[0].payload.as_ref(), b"{\"temperature\":21}");
    assert_eq!(received[0].qos, 1);
    assert!(stand_in.refusals().is_empty(), "{:?}", stand_in.refusals());
    stand_in.shutdown().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn azure_refuses_wrong_thumbprints_usernames_and_topics() {
    let (hub, auth, stand_in) = azure().await;
    let (key, cert) = self_signed("balena-2");
    let (other_key, other_cert) = self_signed("balena-2");
    seed_azure_device(&hub, "balena-2", &sha256_upper(cert.der()));
    let username = auth.username("balena-2");
    let topic = AzureAuthenticator::events_topic("balena-2");
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let (other_pem, other_key_pem) = (other_cert.pem(), other_key.serialize_pem());

    // A certificate whose thumbprint the hub does not hold for the device.
    let refusal = Publish {
        certificate: Some((&other_pem, &other_key_pem)),
        username: Some(&username),
        ..Publish::new(&stand_in, "balena-2", &topic)
    }
    .is_refused(1)
    .await;
    assert_eq!(refusal.return_code(), Some(5), "{refusal}");
    assert!(refusal.reason.contains("thumbprint"), "{refusal}");

    // An unknown device with its own certificate.
    let unknown_user = auth.username("balena-9");
    let refusal = Publish {
        certificate: Some((&other_pem, &other_key_pem)),
        username: Some(&unknown_user),
        ..Publish::new(&stand_in, "balena-9", "devices/balena-9/messages/events/")
    }
    .is_refused(2)
    .await;
    assert_eq!(refusal.return_code(), Some(5), "{refusal}");

    // The right certificate with a user name not of the hub's form.
    for (n, bad_user) in [
        format!("{HUB_HOST}/balena-2"),
        "other.azure-devices.net/balena-2/?api-version=2021-04-12".to_string(),
        "balena-2".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let refusal = Publish {
            certificate: Some((&cert_pem, &key_pem)),
            username: Some(bad_user),
            ..Publish::new(&stand_in, "balena-2", &topic)
        }
        .is_refused(3 + n)
        .await;
        assert_eq!(refusal.return_code(), Some(4), "{bad_user}: {refusal}");
    }

    // The right credentials publishing outside the device's telemetry topic: disconnected.
    let refusal = Publish {
        certificate: Some((&cert_pem, &key_pem)),
        username: Some(&username),
        ..Publish::new(&stand_in, "balena-2", "devices/balena-3/messages/events/")
    }
    .is_refused(6)
    .await;
    assert_eq!(
        refusal.kind,
        RefusalKind::Publish {
            topic: "devices/balena-3/messages/events/".into()
        }
    );
    assert_eq!(refusal.device.as_deref(), Some("balena-2"));
    assert!(stand_in.received().is_empty());
    stand_in.shutdown().await;
    hub.shutdown().await;
}

// ----- ClearBlade IoT Core ---------------------------------------------------------------------

const PROJECT: &str = "stand-ins-project";
const REGION: &str = "us-central1";
const REGISTRY: &str = "stand-ins";

async fn clearblade() -> (ClearBladeEmulator, ClearBladeAuthenticator, MqttStandIn) {
    let emulator = ClearBladeEmulator::start(PROJECT, &[(REGION, REGISTRY)])
        .await
        .expect("emulator");
    let auth = ClearBladeAuthenticator::new(emulator.clone(), REGION, REGISTRY);
    let stand_in = MqttStandIn::start("ClearBlade IoT Core", Arc::new(auth.clone()))
        .await
        .expect("stand-in");
    (emulator, auth, stand_in)
}

fn seed_clearblade_device(emulator: &ClearBladeEmulator, id: &str, key: &rcgen::KeyPair) {
    emulator.seed_device(
        REGION,
        REGISTRY,
        json!({"id": id, "credentials": [
            {"publicKey": {"format": "ES256_PEM", "key": key.public_key_pem()}}
        ]}),
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn clearblade_jwt_connects_and_publishes() {
    let (emulator, auth, stand_in) = clearblade().await;
    let key = rcgen::KeyPair::generate().expect("key");
    seed_clearblade_device(&emulator, "balena-1", &key);
    let password = auth
        .password(
            Algorithm::Es256,
            &key.serialize_der(),
            Duration::from_secs(3600),
        )
        .expect("JWT");
    let client_id = auth.client_id("balena-1");
    for topic in [
        "/devices/balena-1/events",
        "/devices/balena-1/events/sensors",
    ] {
        Publish {
            username: Some("unused"),
            password: Some(&password),
            ..Publish::new(&stand_in, &client_id, topic)
        }
        .succeeds()
        .await;
    }
    let received = stand_in.wait_for_received(2, WAIT).await.expect("messages");
    assert_eq!(received[0].device, "balena-1");
    assert_eq!(received[0].client_id, client_id);
    assert_eq!(received[1].topic, "/devices/balena-1/events/sensors");
    let connected = stand_in.connections();
    let expires = connected[0].expires_at.expect("the session expires");
    let exp = jwt::decode(&password)
        .expect("JWT")
        .numeric_claim("exp")
        .expect("exp");
    assert_eq!(
        expires,
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).expect("exp"))
    );
    assert!(stand_in.refusals().is_empty(), "{:?}", stand_in.refusals());
    stand_in.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn clearblade_refuses_bad_jwts_and_topics() {
    let (emulator, auth, stand_in) = clearblade().await;
    let key = rcgen::KeyPair::generate().expect("key");
    let stranger = rcgen::KeyPair::generate().expect("key");
    seed_clearblade_device(&emulator, "balena-2", &key);
    let client_id = auth.client_id("balena-2");
    let now = unix_now();
    let sign = |claims: serde_json::Value, k: &rcgen::KeyPair| {
        jwt::sign(Algorithm::Es256, &k.serialize_der(), &claims).expect("JWT")
    };
    let cases = [
        (
            "audience",
            sign(
                json!({"aud": "another-project", "iat": now, "exp": now + 600}),
                &key,
            ),
        ),
        (
            "expired",
            sign(
                json!({"aud": PROJECT, "iat": now - 7200, "exp": now - 3600}),
                &key,
            ),
        ),
        (
            "24 h",
            sign(
                json!({"aud": PROJECT, "iat": now, "exp": now + 24 * 3600 + 60}),
                &key,
            ),
        ),
        (
            "verify",
            sign(
                json!({"aud": PROJECT, "iat": now, "exp": now + 600}),
                &stranger,
            ),
        ),
    ];
    for (n, (why, password)) in cases.iter().enumerate() {
        let refusal = Publish {
            username: Some("unused"),
            password: Some(password),
            ..Publish::new(&stand_in, &client_id, "/devices/balena-2/events")
        }
        .is_refused(n + 1)
        .await;
        assert_eq!(refusal.return_code(), Some(4), "{why}: {refusal}");
        assert!(refusal.reason.contains(why), "{why}: {refusal}");
    }

    // A genuine JWT with a client id that is not the device's path.
    let good = sign(json!({"aud": PROJECT, "iat": now, "exp": now + 600}), &key);
    let refusal = Publish {
        username: Some("unused"),
        password: Some(&good),
        ..Publish::new(&stand_in, "balena-2", "/devices/balena-2/events")
    }
    .is_refused(cases.len() + 1)
    .await;
    assert_eq!(refusal.return_code(), Some(5), "{refusal}");

    // A genuine JWT publishing to another device's topic: disconnected.
    let refusal = Publish {
        username: Some("unused"),
        password: Some(&good),
        ..Publish::new(&stand_in, &client_id, "/devices/balena-3/events")
    }
    .is_refused(cases.len() + 2)
    .await;
    assert!(
        matches!(refusal.kind, RefusalKind::Publish { .. }),
        "{refusal}"
    );
    assert!(stand_in.received().is_empty());
    stand_in.shutdown().await;
    emulator.shutdown().await;
}

// ----- AWS IoT Core ----------------------------------------------------------------------------

/// moto with the project's device policy, and a stand-in asking it.
async fn aws_stand_in(logs: &LogBook) -> (Moto, aws_sdk_iot::Client, MqttStandIn) {
    let moto = Moto::start(logs).await.expect("moto");
    let iot = moto.client().await;
    aws::create_device_policy(&iot).await.expect("policy");
    let auth = AwsAuthenticator::for_moto(&moto)
        .await
        .expect("authenticator");
    let stand_in = MqttStandIn::start("AWS IoT Core", Arc::new(auth))
        .await
        .expect("stand-in");
    (moto, iot, stand_in)
}

/// A certificate issued by CreateCertificateFromCsr for a new key, as the function issues
/// them: (certificate PEM, key PEM, certificate ARN, certificate id).
struct Issued {
    cert_pem: String,
    key_pem: String,
    arn: String,
    id: String,
}

async fn issue(iot: &aws_sdk_iot::Client, subject: &str) -> Issued {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, subject);
    let csr = params.serialize_request(&key).expect("CSR");
    let out = iot
        .create_certificate_from_csr()
        .certificate_signing_request(csr.pem().expect("CSR PEM"))
        .set_as_active(true)
        .send()
        .await
        .expect("CreateCertificateFromCsr");
    Issued {
        cert_pem: out.certificate_pem().expect("PEM").to_string(),
        key_pem: key.serialize_pem(),
        arn: out.certificate_arn().expect("ARN").to_string(),
        id: out.certificate_id().expect("id").to_string(),
    }
}

/// A thing with a certificate attached to it, and the device policy attached to that.
async fn provisioned_thing(iot: &aws_sdk_iot::Client, thing: &str) -> Issued {
    iot.create_thing()
        .thing_name(thing)
        .send()
        .await
        .expect("CreateThing");
    let issued = issue(iot, thing).await;
    iot.attach_thing_principal()
        .thing_name(thing)
        .principal(&issued.arn)
        .send()
        .await
        .expect("AttachThingPrincipal");
    iot.attach_policy()
        .policy_name(aws::POLICY)
        .target(&issued.arn)
        .send()
        .await
        .expect("AttachPolicy");
    issued
}

#[tokio::test]
async fn aws_issued_certificate_connects_and_publishes_under_its_thing() {
    let logs = LogBook::default();
    let (moto, iot, stand_in) = aws_stand_in(&logs).await;
    let issued = provisioned_thing(&iot, "balena-1").await;
    assert_eq!(
        issued.id,
        provision_testkit::aws_mqtt::certificate_id(
            &x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes())
                .expect("PEM")
                .1
                .contents
        )
    );
    for (qos, topic) in [(1, "balena/balena-1/telemetry"), (0, "balena/balena-1/a/b")] {
        Publish {
            certificate: Some((&issued.cert_pem, &issued.key_pem)),
            qos,
            ..Publish::new(&stand_in, "balena-1", topic)
        }
        .succeeds()
        .await;
    }
    let received = stand_in.wait_for_received(2, WAIT).await.expect("messages");
    assert_eq!(received[0].device, "balena-1");
    assert_eq!(received[0].topic, "balena/balena-1/telemetry");
    assert_eq!(received[0].qos, 1);
    assert_eq!(received[1].qos, 0);
    assert!(stand_in.refusals().is_empty(), "{:?}", stand_in.refusals());
    stand_in.shutdown().await;
    moto.stop().await;
}

#[tokio::test]
async fn aws_refuses_inactive_unattached_unpolicied_and_foreign_certificates() {
    let logs = LogBook::default();
    let (moto, iot, stand_in) = aws_stand_in(&logs).await;
    let mut refusals = 0;
    let mut refused = async |issued: &Issued, client_id: &str, why: &str| {
        refusals += 1;
        let refusal = Publish {
            certificate: Some((&issued.cert_pem, &issued.key_pem)),
            ..Publish::new(
                &stand_in,
                client_id,
                &format!("balena/{client_id}/telemetry"),
            )
        }
        .is_refused(refusals)
        .await;
        assert_eq!(refusal.return_code(), Some(5), "{why}: {refusal}");
        assert!(refusal.reason.contains(why), "{why}: {refusal}");
    };

    // Attached and with the policy, but INACTIVE.
    let inactive = provisioned_thing(&iot, "balena-2").await;
    iot.update_certificate()
        .certificate_id(&inactive.id)
        .new_status(CertificateStatus::Inactive)
        .send()
        .await
        .expect("UpdateCertificate");
    refused(&inactive, "balena-2", "not ACTIVE").await;

    // Active with the policy, but not attached to the thing its client id names (the policy's
    // IsAttached condition and thing-name resource).
    let other = provisioned_thing(&iot, "balena-3").await;
    iot.create_thing()
        .thing_name("balena-4")
        .send()
        .await
        .expect("CreateThing");
    refused(&other, "balena-4", "iot:Connect").await;

    // Attached, active, no policy.
    iot.create_thing()
        .thing_name("balena-5")
        .send()
        .await
        .expect("CreateThing");
    let unpolicied = issue(&iot, "balena-5").await;
    iot.attach_thing_principal()
        .thing_name("balena-5")
        .principal(&unpolicied.arn)
        .send()
        .await
        .expect("AttachThingPrincipal");
    refused(&unpolicied, "balena-5", "0 polic").await;

    // A certificate moto never issued (self-signed with the thing's name).
    let (key, cert) = self_signed("balena-3");
    let foreign = Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        arn: String::new(),
        id: String::new(),
    };
    refused(&foreign, "balena-3", "issued by").await;
    assert!(stand_in.received().is_empty());
    stand_in.shutdown().await;
    moto.stop().await;
}

#[tokio::test]
async fn aws_disconnects_a_publish_outside_the_things_topics() {
    let logs = LogBook::default();
    let (moto, iot, stand_in) = aws_stand_in(&logs).await;
    let issued = provisioned_thing(&iot, "balena-6").await;
    for (n, topic) in [
        "balena/balena-7/telemetry",
        "elsewhere/balena-6/telemetry",
        "balena/balena-6",
    ]
    .into_iter()
    .enumerate()
    {
        let refusal = Publish {
            certificate: Some((&issued.cert_pem, &issued.key_pem)),
            ..Publish::new(&stand_in, "balena-6", topic)
        }
        .is_refused(n + 1)
        .await;
        assert_eq!(
            refusal.kind,
            RefusalKind::Publish {
                topic: topic.to_string()
            },
            "{refusal}"
        );
        assert_eq!(refusal.device.as_deref(), Some("balena-6"));
    }
    assert_eq!(
        stand_in.connections().len(),
        3,
        "each connection was accepted first"
    );
    assert!(stand_in.received().is_empty());
    stand_in.shutdown().await;
    moto.stop().await;
}

#[test]
fn the_device_policy_is_the_projects() {
    let document = aws::device_policy_document().expect("renders");
    let text = document.to_string();
    assert!(
        text.contains(
            "arn:aws:iot:eu-west-1:123456789012:client/${iot:Connection.Thing.ThingName}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "arn:aws:iot:eu-west-1:123456789012:topic/balena/${iot:Connection.Thing.ThingName}/*"
        ),
        "{text}"
    );
    assert!(!text.contains("${!"), "{text}");
    assert!(!text.contains("${AWS::"), "{text}");
    provision_emulators::mqtt::policy::PolicyDocument::from_value(&document)
        .expect("the stand-in evaluates every statement of it");
}
