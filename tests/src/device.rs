//! The device side as the tests run it: the real mosquitto broker (Debian's package) as the
//! local broker, a stand-in for the balena supervisor's `/v1/update`, `cloud-relay` as a real
//! process, and a producer publishing to the local broker at QoS 1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::process::Command;

use crate::balena::Balena;
use crate::paths;
use crate::process::{LogBook, Process, free_port, wait_for_port};
use crate::world::{Device, SERVICE};

/// A directory removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!(
            "provision-{what}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// mosquitto on a free port of 127.0.0.1, with persistence in its own directory (a restart
/// keeps the relay's session and the messages queued for it, as on a device).
pub struct Mosquitto {
    pub port: u16,
    dir: ScratchDir,
    process: Option<Process>,
    logs: LogBook,
}

impl Mosquitto {
    /// mosquitto on a given port (a client that cannot be told another, like the published
    /// Node relay's hard-coded `mqtt://127.0.0.1`).
    pub async fn start_on(logs: &LogBook, port: u16) -> anyhow::Result<Mosquitto> {
        let dir = ScratchDir::new("mosquitto")?;
        let process = spawn_broker(&dir.0, port, logs).await?;
        Ok(Mosquitto {
            port,
            dir,
            process: Some(process),
            logs: logs.clone(),
        })
    }

