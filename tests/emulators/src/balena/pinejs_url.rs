//! How pinejs reads a URL: the raw text, not a percent-decoded one.
//!
//! pinejs hands the path and query string to its OData grammar as they came over the wire.
//! The grammar accepts a few escapes where it expects syntax (`%24` for the `$` of an option,
//! `%27` for an apostrophe, `%20` and `+` for a space, `%2B` for a number's sign); every other
//! percent escape outside a quoted string literal, such as `%2C` for a comma or `%28` for a
//! parenthesis, is a syntax error, answered 400 `"Malformed url: '<path and query>'"`. The text
//! between a literal's apostrophes (`''` standing for one apostrophe) is percent-decoded as
//! JavaScript's `decodeURIComponent` does, so `+` stays a plus there; an escape that does not
//! decode throws outside the grammar, and pinejs answers 500.
//!
//! This module turns that raw text into the plain OData text the emulator's parser
//! ([`super::odata`]) reads, refusing what pinejs refuses. A literal comes out with its content
//! decoded and its apostrophes doubled again, so the parser reads it as one token whatever it
//! holds.

use crate::common::percent::percent_decode;

/// Why pinejs would not read a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinejsUrlError {
    /// A syntax error: 400 `"Malformed url: '…'"`.
    Malformed,
    /// A string literal whose escapes `decodeURIComponent` rejects: pinejs fails with 500.
    UndecodableLiteral,
}

/// Where a piece of raw OData text stands, which decides whether `%24` may stand for `$`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The resource path after `/v7/` (`device(uuid='x')`, `device/$count`): the grammar's
    /// `$count` there is a plain `$`.
    Path,
    /// The value of a `$` query option, where a nested option's `$` may also be `%24`.
    OptionValue,
}

/// The raw query string as `(name, value)` pairs of plain text. OData options (`$select`, also
/// written `%24select`) get their value through [`decode_odata_text`]; other parameters (such
/// as `apikey`) are ordinary form-encoded pairs.
pub fn decode_query(query: &str) -> Result<Vec<(String, String)>, PinejsUrlError> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let option = name.strip_prefix('$').or_else(|| name.strip_prefix("%24"));
        match option {
            Some(option) => {
                // An option's name is grammar keywords: letters only, never escaped.
                if option.is_empty() || !option.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(PinejsUrlError::Malformed);
                }
                pairs.push((
                    format!("${option}"),
                    decode_odata_text(value, Place::OptionValue)?,
                ));
            }
            None => {
                let decode = |s| percent_decode(s, true).map_err(|_| PinejsUrlError::Malformed);
                pairs.push((decode(name)?, decode(value)?));
            }
        }
    }
    Ok(pairs)
}

