//! End-to-end: follows, friends going, recommendations, social distance and
//! who's going over real HTTP, their access rules, and the index across a
//! clean restart and a SIGKILL in the middle of writes.

mod common;

use common::*;
use serde_json::{json, Value};

const FOLLOW: &str = "mutation($id: ID!) { follow(userId: $id) { id followerCount followingCount } }";
const UNFOLLOW: &str = "mutation($id: ID!) { unfollow(userId: $id) { id followerCount } }";
const BOOK: &str = "mutation($input: BookInput!) { bookTickets(input: $input) { id status } }";

struct Person {
    token: String,
    id: String,
}

fn person(server: &Server, name: &str) -> Person {
    let (token, id) = register(server, &format!("{name}@example.com"), "ATTENDEE");
    Person { token, id }
}

/// An event with one ticket type, published when `publish`; returns (event id, ticket type id).
fn event(server: &Server, org: &str, title: &str, starts_at: &str, publish: bool) -> (String, String) {
    event_with_tickets(server, org, title, starts_at, general_admission(1000, 100), publish)
}

fn follow(server: &Server, who: &Person, whom: &Person) {
    data(server.gql(Some(&who.token), FOLLOW, json!({"id": whom.id})));
}

fn book(server: &Server, who: &Person, ticket_type: &str, key: &str, hold: bool) -> String {
    let input = json!({"input": {"ticketTypeId": ticket_type, "quantity": 1, "idempotencyKey": key, "hold": hold}});
    data(server.gql(Some(&who.token), BOOK, input))["bookTickets"]["id"].as_str().unwrap().to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|item| item["id"].as_str().unwrap().to_string()).collect()
}

fn friends_going(server: &Server, viewer: Option<&str>, event: &str) -> Vec<String> {
    let response =
        server.gql(viewer, "query($id: ID!) { event(id: $id) { friendsGoing { id } } }", json!({"id": event}));
    ids(&data(response)["event"]["friendsGoing"])
}

fn recommended(server: &Server, viewer: &str) -> Vec<String> {
    ids(&data(server.gql(Some(viewer), "{ recommendedEvents { id } }", json!({})))["recommendedEvents"])
}

fn distance(server: &Server, viewer: &str, to: &str) -> Value {
    data(server.gql(Some(viewer), "query($id: ID!) { socialDistance(userId: $id) }", json!({"id": to})))
        ["socialDistance"]
        .clone()
}

#[test]
fn follow_rules_and_counts() {
    let dir = TempDir::new("follow");
    let server = Server::start(dir.path(), &[]);
    let (ada, bob) = (person(&server, "ada"), person(&server, "bob"));
    assert_eq!(error_code(&server.gql(None, FOLLOW, json!({"id": bob.id}))), "UNAUTHENTICATED");
    let myself = server.gql(Some(&ada.token), FOLLOW, json!({"id": ada.id}));
    assert_eq!(error_code(&myself), "BAD_USER_INPUT");
    assert!(error_message(&myself).starts_with("userId"), "the message names the field: {myself}");
    assert_eq!(error_code(&server.gql(Some(&ada.token), FOLLOW, json!({"id": "999"}))), "NOT_FOUND");
    assert_eq!(error_code(&server.gql(Some(&ada.token), FOLLOW, json!({"id": "abc"}))), "BAD_USER_INPUT");

    let followed = data(server.gql(Some(&ada.token), FOLLOW, json!({"id": bob.id})));
    assert_eq!(followed["follow"], json!({"id": bob.id, "followerCount": 1, "followingCount": 0}));
    let again = data(server.gql(Some(&ada.token), FOLLOW, json!({"id": bob.id})));
    assert_eq!(again["follow"]["followerCount"], 1, "following twice changes nothing");
    let me = data(server.gql(Some(&ada.token), "{ me { followerCount followingCount } }", json!({})));
    assert_eq!(me["me"], json!({"followerCount": 0, "followingCount": 1}));

    let unfollowed = data(server.gql(Some(&ada.token), UNFOLLOW, json!({"id": bob.id})));
    assert_eq!(unfollowed["unfollow"], json!({"id": bob.id, "followerCount": 0}));
    let again = data(server.gql(Some(&ada.token), UNFOLLOW, json!({"id": bob.id})));
    assert_eq!(again["unfollow"]["followerCount"], 0, "unfollowing twice changes nothing");
    assert_eq!(error_code(&server.gql(Some(&ada.token), UNFOLLOW, json!({"id": ada.id}))), "BAD_USER_INPUT");
}

