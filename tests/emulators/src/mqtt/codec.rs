//! MQTT 3.1.1 packets (OASIS MQTT Version 3.1.1, section 2 and 3): the ones a device sends to
//! the clouds' brokers (CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT)
//! decoded, and the ones a broker answers with (CONNACK, PUBACK, SUBACK, UNSUBACK, PINGRESP)
//! encoded. Anything that does not follow the specification is a [`Malformed`] error, on which
//! the server closes the connection (MQTT-4.8.0-1: "the Server MUST close the Network
//! Connection").
//!
//! The client-side encoders (`encode_connect`, `encode_publish`, ...) are for tests.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest remaining length the varint can say (4 bytes, 268 435 455).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Why a byte stream is not MQTT 3.1.1; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed MQTT packet: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

fn malformed<T>(why: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(why.into()))
}

/// The Will a CONNECT may carry (kept only to be complete: the stand-ins never publish it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub message: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// A CONNECT packet (3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol name, `MQTT` for 3.1.1.
    pub protocol_name: String,
    /// The protocol level, 4 for 3.1.1.
    pub protocol_level: u8,
    pub clean_session: bool,
    /// Seconds; 0 turns the keep-alive off.
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

/// A PUBLISH packet (3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    /// 0, 1 or 2 (3 is malformed).
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// Present exactly when `qos > 0`.
    pub packet_id: Option<u16>,
    pub payload: Bytes,
}

/// A packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    Connect(Connect),
    Publish(Publish),
    /// PUBACK from the client (for a QoS 1 PUBLISH the server sent).
    PubAck(u16),
    /// PUBREC, PUBREL or PUBCOMP: QoS 2 flow, which the clouds do not support.
    QoS2Flow(u8),
    Subscribe {
        packet_id: u16,
        /// (topic filter, requested QoS).
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
}

/// CONNACK return codes (3.2.2.3).
pub mod return_code {
    pub const ACCEPTED: u8 = 0;
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
    pub const IDENTIFIER_REJECTED: u8 = 2;
    pub const SERVER_UNAVAILABLE: u8 = 3;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
    pub const NOT_AUTHORIZED: u8 = 5;
}

/// A SUBACK return code for a refused filter (3.9.3).
pub const SUBACK_FAILURE: u8 = 0x80;

/// Reads the fixed header's remaining length (1 to 4 bytes, 7 bits each, least significant
/// first). `Ok(None)`: more bytes are needed. Returns (length, bytes the varint took).
pub fn decode_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, Malformed> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A longer encoding than needed is not forbidden by 3.1.1's text, but a zero
            // continuation byte is pointless; accept it like most brokers do.
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return malformed("the remaining length takes more than 4 bytes");
    }
    Ok(None)
}

