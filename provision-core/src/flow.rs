//! The provisioning state machine: read everything at once, decide, change only what must
//! change, and undo this request's changes when a later step fails.
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
//! waits for it and removes whatever it left. A lock taken for a goal is only ever followed by
//! undoing this request's own writes (safe beside whoever holds the next lock): anything more
//! the device needs is done under a lock taken afresh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::api::ids::DeviceUuid;
use crate::api::request::{Operation, ProvisionRequest};
use crate::auth::Caller;
use crate::balena::{Actor, BalenaClient, DeviceRecord, StoredVar, VarTarget};
use crate::credentials::{
    DeviceCsr, DeviceKey, KeyAlgorithm, base64_decode, public_key_of_private_pem,
};
use crate::error::{ProvisionError, UpstreamFailure, codes};
use crate::registry::{
    Foreign, Material, RegisteredCredential, Registration, Registry, RegistryState,
};
use crate::rejected_keys::{Refused, RejectedKeys};
use crate::retry::Deadline;
use crate::secret::Secret;

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
    pub device_id: String,
    pub variables: Vec<String>,
    pub details: Option<Value>,
}

/// Everything known about one device at one moment.
struct Snapshot {
    record: DeviceRecord,
    target: VarTarget,
    state: RegistryState,
}

impl Snapshot {
    fn vars(&self) -> BTreeMap<String, Secret> {
        self.record.values()
    }

    /// Nothing of ours anywhere: no variables, no credentials (an empty entry may exist).
    fn is_fresh(&self) -> bool {
        self.record.vars.is_empty()
            && !self
                .state
                .credentials
                .iter()
                .any(RegisteredCredential::is_ours)
    }

    fn is_empty(&self) -> bool {
        self.is_fresh() && !self.state.entry
    }
}

/// Which private-key arrangement a request expects.
#[derive(Clone, Copy)]
enum KeyMode<'a> {
    /// The function makes the key and stores it.
    Generated,
    /// The device keeps its key; the stored certificate must be for this CSR's key.
    Csr(&'a DeviceCsr),
    /// Either (GET reports on what is there).
    Either,
}

/// How the stored variables and the registry relate.
struct Assessment {
    /// The stored variables name an active, complete credential, consistently.
    usable: Option<RegisteredCredential>,
    /// The active credential the stored variables name, usable or not: it stays registered
    /// until new variables replace it, so the variables never name a credential that is gone.
    named: Option<RegisteredCredential>,
    /// Credentials other than the usable one.
    extras: Vec<RegisteredCredential>,
}

impl Assessment {
    fn healthy(&self) -> bool {
        self.usable.is_some() && self.extras.is_empty()
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
        let snapshot = match &caller {
            Caller::BalenaKey(key) => self.read_as_caller(deadline, key, &request).await?,
            // The operator (or, where allowed, a caller without credentials) needs no proof:
            // balenaCloud's state and the registry's do not depend on each other, one round
            // trip reads both.
            _ => self.read(deadline, &request).await?,
        };
        let device_id = self.registry.device_id(&request.uuid);
        match &request.operation {
            Operation::Status => Ok(self.report(&request.uuid, device_id, &snapshot)),
            Operation::Provision { rotate, csr } => {
                let mode = csr.as_ref().map_or(KeyMode::Generated, KeyMode::Csr);
                self.provision(
                    deadline, &request, device_id, snapshot, *rotate, mode, request_id,
                )
                .await
            }
            Operation::Deprovision => {
                self.deprovision(deadline, &request, device_id, snapshot, request_id)
                    .await
            }
        }
    }

