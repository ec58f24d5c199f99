//! The endpoint's HTTP/1.1 server, on a Unix socket (its mode chosen so that only `iotedged`
//! can reach it) or a TCP address, as IoT Edge's `provisioning: source: "external"` calls it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::answer::{Route, error_body, provisioning_information, route};
use super::assignment::AssignmentStore;
use crate::kept_key::KeptKey;
use crate::provisioning::{self, FunctionClient, Pacing};
use crate::settings::{Env, Settings};

/// Where the endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

pub const DEFAULT_LISTEN: &str = "unix:///var/run/external/external.sock";
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// How long `iotedged` is told to wait before asking again while provisioning goes on.
const RETRY_AFTER_SECONDS: u64 = 10;

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(text: &str) -> Result<Listen, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: a unix:// address needs an absolute path"
                ));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(address) = text.strip_prefix("http://") {
            return address
                .trim_end_matches('/')
                .parse()
                .map(Listen::Tcp)
                .map_err(|_| format!("{text:?}: expected http://<ip>:<port>"));
        }
        Err(format!(
            "{text:?}: expected unix:///path or http://<ip>:<port> (IoT Edge speaks no HTTPS here)"
        ))
    }
}

/// The endpoint's state: the device's settings and variables (fixed for the process: new
/// variables mean a restart by the supervisor), its kept key, the assignment it served last.
pub struct Endpoint<E: Env + Send + Sync + 'static> {
    settings: Settings,
    env: E,
    kept: Option<KeptKey>,
    store: AssignmentStore,
    function: Option<Arc<FunctionClient>>,
    http: reqwest::Client,
    provisioning: AtomicBool,
    reprovisioning: AtomicBool,
}

