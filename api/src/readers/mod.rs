//! The log's readers: everything asynchronous follows the one log from a
//! durable checkpoint of its own (analytics, notifications, the webhook
//! outbox), and one live reader feeds subscriptions from the present on.
//!
//! A checkpointed reader runs on a thread of its own: it waits for the
//! durable seq to move past its checkpoint, reads up to [`BATCH_ENTRIES_MAX`]
//! durable entries, applies them to its state, and writes its rows together
//! with the new checkpoint in one atomic batch. The store's row writer
//! writes those batches: a reader's commit waits for the writer's next
//! batch (it rests 25 ms between batches), which the other readers'
//! commits and the rows behind the log share, so under load the readers
//! cost one sled batch (two I/O buffer writes) per 25 ms between them
//! instead of one each. After a crash it resumes from
//! the checkpoint its rows belong to, so nothing is lost and nothing counted
//! twice; what it sends outside (webhooks, live pushes) happens only after
//! its batch is committed, and at least once.

pub mod analytics;
pub mod live;
pub mod notifications;
pub mod webhooks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use graph::log::Entry;
use graph::readers::{ReaderBatch, ReaderRows};
use graph::Graph;

/// Most entries a reader takes in one batch. A step waits for the row
/// writer's next batch (up to 25 ms), so this caps a reader at about 40
/// times as many entries a second: at 1,024, the notifications reader
/// (the slowest, an inbox row per booking) fell 13,000-18,000 entries
/// behind a peak on-sale of 25,000 bookings a second; at 4,096, about 1,000,
/// as the others.
pub const BATCH_ENTRIES_MAX: usize = 4_096;
/// The live reader's pause between batches: it writes nothing, and
/// subscribers should see availability change promptly. (The readers that
/// write are paced by their commits, see above.)
pub const LIVE_BATCH_PAUSE: Duration = Duration::from_millis(5);

/// A reader's identity and behaviour.
pub trait Reader: Send + 'static {
    /// Its id in storage; never reused.
    const ID: u8;
    /// Its name, for logs and metrics.
    const NAME: &'static str;

    /// Applies one durable entry: updates memory, adds row writes to `batch`.
    fn apply(&mut self, rows: &ReaderRows<'_>, entry: &Entry, batch: &mut ReaderBatch) -> Result<(), graph::Error>;

    /// Runs after the batch's last entry is applied, before it is written:
    /// for work done once per batch rather than once per entry.
    fn finish(&mut self, _rows: &ReaderRows<'_>, _batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        Ok(())
    }

    /// Runs after a batch and its checkpoint are written (publish, send).
    fn committed(&mut self, _checkpoint: u64) {}

    /// Rebuilds memory from the rows (after a failed batch, whose partly
    /// applied entries must not count).
    fn reload(&mut self, rows: &ReaderRows<'_>) -> Result<(), graph::Error>;
}

/// A running reader: where it is, and how to stop it.
pub struct ReaderHandle {
    /// The reader's name.
    pub name: &'static str,
    /// The last seq it has processed and committed.
    pub position: tokio::sync::watch::Receiver<u64>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl ReaderHandle {
    /// Waits (bounded) until the reader has processed `seq`; false on timeout.
    pub async fn caught_up(&self, seq: u64, timeout: Duration) -> bool {
        let mut position = self.position.clone();
        tokio::time::timeout(timeout, position.wait_for(|&at| at >= seq)).await.is_ok_and(|r| r.is_ok())
    }

    /// Stops the reader after its current batch.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.lock().expect("reader thread lock poisoned").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `reader` on a thread of its own, from its stored checkpoint.
pub fn spawn<R: Reader>(graph: Arc<Graph>, mut reader: R) -> Result<ReaderHandle, graph::Error> {
    let start = graph.store().reader(R::ID).checkpoint()?;
    let (report, position) = tokio::sync::watch::channel(start);
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("reader-{}", R::NAME))
        .spawn(move || {
            graph::background::run_in_background();
            let mut at = start;
            while !stopping.load(Ordering::Acquire) {
                match step(&graph, &mut reader, at) {
                    Ok(next) => {
                        if next > at {
                            at = next;
                            reader.committed(at);
                            report.send_replace(at);
                        }
                    }
                    Err(error) => {
                        tracing::error!(reader = R::NAME, %error, "log reader failed; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                        if let Err(error) = reader.reload(&graph.store().reader(R::ID)) {
                            tracing::error!(reader = R::NAME, %error, "log reader cannot reload its state");
                        }
                    }
                }
            }
        })
        .map_err(|e| graph::Error::Storage(format!("cannot start the {} reader: {e}", R::NAME)))?;
    Ok(ReaderHandle { name: R::NAME, position, stop, thread: std::sync::Mutex::new(Some(thread)) })
}

/// One round: wait for durable entries after `at`, apply them, commit.
/// Returns the new checkpoint.
fn step<R: Reader>(graph: &Graph, reader: &mut R, at: u64) -> Result<u64, graph::Error> {
    let store = graph.store();
    store.wait_durable_above(at, Duration::from_millis(200));
    let entries = store.read_durable_log(at, BATCH_ENTRIES_MAX)?;
    let Some(last) = entries.last().map(|entry| entry.seq) else {
        return Ok(at);
    };
    apply_and_commit(reader, &store.reader(R::ID), &entries)?;
    Ok(last)
}

/// Applies `entries` and writes the reader's rows with the last entry's seq
/// as its checkpoint.
fn apply_and_commit<R: Reader>(reader: &mut R, rows: &ReaderRows<'_>, entries: &[Entry]) -> Result<(), graph::Error> {
    let Some(last) = entries.last().map(|entry| entry.seq) else { return Ok(()) };
    let mut batch = ReaderBatch::default();
    for entry in entries {
        reader.apply(rows, entry, &mut batch)?;
    }
    reader.finish(rows, &mut batch)?;
    rows.commit(batch, Some(last))
}

/// Big-endian key parts.
pub(crate) fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The big-endian u64 at byte `at` of a stored key; `what` names the key
/// in the error when it is too short.
pub(crate) fn u64_at(key: &[u8], at: usize, what: &'static str) -> Result<u64, graph::Error> {
    key.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or(graph::Error::Corrupt(what))
}
