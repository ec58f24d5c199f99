//! One client connection: the TLS handshake, CONNECT and the authenticator's decision, then
//! packets until the client leaves or the server closes the connection (a refusal, the
//! keep-alive, the credential's expiry).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::codec::{self, ClientPacket, Connect, Publish, return_code};
use super::server::Ctx;
use super::{
    ConnectRequest, Connected, MAX_PACKET, Received, Refusal, RefusalKind, Session, SubscribeAnswer,
};

/// How long a client may take to finish its TLS handshake, and then to send CONNECT (AWS IoT
/// and the MQTT specification leave the latter to the server: "a reasonable amount of time").
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long closing the TLS session (close_notify) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) async fn serve(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "{}: TLS handshake failed", ctx.name);
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "{}: TLS handshake timed out", ctx.name);
            return;
        }
    };
    let certificates = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default();
    let mut conn = Connection {
        stream,
        buf: BytesMut::with_capacity(4096),
        ctx,
        client_id: String::new(),
        device: None,
    };
    if let Err(refusal) = conn.run(certificates).await {
        conn.refuse(refusal);
    }
    conn.close().await;
}

struct Connection {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    ctx: Arc<Ctx>,
    client_id: String,
    device: Option<String>,
}

impl Connection {
    fn refuse(&self, mut refusal: Refusal) {
        refusal.client_id.clone_from(&self.client_id);
        refusal.device.clone_from(&self.device);
        self.ctx.recorder.refused(refusal);
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
    }

    async fn send(&mut self, packet: Bytes) -> std::io::Result<()> {
        self.stream.write_all(&packet).await?;
        self.stream.flush().await
    }

    /// The next packet, read by `deadline`. `Ok(None)`: the client closed the connection (or it
    /// broke).
    async fn next_packet(&mut self) -> Result<Option<ClientPacket>, Refusal> {
        loop {
            match codec::decode_client_packet(&mut self.buf, MAX_PACKET) {
                Ok(Some(packet)) => return Ok(Some(packet)),
                Ok(None) => {}
                Err(e) => return Err(Refusal::other(RefusalKind::Protocol, e.to_string())),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(Refusal::other(
                        RefusalKind::Protocol,
                        "the connection ended inside a packet",
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "{}: read failed", self.ctx.name);
                    return Ok(None);
                }
            }
        }
    }

    async fn run(&mut self, certificates: Vec<Vec<u8>>) -> Result<(), Refusal> {
        let first = match tokio::time::timeout(CONNECT_TIMEOUT, self.next_packet()).await {
            Ok(first) => first?,
            Err(_) => {
                return Err(Refusal::other(
                    RefusalKind::Protocol,
                    format!("no CONNECT within {CONNECT_TIMEOUT:?}"),
                ));
            }
        };
        let connect = match first {
            None => return Ok(()),
            Some(ClientPacket::Connect(connect)) => connect,
            Some(other) => {
                return Err(Refusal::other(
                    RefusalKind::Protocol,
                    format!("the first packet is {other:?}, not CONNECT (MQTT-3.1.0-1)"),
                ));
            }
        };
        self.client_id.clone_from(&connect.client_id);
        let session = self.connect(connect.clone(), certificates).await?;
        self.device = Some(session.device.clone());
        self.packets(&connect, &session).await
    }

    /// Checks the protocol, asks the authenticator, answers CONNACK.
    async fn connect(
        &mut self,
        connect: Connect,
        certificates: Vec<Vec<u8>>,
    ) -> Result<Session, Refusal> {
        if connect.protocol_name != "MQTT" {
            // MQTT-3.1.2-1: the server may disconnect without CONNACK.
            return Err(Refusal::other(
                RefusalKind::Protocol,
                format!("protocol name {:?}, not \"MQTT\"", connect.protocol_name),
            ));
        }
        let early = if connect.protocol_level != 4 {
            Some(Refusal::other(
                RefusalKind::Connect {
                    return_code: return_code::UNACCEPTABLE_PROTOCOL_VERSION,
                },
                format!(
                    "protocol level {}: the stand-in speaks MQTT 3.1.1 (level 4) only",
                    connect.protocol_level
                ),
            ))
        } else if connect.client_id.is_empty() && !connect.clean_session {
            Some(Refusal::other(
                RefusalKind::Connect {
                    return_code: return_code::IDENTIFIER_REJECTED,
                },
                "an empty client id with a persistent session (MQTT-3.1.3-8)",
            ))
        } else {
            None
        };
        let decision =
            match early {
                Some(refusal) => Err(refusal),
                None => {
                    let request = ConnectRequest {
                        client_id: connect.client_id,
                        username: connect.username,
                        password: connect.password,
                        certificates,
                        keep_alive: connect.keep_alive,
                        clean_session: connect.clean_session,
                    };
                    self.ctx.auth.connect(&request).await.and_then(|session| {
                        match session.expires_at {
                            Some(at) if at <= SystemTime::now() => Err(Refusal::bad_credentials(
                                "the credential has already expired",
                            )),
                            _ => Ok(session),
                        }
                    })
                }
            };
        match decision {
            Ok(session) => {
                self.send(codec::encode_connack(return_code::ACCEPTED))
                    .await
                    .map_err(|e| {
                        Refusal::other(RefusalKind::Protocol, format!("writing CONNACK: {e}"))
                    })?;
                self.ctx.recorder.connected(Connected {
                    client_id: self.client_id.clone(),
                    device: session.device.clone(),
                    expires_at: session.expires_at,
                });
                Ok(session)
            }
            Err(refusal) => {
                if let Some(code) = refusal.return_code() {
                    let _ = self.send(codec::encode_connack(code)).await;
                }
                Err(refusal)
            }
        }
    }

