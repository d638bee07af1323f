//! End-to-end webhooks against a local receiver: signed bodies, a delivery
//! id stable across retries, retries after 500s and timeouts, nothing lost
//! across a SIGKILL of marquee in the middle of retrying, a webhook marked
//! failing once its retries run out, organizers' scope, and private
//! addresses refused unless the operator allows them.

mod common;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
enum Reply {
    Status(u16),
    /// Read the request, then say nothing for this long.
    Hang(Duration),
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
}

/// A tiny HTTP server on loopback that records requests and answers from a
/// script (200 once the script is used up).
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

impl Receiver {
    fn start(script: &[Reply]) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let receiver = Receiver {
            url: format!("http://{}/hooks/marquee", listener.local_addr().unwrap()),
            got: Arc::default(),
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
        };
        let serving = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let serving = serving.clone();
                std::thread::spawn(move || serving.answer(stream));
            }
        });
        receiver
    }

    fn answer(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut headers = HashMap::new();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        self.got.lock().unwrap().push(Received { headers, body: String::from_utf8(body).unwrap() });
        let reply = self.script.lock().unwrap().pop_front().unwrap_or(Reply::Status(200));
        match reply {
            Reply::Status(status) => {
                let _ = write!(stream, "HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
            Reply::Hang(time) => std::thread::sleep(time),
        }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until `count` requests arrived.
    fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if got.len() >= count {
                return got;
            }
            assert!(Instant::now() < deadline, "only {} of {count} deliveries arrived: {got:?}", got.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Shop {
    org: String,
    ticket_type: String,
    event: String,
}

fn open_shop(server: &Server, email: &str) -> Shop {
    let (org, _) = register(server, email, "ORGANIZER");
    let ticket = general_admission(1500, 1000);
    let (event, ticket_type) = event_with_tickets(server, &org, "Hooked gig", "2097-06-01T20:00:00Z", ticket, true);
    Shop { org, ticket_type, event }
}

const CREATE: &str = "mutation($url: String!, $events: [String!]!) { createWebhook(url: $url, events: $events) { secret webhook { id url events active } } }";
const DELIVERIES: &str = "query($id: ID!) { webhookDeliveries(webhookId: $id) { id event attempt statusCode error deliveredAt nextAttemptAt } }";

fn create_webhook(server: &Server, token: &str, url: &str, events: &[&str]) -> (String, String) {
    let created = data(server.gql(Some(token), CREATE, json!({"url": url, "events": events})))["createWebhook"].clone();
    (created["webhook"]["id"].as_str().unwrap().to_string(), created["secret"].as_str().unwrap().to_string())
}

fn book(server: &Server, token: &str, ticket_type: &str, key: &str) -> String {
    let query = "mutation($input: BookInput!) { bookTickets(input: $input) { id } }";
    let input = json!({"input": {"ticketTypeId": ticket_type, "quantity": 2, "idempotencyKey": key}});
    data(server.gql(Some(token), query, input))["bookTickets"]["id"].as_str().unwrap().to_string()
}

fn assert_signed(received: &Received, secret: &str) {
    let expected = format!("sha256={}", api::readers::webhooks::sign(secret.as_bytes(), received.body.as_bytes()));
    assert_eq!(received.headers.get("x-marquee-signature"), Some(&expected), "the signature verifies");
}

fn fast_retries() -> Vec<&'static str> {
    vec!["--allow-private-webhooks", "--webhook-retry-base", "200ms", "--webhook-timeout", "1s"]
}

#[test]
fn deliveries_are_signed_stable_and_retried_after_errors_and_timeouts() {
    let dir = TempDir::new("webhooks");
    let server = Server::start(dir.path(), &fast_retries());
    let shop = open_shop(&server, "org@example.com");
    let other = open_shop(&server, "rival@example.com");
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Hang(Duration::from_secs(3)), Reply::Status(204)]);
    let (hook, secret) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed", "event.updated"]);
    let (fan, fan_id) = register(&server, "fan@example.com", "ATTENDEE");
    // A rival organizer's event is none of this webhook's business.
    book(&server, &fan, &other.ticket_type, "elsewhere");
    let booking = book(&server, &fan, &shop.ticket_type, "mine");

    let got = receiver.wait_for(3, Duration::from_secs(30));
    let ids: Vec<&String> = got.iter().map(|r| &r.headers["x-marquee-delivery"]).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one delivery id across retries: {ids:?}");
    for received in &got {
        assert_eq!(received.headers["x-marquee-event"], "booking.confirmed");
        assert_eq!(received.headers["content-type"], "application/json");
        assert_signed(received, &secret);
    }
    let body: Value = serde_json::from_str(&got[2].body).unwrap();
    assert_eq!(body["id"], ids[0].as_str());
    assert_eq!(body["event"], "booking.confirmed");
    assert!(body["createdAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        body["data"],
        json!({"id": booking, "status": "CONFIRMED", "eventId": shop.event, "ticketTypeId": shop.ticket_type, "userId": fan_id, "quantity": 2, "totalCents": 3000})
    );
    // The delivery's record shows three attempts ending in a 2xx.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivery = loop {
        let listed = data(server.gql(Some(&shop.org), DELIVERIES, json!({"id": hook})))["webhookDeliveries"].clone();
        if listed[0]["deliveredAt"].is_string() || Instant::now() > deadline {
            break listed[0].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(delivery["id"], ids[0].as_str());
    assert_eq!((delivery["attempt"].clone(), delivery["statusCode"].clone()), (json!(3), json!(204)));
    assert_eq!(delivery["error"], Value::Null, "an answer came");
    assert_eq!(delivery["nextAttemptAt"], Value::Null);

    // Other event names follow the subscription list.
    let update = json!({"id": shop.event, "input": {"title": "Hooked gig, moved"}});
    data(server.gql(
        Some(&shop.org),
        "mutation($id: ID!, $input: UpdateEventInput!) { updateEvent(id: $id, input: $input) { id } }",
        update,
    ));
    let got = receiver.wait_for(4, Duration::from_secs(10));
    assert_eq!(got[3].headers["x-marquee-event"], "event.updated");
    assert_signed(&got[3], &secret);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received().len(), 4, "nothing for the rival's booking, nothing twice");
}

#[test]
fn a_restart_in_the_middle_of_retrying_loses_no_delivery() {
    let dir = TempDir::new("webhooks-restart");
    let args = ["--allow-private-webhooks", "--webhook-retry-base", "1s", "--webhook-timeout", "1s"];
    let mut server = Server::start(dir.path(), &args);
    let shop = open_shop(&server, "org@example.com");
    let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(503)]);
    let (hook, secret) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    book(&server, &fan, &shop.ticket_type, "k");
    let first = receiver.wait_for(1, Duration::from_secs(10));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = Server::start(dir.path(), &args);
    let got = receiver.wait_for(3, Duration::from_secs(30));
    assert!(got.iter().all(|r| r.headers["x-marquee-delivery"] == first[0].headers["x-marquee-delivery"]));
    assert_signed(&got[2], &secret);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = data(server.gql(Some(&shop.org), DELIVERIES, json!({"id": hook})))["webhookDeliveries"].clone();
        assert_eq!(listed.as_array().unwrap().len(), 1, "one delivery, not a second one after the restart");
        if listed[0]["statusCode"] == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the delivery never completed: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A webhook whose delivery runs out of retries (and none of whose
/// deliveries got through meanwhile) is marked failing: nothing more is
/// sent, but what happens meanwhile is kept. Reactivated by its owner, it
/// gets everything it missed, the delivery given up included.
#[test]
fn a_webhook_whose_retries_run_out_is_marked_failing_and_reactivated_gets_what_it_missed() {
    let dir = TempDir::new("webhooks-failing");
    let mut args = fast_retries();
    args.extend(["--webhook-attempts-max", "2"]);
    let server = Server::start(dir.path(), &args);
    let shop = open_shop(&server, "org@example.com");
    let receiver = Receiver::start(&[Reply::Status(500); 2]);
    let (hook, _) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    book(&server, &fan, &shop.ticket_type, "k");
    receiver.wait_for(2, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hooks = data(server.gql(Some(&shop.org), "{ webhooks { id active } }", json!({})));
        if hooks["webhooks"] == json!([{"id": hook, "active": false}]) {
            break;
        }
        assert!(Instant::now() < deadline, "the webhook was not marked failing: {hooks}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivery = data(server.gql(Some(&shop.org), DELIVERIES, json!({"id": hook})))["webhookDeliveries"][0].clone();
    assert_eq!((delivery["attempt"].clone(), delivery["statusCode"].clone()), (json!(2), json!(500)));
    // Its owner is told, naming the endpoint's host, never its path.
    let deadline = Instant::now() + Duration::from_secs(10);
    let told = loop {
        let inbox = data(server.gql(Some(&shop.org), "{ notifications { kind message } }", json!({})));
        let found = inbox["notifications"].as_array().unwrap().iter().find(|n| n["kind"] == "webhook.failing").cloned();
        if let Some(found) = found {
            break found["message"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "the owner was not told: {inbox}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(told.contains(&format!("webhook {hook} to 127.0.0.1 is failing")), "{told}");
    assert!(!told.contains("/hooks/marquee"), "{told}");
    assert_eq!(delivery["nextAttemptAt"], Value::Null, "given up");
    let missed = book(&server, &fan, &shop.ticket_type, "k2");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.received().len(), 2, "an inactive webhook gets nothing new");
    let listed = data(server.gql(Some(&shop.org), DELIVERIES, json!({"id": hook})))["webhookDeliveries"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 2, "the change made while failing is kept: {listed}");

    let reactivate = "mutation($id: ID!) { reactivateWebhook(id: $id) { id active } }";
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    assert_eq!(error_code(&server.gql(Some(&rival), reactivate, json!({"id": hook}))), "NOT_FOUND");
    let reactivated = data(server.gql(Some(&shop.org), reactivate, json!({"id": hook})));
    assert_eq!(reactivated["reactivateWebhook"], json!({"id": hook, "active": true}));
    let got = receiver.wait_for(4, Duration::from_secs(10));
    let bodies: Vec<&str> = got[2..].iter().map(|r| r.body.as_str()).collect();
    assert!(bodies.iter().any(|body| body.contains(&missed)), "the missed booking arrives: {bodies:?}");
    assert_eq!(got[2..].iter().filter(|r| r.body == got[0].body).count(), 1, "the given-up one arrives: {bodies:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = data(server.gql(Some(&shop.org), DELIVERIES, json!({"id": hook})))["webhookDeliveries"].clone();
        let delivered = listed.as_array().unwrap().iter().filter(|d| !d["deliveredAt"].is_null()).count();
        if delivered == 2 {
            assert!(listed.as_array().unwrap().iter().all(|d| d["attempt"] == 1), "retries afresh: {listed}");
            break;
        }
        assert!(Instant::now() < deadline, "not both delivered: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn webhook_input_and_access_rules() {
    let dir = TempDir::new("webhooks-rules");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let refused = |token: &str, url: &str, events: Value| {
        let response = server.gql(Some(token), CREATE, json!({"url": url, "events": events}));
        (error_code(&response), error_message(&response))
    };
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest",
    ] {
        let (code, message) = refused(&org, url, json!(["booking.confirmed"]));
        assert_eq!(code, "BAD_USER_INPUT", "{url}");
        assert!(message.starts_with("url"), "{url}: {message}");
    }
    // A host name is held to what it resolves to now: the machine's own
    // name (loopback or private on most hosts) is refused when it resolves
    // only to such addresses, and taken otherwise.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let resolved: Vec<std::net::IpAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(hostname.as_str(), 80))
        .map(|found| found.map(|address| address.ip()).collect())
        .unwrap_or_default();
    let private = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    let url = format!("http://{hostname}:9/hook");
    let response = server.gql(Some(&org), CREATE, json!({"url": url, "events": ["booking.confirmed"]}));
    if !resolved.is_empty() && resolved.iter().all(private) {
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{hostname} resolves to {resolved:?}: {response}");
        assert!(error_message(&response).contains("resolves only to loopback or private"), "{response}");
    } else if !resolved.is_empty() {
        assert!(response.get("errors").is_none(), "{hostname} resolves to {resolved:?}: {response}");
    }
    assert_eq!(refused(&org, "http://localhost./hook", json!(["booking.confirmed"])).0, "BAD_USER_INPUT");
    assert_eq!(refused(&org, "ftp://example.com/", json!(["booking.confirmed"])).0, "BAD_USER_INPUT");
    assert_eq!(refused(&org, "https://user:pw@example.com/", json!(["booking.confirmed"])).0, "BAD_USER_INPUT");
    let (code, message) = refused(&org, "https://example.com/", json!(["booking.teleported"]));
    assert_eq!(code, "BAD_USER_INPUT");
    assert!(message.starts_with("events"), "{message}");
    assert_eq!(refused(&org, "https://example.com/", json!([])).0, "BAD_USER_INPUT");
    assert_eq!(refused(&fan, "https://example.com/", json!(["booking.confirmed"])).0, "FORBIDDEN");

    let (hook, secret) =
        create_webhook(&server, &org, "https://hooks.example.com/marquee", &["event.published", "event.published"]);
    assert!(secret.starts_with("whsec_") && secret.len() >= 40);
    let listed = data(server.gql(Some(&org), "{ webhooks { id url events active } }", json!({})));
    assert_eq!(
        listed["webhooks"],
        json!([{"id": hook, "url": "https://hooks.example.com/marquee", "events": ["event.published"], "active": true}])
    );
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    assert_eq!(data(server.gql(Some(&rival), "{ webhooks { id } }", json!({})))["webhooks"], json!([]));
    let delete = "mutation($id: ID!) { deleteWebhook(id: $id) }";
    assert_eq!(error_code(&server.gql(Some(&rival), delete, json!({"id": hook}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&rival), DELIVERIES, json!({"id": hook}))), "NOT_FOUND");
    assert_eq!(data(server.gql(Some(&org), delete, json!({"id": hook})))["deleteWebhook"], true);
    assert_eq!(data(server.gql(Some(&org), "{ webhooks { id } }", json!({})))["webhooks"], json!([]));
}

/// A deleted webhook takes its deliveries with it, and its id is never
/// given again, not even after a restart: a later webhook (another
/// account's) never gets the deleted one's deliveries or history. And a
/// webhook hears only of changes made after it was created.
#[test]
fn a_deleted_webhooks_deliveries_reach_no_later_webhook_and_none_hears_of_the_past() {
    let dir = TempDir::new("webhooks-deleted");
    let args = ["--allow-private-webhooks", "--webhook-retry-base", "300ms", "--webhook-timeout", "1s"];
    let mut server = Server::start(dir.path(), &args);
    let shop = open_shop(&server, "org@example.com");
    let failing = Receiver::start(&[Reply::Status(500); 50]);
    let (deleted, _) = create_webhook(&server, &shop.org, &failing.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    book(&server, &fan, &shop.ticket_type, "before-delete");
    failing.wait_for(1, Duration::from_secs(10));
    data(server.gql(Some(&shop.org), "mutation($id: ID!) { deleteWebhook(id: $id) }", json!({"id": deleted})));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    create_admin(dir.path(), "root@example.com");

    let server = Server::start(dir.path(), &args);
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    let receiver = Receiver::start(&[]);
    let (later, _) = create_webhook(&server, &rival, &receiver.url, &["booking.confirmed", "event.published"]);
    assert_ne!(later, deleted, "a deleted webhook's id was given again");
    assert!(later.parse::<u64>().unwrap() > deleted.parse::<u64>().unwrap());
    let listed = data(server.gql(Some(&rival), DELIVERIES, json!({"id": later})))["webhookDeliveries"].clone();
    assert_eq!(listed, json!([]), "a new webhook has no history");

    // An admin's webhook (it sees every event) made right after a publish,
    // while the outbox has yet to read it, does not hear of it; it hears of
    // the next one.
    let admin = login(&server, "root@example.com", "admin-password");
    let everything = Receiver::start(&[]);
    let publish = |title: &str| {
        event_with_tickets(&server, &shop.org, title, "2097-07-01T20:00:00Z", general_admission(100, 10), true);
    };
    publish("Earlier gig");
    create_webhook(&server, &admin, &everything.url, &["event.published"]);
    publish("Later gig");
    let got = everything.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let bodies: Vec<String> = everything.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(got[0].body.contains("Later gig"), "{bodies:?}");

    // The rival hears of nothing of the shop's, and the deleted webhook's
    // delivery is not retried.
    assert_eq!(receiver.received().len(), 0);
    let attempts_before = failing.received().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(failing.received().len(), attempts_before, "the deleted webhook's delivery is not retried");
}

/// A partner's webhook hears of every organizer's published events, never
/// of a draft (its updates, or its withdrawal before it was published):
/// what `event(id)` hides from the partner, no delivery tells it. The
/// event's own organizer's webhook does hear of its drafts.
#[test]
fn a_partners_webhook_hears_nothing_of_drafts() {
    let dir = TempDir::new("webhooks-drafts");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &["--allow-private-webhooks"]);
    let admin = login(&server, "root@example.com", "admin-password");
    let (partner, partner_id) = register(&server, "partner@example.com", "ATTENDEE");
    let set_role = "mutation($id: ID!) { setRole(userId: $id, role: PARTNER) { role } }";
    assert_eq!(data(server.gql(Some(&admin), set_role, json!({"id": partner_id})))["setRole"]["role"], "PARTNER");
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let names = ["event.published", "event.updated", "event.cancelled"];
    let partners = Receiver::start(&[]);
    create_webhook(&server, &partner, &partners.url, &names);
    let organizers = Receiver::start(&[]);
    create_webhook(&server, &org, &organizers.url, &names);

    let create = "mutation($input: CreateEventInput!) { createEvent(input: $input) { id } }";
    let draft = |title: &str| {
        let input = json!({"title": title, "startsAt": "2097-09-01T20:00:00Z", "city": "Lyon"});
        data(server.gql(Some(&org), create, json!({"input": input})))["createEvent"]["id"].as_str().unwrap().to_string()
    };
    let update = "mutation($id: ID!, $title: String!) { updateEvent(id: $id, input: {title: $title}) { id } }";
    let withdrawn = draft("Secret tour");
    data(server.gql(Some(&org), update, json!({"id": withdrawn, "title": "Secret tour, edited"})));
    data(server.gql(Some(&org), "mutation($id: ID!) { cancelEvent(id: $id) { id } }", json!({"id": withdrawn})));
    let announced = draft("Announced tour");
    data(server.gql(Some(&org), update, json!({"id": announced, "title": "Announced tour, edited"})));
    data(server.gql(Some(&org), "mutation($id: ID!) { publishEvent(id: $id) { id } }", json!({"id": announced})));

    // The organizer hears of all four changes; the partner of the publish
    // only, which the outbox reads after the drafts' changes.
    let heard = organizers.wait_for(4, Duration::from_secs(10));
    assert_eq!(heard.len(), 4, "{:?}", heard.iter().map(|r| &r.body).collect::<Vec<_>>());
    let got = partners.wait_for(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let bodies: Vec<String> = partners.received().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(got[0].body.contains("\"event.published\"") && got[0].body.contains(&announced), "{bodies:?}");
    assert!(!bodies.iter().any(|body| body.contains("Secret tour")), "{bodies:?}");
}

/// An endpoint that never answers holds only a few of the delivery
/// worker's slots, however many of its account's webhooks point at it:
/// another account's webhook is served on time meanwhile.
#[test]
fn a_webhook_that_never_answers_does_not_hold_up_the_others() {
    let dir = TempDir::new("webhooks-slow");
    let server = Server::start(dir.path(), &["--allow-private-webhooks", "--webhook-timeout", "8s"]);
    let slow_shop = open_shop(&server, "slow@example.com");
    let quick_shop = open_shop(&server, "quick@example.com");
    let silent = Receiver::start(&[Reply::Hang(Duration::from_secs(8)); 1000]);
    create_webhook(&server, &slow_shop.org, &silent.url, &["booking.confirmed"]);
    for n in 1..20 {
        create_webhook(&server, &slow_shop.org, &format!("{}?{n}", silent.url), &["booking.confirmed"]);
    }
    let quick = Receiver::start(&[]);
    create_webhook(&server, &quick_shop.org, &quick.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    // 20 webhooks x 210 bookings: more due deliveries than the worker looks
    // at in one scan of its queue, all older than the quick account's.
    for n in 0..210 {
        book(&server, &fan, &slow_shop.ticket_type, &format!("slow-{n}"));
    }
    silent.wait_for(1, Duration::from_secs(10));
    let started = Instant::now();
    for n in 0..10 {
        book(&server, &fan, &quick_shop.ticket_type, &format!("quick-{n}"));
    }
    quick.wait_for(10, Duration::from_secs(4));
    assert!(started.elapsed() < Duration::from_secs(4), "quick deliveries took {:?}", started.elapsed());
    let held = silent.received().len();
    assert!(held <= 8, "the silent endpoint's 20 webhooks hold {held} deliveries at once");

    // An owner can see why its deliveries fail: a third account's one
    // delivery to the silent endpoint.
    let third = open_shop(&server, "third@example.com");
    let (third_hook, _) = create_webhook(&server, &third.org, &silent.url, &["booking.confirmed"]);
    book(&server, &fan, &third.ticket_type, "third");
    let deliveries = "query($id: ID!) { webhookDeliveries(webhookId: $id) { attempt statusCode error } }";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed =
            data(server.gql(Some(&third.org), deliveries, json!({"id": third_hook})))["webhookDeliveries"].clone();
        let failed = listed.as_array().unwrap().iter().find(|d| d["attempt"].as_u64() >= Some(1)).cloned();
        if let Some(failed) = failed {
            assert_eq!(failed["statusCode"], Value::Null, "{failed}");
            assert_eq!(failed["error"], "no answer within 8000 ms", "{failed}");
            break;
        }
        assert!(Instant::now() < deadline, "no attempt of the silent webhook ended: {listed}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A delivery that gets no answer is logged without its URL: receivers
/// often carry their credential in the path or the query.
#[test]
fn a_failed_delivery_is_logged_without_its_url() {
    let dir = TempDir::new("wh-log");
    let log_path = dir.path().join("server.log");
    let mut command = Server::command(&dir.path().join("data"), &fast_retries());
    command.env("RUST_LOG", "info").stderr(std::fs::File::create(&log_path).unwrap());
    let server = Server::spawn(command);
    // A port nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let shop = open_shop(&server, "org@example.com");
    let url = format!("http://127.0.0.1:{port}/hooks/PATH-CREDENTIAL?api_key=QUERY-CREDENTIAL");
    create_webhook(&server, &shop.org, &url, &["booking.confirmed"]);
    book(&server, &shop.org, &shop.ticket_type, "logged");
    let deadline = Instant::now() + Duration::from_secs(20);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("webhook delivery got no answer") {
            break log;
        }
        assert!(Instant::now() < deadline, "no failed delivery logged in 20 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!log.contains("CREDENTIAL"), "the URL is not logged:\n{log}");
    assert!(log.contains("could not connect"), "why is logged:\n{log}");
}

/// Polls `webhookDeliveries` (bounded) until `done` holds for the list.
fn deliveries_until(server: &Server, token: &str, hook: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = data(server.gql(Some(token), DELIVERIES, json!({"id": hook})))["webhookDeliveries"].clone();
        let listed = listed.as_array().unwrap().clone();
        if done(&listed) {
            return listed;
        }
        assert!(Instant::now() < deadline, "deliveries never got there: {listed:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One payload the endpoint refuses, while another got through after it
/// was made, is given up alone, also when the server restarted between
/// the success and the last attempt: when a delivery last got through is
/// kept with the deliveries, not only in memory.
#[test]
fn a_payload_refused_across_a_restart_is_given_up_alone_when_others_got_through() {
    let dir = TempDir::new("webhooks-poison-restart");
    let args = ["--allow-private-webhooks", "--webhook-retry-base", "1s", "--webhook-attempts-max", "3"];
    let server = Server::start(dir.path(), &args);
    let shop = open_shop(&server, "org@example.com");
    // The refused payload's three attempts, and the other one's success
    // between its first two.
    let script = [Reply::Status(422), Reply::Status(200), Reply::Status(422), Reply::Status(422)];
    let receiver = Receiver::start(&script);
    let (hook, _) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let refused = book(&server, &fan, &shop.ticket_type, "refused");
    receiver.wait_for(1, Duration::from_secs(10));
    book(&server, &fan, &shop.ticket_type, "taken");
    receiver.wait_for(2, Duration::from_secs(10));
    deliveries_until(&server, &shop.org, &hook, |listed| listed.iter().any(|d| d["statusCode"] == 200));
    assert_eq!(server.stop(), Some(0));

    let server = Server::start(dir.path(), &args);
    let listed = deliveries_until(&server, &shop.org, &hook, |listed| {
        listed.iter().any(|d| d["attempt"] == 3 && d["nextAttemptAt"].is_null())
    });
    assert!(receiver.received()[2..4].iter().all(|r| r.body.contains(&refused)), "{listed:?}");
    let hooks = data(server.gql(Some(&shop.org), "{ webhooks { id active } }", json!({})));
    assert_eq!(hooks["webhooks"], json!([{"id": hook, "active": true}]), "the webhook is not marked failing");
    let later = book(&server, &fan, &shop.ticket_type, "later");
    let got = receiver.wait_for(5, Duration::from_secs(10));
    assert!(got[4].body.contains(&later), "later changes are still sent");
}

/// `booking.cancelled` tells of a cancelled sale: a hold dropped before it
/// was confirmed sold nothing, so (as for an expired hold) nothing is sent.
#[test]
fn a_hold_cancelled_before_it_was_confirmed_is_not_sent_as_a_cancelled_booking() {
    let dir = TempDir::new("webhooks-holds");
    let server = Server::start(dir.path(), &fast_retries());
    let shop = open_shop(&server, "org@example.com");
    let receiver = Receiver::start(&[]);
    let (hook, _) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed", "booking.cancelled"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    let book_query = "mutation($input: BookInput!) { bookTickets(input: $input) { id } }";
    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { status } }";
    let hold_input =
        json!({"input": {"ticketTypeId": shop.ticket_type, "quantity": 1, "idempotencyKey": "h", "hold": true}});
    let hold = data(server.gql(Some(&fan), book_query, hold_input))["bookTickets"]["id"].as_str().unwrap().to_string();
    assert_eq!(data(server.gql(Some(&fan), cancel, json!({"id": hold})))["cancelBooking"]["status"], "CANCELLED");
    let sale = book(&server, &fan, &shop.ticket_type, "sale");
    assert_eq!(data(server.gql(Some(&fan), cancel, json!({"id": sale})))["cancelBooking"]["status"], "CANCELLED");

    let got = receiver.wait_for(2, Duration::from_secs(10));
    let mut told: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(&r.body).unwrap();
            (body["event"].as_str().unwrap().to_string(), body["data"]["id"].as_str().unwrap().to_string())
        })
        .collect();
    told.sort();
    assert_eq!(told, [("booking.cancelled".into(), sale.clone()), ("booking.confirmed".into(), sale.clone())]);
    // The outbox takes the log in order: the hold's cancellation came
    // before both, so its delivery would be listed by now.
    let listed = deliveries_until(&server, &shop.org, &hook, |listed| listed.len() >= 2);
    assert_eq!(listed.len(), 2, "nothing for the hold: {listed:?}");
}

/// A leaked signing secret is replaced without losing a delivery: every
/// attempt after the rotation, retries of earlier deliveries included, is
/// signed with the new secret, across a restart too.
#[test]
fn a_rotated_secret_signs_every_attempt_from_then_on() {
    let dir = TempDir::new("webhooks-rotate");
    let args = ["--allow-private-webhooks", "--webhook-retry-base", "1s", "--webhook-timeout", "1s"];
    let server = Server::start(dir.path(), &args);
    let shop = open_shop(&server, "org@example.com");
    let receiver = Receiver::start(&[Reply::Status(500)]);
    let (hook, old_secret) = create_webhook(&server, &shop.org, &receiver.url, &["booking.confirmed"]);
    let (fan, _) = register(&server, "fan@example.com", "ATTENDEE");
    book(&server, &fan, &shop.ticket_type, "before");
    let first = receiver.wait_for(1, Duration::from_secs(10));
    assert_signed(&first[0], &old_secret);

    let rotate = "mutation($id: ID!) { rotateWebhookSecret(id: $id) { secret webhook { id url active } } }";
    let (rival, _) = register(&server, "rival@example.com", "ORGANIZER");
    assert_eq!(error_code(&server.gql(Some(&rival), rotate, json!({"id": hook}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&shop.org), rotate, json!({"id": "999"}))), "NOT_FOUND");
    let rotated = data(server.gql(Some(&shop.org), rotate, json!({"id": hook})))["rotateWebhookSecret"].clone();
    assert_eq!(rotated["webhook"], json!({"id": hook, "url": receiver.url, "active": true}));
    let secret = rotated["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_") && secret.len() == old_secret.len() && secret != old_secret);

    let got = receiver.wait_for(2, Duration::from_secs(10));
    assert_eq!(got[1].headers["x-marquee-delivery"], first[0].headers["x-marquee-delivery"], "the retry");
    assert_signed(&got[1], &secret);
    drop(server);
    let server = Server::start(dir.path(), &args);
    book(&server, &fan, &shop.ticket_type, "after");
    let got = receiver.wait_for(3, Duration::from_secs(10));
    assert_signed(&got[2], &secret);
}
