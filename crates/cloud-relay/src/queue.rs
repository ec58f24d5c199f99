//! The durable queue between the local broker and the cloud, on redb (an embedded ACID
//! key-value store): a message is acknowledged to the local broker only once it is on disk, and
//! leaves the queue only when the cloud acknowledged it.
//!
//! One writer thread owns every write. It takes whatever is waiting (appends and removals from
//! any number of callers) and writes it in one transaction: a group commit, as databases do, so
//! one `fsync` covers every message that arrived while the previous one ran and durability does
//! not cap the rate. A transaction with an append is committed durably (`Durability::Immediate`:
//! on disk when `commit` returns, so it survives a power loss); one holding only removals is
//! not (`Durability::None`), but for one a second: after a crash a removal may be lost and its
//! message sent again, a duplicate QoS 1 allows, never a loss.
//!
//! Bounded by `max_bytes` of payload: when an append does not fit, the oldest messages are
//! dropped (counted, persisted and logged); a message larger than the whole bound is dropped
//! on arrival.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{Notify, oneshot};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const DROPPED: &str = "dropped";
/// Most operations one transaction takes.
const GROUP_MAX: usize = 8192;
/// redb's page cache: the queue is read front to back, a small cache is enough.
const CACHE_BYTES: usize = 256 * 1024;
/// Longest run of non-durable commits (removals only). redb keeps the pages a non-durable
/// commit frees until the next durable one: a long drain with no append would otherwise grow
/// memory and slow every commit. One `fsync` a second bounds both.
const DURABLE_AT_LEAST_EVERY: Duration = Duration::from_secs(1);

/// A queued message: its position and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub payload: Bytes,
}

/// What the queue holds, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub messages: u64,
    pub bytes: u64,
    /// Messages dropped because the queue was full, since the queue was made.
    pub dropped: u64,
}

enum Op {
    Append(Bytes, oneshot::Sender<Result<(), String>>),
    Remove(u64),
}

struct Shared {
    db: Database,
    stats: Mutex<QueueStats>,
    /// Woken after every commit that appended.
    appended: Notify,
    /// The next id to give.
    next_id: AtomicU64,
}

/// A handle to the queue; clones share it. The writer thread ends when the last handle goes.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    ops: std::sync::mpsc::Sender<Op>,
}

