//! Device public keys: the four Cloud IoT formats and the check that a key is what its format
//! says (one PEM block of the right kind whose key is RSA, or EC on P-256).

use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// `PublicKeyFormat` of Cloud IoT (`UNSPECIFIED_PUBLIC_KEY_FORMAT` is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFormat {
    /// An RSA `-----BEGIN PUBLIC KEY-----` (SubjectPublicKeyInfo).
    Rsa,
    /// An X.509 certificate holding an RSA key.
    RsaX509,
    /// A P-256 `-----BEGIN PUBLIC KEY-----`.
    Es256,
    /// An X.509 certificate holding a P-256 key.
    Es256X509,
}

impl KeyFormat {
    pub(crate) const NAMES: &'static str = "RSA_PEM, RSA_X509_PEM, ES256_PEM, ES256_X509_PEM";

    pub(crate) fn parse(name: &str) -> Option<KeyFormat> {
        match name {
            "RSA_PEM" => Some(KeyFormat::Rsa),
            "RSA_X509_PEM" => Some(KeyFormat::RsaX509),
            "ES256_PEM" => Some(KeyFormat::Es256),
            "ES256_X509_PEM" => Some(KeyFormat::Es256X509),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyFormat::Rsa => "RSA_PEM",
            KeyFormat::RsaX509 => "RSA_X509_PEM",
            KeyFormat::Es256 => "ES256_PEM",
            KeyFormat::Es256X509 => "ES256_X509_PEM",
        }
    }

    fn is_certificate(self) -> bool {
        matches!(self, KeyFormat::RsaX509 | KeyFormat::Es256X509)
    }

    fn is_rsa(self) -> bool {
        matches!(self, KeyFormat::Rsa | KeyFormat::RsaX509)
    }
}

/// Checks that `pem` is exactly one PEM block (surrounding whitespace aside) of the kind
/// `format` names, holding a key of its algorithm. The error says what is wrong.
pub(crate) fn check(format: KeyFormat, pem: &str) -> Result<(), String> {
    let name = format.name();
    let text = pem.trim();
    let label = if format.is_certificate() {
        "CERTIFICATE"
    } else {
        "PUBLIC KEY"
    };
    if !text.starts_with("-----BEGIN ") {
        return Err(format!(
            "The public key is not in {name} format: it must be one PEM block starting with \
             '-----BEGIN {label}-----'."
        ));
    }
    let (rest, block) = parse_x509_pem(text.as_bytes())
        .map_err(|_| format!("The public key is not in {name} format: the PEM does not parse."))?;
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "The public key is not in {name} format: only one PEM block is allowed."
        ));
    }
    if block.label != label {
        return Err(format!(
            "The public key is not in {name} format: the PEM block is '{}', not '{label}'.",
            block.label
        ));
    }
    if format.is_certificate() {
        let (rest, cert) = x509_parser::parse_x509_certificate(&block.contents).map_err(|_| {
            format!("The public key is not in {name} format: the certificate does not parse.")
        })?;
        if !rest.is_empty() {
            return Err(format!(
                "The public key is not in {name} format: data after the certificate."
            ));
        }
        check_algorithm(format, cert.public_key())
    } else {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(&block.contents).map_err(|_| {
            format!("The public key is not in {name} format: the key does not parse.")
        })?;
        if !rest.is_empty() {
            return Err(format!(
                "The public key is not in {name} format: data after the key."
            ));
        }
        check_algorithm(format, &spki)
    }
}

fn check_algorithm(format: KeyFormat, spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    let name = format.name();
    let algorithm = &spki.algorithm.algorithm;
    if format.is_rsa() {
        match spki.parsed() {
            Ok(PublicKey::RSA(_)) if *algorithm == OID_PKCS1_RSAENCRYPTION => Ok(()),
            _ => Err(format!(
                "The public key is not in {name} format: not an RSA key."
            )),
        }
    } else {
        let on_p256 = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256);
        let point_ok = match spki.parsed() {
            Ok(PublicKey::EC(point)) => {
                let data = point.data();
                matches!(
                    (data.len(), data.first()),
                    (65, Some(4)) | (33, Some(2 | 3))
                )
            }
            _ => false,
        };
        if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && on_p256 && point_ok {
            Ok(())
        } else {
            Err(format!(
                "The public key is not in {name} format: not an EC key on P-256 (prime256v1)."
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_pem(key: &rcgen::KeyPair) -> String {
        rcgen::CertificateParams::new(vec!["device".to_string()])
            .expect("params")
            .self_signed(key)
            .expect("self-signed")
            .pem()
    }

    #[test]
    fn checks_formats() {
        let ec = rcgen::KeyPair::generate().expect("P-256 key");
        let ec_pem = ec.public_key_pem();
        assert_eq!(check(KeyFormat::Es256, &ec_pem), Ok(()));
        assert_eq!(check(KeyFormat::Es256, &format!("\n{ec_pem}\n\n")), Ok(()));
        assert!(check(KeyFormat::Rsa, &ec_pem).is_err());
        assert!(check(KeyFormat::Es256X509, &ec_pem).is_err());
        assert!(check(KeyFormat::Es256, &format!("{ec_pem}{ec_pem}")).is_err());
        assert!(check(KeyFormat::Es256, &format!("junk\n{ec_pem}")).is_err());
        assert!(check(KeyFormat::Es256, "").is_err());
        assert!(check(KeyFormat::Es256, "-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());

        let cert = cert_pem(&ec);
        assert_eq!(check(KeyFormat::Es256X509, &cert), Ok(()));
        assert!(check(KeyFormat::RsaX509, &cert).is_err());
        assert!(check(KeyFormat::Es256, &cert).is_err());

        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("P-384");
        assert!(check(KeyFormat::Es256, &p384.public_key_pem()).is_err());

        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        assert_eq!(check(KeyFormat::Rsa, &rsa.public_key_pem()), Ok(()));
        assert!(check(KeyFormat::Es256, &rsa.public_key_pem()).is_err());
        assert_eq!(check(KeyFormat::RsaX509, &cert_pem(&rsa)), Ok(()));
    }
}
