//! What every cloud's test world offers the shared scenarios: start it, call the function as
//! that cloud's host would, and ask the registry emulator what a fleet operator would check.
//! `scenarios` holds the scenarios themselves, written once against this trait.

use std::ops::Deref;

use crate::checks::{self, Target};
use crate::events::{Answer, Call};
use crate::process::LogBook;
use crate::world::{AwsWorld, AzureWorld, Device, Fleet, Options};

/// One credential in the registry, as the scenarios see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// Certificate id (AWS) or thumbprint (IoT Hub).
    pub id: String,
    /// Whether the registry would let a device authenticate with it.
    pub active: bool,
}

/// The credential a fully provisioned device uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    pub id: String,
    pub cert_pem: String,
}

#[allow(async_fn_in_trait)]
pub trait Stack: Sized + Deref<Target = Fleet> {
    /// The `cloud` field of every answer.
    const CLOUD: &'static str;
    const CERT_VAR: &'static str;
    const KEY_VAR: &'static str;

    async fn start_with(options: Options) -> anyhow::Result<Self>;

    /// The registry's id for a device (the answers' `device_id`).
    fn device_id(uuid: &str) -> String {
        uuid.to_string()
    }

    async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Calls the function as the cloud's host would deliver the request.
    async fn call(&self, call: Call) -> anyhow::Result<Answer>;

    /// Asserts the device is fully provisioned (one active credential, the one the variables
    /// hold, with the key they hold unless `csr`) and returns that credential.
    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered;

    /// Asserts nothing of the device is left in the registry or in its variables.
    async fn assert_gone(&self, device: &Device, target: Target);

    /// Every credential the registry holds, for any device.
    async fn credentials(&self) -> Vec<Credential>;

    /// Whether the registry has an entry (thing, device) for the device.
    async fn has_entry(&self, device: &Device) -> bool;

    /// How many requests (or connections) the function has made to the registry.
    fn registry_calls(&self) -> usize;

    fn logs(&self) -> &LogBook;

    /// Registry secrets the logs must never show, beside the fleet's.
    fn registry_secrets(&self) -> Vec<String>;

    async fn stop_functions_and_wait(&self);

    /// Waits for the first function process to exit by itself (a start-up failure).
    async fn wait_for_exit(&self) -> std::process::ExitStatus;

    async fn stop(self);

    /// What this world runs, for people reading the demo's output.
    fn describe(&self) -> String;

    /// The registry's view of the device in one line, for the demo.
    async fn registry_summary(&self, device: &Device) -> String;

    /// Credentials that would let a device in.
    async fn active_credentials(&self) -> Vec<String> {
        self.credentials().await.into_iter().filter(|c| c.active).map(|c| c.id).collect()
    }
}

impl Stack for AwsWorld {
    const CLOUD: &'static str = "aws";
    const CERT_VAR: &'static str = "AWS_CERT";
    const KEY_VAR: &'static str = "AWS_PRIVATE_KEY";

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        AwsWorld::start_with(options).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        AwsWorld::call(self, call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        let cert = checks::assert_aws_provisioned(self, device, target, csr).await;
        Registered { id: cert.id, cert_pem: cert.pem }
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        checks::assert_aws_gone(self, device, target).await
    }

    async fn credentials(&self) -> Vec<Credential> {
        let all = crate::aws::all_certificates(&self.iot).await.expect("moto lists certificates");
        all.into_iter().map(|(id, active)| Credential { id, active }).collect()
    }

    async fn has_entry(&self, device: &Device) -> bool {
        crate::aws::thing_exists(&self.iot, &device.uuid).await.expect("moto describes things")
    }

    fn registry_calls(&self) -> usize {
        self.aws_proxy.connections()
    }

    fn logs(&self) -> &LogBook {
        &self.logs
    }

    fn registry_secrets(&self) -> Vec<String> {
        Vec::new()
    }

    async fn stop_functions_and_wait(&self) {
        self.functions.stop_and_wait().await
    }

