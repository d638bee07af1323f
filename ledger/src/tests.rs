use std::collections::HashMap;
use std::path::PathBuf;

use graph::model::Role;
use graph::{NewEvent, NewTicketType};
use proptest::prelude::*;

use super::*;

struct Fixture {
    dir: PathBuf,
    graph: Arc<Graph>,
    ledger: Ledger,
    ticket_type: TicketTypeId,
    event: EventId,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str, capacity: i64, per_user_limit: Option<i64>) -> Fixture {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("marquee-ledger-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let graph = Arc::new(Graph::open(&dir, graph::Options { cache_bytes: 8 << 20 }).unwrap());
    let organizer = graph.register("org@example.com", "Org", Role::Organizer, None).unwrap();
    // 2100-01-01: on sale for as long as these tests will run.
    let new_event =
        NewEvent { title: "Gig".into(), city: "Oslo".into(), starts_at_ms: 4_102_444_800_000, ..NewEvent::default() };
    let event = graph.create_event(organizer.id, new_event).unwrap();
    let new_type =
        NewTicketType { name: "GA".into(), price_cents: 1000, currency: "EUR".into(), capacity, per_user_limit };
    let ticket_type = graph.add_ticket_type(event.id, new_type).unwrap();
    graph.publish_event(event.id).unwrap();
    let ledger = Ledger::open(graph.clone(), Options { shards: 4, hold_ttl_ms: 1_000, durable: true }).unwrap();
    Fixture { dir, graph, ledger, ticket_type: ticket_type.id, event: event.id }
}

fn request(user: u64, ticket_type: TicketTypeId, quantity: u32, key: &str, hold: bool) -> BookRequest {
    BookRequest { user: UserId(user), ticket_type, quantity, idempotency_key: key.into(), hold }
}

#[test]
fn confirmed_booking_issues_one_unique_ticket_per_seat() {
    let f = fixture("confirm", 10, None);
    let booking = f.ledger.book(&request(7, f.ticket_type, 3, "k1", false), 0).unwrap();
    assert_eq!(booking.status, BookingStatus::Confirmed);
    assert_eq!(booking.tickets.len(), 3);
    let codes: HashSet<_> = booking.tickets.iter().map(|t| t.code.clone()).collect();
    assert_eq!(codes.len(), 3);
    assert!(codes.iter().all(|c| c.len() == TICKET_CODE_CHARS && c.bytes().all(|b| b.is_ascii_hexdigit())));
    assert_eq!(f.ledger.sold(f.ticket_type), 3);
    assert_eq!(
        f.graph.social().attendees(f.event).iter().collect::<Vec<_>>(),
        [7],
        "the graph index sees the confirmed booking"
    );
}

#[test]
fn sold_out_and_limits_and_bad_quantities_are_refused() {
    let f = fixture("limits", 5, Some(3));
    assert!(matches!(
        f.ledger.book(&request(1, f.ticket_type, 0, "a", false), 0),
        Err(Error::Invalid { field: "quantity", .. })
    ));
    assert!(matches!(
        f.ledger.book(&request(1, f.ticket_type, 51, "a", false), 0),
        Err(Error::Invalid { field: "quantity", .. })
    ));
    assert!(matches!(
        f.ledger.book(&request(1, f.ticket_type, 1, "", false), 0),
        Err(Error::Invalid { field: "idempotencyKey", .. })
    ));
    f.ledger.book(&request(1, f.ticket_type, 2, "a", true), 0).unwrap();
    assert!(matches!(
        f.ledger.book(&request(1, f.ticket_type, 2, "b", false), 0),
        Err(Error::LimitExceeded { limit: 3, owned: 2, asked: 2 })
    ));
    f.ledger.book(&request(2, f.ticket_type, 3, "c", false), 0).unwrap();
    assert!(matches!(
        f.ledger.book(&request(3, f.ticket_type, 1, "d", false), 0),
        Err(Error::SoldOut { available: 0, asked: 1 })
    ));
    let missing = request(1, TicketTypeId(999), 1, "e", false);
    assert!(matches!(f.ledger.book(&missing, 0), Err(Error::NotFound("ticket type"))));
}

#[test]
fn same_key_returns_the_same_booking_and_other_input_conflicts() {
    let f = fixture("idempotency", 10, None);
    let first = f.ledger.book(&request(1, f.ticket_type, 2, "order-1", false), 0).unwrap();
    let again = f.ledger.book(&request(1, f.ticket_type, 2, "order-1", false), 5).unwrap();
    assert_eq!(first, again);
    assert_eq!(f.ledger.sold(f.ticket_type), 2);
    assert!(matches!(f.ledger.book(&request(1, f.ticket_type, 3, "order-1", false), 5), Err(Error::Conflict(_))));
    assert!(
        matches!(f.ledger.book(&request(1, f.ticket_type, 2, "order-1", true), 5), Err(Error::Conflict(_))),
        "a hold is other input than a booking confirmed at once"
    );
    // Another user's same key is their own.
    let other = f.ledger.book(&request(2, f.ticket_type, 2, "order-1", false), 5).unwrap();
    assert_ne!(other.id, first.id);
}

#[test]
fn a_key_first_used_for_a_hold_replays_only_as_a_hold_whatever_became_of_it() {
    let f = fixture("idempotency-hold", 10, None);
    let hold = f.ledger.book(&request(1, f.ticket_type, 2, "h", true), 0).unwrap();
    let conflicts = |f: &Fixture, at| {
        matches!(f.ledger.book(&request(1, f.ticket_type, 2, "h", false), at), Err(Error::Conflict(_)))
    };
    assert!(conflicts(&f, 0));
    // Confirmed in the millisecond it was made, it still replays as a hold.
    let confirmed = f.ledger.confirm(hold.id, 0).unwrap();
    assert_eq!(confirmed.confirmed_at_ms, Some(1), "a hold is confirmed after the millisecond it was made");
    assert!(conflicts(&f, 2));
    assert_eq!(f.ledger.book(&request(1, f.ticket_type, 2, "h", true), 2).unwrap(), confirmed);
    f.ledger.cancel(hold.id, 3).unwrap();
    assert!(conflicts(&f, 4));
    // A booking confirmed at once replays as such after its cancellation.
    let direct = f.ledger.book(&request(1, f.ticket_type, 1, "d", false), 5).unwrap();
    f.ledger.cancel(direct.id, 6).unwrap();
    assert_eq!(f.ledger.book(&request(1, f.ticket_type, 1, "d", false), 7).unwrap().id, direct.id);
    assert!(matches!(f.ledger.book(&request(1, f.ticket_type, 1, "d", true), 7), Err(Error::Conflict(_))));
}

#[test]
fn expired_hold_returns_seats_and_cannot_be_confirmed() {
    let f = fixture("expiry", 2, None);
    let hold = f.ledger.book(&request(1, f.ticket_type, 2, "h", true), 0).unwrap();
    assert_eq!(hold.status, BookingStatus::Held);
    assert_eq!(hold.expires_at_ms, Some(1_000));
    assert!(hold.tickets.is_empty());
    assert!(matches!(f.ledger.book(&request(2, f.ticket_type, 1, "x", false), 999), Err(Error::SoldOut { .. })));
    assert_eq!(f.ledger.reap_expired(1_000).unwrap(), 1);
    assert_eq!(f.ledger.sold(f.ticket_type), 0);
    assert!(matches!(f.ledger.confirm(hold.id, 1_001), Err(Error::HoldExpired)));
    assert_eq!(f.ledger.booking(hold.id).unwrap().status, BookingStatus::Expired);
    f.ledger.book(&request(2, f.ticket_type, 2, "y", false), 1_002).unwrap();
}

#[test]
fn an_expiry_found_by_a_refused_change_is_made_durable_without_another_write() {
    let f = fixture("expiry-refused", 2, None);
    let hold = f.ledger.book(&request(1, f.ticket_type, 2, "h", true), 0).unwrap();
    // The confirm finds the hold due, logs its expiry, and is refused: it
    // syncs nothing, and the reaper will not see the hold again.
    assert!(matches!(f.ledger.confirm(hold.id, 1_001), Err(Error::HoldExpired)));
    let store = f.graph.store();
    let expiry = store.appended_seq();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.durable_seq() < expiry {
        assert!(std::time::Instant::now() < deadline, "the expiry never became durable (readers never see it)");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn hold_confirms_before_expiry() {
    let f = fixture("hold-confirm", 2, None);
    let hold = f.ledger.book(&request(1, f.ticket_type, 2, "h", true), 0).unwrap();
    let confirmed = f.ledger.confirm(hold.id, 500).unwrap();
    assert_eq!(confirmed.status, BookingStatus::Confirmed);
    assert_eq!(confirmed.expires_at_ms, None);
    assert_eq!(confirmed.tickets.len(), 2);
    assert_eq!(f.ledger.confirm(hold.id, 5_000).unwrap(), confirmed, "confirming twice returns the booking");
    assert_eq!(f.ledger.reap_expired(5_000).unwrap(), 0);
    assert_eq!(f.ledger.sold(f.ticket_type), 2);
}

#[test]
fn check_in_works_once_for_confirmed_tickets() {
    let f = fixture("check-in", 5, None);
    let booking = f.ledger.book(&request(1, f.ticket_type, 2, "k", false), 0).unwrap();
    let code = booking.tickets[1].code.clone();
    let (checked, seat) = f.ledger.check_in(&code, 77).unwrap();
    assert_eq!(seat, 1);
    assert_eq!(checked.tickets[1].checked_in_at_ms, Some(77));
    assert!(matches!(f.ledger.check_in(&code, 78), Err(Error::AlreadyCheckedIn { at_ms: 77 })));
    assert!(matches!(f.ledger.check_in("nope", 78), Err(Error::NotFound("ticket"))));
    // A used booking stays unless the caller may cancel used ones.
    let refused = f.ledger.cancel_logged(booking.id, 79, crate::Canceller::Owner);
    assert!(matches!(refused, Err(Error::TicketUsed { at_ms: 77 })), "{refused:?}");
    assert_eq!(f.ledger.sold(f.ticket_type), 2);
    f.ledger.cancel(booking.id, 80).unwrap();
    assert_eq!(f.ledger.sold(f.ticket_type), 0);
    let unused = f.ledger.book(&request(2, f.ticket_type, 1, "u", false), 81).unwrap();
    assert!(f.ledger.cancel_logged(unused.id, 82, crate::Canceller::Owner).is_ok());
    assert!(matches!(f.ledger.check_in(&booking.tickets[0].code, 83), Err(Error::Conflict(_))));
}

#[test]
fn cancelling_an_event_cancels_its_bookings_and_refuses_new_ones() {
    let f = fixture("cancel-event", 10, None);
    f.ledger.book(&request(1, f.ticket_type, 2, "a", false), 0).unwrap();
    f.ledger.book(&request(2, f.ticket_type, 1, "b", true), 0).unwrap();
    f.graph.cancel_event(f.event).unwrap();
    assert_eq!(f.ledger.cancel_event(f.event, 1).unwrap(), 2);
    assert_eq!(f.ledger.sold(f.ticket_type), 0);
    assert!(matches!(
        f.ledger.book(&request(3, f.ticket_type, 1, "c", false), 2),
        Err(Error::NotOnSale("the event is cancelled"))
    ));
}

#[test]
fn sales_close_when_the_event_ends_or_without_an_end_when_it_starts() {
    let f = fixture("over", 10, None);
    let event = f.graph.event(f.event).unwrap();
    let starts = event.starts_at_ms;
    f.ledger.book(&request(1, f.ticket_type, 1, "before", false), starts - 1).unwrap();
    let late = f.ledger.book(&request(1, f.ticket_type, 1, "at-start", false), starts);
    assert!(matches!(&late, Err(Error::Conflict(why)) if why.contains("closed at its start")), "{late:?}");
    // With an end, sales go on until it.
    let ends = starts + 3 * 3_600_000;
    let changes = graph::EventChanges { ends_at_ms: Some(Some(ends)), ..graph::EventChanges::default() };
    f.graph.update_event(f.event, changes).unwrap();
    f.ledger.book(&request(1, f.ticket_type, 1, "at-the-door", false), starts + 60_000).unwrap();
    let after = f.ledger.book(&request(1, f.ticket_type, 1, "after", false), ends);
    assert!(matches!(&after, Err(Error::Conflict(why)) if why.contains("closed when it ended")), "{after:?}");
    assert_eq!(f.ledger.sold(f.ticket_type), 2);
    // A hold taken before the end cannot be bought after it.
    let held = f.ledger.book(&request(2, f.ticket_type, 1, "held", true), ends - 500).unwrap();
    let late = f.ledger.confirm(held.id, ends);
    assert!(matches!(&late, Err(Error::Conflict(_))), "{late:?}");
}

#[test]
fn state_is_rebuilt_exactly_after_reopen() {
    let f = fixture("reopen", 10, Some(4));
    let confirmed = f.ledger.book(&request(1, f.ticket_type, 3, "a", false), 0).unwrap();
    let held = f.ledger.book(&request(2, f.ticket_type, 2, "b", true), 0).unwrap();
    let cancelled = f.ledger.book(&request(3, f.ticket_type, 1, "c", false), 0).unwrap();
    f.ledger.cancel(cancelled.id, 1).unwrap();
    f.ledger.check_in(&confirmed.tickets[0].code, 2).unwrap();
    let reopened = Ledger::open(f.graph.clone(), Options { shards: 8, hold_ttl_ms: 1_000, durable: true }).unwrap();
    assert_eq!(reopened.sold(f.ticket_type), 5);
    assert_eq!(reopened.booking(held.id).unwrap().status, BookingStatus::Held);
    assert_eq!(reopened.book(&request(1, f.ticket_type, 3, "a", false), 3).unwrap().id, confirmed.id);
    assert!(matches!(
        reopened.book(&request(1, f.ticket_type, 2, "z", false), 3),
        Err(Error::LimitExceeded { owned: 3, .. })
    ));
    assert!(matches!(reopened.check_in(&confirmed.tickets[0].code, 4), Err(Error::AlreadyCheckedIn { at_ms: 2 })));
    let fresh = reopened.book(&request(4, f.ticket_type, 1, "d", false), 5).unwrap();
    assert!(fresh.id.0 >> 8 > cancelled.id.0 >> 8, "booking ids are never reused");
}

#[test]
fn reopen_finishes_the_cascade_of_an_event_cancelled_before_a_crash() {
    let f = fixture("cascade", 10, None);
    let confirmed = f.ledger.book(&request(1, f.ticket_type, 3, "a", false), 0).unwrap();
    let held = f.ledger.book(&request(2, f.ticket_type, 2, "b", true), 0).unwrap();
    // The event's cancellation is stored, but the crash came before the
    // ledger cancelled its bookings.
    f.graph.cancel_event(f.event).unwrap();
    let reopened = Ledger::open(f.graph.clone(), Options { shards: 4, hold_ttl_ms: 1_000, durable: true }).unwrap();
    assert_eq!(reopened.booking(confirmed.id).unwrap().status, BookingStatus::Cancelled);
    assert_eq!(reopened.booking(held.id).unwrap().status, BookingStatus::Cancelled);
    assert_eq!(reopened.sold(f.ticket_type), 0);
    let again = Ledger::open(f.graph.clone(), Options { shards: 4, hold_ttl_ms: 1_000, durable: true }).unwrap();
    assert_eq!(again.booking(confirmed.id).unwrap().status, BookingStatus::Cancelled, "the cascade was stored");
}

#[test]
fn in_memory_ledger_decides_alike_but_writes_nothing() {
    let f = fixture("memory", 3, None);
    let memory = Ledger::open(f.graph.clone(), Options { shards: 2, hold_ttl_ms: 1_000, durable: false }).unwrap();
    let head = f.graph.store().appended_seq();
    let booking = memory.book(&request(1, f.ticket_type, 2, "a", false), 0).unwrap();
    assert_eq!(booking.tickets.len(), 2);
    assert!(matches!(
        memory.book(&request(2, f.ticket_type, 2, "b", false), 0),
        Err(Error::SoldOut { available: 1, asked: 2 })
    ));
    assert_eq!(memory.book(&request(1, f.ticket_type, 2, "a", false), 0).unwrap().id, booking.id);
    memory.cancel(booking.id, 1).unwrap();
    assert_eq!(memory.sold(f.ticket_type), 0);
    assert_eq!(f.graph.store().appended_seq(), head, "nothing reached the log");
}

#[test]
fn concurrent_buyers_never_oversell() {
    const CAPACITY: i64 = 100;
    let f = Arc::new(fixture("rush", CAPACITY, None));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut outcomes = Vec::new();
                for i in 0..40u64 {
                    let user = t * 1_000 + i;
                    outcomes.push(f.ledger.book(&request(user, f.ticket_type, 1, "k", false), 0));
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let sold: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(sold.len(), 100);
    assert!(outcomes.iter().filter_map(|o| o.as_ref().err()).all(|e| matches!(e, Error::SoldOut { .. })));
    let codes: HashSet<_> = sold.iter().flat_map(|b| b.tickets.iter().map(|t| t.code.clone())).collect();
    assert_eq!(codes.len(), 100);
    assert_eq!(f.ledger.sold(f.ticket_type), 100);
}

#[test]
fn racing_requests_with_one_key_make_one_booking() {
    let f = Arc::new(fixture("key-race", 100, None));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| f.ledger.book(&request(7, f.ticket_type, 2, "same", false), 0).unwrap().id)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: HashSet<BookingId> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one key, one booking");
    assert_eq!(f.ledger.sold(f.ticket_type), 2);
}

/// Operations of the model-based test.
#[derive(Clone, Debug)]
enum Op {
    Book { user: u64, quantity: u32, key: u8, hold: bool },
    Confirm { nth: usize },
    Cancel { nth: usize },
    CheckIn { nth: usize },
    Advance { ms: i64 },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..4u64, 1..5u32, 0..6u8, any::<bool>()).prop_map(|(user, quantity, key, hold)| Op::Book { user, quantity, key, hold }),
        2 => any::<usize>().prop_map(|nth| Op::Confirm { nth }),
        1 => any::<usize>().prop_map(|nth| Op::Cancel { nth }),
        1 => any::<usize>().prop_map(|nth| Op::CheckIn { nth }),
        1 => (1..1_500i64).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Restart),
    ]
}

