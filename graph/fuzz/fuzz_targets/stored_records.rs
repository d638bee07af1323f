//! Decoding what storage hands back: any bytes as a log entry (every record
//! kind, rkyv-validated), as a log segment, as an adjacency row and as each
//! stored entity must
//! decode or be refused as corrupt, never panic or read out of bounds.
#![no_main]

use graph::codec::{decode, unpack_ids};
use graph::log::{decode_segment, Entry};
use graph::model::{Booking, Event, Session, TicketType, User, Venue, Webhook};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(entry) = Entry::decode_value(1, bytes) {
        // What decodes survives a round trip unchanged.
        let again = Entry::decode_value(1, &Entry::encode_value(entry.at_ms, &entry.record));
        assert_eq!(again.ok(), Some(entry));
    }
    let _ = decode_segment(1, bytes);
    let _ = unpack_ids(bytes, "fuzz");
    let _ = decode::<User>(bytes, "user");
    let _ = decode::<Event>(bytes, "event");
    let _ = decode::<Venue>(bytes, "venue");
    let _ = decode::<TicketType>(bytes, "ticket type");
    let _ = decode::<Booking>(bytes, "booking");
    let _ = decode::<Session>(bytes, "session");
    let _ = decode::<Webhook>(bytes, "webhook");
});