    pub async fn start(logs: &LogBook) -> anyhow::Result<Mosquitto> {
        let dir = ScratchDir::new("mosquitto")?;
        let mut last = None;
        // A port found free may be taken before mosquitto binds it: then try another.
        for _ in 0..5 {
            let port = free_port()?;
            match spawn_broker(&dir.0, port, logs).await {
                Ok(process) => {
                    return Ok(Mosquitto {
                        port,
                        dir,
                        process: Some(process),
                        logs: logs.clone(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("mosquitto did not start")))
    }

    /// Stops the broker as a service manager does (SIGTERM: it saves its state) and starts it
    /// again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.terminate()?;
            process.wait(Duration::from_secs(30)).await?;
        }
        self.process = Some(spawn_broker(&self.dir.0, self.port, &self.logs).await?);
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(process) = self.process.take() {
            process.stop().await;
        }
    }
}

/// The broker's configuration: loopback only, persistence in `dir`, and room for the relay's
/// group commits (it acknowledges a message only once it is on disk).
fn broker_config(dir: &Path, port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence true\n\
         persistence_location {dir}/\n\
         max_inflight_messages 1000\n\
         max_queued_messages 1000000\n\
         log_dest stdout\n\
         log_type error\n\
         log_type warning\n",
        dir = dir.display()
    )
}

async fn spawn_broker(dir: &Path, port: u16, logs: &LogBook) -> anyhow::Result<Process> {
    let binary = which("mosquitto").ok_or_else(|| {
        anyhow::anyhow!(
            "mosquitto is not installed: run `scripts/setup` (it installs Debian's mosquitto)"
        )
    })?;
    let config = dir.join("mosquitto.conf");
    std::fs::write(&config, broker_config(dir, port))?;
    let mut command = Command::new(binary);
    command.arg("-c").arg(&config);
    let mut process = Process::spawn("mosquitto", command, logs)?;
    wait_for_port(port, &mut process, "mosquitto").await?;
    Ok(process)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The balena supervisor's `POST /v1/update?apikey=...`, counting the calls made with its key.
pub struct Supervisor {
    pub address: String,
    pub api_key: String,
    updates: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    pub async fn start() -> anyhow::Result<Supervisor> {
        let api_key = format!("supervisor{}", uuid::Uuid::new_v4().simple());
        let updates = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (key, ok, bad) = (api_key.clone(), updates.clone(), refused.clone());
        let app = axum::Router::new().route(
            "/v1/update",
            axum::routing::post(
                move |query: axum::extract::Query<BTreeMap<String, String>>,
                      body: axum::extract::Json<serde_json::Value>| async move {
                    if query.get("apikey") == Some(&key) && body.0["force"] == true {
                        ok.fetch_add(1, Ordering::SeqCst);
                        http::StatusCode::NO_CONTENT
                    } else {
                        bad.fetch_add(1, Ordering::SeqCst);
                        http::StatusCode::UNAUTHORIZED
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Supervisor {
            address,
            api_key,
            updates,
            refused,
            task,
        })
    }

    /// `/v1/update` calls with the right key and `{"force": true}`.
    pub fn updates(&self) -> usize {
        self.updates.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The variables balenaCloud delivers to the device's `cloud-relay` service: device variables,
/// overridden by the service's own.
pub async fn delivered_variables(balena: &Balena, device: &Device) -> BTreeMap<String, String> {
    let mut vars = balena.device_vars(device.id).await;
    vars.extend(balena.service_vars(device.id, SERVICE).await);
    vars
}

/// `cloud-relay` as a process, its output in the log book under its own label.
pub struct Relay {
    process: Option<Process>,
    label: String,
    /// Arguments of every start (e.g. `iotedge-provisioning --listen ...`).
    args: Vec<String>,
    logs: LogBook,
    starts: usize,
}

impl Relay {
    /// Starts the relay with exactly `env` (plus PATH and an info log level).
    pub fn start(name: &str, env: &[(String, String)], logs: &LogBook) -> anyhow::Result<Relay> {
        Self::start_with_args(name, &[], env, logs)
    }

    /// Starts `cloud-relay <args>` with exactly `env` (plus PATH and an info log level).
    pub fn start_with_args(
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        logs: &LogBook,
    ) -> anyhow::Result<Relay> {
        let mut relay = Relay {
            process: None,
            label: name.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            logs: logs.clone(),
            starts: 0,
        };
        relay.spawn(env)?;
        Ok(relay)
    }

    fn spawn(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        let binary = paths::binary("cloud-relay")?;
        let mut command = paths::command("cloud-relay", &binary);
        command.args(&self.args).env_clear().env("RUST_LOG", "info");
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        self.starts += 1;
        let name = format!("{}#{}", self.label, self.starts);
        self.process = Some(Process::spawn(&name, command, &self.logs)?);
        Ok(())
    }

    /// What this relay printed (every start), without the label.
    pub fn lines(&self) -> Vec<String> {
        let prefix = format!("[{}#", self.label);
        self.logs
            .lines()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    /// Waits until a line of the current start contains `needle`; returns it.
    pub async fn wait_for_line(&self, needle: &str, limit: Duration) -> anyhow::Result<String> {
        self.wait_for_lines(needle, 1, limit)
            .await
            .map(|mut l| l.remove(0))
    }

    /// Waits until `count` lines of the current start contain `needle`.
    pub async fn wait_for_lines(
        &self,
        needle: &str,
        count: usize,
        limit: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let prefix = format!("[{}#{}]", self.label, self.starts);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let found: Vec<String> = self
                .logs
                .lines()
                .into_iter()
                .filter(|l| l.starts_with(&prefix) && l.contains(needle))
                .collect();
            if found.len() >= count {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "{prefix} printed {} of {count} lines with {needle:?} within {limit:?}; it printed:\n{}",
                    found.len(),
                    self.lines().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id of the current start.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(|p| p.child.id())
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// `SIGKILL`, as a power cut looks to the process (the kernel keeps what it wrote).
    pub async fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop().await;
        }
    }

    /// Stops it as the supervisor does (SIGTERM) and waits for it to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut process = self
            .process
            .take()
            .ok_or_else(|| anyhow::anyhow!("the relay is not running"))?;
        process.terminate()?;
        process.wait(Duration::from_secs(30)).await
    }

    /// Starts it again with `env` (the supervisor restarting the service with new variables).
    pub fn restart(&mut self, env: &[(String, String)]) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "stop the relay first");
        self.spawn(env)
    }

    pub async fn stop(mut self) {
        self.kill().await;
    }
}

/// Publishes messages `{"seq": n}` for `seqs` to the local broker at QoS 1 and returns when the
/// broker has acknowledged every one.
pub async fn produce(port: u16, topic: &str, seqs: std::ops::Range<u64>) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(
        format!("producer-{}", uuid::Uuid::new_v4().simple()),
        "127.0.0.1",
        port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut events) = AsyncClient::new(options, 256);
    let total = seqs.end - seqs.start;
    let topic = topic.to_string();
    let sender = tokio::spawn(async move {
        for seq in seqs {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload(seq))
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        match tokio::time::timeout(Duration::from_secs(60), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("the producer lost the local broker: {e}"),
            Err(_) => anyhow::bail!("the local broker acknowledged {acked} of {total} in 60 s"),
        }
    }
    let client = sender.await??;
    let _ = client.disconnect().await;
    Ok(())
}

/// The payload of message `seq`.
pub fn payload(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq}}}").into_bytes()
}

/// The sequence number in a payload made by `payload`.
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value["seq"].as_u64()
}

/// What a stream of delivered sequence numbers says: every one of `expected` there, in order
/// of first arrival, and how many arrived more than once.
#[derive(Debug)]
pub struct Delivery {
    pub missing: Vec<u64>,
    pub duplicates: usize,
    pub out_of_order: usize,
}

pub fn delivery(received: &[u64], expected: std::ops::Range<u64>) -> Delivery {
    let mut seen = std::collections::BTreeSet::new();
    let (mut duplicates, mut out_of_order, mut last) = (0, 0, None);
    for &seq in received {
        if !seen.insert(seq) {
            duplicates += 1;
            continue;
        }
        if last.is_some_and(|l| seq < l) {
            out_of_order += 1;
        }
        last = Some(seq);
    }
    Delivery {
        missing: expected.filter(|s| !seen.contains(s)).collect(),
        duplicates,
        out_of_order,
    }
}

/// The base environment of a relay for `device`: its identity and key, the supervisor, the
/// local broker, a queue directory, and the function's URL.
pub fn relay_env(
    device: &Device,
    provision_url: &str,
    supervisor: &Supervisor,
    broker_port: u16,
    queue_dir: &Path,
) -> Vec<(String, String)> {
    [
        ("BALENA_DEVICE_UUID", device.uuid.clone()),
        ("BALENA_SERVICE_NAME", SERVICE.to_string()),
        ("BALENA_API_KEY", device.key.clone()),
        ("BALENA_SUPERVISOR_ADDRESS", supervisor.address.clone()),
        ("BALENA_SUPERVISOR_API_KEY", supervisor.api_key.clone()),
        ("PROVISION_URL", provision_url.to_string()),
        ("LOCAL_MQTT_URL", format!("mqtt://127.0.0.1:{broker_port}")),
        ("RELAY_QUEUE_DIR", queue_dir.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
