//! `provision_core::balena::odata::{literal, encode}` on arbitrary UTF-8.
//!
//! Properties:
//!   * `literal(s)` starts and ends with `'`, every `'` inside comes doubled (so the literal is
//!     one OData token that closes exactly at its end), and un-doubling the inside gives `s`;
//!   * `encode(x)` (for `x` = `s` and `x` = `literal(s)`) holds only URL-safe characters or
//!     `%XX` escapes, and percent-decodes back to `x`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provision_core::balena::odata::{encode, literal};

/// What `encode` may leave unescaped: RFC 3986 "unreserved" (ALPHA / DIGIT / - . _ ~) plus
/// the sub-delims `! * ' ( )` that JavaScript's `encodeURIComponent` also leaves alone (the
/// crate encodes like pinejs-client, documented in `text.rs`). These are all legal, with no
/// special meaning, inside a query value.
fn is_unescaped_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'!' | b'*' | b'\'' | b'(' | b')')
}

fn check_encode(x: &str) {
    let out = encode(x);
    let bytes = out.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            assert!(
                i + 2 < bytes.len() && bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit(),
                "bad escape at {i} in {out:?} (input {x:?})"
            );
            i += 3;
        } else {
            assert!(is_unescaped_ok(b), "unescaped {:?} at {i} in {out:?} (input {x:?})", b as char);
            i += 1;
        }
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&out).collect();
    assert_eq!(decoded, x.as_bytes(), "encode does not round-trip: {out:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let lit = literal(s);
    assert!(lit.len() >= 2 && lit.starts_with('\'') && lit.ends_with('\''), "not quoted: {lit:?}");
    let inner = &lit[1..lit.len() - 1];

    // Tokenise as an OData reader would: after the opening quote, `''` is an escaped quote and
    // a lone `'` closes the literal. It must close exactly at the last byte.
    let lb = lit.as_bytes();
    let mut i = 1;
    let mut unescaped = Vec::with_capacity(inner.len());
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
    assert_eq!(unescaped, s.as_bytes(), "un-doubling does not give the input back: {lit:?}");
    assert_eq!(inner.replace("''", "'"), s);

    check_encode(s);
    check_encode(&lit);
});
