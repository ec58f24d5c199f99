//! The fault-injection matrix: for one cloud, each operation (POST for a new device, POST that
//! repairs, rotation, DELETE), each upstream call the operation makes (found by running it once
//! without faults and reading the fault proxies' log) and each way a call can fail (500, 429
//! with `Retry-After`, a hung connection, a reset), run the operation with exactly that call
//! failing, retries included, and check:
//!
//! * the answer: the operation's success, or a JSON 502/503 upstream error (503 with
//!   `Retry-After`), before the request budget is over, with no panic in the function's logs;
//! * the invariants, right after: no active credential of the device that its variables do not
//!   name, no variable naming a credential that is not active, nothing this request made left
//!   behind (credentials anywhere in the registry, a registry entry for a device that has no
//!   variables, the device's lock still held);
//! * convergence: one retry without faults (POST, or DELETE for DELETE) ends fully provisioned
//!   (or fully removed).
//!
//! One exception, by design: when the failing call is the release of the device's lock, the
//! lock stays held until it expires (the request's budget plus 5 s). The work it guarded is
//! done, and the retry of a finished operation does not need the lock.
//!
//! Every operation runs in its own world (emulators, proxies, function process), the four at
//! once; the cells of one operation run one after another, each on a device of its own.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::FutureExt;
use provision_core::Cloud;
use provision_emulators::fault_proxy::{Exchange, FaultKind, PlannedFault, Traffic};

use crate::checks::{self, Target};
use crate::events::{Answer, Call};
use crate::stack::Stack;
use crate::world::{Device, Options};

/// The operations of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// POST for a device with nothing provisioned.
    New,
    /// POST for a device whose stored variables no longer match its credential.
    Repair,
    /// POST with `rotate: true` for a provisioned device.
    Rotate,
    /// DELETE for a provisioned device.
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::New,
        Operation::Repair,
        Operation::Rotate,
        Operation::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::New => "POST new",
            Operation::Repair => "POST repair",
            Operation::Rotate => "rotate",
            Operation::Delete => "DELETE",
        }
    }

    /// What the operation answers when it succeeds.
    fn success(self) -> (u16, &'static str) {
        match self {
            Operation::New => (201, "created"),
            Operation::Repair => (200, "repaired"),
            Operation::Rotate => (200, "rotated"),
            Operation::Delete => (200, "deleted"),
        }
    }
}

/// The ways a call fails in the matrix.
pub const KINDS: [FaultKind; 4] = [
    FaultKind::ServerError,
    FaultKind::Throttled { retry_after: 1 },
    FaultKind::Hang,
    FaultKind::Reset,
];

/// Every client the functions use makes four attempts per call (the balenaCloud and ClearBlade
/// clients' policy, the AWS SDK's `max_attempts`, azure_core's three retries): a fault on a
/// call fails all of them.
const ATTEMPTS: usize = 4;
/// The budget and one attempt's limit the matrix's functions run with: a hung call then costs
/// four short attempts, not the production eight seconds each.
const BUDGET_MS: u64 = 12_000;
const UPSTREAM_TIMEOUT_MS: u64 = 300;
/// One attempt's limit against the real API server, which is slower (see `options`); a hung
/// call then costs 6 s of the 12.
const REAL_SERVER_TIMEOUT_MS: u64 = 1_500;

/// One cell's outcome.
#[derive(Clone, Debug)]
pub struct Cell {
    pub operation: Operation,
    pub label: String,
    pub occurrence: usize,
    pub kind: FaultKind,
    /// What the faulted request answered: status and `status`/`code`.
    pub answer: String,
    pub problems: Vec<String>,
}

