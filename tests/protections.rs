//! The gateway's protections over real HTTP: hostile input gets its clear
//! error while honest requests keep being served with memory bounded; rate
//! limits answer 429 with Retry-After and RATE_LIMITED, recover, and keep
//! one noisy client from blocking another; credential stuffing is refused
//! early; /metrics parses and moves with traffic; SIGTERM under booking
//! load answers every accepted request and loses no acknowledged booking.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn post(server: &Server, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(&server.addr, "POST", "/graphql", &all, body)
}

fn post_json(server: &Server, body: Value) -> HttpResponse {
    post(server, &[], body.to_string().as_bytes())
}

fn code_of(response: &HttpResponse) -> String {
    let body = response.json();
    let first = match &body {
        Value::Array(many) => many[0].clone(),
        single => single.clone(),
    };
    error_code(&first)
}

fn resident_bytes(server: &Server) -> f64 {
    metric(server, "process_resident_memory_bytes").expect("an RSS gauge").parse().unwrap()
}

/// Asserts the server still answers an honest request.
fn assert_serving(server: &Server) {
    let response = post_json(server, json!({"query": "{ events(first: 1) { totalCount } }"}));
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(response.json()["data"]["events"]["totalCount"].is_number());
}

/// A client still sending an oversized body when the server has decided to
/// refuse it gets to send the rest and reads the 413, instead of a reset
/// connection (or a broken pipe as it writes).
#[test]
fn an_oversized_body_sent_in_two_parts_is_answered_413() {
    use std::io::{Read, Write};
    let dir = TempDir::new("oversized");
    let server = Server::start(dir.path(), &["--body-bytes-max", "1024"]);
    let body = vec![b' '; 4 << 20];
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body[..8 * 1024]).unwrap();
    // Past the limit: the server has refused by now, and is still reading.
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&body[8 * 1024..]).expect("the rest of the body is read, not reset");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("the answer arrives");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("BAD_USER_INPUT"), "{text}");
}

/// A body announced far past the limit (more than would be drained) is
/// refused at once, not after the request timeout spent waiting for it.
#[test]
fn a_body_announced_far_past_the_limit_is_refused_at_once() {
    use std::io::{Read, Write};
    let dir = TempDir::new("announced");
    let server = Server::start(dir.path(), &["--body-bytes-max", "1024"]);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        server.addr
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    assert_serving(&server);
}

