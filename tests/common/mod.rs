//! Shared helpers of the end-to-end tests: start the real `marquee` binary on
//! an ephemeral loopback port and talk to it over real HTTP.
#![allow(dead_code)]

pub mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("marquee-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_marquee")
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `marquee serve` on `data_dir` with extra arguments.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(Server::command(data_dir, extra))
    }

    /// The command [`Server::start`] runs, to change before
    /// [`Server::spawn`] (its log level, where its log goes).
    pub fn command(data_dir: &Path, extra: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--cache-mb", "16", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env_remove("MARQUEE_LISTEN")
            .env_remove("MARQUEE_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        command
    }

    /// Spawns a prepared command and waits for its "listening on" line.
    pub fn spawn(mut command: Command) -> Server {
        let mut child = command.spawn().expect("start marquee");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("marquee listening on http://") {
                    let _ = sender.send(addr.to_string());
                }
            }
        });
        let addr = receiver.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("marquee did not start listening within 60 s")
        });
        Server { child, addr }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns its code.
    pub fn stop(mut self) -> Option<i32> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "marquee did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        gql(&self.addr, token, query, variables)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response: status, lower-case headers, body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    try_http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} {path} on {addr} failed: {e}"))
}

/// Like [`http`], but a connection that fails or breaks is an error, not a
/// panic (for servers that are killed mid-request).
pub fn try_http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    if !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed before a response"));
    }
    Ok(parse_response(&raw))
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    HttpResponse { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

/// The value of the series `series` (a metric's name, with its labels if
/// it has any) in the server's /metrics now; None when it is not there.
pub fn metric(server: &Server, series: &str) -> Option<String> {
    let text = http(&server.addr, "GET", "/metrics", &[], b"").text();
    let value = text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))?;
    Some(value.to_string())
}

/// POSTs a GraphQL request and returns the JSON response (any status).
pub fn gql(addr: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    try_gql(addr, token, query, variables).unwrap_or_else(|e| panic!("POST /graphql on {addr} failed: {e}"))
}

/// Like [`gql`], but a failed or broken connection is an error.
pub fn try_gql(addr: &str, token: Option<&str>, query: &str, variables: Value) -> std::io::Result<Value> {
    let body = serde_json::to_vec(&json!({ "query": query, "variables": variables })).unwrap();
    let response = try_post_json(addr, token, &body)?;
    serde_json::from_slice(&response.body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// POSTs `body` to /graphql as `application/json`, with `token` as the
/// bearer when given; the response as it came (any status).
pub fn try_post_json(addr: &str, token: Option<&str>, body: &[u8]) -> std::io::Result<HttpResponse> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    try_http(addr, "POST", "/graphql", &headers, body)
}

/// The `extensions.code` of the first error, or panics showing the response.
pub fn error_code(response: &Value) -> String {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {response}"))
        .to_string()
}

/// The first error's message.
pub fn error_message(response: &Value) -> String {
    response["errors"][0]["message"].as_str().unwrap_or_default().to_string()
}

/// The response's data, asserting there were no errors.
pub fn data(response: Value) -> Value {
    assert!(response.get("errors").is_none(), "unexpected errors: {response}");
    response["data"].clone()
}

/// Registers an account and returns (token, user id).
pub fn register(server: &Server, email: &str, role: &str) -> (String, String) {
    let response = server.gql(
        None,
        "mutation($e: String!, $r: Role!) { register(email: $e, password: \"password123\", name: \"Test User\", role: $r) { token user { id } } }",
        json!({ "e": email, "r": role }),
    );
    let payload = &data(response)["register"];
    (payload["token"].as_str().unwrap().to_string(), payload["user"]["id"].as_str().unwrap().to_string())
}

/// Creates an admin with the CLI (the server must not be running on `data_dir`).
pub fn create_admin(data_dir: &Path, email: &str) {
    let mut child = Command::new(binary())
        .args([
            "user",
            "create",
            "--email",
            email,
            "--name",
            "Admin",
            "--role",
            "admin",
            "--password-stdin",
            "--cache-mb",
            "16",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"admin-password\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "user create failed");
}

/// Signs in and returns the token.
pub fn login(server: &Server, email: &str, password: &str) -> String {
    let response = server.gql(
        None,
        "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token } }",
        json!({ "e": email, "p": password }),
    );
    data(response)["login"]["token"].as_str().unwrap().to_string()
}

/// Creates an event of `org`'s with one ticket type (`ticket` is a
/// TicketTypeInput) and publishes it when `publish`; returns (event id,
/// ticket type id).
pub fn event_with_tickets(
    server: &Server,
    org: &str,
    title: &str,
    starts_at: &str,
    ticket: Value,
    publish: bool,
) -> (String, String) {
    let input = json!({"title": title, "startsAt": starts_at, "city": "Oslo"});
    let created = data(server.gql(
        Some(org),
        "mutation($i: CreateEventInput!) { createEvent(input: $i) { id } }",
        json!({"i": input}),
    ));
    let event = created["createEvent"]["id"].as_str().unwrap().to_string();
    let added = data(server.gql(
        Some(org),
        "mutation($e: ID!, $t: TicketTypeInput!) { addTicketType(eventId: $e, input: $t) { id } }",
        json!({"e": event, "t": ticket}),
    ));
    if publish {
        data(server.gql(Some(org), "mutation($id: ID!) { publishEvent(id: $id) { id } }", json!({"id": event})));
    }
    (event, added["addTicketType"]["id"].as_str().unwrap().to_string())
}

/// A general-admission ticket type input of `capacity` seats.
pub fn general_admission(price_cents: i64, capacity: i64) -> Value {
    json!({"name": "GA", "priceCents": price_cents, "currency": "EUR", "capacity": capacity})
}

/// A small deterministic generator (xorshift) for randomised end-to-end
/// tests; they print their seed so a failure can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from the clock.
    pub fn from_clock(test: &str) -> Rng {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("{test} seed {seed}");
        Rng(seed | 1)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}
