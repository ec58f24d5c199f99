//! A whole local stack for one cloud: the emulators, the function binary running as real
//! process(es) under the Lambda Runtime API emulator, and a balenaCloud fleet to provision.

use std::time::Duration;

use provision_emulators::balena::BalenaEmulator;
use provision_emulators::lambda_runtime::{InvocationOutcome, LambdaRuntimeEmulator};
use tokio::process::Command;

use crate::aws::{self, Moto};
use crate::events::{Answer, Call};
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
}

impl Default for Options {
    fn default() -> Self {
        Options { instances: 1, allow_unauthenticated: false, extra_env: Vec::new() }
    }
}

pub struct AwsWorld {
    pub balena: BalenaEmulator,
    pub moto: Moto,
    /// What the function reaches moto through: counts the function's connections to AWS.
    pub aws_proxy: CountingProxy,
    pub iot: aws_sdk_iot::Client,
    pub runtime: LambdaRuntimeEmulator,
    pub functions: tokio::sync::Mutex<Vec<Process>>,
    pub logs: LogBook,
    pub secrets: Secrets,
    pub application: i64,
}

impl AwsWorld {
    pub async fn start() -> anyhow::Result<AwsWorld> {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> anyhow::Result<AwsWorld> {
        let logs = LogBook::default();
        let secrets = Secrets::new();
        let (balena, moto, runtime) = tokio::join!(BalenaEmulator::start(), Moto::start(&logs), LambdaRuntimeEmulator::start());
        let (balena, moto, runtime) = (balena?, moto?, runtime?);
        balena.add_user_key(&secrets.function_key);
        let application = balena.add_application("fleet");
        balena.add_service(application, SERVICE);
        balena.add_service(application, "main");
        let iot = moto.client().await;
        aws::create_device_policy(&iot).await?;

        let binary = paths::binary("provision-lambda")?;
        let aws_proxy = CountingProxy::start(moto.port).await?;
        let mut env: Vec<(String, String)> = runtime.function_env("provision");
        env.extend(moto.function_env());
        env.push(("AWS_ENDPOINT_URL".into(), aws_proxy.endpoint()));
        env.extend(
            [
                ("BALENA_API_URL", balena.url()),
                ("BALENA_API_KEY", secrets.function_key.clone()),
                ("PROVISION_OPERATOR_TOKEN", secrets.operator_token.clone()),
                ("PROVISION_ALLOW_UNAUTHENTICATED", options.allow_unauthenticated.to_string()),
                ("AWS_IOT_POLICY", aws::POLICY.to_string()),
                ("RUST_LOG", "debug".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
        env.extend(options.extra_env);
        let mut functions = Vec::new();
        for n in 0..options.instances.max(1) {
            let mut command = Command::new(&binary);
            command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(path) = std::env::var_os("PATH") {
                command.env("PATH", path);
            }
            functions.push(Process::spawn(&format!("provision-lambda#{n}"), command, &logs)?);
        }
        Ok(AwsWorld { balena, moto, aws_proxy, iot, runtime, functions: tokio::sync::Mutex::new(functions), logs, secrets, application })
    }

    /// A new device of the fleet with a random UUID and its own API key.
    pub fn add_device(&self) -> Device {
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let id = self.balena.add_device(self.application, &uuid);
        let key = format!("devkey{}", uuid::Uuid::new_v4().simple());
        self.balena.add_device_key(id, &key);
        Device { uuid, id, key }
    }

    /// Calls the function as AWS would for a function URL request: through the Lambda Runtime
    /// API, to a real `provision-lambda` process.
    pub async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        let invocation = self.runtime.invoke(call.function_url_event(), aws::INVOKE_TIMEOUT).await?;
        match invocation.outcome {
            InvocationOutcome::Response(value) => Answer::from_lambda_response(&value),
            InvocationOutcome::Error(error) => anyhow::bail!("the function reported an invocation error: {error}"),
        }
    }

    /// Every secret this world knows, for log checks.
    pub fn secret_strings(&self, devices: &[&Device]) -> Vec<String> {
        let mut all = vec![self.secrets.function_key.clone(), self.secrets.operator_token.clone()];
        all.extend(devices.iter().map(|d| d.key.clone()));
        all
    }

    /// Stops the function processes and waits until all they printed is in `logs`.
    pub async fn stop_functions_and_wait(&self) {
        let functions: Vec<Process> = self.functions.lock().await.drain(..).collect();
        for f in functions {
            f.stop().await;
        }
    }

    /// Waits for the first function process to exit by itself (a start-up failure).
    pub async fn wait_for_exit(&self) -> std::process::ExitStatus {
        let mut functions = self.functions.lock().await;
        let first = functions.first_mut().expect("a function process");
        first.wait(Duration::from_secs(30)).await.expect("the function exits")
    }

    /// Stops everything; the processes' logs stay readable through `logs`.
    pub async fn stop(self) {
        self.stop_functions_and_wait().await;
        self.runtime.shutdown().await;
        self.balena.shutdown().await;
        self.moto.stop().await;
    }
}

pub const SHORT: Duration = Duration::from_secs(5);
