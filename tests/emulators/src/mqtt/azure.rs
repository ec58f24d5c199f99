//! Azure IoT Hub's MQTT authentication for X.509 self-signed devices, against the
//! [`IotHubEmulator`]'s identity registry.
//!
//! What the hub does (learn.microsoft.com, "Communicate with an IoT hub using the MQTT
//! protocol", and "Authenticate identities with X.509 certificates"), and the stand-in with it:
//! * The client id is the device id, of a device registered in the hub and enabled; otherwise
//!   CONNACK 5 (not authorized).
//! * The user name is `{hub host}/{device id}/?api-version=2021-04-12`. The stand-in accepts
//!   any `api-version` of the date form `YYYY-MM-DD` (optionally `-preview`), and further
//!   `&name=value` parameters after it (the SDKs add `DeviceClientType=...`), as the hub does;
//!   the host is compared case-insensitively. Anything else is CONNACK 4 (bad user name or
//!   password). The hub host is the emulator's.
//! * An X.509 device sends no password (a password would be a SAS token, which the stand-in
//!   does not model: CONNACK 4).
//! * The TLS client certificate's thumbprint, the SHA-1 or SHA-256 of its DER in hex, must be
//!   the device's registered primary or secondary thumbprint (the hub takes either digest), and
//!   the certificate must be within its validity period; otherwise CONNACK 5. The hub does not
//!   check a self-signed certificate's chain, nor does the stand-in.
//! * Telemetry goes to `devices/{device id}/messages/events/`, optionally followed by a
//!   URL-encoded property bag `k=v&k2=v2` (decoded into [`PublishTarget::properties`]; a key
//!   without `=` has an empty value). Any other topic (or a bag that is not valid percent
//!   encoding) closes the connection, as the hub does.
//! * Subscriptions: the hub allows `devices/{device id}/messages/devicebound/#` and the
//!   `$iothub/twin/...` and `$iothub/methods/POST/#` filters; the stand-in grants those (at
//!   most QoS 1) and closes the connection for any other filter (the hub refuses them; closing
//!   is the stand-in's reading of how).
//! * Devices authenticated by SAS keys or by a CA (`certificateAuthority`) are not modelled:
//!   they have no thumbprint, so their CONNECTs are refused.

use aws_lc_rs::digest;
use serde_json::Value;

use super::{
    Authenticator, ConnectRequest, PublishTarget, Refusal, Session, SubscribeAnswer, async_trait,
};
use crate::common::percent;
use crate::iothub::IotHubEmulator;

/// Authenticates devices of one [`IotHubEmulator`]'s hub (clone the emulator's handle in; it
/// shares the emulator's state, so devices registered later are seen).
#[derive(Debug, Clone)]
pub struct AzureAuthenticator {
    hub: IotHubEmulator,
}

impl AzureAuthenticator {
    pub fn new(hub: IotHubEmulator) -> AzureAuthenticator {
        AzureAuthenticator { hub }
    }

    /// The user name a device sends: `{hub host}/{device id}/?api-version=2021-04-12`.
    pub fn username(&self, device_id: &str) -> String {
        format!(
            "{}/{device_id}/?api-version=2021-04-12",
            self.hub.hub_host()
        )
    }

    /// The telemetry topic of `device_id`, without a property bag.
    pub fn events_topic(device_id: &str) -> String {
        format!("devices/{device_id}/messages/events/")
    }
}

/// Uppercase hex.
fn upper_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// `YYYY-MM-DD`, optionally with `-preview`.
fn is_api_version(v: &str) -> bool {
    let date = v.strip_suffix("-preview").unwrap_or(v);
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// Checks the user name for `device_id`; the error says what is wrong.
fn check_username(username: Option<&str>, hub_host: &str, device_id: &str) -> Result<(), String> {
    let Some(username) = username else {
        return Err("no user name: the hub expects {hub}/{device}/?api-version=...".into());
    };
    let query = username
        .get(..hub_host.len())
        .filter(|host| host.eq_ignore_ascii_case(hub_host))
        .and_then(|_| username[hub_host.len()..].strip_prefix(&format!("/{device_id}/?")));
    let Some(query) = query else {
        return Err(format!(
            "the user name {username:?} is not {hub_host}/{device_id}/?api-version=..."
        ));
    };
    let mut params = query.split('&');
    match params.next().and_then(|p| p.strip_prefix("api-version=")) {
        Some(v) if is_api_version(v) => {}
        _ => {
            return Err(format!(
                "the user name {username:?} does not start its query with api-version=YYYY-MM-DD"
            ));
        }
    }
    for p in params {
        let Some((name, _)) = p.split_once('=') else {
            return Err(format!("the user name parameter {p:?} is not name=value"));
        };
        if name.is_empty() || name == "api-version" {
            return Err(format!("the user name parameter {p:?} is not allowed"));
        }
    }
    Ok(())
}

/// Whether the certificate is within its validity period now.
fn in_validity(der: &[u8]) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| "the client certificate does not parse".to_string())?;
    if cert.validity().is_valid() {
        Ok(())
    } else {
        Err("the client certificate is outside its validity period".into())
    }
}

