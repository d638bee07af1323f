//! The durable store: one sled tree holding the log and every materialised
//! row, so a record and the state it changes land in one atomic write.
//!
//! Rows that nothing reads while serving (bookings) are the exception:
//! they are written behind the log by a row writer thread (see
//! [`crate::behind`]).
//!
//! Keys start with a one-byte table tag followed by big-endian ids, so each
//! table is a contiguous, id-ordered range.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::behind::{self, Item, WrittenBehind};
use crate::log::{Entry, Record};
use crate::Error;

/// Table tags: the first byte of every key.
pub(crate) mod table {
    /// Log entries by seq.
    pub const LOG: u8 = b'L';
    /// Users by id.
    pub const USER: u8 = b'U';
    /// User id by lower-case email.
    pub const EMAIL: u8 = b'E';
    /// Password hash by user id.
    pub const PASSWORD: u8 = b'P';
    /// Sessions by token hash.
    pub const SESSION: u8 = b'S';
    /// Venues by id.
    pub const VENUE: u8 = b'V';
    /// Events by id.
    pub const EVENT: u8 = b'N';
    /// Ticket types by id.
    pub const TICKET_TYPE: u8 = b'T';
    /// Bookings, grouped by id and written behind the log.
    pub const BOOKING: u8 = b'B';
    /// The users a user follows, by follower id: packed ascending u32 ids.
    pub const FOLLOWING: u8 = b'F';
    /// Attendances imported from another system, by user id: packed
    /// ascending u32 event ids.
    pub const IMPORTED_ATTENDANCE: u8 = b'I';
    /// Webhooks by id.
    pub const WEBHOOK: u8 = b'H';
    /// One row: the highest webhook id ever given. A deleted webhook's id
    /// is never given again (its deliveries, its history and its partner's
    /// receiver all know it by that id).
    pub const WEBHOOK_ID_HIGH: u8 = b'h';
    /// Log readers' checkpoints, by reader id.
    pub const READER_CHECKPOINT: u8 = b'C';
    /// Log readers' own rows, by reader id and the reader's key.
    pub const READER_ROW: u8 = b'R';
    /// One row: the seq up to which the rows written behind the log are
    /// complete.
    pub const ROWS_BEHIND: u8 = b'W';
}

/// A checkpoint-only hand-over to the row writer after this many records
/// without rows behind, so a restart never replays a long stretch of log
/// that holds none.
const BEHIND_CHECKPOINT_EVERY: u64 = 10_000;

/// The newest log entries kept decoded in memory, so the log's readers,
/// which follow close behind the head, get them without reading sled and
/// decoding them again (one decode per entry instead of one per reader).
const RECENT_ENTRIES: usize = if cfg!(test) { 64 } else { 65_536 };

/// Hand-overs the row writer's queue holds at most: beyond it, group
/// commit waits for the writer instead of queueing without bound.
const BEHIND_QUEUE_ROUNDS: usize = 256;

