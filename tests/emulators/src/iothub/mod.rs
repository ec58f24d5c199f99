//! An emulator of the Azure IoT Hub *identity registry* REST API (the service side, as the
//! `azure-iothub` SDKs and the provisioning function use it), with the hub's authentication.
//!
//! # What it emulates
//! * `PUT /devices/{id}?api-version=...`: without `If-Match` it creates the identity (409
//!   `DeviceAlreadyExists` if it exists); with `If-Match: "<etag>"`, `*` or `"*"` it replaces it
//!   (412 `PreconditionFailed` on another etag, 404 `DeviceNotFound` if there is no such
//!   device). Answers 200 with the stored identity and an `ETag` header.
//! * `GET /devices/{id}?api-version=...` (404 `DeviceNotFound` if missing) and the legacy list
//!   `GET /devices?top=N&api-version=...` (`top` 1 to 1000, default 1000), a JSON array.
//! * `DELETE /devices/{id}?api-version=...` with a required `If-Match` (`*`, `"*"` or the etag):
//!   204; 400 `ArgumentInvalid` without `If-Match` (the REST reference: "This request requires
//!   the If-Match header"), 404 if missing, 412 on another etag.
//! * Bodies: `deviceId` (must equal the id in the path; ids are case-sensitive, 1 to 128
//!   characters of `A-Z a-z 0-9 - . % _ * ? ! ( ) , : = @ $ '`, percent-encoded in the path),
//!   `status` (`enabled`/`disabled`), `statusReason`, `capabilities.iotEdge` and
//!   `authentication` with `type` `sas` / `selfSigned` / `certificateAuthority` / `none`
//!   (inferred from the thumbprints when absent, as the SDKs do), `symmetricKey` and
//!   `x509Thumbprint`. Thumbprints are SHA-1 (40 hex) or SHA-256 (64 hex), stored uppercase;
//!   `selfSigned` needs a primary thumbprint; `sas` keys are base64 of 16 to 64 bytes, both
//!   given or both empty (then generated, as the hub does). Server-owned fields in a body
//!   (`etag`, `generationId`, `connectionState`, ...) are ignored. Answers carry `etag` (new on
//!   every write), `generationId` (.NET ticks at creation), `connectionState: "Disconnected"`,
//!   `statusUpdatedTime` (`0001-01-01T00:00:00Z` until the status changes), `lastActivityTime`,
//!   `cloudToDeviceMessageCount: 0`, `capabilities`, `deviceScope` and `parentScopes`, and both
//!   the `symmetricKey` and `x509Thumbprint` objects. A `sas` replace without keys keeps the
//!   device's keys. Some validation details (selfSigned needing a primary thumbprint, both-or-
//!   neither keys) follow the hub's documentation and SDK behaviour, not a live hub.
//! * `api-version` is required and must be one the hub knows (2018-06-30 .. 2021-04-12);
//!   otherwise 400 `InvalidProtocolVersion`.
//! * Auth on every request: `Authorization: SharedAccessSignature sr=..&sig=..&se=..&skn=..`
//!   (any field order), a policy token for the configured hub host (or a resource under it:
//!   `sr` = `<host>` or `<host>/...`, compared case-insensitively after URL-decoding), signed
//!   with HMAC-SHA256 over exactly the `sr` value as sent, `\n`, and `se`, with the policy's
//!   base64-decoded key. A missing or malformed header, a wrong key, an unknown policy, another
//!   host or an `se` not in the future is 401 `IotHubUnauthorizedAccess`; so is a `PUT` or
//!   `DELETE` with a policy lacking registry write rights (every policy may read).
//! * Errors are the hub's JSON, `{"Message": "ErrorCode:<Code>;<text>", "ExceptionMessage":
//!   "Tracking ID:<hex>-G:0-TimeStamp:<MM/dd/yyyy HH:mm:ss>"}`, with an `iothub-errorcode`
//!   header. Input the hub would refuse is a 4xx; no input makes it panic.
//! * Transport: plain HTTP on one port (for clients pointed at an endpoint override) and
//!   HTTPS on another, with a certificate for `127.0.0.1`, `localhost` and the hub host signed by
//!   a CA made at start ([`IotHubEmulator::ca_pem`]). The `Host` header is not checked.
//! * Test hooks: inspection without HTTP, a record of every request, injected faults (status,
//!   `Retry-After`, how many times, after how many successes; a 429 answers
//!   `ThrottlingException`) and latency.
//!
//! # What it does not emulate
//! Twins, modules, configurations, jobs, bulk `POST /devices`, queries, statistics, messaging,
//! direct methods, device-scoped or Azure AD (bearer) tokens, the hub's own throttling and
//! quotas, `connectionState` ever changing, device scopes / parent edge devices, and the
//! per-operation read rights (`RegistryRead`, `ServiceConnect`, ...) beyond registry write.
//! Where the real hub's exact text is not known the messages are close paraphrases; the error
//! codes and statuses are the hub's (`InvalidProtocolVersion`, `NotFound` for unknown paths and
//! `MethodNotAllowed` are this emulator's best guess).