/// Decodes a property bag `k=v&k2=v2` (percent-encoded; `+` stays `+`, as the hub reads it).
fn property_bag(bag: &str) -> Result<Vec<(String, String)>, String> {
    bag.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| {
                percent::percent_decode(s, false)
                    .map_err(|_| format!("the property {p:?} is not percent-encoded UTF-8"))
            };
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

#[async_trait]
impl Authenticator for AzureAuthenticator {
    async fn connect(&self, c: &ConnectRequest) -> Result<Session, Refusal> {
        let id = c.client_id.as_str();
        let hub_host = self.hub.hub_host();
        check_username(c.username.as_deref(), &hub_host, id).map_err(Refusal::bad_credentials)?;
        if c.password.is_some() {
            return Err(Refusal::bad_credentials(
                "a password (SAS token) was sent: the stand-in authenticates X.509 devices, \
                 which send none",
            ));
        }
        let Some(device) = self.hub.device(id) else {
            return Err(Refusal::not_authorized(format!(
                "the device {id:?} is not registered in the hub"
            )));
        };
        if device.get("status").and_then(Value::as_str) != Some("enabled") {
            return Err(Refusal::not_authorized(format!(
                "the device {id:?} is disabled"
            )));
        }
        let Some(leaf) = c.certificates.first() else {
            return Err(Refusal::not_authorized(
                "no client certificate: an X.509 device authenticates with one",
            ));
        };
        let sha1 = upper_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, leaf).as_ref());
        let sha256 = upper_hex(digest::digest(&digest::SHA256, leaf).as_ref());
        let (primary, secondary) = self.hub.thumbprints(id).unwrap_or_default();
        let registered: Vec<String> = [primary, secondary].into_iter().flatten().collect();
        if !registered.iter().any(|t| *t == sha1 || *t == sha256) {
            return Err(Refusal::not_authorized(format!(
                "the client certificate's thumbprint (SHA-256 {sha256}) is not the device's \
                 primary or secondary thumbprint {registered:?}"
            )));
        }
        in_validity(leaf).map_err(Refusal::not_authorized)?;
        Ok(Session::new(id))
    }

    fn publish(&self, session: &Session, topic: &str) -> Result<PublishTarget, Refusal> {
        let base = AzureAuthenticator::events_topic(&session.device);
        let Some(bag) = topic.strip_prefix(&base) else {
            return Err(Refusal::publish(
                topic,
                format!("the hub takes telemetry on {base}{{property bag}} only"),
            ));
        };
        let properties = property_bag(bag).map_err(|e| Refusal::publish(topic, e))?;
        Ok(PublishTarget {
            topic: base,
            properties,
        })
    }

    fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        qos: u8,
    ) -> Result<SubscribeAnswer, Refusal> {
        let allowed = filter == format!("devices/{}/messages/devicebound/#", session.device)
            || filter.starts_with("$iothub/twin/")
            || filter == "$iothub/methods/POST/#";
        if allowed {
            Ok(SubscribeAnswer::Granted(qos.min(1)))
        } else {
            Err(Refusal::subscribe(
                filter,
                "the hub does not allow subscribing to this topic filter",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        let host = "hub.azure-devices.net";
        let ok = |u: &str| check_username(Some(u), host, "dev-1");
        assert_eq!(
            ok("hub.azure-devices.net/dev-1/?api-version=2021-04-12"),
            Ok(())
        );
        assert_eq!(
            ok("HUB.azure-devices.net/dev-1/?api-version=2018-06-30"),
            Ok(())
        );
        assert_eq!(
            ok(
                "hub.azure-devices.net/dev-1/?api-version=2020-05-31-preview&DeviceClientType=c%2F1"
            ),
            Ok(())
        );
        for bad in [
            "hub.azure-devices.net/dev-1/",
            "hub.azure-devices.net/dev-1?api-version=2021-04-12",
            "hub.azure-devices.net/dev-2/?api-version=2021-04-12",
            "hub.azure-devices.net/DEV-1/?api-version=2021-04-12",
            "other.azure-devices.net/dev-1/?api-version=2021-04-12",
            "hub.azure-devices.net/dev-1/?api-version=21-04-12",
            "hub.azure-devices.net/dev-1/?api-version=2021-04-12&x",
            "hub.azure-devices.net/dev-1/?DeviceClientType=x&api-version=2021-04-12",
            "dev-1",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        assert!(check_username(None, host, "dev-1").is_err());
    }

    #[test]
    fn property_bags() {
        assert_eq!(property_bag(""), Ok(vec![]));
        assert_eq!(
            property_bag("topic=sensors&%24.ct=application%2Fjson&flag"),
            Ok(vec![
                ("topic".into(), "sensors".into()),
                ("$.ct".into(), "application/json".into()),
                ("flag".into(), String::new()),
            ])
        );
        assert!(property_bag("a=%zz").is_err());
    }
}
