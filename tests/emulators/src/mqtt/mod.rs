//! Stand-ins for the clouds' MQTT brokers that authenticate devices as the clouds do, so tests
//! can prove that the credentials the provisioning function issued let a device connect and
//! publish (and that the ones it retired do not).
//!
//! # What they emulate
//! * MQTT 3.1.1 over TLS ([`MqttStandIn`], on `127.0.0.1:0` by default): CONNECT / CONNACK,
//!   PUBLISH at QoS 0 and 1 with PUBACK (sent only once the message is recorded), SUBSCRIBE /
//!   SUBACK, UNSUBSCRIBE / UNSUBACK, PINGREQ / PINGRESP and DISCONNECT ([`codec`]). QoS 2 is
//!   refused by closing the connection, as AWS IoT Core and Azure IoT Hub do (neither supports
//!   it). Malformed packets, a second CONNECT, or anything before CONNECT close the
//!   connection (MQTT-4.8.0-1). The keep-alive is enforced: no packet for 1.5 times the
//!   CONNECT's keep-alive closes the connection (MQTT-3.1.2-24).
//! * TLS 1.2 and 1.3 with a server certificate for `127.0.0.1` and `localhost` signed by a
//!   test CA made at start ([`MqttStandIn::ca_pem`]); a client certificate is requested but
//!   not required, and a presented one must be backed by its private key (the handshake's
//!   signature is verified). Whether the certificate is acceptable is the cloud's
//!   [`Authenticator`]'s decision, as each cloud judges it differently:
//!   [`azure::AzureAuthenticator`] (Azure IoT Hub, X.509 self-signed thumbprints),
//!   [`clearblade::ClearBladeAuthenticator`] (ClearBlade IoT Core, JWT passwords), and the
//!   AWS IoT Core one in `provision-testkit` (it asks moto through the AWS SDK), with the
//!   policy evaluator in [`policy`].
//! * A refused CONNECT is answered CONNACK 4 (bad user name or password) or 5 (not
//!   authorized) and the connection closed; a PUBLISH to a topic the device may not use closes
//!   the connection (AWS IoT and Azure IoT Hub both disconnect, MQTT 3.1.1 having no negative
//!   PUBACK); a session whose credential expires (a ClearBlade JWT's `exp`) is closed then.
//!   Every refusal and forced disconnect is recorded as a [`Refusal`] with its reason.
//! * Outages: [`MqttStandIn::go_down`] closes every connection and refuses new ones (TCP
//!   connection refused) while keeping the port reserved; [`MqttStandIn::come_up`] serves
//!   again on the same port.
//!
//! # What they do not emulate
//! Delivering messages to subscribers (SUBSCRIBE is only authorised and acknowledged),
//! retained messages and Wills (recorded flags only), persistent sessions (session present is
//! always 0), MQTT 5, MQTT over WebSockets, ALPN (AWS's port 443), the clouds' throttling and
//! message size limits (one limit of [`MAX_PACKET`] bytes here), device twins, shadows and
//! direct methods.

pub mod azure;
pub mod clearblade;
pub mod codec;
mod connection;
pub mod jwt;
pub mod policy;
mod record;
mod server;
#[cfg(test)]
mod tests;
mod tls;

use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

pub use async_trait::async_trait;
pub use server::MqttStandIn;

/// The largest packet (remaining length) a stand-in reads; a longer one closes the connection.
pub const MAX_PACKET: usize = 1024 * 1024;

/// What a CONNECT presented, for the [`Authenticator`].
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    /// The client's certificate chain from the TLS handshake, DER, leaf first; empty when the
    /// client presented none. The TLS layer verified that the client holds the leaf's key.
    pub certificates: Vec<Vec<u8>>,
    pub keep_alive: u16,
    pub clean_session: bool,
}

/// An authenticated connection, as the [`Authenticator`] accepted it.
#[derive(Clone)]
pub struct Session {
    /// The device the credential proved (Azure's device id, ClearBlade's device id, AWS's thing
    /// name).
    pub device: String,
    /// When the credential stops being valid: the server closes the connection then (recorded
    /// as [`RefusalKind::Expired`]).
    pub expires_at: Option<SystemTime>,
    /// Whatever the authenticator needs later to judge publishes and subscriptions (AWS: the
    /// policies and the policy variables).
    grants: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("device", &self.device)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(device: impl Into<String>) -> Session {
        Session {
            device: device.into(),
            expires_at: None,
            grants: None,
        }
    }

    /// The same session, closed by the server at `at`.
    pub fn expiring_at(mut self, at: SystemTime) -> Session {
        self.expires_at = Some(at);
        self
    }

    /// The same session carrying `grants` for later decisions.
    pub fn with_grants<T: Any + Send + Sync>(mut self, grants: T) -> Session {
        self.grants = Some(Arc::new(grants));
        self
    }

    /// The grants stored with [`Session::with_grants`], if they are a `T`.
    pub fn grants<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.grants.as_deref().and_then(|g| g.downcast_ref::<T>())
    }
}

