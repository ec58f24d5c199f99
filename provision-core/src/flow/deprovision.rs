//! DELETE: the variables go and the credentials stop working, then whatever is left goes.
//! Variables never name a credential that is gone, and a credential that still works is never
//! left without its variables.

use crate::error::ProvisionError;
use crate::registry::RegistryError;

use super::lock::{Goal, Held, Taken, Wait};
use super::snapshot::Snapshot;
use super::undo::{Journal, Step};
use super::{Job, Outcome, Provisioner, Status};

impl Provisioner {
    pub(super) async fn deprovision(
        &self,
        job: &Job<'_>,
        snapshot: Snapshot,
    ) -> Result<Outcome, ProvisionError> {
        if snapshot.is_empty() {
            return Ok(Outcome::plain(Status::NotProvisioned, job));
        }
        if !self.lock_free(&snapshot, true) {
            // Another request is changing the device: wait for it, then remove what it left.
            return self
                .deprovision_after(job, Wait::default(), Vec::new())
                .await;
        }
        // Nobody was changing the device a moment ago: take the lock while the variables go and
        // the credentials stop working, all at once. Should another request have taken it in
        // between, this one waits for it and then removes whatever it left (removal is what was
        // asked for). The lock says what it is for (nothing left), so once the device is gone
        // the next request knows it is free without a release.
        let claim = self.claim(job, &snapshot, Some(Goal::Gone));
        // Should another request take the lock first, the generation this one read stays free
        // to it: its own removal may have undone what that request's lock was for.
        let lost = Wait {
            seen_free: claim.generation.checked_sub(1),
            disturbed: true,
        };
        let target = snapshot.target;
        let present: Vec<String> = snapshot.record.vars.keys().cloned().collect();
        // Exactly the variables read: should another request be storing some meanwhile, its
        // are left for the removal that follows once it is done.
        let rows: Vec<i64> = snapshot.record.vars.values().map(|v| v.id).collect();
        let (taken, deleted, retired) = tokio::join!(
            self.take_for_goal(job, &snapshot.record, claim),
            self.balena.delete_var_rows(job.deadline, target, &rows),
            self.registry
                .retire(job.deadline, &job.device_id, &snapshot.state),
        );
        let mut journal = Journal::new(target);
        if deleted.is_ok() && !rows.is_empty() {
            journal.record(Step::VarsDeleted(snapshot.record.vars.clone()));
        }
        if retired.is_ok() {
            journal.record(Step::Retired {
                state: snapshot.state.clone(),
                vars: snapshot.vars(),
            });
        }
        let failure = match (&deleted, &retired) {
            (Ok(()), Ok(())) => None,
            (Err(f), _) => Some(ProvisionError::balena("deleting the variables", f.clone())),
            (Ok(()), Err(e)) => Some(e.clone().into_error("revoking the credentials", job.uuid())),
        };
        if let Some(e) = failure {
            // Neither half may stand alone: variables must not name a retired credential, nor a
            // working credential be left without its variables. Variables deleted beside a
            // failed retirement come back only while a credential they name still works.
            let undo = retired.is_ok()
                || (!journal.is_empty()
                    && self.still_active(job, &snapshot.state.credentials).await);
            let journal = if undo { journal } else { Journal::new(target) };
            match taken {
                Taken::Ours(lock) | Taken::Unknown(lock, _) => {
                    lock.undo_and_release(self, job, journal).await
                }
                Taken::Theirs => journal.unwind(self, job).await,
            }
            return Err(e);
        }
        let lock = match taken {
            Taken::Ours(lock) => lock,
            // Another request took the lock meanwhile (or its state is unknown): leave the rest
            // alone while it works, then remove whatever it leaves.
            Taken::Theirs => return self.deprovision_after(job, lost, present).await,
            Taken::Unknown(lock, _) => {
                lock.release(self, job).await;
                return self.deprovision_after(job, lost, present).await;
            }
        };
        // Variables gone, credentials unusable: remove what is left (AWS: the inactive, detached
        // certificates and the thing).
        match self
            .registry
            .purge(job.deadline, &job.device_id, &snapshot.state)
            .await
        {
            Ok(true) => {
                lock.reached();
                Ok(Outcome {
                    variables: present,
                    ..Outcome::plain(Status::Deleted, job)
                })
            }
            Err(f) => {
                lock.release(self, job).await;
                Err(f.into_error("deleting the registry entry", job.uuid()))
            }
            // The entry gained a credential since it was read: a request that started before
            // this one took the lock is finishing; remove what it made too, under a lock taken
            // afresh.
            Ok(false) => {
                lock.release(self, job).await;
                self.deprovision_after(job, Wait::default(), present).await
            }
        }
    }

