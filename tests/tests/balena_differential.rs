//! The balenaCloud API emulator against the real API (open-balena-api at `OPEN_BALENA_URL`):
//! the same requests go to both, and their answers must agree in status and body shape (JSON
//! structure, keys and types, with ids, uuids and generated values normalised; error texts
//! exactly). Each backend gets a fresh fleet with one service and two devices, so the same
//! sequence of requests meets the same state on both.
//!
//! * [`the_product_client_gets_the_same_answers`] drives `BalenaClient` through every call it
//!   makes, behind a recording proxy, and compares the outcomes and the raw requests (then
//!   replays those raw requests byte for byte against their backend and compares again).
//! * [`corner_cases_get_the_same_answers`] sends hand-written requests: duplicates, missing
//!   rows, filters matching nothing, foreign keys, line breaks, permissions, URL encodings,
//!   keys.
//!
//! Run with `OPEN_BALENA_URL=http://127.0.0.1:18080 cargo test -p provision-testkit --test
//! balena_differential -- --nocapture` to see the table of cases compared.

use std::time::Duration;

use provision_core::balena::{BalenaClient, DeviceRecord, VarTarget};
use provision_core::ids::{BalenaDeviceId, DeviceUuid, ServiceName};
use provision_core::retry::{Deadline, RetryPolicy};
use provision_core::secret::Secret;
use provision_emulators::balena::BalenaEmulator;
use provision_emulators::fault_proxy::{FaultProxy, Flavour, Traffic};
use provision_testkit::open_balena::fixture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A device id no fleet has.
const MISSING_ID: i64 = 987_654_321;
/// The service fixture.py gives every fleet.
const SERVICE: &str = "cloud-relay";

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

struct Device {
    id: i64,
    uuid: String,
    key: String,
    service_install: i64,
}

/// One side of the comparison: where it is, its keys, and the fleet made for this test.
struct Backend {
    url: String,
    user_key: String,
    /// The fleet's own key (a provisioning key).
    fleet_key: String,
    devices: [Device; 2],
    /// Keeps the emulator running for as long as the backend is used.
    _emulator: Option<BalenaEmulator>,
}

async fn real_backend() -> Backend {
    let fleet = fixture(2)
        .await
        .expect("fixture.py makes a fleet on the real server");
    assert_eq!(fleet.service_name, SERVICE);
    let device = |i: usize| {
        let d = &fleet.devices[i];
        Device {
            id: d.id,
            uuid: d.uuid.clone(),
            key: d.key.clone(),
            service_install: d.service_install_id,
        }
    };
    Backend {
        url: fleet.api_url.trim_end_matches('/').to_string(),
        user_key: fleet.user_key.clone(),
        fleet_key: fleet.provisioning_key.clone(),
        devices: [device(0), device(1)],
        _emulator: None,
    }
}