/// After writing a batch the row writer rests this long, so what queues
/// meanwhile goes in one batch. Every sled batch seals and writes sled's
/// I/O buffer twice (a synchronous disk write each, and a wake-up of each
/// of sled's seven idle I/O threads): at a peak on-sale a row batch per
/// group-commit round made about a third of those writes, and a group of
/// 16 bookings was rewritten as each round added to it. Rows behind are
/// read only at start-up, so a little more lag costs nothing. The log's
/// readers commit through the same writer, so this is also about as long
/// as their commits wait, and how often each of them commits under load.
const ROWS_BEHIND_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Under load (the round before made at least [`GATHER_AFTER_RECORDS`]
/// durable) a group-commit round waits up to this long for more records
/// before it starts, so more of them share its write and flush. A flush
/// writes sled's I/O buffer through sled's I/O thread pool, which wakes all
/// of its seven idle threads, one after another, for each write: at a peak
/// on-sale that was about a fifth of the CPU time per booking, and it
/// shrinks with every booking that joins the round. Light traffic never
/// waits (the first round after a burst may, once).
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// A round gathers only after a round that made this many records durable.
const GATHER_AFTER_RECORDS: u64 = 8;

/// A gathering round starts at once when three quarters as many records are
/// pending as the round before made durable, and at most this many.
///
/// Under a steady load the connections waiting split between the round
/// being flushed and the one gathering; once about the last round's count
/// is pending again, whoever could join has joined. Rounds that waited out
/// the whole [`GATHER`] for a fixed 128, which 64 connections never reach,
/// left the cores idle a fifth of the time; waiting for the last round's
/// count sold 7-13% more bookings/s in three runs of
/// `loadtest/compare-builds.sh`, in rounds of 31 records instead of 45.
/// The last quarter of a round's records are the slowest to come back (most
/// likely because a flush releases its round's answers in one burst, all
/// written before new requests are read), so a round that starts without
/// them and leaves them to the next sold 2-7% more again (four runs, two in
/// each order; ending at 60% or 85% sold 3-4% more, at half nothing more).
const GATHER_RECORDS: usize = 128;

/// How many pending records end the gather of a round that follows one of
/// `last_round_records`: three quarters of them (see [`GATHER_RECORDS`]).
pub(crate) fn gather_enough(last_round_records: u64) -> usize {
    let three_quarters = last_round_records.saturating_mul(3) / 4;
    usize::try_from(three_quarters).unwrap_or(usize::MAX).clamp(1, GATHER_RECORDS)
}

/// A log segment closes once its entries reach this many bytes. sled
/// writes a tree node larger than a quarter of its 512 KiB segment as a
/// file of its own (a blob: one more file and fsync per write); a leaf
/// holds up to 17 entries, so segments this small keep the log's leaves
/// well under that.
const SEGMENT_BYTES: usize = 4096;

/// The big-endian id that follows a key's table tag; `what` names the key
/// in the error when it is too short.
pub(crate) fn key_id(key: &[u8], what: &'static str) -> Result<u64, Error> {
    key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or(Error::Corrupt(what))
}

/// Builds a key from a table tag and the key's bytes.
pub(crate) fn key(table: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(table);
    key.extend_from_slice(rest);
    key
}

/// Turns the state change a record describes into writes on its round's
/// [`RoundWrites`] (and into the in-memory indexes kept beside the rows).
/// Called once per record, in log order, while the round is encoded, with
/// the record's encoded payload (rows that hold exactly the payload reuse
/// it).
pub(crate) type Materialize = Box<dyn Fn(&Record, &[u8], &mut RoundWrites) + Send + Sync>;

/// The tree writes of one group-commit round (or one commit). Every sled
/// batch seals and writes sled's I/O buffer twice (`apply_batch` pins the
/// log), two synchronous disk writes (each waking sled's seven idle I/O
/// threads) that plain inserts do not cost, so a batch is used only where
/// atomicity needs one:
/// - a round that writes only log segments, as a round of bookings does
///   (the booking rows go behind), inserts them one by one in seq order.
///   sled recovers a contiguous prefix of what was written, so a crash
///   between two of them leaves the log a gap-free prefix of itself, as a
///   crash before the round would: records past it were never durable, so
///   never acknowledged;
/// - a single write is atomic on its own;
/// - anything else (log segments with the rows they change) is a batch.
///
/// Later writes of a key win, as in a batch.
#[derive(Default)]
pub(crate) struct RoundWrites {
    writes: Vec<(sled::IVec, Option<sled::IVec>)>,
    /// Whether it writes anything but log segments.
    rows: bool,
}

impl RoundWrites {
    pub(crate) fn insert(&mut self, key: impl Into<sled::IVec>, value: impl Into<sled::IVec>) {
        self.writes.push((key.into(), Some(value.into())));
        self.rows = true;
    }

    pub(crate) fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.writes.push((key.into(), None));
        self.rows = true;
    }

    /// Adds the log segment whose first entry has `first_seq`; segments are
    /// added in seq order.
    pub(crate) fn log_segment(&mut self, first_seq: u64, segment: Vec<u8>) {
        self.writes.push((key(table::LOG, &first_seq.to_be_bytes()).into(), Some(segment.into())));
    }

    /// Writes them: all or none, or (log segments alone) in order.
    pub(crate) fn apply(self, tree: &sled::Tree) -> sled::Result<()> {
        if !self.rows || self.writes.len() == 1 {
            for (key, value) in self.writes {
                match value {
                    Some(value) => tree.insert(key, value)?,
                    None => tree.remove(key)?,
                };
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        add_writes(&mut batch, self.writes);
        tree.apply_batch(batch)
    }
}

/// Items for the row writer, complete for the log up to `seq`.
struct RowsBehind {
    items: Vec<Item>,
    seq: u64,
}

/// One write of a row: a value, or `None` to remove it.
pub(crate) type RowWrite = (Vec<u8>, Option<Vec<u8>>);

/// Adds writes (a value, or `None` to remove the key) to `batch`, in order.
fn add_writes<K, V>(batch: &mut sled::Batch, writes: impl IntoIterator<Item = (K, Option<V>)>)
where
    K: Into<sled::IVec>,
    V: Into<sled::IVec>,
{
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
    }
}

/// A log reader's writes, to be written all or none, and where to say
/// whether they were.
struct ReaderCommit {
    writes: Vec<RowWrite>,
    done: std::sync::mpsc::SyncSender<Result<(), Error>>,
}

/// What the row writer is handed.
enum RowWork {
    Behind(RowsBehind),
    Reader(ReaderCommit),
}

/// What the row writer writes in one sled batch.
#[derive(Default)]
struct RowBatch {
    items: Vec<Item>,
    /// The seq the rows behind are complete up to, when any were handed over.
    behind_seq: Option<u64>,
    readers: Vec<ReaderCommit>,
    /// Rows it writes, items and readers' writes.
    len: usize,
}

impl RowBatch {
    fn add(&mut self, work: RowWork) {
        match work {
            RowWork::Behind(rows) => {
                self.len += rows.items.len();
                self.items.extend(rows.items);
                self.behind_seq = Some(rows.seq);
            }
            RowWork::Reader(commit) => {
                self.len += commit.writes.len();
                self.readers.push(commit);
            }
        }
    }
}

/// The row writer's queue, guarded by the apply lock so rows are handed
/// over in log order.
struct BehindQueue {
    sender: Option<std::sync::mpsc::SyncSender<RowWork>>,
    /// The seq of the last hand-over.
    sent_seq: u64,
}

/// Called with the new durable seq and whether the store is healthy after
/// every flush, and once more when the store fails (healthy false).
pub type DurableWatcher = Box<dyn Fn(u64, bool) + Send + Sync>;

/// An open data directory: an exclusive lock, the sled database and the log.
///
/// Group commit: records are appended to a pending list (cheap, under the
/// caller's own locks); a flusher thread writes everything pending to the
/// tree in one atomic write and flushes it, then announces the new durable
/// seq. Callers acknowledge only once the durable seq covers their record,
/// waiting either blocking ([`Store::sync`]) or through a watcher.
pub struct Store {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
    row_writer: Option<std::thread::JoinHandle<()>>,
    /// Held open for its lock until the store is dropped.
    _lock: File,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    materialize: Materialize,
    written_behind: WrittenBehind,
    /// Seq assignment and records appended but not yet written to the tree.
    appender: Mutex<Appender>,
    /// Wakes a gathering flusher: as many records are pending as it waits for.
    gathered: Condvar,
    /// How long a round gathers, in microseconds: [`GATHER`] (tests
    /// lengthen it to see it).
    gather_micros: AtomicU64,
    /// Held while writing to the tree, so rounds land in seq order (and
    /// their rows behind reach the row writer in that order).
    apply_lock: Mutex<BehindQueue>,
    /// The seq up to which the row writer has written rows behind the log.
    behind_written_seq: AtomicU64,
    /// Batches the row writer has written.
    behind_batches: AtomicU64,
    /// The log readers' way to the row writer (taken when the store closes).
    reader_commits: Mutex<Option<std::sync::mpsc::SyncSender<RowWork>>>,
    /// The newest entries written to the tree, in seq order, at most
    /// [`RECENT_ENTRIES`].
    recent: Mutex<VecDeque<Entry>>,
    /// Highest seq written to the tree (visible to reads).
    head_seq: AtomicU64,
    /// Highest seq known flushed to disk.
    durable_seq: AtomicU64,
    /// Set by whoever needs a flush, cleared by the flusher as a round
    /// starts: only the first request after a round pays for a wake-up.
    flush_requested: AtomicBool,
    /// The flusher's sleep and stop state, and the signals around it.
    flush: Mutex<FlushState>,
    /// Wakes the flusher: a caller waits for a seq not yet durable.
    flush_wanted: Condvar,
    /// Wakes blocking waiters: a flush finished, the row writer caught up,
    /// or the store failed.
    flushed: Condvar,
    flush_count: AtomicU64,
    /// Seconds each group-commit round took (write + flush).
    flush_seconds: crate::stats::Histogram,
    /// Records each group-commit round made durable.
    flush_records: crate::stats::Histogram,
    watchers: Mutex<Vec<DurableWatcher>>,
    /// Set by the first failed write or flush: memory may then be ahead of
    /// the disk, so every later write is refused until a restart recovers.
    failed: AtomicBool,
}

#[derive(Default)]
struct FlushState {
    /// The store is closing: flush what is left and stop.
    stopping: bool,
}

impl Store {
    /// Opens (creating if missing) the data directory at `dir`, and brings
    /// the rows written behind the log (`written_behind` picks the records,
    /// `behind_tables` names their tables) up to its head. Fails with
    /// [`Error::Locked`] when another process has it open.
    pub(crate) fn open(
        dir: &Path,
        cache_bytes: u64,
        materialize: Materialize,
        written_behind: WrittenBehind,
        behind_tables: &[u8],
    ) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let db = open_sled(dir, cache_bytes)?;
        let tree = db.open_tree("marquee").map_err(Error::storage)?;
        let head = last_seq(&tree)?;
        behind::catch_up(&db, &tree, head, written_behind, behind_tables)?;
        let (sender, queue) = std::sync::mpsc::sync_channel(BEHIND_QUEUE_ROUNDS);
        let shared = Arc::new(Shared {
            db,
            tree,
            materialize,
            written_behind,
            appender: Mutex::new(Appender {
                next_seq: head + 1,
                pending: Vec::new(),
                closing: false,
                gather_enough: GATHER_RECORDS,
            }),
            gathered: Condvar::new(),
            gather_micros: AtomicU64::new(GATHER.as_micros() as u64),
            reader_commits: Mutex::new(Some(sender.clone())),
            apply_lock: Mutex::new(BehindQueue { sender: Some(sender), sent_seq: head }),
            behind_written_seq: AtomicU64::new(head),
            behind_batches: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            head_seq: AtomicU64::new(head),
            durable_seq: AtomicU64::new(head),
            flush_requested: AtomicBool::new(false),
            flush: Mutex::new(FlushState::default()),
            flush_wanted: Condvar::new(),
            flushed: Condvar::new(),
            flush_count: AtomicU64::new(0),
            flush_seconds: crate::stats::Histogram::new(crate::stats::SECONDS_BUCKETS),
            flush_records: crate::stats::Histogram::new(crate::stats::COUNT_BUCKETS),
            watchers: Mutex::new(Vec::new()),
            failed: AtomicBool::new(false),
        });
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(run).map_err(|e| Error::io(dir, e))
        };
        let row_writer = spawn("marquee-rows", {
            let shared = shared.clone();
            Box::new(move || shared.run_row_writer(&queue))
        })?;
        let flusher = spawn("marquee-flusher", {
            let shared = shared.clone();
            Box::new(move || shared.run_flusher())
        })?;
        Ok(Store { shared, flusher: Some(flusher), row_writer: Some(row_writer), _lock: lock })
    }

    /// Appends `records` to the log and applies the state they describe, in
    /// one atomic write (together with any records [`Store::append`]ed
    /// before, so the tree always holds a gap-free prefix of the log).
    /// Returns the seq of the last record. Not yet durable: call
    /// [`Store::sync`] before acknowledging.
    pub fn commit(&self, at_ms: i64, records: &[Record]) -> Result<u64, Error> {
        assert!(!records.is_empty(), "a commit carries at least one record");
        let shared = &*self.shared;
        shared.check_healthy()?;
        let mut applying = shared.apply_lock.lock().expect("apply lock poisoned");
        let mut appender = shared.appender.lock().expect("log append lock poisoned");
        let mut writes = RoundWrites::default();
        let mut pending = std::mem::take(&mut appender.pending);
        let mut seq = appender.next_seq;
        for record in records {
            pending.push((seq, at_ms, record.clone()));
            seq += 1;
        }
        let behind = shared.encode(&pending, &mut writes);
        appender.next_seq = seq;
        drop(appender);
        let last = seq - 1;
        shared.apply(&mut applying, writes, behind, pending)?;
        Ok(last)
    }

    /// Appends one record to the log without writing it yet: the flusher
    /// writes it to the tree (atomically with its state) and flushes it with
    /// every other record pending, so many appends share one write and one
    /// flush. The caller must not read the record's rows back before it is
    /// durable. Cheap enough to call under a hot lock; the order of appends
    /// is the log's.
    pub fn append(&self, at_ms: i64, record: Record) -> u64 {
        let mut appender = self.shared.appender.lock().expect("log append lock poisoned");
        let seq = appender.next_seq;
        appender.next_seq += 1;
        appender.pending.push((seq, at_ms, record));
        if appender.pending.len() == appender.gather_enough {
            self.shared.gathered.notify_one();
        }
        seq
    }

    /// Asks the flusher to make everything appended so far durable, without
    /// waiting; pair it with a [`DurableWatcher`] to wait asynchronously.
    pub fn request_flush(&self) {
        self.shared.request_flush();
    }

    /// Returns once everything up to `seq` is on disk.
    pub fn sync(&self, seq: u64) -> Result<(), Error> {
        let shared = &*self.shared;
        if shared.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let mut state = shared.flush.lock().expect("flush state lock poisoned");
        loop {
            if shared.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            shared.check_healthy()?;
            if !shared.flush_requested.swap(true, Ordering::AcqRel) {
                shared.flush_wanted.notify_one();
            }
            state = shared.flushed.wait(state).expect("flush state lock poisoned");
        }
    }

    /// Calls `watcher` with the durable seq and the store's health, now and
    /// after every flush.
    pub fn watch_durable(&self, watcher: DurableWatcher) {
        watcher(self.durable_seq(), self.is_healthy());
        self.shared.watchers.lock().expect("watchers lock poisoned").push(watcher);
    }

    /// Whether every write so far succeeded (readiness).
    pub fn is_healthy(&self) -> bool {
        !self.shared.failed.load(Ordering::Acquire)
    }

    /// The tree itself, for tests that set up what a crash leaves.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.shared.tree
    }

    /// Reads one row.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, Error> {
        self.shared.tree.get(key).map_err(Error::storage)
    }

    /// Iterates over every row of a table, in key order.
    pub(crate) fn scan(&self, table: u8) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), Error>> {
        self.scan_prefix(&[table])
    }

    /// Iterates over the rows whose key starts with `prefix`, in key order.
    pub(crate) fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl DoubleEndedIterator<Item = Result<(sled::IVec, sled::IVec), Error>> {
        self.shared.tree.scan_prefix(prefix).map(|item| item.map_err(Error::storage))
    }

    /// Iterates over the rows whose key starts with `prefix` and sorts after
    /// `after`, in key order.
    pub(crate) fn scan_prefix_after(
        &self,
        prefix: &[u8],
        after: &[u8],
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), Error>> {
        use std::ops::Bound;
        let prefix = prefix.to_vec();
        self.shared
            .tree
            .range::<&[u8], _>((Bound::Excluded(after), Bound::Unbounded))
            .take_while(move |item| item.as_ref().map_or(true, |(key, _)| key.starts_with(&prefix)))
            .map(|item| item.map_err(Error::storage))
    }

    /// Waits until the durable seq passes `seq` or `timeout` runs out.
    pub(crate) fn wait_durable(&self, seq: u64, timeout: std::time::Duration) -> u64 {
        let shared = &*self.shared;
        let deadline = std::time::Instant::now() + timeout;
        let mut state = shared.flush.lock().expect("flush state lock poisoned");
        loop {
            let durable = shared.durable_seq.load(Ordering::Acquire);
            let now = std::time::Instant::now();
            if durable > seq || now >= deadline || state.stopping {
                return durable;
            }
            state = shared.flushed.wait_timeout(state, deadline - now).expect("flush state lock poisoned").0;
        }
    }

    /// The highest id stored in a table keyed by a `u64` id (0 when empty).
    pub(crate) fn max_id(&self, table: u8) -> Result<u64, Error> {
        max_u64_key(&self.shared.tree, table)
    }

    /// Highest seq written to the tree so far.
    pub fn head_seq(&self) -> u64 {
        self.shared.head_seq.load(Ordering::Acquire)
    }

    /// Highest seq handed out, written or still pending.
    pub fn appended_seq(&self) -> u64 {
        self.shared.appender.lock().expect("log append lock poisoned").next_seq - 1
    }

    /// Highest seq known to be on disk.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Log entries after the rows-behind checkpoint: what a start-up would
    /// read again to bring the rows written behind the log up to date (see
    /// the `behind` module). Stays small while the row writer keeps up; the
    /// checkpoint moves with the rows it writes, and at least every
    /// 10,000 entries when none of them has such rows.
    pub fn rows_behind_lag(&self) -> u64 {
        self.head_seq().saturating_sub(self.shared.behind_written_seq.load(Ordering::Acquire))
    }

    /// How many flushes have run: with group commit, fewer than commits.
    pub fn flush_count(&self) -> u64 {
        self.shared.flush_count.load(Ordering::Relaxed)
    }

    /// Seconds per group-commit round, and records per round.
    pub fn flush_stats(&self) -> (crate::stats::HistogramSnapshot, crate::stats::HistogramSnapshot) {
        (self.shared.flush_seconds.snapshot(), self.shared.flush_records.snapshot())
    }

    /// Reads log entries with seq >= `from`, at most `max` of them.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<Entry>, Error> {
        {
            let recent = self.shared.recent.lock().expect("recent entries lock poisoned");
            if let Some(oldest) = recent.front().map(|entry| entry.seq) {
                if oldest <= from {
                    let start = usize::try_from(from - oldest).unwrap_or(usize::MAX);
                    return Ok(recent.iter().skip(start).take(max).cloned().collect());
                }
            }
        }
        read_log(&self.shared.tree, from, max)
    }

    /// Returns once every row handed to the row writer so far is in the
    /// tree, so a scan of those tables sees everything committed.
    pub(crate) fn settle_rows_behind(&self) -> Result<(), Error> {
        let shared = &*self.shared;
        let target = shared.apply_lock.lock().expect("apply lock poisoned").sent_seq;
        let mut state = shared.flush.lock().expect("flush state lock poisoned");
        while shared.behind_written_seq.load(Ordering::Acquire) < target {
            shared.check_healthy()?;
            state = shared.flushed.wait(state).expect("flush state lock poisoned");
        }
        Ok(())
    }

    /// How many batches the row writer has written since the store opened.
    #[cfg(test)]
    pub(crate) fn rows_behind_batches(&self) -> u64 {
        self.shared.behind_batches.load(Ordering::Relaxed)
    }

    /// Sets how long a round under load gathers records.
    #[cfg(test)]
    pub(crate) fn set_gather(&self, gather: std::time::Duration) {
        self.shared.gather_micros.store(gather.as_micros() as u64, Ordering::Relaxed);
    }

    /// Writes rows straight to the tree, outside the log (bulk import into
    /// a new directory; log readers commit through the row writer instead,
    /// see [`Store::write_reader_rows`]). Becomes durable with the next
    /// flush.
    pub(crate) fn write_rows(&self, batch: sled::Batch) -> Result<(), Error> {
        self.shared.check_healthy()?;
        self.shared.tree.apply_batch(batch).map_err(|e| self.shared.fail(e))
    }

    /// Writes a log reader's rows (its checkpoint among them) all or none,
    /// in the row writer's next batch, and returns once they are in the
    /// tree. Readers that commit while the writer rests share that batch,
    /// and the two I/O buffer writes every sled batch costs, with each
    /// other and with the rows behind the log. Not flushed: they become
    /// durable with the next group commit.
    pub(crate) fn write_reader_rows(&self, writes: Vec<RowWrite>) -> Result<(), Error> {
        self.shared.check_healthy()?;
        let stopped = || Error::Storage("the row writer stopped".into());
        let sender = self.shared.reader_commits.lock().expect("reader commits lock poisoned").clone();
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        sender.ok_or_else(stopped)?.send(RowWork::Reader(ReaderCommit { writes, done })).map_err(|_| stopped())?;
        outcome.recv().map_err(|_| stopped())?
    }

    /// Inserts rows one by one, in order, outside the log and outside any
    /// batch (see [`crate::readers::ReaderBatch::put_ahead`]). Not flushed:
    /// they become durable with the next group commit.
    pub(crate) fn insert_rows(&self, rows: Vec<crate::readers::KeyValue>) -> Result<(), Error> {
        if rows.is_empty() {
            return Ok(());
        }
        self.shared.check_healthy()?;
        for (key, value) in rows {
            self.shared.tree.insert(key, value).map_err(|e| self.shared.fail(e))?;
        }
        Ok(())
    }

    /// Replaces one row's value, written outside the log like
    /// [`Store::write_rows`], only if it still holds `old` (`None`: only if
    /// there is no such row); false when it does not.
    pub(crate) fn replace_row(&self, key: &[u8], old: Option<&[u8]>, new: &[u8]) -> Result<bool, Error> {
        self.shared.check_healthy()?;
        let swapped = self.shared.tree.compare_and_swap(key, old, Some(new)).map_err(|e| self.shared.fail(e))?;
        Ok(swapped.is_ok())
    }

    /// Flushes rows written with [`Store::write_rows`].
    pub(crate) fn flush_rows(&self) -> Result<(), Error> {
        self.shared.db.flush().map_err(Error::storage).map(|_| ())
    }

    /// Writes and flushes everything appended so far (used at shutdown).
    pub fn flush(&self) -> Result<(), Error> {
        self.sync(self.appended_seq())
    }
}

