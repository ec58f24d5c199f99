//! POST: provisioning, repair and rotation.
//!
//! A device with nothing provisioned takes the fast path ([`Provisioner::first_provisioning`]):
//! the lock, taken for its goal, and the credential together, then activation beside creating
//! the variables. Everything else, and a fast path that gives way, is done under the lock
//! ([`Provisioner::provision_locked`]).

use crate::credentials::{DeviceCsr, DeviceKey, KeyAlgorithm};
use crate::error::ProvisionError;
use crate::registry::{Material, RegisteredCredential, RegistryError};
use crate::secret::Secret;

use super::assess::KeyMode;
use super::lock::{Goal, Held, Taken, Wait, lock_failure};
use super::snapshot::Snapshot;
use super::undo::{Journal, Step};
use super::{Job, Outcome, Provisioner, Status};

impl Provisioner {
    pub(super) async fn provision(
        &self,
        job: &Job<'_>,
        snapshot: Snapshot,
    ) -> Result<Outcome, ProvisionError> {
        let assessment = self.assess(job, &snapshot, job.mode);
        if assessment.healthy() && !job.rotate {
            return Ok(Outcome::plain(Status::AlreadyProvisioned, job));
        }
        let free_at_first = self.lock_free(&snapshot, false);
        let was_new = snapshot.holds_nothing_of_ours();
        if job.rotate && free_at_first && assessment.usable.is_some() {
            return self
                .rotate(job, snapshot.record, snapshot.target, Some(snapshot.state))
                .await;
        }
        if was_new
            && free_at_first
            && let Some(result) = self.first_provisioning(job, &snapshot).await
        {
            return result;
        }
        let wait = Wait {
            seen_free: free_at_first
                .then(|| snapshot.record.head_lock().map(|h| h.generation))
                .flatten(),
            disturbed: false,
        };
        self.locked(job, wait, async |lock, snapshot| {
            self.provision_locked(job, lock, snapshot, was_new).await
        })
        .await
    }

    /// The fast path: a device with nothing provisioned, and nobody changing it a moment ago.
    /// The lock taken says what it is for (this key in use), so once the device is provisioned
    /// the next request knows it is free without a release. `None`: another request took the
    /// lock first; this one made nothing that stays, and waits for it.
    async fn first_provisioning(
        &self,
        job: &Job<'_>,
        snapshot: &Snapshot,
    ) -> Option<Result<Outcome, ProvisionError>> {
        let material = match NewMaterial::new(job.mode, self.key_algorithm) {
            Ok(material) => material,
            Err(e) => return Some(Err(e)),
        };
        let goal = Goal::Key {
            key: material.material().public_key().fingerprint(),
            private: material.private_pem().is_some(),
            sole: false,
        };
        let claim = self.claim(job, snapshot, Some(goal));
        let (taken, registered) = tokio::join!(
            self.take_for_goal(job, &snapshot.record, claim),
            self.registry.register(
                job.deadline,
                job.device(),
                &snapshot.state,
                material.material()
            ),
        );
        let mut journal = Journal::new(snapshot.target);
        if let Ok(registration) = &registered {
            journal.registered(registration);
        }
        let lock = match taken {
            Taken::Ours(lock) => lock,
            Taken::Theirs => {
                // Another request is working on this device: this credential is not needed.
                // An entry made here stays (it may be using it: making one is idempotent).
                journal.keep_entry();
                journal.unwind(self, job).await;
                return None;
            }
            Taken::Unknown(lock, f) => {
                lock.undo_and_release(self, job, journal).await;
                return Some(Err(lock_failure(job.uuid(), f)));
            }
        };
        let registration = match registered {
            Ok(registration) => registration,
            // The registry holds an entry this request did not know of (it skipped reading a
            // registry balenaCloud shows nothing of ours in, or the entry was made meanwhile):
            // read it under a lock taken afresh.
            Err(e) if e.entry_changed() => {
                lock.undo_and_release(self, job, journal).await;
                return Some(self.provision_again(job, true).await);
            }
            Err(e) => {
                lock.undo_and_release(self, job, journal).await;
                return Some(Err(e.into_error("registering the credential", job.uuid())));
            }
        };
        match self
            .finish_first(
                job,
                snapshot,
                &registration.credential,
                &material,
                &mut journal,
            )
            .await
        {
            Ok(outcome) => {
                lock.reached();
                Some(Ok(outcome))
            }
            // Whatever else the device needs is done under a lock taken afresh (another
            // request may already judge this one done).
            Err(FastPathError::Conflict) => {
                tracing::info!(
                    "the device changed before the lock was taken; re-reading under the lock"
                );
                journal.keep_entry();
                lock.undo_and_release(self, job, journal).await;
                Some(self.provision_again(job, true).await)
            }
            Err(FastPathError::Failed(e)) => {
                lock.undo_and_release(self, job, journal).await;
                Some(Err(e))
            }
        }
    }

