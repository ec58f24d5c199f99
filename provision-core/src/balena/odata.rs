//! Building OData query strings for pinejs without ever letting data become syntax.

pub use crate::text::uri_component as encode;

/// A string literal: single-quoted, every quote inside doubled. The only way a string enters
/// a `$filter` in this crate.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `name eq 'a' or name eq 'b'` for a set of names.
pub fn any_name(field: &str, names: &[&str]) -> String {
    names.iter().map(|n| format!("{field} eq {}", literal(n))).collect::<Vec<_>>().join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("' or 1 eq 1 or '"), "''' or 1 eq 1 or '''");
        assert_eq!(literal(""), "''");
    }

    #[test]
    fn encoding_is_component_encoding() {
        assert_eq!(encode("uuid eq 'a b'"), "uuid%20eq%20'a%20b'");
        assert_eq!(encode("a/b,c&d=e#f?g+h%"), "a%2Fb%2Cc%26d%3De%23f%3Fg%2Bh%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn a_literal_never_closes_early() {
        // Whatever the input, the literal is one token: strip the outer quotes and every
        // remaining quote comes in pairs.
        for input in ["'", "''", "a'b", "'''", "x' or name eq 'y", "\u{0}'\n"] {
            let lit = literal(input);
            let inner = &lit[1..lit.len() - 1];
            assert_eq!(inner.replace("''", ""), input.replace('\'', ""));
            assert_eq!(inner.replace("''", "'"), input);
        }
    }
}
