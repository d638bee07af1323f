//! `ledger` owns ticket inventory: seats, holds, bookings, tickets and
//! check-in. Ticket types are spread over lock-sharded shards; a shard owns
//! the stock, bookings and holds of its ticket types behind its own lock, so
//! bookings for different events never contend. Idempotency keys live in
//! their own shards, always locked before a stock shard.
//!
//! Promises, under any concurrency: sold = confirmed + live held seats <=
//! capacity; one idempotency key of one user maps to at most one booking; a
//! user's seats of a ticket type stay within its per-user limit; a booking is
//! returned only after the flush that holds its log record (group commit via
//! [`graph::Store::sync`]). State is rebuilt from the stored bookings at open.
//! The crate knows nothing of HTTP or GraphQL.
//!
//! ```no_run
//! # fn run(graph: std::sync::Arc<graph::Graph>) -> Result<(), ledger::Error> {
//! use graph::ids::{TicketTypeId, UserId};
//! let ledger = ledger::Ledger::open(graph, ledger::Options::default())?;
//! let request = ledger::BookRequest {
//!     user: UserId(1), ticket_type: TicketTypeId(1), quantity: 2,
//!     idempotency_key: "order-17".into(), hold: false,
//! };
//! let booking = ledger.book(&request, graph::now_ms())?;
//! assert_eq!(booking.tickets.len(), 2);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod error;
mod shard;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use graph::ids::{BookingId, EventId, TicketId, TicketTypeId, UserId};
use graph::log::Record;
use graph::model::{Booking, BookingStatus, EventStatus, Ticket};
use graph::Graph;

pub use error::Error;
use shard::{Shard, Stock};

/// Most seats in one booking.
pub const QUANTITY_MAX: u32 = 50;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 200;
/// Shards are addressed by the low byte of a hash, so at most this many.
pub const SHARDS_MAX: usize = 256;

/// Settings of the ledger.
#[derive(Clone, Debug)]
pub struct Options {
    /// Stock shards, a power of two up to [`SHARDS_MAX`].
    pub shards: usize,
    /// How long a hold lasts, milliseconds.
    pub hold_ttl_ms: i64,
    /// Write every change to the log and acknowledge after its flush. Off,
    /// the ledger only decides in memory and writes nothing: for benchmarks
    /// and tests of the decisions alone, never for serving.
    pub durable: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { shards: 16, hold_ttl_ms: 10 * 60 * 1000, durable: true }
    }
}

/// A request for seats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookRequest {
    /// Who books.
    pub user: UserId,
    /// What.
    pub ticket_type: TicketTypeId,
    /// How many seats, 1..=50.
    pub quantity: u32,
    /// The client's key: the same user, key and input give the same booking.
    pub idempotency_key: String,
    /// Hold until the hold expires instead of confirming at once.
    pub hold: bool,
}

/// The outcome of a change that is decided and appended to the log at `seq`
/// but not yet known durable: acknowledge it only once the store's durable
/// seq reaches `seq` ([`graph::Store::sync`], or a durable-seq watcher for
/// callers that wait asynchronously). The plain methods wait themselves.
#[derive(Clone, Debug)]
#[must_use = "a logged change must be waited for before it is acknowledged"]
pub struct Logged<T> {
    /// What the change produced.
    pub value: T,
    /// The log position that must be durable first (0: nothing to wait for).
    pub seq: u64,
}

/// The ticket inventory.
pub struct Ledger {
    graph: Arc<Graph>,
    shards: Box<[Mutex<Shard>]>,
    keys: Box<[Mutex<KeyMap>]>,
    mask: u64,
    next_booking: AtomicU64,
    hold_ttl_ms: i64,
    durable: bool,
    /// Seconds spent waiting for a busy shard lock.
    lock_wait: graph::stats::Histogram,
    /// Booking attempts by outcome.
    outcomes: Outcomes,
}

/// Booking attempts by outcome, for metrics.
#[derive(Default)]
pub struct Outcomes {
    /// Booked (held or confirmed).
    pub booked: AtomicU64,
    /// Answered from an earlier request with the same key.
    pub replayed: AtomicU64,
    /// Refused: fewer seats left than asked for.
    pub sold_out: AtomicU64,
    /// Refused: the per-user limit.
    pub limit_exceeded: AtomicU64,
    /// Refused for another reason (input, state, missing).
    pub refused: AtomicU64,
}