impl Drop for Store {
    /// Stops the flusher after it has flushed what is pending.
    fn drop(&mut self) {
        self.shared.appender.lock().expect("log append lock poisoned").closing = true;
        self.shared.gathered.notify_one();
        {
            let mut state = self.shared.flush.lock().expect("flush state lock poisoned");
            state.stopping = true;
            self.shared.flush_wanted.notify_one();
        }
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // The row writer stops once it has written everything handed over.
        self.shared.apply_lock.lock().expect("apply lock poisoned").sender = None;
        self.shared.reader_commits.lock().expect("reader commits lock poisoned").take();
        if let Some(row_writer) = self.row_writer.take() {
            let _ = row_writer.join();
        }
        if self.is_healthy() {
            if let Err(error) = self.shared.db.flush() {
                tracing::error!(%error, "flushing rows written behind the log at close failed");
            }
        }
    }
}

impl Shared {
    fn request_flush(&self) {
        if !self.flush_requested.swap(true, Ordering::AcqRel) {
            // Under the lock, so a flusher about to sleep cannot miss it.
            let _state = self.flush.lock().expect("flush state lock poisoned");
            self.flush_wanted.notify_one();
        }
    }

    /// The flusher thread: one group-commit round whenever asked, until the
    /// store closes. Records appended while a round runs go in the next.
    fn run_flusher(&self) {
        let mut last_round_records = 0;
        loop {
            let stopping = {
                let mut state = self.flush.lock().expect("flush state lock poisoned");
                while !self.flush_requested.load(Ordering::Acquire) && !state.stopping {
                    state = self.flush_wanted.wait(state).expect("flush state lock poisoned");
                }
                state.stopping
            };
            if !stopping && last_round_records >= GATHER_AFTER_RECORDS {
                self.gather(gather_enough(last_round_records));
            }
            self.flush_requested.store(false, Ordering::Release);
            if self.check_healthy().is_ok() {
                match self.write_and_flush() {
                    // Nothing to write (a flush asked for twice): says
                    // nothing about the load.
                    Ok(0) => {}
                    Ok(records) => last_round_records = records,
                    Err(error) => {
                        last_round_records = 0;
                        tracing::error!(%error, "group commit failed");
                    }
                }
            }
            self.announce();
            if stopping {
                return;
            }
        }
    }

