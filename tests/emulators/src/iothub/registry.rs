//! The identity registry: device identities, their validation and their JSON form.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};

use crate::common::time::{Utc, since_epoch};

/// The timestamp IoT Hub answers for "never".
pub(crate) const NEVER: &str = "0001-01-01T00:00:00Z";

/// The longest device id IoT Hub accepts.
const MAX_ID_LEN: usize = 128;

/// Symmetric keys must decode to this many bytes (inclusive), as on IoT Hub.
const KEY_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthType {
    Sas,
    SelfSigned,
    CertificateAuthority,
    None,
}

impl AuthType {
    fn parse(s: &str) -> Option<AuthType> {
        // The hub's JSON enums are case-insensitive.
        match s.to_ascii_lowercase().as_str() {
            "sas" => Some(AuthType::Sas),
            "selfsigned" => Some(AuthType::SelfSigned),
            "certificateauthority" => Some(AuthType::CertificateAuthority),
            "none" => Some(AuthType::None),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AuthType::Sas => "sas",
            AuthType::SelfSigned => "selfSigned",
            AuthType::CertificateAuthority => "certificateAuthority",
            AuthType::None => "none",
        }
    }
}

/// A device identity as stored.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) enabled: bool,
    pub(crate) status_reason: Option<String>,
    pub(crate) auth_type: AuthType,
    pub(crate) primary_key: Option<String>,
    pub(crate) secondary_key: Option<String>,
    /// Uppercase hex.
    pub(crate) primary_thumbprint: Option<String>,
    /// Uppercase hex.
    pub(crate) secondary_thumbprint: Option<String>,
    pub(crate) iot_edge: bool,
    pub(crate) etag: String,
    pub(crate) generation_id: String,
    pub(crate) status_updated_time: String,
}

impl Device {
    /// The JSON IoT Hub answers for this identity.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "deviceId": self.id,
            "generationId": self.generation_id,
            "etag": self.etag,
            "connectionState": "Disconnected",
            "status": if self.enabled { "enabled" } else { "disabled" },
            "statusReason": self.status_reason,
            "connectionStateUpdatedTime": NEVER,
            "statusUpdatedTime": self.status_updated_time,
            "lastActivityTime": NEVER,
            "cloudToDeviceMessageCount": 0,
            "authentication": {
                "symmetricKey": {
                    "primaryKey": self.primary_key,
                    "secondaryKey": self.secondary_key,
                },
                "x509Thumbprint": {
                    "primaryThumbprint": self.primary_thumbprint,
                    "secondaryThumbprint": self.secondary_thumbprint,
                },
                "type": self.auth_type.name(),
            },
            "capabilities": { "iotEdge": self.iot_edge },
            "deviceScope": Value::Null,
            "parentScopes": [],
        })
    }
}

/// What a PUT body asks for (server-owned fields are ignored, as on IoT Hub).
#[derive(Debug, Clone)]
pub(crate) struct DeviceSpec {
    pub(crate) enabled: bool,
    pub(crate) status_reason: Option<String>,
    pub(crate) auth_type: AuthType,
    /// Both `None` means "generate" (for `sas`).
    pub(crate) keys: Option<(String, String)>,
    pub(crate) primary_thumbprint: Option<String>,
    pub(crate) secondary_thumbprint: Option<String>,
    pub(crate) iot_edge: bool,
}

/// Checks a device id as IoT Hub does: 1 to 128 characters of
/// `A-Z a-z 0-9 - . % _ * ? ! ( ) , : = @ $ '`.
pub(crate) fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.%_*?!(),:=@$'".contains(&b))
}

/// A field of a JSON object that may be absent or `null`.
fn optional<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// An optional string field; an empty string counts as absent. Any other type is an error.
fn optional_string(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match optional(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("The property '{name}' must be a string.")),
    }
}

fn optional_object<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match optional(obj, name) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(format!("The property '{name}' must be an object.")),
    }
}

