//! End-to-end subscriptions over a real WebSocket, speaking the standard
//! graphql-transport-ws protocol (and the legacy graphql-ws): availability,
//! event changes and notifications arrive after the mutations that cause
//! them; auth and limits hold; a subscriber that stops reading does not
//! hold bookings up.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ws::*;
use common::*;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;

struct Stage {
    org: String,
    event: String,
    ticket_type: String,
}

fn stage(server: &Server) -> Stage {
    let (org, _) = register(server, "org@example.com", "ORGANIZER");
    let ticket = general_admission(1000, 1000);
    let (event, ticket_type) = event_with_tickets(server, &org, "Live gig", "2097-06-01T20:00:00Z", ticket, true);
    Stage { org, event, ticket_type }
}

fn book(server: &Server, token: &str, ticket_type: &str, quantity: i64, key: &str, hold: bool) -> Value {
    let query = "mutation($input: BookInput!) { bookTickets(input: $input) { id status } }";
    let input =
        json!({"input": {"ticketTypeId": ticket_type, "quantity": quantity, "idempotencyKey": key, "hold": hold}});
    data(server.gql(Some(token), query, input))["bookTickets"].clone()
}

const AVAILABILITY: &str =
    "subscription($e: ID!) { availability(eventId: $e) { eventId ticketTypeId sold available } }";

#[test]
fn availability_follows_bookings_holds_expiries_and_cancellations() {
    let dir = TempDir::new("ws-availability");
    let server = Server::start(dir.path(), &["--hold-ttl", "1s"]);
    let stage = stage(&server);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let update = |sold: i64| json!({"availability": {"eventId": stage.event, "ticketTypeId": stage.ticket_type, "sold": sold, "available": 1000 - sold}});
    book(&server, &fan, &stage.ticket_type, 1, "before", false);
    let mut ws = Ws::connect(&server.addr, None).acknowledged();
    ws.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    // The current figures come first (a page opened between changes, or a
    // client back after a dropped connection, shows them as they are); and
    // the subscription is live from then on.
    assert_eq!(ws.next_data("1"), update(1), "the current figures first");
    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { id } }";
    let before = data(server.gql(Some(&fan), "{ myBookings { id } }", json!({})))["myBookings"][0]["id"].clone();
    data(server.gql(Some(&fan), cancel, json!({"id": before})));
    assert_eq!(ws.next_data("1"), update(0));

    book(&server, &fan, &stage.ticket_type, 2, "a", false);
    assert_eq!(ws.next_data("1"), update(2));
    let held = book(&server, &fan, &stage.ticket_type, 3, "b", true);
    assert_eq!(held["status"], "HELD");
    assert_eq!(ws.next_data("1"), update(5));
    // The hold runs out on its own; its seats come back.
    assert_eq!(ws.next_data("1"), update(2));
    let confirmed = book(&server, &fan, &stage.ticket_type, 1, "c", false);
    assert_eq!(ws.next_data("1"), update(3));
    data(server.gql(Some(&fan), cancel, json!({"id": confirmed["id"]})));
    assert_eq!(ws.next_data("1"), update(2));

    // Nothing more comes for a subscription the client completed.
    ws.send(json!({"id": "1", "type": "complete"}));
    ws.subscribe("9", AVAILABILITY, json!({"e": "424242"}));
    assert_eq!(ws.next_error_code("9"), "NOT_FOUND");
    assert_eq!(ws.next(), json!({"id": "9", "type": "complete"}));

    // The ticket type itself comes with the figures, for clients' caches.
    let cached = "subscription($e: ID!) { availability(eventId: $e) { sold ticketType { id sold available } } }";
    ws.subscribe("2", cached, json!({"e": stage.event}));
    let current = ws.next_data("2")["availability"].clone();
    assert_eq!(current, json!({"sold": 2, "ticketType": {"id": stage.ticket_type, "sold": 2, "available": 998}}));
    book(&server, &fan, &stage.ticket_type, 1, "d", false);
    let with_type = ws.next_data("2")["availability"].clone();
    let ticket_type = json!({"id": stage.ticket_type, "sold": 3, "available": 997});
    assert_eq!(with_type, json!({"sold": 3, "ticketType": ticket_type}));
}

