//! Strict percent-decoding: a `%` must start a two-digit hex escape and the bytes must be UTF-8.

/// Why a string did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PercentError {
    /// A `%` without two hex digits after it.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    InvalidUtf8,
}

/// Decodes `%XX` escapes (either case), and `+` as a space when `plus_is_space` (as in a
/// query string); every other byte stands for itself.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Result<String, PercentError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi * 16 + lo),
                    _ => return Err(PercentError::BadEscape),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        assert_eq!(percent_decode("a%2Fb%2f", false).as_deref(), Ok("a/b/"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Ok("a+b"));
        assert_eq!(percent_decode("a+b", true).as_deref(), Ok("a b"));
        assert_eq!(percent_decode("%C3%A9", false).as_deref(), Ok("é"));
        assert_eq!(percent_decode("%", false), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%4", false), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%g0", false), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%ff", false), Err(PercentError::InvalidUtf8));
    }
}