/// Where an accepted PUBLISH goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishTarget {
    /// The topic (for Azure without the property bag).
    pub topic: String,
    /// Azure's property bag, percent-decoded, in order; empty elsewhere.
    pub properties: Vec<(String, String)>,
}

impl PublishTarget {
    /// A topic without properties.
    pub fn topic(topic: &str) -> PublishTarget {
        PublishTarget {
            topic: topic.to_string(),
            properties: Vec::new(),
        }
    }
}

/// What to answer for one SUBSCRIBE topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeAnswer {
    /// Granted at this QoS (0 or 1).
    Granted(u8),
    /// SUBACK return code 0x80.
    Failure,
}

/// Why the server refused or closed a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// CONNECT refused with this CONNACK return code (1 to 5).
    Connect { return_code: u8 },
    /// PUBLISH to a topic the session may not use: disconnected.
    Publish { topic: String },
    /// PUBLISH at QoS 2: disconnected.
    QoS2 { topic: String },
    /// SUBSCRIBE to a filter the session may not use: disconnected.
    Subscribe { filter: String },
    /// The session's credential expired: disconnected.
    Expired,
    /// No packet within 1.5 times the keep-alive: disconnected.
    KeepAlive,
    /// Not MQTT 3.1.1 as the specification says (malformed, out of order, too large, no
    /// CONNECT in time): closed.
    Protocol,
}

/// A refused CONNECT or a connection the server closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The CONNECT's client id (empty when there was no CONNECT).
    pub client_id: String,
    /// The authenticated device, when the connection had been accepted.
    pub device: Option<String>,
    pub kind: RefusalKind,
    pub reason: String,
}

impl Refusal {
    fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal {
            client_id: String::new(),
            device: None,
            kind,
            reason: reason.into(),
        }
    }

    /// CONNACK 4, "bad user name or password" (the credential itself is wrong).
    pub fn bad_credentials(reason: impl Into<String>) -> Refusal {
        Refusal::new(
            RefusalKind::Connect {
                return_code: codec::return_code::BAD_USER_NAME_OR_PASSWORD,
            },
            reason,
        )
    }

    /// CONNACK 5, "not authorized" (a valid credential that may not connect so).
    pub fn not_authorized(reason: impl Into<String>) -> Refusal {
        Refusal::new(
            RefusalKind::Connect {
                return_code: codec::return_code::NOT_AUTHORIZED,
            },
            reason,
        )
    }

    /// CONNACK 3, "server unavailable" (the cloud could not decide, e.g. its registry failed).
    pub fn server_unavailable(reason: impl Into<String>) -> Refusal {
        Refusal::new(
            RefusalKind::Connect {
                return_code: codec::return_code::SERVER_UNAVAILABLE,
            },
            reason,
        )
    }

    /// A PUBLISH to `topic` that closes the connection.
    pub fn publish(topic: &str, reason: impl Into<String>) -> Refusal {
        Refusal::new(
            RefusalKind::Publish {
                topic: topic.to_string(),
            },
            reason,
        )
    }

    /// A SUBSCRIBE to `filter` that closes the connection.
    pub fn subscribe(filter: &str, reason: impl Into<String>) -> Refusal {
        Refusal::new(
            RefusalKind::Subscribe {
                filter: filter.to_string(),
            },
            reason,
        )
    }

    pub(crate) fn other(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal::new(kind, reason)
    }

    /// The CONNACK return code, for a refused CONNECT.
    pub fn return_code(&self) -> Option<u8> {
        match self.kind {
            RefusalKind::Connect { return_code } => Some(return_code),
            _ => None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} for client {:?}: {}",
            self.kind, self.client_id, self.reason
        )
    }
}

/// A PUBLISH the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The authenticated device ([`Session::device`]).
    pub device: String,
    pub client_id: String,
    /// [`PublishTarget::topic`]: for Azure without the property bag.
    pub topic: String,
    /// Azure's property bag, decoded; empty elsewhere.
    pub properties: Vec<(String, String)>,
    pub payload: Bytes,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
}

/// A CONNECT the stand-in accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub client_id: String,
    pub device: String,
    pub expires_at: Option<SystemTime>,
}

/// How a cloud decides who may connect and where they may publish.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// CONNECT: accept with the session, or refuse (CONNACK 4 or 5, see [`Refusal`]).
    async fn connect(&self, request: &ConnectRequest) -> Result<Session, Refusal>;

    /// Whether the session may publish to `topic` (an error closes the connection), and the
    /// topic and properties to record.
    fn publish(&self, session: &Session, topic: &str) -> Result<PublishTarget, Refusal>;

    /// What to answer for a SUBSCRIBE topic filter (an error closes the connection). By
    /// default every filter is granted at QoS 1 at most.
    fn subscribe(
        &self,
        session: &Session,
        filter: &str,
        qos: u8,
    ) -> Result<SubscribeAnswer, Refusal> {
        let _ = (session, filter);
        Ok(SubscribeAnswer::Granted(qos.min(1)))
    }
}
