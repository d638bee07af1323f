//! The served schema against the public contract: starts the real binary,
//! introspects it over HTTP and checks that every type, field, argument,
//! input field and enum value of `contract.graphql` is served with exactly
//! the contract's type and default value. The schema may add things; it may
//! not drop or retype anything.
//!
//! Parts of the contract belong to work not done yet. They are listed in
//! [`DEFERRED`] and [`DEFERRED_ERROR_CODES`]; the test fails when one of them
//! turns out to be served already, so the lists only ever shrink.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use async_graphql_parser::types::{
    InputValueDefinition, ServiceDocument, TypeDefinition, TypeKind, TypeSystemDefinition,
};
use common::*;
use serde_json::{json, Value};

/// Contract items not served yet, each owned by an open issue. An entry
/// names a whole type (`"Booking"`), a field or enum value (`"Event.attendeeCount"`),
/// or an argument (`"Query.events(first)"`); it covers everything below it.
const DEFERRED: &[&str] = &[];

/// Contract error codes nothing in the api can produce yet.
const DEFERRED_ERROR_CODES: &[&str] = &[];

const TYPE_REF: &str = "kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } } }";

fn introspection_query() -> String {
    format!(
        "query Contract {{
          __schema {{
            queryType {{ name }} mutationType {{ name }} subscriptionType {{ name }}
            types {{
              kind name
              fields(includeDeprecated: true) {{ name args {{ name defaultValue type {{ {TYPE_REF} }} }} type {{ {TYPE_REF} }} }}
              inputFields {{ name defaultValue type {{ {TYPE_REF} }} }}
              enumValues(includeDeprecated: true) {{ name }}
            }}
          }}
        }}"
    )
}

/// One way the served schema falls short of the contract.
#[derive(Debug)]
struct Problem {
    /// The contract item, e.g. `Query.events(first)`.
    item: String,
    what: String,
}

/// Findings of one comparison.
#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
}

impl Report {
    fn add(&mut self, item: impl Into<String>, what: impl Into<String>) {
        self.problems.push(Problem { item: item.into(), what: what.into() });
    }
}

/// The contract's text: `../shared/contract.graphql` when the shared copy is
/// beside the repository, else the in-repo copy; both must then be identical.
fn contract_text() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared: PathBuf = root.join("../shared/contract.graphql");
    let copy: PathBuf = root.join("api/contract.graphql");
    match (shared.exists(), copy.exists()) {
        (true, true) => {
            let shared_bytes = std::fs::read(&shared).unwrap();
            let copy_bytes = std::fs::read(&copy).unwrap();
            assert!(
                shared_bytes == copy_bytes,
                "{} differs from {}: copy the shared contract into the repository",
                copy.display(),
                shared.display()
            );
            String::from_utf8(shared_bytes).expect("the contract is UTF-8")
        }
        (true, false) => std::fs::read_to_string(&shared).unwrap(),
        (false, true) => std::fs::read_to_string(&copy).unwrap(),
        (false, false) => panic!("no contract: neither {} nor {} exists", shared.display(), copy.display()),
    }
}

fn contract_types(document: &ServiceDocument) -> Vec<&TypeDefinition> {
    document
        .definitions
        .iter()
        .filter_map(|definition| match definition {
            TypeSystemDefinition::Type(ty) => Some(&ty.node),
            _ => None,
        })
        .collect()
}

/// `[String!]!` from an introspection type reference.
fn type_string(reference: &Value) -> String {
    match reference["kind"].as_str() {
        Some("NON_NULL") => format!("{}!", type_string(&reference["ofType"])),
        Some("LIST") => format!("[{}]", type_string(&reference["ofType"])),
        _ => reference["name"].as_str().unwrap_or("?").to_string(),
    }
}

fn by_name(list: &Value) -> BTreeMap<String, &Value> {
    list.as_array()
        .map(|items| items.iter().map(|item| (item["name"].as_str().unwrap_or_default().to_string(), item)).collect())
        .unwrap_or_default()
}

fn kind_name(kind: &TypeKind) -> &'static str {
    match kind {
        TypeKind::Scalar => "SCALAR",
        TypeKind::Object(_) => "OBJECT",
        TypeKind::Interface(_) => "INTERFACE",
        TypeKind::Union(_) => "UNION",
        TypeKind::Enum(_) => "ENUM",
        TypeKind::InputObject(_) => "INPUT_OBJECT",
    }
}

