//! An emulator of the AWS Lambda Runtime API (version `2018-06-01`), so tests can run a compiled
//! Lambda function binary (built with the `lambda_runtime` / `lambda_http` 1.x crates) as a real
//! process that long-polls for invocations, exactly as it does on AWS.
//!
//! ```no_run
//! # async fn demo(binary: &std::path::Path) -> anyhow::Result<()> {
//! use provision_emulators::lambda_runtime::{InvocationOutcome, LambdaRuntimeEmulator};
//! let emulator = LambdaRuntimeEmulator::start().await?;
//! let mut child = tokio::process::Command::new(binary)
//!     .envs(emulator.function_env("provision"))
//!     .kill_on_drop(true)
//!     .spawn()?;
//! let invocation = emulator
//!     .invoke(serde_json::json!({"hello": "world"}), std::time::Duration::from_secs(10))
//!     .await?;
//! match invocation.outcome {
//!     InvocationOutcome::Response(body) => println!("answered {body}"),
//!     InvocationOutcome::Error(error) => println!("failed {error}"),
//! }
//! emulator.shutdown().await;
//! child.kill().await?;
//! # Ok(()) }
//! ```
//!
//! Endpoints served (everything under `/2018-06-01/runtime`):
//!
//! * `GET  invocation/next` — long-polls until an invocation is queued; each queued invocation is
//!   handed to exactly one poller (several function processes may poll at once, as Lambda
//!   scales out). Answers 200 with the event JSON and the `Lambda-Runtime-Aws-Request-Id`,
//!   `Lambda-Runtime-Deadline-Ms`, `Lambda-Runtime-Invoked-Function-Arn` and
//!   `Lambda-Runtime-Trace-Id` headers.
//! * `POST invocation/{id}/response` — 202 `{"status":"OK"}`; 400 `InvalidRequestID` for an id
//!   that is unknown, not yet delivered, already answered or whose `invoke` gave up (timeout).
//! * `POST invocation/{id}/error` — same, the body (`errorType`, `errorMessage`) is the outcome.
//! * `POST init/error` — 202; recorded, readable with [`LambdaRuntimeEmulator::init_error`], and
//!   every waiting (and later) [`LambdaRuntimeEmulator::invoke`] fails promptly with it.
//!
//! Bodies are limited to 6 MiB (Lambda's synchronous payload limit; larger ones get 413).
//! Streaming responses and the SnapStart `restore/*` endpoints are not emulated.
//!
//! [`LambdaRuntimeEmulator::shutdown`] (or dropping the last handle) closes every connection,
//! including the pending long-polls, so a function process sees its `next` call fail and its
//! `lambda_runtime::run` returns an error instead of hanging forever.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::common::server::{self, Servers};
use crate::common::time::{Utc, since_epoch};

/// Lambda's synchronous invocation payload limit (request and response).
const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;
/// Region and account used to build the invoked function ARN.
const REGION: &str = "us-east-1";
const ACCOUNT_ID: &str = "123456789012";
/// Memory size advertised to the function (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, must parse as i32).
const MEMORY_SIZE_MB: &str = "128";
const FUNCTION_VERSION: &str = "$LATEST";
/// Function name used for the ARN until [`LambdaRuntimeEmulator::function_env`] is called.
const DEFAULT_FUNCTION_NAME: &str = "emulated-function";

const H_REQUEST_ID: &str = "lambda-runtime-aws-request-id";
const H_DEADLINE_MS: &str = "lambda-runtime-deadline-ms";
const H_FUNCTION_ARN: &str = "lambda-runtime-invoked-function-arn";
const H_TRACE_ID: &str = "lambda-runtime-trace-id";
const H_FUNCTION_ERROR_TYPE: &str = "lambda-runtime-function-error-type";

/// One finished invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The `Lambda-Runtime-Aws-Request-Id` the function was given.
    pub request_id: String,
    /// What the function posted.
    pub outcome: InvocationOutcome,
    /// Wall-clock time from the `invoke` call until the function's answer arrived (includes the
    /// time the invocation waited in the queue for a poller, e.g. a cold start).
    pub duration: Duration,
}

/// What the function posted for an invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum InvocationOutcome {
    /// Body of `POST /runtime/invocation/{id}/response`, parsed as JSON (an empty body is
    /// `Value::Null`; a body that is not JSON is kept as a `Value::String`).
    Response(Value),
    /// Body of `POST /runtime/invocation/{id}/error` (`{"errorType": .., "errorMessage": ..}` from
    /// `lambda_runtime`), parsed the same way.
    Error(Value),
}

