//! JSON Web Tokens (RFC 7519) as Cloud IoT / ClearBlade IoT Core devices use them for their MQTT
//! password: compact JWS, `ES256` (ECDSA P-256 with SHA-256, the 64-byte `r || s` signature of
//! RFC 7518 3.4) or `RS256` (RSASSA-PKCS1-v1_5 with SHA-256), verified against a device's PEM
//! public key (`-----BEGIN PUBLIC KEY-----` or an X.509 `-----BEGIN CERTIFICATE-----`).
//!
//! [`sign`] makes one, as a device does, for tests.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::pem::parse_x509_pem;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The signature algorithms Cloud IoT accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Rs256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
        }
    }
}

/// A decoded (not yet verified) token.
#[derive(Debug, Clone)]
pub struct Jwt {
    pub algorithm: Algorithm,
    pub header: Value,
    pub claims: Value,
    /// `base64url(header) . base64url(claims)`, what the signature covers.
    signing_input: String,
    signature: Vec<u8>,
}

/// Splits and decodes a compact JWS; the error says what is wrong.
pub fn decode(token: &str) -> Result<Jwt, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the password is not a JWT (three base64url parts joined by '.')".into());
    };
    let json_part = |part: &str, what: &str| -> Result<Value, String> {
        let bytes = B64URL
            .decode(part)
            .map_err(|_| format!("the JWT {what} is not base64url"))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|_| format!("the JWT {what} is not JSON"))?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(format!("the JWT {what} is not a JSON object"))
        }
    };
    let header_json = json_part(header, "header")?;
    let claims_json = json_part(claims, "claims")?;
    let algorithm = match header_json.get("alg").and_then(Value::as_str) {
        Some("ES256") => Algorithm::Es256,
        Some("RS256") => Algorithm::Rs256,
        other => {
            return Err(format!("the JWT algorithm {other:?} is not ES256 or RS256"));
        }
    };
    let signature = B64URL
        .decode(signature)
        .map_err(|_| "the JWT signature is not base64url".to_string())?;
    Ok(Jwt {
        algorithm,
        header: header_json,
        claims: claims_json,
        signing_input: format!("{header}.{claims}"),
        signature,
    })
}

/// The key's algorithm and its bytes as aws-lc-rs verifies with them (the EC point, or the
/// PKCS#1 `RSAPublicKey`), from a PEM public key or certificate.
fn public_key(pem: &str) -> Result<(Algorithm, Vec<u8>), String> {
    let (_, block) =
        parse_x509_pem(pem.trim().as_bytes()).map_err(|_| "the key is not PEM".to_string())?;
    let spki_der = match block.label.as_str() {
        "PUBLIC KEY" => block.contents.clone(),
        "CERTIFICATE" => {
            let (_, cert) = x509_parser::parse_x509_certificate(&block.contents)
                .map_err(|_| "the certificate does not parse".to_string())?;
            cert.tbs_certificate.subject_pki.raw.to_vec()
        }
        other => return Err(format!("a PEM {other} is not a public key")),
    };
    let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|_| "the public key does not parse".to_string())?;
    let algorithm = if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        Algorithm::Es256
    } else if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        Algorithm::Rs256
    } else {
        return Err("the key is neither EC nor RSA".into());
    };
    Ok((algorithm, spki.subject_public_key.data.to_vec()))
}

impl Jwt {
    /// Whether the signature verifies with `pem` (a key of the token's algorithm).
    pub fn verifies_with(&self, pem: &str) -> bool {
        let Ok((algorithm, key)) = public_key(pem) else {
            return false;
        };
        if algorithm != self.algorithm {
            return false;
        }
        let verification: &dyn signature::VerificationAlgorithm = match algorithm {
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        };
        signature::UnparsedPublicKey::new(verification, key)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .is_ok()
    }

    /// A claim as an integer (`NumericDate`, seconds since the epoch).
    pub fn numeric_claim(&self, name: &str) -> Option<i64> {
        let v = self.claims.get(name)?;
        v.as_i64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
    }
}

/// Signs `claims` with the private key `pkcs8_der` (PKCS#8 DER: P-256 for ES256, RSA for
/// RS256), as a device makes its MQTT password. For tests.
pub fn sign(algorithm: Algorithm, pkcs8_der: &[u8], claims: &Value) -> anyhow::Result<String> {
    let header = json!({"alg": algorithm.name(), "typ": "JWT"});
    let input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let rng = SystemRandom::new();
    let signature = match algorithm {
        Algorithm::Es256 => {
            let key =
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8_der)
                    .map_err(|e| anyhow::anyhow!("not a P-256 PKCS#8 key: {e}"))?;
            key.sign(&rng, input.as_bytes())
                .map_err(|e| anyhow::anyhow!("signing: {e}"))?
                .as_ref()
                .to_vec()
        }
        Algorithm::Rs256 => {
            let key = RsaKeyPair::from_pkcs8(pkcs8_der)
                .map_err(|e| anyhow::anyhow!("not an RSA PKCS#8 key: {e}"))?;
            let mut out = vec![0; key.public_modulus_len()];
            key.sign(
                &signature::RSA_PKCS1_SHA256,
                &rng,
                input.as_bytes(),
                &mut out,
            )
            .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
            out
        }
    };
    Ok(format!("{input}.{}", B64URL.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es256_and_rs256_round_trip() {
        let claims = json!({"aud": "p", "iat": 1, "exp": 2});
        for (alg, rc) in [
            (Algorithm::Es256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::Rs256, &rcgen::PKCS_RSA_SHA256),
        ] {
            let key = rcgen::KeyPair::generate_for(rc).expect("key");
            let other = rcgen::KeyPair::generate_for(rc).expect("key");
            let token = sign(alg, &key.serialize_der(), &claims).expect("signs");
            let jwt = decode(&token).expect("decodes");
            assert_eq!(jwt.algorithm, alg);
            assert_eq!(jwt.claims, claims);
            assert_eq!(jwt.numeric_claim("exp"), Some(2));
            assert!(jwt.verifies_with(&key.public_key_pem()), "{alg:?}");
            assert!(!jwt.verifies_with(&other.public_key_pem()), "{alg:?}");
            // As an X.509 certificate (RSA_X509_PEM / ES256_X509_PEM).
            let cert = rcgen::CertificateParams::new(vec!["d".to_string()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            assert!(jwt.verifies_with(&cert.pem()), "{alg:?}");
            // A token changed after signing does not verify.
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = B64URL.encode(json!({"aud": "q", "iat": 1, "exp": 2}).to_string());
            parts[1] = &forged;
            assert!(
                !decode(&parts.join("."))
                    .expect("decodes")
                    .verifies_with(&key.public_key_pem())
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        assert!(decode("a.b").is_err());
        assert!(decode("a.b.c.d").is_err());
        assert!(decode("!!.e30.AA").is_err());
        let none = format!(
            "{}.{}.",
            B64URL.encode(r#"{"alg":"none"}"#),
            B64URL.encode("{}")
        );
        assert!(decode(&none).is_err());
        let hs = format!(
            "{}.{}.AA",
            B64URL.encode(r#"{"alg":"HS256"}"#),
            B64URL.encode("{}")
        );
        assert!(decode(&hs).is_err());
    }
}
