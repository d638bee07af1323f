//! Rows written behind the log. Some state is read only at start-up (the
//! ledger keeps every booking in memory), yet a peak on-sale changes it
//! hundreds of thousands of times a second. For such state the log record
//! itself is the durable truth; a row writer thread copies the records'
//! payloads into rows later, off the group commit's path, and a checkpoint
//! row says up to which seq those rows are complete. Opening the store
//! first brings the rows up to the log's head, so after a crash they hold
//! exactly what the log says.
//!
//! Items are grouped: one row holds the items whose ids share a group (say
//! 16 bookings with consecutive ids) as `(id (8 bytes, BE) | length (4
//! bytes, BE) | payload)*` in id order, so a round of a thousand bookings
//! costs sled some sixty inserts instead of a thousand.

use std::collections::BTreeMap;

use crate::log::Record;
use crate::store::{read_log, table};
use crate::Error;

/// Where a record's payload is kept behind the log, if it is: the key of
/// its group's row and its own id. Must depend on the record alone, as
/// start-up replays it.
pub(crate) type WrittenBehind = fn(&Record) -> Option<(Vec<u8>, u64)>;

/// One item for the row writer.
pub(crate) struct Item {
    pub row: Vec<u8>,
    pub id: u64,
    pub payload: Vec<u8>,
}

/// The key of the checkpoint row.
const CHECKPOINT: [u8; 1] = [table::ROWS_BEHIND];

/// Adds to `batch` the rows that `items` change (later items of one id
/// replace earlier ones) and the checkpoint `seq`. Reads each changed row
/// first: only one thread writes these rows at a time.
pub(crate) fn write(
    tree: &sled::Tree,
    items: impl IntoIterator<Item = Item>,
    seq: u64,
    batch: &mut sled::Batch,
) -> Result<(), Error> {
    let mut groups: BTreeMap<Vec<u8>, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for item in items {
        groups.entry(item.row).or_default().insert(item.id, item.payload);
    }
    for (row, changed) in groups {
        let stored = tree.get(&row).map_err(Error::storage)?;
        let mut items: BTreeMap<u64, &[u8]> =
            stored.as_deref().map(decode_group).transpose()?.unwrap_or_default().into_iter().collect();
        items.extend(changed.iter().map(|(id, payload)| (*id, payload.as_slice())));
        let mut merged = Vec::new();
        for (id, payload) in items {
            put(&mut merged, id, payload);
        }
        batch.insert(row, merged);
    }
    batch.insert(&CHECKPOINT, &seq.to_be_bytes());
    Ok(())
}

fn put(row: &mut Vec<u8>, id: u64, payload: &[u8]) {
    row.extend_from_slice(&id.to_be_bytes());
    row.extend_from_slice(&u32::try_from(payload.len()).expect("an item under 4 GiB").to_be_bytes());
    row.extend_from_slice(payload);
}

/// The items of one group row, in id order.
pub(crate) fn decode_group(mut row: &[u8]) -> Result<Vec<(u64, &[u8])>, Error> {
    let mut items = Vec::new();
    while !row.is_empty() {
        let head: &[u8; 12] = row.get(..12).and_then(|b| b.try_into().ok()).ok_or(Error::Corrupt("item group"))?;
        let id = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        let payload = row.get(12..12 + length).ok_or(Error::Corrupt("item group"))?;
        items.push((id, payload));
        row = &row[12 + length..];
    }
    Ok(items)
}

/// The seq up to which the rows are complete (0: never written).
fn checkpoint(tree: &sled::Tree) -> Result<u64, Error> {
    match tree.get(CHECKPOINT).map_err(Error::storage)? {
        None => Ok(0),
        Some(value) => {
            let bytes = value.as_ref().try_into().map_err(|_| Error::Corrupt("rows-behind checkpoint"))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
}

/// Writes the rows that the last run did not get to (it stopped abruptly),
/// from the log after the checkpoint up to `head`, and flushes them.
/// `tables` are the tables held behind the log: a data directory written
/// before they were (no checkpoint) has them rebuilt from the whole log.
pub(crate) fn catch_up(
    db: &sled::Db,
    tree: &sled::Tree,
    head: u64,
    written_behind: WrittenBehind,
    tables: &[u8],
) -> Result<(), Error> {
    const ENTRIES_PER_BATCH: usize = 10_000;
    let checkpoint = checkpoint(tree)?;
    if checkpoint >= head {
        return Ok(());
    }
    if checkpoint == 0 {
        let mut batch = sled::Batch::default();
        for table in tables {
            for row in tree.scan_prefix([*table]) {
                batch.remove(row.map_err(Error::storage)?.0);
            }
        }
        tree.apply_batch(batch).map_err(Error::storage)?;
    }
    let mut items = 0;
    let mut next = checkpoint + 1;
    while next <= head {
        let entries = read_log(tree, next, ENTRIES_PER_BATCH)?;
        let Some(last) = entries.last().map(|entry| entry.seq) else { break };
        let picked: Vec<Item> = entries
            .iter()
            .filter_map(|entry| {
                let (row, id) = written_behind(&entry.record)?;
                Some(Item { row, id, payload: entry.record.encode_payload() })
            })
            .collect();
        items += picked.len();
        let mut batch = sled::Batch::default();
        write(tree, picked, last, &mut batch)?;
        tree.apply_batch(batch).map_err(Error::storage)?;
        next = last + 1;
    }
    db.flush().map_err(Error::storage)?;
    tracing::info!(from = checkpoint + 1, to = head, items, "wrote the rows behind the log that the last run left");
    Ok(())
}
