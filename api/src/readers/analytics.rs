//! Sales analytics, kept incrementally from the log: per event and per
//! ticket type the CONFIRMED seats, their revenue and the tickets checked
//! in, and per minute of confirmation the seats and revenue still
//! confirmed. Answers never scan bookings.
//!
//! Rows (reader 1): `e|event` totals, `t|event|ticket type` totals,
//! `m|event|minute` sales per minute; each value is three (or two) i64s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use graph::ids::{EventId, TicketTypeId};
use graph::log::{Entry, Record};
use graph::model::Booking;
use graph::readers::{ReaderBatch, ReaderRows};

use super::{key, u64_at, Reader};

/// Seats, revenue and check-ins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sales {
    /// CONFIRMED seats.
    pub sold: i64,
    /// Their price, minor units.
    pub revenue_cents: i64,
    /// Tickets of confirmed bookings checked in.
    pub checked_in: i64,
}

/// One event's figures.
#[derive(Clone, Debug, Default)]
pub struct EventSales {
    /// All ticket types together.
    pub total: Sales,
    /// By ticket type.
    pub by_ticket_type: HashMap<TicketTypeId, Sales>,
    /// Seats and revenue by the minute (unix minutes) they were confirmed in.
    pub by_minute: BTreeMap<i64, (i64, i64)>,
}

/// Every event's figures, shared with the resolvers.
pub type SalesBook = Arc<RwLock<HashMap<EventId, EventSales>>>;

/// The analytics reader.
pub struct Analytics {
    book: SalesBook,
    /// Rows the current batch changed, written once by `finish`.
    touched: Touched,
}

const TOTAL: u8 = b'e';
const TICKET_TYPE: u8 = b't';
const MINUTE: u8 = b'm';

impl Analytics {
    /// The reader over `book`, loaded from its rows.
    pub fn load(rows: &ReaderRows<'_>, book: SalesBook) -> Result<Analytics, graph::Error> {
        let mut analytics = Analytics { book, touched: Touched::default() };
        analytics.reload(rows)?;
        Ok(analytics)
    }

    /// Adds (sign 1) or takes away (-1) a confirmed booking's seats.
    fn count(&mut self, booking: &Booking, sign: i64) {
        let seats = i64::from(booking.quantity) * sign;
        let revenue = seats * i64::from(booking.unit_price_cents);
        let checked_in = booking.tickets.iter().filter(|t| t.checked_in_at_ms.is_some()).count() as i64 * sign;
        let minute = booking.confirmed_at_ms.unwrap_or(booking.created_at_ms).div_euclid(60_000);
        let mut book = self.book.write().expect("sales book lock poisoned");
        let event = book.entry(booking.event).or_default();
        for sales in [&mut event.total, event.by_ticket_type.entry(booking.ticket_type).or_default()] {
            sales.sold += seats;
            sales.revenue_cents += revenue;
            if sign < 0 {
                sales.checked_in += checked_in;
            }
        }
        let bucket = event.by_minute.entry(minute).or_default();
        bucket.0 += seats;
        bucket.1 += revenue;
        drop(book);
        self.touched.mark(booking.event, booking.ticket_type, Some(minute));
    }

    fn check_in(&mut self, booking: &Booking) {
        let mut book = self.book.write().expect("sales book lock poisoned");
        let event = book.entry(booking.event).or_default();
        event.total.checked_in += 1;
        event.by_ticket_type.entry(booking.ticket_type).or_default().checked_in += 1;
        drop(book);
        self.touched.mark(booking.event, booking.ticket_type, None);
    }
}

/// Rows a batch changed, written once at the end of the batch: an on-sale
/// changes the same three rows with every booking.
#[derive(Default)]
struct Touched {
    totals: BTreeSet<EventId>,
    ticket_types: BTreeSet<(EventId, TicketTypeId)>,
    minutes: BTreeSet<(EventId, i64)>,
}

impl Touched {
    fn mark(&mut self, event: EventId, ticket_type: TicketTypeId, minute: Option<i64>) {
        self.totals.insert(event);
        self.ticket_types.insert((event, ticket_type));
        if let Some(minute) = minute {
            self.minutes.insert((event, minute));
        }
    }
}

