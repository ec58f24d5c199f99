//! Cloud IoT devices: the stored form, reading a request body (proto3 JSON: lowerCamelCase or
//! the proto's snake_case names, `null` as unset, unknown names refused), validation, update
//! masks, field masks and the JSON answered.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use super::keys::{self, KeyFormat};

/// What Cloud IoT answers as the `expirationTime` of a credential without one.
pub(crate) const NO_EXPIRATION: &str = "1970-01-01T00:00:00Z";

/// At most this many credentials per device (Cloud IoT).
pub(crate) const MAX_CREDENTIALS: usize = 3;

const LOG_LEVELS: &[&str] = &["LOG_LEVEL_UNSPECIFIED", "NONE", "ERROR", "INFO", "DEBUG"];
const GATEWAY_TYPES: &[&str] = &["GATEWAY_TYPE_UNSPECIFIED", "GATEWAY", "NON_GATEWAY"];
const GATEWAY_AUTH_METHODS: &[&str] = &[
    "GATEWAY_AUTH_METHOD_UNSPECIFIED",
    "ASSOCIATION_ONLY",
    "DEVICE_AUTH_TOKEN_ONLY",
    "ASSOCIATION_AND_DEVICE_AUTH_TOKEN",
];

/// The `Device` fields (lowerCamelCase) a field mask may name.
const DEVICE_FIELDS: &[&str] = &[
    "id",
    "name",
    "numId",
    "credentials",
    "lastHeartbeatTime",
    "lastEventTime",
    "lastStateTime",
    "lastConfigAckTime",
    "lastConfigSendTime",
    "blocked",
    "lastErrorTime",
    "lastErrorStatus",
    "config",
    "state",
    "logLevel",
    "metadata",
    "gatewayConfig",
];

/// Fields the server sets; a body may carry them (e.g. a device read back) and they are
/// ignored.
const OUTPUT_ONLY: &[&str] = &[
    "lastHeartbeatTime",
    "lastEventTime",
    "lastStateTime",
    "lastConfigAckTime",
    "lastConfigSendTime",
    "lastErrorTime",
    "lastErrorStatus",
    "state",
];

/// A device credential as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    pub(crate) format: KeyFormat,
    pub(crate) key: String,
    /// RFC 3339 as given; `None` answers [`NO_EXPIRATION`].
    pub(crate) expiration: Option<String>,
}

impl Credential {
    fn to_json(&self) -> Value {
        json!({
            "publicKey": { "format": self.format.name(), "key": self.key },
            "expirationTime": self.expiration.as_deref().unwrap_or(NO_EXPIRATION),
        })
    }
}

/// A device as stored.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) num_id: u64,
    pub(crate) credentials: Vec<Credential>,
    pub(crate) blocked: bool,
    pub(crate) metadata: BTreeMap<String, String>,
    pub(crate) log_level: Option<String>,
    pub(crate) gateway_type: Option<String>,
    pub(crate) gateway_auth_method: Option<String>,
    pub(crate) config_version: u64,
    pub(crate) config_update_time: String,
    /// base64, as given.
    pub(crate) config_data: Option<String>,
}

impl Device {
    /// A new device from a create body's fields, created at `now` (RFC 3339).
    pub(crate) fn create(spec: Spec, num_id: u64, now: &str) -> Result<Device, String> {
        let Some(id) = spec.id else {
            return Err("The device id is required.".to_string());
        };
        check_id(&id)?;
        if spec.config_version.is_some_and(|v| v != 0) {
            return Err(
                "The config version must be 0 (or unset) when creating a device.".to_string(),
            );
        }
        let (gateway_type, gateway_auth_method) = spec.gateway.unwrap_or_default();
        Ok(Device {
            id,
            num_id,
            credentials: spec.credentials.unwrap_or_default(),
            blocked: spec.blocked.unwrap_or(false),
            metadata: spec.metadata.unwrap_or_default(),
            log_level: spec.log_level,
            gateway_type,
            gateway_auth_method,
            config_version: 1,
            config_update_time: now.to_string(),
            config_data: spec.config_data,
        })
    }

    /// `{registry path}/devices/{numId}`: Cloud IoT answers names ending in the numeric id.
    pub(crate) fn name(&self, registry_path: &str) -> String {
        format!("{registry_path}/devices/{}", self.num_id)
    }