/// Who cancels a booking, which decides what they may cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canceller {
    /// The event's organizer or an admin: any live booking (a refund after
    /// the door, say).
    EventSide,
    /// Its owner: not once a ticket of it was used (they were let in), nor a
    /// confirmed booking once the event's sales closed (a no-show would take
    /// their sale out of the organizer's figures after the show).
    Owner,
}

/// Booking by user and idempotency key (nested so lookups borrow the key).
type KeyMap = HashMap<UserId, HashMap<String, BookingId>>;

/// The low byte every booking id of a ticket type carries, so a booking's
/// shard follows from its id whatever the shard count.
fn shard_hint(ticket_type: TicketTypeId) -> u64 {
    ticket_type.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56
}

impl Ledger {
    /// Opens the ledger over `graph`, rebuilding every shard from the stored
    /// bookings.
    pub fn open(graph: Arc<Graph>, options: Options) -> Result<Ledger, Error> {
        assert!(
            options.shards.is_power_of_two() && options.shards <= SHARDS_MAX,
            "shards must be a power of two <= 256"
        );
        let ledger = Ledger {
            shards: (0..options.shards).map(|_| Mutex::new(Shard::default())).collect(),
            keys: (0..options.shards).map(|_| Mutex::new(KeyMap::new())).collect(),
            mask: u64::try_from(options.shards - 1).expect("shard count fits u64"),
            next_booking: AtomicU64::new(1),
            hold_ttl_ms: options.hold_ttl_ms,
            durable: options.durable,
            lock_wait: graph::stats::Histogram::new(graph::stats::SECONDS_BUCKETS),
            outcomes: Outcomes::default(),
            graph,
        };
        ledger.recover()?;
        Ok(ledger)
    }

    /// Rebuilds the shards from the stored bookings, then finishes what a
    /// crash may have interrupted: an event cancelled while its bookings
    /// were still being cancelled gets the rest of its cascade now.
    fn recover(&self) -> Result<(), Error> {
        let mut counter_max = 0;
        let mut cancelled_events = HashSet::new();
        for booking in self.graph.bookings()? {
            let booking = booking?;
            counter_max = counter_max.max(issue_order(booking.id));
            if booking.takes_seats() && self.graph.event_status(booking.event).is_some_and(EventStatus::is_cancelled) {
                cancelled_events.insert(booking.event);
            }
            self.keys_of(booking.user)
                .entry(booking.user)
                .or_default()
                .insert(booking.idempotency_key.clone(), booking.id);
            let mut shard = self.shard_of(booking.ticket_type);
            self.ensure_stock(&mut shard, booking.ticket_type)?;
            shard.insert(Arc::new(booking));
        }
        self.next_booking.store(counter_max + 1, Ordering::Relaxed);
        for event in cancelled_events {
            let cancelled = self.cancel_event(event, graph::now_ms())?;
            tracing::warn!(event = event.0, cancelled, "finished cancelling the bookings of a cancelled event");
        }
        Ok(())
    }

    fn shard_index(&self, hint: u64) -> usize {
        usize::try_from(hint & self.mask).expect("shard index fits usize")
    }

