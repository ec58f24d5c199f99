//! Shared access signatures: making them (for tests) and checking the `Authorization` header
//! of a request against the hub's policies, as IoT Hub does for service (policy) tokens.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::Policy;
use crate::common::percent;
use crate::common::time::since_epoch;

/// What `encodeURIComponent` leaves alone, minus the characters the Azure SDKs escape too
/// (`! ' ( ) *`): everything but `A-Z a-z 0-9 - _ . ~` is escaped.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` as the Azure SDKs do for token fields (uppercase hex).
pub(crate) fn encode_component(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A service SAS token for `hub_host` signed with the policy `policy` and its base64 key, valid
/// until `expiry_unix` (seconds since the epoch):
/// `SharedAccessSignature sr=<host>&sig=<signature>&se=<expiry>&skn=<policy>`, every field
/// URL-encoded and the signature the base64 HMAC-SHA256 of `"<url-encoded host>\n<expiry>"`
/// under the base64-decoded key. A key that is not valid base64 signs with its raw bytes (the
/// token is then simply wrong, which is what a test of a bad key wants).
pub fn sas_token(hub_host: &str, policy: &str, key_b64: &str, expiry_unix: u64) -> String {
    let sr = encode_component(hub_host);
    let key = B64
        .decode(key_b64)
        .unwrap_or_else(|_| key_b64.as_bytes().to_vec());
    let signature = sign(&key, &format!("{sr}\n{expiry_unix}"));
    format!(
        "SharedAccessSignature sr={sr}&sig={}&se={expiry_unix}&skn={}",
        encode_component(&signature),
        encode_component(policy)
    )
}

fn sign(key: &[u8], string_to_sign: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    B64.encode(hmac::sign(&key, string_to_sign.as_bytes()).as_ref())
}

pub(crate) fn now_unix() -> u64 {
    since_epoch().as_secs()
}

/// Why a token was refused (the answer is always the same 401; this is for the record and
/// for the tests of the emulator itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing,
    Malformed,
    Expired,
    UnknownPolicy,
    WrongAudience,
    BadSignature,
}

/// The policy a valid token was signed with.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) policy: String,
    pub(crate) registry_write: bool,
}

