//! What every cloud's test world offers the shared scenarios: start it, call the function as
//! that cloud's host would, and ask the registry emulator what a fleet operator would check.
//! `scenarios` holds the scenarios themselves, written once against this trait.

use std::ops::Deref;

use provision_core::Cloud;
use serde_json::json;

use crate::balena::Backend;
use crate::checks::{self, Target};
use crate::events::{Answer, Call};
use crate::process::LogBook;
use crate::world::{
    AwsWorld, AzureWorld, Device, Faults, Fleet, GCP_REGION, GCP_REGISTRY, GcpWorld, Options,
};

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
    /// Certificate id, thumbprint or key fingerprint: whatever the registry calls it.
    pub id: String,
    /// The raw public key it authenticates (the SPKI's subjectPublicKey bits).
    pub public_key: Vec<u8>,
}

#[allow(async_fn_in_trait)]
pub trait Stack: Sized + Deref<Target = Fleet> {
    /// The `cloud` field of every answer.
    const CLOUD: Cloud;
    /// The variables written when the device sends a CSR (sorted), i.e. all but the key.
    const CSR_VARS: &'static [&'static str];
    const KEY_VAR: &'static str;
    /// Its balenaCloud is the real API server (open-balena-api), not the emulator.
    const REAL_BALENA: bool = false;

    /// Every variable written for a generated key, sorted (as answers list them).
    fn all_variables() -> Vec<&'static str> {
        let mut all: Vec<&'static str> = Self::CSR_VARS
            .iter()
            .copied()
            .chain([Self::KEY_VAR])
            .collect();
        all.sort();
        all
    }

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

    /// Makes the device's registry entry outside the function, holding no credential (an
    /// operator's, or one an older version left): the function does not know of it.
    async fn add_bare_entry(&self, device: &Device);

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

    /// The fault proxies, for a world started with `Options::faults`.
    fn faults(&self) -> Option<&Faults>;

    /// Whether the registry has an entry for the device, and the credentials it holds for it.
    async fn registered(&self, device: &Device) -> (bool, Vec<Credential>);

    /// The id of the credential the device's stored variables name (`None` without variables;
    /// an id no registry holds when they name one that is not registered).
    async fn named(&self, device: &Device, target: Target) -> Option<String>;

    /// Credentials that would let a device in.
    async fn active_credentials(&self) -> Vec<String> {
        self.credentials()
            .await
            .into_iter()
            .filter(|c| c.active)
            .map(|c| c.id)
            .collect()
    }

    /// The device's lock if a request still holds it, as `key = value`: the latest
    /// `provision-lock-<n>` tag unless it is released, expired, or done (taken for removing the
    /// device, which has no variables or credentials left; or for a fresh device's key, and the
    /// device is provisioned).
    /// Older tags and done locks stay by design: the next change follows their generation.
    async fn held_lock(&self, device: &Device, target: Target) -> Option<String> {
        let tags = self.balena.device_tags(device.id).await;
        let generation = |key: &str| match key.strip_prefix("provision-lock")? {
            "" => Some(0u64),
            rest => rest
                .strip_prefix('-')?
                .parse()
                .ok()
                .filter(|g| *g <= provision_core::balena::MAX_GENERATION),
        };
        let (key, value) = tags
            .iter()
            .filter_map(|(k, v)| Some((generation(k)?, k, v)))
            .max_by_key(|(g, _, _)| *g)
            .map(|(_, k, v)| (k, v))?;
        let words: Vec<&str> = value.split_whitespace().collect();
        let after = |word: &str| {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let until: u128 = after("until").and_then(|u| u.parse().ok()).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        // An expiry further ahead than any holder sets is garbage, not a lock (as the flow reads it).
        if words.last() == Some(&"released") || until < now || until > now + 965_000 {
            return None;
        }
        let done = match after("goal") {
            Some("gone") => {
                checks::vars(self, device, target).await.is_empty()
                    && self.registered(device).await.1.is_empty()
            }
            Some("key") => {
                let named = self.named(device, target).await;
                let (_, registered) = self.registered(device).await;
                named.is_some_and(|n| registered.iter().any(|c| c.active && c.id == n))
            }
            _ => false,
        };
        (!done).then(|| format!("{key} = {value}"))
    }
}