    /// The device as Cloud IoT answers it (proto3 JSON: unset and default fields left out),
    /// all of it or, with `mask` (lowerCamelCase top-level names), only `id`, `numId` and those.
    pub(crate) fn to_json(&self, registry_path: &str, mask: Option<&[String]>) -> Value {
        let mut out = Map::new();
        let wanted = |field: &str| mask.is_none_or(|m| m.iter().any(|f| f == field));
        out.insert("id".into(), json!(self.id));
        if wanted("name") {
            out.insert("name".into(), json!(self.name(registry_path)));
        }
        out.insert("numId".into(), json!(self.num_id.to_string()));
        if wanted("credentials") && !self.credentials.is_empty() {
            let creds: Vec<Value> = self.credentials.iter().map(Credential::to_json).collect();
            out.insert("credentials".into(), Value::Array(creds));
        }
        if wanted("blocked") && self.blocked {
            out.insert("blocked".into(), json!(true));
        }
        if wanted("config") {
            let mut config = json!({
                "version": self.config_version.to_string(),
                "cloudUpdateTime": self.config_update_time,
            });
            if let Some(data) = self.config_data.as_deref().filter(|d| !d.is_empty()) {
                config["binaryData"] = json!(data);
            }
            out.insert("config".into(), config);
        }
        if wanted("logLevel")
            && let Some(level) = &self.log_level
        {
            out.insert("logLevel".into(), json!(level));
        }
        if wanted("metadata") && !self.metadata.is_empty() {
            out.insert("metadata".into(), json!(self.metadata));
        }
        if wanted("gatewayConfig") {
            out.insert(
                "gatewayConfig".into(),
                json!({
                    "gatewayType": self.gateway_type.as_deref().unwrap_or("NON_GATEWAY"),
                    "gatewayAuthMethod":
                        self.gateway_auth_method.as_deref().unwrap_or("ASSOCIATION_ONLY"),
                }),
            );
        }
        Value::Object(out)
    }

    /// Applies an update: each field of `mask` (checked by [`update_mask`]) is set from `spec`,
    /// or cleared when `spec` does not have it.
    pub(crate) fn update(&mut self, mask: &[UpdateField], spec: Spec) {
        for field in mask {
            match field {
                UpdateField::Credentials => {
                    self.credentials = spec.credentials.clone().unwrap_or_default();
                }
                UpdateField::Blocked => self.blocked = spec.blocked.unwrap_or(false),
                UpdateField::Metadata => self.metadata = spec.metadata.clone().unwrap_or_default(),
                UpdateField::LogLevel => self.log_level = spec.log_level.clone(),
                UpdateField::GatewayAuthMethod => {
                    self.gateway_auth_method =
                        spec.gateway.as_ref().and_then(|(_, method)| method.clone());
                }
            }
        }
    }
}

/// The fields of a device body, checked; `None` where the body does not set them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Spec {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) num_id: Option<String>,
    pub(crate) credentials: Option<Vec<Credential>>,
    pub(crate) blocked: Option<bool>,
    pub(crate) metadata: Option<BTreeMap<String, String>>,
    pub(crate) log_level: Option<String>,
    /// (gatewayType, gatewayAuthMethod) when `gatewayConfig` is set.
    pub(crate) gateway: Option<(Option<String>, Option<String>)>,
    /// Only on create: `config.binaryData`.
    pub(crate) config_data: Option<String>,
    pub(crate) config_version: Option<i64>,
}

/// A proto field name in lowerCamelCase (`num_id` → `numId`; camel names stay as they are).
pub(crate) fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The object's members under their lowerCamelCase names, `null` ones dropped; an error for a
/// name given twice (in both spellings) or not in `known` (lowerCamelCase).
fn members<'a>(
    obj: &'a Map<String, Value>,
    known: &[&str],
    what: &str,
) -> Result<BTreeMap<String, &'a Value>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in obj {
        let key = camel(name);
        if !known.contains(&key.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{name}\" at '{what}': Cannot find \
                 field."
            ));
        }
        if value.is_null() {
            continue;
        }
        if out.insert(key, value).is_some() {
            return Err(format!(
                "Invalid JSON payload received. The field \"{name}\" at '{what}' is given twice."
            ));
        }
    }
    Ok(out)
}

fn string<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
    value.as_str().ok_or_else(|| {
        format!(
            "Invalid value at '{what}' ({}), expected a string.",
            type_name(value)
        )
    })
}

