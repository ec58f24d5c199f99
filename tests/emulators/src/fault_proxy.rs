//! A fault-injecting HTTP/1.1 proxy to put in front of any upstream (the emulators here, or
//! moto): it relays requests, logs every exchange with its timing, and carries out a fault
//! plan: "the n-th request labelled L fails, with all its retries".
//!
//! One [`Traffic`] is shared by the proxies of one test world (one per upstream), so a plan
//! can name any call of a function request and the log shows every upstream call in order.
//!
//! A request's *label* is its upstream, method and target with the parts that change from one
//! device or credential to the next (UUIDs, ids, hashes, quoted values) replaced by
//! placeholders: the same step of the same operation gets the same label for any device, so a
//! plan made from one run applies to the next.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a planned call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `500 Internal Server Error` in the upstream's own error format.
    ServerError,
    /// `429 Too Many Requests` with `Retry-After: <seconds>`.
    Throttled { retry_after: u64 },
    /// The request is read and never answered; the connection stays open until the client
    /// gives up on it.
    Hang,
    /// The connection is reset (RST) as soon as the request has been read.
    Reset,
    /// The request is relayed and answered as usual, `millis` later (a slow call among fast
    /// ones, unlike the latency every call gets).
    Slow { millis: u64 },
}

impl FaultKind {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::ServerError => "500",
            FaultKind::Throttled { .. } => "429",
            FaultKind::Hang => "hang",
            FaultKind::Reset => "reset",
            FaultKind::Slow { .. } => "slow",
        }
    }
}

/// What the error bodies look like: each upstream has its own error format, and the clients
/// read them (the AWS SDK classifies errors by `x-amzn-ErrorType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    Balena,
    Aws,
    IotHub,
    ClearBlade,
}

/// A planned fault: the `occurrence`-th request (1-based) whose label is `label`, and the
/// requests with that label right after it, up to `attempts` in all (the client's retries of
/// that one call), fail as `kind`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedFault {
    pub label: String,
    pub occurrence: usize,
    pub kind: FaultKind,
    pub attempts: usize,
}

/// One request a proxy saw.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub label: String,
    /// The request's method and target as received.
    pub method: String,
    pub target: String,
    /// Since the log was last cleared.
    pub started: Duration,
    /// When the answer was relayed (or the fault carried out); `None` while in flight.
    pub finished: Option<Duration>,
    /// The status relayed or faked; `None` for a hang, a reset or a broken upstream.
    pub status: Option<u16>,
    pub fault: Option<FaultKind>,
}

#[derive(Default)]
struct State {
    plan: Option<PlannedFault>,
    /// Requests seen per label since the plan was set.
    seen: HashMap<String, usize>,
    fired: usize,
    /// The AWS SDK's `amz-sdk-invocation-id` of the call the plan failed: the same on every
    /// attempt of one call, it tells its retries apart from later calls (the SDK may retry
    /// fewer times than `attempts` when its retry quota runs low).
    invocation: Option<String>,
    log: Vec<Exchange>,
    epoch: Option<Instant>,
    /// Added before every request is relayed or faulted (a far-away upstream).
    latency: Duration,
    /// Connections the client opened to each proxy (by its upstream's name) since the log was
    /// last cleared.
    connections: BTreeMap<&'static str, usize>,
    /// TLS handshakes the client completed with each proxy's TLS front (see
    /// [`crate::tls_front`]) since the log was last cleared.
    handshakes: BTreeMap<&'static str, usize>,
    /// Connections the client closed (or broke) since the log was last cleared, by the
    /// proxy's upstream name: between messages, or before an answer was delivered.
    closed: BTreeMap<&'static str, usize>,
    /// The proxies keep the client's connection open even when the upstream closes its own
    /// after an answer (moto answers every request `Connection: close`), as the real services
    /// do: the client's new connections are then its own doing.
    keep_alive: bool,
}