    /// Waits up to [`GATHER`] (or what a test set) for `enough` records to
    /// be pending; not at all when none is (the round has nothing to write)
    /// or the store is closing.
    fn gather(&self, enough: usize) {
        let mut appender = self.appender.lock().expect("log append lock poisoned");
        appender.gather_enough = enough;
        let gather = std::time::Duration::from_micros(self.gather_micros.load(Ordering::Relaxed));
        let waited = self.gathered.wait_timeout_while(appender, gather, |a| {
            !a.pending.is_empty() && a.pending.len() < a.gather_enough && !a.closing
        });
        drop(waited.expect("log append lock poisoned"));
    }

    /// One round: everything appended goes to the tree, then to disk.
    /// Returns how many records it made durable.
    fn write_and_flush(&self) -> Result<u64, Error> {
        let started = std::time::Instant::now();
        self.apply_pending()?;
        let covered = self.head_seq.load(Ordering::Acquire);
        let durable = self.durable_seq.load(Ordering::Acquire);
        if durable >= covered {
            return Ok(0);
        }
        self.db.flush().map_err(|e| self.fail(e))?;
        self.flush_count.fetch_add(1, Ordering::Relaxed);
        self.durable_seq.fetch_max(covered, Ordering::AcqRel);
        self.flush_records.observe((covered - durable) as f64);
        self.flush_seconds.observe(started.elapsed().as_secs_f64());
        Ok(covered - durable)
    }