fn enum_value(value: &Value, what: &str, allowed: &[&str]) -> Result<String, String> {
    let s = string(value, what)?;
    if allowed.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "Invalid value at '{what}' (type.googleapis.com/google.cloud.iot.v1): \"{s}\"; \
             expected one of {}.",
            allowed.join(", ")
        ))
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "TYPE_BOOL",
        Value::Number(_) => "TYPE_NUMBER",
        Value::String(_) => "TYPE_STRING",
        Value::Array(_) => "TYPE_LIST",
        Value::Object(_) => "TYPE_OBJECT",
    }
}

/// Reads a device body (a JSON object). Output-only fields are accepted and ignored.
pub(crate) fn parse_spec(body: &[u8]) -> Result<Spec, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    spec_from_value(&value)
}

pub(crate) fn spec_from_value(value: &Value) -> Result<Spec, String> {
    let Value::Object(obj) = value else {
        return Err(format!(
            "Invalid JSON payload received. The device must be a JSON object, not {}.",
            type_name(value)
        ));
    };
    let fields = members(obj, DEVICE_FIELDS, "device")?;
    let mut spec = Spec::default();
    for (name, value) in fields {
        match name.as_str() {
            "id" => spec.id = Some(string(value, "device.id")?.to_string()),
            "name" => spec.name = Some(string(value, "device.name")?.to_string()),
            "numId" => {
                spec.num_id = Some(match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err("Invalid value at 'device.num_id'.".to_string()),
                });
            }
            "credentials" => spec.credentials = Some(parse_credentials(value)?),
            "blocked" => {
                spec.blocked = Some(value.as_bool().ok_or_else(|| {
                    format!("Invalid value at 'device.blocked' ({}).", type_name(value))
                })?);
            }
            "metadata" => spec.metadata = Some(parse_metadata(value)?),
            "logLevel" => spec.log_level = Some(enum_value(value, "device.log_level", LOG_LEVELS)?),
            "gatewayConfig" => spec.gateway = Some(parse_gateway(value)?),
            "config" => {
                let (data, version) = parse_config(value)?;
                spec.config_data = data;
                spec.config_version = version;
            }
            other => debug_assert!(OUTPUT_ONLY.contains(&other), "unhandled field {other}"),
        }
    }
    Ok(spec)
}

fn parse_credentials(value: &Value) -> Result<Vec<Credential>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "Invalid value at 'device.credentials' ({}), expected a list.",
            type_name(value)
        ));
    };
    if items.len() > MAX_CREDENTIALS {
        return Err(format!(
            "The device has {} credentials; at most {MAX_CREDENTIALS} are allowed.",
            items.len()
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("device.credentials[{i}]");
        let Value::Object(obj) = item else {
            return Err(format!("Invalid value at '{at}', expected an object."));
        };
        let fields = members(obj, &["publicKey", "expirationTime"], &at)?;
        let Some(Value::Object(pk)) = fields.get("publicKey") else {
            return Err(format!(
                "The credential at '{at}' needs a public_key object with format and key."
            ));
        };
        let pk = members(pk, &["format", "key"], &format!("{at}.public_key"))?;
        let format_name = match pk.get("format") {
            Some(v) => string(v, &format!("{at}.public_key.format"))?,
            None => "",
        };
        let format = KeyFormat::parse(format_name).ok_or_else(|| {
            format!(
                "The public key format at '{at}' must be one of {} (got \"{format_name}\").",
                KeyFormat::NAMES
            )
        })?;
        let key = match pk.get("key") {
            Some(v) => string(v, &format!("{at}.public_key.key"))?,
            None => "",
        };
        keys::check(format, key).map_err(|e| format!("{e} (at '{at}')"))?;
        let expiration = match fields.get("expirationTime") {
            None => None,
            Some(v) => {
                let t = string(v, &format!("{at}.expiration_time"))?;
                if !is_rfc3339(t) {
                    return Err(format!(
                        "Invalid value at '{at}.expiration_time' (type.googleapis.com/\
                         google.protobuf.Timestamp), Field 'expirationTime', Illegal timestamp \
                         format; timestamps must end with 'Z' or have a valid timezone offset."
                    ));
                }
                Some(t.to_string())
            }
        };
        out.push(Credential {
            format,
            key: key.to_string(),
            expiration,
        });
    }
    Ok(out)
}

fn parse_metadata(value: &Value) -> Result<BTreeMap<String, String>, String> {
    let Value::Object(obj) = value else {
        return Err(format!(
            "Invalid value at 'device.metadata' ({}), expected an object.",
            type_name(value)
        ));
    };
    if obj.len() > 500 {
        return Err("The device metadata has more than 500 key-value pairs.".to_string());
    }
    let mut total = 0;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let mut chars = k.chars();
        let key_ok = k.len() >= 2
            && k.len() < 128
            && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || "-_.+~%".contains(c));
        if !key_ok {
            return Err(format!(
                "The metadata key \"{k}\" is invalid: it must match [a-zA-Z][a-zA-Z0-9-_.+~%]+ \
                 and be less than 128 bytes."
            ));
        }
        let v = v.as_str().ok_or_else(|| {
            format!("Invalid value at 'device.metadata[{k}]', expected a string.")
        })?;
        if v.len() > 32 * 1024 {
            return Err(format!(
                "The metadata value of \"{k}\" is larger than 32 KB."
            ));
        }
        total += k.len() + v.len();
        out.insert(k.clone(), v.to_string());
    }
    if total >= 256 * 1024 {
        return Err("The device metadata is 256 KB or larger in total.".to_string());
    }
    Ok(out)
}

