//! End-to-end tests of the `marquee` binary itself: HTTP transport and its
//! errors, the bundled IDE, durability across a restart, configuration
//! precedence and start-up failures, and the `user` commands.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Every environment variable the binary reads; cleared so the tests do not
/// depend on the environment they run in.
const MARQUEE_ENV: &[&str] = &[
    "MARQUEE_CONFIG",
    "MARQUEE_DATA_DIR",
    "MARQUEE_CACHE_MB",
    "MARQUEE_LISTEN",
    "MARQUEE_TOKEN_TTL",
    "MARQUEE_BODY_BYTES_MAX",
    "MARQUEE_LOG_FORMAT",
    "MARQUEE_HOLD_TTL",
    "MARQUEE_LEDGER_SHARDS",
];

/// How long a command that should exit by itself may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// `marquee` with a clean environment, quiet logs and no stdin.
fn marquee(args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command.args(args).env("RUST_LOG", "warn").stdin(Stdio::null());
    for name in MARQUEE_ENV {
        command.env_remove(name);
    }
    command
}

/// `marquee serve` on `data_dir` with a small cache, the rest up to the caller.
fn serve(data_dir: &Path, extra: &[&str]) -> Command {
    let mut command = marquee(&["serve", "--cache-mb", "16", "--data-dir"]);
    command.arg(data_dir).args(extra);
    command
}

/// How a command that ran to its end went.
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `command` to completion, feeding it `stdin`; kills it and fails
/// the test when it outlives [`COMMAND_TIMEOUT`].
fn run(mut command: Command, stdin: &[u8]) -> Finished {
    command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("start marquee");
    let mut input = child.stdin.take().unwrap();
    // The command may exit before reading its input; that is its business.
    let _ = input.write_all(stdin);
    drop(input);
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not exit within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished { code: status.code(), stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// Asserts the server answers its health check.
fn assert_serving(server: &Server) {
    assert_eq!(http(&server.addr, "GET", "/healthz", &[], b"").status, 200);
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Asserts a GraphQL response (single or batch) has only errors with a
/// message and a contract code.
fn assert_errors_coded(response: &Value) {
    let responses = match response {
        Value::Array(many) => many.clone(),
        single => vec![single.clone()],
    };
    for one in &responses {
        for error in one["errors"].as_array().into_iter().flatten() {
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "error without a message: {response}");
            assert!(
                error["extensions"]["code"].as_str().is_some_and(|c| !c.is_empty()),
                "error without extensions.code: {response}"
            );
        }
    }
}

/// Asserts an HTTP answer is a GraphQL error body with `code` and no data.
fn assert_request_error(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.text());
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "content-type {content_type:?}, body: {}", response.text());
    let body = response.json();
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("no errors array: {body}"));
    assert!(!errors.is_empty(), "empty errors: {body}");
    assert_errors_coded(&body);
    assert_eq!(error_code(&body), code, "body: {body}");
    assert!(body.get("data").is_none_or(Value::is_null), "a rejected request has no data: {body}");
}

fn post_graphql(addr: &str, content_type: Option<&str>, body: &[u8]) -> HttpResponse {
    let headers: Vec<(&str, &str)> = content_type.map(|value| ("Content-Type", value)).into_iter().collect();
    http(addr, "POST", "/graphql", &headers, body)
}

/// A valid request padded with a variable to `bytes` bytes.
fn padded_request(bytes: usize) -> Vec<u8> {
    let empty = serde_json::to_vec(&json!({ "query": "{ me { id } }", "variables": { "pad": "" } })).unwrap();
    let pad = "x".repeat(bytes - empty.len());
    let body = serde_json::to_vec(&json!({ "query": "{ me { id } }", "variables": { "pad": pad } })).unwrap();
    assert_eq!(body.len(), bytes);
    body
}

// ---------------------------------------------------------------- HTTP ----

#[test]
fn health_and_readiness_answer_200() {
    let dir = TempDir::new("health");
    let server = Server::start(dir.path(), &[]);
    for path in ["/healthz", "/readyz"] {
        let response = http(&server.addr, "GET", path, &[], b"");
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    assert_eq!(server.stop(), Some(0));
}

/// `marquee serve` on `dir/data` logging JSON lines at info (access lines
/// included) to `dir/server.log`; the log's path.
fn serve_with_json_log(dir: &Path, extra: &[&str]) -> (Server, std::path::PathBuf) {
    let log_path = dir.join("server.log");
    let mut command = serve(&dir.join("data"), &["--listen", "127.0.0.1:0", "--log-format", "json"]);
    command.args(extra);
    command.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(std::fs::File::create(&log_path).unwrap());
    (Server::spawn(command), log_path)
}

/// The fields of the JSON log lines in `path` that `keep` selects.
fn logged_fields(path: &Path, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let log = std::fs::read_to_string(path).unwrap();
    let lines = log.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok());
    lines.map(|line| line["fields"].clone()).filter(|fields| keep(fields)).collect()
}