    /// The rest of the fast path, lock held: activate the credential while its variables are
    /// created. A variable that already exists means the snapshot went stale.
    async fn finish_first(
        &self,
        job: &Job<'_>,
        snapshot: &Snapshot,
        credential: &RegisteredCredential,
        material: &NewMaterial<'_>,
        journal: &mut Journal,
    ) -> Result<Outcome, FastPathError> {
        let vars = self
            .registry
            .variables(job.uuid(), credential, material.private_pem());
        let creates = vars.iter().map(|(name, value)| {
            self.balena
                .create_var(job.deadline, snapshot.target, name, value)
        });
        let (activated, created) = tokio::join!(
            self.registry.activate(
                job.deadline,
                job.device(),
                &snapshot.state,
                None,
                credential
            ),
            futures::future::join_all(creates),
        );
        for ((name, value), result) in vars.iter().zip(&created) {
            // One that existed already is not this request's; one whose creation failed may
            // still have been made.
            if !matches!(result, Ok(false)) {
                journal.record(Step::VarSet {
                    name,
                    value: value.clone(),
                    before: None,
                });
            }
        }
        let conflict = created.iter().any(|r| matches!(r, Ok(false)))
            || activated.as_ref().is_err_and(RegistryError::entry_changed);
        if conflict {
            return Err(FastPathError::Conflict);
        }
        let store_failure = created.into_iter().find_map(Result::err);
        match (activated, store_failure) {
            (Ok(()), None) => Ok(Outcome {
                variables: vars.iter().map(|(n, _)| n.to_string()).collect(),
                ..Outcome::plain(Status::Created, job)
            }),
            (Err(e), _) => Err(FastPathError::Failed(
                e.into_error("activating the credential", job.uuid()),
            )),
            (Ok(()), Some(f)) => Err(FastPathError::Failed(ProvisionError::balena(
                "storing the variables",
                f,
            ))),
        }
    }

    /// Provisioning under a lock taken afresh, after a fast path gave way. `was_new`: the
    /// device had nothing provisioned when this request first read it, so a repair from here
    /// makes it.
    pub(super) async fn provision_again(
        &self,
        job: &Job<'_>,
        was_new: bool,
    ) -> Result<Outcome, ProvisionError> {
        self.locked(job, Wait::default(), async |lock, snapshot| {
            self.provision_locked(job, lock, snapshot, was_new).await
        })
        .await
    }

    /// Provisioning with the lock held, from `snapshot` (read under it, or just before taking
    /// it), once more from a new read should the registry entry change meanwhile. `was_new`:
    /// the device had nothing provisioned when this request first read it (`created`).
    async fn provision_locked(
        &self,
        job: &Job<'_>,
        lock: &Held,
        snapshot: Snapshot,
        was_new: bool,
    ) -> Result<Outcome, ProvisionError> {
        let changed = match self.provision_once(job, lock, snapshot, was_new).await {
            Ok(outcome) => return Ok(outcome),
            Err(Stop::Failed(e)) => return Err(e),
            Err(Stop::EntryChanged(e)) => e,
        };
        tracing::info!(error = %changed, "the registry entry changed meanwhile; reading it again");
        let snapshot = self.read(job).await?;
        match self.provision_once(job, lock, snapshot, was_new).await {
            Ok(outcome) => Ok(outcome),
            Err(Stop::Failed(e)) => Err(e),
            Err(Stop::EntryChanged(e)) => Err(e.into_error("provisioning", job.uuid())),
        }
    }