/// The emulator seeded like fixture.py seeds a fleet.
async fn emulator_backend() -> Backend {
    let emu = BalenaEmulator::start().await.expect("emulator starts");
    // Rows of another fleet first, so that device ids and service-install ids differ (as on any
    // real server): the comparison names ids by what they are, and equal numbers would be
    // ambiguous.
    let other = emu.add_application("other-fleet");
    emu.add_service(other, "one");
    emu.add_service(other, "two");
    for _ in 0..3 {
        emu.add_device(other, &random_hex());
    }
    let app = emu.add_application("fixture-fleet");
    emu.add_service(app, SERVICE);
    let user_key = random_hex();
    emu.add_user_key(&user_key);
    let fleet_key = random_hex();
    emu.add_fleet_key(app, &fleet_key);
    let device = |_: usize| {
        let uuid = random_hex();
        let id = emu.add_device(app, &uuid);
        let key = random_hex();
        emu.add_device_key(id, &key);
        let service_install = emu
            .service_install_id(id, SERVICE)
            .expect("service installed");
        Device {
            id,
            uuid,
            key,
            service_install,
        }
    };
    let devices = [device(0), device(1)];
    Backend {
        url: emu.url(),
        user_key,
        fleet_key,
        devices,
        _emulator: Some(emu),
    }
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Both backends, the real one first (it fails with a clear message when it is not running).
async fn backends() -> (Backend, Backend) {
    (real_backend().await, emulator_backend().await)
}

impl Backend {
    /// `template` with `{dev_a}`, `{uuid_a}`, `{si_a}` (and `_b`), `{missing}` filled in.
    fn fill(&self, template: &str) -> String {
        let [a, b] = &self.devices;
        template
            .replace("{dev_a}", &a.id.to_string())
            .replace("{dev_b}", &b.id.to_string())
            .replace("{uuid_a}", &a.uuid)
            .replace("{uuid_b}", &b.uuid)
            .replace("{si_a}", &a.service_install.to_string())
            .replace("{si_b}", &b.service_install.to_string())
            .replace("{missing}", &MISSING_ID.to_string())
    }

    /// How an outcome names a device id of this fleet (ids differ between the backends).
    fn device_name(&self, id: i64) -> String {
        let [a, b] = &self.devices;
        Self::name_of(id, &[(a.id, "{dev_a}"), (b.id, "{dev_b}")])
    }

    /// How an outcome names a service-install id of this fleet. Named by role, not by number
    /// alone: a device and a service install often have the same id.
    fn install_name(&self, id: i64) -> String {
        let [a, b] = &self.devices;
        Self::name_of(
            id,
            &[(a.service_install, "{si_a}"), (b.service_install, "{si_b}")],
        )
    }

    fn name_of(id: i64, names: &[(i64, &str)]) -> String {
        names
            .iter()
            .find(|(known, _)| *known == id)
            .map_or_else(|| "{other id}".into(), |(_, name)| name.to_string())
    }

    fn key(&self, key: Key) -> Option<String> {
        match key {
            Key::User => Some(self.user_key.clone()),
            Key::Fleet => Some(self.fleet_key.clone()),
            Key::DeviceA => Some(self.devices[0].key.clone()),
            Key::Unknown => Some("not-a-key-of-this-server".into()),
            Key::None => None,
        }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("url with a port")
    }
}

#[derive(Clone, Copy, Debug)]
enum Key {
    User,
    /// The fleet's provisioning key: `whoami` knows it, it may read and write no device.
    Fleet,
    DeviceA,
    Unknown,
    None,
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP and what an answer looks like
// ---------------------------------------------------------------------------------------------

/// An answer to a raw request.
struct RawAnswer {
    status: u16,
    body: String,
}

/// Sends exactly `target` (no URL library in between to re-encode it) over HTTP/1.1.
async fn raw_request(
    base: &str,
    method: &str,
    target: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> RawAnswer {
    let authority = base.strip_prefix("http://").expect("an http:// base URL");
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connects");
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or(""));
    stream
        .write_all(head.as_bytes())
        .await
        .expect("request written");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("answered within 30 s")
        .expect("answer read");
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> RawAnswer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut body = raw[end + 4..].to_vec();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    RawAnswer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&raw[start..start + size]);
        raw = &raw[start + size + 2..];
    }
    out
}

/// What an answer is compared by: the body's shape, and error texts word for word.
#[derive(Debug, PartialEq)]
enum Shape {
    Empty,
    /// A JSON string (how pinejs words errors).
    Text(String),
    /// Any other JSON, every string, number and key-bearing value reduced to its type.
    Json(Value),
    NotJson,
}

fn shape(body: &str) -> Shape {
    if body.is_empty() {
        return Shape::Empty;
    }
    match serde_json::from_str::<Value>(body) {
        Ok(Value::String(text)) => Shape::Text(text),
        Ok(value) => Shape::Json(type_of(&value)),
        Err(_) => Shape::NotJson,
    }
}

/// The JSON structure with each leaf replaced by its type (arrays keep their length).
fn type_of(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), type_of(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(type_of).collect()),
        Value::String(_) => json!("<string>"),
        Value::Number(_) => json!("<number>"),
        other => other.clone(),
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Empty => write!(f, "(empty)"),
            Shape::Text(t) => write!(f, "{t:?}"),
            Shape::Json(v) => write!(f, "{v}"),
            Shape::NotJson => write!(f, "(not JSON)"),
        }
    }
}

/// One compared case, for the table and the verdict.
struct Compared {
    method: String,
    case: String,
    real: (u16, Shape),
    emulator: (u16, Shape),
}

impl Compared {
    fn agrees(&self) -> bool {
        self.real == self.emulator
    }
}

