//! The last assignment the endpoint served, kept in the data directory, so that `iotedged` is
//! told through `status`/`substatus` when its identity changed (it clears its cached state on
//! anything but the assignment it knew).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "iotedge-assignment.json";

/// What identifies an assignment: the hub, the device, and the certificate it proves itself
/// with (by SHA-256 thumbprint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub hub_name: String,
    pub device_id: String,
    pub certificate_sha256: String,
    /// The substatus this assignment was first served with.
    pub substatus: String,
}

/// DPS's substatus values `iotedged` understands.
pub const INITIAL: &str = "initialAssignment";
pub const DATA_RESET: &str = "deviceDataReset";

pub struct AssignmentStore {
    path: PathBuf,
}

impl AssignmentStore {
    pub fn new(dir: &Path) -> AssignmentStore {
        AssignmentStore {
            path: dir.join(FILE),
        }
    }

    fn load(&self) -> Option<Assignment> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The substatus to serve for this identity: `initialAssignment` the first time and while
    /// it stays the same; `deviceDataReset` once it changed (a new certificate after the device
    /// was re-created, another hub), kept until the next change. Persists what it decided.
    pub fn substatus_for(
        &self,
        hub_name: &str,
        device_id: &str,
        certificate_sha256: &str,
    ) -> std::io::Result<String> {
        let same = |a: &Assignment| {
            a.hub_name == hub_name
                && a.device_id == device_id
                && a.certificate_sha256 == certificate_sha256
        };
        let substatus = match self.load() {
            Some(known) if same(&known) => return Ok(known.substatus),
            Some(_) => DATA_RESET,
            None => INITIAL,
        };
        let record = Assignment {
            hub_name: hub_name.to_string(),
            device_id: device_id.to_string(),
            certificate_sha256: certificate_sha256.to_string(),
            substatus: substatus.to_string(),
        };
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, serde_json::to_vec(&record)?)?;
        std::fs::rename(&temporary, &self.path)?;
        Ok(substatus.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_then_stable_then_reset_on_a_new_certificate() {
        let dir = std::env::temp_dir().join(format!("iotedge-assign-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = AssignmentStore::new(&dir);
        assert_eq!(store.substatus_for("hub", "dev", "aa").unwrap(), INITIAL);
        assert_eq!(store.substatus_for("hub", "dev", "aa").unwrap(), INITIAL);
        // A restart keeps it.
        let store = AssignmentStore::new(&dir);
        assert_eq!(store.substatus_for("hub", "dev", "aa").unwrap(), INITIAL);
        assert_eq!(store.substatus_for("hub", "dev", "bb").unwrap(), DATA_RESET);
        assert_eq!(store.substatus_for("hub", "dev", "bb").unwrap(), DATA_RESET);
        assert_eq!(
            store.substatus_for("hub2", "dev", "bb").unwrap(),
            DATA_RESET
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
