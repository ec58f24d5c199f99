//! A snapshot: everything known about one device at one moment, as the flow reads it.

use std::collections::BTreeMap;

use crate::balena::{DeviceRecord, VarTarget};
use crate::registry::{RegisteredCredential, RegistryState};
use crate::secret::Secret;

/// Everything known about one device at one moment.
pub(super) struct Snapshot {
    pub(super) record: DeviceRecord,
    pub(super) target: VarTarget,
    pub(super) state: RegistryState,
}

impl Snapshot {
    pub(super) fn vars(&self) -> BTreeMap<String, Secret> {
        self.record.values()
    }

    /// Nothing of ours anywhere: no variables, no credentials (an empty entry may exist).
    pub(super) fn holds_nothing_of_ours(&self) -> bool {
        self.record.vars.is_empty()
            && !self
                .state
                .credentials
                .iter()
                .any(RegisteredCredential::is_ours)
    }

    /// Nothing at all: [`Snapshot::holds_nothing_of_ours`], and no registry entry either.
    pub(super) fn is_empty(&self) -> bool {
        self.holds_nothing_of_ours() && !self.state.entry
    }
}
