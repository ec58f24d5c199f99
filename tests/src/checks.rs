//! Assertions on the emulators' state: what a fleet operator would check by hand.

use std::collections::BTreeMap;

use base64::Engine;
use x509_parser::prelude::*;

use crate::aws::{self, CertInfo};
use crate::world::{AwsWorld, Device, Fleet, SERVICE};

/// Where a test expects the variables: on the device, or on its `cloud-relay` service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Device,
    Service,
}

impl Target {
    pub fn body(self, uuid: &str) -> serde_json::Value {
        match self {
            Target::Device => serde_json::json!({"uuid": uuid}),
            Target::Service => serde_json::json!({"uuid": uuid, "balena_service": SERVICE}),
        }
    }
}

pub async fn vars(world: &Fleet, device: &Device, target: Target) -> BTreeMap<String, String> {
    match target {
        Target::Device => world.balena.device_vars(device.id).await,
        Target::Service => world.balena.service_vars(device.id, SERVICE).await,
    }
}

pub fn decode(b64: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("variable is base64");
    String::from_utf8(bytes).expect("variable is a UTF-8 PEM")
}

fn pem_der(pem: &str) -> Vec<u8> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM block");
    parsed.contents
}

/// The raw public key of a PEM certificate.
pub fn cert_public_key(pem: &str) -> Vec<u8> {
    let der = pem_der(pem);
    let (_, cert) = X509Certificate::from_der(&der).expect("an X.509 certificate");
    cert.public_key().subject_public_key.data.to_vec()
}

/// The raw public key of a PEM private key.
pub fn private_key_public_key(pem: &str) -> Vec<u8> {
    use rcgen::PublicKeyData;
    rcgen::KeyPair::from_pem(pem)
        .expect("a private key")
        .der_bytes()
        .to_vec()
}

fn normalise(pem: &str) -> String {
    pem.split_whitespace().collect()
}

/// The device is fully provisioned on AWS: the thing exists with exactly one certificate,
/// active, carrying the policy; no other certificate anywhere is active; the variables hold
/// base64 PEM of that certificate and (unless `csr`) of the private key that matches it.
pub async fn assert_aws_provisioned(
    world: &AwsWorld,
    device: &Device,
    target: Target,
    csr: bool,
) -> CertInfo {
    let certs = aws::thing_certificates(&world.iot, &device.uuid)
        .await
        .unwrap()
        .expect("the thing exists");
    assert_eq!(
        certs.len(),
        1,
        "exactly one certificate attached to the thing: {certs:?}"
    );
    let cert = certs.into_iter().next().unwrap();
    assert!(cert.active, "the certificate is ACTIVE");
    assert!(
        cert.policies.contains(&aws::POLICY.to_string()),
        "the policy is attached: {:?}",
        cert.policies
    );
    // Other devices' certificates are attached to their things; one attached to none (or only
    // to this device's) would be an orphan.
    let orphans: Vec<String> = aws::orphan_certificates(&world.iot, &device.uuid)
        .await
        .unwrap()
        .into_iter()
        .filter(|id| *id != cert.id)
        .collect();
    assert!(
        orphans.is_empty(),
        "no other active certificate (orphans): {orphans:?}"
    );

    let vars = vars(world, device, target).await;
    let stored_cert = decode(vars.get("AWS_CERT").expect("AWS_CERT stored"));
    assert_eq!(
        normalise(&stored_cert),
        normalise(&cert.pem),
        "AWS_CERT is the registered certificate"
    );
    if csr {
        assert!(
            !vars.contains_key("AWS_PRIVATE_KEY"),
            "no private key stored for a CSR"
        );
    } else {
        let key = decode(vars.get("AWS_PRIVATE_KEY").expect("AWS_PRIVATE_KEY stored"));
        assert!(
            key.contains("PRIVATE KEY"),
            "AWS_PRIVATE_KEY is a PEM private key"
        );
        assert_eq!(
            private_key_public_key(&key),
            cert_public_key(&cert.pem),
            "the stored key matches the certificate"
        );
    }
    cert
}

/// Nothing of the device is left: no thing, no active certificate, no variables.
pub async fn assert_aws_gone(world: &AwsWorld, device: &Device, target: Target) {
    assert!(
        !aws::thing_exists(&world.iot, &device.uuid).await.unwrap(),
        "the thing is deleted"
    );
    let active: Vec<_> = aws::all_certificates(&world.iot)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, a)| *a)
        .collect();
    assert!(active.is_empty(), "no active certificate left: {active:?}");
    let vars = vars(world, device, target).await;
    assert!(
        !vars.contains_key("AWS_CERT") && !vars.contains_key("AWS_PRIVATE_KEY"),
        "variables removed: {vars:?}"
    );
}

/// Requests to balenaCloud that change something (POST, PATCH, DELETE) on variables.
pub fn balena_variable_writes(world: &Fleet) -> usize {
    world
        .balena
        .requests()
        .iter()
        .filter(|r| r.method != "GET" && r.resource.contains("environment_variable"))
        .count()
}

