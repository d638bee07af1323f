//! Storage for the log's readers (analytics, notifications, webhook
//! outbox, ...): each reader follows the log from a durable checkpoint of
//! its own and keeps rows of its own, and writes both in one atomic batch,
//! so after a crash it resumes exactly where its state says it is (rows a
//! reader can recognise on reload may go ahead of the batch: see
//! [`ReaderBatch::put_ahead`]). Readers see only durable entries, so
//! nothing they derive or send can outrun what was acknowledged. Keys and
//! values are the reader's own bytes.

use std::time::Duration;

use crate::log::Entry;
use crate::store::{key, table, RowWrite};
use crate::{Error, Store};

/// A stored row: its key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One reader's rows and checkpoint.
pub struct ReaderRows<'a> {
    store: &'a Store,
    reader: u8,
}

/// Writes a reader makes together with its checkpoint, in order (a later
/// write of a row wins), and rows it writes ahead of them.
#[derive(Default)]
pub struct ReaderBatch {
    writes: Vec<RowWrite>,
    /// Rows set ahead of the batch, in order.
    ahead: Vec<KeyValue>,
}

impl ReaderBatch {
    /// Sets a row.
    pub fn put(&mut self, rows: &ReaderRows<'_>, key: &[u8], value: &[u8]) {
        self.writes.push((rows.key(key), Some(value.to_vec())));
    }

    /// Removes a row.
    pub fn remove(&mut self, rows: &ReaderRows<'_>, key: &[u8]) {
        self.writes.push((rows.key(key), None));
    }

    /// Sets a row ahead of the batch: one plain insert each, in the order
    /// they were put, before the batch and its checkpoint are written, and
    /// without waiting for the row writer. Keeps the batch (whose sled
    /// write lock stops every other write to the tree while it is applied)
    /// short when a reader writes many rows, as the inbox of every buyer in
    /// an on-sale is.
    ///
    /// A crash can keep rows put ahead without the checkpoint they belong
    /// to: sled recovers a prefix of its writes, so they are a prefix of
    /// those put, and the entries that put them are applied again. Only a
    /// reader that can tell such rows apart on reload (notifications carry
    /// their log position) and skips rewriting them may use this.
    pub fn put_ahead(&mut self, rows: &ReaderRows<'_>, key: &[u8], value: &[u8]) {
        self.ahead.push((rows.key(key), value.to_vec()));
    }

    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.ahead.is_empty()
    }
}

impl Store {
    /// The rows of reader `reader` (a small number each reader owns).
    pub fn reader(&self, reader: u8) -> ReaderRows<'_> {
        ReaderRows { store: self, reader }
    }

    /// Log entries after `after`, up to the durable seq, at most `max`.
    pub fn read_durable_log(&self, after: u64, max: usize) -> Result<Vec<Entry>, Error> {
        let durable = self.durable_seq();
        if durable <= after {
            return Ok(Vec::new());
        }
        let count = usize::try_from(durable - after).unwrap_or(usize::MAX).min(max);
        self.read_log(after + 1, count)
    }

    /// Waits until the durable seq passes `seq` or `timeout` runs out;
    /// returns the durable seq.
    pub fn wait_durable_above(&self, seq: u64, timeout: Duration) -> u64 {
        self.wait_durable(seq, timeout)
    }
}

impl ReaderRows<'_> {
    fn key(&self, rest: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(2 + rest.len());
        key.push(table::READER_ROW);
        key.push(self.reader);
        key.extend_from_slice(rest);
        key
    }

    fn checkpoint_key(&self) -> Vec<u8> {
        key(table::READER_CHECKPOINT, &[self.reader])
    }

    /// The last seq this reader processed (0: none).
    pub fn checkpoint(&self) -> Result<u64, Error> {
        match self.store.get(&self.checkpoint_key())? {
            None => Ok(0),
            Some(bytes) => {
                let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| Error::Corrupt("reader checkpoint"))?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    /// One row.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.store.get(&self.key(key))?.map(|v| v.to_vec()))
    }

    /// Rows whose key starts with `prefix`, in key order (or reverse), at
    /// most `max`, as (key without the prefix's reader tag, value).
    pub fn scan(&self, prefix: &[u8], reverse: bool, max: usize) -> Result<Vec<KeyValue>, Error> {
        let rows = self.store.scan_prefix(&self.key(prefix));
        let strip = |(key, value): (sled::IVec, sled::IVec)| (key[2..].to_vec(), value.to_vec());
        if reverse {
            rows.rev().take(max).map(|row| row.map(strip)).collect()
        } else {
            rows.take(max).map(|row| row.map(strip)).collect()
        }
    }

    /// Like [`ReaderRows::scan`] forward, starting after the row `after`
    /// (a key as `scan` returns it).
    pub fn scan_after(&self, prefix: &[u8], after: &[u8], max: usize) -> Result<Vec<KeyValue>, Error> {
        let rows = self.store.scan_prefix_after(&self.key(prefix), &self.key(after));
        rows.take(max).map(|row| row.map(|(key, value)| (key[2..].to_vec(), value.to_vec()))).collect()
    }

    /// Replaces one row's value only if it still holds `old`: false when the
    /// reader changed or removed it meanwhile. For writes made beside the
    /// reader's own thread, which must not bring back a row it removed. Not
    /// flushed: it becomes durable with the next group commit.
    pub fn replace(&self, key: &[u8], old: &[u8], new: &[u8]) -> Result<bool, Error> {
        self.store.replace_row(&self.key(key), Some(old), new)
    }

    /// Writes one row only if there is none with its key: false when there
    /// is. Beside the reader's own thread, like [`ReaderRows::replace`], and
    /// not flushed either.
    pub fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, Error> {
        self.store.replace_row(&self.key(key), None, value)
    }

    /// Makes every row written so far durable now, rather than with the next
    /// group commit: for a row that must not be lost once anything has
    /// relied on it.
    pub fn flush(&self) -> Result<(), Error> {
        self.store.flush_rows()
    }

    /// Writes the rows `batch` puts ahead now, taking them out of it
    /// ([`ReaderRows::commit`] does this first).
    pub fn write_ahead(&self, batch: &mut ReaderBatch) -> Result<(), Error> {
        self.store.insert_rows(std::mem::take(&mut batch.ahead))
    }

    /// Writes the rows `batch` puts ahead, then its other writes and, when
    /// given, the new checkpoint, atomically, in the store's next row
    /// batch: it waits for the row writer to end its rest (25 ms between
    /// batches), and readers committing meanwhile share that batch. Not
    /// flushed: it becomes durable with the next group commit.
    pub fn commit(&self, mut batch: ReaderBatch, checkpoint: Option<u64>) -> Result<(), Error> {
        self.write_ahead(&mut batch)?;
        let mut writes = batch.writes;
        if let Some(seq) = checkpoint {
            writes.push((self.checkpoint_key(), Some(seq.to_be_bytes().to_vec())));
        }
        self.store.write_reader_rows(writes)
    }
}