impl State {
    fn since(&mut self) -> Duration {
        self.epoch.get_or_insert_with(Instant::now).elapsed()
    }
}

/// The shared log and plan of a world's proxies.
#[derive(Clone, Default)]
pub struct Traffic(Arc<Mutex<State>>);

impl Traffic {
    pub fn new() -> Self {
        Traffic::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the plan (replacing any other), clearing the log and the label counts.
    pub fn plan(&self, fault: PlannedFault) {
        let mut state = self.lock();
        state.plan = Some(fault);
        state.fired = 0;
        state.invocation = None;
        state.seen.clear();
        state.log.clear();
        state.connections.clear();
        state.handshakes.clear();
        state.closed.clear();
        state.epoch = Some(Instant::now());
    }

    /// Removes the plan, clearing the log and the label counts.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.plan = None;
        state.fired = 0;
        state.invocation = None;
        state.seen.clear();
        state.log.clear();
        state.connections.clear();
        state.handshakes.clear();
        state.closed.clear();
        state.epoch = Some(Instant::now());
    }

    /// Delays every request by `latency` from now on (kept by `plan` and `clear`).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// From now on (kept by `plan` and `clear`), whether the client's connections stay open
    /// when the upstream closes its own after an answer (see `State::keep_alive`).
    pub fn set_keep_alive(&self, keep_alive: bool) {
        self.lock().keep_alive = keep_alive;
    }

    fn keep_alive(&self) -> bool {
        self.lock().keep_alive
    }

    /// The connections the client opened to each proxy since the log was last cleared, by the
    /// proxy's upstream name.
    pub fn connections(&self) -> BTreeMap<&'static str, usize> {
        self.lock().connections.clone()
    }

    fn connected(&self, upstream: &'static str) {
        *self.lock().connections.entry(upstream).or_default() += 1;
    }

    /// The connections the client closed since the log was last cleared, by the proxy's
    /// upstream name (a client that keeps its connections closes none while it runs).
    pub fn closed(&self) -> BTreeMap<&'static str, usize> {
        self.lock().closed.clone()
    }

    fn client_closed(&self, upstream: &'static str) {
        *self.lock().closed.entry(upstream).or_default() += 1;
    }

    /// The TLS handshakes the client completed with each proxy's TLS front since the log was
    /// last cleared, by the proxy's upstream name.
    pub fn handshakes(&self) -> BTreeMap<&'static str, usize> {
        self.lock().handshakes.clone()
    }

    pub(crate) fn handshaken(&self, upstream: &'static str) {
        *self.lock().handshakes.entry(upstream).or_default() += 1;
    }

    /// How many requests the plan has failed so far.
    pub fn fired(&self) -> usize {
        self.lock().fired
    }

    /// Every exchange since the plan was set or cleared, in the order they arrived.
    pub fn log(&self) -> Vec<Exchange> {
        self.lock().log.clone()
    }

    /// Counts a request and decides its fate; returns its log index. `invocation` is the id a
    /// client gives all attempts of one call, when it gives one.
    fn admit(
        &self,
        label: String,
        method: &str,
        target: &str,
        invocation: Option<&str>,
    ) -> (usize, Option<FaultKind>) {
        let mut state = self.lock();
        let count = {
            let seen = state.seen.entry(label.clone()).or_default();
            *seen += 1;
            *seen
        };
        let mut fault = None;
        if let Some(plan) = &state.plan
            && plan.label == label
            && count >= plan.occurrence
        {
            let ours = match (invocation, state.invocation.as_deref()) {
                // A call identified by its client: the first one at or after the occurrence,
                // then only its own attempts.
                (Some(id), Some(failed)) => id == failed,
                (Some(_), None) => true,
                // Otherwise, the next `attempts` requests with the label.
                (None, _) => state.fired < plan.attempts,
            };
            if ours {
                fault = Some(plan.kind);
            }
        }
        if fault.is_some() {
            state.fired += 1;
            if state.invocation.is_none() {
                state.invocation = invocation.map(str::to_string);
            }
        }
        let started = state.since();
        state.log.push(Exchange {
            label,
            method: method.to_string(),
            target: target.to_string(),
            started,
            finished: None,
            status: None,
            fault,
        });
        (state.log.len() - 1, fault)
    }

    fn finish(&self, index: usize, status: Option<u16>) {
        let mut state = self.lock();
        let now = state.since();
        if let Some(exchange) = state.log.get_mut(index) {
            exchange.finished = Some(now);
            exchange.status = status;
        }
    }
}

