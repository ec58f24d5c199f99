//! An emulator of the balenaCloud API (pinejs/OData, `/v7/`, also `/v6/`) for the slice of the
//! data model the provisioning functions touch: `application`, `device`, `service`,
//! `service_install`, `device_environment_variable`, `device_service_environment_variable` and
//! `device_tag`.
//!
//! # What it emulates
//! * Auth: `Authorization: Bearer <key>` or `?apikey=<key>`. A *user key* sees and writes
//!   everything; a *device key* sees only its device, its application, that application's
//!   services, and its own service installs, variables and tags, and writes only its own
//!   variables, tags and device row. An unknown or missing key gets 401 with an empty body.
//! * URLs are read raw, as pinejs reads them (see [`pinejs_url`]): OData syntax must stand
//!   literally, only a literal's content is percent-decoded, and a percent-encoded syntax
//!   character is 400 `"Malformed url: '<path and query>'"`. Errors are JSON strings, as
//!   pinejs's are.
//! * Reads: `GET /v7/<resource>`, `/v7/<resource>(<id>)`, `/v7/<resource>(<field>='<value>')`,
//!   `/v7/<resource>/$count`, with `$select`, `$filter`, `$expand` (nested options `$select`,
//!   `$filter`, `$expand`, `$orderby`, `$top`, `$skip`; `nav/$count`), `$orderby`, `$top`,
//!   `$skip`. Answers `{"d": [rows]}`; a foreign key reads `{"__id": n}` unless expanded, then
//!   an array of rows. What a key cannot see is absent, never a 404. Permissions apply at every
//!   level: to expansions and to the navigations inside `$filter`.
//! * `$filter`: `eq ne gt ge lt le`, `and or not`, parentheses, `in (...)`, `null`/`true`/
//!   `false`, integers, `'strings'` (`''` for a quote), navigation paths over foreign keys
//!   (`a/b eq 1`), `nav/$count`, lambdas `nav/any(x: ...)` / `nav/all(x: ...)` over to-one
//!   and to-many navigations, and `startswith endswith contains substringof tolower toupper
//!   length`. Malformed input is 400 "Malformed url"; unknown names and type mismatches are
//!   400 with the reason (pinejs fails those with an empty 500; a client must not send them).
//! * Writes: `POST` (201 with the row), `PATCH` and `DELETE` by key or by `$filter` (200 with an
//!   empty body, also when nothing matched; rows the key cannot see never match; an empty
//!   body is 400 `"No fields to update"`). A unique constraint violation is 409 worded as
//!   balena words it (`"\"device\" and \"tag_key\" must be unique."`); a foreign key to a
//!   missing row is 409 `"Data is referenced by <field>."`, one a device key cannot see (or a
//!   missing service install) 401. A variable value with a line break is 400
//!   `"Variable values cannot contain line break characters"`. Foreign keys in bodies may be
//!   `12`, `{"__id": 12}` or `{"@odata.id": "...(12)"}`. Creating a device creates a
//!   `service_install` for each service of its application (and a new service is installed on
//!   the application's devices), as balena does; deleting a row deletes its dependents.
//! * Test hooks: seeding and inspection without HTTP, a record of every request, injected
//!   faults (status, `Retry-After`, how many times, after how many successes) and latency.
//!
//! # What it does not emulate
//! The rest of the balena model and its fields, other API versions, `$count=true`, `$batch`,
//! parameter aliases (`@x`), `PUT`, OData actions, `$orderby` on navigations other than
//! foreign-key paths, decimal literals and arithmetic operators, sessions/JWTs, and the
//! supervisor or any device-facing endpoint other than `/ping`.

mod odata;
mod pinejs_url;
mod query;
mod schema;
mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::common::fault::{Matcher, Rule, emulator_fault};
use crate::common::hooks::{self, Hooks, test_hooks};
use crate::common::percent::percent_decode;
use crate::common::server::{self, Servers};
use crate::common::{self, lock};
use odata::{ODataError, parse_options, parse_resource_path, resource_name_of};
use pinejs_url::{PinejsUrlError, Place, decode_odata_text, decode_query};
use query::{Eval, bind_key, bind_options};
use schema::Res;
use store::{Row, Store, Viewer, WriteError, int_field};

/// The largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// One request the emulator answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// As received, still percent-encoded.
    pub path_and_query: String,
    /// The resource named in the path (e.g. `device_environment_variable`), empty when none.
    pub resource: String,
    /// The API key used (header or `apikey` parameter), if any.
    pub key: Option<String>,
    pub status: u16,
    pub started: Instant,
    pub finished: Instant,
}