#[test]
fn friends_going_counts_mutual_follows_with_confirmed_bookings() {
    let dir = TempDir::new("friends");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (gig, tickets) = event(&server, &org, "Gig", "2097-03-01T20:00:00Z", true);
    let [me, friend, fan, holder, canceller] =
        ["me", "friend", "fan", "holder", "canceller"].map(|n| person(&server, n));
    // friend, holder and canceller are mutual follows; fan only follows me.
    for other in [&friend, &holder, &canceller] {
        follow(&server, &me, other);
        follow(&server, other, &me);
    }
    follow(&server, &fan, &me);
    book(&server, &friend, &tickets, "f", false);
    book(&server, &fan, &tickets, "a", false);
    book(&server, &holder, &tickets, "h", true);
    let cancelled = book(&server, &canceller, &tickets, "c", false);
    assert_eq!(friends_going(&server, Some(&me.token), &gig).len(), 2);
    data(server.gql(
        Some(&canceller.token),
        "mutation($id: ID!) { cancelBooking(id: $id) { id } }",
        json!({"id": cancelled}),
    ));

    assert_eq!(
        friends_going(&server, Some(&me.token), &gig),
        vec![friend.id.clone()],
        "mutual, CONFIRMED, not cancelled"
    );
    assert_eq!(friends_going(&server, None, &gig), Vec::<String>::new(), "[] when anonymous");
    let forged =
        server.gql(Some("mq_forged"), "query($id: ID!) { event(id: $id) { friendsGoing { id } } }", json!({"id": gig}));
    assert_eq!(error_code(&forged), "UNAUTHENTICATED", "a bad token is not anonymous: {forged}");
    let attendees = data(server.gql(None, "query($id: ID!) { event(id: $id) { attendeeCount } }", json!({"id": gig})));
    assert_eq!(attendees["event"]["attendeeCount"], 2, "friend and fan hold confirmed tickets");
    let none = server.gql(
        Some(&me.token),
        "query($id: ID!) { event(id: $id) { friendsGoing(first: 0) { id } } }",
        json!({"id": gig}),
    );
    assert_eq!(data(none)["event"]["friendsGoing"], json!([]));
    let bad = server.gql(
        Some(&me.token),
        "query($id: ID!) { event(id: $id) { friendsGoing(first: 101) { id } } }",
        json!({"id": gig}),
    );
    assert_eq!(error_code(&bad), "BAD_USER_INPUT");
}

#[test]
fn recommendations_rank_by_followees_going_and_skip_what_they_cannot_book() {
    let dir = TempDir::new("recommend");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (early, early_tickets) = event(&server, &org, "Early", "2097-01-01T20:00:00Z", true);
    let (late, late_tickets) = event(&server, &org, "Late", "2097-02-01T20:00:00Z", true);
    let (popular, popular_tickets) = event(&server, &org, "Popular", "2097-12-01T20:00:00Z", true);
    let (mine, mine_tickets) = event(&server, &org, "Mine", "2097-01-15T20:00:00Z", true);
    let (called_off, called_off_tickets) = event(&server, &org, "Called off", "2097-01-20T20:00:00Z", true);
    let (draft, _) = event(&server, &org, "Draft", "2097-01-10T20:00:00Z", false);
    let [me, a, b, stranger] = ["me", "a", "b", "stranger"].map(|n| person(&server, n));
    follow(&server, &me, &a);
    follow(&server, &me, &b);
    book(&server, &a, &late_tickets, "1", false);
    book(&server, &a, &early_tickets, "2", false);
    book(&server, &a, &popular_tickets, "3", false);
    book(&server, &b, &popular_tickets, "4", false);
    book(&server, &a, &mine_tickets, "5", false);
    book(&server, &me, &mine_tickets, "6", false);
    book(&server, &a, &called_off_tickets, "7", false);
    book(&server, &stranger, &late_tickets, "8", false);
    book(&server, &b, &late_tickets, "9", true);
    data(server.gql(Some(&org), "mutation($id: ID!) { cancelEvent(id: $id) { id } }", json!({"id": called_off})));

    // Popular has two followees going; Early and Late one each (a held
    // booking does not count), Early first by start; Mine is booked by me.
    assert_eq!(recommended(&server, &me.token), [popular.clone(), early.clone(), late.clone()]);
    let first = data(server.gql(Some(&me.token), "{ recommendedEvents(first: 1) { id } }", json!({})));
    assert_eq!(ids(&first["recommendedEvents"]), std::slice::from_ref(&popular));
    let all = recommended(&server, &me.token);
    assert!(!all.contains(&draft) && !all.contains(&mine) && !all.contains(&called_off));
    assert_eq!(data(server.gql(None, "{ recommendedEvents { id } }", json!({})))["recommendedEvents"], json!([]));

    // Seats I hold are booked too; cancelled, the event comes back.
    let hold = book(&server, &me, &early_tickets, "mine-held", true);
    assert_eq!(recommended(&server, &me.token), [popular.clone(), late.clone()]);
    data(server.gql(Some(&me.token), "mutation($id: ID!) { cancelBooking(id: $id) { id } }", json!({"id": hold})));
    assert_eq!(recommended(&server, &me.token), [popular, early, late]);
}

