//! The one log: every state change is a typed record with a sequence number,
//! appended in the same atomic write as the state it changes.
//!
//! A stored entry is `at_ms (8 bytes, BE) | kind (2 bytes, BE) | payload (rkyv)`.
//! Each kind's payload is archived on its own, so new kinds can be added
//! without changing how older entries decode. Consecutive entries written
//! together (one group-commit round) are stored as segments of about 4 KiB
//! under the seq of their first: `count (4 bytes, BE) | (length (4 bytes,
//! BE) | entry)*`, so a round costs one log row per few dozen records.

use std::sync::Arc;

use crate::codec::{decode, encode};
use crate::ids::UserId;
use crate::model::{Booking, Event, Session, TicketType, User, Venue, Webhook};
use crate::Error;

/// A state change, as appended to the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A user account was created.
    UserRegistered(UserRegistered),
    /// An admin changed a user's role; the record holds the new row.
    RoleSet(User),
    /// A bearer token was issued.
    SessionOpened(SessionOpened),
    /// A bearer token was revoked.
    SessionRevoked(SessionRevoked),
    /// A venue was created.
    VenueCreated(Venue),
    /// An event was created as a draft.
    EventCreated(Event),
    /// An event's details changed; the record holds the new row.
    EventUpdated(Event),
    /// An event went on sale; the record holds the new row.
    EventPublished(Event),
    /// An event was called off; the record holds the new row.
    EventCancelled(Event),
    /// A ticket type was added to an event.
    TicketTypeAdded(TicketType),
    /// Seats were held; the record holds the booking.
    BookingHeld(Arc<Booking>),
    /// A booking was confirmed (directly or from a hold), tickets issued.
    BookingConfirmed(Arc<Booking>),
    /// A booking was cancelled and its seats returned.
    BookingCancelled(Arc<Booking>),
    /// A hold ran out and its seats returned.
    BookingExpired(Arc<Booking>),
    /// A ticket of the booking was checked in at the door.
    TicketCheckedIn(Arc<Booking>),
    /// A user started following another.
    Followed(Follow),
    /// A user stopped following another.
    Unfollowed(Follow),
    /// A bulk import created the data directory (its rows were written
    /// directly; readers have nothing to replay).
    Imported(Imported),
    /// A webhook was created; the record holds it.
    WebhookCreated(Webhook),
    /// A webhook was deleted; the record holds it as it was.
    WebhookDeleted(Webhook),
    /// A webhook's deliveries kept failing until retries ran out: it is
    /// inactive now; the record holds the new row.
    WebhookFailing(Webhook),
    /// A failing webhook was made active again by its owner; the record
    /// holds the new row.
    WebhookReactivated(Webhook),
    /// A webhook's owner replaced its signing secret; the record holds the
    /// new row.
    WebhookSecretRotated(Webhook),
}

/// Payload of [`Record::Imported`]: what the import brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Imported {
    /// Users.
    pub users: u64,
    /// Events.
    pub events: u64,
    /// FOLLOWS edges.
    pub follows: u64,
    /// ATTENDS edges.
    pub attends: u64,
}

/// Payload of [`Record::Followed`] and [`Record::Unfollowed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Follow {
    /// Who follows.
    pub follower: UserId,
    /// Whom.
    pub followee: UserId,
}

/// Payload of [`Record::UserRegistered`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct UserRegistered {
    /// The new account.
    pub user: User,
    /// PHC-format password hash; `None` for accounts imported without one.
    pub password_hash: Option<String>,
}

/// Payload of [`Record::SessionOpened`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SessionOpened {
    /// SHA-256 of the bearer token; the token itself is never stored.
    pub token_hash: [u8; 32],
    /// The session it opens.
    pub session: Session,
}

/// Payload of [`Record::SessionRevoked`].
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SessionRevoked {
    /// SHA-256 of the revoked bearer token.
    pub token_hash: [u8; 32],
}

/// One log entry: a record and when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// Wall-clock time of the write, unix milliseconds.
    pub at_ms: i64,
    /// What changed.
    pub record: Record,
}

impl Record {
    pub(crate) fn kind(&self) -> u16 {
        match self {
            Record::UserRegistered(_) => 1,
            Record::RoleSet(_) => 2,
            Record::SessionOpened(_) => 3,
            Record::SessionRevoked(_) => 4,
            Record::VenueCreated(_) => 5,
            Record::EventCreated(_) => 6,
            Record::EventUpdated(_) => 7,
            Record::EventPublished(_) => 8,
            Record::EventCancelled(_) => 9,
            Record::TicketTypeAdded(_) => 10,
            Record::BookingHeld(_) => 11,
            Record::BookingConfirmed(_) => 12,
            Record::BookingCancelled(_) => 13,
            Record::BookingExpired(_) => 14,
            Record::TicketCheckedIn(_) => 15,
            Record::Followed(_) => 16,
            Record::Unfollowed(_) => 17,
            Record::Imported(_) => 18,
            Record::WebhookCreated(_) => 19,
            Record::WebhookDeleted(_) => 20,
            Record::WebhookFailing(_) => 21,
            Record::WebhookReactivated(_) => 22,
            Record::WebhookSecretRotated(_) => 23,
        }
    }

