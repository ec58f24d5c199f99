//! An emulator of ClearBlade IoT Core (the API-compatible successor of Google Cloud IoT Core),
//! as the published `@clearblade/iot` Node.js client (1.0.6) and the provisioning function use
//! it: the admin system's registry-credentials exchange and the registry system's device calls.
//!
//! # What it emulates
//! * `POST /api/v/1/code/{adminSystemKey}/getRegistryCredentials` with
//!   `ClearBlade-UserToken: {admin token}` and `{"region","registry","project"}`: 200
//!   `{"systemKey","serviceAccountToken","url"}`, the registry's own key and token and the
//!   regional URL, which is this emulator (its HTTPS URL when the request came over TLS, the
//!   `http://{Host header}` the caller used otherwise). A wrong system key or token is 401; a body without the three strings
//!   400; an unknown project, region or registry 404 `NOT_FOUND`.
//! * Under `/api/v/4/webhook/execute/{registrySystemKey}/cloudiot_devices`, with
//!   `ClearBlade-UserToken: {serviceAccountToken}` of that registry (anything else is 401
//!   `UNAUTHENTICATED`, also the admin token or another registry's token):
//!   - `POST` (no query): create from the Cloud IoT `Device` JSON; 409 `ALREADY_EXISTS`.
//!   - `GET ?name={device path}[&fieldMask=a,b]`: the device; 404 `NOT_FOUND`.
//!   - `PATCH ?name={device path}&updateMask=a,b` with the `Device` JSON: devices.patch; the
//!     mask is required and may name `credentials`, `blocked`, `metadata`, `log_level`,
//!     `gateway_config.gateway_auth_method` (a named field missing from the body is cleared).
//!   - `DELETE ?name={device path}`: 200 `{}`.
//!   - `GET ?parent={registry path}[&deviceIds=..][&deviceNumIds=..][&fieldMask=..]
//!     [&pageSize=N&pageToken=..]`: `{"devices":[{id, numId, + masked fields}],
//!     "nextPageToken"}` (empty members left out, as proto3 JSON does).
//!
//!   Device paths are `projects/{project}/locations/{region}/registries/{registry}/devices/
//!   {id or numId}` (a well-formed path of another registry is 404, a malformed one 400). Query
//!   values are percent-decoded (`+` stays `+`: the client sends names unencoded).
//! * Devices: ids of 3 to 255 characters starting with a letter, of `a-zA-Z0-9-._+~%`; at
//!   most 3 credentials, each `{"publicKey":{"format","key"},"expirationTime"?}` with format
//!   `RSA_PEM`, `RSA_X509_PEM`, `ES256_PEM` or `ES256_X509_PEM` and a key that parses as
//!   that format (400 `INVALID_ARGUMENT` otherwise); `blocked`, `metadata` (Cloud IoT's key and
//!   size rules), `logLevel`, `gatewayConfig`, `config.binaryData`. Bodies are proto3 JSON:
//!   lowerCamelCase or snake_case names, `null` as unset, unknown names refused, output-only
//!   fields ignored. Answers are proto3 JSON too: `numId` a string, `name` ending in the numId
//!   (as Cloud IoT documents), `credentials[].expirationTime` `1970-01-01T00:00:00Z` when unset,
//!   `config: {"version": "1", "cloudUpdateTime"}`, `gatewayConfig` (`NON_GATEWAY`,
//!   `ASSOCIATION_ONLY` by default), and `blocked` / `metadata` / `credentials` left out when
//!   false / empty.
//! * Errors are Google-style, `{"error":{"code":N,"message":"...","status":"NOT_FOUND"}}`,
//!   which is what the client surfaces (it rejects with that parsed object).
//! * Transport: plain HTTP on one port and HTTPS on another, with a certificate for
//!   `127.0.0.1` and `localhost` signed by a CA made at start ([`ClearBladeEmulator::ca_pem`]).
//! * Test hooks: inspection and seeding without HTTP, a record of every request, injected faults
//!   (status, `Retry-After`, how many times, after how many matches, by method and path
//!   substring) and latency.
//!
//! # What it does not emulate
//! Registry management (`cloudiot` webhook: create/get/list/delete registries), configs
//! (`modifyCloudToDeviceConfig`, `cloudiot_devices_configVersions`), states, commands, gateway
//! bindings (those answer 501 `UNIMPLEMENTED` after authentication), registry-level CA
//! credentials, MQTT/HTTP device connections (so `last*Time` fields never appear), quotas and
//! token expiry. The real service's error texts are not known; messages are paraphrases with
//! Google's codes and statuses.