/// Prints the table, then fails listing every disagreement.
fn report(title: &str, rows: &[Compared]) {
    println!("\n{title}");
    println!("{:<7} {:<72} {:>4} {:>4}", "method", "case", "real", "emu");
    for row in rows {
        let mark = if row.agrees() { "" } else { "  <-- DIFFERS" };
        println!(
            "{:<7} {:<72} {:>4} {:>4}{mark}",
            row.method,
            truncate(&row.case, 72),
            row.real.0,
            row.emulator.0
        );
    }
    let differences: Vec<String> = rows
        .iter()
        .filter(|r| !r.agrees())
        .map(|r| {
            format!(
                "{} {}\n    real:     {} {}\n    emulator: {} {}",
                r.method, r.case, r.real.0, r.real.1, r.emulator.0, r.emulator.1
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "{title}: the emulator and the real server disagree on {} case(s):\n{}",
        differences.len(),
        differences.join("\n")
    );
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The product's client
// ---------------------------------------------------------------------------------------------

/// The variable names the client reads.
const NAMES: &[&str] = &["PROV_A", "PROV_B", "PROV_C", "PROV_D"];

/// A value with every character that matters in a URL or to OData.
const AWKWARD: &str = "it's a 'quoted' value: 100% + (parens), commas; semi=eq & amp #hash ?q é ✓ /slash \\ \"dq\" ''";

/// Runs every client call against `backend` through a recording proxy; returns the outcomes
/// (ids put back as names) and the proxy's log of (method, target, status).
async fn client_story(backend: &Backend) -> (Vec<String>, Vec<(String, String, Option<u16>)>) {
    let traffic = Traffic::new();
    let proxy = FaultProxy::start("balena", backend.port(), Flavour::Balena, traffic.clone())
        .await
        .expect("proxy starts");
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    // One attempt: a retried call would make the two logs differ for no reason.
    let retry = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    let client = BalenaClient::new(
        http,
        &proxy.url(),
        Secret::new(backend.user_key.clone()),
        retry,
    );
    let deadline = || Deadline::after(Duration::from_secs(60));
    let [a, b] = &backend.devices;
    let uuid_a = DeviceUuid::parse(&a.uuid).expect("uuid");
    let uuid_b = DeviceUuid::parse(&b.uuid).expect("uuid");
    let unknown_uuid = DeviceUuid::parse(&"0".repeat(32)).expect("uuid");
    let service = ServiceName::parse(SERVICE).expect("service");
    let no_service = ServiceName::parse("no-such-service").expect("service");
    let on_device = VarTarget::Device {
        device_id: BalenaDeviceId(a.id),
    };
    let on_service = VarTarget::Service {
        service_install_id: a.service_install,
    };
    let mut out = Vec::new();
    let mut note = |what: String| out.push(what);

    // What a caller's key sees: the whole read, with the device's own key too (the proof).
    for (label, key, uuid, svc) in [
        ("device A's key, device A", a.key.as_str(), &uuid_a, None),
        (
            "device A's key, device A/service",
            a.key.as_str(),
            &uuid_a,
            Some(service.clone()),
        ),
        ("device A's key, device B", a.key.as_str(), &uuid_b, None),
        (
            "user key, device A",
            backend.user_key.as_str(),
            &uuid_a,
            None,
        ),
        (
            "unknown key, device A",
            "not-a-key-of-this-server",
            &uuid_a,
            None,
        ),
        (
            "user key, unknown uuid",
            backend.user_key.as_str(),
            &unknown_uuid,
            None,
        ),
    ] {
        let seen = client
            .read_device_as(deadline(), &Secret::new(key), uuid, svc.as_ref(), NAMES)
            .await;
        note(format!("read as ({label}) = {}", describe(backend, seen)));
    }

    let read = |service: Option<ServiceName>, uuid: DeviceUuid| {
        let client = &client;
        async move {
            describe(
                backend,
                client
                    .read_device(deadline(), &uuid, service.as_ref(), NAMES)
                    .await,
            )
        }
    };
    note(format!("read A = {}", read(None, uuid_a.clone()).await));
    note(format!(
        "read A/service = {}",
        read(Some(service.clone()), uuid_a.clone()).await
    ));
    note(format!(
        "read A/no-such-service = {}",
        read(Some(no_service.clone()), uuid_a.clone()).await
    ));
    note(format!(
        "read unknown = {}",
        read(None, unknown_uuid.clone()).await
    ));

    // Creating, writing and deleting variables, on the device and on its service.
    for target in [on_device, on_service] {
        let svc = matches!(target, VarTarget::Service { .. }).then(|| service.clone());
        let v = |s: &str| Secret::new(s);
        note(format!(
            "create PROV_A = {:?}",
            client
                .create_var(deadline(), target, "PROV_A", &v("v1"))
                .await
        ));
        note(format!(
            "create PROV_A again = {:?}",
            client
                .create_var(deadline(), target, "PROV_A", &v("v1"))
                .await
        ));
        note(format!(
            "write PROV_B (new) = {:?}",
            client
                .write_var(deadline(), target, None, "PROV_B", &v(AWKWARD))
                .await
        ));
        let second = format!("{AWKWARD} second");
        note(format!(
            "write PROV_B (exists, unknown) = {:?}",
            client
                .write_var(deadline(), target, None, "PROV_B", &v(&second))
                .await
        ));
        let record = client
            .read_device(deadline(), &uuid_a, svc.as_ref(), NAMES)
            .await;
        note(format!("read = {}", describe(backend, record.clone())));
        let prov_a = record
            .ok()
            .flatten()
            .and_then(|r| r.vars.get("PROV_A").map(|v| v.id))
            .expect("PROV_A stored");
        note(format!(
            "write PROV_A (by id) = {:?}",
            client
                .write_var(deadline(), target, Some(prov_a), "PROV_A", &v("v2"))
                .await
        ));
        // balena answers a PATCH of a row that is gone 200, not 404: nothing is written.
        note(format!(
            "write PROV_C (stale id) = {:?}",
            client
                .write_var(deadline(), target, Some(MISSING_ID), "PROV_C", &v("v3"))
                .await
        ));
        note(format!(
            "write PROV_D (line break) = {:?}",
            client
                .write_var(deadline(), target, None, "PROV_D", &v("a\nb"))
                .await
        ));
        note(format!(
            "read = {}",
            read(svc.clone(), uuid_a.clone()).await
        ));
        note(format!(
            "delete_var_if PROV_B (other value) = {:?}",
            client
                .delete_var_if(deadline(), target, "PROV_B", &v(AWKWARD))
                .await
        ));
        note(format!(
            "read = {}",
            read(svc.clone(), uuid_a.clone()).await
        ));
        note(format!(
            "delete_var_if PROV_B = {:?}",
            client
                .delete_var_if(deadline(), target, "PROV_B", &v(&second))
                .await
        ));
        let long = "x".repeat(3000);
        note(format!(
            "create PROV_C (3000 chars) = {:?}",
            client
                .create_var(deadline(), target, "PROV_C", &v(&long))
                .await
        ));
        note(format!(
            "delete_var_if PROV_C (3000 chars) = {:?}",
            client
                .delete_var_if(deadline(), target, "PROV_C", &v(&long))
                .await
        ));
        note(format!(
            "delete_var_rows [PROV_A] = {:?}",
            client.delete_var_rows(deadline(), target, &[prov_a]).await
        ));
        note(format!(
            "delete_var_rows [missing] = {:?}",
            client
                .delete_var_rows(deadline(), target, &[MISSING_ID])
                .await
        ));
        note(format!(
            "create PROV_D = {:?}",
            client
                .create_var(deadline(), target, "PROV_D", &v("d"))
                .await
        ));
        note(format!(
            "read = {}",
            read(svc.clone(), uuid_a.clone()).await
        ));
        note(format!(
            "delete_vars [all] = {:?}",
            client.delete_vars(deadline(), target, NAMES).await
        ));
        note(format!(
            "read = {}",
            read(svc.clone(), uuid_a.clone()).await
        ));
    }

    // The lock.
    note(format!(
        "try_lock 1 = {:?}",
        client
            .try_lock(deadline(), BalenaDeviceId(a.id), 1, "held")
            .await
    ));
    note(format!(
        "try_lock 1 again = {:?}",
        client
            .try_lock(deadline(), BalenaDeviceId(a.id), 1, "held")
            .await
    ));
    note(format!(
        "try_lock 2 = {:?}",
        client
            .try_lock(deadline(), BalenaDeviceId(a.id), 2, "held by 2")
            .await
    ));
    note(format!(
        "try_lock on a missing device = {:?}",
        client
            .try_lock(deadline(), BalenaDeviceId(MISSING_ID), 1, "held")
            .await
    ));
    note(format!(
        "rewrite_lock 1 = {:?}",
        client
            .rewrite_lock(
                deadline(),
                BalenaDeviceId(a.id),
                1,
                "held",
                "goal key ab:cd for device's vars"
            )
            .await
    ));
    note(format!(
        "rewrite_lock 1 (not holding) = {:?}",
        client
            .rewrite_lock(deadline(), BalenaDeviceId(a.id), 1, "held", "stolen")
            .await
    ));
    let record = client.read_device(deadline(), &uuid_a, None, NAMES).await;
    note(format!("read = {}", describe(backend, record.clone())));
    let lock_ids: Vec<i64> = record
        .ok()
        .flatten()
        .map(|r| {
            r.locks
                .iter()
                .filter(|l| l.generation == 1)
                .map(|l| l.id)
                .collect()
        })
        .unwrap_or_default();
    note(format!(
        "delete_locks [1] = {:?}",
        client
            .delete_locks(deadline(), BalenaDeviceId(a.id), &lock_ids)
            .await
    ));
    note(format!(
        "delete_locks [missing] = {:?}",
        client
            .delete_locks(deadline(), BalenaDeviceId(a.id), &[MISSING_ID])
            .await
    ));
    note(format!("read = {}", read(None, uuid_a.clone()).await));

    let log = traffic
        .log()
        .into_iter()
        .map(|e| (e.method, e.target, e.status))
        .collect();
    (out, log)
}

/// A read's outcome without its row ids (which differ between backends).
fn describe(
    backend: &Backend,
    read: Result<Option<DeviceRecord>, provision_core::error::UpstreamFailure>,
) -> String {
    match read {
        Err(e) => format!("Err({e:?})"),
        Ok(None) => "no device".into(),
        Ok(Some(r)) => {
            let target = match r.target {
                None => "none".to_string(),
                Some(VarTarget::Device { device_id }) => {
                    format!("device {}", backend.device_name(device_id.0))
                }
                Some(VarTarget::Service { service_install_id }) => {
                    format!(
                        "service install {}",
                        backend.install_name(service_install_id)
                    )
                }
            };
            let vars: Vec<String> = r
                .vars
                .iter()
                .map(|(k, v)| format!("{k}={:?}", v.value.expose()))
                .collect();
            let locks: Vec<String> = r
                .locks
                .iter()
                .map(|l| format!("{}:{:?}", l.generation, l.value))
                .collect();
            format!(
                "device {} target {target} vars [{}] locks [{}]",
                backend.device_name(r.device_id.0),
                vars.join(", "),
                locks.join(", ")
            )
        }
    }
}

/// The request's method and target with what differs per backend made uniform.
fn request_label(method: &str, target: &str) -> String {
    provision_emulators::fault_proxy::label("balena", method, target)
}

#[tokio::test]
async fn the_product_client_gets_the_same_answers() {
    let (real, emulator) = backends().await;
    let (real_outcomes, real_log) = client_story(&real).await;
    let (emulator_outcomes, emulator_log) = client_story(&emulator).await;

    // The calls' outcomes, one by one.
    let mut rows = Vec::new();
    for (i, (r, e)) in real_outcomes.iter().zip(&emulator_outcomes).enumerate() {
        let agree = r == e;
        rows.push(Compared {
            method: "client".into(),
            case: r.split(" = ").next().unwrap_or(r).to_string(),
            real: (i as u16, Shape::Text(r.clone())),
            emulator: (
                i as u16,
                Shape::Text(if agree { r.clone() } else { e.clone() }),
            ),
        });
    }
    assert_eq!(real_outcomes.len(), emulator_outcomes.len());
    report("BalenaClient calls (columns: step number)", &rows);
    // What the flow relies on, on the real server: a lock on a device deleted meanwhile is not
    // a lost race (the flow answers 404 for it, not busy).
    let gone = real_outcomes
        .iter()
        .find(|o| o.starts_with("try_lock on a missing device"))
        .expect("the missing-device lock outcome");
    assert!(gone.contains("status: 404"), "{gone}");

    // The raw requests the client made: the same requests, the same statuses.
    let mut rows = Vec::new();
    assert_eq!(
        real_log.len(),
        emulator_log.len(),
        "as many requests on both"
    );
    for ((rm, rt, rs), (em, et, es)) in real_log.iter().zip(&emulator_log) {
        let label = request_label(rm, rt);
        assert_eq!(
            (rm, label.clone()),
            (em, request_label(em, et)),
            "the client sent different requests:\n  real:     {rt}\n  emulator: {et}"
        );
        rows.push(Compared {
            method: rm.clone(),
            case: label.trim_start_matches("balena ").to_string(),
            real: (rs.unwrap_or(0), Shape::Empty),
            emulator: (es.unwrap_or(0), Shape::Empty),
        });
    }
    report(
        "the client's requests through the recording proxy (status only)",
        &rows,
    );

    // Replayed byte for byte: every read and every write by filter or id, again.
    let mut rows = Vec::new();
    for ((method, real_target, _), (_, emulator_target, _)) in real_log.iter().zip(&emulator_log) {
        if method == "POST" {
            // POST targets are bare collections; their bodies are covered by the cases below.
            continue;
        }
        let body = (method == "PATCH").then_some(r#"{"value":"replayed"}"#);
        let r = raw_request(&real.url, method, real_target, Some(&real.user_key), body).await;
        let e = raw_request(
            &emulator.url,
            method,
            emulator_target,
            Some(&emulator.user_key),
            body,
        )
        .await;
        rows.push(Compared {
            method: method.clone(),
            case: format!(
                "replay {}",
                request_label(method, real_target).trim_start_matches("balena ")
            ),
            real: (r.status, shape(&r.body)),
            emulator: (e.status, shape(&e.body)),
        });
    }
    report("the client's raw requests replayed", &rows);
}

// ---------------------------------------------------------------------------------------------
// 2. Corner cases as raw HTTP
// ---------------------------------------------------------------------------------------------

/// A hand-written request: `{…}` names in the target and body are filled in per backend.
struct Case {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    key: Key,
    body: Option<&'static str>,
}

const fn case(
    name: &'static str,
    method: &'static str,
    target: &'static str,
    key: Key,
    body: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        target,
        key,
        body,
    }
}

/// In order: later cases see what earlier ones wrote, on both backends alike.
const CASES: &[Case] = &[
    // Who holds a key: the caller's proof.
    case("whoami, no key", "GET", "/actor/v1/whoami", Key::None, None),
    case(
        "whoami, unknown key",
        "GET",
        "/actor/v1/whoami",
        Key::Unknown,
        None,
    ),
    case(
        "whoami, device key",
        "GET",
        "/actor/v1/whoami",
        Key::DeviceA,
        None,
    ),
    case(
        "whoami, user key",
        "GET",
        "/actor/v1/whoami",
        Key::User,
        None,
    ),
    case(
        "whoami, fleet key",
        "GET",
        "/actor/v1/whoami",
        Key::Fleet,
        None,
    ),
    case(
        "fleet key, devices",
        "GET",
        "/v7/device?$select=id",
        Key::Fleet,
        None,
    ),
    case(
        "fleet key, a tag",
        "POST",
        "/v7/device_tag",
        Key::Fleet,
        Some(r#"{"device": {dev_a}, "tag_key": "fleet-key-tag", "value": "x"}"#),
    ),
    case(
        "whoami, POST",
        "POST",
        "/actor/v1/whoami",
        Key::DeviceA,
        None,
    ),
    // Keys.
    case("no key", "GET", "/v7/device?$select=id", Key::None, None),
    case(
        "unknown key",
        "GET",
        "/v7/device?$select=id",
        Key::Unknown,
        None,
    ),
    case(
        "device key, own device",
        "GET",
        "/v7/device?$select=id,uuid",
        Key::DeviceA,
        None,
    ),
    case(
        "device key, another device",
        "GET",
        "/v7/device?$select=id,uuid&$filter=uuid%20eq%20'{uuid_b}'",
        Key::DeviceA,
        None,
    ),
    case(
        "device key in ?apikey=",
        "GET",
        "/v7/device?$select=id&apikey={key_a}",
        Key::None,
        None,
    ),
    // Missing rows and filters that match nothing.
    case(
        "GET by an id that does not exist",
        "GET",
        "/v7/device({missing})",
        Key::User,
        None,
    ),
    case(
        "GET by an alternate key that does not exist",
        "GET",
        "/v7/device(uuid='{missing}')?$select=id",
        Key::User,
        None,
    ),
    case(
        "GET, filter matching nothing",
        "GET",
        "/v7/device_tag?$select=id&$filter=id%20eq%20{missing}",
        Key::User,
        None,
    ),
    case(
        "PATCH, filter matching nothing",
        "PATCH",
        "/v7/device_tag?$filter=id%20eq%20{missing}",
        Key::User,
        Some(r#"{"value":"x"}"#),
    ),
    case(
        "DELETE, filter matching nothing",
        "DELETE",
        "/v7/device_tag?$filter=id%20eq%20{missing}",
        Key::User,
        None,
    ),
    case(
        "PATCH by an id that does not exist",
        "PATCH",
        "/v7/device_tag({missing})",
        Key::User,
        Some(r#"{"value":"x"}"#),
    ),
    case(
        "DELETE by an id that does not exist",
        "DELETE",
        "/v7/device_tag({missing})",
        Key::User,
        None,
    ),
    case(
        "PATCH with no fields",
        "PATCH",
        "/v7/device_tag?$filter=id%20eq%20{missing}",
        Key::User,
        Some("{}"),
    ),
    // Creating, and duplicates.
    case(
        "POST device_tag",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"diff-tag","value":"v"}"#),
    ),
    // balena's tag-key rules (a device's own key may write its tags).
    case(
        "POST device_tag, key with whitespace",
        "POST",
        "/v7/device_tag",
        Key::DeviceA,
        Some(r#"{"device":{dev_a},"tag_key":"a b","value":"v"}"#),
    ),
    case(
        "POST device_tag, io.balena. key",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"io.balena.x","value":"v"}"#),
    ),
    case(
        "POST device_tag, io.resin. key",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"io.resin.x","value":"v"}"#),
    ),
    case(
        "POST device_tag, empty key",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"","value":"v"}"#),
    ),
    case(
        "POST device_tag, 100-character key",
        "POST",
        "/v7/device_tag",
        Key::DeviceA,
        Some(
            r#"{"device":{dev_a},"tag_key":"tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt","value":"v"}"#,
        ),
    ),
    case(
        "POST device_tag, 101-character key",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(
            r#"{"device":{dev_a},"tag_key":"ttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt","value":"v"}"#,
        ),
    ),
    case(
        "POST device_tag, duplicate",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"diff-tag","value":"w"}"#),
    ),
    case(
        "GET device_tag, every field",
        "GET",
        "/v7/device_tag?$filter=device%20eq%20{dev_a}",
        Key::User,
        None,
    ),
    case(
        "POST device variable",
        "POST",
        "/v7/device_environment_variable",
        Key::User,
        Some(r#"{"device":{dev_a},"name":"DIFF_VAR","value":"x+y %,()'"}"#),
    ),
    case(
        "POST device variable, duplicate",
        "POST",
        "/v7/device_environment_variable",
        Key::User,
        Some(r#"{"device":{dev_a},"name":"DIFF_VAR","value":"v"}"#),
    ),
    case(
        "POST service variable",
        "POST",
        "/v7/device_service_environment_variable",
        Key::User,
        Some(r#"{"service_install":{si_a},"name":"DIFF_VAR","value":"x+y %,()'"}"#),
    ),
    case(
        "POST service variable, duplicate",
        "POST",
        "/v7/device_service_environment_variable",
        Key::User,
        Some(r#"{"service_install":{si_a},"name":"DIFF_VAR","value":"v"}"#),
    ),
    case(
        "PATCH device_tag onto an existing key",
        "PATCH",
        "/v7/device_tag?$filter=device%20eq%20{dev_a}",
        Key::User,
        Some(r#"{"tag_key":"diff-tag"}"#),
    ),
    // Foreign keys to rows that do not exist.
    case(
        "POST device_tag, missing device",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{missing},"tag_key":"k","value":"v"}"#),
    ),
    case(
        "POST device variable, missing device",
        "POST",
        "/v7/device_environment_variable",
        Key::User,
        Some(r#"{"device":{missing},"name":"K","value":"v"}"#),
    ),
    case(
        "POST service variable, missing install",
        "POST",
        "/v7/device_service_environment_variable",
        Key::User,
        Some(r#"{"service_install":{missing},"name":"K","value":"v"}"#),
    ),
    case(
        "PATCH device variable to a missing device",
        "PATCH",
        "/v7/device_environment_variable?$filter=device%20eq%20{dev_a}",
        Key::User,
        Some(r#"{"device":{missing}}"#),
    ),
    // Line breaks.
    case(
        "POST device variable with a line break",
        "POST",
        "/v7/device_environment_variable",
        Key::User,
        Some(r#"{"device":{dev_a},"name":"LB","value":"a\nb"}"#),
    ),
    case(
        "POST service variable with a carriage return",
        "POST",
        "/v7/device_service_environment_variable",
        Key::User,
        Some(r#"{"service_install":{si_a},"name":"LB","value":"a\rb"}"#),
    ),
    case(
        "PATCH variable with a line break, nothing matched",
        "PATCH",
        "/v7/device_environment_variable?$filter=id%20eq%20{missing}",
        Key::User,
        Some(r#"{"value":"a\nb"}"#),
    ),
    case(
        "POST device_tag with a line break (allowed)",
        "POST",
        "/v7/device_tag",
        Key::User,
        Some(r#"{"device":{dev_a},"tag_key":"lb","value":"a\nb"}"#),
    ),
    // Permissions of a device key.
    case(
        "device key, POST another device's variable",
        "POST",
        "/v7/device_environment_variable",
        Key::DeviceA,
        Some(r#"{"device":{dev_b},"name":"K","value":"v"}"#),
    ),
    case(
        "device key, POST another device's tag",
        "POST",
        "/v7/device_tag",
        Key::DeviceA,
        Some(r#"{"device":{dev_b},"tag_key":"k","value":"v"}"#),
    ),
    case(
        "device key, POST another device's service variable",
        "POST",
        "/v7/device_service_environment_variable",
        Key::DeviceA,
        Some(r#"{"service_install":{si_b},"name":"K","value":"v"}"#),
    ),
    case(
        "device key, POST a tag on a missing device",
        "POST",
        "/v7/device_tag",
        Key::DeviceA,
        Some(r#"{"device":{missing},"tag_key":"k","value":"v"}"#),
    ),
    case(
        "device key, PATCH another device's variables",
        "PATCH",
        "/v7/device_environment_variable?$filter=device%20eq%20{dev_b}",
        Key::DeviceA,
        Some(r#"{"value":"v"}"#),
    ),
    case(
        "device key, GET another device's variables",
        "GET",
        "/v7/device_environment_variable?$select=id&$filter=device%20eq%20{dev_b}",
        Key::DeviceA,
        None,
    ),
    case(
        "device key, POST its own variable",
        "POST",
        "/v7/device_environment_variable",
        Key::DeviceA,
        Some(r#"{"device":{dev_a},"name":"OWN","value":"v"}"#),
    ),
    // URL encodings: syntax must be literal.
    case(
        "$select with %2C",
        "GET",
        "/v7/device?$select=id%2Cuuid",
        Key::User,
        None,
    ),
    case(
        "$expand with %28 %24 %3D %29",
        "GET",
        "/v7/device?$select=id&$expand=device_tag%28%24select%3Did%29",
        Key::User,
        None,
    ),
    case(
        "$expand with %3B",
        "GET",
        "/v7/device({dev_a})?$select=id&$expand=device_tag($select=id%3Btag_key)",
        Key::User,
        None,
    ),
    case(
        "$filter with %3D-free but %28 grouping",
        "GET",
        "/v7/device?$select=id&$filter=%28id%20eq%20{dev_a}%29",
        Key::User,
        None,
    ),
    case(
        "path with %28",
        "GET",
        "/v7/device%28{dev_a})?$select=id",
        Key::User,
        None,
    ),
    case(
        "path with %24count",
        "GET",
        "/v7/device/%24count?$filter=id%20eq%20{dev_a}",
        Key::User,
        None,
    ),
    case(
        "an escaped letter",
        "GET",
        "/v7/device?$select=%69d&$filter=id%20eq%20{dev_a}",
        Key::User,
        None,
    ),
    case(
        "%24select",
        "GET",
        "/v7/device?%24select=id&%24filter=id%20eq%20{dev_a}",
        Key::User,
        None,
    ),
    case(
        "%24 inside $expand",
        "GET",
        "/v7/device({dev_a})?$select=id&$expand=device_tag(%24select=tag_key;%24filter=tag_key%20eq%20'diff-tag')",
        Key::User,
        None,
    ),
    case(
        "%27 apostrophes",
        "GET",
        "/v7/device?$select=id&$filter=uuid%20eq%20%27{uuid_a}%27",
        Key::User,
        None,
    ),
    case(
        "+ as space",
        "GET",
        "/v7/device?$select=id&$filter=uuid+eq+'{uuid_a}'",
        Key::User,
        None,
    ),
    case(
        "%2B sign",
        "GET",
        "/v7/device?$select=id&$filter=id%20eq%20%2B{dev_a}",
        Key::User,
        None,
    ),
    case(
        "$count",
        "GET",
        "/v7/device/$count?$filter=id%20eq%20{dev_a}",
        Key::User,
        None,
    ),
    case(
        "literal: encoded content, + stays +",
        "GET",
        "/v7/device_environment_variable?$select=name,value&$filter=device%20eq%20{dev_a}%20and%20value%20eq%20'x+y%20%25%2C%28%29'''",
        Key::User,
        None,
    ),
    case(
        "literal: %2B is +",
        "GET",
        "/v7/device_environment_variable?$select=name&$filter=device%20eq%20{dev_a}%20and%20value%20eq%20'x%2By%20%25,()%27%27'",
        Key::User,
        None,
    ),
    case(
        "literal: + is not a space",
        "GET",
        "/v7/device_environment_variable?$select=name&$filter=device%20eq%20{dev_a}%20and%20value%20eq%20'x%20y%20%25%2C()'''",
        Key::User,
        None,
    ),
    case(
        "literal: a lone %27 ends it",
        "GET",
        "/v7/device_tag?$select=id&$filter=tag_key%20eq%20'a%27'",
        Key::User,
        None,
    ),
    case(
        "literal: bad escape",
        "GET",
        "/v7/device_tag?$select=id&$filter=tag_key%20eq%20'a%2'",
        Key::User,
        None,
    ),
    case(
        "literal: %2527 is %27",
        "GET",
        "/v7/device_tag?$select=id&$filter=tag_key%20eq%20'a%2527'",
        Key::User,
        None,
    ),
    case(
        "filter syntax error",
        "GET",
        "/v7/device?$filter=id%20eq",
        Key::User,
        None,
    ),
    case(
        "unknown $ option",
        "GET",
        "/v7/device?$select=id&$bogus=1",
        Key::User,
        None,
    ),
    case(
        "repeated $select: the last wins",
        "GET",
        "/v7/device({dev_a})?$select=id&$select=uuid",
        Key::User,
        None,
    ),
    case(
        "DELETE by filter with literal syntax",
        "DELETE",
        "/v7/device_tag?$filter=device%20eq%20{dev_a}%20and%20tag_key%20eq%20'diff-tag'",
        Key::User,
        None,
    ),
    case(
        "GET after the DELETE",
        "GET",
        "/v7/device_tag?$select=tag_key&$filter=device%20eq%20{dev_a}",
        Key::User,
        None,
    ),
];

#[tokio::test]
async fn corner_cases_get_the_same_answers() {
    let (real, emulator) = backends().await;
    let mut rows = Vec::new();
    for case in CASES {
        let mut answers = Vec::new();
        for backend in [&real, &emulator] {
            let target = backend
                .fill(case.target)
                .replace("{key_a}", &backend.devices[0].key);
            let body = case.body.map(|b| backend.fill(b));
            let key = backend.key(case.key);
            let answer = raw_request(
                &backend.url,
                case.method,
                &target,
                key.as_deref(),
                body.as_deref(),
            )
            .await;
            // The text names the request, which holds this backend's ids.
            let text = answer.body.replace(&target, "<this request>");
            answers.push((answer.status, shape(&text)));
        }
        let emulator_answer = answers.pop().expect("two answers");
        let real_answer = answers.pop().expect("two answers");
        rows.push(Compared {
            method: case.method.into(),
            case: case.name.into(),
            real: real_answer,
            emulator: emulator_answer,
        });
    }
    report("corner cases as raw HTTP", &rows);
    // The cases pin what they are about, not only agreement: check a few answers themselves.
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.case == name)
            .map(|r| &r.real)
            .expect("case present")
    };
    assert_eq!(
        *find("POST device_tag, duplicate"),
        (
            409,
            Shape::Text(r#""device" and "tag_key" must be unique."#.into())
        )
    );
    assert_eq!(
        *find("POST service variable, duplicate"),
        (
            409,
            Shape::Text(r#""device" and "service" and "name" must be unique."#.into())
        )
    );
    assert_eq!(
        *find("$select with %2C"),
        (400, Shape::Text("Malformed url: '<this request>'".into()))
    );
    assert_eq!(*find("PATCH, filter matching nothing"), (200, Shape::Empty));
    assert_eq!(
        *find("GET by an id that does not exist"),
        (200, Shape::Json(json!({"d": []})))
    );
}