impl Cell {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Runs the whole matrix for one cloud and returns its cells.
pub async fn run<S: Stack>() -> Vec<Cell> {
    let runs = Operation::ALL.map(|op| operation::<S>(op));
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The table of one cloud's cells: one row per call, one column per fault kind.
pub fn table(cloud: Cloud, cells: &[Cell]) -> String {
    let mut out = String::new();
    let passed = cells.iter().filter(|c| c.passed()).count();
    let _ = writeln!(
        out,
        "fault matrix, {cloud}: {passed}/{} cells pass",
        cells.len()
    );
    let _ = writeln!(
        out,
        "{:<5} {:<12} {:>2}  {:<84} {}",
        "cloud",
        "operation",
        "k",
        "upstream call (method, path; ids elided)",
        KINDS.map(|k| format!("{:<6}", k.name())).join(" ")
    );
    for op in Operation::ALL {
        let mut rows: Vec<(String, usize)> = Vec::new();
        for c in cells.iter().filter(|c| c.operation == op) {
            if !rows.contains(&(c.label.clone(), c.occurrence)) {
                rows.push((c.label.clone(), c.occurrence));
            }
        }
        for (k, (label, occurrence)) in rows.iter().enumerate() {
            let shown = if *occurrence > 1 {
                format!("{label} (#{occurrence})")
            } else {
                label.clone()
            };
            let shown: String = if shown.chars().count() > 84 {
                shown.chars().take(83).chain(['…']).collect()
            } else {
                shown
            };
            let marks: Vec<String> = KINDS
                .iter()
                .map(|kind| {
                    let cell = cells.iter().find(|c| {
                        c.operation == op
                            && &c.label == label
                            && c.occurrence == *occurrence
                            && c.kind == *kind
                    });
                    format!(
                        "{:<6}",
                        cell.map_or("-", |c| if c.passed() { "pass" } else { "FAIL" })
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "{cloud:<5} {:<12} {:>2}  {shown:<84} {}",
                op.name(),
                k + 1,
                marks.join(" ")
            );
        }
    }
    for c in cells.iter().filter(|c| !c.passed()) {
        let _ = writeln!(
            out,
            "FAIL {cloud} {} {} #{} {}: answered {}: {}",
            c.operation.name(),
            c.label,
            c.occurrence,
            c.kind.name(),
            c.answer,
            c.problems.join("; ")
        );
    }
    out
}

fn options<S: Stack>() -> Options {
    // The real API server answers a device's `whoami` in 10 to 550 ms, up to 1.7 s, on this
    // 2-core machine when the suites run side by side (its access log): four 300 ms attempts
    // sometimes all time out, and a cell's preparation fails before its fault is planned.
    let attempt_ms = if S::REAL_BALENA {
        REAL_SERVER_TIMEOUT_MS
    } else {
        UPSTREAM_TIMEOUT_MS
    };
    Options {
        faults: true,
        extra_env: vec![
            ("PROVISION_REQUEST_BUDGET_MS".into(), BUDGET_MS.to_string()),
            (
                "PROVISION_UPSTREAM_TIMEOUT_MS".into(),
                attempt_ms.to_string(),
            ),
        ],
        ..Options::default()
    }
}

async fn operation<S: Stack>(op: Operation) -> Vec<Cell> {
    let world = S::start_with(options::<S>())
        .await
        .expect("the world starts");
    let traffic = world.faults().expect("fault proxies").traffic.clone();

    // The calls the operation makes, from a run without faults by a process that has served a
    // request before (the first request of a process also fetches what is then cached: the
    // ClearBlade registry's credentials).
    // A run in which an upstream call itself failed (a broken connection, a 5xx) holds the
    // clients' retries too and would plan cells for calls a normal run does not make: such a
    // run is made again.
    let mut runs: Vec<Vec<Exchange>> = Vec::new();
    let mut attempts = 0;
    while runs.len() < 2 || !clean(&runs[runs.len() - 1]) {
        attempts += 1;
        assert!(
            attempts <= 5,
            "{}: no run without faults went without a failed upstream call: {:?}",
            op.name(),
            runs.last()
        );
        let device = prepare(&world, op).await;
        traffic.clear();
        let answer = world
            .call(request(&world, op, &device))
            .await
            .expect("an answer");
        let (status, text) = op.success();
        assert_eq!(
            (answer.status, answer.status_text()),
            (status, text),
            "{} without faults: {}",
            op.name(),
            answer.raw_body
        );
        runs.push(traffic.log());
    }
    let planned = &runs[runs.len() - 1];
    let mut positions: Vec<(String, usize)> = Vec::new();
    for exchange in planned {
        let occurrence = positions
            .iter()
            .filter(|(l, _)| *l == exchange.label)
            .count()
            + 1;
        positions.push((exchange.label.clone(), occurrence));
    }
    assert!(!positions.is_empty(), "{} made no upstream call", op.name());
    for cold in runs[0]
        .iter()
        .filter(|e| !positions.iter().any(|(l, _)| *l == e.label))
    {
        println!(
            "note: {} {}: the first request of a process also calls {} (cached afterwards; not in the matrix)",
            S::CLOUD,
            op.name(),
            cold.label
        );
    }

    // `PROVISION_MATRIX_ONLY=<text>` runs only the cells whose "<operation> <label> <kind>"
    // contains the text (for looking into one cell; the test then checks fewer cells).
    let only = std::env::var("PROVISION_MATRIX_ONLY").ok();
    let mut cells = Vec::new();
    for (label, occurrence) in &positions {
        for kind in KINDS {
            if only.as_ref().is_some_and(|o| {
                !format!("{} {label} {}", op.name(), kind.name()).contains(o.as_str())
            }) {
                continue;
            }
            cells.push(cell(&world, &traffic, op, label, *occurrence, kind).await);
        }
    }
    world.stop().await;
    cells
}

/// Whether every upstream call of a run got an answer that was not a server's failure.
fn clean(log: &[Exchange]) -> bool {
    log.iter()
        .all(|e| e.status.is_some_and(|s| s < 500 && s != 429))
}

/// A device of the world in the state `op` starts from.
async fn prepare<S: Stack>(world: &S, op: Operation) -> Device {
    let device = world.add_device().await;
    if op == Operation::New {
        return device;
    }
    let created = world
        .call(Call::post(Target::Device.body(&device.uuid)).bearer(&device.key))
        .await
        .expect("an answer");
    assert_eq!(
        created.status,
        201,
        "preparing {}: {}",
        op.name(),
        created.raw_body
    );
    if op == Operation::Repair {
        // Variables that no longer match the credential, while still naming it: a private key
        // that is not the certificate's (AWS, Azure), a wrong registry path (GCP).
        if S::CLOUD == Cloud::Gcp {
            world
                .balena
                .set_device_var(device.id, "GCP_CLIENT_PATH", "projects/elsewhere")
                .await;
        } else {
            let other = rcgen::KeyPair::generate().expect("a key").serialize_pem();
            let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, other);
            world
                .balena
                .set_device_var(device.id, S::KEY_VAR, &encoded)
                .await;
        }
    }
    device
}

fn request<S: Stack>(world: &S, op: Operation, device: &Device) -> Call {
    let mut body = Target::Device.body(&device.uuid);
    match op {
        Operation::New | Operation::Repair => Call::post(body).bearer(&device.key),
        Operation::Rotate => {
            body["rotate"] = serde_json::json!(true);
            Call::post(body).bearer(&device.key)
        }
        Operation::Delete => Call::delete(body).bearer(&world.secrets.operator_token),
    }
}

/// What the registry and balenaCloud hold that the invariants speak of.
struct Seen {
    /// Every credential id in the registry, for any device.
    all: BTreeSet<String>,
    entry: bool,
}

async fn seen<S: Stack>(world: &S, device: &Device) -> Seen {
    let all = world
        .credentials()
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let (entry, _) = world.registered(device).await;
    Seen { all, entry }
}

async fn cell<S: Stack>(
    world: &S,
    traffic: &Traffic,
    op: Operation,
    label: &str,
    occurrence: usize,
    kind: FaultKind,
) -> Cell {
    let device = prepare(world, op).await;
    let before = seen(world, &device).await;
    let log_lines = world.logs().lines().len();
    let mut problems = Vec::new();

    traffic.plan(PlannedFault {
        label: label.to_string(),
        occurrence,
        kind,
        attempts: ATTEMPTS,
    });
    let started = Instant::now();
    let limit = Duration::from_millis(BUDGET_MS) + Duration::from_secs(5);
    let answer = tokio::time::timeout(limit, world.call(request(world, op, &device))).await;
    let elapsed = started.elapsed();
    let fired = traffic.fired();
    traffic.clear();

    let shown = match &answer {
        Ok(Ok(a)) => format!(
            "{} {}",
            a.status,
            if a.status < 300 {
                a.status_text().to_string()
            } else {
                a.error_code().to_string()
            }
        ),
        Ok(Err(e)) => format!("no answer ({e})"),
        Err(_) => format!("no answer within {} ms", limit.as_millis()),
    };
    match &answer {
        Ok(Ok(a)) => problems.extend(check_answer(op, a)),
        _ => problems.push(shown.clone()),
    }
    if elapsed > Duration::from_millis(BUDGET_MS + 1_000) {
        problems.push(format!(
            "answered after {} ms, past the {BUDGET_MS} ms budget",
            elapsed.as_millis()
        ));
    }
    if fired == 0 {
        problems.push("the planned call was not made".into());
    }
    let panics: Vec<String> = world
        .logs()
        .lines()
        .into_iter()
        .skip(log_lines)
        .filter(|l| l.contains("panicked"))
        .collect();
    if !panics.is_empty() {
        problems.push(format!("the function panicked: {panics:?}"));
    }
    // The release of the lock is the one call whose failure leaves it held (see above).
    let lock_may_stay = label.starts_with("balena PATCH") && label.contains("device_tag");
    problems.extend(invariants(world, &device, &before, lock_may_stay).await);

    // One retry without faults converges.
    let retry = match op {
        Operation::Delete => {
            Call::delete(Target::Device.body(&device.uuid)).bearer(&world.secrets.operator_token)
        }
        _ => Call::post(Target::Device.body(&device.uuid)).bearer(&device.key),
    };
    match world.call(retry).await {
        Ok(a) if a.status == 200 || a.status == 201 => {}
        Ok(a) => problems.push(format!("the retry answered {}: {}", a.status, a.raw_body)),
        Err(e) => problems.push(format!("the retry got no answer: {e}")),
    }
    // The scenarios' own assertions, their panics caught (and kept off the output).
    let converged = if op == Operation::Delete {
        Quiet(Box::pin(
            std::panic::AssertUnwindSafe(world.assert_gone(&device, Target::Device)).catch_unwind(),
        ))
        .await
        .is_ok()
    } else {
        Quiet(Box::pin(
            std::panic::AssertUnwindSafe(world.assert_provisioned(&device, Target::Device, false))
                .catch_unwind(),
        ))
        .await
        .is_ok()
    };
    if !converged {
        problems.push(format!(
            "one retry did not leave the device fully {}",
            if op == Operation::Delete {
                "removed"
            } else {
                "provisioned"
            }
        ));
    }
    if !lock_may_stay && let Some(lock) = world.held_lock(&device, Target::Device).await {
        problems.push(format!("a lock is held after the retry: {lock}"));
    }

    Cell {
        operation: op,
        label: label.to_string(),
        occurrence,
        kind,
        answer: shown,
        problems,
    }
}

/// The answer is the operation's success or an upstream error in the contract's form.
fn check_answer(op: Operation, answer: &Answer) -> Vec<String> {
    let mut problems = Vec::new();
    let (status, text) = op.success();
    if answer.status == status && answer.status_text() == text {
        return problems;
    }
    let code = answer.error_code();
    match answer.status {
        502 if code == "provision.upstream.balena" || code == "provision.upstream.cloud" => {}
        503 if code == "provision.upstream.throttled" || code == "provision.device.busy" => {
            if !answer.headers.contains_key("retry-after") {
                problems.push("503 without Retry-After".into());
            }
        }
        _ => problems.push(format!(
            "unexpected answer {}: {}",
            answer.status, answer.raw_body
        )),
    }
    if answer.body["error"]["message"]
        .as_str()
        .is_none_or(|m| m.is_empty())
        || answer.body["request_id"].as_str().is_none()
    {
        problems.push(format!(
            "error body is not the contract's JSON: {}",
            answer.raw_body
        ));
    }
    problems
}

/// The invariants right after the faulted request, as problems.
async fn invariants<S: Stack>(
    world: &S,
    device: &Device,
    before: &Seen,
    lock_may_stay: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let (entry, registered) = world.registered(device).await;
    let named = world.named(device, Target::Device).await;
    for c in registered.iter().filter(|c| c.active) {
        if named.as_deref() != Some(c.id.as_str()) {
            problems.push(format!(
                "active credential {} is not the one the variables name ({named:?})",
                short(&c.id)
            ));
        }
    }
    if let Some(named) = &named
        && !registered.iter().any(|c| c.active && &c.id == named)
    {
        problems.push(format!(
            "the variables name {}, which is not an active credential of the device",
            short(named)
        ));
    }
    let now: BTreeSet<String> = world
        .credentials()
        .await
        .into_iter()
        .map(|c| c.id)
        .collect();
    let left: Vec<&String> = now
        .difference(&before.all)
        .filter(|id| Some(id.as_str()) != named.as_deref())
        .collect();
    if !left.is_empty() {
        problems.push(format!(
            "credentials this request made are left: {:?}",
            left.iter().map(|id| short(id)).collect::<Vec<_>>()
        ));
    }
    let vars = checks::vars(world, device, Target::Device).await;
    if entry && !before.entry && vars.is_empty() {
        problems.push("a registry entry this request made is left, with no variables".into());
    }
    if !lock_may_stay && let Some(lock) = world.held_lock(device, Target::Device).await {
        problems.push(format!("the lock is held: {lock}"));
    }
    problems
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A future whose panics print nothing (they are caught and reported as a cell's problem): the
/// panic hook stays silent while this future is being polled on the current thread.
struct Quiet<F>(F);

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(|q| q.get()) {
                    previous(info)
                }
            }));
        });
        QUIET.with(|q| q.set(true));
        let polled = std::pin::Pin::new(&mut self.0).poll(cx);
        QUIET.with(|q| q.set(false));
        polled
    }
}
