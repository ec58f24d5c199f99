//! Serving an emulator: binding, the server tasks, and stopping them on `shutdown` or when the
//! last clone of the emulator (holding an `Arc<Servers>`) is dropped.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lock;

/// How long `shutdown` waits for open connections before aborting a server.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `127.0.0.1:0`: a free port on the loopback interface.
pub(crate) fn any_local_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Binds `addr` and reads back the address bound (the port, for `:0`).
pub(crate) async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    Ok((listener, bound))
}

/// The server tasks of one emulator and the signal that stops them. Dropping it signals them.
pub(crate) struct Servers {
    /// For log lines, e.g. `balena emulator`.
    name: &'static str,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Servers {
    pub(crate) fn new(name: &'static str) -> Servers {
        Servers {
            name,
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Serves `app` on `listener` in a tokio task until the stop signal, then lets open
    /// connections finish. `what` names the server in log lines (e.g. `HTTP server`).
    pub(crate) fn spawn<L>(&self, listener: L, app: Router, what: &'static str)
    where
        L: axum::serve::Listener,
        L::Addr: Debug,
    {
        let name = self.name;
        let stopped = self.stopped();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::warn!(%error, "{name} {what} stopped with an error");
            }
        });
        lock(&self.tasks).push(task);
    }

    /// Resolves once the stop signal was given.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// A receiver of the stop signal (`true` once given), for what else must end with it.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Gives the stop signal (the servers stop accepting and finish what is open).
    pub(crate) fn signal(&self) {
        self.stop.send_replace(true);
    }

    /// Gives the stop signal and waits (up to 5 s each) for the servers to finish, aborting
    /// those that do not.
    pub(crate) async fn shutdown(&self) {
        self.signal();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for mut task in tasks {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!(
                    "{} did not stop within {SHUTDOWN_GRACE:?}, aborting it",
                    self.name
                );
                task.abort();
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.signal();
    }
}
