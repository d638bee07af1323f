//! The api's error type. Each variant maps once to its contract code in
//! `extensions.code`; storage and internal details never reach a client.

use async_graphql::ErrorExtensions;

/// Why a request or a field failed, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// No, a bad, an expired or a revoked token where one is needed.
    Unauthenticated(String),
    /// Authenticated but not allowed (role or ownership).
    Forbidden(String),
    /// No such id or code.
    NotFound(String),
    /// An argument is invalid; the message names the field.
    BadUserInput(String),
    /// The state forbids it (duplicate email, cancelled event, ...).
    Conflict(String),
    /// Fewer seats available than asked for.
    SoldOut {
        /// For the buyer.
        message: String,
        /// Seats left, also in `extensions.available` (a client need not
        /// read the message).
        available: u32,
    },
    /// The per-user ticket limit would be passed.
    LimitExceeded {
        /// For the buyer.
        message: String,
        /// The limit, also in `extensions.limit`.
        limit: u32,
        /// The buyer's held and confirmed seats, also in `extensions.owned`.
        owned: u32,
    },
    /// Confirming a hold whose time ran out.
    HoldExpired(String),
    /// The server cannot take more of this now (a resource limit).
    Unavailable(String),
    /// Over the caller's rate.
    RateLimited(String),
    /// Over the query limits; nothing ran.
    TooComplex(String),
    /// The server failed; details went to the log, not to the client.
    Internal,
}

impl ApiError {
    /// The contract's `extensions.code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::BadUserInput(_) => "BAD_USER_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::SoldOut { .. } => "SOLD_OUT",
            ApiError::LimitExceeded { .. } => "LIMIT_EXCEEDED",
            ApiError::HoldExpired(_) => "HOLD_EXPIRED",
            ApiError::Unavailable(_) => "UNAVAILABLE",
            ApiError::RateLimited(_) => "RATE_LIMITED",
            ApiError::TooComplex(_) => "QUERY_TOO_COMPLEX",
            ApiError::Internal => "INTERNAL",
        }
    }

    /// The message a client sees.
    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthenticated(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::BadUserInput(m)
            | ApiError::Conflict(m)
            | ApiError::SoldOut { message: m, .. }
            | ApiError::LimitExceeded { message: m, .. }
            | ApiError::HoldExpired(m)
            | ApiError::Unavailable(m)
            | ApiError::RateLimited(m)
            | ApiError::TooComplex(m) => m,
            ApiError::Internal => "internal error",
        }
    }

    /// An invalid argument: `field: reason`.
    pub fn bad_input(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError::BadUserInput(format!("{field}: {reason}"))
    }

    /// A write that storage could not make durable: not acknowledged, and
    /// the server restarts to recover.
    pub fn storage_failed() -> ApiError {
        ApiError::Unavailable(
            "storage failed; the change was not made and the server is restarting: retry shortly".into(),
        )
    }

    /// The caller must sign in.
    pub fn sign_in() -> ApiError {
        ApiError::Unauthenticated("sign in first: send Authorization: Bearer <token>".into())
    }
}

impl From<graph::Error> for ApiError {
    fn from(error: graph::Error) -> ApiError {
        match error {
            graph::Error::Invalid { .. } => ApiError::BadUserInput(error.to_string()),
            graph::Error::EmailTaken => ApiError::Conflict(error.to_string()),
            graph::Error::NotFound(_) => ApiError::NotFound(error.to_string()),
            graph::Error::Conflict(why) => ApiError::Conflict(why),
            // The store refuses writes after one failed, and the server is
            // stopping so that a restart recovers: worth a retry.
            graph::Error::Storage(_) => {
                tracing::debug!(error = %error, "graph operation refused: storage failed");
                ApiError::storage_failed()
            }
            internal => {
                tracing::error!(error = %internal, "graph operation failed");
                ApiError::Internal
            }
        }
    }
}

impl From<ledger::Error> for ApiError {
    fn from(error: ledger::Error) -> ApiError {
        match error {
            ledger::Error::Invalid { .. } => ApiError::BadUserInput(error.to_string()),
            ledger::Error::NotFound(_) => ApiError::NotFound(error.to_string()),
            ledger::Error::SoldOut { available, .. } => ApiError::SoldOut { message: error.to_string(), available },
            ledger::Error::LimitExceeded { limit, owned, .. } => {
                ApiError::LimitExceeded { message: error.to_string(), limit, owned }
            }
            ledger::Error::HoldExpired => ApiError::HoldExpired(error.to_string()),
            ledger::Error::Conflict(why) => ApiError::Conflict(why),
            ledger::Error::NotOnSale(why) => ApiError::Conflict(why.into()),
            ledger::Error::AlreadyCheckedIn { at_ms } => {
                let at = crate::schema::DateTime(at_ms).to_rfc3339();
                ApiError::Conflict(format!("this ticket was already checked in at {at}"))
            }
            ledger::Error::TicketUsed { at_ms } => {
                let at = crate::schema::DateTime(at_ms).to_rfc3339();
                ApiError::Conflict(format!(
                    "a ticket of this booking was checked in at {at}; only the event's organizer or an admin may cancel it now"
                ))
            }
            ledger::Error::Graph(inner) => inner.into(),
        }
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> async_graphql::Error {
        async_graphql::Error::new(error.message()).extend_with(|_, ext| {
            ext.set("code", error.code());
            match error {
                ApiError::SoldOut { available, .. } => ext.set("available", available),
                ApiError::LimitExceeded { limit, owned, .. } => {
                    ext.set("limit", limit);
                    ext.set("owned", owned);
                }
                _ => {}
            }
        })
    }
}

/// Result of a resolver.
pub type ApiResult<T> = Result<T, ApiError>;
