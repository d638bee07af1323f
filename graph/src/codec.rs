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

/// Packs ascending ids as little-endian u32s: an adjacency list's row.
pub fn pack_ids(ids: &[u32]) -> Vec<u8> {
    debug_assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "adjacency lists are strictly ascending");
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// Unpacks an adjacency row, checking that it is whole and strictly ascending.
pub fn unpack_ids(bytes: &[u8], what: &'static str) -> Result<Vec<u32>, Error> {
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::Corrupt(what));
    }
    let ids: Vec<u32> =
        bytes.chunks_exact(4).map(|chunk| u32::from_le_bytes(chunk.try_into().expect("chunks of 4"))).collect();
    if !ids.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(Error::Corrupt(what));
    }
    Ok(ids)
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
    fn adjacency_rows_round_trip_and_reject_damage() {
        let packed = pack_ids(&[1, 7, 4_000_000_000]);
        assert_eq!(unpack_ids(&packed, "list").unwrap(), [1, 7, 4_000_000_000]);
        assert!(unpack_ids(&packed[..5], "list").is_err(), "a torn row");
        assert!(unpack_ids(&pack_unchecked(&[7, 1]), "list").is_err(), "out of order");
        assert!(unpack_ids(&pack_unchecked(&[7, 7]), "list").is_err(), "duplicates");
        assert_eq!(unpack_ids(&[], "list").unwrap(), Vec::<u32>::new());
    }

    fn pack_unchecked(ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|id| id.to_le_bytes()).collect()
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