/// A proxy listening on a free port of 127.0.0.1, relaying to `127.0.0.1:<target port>`.
pub struct FaultProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy named `upstream` (the first word of its labels) in front of
    /// `target_port`, logging to and faulting by `traffic`.
    pub async fn start(
        upstream: &'static str,
        target_port: u16,
        flavour: Flavour,
        traffic: Traffic,
    ) -> anyhow::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                traffic.connected(upstream);
                let traffic = traffic.clone();
                tokio::spawn(async move {
                    let _ = relay(inbound, upstream, target_port, flavour, traffic).await;
                });
            }
        });
        Ok(FaultProxy { port, task })
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection with a read buffer, for reading HTTP/1.1 messages off it piece by piece.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

const MAX_HEAD: usize = 64 * 1024;

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Whether the peer closed (or broke) the connection while it sat idle: nothing is due on
    /// it between messages, so any readable state but "would block" means it is unusable.
    fn closed_by_peer(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Whether the peer closes (or breaks) the connection within `wait`, which is waited out
    /// otherwise; anything it sends meanwhile is kept for the next message.
    async fn closes_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, async { while let Ok(true) = self.fill().await {} })
            .await
            .is_ok()
    }

    /// Reads more bytes into the buffer; `false` at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// The next message head (through the blank line), or `None` at a clean end of stream.
    async fn head(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..end + 4).collect()));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::Error::other("message head too large"));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    async fn exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..end + 2).collect());
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// A body as framed by `framing`, raw (chunk framing kept), for relaying as it came.
    async fn body(&mut self, framing: Framing) -> std::io::Result<Vec<u8>> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => self.exact(n).await,
            Framing::Chunked => {
                let mut raw = Vec::new();
                loop {
                    let line = self.line().await?;
                    let size_text = String::from_utf8_lossy(&line);
                    let size_text = size_text
                        .trim()
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    let size = usize::from_str_radix(&size_text, 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                    raw.extend_from_slice(&line);
                    if size == 0 {
                        // Trailers, then the blank line.
                        loop {
                            let trailer = self.line().await?;
                            raw.extend_from_slice(&trailer);
                            if trailer == b"\r\n" {
                                return Ok(raw);
                            }
                        }
                    }
                    raw.extend(self.exact(size + 2).await?);
                }
            }
            Framing::UntilClose => {
                while self.fill().await? {}
                Ok(std::mem::take(&mut self.buf))
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn framing(headers: &[httparse::Header<'_>], otherwise: Framing) -> Framing {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(n) = value("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(n)
    } else {
        otherwise
    }
}

fn wants_close(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("close")
    })
}