    /// Wakes blocking waiters and tells the watchers the durable seq.
    fn announce(&self) {
        {
            let _state = self.flush.lock().expect("flush state lock poisoned");
            self.flushed.notify_all();
        }
        let durable = self.durable_seq.load(Ordering::Acquire);
        let healthy = !self.failed.load(Ordering::Acquire);
        for watcher in self.watchers.lock().expect("watchers lock poisoned").iter() {
            watcher(durable, healthy);
        }
    }

    /// Writes appended records to the tree in one atomic write.
    fn apply_pending(&self) -> Result<(), Error> {
        let mut applying = self.apply_lock.lock().expect("apply lock poisoned");
        let pending = std::mem::take(&mut self.appender.lock().expect("log append lock poisoned").pending);
        if pending.is_empty() {
            return Ok(());
        }
        let mut writes = RoundWrites::default();
        let behind = self.encode(&pending, &mut writes);
        self.apply(&mut applying, writes, behind, pending)
    }

    /// Writes what was encoded from `applied` (consecutive records, not
    /// empty) to the tree, keeps the records among the recent entries, then
    /// hands the rows behind to the row writer (waiting when its queue is
    /// full).
    fn apply(
        &self,
        queue: &mut BehindQueue,
        writes: RoundWrites,
        behind: Vec<Item>,
        applied: Vec<(u64, i64, Record)>,
    ) -> Result<(), Error> {
        let last = applied.last().expect("a round holds records").0;
        writes.apply(&self.tree).map_err(|e| self.fail(e))?;
        {
            let mut recent = self.recent.lock().expect("recent entries lock poisoned");
            recent.extend(applied.into_iter().map(|(seq, at_ms, record)| Entry { seq, at_ms, record }));
            let overflow = recent.len().saturating_sub(RECENT_ENTRIES);
            recent.drain(..overflow);
        }
        self.head_seq.store(last, Ordering::Release);
        if behind.is_empty() && last - queue.sent_seq < BEHIND_CHECKPOINT_EVERY {
            return Ok(());
        }
        let sender = queue.sender.as_ref().expect("the row writer runs while the store is open");
        if sender.send(RowWork::Behind(RowsBehind { items: behind, seq: last })).is_err() {
            return Err(self.fail_with(Error::Storage("the row writer stopped".into())));
        }
        queue.sent_seq = last;
        Ok(())
    }

