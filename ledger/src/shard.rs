//! One shard: the stock, bookings and holds of the ticket types hashed to it,
//! behind one lock. Pure in-memory bookkeeping; the ledger persists.

use std::collections::BTreeSet;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use graph::ids::{BookingId, EventId, TicketTypeId, UserId};
use graph::model::Booking;

/// Seats of one ticket type.
#[derive(Debug)]
pub(crate) struct Stock {
    /// The event the ticket type admits to.
    pub event: EventId,
    /// Price of one seat, copied into each booking.
    pub price_cents: u32,
    pub capacity: u32,
    pub per_user_limit: Option<u32>,
    /// Seats in live holds.
    pub held: u32,
    /// Seats in confirmed bookings.
    pub confirmed: u32,
    /// Held plus confirmed seats per user, for the per-user limit (kept
    /// only when there is a limit).
    pub seats_by_user: HashMap<UserId, u32>,
    /// Every booking of the ticket type, in the order made (cancelling an
    /// event, exports).
    pub bookings: Vec<BookingId>,
}

impl Stock {
    /// No seats sold yet of `definition`.
    pub fn new(definition: &graph::model::TicketType) -> Stock {
        Stock {
            event: definition.event,
            price_cents: definition.price_cents,
            capacity: definition.capacity,
            per_user_limit: definition.per_user_limit,
            held: 0,
            confirmed: 0,
            seats_by_user: HashMap::new(),
            bookings: Vec::new(),
        }
    }

    /// sold = confirmed + live held seats.
    pub fn sold(&self) -> u32 {
        self.held + self.confirmed
    }

    pub fn available(&self) -> u32 {
        debug_assert!(self.sold() <= self.capacity, "oversold: {} of {}", self.sold(), self.capacity);
        self.capacity.saturating_sub(self.sold())
    }

    /// Counts a booking's seats in.
    pub fn take(&mut self, booking: &Booking) {
        self.add(booking, 1);
        assert!(self.sold() <= self.capacity, "oversold: {} of {}", self.sold(), self.capacity);
    }

    /// Counts a booking's seats out.
    pub fn release(&mut self, booking: &Booking) {
        self.add(booking, -1);
    }

    fn add(&mut self, booking: &Booking, sign: i64) {
        let quantity = i64::from(booking.quantity) * sign;
        let bump =
            |value: &mut u32| *value = u32::try_from(i64::from(*value) + quantity).expect("seat counts stay in range");
        match booking.status {
            graph::model::BookingStatus::Held => bump(&mut self.held),
            graph::model::BookingStatus::Confirmed => bump(&mut self.confirmed),
            _ => unreachable!("only held and confirmed bookings take seats"),
        }
        if self.per_user_limit.is_some() {
            bump(self.seats_by_user.entry(booking.user).or_default());
            if self.seats_by_user[&booking.user] == 0 {
                self.seats_by_user.remove(&booking.user);
            }
        }
    }
}

/// Everything one lock guards.
#[derive(Default)]
pub(crate) struct Shard {
    pub stock: HashMap<TicketTypeId, Stock>,
    pub bookings: HashMap<BookingId, Arc<Booking>>,
    /// Live holds by expiry, for the reaper.
    pub holds: BTreeSet<(i64, BookingId)>,
}

impl Shard {
    /// Adds a booking that was never seen before.
    pub fn insert(&mut self, booking: Arc<Booking>) {
        let stock = self.stock.get_mut(&booking.ticket_type).expect("stock exists before bookings");
        stock.bookings.push(booking.id);
        if booking.takes_seats() {
            stock.take(&booking);
        }
        if let (graph::model::BookingStatus::Held, Some(expires)) = (booking.status, booking.expires_at_ms) {
            self.holds.insert((expires, booking.id));
        }
        self.bookings.insert(booking.id, booking);
    }

    /// Replaces a booking with its next state, moving seats as needed.
    pub fn replace(&mut self, next: Arc<Booking>) {
        let previous = self.bookings.insert(next.id, next.clone()).expect("replace an existing booking");
        if let Some(expires) = previous.expires_at_ms {
            self.holds.remove(&(expires, previous.id));
        }
        let stock = self.stock.get_mut(&next.ticket_type).expect("stock exists before bookings");
        if previous.takes_seats() {
            stock.release(&previous);
        }
        if next.takes_seats() {
            stock.take(&next);
        }
        if let (graph::model::BookingStatus::Held, Some(expires)) = (next.status, next.expires_at_ms) {
            self.holds.insert((expires, next.id));
        }
    }

    /// Ids of holds that expired at `now_ms`.
    pub fn expired_holds(&self, now_ms: i64) -> Vec<BookingId> {
        if self.holds.first().is_none_or(|(expires, _)| *expires > now_ms) {
            return Vec::new();
        }
        self.holds.iter().take_while(|(expires, _)| *expires <= now_ms).map(|(_, id)| *id).collect()
    }
}
