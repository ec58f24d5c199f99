//! A short memory, per instance, of balena keys that were refused: a caller that keeps sending
//! a key balenaCloud does not know, or a key that is not the device's, costs nothing upstream
//! for a while. Keyed by a hash of the key, never the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::codec::sha256;
use crate::secret::Secret;

/// How long a refusal is remembered: long enough to absorb a retry loop, short enough that a
/// key registered a moment later (a device just provisioned) is soon accepted.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30);

/// At most this many keys are remembered; when full, expired entries go, then all of them.
const CAPACITY: usize = 10_000;

/// Who a refused key turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// balenaCloud does not know the key.
    Unknown,
    /// Another device's key (its uuid).
    Device(String),
    /// A user's or fleet's key, where such keys are not accepted.
    NotADevice,
    /// A device's own key from which balenaCloud hides its device (frozen).
    Hidden,
}

#[derive(Default)]
pub struct RejectedKeys {
    entries: Mutex<HashMap<[u8; 32], (Instant, Refused)>>,
}

impl RejectedKeys {
    /// What the key was refused as, if that is still remembered.
    pub fn get(&self, key: &Secret) -> Option<Refused> {
        let entries = self.entries.lock().ok()?;
        let (at, refused) = entries.get(&sha256(key.expose().as_bytes()))?;
        (at.elapsed() < REMEMBER_FOR).then(|| refused.clone())
    }

    pub fn remember(&self, key: &Secret, refused: Refused) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CAPACITY {
            entries.retain(|_, (at, _)| at.elapsed() < REMEMBER_FOR);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(sha256(key.expose().as_bytes()), (Instant::now(), refused));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_hash_and_forgets_when_full() {
        let keys = RejectedKeys::default();
        let key = Secret::new("some-key");
        assert_eq!(keys.get(&key), None);
        keys.remember(&key, Refused::Unknown);
        assert_eq!(keys.get(&key), Some(Refused::Unknown));
        assert_eq!(keys.get(&Secret::new("other-key")), None);
        let stored = keys.entries.lock().unwrap();
        assert!(
            stored.keys().all(|k| k != "some-key".as_bytes()),
            "the key itself is never stored"
        );
        drop(stored);
        for n in 0..CAPACITY {
            keys.remember(&Secret::new(format!("k{n}")), Refused::NotADevice);
        }
        assert!(keys.entries.lock().unwrap().len() <= CAPACITY);
    }
}