emulator_fault! {
    /// A failure to inject: matching requests are answered `status` instead of being served.
    pub struct Fault {
        /// `None` matches any resource.
        pub resource: Option<String>,
    }
    /// Only requests naming this resource (e.g. `device_environment_variable`).
    fn resource => Matcher::Equals;
}

#[derive(Default)]
struct State {
    store: Store,
    user_keys: HashMap<String, Role>,
    device_keys: HashMap<String, i64>,
    /// A fleet's keys (provisioning keys), by the fleet's id.
    fleet_keys: HashMap<String, i64>,
    /// Devices balenaCloud has frozen: their own keys see nothing.
    frozen: HashSet<i64>,
    /// Devices to delete when the next request of this method for this resource arrives,
    /// before it is served (someone deleting the device at that moment).
    deletions: Vec<(String, String, i64)>,
    hooks: Hooks<RecordedRequest>,
}

/// A fleet member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Member,
    Observer,
}

type Shared = Arc<Mutex<State>>;

/// A running balenaCloud API emulator. Clones share the same server and state; the server
/// stops on [`BalenaEmulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct BalenaEmulator {
    shared: Shared,
    addr: SocketAddr,
    servers: Arc<Servers>,
}

impl std::fmt::Debug for BalenaEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalenaEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl BalenaEmulator {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> anyhow::Result<BalenaEmulator> {
        BalenaEmulator::start_on(server::any_local_port()).await
    }

    /// Starts on `addr`, serving in a tokio task.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<BalenaEmulator> {
        let (listener, addr) = server::bind(addr).await?;
        let shared: Shared = Arc::default();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let servers = Servers::new("balena emulator");
        servers.spawn(listener, app, "server");
        tracing::debug!(%addr, "balena emulator listening");
        Ok(BalenaEmulator {
            shared,
            addr,
            servers: Arc::new(servers),
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash or version.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared)
    }

    fn seed(&self, res: Res, body: Value) -> i64 {
        let body = body.as_object().cloned().unwrap_or_default();
        match self.state().store.insert(&Viewer::All, res, &body) {
            Ok(id) => id,
            Err(e) => panic!("seeding {} {body:?} failed: {e:?}", res.name()),
        }
    }

    /// Creates an application; its slug is `admin/<lowercased name>`.
    pub fn add_application(&self, app_name: &str) -> i64 {
        self.seed(Res::Application, json!({ "app_name": app_name }))
    }

    /// Creates a service of an application and installs it on the application's devices.
    /// Panics if the application does not exist or already has that service.
    pub fn add_service(&self, application_id: i64, service_name: &str) -> i64 {
        self.seed(
            Res::Service,
            json!({ "application": application_id, "service_name": service_name }),
        )
    }

    /// Creates a device with a service install for every service of its application. Panics if
    /// the application does not exist or the uuid is taken.
    pub fn add_device(&self, application_id: i64, uuid: &str) -> i64 {
        self.seed(
            Res::Device,
            json!({ "belongs_to__application": application_id, "uuid": uuid }),
        )
    }

    /// Registers a fleet member's user key (full access).
    pub fn add_user_key(&self, key: &str) {
        self.state().user_keys.insert(key.to_string(), Role::Member);
    }

    /// Registers the user key of a fleet member with the read-only observer role: it sees every
    /// device and may write nothing (401, as pinejs answers a write without permission).
    pub fn add_observer_key(&self, key: &str) {
        self.state()
            .user_keys
            .insert(key.to_string(), Role::Observer);
    }

    /// Registers a fleet's key (a provisioning key): `whoami` knows it, it reads nothing.
    pub fn add_fleet_key(&self, application_id: i64, key: &str) {
        self.state()
            .fleet_keys
            .insert(key.to_string(), application_id);
    }

    /// Deletes the device (with everything that belongs to it) when the next `method` request
    /// for `resource` arrives, just before serving it: a device deleted from the dashboard
    /// while a request is working on it, at an exact step.
    pub fn delete_device_on(&self, method: &str, resource: &str, device_id: i64) {
        self.state()
            .deletions
            .push((method.to_string(), resource.to_string(), device_id));
    }

    /// Freezes a device, as balenaCloud does: its own key then sees nothing (`whoami` still
    /// names it).
    pub fn freeze_device(&self, device_id: i64) {
        self.state().frozen.insert(device_id);
    }

    /// Registers a key bound to one device.
    pub fn add_device_key(&self, device_id: i64, key: &str) {
        self.state().device_keys.insert(key.to_string(), device_id);
    }

