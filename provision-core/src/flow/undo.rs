//! Undo as data: a journal of the writes this request made, unwound in one place (latest
//! first) when a later step fails, so the device is left as this request found it.
//!
//! A write is entered once it is known to have happened, or as soon as it is attempted when
//! its undo is harmless had it not (a variable is deleted only while it holds this request's
//! value). Undoing is best effort: what cannot be undone is logged, and the next request
//! clears it.

use std::collections::BTreeMap;

use crate::balena::{StoredVar, VarTarget};
use crate::registry::{RegisteredCredential, Registration, RegistryState};
use crate::secret::Secret;

use super::{Job, Provisioner};

/// One write of this request, with what undoing it needs.
pub(super) enum Step {
    /// The registry entry this request made.
    EntryMade,
    /// A credential this request registered.
    Registered(RegisteredCredential),
    /// A variable this request set to `value`; `before` is what it held (`None`: it did not
    /// exist).
    VarSet {
        name: &'static str,
        value: Secret,
        before: Option<StoredVar>,
    },
    /// Variables this request deleted, with what they held.
    VarsDeleted(BTreeMap<String, StoredVar>),
    /// DELETE's retirement of the device's credentials: `state` as read, `vars` naming the one
    /// to make work again.
    Retired {
        state: RegistryState,
        vars: BTreeMap<String, Secret>,
    },
}

/// The writes of one request, in the order they were made.
pub(super) struct Journal {
    target: VarTarget,
    steps: Vec<Step>,
}

impl Journal {
    /// An empty journal for a device whose variables go to `target`.
    pub(super) fn new(target: VarTarget) -> Self {
        Journal {
            target,
            steps: Vec::new(),
        }
    }

    pub(super) fn record(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// A registration: the entry (when it made one) and the credential.
    pub(super) fn registered(&mut self, registration: &Registration) {
        if registration.created_entry {
            self.record(Step::EntryMade);
        }
        self.record(Step::Registered(registration.credential.clone()));
    }

    /// The entry this request made stays, whatever happens: another request may be using it
    /// (making an entry is idempotent, so both think it theirs).
    pub(super) fn keep_entry(&mut self) {
        self.steps.retain(|s| !matches!(s, Step::EntryMade));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Undoes every step, latest first; consecutive variable steps at once. The variables go
    /// back before the credentials they name are revoked: variables never name a revoked one.
    pub(super) async fn unwind(self, provisioner: &Provisioner, job: &Job<'_>) {
        let deadline = provisioner.cleanup(job);
        let balena = &provisioner.balena;
        let registry = &provisioner.registry;
        let target = self.target;
        let mut steps = self.steps;
        while let Some(step) = steps.pop() {
            match step {
                Step::VarSet { .. } => {
                    let mut batch = vec![step];
                    while matches!(steps.last(), Some(Step::VarSet { .. })) {
                        batch.extend(steps.pop());
                    }
                    let undo = batch.iter().map(|step| async move {
                        let Step::VarSet {
                            name,
                            value,
                            before,
                        } = step
                        else {
                            return Ok(());
                        };
                        match before {
                            Some(old) => {
                                balena
                                    .write_var(deadline, target, Some(old.id), name, &old.value)
                                    .await
                            }
                            None => balena.delete_var_if(deadline, target, name, value).await,
                        }
                    });
                    for result in futures::future::join_all(undo).await {
                        if let Err(f) = result {
                            tracing::error!(error = %f, "could not put back a variable this request set");
                        }
                    }
                }
                Step::VarsDeleted(before) => {
                    // Those another request has stored in the meantime are left as they are.
                    let again = before
                        .iter()
                        .map(|(name, old)| balena.create_var(deadline, target, name, &old.value));
                    for result in futures::future::join_all(again).await {
                        if let Err(f) = result {
                            tracing::error!(error = %f, "could not store again a variable this request deleted");
                        }
                    }
                }
                Step::Registered(credential) => {
                    if let Err(f) = registry
                        .revoke(deadline, &job.device_id, std::slice::from_ref(&credential))
                        .await
                    {
                        tracing::error!(credential = %credential.id, error = %f, "could not remove a credential this request made");
                    }
                }
                Step::EntryMade => {
                    if let Err(f) = registry.remove_entry(deadline, &job.device_id).await {
                        tracing::error!(error = %f, "could not remove the registry entry this request made");
                    }
                }
                Step::Retired { state, vars } => {
                    if let Err(f) = registry
                        .unretire(deadline, &job.device_id, &state, &vars)
                        .await
                    {
                        tracing::error!(error = %f, "could not make the credentials work again after the variables could not be deleted");
                    }
                }
            }
        }
    }
}

impl Provisioner {
    /// Whether any of `credentials` still lets a device in, as far as the registry says now (a
    /// registry that cannot be read counts as "yes"). Asked after a failed revocation: a
    /// credential that still works must stay named by the variables, so they are put back.
    pub(super) async fn still_active(
        &self,
        job: &Job<'_>,
        credentials: &[RegisteredCredential],
    ) -> bool {
        match self
            .registry
            .inspect(self.cleanup(job), &job.device_id)
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
}
