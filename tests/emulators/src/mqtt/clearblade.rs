//! ClearBlade IoT Core's MQTT bridge authentication (Google Cloud IoT Core's, which ClearBlade
//! reproduces), against the [`ClearBladeEmulator`]'s device registry.
//!
//! What the bridge does (Cloud IoT Core "Using JSON Web Tokens" and "Publishing over the MQTT
//! bridge"), and the stand-in with it:
//! * The client id is the full device path
//!   `projects/{project}/locations/{region}/registries/{registry}/devices/{device id}` of a
//!   device that exists and is not `blocked`; otherwise CONNACK 5 (not authorized). The
//!   stand-in serves one registry, and takes device ids (not numeric ids) in the path.
//! * The user name is ignored. The password is a JWT signed with one of the device's
//!   registered keys: `ES256` for EC P-256 keys, `RS256` for RSA keys, the key given as
//!   `ES256_PEM`/`RSA_PEM` or inside an `ES256_X509_PEM`/`RSA_X509_PEM` certificate; a key whose
//!   credential `expirationTime` has passed no longer verifies. Claims: `aud` the project id
//!   (a string), `iat` not in the future (10 minutes of clock skew allowed), `exp` in the
//!   future and at most 24 hours after `iat`. Anything else is CONNACK 4 (bad user name or
//!   password).
//! * The bridge closes the connection when the JWT expires (devices reconnect with a fresh
//!   one before): the session expires at `exp`.
//! * Telemetry goes to `/devices/{device id}/events` or `/devices/{device id}/events/{subfolder}`
//!   (a subfolder of one or more levels), state to `/devices/{device id}/state`; any other
//!   topic closes the connection.
//! * Subscriptions: `/devices/{device id}/config`, `/devices/{device id}/commands/#` and
//!   `/devices/{device id}/errors` are granted (at most QoS 1); any other filter closes the
//!   connection (the stand-in's choice: the service's exact answer is not documented).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::jwt::{self, Algorithm};
use super::{
    Authenticator, ConnectRequest, PublishTarget, Refusal, Session, SubscribeAnswer, async_trait,
};
use crate::clearblade::ClearBladeEmulator;
use crate::common::time::parse_rfc3339;

/// How far in the future `iat` may be (clock skew).
pub const IAT_SKEW: Duration = Duration::from_secs(10 * 60);

/// The longest `exp - iat`.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What the registry answers as the expiration of a credential without one.
const NO_EXPIRATION: &str = "1970-01-01T00:00:00Z";