/// The device is fully provisioned on IoT Hub: the device exists, enabled, with self-signed
/// authentication and exactly one thumbprint, that of the stored certificate, whose key (unless
/// `csr`) is the stored private key.
pub async fn assert_azure_provisioned(
    world: &crate::world::AzureWorld,
    device: &Device,
    target: Target,
    csr: bool,
) -> String {
    let registered = world
        .hub
        .device(&device.uuid)
        .expect("the IoT Hub device exists");
    assert_eq!(registered["status"], "enabled");
    assert_eq!(registered["authentication"]["type"], "selfSigned");
    let (primary, secondary) = world.hub.thumbprints(&device.uuid).expect("thumbprints");
    assert!(
        secondary.is_none(),
        "exactly one thumbprint registered: {primary:?} {secondary:?}"
    );
    let primary = primary.expect("a primary thumbprint");
    let vars = vars(world, device, target).await;
    let cert = decode(vars.get("AZURE_CERT").expect("AZURE_CERT stored"));
    let der = pem_der(&cert);
    let thumbprint = sha256_hex(&der);
    assert_eq!(
        thumbprint, primary,
        "the registered thumbprint is the stored certificate's"
    );
    if csr {
        assert!(!vars.contains_key("AZURE_PRIVATE_KEY"));
    } else {
        let key = decode(
            vars.get("AZURE_PRIVATE_KEY")
                .expect("AZURE_PRIVATE_KEY stored"),
        );
        assert_eq!(
            private_key_public_key(&key),
            cert_public_key(&cert),
            "the stored key matches the certificate"
        );
    }
    primary
}

/// Nothing of the device is left on IoT Hub or in its variables.
pub async fn assert_azure_gone(world: &crate::world::AzureWorld, device: &Device, target: Target) {
    assert!(
        world.hub.device(&device.uuid).is_none(),
        "the IoT Hub device is deleted"
    );
    let vars = vars(world, device, target).await;
    assert!(
        !vars.contains_key("AZURE_CERT") && !vars.contains_key("AZURE_PRIVATE_KEY"),
        "{vars:?}"
    );
}

/// The IoT Hub thumbprint of a PEM certificate.
pub fn thumbprint(cert_pem: &str) -> String {
    sha256_hex(&pem_der(cert_pem))
}

/// Uppercase hex SHA-256, as IoT Hub shows thumbprints.
fn sha256_hex(data: &[u8]) -> String {
    provision_core::codec::sha256(data)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// The raw public key of a PEM `PUBLIC KEY` block.
pub fn spki_public_key(pem: &str) -> Vec<u8> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM block");
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(&parsed.contents).expect("a SubjectPublicKeyInfo");
    spki.subject_public_key.data.to_vec()
}

/// The device is fully provisioned on ClearBlade: the device `balena-<uuid>` exists with
/// exactly one key; the variables hold the paths balena's published function stores and
/// (unless `csr`) the private key of that one key.
pub async fn assert_gcp_provisioned(
    world: &crate::world::GcpWorld,
    device: &Device,
    target: Target,
    csr: bool,
) -> Vec<u8> {
    use crate::world::{GCP_PROJECT, GCP_REGION, GCP_REGISTRY};
    let registered = world
        .device(&device.uuid)
        .expect("the ClearBlade device exists");
    assert_ne!(registered["blocked"], true, "the device is not blocked");
    let keys = world.public_keys(&device.uuid).expect("the device's keys");
    assert_eq!(keys.len(), 1, "exactly one key registered: {keys:?}");
    let credential = &registered["credentials"][0]["publicKey"];
    let public = spki_public_key(&keys[0]);
    let vars = vars(world, device, target).await;
    let id = format!("balena-{}", device.uuid);
    let expected_path = format!(
        "projects/{GCP_PROJECT}/locations/{GCP_REGION}/registries/{GCP_REGISTRY}/devices/{id}"
    );
    assert_eq!(
        vars.get("GCP_CLIENT_PATH"),
        Some(&expected_path),
        "{vars:?}"
    );
    assert_eq!(
        vars.get("GCP_DATA_TOPIC_ROOT"),
        Some(&format!("/devices/{id}"))
    );
    assert_eq!(
        vars.get("GCP_PROJECT_ID").map(String::as_str),
        Some(GCP_PROJECT)
    );
    if csr {
        assert!(
            !vars.contains_key("GCP_PRIVATE_KEY"),
            "no private key stored for a CSR"
        );
    } else {
        let key = decode(vars.get("GCP_PRIVATE_KEY").expect("GCP_PRIVATE_KEY stored"));
        assert!(
            key.contains("PRIVATE KEY"),
            "GCP_PRIVATE_KEY is a PEM private key"
        );
        assert_eq!(
            private_key_public_key(&key),
            public,
            "the stored key is the registered key's private half"
        );
        let rsa = rcgen::KeyPair::from_pem(&key)
            .unwrap()
            .is_compatible(&rcgen::PKCS_RSA_SHA256);
        assert_eq!(
            credential["format"],
            if rsa { "RSA_PEM" } else { "ES256_PEM" }
        );
    }
    public
}

/// Nothing of the device is left on ClearBlade or in its variables.
pub async fn assert_gcp_gone(world: &crate::world::GcpWorld, device: &Device, target: Target) {
    assert!(
        world.device(&device.uuid).is_none(),
        "the ClearBlade device is deleted"
    );
    let vars = vars(world, device, target).await;
    let left: Vec<&String> = vars.keys().filter(|k| k.starts_with("GCP_")).collect();
    assert!(left.is_empty(), "variables removed: {left:?}");
}