fn parse_gateway(value: &Value) -> Result<(Option<String>, Option<String>), String> {
    let Value::Object(obj) = value else {
        return Err("Invalid value at 'device.gateway_config', expected an object.".to_string());
    };
    let fields = members(
        obj,
        &[
            "gatewayType",
            "gatewayAuthMethod",
            "lastAccessedGatewayId",
            "lastAccessedGatewayTime",
        ],
        "device.gateway_config",
    )?;
    let kind = fields
        .get("gatewayType")
        .map(|v| enum_value(v, "device.gateway_config.gateway_type", GATEWAY_TYPES))
        .transpose()?;
    let method = fields
        .get("gatewayAuthMethod")
        .map(|v| {
            enum_value(
                v,
                "device.gateway_config.gateway_auth_method",
                GATEWAY_AUTH_METHODS,
            )
        })
        .transpose()?;
    Ok((kind, method))
}

fn parse_config(value: &Value) -> Result<(Option<String>, Option<i64>), String> {
    let Value::Object(obj) = value else {
        return Err("Invalid value at 'device.config', expected an object.".to_string());
    };
    let fields = members(
        obj,
        &["version", "cloudUpdateTime", "deviceAckTime", "binaryData"],
        "device.config",
    )?;
    let data = fields
        .get("binaryData")
        .map(|v| {
            let s = string(v, "device.config.binary_data")?;
            let decodes = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
                .iter()
                .any(|engine| engine.decode(s).is_ok());
            if decodes {
                Ok(s.to_string())
            } else {
                Err("Invalid value at 'device.config.binary_data': not base64.".to_string())
            }
        })
        .transpose()?;
    let version = fields
        .get("version")
        .map(|v| match v {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
        .map(|v| v.ok_or_else(|| "Invalid value at 'device.config.version'.".to_string()))
        .transpose()?;
    Ok((data, version))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, fields in range (leap seconds aside).
pub(crate) fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return false;
    }
    if b[13] != b':' || b[16] != b':' {
        return false;
    }
    let (Some(_year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return false;
    }
    if second > 59 {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
                && (*h1 - b'0') * 10 + (*h2 - b'0') <= 23
                && (*m1 - b'0') * 10 + (*m2 - b'0') <= 59
        }
        _ => false,
    }
}

/// Cloud IoT device (and registry) ids: 3 to 255 characters, starting with a letter, of
/// `a-z A-Z 0-9 - . _ + ~ %`.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let ok = (3..=255).contains(&id.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._+~%".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "The device id \"{id}\" is invalid: it must be 3 to 255 characters, start with a \
             letter and contain only letters, digits and - . _ + ~ %."
        ))
    }
}

/// A field an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpdateField {
    Credentials,
    Blocked,
    Metadata,
    LogLevel,
    GatewayAuthMethod,
}

/// Reads `updateMask` (comma-separated, snake_case or lowerCamelCase paths): not empty, and
/// only mutable fields.
pub(crate) fn update_mask(raw: Option<&str>) -> Result<Vec<UpdateField>, String> {
    let raw = raw.unwrap_or("").trim();
    if raw.is_empty() || raw == "undefined" {
        return Err(
            "The update_mask is required: name the fields to update (credentials, blocked, \
             metadata, log_level, gateway_config.gateway_auth_method)."
                .to_string(),
        );
    }
    let mut out = Vec::new();
    for path in raw.split(',').map(str::trim) {
        let field = match camel(path).as_str() {
            "credentials" => UpdateField::Credentials,
            "blocked" => UpdateField::Blocked,
            "metadata" => UpdateField::Metadata,
            "logLevel" => UpdateField::LogLevel,
            "gatewayConfig.gatewayAuthMethod" => UpdateField::GatewayAuthMethod,
            _ => {
                return Err(format!(
                    "The update_mask path \"{path}\" is not a mutable field of the device \
                     (mutable: credentials, blocked, metadata, log_level, \
                     gateway_config.gateway_auth_method)."
                ));
            }
        };
        if !out.contains(&field) {
            out.push(field);
        }
    }
    Ok(out)
}

