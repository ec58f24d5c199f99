//! `provision_core::api::request::parse` on arbitrary method, content type, query and body.
//!
//! Input layout (kept text-friendly so seeds are readable):
//!   byte 0        low nibble: method (see METHODS); bit 0x10 set: no query string at all
//!   byte 1        content-type choice (see CONTENT_TYPES; the last choices take the raw line)
//!   then          <query>\n<raw content-type>\n<body>   (missing parts are empty)
//!
//! Properties:
//!   * `parse` never panics;
//!   * Ok: the UUID is 32 or 62 lowercase hex chars, the service (if any) passes
//!     `ServiceName::parse` and the documented rule, and the operation matches the method;
//!   * Err: `status()` is a 4xx, never 5xx (nor anything else).
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use provision_core::api::ids::ServiceName;
use provision_core::api::request::{Operation, parse};

const METHODS: [&[u8]; 16] = [
    b"GET",
    b"POST",
    b"DELETE",
    b"PUT",
    b"PATCH",
    b"HEAD",
    b"OPTIONS",
    b"CONNECT",
    b"TRACE",
    b"get",
    b"post",
    b"PROPFIND",
    b"X-A-VERY-LONG-EXTENSION-METHOD-NAME-OVER-32-CHARS",
    b"M-SEARCH",
    b"POST",
    b"GET",
];

/// `None`: no Content-Type header. The choices past the end of this list use the raw line.
const CONTENT_TYPES: [Option<&str>; 10] = [
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON"),
    Some("application/merge-patch+json"),
    Some("text/plain"),
    Some("application/jsonx"),
    Some(""),
    Some(" application/json ;"),
    Some("application/+json"),
];

/// `FUZZ_DEBUG=1` prints each input's outcome (for checking seeds and reproducing crashes).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("FUZZ_DEBUG").is_some())
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn documented_service_rule(s: &str) -> bool {
    let mut chars = s.chars();
    (1..=63).contains(&s.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (selector, ct_choice, rest) = (data[0], data[1], &data[2..]);
    let method = Method::from_bytes(METHODS[(selector & 0x0f) as usize]).expect("valid method token");
    let (query_bytes, rest) = split_line(rest);
    let (raw_ct, body) = split_line(rest);

    let query_owned = String::from_utf8_lossy(query_bytes).into_owned();
    let query = if selector & 0x10 != 0 { None } else { Some(query_owned.as_str()) };

    let mut headers = HeaderMap::new();
    let ct_index = ct_choice as usize % (CONTENT_TYPES.len() + 2);
    let ct_value = match CONTENT_TYPES.get(ct_index) {
        Some(None) => None,
        Some(Some(s)) => Some(HeaderValue::from_static(s)),
        // Raw bytes: obs-text (0x80..) is a legal header value that `to_str` refuses.
        None => HeaderValue::from_bytes(raw_ct).ok(),
    };
    if let Some(v) = ct_value {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let body = Bytes::copy_from_slice(body);

    let result = parse(&method, &headers, query, &body);
    if debug() {
        eprintln!("{method} query={query:?} content-type={:?} -> {result:?}", headers.get(header::CONTENT_TYPE));
    }
    match result {
        Ok(request) => {
            let uuid = request.uuid.as_str();
            assert!(uuid.len() == 32 || uuid.len() == 62, "uuid of length {}: {uuid:?}", uuid.len());
            assert!(uuid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "uuid not lowercase hex: {uuid:?}");
            if let Some(service) = &request.service {
                let s = service.as_str();
                assert!(ServiceName::parse(s).is_ok(), "accepted service fails ServiceName::parse: {s:?}");
                assert!(documented_service_rule(s), "accepted service breaks the documented rule: {s:?}");
            }
            match (&method, &request.operation) {
                (&Method::GET, Operation::Status)
                | (&Method::POST, Operation::Provision { .. })
                | (&Method::DELETE, Operation::Deprovision) => {}
                (m, op) => panic!("method {m} accepted as {op:?}"),
            }
        }
        Err(error) => {
            let status = error.status();
            assert!(
                status.is_client_error(),
                "error answers {status} (code {}), not 4xx: {error}",
                error.code()
            );
        }
    }
});