/// Appends the remaining length `len` as the varint.
pub fn encode_remaining_length(mut len: usize, out: &mut BytesMut) {
    assert!(len <= MAX_REMAINING_LENGTH, "MQTT packet too long");
    loop {
        let mut byte = u8::try_from(len % 128).unwrap_or(0);
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// Takes one whole packet off the front of `buf`: `Ok(None)` when `buf` does not hold a whole
/// packet yet. A packet longer than `max_len` (remaining length) is an error before it arrives.
pub fn decode_client_packet(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<ClientPacket>, Malformed> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((len, varint)) = decode_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if len > max_len {
        return malformed(format!(
            "a packet of {len} bytes is larger than the {max_len} accepted"
        ));
    }
    if buf.len() < 1 + varint + len {
        buf.reserve(1 + varint + len - buf.len());
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(1 + varint);
    let body = buf.split_to(len).freeze();
    parse_client_packet(first, body).map(Some)
}

/// A cursor over a packet's variable header and payload.
struct Reader(Bytes);

impl Reader {
    fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        if self.0.remaining() < 1 {
            return malformed(format!("{what} is missing"));
        }
        Ok(self.0.get_u8())
    }

    fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        if self.0.remaining() < 2 {
            return malformed(format!("{what} is missing"));
        }
        Ok(self.0.get_u16())
    }

    /// Binary data: a two-byte length and that many bytes (1.5.3 / 3.1.3.5).
    fn binary(&mut self, what: &str) -> Result<Bytes, Malformed> {
        let len = usize::from(self.u16(what)?);
        if self.0.remaining() < len {
            return malformed(format!("{what} is shorter than its length"));
        }
        Ok(self.0.split_to(len))
    }

    /// A UTF-8 encoded string (1.5.3): well-formed UTF-8 without U+0000 (MQTT-1.5.3-1/2).
    fn string(&mut self, what: &str) -> Result<String, Malformed> {
        let raw = self.binary(what)?;
        let text =
            std::str::from_utf8(&raw).map_err(|_| Malformed(format!("{what} is not UTF-8")))?;
        if text.contains('\0') {
            return malformed(format!("{what} contains U+0000"));
        }
        Ok(text.to_string())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    fn packet_id(&mut self) -> Result<u16, Malformed> {
        match self.u16("the packet identifier")? {
            0 => malformed("the packet identifier is 0 (MQTT-2.3.1-1)"),
            id => Ok(id),
        }
    }
}

fn expect_flags(first: u8, flags: u8, name: &str) -> Result<(), Malformed> {
    if first & 0x0f == flags {
        Ok(())
    } else {
        malformed(format!(
            "{name} has fixed-header flags {:#06b}, not {flags:#06b} (MQTT-2.2.2-2)",
            first & 0x0f
        ))
    }
}

fn parse_client_packet(first: u8, body: Bytes) -> Result<ClientPacket, Malformed> {
    let mut r = Reader(body);
    let packet = match first >> 4 {
        1 => {
            expect_flags(first, 0, "CONNECT")?;
            ClientPacket::Connect(parse_connect(&mut r)?)
        }
        3 => ClientPacket::Publish(parse_publish(first, &mut r)?),
        4 => {
            expect_flags(first, 0, "PUBACK")?;
            ClientPacket::PubAck(r.packet_id()?)
        }
        kind @ 5..=7 => {
            // PUBREC, PUBREL (flags 0010), PUBCOMP: only QoS 2 uses them.
            r.packet_id()?;
            ClientPacket::QoS2Flow(kind)
        }
        8 => {
            expect_flags(first, 0b0010, "SUBSCRIBE")?;
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string("a topic filter")?;
                check_filter(&filter)?;
                let qos = r.u8("the requested QoS")?;
                if qos > 2 {
                    return malformed("a requested QoS is above 2 (MQTT-3.8.3-4)");
                }
                filters.push((filter, qos));
            }
            if filters.is_empty() {
                return malformed("SUBSCRIBE without a topic filter (MQTT-3.8.3-3)");
            }
            ClientPacket::Subscribe { packet_id, filters }
        }
        10 => {
            expect_flags(first, 0b0010, "UNSUBSCRIBE")?;
            let packet_id = r.packet_id()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string("a topic filter")?;
                check_filter(&filter)?;
                filters.push(filter);
            }
            if filters.is_empty() {
                return malformed("UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)");
            }
            ClientPacket::Unsubscribe { packet_id, filters }
        }
        12 => {
            expect_flags(first, 0, "PINGREQ")?;
            ClientPacket::PingReq
        }
        14 => {
            expect_flags(first, 0, "DISCONNECT")?;
            ClientPacket::Disconnect
        }
        kind => return malformed(format!("packet type {kind} is not one a client sends")),
    };
    if !r.is_empty() {
        return malformed("bytes after the end of the packet");
    }
    Ok(packet)
}

