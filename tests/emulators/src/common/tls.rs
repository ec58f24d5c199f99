//! The HTTPS side: a throwaway test CA and server certificate made at start, and a listener that
//! completes TLS handshakes concurrently (a slow or broken client never holds up the others).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA and a server certificate it signed, for `127.0.0.1`, `localhost` and any extra hosts.
pub(crate) struct TestPki {
    pub(crate) ca_pem: String,
    pub(crate) server_config: Arc<ServerConfig>,
    /// The server certificate and the CA's, for servers that build their own configuration
    /// (the MQTT stand-ins ask for client certificates).
    pub(crate) cert_chain: Vec<CertificateDer<'static>>,
    /// The server certificate's private key, PKCS#8 DER.
    pub(crate) key_pkcs8: Vec<u8>,
}

/// Makes a CA named `provision-emulators <emulator> test CA` and a server certificate it signed
/// for `127.0.0.1`, `localhost` and `extra_host` (when given; also the certificate's common
/// name), with a TLS server configuration serving that certificate.
pub(crate) fn make_pki(emulator: &str, extra_host: Option<&str>) -> anyhow::Result<TestPki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("provision-emulators {emulator} test CA"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)
        .context("making the test CA")?;

    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if let Some(host) = extra_host
        && !names.iter().any(|n| n.eq_ignore_ascii_case(host))
    {
        names.push(host.to_string());
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in &names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .with_context(|| format!("{name:?} cannot be a DNS name in a certificate"))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params
        .distinguished_name
        .push(DnType::CommonName, extra_host.unwrap_or("127.0.0.1"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params
        .signed_by(&key, &ca)
        .context("making the server certificate")?;

    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone(), ca.der().clone()];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server_config =
        ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), private)
            .context("TLS server configuration")?;
    Ok(TestPki {
        ca_pem: ca.pem(),
        server_config: Arc::new(server_config),
        cert_chain: chain,
        key_pkcs8: key.serialize_der(),
    })
}

/// An [`axum::serve::Listener`] yielding connections whose TLS handshake is done. The handshakes
/// run in their own tasks, fed by an accept loop; both stop when the listener is dropped.
/// `name` (e.g. `iothub emulator`) starts its log lines.
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub(crate) fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        name: &'static str,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "{name}: TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, %peer, "{name}: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "{name}: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop is gone (only when the listener is being dropped): never yield.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
