//! The registry in memory the flow's tests run against: IoT Hub-like (an entry holds the
//! device's certificates; registering adds one inactive, activating makes it usable), with
//! steps that can be made to fail.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::credentials::{PublicKeyId, certificate_facts, certificate_for_csr};
use crate::error::UpstreamFailure;
use crate::ids::{DeviceUuid, RegistryDeviceId};
use crate::registry::{
    Cloud, Device, Handle, Material, RegisteredCredential, Registration, Registry, RegistryError,
    RegistryState, certificate_variables, stored_certificate,
};
use crate::retry::Deadline;
use crate::secret::Secret;

pub(super) const CERT: &str = "MEM_CERT";
pub(super) const KEY: &str = "MEM_PRIVATE_KEY";

/// A registry step the tests can make fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Register,
    Activate,
    Revoke,
    RemoveEntry,
}

#[derive(Default)]
pub(super) struct Held {
    pub(super) entry: bool,
    credentials: Vec<RegisteredCredential>,
}

/// An IoT Hub-like registry in memory: an entry holds the device's certificates; registering
/// adds one inactive, activating makes it usable.
#[derive(Default)]
pub(super) struct MemoryRegistry {
    pub(super) held: Mutex<Held>,
    /// Steps that fail, each as many times as listed.
    faults: Mutex<Vec<Step>>,
    /// Every step called, in order.
    pub(super) calls: Mutex<Vec<Step>>,
    /// The registry ids `inspect` was asked about, in order.
    pub(super) inspected: Mutex<Vec<RegistryDeviceId>>,
    /// As AWS IoT: the entry (a thing) does not hold the credentials, and is not removed while
    /// one is still attached to it.
    separate: bool,
    /// A credential attached just before the next removal of the entry (the request that held
    /// the lock before finishing its work).
    late: Mutex<Option<RegisteredCredential>>,
}

impl MemoryRegistry {
    /// A registry whose entry does not hold the credentials, as AWS IoT's things.
    pub(super) fn separate() -> MemoryRegistry {
        MemoryRegistry {
            separate: true,
            ..MemoryRegistry::default()
        }
    }

    /// Attaches `credential` to the entry just before the next removal of it is looked at.
    pub(super) fn attach_before_next_removal(&self, credential: RegisteredCredential) {
        *self.late.lock().unwrap() = Some(credential);
    }

    pub(super) fn fail(&self, step: Step, times: usize) {
        self.faults
            .lock()
            .unwrap()
            .extend(std::iter::repeat_n(step, times));
    }

    fn step(&self, step: Step) -> Result<(), RegistryError> {
        self.calls.lock().unwrap().push(step);
        let mut faults = self.faults.lock().unwrap();
        match faults.iter().position(|s| *s == step) {
            Some(i) => {
                faults.remove(i);
                Err(RegistryError::Upstream(UpstreamFailure::Unavailable {
                    detail: format!("{step:?} made to fail"),
                }))
            }
            None => Ok(()),
        }
    }

    pub(super) fn entry(&self) -> bool {
        self.held.lock().unwrap().entry
    }

    /// Puts a credential on the entry as it was (one a request has yet to retire).
    pub(super) fn put_back(&self, credential: RegisteredCredential) {
        self.held.lock().unwrap().credentials.push(credential);
    }

    /// Removes a credential from the entry (another request retiring it).
    pub(super) fn take_away(&self, id: &str) {
        self.held.lock().unwrap().credentials.retain(|c| c.id != id);
    }

    /// How many times `inspect` was called.
    pub(super) fn reads(&self) -> usize {
        self.inspected.lock().unwrap().len()
    }

    pub(super) fn credentials(&self) -> Vec<RegisteredCredential> {
        self.held.lock().unwrap().credentials.clone()
    }