/// Raw OData text (a path or an option value) as plain OData text; see the module comment.
pub fn decode_odata_text(raw: &str, place: Place) -> Result<String, PinejsUrlError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = strip_apostrophe(rest) {
            let (content, after) = literal_content(after)?;
            let decoded =
                percent_decode(&content, false).map_err(|_| PinejsUrlError::UndecodableLiteral)?;
            out.push('\'');
            out.push_str(&decoded.replace('\'', "''"));
            out.push('\'');
            rest = after;
        } else if c == '+' {
            out.push(' ');
            rest = &rest[1..];
        } else if c == '%' {
            let escaped = match rest.get(..3) {
                Some("%20") => ' ',
                Some("%24") if place == Place::OptionValue => '$',
                // Case-sensitive, as the grammar spells it: `%2b` is malformed.
                Some("%2B") => '+',
                _ => return Err(PinejsUrlError::Malformed),
            };
            out.push(escaped);
            rest = &rest[3..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(out)
}

/// The text after an apostrophe (`'` or `%27`) at the start of `s`, if there is one.
fn strip_apostrophe(s: &str) -> Option<&str> {
    s.strip_prefix('\'').or_else(|| s.strip_prefix("%27"))
}

/// The still-encoded content of a literal whose opening apostrophe is already read, with each
/// doubled apostrophe made one, and the text after its closing apostrophe.
fn literal_content(mut rest: &str) -> Result<(String, &str), PinejsUrlError> {
    let mut content = String::new();
    loop {
        if let Some(after) = strip_apostrophe(rest) {
            match strip_apostrophe(after) {
                Some(after_pair) => {
                    content.push('\'');
                    rest = after_pair;
                }
                None => return Ok((content, after)),
            }
        } else {
            let c = rest.chars().next().ok_or(PinejsUrlError::Malformed)?;
            content.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PinejsUrlError::{Malformed, UndecodableLiteral};

    fn value(raw: &str) -> Result<String, PinejsUrlError> {
        decode_odata_text(raw, Place::OptionValue)
    }

    #[test]
    fn syntax_must_be_literal() {
        let expand = "device_tag($select=id,tag_key;$filter=startswith(tag_key,'x'))";
        assert_eq!(value(expand).as_deref(), Ok(expand));
        for raw in [
            "id%2Cuuid",
            "device_tag%28%24select%3Did%29",
            "device_tag($select=id%3Btag_key)",
            "%69d",
            "id%20eq%20%31",
            "a%2fb",
            "%2b1",
            "%",
            "%2",
        ] {
            assert_eq!(value(raw), Err(Malformed), "{raw}");
        }
    }

    #[test]
    fn spaces_dollars_apostrophes_and_signs_may_be_escaped() {
        assert_eq!(value("id+eq+1").as_deref(), Ok("id eq 1"));
        assert_eq!(value("id%20eq%20%2B1").as_deref(), Ok("id eq +1"));
        assert_eq!(
            value("device_tag(%24select=id)").as_deref(),
            Ok("device_tag($select=id)")
        );
        assert_eq!(value("uuid%20eq%20%27ab%27").as_deref(), Ok("uuid eq 'ab'"));
        assert_eq!(value("uuid eq %27ab'").as_deref(), Ok("uuid eq 'ab'"));
    }

    #[test]
    fn literal_content_is_decoded_like_decode_uri_component() {
        assert_eq!(value("'a+b%2Bc'").as_deref(), Ok("'a+b+c'"));
        assert_eq!(value("'a%2Cb%28%3D%3B%2F'").as_deref(), Ok("'a,b(=;/'"));
        assert_eq!(value("'%C3%A9%20x'").as_deref(), Ok("'é x'"));
        // `%2527` is an escaped percent sign followed by `27`, not an apostrophe.
        assert_eq!(value("'a%2527'").as_deref(), Ok("'a%27'"));
        assert_eq!(value("'%ZZ'"), Err(UndecodableLiteral));
        assert_eq!(value("'a%2'"), Err(UndecodableLiteral));
        assert_eq!(value("'%FF'"), Err(UndecodableLiteral));
    }

    #[test]
    fn doubled_apostrophes_in_either_spelling_are_one_apostrophe() {
        assert_eq!(value("'it''s'").as_deref(), Ok("'it''s'"));
        assert_eq!(value("'it%27%27s'").as_deref(), Ok("'it''s'"));
        assert_eq!(value("%27it'%27s%27").as_deref(), Ok("'it''s'"));
        // A lone `%27` inside ends the literal, so what follows is outside it.
        assert_eq!(value("'a%27'"), Err(Malformed));
        assert_eq!(value("'unterminated"), Err(Malformed));
    }

    #[test]
    fn the_path_takes_no_escaped_dollar() {
        assert_eq!(
            decode_odata_text("device/%24count", Place::Path),
            Err(Malformed)
        );
        assert_eq!(
            decode_odata_text("device(uuid=%27x%27)", Place::Path).as_deref(),
            Ok("device(uuid='x')")
        );
        assert_eq!(
            decode_odata_text("device%28uuid='x')", Place::Path),
            Err(Malformed)
        );
    }

    #[test]
    fn the_query_is_split_into_options_and_parameters() {
        assert_eq!(
            decode_query("%24select=id&$filter=id+eq+1&apikey=a%2Cb&&x").unwrap(),
            vec![
                ("$select".to_string(), "id".to_string()),
                ("$filter".to_string(), "id eq 1".to_string()),
                ("apikey".to_string(), "a,b".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
        assert_eq!(decode_query("$sel%65ct=id"), Err(Malformed));
        assert_eq!(decode_query("$=id"), Err(Malformed));
    }
}
