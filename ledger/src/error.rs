//! The ledger's one error type: a variant per outcome a buyer can meet.

use std::fmt;

/// Why a ledger operation was refused or failed.
#[derive(Debug)]
pub enum Error {
    /// An input broke a rule; `field` names it.
    Invalid {
        /// The input's API name, e.g. `"quantity"`.
        field: &'static str,
        /// How it is wrong.
        reason: String,
    },
    /// No such ticket type, booking or ticket.
    NotFound(&'static str),
    /// Fewer seats left than asked for.
    SoldOut {
        /// Seats still available.
        available: u32,
        /// Seats asked for.
        asked: u32,
    },
    /// The user's seats of this ticket type would pass its per-user limit.
    LimitExceeded {
        /// The limit.
        limit: u32,
        /// Seats the user already holds or owns.
        owned: u32,
        /// Seats asked for.
        asked: u32,
    },
    /// Confirming a hold whose time ran out.
    HoldExpired,
    /// The state forbids it (key reused, cancelled booking, sales closed).
    Conflict(String),
    /// Booking an event that is not on sale: a draft, or one called off
    /// (apart from [`Error::Conflict`] so that the API can answer it as
    /// absent to those who may not see a draft).
    NotOnSale(&'static str),
    /// The ticket was checked in before, at `at_ms` (unix ms).
    AlreadyCheckedIn {
        /// When the first check-in happened.
        at_ms: i64,
    },
    /// Cancelling a booking whose ticket was used, at `at_ms` (unix ms), by
    /// someone who may not (see [`crate::Ledger::cancel_logged`]).
    TicketUsed {
        /// When the booking's first ticket was checked in.
        at_ms: i64,
    },
    /// Storage failed underneath.
    Graph(graph::Error),
}

impl From<graph::Error> for Error {
    fn from(error: graph::Error) -> Error {
        Error::Graph(error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid { field, reason } => write!(f, "{field}: {reason}"),
            Error::NotFound(what) => write!(f, "no such {what}"),
            // Buyers are shown this as it is: "sold out" only when it is.
            Error::SoldOut { available: 0, .. } => f.write_str("sold out"),
            Error::SoldOut { available, asked } => {
                write!(f, "only {} left, fewer than the {asked} asked for", seats(*available))
            }
            Error::LimitExceeded { limit, owned: 0, asked } => {
                write!(f, "the limit is {} per buyer, fewer than the {asked} asked for", seats(*limit))
            }
            Error::LimitExceeded { limit, owned, asked } => write!(
                f,
                "the limit is {} per buyer: you hold or have bought {owned} (a hold counts until it is confirmed, \
                 cancelled or expires), and {asked} more would pass it",
                seats(*limit)
            ),
            Error::HoldExpired => f.write_str("the hold has expired and its seats were released"),
            Error::Conflict(why) => f.write_str(why),
            Error::NotOnSale(why) => f.write_str(why),
            Error::AlreadyCheckedIn { at_ms } => write!(f, "already checked in at {at_ms} ms since the epoch"),
            Error::TicketUsed { at_ms } => write!(f, "a ticket of it was checked in at {at_ms} ms since the epoch"),
            Error::Graph(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {}

/// "1 seat", "3 seats".
fn seats(n: u32) -> String {
    if n == 1 {
        "1 seat".into()
    } else {
        format!("{n} seats")
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn sold_out_says_sold_out_only_when_nothing_is_left() {
        assert_eq!(Error::SoldOut { available: 0, asked: 2 }.to_string(), "sold out");
        assert_eq!(
            Error::SoldOut { available: 1, asked: 2 }.to_string(),
            "only 1 seat left, fewer than the 2 asked for"
        );
        assert_eq!(
            Error::SoldOut { available: 49, asked: 50 }.to_string(),
            "only 49 seats left, fewer than the 50 asked for"
        );
    }

    #[test]
    fn a_limit_says_what_counts_towards_it() {
        assert_eq!(
            Error::LimitExceeded { limit: 4, owned: 0, asked: 5 }.to_string(),
            "the limit is 4 seats per buyer, fewer than the 5 asked for"
        );
        let held = Error::LimitExceeded { limit: 4, owned: 4, asked: 1 }.to_string();
        assert!(held.starts_with("the limit is 4 seats per buyer: you hold or have bought 4"), "{held}");
        assert!(held.contains("a hold counts") && held.ends_with("and 1 more would pass it"), "{held}");
    }
}
