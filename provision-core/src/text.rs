//! Percent-encoding, the one way this crate puts text into a URL.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// What JavaScript's `encodeURIComponent` leaves alone (pinejs-client and the Azure SDKs
/// encode the same way).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// Percent-encodes one URL component (a query value, a path segment, a SAS field).
pub fn uri_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}