/// The reference: a plain list of bookings, seats counted by brute force.
#[derive(Default)]
struct Model {
    bookings: Vec<(BookingId, u64, u32, BookingStatus, i64)>,
    /// By user and key: the booking, and whether it was asked for as a hold.
    keys: HashMap<(u64, u8), (BookingId, bool)>,
}

impl Model {
    fn expire(&mut self, now: i64) {
        for b in &mut self.bookings {
            if b.3 == BookingStatus::Held && b.4 <= now {
                b.3 = BookingStatus::Expired;
            }
        }
    }
    fn seats(&self, user: Option<u64>) -> u32 {
        let live = |b: &&(BookingId, u64, u32, BookingStatus, i64)| {
            matches!(b.3, BookingStatus::Held | BookingStatus::Confirmed)
        };
        self.bookings.iter().filter(live).filter(|b| user.is_none_or(|u| b.1 == u)).map(|b| b.2).sum()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn ledger_matches_a_simple_model(ops in proptest::collection::vec(op(), 1..40)) {
        const CAPACITY: u32 = 8;
        const LIMIT: u32 = 5;
        let mut f = fixture("model", CAPACITY.into(), Some(LIMIT.into()));
        let mut model = Model::default();
        let mut now = 0i64;
        for op in ops {
            model.expire(now);
            match op {
                Op::Book { user, quantity, key, hold } => {
                    let result = f.ledger.book(&request(user, f.ticket_type, quantity, &key.to_string(), hold), now);
                    if let Some(&(existing, held)) = model.keys.get(&(user, key)) {
                        let same = model.bookings.iter().find(|b| b.0 == existing).unwrap().2 == quantity && held == hold;
                        prop_assert_eq!(result.is_ok(), same);
                    } else if model.seats(None) + quantity > CAPACITY {
                        prop_assert!(matches!(result, Err(Error::SoldOut { .. })), "{:?}", result);
                    } else if model.seats(Some(user)) + quantity > LIMIT {
                        prop_assert!(matches!(result, Err(Error::LimitExceeded { .. })), "{:?}", result);
                    } else {
                        let booking = result.unwrap();
                        let status = if hold { BookingStatus::Held } else { BookingStatus::Confirmed };
                        prop_assert_eq!(booking.status, status);
                        model.bookings.push((booking.id, user, quantity, status, now + 1_000));
                        model.keys.insert((user, key), (booking.id, hold));
                    }
                }
                Op::Confirm { nth } if !model.bookings.is_empty() => {
                    let i = nth % model.bookings.len();
                    let result = f.ledger.confirm(model.bookings[i].0, now);
                    match model.bookings[i].3 {
                        BookingStatus::Held | BookingStatus::Confirmed => {
                            prop_assert_eq!(result.unwrap().status, BookingStatus::Confirmed);
                            model.bookings[i].3 = BookingStatus::Confirmed;
                        }
                        BookingStatus::Expired => prop_assert!(matches!(result, Err(Error::HoldExpired)), "{:?}", result),
                        BookingStatus::Cancelled => prop_assert!(matches!(result, Err(Error::Conflict(_))), "{:?}", result),
                    }
                }
                Op::Cancel { nth } if !model.bookings.is_empty() => {
                    let i = nth % model.bookings.len();
                    let result = f.ledger.cancel(model.bookings[i].0, now);
                    if model.bookings[i].3 == BookingStatus::Expired {
                        prop_assert!(result.is_err());
                    } else {
                        prop_assert_eq!(result.unwrap().status, BookingStatus::Cancelled);
                        model.bookings[i].3 = BookingStatus::Cancelled;
                    }
                }
                Op::CheckIn { nth } if !model.bookings.is_empty() => {
                    let i = nth % model.bookings.len();
                    let booking = f.ledger.booking(model.bookings[i].0).unwrap();
                    if let Some(ticket) = booking.tickets.first() {
                        let first = ticket.checked_in_at_ms;
                        let result = f.ledger.check_in(&ticket.code, now);
                        match (model.bookings[i].3, first) {
                            (BookingStatus::Confirmed, None) => prop_assert!(result.is_ok()),
                            (BookingStatus::Confirmed, Some(_)) => prop_assert!(matches!(result, Err(Error::AlreadyCheckedIn { .. })), "{:?}", result),
                            _ => prop_assert!(matches!(result, Err(Error::Conflict(_))), "{:?}", result),
                        }
                    }
                }
                Op::Advance { ms } => {
                    now += ms;
                    model.expire(now);
                    f.ledger.reap_expired(now).unwrap();
                }
                Op::Restart => {
                    f.ledger = Ledger::open(f.graph.clone(), Options { shards: 2, hold_ttl_ms: 1_000, durable: true }).unwrap();
                }
                _ => {}
            }
            model.expire(now);
            f.ledger.reap_expired(now).unwrap();
            prop_assert_eq!(f.ledger.sold(f.ticket_type), model.seats(None));
            prop_assert!(f.ledger.sold(f.ticket_type) <= CAPACITY);
        }
    }
}