/// One request the emulator answered (for assertions on the traffic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// An invocation waiting in the queue for a poller.
struct Queued {
    request_id: String,
    body: Bytes,
    deadline_ms: u128,
}

/// An invocation whose `invoke` call is still waiting for the answer.
struct InFlight {
    reply: oneshot::Sender<InvocationOutcome>,
    /// Handed to a poller by `next`.
    delivered: bool,
}

struct Shared {
    queue_tx: mpsc::UnboundedSender<Queued>,
    /// Pollers take turns on this (tokio's mutex is fair), so each invocation goes to one poller.
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    in_flight: Mutex<HashMap<String, InFlight>>,
    init_error: watch::Sender<Option<Value>>,
    /// `true` once the server was told to stop.
    shutdown: watch::Receiver<bool>,
    function_name: Mutex<String>,
    served: AtomicUsize,
    delivered: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Shared {
    fn arn(&self) -> String {
        let name = self.function_name.lock().unwrap().clone();
        format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
    }

    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves once shutdown was requested (or the sender is gone).
    fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|down| *down).await;
        }
    }
}

/// Owner of the server task; dropping the last emulator handle shuts the server down.
struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    servers: Servers,
}

/// The Lambda Runtime API emulator. Cheap to clone (clones share the same server), so it can be
/// moved into spawned tasks that call [`invoke`](Self::invoke) concurrently.
#[derive(Clone)]
pub struct LambdaRuntimeEmulator {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for LambdaRuntimeEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaRuntimeEmulator")
            .field("addr", &self.handle.addr)
            .finish_non_exhaustive()
    }
}

