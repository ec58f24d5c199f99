//! The cloud IoT registries, behind one trait. The flow never knows which cloud it drives:
//! a registry says how to look a device up, register a credential, revoke one, remove the
//! entry, and which balenaCloud variables describe a credential.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "azure")]
pub mod azure;
#[cfg(feature = "gcp")]
pub mod clearblade;
pub mod clouds;
mod error;

pub use error::RegistryError;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::config::{ConfigError, Setting};
use crate::credentials::{DeviceCsr, DeviceKey, PublicKeyId};
use crate::ids::{DeviceUuid, RegistryDeviceId};
use crate::retry::Deadline;
use crate::secret::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    Aws,
    Azure,
    Gcp,
}

impl Cloud {
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
            Cloud::Gcp => "gcp",
        }
    }
}

/// A credential as the registry holds it.
#[derive(Clone, Debug)]
pub struct RegisteredCredential {
    /// The registry's own name for it (AWS certificate id, IoT Hub thumbprint, ...).
    pub id: String,
    pub public_key: Option<PublicKeyId>,
    /// What the registry that made this value keeps of the credential for its own later calls
    /// (AWS: the certificate's ARN and PEM; IoT Hub: its slot or its new certificate;
    /// ClearBlade: the public key as registered). The flow never looks inside.
    pub handle: Handle,
    /// The registry accepts it for authentication.
    pub active: bool,
    /// Everything a device needs is attached (AWS: the policy and the thing).
    pub complete: bool,
    /// Why the function must leave it alone, where the registry can tell it is not (only) the
    /// device's: it is never deactivated or deleted, only detached from the device's entry
    /// when the entry goes.
    pub foreign: Option<Foreign>,
}

impl RegisteredCredential {
    /// The function's to replace and revoke (see [`Foreign`]).
    pub fn is_ours(&self) -> bool {
        self.foreign.is_none()
    }
}

/// A registry's own value for one credential, of a type of that registry's (see
/// [`RegisteredCredential::handle`]): one registry's handle cannot be read as another's.
#[derive(Clone)]
pub struct Handle(Arc<dyn Any + Send + Sync>);

impl Handle {
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Handle(Arc::new(value))
    }

    /// The value, when it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handle(..)")
    }
}

/// A credential on the device's entry that is not the function's to revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// Also attached to another entry (AWS: another thing uses the certificate).
    AttachedElsewhere,
    /// Not issued by the function for this device (AWS: its subject is not the device UUID,
    /// or it was registered with a CA of the account's). The variables may still name it (a
    /// device provisioned by an earlier tool): then it is the device's.
    MadeElsewhere,
}

/// What the registry holds for one device.
#[derive(Clone, Debug, Default)]
pub struct RegistryState {
    pub entry: bool,
    pub credentials: Vec<RegisteredCredential>,
    /// The entry's version where the registry keeps one (IoT Hub's etag), for conditional writes.
    pub revision: Option<String>,
}

/// The certificate stored base64-encoded in `cert_var`, read back (AWS_CERT, AZURE_CERT).
#[cfg(any(feature = "aws", feature = "azure"))]
pub(crate) fn stored_certificate(
    vars: &BTreeMap<String, Secret>,
    cert_var: &str,
) -> Option<crate::credentials::CertificateFacts> {
    let pem = crate::codec::base64_decode(vars.get(cert_var)?.expose())?;
    crate::credentials::certificate_facts(std::str::from_utf8(&pem).ok()?).ok()
}

/// The variables of a certificate credential: base64 of its PEM, and of the private key when
/// this function made it (as balena's published functions store them).
#[cfg(any(feature = "aws", feature = "azure"))]
pub(crate) fn certificate_variables(
    (cert_var, key_var): (&'static str, &'static str),
    certificate_pem: &str,
    private_key: Option<&Secret>,
) -> Vec<(&'static str, Secret)> {
    use crate::codec::base64_encode;
    let mut vars = vec![(
        cert_var,
        Secret::new(base64_encode(certificate_pem.as_bytes())),
    )];
    if let Some(key) = private_key {
        vars.push((key_var, Secret::new(base64_encode(key.expose().as_bytes()))));
    }
    vars
}

/// The device a registry call is about: its UUID, and the registry's id for it, worked out
/// once (see [`Registry::device_id`]).
#[derive(Clone, Copy, Debug)]
pub struct Device<'a> {
    pub uuid: &'a DeviceUuid,
    pub id: &'a RegistryDeviceId,
}

/// A credential [`Registry::register`] made, and whether it made the device's entry too.
#[derive(Clone, Debug)]
pub struct Registration {
    pub credential: RegisteredCredential,
    pub created_entry: bool,
}

