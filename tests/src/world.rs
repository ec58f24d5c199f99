//! A whole local stack for one cloud: the emulators, the function binary running as real
//! process(es) under the Lambda Runtime API emulator, and a balenaCloud fleet to provision.

use std::time::Duration;

use provision_core::Cloud;
use provision_emulators::balena::BalenaEmulator;
use provision_emulators::clearblade::ClearBladeEmulator;
use provision_emulators::fault_proxy::{FaultProxy, Flavour, Traffic};
use provision_emulators::iothub::{IotHubEmulator, Policy};
use provision_emulators::lambda_runtime::{InvocationOutcome, LambdaRuntimeEmulator};
use provision_emulators::tls_front::{TestCa, TlsFront};
use tokio::process::Command;

use crate::aws::{self, Moto};
use crate::balena::{Backend, Balena};
use crate::events::{Answer, Call};
use crate::open_balena::{RealBalena, port_of};
use crate::paths;
use crate::process::{LogBook, Process};
use crate::proxy::CountingProxy;

/// The function's own balenaCloud key and the operator token in every test world. Made up per
/// world so that a secret check can look for them in the logs.
pub struct Secrets {
    pub function_key: String,
    pub operator_token: String,
}

impl Secrets {
    fn new() -> Self {
        Secrets {
            function_key: format!("fnkey{}", uuid::Uuid::new_v4().simple()),
            operator_token: format!("op-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

/// A device in the emulated fleet, with its own API key.
#[derive(Clone, Debug)]
pub struct Device {
    pub uuid: String,
    pub id: i64,
    pub key: String,
}

pub const SERVICE: &str = "cloud-relay";

pub struct Options {
    /// Function processes polling the runtime API (Lambda's scale-out).
    pub instances: usize,
    pub allow_unauthenticated: bool,
    pub extra_env: Vec<(String, String)>,
    /// The settings are expected to stop the function at start-up: do not wait for it to
    /// serve (see `wait_for_exit`).
    pub startup_fails: bool,
    /// Serve through `provision-cloudrun` with `PROVISION_CLOUD` set to the world's cloud,
    /// instead of the cloud's own host (Lambda, the custom handler).
    pub cloudrun: bool,
    /// Put fault proxies in front of balenaCloud and the registry (the world's `faults`).
    pub faults: bool,
    /// With `faults`: reach the proxies over TLS, as the real services' endpoints are reached
    /// (a TLS front before each proxy; the function trusts the front's test CA through
    /// `SSL_CERT_FILE`), so handshakes can be counted.
    pub tls: bool,
    /// The emulator, or the real balenaCloud API server.
    pub balena: Backend,
    /// The IoT Hub's host name (Azure worlds). A device connecting to the hub's MQTT stand-in
    /// needs one that resolves to 127.0.0.1: `localhost`.
    pub hub_host: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            instances: 1,
            allow_unauthenticated: false,
            extra_env: Vec::new(),
            startup_fails: false,
            cloudrun: false,
            faults: false,
            tls: false,
            balena: Backend::Emulator,
            hub_host: HUB_HOST,
        }
    }
}

/// Fault proxies in front of a world's balenaCloud and registry, sharing one log and plan.
pub struct Faults {
    pub traffic: Traffic,
    pub balena: FaultProxy,
    pub registry: FaultProxy,
    /// TLS fronts before the proxies, when the world asked for them.
    tls: Option<Fronts>,
}

/// The TLS fronts of a world's proxies, and the file holding their CA for the function.
struct Fronts {
    ca_file: CaFile,
    balena: TlsFront,
    registry: TlsFront,
}

/// A CA certificate in a file of its own, removed when dropped.
struct CaFile(std::path::PathBuf);

impl CaFile {
    fn write(pem: &str) -> anyhow::Result<CaFile> {
        let path = std::env::temp_dir().join(format!(
            "provision-test-ca-{}-{}.pem",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, pem)?;
        Ok(CaFile(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Faults {
    /// Proxies to `balena_url`'s and `registry_url`'s ports, when `options.faults` says so.
    async fn start(
        options: &Options,
        balena_url: &str,
        registry_url: &str,
        registry: &'static str,
        flavour: Flavour,
    ) -> anyhow::Result<Option<Faults>> {
        if !options.faults {
            return Ok(None);
        }
        let traffic = Traffic::new();
        let balena = FaultProxy::start(
            "balena",
            port_of(balena_url)?,
            Flavour::Balena,
            traffic.clone(),
        )
        .await?;
        let registry_proxy =
            FaultProxy::start(registry, port_of(registry_url)?, flavour, traffic.clone()).await?;
        let tls = match options.tls {
            false => None,
            true => {
                let ca = TestCa::new()?;
                let ca_file = CaFile::write(ca.ca_pem())?;
                Some(Fronts {
                    balena: TlsFront::start("balena", balena.port, &ca, traffic.clone()).await?,
                    registry: TlsFront::start(registry, registry_proxy.port, &ca, traffic.clone())
                        .await?,
                    ca_file,
                })
            }
        };
        Ok(Some(Faults {
            traffic,
            balena,
            registry: registry_proxy,
            tls,
        }))
    }

    /// Where the function reaches balenaCloud: the proxy, or its TLS front.
    pub fn balena_url(&self) -> String {
        self.tls
            .as_ref()
            .map_or_else(|| self.balena.url(), |t| t.balena.url())
    }

    /// Where the function reaches the registry: the proxy, or its TLS front.
    pub fn registry_url(&self) -> String {
        self.tls
            .as_ref()
            .map_or_else(|| self.registry.url(), |t| t.registry.url())
    }

    /// The function's setting that makes it trust the TLS fronts' CA (none without fronts).
    fn trust_env(&self) -> Option<(String, String)> {
        self.tls.as_ref().map(|t| {
            (
                "SSL_CERT_FILE".to_string(),
                t.ca_file.0.display().to_string(),
            )
        })
    }
}

/// Who holds a key that is not a device's (see [`Fleet::caller_key`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallerRole {
    /// A fleet member with the read-only observer role: sees every device, may write nothing.
    Observer,
    /// A fleet member who may change devices.
    Member,
    /// The fleet's own key (a provisioning key).
    Fleet,
}

/// The balenaCloud side every world has: the emulator (a fleet with two services) or a new
/// fleet on the real server (service `cloud-relay`), the function's own key and the operator
/// token.
pub struct Fleet {
    pub balena: Balena,
    pub secrets: Secrets,
    /// The API keys of every device added, for the secret audit.
    device_keys: std::sync::Mutex<Vec<String>>,
    /// The emulator's application id (unused on the real server).
    application: i64,
}

impl Fleet {
    pub async fn start(backend: Backend) -> anyhow::Result<Fleet> {
        let mut secrets = Secrets::new();
        let (balena, application) = match backend {
            Backend::Emulator => {
                let balena = BalenaEmulator::start().await?;
                balena.add_user_key(&secrets.function_key);
                let application = balena.add_application("fleet");
                balena.add_service(application, SERVICE);
                balena.add_service(application, "main");
                (Balena::Emulator(balena), application)
            }
            Backend::OpenBalena => {
                let real = RealBalena::start().await?;
                secrets.function_key = real.user_key().to_string();
                (Balena::Real(real), 0)
            }
        };
        Ok(Fleet {
            balena,
            secrets,
            application,
            device_keys: Default::default(),
        })
    }

    /// A key of a caller that is not a device: a fleet member's user key (by `role`) or the
    /// fleet's own key. On the real server (no roles, every user key sees every device) both
    /// roles are another user key of the superuser, and the fleet's key is its provisioning key.
    pub async fn caller_key(&self, role: CallerRole) -> String {
        let key = match &self.balena {
            Balena::Emulator(balena) => {
                let key = format!("{role:?}key{}", uuid::Uuid::new_v4().simple()).to_lowercase();
                match role {
                    CallerRole::Member => balena.add_user_key(&key),
                    CallerRole::Observer => balena.add_observer_key(&key),
                    CallerRole::Fleet => balena.add_fleet_key(self.application, &key),
                }
                key
            }
            Balena::Real(real) => match role {
                CallerRole::Member | CallerRole::Observer => real
                    .another_user_key()
                    .await
                    .expect("the real server makes a user key"),
                CallerRole::Fleet => real.fleet.provisioning_key.clone(),
            },
        };
        if let Ok(mut keys) = self.device_keys.lock() {
            keys.push(key.clone());
        }
        key
    }

    /// Freezes the device as balenaCloud does (its own key then sees nothing). Only the
    /// emulator can: open-balena has no device freezing (`is_frozen` is constantly false there).
    pub fn freeze(&self, device: &Device) {
        self.balena.emulator().freeze_device(device.id);
    }

    /// A new device of the fleet with its own API key (a random UUID on the emulator; on the
    /// real server, registered as a device registers itself).
    pub async fn add_device(&self) -> Device {
        let device = match &self.balena {
            Balena::Emulator(balena) => {
                let uuid = uuid::Uuid::new_v4().simple().to_string();
                let id = balena.add_device(self.application, &uuid);
                let key = format!("devkey{}", uuid::Uuid::new_v4().simple());
                balena.add_device_key(id, &key);
                Device { uuid, id, key }
            }
            Balena::Real(real) => {
                let d = real
                    .register_device()
                    .await
                    .expect("the real server registers a device");
                Device {
                    uuid: d.uuid,
                    id: d.id,
                    key: d.key,
                }
            }
        };
        if let Ok(mut keys) = self.device_keys.lock() {
            keys.push(device.key.clone());
        }
        device
    }

    /// Every secret this fleet knows (the keys of every device added included), for log checks.
    pub fn secret_strings(&self, devices: &[&Device]) -> Vec<String> {
        let mut all = vec![
            self.secrets.function_key.clone(),
            self.secrets.operator_token.clone(),
        ];
        all.extend(devices.iter().map(|d| d.key.clone()));
        all.extend(
            self.device_keys
                .lock()
                .map(|k| k.clone())
                .unwrap_or_default(),
        );
        all
    }

    /// The secret audit (see `secrets`): run by every world as it stops, its functions stopped.
    /// It reads the function's output and answers, and every request line the upstreams saw
    /// (balenaCloud's and the registry's, `registry_requests`): no secret may stand in a URL,
    /// where access logs keep it.
    fn audit(
        &self,
        world: Cloud,
        logs: &LogBook,
        registry_secrets: &[String],
        registry_requests: Vec<String>,
    ) {
        let mut known = self.secret_strings(&[]);
        known.extend(registry_secrets.iter().cloned());
        crate::secrets::assert_none(world.as_str(), logs, &known);
        let upstream = LogBook::default();
        for line in self
            .balena
            .request_lines()
            .into_iter()
            .chain(registry_requests)
        {
            let decoded = percent_encoding::percent_decode_str(&line)
                .decode_utf8_lossy()
                .into_owned();
            upstream.push(format!("[upstream request] {decoded}"));
        }
        crate::secrets::assert_none(
            &format!("{world}, upstream request lines"),
            &upstream,
            &known,
        );
    }

    /// The settings every function binary takes for balenaCloud and callers (balenaCloud
    /// reached through the fault proxy when there is one).
    fn function_env(&self, options: &Options, faults: &Option<Faults>) -> Vec<(String, String)> {
        [
            (
                "BALENA_API_URL",
                faults
                    .as_ref()
                    .map_or_else(|| self.balena.url(), Faults::balena_url),
            ),
            ("BALENA_API_KEY", self.secrets.function_key.clone()),
            (
                "PROVISION_OPERATOR_TOKEN",
                self.secrets.operator_token.clone(),
            ),
            (
                "PROVISION_ALLOW_UNAUTHENTICATED",
                options.allow_unauthenticated.to_string(),
            ),
            ("RUST_LOG", "debug".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into_iter()
        .chain(faults.as_ref().and_then(Faults::trust_env))
        .collect()
    }
}

/// The function processes of a world.
#[derive(Default)]
pub struct Functions(tokio::sync::Mutex<Vec<Process>>);

impl Functions {
    fn new(processes: Vec<Process>) -> Self {
        Functions(tokio::sync::Mutex::new(processes))
    }

    /// Stops the processes and waits until all they printed is in the log book.
    pub async fn stop_and_wait(&self) {
        let processes: Vec<Process> = self.0.lock().await.drain(..).collect();
        for p in processes {
            p.stop().await;
        }
    }

    /// The process ids of the function processes still running (the benchmark reads their
    /// `/proc` entries: CPU time, peak memory, environment).
    pub async fn pids(&self) -> Vec<u32> {
        self.0
            .lock()
            .await
            .iter()
            .filter_map(|p| p.child.id())
            .collect()
    }

    /// Sends SIGTERM to the first process.
    pub async fn terminate_first(&self) -> anyhow::Result<()> {
        self.0
            .lock()
            .await
            .first()
            .ok_or_else(|| anyhow::anyhow!("no function process"))?
            .terminate()
    }

    /// Waits for the first process to exit by itself (a start-up failure, or after SIGTERM).
    pub async fn wait_for_exit(&self) -> std::process::ExitStatus {
        let mut processes = self.0.lock().await;
        let first = processes.first_mut().expect("a function process");
        first
            .wait(Duration::from_secs(30))
            .await
            .expect("the function exits")
    }
}

/// Starts `binary`, a build of the function binary `name` (its runner, if one is set: see
/// `paths::command`), with exactly this environment (and PATH).
fn spawn_function(
    name: &str,
    binary: &std::path::Path,
    label: &str,
    env: &[(String, String)],
    logs: &LogBook,
) -> anyhow::Result<Process> {
    Process::spawn(label, function_command(name, binary, env), logs)
}

fn function_command(name: &str, binary: &std::path::Path, env: &[(String, String)]) -> Command {
    let mut command = paths::command(name, binary);
    command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
}

/// Function processes that are HTTP servers (the custom handler, Cloud Run), each on its own
/// port; calls go to them in turn, as a load balancer would.
pub struct HttpFunctions {
    pub ports: Vec<u16>,
    /// Put before the contract's path: `/api` for the Functions host's routes.
    prefix: &'static str,
    next: std::sync::atomic::AtomicUsize,
    http: reqwest::Client,
    /// Where answers are kept for the secret audit.
    logs: LogBook,
}

impl HttpFunctions {
    /// Starts `instances` processes of `binary`, each with `env` plus its port in `port_var`,
    /// and (unless the start-up is expected to fail) waits until each listens.
    async fn start(
        binary: &str,
        env: &[(String, String)],
        port_var: &str,
        prefix: &'static str,
        options: &Options,
        logs: &LogBook,
    ) -> anyhow::Result<(HttpFunctions, Functions)> {
        let path = paths::binary(binary)?;
        let (mut ports, mut processes) = (Vec::new(), Vec::new());
        for n in 0..options.instances.max(1) {
            let env_on = |port: u16| {
                let mut env = env.to_vec();
                env.push((port_var.to_string(), port.to_string()));
                env.extend(options.extra_env.iter().cloned());
                env
            };
            let name = format!("{binary}#{n}");
            let (port, process) = if options.startup_fails {
                let port = crate::process::free_port()?;
                (
                    port,
                    spawn_function(binary, &path, &name, &env_on(port), logs)?,
                )
            } else {
                // Served once its own /healthz answers (not some other server that took the
                // port meanwhile).
                crate::process::spawn_server(
                    &name,
                    logs,
                    |port| function_command(binary, &path, &env_on(port)),
                    &format!("{prefix}/healthz"),
                    |status, body| status == 200 && body.contains("\"status\""),
                )
                .await?
            };
            ports.push(port);
            processes.push(process);
        }
        let http = HttpFunctions {
            ports,
            prefix,
            next: Default::default(),
            http: reqwest::Client::new(),
            logs: logs.clone(),
        };
        Ok((http, Functions::new(processes)))
    }

    /// The contract's `path` on the first instance: what a device is given as `PROVISION_URL`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}{path}", self.ports[0], self.prefix)
    }

    /// Sends the call to the next instance, as its host would forward it.
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = self.ports[turn % self.ports.len()];
        let mut url = format!("http://127.0.0.1:{port}{}{}", self.prefix, call.path);
        if !call.query.is_empty() {
            url = format!("{url}?{}", call.query);
        }
        let method = reqwest::Method::from_bytes(call.method.as_bytes())?;
        let mut request = self.http.request(method, url);
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if let Some(body) = call.body {
            request = request.body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let raw_body = response.text().await?;
        self.logs.record_answer(&raw_body);
        let body = serde_json::from_str(&raw_body).unwrap_or(serde_json::Value::Null);
        Ok(Answer {
            status,
            headers,
            body,
            raw_body,
        })
    }
}

/// How a world's function is reached.
pub enum Host {
    /// Real processes polling the Lambda Runtime API emulator.
    Lambda(LambdaRuntimeEmulator),
    /// Real processes serving HTTP.
    Http(HttpFunctions),
}

/// Starts `provision-cloudrun` serving `cloud` with `env`.
async fn start_cloudrun(
    cloud: Cloud,
    env: &[(String, String)],
    options: &Options,
    logs: &LogBook,
) -> anyhow::Result<(HttpFunctions, Functions)> {
    let mut env = env.to_vec();
    env.push(("PROVISION_CLOUD".into(), cloud.as_str().into()));
    HttpFunctions::start("provision-cloudrun", &env, "PORT", "", options, logs).await
}

pub struct AwsWorld {
    pub fleet: Fleet,
    pub moto: Moto,
    /// What the function reaches moto through: counts the function's connections to AWS.
    pub aws_proxy: CountingProxy,
    pub iot: aws_sdk_iot::Client,
    pub host: Host,
    pub functions: Functions,
    pub logs: LogBook,
    pub faults: Option<Faults>,
}

impl std::ops::Deref for AwsWorld {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

/// Waits until each of the world's `processes` function processes has logged the end of its
/// start-up warm-up (complete or not; at most 30 s), so that a test's first request meets a
/// ready process and the upstreams' logs hold only what tests cause: the caller of this then
/// clears them. A world whose `extra_env` turns the warm-up off (`PROVISION_WARMUP_MS=0`), or
/// whose functions are to fail at start-up, has nothing to wait for.
async fn warmed_up(logs: &LogBook, options: &Options, processes: usize) -> anyhow::Result<()> {
    let off = options
        .extra_env
        .iter()
        .any(|(k, v)| k == "PROVISION_WARMUP_MS" && v.trim() == "0");
    if off || options.startup_fails {
        return Ok(());
    }
    let ended = |logs: &LogBook| {
        logs.lines()
            .iter()
            .filter(|l| l.contains("warmed up in ") || l.contains("warm-up incomplete after "))
            .count()
    };
    for _ in 0..3000 {
        if ended(logs) >= processes {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!(
        "{} of {processes} function processes logged the end of their warm-up within 30 s",
        ended(logs)
    )
}

impl AwsWorld {
    pub async fn start() -> anyhow::Result<AwsWorld> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<AwsWorld> {
        let logs = LogBook::default();
        let (fleet, moto) = tokio::join!(Fleet::start(options.balena), Moto::start(&logs));
        let (fleet, moto) = (fleet?, moto?);
        let iot = moto.client().await;
        aws::create_device_policy(&iot).await?;

        let aws_proxy = CountingProxy::start(moto.port).await?;
        let faults = Faults::start(
            &options,
            &fleet.balena.url(),
            &aws_proxy.endpoint(),
            "aws",
            Flavour::Aws,
        )
        .await?;
        let mut env: Vec<(String, String)> = moto.function_env();
        env.push((
            "AWS_ENDPOINT_URL".into(),
            faults
                .as_ref()
                .map_or_else(|| aws_proxy.endpoint(), Faults::registry_url),
        ));
        env.extend(fleet.function_env(&options, &faults));
        env.push(("AWS_IOT_POLICY".into(), aws::POLICY.to_string()));
        let (host, functions) = if options.cloudrun {
            let (http, functions) = start_cloudrun(Cloud::Aws, &env, &options, &logs).await?;
            (Host::Http(http), functions)
        } else {
            let runtime = LambdaRuntimeEmulator::start().await?;
            env.extend(runtime.function_env("provision"));
            env.extend(options.extra_env.iter().cloned());
            let binary = paths::binary("provision-lambda")?;
            let mut functions = Vec::new();
            for n in 0..options.instances.max(1) {
                functions.push(spawn_function(
                    "provision-lambda",
                    &binary,
                    &format!("provision-lambda#{n}"),
                    &env,
                    &logs,
                )?);
            }
            (Host::Lambda(runtime), Functions::new(functions))
        };
        warmed_up(&logs, &options, options.instances.max(1)).await?;
        fleet.balena.clear_requests();
        aws_proxy.reset();
        if let Some(faults) = &faults {
            faults.traffic.clear();
        }
        Ok(AwsWorld {
            fleet,
            moto,
            aws_proxy,
            iot,
            host,
            functions,
            logs,
            faults,
        })
    }

    /// Calls the function as AWS would for a function URL request: through the Lambda Runtime
    /// API, to a real `provision-lambda` process (or over HTTP to `provision-cloudrun`).
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        let runtime = match &self.host {
            Host::Http(http) => return http.call(call).await,
            Host::Lambda(runtime) => runtime,
        };
        let invocation = runtime
            .invoke(call.function_url_event(), aws::INVOKE_TIMEOUT)
            .await?;
        match invocation.outcome {
            InvocationOutcome::Response(value) => {
                let answer = Answer::from_lambda_response(&value)?;
                self.logs.record_answer(&answer.raw_body);
                Ok(answer)
            }
            InvocationOutcome::Error(error) => {
                anyhow::bail!("the function reported an invocation error: {error}")
            }
        }
    }

    /// Stops the function processes and waits until all they printed is in `logs`.
    pub async fn stop_functions_and_wait(&self) {
        self.functions.stop_and_wait().await;
    }

    /// Waits for the first function process to exit by itself (a start-up failure).
    pub async fn wait_for_exit(&self) -> std::process::ExitStatus {
        self.functions.wait_for_exit().await
    }

    /// Stops everything; the processes' logs stay readable through `logs`.
    pub async fn stop(self) {
        self.stop_functions_and_wait().await;
        let moto_keys: Vec<String> = self
            .moto
            .function_env()
            .into_iter()
            .filter(|(k, _)| k.contains("SECRET"))
            .map(|(_, v)| v)
            .collect();
        // moto keeps no request log; its calls go through the SDK, whose URLs hold ids only.
        self.fleet
            .audit(Cloud::Aws, &self.logs, &moto_keys, Vec::new());
        if let Host::Lambda(runtime) = self.host {
            runtime.shutdown().await;
        }
        self.fleet.balena.shutdown().await;
        self.moto.stop().await;
    }
}

pub const SHORT: Duration = Duration::from_secs(5);

/// The Azure stack: the IoT Hub emulator and the compiled `provision-azure` custom handler as
/// real process(es), called over HTTP exactly as the Functions host forwards requests. With
/// several instances (the host's scale-out), calls go to them in turn.
pub struct AzureWorld {
    pub fleet: Fleet,
    pub hub: IotHubEmulator,
    pub http: HttpFunctions,
    pub functions: Functions,
    pub logs: LogBook,
    pub policy_key: String,
    pub faults: Option<Faults>,
}

impl std::ops::Deref for AzureWorld {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

pub const HUB_HOST: &str = "provision-test.azure-devices.net";

impl AzureWorld {
    pub async fn start() -> anyhow::Result<AzureWorld> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<AzureWorld> {
        let logs = LogBook::default();
        let policy = Policy::with_random_key("balena-provision", true);
        let policy_key = policy.key_base64.clone();
        let (fleet, hub) = tokio::join!(
            Fleet::start(options.balena),
            IotHubEmulator::start(options.hub_host, vec![policy])
        );
        let (fleet, hub) = (fleet?, hub?);
        let faults = Faults::start(
            &options,
            &fleet.balena.url(),
            &hub.url(),
            "iothub",
            Flavour::IotHub,
        )
        .await?;
        let mut env = fleet.function_env(&options, &faults);
        env.extend([
            (
                "CONNECTION_STRING".to_string(),
                hub.connection_string("balena-provision"),
            ),
            (
                "AZURE_IOTHUB_ENDPOINT".to_string(),
                faults
                    .as_ref()
                    .map_or_else(|| hub.url(), Faults::registry_url),
            ),
        ]);
        let (http, functions) = if options.cloudrun {
            start_cloudrun(Cloud::Azure, &env, &options, &logs).await?
        } else {
            HttpFunctions::start(
                "provision-azure",
                &env,
                "FUNCTIONS_CUSTOMHANDLER_PORT",
                "/api",
                &options,
                &logs,
            )
            .await?
        };
        warmed_up(&logs, &options, options.instances.max(1)).await?;
        fleet.balena.clear_requests();
        hub.clear_requests();
        if let Some(faults) = &faults {
            faults.traffic.clear();
        }
        Ok(AzureWorld {
            fleet,
            hub,
            http,
            functions,
            logs,
            policy_key,
            faults,
        })
    }

    /// Calls a custom handler as the Functions host forwards a request to `/api<path>`.
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        self.http.call(call).await
    }

    pub async fn stop(self) {
        self.functions.stop_and_wait().await;
        self.fleet.audit(
            Cloud::Azure,
            &self.logs,
            &[
                self.policy_key.clone(),
                self.hub.connection_string("balena-provision"),
            ],
            self.hub
                .all_requests()
                .into_iter()
                .map(|r| format!("{} {}", r.method, r.path_and_query))
                .collect(),
        );
        self.hub.shutdown().await;
        self.fleet.balena.shutdown().await;
    }
}

pub const GCP_PROJECT: &str = "balena-provision-test";
pub const GCP_REGION: &str = "us-central1";
pub const GCP_REGISTRY: &str = "balena-fleet";

/// The GCP stack: the ClearBlade IoT Core emulator and the compiled `provision-cloudrun` as
/// real process(es), called over HTTP as Cloud Run forwards requests.
pub struct GcpWorld {
    pub fleet: Fleet,
    pub clearblade: ClearBladeEmulator,
    pub http: HttpFunctions,
    pub functions: Functions,
    pub logs: LogBook,
    pub faults: Option<Faults>,
}

impl std::ops::Deref for GcpWorld {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl GcpWorld {
    pub async fn start() -> anyhow::Result<GcpWorld> {
        Self::start_with(Options::default()).await
    }

    /// Cloud Run is this world's host whether or not `options.cloudrun` says so.
    pub async fn start_with(options: Options) -> anyhow::Result<GcpWorld> {
        let logs = LogBook::default();
        let (fleet, clearblade) = tokio::join!(
            Fleet::start(options.balena),
            ClearBladeEmulator::start(GCP_PROJECT, &[(GCP_REGION, GCP_REGISTRY)])
        );
        let (fleet, clearblade) = (fleet?, clearblade?);
        let faults = Faults::start(
            &options,
            &fleet.balena.url(),
            &clearblade.url(),
            "clearblade",
            Flavour::ClearBlade,
        )
        .await?;
        // Through the proxy, the service account names it; the emulator then answers with the
        // proxy's address for the registry's calls too (it names the address it was called at).
        let service_account = match &faults {
            None => clearblade.service_account_base64(),
            Some(f) => {
                let mut account = clearblade.service_account_json();
                account["url"] = serde_json::Value::String(f.registry_url());
                clearblade.set_behind_tls_proxy(options.tls);
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    account.to_string(),
                )
            }
        };
        let mut env = fleet.function_env(&options, &faults);
        env.extend([
            ("GCP_PROJECT_ID".to_string(), GCP_PROJECT.to_string()),
            ("GCP_REGION".to_string(), GCP_REGION.to_string()),
            ("CB_REGISTRY_ID".to_string(), GCP_REGISTRY.to_string()),
            ("CB_SERVICE_ACCOUNT".to_string(), service_account),
        ]);
        let (http, functions) = start_cloudrun(Cloud::Gcp, &env, &options, &logs).await?;
        warmed_up(&logs, &options, options.instances.max(1)).await?;
        fleet.balena.clear_requests();
        clearblade.clear_requests();
        if let Some(faults) = &faults {
            faults.traffic.clear();
        }
        Ok(GcpWorld {
            fleet,
            clearblade,
            http,
            functions,
            logs,
            faults,
        })
    }

    /// Calls the service as Cloud Run forwards a request.
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        self.http.call(call).await
    }

    /// The registry's device for a balena device (`balena-<uuid>`).
    pub fn device(&self, uuid: &str) -> Option<serde_json::Value> {
        self.clearblade
            .device(GCP_REGION, GCP_REGISTRY, &format!("balena-{uuid}"))
    }

    /// The PEM keys the registry holds for a balena device.
    pub fn public_keys(&self, uuid: &str) -> Option<Vec<String>> {
        self.clearblade
            .public_keys(GCP_REGION, GCP_REGISTRY, &format!("balena-{uuid}"))
    }

    pub async fn stop(self) {
        self.functions.stop_and_wait().await;
        let mut registry_secrets = self.clearblade.secrets();
        registry_secrets.push(self.clearblade.service_account_base64());
        // ClearBlade's API puts the system key (an identifier; the token goes in a header) in
        // its paths by design: that one is masked, anything else secret fails the audit.
        let system_keys = self.clearblade.system_keys();
        let requests = self
            .clearblade
            .all_requests()
            .into_iter()
            .map(|r| {
                let line = format!("{} {}?{}", r.method, r.path, r.query);
                system_keys
                    .iter()
                    .fold(line, |line, key| line.replace(key.as_str(), "<system key>"))
            })
            .collect();
        self.fleet
            .audit(Cloud::Gcp, &self.logs, &registry_secrets, requests);
        self.clearblade.shutdown().await;
        self.fleet.balena.shutdown().await;
    }
}