    /// A registry failure at `step` as provisioning under the lock reads it.
    pub(super) fn stop(&self, job: &Job<'_>, step: &'static str, e: RegistryError) -> Stop {
        if e.entry_changed() {
            Stop::EntryChanged(e)
        } else {
            Stop::Failed(e.into_error(step, job.uuid()))
        }
    }

    async fn provision_once(
        &self,
        job: &Job<'_>,
        _lock: &Held,
        snapshot: Snapshot,
        was_new: bool,
    ) -> Result<Outcome, Stop> {
        let assessment = self.assess(job, &snapshot, job.mode);
        if assessment.healthy() && !job.rotate {
            return Ok(Outcome::plain(Status::AlreadyProvisioned, job));
        }
        if assessment.usable.is_some() && !job.rotate {
            // The stored credential is good; only stale ones need to go.
            self.revoke_all(job, &assessment.extras)
                .await
                .map_err(|e| self.stop(job, "revoking an old credential", e))?;
            return Ok(Outcome::plain(Status::Repaired, job));
        }
        let status = if job.rotate && assessment.usable.is_some() {
            Status::Rotated
        } else if snapshot.holds_nothing_of_ours() || was_new {
            Status::Created
        } else {
            Status::Repaired
        };
        let material = NewMaterial::new(job.mode, self.key_algorithm)?;
        let registration = self
            .registry
            .register(
                job.deadline,
                job.device(),
                &snapshot.state,
                material.material(),
            )
            .await
            .map_err(|e| self.stop(job, "registering the credential", e))?;
        let mut journal = Journal::new(snapshot.target);
        journal.registered(&registration);
        let swapped = self
            .swap(
                job,
                &snapshot,
                assessment.named.as_ref(),
                &material,
                &registration.credential,
                journal,
            )
            .await?;
        Ok(Outcome {
            variables: swapped.variables,
            ..Outcome::plain(status, job)
        })
    }