    /// The device's environment variables, name to value.
    pub fn device_vars(&self, device_id: i64) -> BTreeMap<String, String> {
        let state = self.state();
        pairs(&state.store, Res::DeviceEnvVar, "device", device_id, "name")
    }

    /// The service variables of the device's install of `service_name`, name to value (empty
    /// when there is no such install).
    pub fn service_vars(&self, device_id: i64, service_name: &str) -> BTreeMap<String, String> {
        let state = self.state();
        match service_install(&state.store, device_id, service_name) {
            Some(si) => pairs(
                &state.store,
                Res::DeviceServiceEnvVar,
                "service_install",
                si,
                "name",
            ),
            None => BTreeMap::new(),
        }
    }

    /// The device's tags, key to value.
    pub fn device_tags(&self, device_id: i64) -> BTreeMap<String, String> {
        let state = self.state();
        pairs(&state.store, Res::DeviceTag, "device", device_id, "tag_key")
    }

    /// The id of the device's install of `service_name`.
    pub fn service_install_id(&self, device_id: i64, service_name: &str) -> Option<i64> {
        service_install(&self.state().store, device_id, service_name)
    }

    fn upsert(
        &self,
        res: Res,
        parent_field: &str,
        parent: i64,
        key_field: &str,
        key: &str,
        value: &str,
    ) {
        let mut state = self.state();
        let store = &mut state.store;
        let existing: Vec<i64> = store
            .ids_where(res, parent_field, Some(parent))
            .into_iter()
            .filter(|id| {
                store
                    .row(res, *id)
                    .and_then(|r| r.get(key_field))
                    .and_then(Value::as_str)
                    == Some(key)
            })
            .collect();
        let result = if existing.is_empty() {
            let body = json!({ parent_field: parent, key_field: key, "value": value });
            store
                .insert(&Viewer::All, res, body.as_object().unwrap_or(&Map::new()))
                .map(|_| ())
        } else {
            let body = json!({ "value": value });
            store.update(
                &Viewer::All,
                res,
                &existing,
                body.as_object().unwrap_or(&Map::new()),
            )
        };
        if let Err(e) = result {
            panic!(
                "seeding {} {parent_field}={parent} {key_field}={key:?} failed: {e:?}",
                res.name()
            );
        }
    }

    /// Creates or overwrites a device environment variable, bypassing HTTP.
    pub fn set_device_var(&self, device_id: i64, name: &str, value: &str) {
        self.upsert(Res::DeviceEnvVar, "device", device_id, "name", name, value);
    }

    /// Creates or overwrites a service variable on the device's install of `service_name`,
    /// bypassing HTTP. Panics if there is no such install.
    pub fn set_service_var(&self, device_id: i64, service_name: &str, name: &str, value: &str) {
        let Some(si) = self.service_install_id(device_id, service_name) else {
            panic!("device {device_id} has no install of service {service_name:?}");
        };
        self.upsert(
            Res::DeviceServiceEnvVar,
            "service_install",
            si,
            "name",
            name,
            value,
        );
    }

    /// Creates or overwrites a device tag, bypassing HTTP.
    pub fn set_device_tag(&self, device_id: i64, tag_key: &str, value: &str) {
        self.upsert(
            Res::DeviceTag,
            "device",
            device_id,
            "tag_key",
            tag_key,
            value,
        );
    }

    test_hooks!(RecordedRequest, Fault);

    /// Stops the server and waits (up to 5 s) for open connections to finish.
    pub async fn shutdown(self) {
        self.servers.shutdown().await;
    }
}

fn service_install(store: &Store, device_id: i64, service_name: &str) -> Option<i64> {
    store
        .ids_where(Res::ServiceInstall, "device", Some(device_id))
        .into_iter()
        .find(|si| {
            store
                .row(Res::ServiceInstall, *si)
                .and_then(|row| int_field(row, "installs__service"))
                .and_then(|s| store.row(Res::Service, s))
                .and_then(|s| s.get("service_name"))
                .and_then(Value::as_str)
                == Some(service_name)
        })
}