    async fn wait_for_exit(&self) -> std::process::ExitStatus {
        self.functions.wait_for_exit().await
    }

    async fn stop(self) {
        AwsWorld::stop(self).await
    }

    fn describe(&self) -> String {
        format!(
            "provision-lambda under the Lambda Runtime API emulator; AWS IoT Core = moto at {}; balenaCloud emulator at {}",
            self.moto.endpoint(),
            self.balena.url()
        )
    }

    async fn registry_summary(&self, device: &Device) -> String {
        match crate::aws::thing_certificates(&self.iot, &device.uuid).await {
            Err(e) => format!("AWS IoT: unreadable ({e})"),
            Ok(None) => format!("AWS IoT: no thing {}", &device.uuid[..7]),
            Ok(Some(certs)) => {
                let shown: Vec<String> = certs
                    .iter()
                    .map(|c| format!("{}… {} policy={:?}", &c.id[..12], if c.active { "ACTIVE" } else { "INACTIVE" }, c.policies))
                    .collect();
                format!("AWS IoT: thing {}… with certificates {shown:?}", &device.uuid[..7])
            }
        }
    }
}

impl Stack for AzureWorld {
    const CLOUD: &'static str = "azure";
    const CERT_VAR: &'static str = "AZURE_CERT";
    const KEY_VAR: &'static str = "AZURE_PRIVATE_KEY";

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        AzureWorld::start_with(options).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        AzureWorld::call(self, call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        let thumbprint = checks::assert_azure_provisioned(self, device, target, csr);
        let cert_pem = checks::decode(&checks::vars(self, device, target)[Self::CERT_VAR]);
        Registered { id: thumbprint, cert_pem }
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        checks::assert_azure_gone(self, device, target)
    }

    async fn credentials(&self) -> Vec<Credential> {
        let mut all = Vec::new();
        for id in self.hub.device_ids() {
            let enabled = self.hub.device(&id).is_some_and(|d| d["status"] == "enabled");
            let (primary, secondary) = self.hub.thumbprints(&id).unwrap_or_default();
            all.extend(primary.into_iter().chain(secondary).map(|id| Credential { id, active: enabled }));
        }
        all
    }

    async fn has_entry(&self, device: &Device) -> bool {
        self.hub.device(&device.uuid).is_some()
    }

    fn registry_calls(&self) -> usize {
        self.hub.requests().len()
    }

    fn logs(&self) -> &LogBook {
        &self.logs
    }

    fn registry_secrets(&self) -> Vec<String> {
        vec![self.policy_key.clone()]
    }

    async fn stop_functions_and_wait(&self) {
        self.functions.stop_and_wait().await
    }

    async fn wait_for_exit(&self) -> std::process::ExitStatus {
        self.functions.wait_for_exit().await
    }

    async fn stop(self) {
        AzureWorld::stop(self).await
    }

    fn describe(&self) -> String {
        format!(
            "provision-azure (custom handler) on 127.0.0.1:{}; IoT Hub emulator for {} at {}; balenaCloud emulator at {}",
            self.ports[0],
            self.hub.hub_host(),
            self.hub.url(),
            self.balena.url()
        )
    }

    async fn registry_summary(&self, device: &Device) -> String {
        let short = |t: &Option<String>| t.as_deref().map_or("-".to_string(), |t| format!("{}…", &t[..12]));
        match (self.hub.device(&device.uuid), self.hub.thumbprints(&device.uuid)) {
            (Some(d), Some((primary, secondary))) => format!(
                "IoT Hub: device {}… {} {} thumbprints primary={} secondary={}",
                &device.uuid[..7],
                d["status"].as_str().unwrap_or("?"),
                d["authentication"]["type"].as_str().unwrap_or("?"),
                short(&primary),
                short(&secondary)
            ),
            _ => format!("IoT Hub: no device {}", &device.uuid[..7]),
        }
    }
}
