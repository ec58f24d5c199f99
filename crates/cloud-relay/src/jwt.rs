//! The JSON Web Token ClearBlade IoT Core's MQTT bridge takes as the password: claims `iat`,
//! `exp` and `aud` (the project id), signed with the device's private key, `ES256` for an EC
//! P-256 key and `RS256` for an RSA key.

use anyhow::Context as _;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// A key that signs device tokens.
pub enum TokenKey {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl TokenKey {
    pub fn from_pem(pem: &str) -> anyhow::Result<TokenKey> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).context("reading the key PEM")?;
        let bytes = der.secret_der();
        if let Ok(key) =
            EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, bytes)
        {
            return Ok(TokenKey::Es256(key));
        }
        if let Ok(key) = RsaKeyPair::from_der(bytes).or_else(|_| RsaKeyPair::from_pkcs8(bytes)) {
            return Ok(TokenKey::Rs256(key));
        }
        anyhow::bail!("the key is neither an EC P-256 nor an RSA private key")
    }

    fn algorithm(&self) -> &'static str {
        match self {
            TokenKey::Es256(_) => "ES256",
            TokenKey::Rs256(_) => "RS256",
        }
    }

    /// The public key's bytes (for tests comparing with a registered key).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match self {
            TokenKey::Es256(k) => k.public_key().as_ref().to_vec(),
            TokenKey::Rs256(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// A token for `audience`, issued at `issued_at` (Unix seconds), valid `lifetime_seconds`.
    pub fn token(
        &self,
        audience: &str,
        issued_at: u64,
        lifetime_seconds: u64,
    ) -> anyhow::Result<String> {
        let header = serde_json::json!({"alg": self.algorithm(), "typ": "JWT"});
        let claims = serde_json::json!({
            "iat": issued_at,
            "exp": issued_at + lifetime_seconds,
            "aud": audience,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let signature = match self {
            TokenKey::Es256(key) => key
                .sign(&rng, signing_input.as_bytes())
                .map_err(|_| anyhow::anyhow!("signing the token failed"))?
                .as_ref()
                .to_vec(),
            TokenKey::Rs256(key) => {
                let mut out = vec![0; key.public_modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut out,
                )
                .map_err(|_| anyhow::anyhow!("signing the token failed"))?;
                out
            }
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::UnparsedPublicKey;

    #[test]
    fn an_es256_token_verifies_with_the_public_key_and_carries_the_claims() {
        let key = rcgen::KeyPair::generate().unwrap();
        let signer = TokenKey::from_pem(&key.serialize_pem()).unwrap();
        let token = signer.token("my-project", 1_700_000_000, 3600).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "my-project");
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        let public = UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            signer.public_key_bytes(),
        );
        let signed = format!("{}.{}", parts[0], parts[1]);
        public
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("the signature verifies");
        // Another key's signature does not.
        let other = TokenKey::from_pem(&rcgen::KeyPair::generate().unwrap().serialize_pem())
            .unwrap()
            .token("my-project", 1_700_000_000, 3600)
            .unwrap();
        let other_sig = URL_SAFE_NO_PAD
            .decode(other.rsplit('.').next().unwrap())
            .unwrap();
        assert!(public.verify(signed.as_bytes(), &other_sig).is_err());
    }
}
