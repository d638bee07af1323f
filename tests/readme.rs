//! The README's quick start holds: its first on-sale script runs, word for
//! word, against the real binary, and prints what the README says it does.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// The shell block after the README's `first-on-sale` marker.
fn first_on_sale_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, after_marker) = readme.split_once("<!-- first-on-sale").expect("the README marks its first on-sale script");
    let (_, block) = after_marker.split_once("```sh\n").expect("a sh block follows the marker");
    let (script, _) = block.split_once("\n```").expect("the block ends");
    script.to_string()
}

#[test]
fn the_readmes_first_on_sale_runs_as_written() {
    for tool in ["bash", "curl", "jq"] {
        let found = Command::new(tool).arg("--version").output().is_ok_and(|output| output.status.success());
        assert!(found, "{tool} runs the README's script: install it (.ci/run does)");
    }
    let dir = TempDir::new("readme");
    let server = Server::start(dir.path(), &[]);
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &first_on_sale_script()])
        .env("MARQUEE", format!("http://{}", server.addr))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the script failed\nstdout:\n{stdout}\nstderr:\n{stderr}");

    // What it printed, one JSON document after another.
    let printed: Vec<Value> = serde_json::Deserializer::from_str(&stdout).into_iter().map(Result::unwrap).collect();
    assert_eq!(printed.first(), Some(&json!({"publishEvent": {"status": "PUBLISHED"}})), "{stdout}");
    let found = &printed[1]["events"]["nodes"];
    assert_eq!(found, &json!([{"title": "Fado night", "ticketTypes": [{"name": "Standing", "available": 200}]}]));
    assert!(printed[2]["checkIn"]["checkedInAt"].is_string(), "{stdout}");
    assert_eq!(
        printed.last(),
        Some(&json!({"eventAnalytics": {"sold": 2, "revenueCents": 5000, "checkedIn": 1}})),
        "the sales the README promises: {stdout}"
    );
}
