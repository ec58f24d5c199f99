//! The cloud side: one MQTT-over-TLS connection at a time, publishing the queue in order at
//! QoS 1 and removing each message when the cloud acknowledges it. Every new connection starts
//! again from the oldest message still queued, so a message in flight when a connection drops
//! is sent again (a duplicate, which QoS 1 allows), never lost.
//!
//! With a token (ClearBlade), the connection is renewed `GCP_RENEWAL_START` before the token
//! expires: no new message is sent, those in flight are awaited, and a new connection with a
//! new token starts at once. The cloud closes an older connection of the same client id when a
//! new one arrives, so the two cannot overlap; the queue holds what arrives meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};

use crate::backoff::Backoff;
use crate::jwt::TokenKey;
use crate::link::{Link, Proof};
use crate::queue::Queue;
use crate::tls;

/// QoS 1 messages in flight on one connection (AWS IoT's limit is 100).
const WINDOW: u16 = 100;
/// How long a renewal waits for the acknowledgements of the messages in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const MAX_PACKET: usize = 1024 * 1024;

/// Delivers the queue to the cloud, reconnecting forever.
pub async fn run(link: &Link, trusted_ca_pem: Option<&str>, queue: Queue) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match connection(link, trusted_ca_pem, &queue, &mut backoff).await {
            Ok(()) => tracing::info!("cloud: renewing the connection before the token expires"),
            Err(e) => {
                let wait = backoff.next_wait();
                tracing::warn!(
                    "cloud: disconnected from {}:{} ({e:#}); {} message(s) queued; reconnecting in {:.1}s",
                    link.host,
                    link.port,
                    queue.stats().messages,
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The MQTT options for one connection, and when it must be renewed (a token's).
fn options(
    link: &Link,
    trusted_ca_pem: Option<&str>,
) -> anyhow::Result<(MqttOptions, Option<tokio::time::Instant>)> {
    let roots = tls::roots(trusted_ca_pem)?;
    let mut options = MqttOptions::new(link.client_id.clone(), link.host.clone(), link.port);
    options
        .set_clean_session(true)
        .set_keep_alive(KEEP_ALIVE)
        .set_inflight(WINDOW)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(usize::from(WINDOW) * 2);
    let (config, renew_at) = match &link.proof {
        Proof::Certificate {
            certificate_pem,
            private_key_pem,
        } => {
            if let Some(user) = &link.username {
                options.set_credentials(user.clone(), "");
            }
            (
                tls::with_client_certificate(roots, certificate_pem, private_key_pem)?,
                None,
            )
        }
        Proof::Token {
            private_key_pem,
            audience,
            lifetime,
            renew_before,
        } => {
            let key = TokenKey::from_pem(private_key_pem)?;
            let token = key.token(audience, now_unix(), lifetime.as_secs())?;
            options.set_credentials(link.username.clone().unwrap_or_default(), token);
            let renew_at = tokio::time::Instant::now() + lifetime.saturating_sub(*renew_before);
            (tls::anonymous(roots)?, Some(renew_at))
        }
    };
    options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(config))));
    Ok((options, renew_at))
}

/// One connection: returns `Ok` when it was closed for a token renewal, else why it ended.
async fn connection(
    link: &Link,
    trusted_ca_pem: Option<&str>,
    queue: &Queue,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let (options, renew_at) = options(link, trusted_ca_pem)?;
    let (client, mut events) = AsyncClient::new(options, usize::from(WINDOW) * 2);

    // Connected only once the cloud says so.
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    anyhow::bail!("the cloud refused the connection: {code:?}")
                }
                Err(e) => return Err(anyhow::Error::from(e)),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("no CONNACK within {}s", CONNECT_TIMEOUT.as_secs()))?;
    connected?;
    backoff.reset();
    tracing::info!("cloud: connected to {link}");

    // Ids submitted to the client, waiting for the packet id it gives them, in order.
    let submitted: Arc<Mutex<VecDeque<u64>>> = Arc::default();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let feeder = feed(
        client.clone(),
        link.topic.clone(),
        queue.clone(),
        submitted.clone(),
    );
    tokio::pin!(feeder);
    let mut feeding = true;
    let renewal = async {
        match renew_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(renewal);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let drained = !feeding
            && in_flight.is_empty()
            && submitted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if drained {
            let _ = client.try_disconnect();
            return Ok(());
        }
        tokio::select! {
            event = events.poll() => match event? {
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    if let Some(id) = submitted.lock().unwrap_or_else(|e| e.into_inner()).pop_front() {
                        in_flight.insert(pkid, id);
                    }
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    if let Some(id) = in_flight.remove(&ack.pkid) {
                        queue.remove(id);
                    }
                }
                Event::Incoming(Packet::Disconnect) => anyhow::bail!("the cloud closed the session"),
                _ => {}
            },
            result = &mut feeder, if feeding => {
                result?;
            }
            () = &mut renewal, if feeding => {
                feeding = false;
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
            }
            () = sleep_until_some(drain_deadline) => {
                let _ = client.try_disconnect();
                return Ok(());
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Publishes the queue from its oldest message on, as fast as the window lets it.
async fn feed(
    client: AsyncClient,
    topic: String,
    queue: Queue,
    submitted: Arc<Mutex<VecDeque<u64>>>,
) -> anyhow::Result<()> {
    let mut next = 0;
    loop {
        for message in queue.read_from(next, usize::from(WINDOW)).await? {
            submitted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(message.id);
            client
                .publish_bytes(topic.clone(), QoS::AtLeastOnce, false, message.payload)
                .await?;
            next = message.id + 1;
        }
    }
}