#[test]
fn event_changes_and_notifications_reach_their_subscribers() {
    let dir = TempDir::new("ws-events");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let (fan, fan_id) = register(&server, "fan@example.com", "ATTENDEE");
    let (friend, friend_id) = register(&server, "friend@example.com", "ATTENDEE");
    for (who, whom) in [(&fan, &friend_id), (&friend, &fan_id)] {
        data(server.gql(Some(who), "mutation($id: ID!) { follow(userId: $id) { id } }", json!({"id": whom})));
    }
    let mut fan_ws = Ws::connect(&server.addr, Some(&fan)).acknowledged();
    fan_ws.subscribe("n", "subscription { notifications { kind message eventId read } }", json!({}));
    fan_ws.subscribe(
        "e",
        "subscription($e: ID!) { eventUpdated(eventId: $e) { id title status } }",
        json!({"e": stage.event}),
    );
    let mut friend_ws = Ws::connect(&server.addr, Some(&friend)).acknowledged();
    friend_ws.subscribe("n", "subscription { notifications { kind message } }", json!({}));
    std::thread::sleep(Duration::from_millis(300));

    let booked = book(&server, &fan, &stage.ticket_type, 2, "a", false);
    let mine = fan_ws.next_data("n")["notifications"].clone();
    assert_eq!(mine["kind"], "booking.confirmed");
    assert_eq!(mine["eventId"], stage.event.as_str());
    assert_eq!(mine["read"], false);
    assert!(mine["message"].as_str().unwrap().contains("Live gig"), "{mine}");
    let told = friend_ws.next_data("n")["notifications"].clone();
    assert_eq!(told["kind"], "friend.going", "the fan's friend hears about it");

    let update = json!({"id": stage.event, "input": {"title": "Live gig (moved)"}});
    data(server.gql(
        Some(&stage.org),
        "mutation($id: ID!, $input: UpdateEventInput!) { updateEvent(id: $id, input: $input) { id } }",
        update,
    ));
    // The change and the notification about it come from different readers,
    // in either order.
    let mut results = std::collections::HashMap::new();
    for _ in 0..2 {
        let message = fan_ws.next();
        assert_eq!(message["type"], "next", "{message}");
        results.insert(message["id"].as_str().unwrap().to_string(), message["payload"]["data"].clone());
    }
    assert_eq!(
        results["e"]["eventUpdated"],
        json!({"id": stage.event, "title": "Live gig (moved)", "status": "PUBLISHED"})
    );
    assert_eq!(results["n"]["notifications"]["kind"], "event.updated", "ticket holders hear of changes");

    // The inbox has them too, newest first, and they can be marked read.
    let inbox = data(server.gql(Some(&fan), "{ notifications { id kind read } }", json!({})))["notifications"].clone();
    let kinds: Vec<&str> = inbox.as_array().unwrap().iter().map(|n| n["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["event.updated", "booking.confirmed"]);
    let first = inbox[1]["id"].clone();
    // A confirmation is listed from its booking, and named after it.
    assert_eq!(first, format!("confirmed-{}", booked["id"].as_str().unwrap()).as_str());
    // The booking told the fan and the friend from one log entry; their
    // notifications still have ids of their own.
    let friends = data(server.gql(Some(&friend), "{ notifications { id kind } }", json!({})))["notifications"].clone();
    let going = friends.as_array().unwrap().iter().find(|n| n["kind"] == "friend.going").expect("friend.going");
    assert_ne!(going["id"], first, "ids are unique across users: {friends} {inbox}");
    for bad in ["abc", "12", "1-x", "-1-2", "confirmed-", "confirmed-x", "confirmed-1-2"] {
        let refused = server.gql(
            Some(&fan),
            "mutation($ids: [ID!]) { markNotificationsRead(ids: $ids) }",
            json!({"ids": [first, bad]}),
        );
        assert_eq!(error_code(&refused), "BAD_USER_INPUT", "{bad}: {refused}");
        assert!(error_message(&refused).starts_with("ids: "), "{refused}");
    }
    let marked = data(server.gql(
        Some(&fan),
        "mutation($ids: [ID!]) { markNotificationsRead(ids: $ids) }",
        json!({"ids": [first]}),
    ));
    assert_eq!(marked["markNotificationsRead"], 1);
    let unread = data(server.gql(Some(&fan), "{ notifications(unreadOnly: true) { kind } }", json!({})));
    assert_eq!(unread["notifications"], json!([{"kind": "event.updated"}]));
    let count = "{ unreadNotificationCount }";
    assert_eq!(data(server.gql(Some(&fan), count, json!({})))["unreadNotificationCount"], 1);
    let all = data(server.gql(Some(&fan), "mutation { markNotificationsRead }", json!({})));
    assert_eq!(all["markNotificationsRead"], 1);
    assert_eq!(data(server.gql(Some(&fan), count, json!({})))["unreadNotificationCount"], 0);
    assert_eq!(error_code(&server.gql(None, count, json!({}))), "UNAUTHENTICATED");
    // The whole inbox (200) fits one page.
    let whole = data(server.gql(Some(&fan), "{ notifications(first: 200) { id } }", json!({})));
    assert_eq!(whole["notifications"].as_array().unwrap().len(), 2);
    let refused = server.gql(Some(&fan), "{ notifications(first: 201) { id } }", json!({}));
    assert_eq!(error_code(&refused), "BAD_USER_INPUT", "{refused}");

    // A second booking of the same event: the fan hears of it, the friend
    // (who knows the fan is going) does not again.
    book(&server, &fan, &stage.ticket_type, 1, "b", false);
    assert_eq!(fan_ws.next_data("n")["notifications"]["kind"], "booking.confirmed");
    let friends = data(server.gql(Some(&friend), "{ notifications { kind } }", json!({})))["notifications"].clone();
    let going = friends.as_array().unwrap().iter().filter(|n| n["kind"] == "friend.going").count();
    assert_eq!(going, 1, "{friends}");

    // The friend books another event, holding seats first: the fan hears
    // of the friend's going with the friend's first confirmed booking.
    let (_, other_type) =
        event_with_tickets(&server, &stage.org, "Second gig", "2097-07-01T20:00:00Z", general_admission(500, 50), true);
    let held = book(&server, &friend, &other_type, 1, "hold", true);
    assert_eq!(held["status"], "HELD");
    book(&server, &friend, &other_type, 1, "straight", false);
    let told = fan_ws.next_data("n")["notifications"].clone();
    assert_eq!(told["kind"], "friend.going", "{told}");
    data(server.gql(Some(&friend), "mutation($id: ID!) { confirmBooking(id: $id) { id } }", json!({"id": held["id"]})));
    // The fan's next notification comes from a later change: a second
    // friend.going, were there one, would come before it.
    book(&server, &fan, &other_type, 1, "after", false);
    let next = fan_ws.next_data("n")["notifications"].clone();
    assert_eq!(next["kind"], "booking.confirmed", "no second friend.going: {next}");
}

#[test]
fn subscriptions_enforce_auth_and_limits() {
    let dir = TempDir::new("ws-limits");
    let server = Server::start(dir.path(), &["--subscriptions-per-connection-max", "2", "--ws-connections-max", "3"]);
    let stage = stage(&server);
    let mut anonymous = Ws::connect(&server.addr, None).acknowledged();
    anonymous.subscribe("1", "subscription { notifications { kind } }", json!({}));
    assert_eq!(anonymous.next_error_code("1"), "UNAUTHENTICATED");

    // graphql-transport-ws: a refused connection_init closes with 4403.
    let mut forged = Ws::connect(&server.addr, Some("mq_not-a-real-token"));
    let answer = forged.next();
    assert_eq!(answer, json!({"type": "closed", "code": 4403}), "a bad token is not acknowledged");
    let mut not_text = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
    not_text.send(json!({"type": "connection_init", "payload": {"authorization": 123}}));
    assert_eq!(not_text.next(), json!({"type": "closed", "code": 4403}), "an authorization that is no token");
    let mut null = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
    null.send(json!({"type": "connection_init", "payload": {"authorization": null}}));
    assert_eq!(null.next()["type"], "connection_ack", "a null authorization is none: anonymous");

    let mut busy = Ws::connect(&server.addr, None).acknowledged();
    for id in 1..=6 {
        busy.subscribe(&id.to_string(), AVAILABILITY, json!({"e": stage.event}));
    }
    // Slots are taken as the messages arrive: the two first sent run (each
    // sends the current figures), and each after them is refused before it
    // runs (an `error` message), whichever stream first runs (their
    // answers come in any order).
    let mut refused = std::collections::BTreeSet::new();
    let mut running = std::collections::BTreeSet::new();
    while refused.len() < 4 || running.len() < 2 {
        let message = busy.next();
        let id = message["id"].as_str().unwrap().to_string();
        if message["type"] == "next" {
            running.insert(id);
            continue;
        }
        assert_eq!(message["type"], "error", "{message}");
        assert_eq!(message["payload"][0]["extensions"]["code"], "QUERY_TOO_COMPLEX", "{message}");
        refused.insert(id);
    }
    assert_eq!(running, ["1", "2"].map(String::from).into(), "the first two sent run");
    assert_eq!(refused, ["3", "4", "5", "6"].map(String::from).into(), "the last four sent are refused");

    // Three connections are open (anonymous, forged may have closed, busy):
    // open until refused, which must happen by the fourth.
    let mut extra = Vec::new();
    let refused_status = loop {
        match open(&server.addr, "graphql-transport-ws") {
            Ok(socket) => extra.push(socket),
            Err(status) => break status,
        }
        assert!(extra.len() <= 3, "the connection limit was not enforced");
    };
    assert_eq!(refused_status, 503);
    let wrong = open(&server.addr, "chat");
    assert_eq!(wrong.err(), Some(400), "an unknown subprotocol is refused");
}

/// A subscription's document meets the checks of `POST /graphql`: an
/// invalid one and one over the query limits are refused with their codes,
/// and the connection goes on serving the next one.
#[test]
fn subscription_documents_are_validated_and_limited_with_codes() {
    let dir = TempDir::new("ws-documents");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let mut ws = Ws::connect(&server.addr, None).acknowledged();
    ws.subscribe("1", "subscription { nope }", json!({}));
    assert_eq!(ws.next_refusal_code("1"), "BAD_USER_INPUT");
    ws.subscribe("2", "subscription($e: ID!) { eventUpdated(eventId: $e) { id }", json!({"e": stage.event}));
    assert_eq!(ws.next_refusal_code("2"), "BAD_USER_INPUT");
    let aliases: String = (0..2_000).map(|i| format!("a{i}: id ")).collect();
    let wide = format!("subscription($e: ID!) {{ eventUpdated(eventId: $e) {{ {aliases} }} }}");
    ws.subscribe("3", &wide, json!({"e": stage.event}));
    assert_eq!(ws.next_refusal_code("3"), "QUERY_TOO_COMPLEX");
    let nested = format!("{{ __type(name: {}1{}) {{ name }} }}", "[".repeat(2_000), "]".repeat(2_000));
    ws.subscribe("6", &nested, json!({}));
    assert_eq!(ws.next_refusal_code("6"), "QUERY_TOO_COMPLEX", "a literal nested 2,000 deep");
    ws.subscribe(
        "5",
        "subscription($e: ID!) { eventUpdated(eventId: $e) { id } notifications { id } }",
        json!({"e": stage.event}),
    );
    assert_eq!(ws.next_refusal_code("5"), "BAD_USER_INPUT", "one root field per subscription");
    // The root field cannot be an introspection field; said once.
    ws.subscribe("7", "subscription { __typename }", json!({}));
    let refusal = ws.next();
    assert_eq!((refusal["id"].as_str(), refusal["type"].as_str()), (Some("7"), Some("error")), "{refusal}");
    assert_eq!(refusal["payload"].as_array().map(Vec::len), Some(1), "{refusal}");

    let (buyer, _) = register(&server, "buyer@example.com", "ATTENDEE");
    ws.subscribe("4", AVAILABILITY, json!({"e": stage.event}));
    // Nothing came after the refusals (no `complete` for 1-3): the current
    // figures, then the booking's.
    let current = ws.next();
    assert_eq!((current["id"].as_str(), current["type"].as_str()), (Some("4"), Some("next")), "{current}");
    assert_eq!(current["payload"]["data"]["availability"]["sold"], 0, "{current}");
    book(&server, &buyer, &stage.ticket_type, 2, "k1", false);
    let update = ws.next();
    assert_eq!((update["id"].as_str(), update["type"].as_str()), (Some("4"), Some("next")), "{update}");
    assert_eq!(update["payload"]["data"]["availability"]["sold"], 2, "{update}");
}

/// connection_init carries the token in the shapes clients' examples
/// send: `authorization`, Apollo's `headers`, or `authToken` alone; a
/// forged one is refused in each. A `subscribe` without its query is not a
/// message of the protocol.
#[test]
fn connection_init_takes_the_token_in_the_shapes_clients_send() {
    let dir = TempDir::new("ws-init-shapes");
    let server = Server::start(dir.path(), &[]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let me = data(server.gql(Some(&fan), "{ me { id } }", json!({})))["me"]["id"].clone();
    let shapes = [
        json!({"authorization": format!("Bearer {fan}")}),
        json!({"headers": {"Authorization": format!("Bearer {fan}")}}),
        json!({"headers": {"authorization": format!("Bearer {fan}")}}),
        json!({"authToken": fan}),
        json!({"authToken": format!("Bearer {fan}")}),
        json!({"authorization": format!("Bearer {fan}"), "authToken": fan}),
    ];
    for payload in shapes {
        let mut ws = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
        ws.send(json!({"type": "connection_init", "payload": payload.clone()}));
        assert_eq!(ws.next()["type"], "connection_ack", "{payload}");
        ws.subscribe("q", "{ me { id } }", json!({}));
        assert_eq!(ws.next_data("q")["me"]["id"], me, "{payload}");
    }
    let forged = [
        json!({"headers": {"Authorization": "Bearer mq_forged"}}),
        json!({"authToken": "mq_forged"}),
        // Two tokens, one of them forged: not the good one taken, the
        // other ignored.
        json!({"authorization": format!("Bearer {fan}"), "authToken": "mq_forged"}),
        json!({"authorization": format!("Bearer {fan}"), "headers": {"Authorization": "Bearer mq_forged"}}),
    ];
    for payload in forged {
        let mut ws = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
        ws.send(json!({"type": "connection_init", "payload": payload.clone()}));
        assert_eq!(ws.next(), json!({"type": "closed", "code": 4403}), "{payload}");
    }

    // The upgrade request's own Authorization header signs in too; with a
    // different token in the payload, the connection is refused.
    let bearer = format!("Bearer {fan}");
    let upgrade = [("Authorization", bearer.as_str())];
    let mut ws = Ws { socket: open_with(&server.addr, "graphql-transport-ws", &upgrade).unwrap(), legacy: false };
    ws.send(json!({"type": "connection_init", "payload": {}}));
    assert_eq!(ws.next()["type"], "connection_ack");
    ws.subscribe("q", "{ me { id } }", json!({}));
    assert_eq!(ws.next_data("q")["me"]["id"], me, "signed in by the upgrade's header");
    let mut ws = Ws { socket: open_with(&server.addr, "graphql-transport-ws", &upgrade).unwrap(), legacy: false };
    ws.send(json!({"type": "connection_init", "payload": {"authorization": "Bearer mq_forged"}}));
    assert_eq!(ws.next(), json!({"type": "closed", "code": 4403}));
    // A proxy's Basic credentials on the upgrade are not the client's token.
    let basic = [("Authorization", "Basic dXNlcjpwYXNz")];
    let mut ws = Ws { socket: open_with(&server.addr, "graphql-transport-ws", &basic).unwrap(), legacy: false };
    ws.send(json!({"type": "connection_init", "payload": {"authorization": bearer}}));
    assert_eq!(ws.next()["type"], "connection_ack");

    let mut ws = Ws::connect(&server.addr, Some(&fan)).acknowledged();
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"variables": {}}}));
    assert_eq!(ws.next(), json!({"type": "closed", "code": 4400}));
}

