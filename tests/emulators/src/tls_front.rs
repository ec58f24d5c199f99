//! A TLS front for a plain-HTTP stand-in (a [`crate::fault_proxy::FaultProxy`]): it terminates
//! TLS with a test CA's certificate, as the real services' endpoints do, and pipes each
//! connection's bytes to the stand-in over a connection of its own, one for one, so the
//! client's connections, their reuse and their closing stay exactly what the stand-in sees.
//! Every completed handshake is counted in the world's [`Traffic`], by upstream name.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::common::tls::make_pki;
use crate::fault_proxy::Traffic;

/// A test CA and the server certificate it signed for `127.0.0.1` and `localhost`: what
/// every front of one world serves, and what the client is told to trust.
pub struct TestCa {
    ca_pem: String,
    config: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new() -> anyhow::Result<TestCa> {
        let pki = make_pki("TLS front", None)?;
        Ok(TestCa {
            ca_pem: pki.ca_pem,
            config: pki.server_config,
        })
    }

    /// The CA certificate, PEM: a client that trusts it accepts every front of this CA.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// A running front; it stops when dropped.
pub struct TlsFront {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Starts a front for the stand-in at `target_port`, serving `ca`'s certificate and
    /// counting handshakes as `upstream`'s.
    pub async fn start(
        upstream: &'static str,
        target_port: u16,
        ca: &TestCa,
        traffic: Traffic,
    ) -> anyhow::Result<TlsFront> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = TlsAcceptor::from(ca.config.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let traffic = traffic.clone();
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    traffic.handshaken(upstream);
                    let Ok(mut plain) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let _ = plain.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsFront { port, task })
    }

    /// `https://127.0.0.1:<port>` (the certificate names `127.0.0.1` and `localhost`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
