//! Crash safety of bookings: the real binary, under concurrent booking and
//! cancelling load, is killed with SIGKILL at random moments (some of them
//! during start-up) and restarted on the same data directory. Afterwards
//! every acknowledged booking is there in the state it was acknowledged in,
//! sold equals the seats of the live bookings, replaying an acknowledged
//! idempotency key returns the same booking, and every buyer's inbox holds
//! each notification once.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ROUNDS: u64 = 12;
/// Buyers book as fast as they can: rate limits are not under test here.
const UNLIMITED: &[&str] = &["--rate-limit-token", "0"];
const BUYERS: usize = 6;
const CAPACITY: i64 = 2_500;

const BOOK: &str =
    "mutation($input: BookInput!) { bookTickets(input: $input) { id status quantity tickets { code } } }";
const CANCEL: &str = "mutation($id: ID!) { cancelBooking(id: $id) { id status } }";

/// What the server acknowledged to a buyer.
#[derive(Clone, Debug)]
struct Acked {
    buyer: usize,
    key: String,
    id: String,
    quantity: i64,
    cancel: Cancel,
}

/// Whether the buyer cancelled an acknowledged booking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cancel {
    /// Never tried: it must be CONFIRMED.
    No,
    /// Sent, but the server died before answering: either state is right.
    Unanswered,
    /// Acknowledged: it must be CANCELLED.
    Acknowledged,
}

struct Shop {
    buyers: Vec<String>,
    ticket_type: String,
    event: String,
}

fn open_shop(server: &Server) -> Shop {
    let (org, _) = register(server, "org@example.com", "ORGANIZER");
    let ticket = general_admission(1000, CAPACITY);
    let (event, ticket_type) = event_with_tickets(server, &org, "Crash gig", "2097-06-01T20:00:00Z", ticket, true);
    let buyers = (0..BUYERS).map(|b| register(server, &format!("buyer{b}@example.com"), "ATTENDEE").0).collect();
    Shop { buyers, ticket_type, event }
}

/// One buyer's loop: book 1-3 seats with fresh keys, now and then cancel
/// an acknowledged booking, until the server stops answering.
fn buyer_loop(addr: String, shop: Arc<Shop>, buyer: usize, round: u64, seed: u64, acked: Arc<Mutex<Vec<Acked>>>) {
    let mut rng = Rng(seed | 1);
    let token = shop.buyers[buyer].clone();
    for i in 0.. {
        if rng.below(5) == 0 {
            let candidate =
                acked.lock().unwrap().iter().rposition(|a| a.buyer == buyer && a.cancel != Cancel::Acknowledged);
            if let Some(index) = candidate {
                let id = {
                    let mut acked = acked.lock().unwrap();
                    acked[index].cancel = Cancel::Unanswered;
                    acked[index].id.clone()
                };
                let Ok(response) = try_gql(&addr, Some(&token), CANCEL, json!({"id": id})) else { return };
                assert_eq!(response["data"]["cancelBooking"]["status"], "CANCELLED", "cancel failed: {response}");
                acked.lock().unwrap()[index].cancel = Cancel::Acknowledged;
                continue;
            }
        }
        let key = format!("b{buyer}-r{round}-{i}");
        let quantity = 1 + rng.below(3) as i64;
        let input = json!({"input": {"ticketTypeId": shop.ticket_type, "quantity": quantity, "idempotencyKey": key}});
        let Ok(response) = try_gql(&addr, Some(&token), BOOK, input) else { return };
        if response.get("errors").is_some() {
            assert_eq!(error_code(&response), "SOLD_OUT", "the only refusal under load is SOLD_OUT: {response}");
            continue;
        }
        let booking = &response["data"]["bookTickets"];
        assert_eq!(booking["status"], "CONFIRMED");
        assert_eq!(booking["tickets"].as_array().unwrap().len() as i64, quantity);
        let id = booking["id"].as_str().unwrap().to_string();
        acked.lock().unwrap().push(Acked { buyer, key, id, quantity, cancel: Cancel::No });
    }
}

