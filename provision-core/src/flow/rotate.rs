//! POST `rotate`, the fast way: the lock taken beside reading the registry and making the new
//! credential, then activation beside storing the variables, then the old credential retired.
//! The lock says what it is for (the new key in use, and the only credential of the
//! function's left), so once the rotation is done the next request knows it is free without
//! a release.
//!
//! Its lock is taken from balenaCloud's record alone, before the registry's side is known:
//! the previous lock looked done there (see [`Provisioner::looks_free`]). Should the registry
//! show its holder not yet finished (a rotation still retiring its old credential), this
//! request, holding the lock after it, waits for that holder before it changes anything.

use crate::balena::{DeviceRecord, VarTarget};
use crate::error::ProvisionError;
use crate::registry::RegistryState;

use super::lock::{Goal, Taken, lock_failure};
use super::provision::{NewMaterial, Stop};
use super::snapshot::Snapshot;
use super::undo::Journal;
use super::{Job, Outcome, Provisioner, Status};

impl Provisioner {
    /// Whether a POST may rotate the fast way from balenaCloud's record alone: `rotate` asked
    /// for, variables stored, and the device's lock looking free.
    pub(super) fn rotates_early(
        &self,
        job: &Job<'_>,
        record: &DeviceRecord,
        target: VarTarget,
    ) -> bool {
        job.rotate && !record.vars.is_empty() && self.looks_free(record, target)
    }

    /// Rotation from `record` and, where it was read already, the registry's `state` (read
    /// beside taking the lock otherwise). A device with no usable credential to rotate from,
    /// or a lock another request took first, is provisioned the ordinary way, under the lock.
    pub(super) async fn rotate(
        &self,
        job: &Job<'_>,
        record: DeviceRecord,
        target: VarTarget,
        state: Option<RegistryState>,
    ) -> Result<Outcome, ProvisionError> {
        let material = NewMaterial::new(job.mode, self.key_algorithm)?;
        let goal = Goal::Key {
            key: material.material().public_key().fingerprint(),
            private: material.private_pem().is_some(),
            sole: true,
        };
        let claim = self.claim_after(job, &record, target, Some(goal));
        let before = claim.generation - 1;
        let vars = record.values();
        let read = async {
            match state {
                Some(state) => Ok(state),
                None => {
                    self.registry
                        .inspect_named(job.deadline, &job.device_id, &vars)
                        .await
                }
            }
        };
        // A device with variables stored has an entry: the credential is made for it (should
        // it have none, the state read beside says so, and the credential is dropped).
        let entry = RegistryState {
            entry: true,
            ..RegistryState::default()
        };
        let (taken, state, registered) = tokio::join!(
            self.take_for_goal(job, &record, claim),
            read,
            self.registry
                .register(job.deadline, job.device(), &entry, material.material()),
        );
        let mut journal = Journal::new(target);
        if let Ok(registration) = &registered {
            journal.registered(registration);
        }
        let lock = match taken {
            Taken::Ours(lock) => lock,
            Taken::Theirs => {
                // Another request is changing the device: wait for it, then rotate under the
                // lock from what it left.
                journal.unwind(self, job).await;
                return self.provision_again(job, false).await;
            }
            Taken::Unknown(lock, f) => {
                lock.undo_and_release(self, job, journal).await;
                return Err(lock_failure(job.uuid(), f));
            }
        };
        // What the rotation stands on: the registry as read, the new credential registered, and
        // the previous holder finished. Any failure here undoes this request's work alone.
        let ready = async {
            let state = state.map_err(|e| e.into_error("reading the registry", job.uuid()))?;
            let registration =
                registered.map_err(|e| e.into_error("registering the credential", job.uuid()))?;
            let own = Some(registration.credential.id.as_str());
            let mut snapshot = Snapshot {
                state: self.owned(state, &record),
                record,
                target,
            };
            if !self.done_before(&snapshot, before, own) {
                tracing::info!(
                    "the previous holder of the device lock is still finishing; waiting"
                );
                snapshot = self.await_predecessor(job, before, own).await?;
            }
            Ok((snapshot, registration))
        };
        let (snapshot, registration) = match ready.await {
            Ok(ready) => ready,
            Err(e) => {
                lock.undo_and_release(self, job, journal).await;
                return Err(e);
            }
        };
        let assessment = self.assess(job, &snapshot, job.mode);
        if assessment.usable.is_none() {
            // Nothing usable to rotate from: a repair, under a lock taken afresh.
            let was_new = snapshot.holds_nothing_of_ours();
            lock.undo_and_release(self, job, journal).await;
            return self.provision_again(job, was_new).await;
        }
        match self
            .swap(
                job,
                &snapshot,
                assessment.named.as_ref(),
                &material,
                &registration.credential,
                journal,
            )
            .await
        {
            Ok(swapped) => {
                if swapped.retired {
                    lock.reached();
                } else {
                    // An old credential is left (disabled): the goal is not reached, and the
                    // next request must not wait for it.
                    lock.release(self, job).await;
                }
                Ok(Outcome {
                    variables: swapped.variables,
                    ..Outcome::plain(Status::Rotated, job)
                })
            }
            // Made, changed or removed by a request that did not need the lock for it (a
            // DELETE that lost the race): once more, under a lock taken afresh.
            Err(Stop::EntryChanged(e)) => {
                tracing::info!(error = %e, "the registry entry changed meanwhile; rotating under the lock");
                lock.release(self, job).await;
                self.provision_again(job, false).await
            }
            Err(Stop::Failed(e)) => {
                lock.release(self, job).await;
                Err(e)
            }
        }
    }
}
