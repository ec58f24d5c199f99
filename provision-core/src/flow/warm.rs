//! Start-up's share of the work: what a new process's first request would otherwise do (the
//! registry's own credentials fetched or resolved, the TLS roots loaded, connections to
//! balenaCloud and the registry opened, and the crypto library's random generator seeded, which
//! makes a process's first key pair cost ~40 ms of CPU instead of ~0.05), done once, before the
//! host serves, within a bound. A fleet coming online at once meets new instances: their first
//! request should cost what any request costs.
//!
//! Nothing here writes, and nothing here can stop a process from starting: an upstream that
//! does not answer in time is left for the first request to reach, as it would have anyway.

use std::fmt;
use std::time::{Duration, Instant};

use super::Provisioner;
use crate::credentials::DeviceKey;
use crate::retry::Deadline;

/// What start-up did ahead of the first request, for its one log line.
#[derive(Debug)]
pub struct WarmUp {
    pub elapsed: Duration,
    /// balenaCloud: `Ok` when every connection opened and it answered.
    pub balena: Result<(), String>,
    /// The registry: what answered, or why nothing did.
    pub registry: Result<(), String>,
    /// The key pair made (and dropped) to seed the random generator.
    pub crypto: Result<(), String>,
}

impl WarmUp {
    pub fn complete(&self) -> bool {
        self.balena.is_ok() && self.registry.is_ok() && self.crypto.is_ok()
    }
}

impl fmt::Display for WarmUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = |r: &Result<(), String>| match r {
            Ok(()) => "ready".to_owned(),
            Err(why) => format!("left to the first request ({why})"),
        };
        write!(
            f,
            "{} ms: balenaCloud {}, registry {}, key generation {}",
            self.elapsed.as_millis(),
            part(&self.balena),
            part(&self.registry),
            part(&self.crypto)
        )
    }
}

impl Provisioner {
    /// Does start-up's share (see the module) within `budget`: balenaCloud and the registry
    /// side by side, each stopped where the budget ends.
    pub async fn warm(&self, budget: Duration) -> WarmUp {
        let started = Instant::now();
        let deadline = Deadline::after(budget);
        // An EC key whatever the setting: the seeding is the same, and it costs nothing more.
        // On a thread of its own, so the CPU work overlaps the network's.
        let crypto = async {
            tokio::task::spawn_blocking(|| DeviceKey::generate().map(|_| ()))
                .await
                .map_err(|e| e.to_string())?
        };
        // As many connections to balenaCloud as a request uses at once: two for its first round
        // trip (the caller's proof and the device read), one per variable created together.
        let balena_at_once = self.registry.variable_names().len().max(2);
        let (balena, registry, crypto) = tokio::join!(
            within(deadline, self.balena.warm(deadline, balena_at_once)),
            within(deadline, self.registry.warm(deadline)),
            within(deadline, crypto),
        );
        WarmUp {
            elapsed: started.elapsed(),
            balena,
            registry,
            crypto,
        }
    }
}

/// `work`'s outcome in words, or that it did not end before `deadline`.
async fn within<E: fmt::Display>(
    deadline: Deadline,
    work: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(deadline.remaining(), work).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    }
}