/// Starts the binary and kills it a few milliseconds later, before or while
/// it recovers.
fn kill_during_start_up(dir: &std::path::Path, rng: &mut Rng) {
    let mut child = Command::new(binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--cache-mb", "16", "--rate-limit-token", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(rng.below(40)));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn verify(server: &Server, shop: &Shop, acked: &[Acked]) {
    let mut stored: HashMap<String, Value> = HashMap::new();
    for token in &shop.buyers {
        let mine = data(server.gql(Some(token), "{ myBookings { id status quantity tickets { code } } }", json!({})));
        for booking in mine["myBookings"].as_array().unwrap() {
            stored.insert(booking["id"].as_str().unwrap().to_string(), booking.clone());
        }
    }
    for ack in acked {
        let booking = stored.get(&ack.id).unwrap_or_else(|| panic!("acknowledged booking {ack:?} is lost"));
        let expected: &[&str] = match ack.cancel {
            Cancel::No => &["CONFIRMED"],
            Cancel::Unanswered => &["CONFIRMED", "CANCELLED"],
            Cancel::Acknowledged => &["CANCELLED"],
        };
        assert!(expected.contains(&booking["status"].as_str().unwrap()), "acknowledged {ack:?} came back as {booking}");
        assert_eq!(booking["quantity"], ack.quantity);
    }
    let live_seats: i64 =
        stored.values().filter(|b| b["status"] == "CONFIRMED").map(|b| b["quantity"].as_i64().unwrap()).sum();
    let state = data(server.gql(
        None,
        "query($id: ID!) { event(id: $id) { ticketTypes { sold available } } }",
        json!({"id": shop.event}),
    ));
    let sold = state["event"]["ticketTypes"][0]["sold"].as_i64().unwrap();
    assert_eq!(sold, live_seats, "sold equals the seats of the live bookings");
    assert!(sold <= CAPACITY);
    assert_eq!(state["event"]["ticketTypes"][0]["available"].as_i64().unwrap(), CAPACITY - sold);
    let codes: Vec<&str> = stored
        .values()
        .flat_map(|b| b["tickets"].as_array().unwrap().iter().map(|t| t["code"].as_str().unwrap()))
        .collect();
    assert_eq!(codes.len(), codes.iter().collect::<HashSet<_>>().len(), "no ticket code twice");
    for ack in acked {
        let input =
            json!({"input": {"ticketTypeId": shop.ticket_type, "quantity": ack.quantity, "idempotencyKey": ack.key}});
        let replay = data(server.gql(Some(&shop.buyers[ack.buyer]), BOOK, input));
        assert_eq!(replay["bookTickets"]["id"], ack.id.as_str(), "replaying {ack:?} returns the same booking");
    }
    verify_inboxes(server, shop, acked);
}

/// Once the notifications reader has caught up, each buyer's inbox lists
/// every notification once (one written twice, by entries applied again
/// after a crash, would show twice), the stored ones in decreasing log
/// order, as many as the buyer was sent up to a page, and, when they fit
/// the page, the confirmation of every acknowledged booking.
fn verify_inboxes(server: &Server, shop: &Shop, acked: &[Acked]) {
    const PAGE: usize = 100;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lag =
            metric(server, "marquee_log_reader_lag{reader=\"notifications\"}").expect("the notifications reader's lag");
        if lag == "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the notifications reader is still {lag} entries behind");
        std::thread::sleep(Duration::from_millis(50));
    }
    for (buyer, token) in shop.buyers.iter().enumerate() {
        let mine: Vec<&Acked> = acked.iter().filter(|a| a.buyer == buyer).collect();
        // A confirmation for each booking, a notice for each cancel.
        let sent = mine.iter().map(|a| 1 + usize::from(a.cancel == Cancel::Acknowledged)).sum::<usize>();
        let inbox =
            data(server.gql(Some(token), "query($n: Int) { notifications(first: $n) { id } }", json!({"n": PAGE})));
        let ids: Vec<&str> =
            inbox["notifications"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "buyer {buyer}'s inbox, each once: {ids:?}");
        // Stored ones are `seq-k`; confirmations, `confirmed-<booking>`.
        let stored: Vec<(u64, u64)> = ids
            .iter()
            .filter_map(|id| {
                let (seq, k) = id.split_once('-')?;
                Some((seq.parse().ok()?, k.parse().ok()?))
            })
            .collect();
        assert!(stored.windows(2).all(|w| w[0] > w[1]), "buyer {buyer}'s stored ones, newest first: {ids:?}");
        assert!(ids.len() >= sent.min(PAGE), "buyer {buyer} was sent {sent} notifications, {} are listed", ids.len());
        if sent <= PAGE {
            for ack in mine {
                let confirmed = format!("confirmed-{}", ack.id);
                assert!(ids.contains(&confirmed.as_str()), "buyer {buyer} is told of {ack:?}: {ids:?}");
            }
        }
    }
}

