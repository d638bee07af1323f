//! End-to-end: venues, events and ticket types, their access rules and the
//! listings, over real HTTP.

mod common;

use common::*;
use serde_json::{json, Value};

const CREATE_EVENT: &str = "mutation($input: CreateEventInput!) {
  createEvent(input: $input) { id title description startsAt endsAt city tags status venue { id name } organizer { id } ticketTypes { id } } }";
const PUBLISH: &str = "mutation($id: ID!) { publishEvent(id: $id) { id status } }";
const CANCEL: &str = "mutation($id: ID!) { cancelEvent(id: $id) { id status } }";
const UPDATE: &str = "mutation($id: ID!, $input: UpdateEventInput!) { updateEvent(id: $id, input: $input) { id title description startsAt endsAt tags } }";
const ADD_TICKET_TYPE: &str = "mutation($id: ID!, $input: TicketTypeInput!) {
  addTicketType(eventId: $id, input: $input) { id name priceCents currency capacity perUserLimit } }";
const EVENT: &str = "query($id: ID!) { event(id: $id) { id status title } }";
const EVENTS: &str = "query($filter: EventFilter, $first: Int, $after: String) {
  events(filter: $filter, first: $first, after: $after) { totalCount nodes { id title startsAt } pageInfo { hasNextPage endCursor } } }";

fn create_event(server: &Server, token: &str, input: Value) -> Value {
    data(server.gql(Some(token), CREATE_EVENT, json!({ "input": input })))["createEvent"].clone()
}

fn event_input(title: &str, starts_at: &str, city: &str, tags: &[&str]) -> Value {
    json!({ "title": title, "startsAt": starts_at, "city": city, "tags": tags })
}

fn id(value: &Value) -> String {
    value["id"].as_str().unwrap().to_string()
}

#[test]
fn organizer_creates_publishes_and_sells_ticket_types() {
    let dir = TempDir::new("events-happy");
    let server = Server::start(dir.path(), &[]);
    let (org, org_id) = register(&server, "org@example.com", "ORGANIZER");
    let venue = data(server.gql(
        Some(&org),
        "mutation { createVenue(name: \"Tempodrom\", city: \"Berlin\", capacity: 3500) { id name city capacity } }",
        json!({}),
    ));
    let venue = &venue["createVenue"];
    assert_eq!(venue["capacity"], 3500);
    let input = json!({
        "title": "  Night of Jazz ", "description": "Live.", "startsAt": "2097-03-01T20:00:00+01:00",
        "endsAt": "2097-03-01T23:30:00Z", "city": "Berlin", "venueId": venue["id"], "tags": ["Jazz", "jazz", "Live"]
    });
    let event = create_event(&server, &org, input);
    assert_eq!(event["title"], "Night of Jazz");
    assert_eq!(event["startsAt"], "2097-03-01T19:00:00Z");
    assert_eq!(event["endsAt"], "2097-03-01T23:30:00Z");
    assert_eq!(event["tags"], json!(["jazz", "live"]));
    assert_eq!(event["status"], "DRAFT");
    assert_eq!(event["venue"]["name"], "Tempodrom");
    assert_eq!(event["organizer"]["id"], json!(org_id));

    let ticket =
        json!({"name": "Early bird", "priceCents": 2500, "currency": "EUR", "capacity": 100, "perUserLimit": 4});
    let added = data(server.gql(Some(&org), ADD_TICKET_TYPE, json!({"id": id(&event), "input": ticket})));
    assert_eq!(added["addTicketType"]["perUserLimit"], 4);
    let unlimited = json!({"name": "GA", "priceCents": 0, "currency": "EUR", "capacity": 10});
    let added = data(server.gql(Some(&org), ADD_TICKET_TYPE, json!({"id": id(&event), "input": unlimited})));
    assert_eq!(added["addTicketType"]["perUserLimit"], json!(null));

    // Not listed while DRAFT; listed once published.
    assert_eq!(data(server.gql(None, EVENTS, json!({})))["events"]["totalCount"], 0);
    let published = data(server.gql(Some(&org), PUBLISH, json!({"id": id(&event)})));
    assert_eq!(published["publishEvent"]["status"], "PUBLISHED");
    let listed =
        data(server.gql(None, "{ events { totalCount nodes { title ticketTypes { name capacity } } } }", json!({})));
    assert_eq!(listed["events"]["totalCount"], 1);
    assert_eq!(
        listed["events"]["nodes"][0]["ticketTypes"],
        json!([{"name": "Early bird", "capacity": 100}, {"name": "GA", "capacity": 10}])
    );

    let updated = data(server.gql(
        Some(&org),
        UPDATE,
        json!({"id": id(&event), "input": {"title": "Jazz Night", "description": null, "endsAt": null}}),
    ));
    assert_eq!(updated["updateEvent"]["title"], "Jazz Night");
    assert_eq!(updated["updateEvent"]["description"], json!(null));
    assert_eq!(updated["updateEvent"]["endsAt"], json!(null));
    assert_eq!(updated["updateEvent"]["tags"], json!(["jazz", "live"]), "omitted fields stay");

    let cancelled = data(server.gql(Some(&org), CANCEL, json!({"id": id(&event)})));
    assert_eq!(cancelled["cancelEvent"]["status"], "CANCELLED");
    assert_eq!(data(server.gql(None, EVENTS, json!({})))["events"]["totalCount"], 0);
    assert_eq!(data(server.gql(None, EVENT, json!({"id": id(&event)})))["event"]["status"], "CANCELLED");
    let late = server.gql(Some(&org), UPDATE, json!({"id": id(&event), "input": {"title": "Again"}}));
    assert_eq!(error_code(&late), "CONFLICT");
    assert_eq!(error_code(&server.gql(Some(&org), PUBLISH, json!({"id": id(&event)}))), "CONFLICT");
    assert_eq!(
        error_code(&server.gql(Some(&org), ADD_TICKET_TYPE, json!({"id": id(&event), "input": unlimited}))),
        "CONFLICT"
    );
}

