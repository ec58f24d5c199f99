//! The HTTP side: routing, authentication, the device calls and Google-style errors.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State as AxumState};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use super::device::{self, Device};
use super::{Config, RecordedRequest, Shared, State, now_rfc3339};
use crate::common::fault::Rule;
use crate::common::hooks;
use crate::common::lock;
use crate::common::percent::percent_decode;

/// The largest request body accepted.
const BODY_LIMIT: usize = 1024 * 1024;

/// The most devices one list answer holds (also the default page size).
const MAX_PAGE: usize = 1000;

/// The header ClearBlade reads the user token from.
const TOKEN_HEADER: &str = "clearblade-usertoken";

/// One server's view (plain HTTP or HTTPS) of the shared emulator.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) shared: Shared,
    pub(super) config: Arc<Config>,
    /// Whether this server speaks HTTPS.
    pub(super) tls: bool,
}

/// A refusal, answered as `{"error":{"code","message","status"}}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthenticated() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Request had invalid authentication credentials: the ClearBlade-UserToken is \
             missing or not valid for this system.",
        )
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn unimplemented(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not emulated by the ClearBlade IoT Core emulator."),
        )
    }

    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// Google's canonical status name for an HTTP status.
fn status_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        413 => "OUT_OF_RANGE",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        500 => "INTERNAL",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "error": {
            "code": status.as_u16(),
            "message": message,
            "status": status_name(status),
        }
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    crate::common::response(status, value.to_string(), "application/json; charset=UTF-8")
}

fn fault_response(fault: &Rule) -> Response {
    let status = fault.status_code();
    let message = match status.as_u16() {
        429 => "Quota exceeded (injected fault).".to_string(),
        503 => "The service is currently unavailable (injected fault).".to_string(),
        code => format!("Injected fault ({code})."),
    };
    fault.with_retry_after(error_response(status, &message))
}

/// What a path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `/api/v/1/code/{systemKey}/getRegistryCredentials`.
    Credentials {
        system_key: &'a str,
    },
    /// `/api/v/4/webhook/execute/{systemKey}/{webhook}`.
    Webhook {
        system_key: &'a str,
        webhook: &'a str,
    },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    if let Some(rest) = path.strip_prefix("/api/v/1/code/")
        && let Some((key, "getRegistryCredentials")) = rest.split_once('/')
        && !key.is_empty()
    {
        return Route::Credentials { system_key: key };
    }
    if let Some(rest) = path.strip_prefix("/api/v/4/webhook/execute/")
        && let Some((key, webhook)) = rest.split_once('/')
        && !key.is_empty()
        && !webhook.is_empty()
        && !webhook.contains('/')
    {
        return Route::Webhook {
            system_key: key,
            webhook,
        };
    }
    Route::Unknown
}

/// The decoded query parameters, in order (`+` is kept as `+`).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                percent_decode(s, false).map_err(|_| {
                    ApiError::invalid(format!(
                        "The query parameter '{part}' is not valid percent-encoding."
                    ))
                })
            };
            pairs.push((decode(k)?, decode(v)?));
        }
        Ok(Query(pairs))
    }

    /// The parameter's value; an error when given more than once.
    fn single<'a>(&'a self, name: &str) -> Result<Option<&'a str>, ApiError> {
        let mut values = self.all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::invalid(format!(
                "The query parameter '{name}' is given more than once."
            )));
        }
        Ok(first)
    }

    fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The request facts the handler needs, read before the body.
struct Incoming {
    method: Method,
    path: String,
    query: String,
    /// `Some(Err(()))` when the header is not visible ASCII.
    token: Option<Result<String, ()>>,
    /// The `Host` header: the address the caller used (a proxy's, in front of the emulator).
    host: Option<String>,
}

fn token_header(headers: &HeaderMap) -> Option<Result<String, ()>> {
    headers
        .get(TOKEN_HEADER)
        .map(|v| v.to_str().map(str::to_string).map_err(|_| ()))
}