/// Reads a `fieldMask` (comma-separated, snake_case or lowerCamelCase paths; a nested path
/// selects its top-level field) into lowerCamelCase top-level names.
pub(crate) fn field_mask(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for path in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let top = camel(path.split('.').next().unwrap_or(path));
        if !DEVICE_FIELDS.contains(&top.as_str()) {
            return Err(format!(
                "The field mask path \"{path}\" is not a field of the device."
            ));
        }
        if !out.contains(&top) {
            out.push(top);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(check_id("balena-0123").is_ok());
        assert!(check_id("a.b_c+d~e%f-g").is_ok());
        assert!(check_id("ab").is_err());
        assert!(check_id("1abc").is_err());
        assert!(check_id("abc/d").is_err());
        assert!(check_id("abc d").is_err());
        assert!(check_id(&"a".repeat(255)).is_ok());
        assert!(check_id(&"a".repeat(256)).is_err());
    }

    #[test]
    fn names_in_camel_case() {
        assert_eq!(camel("num_id"), "numId");
        assert_eq!(camel("numId"), "numId");
        assert_eq!(
            camel("gateway_config.gateway_auth_method"),
            "gatewayConfig.gatewayAuthMethod"
        );
    }

    #[test]
    fn timestamps() {
        assert!(is_rfc3339("2030-01-01T00:00:00Z"));
        assert!(is_rfc3339("2030-01-01T00:00:00.123456789Z"));
        assert!(is_rfc3339("2030-01-01T00:00:00+02:00"));
        assert!(!is_rfc3339("2030-01-01T00:00:00"));
        assert!(!is_rfc3339("2030-13-01T00:00:00Z"));
        assert!(!is_rfc3339("2030-01-01 00:00:00Z"));
        assert!(!is_rfc3339("2030-01-01T00:00:00.Z"));
        assert!(!is_rfc3339("tomorrow"));
    }

    #[test]
    fn masks() {
        assert_eq!(
            update_mask(Some("credentials,blocked")),
            Ok(vec![UpdateField::Credentials, UpdateField::Blocked])
        );
        assert_eq!(
            update_mask(Some("log_level")),
            Ok(vec![UpdateField::LogLevel])
        );
        assert!(update_mask(None).is_err());
        assert!(update_mask(Some("undefined")).is_err());
        assert!(update_mask(Some("id")).is_err());
        assert!(update_mask(Some("config")).is_err());
        assert_eq!(
            field_mask("last_heartbeat_time,gateway_config.gateway_type"),
            Ok(vec![
                "lastHeartbeatTime".to_string(),
                "gatewayConfig".to_string()
            ])
        );
        assert!(field_mask("nope").is_err());
    }

    #[test]
    fn bodies() {
        let spec = spec_from_value(&json!({
            "id": "dev-1",
            "blocked": true,
            "metadata": {"k1": "v"},
            "log_level": "INFO",
            "lastHeartbeatTime": "2020-01-01T00:00:00Z",
            "credentials": null,
        }))
        .expect("valid");
        assert_eq!(spec.id.as_deref(), Some("dev-1"));
        assert_eq!(spec.blocked, Some(true));
        assert_eq!(spec.log_level.as_deref(), Some("INFO"));
        assert!(spec.credentials.is_none());
        assert!(spec_from_value(&json!({"id": "dev-1", "colour": "red"})).is_err());
        assert!(spec_from_value(&json!({"id": "dev-1", "numId": 1, "num_id": 1})).is_err());
        assert!(spec_from_value(&json!({"id": "dev-1", "metadata": {"1x": "v"}})).is_err());
        assert!(spec_from_value(&json!({"id": 5})).is_err());
        assert!(spec_from_value(&json!([])).is_err());
        assert!(
            spec_from_value(&json!({"credentials": [{"publicKey": {"format": "X", "key": ""}}]}))
                .is_err()
        );
        let four: Vec<Value> = (0..4).map(|_| json!({})).collect();
        assert!(spec_from_value(&json!({"credentials": four})).is_err());
    }
}
