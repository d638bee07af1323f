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
    },
    /// The user's seats of this ticket type would pass its per-user limit.
    LimitExceeded {
        /// The limit.
        limit: u32,
        /// Seats the user already holds or owns.
        owned: u32,
    },
    /// Confirming a hold whose time ran out.
    HoldExpired,
    /// The state forbids it (event not on sale, key reused, cancelled booking).
    Conflict(String),
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
            Error::SoldOut { available: 1 } => write!(f, "sold out: 1 seat left"),
            Error::SoldOut { available } => write!(f, "sold out: {available} seats left"),
            Error::LimitExceeded { limit, owned } => {
                write!(f, "per-user limit is {limit} seats and you already have {owned}")
            }
            Error::HoldExpired => f.write_str("the hold has expired and its seats were released"),
            Error::Conflict(why) => f.write_str(why),
            Error::AlreadyCheckedIn { at_ms } => write!(f, "already checked in at {at_ms} ms since the epoch"),
            Error::TicketUsed { at_ms } => write!(f, "a ticket of it was checked in at {at_ms} ms since the epoch"),
            Error::Graph(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn sold_out_says_how_many_seats_are_left() {
        assert_eq!(Error::SoldOut { available: 0 }.to_string(), "sold out: 0 seats left");
        assert_eq!(Error::SoldOut { available: 1 }.to_string(), "sold out: 1 seat left");
        assert_eq!(Error::SoldOut { available: 3 }.to_string(), "sold out: 3 seats left");
    }
}