/// A socket is held to what `POST /graphql` holds a request to: a missing
/// required variable refuses the operation before it runs, a failed
/// non-null field nulls its parent, and introspection is served only when
/// configured.
#[test]
fn websocket_operations_meet_the_rules_of_http_requests() {
    let dir = TempDir::new("ws-rules");
    let server = Server::start(dir.path(), &["--introspection", "false"]);
    let stage = stage(&server);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let mut ws = Ws::connect(&server.addr, Some(&fan)).acknowledged();

    ws.subscribe("1", "subscription($e: ID!) { eventUpdated(eventId: $e) { id } }", json!({}));
    let refusal = ws.next();
    assert_eq!((refusal["id"].as_str(), refusal["type"].as_str()), (Some("1"), Some("error")), "{refusal}");
    assert_eq!(refusal["payload"][0]["message"], "Variable \"$e\" of required type \"ID!\" was not provided.");
    assert_eq!(refusal["payload"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // Introspection off: asking for the schema is refused, not answered
    // with a null, on both; __typename is served.
    ws.subscribe("2", "{ __schema { queryType { name } } }", json!({}));
    assert_eq!(ws.next_refusal_code("2"), "BAD_USER_INPUT");
    let over_http = server.gql(None, "{ t: __type(name: \"Event\") { name } }", json!({}));
    assert_eq!(error_code(&over_http), "BAD_USER_INPUT", "{over_http}");
    assert!(over_http.get("data").is_none(), "refused before it ran: {over_http}");
    let message = over_http["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("introspection is turned off") && message.contains("__type"), "{message}");
    assert_eq!(data(server.gql(None, "{ __typename }", json!({})))["__typename"], "Query");

    // whosGoing ([User!]!) is the organizer's; eventUpdated is Event!, so
    // the attendee's update carries data null and the error.
    ws.subscribe(
        "3",
        "subscription($e: ID!) { eventUpdated(eventId: $e) { id whosGoing { id } } }",
        json!({"e": stage.event}),
    );
    std::thread::sleep(Duration::from_millis(300));
    data(server.gql(
        Some(&stage.org),
        "mutation($id: ID!, $input: UpdateEventInput!) { updateEvent(id: $id, input: $input) { id } }",
        json!({"id": stage.event, "input": {"title": "Renamed"}}),
    ));
    let update = ws.next();
    assert_eq!((update["id"].as_str(), update["type"].as_str()), (Some("3"), Some("next")), "{update}");
    assert_eq!(update["payload"]["data"], Value::Null, "{update}");
    assert_eq!(update["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN");
    assert_eq!(update["payload"]["errors"][0]["path"], json!(["eventUpdated", "whosGoing"]));
}

/// An open socket acts as its token stands now, not as it stood at
/// connection_init: after logout its operations are signed out and its
/// running subscriptions end; after a role change its operations have the
/// new role and its running subscriptions end.
#[test]
fn an_open_socket_acts_as_its_token_stands_now() {
    let dir = TempDir::new("ws-identity");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let admin = login(&server, "root@example.com", "admin-password");
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let (second_org, second_org_id) = register(&server, "second@example.com", "ORGANIZER");
    let (leaver, _) = register(&server, "leaver@example.com", "ATTENDEE");

    // A mutation's answer stands: logout over the socket itself says true.
    let mut leaver_ws = Ws::connect(&server.addr, Some(&leaver)).acknowledged();
    leaver_ws.subscribe("out", "mutation { logout }", json!({}));
    assert_eq!(leaver_ws.next_data("out"), json!({"logout": true}));
    assert_eq!(leaver_ws.next()["type"], "complete");
    leaver_ws.subscribe("me", "{ me { id } }", json!({}));
    assert_eq!(leaver_ws.next_error_code("me"), "UNAUTHENTICATED", "signed out for the next one");

    let mut fan_ws = Ws::connect(&server.addr, Some(&fan)).acknowledged();
    fan_ws.subscribe("n", "subscription { notifications { kind } }", json!({}));
    let mut org_ws = Ws::connect(&server.addr, Some(&second_org)).acknowledged();
    org_ws.subscribe("e", "subscription($e: ID!) { eventUpdated(eventId: $e) { title } }", json!({"e": stage.event}));
    std::thread::sleep(Duration::from_millis(300));
    book(&server, &fan, &stage.ticket_type, 1, "before", false);
    assert_eq!(fan_ws.next_data("n")["notifications"]["kind"], "booking.confirmed");

    // Logout over HTTP: the socket's next operation is signed out, and the
    // running subscription ends instead of delivering the next notification.
    data(server.gql(Some(&fan), "mutation { logout }", json!({})));
    let booking = "mutation($i: BookInput!) { bookTickets(input: $i) { id } }";
    let input = json!({"i": {"ticketTypeId": stage.ticket_type, "quantity": 1, "idempotencyKey": "after"}});
    fan_ws.subscribe("b", booking, input);
    assert_eq!(fan_ws.next_error_code("b"), "UNAUTHENTICATED");
    assert_eq!(fan_ws.next()["type"], "complete");

    // A role taken away: the next operation has the new role.
    let org_event = "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }";
    let event_input = json!({"i": {"title": "Mine", "startsAt": "2097-06-01T20:00:00Z", "city": "Oslo"}});
    org_ws.subscribe("c1", org_event, event_input.clone());
    assert!(org_ws.next_data("c1")["createEvent"]["id"].is_string());
    assert_eq!(org_ws.next()["type"], "complete");
    let set_role = "mutation($id: ID!, $r: Role!) { setRole(userId: $id, role: $r) { role } }";
    data(server.gql(Some(&admin), set_role, json!({"id": second_org_id, "r": "ATTENDEE"})));
    org_ws.subscribe("c2", org_event, event_input);
    assert_eq!(org_ws.next_error_code("c2"), "FORBIDDEN");
    assert_eq!(org_ws.next()["type"], "complete");

    // Both running subscriptions end at their next result, which they do
    // not get: the event's update (one notification for the fan, one
    // update for the organizer). Each ends at once, not at a later event.
    data(server.gql(
        Some(&stage.org),
        "mutation($id: ID!, $input: UpdateEventInput!) { updateEvent(id: $id, input: $input) { id } }",
        json!({"id": stage.event, "input": {"title": "Moved"}}),
    ));
    assert_eq!(fan_ws.next_error_code("n"), "UNAUTHENTICATED", "{}", "no notification for a signed-out socket");
    let ended = fan_ws.next();
    assert_eq!((ended["id"].as_str(), ended["type"].as_str()), (Some("n"), Some("complete")), "{ended}");
    // Ending before its first result, the subscription gets graphql-transport-ws's
    // `error` message (nothing follows it); the fan's got `next` then `complete`.
    assert_eq!(org_ws.next_refusal_code("e"), "FORBIDDEN");
    org_ws.subscribe("t", "{ __typename }", json!({}));
    let after = org_ws.next();
    assert_eq!(
        (after["id"].as_str(), after["type"].as_str()),
        (Some("t"), Some("next")),
        "nothing more for e: {after}"
    );
}

/// A client offering both subprotocols is answered in the one the server
/// then speaks: its first choice.
#[test]
fn the_handshake_names_the_subprotocol_spoken() {
    let dir = TempDir::new("ws-offer");
    let server = Server::start(dir.path(), &[]);
    for (offered, spoken, ack) in [
        ("graphql-ws, graphql-transport-ws", "graphql-ws", "connection_ack"),
        ("graphql-transport-ws, graphql-ws", "graphql-transport-ws", "connection_ack"),
        ("Graphql-WS, graphql-transport-ws", "Graphql-WS", "connection_ack"),
    ] {
        let mut request = format!("ws://{}/graphql", server.addr).into_client_request().unwrap();
        request.headers_mut().insert("Sec-WebSocket-Protocol", offered.parse().unwrap());
        let stream = TcpStream::connect(&server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (socket, response) = tungstenite::client(request, stream).expect("the upgrade is accepted");
        let chosen = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        assert_eq!(chosen, Some(spoken), "offered {offered}");
        let mut ws = Ws { socket, legacy: spoken.eq_ignore_ascii_case("graphql-ws") };
        ws.send(json!({"type": "connection_init", "payload": {}}));
        assert_eq!(ws.next()["type"], ack);
        ws.subscribe("1", "{ __typename }", json!({}));
        let kind = if ws.legacy { "data" } else { "next" };
        let result = ws.next();
        assert_eq!(result["type"], kind, "{offered}: {result}");
        assert_eq!(result["payload"]["data"]["__typename"], "Query");
    }
}

/// Breaking graphql-transport-ws closes the connection with the protocol's
/// codes: a subscribe reusing a running id (4409), a subscribe before the
/// connection is acknowledged (4401), a message the protocol does not have
/// (4400, its reason short enough for a close frame), no connection_init
/// within 10 s (4408).
#[test]
fn protocol_violations_close_with_the_protocols_codes() {
    let dir = TempDir::new("ws-protocol");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let mut ws = Ws::connect(&server.addr, None).acknowledged();
    ws.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    ws.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    // (The first may have sent its current figures before the second came.)
    let closed = std::iter::repeat_with(|| ws.next()).find(|message| message["type"] != "next").unwrap();
    assert_eq!(closed, json!({"type": "closed", "code": 4409}));

    let mut early = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
    early.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    assert_eq!(early.next(), json!({"type": "closed", "code": 4401}));

    let mut not_object = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };
    not_object.send(json!({"type": "connection_init", "payload": 5}));
    assert_eq!(not_object.next(), json!({"type": "closed", "code": 4403}), "a payload that is no object");

    // A socket that never sends connection_init gives its slot back: 4408
    // after 10 s (checked last, on a socket opened first).
    let opened = std::time::Instant::now();
    let mut silent = Ws { socket: open(&server.addr, "graphql-transport-ws").unwrap(), legacy: false };

    let mut odd = Ws::connect(&server.addr, None).acknowledged();
    odd.send(json!({"type": "no-such-message", "payload": "x".repeat(300)}));
    assert_eq!(odd.next(), json!({"type": "closed", "code": 4400}));
    // A message over the 64 KiB limit: 1009, so the client knows not to
    // send it again.
    let mut big = Ws::connect(&server.addr, None).acknowledged();
    let pad = "x".repeat(70 * 1024);
    big.subscribe("1", "query($pad: String) { __typename }", json!({"pad": pad}));
    assert_eq!(big.next(), json!({"type": "closed", "code": 1009}));
    // The legacy protocol's messages are not graphql-transport-ws's.
    for legacy in [
        json!({"id": "1", "type": "start", "payload": {"query": "{ __typename }"}}),
        json!({"id": "1", "type": "stop"}),
        json!({"type": "connection_terminate"}),
    ] {
        let mut mixed = Ws::connect(&server.addr, None).acknowledged();
        mixed.send(legacy.clone());
        assert_eq!(mixed.next(), json!({"type": "closed", "code": 4400}), "{legacy}");
    }

    // A completed id may be used again, and nothing is sent for a
    // subscription after the client completed it.
    let mut again = Ws::connect(&server.addr, None).acknowledged();
    again.subscribe("1", "subscription { nope }", json!({}));
    assert_eq!(again.next_refusal_code("1"), "BAD_USER_INPUT");
    again.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    again.send(json!({"id": "1", "type": "complete"}));
    again.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    again.send(json!({"type": "ping"}));
    // Each subscription sends the current figures as it starts (the first
    // may have before its complete came); nothing else comes.
    let sent: Vec<Value> =
        std::iter::repeat_with(|| again.next()).take_while(|m| m["type"] != "pong").take(3).collect();
    assert!(sent.len() <= 2 && sent.iter().all(|m| m["type"] == "next" && m["id"] == "1"), "{sent:?}");

    assert_eq!(silent.next(), json!({"type": "closed", "code": 4408}));
    assert!(opened.elapsed() >= Duration::from_secs(10), "closed after {:?}", opened.elapsed());
}

#[test]
fn the_legacy_graphql_ws_protocol_works_too() {
    let dir = TempDir::new("ws-legacy");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let mut ws = Ws::connect_with(&server.addr, "graphql-ws", Some(&fan)).acknowledged();
    ws.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    assert_eq!(ws.next_data("1")["availability"]["sold"], 0, "the current figures first");
    book(&server, &fan, &stage.ticket_type, 4, "a", false);
    assert_eq!(ws.next_data("1")["availability"]["sold"], 4);
}

#[test]
fn a_subscriber_that_stops_reading_does_not_hold_bookings_up() {
    let dir = TempDir::new("ws-slow");
    // One buyer books as fast as it can: its rate limit is not under test.
    let server = Server::start(dir.path(), &["--rate-limit-token", "0"]);
    let stage = stage(&server);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let mut slow = Ws::connect(&server.addr, None).acknowledged();
    slow.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    std::thread::sleep(Duration::from_millis(300));
    // The subscriber reads nothing while 300 bookings go through.
    let started = Instant::now();
    for i in 0..300 {
        book(&server, &fan, &stage.ticket_type, 1, &format!("k{i}"), false);
    }
    let booking_time = started.elapsed();
    assert!(booking_time < Duration::from_secs(60), "bookings were held up: {booking_time:?}");
    // When it reads again it catches up to the latest figures.
    let mut last = 0;
    while last < 300 {
        last = slow.next_data("1")["availability"]["sold"].as_i64().unwrap();
    }
    assert_eq!(last, 300);
}

/// One client address may hold only `--ws-connections-per-ip-max`
/// WebSockets at once (429 beyond), so one client cannot take every slot;
/// a closed one gives its slot back.
#[test]
fn one_address_cannot_take_every_websocket_slot() {
    let dir = TempDir::new("ws-per-ip");
    let server = Server::start(dir.path(), &["--ws-connections-per-ip-max", "2"]);
    let first = Ws::connect(&server.addr, None).acknowledged();
    let _second = Ws::connect(&server.addr, None).acknowledged();
    assert_eq!(open(&server.addr, "graphql-transport-ws").err(), Some(429), "the third from one address");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open(&server.addr, "graphql-transport-ws") {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status, 429);
                assert!(Instant::now() < deadline, "a closed connection's slot never came back");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// At an on-sale's peak the figures change faster than anyone reads them:
/// a subscriber gets at most one snapshot per 100 ms, the latest figures,
/// so the server's work per subscriber does not grow with the booking rate.
#[test]
fn availability_sends_at_most_ten_snapshots_a_second_ending_with_the_latest() {
    let dir = TempDir::new("ws-availability-rate");
    let server = Server::start(dir.path(), &["--rate-limit-token", "0"]);
    let stage = stage(&server);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let mut ws = Ws::connect(&server.addr, None).acknowledged();
    ws.subscribe("1", AVAILABILITY, json!({"e": stage.event}));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for n in 0..40 {
        book(&server, &fan, &stage.ticket_type, 1, &format!("k{n}"), false);
    }
    let booking_time = started.elapsed();
    let mut snapshots = 0;
    loop {
        let sold = ws.next_data("1")["availability"]["sold"].as_i64().unwrap();
        snapshots += 1;
        if sold == 40 {
            break;
        }
    }
    // One at once, one per 100 ms while the bookings last, one for the last
    // of them (and one of slack for the reader's own timing).
    let allowed = booking_time.as_millis() / 100 + 3;
    assert!(snapshots as u128 <= allowed, "{snapshots} snapshots for 40 bookings in {booking_time:?}");
    assert!(snapshots < 40, "not one snapshot per booking");
}

/// A cancelled event changes no more: `eventUpdated` delivers the change
/// that cancelled it, then completes; subscribed to once it is cancelled,
/// it completes at once.
#[test]
fn event_updates_complete_once_the_event_is_cancelled() {
    let dir = TempDir::new("ws-cancelled");
    let server = Server::start(dir.path(), &[]);
    let stage = stage(&server);
    let updates = "subscription($e: ID!) { eventUpdated(eventId: $e) { id status } }";
    let mut ws = Ws::connect(&server.addr, Some(&stage.org)).acknowledged();
    // Nothing may hang: a `complete` that never comes fails the read.
    ws.socket.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ws.subscribe("e", updates, json!({"e": stage.event}));
    std::thread::sleep(Duration::from_millis(300));
    data(server.gql(
        Some(&stage.org),
        "mutation($id: ID!) { cancelEvent(id: $id) { id } }",
        json!({"id": stage.event}),
    ));
    // The live reader trails the log (by hundreds of ms when the machine
    // is busy): the changes that set the stage, made just before the
    // subscription, may come first.
    let mut update = ws.next_data("e")["eventUpdated"].clone();
    for _ in 0..5 {
        if update["status"] == "CANCELLED" {
            break;
        }
        update = ws.next_data("e")["eventUpdated"].clone();
    }
    assert_eq!(update, json!({"id": stage.event, "status": "CANCELLED"}));
    assert_eq!(ws.next(), json!({"id": "e", "type": "complete"}));

    ws.subscribe("again", updates, json!({"e": stage.event}));
    assert_eq!(ws.next(), json!({"id": "again", "type": "complete"}));
}