impl Queue {
    /// Opens (or makes) the queue in `dir/queue.redb`.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Queue> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("making the queue directory {}", dir.display()))?;
        let path = dir.join("queue.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .with_context(|| format!("opening the queue {}", path.display()))?;
        let (stats, next_id) = {
            let txn = db.begin_write()?;
            let stats;
            let next_id;
            {
                let messages = txn.open_table(MESSAGES)?;
                let counters = txn.open_table(COUNTERS)?;
                let mut bytes = 0u64;
                for entry in messages.iter()? {
                    bytes += entry?.1.value().len() as u64;
                }
                next_id = messages.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
                stats = QueueStats {
                    messages: messages.len()?,
                    bytes,
                    dropped: counters.get(DROPPED)?.map(|v| v.value()).unwrap_or(0),
                };
            }
            txn.commit()?;
            (stats, next_id)
        };
        let shared = Arc::new(Shared {
            db,
            stats: Mutex::new(stats),
            appended: Notify::new(),
            next_id: AtomicU64::new(next_id),
        });
        let (ops, receiver) = std::sync::mpsc::channel();
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || write_loop(&writer, &receiver, max_bytes))
            .context("starting the queue writer")?;
        Ok(Queue { shared, ops })
    }

    /// Queues a message; returns once it is on disk (or was dropped as too large to ever fit).
    pub async fn append(&self, payload: Bytes) -> anyhow::Result<()> {
        let (done, wait) = oneshot::channel();
        self.ops
            .send(Op::Append(payload, done))
            .map_err(|_| anyhow::anyhow!("the queue writer has stopped"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("queue write failed: {e}")),
            Err(_) => Err(anyhow::anyhow!("the queue writer has stopped")),
        }
    }

    /// Takes a message out (the cloud acknowledged it). Not waited for.
    pub fn remove(&self, id: u64) {
        let _ = self.ops.send(Op::Remove(id));
    }

    /// Up to `max` messages with an id of at least `from`, in order; waits until there is one.
    pub async fn read_from(&self, from: u64, max: usize) -> anyhow::Result<Vec<Queued>> {
        loop {
            let notified = self.shared.appended.notified();
            let found = self.peek_from(from, max)?;
            if !found.is_empty() {
                return Ok(found);
            }
            notified.await;
        }
    }

    /// Up to `max` messages with an id of at least `from`, in order; empty if none.
    pub fn peek_from(&self, from: u64, max: usize) -> anyhow::Result<Vec<Queued>> {
        let txn = self.shared.db.begin_read()?;
        let table = txn.open_table(MESSAGES)?;
        let mut found = Vec::new();
        for entry in table.range(from..)?.take(max) {
            let (id, payload) = entry?;
            found.push(Queued {
                id: id.value(),
                payload: Bytes::copy_from_slice(payload.value()),
            });
        }
        Ok(found)
    }

    pub fn stats(&self) -> QueueStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_loop(shared: &Shared, receiver: &std::sync::mpsc::Receiver<Op>, max_bytes: u64) {
    let mut last_durable = Instant::now();
    while let Ok(first) = receiver.recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match receiver.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        let mut waiters = Vec::new();
        let durable = group.iter().any(|op| matches!(op, Op::Append(..)))
            || last_durable.elapsed() >= DURABLE_AT_LEAST_EVERY;
        if durable {
            last_durable = Instant::now();
        }
        let result = write_group(shared, group, max_bytes, durable, &mut waiters);
        let appended = !waiters.is_empty();
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
        if let Err(e) = &result {
            tracing::error!("queue: a write failed, its messages stay unacknowledged locally: {e}");
        }
        if appended {
            shared.appended.notify_waiters();
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

fn write_group(
    shared: &Shared,
    group: Vec<Op>,
    max_bytes: u64,
    durable: bool,
    waiters: &mut Vec<Waiter>,
) -> Result<(), String> {
    let mut stats = *shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let dropped_before = stats.dropped;
    let mut commit = || -> Result<(), redb::Error> {
        let mut txn = shared.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| {
            redb::Error::from(redb::StorageError::Io(std::io::Error::other(e.to_string())))
        })?;
        {
            let mut messages = txn.open_table(MESSAGES)?;
            for op in &group {
                match op {
                    Op::Remove(id) => {
                        if let Some(old) = messages.remove(*id)? {
                            stats.bytes -= old.value().len() as u64;
                            stats.messages -= 1;
                        }
                    }
                    Op::Append(payload, _) => {
                        let size = payload.len() as u64;
                        if size > max_bytes {
                            stats.dropped += 1;
                            continue;
                        }
                        while stats.bytes + size > max_bytes {
                            let Some((_, old)) = messages.pop_first()? else {
                                break;
                            };
                            stats.bytes -= old.value().len() as u64;
                            stats.messages -= 1;
                            stats.dropped += 1;
                        }
                        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                        messages.insert(id, payload.as_ref())?;
                        stats.bytes += size;
                        stats.messages += 1;
                    }
                }
            }
            if stats.dropped != dropped_before {
                txn.open_table(COUNTERS)?.insert(DROPPED, stats.dropped)?;
            }
        }
        txn.commit()?;
        Ok(())
    };
    let result = commit();
    for op in group {
        if let Op::Append(_, waiter) = op {
            waiters.push(waiter);
        }
    }
    match result {
        Ok(()) => {
            if stats.dropped != dropped_before {
                tracing::warn!(
                    "queue: full ({} bytes of {max_bytes}): dropped the {} oldest message(s), {} dropped in all",
                    stats.bytes,
                    stats.dropped - dropped_before,
                    stats.dropped
                );
            }
            *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
            Ok(())
        }
        Err(e) => {
            // The ids given in the failed transaction are skipped; the in-memory figures are
            // re-read from the last committed state on the next open only, so keep the old ones.
            Err(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "cloud-relay-queue-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn fastrand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        static N: AtomicU64 = AtomicU64::new(0);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ N.fetch_add(1, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn messages_come_out_in_order_and_survive_a_reopen() {
        let dir = dir();
        {
            let queue = Queue::open(&dir, 1 << 20).unwrap();
            let appends: Vec<_> = (0..100)
                .map(|n| {
                    let q = queue.clone();
                    async move { q.append(Bytes::from(format!("m{n}"))).await }
                })
                .collect();
            for r in futures::future::join_all(appends).await {
                r.unwrap();
            }
            let first = queue.read_from(0, 10).await.unwrap();
            assert_eq!(first.len(), 10);
            queue.remove(first[0].id);
            // A durable append after the removal makes the removal durable too.
            queue.append(Bytes::from_static(b"last")).await.unwrap();
            assert_eq!(queue.stats().messages, 100);
        }
        // The writer thread of the first handle has stopped (its channel closed); redb allows
        // one open database per file, so wait until it lets go.
        let queue = loop {
            match Queue::open(&dir, 1 << 20) {
                Ok(q) => break q,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        let all = queue.peek_from(0, 1000).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0].payload, Bytes::from_static(b"m1"));
        assert_eq!(all[99].payload, Bytes::from_static(b"last"));
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_counts_them() {
        let dir = dir();
        let queue = Queue::open(&dir, 64 * 1024).unwrap();
        for n in 0..100u32 {
            let mut payload = vec![0u8; 1024];
            payload[..4].copy_from_slice(&n.to_be_bytes());
            queue.append(Bytes::from(payload)).await.unwrap();
        }
        let stats = queue.stats();
        assert_eq!(stats.messages, 64);
        assert_eq!(stats.dropped, 36);
        let first = queue.peek_from(0, 1).unwrap();
        assert_eq!(&first[0].payload[..4], &36u32.to_be_bytes());
        // Too large for the whole queue: dropped on arrival, the rest kept.
        queue
            .append(Bytes::from(vec![1u8; 65 * 1024]))
            .await
            .unwrap();
        assert_eq!(queue.stats().dropped, 37);
        assert_eq!(queue.stats().messages, 64);
        std::fs::remove_dir_all(dir).ok();
    }
}