/// Checks contract input values (arguments or input fields) against the
/// served ones; served extras must be optional, or old clients break.
fn check_inputs(report: &mut Report, owner: &str, wanted: &[&InputValueDefinition], served: &Value, label: &str) {
    let served = by_name(served);
    for input in wanted {
        let name = input.name.node.as_str();
        let item = if label == "argument" { format!("{owner}({name})") } else { format!("{owner}.{name}") };
        let Some(found) = served.get(name) else {
            report.add(item, format!("{label} missing (contract: {name}: {})", input.ty.node));
            continue;
        };
        let (want_type, got_type) = (input.ty.node.to_string(), type_string(&found["type"]));
        if want_type != got_type {
            report.add(&item, format!("{label} type is {got_type}, contract says {want_type}"));
        }
        let want_default = input.default_value.as_ref().map(|value| value.node.to_string());
        let got_default = found["defaultValue"].as_str().map(str::to_string);
        if want_default != got_default {
            report.add(&item, format!("{label} default is {got_default:?}, contract says {want_default:?}"));
        }
    }
    let wanted_names: BTreeSet<&str> = wanted.iter().map(|input| input.name.node.as_str()).collect();
    for (name, found) in &served {
        let optional = !type_string(&found["type"]).ends_with('!') || !found["defaultValue"].is_null();
        if !wanted_names.contains(name.as_str()) && !optional {
            let item = if label == "argument" { format!("{owner}({name})") } else { format!("{owner}.{name}") };
            report.add(item, format!("extra {label} is required; additions must be optional"));
        }
    }
}

fn check_type(report: &mut Report, wanted: &TypeDefinition, served: &Value) {
    let name = wanted.name.node.as_str();
    match &wanted.kind {
        TypeKind::Object(object) => {
            let fields = by_name(&served["fields"]);
            for field in &object.fields {
                let field = &field.node;
                let item = format!("{name}.{}", field.name.node);
                let Some(found) = fields.get(field.name.node.as_str()) else {
                    report.add(item, format!("field missing (contract: {}: {})", field.name.node, field.ty.node));
                    continue;
                };
                let (want_type, got_type) = (field.ty.node.to_string(), type_string(&found["type"]));
                if want_type != got_type {
                    report.add(&item, format!("field type is {got_type}, contract says {want_type}"));
                }
                let arguments: Vec<&InputValueDefinition> = field.arguments.iter().map(|a| &a.node).collect();
                check_inputs(report, &item, &arguments, &found["args"], "argument");
            }
        }
        TypeKind::InputObject(input) => {
            let fields: Vec<&InputValueDefinition> = input.fields.iter().map(|f| &f.node).collect();
            check_inputs(report, name, &fields, &served["inputFields"], "input field");
        }
        TypeKind::Enum(enumeration) => {
            let values = by_name(&served["enumValues"]);
            for value in &enumeration.values {
                if !values.contains_key(value.node.value.node.as_str()) {
                    report.add(format!("{name}.{}", value.node.value.node), "enum value missing");
                }
            }
        }
        TypeKind::Scalar | TypeKind::Interface(_) | TypeKind::Union(_) => {}
    }
}

fn compare(document: &ServiceDocument, schema: &Value) -> Report {
    let mut report = Report::default();
    let served = by_name(&schema["types"]);
    for wanted in contract_types(document) {
        let name = wanted.name.node.as_str();
        let Some(found) = served.get(name) else {
            report.add(name, format!("{} type missing", kind_name(&wanted.kind)));
            continue;
        };
        let want_kind = kind_name(&wanted.kind);
        if found["kind"] != want_kind {
            report.add(name, format!("served as {}, contract says {want_kind}", found["kind"]));
            continue;
        }
        check_type(&mut report, wanted, found);
    }
    for (root, field) in [("Query", "queryType"), ("Mutation", "mutationType"), ("Subscription", "subscriptionType")] {
        let is_contract_type = contract_types(document).iter().any(|t| t.name.node.as_str() == root);
        if is_contract_type && schema[field]["name"] != root {
            report.add(root, format!("the schema's {field} is {}, contract says {root}", schema[field]["name"]));
        }
    }
    report
}

/// `Query.events(first)` -> itself, `Query.events`, `Query`.
fn item_and_parents(item: &str) -> Vec<&str> {
    let mut items = vec![item];
    if let Some(open) = item.find('(') {
        items.push(&item[..open]);
    }
    let last = items.last().copied().unwrap_or(item);
    if let Some(dot) = last.find('.') {
        items.push(&last[..dot]);
    }
    items
}

