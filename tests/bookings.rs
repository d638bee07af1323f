//! End-to-end: booking, holds, idempotency, limits, cancellation and
//! check-in over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

const BOOK: &str = "mutation($input: BookInput!) { bookTickets(input: $input) {
  id status quantity totalCents expiresAt tickets { id code checkedInAt } ticketType { sold available } event { attendeeCount } } }";
const AVAILABILITY: &str = "query($id: ID!) { event(id: $id) { attendeeCount ticketTypes { sold available } } }";

/// An organizer's published event with one ticket type; returns (org token, event id, ticket type id).
fn on_sale(server: &Server, capacity: i64, limit: Option<i64>) -> (String, String, String) {
    let (org, _) = register(server, "org@example.com", "ORGANIZER");
    let input = json!({"title": "Gig", "startsAt": "2097-01-01T20:00:00Z", "city": "Oslo"});
    let event = data(server.gql(
        Some(&org),
        "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }",
        json!({"i": input}),
    ));
    let event_id = event["createEvent"]["id"].as_str().unwrap().to_string();
    let ticket =
        json!({"name": "GA", "priceCents": 2500, "currency": "EUR", "capacity": capacity, "perUserLimit": limit});
    let added = data(server.gql(
        Some(&org),
        "mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }",
        json!({"e": event_id, "t": ticket}),
    ));
    let ticket_type = added["addTicketType"]["id"].as_str().unwrap().to_string();
    (org, event_id, ticket_type)
}

fn publish(server: &Server, org: &str, event: &str) {
    data(server.gql(Some(org), "mutation($id: ID!) { publishEvent(id: $id) { id } }", json!({"id": event})));
}

fn book(server: &Server, token: &str, ticket_type: &str, quantity: i64, key: &str, hold: bool) -> Value {
    server.gql(
        Some(token),
        BOOK,
        json!({"input": {"ticketTypeId": ticket_type, "quantity": quantity, "idempotencyKey": key, "hold": hold}}),
    )
}

