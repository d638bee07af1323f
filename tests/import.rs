//! Bulk import end to end: a small dataset from the shared generator
//! (`../shared/datasets/social/gen.py`, needs python3 with numpy 2.4.6)
//! imports with `marquee import`, and the served GraphQL answers for the
//! generator's query draws equal a brute-force reference computed here from
//! the CSV files. Bad input fails naming file and line, and leaves nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const USERS: u32 = 400;
const EVENTS: u32 = 40;
const DRAWS: usize = 60;

fn generator() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/social/gen.py")
}

fn generate(out: &Path) {
    let generator = generator();
    assert!(
        generator.is_file(),
        "no dataset generator at {}: the tests expect the shared directory (contract, datasets) beside the repository",
        generator.display()
    );
    let status = Command::new("python3")
        .arg(&generator)
        .args(["--users", &USERS.to_string(), "--events", &EVENTS.to_string(), "--draws", &DRAWS.to_string()])
        .arg("--out")
        .arg(out)
        .status()
        .expect("python3 runs (the import test needs python3 with numpy==2.4.6; .ci/run installs it)");
    assert!(status.success(), "gen.py failed (it needs numpy==2.4.6: pip install numpy==2.4.6)");
}

fn rows(dir: &Path, file: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    text.lines().skip(1).filter(|l| !l.is_empty()).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn num(field: &str) -> u32 {
    field.parse().unwrap()
}

/// The dataset as plain sets, and the answers by brute force.
struct Reference {
    follows: HashSet<(u32, u32)>,
    out: HashMap<u32, BTreeSet<u32>>,
    attends: HashSet<(u32, u32)>,
    starts_at: HashMap<u32, i64>,
    followers: HashMap<u32, usize>,
}

impl Reference {
    fn load(dir: &Path) -> Reference {
        let follows: HashSet<(u32, u32)> = rows(dir, "follows.csv").iter().map(|r| (num(&r[0]), num(&r[1]))).collect();
        let mut out: HashMap<u32, BTreeSet<u32>> = HashMap::new();
        let mut followers: HashMap<u32, usize> = HashMap::new();
        for &(a, b) in &follows {
            out.entry(a).or_default().insert(b);
            *followers.entry(b).or_default() += 1;
        }
        let attends = rows(dir, "attends.csv").iter().map(|r| (num(&r[0]), num(&r[1]))).collect();
        let starts_at = rows(dir, "events.csv").iter().map(|r| (num(&r[0]), r[3].parse().unwrap())).collect();
        Reference { follows, out, attends, starts_at, followers }
    }

    fn friends_going(&self, user: u32, event: u32) -> Vec<u32> {
        let mut friends: Vec<u32> = (1..=USERS)
            .filter(|&f| self.follows.contains(&(user, f)) && self.follows.contains(&(f, user)))
            .filter(|&f| self.attends.contains(&(f, event)))
            .collect();
        friends.truncate(20);
        friends
    }

    /// The contract's order: followees going descending, then startsAt, then id.
    fn recommended(&self, user: u32) -> Vec<u32> {
        let mut scored: Vec<(usize, i64, u32)> = (1..=EVENTS)
            .filter(|&e| !self.attends.contains(&(user, e)))
            .map(|e| {
                let score =
                    self.out.get(&user).map_or(0, |o| o.iter().filter(|&&f| self.attends.contains(&(f, e))).count());
                (score, self.starts_at[&e], e)
            })
            .filter(|&(score, _, _)| score > 0)
            .collect();
        scored.sort_by_key(|&(score, starts, e)| (std::cmp::Reverse(score), starts, e));
        scored.into_iter().take(10).map(|(_, _, e)| e).collect()
    }

    fn distance(&self, from: u32, to: u32) -> Option<u32> {
        let mut seen = HashMap::from([(from, 0u32)]);
        let mut queue = VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            let hops = seen[&node];
            if node == to {
                return Some(hops);
            }
            if hops == 4 {
                continue;
            }
            for &next in self.out.get(&node).into_iter().flatten() {
                seen.entry(next).or_insert_with(|| {
                    queue.push_back(next);
                    hops + 1
                });
            }
        }
        None
    }

    fn whos_going(&self, event: u32) -> (usize, Vec<(u32, usize)>) {
        let mut going: Vec<(u32, usize)> = (1..=USERS)
            .filter(|&u| self.attends.contains(&(u, event)))
            .map(|u| (u, self.followers.get(&u).copied().unwrap_or(0)))
            .collect();
        let count = going.len();
        going.sort_by_key(|&(u, followers)| (std::cmp::Reverse(followers), u));
        going.truncate(20);
        (count, going)
    }
}