impl Stack for AwsWorld {
    const CLOUD: Cloud = Cloud::Aws;
    const CSR_VARS: &'static [&'static str] = &["AWS_CERT"];
    const KEY_VAR: &'static str = "AWS_PRIVATE_KEY";

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        AwsWorld::start_with(options).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        AwsWorld::call(self, call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        let cert = checks::assert_aws_provisioned(self, device, target, csr).await;
        Registered {
            id: cert.id,
            public_key: checks::cert_public_key(&cert.pem),
        }
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        checks::assert_aws_gone(self, device, target).await
    }

    async fn credentials(&self) -> Vec<Credential> {
        let all = crate::aws::all_certificates(&self.iot)
            .await
            .expect("moto lists certificates");
        all.into_iter()
            .map(|(id, active)| Credential { id, active })
            .collect()
    }

    async fn add_bare_entry(&self, device: &Device) {
        self.iot
            .create_thing()
            .thing_name(Self::device_id(&device.uuid))
            .send()
            .await
            .expect("moto creates a thing");
    }

    async fn has_entry(&self, device: &Device) -> bool {
        crate::aws::thing_exists(&self.iot, &device.uuid)
            .await
            .expect("moto describes things")
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

    fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    async fn registered(&self, device: &Device) -> (bool, Vec<Credential>) {
        match crate::aws::thing_certificates(&self.iot, &device.uuid)
            .await
            .expect("moto lists the thing's certificates")
        {
            None => (false, Vec::new()),
            Some(certs) => (
                true,
                certs
                    .into_iter()
                    .map(|c| Credential {
                        id: c.id,
                        active: c.active,
                    })
                    .collect(),
            ),
        }
    }

    async fn named(&self, device: &Device, target: Target) -> Option<String> {
        let stored = checks::vars(self, device, target)
            .await
            .get("AWS_CERT")
            .map(|v| checks::decode(v))?;
        let same = |pem: &str| stored.split_whitespace().eq(pem.split_whitespace());
        let certs = crate::aws::thing_certificates(&self.iot, &device.uuid)
            .await
            .expect("moto lists the thing's certificates");
        Some(
            certs
                .unwrap_or_default()
                .into_iter()
                .find(|c| same(&c.pem))
                .map_or_else(
                    || format!("unregistered {}", fingerprint(stored.as_bytes())),
                    |c| c.id,
                ),
        )
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
            "provision-lambda under the Lambda Runtime API emulator; AWS IoT Core = moto at {}; {}",
            self.moto.endpoint(),
            self.balena.describe()
        )
    }

    async fn registry_summary(&self, device: &Device) -> String {
        match crate::aws::thing_certificates(&self.iot, &device.uuid).await {
            Err(e) => format!("AWS IoT: unreadable ({e})"),
            Ok(None) => format!("AWS IoT: no thing {}", &device.uuid[..7]),
            Ok(Some(certs)) => {
                let shown: Vec<String> = certs
                    .iter()
                    .map(|c| {
                        format!(
                            "{}… {} policy={:?}",
                            &c.id[..12],
                            if c.active { "ACTIVE" } else { "INACTIVE" },
                            c.policies
                        )
                    })
                    .collect();
                format!(
                    "AWS IoT: thing {}… with certificates {shown:?}",
                    &device.uuid[..7]
                )
            }
        }
    }
}