fn encode(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn decode(bytes: &[u8], count: usize) -> Result<Vec<i64>, graph::Error> {
    if bytes.len() != count * 8 {
        return Err(graph::Error::Corrupt("analytics row"));
    }
    Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect())
}

fn id_at(key: &[u8], at: usize) -> Result<u64, graph::Error> {
    u64_at(key, at, "analytics key")
}

impl Analytics {
    /// The reader's id in storage (same as [`Reader::ID`]).
    pub const ID_OF: u8 = <Analytics as Reader>::ID;
}

impl Reader for Analytics {
    const ID: u8 = 1;
    const NAME: &'static str = "analytics";

    fn apply(&mut self, _rows: &ReaderRows<'_>, entry: &Entry, _batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        match &entry.record {
            Record::BookingConfirmed(booking) => self.count(booking, 1),
            // A cancelled booking with tickets was confirmed until now.
            Record::BookingCancelled(booking) if !booking.tickets.is_empty() => self.count(booking, -1),
            Record::TicketCheckedIn(booking) => self.check_in(booking),
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        let touched = std::mem::take(&mut self.touched);
        let book = self.book.read().expect("sales book lock poisoned");
        for event in touched.totals {
            let total = book[&event].total;
            let value = encode(&[total.sold, total.revenue_cents, total.checked_in]);
            batch.put(rows, &key(&[&[TOTAL], &event.to_key()]), &value);
        }
        for (event, ticket_type) in touched.ticket_types {
            let of_type = book[&event].by_ticket_type[&ticket_type];
            let value = encode(&[of_type.sold, of_type.revenue_cents, of_type.checked_in]);
            batch.put(rows, &key(&[&[TICKET_TYPE], &event.to_key(), &ticket_type.to_key()]), &value);
        }
        for (event, minute) in touched.minutes {
            let (seats, revenue) = book[&event].by_minute[&minute];
            batch.put(rows, &key(&[&[MINUTE], &event.to_key(), &minute.to_be_bytes()]), &encode(&[seats, revenue]));
        }
        Ok(())
    }

    fn reload(&mut self, rows: &ReaderRows<'_>) -> Result<(), graph::Error> {
        self.touched = Touched::default();
        let mut book: HashMap<EventId, EventSales> = HashMap::new();
        for (key, value) in rows.scan(&[TOTAL], false, usize::MAX)? {
            let v = decode(&value, 3)?;
            let sales = Sales { sold: v[0], revenue_cents: v[1], checked_in: v[2] };
            book.entry(EventId(id_at(&key, 1)?)).or_default().total = sales;
        }
        for (key, value) in rows.scan(&[TICKET_TYPE], false, usize::MAX)? {
            let v = decode(&value, 3)?;
            let sales = Sales { sold: v[0], revenue_cents: v[1], checked_in: v[2] };
            let event = book.entry(EventId(id_at(&key, 1)?)).or_default();
            event.by_ticket_type.insert(TicketTypeId(id_at(&key, 9)?), sales);
        }
        for (key, value) in rows.scan(&[MINUTE], false, usize::MAX)? {
            let v = decode(&value, 2)?;
            let minute = id_at(&key, 9)? as i64;
            book.entry(EventId(id_at(&key, 1)?)).or_default().by_minute.insert(minute, (v[0], v[1]));
        }
        *self.book.write().expect("sales book lock poisoned") = book;
        Ok(())
    }
}

/// Sales per bucket of `bucket_minutes`, ascending, empty buckets left out.
pub fn sales_over_time(sales: &EventSales, bucket_minutes: i64) -> Vec<(i64, i64, i64)> {
    let mut buckets: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (&minute, &(seats, revenue)) in &sales.by_minute {
        let bucket = buckets.entry(minute.div_euclid(bucket_minutes) * bucket_minutes).or_default();
        bucket.0 += seats;
        bucket.1 += revenue;
    }
    buckets
        .into_iter()
        .filter(|(_, (seats, revenue))| *seats != 0 || *revenue != 0)
        .map(|(m, (s, r))| (m, s, r))
        .collect()
}