/// The key material a new credential is made from.
#[derive(Clone, Copy)]
pub enum Material<'a> {
    /// A key pair this function made; its private half is stored for the device.
    Generated(&'a DeviceKey),
    /// The device's own CSR: the device keeps its key.
    Csr(&'a DeviceCsr),
}

impl Material<'_> {
    pub fn public_key(&self) -> PublicKeyId {
        match self {
            Material::Generated(key) => key.public_key(),
            Material::Csr(csr) => csr.public_key().clone(),
        }
    }
}

/// Whether `activate`, on a registry that sets an entry's credentials all at once, already left
/// `credential` alone there: it kept nothing beside it, or there was nothing old to retire
/// (see [`Registry::retire_replaced`]).
#[cfg(any(feature = "azure", feature = "gcp"))]
pub(crate) fn alone_after_activate(
    kept: Option<&RegisteredCredential>,
    credential: &RegisteredCredential,
    old: &[RegisteredCredential],
) -> bool {
    kept.is_none_or(|k| k.id == credential.id) || old.is_empty()
}

/// The device [`Registry::warm`] looks up: balena makes UUIDs at random, and none is all zeros.
const WARM_UP_UUID: &str = "00000000000000000000000000000000";

/// One cloud's IoT registry, as the flow drives it. Its removal verbs, one meaning each:
/// `revoke` (these credentials unusable and gone), `remove_entry` (the device's entry gone),
/// and DELETE's three steps: `retire` (every credential unusable, still there), `unretire`
/// (retire undone) and `purge` (what retire left, gone).
#[async_trait]
pub trait Registry: Send + Sync {
    fn cloud(&self) -> Cloud;

    /// The registry's id for a device (AWS thing name, IoT Hub device id, ClearBlade device id).
    fn device_id(&self, uuid: &DeviceUuid) -> RegistryDeviceId;