impl LambdaRuntimeEmulator {
    /// Binds `127.0.0.1:0` and serves the Runtime API in a background task.
    pub async fn start() -> anyhow::Result<LambdaRuntimeEmulator> {
        let (listener, addr) = server::bind(server::any_local_port())
            .await
            .context("starting the Lambda Runtime API emulator")?;
        let servers = Servers::new("Lambda Runtime API emulator");

        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            in_flight: Mutex::new(HashMap::new()),
            init_error: watch::Sender::new(None),
            shutdown: servers.subscribe(),
            function_name: Mutex::new(DEFAULT_FUNCTION_NAME.to_owned()),
            served: AtomicUsize::new(0),
            delivered: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });

        let app = router(shared.clone());
        let listener = KillableListener {
            inner: listener,
            shutdown: servers.subscribe(),
        };
        servers.spawn(listener, app, "server");
        tracing::debug!(%addr, "Lambda Runtime API emulator listening");

        Ok(LambdaRuntimeEmulator {
            handle: Arc::new(Handle {
                shared,
                addr,
                servers,
            }),
        })
    }

    /// `127.0.0.1:PORT`, the value for `AWS_LAMBDA_RUNTIME_API` (host:port, no scheme).
    pub fn runtime_api(&self) -> String {
        self.handle.addr.to_string()
    }

    /// Every environment variable the `lambda_runtime` 1.x client needs, with the values Lambda
    /// itself sets: `AWS_LAMBDA_RUNTIME_API`, `AWS_LAMBDA_FUNCTION_NAME`,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, `AWS_LAMBDA_FUNCTION_VERSION`,
    /// `AWS_LAMBDA_LOG_GROUP_NAME`, `AWS_LAMBDA_LOG_STREAM_NAME` and
    /// `AWS_LAMBDA_INITIALIZATION_TYPE=on-demand`. The name is also used for the
    /// `Lambda-Runtime-Invoked-Function-Arn` of later invocations. Region/credentials
    /// (`AWS_REGION`, ...) are not included: the caller decides those.
    pub fn function_env(&self, function_name: &str) -> Vec<(String, String)> {
        *self.handle.shared.function_name.lock().unwrap() = function_name.to_owned();
        let stream_id = uuid::Uuid::new_v4().simple().to_string();
        let Utc {
            year, month, day, ..
        } = Utc::now();
        [
            ("AWS_LAMBDA_RUNTIME_API", self.runtime_api()),
            ("AWS_LAMBDA_FUNCTION_NAME", function_name.to_owned()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", MEMORY_SIZE_MB.to_owned()),
            ("AWS_LAMBDA_FUNCTION_VERSION", FUNCTION_VERSION.to_owned()),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/aws/lambda/{function_name}"),
            ),
            (
                "AWS_LAMBDA_LOG_STREAM_NAME",
                format!("{year:04}/{month:02}/{day:02}/[{FUNCTION_VERSION}]{stream_id}"),
            ),
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// Queues one invocation and waits for the function's answer. Fails (instead of hanging)
    /// when `timeout` passes (the invocation is then withdrawn: a poller will not get it, and a
    /// late answer gets 400), when the function posts `/runtime/init/error` (or already did),
    /// or when the emulator shuts down. `timeout` is also the `Lambda-Runtime-Deadline-Ms`.
    pub async fn invoke(&self, event: Value, timeout: Duration) -> anyhow::Result<Invocation> {
        let shared = &self.handle.shared;
        if shared.is_shut_down() {
            bail!("the Lambda Runtime API emulator is shut down");
        }
        if let Some(error) = shared.init_error.borrow().clone() {
            bail!("the function failed to initialise (POST /runtime/init/error): {error}");
        }

        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        let body = Bytes::from(serde_json::to_vec(&event)?);
        let (reply_tx, reply_rx) = oneshot::channel();
        shared.in_flight.lock().unwrap().insert(
            request_id.clone(),
            InFlight {
                reply: reply_tx,
                delivered: false,
            },
        );
        let queued = Queued {
            request_id: request_id.clone(),
            body,
            deadline_ms: (since_epoch() + timeout).as_millis(),
        };
        if shared.queue_tx.send(queued).is_err() {
            shared.in_flight.lock().unwrap().remove(&request_id);
            bail!("the Lambda Runtime API emulator is shut down");
        }

        let mut init_rx = shared.init_error.subscribe();
        let init_failed = async move {
            init_rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|error| error.clone())
        };

        let failure = tokio::select! {
            answer = reply_rx => match answer {
                Ok(outcome) => {
                    return Ok(Invocation {
                        request_id,
                        outcome,
                        duration: started.elapsed(),
                    });
                }
                Err(_) => anyhow!("invocation {request_id} was dropped without an answer"),
            },
            error = init_failed => anyhow!(
                "the function failed to initialise (POST /runtime/init/error) while invocation \
                 {request_id} was waiting: {}",
                error.unwrap_or(Value::Null)
            ),
            () = shared.shutdown_signal() => {
                anyhow!("the Lambda Runtime API emulator shut down while invocation {request_id} was waiting")
            }
            () = tokio::time::sleep(timeout) => {
                let delivered = shared
                    .in_flight
                    .lock()
                    .unwrap()
                    .get(&request_id)
                    .is_some_and(|f| f.delivered);
                anyhow!(
                    "invocation {request_id} timed out after {timeout:?} ({})",
                    if delivered {
                        "a function took it but did not answer"
                    } else {
                        "no function polled /runtime/invocation/next for it"
                    }
                )
            }
        };
        // Withdraw it: a poller skips it, a late answer gets 400.
        shared.in_flight.lock().unwrap().remove(&request_id);
        Err(failure)
    }

    /// The body the function posted to `/runtime/init/error`, if it did (parsed as JSON; not
    /// JSON is kept as a string).
    pub fn init_error(&self) -> Option<Value> {
        self.handle.shared.init_error.borrow().clone()
    }

    /// Forgets a recorded init error, so invocations are accepted again (e.g. after the test
    /// restarted the function process with a fixed configuration).
    pub fn clear_init_error(&self) {
        self.handle.shared.init_error.send_replace(None);
    }

    /// Number of invocations the function answered (a `response` or `error` post that was
    /// accepted with 202).
    pub fn invocations_served(&self) -> usize {
        self.handle.shared.served.load(Ordering::SeqCst)
    }

    /// Number of invocations handed to a poller by `GET /runtime/invocation/next`.
    pub fn invocations_delivered(&self) -> usize {
        self.handle.shared.delivered.load(Ordering::SeqCst)
    }

    /// Every request answered so far, in order of completion (a long-poll `next` is recorded
    /// when it returns).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.handle.shared.requests.lock().unwrap().clone()
    }

    /// Stops the server: pending `invoke` calls fail, every connection (pending long-polls
    /// included) is closed, so polling function processes get a connection error.
    pub async fn shutdown(self) {
        self.handle.servers.shutdown().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/response",
            post(invocation_response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            record_request,
        ))
        .with_state(shared)
}

async fn record_request(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::debug!(%method, %path, status = %response.status(), "Lambda Runtime API request");
    shared.requests.lock().unwrap().push(RecordedRequest {
        method,
        path,
        status: response.status().as_u16(),
    });
    response
}

