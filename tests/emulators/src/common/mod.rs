//! What the emulators share: the test hooks (injected faults, the request log, latency), the
//! server plumbing (bind, serve, shut down), HTTPS with a test CA made at start, strict
//! percent-decoding and the UTC calendar.

pub(crate) mod fault;
pub(crate) mod hooks;
pub(crate) mod percent;
pub(crate) mod server;
pub(crate) mod time;
pub(crate) mod tls;

use std::sync::{Mutex, MutexGuard};

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Locks `mutex`, also when a panicking holder poisoned it (the emulators' state stays usable).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An answer with `body` and `Content-Type: content_type`.
pub(crate) fn response(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut res = (status, body).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}
