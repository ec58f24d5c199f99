//! The stand-ins' TLS: a server certificate from a test CA made at start, and client
//! certificates requested but not required.
//!
//! The clouds differ in what the TLS layer checks: AWS IoT requires a client certificate it
//! issued or registered (on 8883 without ALPN), Azure IoT Hub takes a self-signed one and
//! checks its thumbprint afterwards, ClearBlade IoT Core takes none (the password carries a
//! JWT). So the handshake here accepts any presented chain, or none, and the cloud's
//! [`Authenticator`](super::Authenticator) judges the chain. What the TLS layer still does, as
//! every TLS server does, is check the client's CertificateVerify signature with the leaf's
//! public key: a client that presents a certificate has proven it holds the private key.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{
    WebPkiSupportedAlgorithms, aws_lc_rs, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, Error, ServerConfig, SignatureScheme,
};

use crate::common::tls::TestPki;

/// Requests a client certificate, accepts any chain (or none) at the TLS layer, and verifies
/// the handshake signature with the leaf's key.
#[derive(Debug)]
struct AnyClientCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // The chain is the authenticator's to judge (see the module documentation).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.2/1.3 server configuration serving `pki`'s certificate and asking for (not
/// requiring) a client certificate.
pub(crate) fn server_config(pki: &TestPki) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier = Arc::new(AnyClientCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_pkcs8.clone()));
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.cert_chain.clone(), key)
        .context("TLS server configuration")?;
    Ok(Arc::new(config))
}