fn parse_connect(r: &mut Reader) -> Result<Connect, Malformed> {
    let protocol_name = r.string("the protocol name")?;
    let protocol_level = r.u8("the protocol level")?;
    let flags = r.u8("the connect flags")?;
    if flags & 0x01 != 0 {
        return malformed("the reserved connect flag is set (MQTT-3.1.2-3)");
    }
    let clean_session = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return malformed("Will QoS or Retain set without a Will (MQTT-3.1.2-11/13/15)");
    }
    if will_qos > 2 {
        return malformed("the Will QoS is 3 (MQTT-3.1.2-14)");
    }
    if password_flag && !username_flag {
        return malformed("a password without a user name (MQTT-3.1.2-22)");
    }
    let keep_alive = r.u16("the keep alive")?;
    let client_id = r.string("the client identifier")?;
    let will = if will_flag {
        let topic = r.string("the Will topic")?;
        let message = r.binary("the Will message")?;
        Some(Will {
            topic,
            message,
            qos: will_qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("the user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("the password")?)
    } else {
        None
    };
    Ok(Connect {
        protocol_name,
        protocol_level,
        clean_session,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn parse_publish(first: u8, r: &mut Reader) -> Result<Publish, Malformed> {
    let dup = first & 0x08 != 0;
    let qos = (first >> 1) & 0x03;
    let retain = first & 0x01 != 0;
    if qos == 3 {
        return malformed("PUBLISH with QoS 3 (MQTT-3.3.1-4)");
    }
    if qos == 0 && dup {
        return malformed("PUBLISH with QoS 0 and DUP set (MQTT-3.3.1-2)");
    }
    let topic = r.string("the topic name")?;
    if topic.is_empty() {
        return malformed("an empty topic name (MQTT-4.7.3-1)");
    }
    if topic.contains(['+', '#']) {
        return malformed("a wildcard in a topic name (MQTT-3.3.2-2)");
    }
    let packet_id = if qos > 0 { Some(r.packet_id()?) } else { None };
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: r.rest(),
    })
}

/// A topic filter: not empty, `#` only last and alone in its level, `+` alone in its level
/// (4.7.1).
fn check_filter(filter: &str) -> Result<(), Malformed> {
    if filter.is_empty() {
        return malformed("an empty topic filter (MQTT-4.7.3-1)");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return malformed(format!("the topic filter {filter:?} misuses '#'"));
        }
        if level.contains('+') && *level != "+" {
            return malformed(format!("the topic filter {filter:?} misuses '+'"));
        }
    }
    Ok(())
}

fn packet(first: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(first);
    encode_remaining_length(body.len(), &mut out);
    out.put_slice(body);
    out.freeze()
}

/// CONNACK (3.2): session present is always 0 (the stand-ins keep no sessions).
pub fn encode_connack(return_code: u8) -> Bytes {
    packet(0x20, &[0, return_code])
}

pub fn encode_puback(packet_id: u16) -> Bytes {
    packet(0x40, &packet_id.to_be_bytes())
}

/// SUBACK (3.9) with one return code per filter (granted QoS or [`SUBACK_FAILURE`]).
pub fn encode_suback(packet_id: u16, codes: &[u8]) -> Bytes {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend_from_slice(codes);
    packet(0x90, &body)
}

pub fn encode_unsuback(packet_id: u16) -> Bytes {
    packet(0xb0, &packet_id.to_be_bytes())
}

pub fn encode_pingresp() -> Bytes {
    packet(0xd0, &[])
}

// ----- client side, for tests -------------------------------------------------------------

fn put_binary(out: &mut Vec<u8>, data: &[u8]) {
    let len = u16::try_from(data.len()).expect("MQTT string longer than 65535 bytes");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// CONNECT for MQTT 3.1.1 with a clean session.
pub fn encode_connect(
    client_id: &str,
    username: Option<&str>,
    password: Option<&[u8]>,
    keep_alive: u16,
) -> Bytes {
    let mut body = Vec::new();
    put_binary(&mut body, b"MQTT");
    body.push(4);
    let mut flags = 0x02;
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_binary(&mut body, client_id.as_bytes());
    if let Some(u) = username {
        put_binary(&mut body, u.as_bytes());
    }
    if let Some(p) = password {
        put_binary(&mut body, p);
    }
    packet(0x10, &body)
}

/// PUBLISH with `packet_id` when `qos > 0`.
pub fn encode_publish(topic: &str, payload: &[u8], qos: u8, packet_id: u16, dup: bool) -> Bytes {
    let mut body = Vec::new();
    put_binary(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1);
    packet(first, &body)
}

pub fn encode_subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Bytes {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_binary(&mut body, filter.as_bytes());
        body.push(*qos);
    }
    packet(0x82, &body)
}

pub fn encode_unsubscribe(packet_id: u16, filters: &[&str]) -> Bytes {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        put_binary(&mut body, filter.as_bytes());
    }
    packet(0xa2, &body)
}

pub fn encode_pingreq() -> Bytes {
    packet(0xc0, &[])
}

pub fn encode_disconnect() -> Bytes {
    packet(0xe0, &[])
}

/// A packet a server sends, as a test client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerPacket {
    ConnAck { session_present: bool, code: u8 },
    PubAck(u16),
    SubAck { packet_id: u16, codes: Vec<u8> },
    UnsubAck(u16),
    PingResp,
}