    /// The record's archived payload (without the entry header).
    pub(crate) fn encode_payload(&self) -> Vec<u8> {
        match self {
            Record::UserRegistered(p) => encode(p),
            Record::RoleSet(p) => encode(p),
            Record::SessionOpened(p) => encode(p),
            Record::SessionRevoked(p) => encode(p),
            Record::VenueCreated(p) => encode(p),
            Record::EventCreated(p)
            | Record::EventUpdated(p)
            | Record::EventPublished(p)
            | Record::EventCancelled(p) => encode(p),
            Record::TicketTypeAdded(p) => encode(p),
            Record::BookingHeld(p)
            | Record::BookingConfirmed(p)
            | Record::BookingCancelled(p)
            | Record::BookingExpired(p)
            | Record::TicketCheckedIn(p) => encode(&**p),
            Record::Followed(p) | Record::Unfollowed(p) => encode(p),
            Record::Imported(p) => encode(p),
            Record::WebhookCreated(p)
            | Record::WebhookDeleted(p)
            | Record::WebhookFailing(p)
            | Record::WebhookReactivated(p)
            | Record::WebhookSecretRotated(p) => encode(p),
        }
    }

    fn decode_payload(kind: u16, bytes: &[u8]) -> Result<Record, Error> {
        const WHAT: &str = "log record";
        Ok(match kind {
            1 => Record::UserRegistered(decode(bytes, WHAT)?),
            2 => Record::RoleSet(decode(bytes, WHAT)?),
            3 => Record::SessionOpened(decode(bytes, WHAT)?),
            4 => Record::SessionRevoked(decode(bytes, WHAT)?),
            5 => Record::VenueCreated(decode(bytes, WHAT)?),
            6 => Record::EventCreated(decode(bytes, WHAT)?),
            7 => Record::EventUpdated(decode(bytes, WHAT)?),
            8 => Record::EventPublished(decode(bytes, WHAT)?),
            9 => Record::EventCancelled(decode(bytes, WHAT)?),
            10 => Record::TicketTypeAdded(decode(bytes, WHAT)?),
            11 => Record::BookingHeld(Arc::new(decode(bytes, WHAT)?)),
            12 => Record::BookingConfirmed(Arc::new(decode(bytes, WHAT)?)),
            13 => Record::BookingCancelled(Arc::new(decode(bytes, WHAT)?)),
            14 => Record::BookingExpired(Arc::new(decode(bytes, WHAT)?)),
            15 => Record::TicketCheckedIn(Arc::new(decode(bytes, WHAT)?)),
            16 => Record::Followed(decode(bytes, WHAT)?),
            17 => Record::Unfollowed(decode(bytes, WHAT)?),
            18 => Record::Imported(decode(bytes, WHAT)?),
            19 => Record::WebhookCreated(decode(bytes, WHAT)?),
            20 => Record::WebhookDeleted(decode(bytes, WHAT)?),
            21 => Record::WebhookFailing(decode(bytes, WHAT)?),
            22 => Record::WebhookReactivated(decode(bytes, WHAT)?),
            23 => Record::WebhookSecretRotated(decode(bytes, WHAT)?),
            _ => return Err(Error::Corrupt("log record kind")),
        })
    }

    /// The record's event name for readers, e.g. `"event.published"`.
    pub fn name(&self) -> &'static str {
        match self {
            Record::UserRegistered(_) => "user.registered",
            Record::RoleSet(_) => "user.role_set",
            Record::SessionOpened(_) => "session.opened",
            Record::SessionRevoked(_) => "session.revoked",
            Record::VenueCreated(_) => "venue.created",
            Record::EventCreated(_) => "event.created",
            Record::EventUpdated(_) => "event.updated",
            Record::EventPublished(_) => "event.published",
            Record::EventCancelled(_) => "event.cancelled",
            Record::TicketTypeAdded(_) => "ticket_type.added",
            Record::BookingHeld(_) => "booking.held",
            Record::BookingConfirmed(_) => "booking.confirmed",
            Record::BookingCancelled(_) => "booking.cancelled",
            Record::BookingExpired(_) => "booking.expired",
            Record::TicketCheckedIn(_) => "ticket.checked_in",
            Record::Followed(_) => "user.followed",
            Record::Unfollowed(_) => "user.unfollowed",
            Record::Imported(_) => "data.imported",
            Record::WebhookCreated(_) => "webhook.created",
            Record::WebhookDeleted(_) => "webhook.deleted",
            Record::WebhookFailing(_) => "webhook.failing",
            Record::WebhookReactivated(_) => "webhook.reactivated",
            Record::WebhookSecretRotated(_) => "webhook.secret_rotated",
        }
    }
}

