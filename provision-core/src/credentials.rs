//! Key pairs, certificate signing requests and certificates: made in-process with `rcgen`
//! (EC P-256 by default: a key in well under a millisecond, no `openssl` processes), and parsed
//! and checked with `x509-parser`.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use x509_parser::prelude::*;

use crate::codec::{base64_encode, sha256};
use crate::ids::DeviceUuid;
use crate::secret::Secret;

/// The bits that identify a public key (the subjectPublicKey of an SPKI: the EC point, or the
/// RSA modulus and exponent). Two credentials are "the same key" when these are equal.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKeyId(Vec<u8>);

impl PublicKeyId {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A short fingerprint for logs and status reports (not secret).
    pub fn fingerprint(&self) -> String {
        sha256(&self.0)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for PublicKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKeyId({})", self.fingerprint())
    }
}

/// The kind of key pair the function makes for devices that send no CSR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// EC P-256 with ECDSA-SHA256: small, fast, accepted by every registry.
    #[default]
    EcP256,
    /// RSA-2048 with SHA256, for devices whose TLS stack lacks EC.
    Rsa2048,
}

impl KeyAlgorithm {
    /// The setting's spelling: `ec-p256` or `rsa-2048`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "ec-p256" => Some(KeyAlgorithm::EcP256),
            "rsa-2048" => Some(KeyAlgorithm::Rsa2048),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcP256 => "ec-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        }
    }
}

/// A key pair made for one device. The private half is only ever a [`Secret`].
pub struct DeviceKey {
    key: KeyPair,
    private_pem: Secret,
}

impl DeviceKey {
    /// A new EC P-256 key pair.
    pub fn generate() -> Result<Self, String> {
        Self::generate_with(KeyAlgorithm::EcP256)
    }

    /// A new key pair of the given kind.
    pub fn generate_with(algorithm: KeyAlgorithm) -> Result<Self, String> {
        let key = match algorithm {
            KeyAlgorithm::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
        }
        .map_err(|e| format!("key generation failed: {e}"))?;
        let private_pem = Secret::new(key.serialize_pem());
        Ok(DeviceKey { key, private_pem })
    }

    pub fn private_pem(&self) -> &Secret {
        &self.private_pem
    }

    pub fn public_key(&self) -> PublicKeyId {
        PublicKeyId(self.key.der_bytes().to_vec())
    }

    pub fn public_key_pem(&self) -> PublicKeyPem {
        PublicKeyPem {
            pem: spki_pem(&self.key.subject_public_key_info()),
            rsa: !self.key.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256),
        }
    }

    /// A PKCS#10 request for this key with the device UUID as its common name.
    pub fn csr_pem(&self, uuid: &DeviceUuid) -> Result<String, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.distinguished_name = device_name(uuid);
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| format!("CSR serialisation failed: {e}"))
    }

    /// A self-signed certificate for this key, valid for `days` (IoT Hub registers these by
    /// thumbprint).
    pub fn self_signed_pem(&self, uuid: &DeviceUuid, days: i64) -> Result<String, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.distinguished_name = device_name(uuid);
        let now = time_now();
        params.not_before = now - std::time::Duration::from_secs(300);
        params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
        params
            .self_signed(&self.key)
            .map(|c| c.pem())
            .map_err(|e| format!("certificate signing failed: {e}"))
    }
}

fn time_now() -> ::time::OffsetDateTime {
    ::time::OffsetDateTime::now_utc()
}

fn device_name(uuid: &DeviceUuid) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, uuid.as_str());
    dn
}

/// A certificate for a device's CSR key, for registries that register certificates by
/// thumbprint (IoT Hub): the device keeps its key, and the issuer is a throwaway key, since
/// thumbprint authentication never checks the chain.
pub fn certificate_for_csr(csr: &DeviceCsr, days: i64) -> Result<String, String> {
    let issuer_key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut issuer_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    issuer_params
        .distinguished_name
        .push(DnType::CommonName, "balena-provision thumbprint issuer");
    let issuer = rcgen::Issuer::new(issuer_params, issuer_key);
    let mut request = rcgen::CertificateSigningRequestParams::from_pem(csr.pem())
        .map_err(|e| format!("CSR unreadable: {e}"))?;
    let now = time_now();
    request.params.not_before = now - std::time::Duration::from_secs(300);
    request.params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
    request
        .signed_by(&issuer)
        .map(|c| c.pem())
        .map_err(|e| format!("certificate signing failed: {e}"))
}

