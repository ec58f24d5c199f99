//! Reading the device: the caller's proof beside balenaCloud's record, then the registry, in
//! as few round trips as the request allows.

use crate::ids::DeviceUuid;

use crate::balena::{Actor, DeviceRecord, VarTarget};
use crate::error::{ProvisionError, UpstreamFailure, codes};
use crate::registry::{Foreign, RegistryState};
use crate::rejected_keys::Refused;
use crate::secret::Secret;

use super::lock::LockValue;
use super::snapshot::Snapshot;
use super::{Job, Operation, Provisioner};

impl Provisioner {
    /// The refusal a key earned a moment ago, if it would refuse this request too (a key once
    /// refused for another device may still be this device's own: that one is asked again).
    pub(super) fn remembered_refusal(
        &self,
        key: &Secret,
        uuid: &DeviceUuid,
    ) -> Option<ProvisionError> {
        match self.rejected.get(key)? {
            Refused::Unknown => Some(ProvisionError::AuthInvalid(
                "balenaCloud does not accept this key".into(),
            )),
            Refused::Device(own) if own != uuid.as_str() => {
                Some(ProvisionError::Forbidden(uuid.to_string()))
            }
            Refused::NotADevice if !self.accept_user_keys => {
                Some(ProvisionError::NotTheDevice(uuid.to_string()))
            }
            Refused::Hidden => Some(ProvisionError::Hidden(uuid.to_string())),
            Refused::Device(_) | Refused::NotADevice => None,
        }
    }

    /// A caller with a balena key: its proof first, and the registry only once it holds
    /// ([`Provisioner::read_registry`]). The proof is balenaCloud's `whoami` beside the device
    /// read *with the caller's key* (one round trip, two calls): `whoami` says whose key it is,
    /// the read what that key may see (a device's own key sees its device, and nothing while
    /// balenaCloud has frozen it). A refused caller makes no registry call and no write. Its
    /// answer waits for both calls, the read included: a read given up mid-answer closes its
    /// connection (the next request then pays a new one, and a TLS handshake), and no call
    /// outlives the request that made it (Lambda freezes, and Cloud Run throttles, a process
    /// between requests). The wait tells the caller nothing new: the read is made with its own
    /// key, and answers what that key may read anyway.
    pub(super) async fn prove(
        &self,
        job: &Job<'_>,
        key: &Secret,
    ) -> Result<(DeviceRecord, VarTarget), ProvisionError> {
        let uuid = job.uuid();
        let (actor, record) = tokio::join!(
            self.balena.whoami(job.deadline, key),
            self.read_balena(job, Some(key))
        );
        let actor = self.judge(key, uuid, actor)?;
        let (record, target) = match record {
            Ok(found) => found,
            Err(ProvisionError::DeviceNotFound(_)) => {
                return Err(match actor {
                    // Its own key, and balenaCloud hides the device from it: frozen.
                    Actor::Device { .. } => {
                        self.rejected.remember(key, Refused::Hidden);
                        ProvisionError::Hidden(uuid.to_string())
                    }
                    _ => ProvisionError::Forbidden(uuid.to_string()),
                });
            }
            // `whoami` knew the key, yet it may read no device (a fleet's provisioning key).
            Err(ProvisionError::Upstream {
                failure: UpstreamFailure::Refused { status: 401, .. },
                ..
            }) => return Err(ProvisionError::Forbidden(uuid.to_string())),
            Err(e) => return Err(e),
        };
        Ok((record, target))
    }

    /// The registry's side of a snapshot, once the caller is proven ([`Provisioner::prove`]).
    /// A POST for a device balenaCloud shows nothing of ours on (no variable, no lock held)
    /// skips reading it, and registers straight away as if it were empty; a registry that finds
    /// an entry there refuses to create it, and the flow falls back to reading it under the
    /// lock. So a new device keeps its depth (proof, register, activate) and every other
    /// request reads the registry once proven (a rotation while it takes the lock:
    /// `rotate.rs`).
    pub(super) async fn read_registry(
        &self,
        job: &Job<'_>,
        record: DeviceRecord,
        target: VarTarget,
    ) -> Result<Snapshot, ProvisionError> {
        let unseen = matches!(job.request.operation, Operation::Provision { .. })
            && record.vars.is_empty()
            && record
                .head_lock()
                .is_none_or(|head| LockValue::read(&head.value).is_free_by_itself());
        let state = if unseen {
            Ok(RegistryState::default())
        } else {
            // The variables are known by now: the registry may describe the credential they
            // name without a second round trip.
            self.registry
                .inspect_named(job.deadline, &job.device_id, &record.values())
                .await
        }
        .map_err(|e| e.into_error("reading the registry", job.uuid()))?;
        let state = self.owned(state, &record);
        Ok(Snapshot {
            record,
            target,
            state,
        })
    }