impl Entry {
    /// The stored form of an entry (its seq is the key, not part of the value).
    pub fn encode_value(at_ms: i64, record: &Record) -> Vec<u8> {
        Entry::value_with_payload(at_ms, record, &record.encode_payload())
    }

    /// The stored form, from a payload already encoded.
    pub(crate) fn value_with_payload(at_ms: i64, record: &Record, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(10 + payload.len());
        bytes.extend_from_slice(&at_ms.to_be_bytes());
        bytes.extend_from_slice(&record.kind().to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    /// Reads an entry back from its key's seq and stored value.
    pub fn decode_value(seq: u64, bytes: &[u8]) -> Result<Entry, Error> {
        if bytes.len() < 10 {
            return Err(Error::Corrupt("log entry header"));
        }
        let (at, rest) = bytes.split_at(8);
        let (kind, payload) = rest.split_at(2);
        let at_ms = i64::from_be_bytes(at.try_into().expect("split at 8"));
        let kind = u16::from_be_bytes(kind.try_into().expect("split at 2"));
        let record = Record::decode_payload(kind, payload)?;
        Ok(Entry { seq, at_ms, record })
    }
}

/// Packs consecutive entries' stored forms into one segment.
pub(crate) fn encode_segment(values: &[Vec<u8>]) -> Vec<u8> {
    let size = 4 + values.iter().map(|v| 4 + v.len()).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(
        &u32::try_from(values.len()).expect("a segment holds fewer than 2^32 entries").to_be_bytes(),
    );
    for value in values {
        bytes.extend_from_slice(&u32::try_from(value.len()).expect("an entry is smaller than 4 GiB").to_be_bytes());
        bytes.extend_from_slice(value);
    }
    bytes
}

/// How many entries a segment holds (without decoding them).
pub(crate) fn segment_count(bytes: &[u8]) -> Result<u64, Error> {
    let count: [u8; 4] = bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or(Error::Corrupt("log segment"))?;
    Ok(u64::from(u32::from_be_bytes(count)))
}

/// The entries of a segment whose first entry has seq `first_seq`.
pub fn decode_segment(first_seq: u64, bytes: &[u8]) -> Result<Vec<Entry>, Error> {
    let count = segment_count(bytes)?;
    let mut rest = &bytes[4..];
    let mut entries = Vec::with_capacity(usize::try_from(count.min(4096)).unwrap_or(0));
    for offset in 0..count {
        let length: [u8; 4] = rest.get(..4).and_then(|b| b.try_into().ok()).ok_or(Error::Corrupt("log segment"))?;
        let length = u32::from_be_bytes(length) as usize;
        let value = rest.get(4..4 + length).ok_or(Error::Corrupt("log segment"))?;
        entries.push(Entry::decode_value(first_seq + offset, value)?);
        rest = &rest[4 + length..];
    }
    if !rest.is_empty() {
        return Err(Error::Corrupt("log segment"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    #[test]
    fn every_kind_round_trips() {
        let user =
            User { id: UserId(1), email: "a@b.co".into(), name: "A".into(), role: Role::Attendee, created_at_ms: 5 };
        let records = vec![
            Record::UserRegistered(UserRegistered { user: user.clone(), password_hash: Some("$argon2id$x".into()) }),
            Record::RoleSet(User { role: Role::Admin, ..user.clone() }),
            Record::SessionRevoked(SessionRevoked { token_hash: [9; 32] }),
            Record::Followed(Follow { follower: UserId(1), followee: UserId(2) }),
            Record::Unfollowed(Follow { follower: UserId(2), followee: UserId(1) }),
        ];
        for record in records {
            let bytes = Entry::encode_value(42, &record);
            let entry = Entry::decode_value(3, &bytes).unwrap();
            assert_eq!(entry, Entry { seq: 3, at_ms: 42, record });
        }
    }

    #[test]
    fn segments_round_trip_and_refuse_damage() {
        let records = [
            Record::SessionRevoked(SessionRevoked { token_hash: [1; 32] }),
            Record::Followed(Follow { follower: UserId(3), followee: UserId(4) }),
        ];
        let values: Vec<Vec<u8>> = records.iter().map(|r| Entry::encode_value(7, r)).collect();
        let segment = encode_segment(&values);
        let entries = decode_segment(40, &segment).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [40, 41]);
        assert_eq!(entries[1].record, records[1]);
        assert!(decode_segment(40, &segment[..segment.len() - 1]).is_err(), "a torn segment");
        let mut longer = segment.clone();
        longer.push(0);
        assert!(decode_segment(40, &longer).is_err(), "trailing bytes");
        assert!(decode_segment(40, &[0, 0]).is_err());
    }

    #[test]
    fn unknown_kind_is_corrupt() {
        let mut bytes = Entry::encode_value(1, &Record::SessionRevoked(SessionRevoked { token_hash: [0; 32] }));
        bytes[8] = 0xff;
        assert!(matches!(Entry::decode_value(1, &bytes), Err(Error::Corrupt(_))));
    }
}
