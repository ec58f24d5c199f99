//! The provisioning state machine: read everything at once, decide, change only what must
//! change, and undo this request's changes when a later step fails.
//!
//! A reader starts here, with [`Provisioner::run`], and follows it into one file per concern:
//!
//! * `read.rs`: the caller's proof and the device's state in one round trip (a `Snapshot`,
//!   `snapshot.rs`);
//! * `assess.rs`: what the state is worth (is the stored credential usable? what is stale?),
//!   and the report a GET answers;
//! * `provision.rs`: POST, from the fast path for a device with nothing provisioned to repair
//!   and rotation under the lock;
//! * `rotate.rs`: POST `rotate`, the fast way (the lock taken beside the registry read);
//! * `deprovision.rs`: DELETE;
//! * `lock.rs`: the device lock, its tag values and the guards that end it;
//! * `undo.rs`: the journal of this request's writes, unwound in one place when a step fails;
//! * `warm.rs`: start-up's share, done before the first request (credentials, connections).
//!
//! Changes to one device are serialised by a lock: generation `n + 1` of the device's
//! `provision-lock-<n>` tag, which balenaCloud lets only one request create, so of all the
//! requests that read generation `n` as the latest, one changes the device, and a read followed
//! by a successful take is current (any change since would have taken the lock first). A tag is
//! never deleted while a request could still follow it; a holder marks it released, or, on the
//! fast paths, names what it is for (`goal key <fingerprint>`, `goal gone`), and the next
//! request sees it done in the state it reads: no release call, no round trip.
//!
//! The fast paths act while taking the lock. A device with nothing provisioned: the lock and
//! the credential (AWS: the thing and the inactive certificate) are made together, then the
//! credential is activated while its variables are created (never overwritten, so a stale read
//! shows as a conflict, not a lost write). DELETE: the lock, deleting the variables read and
//! retiring the credentials together; should another request have taken the lock, this one
//! waits for it and removes whatever it left. A lock taken for a goal ([`lock::GoalLock`]) can
//! only be left as it is (its goal reached) or undone and released: anything more the device
//! needs is done under a lock taken afresh ([`lock::Held`]), which the work under it takes as
//! proof.

mod assess;
mod deprovision;
mod lock;
mod provision;
mod read;
mod rotate;
mod snapshot;
mod undo;
mod warm;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::auth::Caller;
use crate::balena::BalenaClient;
use crate::credentials::{DeviceCsr, KeyAlgorithm};
use crate::error::ProvisionError;
use crate::ids::{DeviceUuid, RegistryDeviceId, ServiceName};
use crate::registry::{Device, RegisteredCredential, Registry, RegistryError};
use crate::rejected_keys::RejectedKeys;
use crate::retry::Deadline;

use assess::KeyMode;
pub use warm::WarmUp;

/// What the caller asks for.
#[derive(Debug)]
pub enum Operation {
    /// POST: make the device provisioned (create, repair, or rotate when asked).
    Provision {
        rotate: bool,
        csr: Option<DeviceCsr>,
    },
    /// DELETE: remove everything provisioning made.
    Deprovision,
    /// GET: report what exists.
    Status,
}

/// A request that passed validation (`api` makes it from HTTP): the flow's input.
#[derive(Debug)]
pub struct ProvisionRequest {
    pub operation: Operation,
    pub uuid: DeviceUuid,
    pub service: Option<ServiceName>,
}

/// What a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Created,
    AlreadyProvisioned,
    Rotated,
    Repaired,
    Deleted,
    NotProvisioned,
    Provisioned,
    Partial,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::AlreadyProvisioned => "already-provisioned",
            Status::Rotated => "rotated",
            Status::Repaired => "repaired",
            Status::Deleted => "deleted",
            Status::NotProvisioned => "not-provisioned",
            Status::Provisioned => "provisioned",
            Status::Partial => "partial",
        }
    }

    pub fn http_status(self) -> http::StatusCode {
        if self == Status::Created {
            http::StatusCode::CREATED
        } else {
            http::StatusCode::OK
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    pub status: Status,
    pub device_id: RegistryDeviceId,
    pub variables: Vec<String>,
    pub details: Option<Value>,
}

impl Outcome {
    /// An outcome that changed nothing and has nothing to add.
    fn plain(status: Status, job: &Job<'_>) -> Self {
        Outcome {
            status,
            device_id: job.device_id.clone(),
            variables: Vec::new(),
            details: None,
        }
    }
}

/// One request, as the flow carries it down: what was asked, for which device, by when.
pub(crate) struct Job<'a> {
    /// When the work must be done; undoing it may use the reserve beyond (see
    /// [`Provisioner::cleanup`]).
    deadline: Deadline,
    request: &'a ProvisionRequest,
    /// The request's id, written into the lock tags it takes.
    request_id: &'a str,
    /// The registry's id for the device (AWS thing name, IoT Hub or ClearBlade device id),
    /// worked out once.
    device_id: RegistryDeviceId,
    /// POST with `rotate: true`.
    rotate: bool,
    /// Which private-key arrangement the request expects.
    mode: KeyMode<'a>,
}

