//! The stand-in's listener: binding a port it keeps through outages, accepting connections,
//! going down and coming up again.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::record::Recorder;
use super::{Authenticator, Connected, Received, Refusal, connection, tls};
use crate::common::{self, lock};

/// What every connection of a stand-in shares.
pub(super) struct Ctx {
    pub(super) name: String,
    pub(super) acceptor: TlsAcceptor,
    pub(super) auth: Arc<dyn Authenticator>,
    pub(super) recorder: Arc<Recorder>,
}

/// A running MQTT-over-TLS stand-in of one cloud's broker (see the [module](super)
/// documentation). Stops serving when dropped.
pub struct MqttStandIn {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    ca_pem: String,
    /// Bound to the port (never listening) from start to shutdown, so no other server takes the
    /// port while the stand-in is down. The listening socket shares the port (`SO_REUSEPORT`).
    _reservation: TcpSocket,
    /// The accept loop while up.
    accepting: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// Every connection's task (TLS handshake included).
    connections: Arc<Mutex<JoinSet<()>>>,
}

impl std::fmt::Debug for MqttStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttStandIn")
            .field("cloud", &self.ctx.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A TCP socket bound to `addr` with `SO_REUSEPORT`, so the stand-in's sockets can share the
/// port. The reservation has no `SO_REUSEADDR`: on Linux that keeps other sockets (which do not
/// set `SO_REUSEPORT`) from binding the port while nothing listens; the listener has it, to
/// bind again despite the closed connections' `TIME_WAIT`.
fn shared_socket(addr: SocketAddr, listening: bool) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(listening)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

impl MqttStandIn {
    /// Starts a stand-in for `cloud_name` (used in the test CA's name and in logs) on
    /// `127.0.0.1:0`, judging connections with `auth`.
    pub async fn start(
        cloud_name: &str,
        auth: Arc<dyn Authenticator>,
    ) -> anyhow::Result<MqttStandIn> {
        MqttStandIn::start_on(cloud_name, auth, common::server::any_local_port(), None).await
    }

    /// Starts on `addr`, with a server certificate also naming `server_name` (e.g. the hub host)
    /// when given.
    pub async fn start_on(
        cloud_name: &str,
        auth: Arc<dyn Authenticator>,
        addr: SocketAddr,
        server_name: Option<&str>,
    ) -> anyhow::Result<MqttStandIn> {
        let pki = common::tls::make_pki(&format!("{cloud_name} MQTT"), server_name)?;
        let config = tls::server_config(&pki)?;
        let reservation = shared_socket(addr, false)
            .with_context(|| format!("binding the MQTT stand-in to {addr}"))?;
        let addr = reservation.local_addr()?;
        let stand_in = MqttStandIn {
            ctx: Arc::new(Ctx {
                name: format!("{cloud_name} MQTT stand-in"),
                acceptor: TlsAcceptor::from(config),
                auth,
                recorder: Arc::new(Recorder::new()),
            }),
            addr,
            ca_pem: pki.ca_pem,
            _reservation: reservation,
            accepting: tokio::sync::Mutex::new(None),
            connections: Arc::new(Mutex::new(JoinSet::new())),
        };
        stand_in.come_up().await?;
        tracing::debug!(%addr, cloud_name, "mqtt stand-in listening");
        Ok(stand_in)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server certificate (the device's trust anchor).
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Every PUBLISH accepted, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.ctx.recorder.snapshot().received
    }

    /// Every refused CONNECT and forced disconnect, in order.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.ctx.recorder.snapshot().refusals
    }

    /// Every accepted CONNECT, in order.
    pub fn connections(&self) -> Vec<Connected> {
        self.ctx.recorder.snapshot().connections
    }

    /// Waits until at least `n` messages were accepted and returns them all.
    pub async fn wait_for_received(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Received>> {
        self.ctx
            .recorder
            .wait_until(&format!("{n} message(s)"), timeout, |r| {
                (r.received.len() >= n).then(|| r.received.clone())
            })
            .await
    }

    /// Waits until at least `n` refusals were recorded and returns them all.
    pub async fn wait_for_refusals(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Refusal>> {
        self.ctx
            .recorder
            .wait_until(&format!("{n} refusal(s)"), timeout, |r| {
                (r.refusals.len() >= n).then(|| r.refusals.clone())
            })
            .await
    }

    /// Waits until at least `n` connections were accepted and returns them all.
    pub async fn wait_for_connections(
        &self,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Connected>> {
        self.ctx
            .recorder
            .wait_until(&format!("{n} accepted connection(s)"), timeout, |r| {
                (r.connections.len() >= n).then(|| r.connections.clone())
            })
            .await
    }

    /// An outage: stops accepting (new connections are refused at TCP) and closes every open
    /// connection; the port stays reserved. Returns once the connections are closed.
    pub async fn go_down(&self) {
        if let Some(task) = self.accepting.lock().await.take() {
            task.abort();
            let _ = task.await;
        }
        let mut open = std::mem::take(&mut *lock(&self.connections));
        open.abort_all();
        while open.join_next().await.is_some() {}
        tracing::debug!(addr = %self.addr, "{}: down", self.ctx.name);
    }

    /// Ends an outage: accepts again on the same port (a no-op while up).
    pub async fn come_up(&self) -> anyhow::Result<()> {
        let mut accepting = self.accepting.lock().await;
        if accepting.is_some() {
            return Ok(());
        }
        let listener = shared_socket(self.addr, true)
            .and_then(|s| s.listen(1024))
            .with_context(|| format!("listening on {} again", self.addr))?;
        *accepting = Some(tokio::spawn(accept_loop(
            listener,
            self.ctx.clone(),
            self.connections.clone(),
        )));
        Ok(())
    }

    /// Stops serving: closes every connection and releases the port.
    pub async fn shutdown(self) {
        self.go_down().await;
    }
}

impl Drop for MqttStandIn {
    fn drop(&mut self) {
        if let Ok(mut accepting) = self.accepting.try_lock()
            && let Some(task) = accepting.take()
        {
            task.abort();
        }
        lock(&self.connections).abort_all();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>, connections: Arc<Mutex<JoinSet<()>>>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let mut set = lock(&connections);
                while set.try_join_next().is_some() {}
                set.spawn(connection::serve(tcp, peer, ctx.clone()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "{}: accept failed", ctx.name);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
