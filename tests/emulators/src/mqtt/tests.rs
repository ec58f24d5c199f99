//! The server side of the stand-ins (protocol, TLS, records, keep-alive, expiry, outages) and
//! the Azure and ClearBlade authenticators, driven by a minimal MQTT client written here
//! against the emulators.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::aws_lc_rs};

use super::clearblade::ClearBladeAuthenticator;
use super::codec::{self, ServerPacket};
use super::jwt::Algorithm;
use super::*;
use crate::clearblade::ClearBladeEmulator;
use crate::iothub::{IotHubEmulator, Policy};

const WAIT: Duration = Duration::from_secs(20);

/// A device's key and self-signed certificate.
struct DeviceCert {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl DeviceCert {
    fn new(name: &str) -> DeviceCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        DeviceCert { key, cert }
    }

    fn sha256_thumbprint(&self) -> String {
        ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, self.cert.der())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }
}

/// A test MQTT client over TLS.
struct Client {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Client {
    async fn open(port: u16, ca_pem: &str, cert: Option<&DeviceCert>) -> std::io::Result<Client> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
            .expect("CA");
        let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    vec![c.cert.der().clone()],
                    PrivateKeyDer::try_from(c.key.serialize_der()).expect("key"),
                )
                .expect("client certificate"),
        };
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let stream = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
        })
    }

    async fn send(&mut self, packet: Bytes) {
        // A write may fail once the server has closed: the next read says so.
        let _ = self.stream.write_all(&packet).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or `None` once the server closed the connection.
    async fn recv(&mut self) -> Option<ServerPacket> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(p) = codec::decode_server_packet(&mut self.buf).expect("server packet")
                {
                    return Some(p);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the server neither answered nor closed in time")
    }

    /// CONNECT and the CONNACK return code.
    async fn connect(&mut self, id: &str, user: Option<&str>, pw: Option<&[u8]>, ka: u16) -> u8 {
        self.send(codec::encode_connect(id, user, pw, ka)).await;
        match self.recv().await {
            Some(ServerPacket::ConnAck { code, .. }) => code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn expect_closed(&mut self) {
        assert_eq!(self.recv().await, None, "the server should have closed");
    }
}

/// Accepts client ids starting `ok`; `bad...` is refused with 4, others with 5; `short...` gets
/// a session of one second; `cert...` needs a client certificate. Publishes to `allowed/...`.
struct TestAuth;

#[async_trait]
impl Authenticator for TestAuth {
    async fn connect(&self, c: &ConnectRequest) -> Result<Session, Refusal> {
        let id = c.client_id.as_str();
        if id.starts_with("ok") {
            Ok(Session::new(format!("device-{id}")))
        } else if id.starts_with("short") {
            Ok(Session::new(id).expiring_at(SystemTime::now() + Duration::from_secs(1)))
        } else if id.starts_with("cert") {
            match c.certificates.len() {
                0 => Err(Refusal::not_authorized("no certificate")),
                n => Ok(Session::new(format!("{id}-{n}"))),
            }
        } else if id.starts_with("bad") {
            Err(Refusal::bad_credentials("bad"))
        } else {
            Err(Refusal::not_authorized("no"))
        }
    }

    fn publish(&self, _session: &Session, topic: &str) -> Result<PublishTarget, Refusal> {
        if topic.starts_with("allowed/") {
            Ok(PublishTarget::topic(topic))
        } else {
            Err(Refusal::publish(topic, "not allowed"))
        }
    }
}

async fn stand_in() -> MqttStandIn {
    MqttStandIn::start("test", Arc::new(TestAuth))
        .await
        .expect("starts")
}

#[tokio::test]
async fn connects_publishes_and_answers() {
    let s = stand_in().await;
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("ok-1", None, None, 60).await, 0);
    c.send(codec::encode_publish("allowed/a", b"zero", 0, 0, false))
        .await;
    c.send(codec::encode_publish("allowed/b", b"one", 1, 7, true))
        .await;
    assert_eq!(c.recv().await, Some(ServerPacket::PubAck(7)));
    // PUBACK comes after the message is recorded.
    assert_eq!(s.received().len(), 2);
    c.send(codec::encode_subscribe(3, &[("x/#", 2), ("y", 0)]))
        .await;
    assert_eq!(
        c.recv().await,
        Some(ServerPacket::SubAck {
            packet_id: 3,
            codes: vec![1, 0]
        })
    );
    c.send(codec::encode_unsubscribe(4, &["x/#"])).await;
    assert_eq!(c.recv().await, Some(ServerPacket::UnsubAck(4)));
    c.send(codec::encode_pingreq()).await;
    assert_eq!(c.recv().await, Some(ServerPacket::PingResp));
    c.send(codec::encode_disconnect()).await;
    c.expect_closed().await;

    let got = s.received();
    assert_eq!(got[0].topic, "allowed/a");
    assert_eq!(got[0].payload, Bytes::from_static(b"zero"));
    assert_eq!((got[0].qos, got[0].dup), (0, false));
    assert_eq!(got[1].topic, "allowed/b");
    assert_eq!((got[1].qos, got[1].dup), (1, true));
    assert_eq!(got[1].device, "device-ok-1");
    assert_eq!(got[1].client_id, "ok-1");
    assert!(s.refusals().is_empty(), "{:?}", s.refusals());
    assert_eq!(s.connections().len(), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn refused_connects_answer_connack_and_close() {
    let s = stand_in().await;
    for (id, code) in [("bad-1", 4), ("nope", 5)] {
        let mut c = Client::open(s.port(), &s.ca_pem(), None)
            .await
            .expect("TLS");
        assert_eq!(c.connect(id, Some("u"), Some(b"p"), 0).await, code);
        c.expect_closed().await;
    }
    let refusals = s.wait_for_refusals(2, WAIT).await.expect("refusals");
    assert_eq!(refusals[0].client_id, "bad-1");
    assert_eq!(refusals[0].return_code(), Some(4));
    assert_eq!(refusals[1].return_code(), Some(5));
    assert!(s.connections().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn client_certificates_reach_the_authenticator() {
    let s = stand_in().await;
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("cert-a", None, None, 0).await, 5);
    let device = DeviceCert::new("device");
    let mut c = Client::open(s.port(), &s.ca_pem(), Some(&device))
        .await
        .expect("TLS");
    assert_eq!(c.connect("cert-b", None, None, 0).await, 0);
    assert_eq!(s.connections()[0].device, "cert-b-1");
    s.shutdown().await;
}

#[tokio::test]
async fn forbidden_publish_and_qos2_disconnect() {
    let s = stand_in().await;
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("ok-2", None, None, 0).await, 0);
    c.send(codec::encode_publish("elsewhere", b"x", 1, 1, false))
        .await;
    c.expect_closed().await;

    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("ok-3", None, None, 0).await, 0);
    c.send(codec::encode_publish("allowed/q2", b"x", 2, 1, false))
        .await;
    c.expect_closed().await;

    let refusals = s.wait_for_refusals(2, WAIT).await.expect("refusals");
    assert_eq!(
        refusals[0].kind,
        RefusalKind::Publish {
            topic: "elsewhere".into()
        }
    );
    assert_eq!(refusals[0].device.as_deref(), Some("device-ok-2"));
    assert_eq!(
        refusals[1].kind,
        RefusalKind::QoS2 {
            topic: "allowed/q2".into()
        }
    );
    assert!(s.received().is_empty());
    s.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close() {
    let s = stand_in().await;
    // Something before CONNECT.
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    c.send(codec::encode_pingreq()).await;
    c.expect_closed().await;
    // A malformed packet after CONNECT (QoS 3).
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("ok-4", None, None, 0).await, 0);
    c.send(Bytes::from_static(&[
        0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01,
    ]))
    .await;
    c.expect_closed().await;
    // A second CONNECT.
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(c.connect("ok-5", None, None, 0).await, 0);
    c.send(codec::encode_connect("ok-5", None, None, 0)).await;
    c.expect_closed().await;
    // MQTT 3.1 (level 3): CONNACK 1.
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    let mut v3 = codec::encode_connect("ok-6", None, None, 0).to_vec();
    v3[8] = 3;
    c.send(Bytes::from(v3)).await;
    assert_eq!(
        c.recv().await,
        Some(ServerPacket::ConnAck {
            session_present: false,
            code: 1
        })
    );
    c.expect_closed().await;

    let refusals = s.wait_for_refusals(4, WAIT).await.expect("refusals");
    assert_eq!(refusals[0].kind, RefusalKind::Protocol);
    assert_eq!(refusals[0].client_id, "");
    assert_eq!(refusals[1].kind, RefusalKind::Protocol);
    assert_eq!(refusals[1].client_id, "ok-4");
    assert_eq!(refusals[2].kind, RefusalKind::Protocol);
    assert_eq!(refusals[3].return_code(), Some(1));
    s.shutdown().await;
}

#[tokio::test]
async fn keep_alive_and_expiry_close() {
    let s = stand_in().await;
    let mut idle = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(idle.connect("ok-idle", None, None, 1).await, 0);
    let mut short = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(short.connect("short-1", None, None, 0).await, 0);
    idle.expect_closed().await;
    short.expect_closed().await;
    let refusals = s.wait_for_refusals(2, WAIT).await.expect("refusals");
    let kind_of = |id: &str| {
        refusals
            .iter()
            .find(|r| r.client_id == id)
            .map(|r| r.kind.clone())
    };
    assert_eq!(kind_of("ok-idle"), Some(RefusalKind::KeepAlive));
    assert_eq!(kind_of("short-1"), Some(RefusalKind::Expired));
    s.shutdown().await;
}

#[tokio::test]
async fn outage_closes_connections_and_comes_back_on_the_same_port() {
    let s = stand_in().await;
    let port = s.port();
    let mut c = Client::open(port, &s.ca_pem(), None).await.expect("TLS");
    assert_eq!(c.connect("ok-7", None, None, 0).await, 0);
    s.go_down().await;
    c.expect_closed().await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "connections are refused while down"
    );
    // Another socket cannot take the port meanwhile.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    s.come_up().await.expect("comes up");
    assert_eq!(s.port(), port);
    let mut c = Client::open(port, &s.ca_pem(), None).await.expect("TLS");
    assert_eq!(c.connect("ok-8", None, None, 0).await, 0);
    c.send(codec::encode_publish("allowed/after", b"x", 1, 2, false))
        .await;
    assert_eq!(c.recv().await, Some(ServerPacket::PubAck(2)));
    // An outage is no refusal.
    assert!(s.refusals().is_empty(), "{:?}", s.refusals());
    s.shutdown().await;
}

// ----- Azure ---------------------------------------------------------------------------------

const HUB: &str = "stand-in-test.azure-devices.net";

async fn azure() -> (IotHubEmulator, MqttStandIn) {
    let hub = IotHubEmulator::start(HUB, vec![Policy::with_random_key("p", true)])
        .await
        .expect("hub");
    let s = MqttStandIn::start(
        "Azure IoT Hub",
        Arc::new(azure::AzureAuthenticator::new(hub.clone())),
    )
    .await
    .expect("stand-in");
    (hub, s)
}

#[tokio::test]
async fn azure_thumbprints_usernames_and_topics() {
    let (hub, s) = azure().await;
    let device = DeviceCert::new("dev-1");
    let other = DeviceCert::new("dev-1");
    hub.seed_device(json!({
        "deviceId": "dev-1",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {
            "primaryThumbprint": device.sha256_thumbprint(), "secondaryThumbprint": null}}
    }));
    let user = format!("{HUB}/dev-1/?api-version=2021-04-12");

    let mut c = Client::open(s.port(), &s.ca_pem(), Some(&device))
        .await
        .expect("TLS");
    assert_eq!(c.connect("dev-1", Some(&user), None, 30).await, 0);
    c.send(codec::encode_publish(
        "devices/dev-1/messages/events/topic=sensors&%24.ct=application%2Fjson",
        b"{}",
        1,
        1,
        false,
    ))
    .await;
    assert_eq!(c.recv().await, Some(ServerPacket::PubAck(1)));
    c.send(codec::encode_publish(
        "devices/dev-1/messages/events/",
        b"plain",
        0,
        0,
        false,
    ))
    .await;
    c.send(codec::encode_subscribe(
        2,
        &[("devices/dev-1/messages/devicebound/#", 1)],
    ))
    .await;
    assert_eq!(
        c.recv().await,
        Some(ServerPacket::SubAck {
            packet_id: 2,
            codes: vec![1]
        })
    );
    let got = s.wait_for_received(2, WAIT).await.expect("messages");
    assert_eq!(got[0].device, "dev-1");
    assert_eq!(got[0].topic, "devices/dev-1/messages/events/");
    assert_eq!(
        got[0].properties,
        vec![
            ("topic".to_string(), "sensors".to_string()),
            ("$.ct".to_string(), "application/json".to_string())
        ]
    );
    assert!(got[1].properties.is_empty());
    // Another device's topic: disconnected.
    c.send(codec::encode_publish(
        "devices/dev-2/messages/events/",
        b"x",
        1,
        3,
        false,
    ))
    .await;
    c.expect_closed().await;

    // Wrong certificate, no certificate, wrong user name, a password, unknown device.
    // (certificate, client id, user name, password, CONNACK code)
    type Case<'a> = (
        Option<&'a DeviceCert>,
        &'a str,
        String,
        Option<&'a [u8]>,
        u8,
    );
    let cases: Vec<Case> = vec![
        (Some(&other), "dev-1", user.clone(), None, 5),
        (None, "dev-1", user.clone(), None, 5),
        (Some(&device), "dev-1", format!("{HUB}/dev-1"), None, 4),
        (
            Some(&device),
            "dev-1",
            user.clone(),
            Some(b"SharedAccessSignature x"),
            4,
        ),
        (
            Some(&device),
            "dev-9",
            format!("{HUB}/dev-9/?api-version=2021-04-12"),
            None,
            5,
        ),
    ];
    for (cert, id, username, password, code) in &cases {
        let mut c = Client::open(s.port(), &s.ca_pem(), *cert)
            .await
            .expect("TLS");
        assert_eq!(
            c.connect(id, Some(username), *password, 0).await,
            *code,
            "{username}"
        );
        c.expect_closed().await;
    }
    let refusals = s
        .wait_for_refusals(1 + cases.len(), WAIT)
        .await
        .expect("refusals");
    assert!(matches!(refusals[0].kind, RefusalKind::Publish { .. }));
    assert!(
        refusals[1].reason.contains("thumbprint"),
        "{}",
        refusals[1].reason
    );

    // The secondary thumbprint works too, and a disabled device is refused.
    hub.seed_device(json!({
        "deviceId": "dev-1",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {
            "primaryThumbprint": device.sha256_thumbprint(),
            "secondaryThumbprint": other.sha256_thumbprint()}}
    }));
    let mut c = Client::open(s.port(), &s.ca_pem(), Some(&other))
        .await
        .expect("TLS");
    assert_eq!(c.connect("dev-1", Some(&user), None, 0).await, 0);
    hub.seed_device(json!({
        "deviceId": "dev-1", "status": "disabled",
        "authentication": {"type": "selfSigned", "x509Thumbprint": {
            "primaryThumbprint": device.sha256_thumbprint()}}
    }));
    let mut c = Client::open(s.port(), &s.ca_pem(), Some(&device))
        .await
        .expect("TLS");
    assert_eq!(c.connect("dev-1", Some(&user), None, 0).await, 5);
    s.shutdown().await;
    hub.shutdown().await;
}

