//! Typed ids. Every entity has its own id type so an event id can never be
//! passed where a user id is expected; the api parses them once, at its edge.

use std::fmt;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash))]
        pub struct $name(pub u64);

        impl $name {
            /// The id as the big-endian bytes used in storage keys, so keys sort by id.
            pub fn to_key(self) -> [u8; 8] {
                self.0.to_be_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ParseIdError;
            /// Ids are positive decimal integers, written as they are
            /// served (no leading zeros: "007" is not 7); zero is never
            /// allocated.
            fn from_str(text: &str) -> Result<Self, ParseIdError> {
                let canonical = !text.starts_with('0');
                if text.is_empty() || text.len() > 20 || !canonical || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseIdError);
                }
                match text.parse::<u64>() {
                    Ok(0) | Err(_) => Err(ParseIdError),
                    Ok(value) => Ok($name(value)),
                }
            }
        }
    };
}

typed_id!(
    /// A registered user (attendee, organizer, admin or partner).
    UserId
);
typed_id!(
    /// An event, in any status.
    EventId
);
typed_id!(
    /// A venue events take place at.
    VenueId
);
typed_id!(
    /// A ticket type of one event: its own price, capacity and limits.
    TicketTypeId
);
typed_id!(
    /// A booking of seats of one ticket type by one user.
    BookingId
);
impl BookingId {
    /// Ids per group of neighbouring bookings. The ledger makes an id as
    /// `counter << 8 | shard hint`, so a group is 16 bookings made one
    /// after another: rows that hold bookings (or facts about them) in
    /// groups rewrite a few rows per batch instead of one per booking.
    pub const GROUP_IDS: u64 = 1 << 12;

    /// The group this booking belongs to.
    pub fn group(self) -> u64 {
        self.0 / Self::GROUP_IDS
    }

    /// The ids of group `group`: from the first up to, not including, the end.
    pub fn group_range(group: u64) -> std::ops::Range<BookingId> {
        BookingId(group * Self::GROUP_IDS)..BookingId((group + 1) * Self::GROUP_IDS)
    }
}

typed_id!(
    /// A ticket: one seat of a confirmed booking.
    TicketId
);
typed_id!(
    /// A partner's or organizer's webhook subscription.
    WebhookId
);

/// The text was not an id: ids are positive decimal integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseIdError;

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a valid id")
    }
}

impl std::error::Error for ParseIdError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_positive_decimals() {
        assert_eq!("42".parse::<UserId>(), Ok(UserId(42)));
        assert!("0".parse::<UserId>().is_err());
        assert!("".parse::<UserId>().is_err());
        assert!("-1".parse::<UserId>().is_err());
        assert!("+1".parse::<UserId>().is_err());
        assert!("1e3".parse::<UserId>().is_err());
        assert!("007".parse::<UserId>().is_err(), "one id, one spelling");
        assert!("00".parse::<UserId>().is_err());
        assert!("99999999999999999999".parse::<UserId>().is_err());
    }

    #[test]
    fn keys_sort_like_ids() {
        assert!(EventId(2).to_key() < EventId(256).to_key());
    }
}