impl<E: Env + Send + Sync + 'static> Endpoint<E> {
    pub fn new(
        settings: Settings,
        env: E,
        kept: Option<KeptKey>,
        http: reqwest::Client,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("making {}", settings.data_dir.display()))?;
        let store = AssignmentStore::new(&settings.data_dir);
        let function = settings
            .provision_url
            .clone()
            .map(|url| Arc::new(FunctionClient::new(http.clone(), &settings, url)));
        Ok(Arc::new(Endpoint {
            settings,
            env,
            kept,
            store,
            function,
            http,
            provisioning: AtomicBool::new(false),
            reprovisioning: AtomicBool::new(false),
        }))
    }

    fn request(&self) -> anyhow::Result<provisioning::Request> {
        Ok(provisioning::Request {
            csr: self
                .kept
                .as_ref()
                .map(|k| k.csr_pem(&self.settings.device_uuid))
                .transpose()?,
            rotate: false,
        })
    }

    /// Starts asking the function, once per process (the answer comes back as a restart).
    fn start_provisioning(self: &Arc<Self>) {
        if self.provisioning.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(function) = self.function.clone() else {
            tracing::error!(
                "iotedge: no credentials and no PROVISION_URL to ask for them; set it (a fleet \
                 variable)"
            );
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let request = match this.request() {
                Ok(r) => r,
                Err(e) => return tracing::error!("iotedge: making the CSR: {e:#}"),
            };
            provisioning::run(
                &this.settings,
                &function,
                &this.http,
                request,
                Pacing::default(),
            )
            .await;
        });
    }

    /// `POST /device/reprovision`: checks with the function, in the background, that the
    /// device is still provisioned; asks for provisioning again when not.
    fn start_reprovisioning(self: &Arc<Self>) {
        if self.reprovisioning.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.reprovision().await;
            this.reprovisioning.store(false, Ordering::SeqCst);
        });
    }

    async fn reprovision(self: &Arc<Self>) {
        let Some(function) = &self.function else {
            return tracing::warn!("iotedge: reprovision asked, but PROVISION_URL is not set");
        };
        match function.status().await {
            Ok(status) if status == "provisioned" => {
                tracing::info!(
                    "iotedge: reprovision: the function says the device is provisioned; \
                     asking the supervisor for the current variables"
                );
                if let Some(supervisor) = &self.settings.supervisor {
                    provisioning::refresh_variables(&self.http, supervisor).await;
                }
            }
            Ok(status) => {
                tracing::warn!(
                    "iotedge: reprovision: the function says {status}; provisioning again"
                );
                // As at start-up: asked until the function has provisioned the device (its
                // answers followed, busy and throttled included); the new variables come with
                // a restart.
                self.provisioning.store(false, Ordering::SeqCst);
                self.start_provisioning();
            }
            Err(e) => {
                tracing::warn!("iotedge: reprovision: the function did not answer ({e})")
            }
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().as_str().to_string();
        let path = request.uri().path().to_string();
        let (status, body, extra) = match route(&method, &path) {
            Route::ProvisioningInformation => self.provisioning_information(),
            Route::Reprovision => {
                self.start_reprovisioning();
                (StatusCode::OK, None, None)
            }
            Route::NotFound => (
                StatusCode::NOT_FOUND,
                Some(error_body("iotedge.not-found", "no such path")),
                None,
            ),
            Route::MethodNotAllowed(allow) => (
                StatusCode::METHOD_NOT_ALLOWED,
                Some(error_body("iotedge.method", &format!("only {allow} here"))),
                Some(("allow", allow.to_string())),
            ),
        };
        tracing::info!("iotedge: {method} {path} -> {}", status.as_u16());
        let mut response = Response::builder().status(status);
        if let Some((name, value)) = extra {
            response = response.header(name, value);
        }
        let body = match body {
            Some(value) => {
                response = response.header("content-type", "application/json");
                Bytes::from(value.to_string())
            }
            None => Bytes::new(),
        };
        response
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }

    fn provisioning_information(
        self: &Arc<Self>,
    ) -> (StatusCode, Option<Value>, Option<(&'static str, String)>) {
        match provisioning_information(
            &self.settings.device_uuid,
            &self.env,
            self.kept.as_ref(),
            &self.settings.data_dir,
            &self.store,
        ) {
            Ok(Some(info)) => (StatusCode::OK, Some(info), None),
            Ok(None) => {
                self.start_provisioning();
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(error_body(
                        "iotedge.provisioning",
                        "the device is being provisioned; its credentials have not arrived yet",
                    )),
                    Some(("retry-after", RETRY_AFTER_SECONDS.to_string())),
                )
            }
            Err(e) => {
                tracing::error!("iotedge: {e:#}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(error_body("iotedge.settings", &format!("{e:#}"))),
                    None,
                )
            }
        }
    }
}

/// Serves the endpoint until the process ends.
pub async fn serve<E: Env + Send + Sync + 'static>(
    endpoint: Arc<Endpoint<E>>,
    listen: &Listen,
    socket_mode: u32,
) -> anyhow::Result<()> {
    match listen {
        Listen::Tcp(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address}"))?;
            tracing::info!("iotedge: listening on http://{}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                spawn_connection(endpoint.clone(), stream);
            }
        }
        Listen::Unix(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("making {}", dir.display()))?;
            }
            // A socket left by an earlier run would make the bind fail.
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("listening on {}", path.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(socket_mode))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
            }
            tracing::info!(
                "iotedge: listening on unix://{} (mode {socket_mode:o})",
                path.display()
            );
            loop {
                let (stream, _) = listener.accept().await?;
                spawn_connection(endpoint.clone(), stream);
            }
        }
    }
}

fn spawn_connection<E, S>(endpoint: Arc<Endpoint<E>>, stream: S)
where
    E: Env + Send + Sync + 'static,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let endpoint = endpoint.clone();
            async move { Ok::<_, Infallible>(endpoint.handle(request).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!("iotedge: a connection ended: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:///var/run/external/external.sock".parse::<Listen>(),
            Ok(Listen::Unix("/var/run/external/external.sock".into()))
        );
        assert_eq!(
            "http://127.0.0.1:9999".parse::<Listen>(),
            Ok(Listen::Tcp("127.0.0.1:9999".parse().unwrap()))
        );
        assert!("https://127.0.0.1:9999".parse::<Listen>().is_err());
        assert!("unix://relative".parse::<Listen>().is_err());
        assert!("http://localhost".parse::<Listen>().is_err());
    }
}