    fn shard_of(&self, ticket_type: TicketTypeId) -> MutexGuard<'_, Shard> {
        self.lock_shard(self.shard_index(shard_hint(ticket_type)))
    }

    fn shard_of_booking(&self, id: BookingId) -> MutexGuard<'_, Shard> {
        self.lock_shard(self.shard_index(id.0 & 0xff))
    }

    /// Locks a shard, timing the wait when it is busy.
    fn lock_shard(&self, index: usize) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[index];
        match shard.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                let started = std::time::Instant::now();
                let guard = shard.lock().expect("shard lock poisoned");
                self.lock_wait.observe(started.elapsed().as_secs_f64());
                guard
            }
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("shard lock poisoned"),
        }
    }

    /// Seconds waited for busy shard locks.
    pub fn lock_wait_stats(&self) -> graph::stats::HistogramSnapshot {
        self.lock_wait.snapshot()
    }

    /// Booking attempts by outcome so far.
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }

    /// The idempotency keys of a user live in one key shard.
    fn keys_of(&self, user: UserId) -> MutexGuard<'_, KeyMap> {
        let hint = user.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56;
        self.keys[self.shard_index(hint)].lock().expect("key lock poisoned")
    }

    /// The stock of a ticket type, created from its definition on first use.
    fn ensure_stock<'s>(&self, shard: &'s mut Shard, ticket_type: TicketTypeId) -> Result<&'s mut Stock, Error> {
        match shard.stock.entry(ticket_type) {
            std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let definition = self.graph.ticket_type(ticket_type).ok_or(Error::NotFound("ticket type"))?;
                Ok(entry.insert(Stock::new(&definition)))
            }
        }
    }

    /// Appends a booking's new state to the log; it is written with its row
    /// at the next sync. Called under the booking's shard lock, so a
    /// booking's records reach the log in the order they happened.
    fn commit(&self, record: impl FnOnce() -> Record, now_ms: i64) -> u64 {
        if self.durable {
            self.graph.store().append(now_ms, record())
        } else {
            0
        }
    }

    /// Waits until a logged change is on disk (shared flushes) and returns it.
    fn settle<T>(&self, logged: Logged<T>) -> Result<T, Error> {
        if self.durable {
            self.graph.store().sync(logged.seq)?;
        }
        Ok(logged.value)
    }

    /// Books seats: held until the hold expires, or confirmed with tickets.
    /// Returns once the booking is durable.
    pub fn book(&self, request: &BookRequest, now_ms: i64) -> Result<Arc<Booking>, Error> {
        let logged = self.book_logged(request, now_ms)?;
        self.settle(logged)
    }

    /// Confirms a held booking; returns once durable. See [`Ledger::confirm_logged`].
    pub fn confirm(&self, id: BookingId, now_ms: i64) -> Result<Arc<Booking>, Error> {
        let logged = self.confirm_logged(id, now_ms)?;
        self.settle(logged)
    }

    /// Cancels a booking, used tickets or not; returns once durable. See
    /// [`Ledger::cancel_logged`].
    pub fn cancel(&self, id: BookingId, now_ms: i64) -> Result<Arc<Booking>, Error> {
        let logged = self.cancel_logged(id, now_ms, Canceller::EventSide)?;
        self.settle(logged)
    }

    /// Checks a ticket in; returns once durable. See [`Ledger::check_in_logged`].
    pub fn check_in(&self, code: &str, now_ms: i64) -> Result<(Arc<Booking>, usize), Error> {
        let logged = self.check_in_logged(code, now_ms)?;
        self.settle(logged)
    }

    /// Cancels an event's bookings; returns once durable. See [`Ledger::cancel_event_logged`].
    pub fn cancel_event(&self, event: EventId, now_ms: i64) -> Result<usize, Error> {
        let logged = self.cancel_event_logged(event, now_ms)?;
        self.settle(logged)
    }

    /// Decides a booking and appends it to the log: held until the hold
    /// expires, or confirmed with tickets.
    pub fn book_logged(&self, request: &BookRequest, now_ms: i64) -> Result<Logged<Arc<Booking>>, Error> {
        let outcome = self.decide_booking(request, now_ms);
        if let Err(error) = &outcome {
            let counter = match error {
                Error::SoldOut { .. } => &self.outcomes.sold_out,
                Error::LimitExceeded { .. } => &self.outcomes.limit_exceeded,
                _ => &self.outcomes.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    fn decide_booking(&self, request: &BookRequest, now_ms: i64) -> Result<Logged<Arc<Booking>>, Error> {
        check_request(request)?;
        let mut keys = self.keys_of(request.user);
        let existing = keys.get(&request.user).and_then(|of_user| of_user.get(request.idempotency_key.as_str()));
        if let Some(&existing) = existing {
            drop(keys);
            self.outcomes.replayed.fetch_add(1, Ordering::Relaxed);
            return self.replay(existing, request);
        }
        let mut shard = self.shard_of(request.ticket_type);
        self.expire_due(&mut shard, now_ms);
        let stock = self.ensure_stock(&mut shard, request.ticket_type)?;
        match self.graph.event_sales(stock.event) {
            Some((EventStatus::Published, closes_ms)) if now_ms >= closes_ms => {
                return Err(self.sales_closed(stock.event))
            }
            Some((EventStatus::Published, _)) => {}
            Some((EventStatus::Draft, _)) => return Err(Error::NotOnSale("the event is not on sale yet (DRAFT)")),
            Some((EventStatus::Cancelled | EventStatus::Withdrawn, _)) => {
                return Err(Error::NotOnSale("the event is cancelled"))
            }
            None => return Err(Error::NotFound("event")),
        }
        if request.quantity > stock.available() {
            return Err(Error::SoldOut { available: stock.available(), asked: request.quantity });
        }
        let owned = stock.seats_by_user.get(&request.user).copied().unwrap_or(0);
        if let Some(limit) = stock.per_user_limit {
            if owned + request.quantity > limit {
                return Err(Error::LimitExceeded { limit, owned, asked: request.quantity });
            }
        }
        let order = self.next_booking.fetch_add(1, Ordering::Relaxed);
        let id = BookingId((order << 8) | shard_hint(request.ticket_type));
        let mut booking = Booking {
            id,
            user: request.user,
            event: stock.event,
            ticket_type: request.ticket_type,
            quantity: request.quantity,
            unit_price_cents: stock.price_cents,
            idempotency_key: request.idempotency_key.clone(),
            status: BookingStatus::Held,
            created_at_ms: now_ms,
            expires_at_ms: Some(now_ms.saturating_add(self.hold_ttl_ms)),
            confirmed_at_ms: None,
            tickets: Vec::new(),
        };
        if !request.hold {
            confirm_in_place(&mut booking, now_ms);
        }
        let booking = Arc::new(booking);
        let seq = if request.hold {
            self.commit(|| Record::BookingHeld(booking.clone()), now_ms)
        } else {
            self.commit(|| Record::BookingConfirmed(booking.clone()), now_ms)
        };
        shard.insert(booking.clone());
        drop(shard);
        keys.entry(request.user).or_default().insert(request.idempotency_key.clone(), id);
        drop(keys);
        self.outcomes.booked.fetch_add(1, Ordering::Relaxed);
        Ok(Logged { value: booking, seq })
    }

    /// The booking an idempotency key already made, if the input matches.
    fn replay(&self, existing: BookingId, request: &BookRequest) -> Result<Logged<Arc<Booking>>, Error> {
        let booking = self.booking(existing).ok_or(Error::NotFound("booking"))?;
        if booking.ticket_type != request.ticket_type
            || booking.quantity != request.quantity
            || booking.made_as_hold() != request.hold
        {
            return Err(Error::Conflict("idempotencyKey was already used with a different input".into()));
        }
        // The first request may still be waiting for its flush.
        Ok(Logged { value: booking, seq: self.replay_seq() })
    }

    /// Confirms a held booking (issuing tickets); confirming a confirmed
    /// booking returns it unchanged.
    pub fn confirm_logged(&self, id: BookingId, now_ms: i64) -> Result<Logged<Arc<Booking>>, Error> {
        let mut shard = self.shard_of_booking(id);
        self.expire_due(&mut shard, now_ms);
        let current = shard.bookings.get(&id).cloned().ok_or(Error::NotFound("booking"))?;
        match current.status {
            BookingStatus::Confirmed => return Ok(Logged { value: current, seq: self.replay_seq() }),
            BookingStatus::Expired => return Err(Error::HoldExpired),
            BookingStatus::Cancelled => return Err(self.booking_cancelled(current.event, "the booking is cancelled")),
            BookingStatus::Held => {}
        }
        // A hold is a place in a sale: it cannot be bought once the sale closed.
        if self.sales_are_closed(current.event, now_ms) {
            return Err(self.sales_closed(current.event));
        }
        let mut booking = Booking::clone(&current);
        // Confirmed after the millisecond it was made, even on a quick
        // confirm or a clock that stepped back: the times then tell a hold
        // from a booking confirmed at once (`Booking::made_as_hold`).
        confirm_in_place(&mut booking, now_ms.max(current.created_at_ms.saturating_add(1)));
        let booking = Arc::new(booking);
        let seq = self.commit(|| Record::BookingConfirmed(booking.clone()), now_ms);
        shard.replace(booking.clone());
        Ok(Logged { value: booking, seq })
    }

    /// Whether the event's sales closed by `now_ms` (at its end, or at its
    /// start when it has none).
    fn sales_are_closed(&self, event: EventId, now_ms: i64) -> bool {
        self.graph.event_sales(event).is_some_and(|(_, closes_ms)| now_ms >= closes_ms)
    }

    /// Whether the event has an end, so its sales close when it ends
    /// rather than when it starts (what the messages say).
    fn has_end(&self, event: EventId) -> bool {
        self.graph.event(event).is_some_and(|event| event.ends_at_ms.is_some())
    }

    /// Why an event's sales are closed: it ended, or (with no end) it started.
    fn sales_closed(&self, event: EventId) -> Error {
        Error::Conflict(if self.has_end(event) {
            "the event is over: its sales closed when it ended".into()
        } else {
            "the event has started: with no end time (endsAt), its sales closed at its start".into()
        })
    }

    /// Why a cancelled booking cannot be used: its event was called off, or
    /// (`otherwise`) it was cancelled itself.
    fn booking_cancelled(&self, event: EventId, otherwise: &str) -> Error {
        let called_off =
            matches!(self.graph.event_sales(event), Some((EventStatus::Cancelled | EventStatus::Withdrawn, _)));
        Error::Conflict(if called_off { "the event is cancelled".into() } else { otherwise.into() })
    }

    /// The seq to wait for when answering with state another request may
    /// still be flushing.
    fn replay_seq(&self) -> u64 {
        if self.durable {
            self.graph.store().appended_seq()
        } else {
            0
        }
    }

    /// Cancels a held or confirmed booking and returns its seats; a
    /// cancelled booking is returned as it is. See [`Canceller`] for what
    /// its owner may not cancel (`Error::TicketUsed`, `Error::Conflict`).
    pub fn cancel_logged(&self, id: BookingId, now_ms: i64, by: Canceller) -> Result<Logged<Arc<Booking>>, Error> {
        let mut shard = self.shard_of_booking(id);
        self.expire_due(&mut shard, now_ms);
        let current = shard.bookings.get(&id).cloned().ok_or(Error::NotFound("booking"))?;
        match current.status {
            BookingStatus::Cancelled => return Ok(Logged { value: current, seq: self.replay_seq() }),
            BookingStatus::Expired => return Err(Error::Conflict("the hold already expired".into())),
            BookingStatus::Held | BookingStatus::Confirmed => {}
        }
        // Decided under the shard's lock, so a check-in cannot slip between.
        let first_used = current.tickets.iter().filter_map(|ticket| ticket.checked_in_at_ms).min();
        if let (Canceller::Owner, Some(at_ms)) = (by, first_used) {
            return Err(Error::TicketUsed { at_ms });
        }
        if by == Canceller::Owner
            && current.status == BookingStatus::Confirmed
            && self.sales_are_closed(current.event, now_ms)
        {
            let over = if self.has_end(current.event) { "the event is over" } else { "the event has started" };
            return Err(Error::Conflict(format!(
                "{over}: only its organizer or an admin may cancel a booking of it now"
            )));
        }
        let (booking, seq) = self.cancel_locked(&mut shard, &current, now_ms);
        Ok(Logged { value: booking, seq })
    }

    fn cancel_locked(&self, shard: &mut Shard, current: &Booking, now_ms: i64) -> (Arc<Booking>, u64) {
        let mut booking = current.clone();
        booking.status = BookingStatus::Cancelled;
        booking.expires_at_ms = None;
        let booking = Arc::new(booking);
        let seq = self.commit(|| Record::BookingCancelled(booking.clone()), now_ms);
        shard.replace(booking.clone());
        (booking, seq)
    }

    /// Cancels every live booking of the event's ticket types; returns how many.
    pub fn cancel_event_logged(&self, event: EventId, now_ms: i64) -> Result<Logged<usize>, Error> {
        let mut cancelled = 0;
        let mut seq = 0;
        for ticket_type in self.graph.ticket_types(event) {
            let mut shard = self.shard_of(ticket_type.id);
            let all = shard.stock.get(&ticket_type.id).map(|s| s.bookings.as_slice()).unwrap_or(&[]);
            let live: Vec<BookingId> = all.iter().copied().filter(|id| shard.bookings[id].takes_seats()).collect();
            for id in live {
                let current = shard.bookings[&id].clone();
                seq = self.cancel_locked(&mut shard, &current, now_ms).1;
                cancelled += 1;
            }
        }
        Ok(Logged { value: cancelled, seq })
    }

    /// Checks in the ticket with `code`, once, for confirmed bookings only.
    pub fn check_in_logged(&self, code: &str, now_ms: i64) -> Result<Logged<(Arc<Booking>, usize)>, Error> {
        let (id, seat) = ticket_of_code(code).ok_or(Error::NotFound("ticket"))?;
        let mut shard = self.shard_of_booking(id);
        let current = shard.bookings.get(&id).ok_or(Error::NotFound("ticket"))?;
        if !current.tickets.get(seat).is_some_and(|ticket| same_code(&ticket.code, code)) {
            return Err(Error::NotFound("ticket"));
        }
        let mut booking = Booking::clone(current);
        if booking.status != BookingStatus::Confirmed {
            return Err(self.booking_cancelled(booking.event, "the ticket's booking is cancelled"));
        }
        if let Some(at) = booking.tickets[seat].checked_in_at_ms {
            return Err(Error::AlreadyCheckedIn { at_ms: at });
        }
        booking.tickets[seat].checked_in_at_ms = Some(now_ms);
        let booking = Arc::new(booking);
        let seq = self.commit(|| Record::TicketCheckedIn(booking.clone()), now_ms);
        shard.replace(booking.clone());
        Ok(Logged { value: (booking, seat), seq })
    }

    /// Expires every hold due at `now_ms`, in every shard, and writes the
    /// expiries; returns how many.
    pub fn reap_expired(&self, now_ms: i64) -> Result<usize, Error> {
        let mut expired = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("shard lock poisoned");
            expired += self.expire_due(&mut shard, now_ms);
        }
        if expired > 0 && self.durable {
            self.graph.store().sync(self.graph.store().appended_seq())?;
        }
        Ok(expired)
    }

    /// Expires a shard's due holds. The records are written with the next
    /// round, which is asked for here: the change that found them due may
    /// be refused and sync nothing, and the reaper no longer sees them,
    /// while the log's readers (the `availability` subscribers) wait for
    /// the records to be durable. An expiry lost in a crash is simply
    /// redone at start.
    fn expire_due(&self, shard: &mut Shard, now_ms: i64) -> usize {
        let due = shard.expired_holds(now_ms);
        for id in &due {
            let mut booking = Booking::clone(&shard.bookings[id]);
            booking.status = BookingStatus::Expired;
            booking.expires_at_ms = None;
            let booking = Arc::new(booking);
            self.commit(|| Record::BookingExpired(booking.clone()), now_ms);
            shard.replace(booking);
        }
        if !due.is_empty() && self.durable {
            self.graph.store().request_flush();
        }
        due.len()
    }

    /// The booking a ticket code belongs to, and the ticket's seat in it.
    pub fn booking_of_ticket(&self, code: &str) -> Option<(Arc<Booking>, usize)> {
        let (id, seat) = ticket_of_code(code)?;
        let booking = self.booking(id)?;
        booking.tickets.get(seat).is_some_and(|ticket| same_code(&ticket.code, code)).then_some((booking, seat))
    }

    /// A booking by id.
    pub fn booking(&self, id: BookingId) -> Option<Arc<Booking>> {
        self.shard_of_booking(id).bookings.get(&id).cloned()
    }

    /// A user's bookings, newest first.
    pub fn bookings_of(&self, user: UserId) -> Vec<Arc<Booking>> {
        // Every booking has an idempotency key, so the user's keys list
        // every booking of theirs.
        let ids: Vec<BookingId> =
            self.keys_of(user).get(&user).map(|of_user| of_user.values().copied().collect()).unwrap_or_default();
        let mut found: Vec<Arc<Booking>> = ids.into_iter().filter_map(|id| self.booking(id)).collect();
        found.sort_by_key(|b| std::cmp::Reverse((b.created_at_ms, b.id)));
        found
    }

    /// Every booking of an event (any status), by id.
    pub fn bookings_of_event(&self, event: EventId) -> Vec<Arc<Booking>> {
        let mut found: Vec<Arc<Booking>> = Vec::new();
        for ticket_type in self.graph.ticket_types(event) {
            let shard = self.shard_of(ticket_type.id);
            let ids = shard.stock.get(&ticket_type.id).map(|s| s.bookings.as_slice()).unwrap_or(&[]);
            found.extend(ids.iter().map(|id| shard.bookings[id].clone()));
        }
        found.sort_by_key(|b| b.id);
        found
    }

    /// The [`issue_order`] the next booking takes: every booking made from
    /// now on has this or a later one.
    pub fn next_issue_order(&self) -> u64 {
        self.next_booking.load(Ordering::Relaxed)
    }

    /// The bookings held now (seats taken, neither confirmed nor ended;
    /// a hold past its expiry counts until the reaper ends it).
    pub fn held_bookings(&self) -> Vec<BookingId> {
        let mut held = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("shard lock poisoned");
            held.extend(shard.holds.iter().map(|&(_, id)| id));
        }
        held
    }

    /// Seats sold (confirmed + live held) of a ticket type.
    pub fn sold(&self, ticket_type: TicketTypeId) -> u32 {
        self.shard_of(ticket_type).stock.get(&ticket_type).map_or(0, Stock::sold)
    }
}