#[test]
fn acknowledged_bookings_survive_sigkill_under_load() {
    let mut rng = Rng::from_clock("crash test");
    let dir = TempDir::new("crash");
    let mut server = Server::start(dir.path(), UNLIMITED);
    let shop = Arc::new(open_shop(&server));
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let buyers: Vec<_> = (0..BUYERS)
            .map(|buyer| {
                let (addr, shop, acked, stop) = (server.addr.clone(), shop.clone(), acked.clone(), stop.clone());
                let seed = rng.below(u64::MAX);
                std::thread::spawn(move || {
                    if !stop.load(Ordering::Relaxed) {
                        buyer_loop(addr, shop, buyer, round, seed, acked);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for buyer in buyers {
            buyer.join().expect("a buyer saw something other than success, SOLD_OUT or a dead server");
        }
        if round % 3 == 1 {
            kill_during_start_up(dir.path(), &mut rng);
        }
        server = Server::start(dir.path(), UNLIMITED);
    }
    let acked = acked.lock().unwrap().clone();
    eprintln!(
        "{} acknowledged bookings, {} cancelled, over {ROUNDS} kills",
        acked.len(),
        acked.iter().filter(|a| a.cancel == Cancel::Acknowledged).count()
    );
    assert!(acked.len() >= ROUNDS as usize, "the load made bookings in most rounds");
    verify(&server, &shop, &acked);
    // And once more after a clean stop and start.
    assert_eq!(server.stop(), Some(0));
    let server = Server::start(dir.path(), UNLIMITED);
    verify(&server, &shop, &acked);
}

/// A storage write that fails (here: the process may not grow its files
/// past a few megabytes, as on a full disk) is never acknowledged: the
/// booking in flight gets UNAVAILABLE, and the server stops with exit code
/// 1 so that its supervisor starts it again, instead of serving state that
/// memory holds and the disk does not. Started again, it holds exactly the
/// acknowledged bookings.
#[test]
fn a_failed_storage_write_stops_the_server_and_a_restart_holds_exactly_what_was_acknowledged() {
    let dir = TempDir::new("storage-failure");
    let server = Server::start(dir.path(), UNLIMITED);
    let shop = open_shop(&server);
    let (org, _) = register(&server, "big@example.com", "ORGANIZER");
    let ticket = general_admission(1000, 1_000_000);
    let (event, ticket_type) = event_with_tickets(&server, &org, "Big gig", "2097-06-01T20:00:00Z", ticket, true);
    assert_eq!(server.stop(), Some(0));

    let mut server = start_with_files_capped(dir.path());
    let mut acknowledged: Vec<(String, i64)> = Vec::new();
    let mut refusal = None;
    for n in 0..200_000 {
        let input = json!({"input": {"ticketTypeId": ticket_type, "quantity": 1, "idempotencyKey": format!("k{n}")}});
        let Ok(response) = try_gql(&server.addr, Some(&shop.buyers[n % BUYERS]), BOOK, input) else { break };
        if response["data"]["bookTickets"]["status"] == "CONFIRMED" {
            acknowledged.push((response["data"]["bookTickets"]["id"].as_str().unwrap().to_string(), 1));
            continue;
        }
        refusal = Some(response);
        break;
    }
    let refusal = refusal.expect("a booking was refused once storage failed");
    assert_eq!(error_code(&refusal), "UNAVAILABLE", "{refusal}");
    assert!(!refusal.to_string().contains("EFBIG") && !refusal.to_string().contains("sled"), "{refusal}");
    assert_stops_with_code_1(&mut server);
    assert!(!acknowledged.is_empty(), "some bookings were made before the store failed");

    // Started again (without the limit): exactly the acknowledged bookings.
    let server = Server::start(dir.path(), UNLIMITED);
    let mine = "{ myBookings { id status quantity } }";
    let mut stored = HashMap::new();
    for buyer in &shop.buyers {
        for booking in data(server.gql(Some(buyer), mine, json!({})))["myBookings"].as_array().unwrap() {
            stored.insert(booking["id"].as_str().unwrap().to_string(), booking["status"].clone());
        }
    }
    for (id, _) in &acknowledged {
        assert_eq!(stored.get(id), Some(&json!("CONFIRMED")), "acknowledged booking {id}");
    }
    let sold = data(server.gql(None, "query($e: ID!) { event(id: $e) { ticketTypes { sold } } }", json!({"e": event})));
    let sold = sold["event"]["ticketTypes"][0]["sold"].as_i64().unwrap();
    assert_eq!(sold, stored.len() as i64, "sold counts the stored bookings, each of one seat");
    assert!(stored.len() <= acknowledged.len() + 1, "at most the one refused booking was stored beyond them");
}

/// The same when the write that meets the full disk is no booking (an
/// event's creation, written and flushed by itself): the server stops all
/// the same, rather than staying up refusing every write.
#[test]
fn a_failed_storage_write_outside_a_booking_stops_the_server_too() {
    let dir = TempDir::new("storage-failure-direct");
    let server = Server::start(dir.path(), UNLIMITED);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    assert_eq!(server.stop(), Some(0));
    let mut server = start_with_files_capped(dir.path());
    let create = "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }";
    let mut refusal = None;
    for n in 0..10_000 {
        let input = json!({"title": format!("Gig {n}"), "description": "d".repeat(5000), "startsAt": "2097-06-01T20:00:00Z", "city": "Oslo"});
        let Ok(response) = try_gql(&server.addr, Some(&org), create, json!({"i": input})) else { break };
        if response.get("errors").is_some() {
            refusal = Some(response);
            break;
        }
    }
    let refusal = refusal.expect("an event's creation was refused once storage failed");
    assert_eq!(error_code(&refusal), "UNAVAILABLE", "{refusal}");
    assert_stops_with_code_1(&mut server);
}

/// `marquee serve` on `dir` with writes past 2 MB failing with EFBIG, as
/// on a full disk (SIGXFSZ ignored, as the shell's `trap ''` leaves it for
/// the program it execs).
fn start_with_files_capped(dir: &std::path::Path) -> Server {
    let script = r#"trap '' XFSZ; exec prlimit --fsize=2000000 "$@""#;
    let mut command = Command::new("sh");
    command
        .args(["-c", script, "sh", binary(), "serve", "--listen", "127.0.0.1:0", "--cache-mb", "16"])
        .args(["--shutdown-grace", "2s", "--rate-limit-token", "0", "--data-dir"])
        .arg(dir)
        .env_remove("MARQUEE_LISTEN")
        .env_remove("MARQUEE_DATA_DIR")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Server::spawn(command)
}

/// Waits (bounded) for the server to stop by itself; it must exit with 1,
/// for its supervisor to start it again.
fn assert_stops_with_code_1(server: &mut Server) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the server kept running after its storage failed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
}
