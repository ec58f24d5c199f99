//! The whole chain for one cloud, as a device meets it: balenaCloud (emulator), the function
//! binary, the registry emulator, the cloud's MQTT stand-in, the local broker (mosquitto), the
//! supervisor's update endpoint, and `cloud-relay` started with what balenaCloud would give it.

use std::sync::Arc;
use std::time::Duration;

use provision_core::Cloud;
use provision_emulators::mqtt::azure::AzureAuthenticator;
use provision_emulators::mqtt::clearblade::ClearBladeAuthenticator;
use provision_emulators::mqtt::{MqttStandIn, Received};

use crate::aws_mqtt::AwsAuthenticator;
use crate::device::{
    Delivery, Mosquitto, Relay, ScratchDir, Supervisor, delivered_variables, delivery, relay_env,
};
use crate::events::{Answer, Call};
use crate::process::LogBook;
use crate::world::{
    AwsWorld, AzureWorld, Device, Fleet, GCP_REGION, GCP_REGISTRY, GcpWorld, Host, Options,
};

enum AnyWorld {
    Aws(Box<AwsWorld>),
    Azure(Box<AzureWorld>),
    Gcp(Box<GcpWorld>),
}

/// One cloud's chain with one device, its relay not started yet.
pub struct Chain {
    pub cloud: Cloud,
    world: AnyWorld,
    pub stand_in: MqttStandIn,
    pub broker: Mosquitto,
    pub supervisor: Supervisor,
    pub device: Device,
    pub provision_url: String,
    pub queue_dir: ScratchDir,
    /// What the relay needs besides the credential variables: identity, key, supervisor,
    /// broker, queue, function URL, the stand-in's address and CA.
    pub base_env: Vec<(String, String)>,
    pub logs: LogBook,
}

/// Fixed ports for a chain, for a client that cannot be told others (default: free ports).
#[derive(Clone, Copy, Debug, Default)]
pub struct ChainPorts {
    pub broker: Option<u16>,
    pub stand_in: Option<u16>,
}

impl Chain {
    pub async fn start(cloud: Cloud) -> anyhow::Result<Chain> {
        Self::start_with(cloud, ChainPorts::default()).await
    }