    pub(super) fn calls(&self, step: Step) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == step)
            .count()
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn cloud(&self) -> Cloud {
        Cloud::Azure
    }

    fn device_id(&self, uuid: &DeviceUuid) -> RegistryDeviceId {
        RegistryDeviceId::new(format!("mem-{uuid}"))
    }

    fn variable_names(&self) -> &'static [&'static str] {
        &[CERT, KEY]
    }

    fn private_key_variable(&self) -> &'static str {
        KEY
    }

    fn stored_public_key(&self, vars: &BTreeMap<String, Secret>) -> Option<PublicKeyId> {
        stored_certificate(vars, CERT).map(|facts| facts.public_key)
    }

    fn entry_holds_credentials(&self) -> bool {
        !self.separate
    }

    fn variables(
        &self,
        _uuid: &DeviceUuid,
        credential: &RegisteredCredential,
        private_key: Option<&Secret>,
    ) -> Vec<(&'static str, Secret)> {
        let pem = credential.handle.get::<String>().map_or("", String::as_str);
        certificate_variables((CERT, KEY), pem, private_key)
    }

    async fn probe(&self, _deadline: Deadline) -> Result<String, RegistryError> {
        Ok("memory".into())
    }

    async fn inspect(
        &self,
        _deadline: Deadline,
        device_id: &RegistryDeviceId,
    ) -> Result<RegistryState, RegistryError> {
        self.inspected.lock().unwrap().push(device_id.clone());
        let held = self.held.lock().unwrap();
        Ok(RegistryState {
            entry: held.entry,
            credentials: held.credentials.clone(),
            revision: None,
        })
    }

    async fn register(
        &self,
        _deadline: Deadline,
        device: Device<'_>,
        state: &RegistryState,
        material: Material<'_>,
    ) -> Result<Registration, RegistryError> {
        self.step(Step::Register)?;
        let pem = match material {
            Material::Generated(key) => key.self_signed_pem(device.uuid, 365),
            Material::Csr(csr) => certificate_for_csr(csr, 365),
        }
        .map_err(RegistryError::Local)?;
        let facts = certificate_facts(&pem).map_err(RegistryError::Local)?;
        let mut held = self.held.lock().unwrap();
        if held.entry && !state.entry {
            // As IoT Hub: creating an entry that exists is refused.
            return Err(RegistryError::Changed("the entry exists".into()));
        }
        let created_entry = !held.entry;
        held.entry = true;
        let credential = RegisteredCredential {
            id: facts.sha256_thumbprint,
            public_key: Some(facts.public_key),
            handle: Handle::new(pem),
            active: false,
            complete: false,
            foreign: None,
        };
        held.credentials.push(credential.clone());
        Ok(Registration {
            credential,
            created_entry,
        })
    }

    async fn activate(
        &self,
        _deadline: Deadline,
        _device: Device<'_>,
        _state: &RegistryState,
        _keep: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
    ) -> Result<(), RegistryError> {
        self.step(Step::Activate)?;
        let mut held = self.held.lock().unwrap();
        match held.credentials.iter_mut().find(|c| c.id == credential.id) {
            Some(c) => {
                c.active = true;
                c.complete = true;
                Ok(())
            }
            None => Err(RegistryError::Gone("no such credential".into())),
        }
    }

    async fn revoke(
        &self,
        _deadline: Deadline,
        _device_id: &RegistryDeviceId,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        self.step(Step::Revoke)?;
        let mut held = self.held.lock().unwrap();
        held.credentials
            .retain(|c| !credentials.iter().any(|r| r.id == c.id));
        Ok(())
    }

    /// As IoT Hub: the entry is set to hold `credential` alone, whatever else it holds now.
    async fn retire_replaced(
        &self,
        deadline: Deadline,
        device: Device<'_>,
        kept: Option<&RegisteredCredential>,
        credential: &RegisteredCredential,
        old: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        if kept.is_none() || old.is_empty() {
            return self.revoke(deadline, device.id, old).await;
        }
        self.step(Step::Revoke)?;
        let mut held = self.held.lock().unwrap();
        if held.entry {
            held.credentials.retain(|c| c.id == credential.id);
        }
        Ok(())
    }

    async fn remove_entry(
        &self,
        _deadline: Deadline,
        _device_id: &RegistryDeviceId,
    ) -> Result<(), RegistryError> {
        self.step(Step::RemoveEntry)?;
        let mut held = self.held.lock().unwrap();
        if let Some(late) = self.late.lock().unwrap().take() {
            held.credentials.push(late);
        }
        if self.separate && !held.credentials.is_empty() {
            // As AWS IoT: a thing with a principal attached is not deleted.
            return Err(RegistryError::Changed(
                "the entry still holds a credential".into(),
            ));
        }
        held.entry = false;
        held.credentials.clear();
        Ok(())
    }

    /// As AWS: the entry goes once the credentials `state` named are revoked, unless it
    /// gained one since.
    async fn purge(
        &self,
        deadline: Deadline,
        device_id: &RegistryDeviceId,
        _state: &RegistryState,
    ) -> Result<bool, RegistryError> {
        if !self.separate {
            return Ok(true);
        }
        match self.remove_entry(deadline, device_id).await {
            Ok(()) => Ok(true),
            Err(RegistryError::Changed(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn unretire(
        &self,
        _deadline: Deadline,
        _device_id: &RegistryDeviceId,
        state: &RegistryState,
        _vars: &BTreeMap<String, Secret>,
    ) -> Result<(), RegistryError> {
        let mut held = self.held.lock().unwrap();
        held.entry = state.entry;
        held.credentials = state.credentials.clone();
        Ok(())
    }
}