/// The order in which booking `id` was issued: bookings are numbered one
/// after another, and the id's low byte names the shard.
pub fn issue_order(id: BookingId) -> u64 {
    id.0 >> 8
}

fn check_request(request: &BookRequest) -> Result<(), Error> {
    if !(1..=QUANTITY_MAX).contains(&request.quantity) {
        return Err(Error::Invalid { field: "quantity", reason: format!("must be between 1 and {QUANTITY_MAX}") });
    }
    let key_chars = request.idempotency_key.chars().count();
    if key_chars == 0 || key_chars > IDEMPOTENCY_KEY_CHARS_MAX {
        let reason = format!("must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} characters");
        return Err(Error::Invalid { field: "idempotencyKey", reason });
    }
    Ok(())
}

/// Marks a booking confirmed and issues one ticket per seat.
fn confirm_in_place(booking: &mut Booking, now_ms: i64) {
    booking.status = BookingStatus::Confirmed;
    booking.expires_at_ms = None;
    booking.confirmed_at_ms = Some(now_ms);
    booking.tickets = (0..booking.quantity)
        .map(|seat| {
            let id = TicketId(booking.id.0 * TICKETS_PER_BOOKING_SLOTS + u64::from(seat));
            Ticket { id, code: ticket_code(id), checked_in_at_ms: None }
        })
        .collect();
}