/// The device a request names, for the request log: the last segment of its `name` query
/// parameter, or the `id` of a JSON body when there is no `name`.
fn addressed_device(query: &str, body: &[u8]) -> Option<String> {
    let name = Query::parse(query)
        .ok()
        .and_then(|q| q.all("name").next().map(str::to_string));
    match name {
        Some(name) => name.rsplit('/').next().map(str::to_string),
        None => serde_json::from_slice::<Value>(body)
            .ok()?
            .get("id")?
            .as_str()
            .map(str::to_string),
    }
}

/// What serving a request found out, for the request log.
struct Seen {
    registry: Option<usize>,
    device: Option<String>,
}

pub(super) async fn handle(AxumState(ctx): AxumState<Ctx>, req: Request) -> Response {
    let started = Instant::now();
    let uri = req.uri().clone();
    let incoming = Incoming {
        method: req.method().clone(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        token: token_header(req.headers()),
        host: req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    };
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();

    let body = axum::body::to_bytes(req.into_body(), BODY_LIMIT).await;
    let latency = lock(&ctx.shared).hooks.latency();
    hooks::delay(latency).await;

    let mut seen = Seen {
        registry: None,
        device: addressed_device(&incoming.query, body.as_deref().unwrap_or_default()),
    };
    let response = {
        let mut state = lock(&ctx.shared);
        let fault = state
            .hooks
            .take_fault(incoming.method.as_str(), &path_and_query);
        match (fault, &body) {
            (Some(fault), _) => fault_response(&fault),
            (None, Err(_)) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("The request body is larger than {BODY_LIMIT} bytes."),
            )
            .into_response(),
            (None, Ok(body)) => {
                match serve(&mut state, &ctx.config, ctx.tls, &incoming, body, &mut seen) {
                    Ok(res) => res,
                    Err(e) => e.into_response(),
                }
            }
        }
    };

    let registry = seen.registry.map(|i| {
        let r = &ctx.config.registries[i];
        (r.region.clone(), r.registry.clone())
    });
    lock(&ctx.shared).hooks.record(RecordedRequest {
        method: incoming.method.to_string(),
        path: incoming.path,
        query: incoming.query,
        tls: ctx.tls,
        registry,
        device: seen.device,
        body: body
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default(),
        status: response.status().as_u16(),
        started,
        finished: Instant::now(),
    });
    response
}

fn serve(
    state: &mut State,
    config: &Config,
    tls: bool,
    req: &Incoming,
    body: &[u8],
    seen: &mut Seen,
) -> Result<Response, ApiError> {
    let token = match &req.token {
        None => None,
        Some(Ok(t)) => Some(t.as_str()),
        Some(Err(())) => return Err(ApiError::unauthenticated()),
    };
    match route(&req.path) {
        Route::Unknown => Err(ApiError::not_found(format!(
            "No such API: {} {}",
            req.method, req.path
        ))),
        Route::Credentials { system_key } => {
            if system_key != config.admin_system_key || token != Some(&*config.admin_token) {
                return Err(ApiError::unauthenticated());
            }
            if req.method != Method::POST {
                return Err(method_not_allowed(&req.method, "getRegistryCredentials"));
            }
            let scheme = if state.behind_tls { "https" } else { "http" };
            registry_credentials(config, tls, scheme, req.host.as_deref(), body)
        }
        Route::Webhook {
            system_key,
            webhook,
        } => {
            if system_key == config.admin_system_key {
                if token != Some(&*config.admin_token) {
                    return Err(ApiError::unauthenticated());
                }
                return Err(ApiError::unimplemented(&format!(
                    "The admin system webhook '{webhook}' (registry management)"
                )));
            }
            let Some(index) = config
                .registries
                .iter()
                .position(|r| r.system_key == system_key)
            else {
                return Err(ApiError::unauthenticated());
            };
            if token != Some(&*config.registries[index].token) {
                return Err(ApiError::unauthenticated());
            }
            seen.registry = Some(index);
            if webhook != "cloudiot_devices" {
                return Err(ApiError::unimplemented(&format!("The webhook '{webhook}'")));
            }
            devices(state, config, index, req, body)
        }
    }
}

fn method_not_allowed(method: &Method, what: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("The method {method} is not allowed on {what}."),
    )
}