    /// Serves packets after CONNACK until the client leaves or a refusal.
    async fn packets(&mut self, connect: &Connect, session: &Session) -> Result<(), Refusal> {
        // MQTT-3.1.2-24: no packet within one and a half keep-alive periods closes.
        let keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_secs(u64::from(connect.keep_alive)) * 3 / 2);
        let expires = session.expires_at.map(|at| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            Instant::now() + left
        });
        loop {
            let idle_deadline = keep_alive.map(|k| Instant::now() + k);
            let packet = tokio::select! {
                packet = self.next_packet() => packet?,
                () = sleep_until(idle_deadline) => {
                    return Err(Refusal::other(
                        RefusalKind::KeepAlive,
                        format!(
                            "no packet within 1.5 x the keep-alive of {} s",
                            connect.keep_alive
                        ),
                    ));
                }
                () = sleep_until(expires) => {
                    return Err(Refusal::other(
                        RefusalKind::Expired,
                        "the session's credential expired",
                    ));
                }
            };
            let Some(packet) = packet else {
                return Ok(());
            };
            let protocol_error = |e: std::io::Error| {
                Refusal::other(RefusalKind::Protocol, format!("writing an answer: {e}"))
            };
            match packet {
                ClientPacket::Publish(publish) => {
                    if let Some(ack) = self.publish(session, publish)? {
                        self.send(ack).await.map_err(protocol_error)?;
                    }
                }
                ClientPacket::Subscribe { packet_id, filters } => {
                    let mut codes = Vec::with_capacity(filters.len());
                    for (filter, qos) in &filters {
                        codes.push(match self.ctx.auth.subscribe(session, filter, *qos)? {
                            SubscribeAnswer::Granted(q) => q.min(1),
                            SubscribeAnswer::Failure => codec::SUBACK_FAILURE,
                        });
                    }
                    self.send(codec::encode_suback(packet_id, &codes))
                        .await
                        .map_err(protocol_error)?;
                }
                ClientPacket::Unsubscribe { packet_id, .. } => {
                    self.send(codec::encode_unsuback(packet_id))
                        .await
                        .map_err(protocol_error)?;
                }
                ClientPacket::PingReq => {
                    self.send(codec::encode_pingresp())
                        .await
                        .map_err(protocol_error)?;
                }
                // The stand-ins never send PUBLISH, so there is nothing to acknowledge; a stray
                // PUBACK is ignored.
                ClientPacket::PubAck(_) => {}
                ClientPacket::Disconnect => return Ok(()),
                ClientPacket::Connect(_) => {
                    return Err(Refusal::other(
                        RefusalKind::Protocol,
                        "a second CONNECT (MQTT-3.1.0-2)",
                    ));
                }
                ClientPacket::QoS2Flow(kind) => {
                    return Err(Refusal::other(
                        RefusalKind::Protocol,
                        format!("packet type {kind} (QoS 2 flow), which the clouds do not support"),
                    ));
                }
            }
        }
    }

    /// Judges and records a PUBLISH; the PUBACK to send for QoS 1.
    fn publish(&self, session: &Session, publish: Publish) -> Result<Option<Bytes>, Refusal> {
        if publish.qos == 2 {
            return Err(Refusal::other(
                RefusalKind::QoS2 {
                    topic: publish.topic,
                },
                "QoS 2 is not supported: the cloud closes the connection",
            ));
        }
        let target = self.ctx.auth.publish(session, &publish.topic)?;
        self.ctx.recorder.received(Received {
            device: session.device.clone(),
            client_id: self.client_id.clone(),
            topic: target.topic,
            properties: target.properties,
            payload: publish.payload,
            qos: publish.qos,
            dup: publish.dup,
            retain: publish.retain,
        });
        Ok(publish.packet_id.map(codec::encode_puback))
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