/// Takes one whole server packet off `buf` (`Ok(None)`: not whole yet). For tests.
pub fn decode_server_packet(buf: &mut BytesMut) -> Result<Option<ServerPacket>, Malformed> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((len, varint)) = decode_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if buf.len() < 1 + varint + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(1 + varint);
    let mut r = Reader(buf.split_to(len).freeze());
    let packet = match first {
        0x20 => {
            let ack = r.u8("the acknowledge flags")?;
            let code = r.u8("the return code")?;
            ServerPacket::ConnAck {
                session_present: ack & 1 != 0,
                code,
            }
        }
        0x40 => ServerPacket::PubAck(r.u16("the packet identifier")?),
        0x90 => ServerPacket::SubAck {
            packet_id: r.u16("the packet identifier")?,
            codes: r.rest().to_vec(),
        },
        0xb0 => ServerPacket::UnsubAck(r.u16("the packet identifier")?),
        0xd0 => ServerPacket::PingResp,
        other => return malformed(format!("unexpected server packet {other:#04x}")),
    };
    if !r.is_empty() {
        return malformed("bytes after the end of the packet");
    }
    Ok(Some(packet))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Option<ClientPacket>, Malformed> {
        let mut buf = BytesMut::from(bytes);
        decode_client_packet(&mut buf, 1 << 20)
    }

    #[test]
    fn remaining_length_round_trips() {
        for len in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut out = BytesMut::new();
            encode_remaining_length(len, &mut out);
            assert_eq!(
                decode_remaining_length(&out),
                Ok(Some((len, out.len()))),
                "{len}"
            );
        }
        assert_eq!(decode_remaining_length(&[0x80, 0x80]), Ok(None));
        assert!(decode_remaining_length(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn connect_round_trips() {
        let bytes = encode_connect("dev-1", Some("hub/dev-1/?api-version=x"), Some(b"pw"), 60);
        let Some(ClientPacket::Connect(c)) = decode_all(&bytes).expect("decodes") else {
            panic!("not a CONNECT");
        };
        assert_eq!(c.protocol_name, "MQTT");
        assert_eq!(c.protocol_level, 4);
        assert!(c.clean_session);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "dev-1");
        assert_eq!(c.username.as_deref(), Some("hub/dev-1/?api-version=x"));
        assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
        assert_eq!(c.will, None);
    }

    #[test]
    fn partial_packets_wait_for_more() {
        let bytes = encode_publish("a/b", b"hello", 1, 7, false);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                decode_client_packet(&mut buf, 1 << 20),
                Ok(None),
                "cut {cut}"
            );
        }
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(&encode_pingreq());
        let first = decode_client_packet(&mut buf, 1 << 20).expect("decodes");
        assert_eq!(
            first,
            Some(ClientPacket::Publish(Publish {
                dup: false,
                qos: 1,
                retain: false,
                topic: "a/b".into(),
                packet_id: Some(7),
                payload: Bytes::from_static(b"hello"),
            }))
        );
        assert_eq!(
            decode_client_packet(&mut buf, 1 << 20),
            Ok(Some(ClientPacket::PingReq))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_packets_are_refused() {
        // Reserved connect flag.
        let mut connect = encode_connect("c", None, None, 0).to_vec();
        let flags_at = 2 + 6 + 1;
        connect[flags_at] |= 1;
        assert!(decode_all(&connect).is_err());
        // Password without user name.
        let mut connect = encode_connect("c", None, None, 0).to_vec();
        connect[flags_at] |= 0x40;
        assert!(decode_all(&connect).is_err());
        // QoS 3, QoS 0 with DUP, wildcard topic, packet id 0.
        let mut publish = encode_publish("a", b"", 0, 0, false).to_vec();
        publish[0] |= 0x06;
        assert!(decode_all(&publish).is_err());
        let mut publish = encode_publish("a", b"", 0, 0, false).to_vec();
        publish[0] |= 0x08;
        assert!(decode_all(&publish).is_err());
        assert!(decode_all(&encode_publish("a/+", b"", 0, 0, false)).is_err());
        assert!(decode_all(&encode_publish("a", b"", 1, 0, false)).is_err());
        // Wrong fixed-header flags on SUBSCRIBE, bad filters, empty SUBSCRIBE.
        let mut subscribe = encode_subscribe(1, &[("a/#", 0)]).to_vec();
        subscribe[0] = 0x80;
        assert!(decode_all(&subscribe).is_err());
        assert!(decode_all(&encode_subscribe(1, &[("a/#/b", 0)])).is_err());
        assert!(decode_all(&encode_subscribe(1, &[("a+", 0)])).is_err());
        assert!(decode_all(&encode_subscribe(1, &[("a", 3)])).is_err());
        assert!(decode_all(&encode_subscribe(1, &[])).is_err());
        // Invalid UTF-8 in a topic, trailing bytes, unknown packet types, too long.
        assert!(decode_all(&[0x30, 0x03, 0x00, 0x01, 0xff]).is_err());
        assert!(decode_all(&[0xc0, 0x01, 0x00]).is_err());
        assert!(decode_all(&[0x20, 0x02, 0x00, 0x00]).is_err());
        assert!(decode_all(&[0x00, 0x00]).is_err());
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x03][..]);
        assert!(decode_client_packet(&mut buf, 1024).is_err());
    }

    #[test]
    fn qos2_flow_packets_are_recognised() {
        assert_eq!(
            decode_all(&[0x62, 0x02, 0x00, 0x01]),
            Ok(Some(ClientPacket::QoS2Flow(6)))
        );
    }

    #[test]
    fn server_packets_round_trip() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_connack(5));
        buf.extend_from_slice(&encode_puback(9));
        buf.extend_from_slice(&encode_suback(3, &[1, SUBACK_FAILURE]));
        buf.extend_from_slice(&encode_unsuback(4));
        buf.extend_from_slice(&encode_pingresp());
        let mut got = Vec::new();
        while let Some(p) = decode_server_packet(&mut buf).expect("decodes") {
            got.push(p);
        }
        assert_eq!(
            got,
            vec![
                ServerPacket::ConnAck {
                    session_present: false,
                    code: 5
                },
                ServerPacket::PubAck(9),
                ServerPacket::SubAck {
                    packet_id: 3,
                    codes: vec![1, SUBACK_FAILURE]
                },
                ServerPacket::UnsubAck(4),
                ServerPacket::PingResp,
            ]
        );
    }
}