fn registry_credentials(
    config: &Config,
    tls: bool,
    scheme: &str,
    host: Option<&str>,
    body: &[u8],
) -> Result<Response, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON payload received. {e}")))?;
    let field = |name: &str| -> Result<&str, ApiError> {
        value.get(name).and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!(
                "getRegistryCredentials needs the string fields region, registry and project; \
                 '{name}' is missing or not a string."
            ))
        })
    };
    let (region, registry, project) = (field("region")?, field("registry")?, field("project")?);
    let index = config
        .registry_index(region, registry)
        .filter(|_| project == config.project)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "The registry projects/{project}/locations/{region}/registries/{registry} does \
                 not exist."
            ))
        })?;
    let r = &config.registries[index];
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "systemKey": r.system_key,
            "serviceAccountToken": r.token,
            // Over plain HTTP, the address the caller used: a proxy in front of the emulator
            // (tests that inject faults) then sees the device calls too.
            "url": match host {
                Some(host) if !tls => format!("{scheme}://{host}"),
                _ => config.url(tls),
            },
        }),
    ))
}

/// A device named in a request: by id or by numeric id.
#[derive(Debug, PartialEq, Eq)]
enum DeviceRef {
    Id(String),
    NumId(u64),
}

impl DeviceRef {
    fn find<'a>(
        &self,
        devices: &'a std::collections::BTreeMap<String, Device>,
    ) -> Option<&'a Device> {
        match self {
            DeviceRef::Id(id) => devices.get(id),
            DeviceRef::NumId(n) => devices.values().find(|d| d.num_id == *n),
        }
    }

    fn id_in(&self, devices: &std::collections::BTreeMap<String, Device>) -> Option<String> {
        self.find(devices).map(|d| d.id.clone())
    }
}

/// `projects/{p}/locations/{l}/registries/{r}`, each segment non-empty.
fn is_registry_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(
        parts.as_slice(),
        ["projects", p, "locations", l, "registries", r]
            if !p.is_empty() && !l.is_empty() && !r.is_empty()
    )
}

/// Reads a device name of this registry: 400 when malformed, 404 when it names another
/// registry.
fn device_ref(registry_path: &str, name: &str) -> Result<DeviceRef, ApiError> {
    let malformed = || {
        ApiError::invalid(format!(
            "The device name '{name}' is invalid: expected projects/{{project}}/locations/\
             {{location}}/registries/{{registry}}/devices/{{device id or numeric id}}."
        ))
    };
    let (registry, device) = name.rsplit_once("/devices/").ok_or_else(malformed)?;
    if !is_registry_path(registry) || device.is_empty() || device.contains('/') {
        return Err(malformed());
    }
    let reference = if device.bytes().all(|b| b.is_ascii_digit()) {
        DeviceRef::NumId(device.parse().map_err(|_| malformed())?)
    } else {
        device::check_id(device).map_err(ApiError::invalid)?;
        DeviceRef::Id(device.to_string())
    };
    if registry != registry_path {
        return Err(device_not_found(name));
    }
    Ok(reference)
}

fn device_not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("The device {name} does not exist."))
}

