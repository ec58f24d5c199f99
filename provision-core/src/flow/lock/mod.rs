//! The device lock: generation `n + 1` of the device's `provision-lock-<n>` tag (see the
//! module above), what its tag values say, and the guards a request holds it with.
//!
//! Taking the lock gives a guard that must be ended: a [`Held`] lock by [`Held::release`], a
//! [`GoalLock`] (one that says what it is for) by [`GoalLock::reached`], leaving it for the
//! next request to read as done, or by [`GoalLock::undo_and_release`]. Work that needs the
//! lock takes a `&Held` as proof, which a goal lock cannot give: whatever more a device needs
//! after a fast path gave way is done under a lock taken afresh.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::balena::{DeviceRecord, VarTarget};
use crate::error::{ProvisionError, UpstreamFailure};
use crate::ids::{BalenaDeviceId, DeviceUuid};
use crate::registry::RegisteredCredential;
use crate::retry::Deadline;
use crate::secret::Secret;

mod value;

use value::target_word;
pub(super) use value::{Goal, LockValue, now_ms};

use super::snapshot::Snapshot;
use super::undo::Journal;
use super::{Job, Provisioner};

/// A lock this request is about to take: the generation after the latest it read.
pub(super) struct Claim {
    device: BalenaDeviceId,
    pub(super) generation: u64,
    value: LockValue,
}

/// The lock, held by this request with nothing said about what it is for.
#[must_use = "a held lock must be released"]
pub(super) struct Held(Claim);

/// The lock, taken for a goal: it is left in place once the goal is reached, or this request's
/// own writes are undone and it is released. Nothing else may follow it.
#[must_use = "a goal lock ends with its goal reached, or its writes undone and released"]
pub(super) struct GoalLock(Claim);

/// How taking a lock went.
pub(super) enum Taken<L> {
    /// This request holds it.
    Ours(L),
    /// Another request took that generation first.
    Theirs,
    /// Unknown (the call failed): it may exist, so it is released like one held.
    Unknown(L, UpstreamFailure),
}

impl Held {
    /// Marks the lock released (its tag stays: the next change follows its generation).
    pub(super) async fn release(self, provisioner: &Provisioner, deadline: Deadline) {
        release(provisioner, deadline, self.0).await
    }
}

impl GoalLock {
    /// The goal is reached: the tag stays as it is, and the next request reads it as free.
    pub(super) fn reached(self) {}

    /// The goal will not be reached by this request: its own writes are undone (an empty
    /// journal when what it did is to stay, as a removal's), then the lock is released.
    pub(super) async fn undo_and_release(
        self,
        provisioner: &Provisioner,
        job: &Job<'_>,
        journal: Journal,
    ) {
        journal.unwind(provisioner, job).await;
        release(provisioner, job.deadline, self.0).await
    }

    /// The goal will not be reached by this request, and what it did stays (a removal's
    /// deletions): the lock is released.
    pub(super) async fn release(self, provisioner: &Provisioner, job: &Job<'_>) {
        release(provisioner, job.deadline, self.0).await
    }
}

async fn release(provisioner: &Provisioner, deadline: Deadline, claim: Claim) {
    // Released even when the budget is spent: a lock left held would stall the next request.
    let deadline = deadline.extended(provisioner.reserve());
    let deadline = if deadline.remaining() < Duration::from_secs(2) {
        Deadline::after(Duration::from_secs(2))
    } else {
        deadline
    };
    let released = LockValue {
        released: true,
        ..claim.value.clone()
    };
    if let Err(f) = provisioner
        .balena
        .rewrite_lock(
            deadline,
            claim.device,
            claim.generation,
            &claim.value.to_string(),
            &released.to_string(),
        )
        .await
    {
        tracing::error!(error = %f, "could not release the device lock; it expires by itself");
    }
}

/// Which generation a request waiting for the lock may take regardless of what it says.
#[derive(Clone, Copy, Default)]
pub(super) struct Wait {
    /// A generation this request already found free (done, released or expired); it stays so,
    /// whatever happened to the device since (this request's own first steps may have undone
    /// what it was for).
    pub(super) seen_free: Option<u64>,
    /// This request removed credentials beside another's taking of the lock (a DELETE that
    /// lost the race), so the registry may no longer hold the key the lock was taken for: its
    /// variables, which that removal left alone, stand for it.
    pub(super) disturbed: bool,
}