    /// DELETE under the lock, waiting for it first. `removed`: the variables this request has
    /// already deleted (reported even when nothing is left now).
    async fn deprovision_after(
        &self,
        job: &Job<'_>,
        wait: Wait,
        removed: Vec<String>,
    ) -> Result<Outcome, ProvisionError> {
        let result = self
            .locked(job, wait, async |lock, snapshot| {
                self.deprovision_locked(job, lock, snapshot).await
            })
            .await;
        merge_removed(result, removed)
    }

    /// DELETE with the lock held, from `snapshot` (read just before taking it).
    async fn deprovision_locked(
        &self,
        job: &Job<'_>,
        _lock: &Held,
        snapshot: Snapshot,
    ) -> Result<Outcome, ProvisionError> {
        if snapshot.is_empty() {
            return Ok(Outcome::plain(Status::NotProvisioned, job));
        }
        let present: Vec<String> = snapshot.record.vars.keys().cloned().collect();
        let mut journal = Journal::new(snapshot.target);
        // Variables first: they must never name a credential that is gone.
        if !present.is_empty() {
            self.balena
                .delete_vars(
                    job.deadline,
                    snapshot.target,
                    self.registry.variable_names(),
                )
                .await
                .map_err(|f| ProvisionError::balena("deleting the variables", f))?;
            journal.record(Step::VarsDeleted(snapshot.record.vars.clone()));
        }
        // Where the entry holds the credentials, removing it is the revocation: one call.
        let entry_is_revocation = snapshot.state.entry && self.registry.entry_holds_credentials();
        let revocation = if entry_is_revocation {
            self.remove_entry(job).await
        } else {
            self.revoke_all(job, &snapshot.state.credentials)
                .await
                .map_err(|e| e.into_error("revoking the credentials", job.uuid()))
        };
        if let Err(e) = revocation {
            // A credential that still works must stay named by the variables: put them back.
            if !journal.is_empty() && self.still_active(job, &snapshot.state.credentials).await {
                journal.unwind(self, job).await;
            }
            return Err(e);
        }
        if snapshot.state.entry && !entry_is_revocation {
            self.remove_entry(job).await?;
        }
        Ok(Outcome {
            variables: present,
            ..Outcome::plain(Status::Deleted, job)
        })
    }

    /// Removes the registry entry: the revocation itself where the entry holds the
    /// credentials, else once the credentials read are revoked. An entry that gained a
    /// credential since (AWS: a certificate attached by the request that held the lock before
    /// this one, still finishing its activation when this one read the registry) is read
    /// again, what it holds revoked, and removed once more.
    async fn remove_entry(&self, job: &Job<'_>) -> Result<(), ProvisionError> {
        let mut again = 2;
        loop {
            match self
                .registry
                .remove_entry(job.deadline, &job.device_id)
                .await
            {
                Err(RegistryError::Changed(detail)) if again > 0 => {
                    again -= 1;
                    tracing::info!(
                        detail,
                        "the registry entry changed since it was read; revoking what it holds now"
                    );
                    let state = self
                        .registry
                        .inspect(job.deadline, &job.device_id)
                        .await
                        .map_err(|e| e.into_error("reading the registry", job.uuid()))?;
                    self.revoke_all(job, &state.credentials)
                        .await
                        .map_err(|e| e.into_error("revoking the credentials", job.uuid()))?;
                }
                result => {
                    return result
                        .map_err(|e| e.into_error("deleting the registry entry", job.uuid()));
                }
            }
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