    /// Every variable name this registry writes, the private key's included.
    fn variable_names(&self) -> &'static [&'static str];

    /// The variable that holds the private key (absent when the device sent a CSR).
    fn private_key_variable(&self) -> &'static str;

    /// The public key of the credential the stored variables describe, if they name one.
    fn stored_public_key(&self, vars: &BTreeMap<String, Secret>) -> Option<PublicKeyId>;

    /// Whether the stored variables name this registered credential. By default: the same
    /// public key.
    fn is_named_by(
        &self,
        vars: &BTreeMap<String, Secret>,
        credential: &RegisteredCredential,
    ) -> bool {
        credential.public_key.is_some() && self.stored_public_key(vars) == credential.public_key
    }

    /// Whether the stored variables always say which credential is the device's (a certificate
    /// variable). ClearBlade's say it only through the private key: a device that keeps its own
    /// key (`csr`) has none stored, and then the registered key is taken as its.
    fn variables_name_credential(&self) -> bool {
        true
    }

    /// Whether removing the registry entry removes its credentials with it, in one call (an
    /// IoT Hub or ClearBlade device holds its keys; an AWS thing only has certificates attached,
    /// which live on without it). DELETE then makes that one call instead of revoking first.
    fn entry_holds_credentials(&self) -> bool {
        false
    }

    /// Variables whose values follow from the device alone, not from a credential (ClearBlade's
    /// paths); a provisioned device holds exactly these values.
    fn fixed_variables(&self, _uuid: &DeviceUuid) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// The variables that describe `credential` (the private key's, when given, included).
    fn variables(
        &self,
        uuid: &DeviceUuid,
        credential: &RegisteredCredential,
        private_key: Option<&Secret>,
    ) -> Vec<(&'static str, Secret)>;

    /// One read-only call showing that the registry can be reached and accepts the function's
    /// credentials (the operator's `--check`). It writes nothing. `Ok` says, in a few words for
    /// the operator and never with a secret, what answered.
    async fn probe(&self, deadline: Deadline) -> Result<String, RegistryError>;

    /// Start-up's call (`flow::warm`): makes the client do, before the first request, what that
    /// request's first call would (fetch or resolve the function's own credentials, load the
    /// TLS roots, open the connection its pool keeps). It writes nothing. By default, `inspect`
    /// of a device no balena UUID names: the very call a request starts with, whose answer
    /// ("no such device") is of no interest.
    /// It makes [`Registry::calls_at_once`] of them side by side, so that the pool holds a
    /// connection for each call a request makes at once.
    async fn warm(&self, deadline: Deadline) -> Result<(), RegistryError> {
        let nobody = self.device_id(&DeviceUuid::parse(WARM_UP_UUID).expect("a valid UUID"));
        let reads = (0..self.calls_at_once().max(1)).map(|_| self.inspect(deadline, &nobody));
        futures::future::try_join_all(reads).await.map(|_| ())
    }

    /// The most calls a request makes to the registry at once (AWS activates a certificate
    /// with three); start-up opens that many connections.
    fn calls_at_once(&self) -> usize {
        1
    }

    /// The device's entry and credentials.
    async fn inspect(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
    ) -> Result<RegistryState, RegistryError>;

    /// [`Registry::inspect`], told the variables balenaCloud stores for the device: a registry
    /// that needs a second round trip to describe a credential (AWS) may describe the one they
    /// name beside the first. By default, `inspect`.
    async fn inspect_named(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        _vars: &BTreeMap<String, Secret>,
    ) -> Result<RegistryState, RegistryError> {
        self.inspect(deadline, device_id).await
    }

    /// First half of adding a credential: creates the entry when `state` says there is none,
    /// and the credential itself, not yet usable (AWS: the certificate, inactive). It depends
    /// on nothing the flow has to write first, so the flow runs it beside taking the lock. On
    /// failure, whatever this call created is undone before it returns.
    async fn register(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        material: Material<'_>,
    ) -> Result<Registration, RegistryError>;

    /// Second half: makes a registered credential usable (AWS: active, policy and thing
    /// attached) beside `keep`, the credential the stored variables name until they change
    /// (registries with few credential slots must not displace it). The flow runs this beside
    /// storing the variables, and undoes both on failure.
    async fn activate(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        keep: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError>;

    /// Makes these credentials unusable and removes them. Removing what is already gone
    /// succeeds. When none would remain, the registry may remove the entry too.
    async fn revoke(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError>;

    /// The last step of replacing a credential: `old` (the function's credentials other than
    /// `credential`, as `state` showed them) go, once `activate` has made `credential` usable
    /// beside `kept` and the variables name it. By default, `revoke`. A registry whose
    /// `activate` sets the entry's credentials all at once (IoT Hub, ClearBlade) knows from
    /// that what the entry holds, and leaves `credential` alone on it in one call without
    /// reading it again: the device's lock is held, so nothing else changes the entry.
    async fn retire_replaced(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        _kept: Option<&RegisteredCredential>,
        _credential: &RegisteredCredential,
        old: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        self.revoke(deadline, device.id, old).await
    }

    /// Removes the device's entry (after its credentials). Removing what is gone succeeds.
    async fn remove_entry(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
    ) -> Result<(), RegistryError>;

    /// DELETE's first registry step, run beside deleting the variables: every credential in
    /// `state` stops authenticating (AWS: inactive and detached from the thing; IoT Hub and
    /// ClearBlade: the entry goes, its keys with it). A credential that could not be made
    /// unusable is left as it was, still where `inspect` finds it.
    async fn retire(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        state: &RegistryState,
    ) -> Result<(), RegistryError> {
        if state.entry {
            self.remove_entry(deadline, device_id).await
        } else {
            Ok(())
        }
    }

    /// Undoes `retire` when the variables could not be deleted: the credential `vars` name
    /// authenticates again, and every credential is back where `inspect` finds it. Best effort.
    async fn unretire(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        state: &RegistryState,
        vars: &BTreeMap<String, Secret>,
    ) -> Result<(), RegistryError>;

    /// DELETE's last registry step, once the variables are gone and `retire` succeeded: removes
    /// what is left (AWS: the certificates and the thing; nothing where the entry held the
    /// credentials). `Ok(false)`: the entry gained a credential since `state` was read, so
    /// another request is provisioning the device and the entry stays.
    async fn purge(
        &self,
        _deadline: Deadline,
        _device_id: &RegistryDeviceId,
        _state: &RegistryState,
    ) -> Result<bool, RegistryError> {
        Ok(true)
    }
}

/// A registry that configures itself from the process environment.
pub trait FromEnv: Registry + Sized + 'static {
    /// The cloud it serves; its name (`Cloud::as_str`) is the one `PROVISION_CLOUD` takes.
    const CLOUD: Cloud;
    /// The product, as the `--help` and `--check` name it.
    const PRODUCT: &'static str;
    /// The variables [`FromEnv::from_env`] reads, for the hosts' `--help`.
    const SETTINGS: &'static [Setting];

    /// The registry from the environment; a missing or malformed setting is a
    /// [`ConfigError`] naming it.
    fn from_env() -> impl Future<Output = Result<Self, ConfigError>> + Send;
}