/// Checks an `Authorization` header value against the hub's host name and policies.
pub(crate) fn verify(
    header: Option<&str>,
    hub_host: &str,
    policies: &[Policy],
    now: u64,
) -> Result<Caller, Refusal> {
    let header = header.map(str::trim).ok_or(Refusal::Missing)?;
    let (scheme, fields) = header.split_once(' ').ok_or(Refusal::Malformed)?;
    if scheme != "SharedAccessSignature" {
        return Err(Refusal::Malformed);
    }
    let mut sr = None;
    let mut sig = None;
    let mut se = None;
    let mut skn = None;
    for field in fields.trim().split('&') {
        let (name, value) = field.split_once('=').ok_or(Refusal::Malformed)?;
        let slot = match name {
            "sr" => &mut sr,
            "sig" => &mut sig,
            "se" => &mut se,
            "skn" => &mut skn,
            _ => return Err(Refusal::Malformed),
        };
        if slot.replace(value).is_some() {
            return Err(Refusal::Malformed);
        }
    }
    let (Some(sr_raw), Some(sig), Some(se_raw), Some(skn)) = (sr, sig, se, skn) else {
        return Err(Refusal::Malformed);
    };

    let expiry: u64 = se_raw.parse().map_err(|_| Refusal::Malformed)?;
    if expiry <= now {
        return Err(Refusal::Expired);
    }

    let policy_name = percent_decode(skn).ok_or(Refusal::Malformed)?;
    let policy = policies
        .iter()
        .find(|p| p.name == policy_name)
        .ok_or(Refusal::UnknownPolicy)?;

    let audience = percent_decode(sr_raw)
        .ok_or(Refusal::Malformed)?
        .to_ascii_lowercase();
    let host = hub_host.to_ascii_lowercase();
    let under_host = audience
        .strip_prefix(&host)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !under_host {
        return Err(Refusal::WrongAudience);
    }

    let signature = percent_decode(sig)
        .and_then(|s| B64.decode(s.as_bytes()).ok())
        .ok_or(Refusal::BadSignature)?;
    let key = B64
        .decode(policy.key_base64.as_bytes())
        .map_err(|_| Refusal::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    hmac::verify(&key, format!("{sr_raw}\n{se_raw}").as_bytes(), &signature)
        .map_err(|_| Refusal::BadSignature)?;

    Ok(Caller {
        policy: policy.name.clone(),
        registry_write: policy.registry_write,
    })
}

/// Strict percent-decoding (no `+` for space): `None` on a broken escape or invalid UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    percent::percent_decode(s, false).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "hub.azure-devices.net";
    const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3RzLTAxMjM0NTY=";

    fn policies() -> Vec<Policy> {
        vec![Policy {
            name: "iothubowner".into(),
            key_base64: KEY.into(),
            registry_write: true,
        }]
    }

    #[test]
    fn accepts_its_own_tokens_and_refuses_changed_ones() {
        let now = 1_000;
        let token = sas_token(HOST, "iothubowner", KEY, 2_000);
        assert!(verify(Some(&token), HOST, &policies(), now).is_ok());
        // Fields in another order.
        let fields: Vec<&str> = token
            .trim_start_matches("SharedAccessSignature ")
            .split('&')
            .rev()
            .collect();
        let reordered = format!("SharedAccessSignature {}", fields.join("&"));
        assert!(verify(Some(&reordered), HOST, &policies(), now).is_ok());
        // Expired, wrong key, wrong policy, wrong host.
        assert_eq!(
            verify(Some(&token), HOST, &policies(), 2_000).err(),
            Some(Refusal::Expired)
        );
        let other_key = sas_token(HOST, "iothubowner", "b3RoZXIta2V5", 2_000);
        assert_eq!(
            verify(Some(&other_key), HOST, &policies(), now).err(),
            Some(Refusal::BadSignature)
        );
        let other_policy = sas_token(HOST, "service", KEY, 2_000);
        assert_eq!(
            verify(Some(&other_policy), HOST, &policies(), now).err(),
            Some(Refusal::UnknownPolicy)
        );
        let other_host = sas_token("other.azure-devices.net", "iothubowner", KEY, 2_000);
        assert_eq!(
            verify(Some(&other_host), HOST, &policies(), now).err(),
            Some(Refusal::WrongAudience)
        );
        let prefix_trick = sas_token("hub.azure-devices.net.evil", "iothubowner", KEY, 2_000);
        assert_eq!(
            verify(Some(&prefix_trick), HOST, &policies(), now).err(),
            Some(Refusal::WrongAudience)
        );
        let under = sas_token(&format!("{HOST}/devices"), "iothubowner", KEY, 2_000);
        assert!(verify(Some(&under), HOST, &policies(), now).is_ok());
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        for header in [
            "",
            "SharedAccessSignature",
            "SharedAccessSignature ",
            "Bearer abc",
            "SharedAccessSignature sr=a&sig=b&se=c&skn=d",
            "SharedAccessSignature sr=a&sr=a&sig=b&se=9&skn=d",
            "SharedAccessSignature sr=%zz&sig=b&se=99999&skn=iothubowner",
            "SharedAccessSignature sr=hub.azure-devices.net&sig=%&se=99999&skn=iothubowner",
            "SharedAccessSignature sr=hub.azure-devices.net&sig=!!!&se=99999&skn=iothubowner",
            "SharedAccessSignature sr&sig&se&skn",
            "SharedAccessSignature sr=hub.azure-devices.net&sig=YQ==&se=99999999999999999999999&skn=iothubowner",
        ] {
            assert!(
                verify(Some(header), HOST, &policies(), 1).is_err(),
                "{header}"
            );
        }
        assert_eq!(
            verify(None, HOST, &policies(), 1).err(),
            Some(Refusal::Missing)
        );
    }

    #[test]
    fn decodes_strictly() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%g0"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