// ----- ClearBlade ----------------------------------------------------------------------------

#[tokio::test]
async fn clearblade_jwts_and_topics() {
    let cb = ClearBladeEmulator::start("proj", &[("us-central1", "reg")])
        .await
        .expect("emulator");
    let auth = ClearBladeAuthenticator::new(cb.clone(), "us-central1", "reg");
    let s = MqttStandIn::start("ClearBlade IoT Core", Arc::new(auth.clone()))
        .await
        .expect("stand-in");
    let key = rcgen::KeyPair::generate().expect("key");
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let other = rcgen::KeyPair::generate().expect("key");
    cb.seed_device(
        "us-central1",
        "reg",
        json!({"id": "dev-1", "credentials": [
            {"publicKey": {"format": "ES256_PEM", "key": key.public_key_pem()}},
            {"publicKey": {"format": "RSA_PEM", "key": rsa.public_key_pem()}},
            {"publicKey": {"format": "ES256_PEM", "key": other.public_key_pem()},
             "expirationTime": "2001-01-01T00:00:00Z"}
        ]}),
    );
    let client_id = auth.client_id("dev-1");
    assert_eq!(
        client_id,
        "projects/proj/locations/us-central1/registries/reg/devices/dev-1"
    );
    let hour = Duration::from_secs(3600);
    let es = auth
        .password(Algorithm::Es256, &key.serialize_der(), hour)
        .expect("JWT");
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(
        c.connect(&client_id, Some("ignored"), Some(es.as_bytes()), 60)
            .await,
        0
    );
    for (i, topic) in [
        "/devices/dev-1/events",
        "/devices/dev-1/events/a/b",
        "/devices/dev-1/state",
    ]
    .into_iter()
    .enumerate()
    {
        let id = u16::try_from(i + 1).expect("small");
        c.send(codec::encode_publish(topic, b"x", 1, id, false))
            .await;
        assert_eq!(c.recv().await, Some(ServerPacket::PubAck(id)));
    }
    c.send(codec::encode_publish(
        "/devices/dev-1/events/",
        b"x",
        1,
        9,
        false,
    ))
    .await;
    c.expect_closed().await;
    let got = s.received();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].topic, "/devices/dev-1/events/a/b");
    assert_eq!(got[1].device, "dev-1");
    let connected = s.connections();
    assert!(connected[0].expires_at.is_some());

    let rs = auth
        .password(Algorithm::Rs256, &rsa.serialize_der(), hour)
        .expect("JWT");
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(
        c.connect(&client_id, Some("unused"), Some(rs.as_bytes()), 0)
            .await,
        0
    );

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let signed = |claims: serde_json::Value, k: &rcgen::KeyPair| {
        jwt::sign(Algorithm::Es256, &k.serialize_der(), &claims).expect("JWT")
    };
    let cases = [
        (
            client_id.clone(),
            signed(json!({"aud": "other", "iat": now, "exp": now + 60}), &key),
            4,
        ),
        (
            client_id.clone(),
            signed(
                json!({"aud": "proj", "iat": now - 120, "exp": now - 60}),
                &key,
            ),
            4,
        ),
        (
            client_id.clone(),
            signed(
                json!({"aud": "proj", "iat": now, "exp": now + 86_401}),
                &key,
            ),
            4,
        ),
        (
            client_id.clone(),
            signed(
                json!({"aud": "proj", "iat": now + 3600, "exp": now + 7200}),
                &key,
            ),
            4,
        ),
        (
            client_id.clone(),
            signed(
                json!({"aud": "proj", "iat": now, "exp": now + 60}),
                &stranger_key(),
            ),
            4,
        ),
        // The expired credential's key.
        (
            client_id.clone(),
            signed(json!({"aud": "proj", "iat": now, "exp": now + 60}), &other),
            4,
        ),
        (auth.client_id("nobody"), es.clone(), 5),
        ("dev-1".to_string(), es.clone(), 5),
    ];
    for (id, password, code) in &cases {
        let mut c = Client::open(s.port(), &s.ca_pem(), None)
            .await
            .expect("TLS");
        assert_eq!(
            c.connect(id, Some("unused"), Some(password.as_bytes()), 0)
                .await,
            *code,
            "{id}"
        );
        c.expect_closed().await;
    }
    let refusals = s
        .wait_for_refusals(1 + cases.len(), WAIT)
        .await
        .expect("refusals");
    assert!(
        refusals[1].reason.contains("audience"),
        "{}",
        refusals[1].reason
    );
    assert!(
        refusals[2].reason.contains("expired"),
        "{}",
        refusals[2].reason
    );
    assert!(
        refusals[3].reason.contains("24 h"),
        "{}",
        refusals[3].reason
    );
    assert!(
        refusals[4].reason.contains("future"),
        "{}",
        refusals[4].reason
    );
    assert!(
        refusals[5].reason.contains("verify"),
        "{}",
        refusals[5].reason
    );
    assert!(
        refusals[6].reason.contains("verify"),
        "{}",
        refusals[6].reason
    );

    // The session ends when the JWT expires.
    let brief = signed(json!({"aud": "proj", "iat": now, "exp": now + 2}), &key);
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(
        c.connect(&client_id, Some("unused"), Some(brief.as_bytes()), 0)
            .await,
        0
    );
    c.expect_closed().await;
    let refusals = s
        .wait_for_refusals(2 + cases.len(), WAIT)
        .await
        .expect("refusals");
    assert_eq!(
        refusals.last().map(|r| r.kind.clone()),
        Some(RefusalKind::Expired)
    );

    // A blocked device is refused.
    cb.seed_device(
        "us-central1",
        "reg",
        json!({"id": "dev-1", "blocked": true, "credentials": [
            {"publicKey": {"format": "ES256_PEM", "key": key.public_key_pem()}}]}),
    );
    let mut c = Client::open(s.port(), &s.ca_pem(), None)
        .await
        .expect("TLS");
    assert_eq!(
        c.connect(&client_id, Some("unused"), Some(es.as_bytes()), 0)
            .await,
        5
    );
    s.shutdown().await;
    cb.shutdown().await;
}

/// A P-256 key the device does not have.
fn stranger_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate().expect("key")
}
