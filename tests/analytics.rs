//! End-to-end analytics: after a random sequence of bookings, holds,
//! confirmations, cancellations and check-ins, eventAnalytics equals a
//! recomputation from the bookings themselves, before and after a restart;
//! only the organizer and admins may read it. The organizer's CSV export
//! lists the same bookings.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const ANALYTICS: &str = "query($e: ID!, $b: Int) { eventAnalytics(eventId: $e) {
  event { id } sold revenueCents checkedIn
  byTicketType { ticketType { id } sold revenueCents checkedIn }
  salesOverTime(bucketMinutes: $b) { at sold revenueCents } } }";
const MINE: &str = "{ myBookings { id status quantity totalCents confirmedAt ticketType { id } event { id } tickets { code checkedInAt } } }";

/// eventAnalytics recomputed from every buyer's bookings.
fn recompute(server: &Server, buyers: &[String], event: &str, ticket_types: &[String], bucket_minutes: i64) -> Value {
    let mut by_type: BTreeMap<String, (i64, i64, i64)> = ticket_types.iter().map(|t| (t.clone(), (0, 0, 0))).collect();
    let mut buckets: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for buyer in buyers {
        for booking in data(server.gql(Some(buyer), MINE, json!({})))["myBookings"].as_array().unwrap() {
            if booking["event"]["id"] != event || booking["status"] != "CONFIRMED" {
                continue;
            }
            let (seats, cents) = (booking["quantity"].as_i64().unwrap(), booking["totalCents"].as_i64().unwrap());
            let checked_in =
                booking["tickets"].as_array().unwrap().iter().filter(|t| t["checkedInAt"].is_string()).count() as i64;
            let entry = by_type.get_mut(booking["ticketType"]["id"].as_str().unwrap()).unwrap();
            *entry = (entry.0 + seats, entry.1 + cents, entry.2 + checked_in);
            let confirmed = chrono_ms(booking["confirmedAt"].as_str().unwrap());
            let bucket = confirmed.div_euclid(60_000 * bucket_minutes) * bucket_minutes * 60_000;
            let point = buckets.entry(bucket).or_default();
            *point = (point.0 + seats, point.1 + cents);
        }
    }
    let total = by_type.values().fold((0, 0, 0), |a, t| (a.0 + t.0, a.1 + t.1, a.2 + t.2));
    json!({
        "event": {"id": event},
        "sold": total.0, "revenueCents": total.1, "checkedIn": total.2,
        "byTicketType": ticket_types.iter().map(|t| {
            let (sold, revenue, checked_in) = by_type[t];
            json!({"ticketType": {"id": t}, "sold": sold, "revenueCents": revenue, "checkedIn": checked_in})
        }).collect::<Vec<_>>(),
        "salesOverTime": buckets.iter().filter(|(_, p)| p.0 != 0).map(|(at, (sold, revenue))| json!({"at": rfc3339(*at), "sold": sold, "revenueCents": revenue})).collect::<Vec<_>>(),
    })
}

/// Milliseconds of an RFC 3339 UTC time as the API writes it.
fn chrono_ms(text: &str) -> i64 {
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().unwrap();
    days_from_civil(d[0], d[1], d[2]) * 86_400_000 + (t[0] * 3600 + t[1] * 60 + t[2]) * 1000 + millis
}

fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn analytics_equal_a_recomputation_from_the_bookings_across_a_restart() {
    let mut rng = Rng::from_clock("analytics test");
    let dir = TempDir::new("analytics");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let input = json!({"title": "Counted gig", "startsAt": "2097-06-01T20:00:00Z", "city": "Oslo"});
    let event = data(server.gql(
        Some(&org),
        "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }",
        json!({"i": input}),
    ))["createEvent"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ticket_types = Vec::new();
    for (name, price) in [("GA", 2500), ("VIP", 9900)] {
        let ticket = json!({"name": name, "priceCents": price, "currency": "EUR", "capacity": 200});
        let added = data(server.gql(
            Some(&org),
            "mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }",
            json!({"e": event, "t": ticket}),
        ));
        ticket_types.push(added["addTicketType"]["id"].as_str().unwrap().to_string());
    }
    data(server.gql(Some(&org), "mutation($id: ID!) { publishEvent(id: $id) { id } }", json!({"id": event})));
    let buyers: Vec<String> = (0..4).map(|b| register(&server, &format!("b{b}@example.com"), "ATTENDEE").0).collect();

    let mut made: Vec<(usize, String, bool)> = Vec::new();
    for step in 0..60 {
        let buyer = rng.below(buyers.len() as u64) as usize;
        match rng.below(6) {
            0..=2 => {
                let hold = rng.below(3) == 0;
                let input = json!({"input": {"ticketTypeId": ticket_types[rng.below(2) as usize], "quantity": 1 + rng.below(4), "idempotencyKey": format!("s{step}"), "hold": hold}});
                let booking = data(server.gql(
                    Some(&buyers[buyer]),
                    "mutation($input: BookInput!) { bookTickets(input: $input) { id } }",
                    input,
                ));
                made.push((buyer, booking["bookTickets"]["id"].as_str().unwrap().to_string(), hold));
            }
            op @ (3 | 4) if !made.is_empty() => {
                let (owner, id, _) = made[rng.below(made.len() as u64) as usize].clone();
                let mutation = if op == 3 {
                    "mutation($id: ID!) { confirmBooking(id: $id) { id } }"
                } else {
                    "mutation($id: ID!) { cancelBooking(id: $id) { id } }"
                };
                server.gql(Some(&buyers[owner]), mutation, json!({"id": id}));
            }
            _ => {
                let mine = data(server.gql(Some(&buyers[buyer]), MINE, json!({})));
                let confirmed = mine["myBookings"].as_array().unwrap().iter().filter(|b| b["status"] == "CONFIRMED");
                let code = confirmed
                    .flat_map(|b| b["tickets"].as_array().unwrap().clone())
                    .find(|t| t["checkedInAt"].is_null());
                if let Some(ticket) = code {
                    data(server.gql(
                        Some(&org),
                        "mutation($c: String!) { checkIn(code: $c) { id } }",
                        json!({"c": ticket["code"]}),
                    ));
                }
            }
        }
    }
    for bucket in [1, 60] {
        let served =
            data(server.gql(Some(&org), ANALYTICS, json!({"e": event, "b": bucket})))["eventAnalytics"].clone();
        assert_eq!(served, recompute(&server, &buyers, &event, &ticket_types, bucket), "bucketMinutes {bucket}");
    }
    let before = data(server.gql(Some(&org), ANALYTICS, json!({"e": event, "b": 1})));
    assert_eq!(server.stop(), Some(0));
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        data(server.gql(Some(&org), ANALYTICS, json!({"e": event, "b": 1}))),
        before,
        "the same after a restart"
    );
    // New activity after the restart is counted on top, exactly once.
    data(server.gql(
        Some(&buyers[0]),
        "mutation($input: BookInput!) { bookTickets(input: $input) { id } }",
        json!({"input": {"ticketTypeId": ticket_types[0], "quantity": 3, "idempotencyKey": "after"}}),
    ));
    let served = data(server.gql(Some(&org), ANALYTICS, json!({"e": event, "b": 1})))["eventAnalytics"].clone();
    assert_eq!(served, recompute(&server, &buyers, &event, &ticket_types, 1));

    assert_eq!(error_code(&server.gql(Some(&buyers[0]), ANALYTICS, json!({"e": event, "b": 1}))), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(None, ANALYTICS, json!({"e": event, "b": 1}))), "UNAUTHENTICATED");
    assert_eq!(error_code(&server.gql(Some(&org), ANALYTICS, json!({"e": "999", "b": 1}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&org), ANALYTICS, json!({"e": event, "b": 0}))), "BAD_USER_INPUT");

    // The CSV export holds every booking of the event with its status.
    let path = format!("/events/{event}/bookings.csv");
    let bearer = |token: &str| format!("Bearer {token}");
    let csv = http(&server.addr, "GET", &path, &[("Authorization", &bearer(&org))], b"");
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = csv.text();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("booking_id,status,user_id"));
    let exported: BTreeMap<String, String> = lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), fields[1].to_string())
        })
        .collect();
    let mut booked = BTreeMap::new();
    for buyer in &buyers {
        for booking in data(server.gql(Some(buyer), MINE, json!({})))["myBookings"].as_array().unwrap() {
            booked.insert(booking["id"].as_str().unwrap().to_string(), booking["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(exported, booked);
    // Buyers' emails are for admins only (`User.email` is shown to nobody
    // else): the organizer's column is empty.
    let emails = |text: &str| -> Vec<String> {
        text.lines().skip(1).map(|line| line.split(',').nth(4).unwrap().to_string()).collect()
    };
    assert!(emails(&text).iter().all(String::is_empty), "{text}");
    let admin = login(&server, "root@example.com", "admin-password");
    let by_admin = http(&server.addr, "GET", &path, &[("Authorization", &bearer(&admin))], b"").text();
    assert_eq!(emails(&by_admin).len(), booked.len());
    assert!(emails(&by_admin).iter().all(|email| email.ends_with("@example.com")), "{by_admin}");
    assert_eq!(http(&server.addr, "GET", &path, &[("Authorization", &bearer(&buyers[0]))], b"").status, 403);
    assert_eq!(http(&server.addr, "GET", &path, &[], b"").status, 401);
    assert_eq!(
        http(&server.addr, "GET", "/events/999/bookings.csv", &[("Authorization", &bearer(&org))], b"").status,
        404
    );
}

/// Money past the 32 bits of a GraphQL `Int` is never served as one: a
/// seat's price is bounded so that a booking's total fits, and a revenue
/// past 2^31 cents is a field error on `revenueCents` while
/// `revenueCentsExact` gives it as a decimal string.
#[test]
fn money_past_32_bits_is_served_exactly_and_never_as_an_overflowing_int() {
    let dir = TempDir::new("big-money");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@big.example", "ORGANIZER");
    let (fan, _) = register(&server, "fan@big.example", "ATTENDEE");
    let too_dear = json!({"name": "Gold", "priceCents": 42_949_673, "currency": "EUR", "capacity": 100});
    let created = data(server.gql(
        Some(&org),
        "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }",
        json!({"i": {"title": "Gala", "startsAt": "2097-06-01T20:00:00Z", "city": "Oslo"}}),
    ));
    let refused = server.gql(
        Some(&org),
        "mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }",
        json!({"e": created["createEvent"]["id"], "t": too_dear}),
    );
    assert_eq!(error_code(&refused), "BAD_USER_INPUT", "{refused}");
    assert!(error_message(&refused).starts_with("input.priceCents"), "{refused}");

    let dearest = general_admission(42_949_672, 100);
    let (event, ticket_type) = event_with_tickets(&server, &org, "Gala", "2097-06-01T20:00:00Z", dearest, true);
    let book = "mutation($i: BookInput!) { bookTickets(input: $i) { totalCents totalCentsExact } }";
    for key in ["a", "b"] {
        let input = json!({"i": {"ticketTypeId": ticket_type, "quantity": 50, "idempotencyKey": key}});
        let booked = data(server.gql(Some(&fan), book, input))["bookTickets"].clone();
        assert_eq!(booked, json!({"totalCents": 2_147_483_600, "totalCentsExact": "2147483600"}));
    }
    let exact =
        "query($e: ID!) { eventAnalytics(eventId: $e) { revenueCentsExact byTicketType { revenueCentsExact } } }";
    let wait_for_reader = std::time::Instant::now();
    let figures = loop {
        let figures = data(server.gql(Some(&org), exact, json!({"e": event})))["eventAnalytics"].clone();
        if figures["revenueCentsExact"] == "4294967200" || wait_for_reader.elapsed().as_secs() > 10 {
            break figures;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        figures,
        json!({"revenueCentsExact": "4294967200", "byTicketType": [{"revenueCentsExact": "4294967200"}]})
    );
    let as_int =
        server.gql(Some(&org), "query($e: ID!) { eventAnalytics(eventId: $e) { revenueCents } }", json!({"e": event}));
    assert_eq!(as_int["data"], Value::Null, "revenueCents is Int!, under EventAnalytics!: {as_int}");
    assert_eq!(error_code(&as_int), "CONFLICT");
    assert!(error_message(&as_int).contains("revenueCentsExact"), "{as_int}");
    assert_eq!(as_int["errors"][0]["path"], json!(["eventAnalytics", "revenueCents"]));
    assert_eq!(server.stop(), Some(0));
}
