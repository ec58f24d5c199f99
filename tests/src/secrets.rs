//! The secret audit every test world runs when it stops: nothing the function printed (its
//! debug logs, panic messages included: they go to stderr) and no answer it gave (error bodies
//! included) may hold a secret. Run by every world of every test, it covers the whole suite.
//!
//! What counts as a secret: the values a world knows (balenaCloud keys of the function and of
//! every device, the operator token, the registry's keys and tokens) and, whatever their value,
//! the shapes of secrets no world needs to know in advance: a PEM private key (or any PEM block
//! in base64, which is how variables hold keys), a SAS token or its signature, a connection
//! string's key.

use crate::process::LogBook;

/// Text that only a secret would contain, whatever its value.
const SHAPES: &[&str] = &[
    // A PEM private key ("-----BEGIN EC PRIVATE KEY-----", "PRIVATE KEY-----").
    "PRIVATE KEY",
    // Base64 of "-----BEGIN": a PEM block as balenaCloud variables hold it.
    "LS0tLS1CRUdJTi",
    // An IoT Hub SAS token, or a connection string's key.
    "SharedAccessSignature sr=",
    "SharedAccessKey=",
    "&sig=",
];

/// Lines and answers holding a secret, each with the secret masked (so the report itself does
/// not spread it).
pub fn leaks(logs: &LogBook, known: &[String]) -> Vec<String> {
    let known: Vec<&str> = known
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() >= 8)
        .collect();
    let mut found = Vec::new();
    let sources = logs
        .lines()
        .into_iter()
        .map(|l| ("log", l))
        .chain(logs.answers().into_iter().map(|a| ("answer", a)));
    for (what, text) in sources {
        let shape = SHAPES.iter().find(|s| text.contains(*s));
        let value = known.iter().find(|k| text.contains(*k));
        if shape.is_none() && value.is_none() {
            continue;
        }
        let mut masked = text.clone();
        for k in &known {
            masked = masked.replace(k, "<secret>");
        }
        let kind = shape.map_or_else(
            || "a known secret value".to_string(),
            |s| format!("text shaped like a secret ({s:?})"),
        );
        found.push(format!(
            "{what} holds {kind}: {}",
            masked.chars().take(300).collect::<String>()
        ));
    }
    found
}

/// Panics with the leaks, if any.
pub fn assert_none(world: &str, logs: &LogBook, known: &[String]) {
    let found = leaks(logs, known);
    assert!(
        found.is_empty(),
        "{world}: secrets in the function's output or answers:\n{}",
        found.join("\n")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_known_values_and_secret_shapes_and_masks_them() {
        let logs = LogBook::default();
        logs.push("[f#0] DEBUG answered 201".into());
        logs.push("[f#0] key=fnkey0123456789 used".into());
        logs.push("[f#0] -----BEGIN PRIVATE KEY----- oops".into());
        logs.record_answer(r#"{"code":"provision.request.bad-json"}"#);
        logs.record_answer(r#"{"message":"SharedAccessSignature sr=hub&sig=abc"}"#);
        let found = leaks(&logs, &["fnkey0123456789".to_string()]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found.iter().all(|f| !f.contains("fnkey0123456789")),
            "the report masks the value: {found:?}"
        );
    }
}