    /// The row writer thread: writes the items handed over and the log
    /// readers' commits, coalescing whatever queued up meanwhile into one
    /// batch (with the rows' checkpoint), then rests [`ROWS_BEHIND_PAUSE`]
    /// unless more is waiting than one batch takes, until the store closes.
    /// They become durable with the next flush.
    fn run_row_writer(&self, queue: &std::sync::mpsc::Receiver<RowWork>) {
        const BATCH_ROWS_MAX: usize = 65_536;
        crate::background::run_in_background();
        while let Ok(first) = queue.recv() {
            let mut work = RowBatch::default();
            work.add(first);
            while work.len < BATCH_ROWS_MAX {
                let Ok(next) = queue.try_recv() else { break };
                work.add(next);
            }
            let backlog = work.len >= BATCH_ROWS_MAX;
            let written = self.check_healthy().and_then(|()| self.write_row_batch(&mut work));
            for reader in work.readers {
                let outcome = match &written {
                    Ok(()) => Ok(()),
                    Err(error) => Err(Error::Storage(error.to_string())),
                };
                // A reader that stopped waiting needs no answer.
                let _ = reader.done.send(outcome);
            }
            {
                let _state = self.flush.lock().expect("flush state lock poisoned");
                self.flushed.notify_all();
            }
            if !backlog {
                std::thread::sleep(ROWS_BEHIND_PAUSE);
            }
        }
    }