fn devices(
    state: &mut State,
    config: &Config,
    index: usize,
    req: &Incoming,
    body: &[u8],
) -> Result<Response, ApiError> {
    let query = Query::parse(&req.query)?;
    if let Some(method) = query.single("method")? {
        return Err(ApiError::unimplemented(&format!(
            "cloudiot_devices?method={method}"
        )));
    }
    let registry_path = config.registries[index].path.as_str();
    let name = query.single("name")?;
    let store = &mut state.devices[index];
    match (&req.method, name) {
        (&Method::GET, Some(name)) => {
            let reference = device_ref(registry_path, name)?;
            let mask = query
                .single("fieldMask")?
                .map(device::field_mask)
                .transpose()
                .map_err(ApiError::invalid)?
                .filter(|m| !m.is_empty());
            let device = reference
                .find(store)
                .ok_or_else(|| device_not_found(name))?;
            Ok(json_response(
                StatusCode::OK,
                &device.to_json(registry_path, mask.as_deref()),
            ))
        }
        (&Method::GET, None) => list(store, registry_path, &query),
        (&Method::POST, _) => {
            let spec = device::parse_spec(body).map_err(ApiError::invalid)?;
            create(state, index, registry_path, spec)
        }
        (&Method::PATCH, Some(name)) => {
            let reference = device_ref(registry_path, name)?;
            let mask =
                device::update_mask(query.single("updateMask")?).map_err(ApiError::invalid)?;
            let spec = device::parse_spec(body).map_err(ApiError::invalid)?;
            let device = store
                .values_mut()
                .find(|d| match &reference {
                    DeviceRef::Id(id) => d.id == *id,
                    DeviceRef::NumId(n) => d.num_id == *n,
                })
                .ok_or_else(|| device_not_found(name))?;
            let id_differs = spec.id.as_deref().is_some_and(|id| id != device.id);
            let num_id_differs = spec
                .num_id
                .as_deref()
                .is_some_and(|n| n != device.num_id.to_string());
            if id_differs || num_id_differs {
                return Err(ApiError::invalid(
                    "The device's id and num_id cannot be changed: leave them out of the body \
                     (the device is named by the 'name' query parameter).",
                ));
            }
            device.update(&mask, spec);
            Ok(json_response(
                StatusCode::OK,
                &device.to_json(registry_path, None),
            ))
        }
        (&Method::DELETE, Some(name)) => {
            let reference = device_ref(registry_path, name)?;
            let id = reference
                .id_in(store)
                .ok_or_else(|| device_not_found(name))?;
            if let Some(gone) = store.remove(&id) {
                state.num_ids.remove(&gone.num_id);
            }
            Ok(json_response(StatusCode::OK, &json!({})))
        }
        (&Method::PATCH | &Method::DELETE, None) => Err(ApiError::invalid(
            "The 'name' query parameter (the device path) is required.",
        )),
        (method, _) => Err(method_not_allowed(method, "cloudiot_devices")),
    }
}

fn create(
    state: &mut State,
    index: usize,
    registry_path: &str,
    spec: device::Spec,
) -> Result<Response, ApiError> {
    if let (Some(name), Some(id)) = (spec.name.as_deref(), spec.id.as_deref())
        && !name.is_empty()
        && name != format!("{registry_path}/devices/{id}")
    {
        return Err(ApiError::invalid(format!(
            "The device name must be empty on create (the service makes it); got '{name}'."
        )));
    }
    if let Some(id) = spec.id.as_deref() {
        device::check_id(id).map_err(ApiError::invalid)?;
        if state.devices[index].contains_key(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("The device {registry_path}/devices/{id} already exists."),
            ));
        }
    }
    let num_id = state.next_num_id();
    let device = match Device::create(spec, num_id, &now_rfc3339()) {
        Ok(d) => d,
        Err(e) => {
            state.num_ids.remove(&num_id);
            return Err(ApiError::invalid(e));
        }
    };
    let answer = device.to_json(registry_path, None);
    state.devices[index].insert(device.id.clone(), device);
    Ok(json_response(StatusCode::OK, &answer))
}