mod auth;
mod registry;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

pub use auth::sas_token;
use registry::{AuthType, Device, DeviceSpec};

use crate::common::fault::{Matcher, Rule, emulator_fault};
use crate::common::hooks::{self, Hooks, test_hooks};
use crate::common::server::{self, Servers};
use crate::common::tls;
use crate::common::{self, lock};

/// The largest request body accepted.
const BODY_LIMIT: usize = 1024 * 1024;

/// The API versions of the registry REST API the emulator answers.
const API_VERSIONS: &[&str] = &[
    "2018-06-30",
    "2019-03-30",
    "2019-10-01",
    "2020-03-13",
    "2020-05-31-preview",
    "2020-06-30",
    "2020-09-30",
    "2021-04-12",
];

/// The most devices a list answers.
const MAX_TOP: usize = 1000;

/// A shared access policy of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// The policy's key, base64 (as in a connection string).
    pub key_base64: String,
    /// Whether the policy has `RegistryWrite` (create, replace and delete identities).
    pub registry_write: bool,
}

impl Policy {
    pub fn new(name: &str, key_base64: &str, registry_write: bool) -> Policy {
        Policy {
            name: name.to_string(),
            key_base64: key_base64.to_string(),
            registry_write,
        }
    }

    /// A policy with a new random key (32 bytes, base64).
    pub fn with_random_key(name: &str, registry_write: bool) -> Policy {
        Policy::new(name, &registry::generate_key(), registry_write)
    }
}

/// One request the emulator answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// As received, still percent-encoded.
    pub path_and_query: String,
    /// The device id addressed (percent-decoded), if the path names one.
    pub device_id: Option<String>,
    /// The policy (`skn`) of a token whose signature checked out, also when the policy then
    /// lacked the rights; `None` when the token was refused or missing (or a fault answered).
    pub policy: Option<String>,
    /// The `If-Match` header as received.
    pub if_match: Option<String>,
    pub status: u16,
    pub started: Instant,
    pub finished: Instant,
}

emulator_fault! {
    /// A failure to inject: matching requests are answered `status` (with the hub's JSON error
    /// for that status) instead of being served. Faults apply before authentication.
    pub struct Fault {
        /// A substring of the path and query as received (percent-encoded); `None` matches any.
        pub path: Option<String>,
    }
    /// Only requests whose path and query (as received) contain `substring`.
    fn path => Matcher::Contains;
}

/// What does not change after start.
struct Config {
    hub_host: String,
    policies: Vec<Policy>,
    ca_pem: String,
}

#[derive(Default)]
struct State {
    devices: BTreeMap<String, Device>,
    etag_counter: u64,
    last_generation: u128,
    hooks: Hooks<RecordedRequest>,
}

impl State {
    fn next_etag(&mut self) -> String {
        self.etag_counter += 1;
        B64.encode(self.etag_counter.to_string())
    }

    fn next_generation_id(&mut self) -> String {
        let ticks = registry::dotnet_ticks_now().max(self.last_generation + 1);
        self.last_generation = ticks;
        ticks.to_string()
    }

