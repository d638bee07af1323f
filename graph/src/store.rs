//! The durable store: one sled tree holding the log and every materialised
//! row, so a record and the state it changes land in one atomic batch.
//!
//! Keys start with a one-byte table tag followed by big-endian ids, so each
//! table is a contiguous, id-ordered range.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// Bookings by id.
    pub const BOOKING: u8 = b'B';
    /// Booking id by ticket code.
    pub const TICKET_CODE: u8 = b'K';
}

/// Builds a key from a table tag and the key's bytes.
pub(crate) fn key(table: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(table);
    key.extend_from_slice(rest);
    key
}

/// Turns the state change a record describes into writes on `batch`.
pub(crate) type Materialize = fn(&Record, &mut sled::Batch);

/// An open data directory: an exclusive lock, the sled database and the log.
pub struct Store {
    /// Held open for its lock until the store is dropped.
    _lock: File,
    db: sled::Db,
    tree: sled::Tree,
    materialize: Materialize,
    /// Seq assignment and records appended but not yet written to the tree.
    appender: Mutex<Appender>,
    /// Held while writing to the tree, so batches land in seq order.
    apply_lock: Mutex<()>,
    /// Highest seq written to the tree (visible to reads).
    head_seq: AtomicU64,
    /// Highest seq known flushed to disk.
    durable_seq: AtomicU64,
    /// Serialises flushes so concurrent committers share one (group commit).
    flush_lock: Mutex<()>,
    flush_count: AtomicU64,
}

