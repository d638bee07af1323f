//! The entities the graph owns, exactly as they are stored (rkyv) and returned.

use crate::ids::{EventId, TicketTypeId, UserId, VenueId, WebhookId};

/// What a user may do. Self-service registration gives `Attendee` or `Organizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum Role {
    /// Books tickets, follows people.
    Attendee,
    /// Creates venues, events and ticket types; checks attendees in.
    Organizer,
    /// May do anything, including changing roles.
    Admin,
    /// Integrates through the API and webhooks.
    Partner,
}

impl Role {
    /// Whether this role may create venues and events.
    pub fn can_organize(self) -> bool {
        matches!(self, Role::Organizer | Role::Admin)
    }
}

/// Where an event is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum EventStatus {
    /// Visible only to its organizer and admins; not on sale.
    Draft,
    /// Listed and on sale.
    Published,
    /// Called off; nothing more can be sold or changed.
    Cancelled,
    /// Cancelled before it was ever published: as private as a draft, and
    /// shown as CANCELLED. (Last, so that stores written before it still
    /// read.)
    Withdrawn,
}

impl EventStatus {
    /// Seen only by its organizer and admins: never published.
    pub fn is_private(self) -> bool {
        matches!(self, EventStatus::Draft | EventStatus::Withdrawn)
    }

    /// Called off, published before or not.
    pub fn is_cancelled(self) -> bool {
        matches!(self, EventStatus::Cancelled | EventStatus::Withdrawn)
    }
}

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// The address it signs in with, as given (trimmed); unique case-insensitively.
    pub email: String,
    /// Display name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it registered, unix milliseconds.
    pub created_at_ms: i64,
}

/// A place events happen at.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Venue {
    /// Its id.
    pub id: VenueId,
    /// Display name.
    pub name: String,
    /// City it is in.
    pub city: String,
    /// Seats or standing places, when known.
    pub capacity: Option<u32>,
    /// Who created it.
    pub created_by: UserId,
}

/// An event; its ticket types are stored on their own.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    /// Its id.
    pub id: EventId,
    /// The organizer who owns it.
    pub organizer: UserId,
    /// Title shown in listings.
    pub title: String,
    /// Longer text, optional.
    pub description: Option<String>,
    /// Start, unix milliseconds.
    pub starts_at_ms: i64,
    /// End, unix milliseconds, after the start when set.
    pub ends_at_ms: Option<i64>,
    /// City it takes place in.
    pub city: String,
    /// Venue, when it has one.
    pub venue: Option<VenueId>,
    /// Lower-case tags, distinct, in the order given.
    pub tags: Vec<String>,
    /// Draft, published or cancelled.
    pub status: EventStatus,
    /// When it was created, unix milliseconds.
    pub created_at_ms: i64,
}

/// One kind of ticket of an event.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct TicketType {
    /// Its id.
    pub id: TicketTypeId,
    /// The event it admits to.
    pub event: EventId,
    /// Name, e.g. "Early bird".
    pub name: String,
    /// Price of one seat in the currency's minor unit.
    pub price_cents: u32,
    /// ISO 4217 code, upper case.
    pub currency: String,
    /// Seats for sale.
    pub capacity: u32,
    /// Most seats one user may hold or own; `None` is no limit.
    pub per_user_limit: Option<u32>,
}

/// A signed-in session, found by the hash of its bearer token.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Session {
    /// Whose session it is.
    pub user: UserId,
    /// When it stops being accepted, unix milliseconds.
    pub expires_at_ms: i64,
}

/// Where a booking is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum BookingStatus {
    /// Seats held until `expires_at_ms`; no tickets yet.
    Held,
    /// Paid for: tickets issued.
    Confirmed,
    /// Cancelled by its owner, the organizer or an admin; seats returned.
    Cancelled,
    /// A hold that ran out; seats returned.
    Expired,
}

/// One seat of a confirmed booking: what the QR code at the door carries.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Ticket {
    /// Its id.
    pub id: crate::ids::TicketId,
    /// Unguessable, URL-safe code (128 random bits, hex).
    pub code: String,
    /// When it was checked in at the door, unix ms.
    pub checked_in_at_ms: Option<i64>,
}

/// Seats of one ticket type booked by one user.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Booking {
    /// Its id.
    pub id: crate::ids::BookingId,
    /// Who booked.
    pub user: UserId,
    /// The event, denormalised from the ticket type.
    pub event: EventId,
    /// What was booked.
    pub ticket_type: TicketTypeId,
    /// Seats, 1..=50.
    pub quantity: u32,
    /// Price of one seat when booked, minor units.
    pub unit_price_cents: u32,
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// Held, confirmed, cancelled or expired.
    pub status: BookingStatus,
    /// When it was made, unix ms.
    pub created_at_ms: i64,
    /// When a hold runs out, unix ms; `None` once not held.
    pub expires_at_ms: Option<i64>,
    /// When it was confirmed (tickets issued), unix ms.
    pub confirmed_at_ms: Option<i64>,
    /// Issued on confirmation, one per seat.
    pub tickets: Vec<Ticket>,
}

impl Booking {
    /// Whether its seats count as sold: confirmed, or held and not yet expired.
    pub fn takes_seats(&self) -> bool {
        matches!(self.status, BookingStatus::Held | BookingStatus::Confirmed)
    }

    /// Its status as shown at `now_ms`: a hold past its `expires_at` is
    /// expired, also in the moment before the ledger's reaper writes so
    /// (a confirm would already be refused).
    pub fn status_at(&self, now_ms: i64) -> BookingStatus {
        match self.status {
            BookingStatus::Held if self.expires_at_ms.is_some_and(|at| now_ms >= at) => BookingStatus::Expired,
            status => status,
        }
    }

    /// Whether it was asked for as a hold (`hold: true`) rather than
    /// confirmed at once: only a booking confirmed at once has its
    /// confirmation time equal to its creation time (the ledger confirms a
    /// hold at least a millisecond after making it).
    pub fn made_as_hold(&self) -> bool {
        self.confirmed_at_ms != Some(self.created_at_ms)
    }
}

/// Where signed event notifications are POSTed for a partner or organizer.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// Who created it; organizers receive their own events' changes only.
    pub owner: UserId,
    /// An http(s) URL.
    pub url: String,
    /// Event names it receives, e.g. `booking.confirmed`.
    pub events: Vec<String>,
    /// The HMAC-SHA256 signing secret (shown to its owner once).
    pub secret: String,
    /// False once deliveries kept failing until retries ran out.
    pub active: bool,
    /// When it was created, unix ms.
    pub created_at_ms: i64,
}