mod api;
mod device;
mod keys;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context as _, bail};
use axum::Router;
use base64::Engine as _;
use serde_json::{Value, json};

use device::Device;

use crate::common::fault::{Matcher, emulator_fault};
use crate::common::hooks::{Hooks, test_hooks};
use crate::common::server::{self, Servers};
use crate::common::time::Utc;
use crate::common::{lock, tls};

/// One request the emulator answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path as received (still percent-encoded).
    pub path: String,
    /// The query string as received, without `?` (empty when none).
    pub query: String,
    /// Whether it came over HTTPS.
    pub tls: bool,
    /// The (region, registry) whose system key and token the request carried, when they
    /// checked out (`None` for the admin system, refused tokens and injected faults).
    pub registry: Option<(String, String)>,
    /// The device addressed: the last segment of `name=` (an id or a numId, decoded), or else
    /// the `id` of a JSON body (also for injected faults and refused requests).
    pub device: Option<String>,
    /// The request body as text (lossy UTF-8).
    pub body: String,
    pub status: u16,
    pub started: Instant,
    pub finished: Instant,
}

impl RecordedRequest {
    /// `path?query` as received (what a [`Fault`]'s `path` is matched against).
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
}

emulator_fault! {
    /// A failure to inject: matching requests are answered `status` (with a Google-style JSON
    /// error for that status) instead of being served. Faults apply before authentication.
    pub struct Fault {
        /// A substring of `path?query` as received (percent-encoded); `None` matches any.
        pub path: Option<String>,
    }
    /// Only requests whose `path?query` (as received) contains `substring`.
    fn path => Matcher::Contains;
}

/// A registry the emulator serves, with its own system key and service-account token.
#[derive(Debug, Clone)]
struct RegistryConfig {
    region: String,
    registry: String,
    system_key: String,
    token: String,
    /// `projects/{project}/locations/{region}/registries/{registry}`.
    path: String,
}

/// What does not change after start.
#[derive(Debug)]
struct Config {
    project: String,
    admin_system_key: String,
    admin_token: String,
    registries: Vec<RegistryConfig>,
    ca_pem: String,
    addr: SocketAddr,
    tls_addr: SocketAddr,
}

impl Config {
    fn registry_index(&self, region: &str, registry: &str) -> Option<usize> {
        self.registries
            .iter()
            .position(|r| r.region == region && r.registry == registry)
    }