/// A certificate signing request a device sent so it can keep its private key.
#[derive(Clone, Debug)]
pub struct DeviceCsr {
    pem: String,
    public_key: PublicKeyId,
    public_key_pem: PublicKeyPem,
}

impl DeviceCsr {
    /// Accepts a PEM PKCS#10 request whose signature verifies, whose key is EC P-256 or RSA of
    /// at least 2048 bits, and whose subject common name is this device's UUID. The error reads
    /// as the rest of a sentence that starts with the field name.
    pub fn parse(pem: &str, uuid: &DeviceUuid) -> Result<Self, String> {
        let der = pem_block(pem, "CERTIFICATE REQUEST")
            .ok_or("is not a PEM 'CERTIFICATE REQUEST' block")?;
        let (rest, csr) = X509CertificationRequest::from_der(&der)
            .map_err(|_| "is not a valid PKCS#10 request")?;
        if !rest.is_empty() {
            return Err("has trailing data after the request".into());
        }
        csr.verify_signature()
            .map_err(|_| "has a signature that does not verify")?;
        let info = &csr.certification_request_info;
        check_key_type(&info.subject_pki)?;
        let cn = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or("has no subject common name; it must be the device UUID")?;
        if cn != uuid.as_str() {
            return Err(
                "is for another device: its subject common name is not the device UUID".into(),
            );
        }
        let is_rsa = matches!(
            info.subject_pki.parsed(),
            Ok(x509_parser::public_key::PublicKey::RSA(_))
        );
        Ok(DeviceCsr {
            pem: pem.trim().to_owned() + "\n",
            public_key: PublicKeyId(info.subject_pki.subject_public_key.data.to_vec()),
            public_key_pem: PublicKeyPem {
                pem: spki_pem(info.subject_pki.raw),
                rsa: is_rsa,
            },
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn public_key(&self) -> &PublicKeyId {
        &self.public_key
    }

    pub fn public_key_pem(&self) -> &PublicKeyPem {
        &self.public_key_pem
    }
}

/// A public key as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) block, for registries that take
/// keys rather than certificates (ClearBlade's `ES256_PEM` / `RSA_PEM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyPem {
    pub pem: String,
    /// RSA (else EC P-256).
    pub rsa: bool,
}

fn spki_pem(der: &[u8]) -> String {
    let body = base64_encode(der);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}

/// The key a `PUBLIC KEY` PEM holds, if it is one.
pub fn public_key_of_pem(pem: &str) -> Option<PublicKeyId> {
    let der = pem_block(pem, "PUBLIC KEY")?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(&der).ok()?;
    Some(PublicKeyId(spki.subject_public_key.data.to_vec()))
}

fn check_key_type(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            if curve == Some(x509_parser::oid_registry::OID_EC_P256) && point.key_size() == 256 {
                Ok(())
            } else {
                Err("has an EC key on a curve other than P-256".into())
            }
        }
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => {
            Err("has an RSA key shorter than 2048 bits".into())
        }
        _ => Err("has a key that is neither EC P-256 nor RSA".into()),
    }
}

/// The DER of the first PEM block with this label, if the text is one.
pub fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.trim_start().as_bytes()).ok()?;
    (pem.label == label).then_some(pem.contents)
}

/// What a certificate says about itself, for matching against stored variables.
#[derive(Clone, Debug)]
pub struct CertificateFacts {
    pub public_key: PublicKeyId,
    pub sha1_thumbprint: String,
    pub sha256_thumbprint: String,
    pub not_after_unix: i64,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
}

pub fn certificate_facts(pem: &str) -> Result<CertificateFacts, String> {
    let der = pem_block(pem, "CERTIFICATE").ok_or("not a PEM certificate")?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|_| "not a valid X.509 certificate")?;
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    Ok(CertificateFacts {
        public_key: PublicKeyId(cert.public_key().subject_public_key.data.to_vec()),
        sha1_thumbprint: hex_upper(sha1.as_ref()),
        sha256_thumbprint: hex_upper(&sha256(&der)),
        not_after_unix: cert.validity().not_after.timestamp(),
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
    })
}