/// `GET /runtime/invocation/next`: long-poll for the next queued invocation.
async fn next_invocation(State(shared): State<Arc<Shared>>) -> Response {
    loop {
        let queued = tokio::select! {
            // Cancel-safe: a poller that goes away while waiting takes nothing with it.
            queued = async { shared.queue_rx.lock().await.recv().await } => queued,
            () = shared.shutdown_signal() => None,
        };
        let Some(queued) = queued else {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Runtime.ExitError",
                "the Lambda Runtime API emulator is shutting down",
            );
        };

        {
            let mut in_flight = shared.in_flight.lock().unwrap();
            match in_flight.get_mut(&queued.request_id) {
                Some(waiting) if !waiting.reply.is_closed() => waiting.delivered = true,
                // Its `invoke` gave up (timeout, init error): skip it.
                _ => {
                    in_flight.remove(&queued.request_id);
                    continue;
                }
            }
        }
        shared.delivered.fetch_add(1, Ordering::SeqCst);

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set(H_REQUEST_ID, queued.request_id);
        set(H_DEADLINE_MS, queued.deadline_ms.to_string());
        set(H_FUNCTION_ARN, shared.arn());
        set(H_TRACE_ID, trace_id());
        return (StatusCode::OK, headers, queued.body).into_response();
    }
}

/// `POST /runtime/invocation/{id}/response`.
async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> Response {
    complete(
        &shared,
        &request_id,
        InvocationOutcome::Response(parse_body(&body)),
    )
}

/// `POST /runtime/invocation/{id}/error`.
async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = error_body(&headers, &body);
    tracing::debug!(%request_id, %error, "function reported an invocation error");
    complete(&shared, &request_id, InvocationOutcome::Error(error))
}

/// `POST /runtime/init/error`.
async fn init_error(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let error = error_body(&headers, &body);
    tracing::debug!(%error, "function reported an init error");
    shared.init_error.send_replace(Some(error));
    accepted()
}

async fn not_found(request: Request) -> Response {
    tracing::warn!(method = %request.method(), path = %request.uri().path(), "unknown Lambda Runtime API route");
    api_error(
        StatusCode::NOT_FOUND,
        "UnknownOperation",
        &format!(
            "{} {} is not part of the emulated Runtime API",
            request.method(),
            request.uri().path()
        ),
    )
}

fn complete(shared: &Shared, request_id: &str, outcome: InvocationOutcome) -> Response {
    let waiting = {
        let mut in_flight = shared.in_flight.lock().unwrap();
        match in_flight.get(request_id) {
            Some(waiting) if waiting.delivered => in_flight.remove(request_id),
            _ => None,
        }
    };
    match waiting {
        Some(waiting) => {
            shared.served.fetch_add(1, Ordering::SeqCst);
            let _ = waiting.reply.send(outcome);
            accepted()
        }
        None => api_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            &format!("no invocation {request_id} is waiting for an answer"),
        ),
    }
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"status": "OK"}))).into_response()
}

fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errorType": error_type, "errorMessage": message})),
    )
        .into_response()
}

/// JSON body, `Null` when empty, the text when not JSON.
fn parse_body(body: &[u8]) -> Value {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// An error body; when it is empty, `{"errorType": <Lambda-Runtime-Function-Error-Type>}`.
fn error_body(headers: &HeaderMap, body: &[u8]) -> Value {
    match parse_body(body) {
        Value::Null => match headers
            .get(H_FUNCTION_ERROR_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            Some(error_type) => json!({"errorType": error_type}),
            None => Value::Null,
        },
        parsed => parsed,
    }
}

/// An X-Ray trace header as Lambda sends it.
fn trace_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{:08x}-{};Parent={};Sampled=0",
        since_epoch().as_secs(),
        &random[..24],
        &parent[..16]
    )
}

/// A TCP listener whose connections all hit EOF once shutdown is requested. hyper watches the
/// read side of a connection whose request is still being handled, so this also ends pending
/// long-polls: the function process sees a connection error rather than a response it would
/// try to parse as an invocation.
struct KillableListener {
    inner: TcpListener,
    shutdown: watch::Receiver<bool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut shutdown = self.shutdown.clone();
                    let killed = Box::pin(async move {
                        let _ = shutdown.wait_for(|down| *down).await;
                    });
                    return (
                        KillableStream {
                            inner: stream,
                            killed,
                            dead: false,
                        },
                        addr,
                    );
                }
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

struct KillableStream {
    inner: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl KillableStream {
    fn is_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Ok(())); // EOF
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_dead(cx) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