fn pairs(
    store: &Store,
    res: Res,
    parent_field: &str,
    parent: i64,
    key_field: &str,
) -> BTreeMap<String, String> {
    store
        .table(res)
        .rows
        .values()
        .filter(|row| int_field(row, parent_field) == Some(parent))
        .filter_map(|row| {
            let k = row.get(key_field)?.as_str()?;
            let v = row.get("value")?.as_str()?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A refusal, answered as pinejs answers: the message as a JSON string, or no body at all.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    /// `None` for an empty body (pinejs's 401 and its 500s).
    message: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: Some(message.into()),
        }
    }

    fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, msg)
    }

    fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: None,
        }
    }

    fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found")
    }

    /// pinejs's answer to a URL its grammar refuses; `path_and_query` as received.
    fn malformed_url(path_and_query: &str) -> ApiError {
        ApiError::bad_request(format!("Malformed url: '{path_and_query}'"))
    }

    fn from_url_error(e: PinejsUrlError, path_and_query: &str) -> ApiError {
        match e {
            PinejsUrlError::Malformed => ApiError::malformed_url(path_and_query),
            // pinejs lets decodeURIComponent's URIError escape: a 500 with no body.
            PinejsUrlError::UndecodableLiteral => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: None,
            },
        }
    }

    fn into_response(self) -> Response {
        match self.message {
            Some(message) => json_response(self.status, &Value::String(message)),
            None => self.status.into_response(),
        }
    }
}