async fn relay(
    inbound: TcpStream,
    upstream: &'static str,
    target_port: u16,
    flavour: Flavour,
    traffic: Traffic,
) -> std::io::Result<()> {
    // A message is relayed in pieces (head, then body): without this, Nagle's algorithm holds
    // the second piece until the peer's delayed ACK, some 40 ms per call.
    inbound.set_nodelay(true)?;
    let mut inbound = Conn::new(inbound);
    let mut outbound: Option<Conn> = None;
    loop {
        let head = match inbound.head().await {
            Ok(Some(head)) => head,
            ended => {
                traffic.client_closed(upstream);
                return ended.map(|_| ());
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        if !matches!(request.parse(&head), Ok(httparse::Status::Complete(_))) {
            return Err(std::io::Error::other("unreadable request"));
        }
        let method = request.method.unwrap_or("").to_string();
        let target = request.path.unwrap_or("").to_string();
        let close_after = wants_close(request.headers);
        let invocation = request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("amz-sdk-invocation-id"))
            .map(|h| String::from_utf8_lossy(h.value).into_owned());
        let body = inbound
            .body(framing(request.headers, Framing::None))
            .await?;
        let label = label(upstream, &method, &target);
        let (index, fault) = traffic.admit(label, &method, &target, invocation.as_deref());
        let latency = traffic.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        // A client may give up on a slow call (a future dropped mid-call closes its
        // connection): that is seen while it waits, not left to a write that a closed socket
        // may still take. The upstream still gets the request, as a real one would.
        let gave_up = match fault {
            Some(FaultKind::Slow { millis }) => {
                inbound.closes_within(Duration::from_millis(millis)).await
            }
            _ => false,
        };
        match fault {
            Some(FaultKind::Reset) => {
                let stream = inbound.stream;
                let _ = stream.set_zero_linger();
                traffic.finish(index, None);
                drop(stream);
                return Ok(());
            }
            Some(FaultKind::Hang) => {
                // Wait for the client to give up (it closes the connection), or a minute.
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Ok(true) = inbound.fill().await {}
                })
                .await;
                traffic.finish(index, None);
                return Ok(());
            }
            Some(kind @ (FaultKind::ServerError | FaultKind::Throttled { .. })) => {
                let answer = fake_answer(flavour, kind);
                inbound.stream.write_all(&answer.0).await?;
                traffic.finish(index, Some(answer.1));
            }
            None | Some(FaultKind::Slow { .. }) => {
                // An upstream closes a connection that sat idle (Node's keep-alive timeout):
                // a transparent proxy opens a new one rather than failing the request the
                // client sent on its own still-open connection.
                if outbound.as_ref().is_some_and(Conn::closed_by_peer) {
                    outbound = None;
                }
                let conn = match outbound.as_mut() {
                    Some(conn) => conn,
                    None => {
                        let stream = TcpStream::connect(("127.0.0.1", target_port)).await?;
                        stream.set_nodelay(true)?;
                        outbound.insert(Conn::new(stream))
                    }
                };
                conn.stream.write_all(&head).await?;
                conn.stream.write_all(&body).await?;
                // Interim (1xx) answers are relayed and the final one awaited.
                let (status, response_close, upstream_closes) = loop {
                    let Some(response_head) = conn.head().await? else {
                        traffic.finish(index, None);
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    };
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut response = httparse::Response::new(&mut headers);
                    if !matches!(
                        response.parse(&response_head),
                        Ok(httparse::Status::Complete(_))
                    ) {
                        return Err(std::io::Error::other("unreadable answer"));
                    }
                    let status = response.code.unwrap_or(502);
                    let no_body = method.eq_ignore_ascii_case("HEAD")
                        || status == 204
                        || status == 304
                        || (100..200).contains(&status);
                    let frame = if no_body {
                        Framing::None
                    } else {
                        framing(response.headers, Framing::UntilClose)
                    };
                    let until_close = matches!(frame, Framing::UntilClose);
                    let close = wants_close(response.headers) || until_close;
                    let body = conn.body(frame).await?;
                    // The upstream's connection goes; the client's stays, when asked.
                    let reconnect = close && !until_close && traffic.keep_alive();
                    let response_head = match reconnect {
                        true => without_connection_header(&response_head),
                        false => response_head,
                    };
                    let delivered = async {
                        if gave_up {
                            return Err(std::io::ErrorKind::BrokenPipe.into());
                        }
                        inbound.stream.write_all(&response_head).await?;
                        inbound.stream.write_all(&body).await
                    };
                    if let Err(e) = delivered.await {
                        traffic.finish(index, None);
                        traffic.client_closed(upstream);
                        return Err(e);
                    }
                    if !(100..200).contains(&status) {
                        break (status, close && !reconnect, reconnect);
                    }
                };
                traffic.finish(index, Some(status));
                if response_close {
                    return Ok(());
                }
                if upstream_closes {
                    outbound = None;
                }
            }
        }
        if close_after {
            return Ok(());
        }
    }
}