#[test]
fn booking_rules_and_error_codes() {
    let dir = TempDir::new("bookings");
    let server = Server::start(dir.path(), &[]);
    let (org, event, ticket_type) = on_sale(&server, 5, Some(3));
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let (other, _) = register(&server, "other@example.com", "ATTENDEE");

    let draft = book(&server, &org, &ticket_type, 1, "draft", false);
    assert_eq!(error_code(&draft), "CONFLICT", "DRAFT events are not on sale");
    assert!(error_message(&draft).contains("DRAFT"), "{draft}");
    // To anyone who may not see the draft, its ticket type is not there,
    // as the event is not (its CONFLICT would tell them it exists).
    let hidden = book(&server, &fan, &ticket_type, 1, "draft", false);
    assert_eq!((error_code(&hidden), error_message(&hidden)), ("NOT_FOUND".into(), "no such ticket type".into()));
    publish(&server, &org, &event);
    assert_eq!(
        error_code(&server.gql(
            None,
            BOOK,
            json!({"input": {"ticketTypeId": ticket_type, "quantity": 1, "idempotencyKey": "a"}})
        )),
        "UNAUTHENTICATED"
    );
    for quantity in [0, -1, 51, 99_999_999_999, i64::MIN] {
        let refused = book(&server, &fan, &ticket_type, quantity, "q", false);
        assert_eq!(error_code(&refused), "BAD_USER_INPUT");
        assert!(
            error_message(&refused).starts_with("input.quantity: must be between 1 and 50"),
            "{quantity}: {refused}"
        );
    }
    assert_eq!(error_code(&book(&server, &fan, "999", 1, "nf", false)), "NOT_FOUND");

    let first = data(book(&server, &fan, &ticket_type, 2, "order-1", false))["bookTickets"].clone();
    assert_eq!(first["status"], "CONFIRMED");
    assert_eq!(first["totalCents"], 5000);
    assert_eq!(first["tickets"].as_array().unwrap().len(), 2);
    assert_eq!(first["ticketType"], json!({"sold": 2, "available": 3}));
    assert_eq!(first["event"]["attendeeCount"], 1);
    let replay = data(book(&server, &fan, &ticket_type, 2, "order-1", false))["bookTickets"].clone();
    assert_eq!(replay["id"], first["id"], "same key, same booking");
    assert_eq!(replay["tickets"], first["tickets"]);
    assert_eq!(error_code(&book(&server, &fan, &ticket_type, 1, "order-1", false)), "CONFLICT");
    assert_eq!(error_code(&book(&server, &fan, &ticket_type, 2, "order-1", true)), "CONFLICT", "a hold is other input");
    assert_eq!(error_code(&book(&server, &fan, &ticket_type, 2, "order-2", false)), "LIMIT_EXCEEDED");
    assert_eq!(error_code(&book(&server, &other, &ticket_type, 4, "x", false)), "SOLD_OUT");
    data(book(&server, &other, &ticket_type, 3, "x", false));
    let state = data(server.gql(None, AVAILABILITY, json!({"id": event})));
    assert_eq!(state["event"], json!({"attendeeCount": 2, "ticketTypes": [{"sold": 5, "available": 0}]}));

    let mine = data(server.gql(Some(&fan), "{ myBookings { id status } }", json!({})));
    assert_eq!(mine["myBookings"], json!([{"id": first["id"], "status": "CONFIRMED"}]));

    // Cancel: not by a stranger; by the owner; seats return.
    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { status ticketType { sold } } }";
    assert_eq!(error_code(&server.gql(Some(&other), cancel, json!({"id": first["id"]}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(Some(&fan), cancel, json!({"id": "12345"}))), "NOT_FOUND");
    let cancelled = data(server.gql(Some(&fan), cancel, json!({"id": first["id"]})));
    assert_eq!(cancelled["cancelBooking"], json!({"status": "CANCELLED", "ticketType": {"sold": 3}}));

    // An event that is over is not on sale: its sales closed at its end
    // (at its start, when it has none).
    let ticket = general_admission(1000, 10);
    let (_, over) = event_with_tickets(&server, &org, "Last year", "2020-01-01T20:00:00Z", ticket, true);
    let refused = book(&server, &fan, &over, 1, "too-late", false);
    assert_eq!(error_code(&refused), "CONFLICT", "{refused}");
    assert!(error_message(&refused).contains("closed at its start"), "{refused}");
}

#[test]
fn check_in_once_by_the_organizer() {
    let dir = TempDir::new("check-in");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let (org, event, ticket_type) = on_sale(&server, 10, None);
    publish(&server, &org, &event);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    let booking = data(book(&server, &fan, &ticket_type, 1, "k", false))["bookTickets"].clone();
    let code = booking["tickets"][0]["code"].as_str().unwrap().to_string();
    assert!(code.len() >= 32);
    let check_in = "mutation($c: String!) { checkIn(code: $c) { code checkedInAt ticketType { name } } }";
    assert_eq!(error_code(&server.gql(Some(&fan), check_in, json!({"c": code}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(Some(&rival), check_in, json!({"c": code}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(Some(&org), check_in, json!({"c": "not-a-code"}))), "NOT_FOUND");
    // The organizer keeps the right to check in at their event when an
    // admin takes the ORGANIZER role away, as they keep cancelling its
    // bookings and managing it.
    let admin = login(&server, "root@example.com", "admin-password");
    let org_id = data(server.gql(Some(&org), "{ me { id } }", json!({})))["me"]["id"].clone();
    let set_role = "mutation($id: ID!, $r: Role!) { setRole(userId: $id, role: $r) { role } }";
    data(server.gql(Some(&admin), set_role, json!({"id": org_id, "r": "ATTENDEE"})));
    let admitted = data(server.gql(Some(&org), check_in, json!({"c": code})));
    let at = admitted["checkIn"]["checkedInAt"].as_str().unwrap().to_string();
    let again = server.gql(Some(&org), check_in, json!({"c": code}));
    assert_eq!(error_code(&again), "CONFLICT");
    assert!(error_message(&again).contains(&at), "message names the first check-in time {at}: {again}");
    // Let in, the fan can no longer cancel (and so free the seat); the
    // organizer still can.
    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { status ticketType { sold } } }";
    let refused = server.gql(Some(&fan), cancel, json!({"id": booking["id"]}));
    assert_eq!(error_code(&refused), "CONFLICT");
    assert!(error_message(&refused).contains(&at), "message names the check-in time {at}: {refused}");
    let cancelled = data(server.gql(Some(&org), cancel, json!({"id": booking["id"]})));
    assert_eq!(cancelled["cancelBooking"], json!({"status": "CANCELLED", "ticketType": {"sold": 0}}));
}

#[test]
fn holds_expire_on_their_own_and_cancel_event_cascades() {
    let dir = TempDir::new("holds");
    let server = Server::start(dir.path(), &["--hold-ttl", "1s"]);
    let (org, event, ticket_type) = on_sale(&server, 2, None);
    publish(&server, &org, &event);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let held = data(book(&server, &fan, &ticket_type, 2, "hold-1", true))["bookTickets"].clone();
    let answered = std::time::Instant::now();
    assert_eq!(held["status"], "HELD");
    assert_eq!(held["tickets"], json!([]));
    assert!(held["expiresAt"].is_string());
    assert_eq!(held["ticketType"]["available"], 0);
    // Past its expiresAt the hold reads EXPIRED, also before its seats come
    // back (up to half a second later): a confirm would be HOLD_EXPIRED.
    // (It was made before it was answered, so a second after that is past
    // its expiresAt.)
    std::thread::sleep(std::time::Duration::from_secs(1).saturating_sub(answered.elapsed()));
    let csv_path = format!("/events/{event}/bookings.csv");
    while answered.elapsed() < std::time::Duration::from_millis(1_400) {
        let mine = data(server.gql(Some(&fan), "{ myBookings { status expiresAt } }", json!({})));
        assert_eq!(mine["myBookings"], json!([{"status": "EXPIRED", "expiresAt": null}]));
        let csv = http(&server.addr, "GET", &csv_path, &[("Authorization", &format!("Bearer {org}"))], b"").text();
        assert!(
            csv.lines().nth(1).is_some_and(|row| row.contains(",EXPIRED,")),
            "the organizer's export agrees: {csv}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Without any confirm attempt, the seats come back once the hold runs out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state = data(server.gql(None, AVAILABILITY, json!({"id": event})));
        if state["event"]["ticketTypes"][0]["available"] == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "expired hold did not release its seats");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let confirm = "mutation($id: ID!) { confirmBooking(id: $id) { status } }";
    assert_eq!(error_code(&server.gql(Some(&fan), confirm, json!({"id": held["id"]}))), "HOLD_EXPIRED");

    let live = data(book(&server, &fan, &ticket_type, 1, "hold-2", true))["bookTickets"].clone();
    let confirmed = data(server.gql(Some(&fan), confirm, json!({"id": live["id"]})));
    assert_eq!(confirmed["confirmBooking"]["status"], "CONFIRMED");
    data(server.gql(Some(&org), "mutation($id: ID!) { cancelEvent(id: $id) { status } }", json!({"id": event})));
    let mine = data(server.gql(Some(&fan), "{ myBookings { status } }", json!({})));
    assert_eq!(mine["myBookings"], json!([{"status": "CANCELLED"}, {"status": "EXPIRED"}]));
    assert_eq!(error_code(&book(&server, &fan, &ticket_type, 1, "late", false)), "CONFLICT");
}

/// What a refused buyer is told: "sold out" only when nothing is left, and
/// what counts towards the per-user limit.
#[test]
fn refusals_say_what_is_left_and_what_counts() {
    let dir = TempDir::new("refusals");
    let server = Server::start(dir.path(), &[]);
    let (org, event, ticket_type) = on_sale(&server, 4, Some(3));
    publish(&server, &org, &event);
    let [a, b, c] = ["a", "b", "c"].map(|n| register(&server, &format!("{n}@example.com"), "ATTENDEE").0);
    let refused = |answer: Value, code: &str, message: &str| {
        assert_eq!((error_code(&answer), error_message(&answer)), (code.to_string(), message.to_string()), "{answer}");
    };
    let five = book(&server, &a, &ticket_type, 5, "1", false);
    assert_eq!(five["errors"][0]["extensions"], json!({"code": "SOLD_OUT", "available": 4}), "for programs: {five}");
    refused(five, "SOLD_OUT", "only 4 seats left, fewer than the 5 asked for");
    refused(
        book(&server, &a, &ticket_type, 4, "2", false),
        "LIMIT_EXCEEDED",
        "the limit is 3 seats per buyer, fewer than the 4 asked for",
    );
    data(book(&server, &a, &ticket_type, 3, "3", true));
    let over = book(&server, &a, &ticket_type, 1, "4", false);
    assert_eq!(over["errors"][0]["extensions"], json!({"code": "LIMIT_EXCEEDED", "limit": 3, "owned": 3}), "{over}");
    assert!(error_message(&over).contains("you hold or have bought 3 (a hold counts"), "{over}");
    refused(book(&server, &b, &ticket_type, 2, "5", false), "SOLD_OUT", "only 1 seat left, fewer than the 2 asked for");
    data(book(&server, &b, &ticket_type, 1, "6", false));
    refused(book(&server, &c, &ticket_type, 1, "7", false), "SOLD_OUT", "sold out");
}

/// At the door: a scanner told its event refuses another event's ticket
/// without using it up, reads codes in either case, and the messages say
/// when the event (not the booking) was called off.
#[test]
fn check_in_at_one_event_refuses_another_events_ticket_and_keeps_it_unused() {
    let dir = TempDir::new("door");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let ticket = || general_admission(1000, 10);
    let (friday, _) = event_with_tickets(&server, &org, "Friday night", "2097-06-05T20:00:00Z", ticket(), true);
    let (saturday, saturday_tickets) =
        event_with_tickets(&server, &org, "Saturday night", "2097-06-06T20:00:00Z", ticket(), true);
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    let (elsewhere, elsewhere_tickets) =
        event_with_tickets(&server, &rival, "Elsewhere", "2097-06-05T20:00:00Z", ticket(), true);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let code_of = |answer: Value| data(answer)["bookTickets"]["tickets"][0]["code"].as_str().unwrap().to_string();
    let code = code_of(book(&server, &fan, &saturday_tickets, 1, "sat", false));
    let rivals_code = code_of(book(&server, &fan, &elsewhere_tickets, 1, "else", false));

    let check_in = "mutation($c: String!, $e: ID) { checkIn(code: $c, eventId: $e) { checkedInAt } }";
    let wrong_door = server.gql(Some(&org), check_in, json!({"c": code, "e": friday}));
    assert_eq!(error_code(&wrong_door), "CONFLICT");
    let message = error_message(&wrong_door);
    assert!(message.contains("another event: \"Saturday night\"") && message.contains("not checked in"), "{message}");
    let strangers = server.gql(Some(&org), check_in, json!({"c": rivals_code, "e": friday}));
    assert_eq!(error_code(&strangers), "CONFLICT");
    assert!(!error_message(&strangers).contains("Elsewhere"), "another organizer's event is not named: {strangers}");
    assert_eq!(error_code(&server.gql(Some(&org), check_in, json!({"c": code, "e": elsewhere}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(Some(&org), check_in, json!({"c": code, "e": "9999"}))), "NOT_FOUND");
    // The right door, the code read back upper-case: admitted, once.
    let upper = format!(" {} ", code.to_ascii_uppercase());
    data(server.gql(Some(&org), check_in, json!({"c": upper, "e": saturday})));
    assert_eq!(error_code(&server.gql(Some(&org), check_in, json!({"c": code, "e": null}))), "CONFLICT");

    // Called off: the messages say so, not that the booking was cancelled.
    let held = data(book(&server, &fan, &saturday_tickets, 1, "held", true))["bookTickets"]["id"].clone();
    let unused = code_of(book(&server, &fan, &saturday_tickets, 1, "unused", false));
    data(server.gql(Some(&org), "mutation($id: ID!) { cancelEvent(id: $id) { id } }", json!({"id": saturday})));
    let scanned = server.gql(Some(&org), check_in, json!({"c": unused, "e": saturday}));
    assert_eq!((error_code(&scanned), error_message(&scanned)), ("CONFLICT".into(), "the event is cancelled".into()));
    let confirm = "mutation($id: ID!) { confirmBooking(id: $id) { id } }";
    let confirmed = server.gql(Some(&fan), confirm, json!({"id": held}));
    assert_eq!(
        (error_code(&confirmed), error_message(&confirmed)),
        ("CONFLICT".into(), "the event is cancelled".into())
    );
}

/// Sales close when an event ends, or at its start when it has no end, and
/// the message says which; once they are closed, a buyer may no longer
/// cancel a confirmed booking (a no-show would take their sale out of the
/// organizer's figures after the show), while the organizer may.
#[test]
fn once_sales_close_the_owner_keeps_their_booking_and_the_message_says_why() {
    let dir = TempDir::new("closed");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let (_, started) =
        event_with_tickets(&server, &org, "Started", "2020-01-01T20:00:00Z", general_admission(500, 5), true);
    let refused = book(&server, &fan, &started, 1, "late", false);
    assert_eq!(error_code(&refused), "CONFLICT");
    assert_eq!(
        error_message(&refused),
        "the event has started: with no end time (endsAt), its sales closed at its start"
    );

    let (event, tickets) =
        event_with_tickets(&server, &org, "Soon", "2097-01-01T20:00:00Z", general_admission(500, 5), true);
    let mine = data(book(&server, &fan, &tickets, 2, "mine", false))["bookTickets"]["id"].clone();
    let theirs = data(book(&server, &fan, &tickets, 1, "theirs", false))["bookTickets"]["id"].clone();
    let held = data(book(&server, &fan, &tickets, 1, "held", true))["bookTickets"]["id"].clone();
    let update = "mutation($id: ID!, $i: UpdateEventInput!) { updateEvent(id: $id, input: $i) { id } }";
    let input = json!({"startsAt": "2020-01-01T20:00:00Z", "endsAt": "2020-01-01T23:00:00Z"});
    data(server.gql(Some(&org), update, json!({"id": event, "i": input})));
    let over = book(&server, &fan, &tickets, 1, "over", false);
    assert_eq!(error_message(&over), "the event is over: its sales closed when it ended", "{over}");

    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { status } }";
    let kept = server.gql(Some(&fan), cancel, json!({"id": mine}));
    assert_eq!(error_code(&kept), "CONFLICT");
    assert!(error_message(&kept).contains("only its organizer or an admin"), "{kept}");
    let dropped = data(server.gql(Some(&fan), cancel, json!({"id": held})));
    assert_eq!(dropped["cancelBooking"]["status"], "CANCELLED", "a hold sold nothing: its owner may drop it");
    let refunded = data(server.gql(Some(&org), cancel, json!({"id": theirs})));
    assert_eq!(refunded["cancelBooking"]["status"], "CANCELLED");

    // Without an end, sales closed at the start, and the message says so.
    let (tonight, tickets) =
        event_with_tickets(&server, &org, "Tonight", "2097-01-01T20:00:00Z", general_admission(500, 5), true);
    let booked = data(book(&server, &fan, &tickets, 1, "tonight", false))["bookTickets"]["id"].clone();
    let started = json!({"id": tonight, "i": {"startsAt": "2020-01-01T20:00:00Z"}});
    data(server.gql(Some(&org), update, started));
    let kept = server.gql(Some(&fan), cancel, json!({"id": booked}));
    assert_eq!(
        error_message(&kept),
        "the event has started: only its organizer or an admin may cancel a booking of it now"
    );
}

/// Whatever a stranger sends, a draft's ticket type answers as one that
/// does not exist: with a new key (NOT_FOUND) and with a key they used
/// before (CONFLICT, the key's other input).
#[test]
fn a_drafts_ticket_type_answers_strangers_as_a_missing_one_does() {
    let dir = TempDir::new("draft-probe");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (_, draft) =
        event_with_tickets(&server, &org, "Secret", "2097-01-01T20:00:00Z", general_admission(100, 5), false);
    let (_, public) =
        event_with_tickets(&server, &org, "Public", "2097-01-01T20:00:00Z", general_admission(100, 5), true);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    data(book(&server, &fan, &public, 1, "used", false));
    let answer = |ticket_type: &str, key: &str| {
        let answer = book(&server, &fan, ticket_type, 1, key, false);
        (error_code(&answer), error_message(&answer))
    };
    assert_eq!(answer(&draft, "new"), answer("999999", "new"));
    assert_eq!(answer(&draft, "new").0, "NOT_FOUND");
    assert_eq!(answer(&draft, "used"), answer("999999", "used"));
    assert_eq!(answer(&draft, "used").0, "CONFLICT");
}

/// Sends `body` to /graphql as-is; the response's status and raw text.
fn post_raw(server: &Server, token: Option<&str>, body: &Value) -> (u16, String) {
    let response = try_post_json(&server.addr, token, &serde_json::to_vec(body).unwrap())
        .unwrap_or_else(|e| panic!("POST /graphql on {} failed: {e}", server.addr));
    (response.status, response.text())
}

fn direct_runs(server: &Server) -> u64 {
    metric(server, "marquee_graphql_direct_operations_total").expect("direct runs counted").parse().unwrap()
}

/// A known `bookTickets` operation runs without the GraphQL executor (see
/// api/src/direct.rs); its answers must be the executor's, byte for byte.
/// A batch always runs on the executor, so each request is sent alone
/// (run directly, counted by the metric) and then as a batch of one, and
/// the two bodies compared: a success a second time replays its
/// idempotency key, so both answer the same booking.
#[test]
fn bookings_run_without_the_executor_answer_as_the_executor_does() {
    let dir = TempDir::new("bookings-direct");
    let server = Server::start(dir.path(), &["--rate-limit-token", "0", "--rate-limit-ip", "0"]);
    let (org, event, ticket_type) = on_sale(&server, 6, Some(3));
    publish(&server, &org, &event);
    // The dearest ticket: 50 of them come to just under an Int's 32 bits.
    let (_, dear) =
        event_with_tickets(&server, &org, "Gala", "2097-02-01T20:00:00Z", general_admission(42_949_672, 500), true);
    let (_, draft) =
        event_with_tickets(&server, &org, "Draft", "2097-03-01T20:00:00Z", general_admission(100, 10), false);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let (rich, _) = register(&server, "rich@example.com", "ATTENDEE");

    let documents: [(&str, Option<&str>); 5] = [
        ("mutation($input: BookInput!) { bookTickets(input: $input) { id status quantity tickets { code } } }", None),
        (
            "mutation Book($in: BookInput!) { b: bookTickets(input: $in) { __typename n: id s: status quantity totalCents \
             totalCentsExact createdAt expiresAt confirmedAt tickets { __typename id code checkedInAt again: code } } }",
            Some("Book"),
        ),
        (
            "query Other { __typename } mutation Pick($input: BookInput!) { bookTickets(input: $input) { status expiresAt } }",
            Some("Pick"),
        ),
        ("mutation($input: BookInput!) { bookTickets(input: $input) { totalCents id } }", None),
        ("mutation($input: BookInput!) { bookTickets(input: $input) { totalCents } }", None),
    ];
    let input = |ticket_type: &str, quantity: Value, key: &str, hold: Option<Value>| {
        let mut input = json!({"ticketTypeId": ticket_type, "quantity": quantity, "idempotencyKey": key});
        if let Some(hold) = hold {
            input["hold"] = hold;
        }
        input
    };
    let mut cases: Vec<(String, Option<&str>, Value)> = Vec::new();
    for (d, (_, _)) in documents.iter().enumerate() {
        let key = |name: &str| format!("doc{d}-{name}");
        cases.extend([
            ("confirmed".into(), Some(fan.as_str()), input(&ticket_type, json!(1), &key("confirmed"), None)),
            ("held".into(), Some(fan.as_str()), input(&ticket_type, json!(1), &key("held"), Some(json!(true)))),
            ("hold null".into(), Some(rich.as_str()), input(&ticket_type, json!(1), &key("null"), Some(json!(null)))),
            ("sold out".into(), Some(rich.as_str()), input(&ticket_type, json!(5), &key("sold-out"), None)),
            ("over the limit".into(), Some(fan.as_str()), input(&ticket_type, json!(2), &key("limit"), None)),
            ("quantity 0".into(), Some(fan.as_str()), input(&ticket_type, json!(0), &key("zero"), None)),
            ("quantity 51".into(), Some(fan.as_str()), input(&ticket_type, json!(51), &key("51"), None)),
            ("quantity 2^40".into(), Some(fan.as_str()), input(&ticket_type, json!(1u64 << 40), &key("huge"), None)),
            ("not an id".into(), Some(fan.as_str()), input("x", json!(1), &key("bad-id"), None)),
            ("no such ticket type".into(), Some(fan.as_str()), input("999999", json!(1), &key("missing"), None)),
            ("a draft's".into(), Some(fan.as_str()), input(&draft, json!(1), &key("draft"), None)),
            ("the organizer, a draft's".into(), Some(org.as_str()), input(&draft, json!(1), &key("draft"), None)),
            ("anonymous".into(), None, input(&ticket_type, json!(1), &key("anonymous"), None)),
            ("a bad token".into(), Some("not-a-token"), input(&ticket_type, json!(1), &key("bad-token"), None)),
            ("the most an Int holds".into(), Some(rich.as_str()), input(&dear, json!(50), &key("dear"), None)),
        ]);
        // A ticket type id sent as an integer (GraphQL's ID takes both).
        let numeric: i64 = dear.parse().unwrap();
        cases.push(("id as an integer".into(), Some(rich.as_str()), input("", json!(1), &key("numeric"), None)));
        cases.last_mut().unwrap().2["ticketTypeId"] = json!(numeric);
    }

    let per_document = cases.len() / documents.len();
    for (d, (query, name)) in documents.iter().enumerate() {
        let variable = if query.contains("$in:") { "in" } else { "input" };
        let request = |input: &Value| {
            let mut request = json!({"query": query, "variables": {variable: input}});
            if let Some(name) = name {
                request["operationName"] = json!(name);
            }
            request
        };
        // The first request of a document validates it (on the executor);
        // from then on it is known.
        let warm = input(&ticket_type, json!(0), &format!("doc{d}-warm"), None);
        let (_, first) = post_raw(&server, Some(&fan), &request(&warm));
        assert!(first.contains("BAD_USER_INPUT"), "document {d}: {first}");
        for (case, token, input) in &cases[d * per_document..(d + 1) * per_document] {
            let before = direct_runs(&server);
            let (status, direct) = post_raw(&server, *token, &request(input));
            assert_eq!(direct_runs(&server), before + 1, "document {d}, {case}: not run directly: {direct}");
            let (batch_status, batch) = post_raw(&server, *token, &json!([request(input)]));
            assert_eq!(direct_runs(&server), before + 1, "a batch runs on the executor");
            let executor = batch.strip_prefix('[').and_then(|b| b.strip_suffix(']')).expect("a batch of one");
            assert_eq!((status, direct.as_str()), (batch_status, executor), "document {d}, {case}");
        }
    }

    // Bodies beyond the plain one: with `extensions` (read as usual, then
    // run directly as a known operation), with a variable the operation
    // does not use (GraphQL ignores it), and inputs async-graphql refuses
    // (never run directly).
    let query = documents[0].0;
    let plain = |key: &str| input(&ticket_type, json!(1), key, None);
    let variants: [(&str, Value, bool); 6] = [
        ("with extensions", json!({"query": query, "variables": {"input": plain("ext")}, "extensions": {}}), true),
        ("another variable", json!({"query": query, "variables": {"input": plain("other"), "unused": 1}}), true),
        (
            "quantity 1.0",
            json!({"query": query, "variables": {"input": input(&ticket_type, json!(1.0), "float", None)}}),
            false,
        ),
        (
            "hold a string",
            json!({"query": query, "variables": {"input": input(&ticket_type, json!(1), "s", Some(json!("yes")))}}),
            false,
        ),
        ("a field it has not", json!({"query": query, "variables": {"input": {"seat": "A1"}}}), false),
        // Past an i64: not an Int to the validator (a known operation took
        // it for one, and answered a field error instead).
        (
            "quantity 2^63",
            json!({"query": query, "variables": {"input": input(&ticket_type, json!(1u64 << 63), "big", None)}}),
            false,
        ),
    ];
    for (case, body, direct) in &variants {
        let before = direct_runs(&server);
        let (status, alone) = post_raw(&server, Some(&rich), body);
        assert_eq!(direct_runs(&server), before + u64::from(*direct), "{case}: {alone}");
        let (batch_status, batch) = post_raw(&server, Some(&rich), &json!([body]));
        let executor = batch.strip_prefix('[').and_then(|b| b.strip_suffix(']')).expect("a batch of one");
        assert_eq!((status, alone.as_str()), (batch_status, executor), "{case}");
    }

    // Shapes it does not follow run on the executor, as before.
    for query in [
        "mutation($input: BookInput!) { bookTickets(input: $input) { id ticketType { sold } } }",
        "mutation($input: BookInput!) { bookTickets(input: $input) { ...b } } fragment b on Booking { id }",
        "mutation($input: BookInput!) { bookTickets(input: $input) { id @include(if: true) } }",
        "mutation($input: BookInput!) { bookTickets(input: $input) { id id } }",
        "mutation($input: BookInput!) { bookTickets(input: $input) { id } __typename }",
    ] {
        for attempt in 0..2 {
            let before = direct_runs(&server);
            let key = format!("{query}-{attempt}");
            let answer = server.gql(Some(&rich), query, json!({"input": input(&dear, json!(1), &key, None)}));
            assert!(answer["data"]["bookTickets"]["id"].is_string(), "{query}: {answer}");
            assert_eq!(direct_runs(&server), before, "{query} ran directly");
        }
    }
}