/// A hold past its expiresAt is no booking any more: its event is
/// recommended again at once, as the booking reads EXPIRED at once.
#[test]
fn a_run_out_hold_no_longer_keeps_its_event_from_recommendations() {
    let dir = TempDir::new("recommend-hold");
    let server = Server::start(dir.path(), &["--hold-ttl", "1s"]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (gig, tickets) = event(&server, &org, "Gig", "2097-01-01T20:00:00Z", true);
    let [me, friend] = ["me", "friend"].map(|n| person(&server, n));
    follow(&server, &me, &friend);
    book(&server, &friend, &tickets, "f", false);
    book(&server, &me, &tickets, "mine", true);
    let answered = std::time::Instant::now();
    assert_eq!(recommended(&server, &me.token), Vec::<String>::new(), "held: booked");
    // Made before it was answered: a second after that, it has run out.
    std::thread::sleep(std::time::Duration::from_secs(1).saturating_sub(answered.elapsed()));
    while answered.elapsed() < std::time::Duration::from_millis(1_400) {
        assert_eq!(recommended(&server, &me.token), std::slice::from_ref(&gig));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn social_distance_walks_follows_up_to_four_hops() {
    let dir = TempDir::new("distance");
    let server = Server::start(dir.path(), &[]);
    let chain: Vec<Person> = (0..6).map(|i| person(&server, &format!("p{i}"))).collect();
    for pair in chain.windows(2) {
        follow(&server, &pair[0], &pair[1]);
    }
    let from = &chain[0].token;
    assert_eq!(distance(&server, from, &chain[0].id), 0);
    assert_eq!(distance(&server, from, &chain[1].id), 1);
    assert_eq!(distance(&server, from, &chain[4].id), 4);
    assert_eq!(distance(&server, from, &chain[5].id), Value::Null, "five hops is beyond the limit");
    assert_eq!(distance(&server, &chain[5].token, &chain[0].id), Value::Null, "follows are directed");
    follow(&server, &chain[0], &chain[3]);
    assert_eq!(distance(&server, from, &chain[5].id), 3, "a shortcut shortens it");
    let query = "query($id: ID!) { socialDistance(userId: $id) }";
    assert_eq!(error_code(&server.gql(None, query, json!({"id": chain[1].id}))), "UNAUTHENTICATED");
    assert_eq!(error_code(&server.gql(Some(from), query, json!({"id": "4242"}))), "NOT_FOUND");
}

#[test]
fn whos_going_is_for_the_organizer_and_ranks_by_followers() {
    let dir = TempDir::new("whos-going");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (gig, tickets) = event(&server, &org, "Gig", "2097-03-01T20:00:00Z", true);
    let [star, quiet, fan1, fan2] = ["star", "quiet", "fan1", "fan2"].map(|n| person(&server, n));
    follow(&server, &fan1, &star);
    follow(&server, &fan2, &star);
    follow(&server, &fan1, &quiet);
    book(&server, &quiet, &tickets, "q", false);
    book(&server, &star, &tickets, "s", false);
    book(&server, &fan2, &tickets, "f", false);
    let query = "query($id: ID!) { event(id: $id) { whosGoing { id followerCount } } }";
    let going = data(server.gql(Some(&org), query, json!({"id": gig})));
    assert_eq!(
        going["event"]["whosGoing"],
        json!([
            {"id": star.id, "followerCount": 2},
            {"id": quiet.id, "followerCount": 1},
            {"id": fan2.id, "followerCount": 0},
        ])
    );
    assert_eq!(error_code(&server.gql(Some(&fan1.token), query, json!({"id": gig}))), "FORBIDDEN");
}

/// Every social answer the test world gives, for before/after comparisons.
fn social_snapshot(server: &Server, people: &[Person], events: &[String]) -> Value {
    let mut answers = Vec::new();
    for viewer in people {
        answers.push(recommended(server, &viewer.token).into());
        answers.push(data(server.gql(Some(&viewer.token), "{ me { followerCount followingCount } }", json!({}))));
        for event in events {
            answers.push(friends_going(server, Some(&viewer.token), event).into());
        }
        for other in people {
            answers.push(distance(server, &viewer.token, &other.id));
        }
    }
    for event in events {
        answers.push(data(server.gql(
            None,
            "query($id: ID!) { event(id: $id) { attendeeCount } }",
            json!({"id": event}),
        )));
    }
    Value::Array(answers)
}

#[test]
fn the_index_answers_alike_after_restart_and_sigkill() {
    let dir = TempDir::new("social-restart");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let gigs: Vec<(String, String)> = (0..3)
        .map(|i| event(&server, &org, &format!("Gig {i}"), &format!("2097-0{}-01T20:00:00Z", i + 1), true))
        .collect();
    let people: Vec<Person> = (0..6).map(|i| person(&server, &format!("p{i}"))).collect();
    for (i, who) in people.iter().enumerate() {
        for j in [1, 2, 4] {
            follow(&server, who, &people[(i + j) % people.len()]);
        }
        book(&server, who, &gigs[i % 3].1, &format!("k{i}"), false);
    }
    data(server.gql(Some(&people[0].token), UNFOLLOW, json!({"id": people[1].id})));
    let events: Vec<String> = gigs.iter().map(|(event, _)| event.clone()).collect();
    let before = social_snapshot(&server, &people, &events);
    assert_eq!(server.stop(), Some(0));

    let mut server = Server::start(dir.path(), &[]);
    assert_eq!(social_snapshot(&server, &people, &events), before, "a clean restart rebuilds the same index");

    // SIGKILL in the middle of follow traffic: afterwards every pair is in
    // its last acknowledged state, or in the state of the one request that
    // got no answer, and the counts agree with the pairs.
    let traffic = {
        let (addr, tokens, ids) = (
            server.addr.clone(),
            people.iter().map(|p| p.token.clone()).collect::<Vec<_>>(),
            people.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        );
        std::thread::spawn(move || follow_traffic(&addr, &tokens, &ids))
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let (acknowledged, unanswered) = traffic.join().unwrap();
    assert!(!acknowledged.is_empty(), "follow traffic ran before the kill");
    let server = Server::start(dir.path(), &[]);
    let n = people.len();
    for a in 0..n {
        let mut following = 0;
        for b in (0..n).filter(|&b| b != a) {
            let follows = distance(&server, &people[a].token, &people[b].id) == 1;
            following += usize::from(follows);
            let acked = acknowledged.get(&(a, b)).copied();
            let allowed = match unanswered {
                Some((pair, wanted)) if pair == (a, b) => follows == wanted || acked.is_none_or(|s| s == follows),
                _ => acked.is_none_or(|state| state == follows),
            };
            assert!(allowed, "pair {a}->{b} is {follows}, acknowledged {acked:?}, unanswered {unanswered:?}");
        }
        let me = data(server.gql(Some(&people[a].token), "{ me { followingCount } }", json!({})));
        assert_eq!(me["me"]["followingCount"], following, "user {a}'s count agrees with the pairs");
    }
}

/// Follows and unfollows random pairs until the server dies; returns the
/// last acknowledged state of each pair touched and the request in flight
/// when it died (pair, wanted state).
#[allow(clippy::type_complexity)]
fn follow_traffic(
    addr: &str,
    tokens: &[String],
    ids: &[String],
) -> (std::collections::HashMap<(usize, usize), bool>, Option<((usize, usize), bool)>) {
    let mut acknowledged = std::collections::HashMap::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    loop {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let a = (state % tokens.len() as u64) as usize;
        let b = ((state >> 8) % tokens.len() as u64) as usize;
        if a == b {
            continue;
        }
        let wanted = (state >> 16).is_multiple_of(2);
        let query = if wanted { FOLLOW } else { UNFOLLOW };
        match try_gql(addr, Some(&tokens[a]), query, json!({"id": ids[b]})) {
            Ok(response) if response.get("errors").is_none() => {
                acknowledged.insert((a, b), wanted);
            }
            Ok(response) => panic!("follow traffic failed: {response}"),
            Err(_) => return (acknowledged, Some(((a, b), wanted))),
        }
    }
}
