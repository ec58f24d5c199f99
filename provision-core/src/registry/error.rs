//! What a registry call comes to when it does not succeed, in the terms the flow acts on.

use crate::error::{ProvisionError, UpstreamFailure};
use crate::ids::DeviceUuid;

/// Why a registry call did not succeed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RegistryError {
    /// The device's entry changed since the state the call was given was read: made, changed
    /// or removed by a request that did not need the lock for it (a DELETE finishing after its
    /// lock was released, a fast path that lost the race for the lock). Worth one more attempt
    /// from a new read.
    #[error("the registry entry changed meanwhile: {0}")]
    Changed(String),
    /// What the call acts on is not there any more (the entry, or a credential).
    #[error("gone from the registry: {0}")]
    Gone(String),
    /// The registry could not be reached, throttled, or refused for another reason.
    #[error(transparent)]
    Upstream(UpstreamFailure),
    /// A failure before the registry was asked (making a CSR or a certificate).
    #[error("{0}")]
    Local(String),
}

impl RegistryError {
    /// The entry is not as the caller read it: changed, or gone.
    pub fn entry_changed(&self) -> bool {
        matches!(self, RegistryError::Changed(_) | RegistryError::Gone(_))
    }

    /// What the caller of the function reads, for `step` of device `uuid`: an entry that kept
    /// changing is a device another request is changing (503, retry shortly).
    pub fn into_error(self, step: &'static str, uuid: &DeviceUuid) -> ProvisionError {
        match self {
            RegistryError::Changed(detail) | RegistryError::Gone(detail) => {
                tracing::warn!(step, detail, "the registry entry kept changing");
                ProvisionError::Busy(uuid.to_string())
            }
            RegistryError::Upstream(failure) => ProvisionError::cloud(step, failure),
            RegistryError::Local(message) => ProvisionError::Internal(message),
        }
    }
}