/// The entry of `list` that covers `item`, if any.
fn covering_entry<'a>(item: &str, list: &[&'a str]) -> Option<&'a str> {
    item_and_parents(item).into_iter().find_map(|candidate| list.iter().copied().find(|entry| *entry == candidate))
}

fn served_schema() -> Value {
    let dir = TempDir::new("contract");
    let server = Server::start(dir.path(), &[]);
    let schema = data(server.gql(None, &introspection_query(), json!({})))["__schema"].clone();
    assert!(
        schema["types"].as_array().is_some_and(|types| !types.is_empty()),
        "introspection returned no types: {schema}"
    );
    assert_eq!(server.stop(), Some(0), "marquee exits 0 on SIGTERM");
    schema
}

#[test]
fn served_schema_holds_the_contract() {
    let document = async_graphql_parser::parse_schema(contract_text()).expect("the contract parses");
    let types = contract_types(&document);
    // A parse that silently lost the contract would make this test vacuous.
    assert!(types.len() >= 25, "the contract has only {} types", types.len());
    for name in ["Query", "Mutation", "Subscription", "Event", "DateTime", "Role", "BookInput"] {
        assert!(types.iter().any(|t| t.name.node.as_str() == name), "the contract parse lost {name}");
    }

    let report = compare(&document, &served_schema());

    let mut failures = Vec::new();
    let mut still_missing: BTreeMap<&str, Vec<&Problem>> = BTreeMap::new();
    for problem in &report.problems {
        match covering_entry(&problem.item, DEFERRED) {
            Some(entry) => still_missing.entry(entry).or_default().push(problem),
            None => failures.push(format!("{}: {}", problem.item, problem.what)),
        }
    }
    for entry in DEFERRED {
        if !still_missing.contains_key(entry) {
            failures.push(format!(
                "{entry} is served as the contract says now: remove it from DEFERRED in tests/contract.rs"
            ));
        }
    }
    for entry in DEFERRED {
        assert!(
            types.iter().any(|t| t.name.node.as_str() == item_and_parents(entry).last().copied().unwrap_or(entry)),
            "DEFERRED entry {entry} names no contract type"
        );
    }

    eprintln!("contract items not served yet ({} deferred entries):", still_missing.len());
    for (entry, problems) in &still_missing {
        for problem in problems {
            eprintln!("  [{entry}] {}: {}", problem.item, problem.what);
        }
    }
    assert!(failures.is_empty(), "the served schema breaks the contract:\n  {}", failures.join("\n  "));
}

/// The error codes listed in the contract's "Errors:" comment block.
fn contract_error_codes(contract: &str) -> Vec<String> {
    let mut codes = Vec::new();
    let mut lines = contract.lines().skip_while(|line| !line.starts_with("# Errors:"));
    lines.next();
    for line in lines.take_while(|line| line.starts_with('#')) {
        let Some(word) = line.trim_start_matches('#').split_whitespace().next() else {
            continue;
        };
        let is_code = word.len() >= 3 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        if is_code {
            codes.push(word.to_string());
        }
    }
    codes
}

/// Every string literal in the api crate's source, outside comments.
fn api_string_literals() -> BTreeSet<String> {
    let mut literals = BTreeSet::new();
    let mut pending = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("api/src")];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|ext| ext != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for line in source.lines().filter(|line| !line.trim_start().starts_with("//")) {
            literals.extend(line.split('"').skip(1).step_by(2).map(str::to_string));
        }
    }
    literals
}