impl Provisioner {
    /// The lock after `snapshot`'s latest, for this job, with a goal or none.
    pub(super) fn claim(&self, job: &Job<'_>, snapshot: &Snapshot, goal: Option<Goal>) -> Claim {
        self.claim_after(job, &snapshot.record, snapshot.target, goal)
    }

    /// The lock after the latest of `record` (balenaCloud's side of a snapshot), whose
    /// variables go to `target`.
    pub(super) fn claim_after(
        &self,
        job: &Job<'_>,
        record: &DeviceRecord,
        target: VarTarget,
        goal: Option<Goal>,
    ) -> Claim {
        let generation = record
            .head_lock()
            .map_or(1, |h| h.generation.saturating_add(1));
        let holder: String = job
            .request_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect();
        Claim {
            device: record.device_id,
            generation,
            value: LockValue {
                holder: if holder.is_empty() {
                    "request".to_owned()
                } else {
                    holder
                },
                until: now_ms() + self.budget.as_millis() as u64 + 5_000,
                goal: goal.map(|g| (g, target_word(target))),
                released: false,
            },
        }
    }

    /// Takes the lock for its goal: see [`Provisioner::take`].
    pub(super) async fn take_for_goal(
        &self,
        job: &Job<'_>,
        record: &DeviceRecord,
        claim: Claim,
    ) -> Taken<GoalLock> {
        match self.take(job, record, claim).await {
            Taken::Ours(Held(c)) => Taken::Ours(GoalLock(c)),
            Taken::Theirs => Taken::Theirs,
            Taken::Unknown(Held(c), f) => Taken::Unknown(GoalLock(c), f),
        }
    }

    /// Takes the lock `claim` names, deleting beside it lock tags of `record` so old that no
    /// request can still follow them.
    async fn take(&self, job: &Job<'_>, record: &DeviceRecord, claim: Claim) -> Taken<Held> {
        let device = record.device_id;
        let head = record.head_lock().map(|h| h.generation);
        // A request follows the generation it read within its own budget: a tag whose holder's
        // time ended two budgets ago is past following (and never the latest one).
        let horizon = now_ms().saturating_sub(2 * self.budget.as_millis() as u64);
        let stale: Vec<i64> = record
            .locks
            .iter()
            .filter(|l| Some(l.generation) != head && LockValue::read(&l.value).until < horizon)
            .map(|l| l.id)
            .collect();
        let tidy = async {
            if !stale.is_empty()
                && let Err(f) = self.balena.delete_locks(job.deadline, device, &stale).await
            {
                tracing::warn!(error = %f, "could not delete old lock tags; the next change tries again");
            }
        };
        let value = claim.value.to_string();
        let (taken, ()) = tokio::join!(
            self.balena
                .try_lock(job.deadline, device, claim.generation, &value),
            tidy
        );
        match taken {
            Ok(true) => Taken::Ours(Held(claim)),
            Ok(false) => Taken::Theirs,
            Err(f) => Taken::Unknown(Held(claim), f),
        }
    }

    /// Waits, within half the remaining budget, until the device's lock is free, and takes it.
    /// Returns it with the state read just before taking it, which is current: any change
    /// since would have taken the lock first.
    async fn acquire(&self, job: &Job<'_>, wait: Wait) -> Result<(Held, Snapshot), ProvisionError> {
        let mut patience = Patience::new(job);
        loop {
            let snapshot = self.read(job).await?;
            let head = snapshot.record.head_lock().map(|h| h.generation);
            if (head.is_some() && head == wait.seen_free)
                || self.lock_free_as(&snapshot, false, wait.disturbed)
            {
                let claim = self.claim(job, &snapshot, None);
                match self.take(job, &snapshot.record, claim).await {
                    Taken::Ours(held) => return Ok((held, snapshot)),
                    Taken::Theirs => {}
                    Taken::Unknown(held, f) => {
                        held.release(self, job.deadline).await;
                        return Err(lock_failure(job.uuid(), f));
                    }
                }
            }
            if !patience.pause().await {
                return Err(gave_up(job, &snapshot));
            }
        }
    }