    /// Writes the rows of one row writer batch (taking them out of `work`,
    /// which keeps the readers to answer); a failure fails the store.
    fn write_row_batch(&self, work: &mut RowBatch) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        if let Some(seq) = work.behind_seq {
            behind::write(&self.tree, std::mem::take(&mut work.items), seq, &mut batch)
                .map_err(|e| self.fail_with(e))?;
        }
        add_writes(&mut batch, work.readers.iter_mut().flat_map(|reader| std::mem::take(&mut reader.writes)));
        self.behind_batches.fetch_add(1, Ordering::Relaxed);
        self.tree.apply_batch(batch).map_err(|e| self.fail(e))?;
        if let Some(seq) = work.behind_seq {
            self.behind_written_seq.store(seq, Ordering::Release);
        }
        Ok(())
    }

    /// Adds consecutive records as log segments of about
    /// [`SEGMENT_BYTES`] each, and the rows they change, to `writes`;
    /// returns the items to write behind the log.
    fn encode(&self, pending: &[(u64, i64, Record)], writes: &mut RoundWrites) -> Vec<Item> {
        let mut behind = Vec::new();
        let mut segment_first = 0;
        let mut values: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        for (index, &(seq, at_ms, ref record)) in pending.iter().enumerate() {
            let payload = record.encode_payload();
            if values.is_empty() {
                segment_first = seq;
            }
            let value = Entry::value_with_payload(at_ms, record, &payload);
            (self.materialize)(record, &payload, writes);
            if let Some((row, id)) = (self.written_behind)(record) {
                behind.push(Item { row, id, payload });
            }
            bytes += value.len();
            values.push(value);
            if bytes >= SEGMENT_BYTES || index + 1 == pending.len() {
                writes.log_segment(segment_first, crate::log::encode_segment(&values));
                values.clear();
                bytes = 0;
            }
        }
        behind
    }

    /// Records a storage failure: from now on writes are refused.
    fn fail(&self, error: sled::Error) -> Error {
        self.fail_with(Error::storage(error))
    }

    /// Marks the store failed, whichever write found it (a round's flush,
    /// the row writer, a reader's commit, a direct write), and tells the
    /// watchers the first time: the server stops on it.
    fn fail_with(&self, error: Error) -> Error {
        let first = !self.failed.swap(true, Ordering::AcqRel);
        tracing::error!(%error, "storage write failed; refusing writes until restart");
        if first {
            let durable = self.durable_seq.load(Ordering::Acquire);
            for watcher in self.watchers.lock().expect("watchers lock poisoned").iter() {
                watcher(durable, false);
            }
        }
        error
    }

    fn check_healthy(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Storage("an earlier write failed; restart to recover".into()));
        }
        Ok(())
    }
}

