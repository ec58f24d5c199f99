//! The hostile-input corpus (`tests/corpus/hostile-requests.json`): requests a fleet's worst
//! callers send, each with the exact status and error code it must get, and whether it may
//! reach an upstream at all. The file is data; this module turns a case into a [`Call`].
//!
//! A case: `name`, `method`, `path`, optional `query`, a body as `body` (text), `json` (a
//! value) or `generate` (`{"pad": N}`: a valid body padded to N bytes; `{"nest": [open, close,
//! N]}`: `open` N times then `close` N times), `headers`, `auth` (`device`, `other`,
//! `operator`, `operator_off`, `none` or `raw:<Authorization value>`), `expect` (`status`, and
//! `code` or null when the answer has no body to read, as for HEAD) and `upstream` (whether the
//! case needs balenaCloud to answer it). Strings may hold `{uuid}`, `{UUID}`, `{csr_other}`,
//! `{csr_tampered}`, `{csr_p384}`, `{certificate}` and `{private_key}`, made per run.

use serde::Deserialize;
use serde_json::Value;

use crate::events::Call;

#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    pub name: String,
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub json: Option<Value>,
    #[serde(default)]
    pub generate: Option<Value>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    pub auth: String,
    pub expect: Expect,
    pub upstream: bool,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Expect {
    pub status: u16,
    pub code: Option<String>,
}

pub fn load() -> Vec<Case> {
    let path = crate::paths::repo_root().join("tests/corpus/hostile-requests.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Who the request claims to be.
pub struct Callers<'a> {
    pub device_key: &'a str,
    pub other_key: &'a str,
    pub operator_token: &'a str,
}

/// The values a case's placeholders stand for, made for one device.
pub struct Material {
    values: Vec<(&'static str, String)>,
}

impl Material {
    pub fn new(uuid: &str) -> Material {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = |key: &rcgen::KeyPair, cn: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.serialize_request(key).unwrap()
        };
        let mut tampered = csr(&key, uuid).der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut cert_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        cert_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, uuid);
        let certificate = cert_params.self_signed(&key).unwrap().pem();
        Material {
            values: vec![
                ("{uuid}", uuid.to_string()),
                ("{UUID}", uuid.to_uppercase()),
                (
                    "{csr_other}",
                    csr(&key, "00000000000000000000000000000000").pem().unwrap(),
                ),
                ("{csr_tampered}", pem("CERTIFICATE REQUEST", &tampered)),
                ("{csr_p384}", csr(&p384, uuid).pem().unwrap()),
                ("{certificate}", certificate),
                ("{private_key}", key.serialize_pem()),
            ],
        }
    }

    fn fill(&self, text: &str) -> String {
        self.values
            .iter()
            .fold(text.to_string(), |text, (name, value)| {
                text.replace(name, value)
            })
    }

    fn fill_json(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.fill(s)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.fill_json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.fill_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = provision_core::codec::base64_encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl Case {
    /// The request this case sends.
    pub fn call(&self, material: &Material, callers: &Callers<'_>) -> Call {
        let mut call = Call::new(&self.method, &self.path);
        call.query = material.fill(self.query.as_deref().unwrap_or(""));
        call.body = if let Some(body) = &self.body {
            Some(material.fill(body))
        } else if let Some(json) = &self.json {
            Some(material.fill_json(json).to_string())
        } else {
            self.generate.as_ref().map(|g| material.fill(&generate(g)))
        };
        for (name, value) in &self.headers {
            call = call.header(name, value);
        }
        match self.auth.as_str() {
            "none" => call,
            "device" => call.bearer(callers.device_key),
            "other" => call.bearer(callers.other_key),
            "operator" => call.bearer(callers.operator_token),
            "operator_off" => {
                let mut off = callers.operator_token.to_string();
                let last = off.pop().unwrap_or('x');
                off.push(if last == 'a' { 'b' } else { 'a' });
                call.bearer(&off)
            }
            raw => call.header(
                "authorization",
                raw.strip_prefix("raw:")
                    .unwrap_or_else(|| panic!("unknown auth '{raw}'")),
            ),
        }
    }
}

fn generate(spec: &Value) -> String {
    if let Some(n) = spec.get("pad").and_then(Value::as_u64) {
        let head = "{\"uuid\":\"{uuid}\",\"pad\":\"";
        let pad = (n as usize).saturating_sub(head.len() + 2);
        return format!("{head}{}\"}}", "x".repeat(pad));
    }
    if let Some([open, close, n]) = spec
        .get("nest")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let n = n.as_u64().unwrap_or(1) as usize;
        return format!(
            "{}{}",
            open.as_str().unwrap_or("").repeat(n),
            close.as_str().unwrap_or("").repeat(n)
        );
    }
    panic!("unknown generator {spec}")
}