    /// Creates a device from a validated spec (the caller checked it does not exist).
    fn create(&mut self, id: &str, spec: DeviceSpec) -> &Device {
        let (primary_key, secondary_key) = match (spec.auth_type, spec.keys) {
            (AuthType::Sas, Some((p, s))) => (Some(p), Some(s)),
            (AuthType::Sas, None) => (
                Some(registry::generate_key()),
                Some(registry::generate_key()),
            ),
            _ => (None, None),
        };
        let device = Device {
            id: id.to_string(),
            enabled: spec.enabled,
            status_reason: spec.status_reason,
            auth_type: spec.auth_type,
            primary_key,
            secondary_key,
            primary_thumbprint: spec.primary_thumbprint,
            secondary_thumbprint: spec.secondary_thumbprint,
            iot_edge: spec.iot_edge,
            etag: self.next_etag(),
            generation_id: self.next_generation_id(),
            status_updated_time: registry::NEVER.to_string(),
        };
        match self.devices.entry(id.to_string()) {
            Entry::Vacant(slot) => slot.insert(device),
            Entry::Occupied(mut slot) => {
                slot.insert(device);
                slot.into_mut()
            }
        }
    }

    /// Replaces an existing device's settings, keeping its generation id (and its keys when it
    /// stays `sas` and the body gave none).
    fn replace(&mut self, id: &str, spec: DeviceSpec) -> Option<&Device> {
        let etag = self.next_etag();
        let device = self.devices.get_mut(id)?;
        let (primary_key, secondary_key) = match (spec.auth_type, spec.keys) {
            (AuthType::Sas, Some((p, s))) => (Some(p), Some(s)),
            (AuthType::Sas, None) => match (&device.primary_key, &device.secondary_key) {
                (Some(p), Some(s)) => (Some(p.clone()), Some(s.clone())),
                _ => (
                    Some(registry::generate_key()),
                    Some(registry::generate_key()),
                ),
            },
            _ => (None, None),
        };
        if device.enabled != spec.enabled {
            device.status_updated_time = registry::timestamp_now();
        }
        device.enabled = spec.enabled;
        device.status_reason = spec.status_reason;
        device.auth_type = spec.auth_type;
        device.primary_key = primary_key;
        device.secondary_key = secondary_key;
        device.primary_thumbprint = spec.primary_thumbprint;
        device.secondary_thumbprint = spec.secondary_thumbprint;
        device.iot_edge = spec.iot_edge;
        device.etag = etag;
        Some(device)
    }
}

type Shared = Arc<Mutex<State>>;

#[derive(Clone)]
struct Ctx {
    shared: Shared,
    config: Arc<Config>,
}

/// A running IoT Hub registry emulator (HTTP and HTTPS). Clones share the same servers and
/// state; the servers stop on [`IotHubEmulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct IotHubEmulator {
    shared: Shared,
    config: Arc<Config>,
    addr: SocketAddr,
    tls_addr: SocketAddr,
    servers: Arc<Servers>,
}

impl std::fmt::Debug for IotHubEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IotHubEmulator")
            .field("hub_host", &self.config.hub_host)
            .field("addr", &self.addr)
            .field("tls_addr", &self.tls_addr)
            .finish_non_exhaustive()
    }
}

impl IotHubEmulator {
    /// Starts HTTP and HTTPS each on `127.0.0.1:0` (free ports), for the hub `hub_host` (e.g.
    /// `provision-test.azure-devices.net`) with these shared access policies.
    pub async fn start(hub_host: &str, policies: Vec<Policy>) -> anyhow::Result<IotHubEmulator> {
        let any = server::any_local_port();
        IotHubEmulator::start_on(hub_host, policies, any, any).await
    }

