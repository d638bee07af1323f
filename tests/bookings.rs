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

    assert_eq!(
        error_code(&book(&server, &fan, &ticket_type, 1, "draft", false)),
        "CONFLICT",
        "DRAFT events are not on sale"
    );
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
    assert!(error_message(&refused).contains("over"), "{refused}");
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
    assert_eq!(held["status"], "HELD");
    assert_eq!(held["tickets"], json!([]));
    assert!(held["expiresAt"].is_string());
    assert_eq!(held["ticketType"]["available"], 0);
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