    /// The refusal a key earned a moment ago, if it would refuse this request too (a key once
    /// refused for another device may still be this device's own: that one is asked again).
    fn remembered_refusal(&self, key: &Secret, uuid: &DeviceUuid) -> Option<ProvisionError> {
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

    /// A caller with a balena key: its proof first, and the registry only once it holds. The
    /// proof is balenaCloud's `whoami` beside the device read *with the caller's key* (one
    /// round trip, two calls): `whoami` says whose key it is, the read what that key may see
    /// (a device's own key sees its device, and nothing while balenaCloud has frozen it). A
    /// refused caller is answered as soon as `whoami` refuses it, whatever the read finds, so
    /// the answer's timing tells nothing about the device; it makes no registry call and no
    /// write.
    ///
    /// Then the registry: a POST for a device balenaCloud shows nothing of ours on (no
    /// variable, no lock held) skips reading it, and registers straight away as if it were
    /// empty; a registry that finds an entry there refuses to create it, and the flow falls
    /// back to reading it under the lock. So a new device keeps its depth (proof, register,
    /// activate) and every other request reads the registry once proven.
    async fn read_as_caller(
        &self,
        deadline: Deadline,
        key: &Secret,
        request: &ProvisionRequest,
    ) -> Result<Snapshot, ProvisionError> {
        let uuid = &request.uuid;
        let proof = self.balena.whoami(deadline, key);
        let read = self.read_balena(deadline, request, Some(key));
        tokio::pin!(proof, read);
        let (actor, record) = tokio::select! {
            biased;
            actor = &mut proof => {
                let actor = self.judge(key, uuid, actor)?;
                (actor, read.await)
            }
            record = &mut read => {
                let actor = self.judge(key, uuid, proof.await)?;
                (actor, record)
            }
        };
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
        let unseen = matches!(request.operation, Operation::Provision { .. })
            && record.vars.is_empty()
            && record
                .head_lock()
                .is_none_or(|head| LockValue::parse(&head.value).is_free_by_itself());
        let device_id = self.registry.device_id(uuid);
        let state = if unseen {
            Ok(RegistryState::default())
        } else {
            // The variables are known by now: the registry may describe the credential they
            // name without a second round trip.
            self.registry
                .inspect_named(deadline, &device_id, &record.values())
                .await
        }
        .map_err(|f| ProvisionError::cloud("reading the registry", f))?;
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
    async fn read(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
    ) -> Result<Snapshot, ProvisionError> {
        let device_id = self.registry.device_id(&request.uuid);
        let (record, state) = tokio::join!(
            self.read_balena(deadline, request, None),
            self.registry.inspect(deadline, &device_id)
        );
        let (record, target) = record?;
        let state = state.map_err(|f| ProvisionError::cloud("reading the registry", f))?;
        let state = self.owned(state, &record);
        Ok(Snapshot {
            record,
            target,
            state,
        })
    }

    /// A credential made elsewhere that the stored variables name is the device's own (one an
    /// earlier tool provisioned): it is the function's to replace and revoke.
    fn owned(&self, mut state: RegistryState, record: &DeviceRecord) -> RegistryState {
        let vars = record.values();
        for c in &mut state.credentials {
            if c.foreign == Some(Foreign::MadeElsewhere) && self.registry.names(&vars, c) {
                c.foreign = None;
            }
        }
        state
    }

    /// balenaCloud's view of the device: its record and where its variables go, read with
    /// `key` (a caller's) or the function's own.
    async fn read_balena(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        key: Option<&Secret>,
    ) -> Result<(DeviceRecord, VarTarget), ProvisionError> {
        let names = self.registry.variable_names();
        let service = request.service.as_ref();
        let record = match key {
            Some(key) => {
                self.balena
                    .read_device_as(deadline, key, &request.uuid, service, names)
                    .await
            }
            None => {
                self.balena
                    .read_device(deadline, &request.uuid, service, names)
                    .await
            }
        };
        let record = record
            .map_err(|f| ProvisionError::balena("reading the device", f))?
            .ok_or_else(|| ProvisionError::DeviceNotFound(request.uuid.to_string()))?;
        let Some(target) = record.target else {
            let service = request.service.as_ref().map(|s| s.as_str()).unwrap_or("");
            return Err(ProvisionError::bad_request(
                codes::BAD_SERVICE,
                format!(
                    "device {} has no service named '{service}'",
                    request.uuid.short()
                ),
            ));
        };
        Ok((record, target))
    }

    fn assess(&self, uuid: &DeviceUuid, snapshot: &Snapshot, mode: KeyMode<'_>) -> Assessment {
        let vars = snapshot.vars();
        let stored_key = self.registry.stored_public_key(&vars);
        let private = vars
            .get(self.registry.private_key_variable())
            .map(|v| {
                base64_decode(v.expose())
                    .and_then(|pem| String::from_utf8(pem).ok())
                    .map(Secret::new)
            })
            .map(|pem| pem.and_then(|pem| public_key_of_private_pem(&pem).ok()));
        // Where only the private key says which credential is the device's (ClearBlade), a
        // device that keeps its own key has none stored: the registered key stands for it.
        let implicit = !self.registry.variables_name_credential() && private.is_none();
        let key_consistent = match (mode, &private) {
            (KeyMode::Csr(csr), None) => implicit || stored_key.as_ref() == Some(csr.public_key()),
            (KeyMode::Generated | KeyMode::Either, Some(Some(public))) => {
                stored_key.as_ref() == Some(public)
            }
            (KeyMode::Either, None) => implicit || stored_key.is_some(),
            _ => false,
        };
        // A CSR's key must be the registered one (a registry that knows its keys says so).
        let csr_key_registered = |c: &RegisteredCredential| match mode {
            KeyMode::Csr(csr) => c.public_key.as_ref().is_none_or(|k| k == csr.public_key()),
            _ => true,
        };
        let fixed_ok = self
            .registry
            .fixed_variables(uuid)
            .iter()
            .all(|(name, value)| vars.get(*name).map(Secret::expose) == Some(value.as_str()));
        let matched = snapshot
            .state
            .credentials
            .iter()
            .filter(|_| key_consistent && fixed_ok && snapshot.state.entry)
            .find(|c| {
                c.active && c.complete && self.registry.names(&vars, c) && csr_key_registered(c)
            })
            .cloned();
        // Credentials that are not the function's (see `Foreign`) are neither the device's
        // nor stale: they stay as they are.
        let extras = snapshot
            .state
            .credentials
            .iter()
            .filter(|c| c.is_ours())
            .filter(|c| matched.as_ref().is_none_or(|m| m.id != c.id))
            .cloned()
            .collect();
        let named = matched.clone().or_else(|| {
            snapshot
                .state
                .credentials
                .iter()
                .find(|c| c.active && self.registry.names(&vars, c))
                .cloned()
        });
        Assessment {
            usable: matched,
            named,
            extras,
        }
    }

    fn report(&self, uuid: &DeviceUuid, device_id: String, snapshot: &Snapshot) -> Outcome {
        let assessment = self.assess(uuid, snapshot, KeyMode::Either);
        let status = if assessment.healthy() {
            Status::Provisioned
        } else if snapshot.is_empty() {
            Status::NotProvisioned
        } else {
            Status::Partial
        };
        let stored_id = assessment.usable.as_ref().map(|c| c.id.clone());
        let credentials: Vec<Value> = snapshot
            .state
            .credentials
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "active": c.active,
                    "complete": c.complete,
                    "stored": Some(&c.id) == stored_id.as_ref(),
                    "foreign": c.foreign.map(|f| match f {
                        Foreign::AttachedElsewhere => "attached-elsewhere",
                        Foreign::MadeElsewhere => "made-elsewhere",
                    }),
                    "public_key": c.public_key.as_ref().map(|k| k.fingerprint()),
                })
            })
            .collect();
        let variables: serde_json::Map<String, Value> = self
            .registry
            .variable_names()
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    Value::Bool(snapshot.record.vars.contains_key(*name)),
                )
            })
            .collect();
        Outcome {
            status,
            device_id,
            variables: Vec::new(),
            details: Some(json!({
                "registry": {"entry": snapshot.state.entry, "credentials": credentials},
                "variables": variables,
                "target": match snapshot.target { VarTarget::Device { .. } => "device", VarTarget::Service { .. } => "service" },
                "busy": !self.lock_free(snapshot, false),
            })),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        snapshot: Snapshot,
        rotate: bool,
        mode: KeyMode<'_>,
        request_id: &str,
    ) -> Result<Outcome, ProvisionError> {
        let assessment = self.assess(&request.uuid, &snapshot, mode);
        if assessment.healthy() && !rotate {
            return Ok(Outcome {
                status: Status::AlreadyProvisioned,
                device_id,
                variables: Vec::new(),
                details: None,
            });
        }
        let device = snapshot.record.device_id;
        let free_at_first = self.lock_free(&snapshot, false);
        if snapshot.is_fresh() && free_at_first {
            // Fast path: a device with nothing provisioned, and nobody changing it a moment ago.
            // The lock taken says what it is for (this key in use), so once the device is
            // provisioned the next request knows it is free without a release.
            let fresh = Fresh::new(mode, self.key_algorithm)?;
            let goal = Goal::Key {
                key: fresh.material().public_key().fingerprint(),
                private: fresh.private_pem().is_some(),
            };
            let lock = Lock::next(&snapshot, request_id, self.budget, Some(goal));
            let (taken, registered) = tokio::join!(
                self.take(deadline, &snapshot, &lock),
                self.registry
                    .register(deadline, &request.uuid, &snapshot.state, fresh.material()),
            );
            match (taken, registered) {
                (Ok(true), Ok(registration)) => {
                    return match self
                        .finish_fresh(
                            deadline,
                            request,
                            &snapshot,
                            &registration,
                            &fresh,
                            device_id.clone(),
                        )
                        .await
                    {
                        Ok(outcome) => Ok(outcome),
                        // A lock taken for a goal is only ever followed by undoing: whatever else
                        // the device needs is done under a lock taken afresh (another request
                        // may already judge this one done).
                        Err(FreshError::Conflict) => {
                            self.release(deadline, device, &lock).await;
                            self.provision_after(
                                deadline, request, device_id, rotate, mode, request_id, true,
                            )
                            .await
                        }
                        Err(FreshError::Failed(e)) => {
                            self.release(deadline, device, &lock).await;
                            Err(e)
                        }
                    };
                }
                (taken, registered) => {
                    let cleanup = deadline.extended(self.reserve());
                    if let Ok(registration) = &registered {
                        // Another request is working on this device, or the lock could not be
                        // taken: this credential is not needed.
                        self.discard(cleanup, &device_id, &registration.credential)
                            .await;
                        // An entry made here goes too, unless another request holds the lock
                        // (it may be using the entry: creating one is idempotent).
                        if registration.created_entry
                            && taken.is_err()
                            && let Err(f) = self.registry.remove_entry(cleanup, &device_id).await
                        {
                            tracing::error!(error = %f, "could not remove the registry entry this request made");
                        }
                    }
                    match taken {
                        // The registry holds an entry this request did not know of (it skipped
                        // reading a registry balenaCloud shows nothing of ours in, or the entry
                        // was made meanwhile): read it under a lock taken afresh.
                        Ok(true) if registered.as_ref().is_err_and(entry_changed) => {
                            self.release(deadline, device, &lock).await;
                            return self
                                .provision_after(
                                    deadline, request, device_id, rotate, mode, request_id, true,
                                )
                                .await;
                        }
                        Ok(true) => {
                            self.release(deadline, device, &lock).await;
                            return Err(registered
                                .err()
                                .unwrap_or_else(|| ProvisionError::Internal("lock state".into())));
                        }
                        Err(f) => {
                            self.release(deadline, device, &lock).await;
                            return Err(lock_failure(&request.uuid, f));
                        }
                        Ok(false) => {}
                    }
                }
            }
        }
        let seen_free = if free_at_first {
            snapshot.record.head_lock().map(|h| h.generation)
        } else {
            None
        };
        let origin_fresh = snapshot.is_fresh();
        let (lock, snapshot) = self
            .acquire(deadline, request, request_id, seen_free, false)
            .await?;
        let result = self
            .provision_locked(
                deadline,
                request,
                device_id,
                snapshot,
                rotate,
                mode,
                origin_fresh,
            )
            .await;
        self.release(deadline, device, &lock).await;
        result
    }

    /// Provisioning under a lock taken afresh, after a fast path gave way. `origin_fresh`: the
    /// device had nothing provisioned when this request first read it, so a repair from here
    /// makes it (`created`).
    #[allow(clippy::too_many_arguments)]
    async fn provision_after(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        rotate: bool,
        mode: KeyMode<'_>,
        request_id: &str,
        origin_fresh: bool,
    ) -> Result<Outcome, ProvisionError> {
        let (lock, snapshot) = self
            .acquire(deadline, request, request_id, None, false)
            .await?;
        let device = snapshot.record.device_id;
        let result = self
            .provision_locked(
                deadline,
                request,
                device_id,
                snapshot,
                rotate,
                mode,
                origin_fresh,
            )
            .await;
        self.release(deadline, device, &lock).await;
        result
    }

    /// The rest of the fast path, lock held: activate the credential while its variables are
    /// created. A variable that already exists means the snapshot went stale.
    async fn finish_fresh(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        snapshot: &Snapshot,
        registration: &Registration,
        fresh: &Fresh<'_>,
        device_id: String,
    ) -> Result<Outcome, FreshError> {
        let credential = &registration.credential;
        let vars = self
            .registry
            .variables(&request.uuid, credential, fresh.private_pem());
        let creates = vars.iter().map(|(name, value)| {
            self.balena
                .create_var(deadline, snapshot.target, name, value)
        });
        let (activated, created) = tokio::join!(
            self.registry
                .activate(deadline, &request.uuid, &snapshot.state, None, credential),
            futures::future::join_all(creates),
        );
        let conflict = created.iter().any(|r| matches!(r, Ok(false)))
            || activated.as_ref().is_err_and(entry_changed);
        let store_failure = created.iter().find_map(|r| r.as_ref().err().cloned());
        if !conflict && store_failure.is_none() && activated.is_ok() {
            return Ok(Outcome {
                status: Status::Created,
                device_id,
                variables: vars.iter().map(|(n, _)| n.to_string()).collect(),
                details: None,
            });
        }
        // Undo this request's variables (only where they still hold our values), then the
        // credential: variables never name a revoked credential.
        let deadline = deadline.extended(self.reserve());
        let undo = vars
            .iter()
            .zip(&created)
            .filter(|(_, r)| matches!(r, Ok(true)))
            .map(|((name, value), _)| {
                self.balena
                    .delete_var_if(deadline, snapshot.target, name, value)
            });
        for result in futures::future::join_all(undo).await {
            if let Err(f) = result {
                tracing::error!(error = %f, "could not remove a variable this request stored");
            }
        }
        self.discard(
            deadline,
            &self.registry.device_id(&request.uuid),
            credential,
        )
        .await;
        if conflict {
            tracing::info!(
                "the device changed before the lock was taken; re-reading under the lock"
            );
            return Err(FreshError::Conflict);
        }
        if registration.created_entry
            && let Err(f) = self
                .registry
                .remove_entry(deadline, &self.registry.device_id(&request.uuid))
                .await
        {
            tracing::error!(error = %f, "could not remove the registry entry this request made");
        }
        Err(FreshError::Failed(match (activated, store_failure) {
            (Err(e), _) => e,
            (Ok(()), Some(f)) => ProvisionError::balena("storing the variables", f),
            (Ok(()), None) => {
                ProvisionError::Internal("fresh provisioning failed without a cause".into())
            }
        }))
    }

    /// Provisioning with the lock held, from `snapshot` (read under it, or just before taking it).
    #[allow(clippy::too_many_arguments)]
    async fn provision_locked(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        snapshot: Snapshot,
        rotate: bool,
        mode: KeyMode<'_>,
        origin_fresh: bool,
    ) -> Result<Outcome, ProvisionError> {
        match self
            .provision_locked_once(
                deadline,
                request,
                device_id.clone(),
                snapshot,
                rotate,
                mode,
                origin_fresh,
            )
            .await
        {
            Err(e) if entry_changed(&e) => {
                tracing::info!(error = %e, "the registry entry changed meanwhile; reading it again");
                let snapshot = self.read(deadline, request).await?;
                self.provision_locked_once(
                    deadline,
                    request,
                    device_id,
                    snapshot,
                    rotate,
                    mode,
                    origin_fresh,
                )
                .await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn provision_locked_once(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        snapshot: Snapshot,
        rotate: bool,
        mode: KeyMode<'_>,
        origin_fresh: bool,
    ) -> Result<Outcome, ProvisionError> {
        let assessment = self.assess(&request.uuid, &snapshot, mode);
        if assessment.healthy() && !rotate {
            return Ok(Outcome {
                status: Status::AlreadyProvisioned,
                device_id,
                variables: Vec::new(),
                details: None,
            });
        }
        if assessment.usable.is_some() && !rotate {
            // The stored credential is good; only stale ones need to go.
            self.revoke_all(deadline, &device_id, &assessment.extras)
                .await?;
            return Ok(Outcome {
                status: Status::Repaired,
                device_id,
                variables: Vec::new(),
                details: None,
            });
        }
        let status = if rotate && assessment.usable.is_some() {
            Status::Rotated
        } else if snapshot.is_fresh() || origin_fresh {
            Status::Created
        } else {
            Status::Repaired
        };
        let fresh = Fresh::new(mode, self.key_algorithm)?;
        let registration = self
            .registry
            .register(deadline, &request.uuid, &snapshot.state, fresh.material())
            .await?;
        let credential = &registration.credential;
        let vars = self
            .registry
            .variables(&request.uuid, credential, fresh.private_pem());
        // With a CSR the device keeps its key: a private key stored earlier must go.
        let private_name = self.registry.private_key_variable();
        let remove_private =
            fresh.private_pem().is_none() && snapshot.record.vars.contains_key(private_name);
        let writes = vars.iter().map(|(name, value)| {
            let existing = snapshot.record.vars.get(*name).map(|v| v.id);
            self.balena
                .write_var(deadline, snapshot.target, existing, name, value)
        });
        let removal = async {
            if remove_private {
                self.balena
                    .delete_vars(deadline, snapshot.target, &[private_name])
                    .await
            } else {
                Ok(())
            }
        };
        let (activated, written, removed) = tokio::join!(
            self.registry.activate(
                deadline,
                &request.uuid,
                &snapshot.state,
                assessment.named.as_ref(),
                credential
            ),
            futures::future::join_all(writes),
            removal,
        );
        let store_failure = written
            .into_iter()
            .chain(std::iter::once(removed))
            .find_map(Result::err);
        if let (Ok(()), None) = (&activated, &store_failure) {
            // Only now, with the new credential stored and usable, do the old ones go (not
            // one that is not the function's: it stays as it is). A rotation with a CSR for the
            // key already registered makes "new" the old one (ClearBlade names a credential by
            // its key): it is never its own predecessor.
            let old: Vec<RegisteredCredential> = snapshot
                .state
                .credentials
                .iter()
                .filter(|c| c.is_ours() && c.id != credential.id)
                .cloned()
                .collect();
            if let Err(e) = self.revoke_all(deadline, &device_id, &old).await {
                // An old credential that still works must stay named by the variables: put them
                // back and drop the new one. One that no longer works is only litter, which the
                // next request clears; the device has what it needs.
                if self
                    .still_active(deadline, &device_id, &snapshot.state.credentials)
                    .await
                {
                    let cleanup = deadline.extended(self.reserve());
                    self.restore(cleanup, snapshot.target, &snapshot.record.vars, &vars)
                        .await;
                    self.discard(cleanup, &device_id, credential).await;
                    return Err(e);
                }
                tracing::warn!(error = %e, "an old credential is disabled but not yet deleted; the next request removes it");
            }
            let mut variables: Vec<String> = vars.iter().map(|(n, _)| n.to_string()).collect();
            if remove_private {
                variables.push(private_name.to_string());
            }
            return Ok(Outcome {
                status,
                device_id,
                variables,
                details: None,
            });
        }
        // Put the variables back as they were, then drop the new credential.
        let cleanup = deadline.extended(self.reserve());
        self.restore(cleanup, snapshot.target, &snapshot.record.vars, &vars)
            .await;
        self.discard(cleanup, &device_id, credential).await;
        if registration.created_entry
            && let Err(f) = self.registry.remove_entry(cleanup, &device_id).await
        {
            tracing::error!(error = %f, "could not remove the registry entry this request made");
        }
        Err(match (activated, store_failure) {
            (Err(e), _) => e,
            (Ok(()), Some(f)) => ProvisionError::balena("storing the variables", f),
            (Ok(()), None) => {
                ProvisionError::Internal("provisioning failed without a cause".into())
            }
        })
    }

    async fn deprovision(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        snapshot: Snapshot,
        request_id: &str,
    ) -> Result<Outcome, ProvisionError> {
        if snapshot.is_empty() {
            return Ok(Outcome {
                status: Status::NotProvisioned,
                device_id,
                variables: Vec::new(),
                details: None,
            });
        }
        let device = snapshot.record.device_id;
        if !self.lock_free(&snapshot, true) {
            // Another request is changing the device: wait for it, then remove what it left.
            return self
                .deprovision_after(deadline, request, device_id, request_id, None, Vec::new())
                .await;
        }
        // Nobody was changing the device a moment ago: take the lock while the variables go and
        // the credentials stop working, all at once. Should another request have taken it in
        // between, this one waits for it and then removes whatever it left (removal is what was
        // asked for). The lock says what it is for (nothing left), so once the device is gone
        // the next request knows it is free without a release.
        let lock = Lock::next(&snapshot, request_id, self.budget, Some(Goal::Gone));
        let target = snapshot.target;
        let present: Vec<String> = snapshot.record.vars.keys().cloned().collect();
        // Exactly the variables read: should another request be storing some meanwhile, its
        // are left for the removal that follows once it is done.
        let rows: Vec<i64> = snapshot.record.vars.values().map(|v| v.id).collect();
        let delete_vars = self.balena.delete_var_rows(deadline, target, &rows);
        let (taken, deleted, retired) = tokio::join!(
            self.take(deadline, &snapshot, &lock),
            delete_vars,
            self.registry.retire(deadline, &device_id, &snapshot.state),
        );
        let held = matches!(taken, Ok(true));
        if deleted.is_err() || retired.is_err() {
            // Neither half may stand alone: variables must not name a retired credential, nor a
            // working credential be left without its variables.
            let cleanup = deadline.extended(self.reserve());
            match (&deleted, &retired) {
                (Err(_), Ok(())) => {
                    if let Err(f) = self
                        .registry
                        .unretire(cleanup, &device_id, &snapshot.state, &snapshot.vars())
                        .await
                    {
                        tracing::error!(error = %f, "could not make the credentials work again after the variables could not be deleted");
                    }
                }
                (Ok(()), Err(_))
                    if !present.is_empty()
                        && self
                            .still_active(cleanup, &device_id, &snapshot.state.credentials)
                            .await =>
                {
                    self.recreate(cleanup, target, &snapshot.record.vars).await;
                }
                _ => {}
            }
            if held || taken.is_err() {
                self.release(deadline, device, &lock).await;
            }
            return Err(match (deleted, retired) {
                (Err(f), _) => ProvisionError::balena("deleting the variables", f),
                (_, Err(f)) => ProvisionError::cloud("revoking the credentials", f),
                _ => ProvisionError::Internal("removal failed without a cause".into()),
            });
        }
        if !held {
            // Another request took the lock meanwhile (or its state is unknown): leave the rest
            // alone while it works, then remove whatever it leaves.
            if taken.is_err() {
                self.release(deadline, device, &lock).await;
            }
            return self
                .deprovision_after(
                    deadline,
                    request,
                    device_id,
                    request_id,
                    lock.generation.checked_sub(1),
                    present,
                )
                .await;
        }
        // Variables gone, credentials unusable: remove what is left (AWS: the inactive, detached
        // certificates and the thing).
        match self
            .registry
            .purge(deadline, &device_id, &snapshot.state)
            .await
        {
            Ok(true) => Ok(Outcome {
                status: Status::Deleted,
                device_id,
                variables: present,
                details: None,
            }),
            Err(f) => {
                self.release(deadline, device, &lock).await;
                Err(ProvisionError::cloud("deleting the registry entry", f))
            }
            // The entry gained a credential since it was read: a request that started before
            // this one took the lock is finishing; remove what it made too, under a lock taken
            // afresh (a lock taken for a goal is only ever followed by undoing).
            Ok(false) => {
                self.release(deadline, device, &lock).await;
                self.deprovision_after(deadline, request, device_id, request_id, None, present)
                    .await
            }
        }
    }

    /// DELETE under the lock, waiting for it first. `removed`: the variables this request has
    /// already deleted (reported even when nothing is left now).
    async fn deprovision_after(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        device_id: String,
        request_id: &str,
        seen_free: Option<u64>,
        removed: Vec<String>,
    ) -> Result<Outcome, ProvisionError> {
        let disturbed = seen_free.is_some();
        let (lock, snapshot) = self
            .acquire(deadline, request, request_id, seen_free, disturbed)
            .await?;
        let device = snapshot.record.device_id;
        let result = self.deprovision_locked(deadline, device_id, snapshot).await;
        self.release(deadline, device, &lock).await;
        merge_removed(result, removed)
    }

    /// DELETE with the lock held, from `snapshot` (read under it, or just before taking it).
    async fn deprovision_locked(
        &self,
        deadline: Deadline,
        device_id: String,
        snapshot: Snapshot,
    ) -> Result<Outcome, ProvisionError> {
        if snapshot.is_empty() {
            return Ok(Outcome {
                status: Status::NotProvisioned,
                device_id,
                variables: Vec::new(),
                details: None,
            });
        }
        let present: Vec<String> = snapshot.record.vars.keys().cloned().collect();
        // Variables first: they must never name a credential that is gone.
        if !present.is_empty() {
            self.balena
                .delete_vars(deadline, snapshot.target, self.registry.variable_names())
                .await
                .map_err(|f| ProvisionError::balena("deleting the variables", f))?;
        }
        // Where the entry holds the credentials, removing it is the revocation: one call.
        let revocation = if snapshot.state.entry && self.registry.entry_holds_credentials() {
            self.registry
                .remove_entry(deadline, &device_id)
                .await
                .map_err(|f| ProvisionError::cloud("deleting the registry entry", f))
        } else {
            self.revoke_all(deadline, &device_id, &snapshot.state.credentials)
                .await
        };
        if let Err(e) = revocation {
            // A credential that still works must stay named by the variables: put them back.
            if !present.is_empty()
                && self
                    .still_active(deadline, &device_id, &snapshot.state.credentials)
                    .await
            {
                self.recreate(
                    deadline.extended(self.reserve()),
                    snapshot.target,
                    &snapshot.record.vars,
                )
                .await;
            }
            return Err(e);
        }
        if snapshot.state.entry && !self.registry.entry_holds_credentials() {
            self.registry
                .remove_entry(deadline, &device_id)
                .await
                .map_err(|f| ProvisionError::cloud("deleting the registry entry", f))?;
        }
        Ok(Outcome {
            status: Status::Deleted,
            device_id,
            variables: present,
            details: None,
        })
    }

    async fn revoke_all(
        &self,
        deadline: Deadline,
        device_id: &str,
        credentials: &[RegisteredCredential],
    ) -> Result<(), ProvisionError> {
        if credentials.is_empty() {
            return Ok(());
        }
        self.registry
            .revoke(deadline, device_id, credentials)
            .await
            .map_err(|f| ProvisionError::cloud("revoking an old credential", f))
    }

    /// Whether any of `credentials` still lets a device in, as far as the registry says now (a
    /// registry that cannot be read counts as "yes": the variables are then put back).
    async fn still_active(
        &self,
        deadline: Deadline,
        device_id: &str,
        credentials: &[RegisteredCredential],
    ) -> bool {
        match self
            .registry
            .inspect(deadline.extended(self.reserve()), device_id)
            .await
        {
            Ok(state) => state.credentials.iter().any(|c| {
                c.active
                    && credentials
                        .iter()
                        .any(|old| old.id == c.id && old.is_ours())
            }),
            Err(f) => {
                tracing::warn!(error = %f, "could not re-read the registry after a failed revocation");
                true
            }
        }
    }

    /// Stores again variables this request deleted (those that another request has stored in
    /// the meantime are left as they are).
    async fn recreate(
        &self,
        deadline: Deadline,
        target: VarTarget,
        before: &BTreeMap<String, StoredVar>,
    ) {
        let steps = before
            .iter()
            .map(|(name, old)| self.balena.create_var(deadline, target, name, &old.value));
        for result in futures::future::join_all(steps).await {
            if let Err(f) = result {
                tracing::error!(error = %f, "could not store a variable again after a failed revocation");
            }
        }
    }

    /// Best-effort removal of a credential this request made and no longer needs.
    async fn discard(
        &self,
        deadline: Deadline,
        device_id: &str,
        credential: &RegisteredCredential,
    ) {
        if let Err(f) = self
            .registry
            .revoke(deadline, device_id, std::slice::from_ref(credential))
            .await
        {
            tracing::error!(credential = %credential.id, error = %f, "could not remove a credential this request made");
        }
    }

    /// Puts variables back to their values before this request (deleting the ones it added).
    async fn restore(
        &self,
        deadline: Deadline,
        target: VarTarget,
        before: &BTreeMap<String, StoredVar>,
        written: &[(&'static str, Secret)],
    ) {
        let steps = written.iter().map(|(name, ours)| async move {
            match before.get(*name) {
                Some(old) => {
                    self.balena
                        .write_var(deadline, target, Some(old.id), name, &old.value)
                        .await
                }
                None => {
                    self.balena
                        .delete_var_if(deadline, target, name, ours)
                        .await
                }
            }
        });
        for result in futures::future::join_all(steps).await {
            if let Err(f) = result {
                tracing::error!(error = %f, "could not restore a variable after a failed step");
            }
        }
    }

    /// Whether the device's latest lock leaves it free to change, as `snapshot` shows it: none,
    /// released, expired (a holder that crashed), or done, what it was taken for being so (a
    /// fast path's key in use; nothing left after a removal). `removal`: for DELETE, a key in
    /// use also shows as the variables naming it.
    fn lock_free(&self, snapshot: &Snapshot, removal: bool) -> bool {
        self.lock_free_as(snapshot, removal, false)
    }

    /// `disturbed`: this request removed credentials beside another's taking of the lock (a
    /// DELETE that lost the race), so the registry may no longer hold the key the lock was
    /// taken for: its variables, which that removal left alone, stand for it.
    fn lock_free_as(&self, snapshot: &Snapshot, removal: bool, disturbed: bool) -> bool {
        let Some(head) = snapshot.record.head_lock() else {
            return true;
        };
        let value = LockValue::parse(&head.value);
        if value.is_free_by_itself() {
            return true;
        }
        // A goal is about the variables of one target (the device's, or one service's): a
        // request reading another target's judges it by the registry alone (the holder's
        // variables are created, never overwritten, so any still arriving lose nothing).
        if value.goal.is_some()
            && value.target.as_deref() != Some(target_word(snapshot.target).as_str())
        {
            return match &value.goal {
                Some(Goal::Key { key, .. }) => snapshot.state.credentials.iter().any(|c| {
                    c.active
                        && c.public_key
                            .as_ref()
                            .is_none_or(|k| k.fingerprint() == *key)
                }),
                _ => snapshot.state.credentials.iter().all(|c| !c.is_ours()),
            };
        }
        match &value.goal {
            None => false,
            // An empty entry does not count: a racing fast path that lost the lock may have made
            // one after the holder read the device (the next request uses or removes it).
            Some(Goal::Gone) => snapshot.is_fresh(),
            // Done once its variables exist (the private key's too where the holder stores one)
            // and the registry holds the key: those are the holder's last writes (whatever has
            // happened to their values since, by hand or not).
            Some(Goal::Key { key, private }) => {
                let vars = snapshot.vars();
                let private_name = self.registry.private_key_variable();
                let written = self
                    .registry
                    .variable_names()
                    .iter()
                    .filter(|n| **n != private_name || *private)
                    .all(|n| vars.contains_key(*n));
                let named_is_key = self
                    .registry
                    .stored_public_key(&vars)
                    .is_some_and(|k| k.fingerprint() == *key);
                let holds_key = snapshot.state.credentials.iter().any(|c| {
                    c.public_key
                        .as_ref()
                        .is_some_and(|k| k.fingerprint() == *key)
                        || (named_is_key && self.registry.names(&vars, c))
                });
                // For DELETE the variables naming the key stand for it.
                written && (holds_key || (removal && named_is_key) || disturbed)
            }
        }
    }

    /// Takes the lock `lock` names (the generation after `snapshot`'s latest), deleting beside
    /// it lock tags so old that no request can still follow them.
    async fn take(
        &self,
        deadline: Deadline,
        snapshot: &Snapshot,
        lock: &Lock,
    ) -> Result<bool, UpstreamFailure> {
        let device = snapshot.record.device_id;
        let head = snapshot.record.head_lock().map(|h| h.generation);
        // A request follows the generation it read within its own budget: a tag whose holder's
        // time ended two budgets ago is past following (and never the latest one).
        let horizon = now_ms().saturating_sub(2 * self.budget.as_millis() as u64);
        let stale: Vec<i64> = snapshot
            .record
            .locks
            .iter()
            .filter(|l| Some(l.generation) != head && LockValue::parse(&l.value).until < horizon)
            .map(|l| l.id)
            .collect();
        let tidy = async {
            if !stale.is_empty()
                && let Err(f) = self.balena.delete_locks(deadline, device, &stale).await
            {
                tracing::warn!(error = %f, "could not delete old lock tags; the next change tries again");
            }
        };
        let (taken, ()) = tokio::join!(
            self.balena
                .try_lock(deadline, device, lock.generation, &lock.value),
            tidy
        );
        taken
    }

    /// Waits, within half the remaining budget, until the device's lock is free, and takes it.
    /// Returns it with the state read just before taking it, which is current: any change
    /// since would have taken the lock first.
    /// `seen_free`: a generation this request already found free (done, released or expired);
    /// it stays so, whatever happened to the device since (this request's own first steps may
    /// have undone what it was for).
    async fn acquire(
        &self,
        deadline: Deadline,
        request: &ProvisionRequest,
        request_id: &str,
        seen_free: Option<u64>,
        disturbed: bool,
    ) -> Result<(Lock, Snapshot), ProvisionError> {
        let give_up = tokio::time::Instant::now() + deadline.remaining() / 2;
        let mut wait = Duration::from_millis(20);
        loop {
            let snapshot = self.read(deadline, request).await?;
            let head = snapshot.record.head_lock().map(|h| h.generation);
            if (head.is_some() && head == seen_free)
                || self.lock_free_as(&snapshot, false, disturbed)
            {
                let lock = Lock::next(&snapshot, request_id, self.budget, None);
                match self.take(deadline, &snapshot, &lock).await {
                    Ok(true) => return Ok((lock, snapshot)),
                    Ok(false) => {}
                    Err(f) => {
                        self.release(deadline, snapshot.record.device_id, &lock)
                            .await;
                        return Err(lock_failure(&request.uuid, f));
                    }
                }
            }
            let pause = wait.mul_f64(0.5 + fastrand::f64());
            if tokio::time::Instant::now() + pause >= give_up {
                let held = snapshot
                    .record
                    .head_lock()
                    .map(|h| h.value.clone())
                    .unwrap_or_default();
                tracing::warn!(lock = %held, vars = snapshot.record.vars.len(), credentials = snapshot.state.credentials.len(), "gave up waiting for the device lock");
                return Err(ProvisionError::Busy(request.uuid.to_string()));
            }
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(Duration::from_millis(400));
        }
    }

    /// Marks the lock released (its tag stays: the next change follows its generation).
    async fn release(&self, deadline: Deadline, device: i64, lock: &Lock) {
        // Released even when the budget is spent: a lock left held would stall the next request.
        let deadline = deadline.extended(self.reserve());
        let deadline = if deadline.remaining() < Duration::from_secs(2) {
            Deadline::after(Duration::from_secs(2))
        } else {
            deadline
        };
        if let Err(f) = self
            .balena
            .rewrite_lock(
                deadline,
                device,
                lock.generation,
                &lock.value,
                &lock.released(),
            )
            .await
        {
            tracing::error!(error = %f, "could not release the device lock; it expires by itself");
        }
    }
}

/// Adds the variables an earlier step of a DELETE removed to what the rest of it reports.
fn merge_removed(
    result: Result<Outcome, ProvisionError>,
    removed: Vec<String>,
) -> Result<Outcome, ProvisionError> {
    match result {
        Ok(outcome) if outcome.status == Status::NotProvisioned && !removed.is_empty() => {
            Ok(Outcome {
                status: Status::Deleted,
                variables: removed,
                ..outcome
            })
        }
        Ok(mut outcome) => {
            for name in removed {
                if !outcome.variables.contains(&name) {
                    outcome.variables.push(name);
                }
            }
            Ok(outcome)
        }
        Err(e) => Err(e),
    }
}

/// The registry entry changed under a request that held the lock: made, changed or removed by
/// a request that did not need the lock for it (a DELETE finishing after its lock was
/// released, a fast path that lost the lease race). Worth one fresh attempt.
fn entry_changed(e: &ProvisionError) -> bool {
    matches!(
        e,
        ProvisionError::Upstream {
            system: crate::error::Upstream::Cloud,
            failure: UpstreamFailure::Refused {
                status: 404 | 409 | 412,
                ..
            },
            ..
        }
    )
}

enum FreshError {
    Conflict,
    Failed(ProvisionError),
}

/// The key material for a new credential: the device's CSR, or a key pair made here.
enum Fresh<'a> {
    Csr(&'a DeviceCsr),
    Generated(DeviceKey),
}

impl<'a> Fresh<'a> {
    fn new(mode: KeyMode<'a>, algorithm: KeyAlgorithm) -> Result<Self, ProvisionError> {
        match mode {
            KeyMode::Csr(csr) => Ok(Fresh::Csr(csr)),
            KeyMode::Generated | KeyMode::Either => DeviceKey::generate_with(algorithm)
                .map(Fresh::Generated)
                .map_err(ProvisionError::Internal),
        }
    }

    fn material(&self) -> Material<'_> {
        match self {
            Fresh::Csr(csr) => Material::Csr(csr),
            Fresh::Generated(key) => Material::Generated(key),
        }
    }

    /// The private key to store, when this function made it.
    fn private_pem(&self) -> Option<&Secret> {
        match self {
            Fresh::Csr(_) => None,
            Fresh::Generated(key) => Some(key.private_pem()),
        }
    }
}

/// What a lock is taken for, when its holder does not release it: done once the state shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Goal {
    /// Nothing of the device left (a DELETE).
    Gone,
    /// The key with this fingerprint in use, named by the variables (a fresh device's POST),
    /// with the private key stored beside them where `private` (the function made the key).
    Key { key: String, private: bool },
}

/// A lock tag's value: `<holder> until <unix ms>[ goal gone| goal key <fingerprint>[ private]
/// for <target>][ released]`, the target being `device` or `service-<install id>`.
#[derive(Debug, PartialEq, Eq)]
struct LockValue {
    until: u64,
    goal: Option<Goal>,
    target: Option<String>,
    released: bool,
}

/// How a lock's value names the variables' target.
fn target_word(target: VarTarget) -> String {
    match target {
        VarTarget::Device { .. } => "device".to_owned(),
        VarTarget::Service { service_install_id } => format!("service-{service_install_id}"),
    }
}

impl LockValue {
    /// An unreadable value counts as expired.
    fn parse(value: &str) -> LockValue {
        let words: Vec<&str> = value.split_whitespace().collect();
        let after = |word: &str| {
            words
                .iter()
                .position(|w| *w == word)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let until = after("until").and_then(|u| u.parse().ok()).unwrap_or(0);
        let goal = match after("goal") {
            Some("gone") => Some(Goal::Gone),
            Some("key") => after("key").map(|k| Goal::Key {
                key: k.to_owned(),
                private: words.contains(&"private"),
            }),
            _ => None,
        };
        LockValue {
            until,
            goal,
            target: after("for").map(str::to_owned),
            released: words.last() == Some(&"released"),
        }
    }

    /// Free whatever the device's state: released, expired, or with an expiry further ahead
    /// than any holder sets (longest budget + grace + clock skew), which is garbage a device's
    /// key wrote, not a lock.
    fn is_free_by_itself(&self) -> bool {
        let now = now_ms();
        self.released || self.until < now || self.until > now.saturating_add(MAX_HOLD_MS)
    }
}

/// A lock this request takes: the generation after the latest it read, and its value.
struct Lock {
    generation: u64,
    value: String,
}

impl Lock {
    fn next(snapshot: &Snapshot, request_id: &str, budget: Duration, goal: Option<Goal>) -> Self {
        let generation = snapshot
            .record
            .head_lock()
            .map_or(1, |h| h.generation.saturating_add(1));
        let until = now_ms() + budget.as_millis() as u64 + 5_000;
        let holder: String = request_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        let holder = if holder.is_empty() {
            "request".to_owned()
        } else {
            holder
        };
        let target = target_word(snapshot.target);
        let goal = match goal {
            None => String::new(),
            Some(Goal::Gone) => format!(" goal gone for {target}"),
            Some(Goal::Key { key, private }) => {
                let private = if private { " private" } else { "" };
                format!(" goal key {key}{private} for {target}")
            }
        };
        Lock {
            generation,
            value: format!("{holder} until {until}{goal}"),
        }
    }

    fn released(&self) -> String {
        format!("{} released", self.value)
    }
}

/// Why taking the lock failed, as the caller reads it: a device deleted since it was read is
/// not found (404), not an upstream failure.
fn lock_failure(uuid: &DeviceUuid, failure: UpstreamFailure) -> ProvisionError {
    match failure {
        UpstreamFailure::Refused { status: 404, .. } => {
            ProvisionError::DeviceNotFound(uuid.to_string())
        }
        failure => ProvisionError::balena("taking the device lock", failure),
    }
}

/// The furthest ahead a holder sets its lock's expiry: the longest request budget
/// (`PROVISION_REQUEST_BUDGET_MS` ≤ 900 s), the 5 s grace, and a minute of clock skew.
const MAX_HOLD_MS: u64 = 900_000 + 5_000 + 60_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_values_parse() {
        let v =
            LockValue::parse("abc-1 until 1700000000000 goal key 0a1b private for device released");
        let key = Some(Goal::Key {
            key: "0a1b".into(),
            private: true,
        });
        assert_eq!(
            v,
            LockValue {
                until: 1_700_000_000_000,
                goal: key,
                target: Some("device".into()),
                released: true
            }
        );
        let v = LockValue::parse("abc until 5 goal gone for service-12");
        assert_eq!(
            v,
            LockValue {
                until: 5,
                goal: Some(Goal::Gone),
                target: Some("service-12".into()),
                released: false
            }
        );
        assert_eq!(
            LockValue::parse("garbage").until,
            0,
            "an unreadable lock counts as expired"
        );
        assert_eq!(LockValue::parse("x until 7").goal, None);
    }
}