/// The public key of a PEM private key (PKCS#8, or SEC1/PKCS#1 as `rcgen` reads them).
pub fn public_key_of_private_pem(pem: &Secret) -> Result<PublicKeyId, String> {
    let key =
        KeyPair::from_pem(pem.expose()).map_err(|_| "not a usable private key".to_string())?;
    Ok(PublicKeyId(key.der_bytes().to_vec()))
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid() -> DeviceUuid {
        DeviceUuid::parse("7cf02a69e4d34c9da573914963cf54fd").unwrap()
    }

    #[test]
    fn generated_csr_parses_and_names_the_key() {
        let key = DeviceKey::generate().unwrap();
        let csr = DeviceCsr::parse(&key.csr_pem(&uuid()).unwrap(), &uuid()).unwrap();
        assert_eq!(csr.public_key(), &key.public_key());
        assert_eq!(
            public_key_of_private_pem(key.private_pem()).unwrap(),
            key.public_key()
        );
    }

    #[test]
    fn csr_for_another_device_is_refused() {
        let key = DeviceKey::generate().unwrap();
        let other = DeviceUuid::parse("00000000000000000000000000000000").unwrap();
        let err = DeviceCsr::parse(&key.csr_pem(&other).unwrap(), &uuid()).unwrap_err();
        assert!(err.contains("another device"), "{err}");
    }

    #[test]
    fn garbage_csr_is_refused() {
        for bad in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(DeviceCsr::parse(bad, &uuid()).is_err());
        }
    }

    #[test]
    fn tampered_csr_signature_is_refused() {
        let key = DeviceKey::generate().unwrap();
        let pem = key.csr_pem(&uuid()).unwrap();
        let mut der = pem_block(&pem, "CERTIFICATE REQUEST").unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64_encode(&der)
        );
        assert!(DeviceCsr::parse(&tampered, &uuid()).is_err());
    }

    #[test]
    fn a_certificate_for_a_csr_carries_the_csr_key() {
        let key = DeviceKey::generate().unwrap();
        let csr = DeviceCsr::parse(&key.csr_pem(&uuid()).unwrap(), &uuid()).unwrap();
        let pem = certificate_for_csr(&csr, 30).unwrap();
        assert_eq!(
            certificate_facts(&pem).unwrap().public_key,
            key.public_key()
        );
    }

    #[test]
    fn self_signed_certificate_facts() {
        let key = DeviceKey::generate().unwrap();
        let pem = key.self_signed_pem(&uuid(), 365).unwrap();
        let facts = certificate_facts(&pem).unwrap();
        assert_eq!(facts.public_key, key.public_key());
        assert_eq!(facts.sha1_thumbprint.len(), 40);
        assert_eq!(facts.sha256_thumbprint.len(), 64);
    }

    #[test]
    fn rsa_keys_make_csrs_and_certificates_for_the_same_key() {
        let key = DeviceKey::generate_with(KeyAlgorithm::Rsa2048).unwrap();
        assert!(key.private_pem().expose().contains("BEGIN PRIVATE KEY"));
        assert_eq!(
            public_key_of_private_pem(key.private_pem()).unwrap(),
            key.public_key()
        );
        let csr = DeviceCsr::parse(&key.csr_pem(&uuid()).unwrap(), &uuid()).unwrap();
        assert_eq!(csr.public_key(), &key.public_key());
        let pem = key.self_signed_pem(&uuid(), 30).unwrap();
        let facts = certificate_facts(&pem).unwrap();
        assert_eq!(facts.public_key, key.public_key());
        let der = pem_block(&pem, "CERTIFICATE").unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        match cert.public_key().parsed().unwrap() {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("not an RSA key: {other:?}"),
        }
    }

    #[test]
    fn key_type_setting_spellings() {
        assert_eq!(KeyAlgorithm::parse("ec-p256"), Some(KeyAlgorithm::EcP256));
        assert_eq!(KeyAlgorithm::parse("rsa-2048"), Some(KeyAlgorithm::Rsa2048));
        assert_eq!(KeyAlgorithm::parse("RSA"), None);
        assert_eq!(KeyAlgorithm::Rsa2048.as_str(), "rsa-2048");
    }

    #[test]
    fn public_key_pems_name_the_same_key() {
        for algorithm in [KeyAlgorithm::EcP256, KeyAlgorithm::Rsa2048] {
            let key = DeviceKey::generate_with(algorithm).unwrap();
            let pem = key.public_key_pem();
            assert_eq!(pem.rsa, algorithm == KeyAlgorithm::Rsa2048);
            assert!(pem.pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
            assert_eq!(public_key_of_pem(&pem.pem), Some(key.public_key()));
            let csr = DeviceCsr::parse(&key.csr_pem(&uuid()).unwrap(), &uuid()).unwrap();
            assert_eq!(csr.public_key_pem(), &pem);
        }
        assert_eq!(
            public_key_of_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            None
        );
    }
}