    pub async fn start_with(cloud: Cloud, ports: ChainPorts) -> anyhow::Result<Chain> {
        let stand_in_at = |auth: Arc<dyn provision_emulators::mqtt::Authenticator>,
                           name: &'static str| async move {
            match ports.stand_in {
                Some(port) => {
                    MqttStandIn::start_on(name, auth, ([127, 0, 0, 1], port).into(), None).await
                }
                None => MqttStandIn::start(name, auth).await,
            }
        };
        let logs_of = |w: &AnyWorld| match w {
            AnyWorld::Aws(w) => w.logs.clone(),
            AnyWorld::Azure(w) => w.logs.clone(),
            AnyWorld::Gcp(w) => w.logs.clone(),
        };
        let (world, stand_in, url) = match cloud {
            Cloud::Aws => {
                // Served over HTTP (provision-cloudrun with the AWS registry), as a device
                // calls the function URL.
                let world = AwsWorld::start_with(Options {
                    cloudrun: true,
                    ..Options::default()
                })
                .await?;
                let auth = AwsAuthenticator::for_moto(&world.moto).await?;
                let stand_in = stand_in_at(Arc::new(auth), "AWS IoT Core").await?;
                let Host::Http(http) = &world.host else {
                    anyhow::bail!("the AWS world was asked for an HTTP host");
                };
                let url = http.url("/provision");
                (AnyWorld::Aws(Box::new(world)), stand_in, url)
            }
            Cloud::Azure => {
                // The hub's name must resolve to the stand-in: localhost.
                let world = AzureWorld::start_with(Options {
                    hub_host: "localhost",
                    ..Options::default()
                })
                .await?;
                let auth = AzureAuthenticator::new(world.hub.clone());
                let stand_in = stand_in_at(Arc::new(auth), "Azure IoT Hub").await?;
                let url = world.http.url("/provision");
                (AnyWorld::Azure(Box::new(world)), stand_in, url)
            }
            Cloud::Gcp => {
                let world = GcpWorld::start().await?;
                let auth = ClearBladeAuthenticator::new(
                    world.clearblade.clone(),
                    GCP_REGION,
                    GCP_REGISTRY,
                );
                let stand_in = stand_in_at(Arc::new(auth), "ClearBlade IoT Core").await?;
                let url = world.http.url("/provision");
                (AnyWorld::Gcp(Box::new(world)), stand_in, url)
            }
        };
        let logs = logs_of(&world);
        let broker = async {
            match ports.broker {
                Some(port) => Mosquitto::start_on(&logs, port).await,
                None => Mosquitto::start(&logs).await,
            }
        };
        let (broker, supervisor) = tokio::join!(broker, Supervisor::start());
        let (broker, supervisor) = (broker?, supervisor?);
        let fleet = match &world {
            AnyWorld::Aws(w) => &w.fleet,
            AnyWorld::Azure(w) => &w.fleet,
            AnyWorld::Gcp(w) => &w.fleet,
        };
        let device = fleet.add_device().await;
        let queue_dir = ScratchDir::new("relay-queue")?;
        let mut base_env = relay_env(&device, &url, &supervisor, broker.port, &queue_dir.0);
        base_env.push(("CLOUD_CA_CERT".into(), stand_in.ca_pem()));
        let port = stand_in.port();
        base_env.extend(
            match cloud {
                Cloud::Aws => vec![("AWS_DATA_ENDPOINT", format!("127.0.0.1:{port}"))],
                Cloud::Azure => vec![("AZURE_HUB_HOST", format!("localhost:{port}"))],
                Cloud::Gcp => vec![
                    ("CLOUD_PROVIDER", "GCP".to_string()),
                    ("MESSAGING_HOST", format!("127.0.0.1:{port}")),
                ],
            }
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
        );
        Ok(Chain {
            cloud,
            world,
            stand_in,
            broker,
            supervisor,
            device,
            provision_url: url,
            queue_dir,
            base_env,
            logs,
        })
    }

    pub fn fleet(&self) -> &Fleet {
        match &self.world {
            AnyWorld::Aws(w) => &w.fleet,
            AnyWorld::Azure(w) => &w.fleet,
            AnyWorld::Gcp(w) => &w.fleet,
        }
    }

    /// The IoT Hub emulator (Azure chains).
    pub fn iothub(&self) -> Option<&provision_emulators::iothub::IotHubEmulator> {
        match &self.world {
            AnyWorld::Azure(w) => Some(&w.hub),
            _ => None,
        }
    }

    /// Calls the function directly (a test playing the operator or the device).
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        match &self.world {
            AnyWorld::Aws(w) => w.call(call).await,
            AnyWorld::Azure(w) => w.call(call).await,
            AnyWorld::Gcp(w) => w.call(call).await,
        }
    }

    /// The device id the cloud knows the device by (what the stand-in authenticates).
    pub fn cloud_device_id(&self) -> String {
        match self.cloud {
            Cloud::Aws | Cloud::Azure => self.device.uuid.clone(),
            Cloud::Gcp => format!("balena-{}", self.device.uuid),
        }
    }

    /// The topic every relayed message must arrive on.
    pub fn expected_topic(&self) -> String {
        match self.cloud {
            Cloud::Aws => format!("balena/{}/sensors", self.device.uuid),
            Cloud::Azure => format!("devices/{}/messages/events/", self.device.uuid),
            Cloud::Gcp => format!("/devices/{}/events", self.cloud_device_id()),
        }
    }

    /// The base environment plus `extra`.
    pub fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.base_env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// The base environment plus the variables balenaCloud holds for the device's service now.
    pub async fn env_with_variables(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.env_with(extra);
        env.extend(delivered_variables(&self.fleet().balena, &self.device).await);
        env
    }

    /// Starts a relay without credentials, waits until it has provisioned the device and asked
    /// the supervisor for the variables, then plays the supervisor: restarts it with them.
    pub async fn provisioned_relay(&self, extra: &[(&str, &str)]) -> anyhow::Result<Relay> {
        let updates_before = self.supervisor.updates();
        let mut relay = Relay::start("cloud-relay", &self.env_with(extra), &self.logs)?;
        relay
            .wait_for_line("provisioning: created", Duration::from_secs(60))
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.supervisor.updates() == updates_before {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the relay did not ask the supervisor to refresh its variables"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay.terminate().await?;
        relay.restart(&self.env_with_variables(extra).await)?;
        relay
            .wait_for_line("cloud: connected", Duration::from_secs(60))
            .await?;
        Ok(relay)
    }

    /// Messages received from this chain's device, as sequence numbers, checking each was
    /// authenticated as the device and sent to its topic.
    pub fn received_seqs(&self, received: &[Received]) -> anyhow::Result<Vec<u64>> {
        let (device, topic) = (self.cloud_device_id(), self.expected_topic());
        received
            .iter()
            .map(|r| {
                anyhow::ensure!(
                    r.device == device,
                    "authenticated as {} not {device}",
                    r.device
                );
                anyhow::ensure!(r.topic == topic, "topic {} not {topic}", r.topic);
                if self.cloud == Cloud::Azure {
                    anyhow::ensure!(
                        r.properties
                            .iter()
                            .any(|(k, v)| k == "topic" && v == "sensors"),
                        "Azure message without the topic property: {:?}",
                        r.properties
                    );
                }
                anyhow::ensure!(r.qos == 1, "QoS {} not 1", r.qos);
                crate::device::seq_of(&r.payload)
                    .ok_or_else(|| anyhow::anyhow!("payload {:?} is not ours", r.payload))
            })
            .collect()
    }

    /// Waits until every message of `expected` has arrived from the device (at most `limit`),
    /// checking identity and topic of each; returns the delivery report either way.
    pub async fn wait_for_delivery(
        &self,
        expected: std::ops::Range<u64>,
        limit: Duration,
    ) -> anyhow::Result<Delivery> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seqs = self.received_seqs(&self.stand_in.received())?;
            let report = delivery(&seqs, expected.clone());
            if report.missing.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Secrets that must never appear in the relay's log: the device's key, the supervisor's,
    /// and the credential variables' values.
    pub async fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![self.device.key.clone(), self.supervisor.api_key.clone()];
        for (name, value) in delivered_variables(&self.fleet().balena, &self.device).await {
            if name.ends_with("_PRIVATE_KEY") {
                secrets.push(value);
            }
        }
        secrets
    }

    pub async fn stop(self) {
        self.broker.stop().await;
        self.stand_in.shutdown().await;
        match self.world {
            AnyWorld::Aws(w) => w.stop().await,
            AnyWorld::Azure(w) => w.stop().await,
            AnyWorld::Gcp(w) => w.stop().await,
        }
    }
}

/// The device's variables as balenaCloud holds them (for checks on what was stored).
pub async fn stored_variable_names(chain: &Chain) -> Vec<String> {
    delivered_variables(&chain.fleet().balena, &chain.device)
        .await
        .into_keys()
        .collect()
}