    /// Whether `whoami`'s answer lets the key act on device `uuid`: its own device's key, or
    /// (where the operator accepts them) a user's or fleet's key, which must then also see the
    /// device. A refusal is remembered for a while.
    fn judge(
        &self,
        key: &Secret,
        uuid: &DeviceUuid,
        actor: Result<Option<Actor>, UpstreamFailure>,
    ) -> Result<Actor, ProvisionError> {
        let actor = actor.map_err(|f| ProvisionError::balena("checking the caller's key", f))?;
        match actor {
            None => {
                self.rejected.remember(key, Refused::Unknown);
                Err(ProvisionError::AuthInvalid(
                    "balenaCloud does not accept this key".into(),
                ))
            }
            Some(Actor::Device { uuid: own }) if own != uuid.as_str() => {
                self.rejected.remember(key, Refused::Device(own));
                Err(ProvisionError::Forbidden(uuid.to_string()))
            }
            Some(Actor::Device { uuid: own }) => Ok(Actor::Device { uuid: own }),
            Some(_) if !self.accept_user_keys => {
                self.rejected.remember(key, Refused::NotADevice);
                Err(ProvisionError::NotTheDevice(uuid.to_string()))
            }
            Some(other) => Ok(other),
        }
    }

    /// balenaCloud's view of the device (with the function's key) and the registry's, read
    /// together: one round trip.
    pub(super) async fn read(&self, job: &Job<'_>) -> Result<Snapshot, ProvisionError> {
        let (record, state) = tokio::join!(
            self.read_balena(job, None),
            self.registry.inspect(job.deadline, &job.device_id)
        );
        let (record, target) = record?;
        let state = state.map_err(|e| e.into_error("reading the registry", job.uuid()))?;
        let state = self.owned(state, &record);
        Ok(Snapshot {
            record,
            target,
            state,
        })
    }

    /// A credential made elsewhere that the stored variables name is the device's own (one an
    /// earlier tool provisioned): it is the function's to replace and revoke.
    pub(super) fn owned(&self, mut state: RegistryState, record: &DeviceRecord) -> RegistryState {
        let vars = record.values();
        for c in &mut state.credentials {
            if c.foreign == Some(Foreign::MadeElsewhere) && self.registry.is_named_by(&vars, c) {
                c.foreign = None;
            }
        }
        state
    }

    /// balenaCloud's view of the device: its record and where its variables go, read with
    /// `key` (a caller's) or the function's own.
    async fn read_balena(
        &self,
        job: &Job<'_>,
        key: Option<&Secret>,
    ) -> Result<(DeviceRecord, VarTarget), ProvisionError> {
        let names = self.registry.variable_names();
        let service = job.request.service.as_ref();
        let record = match key {
            Some(key) => {
                self.balena
                    .read_device_as(job.deadline, key, job.uuid(), service, names)
                    .await
            }
            None => {
                self.balena
                    .read_device(job.deadline, job.uuid(), service, names)
                    .await
            }
        };
        let record = record
            .map_err(|f| ProvisionError::balena("reading the device", f))?
            .ok_or_else(|| ProvisionError::DeviceNotFound(job.uuid().to_string()))?;
        let Some(target) = record.target else {
            let service = service.map(|s| s.as_str()).unwrap_or("");
            return Err(ProvisionError::bad_request(
                codes::BAD_SERVICE,
                format!(
                    "device {} has no service named '{service}'",
                    job.uuid().short()
                ),
            ));
        };
        Ok((record, target))
    }
}