/// A thumbprint in uppercase hex: SHA-1 (40 hex digits) or SHA-256 (64).
fn thumbprint(value: Option<String>, which: &str) -> Result<Option<String>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let ok = matches!(value.len(), 40 | 64) && value.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(Some(value.to_ascii_uppercase()))
    } else {
        Err(format!(
            "The {which} thumbprint is invalid: a thumbprint is a SHA-1 (40 hex digits) or \
             SHA-256 (64 hex digits) digest."
        ))
    }
}

fn symmetric_key(value: &str, which: &str) -> Result<(), String> {
    match B64.decode(value.as_bytes()) {
        Ok(bytes) if KEY_BYTES.contains(&bytes.len()) => Ok(()),
        _ => Err(format!(
            "The {which} key is invalid: keys are base64 encodings of 16 to 64 bytes."
        )),
    }
}

/// Validates a PUT body for the device `id` (from the path).
pub(crate) fn parse_spec(id: &str, body: &[u8]) -> Result<DeviceSpec, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("The request body is not JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("The request body must be a JSON object describing a device.".into());
    };
    match optional(&obj, "deviceId") {
        Some(Value::String(body_id)) if body_id == id => {}
        Some(Value::String(body_id)) => {
            return Err(format!(
                "The device id in the body '{body_id}' does not match the device id in the \
                 request path '{id}'."
            ));
        }
        Some(_) => return Err("The property 'deviceId' must be a string.".into()),
        None => return Err("The property 'deviceId' is required.".into()),
    }

    let enabled = match optional_string(&obj, "status")? {
        None => true,
        Some(s) if s.eq_ignore_ascii_case("enabled") => true,
        Some(s) if s.eq_ignore_ascii_case("disabled") => false,
        Some(s) => {
            return Err(format!(
                "The status '{s}' is invalid: it must be 'enabled' or 'disabled'."
            ));
        }
    };
    let status_reason = optional_string(&obj, "statusReason")?;
    if status_reason.as_ref().is_some_and(|r| r.len() > 128) {
        return Err("The status reason must be at most 128 characters.".into());
    }

    let iot_edge = match optional_object(&obj, "capabilities")? {
        None => false,
        Some(caps) => match optional(caps, "iotEdge") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("The property 'capabilities.iotEdge' must be a boolean.".into()),
        },
    };

    let empty = Map::new();
    let auth = optional_object(&obj, "authentication")?.unwrap_or(&empty);
    let sym = optional_object(auth, "symmetricKey")?.unwrap_or(&empty);
    let x509 = optional_object(auth, "x509Thumbprint")?.unwrap_or(&empty);
    let primary_key = optional_string(sym, "primaryKey")?;
    let secondary_key = optional_string(sym, "secondaryKey")?;
    let primary_thumbprint = thumbprint(optional_string(x509, "primaryThumbprint")?, "primary")?;
    let secondary_thumbprint =
        thumbprint(optional_string(x509, "secondaryThumbprint")?, "secondary")?;

    let auth_type = match optional_string(auth, "type")? {
        Some(t) => AuthType::parse(&t).ok_or_else(|| {
            format!(
                "The authentication type '{t}' is invalid: it must be 'sas', 'selfSigned', \
                 'certificateAuthority' or 'none'."
            )
        })?,
        None if primary_thumbprint.is_some() || secondary_thumbprint.is_some() => {
            AuthType::SelfSigned
        }
        None => AuthType::Sas,
    };

    let has_keys = primary_key.is_some() || secondary_key.is_some();
    let has_thumbprints = primary_thumbprint.is_some() || secondary_thumbprint.is_some();
    let keys = match auth_type {
        AuthType::Sas => {
            if has_thumbprints {
                return Err(
                    "A device with 'sas' authentication cannot have X.509 thumbprints.".into(),
                );
            }
            match (primary_key, secondary_key) {
                (None, None) => None,
                (Some(p), Some(s)) => {
                    symmetric_key(&p, "primary")?;
                    symmetric_key(&s, "secondary")?;
                    Some((p, s))
                }
                _ => {
                    return Err(
                        "Either both the primary and the secondary key must be given, \
                                or neither (to have them generated)."
                            .into(),
                    );
                }
            }
        }
        AuthType::SelfSigned => {
            if has_keys {
                return Err(
                    "A device with 'selfSigned' authentication cannot have symmetric keys.".into(),
                );
            }
            if primary_thumbprint.is_none() {
                return Err(
                    "A device with 'selfSigned' authentication needs a primary thumbprint.".into(),
                );
            }
            None
        }
        AuthType::CertificateAuthority | AuthType::None => {
            if has_keys || has_thumbprints {
                return Err(format!(
                    "A device with '{}' authentication cannot have keys or thumbprints.",
                    auth_type.name()
                ));
            }
            None
        }
    };

    Ok(DeviceSpec {
        enabled,
        status_reason,
        auth_type,
        keys,
        primary_thumbprint,
        secondary_thumbprint,
        iot_edge,
    })
}