impl Job<'_> {
    fn uuid(&self) -> &DeviceUuid {
        &self.request.uuid
    }

    /// The device as registry calls name it.
    fn device(&self) -> Device<'_> {
        Device {
            uuid: &self.request.uuid,
            id: &self.device_id,
        }
    }
}

pub struct Provisioner {
    balena: BalenaClient,
    registry: Arc<dyn Registry>,
    budget: Duration,
    key_algorithm: KeyAlgorithm,
    /// `PROVISION_ACCEPT_USER_KEYS`: a user's or fleet's key that sees the device may act on it.
    accept_user_keys: bool,
    /// Keys refused a moment ago, by hash.
    rejected: RejectedKeys,
}

impl Provisioner {
    pub fn new(balena: BalenaClient, registry: Arc<dyn Registry>, budget: Duration) -> Self {
        Provisioner {
            balena,
            registry,
            budget,
            key_algorithm: KeyAlgorithm::default(),
            accept_user_keys: false,
            rejected: RejectedKeys::default(),
        }
    }

    /// Lets a user's or fleet's key that sees the device act on it (off by default).
    pub fn accepting_user_keys(mut self, accept: bool) -> Self {
        self.accept_user_keys = accept;
        self
    }

    /// The key pair made for devices that send no CSR.
    pub fn with_key_algorithm(mut self, algorithm: KeyAlgorithm) -> Self {
        self.key_algorithm = algorithm;
        self
    }

    pub fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }

    /// The part of the budget kept back from the work for undoing it: a hung upstream may use
    /// up the work's share, and the clean-up after it must still fit before the answer is due.
    fn reserve(&self) -> Duration {
        self.budget / 4
    }

    /// The deadline for undoing what a job did: its own, extended by the reserve.
    fn cleanup(&self, job: &Job<'_>) -> Deadline {
        job.deadline.extended(self.reserve())
    }

    /// Revokes these credentials (none: nothing to do).
    async fn revoke_all(
        &self,
        job: &Job<'_>,
        credentials: &[RegisteredCredential],
    ) -> Result<(), RegistryError> {
        if credentials.is_empty() {
            return Ok(());
        }
        self.registry
            .revoke(job.deadline, &job.device_id, credentials)
            .await
    }

    pub async fn run(
        &self,
        request: ProvisionRequest,
        caller: Caller,
        request_id: &str,
    ) -> Result<Outcome, ProvisionError> {
        let deadline = Deadline::after(self.budget - self.reserve());
        // A key refused a moment ago is refused again without asking anyone.
        if let Caller::BalenaKey(key) = &caller
            && let Some(refusal) = self.remembered_refusal(key, &request.uuid)
        {
            return Err(refusal);
        }
        let (rotate, mode) = match &request.operation {
            Operation::Provision { rotate, csr } => (
                *rotate,
                csr.as_ref().map_or(KeyMode::Generated, KeyMode::Csr),
            ),
            Operation::Status | Operation::Deprovision => (false, KeyMode::Either),
        };
        let job = Job {
            deadline,
            request: &request,
            request_id,
            device_id: self.registry.device_id(&request.uuid),
            rotate,
            mode,
        };
        let snapshot = match &caller {
            Caller::BalenaKey(key) => {
                let (record, target) = self.prove(&job, key).await?;
                // A rotation takes the lock while it reads the registry (`rotate.rs`).
                if self.rotates_early(&job, &record, target) {
                    return self.rotate(&job, record, target, None).await;
                }
                self.read_registry(&job, record, target).await?
            }
            // The operator (or, where allowed, a caller without credentials) needs no proof:
            // balenaCloud's state and the registry's do not depend on each other, one round
            // trip reads both.
            _ => self.read(&job).await?,
        };
        match &request.operation {
            Operation::Status => Ok(self.report(&job, &snapshot)),
            Operation::Provision { .. } => self.provision(&job, snapshot).await,
            Operation::Deprovision => self.deprovision(&job, snapshot).await,
        }
    }
}