#[test]
fn hostile_input_gets_clear_errors_and_honest_requests_keep_working() {
    let dir = TempDir::new("hostile");
    let server = Server::start(dir.path(), &["--rate-limit-ip", "0"]);
    let before = resident_bytes(&server);
    let depth_bomb = format!("{{ {}id{} }}", "me { ".repeat(40), " }".repeat(40));
    let aliases: String = (0..2_000).map(|i| format!("a{i}: __typename ")).collect();
    let wide = format!("{{ {aliases} }}");
    let roots: String = (0..25).map(|i| format!("r{i}: me {{ id }} ")).collect();
    let people = "id name role followerCount followingCount email";
    let nested_lists = format!("{{ myBookings {{ event {{ friendsGoing(first: 100) {{ {people} }} whosGoing(first: 100) {{ {people} }} }} }} }}");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("depth bomb", json!({"query": depth_bomb}).to_string().into_bytes(), 400, "QUERY_TOO_COMPLEX"),
        ("thousands of aliases", json!({"query": wide}).to_string().into_bytes(), 400, "QUERY_TOO_COMPLEX"),
        (
            "too many root fields",
            json!({"query": format!("{{ {roots} }}")}).to_string().into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        ("nested page sizes", json!({"query": nested_lists}).to_string().into_bytes(), 400, "QUERY_TOO_COMPLEX"),
        (
            "a huge batch",
            Value::Array(vec![json!({"query": "{ __typename }"}); 500]).to_string().into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        (
            "a huge query text",
            json!({"query": format!("{{ __typename }} #{}", "x".repeat(40_000))}).to_string().into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        (
            "huge variables",
            json!({"query": "{ __typename }", "variables": {"pad": "x".repeat(200_000)}}).to_string().into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        ("an oversized body", vec![b' '; 2 << 20], 413, "BAD_USER_INPUT"),
        ("invalid UTF-8", b"{\"query\": \"{ \xff\xfe }\"}".to_vec(), 400, "BAD_USER_INPUT"),
        ("malformed JSON", b"{\"query\": ".to_vec(), 400, "BAD_USER_INPUT"),
        ("a JSON number", b"42".to_vec(), 400, "BAD_USER_INPUT"),
        (
            "a fragment cycle",
            json!({"query": "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"})
                .to_string()
                .into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        (
            "an absurd first",
            json!({"query": "{ events(first: 1000000000) { totalCount } }"}).to_string().into_bytes(),
            200,
            "BAD_USER_INPUT",
        ),
        (
            "a negative first",
            json!({"query": "{ recommendedEvents(first: -5) { id } }"}).to_string().into_bytes(),
            200,
            "BAD_USER_INPUT",
        ),
        (
            "an unknown operation",
            json!({"query": "query A { __typename }", "operationName": "B"}).to_string().into_bytes(),
            200,
            "BAD_USER_INPUT",
        ),
        ("an unknown field", json!({"query": "{ doesNotExist }"}).to_string().into_bytes(), 200, "BAD_USER_INPUT"),
        ("a syntax error", json!({"query": "{ events( }"}).to_string().into_bytes(), 200, "BAD_USER_INPUT"),
        (
            "a bad persisted query hash",
            json!({"query": "{ __typename }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "zz"}}})
                .to_string()
                .into_bytes(),
            400,
            "BAD_USER_INPUT",
        ),
        (
            "a persisted query hash not of the query sent",
            json!({"query": "{ __typename }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ab".repeat(32)}}})
                .to_string()
                .into_bytes(),
            400,
            "BAD_USER_INPUT",
        ),
        ("an empty batch", b"[]".to_vec(), 400, "BAD_USER_INPUT"),
        (
            "a list literal nested 2,000 deep (it overflowed a request thread's stack)",
            json!({"query": format!("{{ __type(name: {}1{}) {{ name }} }}", "[".repeat(2_000), "]".repeat(2_000))})
                .to_string()
                .into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
        (
            "a variable's default nested 2,000 deep",
            json!({"query": format!("query($a: String = {}1{}) {{ __typename }}", "[".repeat(2_000), "]".repeat(2_000))})
                .to_string()
                .into_bytes(),
            400,
            "QUERY_TOO_COMPLEX",
        ),
    ];
    for _round in 0..3 {
        for (name, body, status, code) in &cases {
            let response = post(&server, &[], body);
            assert_eq!(response.status, *status, "{name}: {}", response.text());
            assert_eq!(code_of(&response), *code, "{name}");
            assert_serving(&server);
        }
    }
    let wrong_type =
        http(&server.addr, "POST", "/graphql", &[("Content-Type", "text/plain")], b"{\"query\":\"{ __typename }\"}");
    assert_eq!((wrong_type.status, code_of(&wrong_type)), (400, "BAD_USER_INPUT".into()));
    let after = resident_bytes(&server);
    assert!(after < before + 256.0 * 1024.0 * 1024.0, "memory grew from {before} to {after} bytes");
}

#[test]
fn persisted_queries_run_by_hash() {
    let dir = TempDir::new("apq");
    let server = Server::start(dir.path(), &[]);
    let query = "{ events(first: 3) { totalCount } }";
    let hash = api::limits::query_hash(query);
    let persisted = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});
    let unknown = post_json(&server, json!({"extensions": persisted}));
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json()["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(code_of(&unknown), "PERSISTED_QUERY_NOT_FOUND");
    let stored = post_json(&server, json!({"query": query, "extensions": persisted}));
    assert_eq!(stored.json()["data"]["events"]["totalCount"], 0);
    let by_hash = post_json(&server, json!({"extensions": persisted}));
    assert_eq!(by_hash.json()["data"]["events"]["totalCount"], 0, "{}", by_hash.text());
}

#[test]
fn rate_limits_answer_429_recover_and_isolate_clients() {
    let dir = TempDir::new("rate");
    let server = Server::start(dir.path(), &["--rate-limit-token", "5", "--rate-limit-ip", "5"]);
    let (noisy, _) = register(&server, "noisy@example.com", "ATTENDEE");
    let (quiet, _) = register(&server, "quiet@example.com", "ATTENDEE");
    let body = json!({"query": "{ me { id } }"}).to_string();
    let as_user = |token: &str| post(&server, &[("Authorization", &format!("Bearer {token}"))], body.as_bytes());
    let mut limited = None;
    for _ in 0..40 {
        let response = as_user(&noisy);
        if response.status == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("a burst past the budget is refused");
    assert_eq!(code_of(&limited), "RATE_LIMITED");
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(as_user(&quiet).status, 200, "one noisy client does not block another");
    std::thread::sleep(Duration::from_secs(retry_after));
    assert_eq!(as_user(&noisy).status, 200, "the budget comes back");
}

/// Each operation of a batch pays the caller's budget: a batch of ten
/// expensive searches is ten requests' work, not one.
#[test]
fn each_operation_of_a_batch_pays_the_rate_limit() {
    let dir = TempDir::new("rate-batch");
    // Five a second, bursts of ten.
    let server = Server::start(dir.path(), &["--rate-limit-ip", "5"]);
    let batch: Vec<Value> = (0..10).map(|_| json!({"query": "{ __typename }"})).collect();
    let first = post_json(&server, json!(batch));
    assert_eq!(first.status, 200, "{}", first.text());
    let second = post_json(&server, json!(batch));
    assert_eq!(second.status, 429, "ten more at once is past the burst: {}", second.text());
    assert_eq!(code_of(&second), "RATE_LIMITED");

    // A batch past the batch limit is refused for its size, charged as one
    // request: sent twice, it is told the same both times.
    let other_dir = TempDir::new("rate-batch-size");
    let other = Server::start(other_dir.path(), &["--rate-limit-ip", "5"]);
    let too_big: Vec<Value> = (0..11).map(|_| json!({"query": "{ __typename }"})).collect();
    for _ in 0..2 {
        let refused = post_json(&other, json!(too_big));
        assert_eq!((refused.status, code_of(&refused)), (400, "QUERY_TOO_COMPLEX".to_string()), "{}", refused.text());
    }
}

/// Each `login` and `register` pays the address's sign-in budget, however
/// many one request holds (aliases) and whether it comes over HTTP or a
/// WebSocket; a refusal's message and Retry-After name the same wait.
#[test]
fn every_sign_in_pays_the_budget_aliased_or_over_a_websocket() {
    let dir = TempDir::new("aliases");
    let server = Server::start(dir.path(), &["--trust-proxy-headers", "--rate-limit-credentials", "10"]);
    let aliased = |from: usize, to: usize| {
        let fields: String = (from..to)
            .map(|n| format!("r{n}: register(email: \"alias{n}@example.com\", password: \"password123\", name: \"A\") {{ token }} "))
            .collect();
        json!({"query": format!("mutation {{ {fields} }}")}).to_string()
    };
    let from = |ip: &str, body: &str| post(&server, &[("X-Forwarded-For", ip)], body.as_bytes());
    let three = from("203.0.113.9", &aliased(0, 3));
    assert_eq!(three.status, 200, "{}", three.text());
    assert_eq!(three.json()["data"].as_object().map(|fields| fields.len()), Some(3));
    let eight = from("203.0.113.9", &aliased(3, 11));
    assert_eq!(eight.status, 429, "3 + 8 sign-ins are over a budget of 10: {}", eight.text());
    assert_eq!(code_of(&eight), "RATE_LIMITED");
    let retry_after = eight.header("retry-after").expect("Retry-After").to_string();
    let message = eight.json()["errors"][0]["message"].as_str().unwrap().to_string();
    assert!(message.ends_with(&format!("retry in {retry_after} s")), "{message} / Retry-After {retry_after}");
    // A refused request costs nothing: 3 + 7 more fit the budget of 10.
    let seven = from("203.0.113.9", &aliased(3, 10));
    assert_eq!(seven.status, 200, "{}", seven.text());
    let twelve = from("198.51.100.9", &aliased(11, 23));
    assert_eq!(twelve.status, 429, "12 sign-ins in one request are over a budget of 10");
    // Nothing of a refused request ran.
    let refused_account =
        json!({"query": "mutation { login(email: \"alias15@example.com\", password: \"password123\") { token } }"});
    let tried = from("192.0.2.50", &refused_account.to_string());
    assert_eq!(code_of(&tried), "UNAUTHENTICATED", "{}", tried.text());

    // Over a WebSocket (from 127.0.0.1): refused by the eleventh.
    let mut ws = common::ws::Ws::connect(&server.addr, None).acknowledged();
    for n in 0..11 {
        let query = format!(
            "mutation {{ register(email: \"ws{n}@example.com\", password: \"password123\", name: \"W\") {{ token }} }}"
        );
        ws.subscribe(&n.to_string(), &query, json!({}));
    }
    let mut codes = Vec::new();
    while codes.len() < 11 {
        let message = ws.next();
        match message["type"].as_str() {
            Some("next") => {
                codes.push(message["payload"]["errors"][0]["extensions"]["code"].as_str().unwrap_or("ok").to_string())
            }
            Some("error") => {
                codes.push(message["payload"][0]["extensions"]["code"].as_str().unwrap_or("?").to_string())
            }
            Some("complete") => {}
            _ => panic!("unexpected {message}"),
        }
    }
    assert!(codes.iter().any(|code| code == "RATE_LIMITED"), "11 sign-ins over one socket: {codes:?}");
    assert_eq!(codes.iter().filter(|code| *code == "ok").count(), 10, "{codes:?}");
}

#[test]
fn credential_stuffing_is_refused_long_before_the_sixtieth_try() {
    let dir = TempDir::new("stuffing");
    let server = Server::start(dir.path(), &["--trust-proxy-headers"]);
    let (_, _) = register(&server, "victim@example.com", "ATTENDEE");
    let login =
        json!({"query": "mutation { login(email: \"victim@example.com\", password: \"wrong-guess\") { token } }"})
            .to_string();
    // From one address: the per-address budget for sign-ins.
    let from = |ip: &str| post(&server, &[("X-Forwarded-For", ip)], login.as_bytes());
    let refused_at =
        (1..=60).find(|_| from("203.0.113.7").status == 429).expect("60 tries from one address are refused");
    assert!(refused_at <= 12, "refused only at try {refused_at}");
    // Against one email from many addresses: failures per email.
    let refused_at = (1..=60)
        .find(|n| {
            let response = from(&format!("198.51.100.{n}"));
            let refused = response.status == 429 && code_of(&response) == "RATE_LIMITED";
            if refused {
                // The wait the message names is the Retry-After header's.
                let retry_after = response.header("retry-after").expect("Retry-After").to_string();
                let message = response.json()["errors"][0]["message"].as_str().unwrap().to_string();
                assert!(
                    message.ends_with(&format!("retry in {retry_after} s")),
                    "{message} / Retry-After {retry_after}"
                );
            }
            refused
        })
        .expect("60 failed tries against one email are refused");
    assert!(refused_at <= 7, "refused only at try {refused_at}");
    // The right password from a fresh address is still refused while the
    // email waits: guessing cannot tell which try was right.
    let right =
        json!({"query": "mutation { login(email: \"victim@example.com\", password: \"password123\") { token } }"})
            .to_string();
    let response = post(&server, &[("X-Forwarded-For", "192.0.2.200")], right.as_bytes());
    assert_eq!(response.status, 429);
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let dir = TempDir::new("metrics");
    let server = Server::start(dir.path(), &[]);
    let scrape = || {
        let response = http(&server.addr, "GET", "/metrics", &[], b"");
        assert_eq!(response.status, 200);
        assert!(response.header("content-type").unwrap().starts_with("text/plain"));
        let lines = response.text().lines().map(|l| Ok(l.to_string())).collect::<Vec<_>>();
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("the exposition parses")
    };
    let value = |scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let before = scrape();
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let (_, tt) = event_with_tickets(&server, &org, "Metered", "2097-06-01T20:00:00Z", general_admission(100, 1), true);
    let book = "mutation Buy($i: BookInput!) { bookTickets(input: $i) { id } }";
    let known = |scrape: &prometheus_parse::Scrape| value(scrape, "marquee_graphql_known_operations_total", None);
    let unknown = known(&scrape());
    data(server.gql(Some(&org), book, json!({"i": {"ticketTypeId": tt, "quantity": 1, "idempotencyKey": "a"}})));
    let sold_out =
        server.gql(Some(&org), book, json!({"i": {"ticketTypeId": tt, "quantity": 1, "idempotencyKey": "b"}}));
    assert_eq!(error_code(&sold_out), "SOLD_OUT");
    // The second booking skipped validation (the first passed it); one
    // whose variables do not suit the arguments is validated in full.
    let bad = server.gql(Some(&org), book, json!({"i": {"ticketTypeId": tt, "quantity": "x", "idempotencyKey": "c"}}));
    assert!(error_message(&bad).contains("Invalid value for argument"), "{bad}");
    let after = scrape();
    assert_eq!(known(&after) - unknown, 1.0);
    assert_eq!(
        value(&after, "marquee_bookings_total", Some(("outcome", "booked")))
            - value(&before, "marquee_bookings_total", Some(("outcome", "booked"))),
        1.0
    );
    assert_eq!(value(&after, "marquee_bookings_total", Some(("outcome", "sold_out"))), 1.0);
    assert_eq!(value(&after, "marquee_graphql_errors_total", Some(("code", "SOLD_OUT"))), 1.0);
    assert!(value(&after, "marquee_http_request_duration_seconds_count", Some(("operation", "Buy"))) >= 2.0);
    assert!(value(&after, "marquee_log_head_seq", None) > value(&before, "marquee_log_head_seq", None));
    assert!(
        value(&after, "marquee_store_flush_seconds_count", None)
            > value(&before, "marquee_store_flush_seconds_count", None)
    );
    assert!(value(&after, "process_resident_memory_bytes", None) > 0.0);
    assert!(
        value(&after, "marquee_store_rows_behind_lag", None) <= value(&after, "marquee_log_head_seq", None),
        "the lag counts log entries"
    );
    for name in [
        "marquee_log_reader_lag",
        "marquee_store_rows_behind_lag",
        "marquee_websocket_connections",
        "marquee_subscriptions",
        "process_cpu_seconds_total",
        "marquee_ledger_shard_lock_wait_seconds_count",
    ] {
        assert!(after.samples.iter().any(|s| s.metric == name), "{name} is exported");
    }
    assert_eq!(http(&server.addr, "GET", "/readyz", &[], b"").status, 200);
}

#[test]
fn sigterm_under_load_answers_every_accepted_request_and_loses_no_booking() {
    let dir = TempDir::new("sigterm-load");
    let server = Server::start(dir.path(), &["--rate-limit-token", "0"]);
    let (org, _) = register(&server, "org@example.com", "ORGANIZER");
    let ticket = general_admission(100, 100_000);
    let (_, tt) = event_with_tickets(&server, &org, "Last call", "2097-06-01T20:00:00Z", ticket, true);
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let unanswered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (addr, org, tt) = (server.addr.clone(), org.clone(), tt.clone());
            let (acknowledged, unanswered, stop) = (acknowledged.clone(), unanswered.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let body = json!({"query": "mutation($i: BookInput!) { bookTickets(input: $i) { id } }",
                        "variables": {"i": {"ticketTypeId": tt, "quantity": 1, "idempotencyKey": format!("t{t}-{i}")}}});
                    let auth = format!("Bearer {org}");
                    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
                    match try_http(&addr, "POST", "/graphql", &headers, body.to_string().as_bytes()) {
                        Ok(response) if response.status == 200 => {
                            let id = response.json()["data"]["bookTickets"]["id"].as_str().map(str::to_string);
                            acknowledged.lock().unwrap().push(id.expect("a booking"));
                        }
                        Ok(response) => {
                            assert_eq!(response.status, 503, "only a shutting-down refusal: {}", response.text());
                            return;
                        }
                        // Refused: the server stopped listening.
                        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
                        Err(error) => unanswered.lock().unwrap().push(error.to_string()),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let code = server.stop();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(code, Some(0), "a clean exit");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(*unanswered.lock().unwrap(), Vec::<String>::new(), "every accepted request was answered");
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 10, "the load ran: {}", acknowledged.len());
    let server = Server::start(dir.path(), &[]);
    let mine = data(server.gql(Some(&org), "{ myBookings { id status } }", json!({})));
    let stored: std::collections::HashSet<String> =
        mine["myBookings"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged booking {id} survived the shutdown");
    }
}

/// A body that stops coming (a client trickling it, or silent half-way)
/// gets 408 once the request timeout passes, and its connection closes, so
/// it cannot hold a `--connections-max` slot.
#[test]
fn a_body_that_stops_coming_is_answered_408_and_its_connection_closed() {
    use std::io::{Read, Write};
    let dir = TempDir::new("slow-body");
    let server = Server::start(dir.path(), &["--request-timeout", "1s"]);
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = "POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(br#"{"query":"#).unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1000 ms") && answer.contains("BAD_USER_INPUT"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15), "the connection closed after the answer");
    assert_serving(&server);
}

/// The server speaks HTTP/1.1 only: an HTTP/2 client (prior knowledge)
/// hears the server's SETTINGS and a GOAWAY saying HTTP_1_1_REQUIRED, and
/// the connection closes at once, giving its `--connections-max` slot
/// back (hyper's HTTP/2 would hold an idle one open for good).
#[test]
fn an_http2_connection_is_told_http_1_1_is_required_and_closed() {
    use std::io::{Read, Write};
    let dir = TempDir::new("h2c");
    let server = Server::start(dir.path(), &["--connections-max", "1"]);
    let settings = [0u8, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let goaway = [0u8, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd];
    let refusal = [&settings[..], &goaway[..]].concat();
    let attempt = || {
        let mut socket = std::net::TcpStream::connect(&server.addr).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        // The preface and an empty SETTINGS frame, as h2 clients open.
        socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
        // The server drains what the client sends until the client closes.
        drop(socket);
        assert!(started.elapsed() < Duration::from_secs(3), "closed at once, not after {:?}", started.elapsed());
        answer
    };
    for _ in 0..3 {
        // The one slot comes back once the server has seen the last
        // connection's close: until then a connection is closed at accept,
        // with nothing said.
        let deadline = Instant::now() + Duration::from_secs(3);
        let answer = loop {
            let answer = attempt();
            if !answer.is_empty() || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(answer, refusal, "SETTINGS then GOAWAY(HTTP_1_1_REQUIRED)");
    }
    // The one slot comes back; HTTP/1.1 is served.
    let deadline = Instant::now() + Duration::from_secs(3);
    while try_http(&server.addr, "GET", "/healthz", &[], b"").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "HTTP/1.1 is not served after the refusals");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection that is opened and never sends a byte, or stops inside
/// the first bytes of HTTP/2's preface (where hyper's version sniff has no
/// timer), gives its `--connections-max` slot back after the 10 s allowed
/// for a request's head, so idle sockets cannot lock honest clients out.
#[test]
fn a_connection_that_never_speaks_gives_its_slot_back() {
    use std::io::{Read, Write};
    let dir = TempDir::new("silent");
    let server = Server::start(dir.path(), &["--connections-max", "2"]);
    let silent: Vec<std::net::TcpStream> =
        (0..2).map(|_| std::net::TcpStream::connect(&server.addr).unwrap()).collect();
    (&silent[1]).write_all(b"PRI * HT").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Both slots are taken: a third connection is closed at accept.
    assert!(try_http(&server.addr, "GET", "/healthz", &[], b"").is_err(), "the limit holds");
    let started = Instant::now();
    for mut socket in silent {
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut byte = [0u8; 1];
        let read = socket.read(&mut byte);
        // Closed with bytes unread, the kernel resets the connection.
        let closed =
            matches!(&read, Ok(0)) || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(closed, "closed without an answer: {read:?}");
    }
    let waited = started.elapsed();
    assert!(waited > Duration::from_secs(5) && waited < Duration::from_secs(20), "closed after {waited:?}");
    assert_serving(&server);
}