fn marquee(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().unwrap()
}

fn import(data_dir: &Path, csv: &Path) -> std::process::Output {
    marquee(&["import", "--cache-mb", "16", "--data-dir", data_dir.to_str().unwrap(), "--from", csv.to_str().unwrap()])
}

/// `id token` lines from `marquee user token --ids-from`.
fn mint_tokens(data_dir: &Path, ids: &BTreeSet<u32>) -> HashMap<u32, String> {
    let list = data_dir.with_extension("ids");
    std::fs::write(&list, ids.iter().map(|id| format!("{id}\n")).collect::<String>()).unwrap();
    let output = marquee(&[
        "user",
        "token",
        "--cache-mb",
        "16",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--ids-from",
        list.to_str().unwrap(),
        "--ttl",
        "1h",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (id, token) = line.split_once(' ').unwrap();
            (num(id), token.to_string())
        })
        .collect()
}

fn ids(list: &Value) -> Vec<u32> {
    list.as_array().unwrap().iter().map(|item| num(item["id"].as_str().unwrap())).collect()
}

#[test]
fn an_imported_dataset_answers_like_the_brute_force_reference() {
    let work = TempDir::new("import");
    let csv = work.path().join("csv");
    generate(&csv);
    let data_dir = work.path().join("data");
    let output = import(&data_dir, &csv);
    assert!(output.status.success(), "import failed: {}", String::from_utf8_lossy(&output.stderr));
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains(&format!("imported {USERS} users, {EVENTS} events")), "{said}");
    let progress = String::from_utf8_lossy(&output.stderr);
    assert!(progress.contains("100%"), "progress is shown: {progress}");
    // Into a pipe (a log) it is written line by line, not redrawn.
    assert!(!progress.contains('\r'), "no carriage returns outside a terminal: {progress:?}");
    assert!(progress.lines().all(|line| line.starts_with("marquee: ")), "{progress}");

    let again = import(&data_dir, &csv);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    create_admin(&data_dir, "admin@example.com");
    let reference = Reference::load(&csv);
    let draws: Vec<(u32, u32, u32)> =
        rows(&csv, "queries.csv").iter().map(|r| (num(&r[1]), num(&r[2]), num(&r[3]))).collect();
    assert_eq!(draws.len(), DRAWS);
    let tokens = mint_tokens(&data_dir, &draws.iter().map(|d| d.0).collect());
    let server = Server::start(&data_dir, &[]);
    let admin = login(&server, "admin@example.com", "admin-password");
    let mut checked = BTreeMap::new();
    for &(user, event, other) in &draws {
        let token = Some(tokens[&user].as_str());
        let q1 = server.gql(
            token,
            "query($e: ID!) { event(id: $e) { friendsGoing { id } } }",
            json!({"e": event.to_string()}),
        );
        assert_eq!(
            ids(&data(q1)["event"]["friendsGoing"]),
            reference.friends_going(user, event),
            "Q1 ({user}, {event})"
        );
        let q2 = server.gql(token, "{ recommendedEvents { id } }", json!({}));
        assert_eq!(ids(&data(q2)["recommendedEvents"]), reference.recommended(user), "Q2 ({user})");
        let q3 = server.gql(token, "query($v: ID!) { socialDistance(userId: $v) }", json!({"v": other.to_string()}));
        let expected = reference.distance(user, other).map_or(Value::Null, |d| json!(d));
        assert_eq!(data(q3)["socialDistance"], expected, "Q3 ({user}, {other})");
        let q4 = server.gql(
            Some(&admin),
            "query($e: ID!) { event(id: $e) { attendeeCount whosGoing { id followerCount } } }",
            json!({"e": event.to_string()}),
        );
        let q4 = data(q4)["event"].clone();
        let (count, going) = reference.whos_going(event);
        assert_eq!(q4["attendeeCount"], count, "Q4 count ({event})");
        let served: Vec<(u32, usize)> = q4["whosGoing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| (num(u["id"].as_str().unwrap()), u["followerCount"].as_u64().unwrap() as usize))
            .collect();
        assert_eq!(served, going, "Q4 ({event})");
        *checked.entry(expected.to_string()).or_insert(0) += 1;
    }
    // The draws exercise more than one distance.
    assert!(checked.len() >= 2, "distances seen: {checked:?}");
    // Imported events are listed like any other.
    let listed = data(server.gql(None, "{ events(first: 100) { totalCount } }", json!({})));
    assert_eq!(listed["events"]["totalCount"], EVENTS);

    // A cancelled event has no one going: its imported attendances count
    // as confirmed bookings, and cancelling an event cancels those.
    let &(user, event, _) = draws
        .iter()
        .find(|&&(user, event, _)| !reference.friends_going(user, event).is_empty())
        .expect("a draw with friends going");
    let cancelled = server.gql(
        Some(&admin),
        "mutation($e: ID!) { cancelEvent(id: $e) { status attendeeCount } }",
        json!({"e": event.to_string()}),
    );
    assert_eq!(data(cancelled)["cancelEvent"], json!({"status": "CANCELLED", "attendeeCount": 0}));
    let going = |server: &Server| {
        let answer = server.gql(
            Some(&admin),
            "query($e: ID!) { event(id: $e) { attendeeCount whosGoing { id } } }",
            json!({"e": event.to_string()}),
        );
        let friends = server.gql(
            Some(tokens[&user].as_str()),
            "query($e: ID!) { event(id: $e) { friendsGoing { id } } }",
            json!({"e": event.to_string()}),
        );
        (data(answer)["event"].clone(), data(friends)["event"]["friendsGoing"].clone())
    };
    let none = (json!({"attendeeCount": 0, "whosGoing": []}), json!([]));
    assert_eq!(going(&server), none, "nobody is going to cancelled event {event}");
    drop(server);
    let server = Server::start(&data_dir, &[]);
    assert_eq!(going(&server), none, "nor after a restart");
}

#[test]
fn a_bad_row_names_its_file_and_line_and_leaves_nothing() {
    let work = TempDir::new("import-bad");
    let csv = work.path().join("csv");
    generate(&csv);
    let follows = csv.join("follows.csv");
    let mut lines: Vec<String> = std::fs::read_to_string(&follows).unwrap().lines().map(str::to_string).collect();
    lines[9] = "7,not-a-user".into();
    std::fs::write(&follows, lines.join("\n") + "\n").unwrap();
    let data_dir = work.path().join("data");
    let output = import(&data_dir, &csv);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("follows.csv:10:") && message.contains("dst"), "names file, line and column: {message}");
    assert!(!data_dir.exists(), "a failed import leaves no data directory");
    let leftovers: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, ["csv"], "and no staging directory");

    lines[9] = "7,7".into();
    std::fs::write(&follows, lines.join("\n") + "\n").unwrap();
    let output = import(&data_dir, &csv);
    assert!(String::from_utf8_lossy(&output.stderr).contains("follows.csv:10: user 7 follows themself"));
}