    /// Starts plain HTTP on `http` and HTTPS on `https`, serving in tokio tasks.
    pub async fn start_on(
        hub_host: &str,
        policies: Vec<Policy>,
        http: SocketAddr,
        https: SocketAddr,
    ) -> anyhow::Result<IotHubEmulator> {
        if hub_host.is_empty() || hub_host.contains(['/', ':', ' ']) {
            bail!("the hub host {hub_host:?} must be a bare host name");
        }
        if policies.is_empty() {
            bail!("the hub needs at least one shared access policy");
        }
        for p in &policies {
            if p.name.is_empty() {
                bail!("a policy name is empty");
            }
            if B64.decode(p.key_base64.as_bytes()).is_err() {
                bail!("the key of policy {:?} is not base64", p.name);
            }
        }
        let pki = tls::make_pki("IoT Hub", Some(hub_host))?;
        let config = Arc::new(Config {
            hub_host: hub_host.to_string(),
            policies,
            ca_pem: pki.ca_pem,
        });

        let (listener, addr) = server::bind(http).await?;
        let (tls_tcp, tls_addr) = server::bind(https).await?;
        let tls_listener = tls::TlsListener::new(tls_tcp, pki.server_config, "iothub emulator")
            .context("reading the bound TLS address")?;

        let shared: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(Ctx {
            shared: shared.clone(),
            config: config.clone(),
        });
        let servers = Servers::new("iothub emulator");
        servers.spawn(listener, app.clone(), "HTTP server");
        servers.spawn(tls_listener, app, "HTTPS server");
        tracing::debug!(%addr, %tls_addr, hub_host, "iothub emulator listening");
        Ok(IotHubEmulator {
            shared,
            config,
            addr,
            tls_addr,
            servers: Arc::new(servers),
        })
    }

