//! rkyv encoding of stored values, validated on every read: corrupt or
//! truncated bytes become `Error::Corrupt`, never undefined behaviour.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::Error;

/// Encodes a value to its archived bytes.
pub fn encode<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    // Serialising plain owned data into a growable buffer cannot fail.
    rkyv::to_bytes::<rancor::Error>(value).expect("serialising owned data into memory cannot fail").into_vec()
}

/// Decodes and validates archived bytes. `what` names the value in the error.
pub fn decode<T>(bytes: &[u8], what: &'static str) -> Result<T, Error>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + Deserialize<T, HighDeserializer<rancor::Error>>,
{
    // Storage hands out bytes with no alignment promise; rkyv needs 16.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rancor::Error>(&aligned).map_err(|_| Error::Corrupt(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;
    use crate::model::{Role, User};

    fn sample() -> User {
        User {
            id: UserId(7),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            role: Role::Organizer,
            created_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample());
        assert_eq!(decode::<User>(&bytes, "user").unwrap(), sample());
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_ub() {
        let bytes = encode(&sample());
        assert!(decode::<User>(&bytes[..bytes.len() - 3], "user").is_err());
        // Every byte set: string lengths point far outside the buffer.
        assert!(decode::<User>(&vec![0xff; bytes.len()], "user").is_err());
        assert!(decode::<User>(&[], "user").is_err());
    }
}
