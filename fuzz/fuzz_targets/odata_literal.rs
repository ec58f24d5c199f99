//! `provision_core::balena::odata::{literal, expression}` on arbitrary UTF-8.
//!
//! Properties:
//!   * `literal(s)` starts and ends with `'`, every `'` inside comes doubled (so the literal is
//!     one OData token that closes exactly at its end), and un-doubling the inside, then
//!     percent-decoding it (what pinejs's parser does), gives `s`;
//!   * `literal(s)` holds only URL-safe characters or `%XX` escapes, so no data can reach the
//!     query string raw, and `expression` leaves it unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provision_core::balena::odata::{expression, literal};

/// What a literal may hold unescaped: RFC 3986 "unreserved" (ALPHA / DIGIT / - . _ ~) plus
/// the sub-delims `! * ' ( )` that JavaScript's `encodeURIComponent` also leaves alone (the
/// crate encodes literals like pinejs-client, documented in `odata.rs`).
fn is_unescaped_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'!' | b'*' | b'\'' | b'(' | b')')
}

fn check_url_safe(out: &str) {
    let bytes = out.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            assert!(
                i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit(),
                "bad escape at {i} in {out:?}"
            );
            i += 3;
        } else {
            assert!(is_unescaped_ok(b), "unescaped {:?} at {i} in {out:?}", b as char);
            i += 1;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let lit = literal(s);
    assert!(lit.len() >= 2 && lit.starts_with('\'') && lit.ends_with('\''), "not quoted: {lit:?}");

    // Tokenise as pinejs does: after the opening quote, `''` is an escaped quote and a lone `'`
    // closes the literal. It must close exactly at the last byte.
    let lb = lit.as_bytes();
    let mut i = 1;
    let mut unescaped = Vec::with_capacity(lb.len());
    let close = loop {
        match lb.get(i) {
            None => panic!("literal never closes: {lit:?}"),
            Some(b'\'') if lb.get(i + 1) == Some(&b'\'') => {
                unescaped.push(b'\'');
                i += 2;
            }
            Some(b'\'') => break i,
            Some(&b) => {
                unescaped.push(b);
                i += 1;
            }
        }
    };
    assert_eq!(close, lb.len() - 1, "literal closes early at {close}: {lit:?}");
    let decoded: Vec<u8> = percent_encoding::percent_decode(&unescaped).collect();
    assert_eq!(decoded, s.as_bytes(), "the literal does not read back as the input: {lit:?}");

    check_url_safe(&lit);
    assert_eq!(expression(&lit), lit);
});
