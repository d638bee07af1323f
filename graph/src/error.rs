//! The graph's one error type: a variant per outcome a caller can act on.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong in a graph operation.
#[derive(Debug)]
pub enum Error {
    /// An input broke a rule; `field` names the input, `reason` says how.
    Invalid {
        /// The input's name as the API spells it, e.g. `"title"`.
        field: &'static str,
        /// What is wrong with it, for people.
        reason: String,
    },
    /// Another account already uses this email (compared case-insensitively).
    EmailTaken,
    /// No such entity; names what was looked for, e.g. `"event"`.
    NotFound(&'static str),
    /// The entity's state forbids the change, e.g. editing a cancelled event.
    Conflict(String),
    /// The data directory is held by another process.
    Locked {
        /// The directory.
        dir: PathBuf,
        /// What the lock file says about its holder (its pid).
        holder: String,
    },
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The storage engine failed; the text is for operators' logs only.
    Storage(String),
    /// Stored bytes did not decode; names what was being read.
    Corrupt(&'static str),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Invalid { field, reason: reason.into() }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn storage(error: sled::Error) -> Error {
        Error::Storage(error.to_string())
    }

    /// Whether this is a fault of the server (storage, IO, corruption) rather
    /// than of the request.
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Locked { .. } | Error::Io { .. } | Error::Storage(_) | Error::Corrupt(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid { field, reason } => write!(f, "{field}: {reason}"),
            Error::EmailTaken => f.write_str("email: an account with this email already exists"),
            Error::NotFound(what) => write!(f, "no such {what}"),
            Error::Conflict(why) => f.write_str(why),
            Error::Locked { dir, holder } if holder.is_empty() => {
                write!(f, "data directory {} is in use by another process", dir.display())
            }
            Error::Locked { dir, holder } => {
                write!(f, "data directory {} is in use by another process (pid {holder})", dir.display())
            }
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Storage(text) => write!(f, "storage error: {text}"),
            Error::Corrupt(what) => write!(f, "stored {what} is corrupt"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