/// A new random symmetric key (32 bytes, base64), as IoT Hub generates.
pub(crate) fn generate_key() -> String {
    let bytes: Vec<u8> = uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .chain(uuid::Uuid::new_v4().as_bytes())
        .copied()
        .collect();
    B64.encode(bytes)
}

/// Now as `YYYY-MM-DDTHH:MM:SS.fffffffZ` (UTC), the hub's timestamp form.
pub(crate) fn timestamp_now() -> String {
    Utc::now().iso8601(7)
}

/// `MM/DD/YYYY HH:MM:SS` (UTC), the form of the time stamp in IoT Hub's tracking ids.
pub(crate) fn tracking_timestamp() -> String {
    let t = Utc::now();
    format!(
        "{:02}/{:02}/{:04} {:02}:{:02}:{:02}",
        t.month, t.day, t.year, t.hour, t.minute, t.second
    )
}

/// .NET ticks (100 ns since 0001-01-01) now, the form of IoT Hub's generation ids.
pub(crate) fn dotnet_ticks_now() -> u128 {
    const EPOCH_TICKS: u128 = 621_355_968_000_000_000;
    EPOCH_TICKS + since_epoch().as_nanos() / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(valid_device_id("balena-0123abc"));
        assert!(valid_device_id("a.b%c_d*e?f!g(h)i,j:k=l@m$n'o"));
        assert!(valid_device_id(&"a".repeat(128)));
        assert!(!valid_device_id(&"a".repeat(129)));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id("a b"));
        assert!(!valid_device_id("a/b"));
        assert!(!valid_device_id("é"));
    }

    #[test]
    fn specs() {
        let tp = "ab".repeat(20);
        let spec = parse_spec(
            "d",
            json!({"deviceId": "d", "authentication": {"x509Thumbprint": {"primaryThumbprint": tp}}})
                .to_string()
                .as_bytes(),
        )
        .expect("valid");
        assert_eq!(spec.auth_type, AuthType::SelfSigned);
        assert_eq!(spec.primary_thumbprint, Some("AB".repeat(20)));

        let spec = parse_spec(
            "d",
            br#"{"deviceId":"d","authentication":{"type":"sas","symmetricKey":{"primaryKey":"","secondaryKey":""}}}"#,
        )
        .expect("valid");
        assert!(spec.keys.is_none());

        for bad in [
            &b"[]"[..],
            b"not json",
            br#"{"deviceId":"e"}"#,
            br#"{"deviceId":1}"#,
            br#"{}"#,
            br#"{"deviceId":"d","status":"off"}"#,
            br#"{"deviceId":"d","status":7}"#,
            br#"{"deviceId":"d","authentication":"x"}"#,
            br#"{"deviceId":"d","authentication":{"type":"magic"}}"#,
            br#"{"deviceId":"d","authentication":{"type":"selfSigned"}}"#,
            br#"{"deviceId":"d","authentication":{"type":"selfSigned","x509Thumbprint":{"primaryThumbprint":"abc"}}}"#,
            br#"{"deviceId":"d","authentication":{"type":"sas","symmetricKey":{"primaryKey":"short","secondaryKey":"short"}}}"#,
            br#"{"deviceId":"d","authentication":{"type":"sas","symmetricKey":{"primaryKey":"c2VjcmV0LWtleS1mb3ItdGhlLXRlc3Rz"}}}"#,
            br#"{"deviceId":"d","capabilities":{"iotEdge":"yes"}}"#,
        ] {
            assert!(
                parse_spec("d", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
