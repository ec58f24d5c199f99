//! rustls client configurations: which servers are trusted (the public roots bundled in the
//! binary, or `CLOUD_CA_CERT` / `AWS_ROOT_CA_PATH` in their place) and the device's certificate.
//! A container built `FROM scratch` has no system trust store, so none is read.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The trust roots: the PEM's certificates when one is given, else the public web roots.
pub fn roots(ca_pem: Option<&str>) -> anyhow::Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                store
                    .add(cert.context("reading a trusted CA certificate")?)
                    .context("adding a trusted CA certificate")?;
            }
            anyhow::ensure!(!store.is_empty(), "the CA PEM holds no certificate");
        }
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(store)
}

/// A configuration without a client certificate (the function, ClearBlade's MQTT bridge).
pub fn anonymous(roots: RootCertStore) -> anyhow::Result<ClientConfig> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A configuration presenting the device's certificate (AWS IoT, IoT Hub with X.509).
pub fn with_client_certificate(
    roots: RootCertStore,
    certificate_pem: &str,
    private_key_pem: &str,
) -> anyhow::Result<ClientConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
            .collect::<Result<_, _>>()
            .context("reading the device certificate")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "the device certificate PEM holds no certificate"
    );
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes())
        .context("reading the device private key")?;
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("the device certificate and private key do not belong together")
}
