//! The local broker side: subscribes to `PRODUCER_TOPIC` at QoS 1 with a persistent session
//! (the broker keeps what arrives while the relay is away) and acknowledges each message only
//! once the queue has it on disk, in the order they came, as MQTT requires.

use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::backoff::Backoff;
use crate::queue::Queue;
use crate::settings::Settings;

/// Largest local message taken (the clouds' own limits are 128 KiB to 256 KiB).
const MAX_PACKET: usize = 1024 * 1024;
/// Requests (acknowledgements) waiting for the connection to take them.
const REQUEST_CAPACITY: usize = 65_536;

/// Takes messages from the local broker into the queue, reconnecting forever.
pub async fn run(settings: &Settings, queue: Queue) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let address = format!("{}:{}", settings.local_mqtt.host, settings.local_mqtt.port);
    loop {
        let error = session(settings, &queue, &mut backoff).await;
        let wait = backoff.next_wait();
        tracing::warn!(
            "local broker: disconnected from {address} ({error:#}); reconnecting in {:.1}s",
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
    }
}

async fn session(settings: &Settings, queue: &Queue, backoff: &mut Backoff) -> anyhow::Error {
    let broker = &settings.local_mqtt;
    let mut options = MqttOptions::new(
        format!("cloud-relay-{}", settings.device_uuid),
        broker.host.clone(),
        broker.port,
    );
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    if let Some(user) = &broker.username {
        options.set_credentials(user.clone(), broker.password.clone().unwrap_or_default());
    }
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut pending = FuturesOrdered::new();
    loop {
        tokio::select! {
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(
                        "local broker: connected to {}:{} (session {})",
                        broker.host,
                        broker.port,
                        if ack.session_present { "resumed" } else { "new" }
                    );
                    if let Err(e) = client.try_subscribe(settings.producer_topic.clone(), QoS::AtLeastOnce) {
                        return e.into();
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        return anyhow::anyhow!("the broker refused the subscription to {}", settings.producer_topic);
                    }
                    backoff.reset();
                    tracing::info!("local broker: subscribed to {} (QoS 1)", settings.producer_topic);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let queue = queue.clone();
                    pending.push_back(async move {
                        let stored = queue.append(publish.payload.clone()).await;
                        (publish, stored)
                    });
                }
                Ok(_) => {}
                Err(e) => return e.into(),
            },
            Some((publish, stored)) = pending.next(), if !pending.is_empty() => {
                if let Err(e) = stored {
                    // Not acknowledged: the broker sends it again after the reconnection.
                    return e;
                }
                if publish.qos != QoS::AtMostOnce
                    && let Err(e) = client.try_ack(&publish)
                {
                    return e.into();
                }
            }
        }
    }
}