impl Store {
    /// Opens (creating if missing) the data directory at `dir`. Fails with
    /// [`Error::Locked`] when another process has it open.
    pub(crate) fn open(dir: &Path, cache_bytes: u64, materialize: Materialize) -> Result<Store, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(Error::storage)?;
        let tree = db.open_tree("marquee").map_err(Error::storage)?;
        let head = last_seq(&tree)?;
        Ok(Store {
            _lock: lock,
            db,
            tree,
            materialize,
            appender: Mutex::new(Appender { next_seq: head + 1, pending: Vec::new() }),
            apply_lock: Mutex::new(()),
            head_seq: AtomicU64::new(head),
            durable_seq: AtomicU64::new(head),
            flush_lock: Mutex::new(()),
            flush_count: AtomicU64::new(0),
        })
    }

    /// Appends `records` to the log and applies the state they describe, in
    /// one atomic batch (together with any records [`Store::append`]ed
    /// before, so the tree always holds a gap-free prefix of the log).
    /// Returns the seq of the last record. Not yet durable: call
    /// [`Store::sync`] before acknowledging.
    pub fn commit(&self, at_ms: i64, records: &[Record]) -> Result<u64, Error> {
        assert!(!records.is_empty(), "a commit carries at least one record");
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        let mut appender = self.appender.lock().expect("log append lock poisoned");
        let mut batch = sled::Batch::default();
        let pending = std::mem::take(&mut appender.pending);
        self.encode(&pending, &mut batch);
        let mut seq = appender.next_seq;
        for record in records {
            batch.insert(key(table::LOG, &seq.to_be_bytes()), Entry::encode_value(at_ms, record));
            (self.materialize)(record, &mut batch);
            seq += 1;
        }
        appender.next_seq = seq;
        drop(appender);
        self.tree.apply_batch(batch).map_err(Error::storage)?;
        let last = seq - 1;
        self.head_seq.store(last, Ordering::Release);
        Ok(last)
    }

    /// Appends one record to the log without writing it yet: it reaches the
    /// tree (atomically with its state) at the next [`Store::sync`] or
    /// [`Store::commit`], so many appends share one write and one flush. The
    /// caller must not read the record's rows back before syncing. Cheap
    /// enough to call under a hot lock; the order of appends is the log's.
    pub fn append(&self, at_ms: i64, record: Record) -> u64 {
        let mut appender = self.appender.lock().expect("log append lock poisoned");
        let seq = appender.next_seq;
        appender.next_seq += 1;
        appender.pending.push((seq, at_ms, record));
        seq
    }

    /// Writes appended records to the tree in one atomic batch.
    fn apply_pending(&self) -> Result<(), Error> {
        let _applying = self.apply_lock.lock().expect("apply lock poisoned");
        let pending = std::mem::take(&mut self.appender.lock().expect("log append lock poisoned").pending);
        let Some(&(last, _, _)) = pending.last() else { return Ok(()) };
        let mut batch = sled::Batch::default();
        self.encode(&pending, &mut batch);
        self.tree.apply_batch(batch).map_err(Error::storage)?;
        self.head_seq.store(last, Ordering::Release);
        Ok(())
    }

    fn encode(&self, pending: &[(u64, i64, Record)], batch: &mut sled::Batch) {
        for (seq, at_ms, record) in pending {
            batch.insert(key(table::LOG, &seq.to_be_bytes()), Entry::encode_value(*at_ms, record));
            (self.materialize)(record, batch);
        }
    }

    /// Returns once everything up to `seq` is on disk. Concurrent callers
    /// share flushes: whoever flushes covers every commit made before it.
    pub fn sync(&self, seq: u64) -> Result<(), Error> {
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _flushing = self.flush_lock.lock().expect("flush lock poisoned");
        if self.durable_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        self.apply_pending()?;
        let covered = self.head_seq.load(Ordering::Acquire);
        self.db.flush().map_err(Error::storage)?;
        self.flush_count.fetch_add(1, Ordering::Relaxed);
        self.durable_seq.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }

    /// Reads one row.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, Error> {
        self.tree.get(key).map_err(Error::storage)
    }

    /// Iterates over every row of a table, in key order.
    pub(crate) fn scan(&self, table: u8) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec), Error>> {
        self.tree.scan_prefix([table]).map(|item| item.map_err(Error::storage))
    }

    /// The highest id stored in a table keyed by a `u64` id (0 when empty).
    pub(crate) fn max_id(&self, table: u8) -> Result<u64, Error> {
        max_u64_key(&self.tree, table)
    }

    /// Highest seq written to the tree so far.
    pub fn head_seq(&self) -> u64 {
        self.head_seq.load(Ordering::Acquire)
    }

    /// Highest seq handed out, written or still pending.
    pub fn appended_seq(&self) -> u64 {
        self.appender.lock().expect("log append lock poisoned").next_seq - 1
    }

    /// Highest seq known to be on disk.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::Acquire)
    }

    /// How many flushes have run: with group commit, fewer than commits.
    pub fn flush_count(&self) -> u64 {
        self.flush_count.load(Ordering::Relaxed)
    }

    /// Reads log entries with seq >= `from`, at most `max` of them.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<Entry>, Error> {
        let start = key(table::LOG, &from.to_be_bytes());
        let end = key(table::LOG + 1, &[]);
        let mut entries = Vec::new();
        for item in self.tree.range(start..end).take(max) {
            let (key, value) = item.map_err(Error::storage)?;
            let seq = u64::from_be_bytes(key[1..].try_into().map_err(|_| Error::Corrupt("log key"))?);
            entries.push(Entry::decode_value(seq, &value)?);
        }
        Ok(entries)
    }

    /// Writes and flushes everything appended so far (used at shutdown).
    pub fn flush(&self) -> Result<(), Error> {
        self.sync(self.appended_seq())
    }
}

/// Seq assignment plus the appended records waiting for a write.
struct Appender {
    next_seq: u64,
    pending: Vec<(u64, i64, Record)>,
}

fn last_seq(tree: &sled::Tree) -> Result<u64, Error> {
    max_u64_key(tree, table::LOG)
}

fn max_u64_key(tree: &sled::Tree, table: u8) -> Result<u64, Error> {
    match tree.scan_prefix([table]).next_back() {
        None => Ok(0),
        Some(item) => {
            let (key, _) = item.map_err(Error::storage)?;
            let bytes: [u8; 8] = key.get(1..9).and_then(|b| b.try_into().ok()).ok_or(Error::Corrupt("id key"))?;
            Ok(u64::from_be_bytes(bytes))
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