/// Each GraphQL request is logged once, with its status and its answer's
/// error codes: a success with none, a refused operation and a field's
/// error with theirs, and a GET without a query too.
#[test]
fn the_access_log_names_each_requests_error_codes() {
    let dir = TempDir::new("access-log");
    let (server, log_path) = serve_with_json_log(dir.path(), &[]);
    let post = |body: &[u8], id: &str| {
        let headers = [("Content-Type", "application/json"), ("X-Request-Id", id)];
        http(&server.addr, "POST", "/graphql", &headers, body).status
    };
    assert_eq!(post(br#"{"query":"{ __typename }"}"#, "fine"), 200);
    assert_eq!(post(br#"{"query":"{ nope }"}"#, "invalid"), 200);
    assert_eq!(post(br#"{"query":"{ myBookings { id } }"}"#, "anonymous"), 200);
    let bare = http(&server.addr, "GET", "/graphql", &[("X-Request-Id", "no-query")], b"");
    assert_eq!(bare.status, 400, "{}", bare.text());
    assert_eq!(server.stop(), Some(0));

    let line_of = |id: &str| -> Value {
        let lines = logged_fields(&log_path, |fields| fields["request_id"] == id);
        assert_eq!(lines.len(), 1, "one line for {id}: {lines:?}");
        lines[0].clone()
    };
    assert_eq!(line_of("fine").get("errors"), None, "no errors, no field");
    assert_eq!(line_of("invalid")["errors"], "BAD_USER_INPUT");
    assert_eq!(line_of("anonymous")["errors"], "UNAUTHENTICATED");
    let bare = line_of("no-query");
    assert_eq!((bare["status"].as_u64(), bare["errors"].as_str()), (Some(400), Some("BAD_USER_INPUT")), "{bare}");
}

/// Rate-limited requests, the client's to make at will, are logged at most
/// once a second, the next line saying how many were left out: a flood of
/// 429s cannot fill the disk with log lines.
#[test]
fn rate_limited_requests_are_logged_at_most_once_a_second() {
    let dir = TempDir::new("flood-log");
    let (server, log_path) = serve_with_json_log(dir.path(), &["--rate-limit-ip", "1"]);
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let headers = [("Content-Type", "application/json")];
        if http(&server.addr, "POST", "/graphql", &headers, br#"{"query":"{ __typename }"}"#).status == 429 {
            refused += 1;
        }
    }
    assert!(refused > 100, "the flood was refused: {refused}");
    assert_eq!(server.stop(), Some(0));
    let lines = logged_fields(&log_path, |fields| fields["outcome"] == "rate_limited");
    assert!((1..=4).contains(&lines.len()), "{} lines for {refused} refusals: {lines:?}", lines.len());
    let left_out: u64 = lines.iter().filter_map(|fields| fields["rate_limited_left_out"].as_u64()).sum();
    assert!(left_out as usize + lines.len() >= refused / 2, "the lines count what they left out: {left_out}");
}

/// Every GraphQL response carries a request id (the one logged with it):
/// the client's X-Request-Id when it is sane, else a fresh one, never the
/// same twice.
#[test]
fn every_graphql_response_carries_a_request_id() {
    let dir = TempDir::new("request-id");
    let server = Server::start(dir.path(), &[]);
    let id_of = |given: &[(&str, &str)]| {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend_from_slice(given);
        let response = http(&server.addr, "POST", "/graphql", &headers, br#"{"query":"{ __typename }"}"#);
        assert_eq!(response.status, 200, "{}", response.text());
        response.header("x-request-id").expect("an x-request-id header").to_string()
    };
    assert_eq!(id_of(&[("X-Request-Id", "trace-42.a_b")]), "trace-42.a_b", "a sane id is kept");
    let long = "a".repeat(65);
    let mut fresh = Vec::new();
    for given in [&[][..], &[("X-Request-Id", "")], &[("X-Request-Id", "bad id;")], &[("X-Request-Id", long.as_str())]]
    {
        let id = id_of(given);
        let (pid, n) = id.split_once('-').expect("a fresh id is pid-counter");
        assert_eq!(u32::from_str_radix(pid, 16).unwrap(), server.child.id(), "{id}");
        assert!(u64::from_str_radix(n, 16).is_ok(), "{id}");
        fresh.push(id);
    }
    let distinct: std::collections::HashSet<&String> = fresh.iter().collect();
    assert_eq!(distinct.len(), fresh.len(), "fresh ids repeat: {fresh:?}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn sigterm_right_after_start_exits_cleanly() {
    // A supervisor may stop the server the moment it says it is listening;
    // that must be a clean stop (exit 0), not death by the signal.
    for _ in 0..5 {
        let dir = TempDir::new("earlyterm");
        let server = Server::start(dir.path(), &[]);
        assert_eq!(server.stop(), Some(0), "SIGTERM right after \"marquee listening on\" killed the process");
    }
    // A hangup (a closed terminal) stops it as cleanly.
    let dir = TempDir::new("hangup");
    let mut server = Server::start(dir.path(), &[]);
    assert!(Command::new("kill").args(["-HUP", &server.child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not stop the server");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "SIGHUP is a clean stop, not death by the signal");
}

/// Every URL the page would load or call: src/href/action attributes,
/// CSS url(...) and the first argument of fetch(...).
fn referenced_urls(page: &str) -> Vec<String> {
    let mut urls = Vec::new();
    let lower = page.to_ascii_lowercase();
    for opener in ["src=", "href=", "action=", "url(", "fetch(", "import("] {
        for (at, _) in lower.match_indices(opener) {
            let rest = page[at + opener.len()..].trim_start();
            let rest = rest.trim_start_matches(['"', '\'', '`']);
            let end = rest
                .find(|c: char| c == '"' || c == '\'' || c == '`' || c == ')' || c == ',' || c.is_whitespace())
                .unwrap_or(rest.len());
            urls.push(rest[..end].to_string());
        }
    }
    urls
}

#[test]
fn the_ide_is_served_and_needs_no_internet() {
    let dir = TempDir::new("ide");
    let server = Server::start(dir.path(), &[]);
    let response = http(&server.addr, "GET", "/graphql", &[("Accept", "text/html")], b"");
    assert_eq!(response.status, 200);
    assert!(response.header("content-type").unwrap_or_default().starts_with("text/html"), "{:?}", response.headers);
    let page = response.text();
    assert!(page.to_ascii_lowercase().contains("<html"), "not an HTML page: {page}");
    assert!(page.contains("<script"), "the IDE has no script");
    let urls = referenced_urls(&page);
    assert!(!urls.is_empty(), "the IDE references nothing, not even the endpoint: {page}");
    for url in &urls {
        let lower = url.to_ascii_lowercase();
        assert!(
            !lower.starts_with("http:") && !lower.starts_with("https:") && !lower.starts_with("//"),
            "the IDE loads {url} from the network; it must work offline"
        );
    }
    // Checks like the above miss a URL built in code; the page names none at all.
    assert!(!page.contains("http://") && !page.contains("https://"), "the IDE names an external URL");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn unusable_requests_get_400_with_a_graphql_error() {
    let dir = TempDir::new("badreq");
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let good = br#"{"query":"{ me { id } }"}"#;

    let wrong_type = post_graphql(addr, Some("text/plain"), good);
    assert_request_error(&wrong_type, 400, "BAD_USER_INPUT");
    assert!(error_message(&wrong_type.json()).contains("Content-Type"), "{}", wrong_type.text());
    assert_request_error(&post_graphql(addr, None, good), 400, "BAD_USER_INPUT");
    assert_request_error(&post_graphql(addr, Some("application/x-www-form-urlencoded"), good), 400, "BAD_USER_INPUT");

    assert_request_error(
        &post_graphql(addr, Some("application/json"), br#"{"query": "{ me { id } }""#),
        400,
        "BAD_USER_INPUT",
    );
    assert_request_error(&post_graphql(addr, Some("application/json"), b"not json at all"), 400, "BAD_USER_INPUT");
    assert_request_error(&post_graphql(addr, Some("application/json"), b""), 400, "BAD_USER_INPUT");
    // No query at all (a misspelt key, or an empty one) is not a GraphQL request.
    for no_query in [&br#"{"qeury":"{ me { id } }"}"#[..], br#"{"query":"  "}"#, br#"[{"query":"{ me { id } }"},{}]"#] {
        let response = post_graphql(addr, Some("application/json"), no_query);
        assert_request_error(&response, 400, "BAD_USER_INPUT");
        assert!(error_message(&response.json()).contains("no query"), "{}", response.text());
    }

    // A body of the wrong shape gets a message about the body, in the
    // client's terms (no names from inside the server).
    let shapes: [(&[u8], &str); 6] = [
        (br#"{"query":"{ me { id } }","variables":[1]}"#, "expected a map"),
        (br#"{"query":"{ me { id } }","operationName":5}"#, "expected a string"),
        (br#"{"query":"{ me { id } }","query":"{ me { id } }"}"#, "duplicate field `query`"),
        (br#""x""#, "a JSON object (one operation) or an array"),
        (b"null", "a JSON object (one operation) or an array"),
        (b"[1]", "expected an operation object"),
    ];
    for (body, says) in shapes {
        let response = post_graphql(addr, Some("application/json"), body);
        assert_request_error(&response, 400, "BAD_USER_INPUT");
        let message = error_message(&response.json());
        assert!(message.starts_with("the body is not a GraphQL request: "), "{message}");
        assert!(message.contains(says), "{}: {message}", String::from_utf8_lossy(body));
        assert!(!["BatchRequest", "untagged", "struct"].iter().any(|rust| message.contains(rust)), "{message}");
    }

    // A compressed body is not read as if it were plain: 415.
    let headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")];
    let gzipped = http(addr, "POST", "/graphql", &headers, b"\x1f\x8b\x08\x00");
    assert_eq!(gzipped.status, 415, "{}", gzipped.text());
    assert_eq!(error_code(&gzipped.json()), "BAD_USER_INPUT");
    assert!(error_message(&gzipped.json()).contains("Content-Encoding gzip"), "{}", gzipped.text());
    let headers = [("Content-Type", "application/json"), ("Content-Encoding", "identity")];
    assert_eq!(http(addr, "POST", "/graphql", &headers, good).status, 200);
    // So is a body compressed as it is sent (a transfer coding before the
    // chunked framing), while chunked alone is read.
    for (codings, status) in [("gzip, chunked", 415), ("chunked", 200)] {
        let head = format!(
            "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: {codings}\r\n\r\n"
        );
        let chunked = [head.as_bytes(), format!("{:x}\r\n", good.len()).as_bytes(), good, b"\r\n0\r\n\r\n"].concat();
        let answer = raw_exchange(addr, &chunked);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{codings}: {answer}");
        if status == 415 {
            assert!(answer.contains("Transfer-Encoding gzip is not supported"), "{answer}");
        }
    }
    // A byte order mark before the JSON is skipped (RFC 8259 allows it).
    let with_bom = [&b"\xEF\xBB\xBF"[..], good].concat();
    let response = post_graphql(addr, Some("application/json"), &with_bom);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json(), json!({ "data": { "me": null } }));

    // The same request with the right type, with or without a charset, works.
    for content_type in ["application/json", "application/json; charset=utf-8"] {
        let ok = post_graphql(addr, Some(content_type), good);
        assert_eq!(ok.status, 200, "{content_type}: {}", ok.text());
        assert_eq!(ok.json(), json!({ "data": { "me": null } }));
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn graphql_errors_all_carry_a_code() {
    let dir = TempDir::new("codes");
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let requests: &[&[u8]] = &[
        br#"{"query":"{ me { id "}"#,
        br#"{"query":"{ nope }"}"#,
        br#"{"query":"query($id: ID!) { user(id: $id) { id } }","variables":{}}"#,
        br#"{"query":"query($id: ID!) { user(id: $id) { id } }","variables":{"id":[1]}}"#,
        br#"{"query":"{ user(id: \"not-an-id\") { id } }"}"#,
        br#"{"query":"mutation { logout }"}"#,
        br#"{"query":"mutation { createVenue(name: \"V\", city: \"C\") { id } }"}"#,
        br#"{"query":"{ a: me { id } } { b: me { id } }"}"#,
        br#"[{"query":"{ me { id } }"},{"query":"{ nope }"},{"query":"mutation { logout }"}]"#,
    ];
    for body in requests {
        let response = post_graphql(addr, Some("application/json"), body);
        assert_eq!(response.status, 200, "{}: {}", String::from_utf8_lossy(body), response.text());
        let value = response.json();
        let has_errors = match &value {
            Value::Array(many) => many.iter().any(|one| one.get("errors").is_some()),
            one => one.get("errors").is_some(),
        };
        assert!(has_errors, "{} should fail: {value}", String::from_utf8_lossy(body));
        assert_errors_coded(&value);
    }
    // An invalid document is told so once, not once per rule it breaks
    // (async-graphql reports this one from two).
    let response = gql(addr, None, "subscription { __typename }", json!({}));
    assert_eq!(response["errors"].as_array().map(Vec::len), Some(1), "{response}");
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    // A bad token is refused with the contract's code, not ignored.
    let response = gql(addr, Some("mq_not_a_real_token"), "{ me { id } }", json!({}));
    assert_eq!(error_code(&response), "UNAUTHENTICATED");
    assert_eq!(server.stop(), Some(0));
}

/// A batch is answered with an array, also a batch of one (batching
/// clients, Apollo's BatchHttpLink among them, send one operation as an
/// array when no other came within their interval, and read an array
/// back); one operation sent alone is answered with an object.
#[test]
fn a_batch_of_one_is_answered_with_an_array_of_one() {
    let dir = TempDir::new("batch-of-one");
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let one = post_graphql(addr, Some("application/json"), br#"[{"query":"{ __typename }"}]"#).json();
    assert_eq!(one, json!([{"data": {"__typename": "Query"}}]));
    let failed = post_graphql(addr, Some("application/json"), br#"[{"query":"{ nope }"}]"#).json();
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{failed}");
    assert_errors_coded(&failed);
    let alone = post_graphql(addr, Some("application/json"), br#"{"query":"{ __typename }"}"#).json();
    assert_eq!(alone, json!({"data": {"__typename": "Query"}}));
    assert_eq!(server.stop(), Some(0));
}

/// GraphQL over HTTP: `application/graphql-response+json` when the client
/// asks for it (a request error is then a 400), `application/json`
/// otherwise (200 for every well-formed request); a request error never
/// carries `data`, a field error keeps it.
#[test]
fn failed_fields_are_null_and_a_null_moves_up_to_the_nearest_nullable_field() {
    let dir = TempDir::new("nulls");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@nulls.example", "ORGANIZER");
    let (attendee, _) = register(&server, "fan@nulls.example", "ATTENDEE");
    let (event, _) =
        event_with_tickets(&server, &org, "Nulls", "2097-06-01T20:00:00Z", general_admission(1000, 10), true);

    // A nullable field that fails is there, as null, in its place.
    let response = server.gql(
        Some(&attendee),
        "query($e: ID!) { __typename a: event(id: $e) { id } b: event(id: \"x\") { id } c: __typename }",
        json!({"e": event}),
    );
    assert_eq!(response["data"]["b"], Value::Null, "{response}");
    assert_eq!(response["data"]["a"]["id"], event.as_str(), "{response}");
    assert_eq!(error_code(&response), "BAD_USER_INPUT");
    assert_eq!(response["errors"][0]["path"], json!(["b"]));
    let body =
        serde_json::to_string(&json!({"query": "{ __typename b: event(id: \"x\") { id } c: __typename }"})).unwrap();
    let text = post_graphql(&server.addr, Some("application/json"), body.as_bytes()).text();
    assert!(text.contains(r#""data":{"__typename":"Query","b":null,"c":"Query"}"#), "in the selection's order: {text}");

    // async-graphql makes an object whose every field failed null, data
    // included; the failed field is still there, as null.
    let response = server.gql(Some(&attendee), "{ event(id: \"x\") { id } }", json!({}));
    assert_eq!(response["data"], json!({"event": null}), "{response}");

    // A non-null field that fails takes its nullable parent with it:
    // whosGoing is [User!]! (organizers only), event is nullable.
    let response = server.gql(
        Some(&attendee),
        "query($e: ID!) { event(id: $e) { id title whosGoing { id } } me { id } }",
        json!({"e": event}),
    );
    assert_eq!(response["data"]["event"], Value::Null, "{response}");
    assert!(response["data"]["me"]["id"].is_string(), "{response}");
    assert_eq!(error_code(&response), "FORBIDDEN");
    assert_eq!(response["errors"][0]["path"], json!(["event", "whosGoing"]));

    // With no nullable field above it, the null takes data: eventAnalytics
    // is EventAnalytics!.
    let response = server.gql(
        Some(&attendee),
        "query($e: ID!) { __typename eventAnalytics(eventId: $e) { sold } }",
        json!({"e": event}),
    );
    assert_eq!(response["data"], Value::Null, "{response}");
    assert_eq!(error_code(&response), "FORBIDDEN");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_required_variable_that_was_not_sent_refuses_the_whole_request() {
    let dir = TempDir::new("variables");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@variables.example", "ORGANIZER");
    let (attendee, _) = register(&server, "fan@variables.example", "ATTENDEE");
    let (event, ticket_type) =
        event_with_tickets(&server, &org, "Variables", "2097-06-01T20:00:00Z", general_admission(1000, 10), true);
    let query = format!(
        "mutation($id: ID!) {{ a: bookTickets(input: {{ticketTypeId: \"{ticket_type}\", quantity: 1, idempotencyKey: \"v1\"}}) {{ id }} b: cancelBooking(id: $id) {{ id }} }}"
    );
    let auth = format!("Bearer {attendee}");
    for (variables, says) in [
        (None, "Variable \"$id\" of required type \"ID!\" was not provided."),
        (Some(json!({"id": null})), "Variable \"$id\" of non-null type \"ID!\" must not be null."),
    ] {
        let mut request = json!({"query": query});
        if let Some(variables) = variables {
            request["variables"] = variables;
        }
        let body = serde_json::to_vec(&request).unwrap();
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/graphql-response+json"),
            ("Authorization", auth.as_str()),
        ];
        let response = http(&server.addr, "POST", "/graphql", &headers, &body);
        assert_eq!(response.status, 400, "a request error: {}", response.text());
        let body = response.json();
        assert!(body.get("data").is_none(), "nothing ran: {body}");
        assert_eq!(error_message(&body), says);
        assert_eq!(error_code(&body), "BAD_USER_INPUT");
        assert_eq!(body["errors"][0]["locations"], json!([{"line": 1, "column": 10}]), "{body}");
    }
    // Neither request booked anything.
    let stock =
        server.gql(Some(&org), "query($e: ID!) { event(id: $e) { ticketTypes { sold } } }", json!({"e": event}));
    assert_eq!(data(stock)["event"]["ticketTypes"][0]["sold"], 0);
    // With the variable, the same request runs: the booking is made, and
    // cancelBooking (Booking!, a root field) fails, which nulls data.
    let ran = server.gql(Some(&attendee), &query, json!({"id": "999999"}));
    assert_eq!(ran["data"], Value::Null, "{ran}");
    assert_eq!(error_code(&ran), "NOT_FOUND");
    let stock =
        server.gql(Some(&org), "query($e: ID!) { event(id: $e) { ticketTypes { sold } } }", json!({"e": event}));
    assert_eq!(data(stock)["event"]["ticketTypes"][0]["sold"], 1);
    assert_eq!(server.stop(), Some(0));
}

/// A variable that is no date-time does not coerce, like any other: the
/// whole request is refused before anything runs, whether its text is new
/// or already known to be valid (which skips the validation rules).
#[test]
fn a_date_time_variable_that_does_not_coerce_refuses_the_whole_request() {
    let dir = TempDir::new("datetime-variable");
    let server = Server::start(dir.path(), &[]);
    let (org, _) = register(&server, "org@dates.example", "ORGANIZER");
    let (event, ticket_type) =
        event_with_tickets(&server, &org, "Dates", "2097-06-01T20:00:00Z", general_admission(1000, 10), true);
    let query = "mutation($t: ID!, $e: ID!, $key: String!, $s: DateTime!) { \
        a: bookTickets(input: {ticketTypeId: $t, quantity: 1, idempotencyKey: $key}) { id } \
        b: updateEvent(id: $e, input: {startsAt: $s}) { id } }";
    let sold = || {
        let stock =
            server.gql(Some(&org), "query($e: ID!) { event(id: $e) { ticketTypes { sold } } }", json!({"e": event}));
        data(stock)["event"]["ticketTypes"][0]["sold"].as_u64().unwrap()
    };
    let send = |key: &str, starts_at: &str| {
        let variables = json!({"t": ticket_type, "e": event, "key": key, "s": starts_at});
        let body = serde_json::to_vec(&json!({"query": query, "variables": variables})).unwrap();
        let auth = format!("Bearer {org}");
        let headers = [
            ("Content-Type", "application/json"),
            ("Accept", "application/graphql-response+json"),
            ("Authorization", auth.as_str()),
        ];
        http(&server.addr, "POST", "/graphql", &headers, &body)
    };
    let refused = send("new-text", "tomorrow");
    assert_eq!(refused.status, 400, "a request error: {}", refused.text());
    assert!(refused.json().get("data").is_none(), "nothing ran: {}", refused.text());
    assert_eq!(error_code(&refused.json()), "BAD_USER_INPUT");
    assert_eq!(sold(), 0, "the booking beside it was not made");
    // Run once with a good date, the text is known; a bad one is still
    // refused whole.
    assert_eq!(send("good", "2097-06-02T20:00:00Z").status, 200);
    assert_eq!(sold(), 1);
    let refused = send("known-text", "2097-13-45T99:00:00Z");
    assert_eq!(refused.status, 400, "a request error: {}", refused.text());
    assert_eq!(sold(), 1, "the booking beside it was not made");
}

#[test]
fn graphql_response_media_type_follows_accept() {
    let dir = TempDir::new("media");
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let post = |accept: Option<&str>, body: &[u8]| {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(accept.map(|accept| ("Accept", accept)));
        http(addr, "POST", "/graphql", &headers, body)
    };
    const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
    let request_errors: &[&[u8]] = &[
        br#"{"query":"{ me { id "}"#,
        br#"{"query":"{ nope }"}"#,
        br#"{"query":"query($id: ID!) { user(id: $id) { id } }","variables":{"id":[1]}}"#,
        br#"{"query":"query A { me { id } } query B { me { id } }"}"#,
    ];
    let asks_for_graphql_response = [
        GRAPHQL_RESPONSE,
        "application/graphql-response+json, application/json;q=0.9",
        "application/*, application/graphql-response+json",
    ];
    let asks_for_json = [
        None,
        Some("*/*"),
        Some("application/json"),
        Some("application/json, application/graphql-response+json;q=0.5"),
    ];
    for body in request_errors {
        let what = String::from_utf8_lossy(body);
        for accept in asks_for_graphql_response {
            let response = post(Some(accept), body);
            assert_eq!(response.status, 400, "{what} ({accept}): {}", response.text());
            assert_eq!(response.header("content-type"), Some(GRAPHQL_RESPONSE), "{what} ({accept})");
            let value = response.json();
            assert_eq!(error_code(&value), "BAD_USER_INPUT", "{what}: {value}");
            assert!(value.get("data").is_none(), "a request error has no data entry: {value}");
        }
        for accept in asks_for_json {
            let response = post(accept, body);
            assert_eq!(response.status, 200, "{what} ({accept:?}): {}", response.text());
            assert_eq!(response.header("content-type"), Some("application/json"), "{what} ({accept:?})");
            let value = response.json();
            assert_eq!(error_code(&value), "BAD_USER_INPUT", "{what}: {value}");
            assert!(value.get("data").is_none(), "a request error has no data entry: {value}");
        }
    }

    // A field error ran: 200 with its data, whichever media type.
    let field_error = br#"{"query":"mutation { logout }"}"#;
    for accept in [Some(GRAPHQL_RESPONSE), None] {
        let response = post(accept, field_error);
        assert_eq!(response.status, 200, "{accept:?}: {}", response.text());
        let value = response.json();
        assert_eq!(error_code(&value), "UNAUTHENTICATED", "{value}");
        assert!(value.get("data").is_some(), "a field error keeps the data entry: {value}");
    }
    // Success and refusals before parsing keep their statuses, in the asked-for type.
    let ok = post(Some(GRAPHQL_RESPONSE), br#"{"query":"{ me { id } }"}"#);
    assert_eq!((ok.status, ok.header("content-type")), (200, Some(GRAPHQL_RESPONSE)), "{}", ok.text());
    assert_eq!(ok.json(), json!({ "data": { "me": null } }));
    let not_json = post(Some(GRAPHQL_RESPONSE), b"not json at all");
    assert_eq!((not_json.status, not_json.header("content-type")), (400, Some(GRAPHQL_RESPONSE)));
    assert_eq!(error_code(&not_json.json()), "BAD_USER_INPUT");
    // In a batch each answer stands alone: 200, the failed one without data.
    let batch = post(Some(GRAPHQL_RESPONSE), br#"[{"query":"{ me { id } }"},{"query":"{ nope }"}]"#);
    assert_eq!(batch.status, 200, "{}", batch.text());
    let answers = batch.json();
    assert_eq!(answers[0], json!({ "data": { "me": null } }));
    assert!(answers[1].get("data").is_none() && error_code(&answers[1]) == "BAD_USER_INPUT", "{answers}");
    assert_eq!(server.stop(), Some(0));
}

/// Percent-encodes a query-string value.
fn url_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GraphQL over GET: queries run (with variables, an operation name and a
/// bearer token) in either media type; a mutation is refused with 405 and
/// does not run; a malformed query string is a 400; a plain GET is the IDE.
#[test]
fn queries_run_over_get_and_mutations_do_not() {
    let dir = TempDir::new("get");
    let server = Server::start(dir.path(), &[]);
    let addr = server.addr.as_str();
    let (token, id) = register(&server, "getter@example.com", "ATTENDEE");
    let bearer = format!("Bearer {token}");
    let get = |params: &[(&str, &str)], accept: Option<&str>| {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encoded(v))).collect();
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(accept.map(|accept| ("Accept", accept)));
        http(addr, "GET", &format!("/graphql?{}", query.join("&")), &headers, b"")
    };

    let query = "query Other { me { email } } query Mine($id: ID!) { user(id: $id) { id } me { id } }";
    let variables = json!({ "id": id }).to_string();
    for accept in [None, Some("application/graphql-response+json")] {
        let response = get(&[("query", query), ("operationName", "Mine"), ("variables", &variables)], accept);
        assert_eq!(response.status, 200, "{accept:?}: {}", response.text());
        assert_eq!(response.json(), json!({ "data": { "user": { "id": id }, "me": { "id": id } } }));
        assert_eq!(response.header("cache-control"), Some("no-store"), "live data is not for caches");
    }

    // A mutation over GET does not run: the token still works afterwards.
    for mutation in ["mutation { logout }", "mutation Out { logout } query In { me { id } }"] {
        let params: &[(&str, &str)] = if mutation.contains("Out") {
            &[("query", mutation), ("operationName", "Out")]
        } else {
            &[("query", mutation)]
        };
        let response = get(params, None);
        assert_eq!(response.status, 405, "{mutation}: {}", response.text());
        assert_eq!(response.header("allow"), Some("POST"));
        assert_eq!(error_code(&response.json()), "BAD_USER_INPUT");
    }
    let me = get(&[("query", "{ me { id } }")], None);
    assert_eq!(me.json(), json!({ "data": { "me": { "id": id } } }), "logout over GET must not have run");

    for bad in
        [&[("query", "{ me { id } }"), ("variables", "[1]")][..], &[("query", "{ me { id } }"), ("variables", "{")]]
    {
        let response = get(bad, None);
        assert_request_error(&response, 400, "BAD_USER_INPUT");
    }
    let ide = http(addr, "GET", "/graphql", &[("Accept", "text/html")], b"");
    assert_eq!(ide.status, 200);
    assert!(ide.header("content-type").is_some_and(|t| t.starts_with("text/html")), "{:?}", ide.headers);
    // A client that is not a browser gets the error of a request with no
    // query, not the IDE's page.
    let browser = [("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")];
    assert_eq!(http(addr, "GET", "/graphql", &browser, b"").status, 200, "a browser's Accept gets the IDE");
    let prefers_json = [("Accept", "application/json, text/html;q=0.1")];
    for accept in [
        &[("Accept", "application/json")][..],
        &[("Accept", "*/*")],
        &[],
        &prefers_json,
        &[("Accept", "text/html;q=0")],
    ] {
        let response = http(addr, "GET", "/graphql", accept, b"");
        assert_request_error(&response, 400, "BAD_USER_INPUT");
        assert!(error_message(&response.json()).contains("no query"), "{}", response.text());
    }
    let response = http(addr, "GET", "/graphql", &[("Accept", "application/graphql-response+json")], b"");
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(response.header("content-type"), Some("application/graphql-response+json"));
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn body_limit_is_the_configured_one() {
    let dir = TempDir::new("limit");
    let server = Server::start(dir.path(), &["--body-bytes-max", "2048"]);
    let addr = server.addr.as_str();
    let under = post_graphql(addr, Some("application/json"), &padded_request(2000));
    assert_eq!(under.status, 200, "{}", under.text());
    assert_eq!(under.json(), json!({ "data": { "me": null } }));
    // Well under the 1 MiB default, so only the flag can refuse it.
    for bytes in [2049, 4096, 100_000] {
        let over = post_graphql(addr, Some("application/json"), &padded_request(bytes));
        assert_eq!(over.status, 413, "{bytes} bytes: {}", over.text());
    }
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn oversized_body_gets_a_graphql_error_with_a_code() {
    let dir = TempDir::new("limit413");
    let server = Server::start(dir.path(), &["--body-bytes-max", "2048"]);
    let over = post_graphql(&server.addr, Some("application/json"), &padded_request(4096));
    // Clients parse every /graphql answer as GraphQL; the contract says every
    // error carries extensions.code.
    assert_request_error(&over, 413, "BAD_USER_INPUT");
    assert_eq!(over.header("connection"), Some("close"), "the connection is not reused after a 413");

    // A client that waits for `100 Continue` before sending a body it says
    // is too large is refused at once, and never told to send it.
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\nExpect: 100-continue\r\n\r\n",
        server.addr
    );
    let answer = raw_exchange(&server.addr, head.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    // Under the limit, the client is told to go on.
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = br#"{"query":"{ me { id } }"}"#;
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body).unwrap();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert_eq!(server.stop(), Some(0));
}

/// Sends raw bytes on a new connection and reads until the server closes it.
fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the server answers and closes");
    String::from_utf8_lossy(&answer).into_owned()
}

// ------------------------------------------------------------- restart ----

const EVENT_FIELDS: &str = "id title description startsAt endsAt city tags status attendeeCount
  venue { id name city capacity } organizer { id name role email }
  ticketTypes { id name priceCents currency capacity perUserLimit sold available }";

const BOOKING_FIELDS: &str = "id status quantity totalCents createdAt expiresAt
  tickets { id code checkedInAt ticketType { id } } ticketType { id sold available } event { id attendeeCount }";

/// Everything the restart test wrote, read back through the API.
struct World {
    admin: String,
    organizer: String,
    attendee: String,
    logged_out: String,
    user_ids: Vec<String>,
    event_ids: Vec<String>,
    /// The attendee's confirmed, checked-in booking: (ticket type, idempotency key, id).
    confirmed: (String, String, String),
    /// The attendee's live hold.
    held: String,
}

fn create_event(server: &Server, token: &str, input: Value) -> String {
    let response = server.gql(
        Some(token),
        "mutation($i: CreateEventInput!) { createEvent(input: $i) { id status } }",
        json!({ "i": input }),
    );
    let event = data(response)["createEvent"].clone();
    assert_eq!(event["status"], "DRAFT");
    event["id"].as_str().unwrap().to_string()
}

fn add_ticket_type(server: &Server, token: &str, event: &str, input: Value) -> String {
    let response = server.gql(
        Some(token),
        "mutation($e: ID!, $i: TicketTypeInput!) { addTicketType(eventId: $e, input: $i) { id } }",
        json!({ "e": event, "i": input }),
    );
    data(response)["addTicketType"]["id"].as_str().unwrap().to_string()
}

fn book(server: &Server, token: &str, ticket_type: &str, quantity: i64, key: &str, hold: bool) -> Value {
    let response = server.gql(
        Some(token),
        &format!("mutation($i: BookInput!) {{ bookTickets(input: $i) {{ {BOOKING_FIELDS} }} }}"),
        json!({ "i": { "ticketTypeId": ticket_type, "quantity": quantity, "idempotencyKey": key, "hold": hold } }),
    );
    data(response)["bookTickets"].clone()
}

fn event_mutation(server: &Server, token: &str, name: &str, event: &str) {
    let response =
        server.gql(Some(token), &format!("mutation($id: ID!) {{ {name}(id: $id) {{ id }} }}"), json!({ "id": event }));
    data(response);
}

/// Fills a fresh server: users of every kind, a role change, a venue,
/// events in every status with ticket types, and a revoked token.
fn populate(server: &Server) -> World {
    let admin = login(server, "root@example.com", "admin-password");
    let (organizer, organizer_id) = register(server, "olga@example.com", "ORGANIZER");
    let (attendee, attendee_id) = register(server, "arno@example.com", "ATTENDEE");
    let (_, promoted_id) = register(server, "pia@example.com", "ATTENDEE");
    let set = server.gql(
        Some(&admin),
        "mutation($u: ID!) { setRole(userId: $u, role: PARTNER) { role } }",
        json!({ "u": promoted_id }),
    );
    assert_eq!(data(set)["setRole"]["role"], "PARTNER");
    let admin_id = data(server.gql(Some(&admin), "{ me { id } }", json!({})))["me"]["id"].as_str().unwrap().to_string();

    let venue = server.gql(
        Some(&organizer),
        "mutation { createVenue(name: \"Sala\", city: \"Lisbon\", capacity: 500) { id } }",
        json!({}),
    );
    let venue_id = data(venue)["createVenue"]["id"].as_str().unwrap().to_string();
    let published = create_event(
        server,
        &organizer,
        json!({ "title": "Fado night", "description": "Songs", "startsAt": "2100-06-01T20:00:00Z",
                "endsAt": "2100-06-01T23:00:00Z", "city": "Lisbon", "venueId": venue_id, "tags": ["music", "fado"] }),
    );
    let standing = add_ticket_type(
        server,
        &organizer,
        &published,
        json!({ "name": "Standing", "priceCents": 2500, "currency": "EUR", "capacity": 300 }),
    );
    let vip = add_ticket_type(
        server,
        &organizer,
        &published,
        json!({ "name": "VIP", "priceCents": 9000, "currency": "EUR", "capacity": 20, "perUserLimit": 2 }),
    );
    event_mutation(server, &organizer, "publishEvent", &published);
    let draft = create_event(
        server,
        &organizer,
        json!({ "title": "Secret gig", "startsAt": "2100-07-01T20:00:00Z", "city": "Porto" }),
    );
    add_ticket_type(
        server,
        &organizer,
        &draft,
        json!({ "name": "Early", "priceCents": 0, "currency": "EUR", "capacity": 10 }),
    );
    let updated = server.gql(
        Some(&organizer),
        "mutation($id: ID!) { updateEvent(id: $id, input: { title: \"Secret gig II\", tags: [\"rock\"] }) { title } }",
        json!({ "id": draft }),
    );
    assert_eq!(data(updated)["updateEvent"]["title"], "Secret gig II");
    let cancelled = create_event(
        server,
        &admin,
        json!({ "title": "Called off", "startsAt": "2100-05-01T10:00:00Z", "city": "Lisbon" }),
    );
    event_mutation(server, &admin, "publishEvent", &cancelled);
    event_mutation(server, &admin, "cancelEvent", &cancelled);
    let second_published = create_event(
        server,
        &admin,
        json!({ "title": "Morning run", "startsAt": "2100-05-02T07:00:00Z", "city": "Porto", "tags": ["sport"] }),
    );
    event_mutation(server, &admin, "publishEvent", &second_published);

    let booked = book(server, &attendee, &standing, 2, "standing-1", false);
    assert_eq!(booked["status"], "CONFIRMED");
    let code = booked["tickets"][0]["code"].as_str().unwrap();
    let checked_in = server.gql(
        Some(&organizer),
        "mutation($c: String!) { checkIn(code: $c) { checkedInAt } }",
        json!({ "c": code }),
    );
    assert!(data(checked_in)["checkIn"]["checkedInAt"].is_string());
    let dropped = book(server, &attendee, &standing, 1, "standing-2", false);
    let cancel = "mutation($id: ID!) { cancelBooking(id: $id) { status } }";
    let cancelled_booking = server.gql(Some(&attendee), cancel, json!({ "id": dropped["id"] }));
    assert_eq!(data(cancelled_booking)["cancelBooking"]["status"], "CANCELLED");
    let held = book(server, &attendee, &vip, 1, "vip-1", true);
    assert_eq!(held["status"], "HELD");

    let logged_out = login(server, "arno@example.com", "password123");
    assert_eq!(data(server.gql(Some(&logged_out), "mutation { logout }", json!({})))["logout"], true);
    World {
        admin,
        organizer,
        attendee,
        logged_out,
        user_ids: vec![admin_id, organizer_id, attendee_id, promoted_id],
        event_ids: vec![published, draft, cancelled, second_published],
        confirmed: (standing, "standing-1".into(), booked["id"].as_str().unwrap().to_string()),
        held: held["id"].as_str().unwrap().to_string(),
    }
}

/// Reads back everything `populate` wrote, as every kind of viewer.
fn snapshot(server: &Server, world: &World) -> Value {
    let mut reads = serde_json::Map::new();
    let mut read = |key: String, token: Option<&str>, query: String, variables: Value| {
        let response = server.gql(token, &query, variables);
        reads.insert(key, data(response));
    };
    let viewers = [
        ("anonymous", None),
        ("admin", Some(world.admin.as_str())),
        ("organizer", Some(world.organizer.as_str())),
        ("attendee", Some(world.attendee.as_str())),
    ];
    for (who, token) in viewers {
        read(format!("{who} me"), token, "{ me { id name role email } }".into(), json!({}));
        for id in &world.user_ids {
            read(
                format!("{who} user {id}"),
                token,
                "query($id: ID!) { user(id: $id) { id name role email } }".into(),
                json!({ "id": id }),
            );
        }
        for id in &world.event_ids {
            read(
                format!("{who} event {id}"),
                token,
                format!("query($id: ID!) {{ event(id: $id) {{ {EVENT_FIELDS} }} }}"),
                json!({ "id": id }),
            );
        }
        let page = format!("{{ nodes {{ {EVENT_FIELDS} }} pageInfo {{ hasNextPage endCursor }} totalCount }}");
        read(format!("{who} events"), token, format!("{{ events(first: 50) {page} }}"), json!({}));
        read(
            format!("{who} events in Lisbon"),
            token,
            format!("{{ events(filter: {{ city: \"Lisbon\" }}) {page} }}"),
            json!({}),
        );
        read(
            format!("{who} events tagged fado"),
            token,
            format!("{{ events(filter: {{ tag: \"fado\" }}) {page} }}"),
            json!({}),
        );
    }
    for (who, token) in [("admin", &world.admin), ("organizer", &world.organizer)] {
        read(
            format!("{who} myEvents"),
            Some(token),
            format!("{{ myEvents(first: 50) {{ nodes {{ {EVENT_FIELDS} }} totalCount }} }}"),
            json!({}),
        );
    }
    for (who, token) in [("attendee", &world.attendee), ("organizer", &world.organizer)] {
        let query = format!("{{ myBookings {{ {BOOKING_FIELDS} }} }}");
        read(format!("{who} myBookings"), Some(token), query, json!({}));
    }
    // Cursors handed out before a restart keep working after it.
    let first_page = data(server.gql(None, "{ events(first: 1) { nodes { id } pageInfo { endCursor } } }", json!({})));
    let cursor = first_page["events"]["pageInfo"]["endCursor"].clone();
    read(
        "second page".into(),
        None,
        "query($c: String) { events(first: 1, after: $c) { nodes { id } pageInfo { hasNextPage } } }".into(),
        json!({ "c": cursor }),
    );
    reads.insert("first page".into(), first_page);
    Value::Object(reads)
}

#[test]
fn restart_keeps_data_sessions_and_revocations() {
    let dir = TempDir::new("restart");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let world = populate(&server);
    let before = snapshot(&server, &world);
    // Sanity: the snapshot saw what was written, so equal snapshots mean something.
    assert_eq!(before["anonymous events"]["events"]["totalCount"], 2, "{before:#}");
    assert_eq!(before["organizer myEvents"]["myEvents"]["totalCount"], 2, "{before:#}");
    assert_eq!(before["anonymous event ".to_string() + &world.event_ids[1]]["event"], Value::Null, "a draft is hidden");
    assert_eq!(before["organizer event ".to_string() + &world.event_ids[1]]["event"]["title"], "Secret gig II");
    assert_eq!(before["admin user ".to_string() + &world.user_ids[3]]["user"]["role"], "PARTNER");
    let bookings = before["attendee myBookings"]["myBookings"].as_array().map(Vec::len);
    assert_eq!(bookings, Some(3), "{before:#}");
    assert_eq!(error_code(&server.gql(Some(&world.logged_out), "{ me { id } }", json!({}))), "UNAUTHENTICATED");
    assert_eq!(server.stop(), Some(0), "SIGTERM must stop marquee cleanly");

    let server = Server::start(dir.path(), &[]);
    let after = snapshot(&server, &world);
    for (key, value) in before.as_object().unwrap() {
        assert_eq!(&after[key], value, "{key} changed across the restart");
    }
    assert_eq!(before, after);
    let revoked = server.gql(Some(&world.logged_out), "{ me { id } }", json!({}));
    assert_eq!(error_code(&revoked), "UNAUTHENTICATED", "a logged-out token came back: {revoked}");

    // Idempotency keys and holds survive too.
    let (ticket_type, key, booking) = &world.confirmed;
    let again = book(&server, &world.attendee, ticket_type, 2, key, false);
    assert_eq!(&again["id"], booking, "the same key and input must give the same booking back after a restart");
    assert_eq!(again["ticketType"]["sold"], 2, "a replayed key must not take seats again: {again}");
    let confirm = "mutation($id: ID!) { confirmBooking(id: $id) { status tickets { code } ticketType { sold } } }";
    let confirmed = data(server.gql(Some(&world.attendee), confirm, json!({ "id": world.held })));
    assert_eq!(confirmed["confirmBooking"]["status"], "CONFIRMED", "{confirmed}");
    assert_eq!(confirmed["confirmBooking"]["tickets"].as_array().map(Vec::len), Some(1), "{confirmed}");
    assert_eq!(confirmed["confirmBooking"]["ticketType"]["sold"], 1, "{confirmed}");

    // The store keeps working, and new ids do not reuse old ones.
    let (_, new_user) = register(&server, "newcomer@example.com", "ATTENDEE");
    assert!(!world.user_ids.contains(&new_user), "user id {new_user} was reused");
    let new_event = create_event(
        &server,
        &world.organizer,
        json!({ "title": "After", "startsAt": "2100-08-01T20:00:00Z", "city": "Faro" }),
    );
    assert!(!world.event_ids.contains(&new_event), "event id {new_event} was reused");
    let duplicate = server.gql(
        None,
        "mutation { register(email: \"olga@example.com\", password: \"password123\", name: \"O\") { token } }",
        json!({}),
    );
    assert_eq!(error_code(&duplicate), "CONFLICT", "emails are still known after a restart");
    let again = login(&server, "olga@example.com", "password123");
    assert_eq!(data(server.gql(Some(&again), "{ me { id } }", json!({})))["me"]["id"], json!(world.user_ids[1]));
    assert_eq!(server.stop(), Some(0));
}

// --------------------------------------------------------------- config ----

#[test]
fn a_bad_listen_address_is_a_configuration_error() {
    let dir = TempDir::new("badlisten");
    let finished = run(serve(dir.path(), &["--listen", "nonsense"]), b"");
    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    for part in ["listen", "--listen", "MARQUEE_LISTEN", "\"nonsense\""] {
        assert!(finished.stderr.contains(part), "the message names the setting ({part}): {}", finished.stderr);
    }
    assert!(!finished.stdout.contains("listening"), "{}", finished.stdout);
}

#[test]
fn an_unknown_config_key_is_a_configuration_error() {
    let dir = TempDir::new("badkey");
    let file = dir.path().join("marquee.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\ncolour = \"blue\"\n").unwrap();
    let finished = run(serve(&dir.path().join("data"), &["--config", file.to_str().unwrap()]), b"");
    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("colour"), "the message should name the key: {}", finished.stderr);
}

/// A value out of bounds is refused naming every way it could have come
/// (the file's key, the flag, the variable) and what it was; a data
/// directory that is a file is a bad setting too; a port in use fails
/// before the store is opened, leaving no new store behind.
#[test]
fn bad_settings_are_named_with_their_value_and_a_busy_port_leaves_no_store() {
    let dir = TempDir::new("badvalue");
    let data_dir = dir.path().join("data");
    let finished = run(serve(&data_dir, &["--hold-ttl", "25h"]), b"");
    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    for part in ["hold_ttl", "--hold-ttl", "MARQUEE_HOLD_TTL", "between 1s and 24h", "it is 25h"] {
        assert!(finished.stderr.contains(part), "{part:?} in: {}", finished.stderr);
    }
    let mut command = serve(&data_dir, &[]);
    command.env("MARQUEE_WS_CONNECTIONS_MAX", "0");
    let finished = run(command, b"");
    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("MARQUEE_WS_CONNECTIONS_MAX") && finished.stderr.contains("it is 0"));

    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let finished = run(serve(&file, &[]), b"");
    assert_eq!(finished.code, Some(2), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("is a file, not a directory"), "{}", finished.stderr);

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let finished = run(serve(&data_dir, &["--listen", &taken_addr]), b"");
    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("cannot listen"), "{}", finished.stderr);
    assert!(!data_dir.join("db").exists(), "no store was started in {}", data_dir.display());
}

/// A last message that cannot be written (stderr sent to a file on a disk
/// that is full) leaves the exit code as it is, instead of a panic's 101.
#[test]
fn an_unwritable_stderr_does_not_change_the_exit_code() {
    let dir = TempDir::new("full-stderr");
    let mut command = serve(&dir.path().join("data"), &["--hold-ttl", "25h"]);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    command.stdout(Stdio::null()).stderr(full);
    assert_eq!(command.status().unwrap().code(), Some(2), "a bad setting, told or not");
}

/// A result that cannot be written (stdout on a full disk) fails the
/// command when it is the command's point (a token written nowhere was not
/// given), not when it reports a change made anyway (an account created).
#[test]
fn a_token_that_cannot_be_written_fails_the_command() {
    let dir = TempDir::new("full-stdout");
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut create = marquee(&["user", "create", "--email", "root@example.com", "--name", "Root", "--role", "admin"]);
    create.args(["--password-stdin", "--cache-mb", "16", "--data-dir"]).arg(dir.path());
    let mut child = create.stdin(Stdio::piped()).stdout(full()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"admin-password\n").unwrap();
    let created = child.wait_with_output().unwrap();
    assert_eq!(created.status.code(), Some(0), "created: {}", String::from_utf8_lossy(&created.stderr));
    let mut token = marquee(&["user", "token", "--email", "root@example.com", "--cache-mb", "16", "--data-dir"]);
    token.arg(dir.path());
    let output = token.stdout(full()).stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the result to stdout"), "{stderr}");
}

/// Every boolean flag alone means true, as the README's table shows them.
#[test]
fn a_bare_boolean_flag_means_true() {
    let dir = TempDir::new("bare-bool");
    let server = Server::start(dir.path(), &["--introspection", "--trust-proxy-headers", "--allow-private-webhooks"]);
    let schema = server.gql(None, "{ __schema { queryType { name } } }", json!({}));
    assert_eq!(data(schema)["__schema"]["queryType"]["name"], "Query");
}

fn listen_file(dir: &Path, addr: &str) -> String {
    let file = dir.join("marquee.toml");
    std::fs::write(&file, format!("listen = \"{addr}\"\n")).unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn flags_beat_environment_beat_config_file() {
    let dir = TempDir::new("precedence");
    let data_dir = dir.path().join("data");
    // Taken for the whole test: any setting that picks it cannot start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();

    // The file alone is obeyed: it can pick a port, and a taken one fails.
    let from_file = format!("127.0.0.1:{}", free_port());
    let mut command = serve(&data_dir, &["--config", &listen_file(dir.path(), &from_file)]);
    command.stdout(Stdio::piped());
    let server = Server::spawn(command);
    assert_eq!(server.addr, from_file, "the config file's listen was not used");
    assert_serving(&server);
    assert_eq!(server.stop(), Some(0));
    let config = listen_file(dir.path(), &taken_addr);
    let finished = run(serve(&data_dir, &["--config", &config]), b"");
    assert_eq!(finished.code, Some(1), "the config file's listen was not used: {}", finished.stderr);

    // The environment beats the file.
    let from_env = format!("127.0.0.1:{}", free_port());
    let mut command = serve(&data_dir, &["--config", &config]);
    command.env("MARQUEE_LISTEN", &from_env).stdout(Stdio::piped());
    let server = Server::spawn(command);
    assert_eq!(server.addr, from_env, "MARQUEE_LISTEN should beat the config file");
    assert_serving(&server);
    assert_eq!(server.stop(), Some(0));

    // A flag beats the environment (and the file).
    let from_flag = format!("127.0.0.1:{}", free_port());
    let mut command = serve(&data_dir, &["--config", &config, "--listen", &from_flag]);
    command.env("MARQUEE_LISTEN", &taken_addr).stdout(Stdio::piped());
    let server = Server::spawn(command);
    assert_eq!(server.addr, from_flag, "--listen should beat MARQUEE_LISTEN");
    assert_serving(&server);
    assert_eq!(server.stop(), Some(0));

    // Other settings follow the same order: the environment's body limit wins over the file's.
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nbody_bytes_max = 100000\n").unwrap();
    let mut command = serve(&data_dir, &["--config", &config]);
    command.env("MARQUEE_BODY_BYTES_MAX", "2048").stdout(Stdio::piped());
    let server = Server::spawn(command);
    assert_eq!(post_graphql(&server.addr, Some("application/json"), &padded_request(4096)).status, 413);
    assert_eq!(server.stop(), Some(0));

    // So do the switches: the file's true is turned off by the
    // environment, and the bare flag turns it on again.
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nallow_private_webhooks = true\n").unwrap();
    let private_hook = |extra: &[&str], env: Option<&str>| {
        let mut args = vec!["--config", config.as_str()];
        args.extend_from_slice(extra);
        let mut command = serve(&data_dir, &args);
        if let Some(value) = env {
            command.env("MARQUEE_ALLOW_PRIVATE_WEBHOOKS", value);
        }
        command.stdout(Stdio::piped());
        let server = Server::spawn(command);
        let token = login(&server, "switch@example.com", "password123");
        let response = server.gql(
            Some(&token),
            "mutation($u: String!) { createWebhook(url: $u, events: [\"booking.confirmed\"]) { secret } }",
            json!({"u": "http://127.0.0.1:9/hook"}),
        );
        assert_eq!(server.stop(), Some(0));
        response["errors"].is_null()
    };
    {
        let mut command = serve(&data_dir, &["--config", config.as_str()]);
        command.stdout(Stdio::piped());
        let server = Server::spawn(command);
        register(&server, "switch@example.com", "ORGANIZER");
        assert_eq!(server.stop(), Some(0));
    }
    assert!(private_hook(&[], None), "the file allows private webhooks");
    assert!(!private_hook(&[], Some("false")), "MARQUEE_ALLOW_PRIVATE_WEBHOOKS=false beats the file");
    assert!(private_hook(&["--allow-private-webhooks"], Some("false")), "the bare flag beats the environment");
    assert!(!private_hook(&["--allow-private-webhooks", "false"], None), "so does the flag with a value");
    drop(taken);
}

#[test]
fn a_taken_port_fails_with_cannot_listen() {
    let dir = TempDir::new("taken");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let finished = run(serve(dir.path(), &["--listen", &addr]), b"");
    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("cannot listen"), "stderr: {}", finished.stderr);
    drop(taken);
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = TempDir::new("locked");
    let server = Server::start(dir.path(), &[]);
    let finished = run(serve(dir.path(), &["--listen", "127.0.0.1:0"]), b"");
    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("in use by another process"), "stderr: {}", finished.stderr);
    assert!(!finished.stdout.contains("listening"), "the second server must not serve: {}", finished.stdout);

    let mut create = marquee(&[
        "user",
        "create",
        "--email",
        "late@example.com",
        "--name",
        "Late",
        "--password-stdin",
        "--cache-mb",
        "16",
        "--data-dir",
    ]);
    create.arg(dir.path());
    let finished = run(create, b"password123\n");
    assert_eq!(finished.code, Some(1), "stderr: {}", finished.stderr);
    assert!(finished.stderr.contains("in use by another process"), "stderr: {}", finished.stderr);

    // The first server is unharmed.
    assert_eq!(http(&server.addr, "GET", "/healthz", &[], b"").status, 200);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn help_names_every_command_and_flag() {
    let top = run(marquee(&["--help"]), b"");
    assert_eq!(top.code, Some(0), "stderr: {}", top.stderr);
    for command in ["serve", "user"] {
        assert!(top.stdout.contains(command), "marquee --help does not mention {command}:\n{}", top.stdout);
    }
    let serve_help = run(marquee(&["serve", "--help"]), b"");
    assert_eq!(serve_help.code, Some(0), "stderr: {}", serve_help.stderr);
    for flag in [
        "--data-dir",
        "--listen",
        "--config",
        "--token-ttl",
        "--body-bytes-max",
        "--log-format",
        "--cache-mb",
        "--hold-ttl",
        "--ledger-shards",
    ] {
        assert!(
            serve_help.stdout.contains(flag),
            "marquee serve --help does not mention {flag}:\n{}",
            serve_help.stdout
        );
    }
}

// ------------------------------------------------------------------ CLI ----

#[test]
fn cli_created_admin_signs_in_and_sets_roles() {
    let dir = TempDir::new("cliadmin");
    let mut create = marquee(&[
        "user",
        "create",
        "--email",
        "boss@example.com",
        "--name",
        "Boss",
        "--role",
        "admin",
        "--password-stdin",
        "--cache-mb",
        "16",
        "--data-dir",
    ]);
    create.arg(dir.path());
    let finished = run(create, b"boss-password-1\n");
    assert_eq!(finished.code, Some(0), "stderr: {}", finished.stderr);

    // Without --password-stdin nothing is created.
    let mut refused =
        marquee(&["user", "create", "--email", "nopass@example.com", "--name", "N", "--cache-mb", "16", "--data-dir"]);
    refused.arg(dir.path());
    assert_eq!(run(refused, b"password123\n").code, Some(2));

    let server = Server::start(dir.path(), &[]);
    let admin = login(&server, "boss@example.com", "boss-password-1");
    let me = data(server.gql(Some(&admin), "{ me { name role email } }", json!({})));
    assert_eq!(me["me"], json!({ "name": "Boss", "role": "ADMIN", "email": "boss@example.com" }));
    let no_account = server.gql(
        None,
        "mutation { login(email: \"nopass@example.com\", password: \"password123\") { token } }",
        json!({}),
    );
    assert_eq!(error_code(&no_account), "UNAUTHENTICATED");

    let (attendee, attendee_id) = register(&server, "ann@example.com", "ATTENDEE");
    let forbidden = server.gql(
        Some(&attendee),
        "mutation($u: ID!) { setRole(userId: $u, role: ADMIN) { role } }",
        json!({ "u": attendee_id }),
    );
    assert_eq!(error_code(&forbidden), "FORBIDDEN");
    let set = server.gql(
        Some(&admin),
        "mutation($u: ID!) { setRole(userId: $u, role: ORGANIZER) { id role } }",
        json!({ "u": attendee_id }),
    );
    assert_eq!(data(set)["setRole"], json!({ "id": attendee_id, "role": "ORGANIZER" }));
    // The new role takes effect on the user's existing token.
    assert_eq!(data(server.gql(Some(&attendee), "{ me { role } }", json!({})))["me"]["role"], "ORGANIZER");
    let venue =
        server.gql(Some(&attendee), "mutation { createVenue(name: \"Hall\", city: \"Oslo\") { name } }", json!({}));
    assert_eq!(data(venue)["createVenue"]["name"], "Hall");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn cli_token_works_as_a_bearer_token() {
    let dir = TempDir::new("clitoken");
    let mut create = marquee(&[
        "user",
        "create",
        "--email",
        "tess@example.com",
        "--name",
        "Tess",
        "--role",
        "organizer",
        "--password-stdin",
        "--cache-mb",
        "16",
        "--data-dir",
    ]);
    create.arg(dir.path());
    assert_eq!(run(create, b"tess-password\n").code, Some(0));

    let mut mint =
        marquee(&["user", "token", "--email", "tess@example.com", "--ttl", "15m", "--cache-mb", "16", "--data-dir"]);
    mint.arg(dir.path());
    let minted = run(mint, b"");
    assert_eq!(minted.code, Some(0), "stderr: {}", minted.stderr);
    let token = minted.stdout.trim().to_string();
    assert_eq!(minted.stdout.lines().count(), 1, "user token prints the token alone: {:?}", minted.stdout);
    assert!(!token.is_empty() && !token.contains(char::is_whitespace), "token {token:?}");

    let mut unknown = marquee(&["user", "token", "--email", "nobody@example.com", "--cache-mb", "16", "--data-dir"]);
    unknown.arg(dir.path());
    let unknown = run(unknown, b"");
    assert_eq!(unknown.code, Some(1), "stderr: {}", unknown.stderr);
    assert!(unknown.stdout.trim().is_empty(), "no token for an unknown account: {}", unknown.stdout);

    let server = Server::start(dir.path(), &[]);
    let me = data(server.gql(Some(&token), "{ me { name role email } }", json!({})));
    assert_eq!(me["me"], json!({ "name": "Tess", "role": "ORGANIZER", "email": "tess@example.com" }));
    let venue =
        server.gql(Some(&token), "mutation { createVenue(name: \"Loft\", city: \"Riga\") { city } }", json!({}));
    assert_eq!(data(venue)["createVenue"]["city"], "Riga");
    let last = if token.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    assert_eq!(error_code(&server.gql(Some(&forged), "{ me { id } }", json!({}))), "UNAUTHENTICATED");
    assert_eq!(server.stop(), Some(0));
}

/// The `user` commands refuse what would go wrong silently: a data
/// directory with no store (a mistyped path, or the default `./data` where
/// the service's directory was meant) for anything but creating an
/// account, a token lifetime outside `--token-ttl`'s bounds, and, run as
/// root, a directory the service's user owns (the files root would write
/// there, the server could not open).
#[test]
fn cli_user_commands_refuse_a_missing_store_a_wild_ttl_and_roots_files_in_the_services_directory() {
    let dir = TempDir::new("cliguard");
    let missing = dir.path().join("typo");
    let mut token = marquee(&["user", "token", "--email", "a@example.com", "--cache-mb", "16", "--data-dir"]);
    token.arg(&missing);
    let refused = run(token, b"");
    assert_eq!(refused.code, Some(2), "stderr: {}", refused.stderr);
    assert!(refused.stderr.contains("holds no store"), "{}", refused.stderr);
    let mut set_role = marquee(&["user", "set-role", "--email", "a@example.com", "--role", "admin", "--data-dir"]);
    set_role.arg(&missing);
    assert_eq!(run(set_role, b"").code, Some(2));
    // A bad account, or no password, is refused (exit 2) before any store
    // is started.
    for (email, name, stdin, said) in [
        ("not-an-email", "A", &b"a-long-password\n"[..], "email: must look like"),
        ("a@example.com", " ", &b"a-long-password\n"[..], "name:"),
        ("a@example.com", "A", &b""[..], "no password on standard input"),
    ] {
        let mut create = marquee(&["user", "create", "--email", email, "--name", name, "--password-stdin"]);
        create.args(["--cache-mb", "16", "--data-dir"]).arg(&missing);
        let refused = run(create, stdin);
        assert_eq!(refused.code, Some(2), "{email:?} {name:?}: {}", refused.stderr);
        assert!(refused.stderr.contains(said), "{said:?} in: {}", refused.stderr);
        assert!(!missing.exists(), "nothing was started in {}", missing.display());
    }
    let mut nobody = marquee(&["user", "token", "--data-dir"]);
    nobody.arg(&missing);
    let refused = run(nobody, b"");
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("give --email, --id or --ids-from"), "{}", refused.stderr);
    assert!(!missing.exists(), "a refused command created the directory");

    // Creating the first account may start a new store, and says so.
    let store = dir.path().join("store");
    let mut create = marquee(&["user", "create", "--email", "a@example.com", "--name", "A", "--password-stdin"]);
    create.args(["--cache-mb", "16", "--data-dir"]).arg(&store);
    let created = run(create, b"a-long-password\n");
    assert_eq!(created.code, Some(0), "stderr: {}", created.stderr);
    assert!(created.stderr.contains("held no store; started a new one"), "{}", created.stderr);

    for ttl in ["0s", "59s", "367d"] {
        let mut token = marquee(&["user", "token", "--email", "a@example.com", "--ttl", ttl, "--data-dir"]);
        token.arg(&store);
        let refused = run(token, b"");
        assert_eq!(refused.code, Some(2), "--ttl {ttl}: {}", refused.stderr);
        assert!(refused.stderr.contains("between 1m and 366d"), "{}", refused.stderr);
    }

    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)) == Some("0");
    if root {
        std::os::unix::fs::chown(&store, Some(65534), None).unwrap();
        let mut token = marquee(&["user", "token", "--email", "a@example.com", "--cache-mb", "16", "--data-dir"]);
        token.arg(&store);
        let refused = run(token, b"");
        assert_eq!(refused.code, Some(2), "stderr: {}", refused.stderr);
        assert!(refused.stderr.contains("belongs to uid 65534"), "{}", refused.stderr);
        // The server itself serves (a root container on a volume may mean
        // it), and warns.
        let mut serving = serve(&store, &["--listen", "127.0.0.1:0"]);
        serving.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut server = Server::spawn(serving);
        let _ = Command::new("kill").args(["-TERM", &server.child.id().to_string()]).status();
        let mut warned = String::new();
        server.child.stderr.take().unwrap().read_to_string(&mut warned).unwrap();
        assert!(warned.contains("serving as root from a directory another user owns"), "{warned}");
        std::os::unix::fs::chown(&store, Some(0), None).unwrap();
    }
}

/// The server turns transparent huge pages off for itself (their first
/// touch stalls whichever thread makes it, the group commit's included),
/// unless `MIMALLOC_ALLOW_THP` is set: then the process keeps what it
/// inherited. Kernels before 5.0 show no `THP_enabled` line; there the
/// test has nothing to read.
#[cfg(target_os = "linux")]
#[test]
fn transparent_huge_pages_are_off_unless_mimalloc_is_told_otherwise() {
    fn thp_enabled(pid: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|line| line.strip_prefix("THP_enabled:")).map(|value| value.trim().to_string())
    }
    let Some(inherited) = thp_enabled("self") else { return };
    let dir = TempDir::new("thp");
    let start = |allow: Option<&str>| {
        let mut command = serve(dir.path(), &["--listen", "127.0.0.1:0"]);
        command.env_remove("MIMALLOC_ALLOW_THP").stdout(Stdio::piped());
        if let Some(allow) = allow {
            command.env("MIMALLOC_ALLOW_THP", allow);
        }
        Server::spawn(command)
    };

    let server = start(None);
    assert_eq!(thp_enabled(&server.child.id().to_string()).as_deref(), Some("0"));
    assert_eq!(server.stop(), Some(0));

    let server = start(Some("1"));
    assert_eq!(thp_enabled(&server.child.id().to_string()), Some(inherited));
    assert_eq!(server.stop(), Some(0));
}