    /// The hub host name tokens must be signed for.
    pub fn hub_host(&self) -> String {
        self.config.hub_host.clone()
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`, without a trailing slash.
    pub fn tls_url(&self) -> String {
        format!("https://{}", self.tls_addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn tls_port(&self) -> u16 {
        self.tls_addr.port()
    }

    /// The PEM of the CA that signed the HTTPS certificate (trust it to talk HTTPS).
    pub fn ca_pem(&self) -> String {
        self.config.ca_pem.clone()
    }

    /// `HostName=<hub_host>;SharedAccessKeyName=<policy>;SharedAccessKey=<key>`. Panics if
    /// there is no such policy.
    pub fn connection_string(&self, policy: &str) -> String {
        let Some(p) = self.config.policies.iter().find(|p| p.name == policy) else {
            panic!("the iothub emulator has no policy {policy:?}");
        };
        format!(
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.config.hub_host, p.name, p.key_base64
        )
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    /// The stored device as `GET /devices/{id}` would answer it.
    pub fn device(&self, id: &str) -> Option<Value> {
        self.state().devices.get(id).map(Device::to_json)
    }

    /// The ids of every device, sorted.
    pub fn device_ids(&self) -> Vec<String> {
        self.state().devices.keys().cloned().collect()
    }

    /// The device's (primary, secondary) thumbprints, uppercase hex.
    pub fn thumbprints(&self, id: &str) -> Option<(Option<String>, Option<String>)> {
        self.state()
            .devices
            .get(id)
            .map(|d| (d.primary_thumbprint.clone(), d.secondary_thumbprint.clone()))
    }

    /// Removes a device as someone else would in the portal (a test of what the device side
    /// does when its registration is gone). Whether it existed.
    pub fn remove_device(&self, id: &str) -> bool {
        self.state().devices.remove(id).is_some()
    }

    /// Creates (or overwrites) a device from a body as `PUT` takes it, bypassing HTTP and its
    /// etag rules, and returns it as `GET` would. Panics on a body the hub would refuse.
    pub fn seed_device(&self, device: Value) -> Value {
        let id = device
            .get("deviceId")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        assert!(
            registry::valid_device_id(&id),
            "seeding: invalid deviceId in {device}"
        );
        let spec = match registry::parse_spec(&id, device.to_string().as_bytes()) {
            Ok(spec) => spec,
            Err(e) => panic!("seeding {device} failed: {e}"),
        };
        let mut state = self.state();
        state.devices.remove(&id);
        state.create(&id, spec).to_json()
    }

    test_hooks!(RecordedRequest, Fault);

    /// Stops both servers and waits (up to 5 s) for open connections to finish.
    pub async fn shutdown(self) {
        self.servers.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A refusal, answered with the hub's JSON error.
#[derive(Debug)]
struct HubError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HubError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> HubError {
        HubError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> HubError {
        HubError::new(StatusCode::BAD_REQUEST, "ArgumentInvalid", message)
    }

    fn unauthorized() -> HubError {
        HubError::new(
            StatusCode::UNAUTHORIZED,
            "IotHubUnauthorizedAccess",
            "Unauthorized",
        )
    }

    fn device_not_found(id: &str) -> HubError {
        HubError::new(
            StatusCode::NOT_FOUND,
            "DeviceNotFound",
            format!("Device {id} not registered."),
        )
    }

    fn precondition_failed() -> HubError {
        HubError::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "Precondition failed: Device version mismatch (the If-Match etag is not the \
             device's current etag).",
        )
    }

    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let tracking = format!(
        "Tracking ID:{}-G:0-TimeStamp:{}",
        uuid::Uuid::new_v4().simple(),
        registry::tracking_timestamp()
    );
    let body = json!({
        "Message": format!("ErrorCode:{code};{message}"),
        "ExceptionMessage": tracking,
    });
    let mut res = json_response(status, &body);
    if let Ok(v) = HeaderValue::from_str(code) {
        res.headers_mut()
            .insert(HeaderName::from_static("iothub-errorcode"), v);
    }
    res
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    common::response(status, value.to_string(), "application/json; charset=utf-8")
}

fn device_response(device: &Device) -> Response {
    let mut res = json_response(StatusCode::OK, &device.to_json());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", device.etag)) {
        res.headers_mut().insert(header::ETAG, v);
    }
    res
}

/// What a path addresses.
#[derive(Debug)]
enum Target {
    /// `/devices` or `/devices/`.
    List,
    /// `/devices/{id}`, the id still percent-encoded.
    Device(String),
    Unknown,
}

fn route(path: &str) -> Target {
    match path.strip_prefix("/devices") {
        Some("" | "/") => Target::List,
        Some(rest) => match rest.strip_prefix('/') {
            Some(id) if !id.contains('/') => Target::Device(id.to_string()),
            _ => Target::Unknown,
        },
        None => Target::Unknown,
    }
}

/// `If-Match`: `*` (also quoted) or one etag (quotes and a weak `W/` prefix dropped).
#[derive(Debug, PartialEq, Eq)]
enum IfMatch {
    Any,
    Etag(String),
}

fn parse_if_match(raw: &str) -> IfMatch {
    let v = raw.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(v);
    if v == "*" {
        IfMatch::Any
    } else {
        IfMatch::Etag(v.to_string())
    }
}

/// The request facts the handler needs, read before the body.
struct Incoming {
    method: Method,
    path: String,
    query: String,
    authorization: Option<String>,
    if_match: Option<String>,
    /// False when an `If-Match` or `Authorization` header is not visible ASCII.
    headers_ok: bool,
}

/// A header as text: `Ok(None)` when absent, `Err` when not visible ASCII.
fn text_header(headers: &http::HeaderMap, name: HeaderName) -> Result<Option<String>, ()> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| ()),
    }
}

async fn handle(AxumState(ctx): AxumState<Ctx>, req: Request) -> Response {
    let started = Instant::now();
    let uri = req.uri().clone();
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let authorization = text_header(req.headers(), header::AUTHORIZATION);
    let if_match = text_header(req.headers(), header::IF_MATCH);
    let incoming = Incoming {
        method: req.method().clone(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        headers_ok: authorization.is_ok() && if_match.is_ok(),
        authorization: authorization.unwrap_or_default(),
        if_match: if_match.unwrap_or_default(),
    };
    let device_id = match route(&incoming.path) {
        Target::Device(raw) => auth::percent_decode(&raw),
        _ => None,
    };

    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await;
    let latency = lock(&ctx.shared).hooks.latency();
    hooks::delay(latency).await;

    let mut policy = None;
    let response = {
        let mut state = lock(&ctx.shared);
        let fault = state
            .hooks
            .take_fault(incoming.method.as_str(), &path_and_query);
        match (fault, body) {
            (Some(fault), _) => fault_response(&fault),
            (None, Err(_)) => HubError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("The request body is larger than {BODY_LIMIT} bytes."),
            )
            .into_response(),
            (None, Ok(body)) => {
                match serve(&mut state, &ctx.config, &incoming, &body, &mut policy) {
                    Ok(res) => res,
                    Err(e) => e.into_response(),
                }
            }
        }
    };

    lock(&ctx.shared).hooks.record(RecordedRequest {
        method: incoming.method.to_string(),
        path_and_query,
        device_id,
        policy,
        if_match: incoming.if_match,
        status: response.status().as_u16(),
        started,
        finished: Instant::now(),
    });
    response
}

fn fault_response(fault: &Rule) -> Response {
    let status = fault.status_code();
    let (code, message) = match status.as_u16() {
        400 => ("ArgumentInvalid", "Injected fault."),
        401 => ("IotHubUnauthorizedAccess", "Unauthorized"),
        403 => ("IotHubQuotaExceeded", "Injected fault: quota exceeded."),
        404 => ("DeviceNotFound", "Injected fault: device not found."),
        409 => (
            "DeviceAlreadyExists",
            "Injected fault: device already exists.",
        ),
        412 => ("PreconditionFailed", "Injected fault: precondition failed."),
        429 => (
            "ThrottlingException",
            "Request throttled due to a high rate of requests (injected fault).",
        ),
        500 => ("ServerError", "Injected fault: internal server error."),
        503 => ("ServiceUnavailable", "Injected fault: service unavailable."),
        504 => ("GatewayTimeout", "Injected fault: gateway timeout."),
        _ => ("InjectedFault", "Injected fault."),
    };
    fault.with_retry_after(error_response(status, code, message))
}

/// The decoded query parameters (`None` on broken percent-encoding).
fn query_pairs(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = auth::percent_decode(&k.replace('+', " "))?;
            let v = auth::percent_decode(&v.replace('+', " "))?;
            Some((k, v))
        })
        .collect()
}

fn serve(
    state: &mut State,
    config: &Config,
    req: &Incoming,
    body: &[u8],
    policy: &mut Option<String>,
) -> Result<Response, HubError> {
    if !req.headers_ok {
        return Err(HubError::bad_request(
            "The Authorization and If-Match headers must be ASCII.",
        ));
    }
    let caller = auth::verify(
        req.authorization.as_deref(),
        &config.hub_host,
        &config.policies,
        auth::now_unix(),
    )
    .map_err(|refusal| {
        tracing::debug!(?refusal, "iothub emulator: token refused");
        HubError::unauthorized()
    })?;
    *policy = Some(caller.policy.clone());
    let writes = matches!(req.method, Method::PUT | Method::DELETE);
    if writes && !caller.registry_write {
        return Err(HubError::unauthorized());
    }

    let pairs = query_pairs(&req.query)
        .ok_or_else(|| HubError::bad_request("The query string is not valid percent-encoding."))?;
    let param = |name: &str| -> Result<Option<&str>, HubError> {
        let mut values = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = values.next();
        if values.next().is_some() {
            return Err(HubError::bad_request(format!(
                "The query parameter '{name}' is given more than once."
            )));
        }
        Ok(first.map(String::as_str))
    };
    match param("api-version")? {
        Some(v) if API_VERSIONS.contains(&v) => {}
        Some(v) => {
            return Err(HubError::new(
                StatusCode::BAD_REQUEST,
                "InvalidProtocolVersion",
                format!("Protocol version '{v}' is not supported."),
            ));
        }
        None => {
            return Err(HubError::new(
                StatusCode::BAD_REQUEST,
                "InvalidProtocolVersion",
                "The api-version query parameter is required.",
            ));
        }
    }

    match route(&req.path) {
        Target::Unknown => Err(HubError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("No such resource: {}", req.path),
        )),
        Target::List => {
            if req.method != Method::GET {
                return Err(method_not_allowed(&req.method));
            }
            let top = match param("top")? {
                None => MAX_TOP,
                Some(t) => match t.parse::<usize>() {
                    Ok(n) if (1..=MAX_TOP).contains(&n) => n,
                    _ => {
                        return Err(HubError::bad_request(format!(
                            "The value of 'top' must be a number from 1 to {MAX_TOP}."
                        )));
                    }
                },
            };
            let list: Vec<Value> = state
                .devices
                .values()
                .take(top)
                .map(Device::to_json)
                .collect();
            Ok(json_response(StatusCode::OK, &Value::Array(list)))
        }
        Target::Device(raw) => {
            let id = auth::percent_decode(&raw)
                .filter(|id| registry::valid_device_id(id))
                .ok_or_else(|| {
                    HubError::bad_request(format!(
                        "The device id '{raw}' is invalid: up to 128 characters of A-Z a-z 0-9 \
                         and - . % _ * ? ! ( ) , : = @ $ '."
                    ))
                })?;
            let if_match = req.if_match.as_deref().map(parse_if_match);
            match req.method {
                Method::GET => state
                    .devices
                    .get(&id)
                    .map(device_response)
                    .ok_or_else(|| HubError::device_not_found(&id)),
                Method::PUT => put_device(state, &id, if_match, body),
                Method::DELETE => delete_device(state, &id, if_match),
                _ => Err(method_not_allowed(&req.method)),
            }
        }
    }
}

fn method_not_allowed(method: &Method) -> HubError {
    HubError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("The method {method} is not allowed on this resource."),
    )
}

fn put_device(
    state: &mut State,
    id: &str,
    if_match: Option<IfMatch>,
    body: &[u8],
) -> Result<Response, HubError> {
    let spec = registry::parse_spec(id, body).map_err(HubError::bad_request)?;
    let current = state.devices.get(id).map(|d| d.etag.clone());
    match (if_match, current) {
        (None, None) => Ok(device_response(state.create(id, spec))),
        (None, Some(_)) => Err(HubError::new(
            StatusCode::CONFLICT,
            "DeviceAlreadyExists",
            format!("A device with ID '{id}' is already registered."),
        )),
        (Some(_), None) => Err(HubError::device_not_found(id)),
        (Some(IfMatch::Etag(tag)), Some(etag)) if tag != etag => {
            Err(HubError::precondition_failed())
        }
        (Some(_), Some(_)) => state
            .replace(id, spec)
            .map(device_response)
            .ok_or_else(|| HubError::device_not_found(id)),
    }
}

fn delete_device(
    state: &mut State,
    id: &str,
    if_match: Option<IfMatch>,
) -> Result<Response, HubError> {
    let Some(if_match) = if_match else {
        return Err(HubError::bad_request(
            "The If-Match header is required to delete a device: send the device's etag, or * \
             to delete it unconditionally.",
        ));
    };
    let Some(device) = state.devices.get(id) else {
        return Err(HubError::device_not_found(id));
    };
    if let IfMatch::Etag(tag) = &if_match
        && *tag != device.etag
    {
        return Err(HubError::precondition_failed());
    }
    state.devices.remove(id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(route("/devices"), Target::List));
        assert!(matches!(route("/devices/"), Target::List));
        assert!(matches!(route("/devices/a%20b"), Target::Device(id) if id == "a%20b"));
        assert!(matches!(route("/devices/a/twin"), Target::Unknown));
        assert!(matches!(route("/devicesx"), Target::Unknown));
        assert!(matches!(route("/"), Target::Unknown));
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match("*"), IfMatch::Any);
        assert_eq!(parse_if_match("\"*\""), IfMatch::Any);
        assert_eq!(parse_if_match("\"abc\""), IfMatch::Etag("abc".into()));
        assert_eq!(parse_if_match("W/\"abc\""), IfMatch::Etag("abc".into()));
        assert_eq!(parse_if_match("abc"), IfMatch::Etag("abc".into()));
        assert_eq!(parse_if_match("\"\""), IfMatch::Etag(String::new()));
        assert_eq!(parse_if_match("\""), IfMatch::Etag("\"".into()));
    }

    #[test]
    fn queries() {
        assert_eq!(
            query_pairs("api-version=2021-04-12&top=5"),
            Some(vec![
                ("api-version".into(), "2021-04-12".into()),
                ("top".into(), "5".into())
            ])
        );
        assert_eq!(query_pairs("a=%zz"), None);
        assert_eq!(query_pairs(""), Some(vec![]));
    }
}