impl From<ODataError> for ApiError {
    fn from(e: ODataError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        match e {
            WriteError::BadRequest(m) => ApiError::bad_request(m),
            WriteError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            WriteError::Unauthorized => ApiError::unauthorized(),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response {
    common::response(status, body, "text/plain; charset=utf-8")
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    common::response(status, value.to_string(), "application/json")
}

/// The API key of a request: the `Authorization: Bearer` header, else the `apikey` parameter.
fn request_key(headers: &http::HeaderMap, query: &str) -> Option<String> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim().to_string())
        .filter(|k| !k.is_empty());
    from_header.or_else(|| {
        query.split('&').find_map(|part| {
            let (name, value) = part.split_once('=')?;
            if name != "apikey" {
                return None;
            }
            percent_decode(value, true).ok().filter(|k| !k.is_empty())
        })
    })
}

/// The path after `/v7/` or `/v6/`, if it is an API path.
fn api_rest(path: &str) -> Option<&str> {
    path.strip_prefix("/v7/")
        .or_else(|| path.strip_prefix("/v6/"))
}

async fn handle(AxumState(shared): AxumState<Shared>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    let resource = api_rest(path)
        .map(resource_name_of)
        .unwrap_or("")
        .to_string();
    let key = request_key(req.headers(), query);

    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await;
    let latency = lock(&shared).hooks.latency();
    hooks::delay(latency).await;

    let response = {
        let mut state = lock(&shared);
        if let Some(i) = state
            .deletions
            .iter()
            .position(|(m, r, _)| *m == method.as_str() && *r == resource)
        {
            let (_, _, device) = state.deletions.remove(i);
            let _ = state.store.delete(&Viewer::All, Res::Device, &[device]);
        }
        match state.hooks.take_fault(method.as_str(), &resource) {
            Some(fault) => fault_response(&fault),
            None => match body {
                Err(_) => text(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large".into()),
                Ok(body) => {
                    let request = ApiRequest {
                        method: &method,
                        path,
                        query,
                        path_and_query: &path_and_query,
                        key: key.as_deref(),
                        body: &body,
                    };
                    match serve(&mut state, &request) {
                        Ok(res) => res,
                        Err(e) => e.into_response(),
                    }
                }
            },
        }
    };

    lock(&shared).hooks.record(RecordedRequest {
        method: method.to_string(),
        path_and_query,
        resource,
        key,
        status: response.status().as_u16(),
        started,
        finished: Instant::now(),
    });
    response
}

fn fault_response(fault: &Rule) -> Response {
    let status = fault.status_code();
    let reason = status.canonical_reason().unwrap_or("Injected fault");
    fault.with_retry_after(text(status, reason.to_string()))
}

/// `GET /actor/v1/whoami`: who holds the key, as balenaCloud answers it (a device key names its
/// device's uuid; a user key its user). 401 for no key or one it does not know; other methods
/// are not routed (404 with an empty body).
fn whoami(state: &State, method: &Method, key: Option<&str>) -> Result<Response, ApiError> {
    if *method != Method::GET {
        return Ok(text(StatusCode::NOT_FOUND, String::new()));
    }
    let Some(key) = key else {
        return Err(ApiError::unauthorized());
    };
    if let Some(role) = state.user_keys.get(key) {
        let (id, name) = match role {
            Role::Member => (1, "admin"),
            Role::Observer => (2, "observer"),
        };
        let body = json!({"id": id, "actorType": "user", "actorTypeId": id, "username": name, "email": format!("{name}@example.com")});
        return Ok(json_response(StatusCode::OK, &body));
    }
    if let Some(app) = state.fleet_keys.get(key) {
        let slug = state
            .store
            .row(Res::Application, *app)
            .and_then(|row| row.get("slug"))
            .cloned()
            .unwrap_or(Value::Null);
        let body = json!({"id": 200_000 + app, "actorType": "application", "actorTypeId": app, "slug": slug});
        return Ok(json_response(StatusCode::OK, &body));
    }
    let device = state
        .device_keys
        .get(key)
        .ok_or_else(ApiError::unauthorized)?;
    let uuid = state
        .store
        .row(Res::Device, *device)
        .and_then(|row| row.get("uuid"))
        .cloned()
        .unwrap_or(Value::Null);
    // Actor ids are their own sequence in balenaCloud; any number unlike the device id will do.
    let body =
        json!({"id": 100_000 + device, "actorType": "device", "actorTypeId": device, "uuid": uuid});
    Ok(json_response(StatusCode::OK, &body))
}

/// One request as [`serve`] needs it.
struct ApiRequest<'a> {
    method: &'a Method,
    path: &'a str,
    /// Raw, still percent-encoded.
    query: &'a str,
    /// As received, for pinejs's "Malformed url" message.
    path_and_query: &'a str,
    key: Option<&'a str>,
    body: &'a [u8],
}

fn serve(state: &mut State, request: &ApiRequest<'_>) -> Result<Response, ApiError> {
    let ApiRequest {
        method,
        path,
        query,
        path_and_query,
        key,
        body,
    } = *request;
    if path == "/ping" {
        return Ok(text(StatusCode::OK, "OK".into()));
    }
    if path == "/actor/v1/whoami" {
        return whoami(state, method, key);
    }
    let rest = api_rest(path).ok_or_else(ApiError::not_found)?;

    let viewer = match key {
        Some(k) => match (state.user_keys.get(k), state.device_keys.get(k)) {
            (Some(Role::Member), _) => Viewer::All,
            (Some(Role::Observer), _) => Viewer::Observer,
            (None, Some(device)) if state.frozen.contains(device) => Viewer::Nothing,
            (None, Some(device)) => state.store.device_viewer(*device),
            // A fleet's key has no read permission at all: pinejs answers 401, as to any
            // key it does not know.
            (None, None) => return Err(ApiError::unauthorized()),
        },
        None => return Err(ApiError::unauthorized()),
    };

    // Syntax errors are pinejs's "Malformed url"; the names are checked against the schema
    // after, with their own messages.
    let url_error = |e| ApiError::from_url_error(e, path_and_query);
    let malformed = |_: ODataError| ApiError::malformed_url(path_and_query);
    let rest = decode_odata_text(rest, Place::Path).map_err(url_error)?;
    let target = parse_resource_path(&rest).map_err(malformed)?;
    let res = Res::from_name(&target.resource).ok_or_else(ApiError::not_found)?;
    let pairs = decode_query(query).map_err(url_error)?;
    let raw_options = parse_options(&pairs).map_err(malformed)?;
    let mut opts = bind_options(res, &raw_options)?;
    if let Some(key) = &target.key {
        opts.and_filter(bind_key(res, key)?);
    }
    let store = &mut state.store;

    match *method {
        Method::GET => {
            let eval = Eval {
                store,
                viewer: &viewer,
            };
            let rows = eval.select_rows(res, store.table(res).rows.values(), &opts);
            if target.count {
                return Ok(json_response(StatusCode::OK, &json!({ "d": rows.len() })));
            }
            let d: Vec<Value> = rows
                .into_iter()
                .map(|r| eval.render(res, r, &opts))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "d": d })))
        }
        Method::POST => {
            if target.key.is_some() || target.count {
                return Err(ApiError::bad_request("POST must address a collection"));
            }
            let body = json_object(body)?;
            let id = store.insert(&viewer, res, &body)?;
            let eval = Eval {
                store,
                viewer: &viewer,
            };
            let row: Option<&Row> = store.row(res, id);
            let created = row
                .map(|r| eval.render(res, r, &Default::default()))
                .unwrap_or(Value::Null);
            Ok(json_response(StatusCode::CREATED, &created))
        }
        Method::PATCH | Method::DELETE => {
            if target.count {
                return Err(ApiError::bad_request("cannot write to $count"));
            }
            let ids: Vec<i64> = {
                let eval = Eval {
                    store,
                    viewer: &viewer,
                };
                let rows = eval.select_rows(res, store.table(res).rows.values(), &opts);
                rows.into_iter()
                    .filter_map(|r| int_field(r, "id"))
                    .collect()
            };
            if *method == Method::PATCH {
                let body = json_object(body)?;
                store.update(&viewer, res, &ids, &body)?;
            } else {
                store.delete(&viewer, res, &ids)?;
            }
            Ok(StatusCode::OK.into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
        )),
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "The request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!("Invalid JSON body: {e}"))),
    }
}