    /// Puts a registered `credential` in the place of what `snapshot` shows, the lock held:
    /// activates it beside `kept` (the credential the variables name until they change) while
    /// its variables are stored, then retires the function's other credentials. On failure the
    /// `journal` (which holds the registration) is unwound: the variables back as they were,
    /// the new credential dropped.
    pub(super) async fn swap(
        &self,
        job: &Job<'_>,
        snapshot: &Snapshot,
        kept: Option<&RegisteredCredential>,
        material: &NewMaterial<'_>,
        credential: &RegisteredCredential,
        mut journal: Journal,
    ) -> Result<Swapped, Stop> {
        let vars = self
            .registry
            .variables(job.uuid(), credential, material.private_pem());
        // With a CSR the device keeps its key: a private key stored earlier must go.
        let private_name = self.registry.private_key_variable();
        let stored_private = snapshot
            .record
            .vars
            .get(private_name)
            .filter(|_| material.private_pem().is_none());
        for (name, value) in &vars {
            journal.record(Step::VarSet {
                name,
                value: value.clone(),
                before: snapshot.record.vars.get(*name).cloned(),
            });
        }
        if let Some(old) = stored_private {
            journal.record(Step::VarsDeleted(
                [(private_name.to_string(), old.clone())].into(),
            ));
        }
        let writes = vars.iter().map(|(name, value)| {
            let existing = snapshot.record.vars.get(*name).map(|v| v.id);
            self.balena
                .write_var(job.deadline, snapshot.target, existing, name, value)
        });
        let removal = async {
            match stored_private {
                Some(_) => {
                    self.balena
                        .delete_vars(job.deadline, snapshot.target, &[private_name])
                        .await
                }
                None => Ok(()),
            }
        };
        let (activated, written, removed) = tokio::join!(
            self.registry.activate(
                job.deadline,
                job.device(),
                &snapshot.state,
                kept,
                credential
            ),
            futures::future::join_all(writes),
            removal,
        );
        let store_failure = written
            .into_iter()
            .chain(std::iter::once(removed))
            .find_map(Result::err);
        let failure = match (activated, store_failure) {
            (Ok(()), None) => None,
            (Err(e), _) => Some(self.stop(job, "activating the credential", e)),
            (Ok(()), Some(f)) => Some(Stop::Failed(ProvisionError::balena(
                "storing the variables",
                f,
            ))),
        };
        if let Some(e) = failure {
            // The variables back as they were, then the new credential dropped.
            journal.unwind(self, job).await;
            return Err(e);
        }
        // Only now, with the new credential stored and usable, do the old ones go (not one
        // that is not the function's: it stays as it is). A rotation with a CSR for the key
        // already registered makes "new" the old one (ClearBlade names a credential by its
        // key): it is never its own predecessor.
        let old: Vec<RegisteredCredential> = snapshot
            .state
            .credentials
            .iter()
            .filter(|c| c.is_ours() && c.id != credential.id)
            .cloned()
            .collect();
        let mut retired = true;
        if !old.is_empty()
            && let Err(e) = self
                .registry
                .retire_replaced(job.deadline, job.device(), kept, credential, &old)
                .await
        {
            // An old credential that still works must stay named by the variables: put them
            // back and drop the new one. One that no longer works is only litter, which the
            // next request clears; the device has what it needs.
            if self.still_active(job, &snapshot.state.credentials).await {
                journal.unwind(self, job).await;
                return Err(self.stop(job, "revoking an old credential", e));
            }
            tracing::warn!(error = %e, "an old credential is disabled but not yet deleted; the next request removes it");
            retired = false;
        }
        let mut variables: Vec<String> = vars.iter().map(|(n, _)| n.to_string()).collect();
        if stored_private.is_some() {
            variables.push(private_name.to_string());
        }
        Ok(Swapped { variables, retired })
    }
}

/// What a swap came to.
pub(super) struct Swapped {
    /// The variables it wrote or deleted.
    pub(super) variables: Vec<String>,
    /// No old credential of the function's is left.
    pub(super) retired: bool,
}

/// Why provisioning under the lock stopped short.
pub(super) enum Stop {
    /// The registry entry changed under this request, which held the lock: made, changed or
    /// removed by a request that did not need the lock for it. Worth one more attempt.
    EntryChanged(RegistryError),
    Failed(ProvisionError),
}

impl From<ProvisionError> for Stop {
    fn from(e: ProvisionError) -> Stop {
        Stop::Failed(e)
    }
}

/// Why the fast path did not finish.
enum FastPathError {
    /// The device changed since it was read: provisioning goes on under the lock.
    Conflict,
    Failed(ProvisionError),
}

/// The key material for a new credential: the device's CSR, or a key pair made here.
pub(super) enum NewMaterial<'a> {
    Csr(&'a DeviceCsr),
    Generated(DeviceKey),
}

impl<'a> NewMaterial<'a> {
    pub(super) fn new(mode: KeyMode<'a>, algorithm: KeyAlgorithm) -> Result<Self, ProvisionError> {
        match mode {
            KeyMode::Csr(csr) => Ok(NewMaterial::Csr(csr)),
            KeyMode::Generated | KeyMode::Either => DeviceKey::generate_with(algorithm)
                .map(NewMaterial::Generated)
                .map_err(ProvisionError::Internal),
        }
    }

    pub(super) fn material(&self) -> Material<'_> {
        match self {
            NewMaterial::Csr(csr) => Material::Csr(csr),
            NewMaterial::Generated(key) => Material::Generated(key),
        }
    }

    /// The private key to store, when this function made it.
    pub(super) fn private_pem(&self) -> Option<&Secret> {
        match self {
            NewMaterial::Csr(_) => None,
            NewMaterial::Generated(key) => Some(key.private_pem()),
        }
    }
}