/// Authenticates the devices of one registry of a [`ClearBladeEmulator`] (clone the emulator's
/// handle in; it shares the emulator's state).
#[derive(Debug, Clone)]
pub struct ClearBladeAuthenticator {
    emulator: ClearBladeEmulator,
    region: String,
    registry: String,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ClearBladeAuthenticator {
    pub fn new(
        emulator: ClearBladeEmulator,
        region: &str,
        registry: &str,
    ) -> ClearBladeAuthenticator {
        ClearBladeAuthenticator {
            emulator,
            region: region.to_string(),
            registry: registry.to_string(),
        }
    }

    /// The client id a device sends: its full device path.
    pub fn client_id(&self, device_id: &str) -> String {
        self.emulator
            .device_path(&self.region, &self.registry, device_id)
    }

    /// A JWT password as a device makes it: `aud` the project, `iat` now, `exp` `lifetime`
    /// later, signed with `pkcs8_der` (PKCS#8 DER of the device's private key). For tests.
    pub fn password(
        &self,
        algorithm: Algorithm,
        pkcs8_der: &[u8],
        lifetime: Duration,
    ) -> anyhow::Result<String> {
        let iat = unix_now();
        let exp = iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        jwt::sign(
            algorithm,
            pkcs8_der,
            &json!({"aud": self.emulator.project(), "iat": iat, "exp": exp}),
        )
    }

    /// The device id a client id names, when it is this registry's device path form.
    fn device_id<'a>(&self, client_id: &'a str) -> Option<&'a str> {
        let prefix = format!(
            "{}/devices/",
            self.emulator.registry_path(&self.region, &self.registry)
        );
        client_id
            .strip_prefix(&prefix)
            .filter(|id| !id.is_empty() && !id.contains('/'))
    }

    /// The device's PEM keys whose credential has not expired.
    fn live_keys(device: &Value, now: i64) -> Vec<String> {
        device
            .get("credentials")
            .and_then(Value::as_array)
            .map(|creds| {
                creds
                    .iter()
                    .filter(|c| match c.get("expirationTime").and_then(Value::as_str) {
                        None | Some(NO_EXPIRATION) => true,
                        Some(t) => parse_rfc3339(t).is_some_and(|at| at > now),
                    })
                    .filter_map(|c| c["publicKey"]["key"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks the JWT's claims and signature; the session's expiry (`exp`).
    fn check_jwt(&self, password: &[u8], keys: &[String], now: i64) -> Result<i64, String> {
        let token = std::str::from_utf8(password).map_err(|_| "the password is not UTF-8")?;
        let jwt = jwt::decode(token)?;
        let project = self.emulator.project();
        match jwt.claims.get("aud").and_then(Value::as_str) {
            Some(aud) if aud == project => {}
            other => {
                return Err(format!(
                    "the JWT audience {other:?} is not the project id {project:?}"
                ));
            }
        }
        let iat = jwt
            .numeric_claim("iat")
            .ok_or("the JWT has no numeric iat")?;
        let exp = jwt
            .numeric_claim("exp")
            .ok_or("the JWT has no numeric exp")?;
        let skew = i64::try_from(IAT_SKEW.as_secs()).unwrap_or(0);
        let max = i64::try_from(MAX_LIFETIME.as_secs()).unwrap_or(0);
        if iat > now + skew {
            return Err(format!("the JWT iat {iat} is in the future (now {now})"));
        }
        if exp <= now {
            return Err(format!("the JWT expired at {exp} (now {now})"));
        }
        if exp.saturating_sub(iat) > max {
            return Err(format!(
                "the JWT lives {} s, more than the 24 h allowed",
                exp.saturating_sub(iat)
            ));
        }
        if !keys.iter().any(|k| jwt.verifies_with(k)) {
            return Err(format!(
                "the {} JWT does not verify with any of the device's {} unexpired key(s)",
                jwt.algorithm.name(),
                keys.len()
            ));
        }
        Ok(exp)
    }

    fn own_topic(&self, session: &Session, topic: &str) -> bool {
        let base = format!("/devices/{}/", session.device);
        match topic.strip_prefix(&base) {
            Some("events" | "state") => true,
            Some(rest) => rest
                .strip_prefix("events/")
                .is_some_and(|sub| !sub.is_empty() && sub.split('/').all(|l| !l.is_empty())),
            None => false,
        }
    }
}

#[async_trait]
impl Authenticator for ClearBladeAuthenticator {
    async fn connect(&self, c: &ConnectRequest) -> Result<Session, Refusal> {
        let Some(id) = self.device_id(&c.client_id) else {
            return Err(Refusal::not_authorized(format!(
                "the client id {:?} is not a device path of {}",
                c.client_id,
                self.emulator.registry_path(&self.region, &self.registry)
            )));
        };
        let Some(device) = self.emulator.device(&self.region, &self.registry, id) else {
            return Err(Refusal::not_authorized(format!(
                "the device {id:?} does not exist"
            )));
        };
        if device.get("blocked").and_then(Value::as_bool) == Some(true) {
            return Err(Refusal::not_authorized(format!(
                "the device {id:?} is blocked"
            )));
        }
        let Some(password) = &c.password else {
            return Err(Refusal::bad_credentials(
                "no password: the bridge expects a JWT",
            ));
        };
        let now = unix_now();
        let keys = Self::live_keys(&device, now);
        let exp = self
            .check_jwt(password, &keys, now)
            .map_err(Refusal::bad_credentials)?;
        let expires = UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0));
        Ok(Session::new(id).expiring_at(expires))
    }

    fn publish(&self, session: &Session, topic: &str) -> Result<PublishTarget, Refusal> {
        if self.own_topic(session, topic) {
            Ok(PublishTarget::topic(topic))
        } else {
            Err(Refusal::publish(
                topic,
                format!(
                    "the bridge takes /devices/{0}/events[/subfolder] and /devices/{0}/state only",
                    session.device
                ),
            ))
        }
    }

    fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        qos: u8,
    ) -> Result<SubscribeAnswer, Refusal> {
        let d = &session.device;
        let allowed = [
            format!("/devices/{d}/config"),
            format!("/devices/{d}/commands/#"),
            format!("/devices/{d}/errors"),
        ];
        if allowed.iter().any(|a| a == filter) {
            Ok(SubscribeAnswer::Granted(qos.min(1)))
        } else {
            Err(Refusal::subscribe(
                filter,
                "the bridge does not allow subscribing to this topic filter",
            ))
        }
    }
}
