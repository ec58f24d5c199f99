//! Building OData query strings in pinejs's URL dialect, without ever letting data become
//! syntax.
//!
//! pinejs parses the *raw* query string: OData's own syntax characters (`( ) , ; = $ ' / :`)
//! must stand literally in `$filter`, `$select` and `$expand`, and a percent-encoded one
//! (`%2C`, `%28`, `%3D`…) is refused with 400 "Malformed url". Only the text inside a quoted
//! string literal is percent-decoded. So, as balena-sdk's pinejs-client does: data goes in as
//! [`literal`] (quotes doubled, then percent-encoded as a URI component), and an expression is
//! put into the URL with [`expression`], which encodes spaces and leaves the syntax alone.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::text::uri_component;

/// A string literal: single-quoted, every quote inside doubled, the content percent-encoded
/// as a URI component (so `&`, `#`, `+`, `%`, spaces and non-ASCII never reach the query
/// string raw). The only way a string enters a query in this crate.
pub fn literal(value: &str) -> String {
    format!("'{}'", uri_component(&value.replace('\'', "''")))
}

/// What [`expression`] encodes: controls, spaces and the characters that would end or change
/// a query string (`#`, `&`, `+`, which pinejs reads as a space) or are not allowed in a URL.
/// OData syntax (`( ) , ; = $ ' / : @ *`) and the `%` of an already encoded literal pass.
const EXPRESSION: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// An OData expression (a `$filter`, `$select` or `$expand` value built from [`literal`]s and
/// this crate's own names) as it goes into the query string.
pub fn expression(value: &str) -> String {
    utf8_percent_encode(value, EXPRESSION).to_string()
}

/// `name eq 'a' or name eq 'b'` for a set of names.
pub fn any_name(field: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{field} eq {}", literal(n)))
        .collect::<Vec<_>>()
        .join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pinejs's parser makes of a literal: the text between the quotes, `''` read as `'`,
    /// then percent-decoded.
    fn pinejs_reads(literal: &str) -> String {
        let inner = &literal[1..literal.len() - 1];
        let unquoted = inner.replace("''", "'");
        percent_encoding::percent_decode_str(&unquoted)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(
            literal("' or 1 eq 1 or '"),
            "'''%20or%201%20eq%201%20or%20'''"
        );
        assert_eq!(literal(""), "''");
    }

    #[test]
    fn data_in_a_literal_is_encoded() {
        assert_eq!(
            literal("a/b,c&d=e#f?g+h%"),
            "'a%2Fb%2Cc%26d%3De%23f%3Fg%2Bh%25'"
        );
        assert_eq!(literal("é"), "'%C3%A9'");
        assert_eq!(literal("provision-lock"), "'provision-lock'");
    }

    #[test]
    fn syntax_stays_literal_and_spaces_are_encoded() {
        let expand = format!(
            "device_tag($select=id,tag_key;$filter=startswith(tag_key,{}))",
            literal("provision lock")
        );
        assert_eq!(
            expression(&expand),
            "device_tag($select=id,tag_key;$filter=startswith(tag_key,'provision%20lock'))"
        );
        assert_eq!(
            expression(&format!("uuid eq {}", literal("ab"))),
            "uuid%20eq%20'ab'"
        );
        assert_eq!(expression("a&b#c+d"), "a%26b%23c%2Bd");
    }

    #[test]
    fn a_literal_reads_back_as_its_value() {
        for input in [
            "'",
            "''",
            "a'b",
            "'''",
            "x' or name eq 'y",
            "\u{0}'\n",
            "100%",
            "a+b c",
            "(,;=)$",
        ] {
            let lit = literal(input);
            assert!(
                lit.starts_with('\'') && lit.ends_with('\'') && lit.len() >= 2,
                "{lit}"
            );
            // One token: strip the outer quotes and every remaining quote comes in pairs.
            let inner = &lit[1..lit.len() - 1];
            assert_eq!(inner.replace("''", "").matches('\'').count(), 0, "{lit}");
            assert_eq!(pinejs_reads(&lit), input, "{lit}");
            // Putting it into an expression changes nothing.
            assert_eq!(expression(&lit), lit);
        }
    }
}