    /// Waits, within half the remaining budget, until the lock of `generation` is done: this
    /// request took the one after it from balenaCloud's record alone, and the registry showed
    /// its holder not yet finished. Returns the state read then, which is current (this request
    /// holds the lock).
    pub(super) async fn await_predecessor(
        &self,
        job: &Job<'_>,
        generation: u64,
        own: Option<&str>,
    ) -> Result<Snapshot, ProvisionError> {
        let mut patience = Patience::new(job);
        loop {
            let snapshot = self.read(job).await?;
            if self.done_before(&snapshot, generation, own) {
                return Ok(snapshot);
            }
            if !patience.pause().await {
                return Err(gave_up(job, &snapshot));
            }
        }
    }

    /// Waits for the lock, runs `work` under it with the state read just before taking it,
    /// and releases it, whatever the work came to.
    pub(super) async fn locked<T>(
        &self,
        job: &Job<'_>,
        wait: Wait,
        work: impl AsyncFnOnce(&Held, Snapshot) -> Result<T, ProvisionError>,
    ) -> Result<T, ProvisionError> {
        let (lock, snapshot) = self.acquire(job, wait).await?;
        let result = work(&lock, snapshot).await;
        lock.release(self, job.deadline).await;
        result
    }

    /// Whether the device's latest lock leaves it free to change, as `snapshot` shows it: none,
    /// released, expired (a holder that crashed), or done, what it was taken for being so (a
    /// fast path's key in use; nothing left after a removal). `removal`: for DELETE, a key in
    /// use also shows as the variables naming it.
    pub(super) fn lock_free(&self, snapshot: &Snapshot, removal: bool) -> bool {
        self.lock_free_as(snapshot, removal, false)
    }

    /// [`Provisioner::lock_free`] for a request that may have disturbed the holder's goal (see
    /// [`Wait::disturbed`]).
    fn lock_free_as(&self, snapshot: &Snapshot, removal: bool, disturbed: bool) -> bool {
        snapshot.record.head_lock().is_none_or(|head| {
            let value = LockValue::read(&head.value);
            self.done(&value, snapshot, removal, disturbed, None)
        })
    }

    /// Whether the lock of `generation` (the one before a lock this request took without
    /// knowing the registry's side) is done, as `snapshot` shows it: its holder changes the
    /// device no more. `own`: the credential this request registered, which is not the
    /// holder's.
    pub(super) fn done_before(
        &self,
        snapshot: &Snapshot,
        generation: u64,
        own: Option<&str>,
    ) -> bool {
        snapshot
            .record
            .locks
            .iter()
            .find(|l| l.generation == generation)
            .is_none_or(|l| self.done(&LockValue::read(&l.value), snapshot, false, false, own))
    }

    /// Whether the device's latest lock looks free from balenaCloud's record alone: free by
    /// itself, or taken for a key that the variables, all written, name (the registry's side,
    /// that it holds the key, is for the caller to check once it has read it).
    pub(super) fn looks_free(&self, record: &DeviceRecord, target: VarTarget) -> bool {
        let Some(head) = record.head_lock() else {
            return true;
        };
        let value = LockValue::read(&head.value);
        if value.is_free_by_itself() {
            return true;
        }
        match &value.goal {
            Some((Goal::Key { key, private, .. }, word)) if *word == target_word(target) => {
                let vars = record.values();
                self.written(&vars, *private)
                    && self
                        .registry
                        .stored_public_key(&vars)
                        .is_some_and(|k| k.fingerprint() == *key)
            }
            _ => false,
        }
    }

    /// Whether the variables a holder writes last are all there (the private key's only where
    /// it stores one).
    fn written(&self, vars: &BTreeMap<String, Secret>, private: bool) -> bool {
        let private_name = self.registry.private_key_variable();
        self.registry
            .variable_names()
            .iter()
            .filter(|n| **n != private_name || private)
            .all(|n| vars.contains_key(*n))
    }