impl Stack for AzureWorld {
    const CLOUD: Cloud = Cloud::Azure;
    const CSR_VARS: &'static [&'static str] = &["AZURE_CERT"];
    const KEY_VAR: &'static str = "AZURE_PRIVATE_KEY";

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        AzureWorld::start_with(options).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        AzureWorld::call(self, call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        let thumbprint = checks::assert_azure_provisioned(self, device, target, csr).await;
        let cert_pem = checks::decode(&checks::vars(self, device, target).await["AZURE_CERT"]);
        Registered {
            id: thumbprint,
            public_key: checks::cert_public_key(&cert_pem),
        }
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        checks::assert_azure_gone(self, device, target).await
    }

    async fn credentials(&self) -> Vec<Credential> {
        let mut all = Vec::new();
        for id in self.hub.device_ids() {
            let enabled = self
                .hub
                .device(&id)
                .is_some_and(|d| d["status"] == "enabled");
            let (primary, secondary) = self.hub.thumbprints(&id).unwrap_or_default();
            all.extend(primary.into_iter().chain(secondary).map(|id| Credential {
                id,
                active: enabled,
            }));
        }
        all
    }

    async fn add_bare_entry(&self, device: &Device) {
        self.hub.seed_device(json!({
            "deviceId": Self::device_id(&device.uuid),
            "status": "enabled",
            "authentication": {"type": "certificateAuthority"},
        }));
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

    fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    async fn registered(&self, device: &Device) -> (bool, Vec<Credential>) {
        let Some(registered) = self.hub.device(&device.uuid) else {
            return (false, Vec::new());
        };
        let enabled = registered["status"] == "enabled";
        let (primary, secondary) = self.hub.thumbprints(&device.uuid).unwrap_or_default();
        (
            true,
            primary
                .into_iter()
                .chain(secondary)
                .map(|id| Credential {
                    id,
                    active: enabled,
                })
                .collect(),
        )
    }

    async fn named(&self, device: &Device, target: Target) -> Option<String> {
        let cert = checks::decode(checks::vars(self, device, target).await.get("AZURE_CERT")?);
        Some(checks::thumbprint(&cert))
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
            "provision-azure (custom handler) on 127.0.0.1:{}; IoT Hub emulator for {} at {}; {}",
            self.http.ports[0],
            self.hub.hub_host(),
            self.hub.url(),
            self.balena.describe()
        )
    }

    async fn registry_summary(&self, device: &Device) -> String {
        let short = |t: &Option<String>| {
            t.as_deref()
                .map_or("-".to_string(), |t| format!("{}…", &t[..12]))
        };
        match (
            self.hub.device(&device.uuid),
            self.hub.thumbprints(&device.uuid),
        ) {
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

impl Stack for GcpWorld {
    const CLOUD: Cloud = Cloud::Gcp;
    const CSR_VARS: &'static [&'static str] =
        &["GCP_CLIENT_PATH", "GCP_DATA_TOPIC_ROOT", "GCP_PROJECT_ID"];
    const KEY_VAR: &'static str = "GCP_PRIVATE_KEY";

    fn device_id(uuid: &str) -> String {
        format!("balena-{uuid}")
    }

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        GcpWorld::start_with(options).await
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        GcpWorld::call(self, call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        let public_key = checks::assert_gcp_provisioned(self, device, target, csr).await;
        Registered {
            id: fingerprint(&public_key),
            public_key,
        }
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        checks::assert_gcp_gone(self, device, target).await
    }

    async fn credentials(&self) -> Vec<Credential> {
        let mut all = Vec::new();
        for id in self.clearblade.device_ids(GCP_REGION, GCP_REGISTRY) {
            let blocked = self
                .clearblade
                .device(GCP_REGION, GCP_REGISTRY, &id)
                .is_some_and(|d| d["blocked"] == true);
            for pem in self
                .clearblade
                .public_keys(GCP_REGION, GCP_REGISTRY, &id)
                .unwrap_or_default()
            {
                all.push(Credential {
                    id: fingerprint(&checks::spki_public_key(&pem)),
                    active: !blocked,
                });
            }
        }
        all
    }

    async fn add_bare_entry(&self, device: &Device) {
        self.clearblade.seed_device(
            GCP_REGION,
            GCP_REGISTRY,
            json!({"id": Self::device_id(&device.uuid)}),
        );
    }

    async fn has_entry(&self, device: &Device) -> bool {
        self.device(&device.uuid).is_some()
    }

    fn registry_calls(&self) -> usize {
        self.clearblade.requests().len()
    }

    fn logs(&self) -> &LogBook {
        &self.logs
    }

    fn registry_secrets(&self) -> Vec<String> {
        let mut secrets = self.clearblade.secrets();
        secrets.push(self.clearblade.service_account_base64());
        secrets
    }

    fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    async fn registered(&self, device: &Device) -> (bool, Vec<Credential>) {
        let Some(registered) = self.device(&device.uuid) else {
            return (false, Vec::new());
        };
        let blocked = registered["blocked"] == true;
        let keys = self.public_keys(&device.uuid).unwrap_or_default();
        (
            true,
            keys.iter()
                .map(|pem| Credential {
                    id: fingerprint(&checks::spki_public_key(pem)),
                    active: !blocked,
                })
                .collect(),
        )
    }

    async fn named(&self, device: &Device, target: Target) -> Option<String> {
        let key = checks::decode(
            checks::vars(self, device, target)
                .await
                .get("GCP_PRIVATE_KEY")?,
        );
        Some(fingerprint(&checks::private_key_public_key(&key)))
    }

    async fn stop_functions_and_wait(&self) {
        self.functions.stop_and_wait().await
    }

    async fn wait_for_exit(&self) -> std::process::ExitStatus {
        self.functions.wait_for_exit().await
    }

    async fn stop(self) {
        GcpWorld::stop(self).await
    }

    fn describe(&self) -> String {
        format!(
            "provision-cloudrun on 127.0.0.1:{}; ClearBlade IoT Core emulator at {} (registry {GCP_REGISTRY} in {GCP_REGION}); {}",
            self.http.ports[0],
            self.clearblade.url(),
            self.balena.describe()
        )
    }

    async fn registry_summary(&self, device: &Device) -> String {
        match (self.device(&device.uuid), self.public_keys(&device.uuid)) {
            (Some(d), Some(keys)) => {
                let shown: Vec<String> = keys
                    .iter()
                    .map(|pem| format!("{}…", &fingerprint(&checks::spki_public_key(pem))[..12]))
                    .collect();
                format!(
                    "ClearBlade: device {} with keys {shown:?}",
                    d["id"].as_str().unwrap_or("?")
                )
            }
            _ => format!("ClearBlade: no device balena-{}", &device.uuid[..7]),
        }
    }
}

/// The function's id for a key: the first 8 bytes of its SHA-256, hex (what GET reports).
fn fingerprint(public_key: &[u8]) -> String {
    provision_core::codec::sha256(public_key)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A world of `W` whose balenaCloud is the real API server (open-balena-api) instead of the
/// emulator: the shared scenarios run on it unchanged (see `shared_scenarios_on_open_balena!`).
pub struct OnOpenBalena<W>(pub W);

impl<W: Stack> Deref for OnOpenBalena<W> {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.0
    }
}

impl<W: Stack> Stack for OnOpenBalena<W> {
    const CLOUD: Cloud = W::CLOUD;
    const CSR_VARS: &'static [&'static str] = W::CSR_VARS;
    const KEY_VAR: &'static str = W::KEY_VAR;
    const REAL_BALENA: bool = true;

    async fn start_with(options: Options) -> anyhow::Result<Self> {
        Ok(OnOpenBalena(
            W::start_with(Options {
                balena: Backend::OpenBalena,
                ..options
            })
            .await?,
        ))
    }

    fn device_id(uuid: &str) -> String {
        W::device_id(uuid)
    }

    async fn call(&self, call: Call) -> anyhow::Result<Answer> {
        self.0.call(call).await
    }

    async fn assert_provisioned(&self, device: &Device, target: Target, csr: bool) -> Registered {
        self.0.assert_provisioned(device, target, csr).await
    }

    async fn assert_gone(&self, device: &Device, target: Target) {
        self.0.assert_gone(device, target).await
    }

    async fn credentials(&self) -> Vec<Credential> {
        self.0.credentials().await
    }

    async fn add_bare_entry(&self, device: &Device) {
        self.0.add_bare_entry(device).await
    }

    async fn has_entry(&self, device: &Device) -> bool {
        self.0.has_entry(device).await
    }

    fn registry_calls(&self) -> usize {
        self.0.registry_calls()
    }

    fn logs(&self) -> &LogBook {
        self.0.logs()
    }

    fn registry_secrets(&self) -> Vec<String> {
        self.0.registry_secrets()
    }

    async fn stop_functions_and_wait(&self) {
        self.0.stop_functions_and_wait().await
    }

    async fn wait_for_exit(&self) -> std::process::ExitStatus {
        self.0.wait_for_exit().await
    }

    async fn stop(self) {
        self.0.stop().await
    }

    fn describe(&self) -> String {
        self.0.describe()
    }

    async fn registry_summary(&self, device: &Device) -> String {
        self.0.registry_summary(device).await
    }

    fn faults(&self) -> Option<&Faults> {
        self.0.faults()
    }

    async fn registered(&self, device: &Device) -> (bool, Vec<Credential>) {
        self.0.registered(device).await
    }

    async fn named(&self, device: &Device, target: Target) -> Option<String> {
        self.0.named(device, target).await
    }
}
