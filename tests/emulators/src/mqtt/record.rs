//! What a stand-in records (accepted connections, accepted messages, refusals), and waiting
//! until a condition on it holds.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{Connected, Received, Refusal};
use crate::common::lock;

/// Everything recorded so far, in arrival order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Records {
    pub(crate) connections: Vec<Connected>,
    pub(crate) received: Vec<Received>,
    pub(crate) refusals: Vec<Refusal>,
}

/// The records and a signal that fires on every change.
pub(crate) struct Recorder {
    records: Mutex<Records>,
    changed: watch::Sender<u64>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            records: Mutex::new(Records::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Records)) {
        f(&mut lock(&self.records));
        self.changed.send_modify(|n| *n += 1);
    }

    pub(crate) fn connected(&self, c: Connected) {
        tracing::debug!(client_id = %c.client_id, device = %c.device, "mqtt stand-in: connected");
        self.update(|r| r.connections.push(c));
    }

    pub(crate) fn received(&self, m: Received) {
        self.update(|r| r.received.push(m));
    }

    pub(crate) fn refused(&self, refusal: Refusal) {
        tracing::debug!(%refusal, "mqtt stand-in: refused");
        self.update(|r| r.refusals.push(refusal));
    }

    pub(crate) fn snapshot(&self) -> Records {
        lock(&self.records).clone()
    }

    /// Waits until `check` answers `Some` on the records (checked now and after every change),
    /// at most `timeout`; the error says what was awaited and what was recorded.
    pub(crate) async fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Records) -> Option<T>,
    ) -> anyhow::Result<T> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(found) = check(&lock(&self.records)) {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`: a closed channel cannot happen here.
                Ok(Err(_)) | Err(_) => {
                    let records = self.snapshot();
                    anyhow::bail!(
                        "the MQTT stand-in did not see {what} within {timeout:?}; it recorded \
                         {} connection(s), messages {:?}, refusals {:?}",
                        records.connections.len(),
                        records
                            .received
                            .iter()
                            .map(|m| (&m.client_id, &m.topic))
                            .collect::<Vec<_>>(),
                        records
                            .refusals
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