#[test]
fn every_contract_error_code_can_be_sent() {
    let codes = contract_error_codes(&contract_text());
    let expected_at_least = ["UNAUTHENTICATED", "FORBIDDEN", "NOT_FOUND", "BAD_USER_INPUT", "CONFLICT"];
    for code in expected_at_least {
        assert!(codes.iter().any(|c| c == code), "the contract's error list lost {code}: {codes:?}");
    }
    for deferred in DEFERRED_ERROR_CODES {
        assert!(
            codes.iter().any(|c| c == deferred),
            "DEFERRED_ERROR_CODES lists {deferred}, which the contract has not"
        );
    }

    // Codes are set from string literals in the api crate (ApiError::code and
    // the HTTP layer); a code no literal spells can never reach a client.
    let literals = api_string_literals();
    let mut failures = Vec::new();
    let mut still_missing = Vec::new();
    for code in &codes {
        let sendable = literals.contains(code);
        let deferred = DEFERRED_ERROR_CODES.contains(&code.as_str());
        match (sendable, deferred) {
            (true, true) => failures.push(format!("{code} can be sent now: remove it from DEFERRED_ERROR_CODES")),
            (false, false) => failures.push(format!("nothing in api/src sets extensions.code {code}")),
            (false, true) => still_missing.push(code.as_str()),
            (true, false) => {}
        }
    }
    eprintln!("contract error codes not sent yet: {still_missing:?}");
    assert!(failures.is_empty(), "error codes: {}", failures.join("; "));

    // Codes the server actually sends today, end to end.
    let dir = TempDir::new("codes");
    let server = Server::start(dir.path(), &[]);
    let (attendee, _) = register(&server, "codes@example.com", "ATTENDEE");
    let sent = [
        (server.gql(None, "mutation { logout }", json!({})), "UNAUTHENTICATED"),
        (
            server.gql(Some(&attendee), "mutation { createVenue(name: \"V\", city: \"C\") { id } }", json!({})),
            "FORBIDDEN",
        ),
        (server.gql(None, "{ nope }", json!({})), "BAD_USER_INPUT"),
        (
            server.gql(
                None,
                "mutation { register(email: \"codes@example.com\", password: \"password123\", name: \"X\") { token } }",
                json!({}),
            ),
            "CONFLICT",
        ),
    ];
    for (response, code) in sent {
        assert_eq!(error_code(&response), code, "response {response}");
        assert!(codes.iter().any(|c| c == code));
    }
    assert_eq!(server.stop(), Some(0));
}

/// The checker itself: a contract that drifted from the served schema in
/// every way it knows must be reported item by item, or the main test
/// would pass vacuously.
#[test]
fn checker_reports_every_kind_of_drift() {
    let drifted = r#"
        scalar DateTime
        enum Role { ATTENDEE ROOT }
        type Venue { id: ID! name: Int! city: String }
        input EventFilter { city: String! text: String }
        type Missing { x: Int }
        input EventStatus { x: Int }
        type Query {
          me: User
          events(filter: EventFilter, first: Int = 21, after: String!): EventConnection!
          nothing: Int
        }
        type User { id: ID! name: String! role: Role! email: String }
    "#;
    let document = async_graphql_parser::parse_schema(drifted).unwrap();
    let report = compare(&document, &served_schema());
    let items: BTreeSet<&str> = report.problems.iter().map(|p| p.item.as_str()).collect();
    let expected: BTreeSet<&str> = [
        "Role.ROOT",
        "Venue.name",
        "Venue.city",
        "EventFilter.city",
        "Missing",
        "EventStatus",
        "Query.events(first)",
        "Query.events(after)",
        "Query.nothing",
    ]
    .into_iter()
    .collect();
    assert_eq!(items, expected, "problems: {:#?}", report.problems);

    // A served addition that old clients cannot omit breaks them.
    let served = json!({
        "queryType": { "name": "Query" },
        "types": [{ "kind": "OBJECT", "name": "Query", "fields": [{
            "name": "f",
            "type": { "kind": "SCALAR", "name": "Int", "ofType": null },
            "args": [
                { "name": "extra", "defaultValue": null, "type": { "kind": "NON_NULL", "name": null, "ofType": { "kind": "SCALAR", "name": "Int", "ofType": null } } },
                { "name": "fine", "defaultValue": "1", "type": { "kind": "NON_NULL", "name": null, "ofType": { "kind": "SCALAR", "name": "Int", "ofType": null } } }
            ]
        }]}]
    });
    let document = async_graphql_parser::parse_schema("type Query { f: Int }").unwrap();
    let report = compare(&document, &served);
    let items: Vec<&str> = report.problems.iter().map(|p| p.item.as_str()).collect();
    assert_eq!(items, ["Query.f(extra)"], "problems: {:#?}", report.problems);
    let list = ["Query.webhooks", "Webhook", "Event.friendsGoing"];
    assert_eq!(covering_entry("Query.webhooks", &list), Some("Query.webhooks"));
    assert_eq!(covering_entry("Webhook.url", &list), Some("Webhook"));
    assert_eq!(covering_entry("Event.friendsGoing(first)", &list), Some("Event.friendsGoing"));
    assert_eq!(covering_entry("Query.events(first)", &list), None);
    assert_eq!(covering_entry("Query", &list), None);
}