/// Ticket ids are `booking id * 64 + seat`, so a ticket id names its booking.
const TICKETS_PER_BOOKING_SLOTS: u64 = 64;
const _: () = assert!(QUANTITY_MAX as u64 <= TICKETS_PER_BOOKING_SLOTS);

/// The booking id and seat a well-formed ticket code points at (the code
/// must still be compared with the stored one: its random part is the secret).
fn ticket_of_code(code: &str) -> Option<(BookingId, usize)> {
    if code.len() != TICKET_CODE_CHARS || !code.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let ticket = u64::from_str_radix(&code[..16], 16).ok()?;
    let seat = usize::try_from(ticket % TICKETS_PER_BOOKING_SLOTS).ok()?;
    Some((BookingId(ticket / TICKETS_PER_BOOKING_SLOTS), seat))
}

/// Compares codes in time independent of where they differ.
fn same_code(stored: &str, given: &str) -> bool {
    stored.len() == given.len() && stored.bytes().zip(given.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Characters of a ticket code.
pub const TICKET_CODE_CHARS: usize = 48;

/// A ticket's code: its id (16 hex digits, so check-in finds the booking
/// without an index) then 128 random bits (32 hex digits, the unguessable
/// part), lower-case hex, URL-safe. The thread's generator is a ChaCha
/// CSPRNG seeded (and periodically reseeded) from the operating system.
fn ticket_code(ticket: TicketId) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let secret: u128 = rand::random();
    let mut code = [0u8; TICKET_CODE_CHARS];
    for (nibble, digit) in code[..16].iter_mut().rev().enumerate() {
        *digit = HEX[((ticket.0 >> (nibble * 4)) & 0xf) as usize];
    }
    for (nibble, digit) in code[16..].iter_mut().rev().enumerate() {
        *digit = HEX[((secret >> (nibble * 4)) & 0xf) as usize];
    }
    String::from_utf8(code.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests;