    fn url(&self, tls: bool) -> String {
        if tls {
            format!("https://{}", self.tls_addr)
        } else {
            format!("http://{}", self.addr)
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Per registry (same order as `Config::registries`), by device id.
    devices: Vec<BTreeMap<String, Device>>,
    num_ids: HashSet<u64>,
    hooks: Hooks<RecordedRequest>,
    /// Callers reach the plain-HTTP port through a TLS-terminating proxy: the registry
    /// credentials name `https://{Host header}`.
    behind_tls: bool,
}

impl State {
    /// A new numeric id: 16 digits, unique in this emulator.
    fn next_num_id(&mut self) -> u64 {
        loop {
            let n = 1_000_000_000_000_000 + random_u64() % 8_000_000_000_000_000;
            if self.num_ids.insert(n) {
                return n;
            }
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn random_u64() -> u64 {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(first)
}

/// A random system key: 32 lowercase hex digits (ClearBlade's are hex too).
fn random_system_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A random user token: 64 characters of base64url.
fn random_token() -> String {
    let mut bytes = Vec::with_capacity(48);
    for _ in 0..3 {
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_rfc3339() -> String {
    Utc::now().iso8601(6)
}

/// A running ClearBlade IoT Core emulator (HTTP and HTTPS). Clones share the same servers and
/// state; the servers stop on [`ClearBladeEmulator::shutdown`] or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ClearBladeEmulator {
    shared: Shared,
    config: Arc<Config>,
    servers: Arc<Servers>,
}

impl std::fmt::Debug for ClearBladeEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClearBladeEmulator")
            .field("project", &self.config.project)
            .field("addr", &self.config.addr)
            .field("tls_addr", &self.config.tls_addr)
            .finish_non_exhaustive()
    }
}

impl ClearBladeEmulator {
    /// Starts HTTP and HTTPS each on `127.0.0.1:0` (free ports) for `project`, serving the
    /// registries `(region, registry)`; the admin and registry keys and tokens are random.
    pub async fn start(
        project: &str,
        registries: &[(&str, &str)],
    ) -> anyhow::Result<ClearBladeEmulator> {
        let any = server::any_local_port();
        ClearBladeEmulator::start_on(project, registries, any, any).await
    }

    /// Starts plain HTTP on `http` and HTTPS on `https`, serving in tokio tasks.
    pub async fn start_on(
        project: &str,
        registries: &[(&str, &str)],
        http: SocketAddr,
        https: SocketAddr,
    ) -> anyhow::Result<ClearBladeEmulator> {
        let plain_segment = |s: &str| !s.is_empty() && !s.contains(['/', '?', '&', '#', ' ']);
        if !plain_segment(project) {
            bail!("the project {project:?} must be a non-empty path segment");
        }
        if registries.is_empty() {
            bail!("the emulator needs at least one (region, registry)");
        }
        let mut configs: Vec<RegistryConfig> = Vec::new();
        for &(region, registry) in registries {
            if !plain_segment(region) {
                bail!("the region {region:?} must be a non-empty path segment");
            }
            if device::check_id(registry).is_err() {
                bail!("the registry id {registry:?} is not a valid Cloud IoT id");
            }
            if configs
                .iter()
                .any(|c| c.region == region && c.registry == registry)
            {
                bail!("the registry {region}/{registry} is given twice");
            }
            configs.push(RegistryConfig {
                region: region.to_string(),
                registry: registry.to_string(),
                system_key: random_system_key(),
                token: random_token(),
                path: format!("projects/{project}/locations/{region}/registries/{registry}"),
            });
        }

        let pki = tls::make_pki("ClearBlade IoT Core", None)?;
        let (listener, addr) = server::bind(http).await?;
        let (tls_tcp, tls_addr) = server::bind(https).await?;
        let tls_listener = tls::TlsListener::new(tls_tcp, pki.server_config, "clearblade emulator")
            .context("reading the bound TLS address")?;

        let config = Arc::new(Config {
            project: project.to_string(),
            admin_system_key: random_system_key(),
            admin_token: random_token(),
            registries: configs,
            ca_pem: pki.ca_pem,
            addr,
            tls_addr,
        });
        let shared: Shared = Arc::new(Mutex::new(State {
            devices: vec![BTreeMap::new(); config.registries.len()],
            ..State::default()
        }));
        let app = |tls: bool| {
            Router::new().fallback(api::handle).with_state(api::Ctx {
                shared: shared.clone(),
                config: config.clone(),
                tls,
            })
        };
        let servers = Servers::new("clearblade emulator");
        servers.spawn(listener, app(false), "HTTP server");
        servers.spawn(tls_listener, app(true), "HTTPS server");
        tracing::debug!(%addr, %tls_addr, project, "clearblade emulator listening");
        Ok(ClearBladeEmulator {
            shared,
            config,
            servers: Arc::new(servers),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.config.url(false)
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn tls_url(&self) -> String {
        self.config.url(true)
    }

    pub fn port(&self) -> u16 {
        self.config.addr.port()
    }

    pub fn tls_port(&self) -> u16 {
        self.config.tls_addr.port()
    }

    /// Callers reach the plain-HTTP port through a proxy that terminates TLS for them: the
    /// registry credentials then name `https://` and the address they used.
    pub fn set_behind_tls_proxy(&self, behind: bool) {
        lock(&self.shared).behind_tls = behind;
    }

    /// The PEM of the CA that signed the HTTPS certificate (trust it to talk HTTPS).
    pub fn ca_pem(&self) -> String {
        self.config.ca_pem.clone()
    }

    pub fn project(&self) -> String {
        self.config.project.clone()
    }

    /// The admin system key (the service account's `systemKey`).
    pub fn admin_system_key(&self) -> String {
        self.config.admin_system_key.clone()
    }

    /// The admin user token (the service account's `token`).
    pub fn admin_token(&self) -> String {
        self.config.admin_token.clone()
    }

    /// The service-account JSON `{"systemKey","token","url","project"}`, with `url` =
    /// [`ClearBladeEmulator::url`].
    pub fn service_account_json(&self) -> Value {
        json!({
            "systemKey": self.config.admin_system_key,
            "token": self.config.admin_token,
            "url": self.url(),
            "project": self.config.project,
        })
    }

    /// base64 (standard, padded) of [`ClearBladeEmulator::service_account_json`]'s text.
    pub fn service_account_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.service_account_json().to_string())
    }

    /// The registry's (systemKey, serviceAccountToken), as `getRegistryCredentials` answers
    /// them; `None` for a registry the emulator does not serve.
    pub fn registry_credentials(&self, region: &str, registry: &str) -> Option<(String, String)> {
        let i = self.config.registry_index(region, registry)?;
        let r = &self.config.registries[i];
        Some((r.system_key.clone(), r.token.clone()))
    }

    /// `projects/{project}/locations/{region}/registries/{registry}`.
    pub fn registry_path(&self, region: &str, registry: &str) -> String {
        format!(
            "projects/{}/locations/{region}/registries/{registry}",
            self.config.project
        )
    }

    /// The registry path + `/devices/{id}`.
    pub fn device_path(&self, region: &str, registry: &str, id: &str) -> String {
        format!("{}/devices/{id}", self.registry_path(region, registry))
    }

    /// Every secret it hands out: the admin system key and token, and each registry's system
    /// key and token.
    /// The system keys (admin and per registry): identifiers ClearBlade's API puts in its paths.
    pub fn system_keys(&self) -> Vec<String> {
        let mut out = vec![self.config.admin_system_key.clone()];
        out.extend(self.config.registries.iter().map(|r| r.system_key.clone()));
        out
    }

    pub fn secrets(&self) -> Vec<String> {
        let mut out = vec![
            self.config.admin_system_key.clone(),
            self.config.admin_token.clone(),
        ];
        for r in &self.config.registries {
            out.push(r.system_key.clone());
            out.push(r.token.clone());
        }
        out
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// The device as `GET ...cloudiot_devices?name=` answers it.
    pub fn device(&self, region: &str, registry: &str, id: &str) -> Option<Value> {
        let i = self.config.registry_index(region, registry)?;
        let path = &self.config.registries[i].path;
        self.state().devices[i]
            .get(id)
            .map(|d| d.to_json(path, None))
    }

    /// The ids of the registry's devices, sorted (empty for an unknown registry).
    pub fn device_ids(&self, region: &str, registry: &str) -> Vec<String> {
        match self.config.registry_index(region, registry) {
            Some(i) => self.state().devices[i].keys().cloned().collect(),
            None => Vec::new(),
        }
    }

    /// The PEM keys of the device's credentials, in order (`None`: no such device).
    pub fn public_keys(&self, region: &str, registry: &str, id: &str) -> Option<Vec<String>> {
        let i = self.config.registry_index(region, registry)?;
        self.state().devices[i]
            .get(id)
            .map(|d| d.credentials.iter().map(|c| c.key.clone()).collect())
    }

    /// Creates (or overwrites) a device from a Cloud IoT `Device` JSON as a create takes it,
    /// bypassing HTTP (a numeric `numId` in it is kept). Panics on an unknown registry or a
    /// device the service would refuse.
    pub fn seed_device(&self, region: &str, registry: &str, device: Value) {
        let Some(i) = self.config.registry_index(region, registry) else {
            panic!("seeding: the clearblade emulator serves no registry {region}/{registry}");
        };
        let spec = match device::spec_from_value(&device) {
            Ok(spec) => spec,
            Err(e) => panic!("seeding {device} failed: {e}"),
        };
        let wanted_num_id = spec.num_id.as_deref().and_then(|n| n.parse::<u64>().ok());
        let mut state = self.state();
        if let Some(id) = &spec.id
            && let Some(old) = state.devices[i].remove(id)
        {
            state.num_ids.remove(&old.num_id);
        }
        let num_id = match wanted_num_id {
            Some(n) if state.num_ids.insert(n) => n,
            _ => state.next_num_id(),
        };
        let created = match Device::create(spec, num_id, &now_rfc3339()) {
            Ok(d) => d,
            Err(e) => panic!("seeding {device} failed: {e}"),
        };
        state.devices[i].insert(created.id.clone(), created);
    }

    test_hooks!(RecordedRequest, Fault);

    /// Stops both servers and waits (up to 5 s) for open connections to finish.
    pub async fn shutdown(self) {
        self.servers.shutdown().await;
    }
}