/// An answer's head without its `Connection` header.
fn without_connection_header(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive("\r\n") {
        let name = line.split(':').next().unwrap_or("");
        if !name.trim().eq_ignore_ascii_case("connection") {
            kept.push_str(line);
        }
    }
    kept.into_bytes()
}

/// The sequential depth of a log: the longest chain of exchanges each of which started only
/// after the one before it had finished (calls made one after another, as opposed to at once).
pub fn sequential_depth(log: &[Exchange]) -> usize {
    let mut order: Vec<&Exchange> = log.iter().collect();
    order.sort_by_key(|e| e.started);
    let mut depth: Vec<usize> = Vec::with_capacity(order.len());
    for (i, e) in order.iter().enumerate() {
        let before = (0..i)
            .filter(|&j| order[j].finished.is_some_and(|f| f <= e.started))
            .map(|j| depth[j])
            .max()
            .unwrap_or(0);
        depth.push(before + 1);
    }
    depth.into_iter().max().unwrap_or(0)
}

/// A whole HTTP/1.1 answer for a faked failure, and its status.
fn fake_answer(flavour: Flavour, kind: FaultKind) -> (Vec<u8>, u16) {
    let (status, reason, retry_after) = match kind {
        FaultKind::Throttled { retry_after } => (429, "Too Many Requests", Some(retry_after)),
        _ => (500, "Internal Server Error", None),
    };
    let throttled = status == 429;
    let (content_type, body, extra) = match flavour {
        Flavour::Balena => (
            "text/plain",
            if throttled {
                "Too Many Requests".to_string()
            } else {
                "Internal Server Error".to_string()
            },
            None,
        ),
        Flavour::Aws => {
            let kind = if throttled {
                "ThrottlingException"
            } else {
                "InternalFailureException"
            };
            (
                "application/json",
                format!(r#"{{"message":"injected {kind}"}}"#),
                Some(format!("x-amzn-ErrorType: {kind}\r\n")),
            )
        }
        Flavour::IotHub => {
            let code = if throttled {
                "ThrottleBacklogLimitExceeded"
            } else {
                "ServerError"
            };
            (
                "application/json; charset=utf-8",
                format!(r#"{{"Message":"ErrorCode:{code};injected fault","ExceptionMessage":""}}"#),
                None,
            )
        }
        Flavour::ClearBlade => {
            let (state, message) = if throttled {
                ("RESOURCE_EXHAUSTED", "Quota exceeded")
            } else {
                ("INTERNAL", "Internal error")
            };
            (
                "application/json",
                format!(
                    r#"{{"error":{{"code":{status},"message":"{message}","status":"{state}"}}}}"#
                ),
                None,
            )
        }
    };
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(secs) = retry_after {
        answer.push_str(&format!("retry-after: {secs}\r\n"));
    }
    if let Some(extra) = extra {
        answer.push_str(&extra);
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    (answer.into_bytes(), status)
}

/// The label of a request: `<upstream> <METHOD> <target>` with what varies per device or
/// credential replaced: runs of digits by `#`, long hexadecimal runs (UUIDs, certificate ids,
/// thumbprints) by `{id}`, quoted values other than plain names by `'…'`, and any other long
/// run of letters and digits by `…`.
pub fn label(upstream: &str, method: &str, target: &str) -> String {
    let decoded = percent_decode(target);
    let mut out = String::with_capacity(decoded.len());
    let chars: Vec<char> = decoded.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A quoted OData literal: kept when it is a plain name (a variable, a service).
            let end = chars[i + 1..]
                .iter()
                .position(|&q| q == '\'')
                .map(|p| i + 1 + p);
            if let Some(end) = end {
                let inner: String = chars[i + 1..end].iter().collect();
                let plain = !inner.is_empty()
                    && inner.len() <= 40
                    && inner
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-');
                out.push('\'');
                out.push_str(if plain { &inner } else { "…" });
                out.push('\'');
                i = end + 1;
                continue;
            }
        }
        if c.is_ascii_alphanumeric() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let run: String = chars[start..i].iter().collect();
            if run.chars().all(|c| c.is_ascii_digit()) {
                out.push('#');
            } else if run.len() >= 16 && run.chars().all(|c| c.is_ascii_hexdigit()) {
                out.push_str("{id}");
            } else if run.len() > 24 {
                out.push('…');
            } else {
                out.push_str(&run);
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    format!("{upstream} {method} {out}")
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_hide_what_varies_per_device() {
        let a = label(
            "balena",
            "GET",
            "/v7/device?$filter=uuid%20eq%20%270123456789abcdef0123456789abcdef%27&$expand=device_environment_variable($filter=name%20in%20(%27AWS_CERT%27))",
        );
        let b = label(
            "balena",
            "GET",
            "/v7/device?$filter=uuid%20eq%20%27fedcba9876543210fedcba9876543210%27&$expand=device_environment_variable($filter=name%20in%20(%27AWS_CERT%27))",
        );
        assert_eq!(a, b);
        assert!(a.contains("'AWS_CERT'"), "{a}");
        assert_eq!(
            label(
                "aws",
                "PUT",
                "/certificates/abc123def4567890abc123def4567890?newStatus=ACTIVE"
            ),
            "aws PUT /certificates/{id}?newStatus=ACTIVE"
        );
        assert_eq!(
            label("balena", "PATCH", "/v7/device_environment_variable(42)"),
            "balena PATCH /v7/device_environment_variable(#)"
        );
    }

    #[test]
    fn the_planned_call_fails_with_its_retries_and_no_more() {
        let traffic = Traffic::new();
        traffic.plan(PlannedFault {
            label: "x GET /a".into(),
            occurrence: 2,
            kind: FaultKind::ServerError,
            attempts: 2,
        });
        let fates: Vec<bool> = (0..5)
            .map(|_| {
                traffic
                    .admit("x GET /a".into(), "GET", "/a", None)
                    .1
                    .is_some()
            })
            .collect();
        assert_eq!(fates, [false, true, true, false, false]);
        assert!(
            traffic
                .admit("x GET /b".into(), "GET", "/b", None)
                .1
                .is_none()
        );
        assert_eq!(traffic.fired(), 2);
        assert_eq!(traffic.log().len(), 6);
    }

    #[test]
    fn depth_counts_calls_made_one_after_another() {
        let at = |start: u64, end: u64| Exchange {
            label: String::new(),
            method: "GET".into(),
            target: "/".into(),
            started: Duration::from_millis(start),
            finished: Some(Duration::from_millis(end)),
            status: Some(200),
            fault: None,
        };
        // Two at once, then one after both, then two at once again: depth 3.
        let log = [at(0, 10), at(1, 12), at(13, 20), at(21, 30), at(21, 25)];
        assert_eq!(sequential_depth(&log), 3);
        assert_eq!(sequential_depth(&[]), 0);
    }

    #[test]
    fn a_call_with_an_invocation_id_fails_on_every_attempt_and_no_other_call() {
        let traffic = Traffic::new();
        traffic.plan(PlannedFault {
            label: "aws PUT /x".into(),
            occurrence: 1,
            kind: FaultKind::Reset,
            attempts: 2,
        });
        let admit = |id: &str| {
            traffic
                .admit("aws PUT /x".into(), "PUT", "/x", Some(id))
                .1
                .is_some()
        };
        assert!(
            admit("call-1") && admit("call-1") && admit("call-1"),
            "every attempt of the planned call fails"
        );
        assert!(
            !admit("call-2"),
            "a later call with the same label goes through"
        );
    }
}