    /// Whether a lock's `value` leaves the device free to change, as `snapshot` shows it (see
    /// [`Provisioner::lock_free`]), the credential with id `own` left out.
    fn done(
        &self,
        value: &LockValue,
        snapshot: &Snapshot,
        removal: bool,
        disturbed: bool,
        own: Option<&str>,
    ) -> bool {
        if value.is_free_by_itself() {
            return true;
        }
        let Some((goal, target)) = &value.goal else {
            return false;
        };
        let ours = || {
            snapshot
                .state
                .credentials
                .iter()
                .filter(|c| c.is_ours() && Some(c.id.as_str()) != own)
        };
        // A goal is about the variables of one target (the device's, or one service's): a
        // request reading another target's judges it by the registry alone (the holder's
        // variables are created, never overwritten, so any still arriving lose nothing).
        if *target != target_word(snapshot.target) {
            return match goal {
                Goal::Key { key, sole, .. } => {
                    let is_key = |c: &RegisteredCredential| {
                        c.public_key
                            .as_ref()
                            .is_none_or(|k| k.fingerprint() == *key)
                    };
                    snapshot
                        .state
                        .credentials
                        .iter()
                        .any(|c| c.active && is_key(c))
                        && (!sole || ours().all(is_key))
                }
                Goal::Gone => ours().next().is_none(),
            };
        }
        match goal {
            // An empty entry does not count: a racing fast path that lost the lock may have made
            // one after the holder read the device (the next request uses or removes it).
            Goal::Gone => snapshot.holds_nothing_of_ours(),
            // Done once its variables exist (the private key's too where the holder stores one)
            // and the registry holds the key: those are the holder's last writes (whatever has
            // happened to their values since, by hand or not). A rotation's (`sole`) also once
            // no other credential of the function's is left: retiring the old one is its last.
            Goal::Key { key, private, sole } => {
                let vars = snapshot.vars();
                let named_is_key = self
                    .registry
                    .stored_public_key(&vars)
                    .is_some_and(|k| k.fingerprint() == *key);
                let is_key = |c: &RegisteredCredential| {
                    c.public_key
                        .as_ref()
                        .is_some_and(|k| k.fingerprint() == *key)
                        || (named_is_key && self.registry.is_named_by(&vars, c))
                };
                let holds_key = snapshot.state.credentials.iter().any(is_key);
                let alone = !sole || ours().all(is_key);
                // For DELETE the variables naming the key stand for it.
                self.written(&vars, *private)
                    && (holds_key || (removal && named_is_key) || disturbed)
                    && alone
            }
        }
    }
}

/// Waiting for another request's lock: pauses growing from 20 ms to 400 ms, with jitter, for
/// at most half the budget left when the wait began.
struct Patience {
    give_up: tokio::time::Instant,
    base: Duration,
}

impl Patience {
    fn new(job: &Job<'_>) -> Self {
        Patience {
            give_up: tokio::time::Instant::now() + job.deadline.remaining() / 2,
            base: Duration::from_millis(20),
        }
    }

    /// Pauses, unless that would end past the wait's bound: then `false` at once.
    async fn pause(&mut self) -> bool {
        let pause = self.base.mul_f64(0.5 + fastrand::f64());
        if tokio::time::Instant::now() + pause >= self.give_up {
            return false;
        }
        tokio::time::sleep(pause).await;
        self.base = (self.base * 2).min(Duration::from_millis(400));
        true
    }
}

/// The answer to a request that waited for the lock in vain: busy, logged with what held it.
fn gave_up(job: &Job<'_>, snapshot: &Snapshot) -> ProvisionError {
    let held = snapshot
        .record
        .head_lock()
        .map(|h| h.value.clone())
        .unwrap_or_default();
    tracing::warn!(lock = %held, vars = snapshot.record.vars.len(), credentials = snapshot.state.credentials.len(), "gave up waiting for the device lock");
    ProvisionError::Busy(job.uuid().to_string())
}

/// Why taking the lock failed, as the caller reads it: a device deleted since it was read is
/// not found (404), not an upstream failure.
pub(super) fn lock_failure(uuid: &DeviceUuid, failure: UpstreamFailure) -> ProvisionError {
    match failure {
        UpstreamFailure::Refused { status: 404, .. } => {
            ProvisionError::DeviceNotFound(uuid.to_string())
        }
        failure => ProvisionError::balena("taking the device lock", failure),
    }
}