#[test]
fn access_rules_for_events() {
    let dir = TempDir::new("events-access");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let (owner, _) = register(&server, "owner@example.com", "ORGANIZER");
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let admin = login(&server, "root@example.com", "admin-password");
    let input = event_input("Draft gig", "2097-01-01T20:00:00Z", "Oslo", &[]);

    assert_eq!(error_code(&server.gql(Some(&fan), CREATE_EVENT, json!({"input": input}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(None, CREATE_EVENT, json!({"input": input}))), "UNAUTHENTICATED");
    assert_eq!(
        error_code(&server.gql(Some(&fan), "mutation { createVenue(name: \"V\", city: \"C\") { id } }", json!({}))),
        "FORBIDDEN"
    );

    let event = create_event(&server, &owner, input);
    let event_id = id(&event);
    // A draft is visible only to its organizer and admins.
    assert_eq!(data(server.gql(Some(&owner), EVENT, json!({"id": event_id})))["event"]["status"], "DRAFT");
    assert_eq!(data(server.gql(Some(&admin), EVENT, json!({"id": event_id})))["event"]["status"], "DRAFT");
    assert_eq!(data(server.gql(Some(&rival), EVENT, json!({"id": event_id})))["event"], json!(null));
    assert_eq!(data(server.gql(None, EVENT, json!({"id": event_id})))["event"], json!(null));
    assert_eq!(data(server.gql(None, EVENT, json!({"id": "4242"})))["event"], json!(null));
    // One id, one spelling: "01" is not an id.
    let padded = server.gql(Some(&owner), EVENT, json!({"id": format!("0{event_id}")}));
    assert_eq!(error_code(&padded), "BAD_USER_INPUT", "{padded}");

    // Another organizer's draft is not there for them (as for `event(id)`:
    // its existence is not told), an attendee may not organize at all.
    let rename = json!({"id": event_id, "input": {"title": "Mine now"}});
    assert_eq!(error_code(&server.gql(Some(&rival), UPDATE, rename.clone())), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&fan), UPDATE, rename.clone())), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(Some(&rival), PUBLISH, json!({"id": event_id}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&rival), CANCEL, json!({"id": event_id}))), "NOT_FOUND");
    let analytics = "query($id: ID!) { eventAnalytics(eventId: $id) { sold } }";
    assert_eq!(error_code(&server.gql(Some(&rival), analytics, json!({"id": event_id}))), "NOT_FOUND");
    let ticket = json!({"name": "GA", "priceCents": 100, "currency": "EUR", "capacity": 5});
    assert_eq!(
        error_code(&server.gql(Some(&rival), ADD_TICKET_TYPE, json!({"id": event_id, "input": ticket}))),
        "NOT_FOUND"
    );
    assert_eq!(
        error_code(&server.gql(Some(&owner), UPDATE, json!({"id": "777", "input": {"title": "x"}}))),
        "NOT_FOUND"
    );
    // Admins may manage anyone's event.
    let by_admin = data(server.gql(Some(&admin), UPDATE, rename));
    assert_eq!(by_admin["updateEvent"]["title"], "Mine now");

    // myEvents: organizers and admins only; every status of one's own events.
    let my_events = "{ myEvents { totalCount nodes { id status } } }";
    assert_eq!(error_code(&server.gql(Some(&fan), my_events, json!({}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(None, my_events, json!({}))), "UNAUTHENTICATED");
    let second = create_event(&server, &owner, event_input("Second", "2096-12-01T20:00:00Z", "Oslo", &[]));
    data(server.gql(Some(&owner), PUBLISH, json!({"id": id(&second)})));
    let mine = data(server.gql(Some(&owner), my_events, json!({})));
    assert_eq!(mine["myEvents"]["totalCount"], 2);
    assert_eq!(
        mine["myEvents"]["nodes"],
        json!([{"id": id(&second), "status": "PUBLISHED"}, {"id": event_id, "status": "DRAFT"}])
    );
    assert_eq!(data(server.gql(Some(&rival), my_events, json!({})))["myEvents"]["totalCount"], 0);
    // A published event is there for everyone; managing it is its organizer's.
    let published = json!({"id": id(&second), "input": {"title": "Mine now"}});
    assert_eq!(error_code(&server.gql(Some(&rival), UPDATE, published)), "FORBIDDEN");

    // A draft called off before it was published stays private: shown as
    // CANCELLED to its organizer and admins, to nobody else; it cannot be
    // published any more.
    let withdrawn = create_event(&server, &owner, event_input("Secret tour", "2097-03-01T20:00:00Z", "Oslo", &[]));
    data(server.gql(Some(&owner), CANCEL, json!({"id": id(&withdrawn)})));
    let seen = |token: Option<&str>| data(server.gql(token, EVENT, json!({"id": id(&withdrawn)})))["event"].clone();
    assert_eq!(seen(Some(&owner))["status"], "CANCELLED");
    assert_eq!(seen(Some(&admin))["status"], "CANCELLED");
    assert_eq!(seen(Some(&rival)), json!(null));
    assert_eq!(seen(None), json!(null));
    assert_eq!(error_code(&server.gql(Some(&rival), CANCEL, json!({"id": id(&withdrawn)}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&owner), PUBLISH, json!({"id": id(&withdrawn)}))), "CONFLICT");
    // One cancelled after it was published stays public.
    data(server.gql(Some(&owner), CANCEL, json!({"id": id(&second)})));
    assert_eq!(data(server.gql(None, EVENT, json!({"id": id(&second)})))["event"]["status"], "CANCELLED");
}

#[test]
fn invalid_event_input_names_the_field() {
    let dir = TempDir::new("events-invalid");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let base = event_input("Gig", "2097-01-01T20:00:00Z", "Rome", &[]);
    let with = |key: &str, value: Value| {
        let mut input = base.clone();
        input[key] = value;
        input
    };
    let cases = [
        (with("title", json!("  ")), "input.title"),
        (with("title", json!("Gig\tnight")), "input.title"),
        (with("tags", json!(["a\nb"])), "input.tags"),
        (with("title", json!("t".repeat(201))), "input.title"),
        (with("description", json!("d".repeat(5001))), "input.description"),
        (with("city", json!("")), "input.city"),
        (with("tags", json!(vec!["t"; 11])), "input.tags"),
        (with("tags", json!(["x".repeat(41)])), "input.tags"),
        (with("endsAt", json!("2097-01-01T19:00:00Z")), "input.endsAt"),
        (with("venueId", json!("not-an-id")), "input.venueId"),
    ];
    for (input, field) in cases {
        let response = server.gql(Some(&org), CREATE_EVENT, json!({"input": input}));
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{input}");
        assert!(error_message(&response).starts_with(field), "message should name {field}: {response}");
    }
    let no_venue = server.gql(Some(&org), CREATE_EVENT, json!({"input": with("venueId", json!("99"))}));
    assert_eq!(error_code(&no_venue), "NOT_FOUND");
    let bad_date = server.gql(Some(&org), CREATE_EVENT, json!({"input": with("startsAt", json!("next friday"))}));
    assert_eq!(error_code(&bad_date), "BAD_USER_INPUT");

    let event = create_event(&server, &org, base.clone());
    let ticket = json!({"name": "GA", "priceCents": 100, "currency": "EUR", "capacity": 5, "perUserLimit": 2});
    let with_ticket = |key: &str, value: Value| {
        let mut input = ticket.clone();
        input[key] = value;
        json!({"id": id(&event), "input": input})
    };
    let cases = [
        (with_ticket("name", json!("")), "input.name"),
        (with_ticket("priceCents", json!(-1)), "input.priceCents"),
        (with_ticket("priceCents", json!(100_000_001)), "input.priceCents"),
        (with_ticket("currency", json!("euro")), "input.currency"),
        (with_ticket("capacity", json!(0)), "input.capacity"),
        (with_ticket("capacity", json!(1_000_001)), "input.capacity"),
        (with_ticket("perUserLimit", json!(0)), "input.perUserLimit"),
        (with_ticket("perUserLimit", json!(6)), "input.perUserLimit"),
        // Past 32 bits: still the field's own range in the message.
        (with_ticket("priceCents", json!(99_999_999_999i64)), "input.priceCents"),
        (with_ticket("capacity", json!(-99_999_999_999i64)), "input.capacity"),
        (with_ticket("perUserLimit", json!(99_999_999_999i64)), "input.perUserLimit"),
    ];
    for (variables, field) in cases {
        let response = server.gql(Some(&org), ADD_TICKET_TYPE, variables.clone());
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{variables}");
        assert!(error_message(&response).starts_with(field), "message should name {field}: {response}");
    }
    let ghost = server.gql(Some(&org), ADD_TICKET_TYPE, json!({"id": "999", "input": ticket}));
    assert_eq!(error_code(&ghost), "NOT_FOUND");

    // Beside the event's other ticket types: one currency per event (its
    // revenue adds up), distinct names.
    data(server.gql(Some(&org), ADD_TICKET_TYPE, with_ticket("name", json!("GA"))));
    let yen = json!({"id": id(&event), "input": {"name": "VIP", "priceCents": 100, "currency": "JPY", "capacity": 5}});
    let response = server.gql(Some(&org), ADD_TICKET_TYPE, yen);
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert!(error_message(&response).starts_with("input.currency: must be EUR"), "{response}");
    let twin = server.gql(Some(&org), ADD_TICKET_TYPE, with_ticket("name", json!("ga")));
    assert_eq!(error_code(&twin), "CONFLICT", "{twin}");

    // A venue holds its event: its city, and no more seats than it says.
    let venue = "mutation { createVenue(name: \"Club\", city: \"Rome\", capacity: 10) { id } }";
    let venue = data(server.gql(Some(&org), venue, json!({})))["createVenue"]["id"].clone();
    create_event(&server, &org, with("city", json!("Paris")));
    let mut in_paris = with("venueId", venue.clone());
    in_paris["city"] = json!("Paris");
    let response = server.gql(Some(&org), CREATE_EVENT, json!({"input": in_paris}));
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert!(error_message(&response).starts_with("input.city: must be the venue's city, Rome"), "{response}");
    let mut in_rome = with("venueId", venue);
    in_rome["city"] = json!("rome");
    let at_club = create_event(&server, &org, in_rome);
    assert_eq!(at_club["city"], "Rome", "the event takes its venue's spelling");
    // The city is compared as the city filter compares it: accents aside.
    let hall = "mutation { createVenue(name: \"Hall\", city: \"Zürich\") { id } }";
    let hall = data(server.gql(Some(&org), hall, json!({})))["createVenue"]["id"].clone();
    let mut in_zurich = with("venueId", hall);
    in_zurich["city"] = json!("ZURICH");
    assert_eq!(create_event(&server, &org, in_zurich.clone())["city"], "Zürich");
    // The accent typed apart from its letter (u, then U+0308) too.
    in_zurich["city"] = json!("Zu\u{0308}rich");
    assert_eq!(create_event(&server, &org, in_zurich)["city"], "Zürich");
    let seats = |name: &str, capacity: i64| {
        let input = json!({"name": name, "priceCents": 100, "currency": "EUR", "capacity": capacity});
        server.gql(Some(&org), ADD_TICKET_TYPE, json!({"id": id(&at_club), "input": input}))
    };
    data(seats("Floor", 8));
    let response = seats("Balcony", 3);
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert!(
        error_message(&response).starts_with("input.capacity: the event's ticket types would hold 11 seats"),
        "{response}"
    );
    data(seats("Balcony", 2));
}

#[test]
fn listings_filter_and_paginate_in_start_order() {
    let dir = TempDir::new("events-list");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let specs = [
        ("Rock in the park", "2097-06-01T18:00:00Z", "Berlin", vec!["rock"]),
        ("Jazz brunch", "2097-05-01T11:00:00Z", "berlin", vec!["jazz"]),
        ("Opera gala", "2097-07-01T19:00:00Z", "Vienna", vec!["classical"]),
        ("Late jazz", "2097-05-01T11:00:00Z", "Vienna", vec!["jazz", "late"]),
        ("Techno all night", "2097-08-01T23:00:00Z", "Berlin", vec!["electronic"]),
    ];
    let mut ids = Vec::new();
    for (title, starts, city, tags) in &specs {
        let event = create_event(&server, &org, event_input(title, starts, city, tags));
        data(server.gql(Some(&org), PUBLISH, json!({"id": id(&event)})));
        ids.push(id(&event));
    }
    create_event(&server, &org, event_input("Draft jazz", "2097-05-02T11:00:00Z", "Berlin", &["jazz"]));

    // Walk all pages two at a time: ordered by startsAt, then id.
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let page = data(server.gql(None, EVENTS, json!({"first": 2, "after": after})))["events"].clone();
        assert_eq!(page["totalCount"], 5);
        seen.extend(page["nodes"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap().to_string()));
        if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(seen, ["Jazz brunch", "Late jazz", "Rock in the park", "Opera gala", "Techno all night"]);

    let titles = |filter: Value| -> Vec<String> {
        let page = data(server.gql(None, EVENTS, json!({"filter": filter})))["events"].clone();
        page["nodes"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(titles(json!({"city": "BERLIN"})), ["Jazz brunch", "Rock in the park", "Techno all night"]);
    assert_eq!(titles(json!({"tag": "Jazz"})), ["Jazz brunch", "Late jazz"]);
    assert_eq!(titles(json!({"city": "Vienna", "tag": "jazz"})), ["Late jazz"]);
    assert_eq!(
        titles(json!({"from": "2097-06-01T18:00:00Z", "to": "2097-08-01T23:00:00Z"})),
        ["Rock in the park", "Opera gala"]
    );
    assert_eq!(titles(json!({"text": "JAZZ late"})), ["Late jazz"]);
    assert_eq!(titles(json!({"text": "gala"})), ["Opera gala"]);
    assert!(titles(json!({"text": "polka"})).is_empty());
    // A text with no words finds nothing; a blank city, tag or text filters nothing.
    assert!(titles(json!({"text": "🎸"})).is_empty());
    assert_eq!(titles(json!({"city": " ", "tag": "", "text": " "})).len(), 5);
    let backwards =
        server.gql(None, EVENTS, json!({"filter": {"from": "2097-08-01T00:00:00Z", "to": "2097-06-01T00:00:00Z"}}));
    assert_eq!(error_code(&backwards), "BAD_USER_INPUT");
    assert!(error_message(&backwards).starts_with("filter.to"), "{backwards}");

    let empty = data(server.gql(None, EVENTS, json!({"first": 0})))["events"].clone();
    assert_eq!(empty["nodes"], json!([]));
    assert_eq!(empty["pageInfo"]["hasNextPage"], true);
    assert_eq!(error_code(&server.gql(None, EVENTS, json!({"first": 101}))), "BAD_USER_INPUT");
    assert_eq!(error_code(&server.gql(None, EVENTS, json!({"first": -1}))), "BAD_USER_INPUT");
    let huge = server.gql(None, EVENTS, json!({"first": 99_999_999_999i64}));
    assert!(error_message(&huge).starts_with("first: must be between 0 and 100"), "{huge}");
    assert_eq!(error_code(&server.gql(None, EVENTS, json!({"after": "garbage"}))), "BAD_USER_INPUT");
    let long_text = server.gql(None, EVENTS, json!({"filter": {"text": "x".repeat(201)}}));
    assert_eq!(error_code(&long_text), "BAD_USER_INPUT");
}