fn list(
    store: &std::collections::BTreeMap<String, Device>,
    registry_path: &str,
    query: &Query,
) -> Result<Response, ApiError> {
    let Some(parent) = query.single("parent")? else {
        return Err(ApiError::invalid(
            "Either 'name' (get a device) or 'parent' (list devices) is required.",
        ));
    };
    if !is_registry_path(parent) {
        return Err(ApiError::invalid(format!(
            "The parent '{parent}' is invalid: expected projects/{{project}}/locations/\
             {{location}}/registries/{{registry}}."
        )));
    }
    if parent != registry_path {
        return Err(ApiError::not_found(format!(
            "The registry {parent} does not exist."
        )));
    }
    let ids: Vec<&str> = query
        .all("deviceIds")
        .flat_map(|v| v.split(','))
        .filter(|v| !v.is_empty())
        .collect();
    let mut num_ids = Vec::new();
    for v in query.all("deviceNumIds").flat_map(|v| v.split(',')) {
        if v.is_empty() {
            continue;
        }
        num_ids.push(v.parse::<u64>().map_err(|_| {
            ApiError::invalid(format!("Invalid value at 'device_num_ids': \"{v}\"."))
        })?);
    }
    let mask = query
        .single("fieldMask")?
        .map(device::field_mask)
        .transpose()
        .map_err(ApiError::invalid)?
        .unwrap_or_default();
    let page_size = match query.single("pageSize")? {
        None | Some("") => MAX_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(0) => MAX_PAGE,
            Ok(n) => n.min(MAX_PAGE),
            Err(_) => {
                return Err(ApiError::invalid(format!(
                    "Invalid value at 'page_size' (TYPE_INT32), \"{v}\"."
                )));
            }
        },
    };
    let after = query.single("pageToken")?.filter(|t| !t.is_empty());
    let gateway_type = query.single("gatewayListOptions.gatewayType")?;
    let associations = query
        .single("gatewayListOptions.associationsGatewayId")?
        .is_some()
        || query
            .single("gatewayListOptions.associationsDeviceId")?
            .is_some();

    let matching: Vec<&Device> = store
        .values()
        .filter(|d| after.is_none_or(|t| d.id.as_str() > t))
        .filter(|d| ids.is_empty() || ids.contains(&d.id.as_str()))
        .filter(|d| num_ids.is_empty() || num_ids.contains(&d.num_id))
        .filter(|d| match gateway_type {
            Some("GATEWAY") => d.gateway_type.as_deref() == Some("GATEWAY"),
            Some("NON_GATEWAY") => d.gateway_type.as_deref() != Some("GATEWAY"),
            _ => true,
        })
        // No gateway bindings are emulated: nothing is associated with anything.
        .filter(|_| !associations)
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .take(page_size)
        .map(|d| d.to_json(registry_path, Some(&mask)))
        .collect();
    let mut answer = serde_json::Map::new();
    if !page.is_empty() {
        answer.insert("devices".into(), Value::Array(page));
    }
    if matching.len() > page_size
        && let Some(last) = matching.get(page_size - 1)
    {
        answer.insert("nextPageToken".into(), json!(last.id));
    }
    Ok(json_response(StatusCode::OK, &Value::Object(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("/api/v/1/code/abc/getRegistryCredentials"),
            Route::Credentials { system_key: "abc" }
        );
        assert_eq!(
            route("/api/v/4/webhook/execute/k1/cloudiot_devices"),
            Route::Webhook {
                system_key: "k1",
                webhook: "cloudiot_devices"
            }
        );
        assert_eq!(route("/api/v/4/webhook/execute/k1/"), Route::Unknown);
        assert_eq!(route("/api/v/4/webhook/execute/k1/a/b"), Route::Unknown);
        assert_eq!(
            route("/api/v/1/code//getRegistryCredentials"),
            Route::Unknown
        );
        assert_eq!(route("/"), Route::Unknown);
    }

    #[test]
    fn device_names() {
        let reg = "projects/p/locations/us-central1/registries/r1";
        assert_eq!(
            device_ref(reg, &format!("{reg}/devices/dev-1")).ok(),
            Some(DeviceRef::Id("dev-1".into()))
        );
        assert_eq!(
            device_ref(reg, &format!("{reg}/devices/123")).ok(),
            Some(DeviceRef::NumId(123))
        );
        let other = device_ref(
            "projects/p/locations/eu/registries/r1",
            &format!("{reg}/devices/d1x"),
        );
        assert_eq!(other.err().map(|e| e.status), Some(StatusCode::NOT_FOUND));
        for bad in [
            "dev-1",
            "devices/dev-1",
            "projects/p/devices/dev-1",
            &format!("{reg}/devices/"),
        ] {
            assert_eq!(
                device_ref(reg, bad).err().map(|e| e.status),
                Some(StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
    }

    #[test]
    fn queries_keep_plus() {
        let q = Query::parse("name=a+b%2Fc&x=1&x=2").expect("parses");
        assert_eq!(q.single("name").ok().flatten(), Some("a+b/c"));
        assert!(q.single("x").is_err());
        assert_eq!(q.all("x").collect::<Vec<_>>(), ["1", "2"]);
        assert!(Query::parse("name=%zz").is_err());
    }
}