/// Reads log entries with seq >= `from`, at most `max` of them.
pub(crate) fn read_log(tree: &sled::Tree, from: u64, max: usize) -> Result<Vec<Entry>, Error> {
    let wanted = key(table::LOG, &from.to_be_bytes());
    // The segment holding `from` starts at the last key at or before it.
    let holding = tree.range(key(table::LOG, &[])..=wanted.clone()).next_back().transpose().map_err(Error::storage)?;
    let start = holding.map_or(wanted, |(key, _)| key.to_vec());
    let end = key(table::LOG + 1, &[]);
    let mut entries = Vec::new();
    for item in tree.range(start..end) {
        let (key, value) = item.map_err(Error::storage)?;
        let first = u64::from_be_bytes(key[1..].try_into().map_err(|_| Error::Corrupt("log key"))?);
        for entry in crate::log::decode_segment(first, &value)? {
            if entry.seq >= from {
                entries.push(entry);
                if entries.len() == max {
                    return Ok(entries);
                }
            }
        }
    }
    Ok(entries)
}

/// Seq assignment plus the appended records waiting for a write.
struct Appender {
    next_seq: u64,
    pending: Vec<(u64, i64, Record)>,
    /// The store is closing: a gathering round starts at once.
    closing: bool,
    /// A gathering round starts once this many records are pending.
    gather_enough: usize,
}

/// Opens sled in `dir/db`. Our `LOCK` file already keeps other processes
/// out; sled's own lock can still be held for a moment by the background
/// threads of a database this process just closed (an import reopened at
/// once), so that case is retried briefly.
///
/// A start on a full disk can leave sled's snapshot half written under its
/// temporary name, `snap.<lsn>.generating` (sled renames it only once it is
/// complete and synced), and sled 0.34 then takes it for the newest
/// snapshot and refuses to open, as corrupt, for good. When an open fails
/// with such a file there, the file is removed and the open tried again:
/// freeing space is then the whole fix.
fn open_sled(dir: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    let config = sled::Config::new().path(dir.join("db")).cache_capacity(cache_bytes).flush_every_ms(Some(500));
    let mut tries = 0;
    let mut unfinished_removed = false;
    loop {
        match config.open() {
            Err(sled::Error::Io(error)) if tries < 100 && error.to_string().contains("could not acquire lock") => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Corruption { .. }) if !unfinished_removed && remove_unfinished_snapshots(dir)? > 0 => {
                unfinished_removed = true;
            }
            opened => return opened.map_err(Error::storage),
        }
    }
}

/// Removes sled's unfinished snapshots (`db/snap.*.generating`); returns how many.
fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, Error> {
    let db = dir.join("db");
    let mut removed = 0;
    for entry in std::fs::read_dir(&db).map_err(|e| Error::io(&db, e))? {
        let path = entry.map_err(|e| Error::io(&db, e))?.path();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            tracing::warn!(file = %path.display(), "removed an unfinished snapshot (a start on a full disk leaves one)");
            removed += 1;
        }
    }
    Ok(removed)
}

/// The seq of the last log entry: the last segment's first seq plus its count.
fn last_seq(tree: &sled::Tree) -> Result<u64, Error> {
    let Some(item) = tree.scan_prefix([table::LOG]).next_back() else { return Ok(0) };
    let (key, value) = item.map_err(Error::storage)?;
    let first = key_id(&key, "log key")?;
    let count = crate::log::segment_count(&value)?;
    if count == 0 {
        return Err(Error::Corrupt("log segment"));
    }
    Ok(first + count - 1)
}

fn max_u64_key(tree: &sled::Tree, table: u8) -> Result<u64, Error> {
    match tree.scan_prefix([table]).next_back() {
        None => Ok(0),
        Some(item) => {
            let (key, _) = item.map_err(Error::storage)?;
            key_id(&key, "id key")
        }
    }
}

/// Takes an exclusive lock on `dir/LOCK` and records our pid in it.
fn lock_dir(dir: &Path) -> Result<File, Error> {
    let path: PathBuf = dir.join("LOCK");
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(Error::Locked { dir: dir.to_path_buf(), holder: holder.trim().to_string() });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    file.set_len(0).map_err(|e| Error::io(&path, e))?;
    write!(file, "{}", std::process::id()).map_err(|e| Error::io(&path, e))?;
    Ok(file)
}
