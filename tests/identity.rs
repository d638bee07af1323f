//! End-to-end: accounts, sign-in, tokens and roles over real HTTP.

mod common;

use common::*;
use serde_json::json;

const REGISTER: &str = "mutation($e: String!, $p: String!, $n: String!, $r: Role) {
  register(email: $e, password: $p, name: $n, role: $r) { token user { id name role email } } }";
const LOGIN: &str = "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { token user { id email } } }";
const ME: &str = "{ me { id name role email } }";

#[test]
fn register_login_me_and_logout() {
    let dir = TempDir::new("identity");
    let server = Server::start(dir.path(), &[]);
    let registered = data(server.gql(
        None,
        REGISTER,
        json!({"e": " Ada@Example.com ", "p": "password123", "n": " Ada ", "r": "ORGANIZER"}),
    ));
    let payload = &registered["register"];
    let token = payload["token"].as_str().unwrap();
    assert!(token.starts_with("mq_") && token.len() == 67, "token {token}");
    assert_eq!(payload["user"]["name"], "Ada");
    assert_eq!(payload["user"]["role"], "ORGANIZER");
    assert_eq!(payload["user"]["email"], "Ada@Example.com", "a user sees their own email");

    let me = data(server.gql(Some(token), ME, json!({})));
    assert_eq!(me["me"]["id"], payload["user"]["id"]);
    assert_eq!(me["me"]["email"], "Ada@Example.com");
    assert_eq!(data(server.gql(None, ME, json!({})))["me"], json!(null), "anonymous me is null");

    // Email is case-insensitive at sign-in too.
    let login = data(server.gql(None, LOGIN, json!({"e": "ADA@example.COM", "p": "password123"})));
    let second = login["login"]["token"].as_str().unwrap().to_string();
    assert_ne!(second, token);

    let out = data(server.gql(Some(&second), "mutation { logout }", json!({})));
    assert_eq!(out["logout"], true);
    let revoked = server.gql(Some(&second), ME, json!({}));
    assert_eq!(error_code(&revoked), "UNAUTHENTICATED");
    // Fields that answer anonymous viewers too do not take a revoked token
    // for an anonymous one: an empty list would hide that the client must
    // sign in again.
    assert_eq!(error_code(&server.gql(Some(&second), "{ recommendedEvents { id } }", json!({}))), "UNAUTHENTICATED");
    assert_eq!(data(server.gql(None, "{ recommendedEvents { id } }", json!({})))["recommendedEvents"], json!([]));
    // Nor does `event(id)` answer null for an event the token's owner could
    // see (a draft of theirs), nor for a missing one, to tell them apart.
    let draft = data(server.gql(
        Some(token),
        "mutation { createEvent(input: {title: \"Draft\", startsAt: \"2097-01-01T20:00:00Z\", city: \"Oslo\"}) { id } }",
        json!({}),
    ))["createEvent"]["id"]
        .clone();
    for id in [draft.clone(), json!("987654")] {
        let answer = server.gql(Some(&second), "query($id: ID!) { event(id: $id) { id } }", json!({"id": id}));
        assert_eq!(error_code(&answer), "UNAUTHENTICATED", "{answer}");
    }
    let mine = data(server.gql(Some(token), "query($id: ID!) { event(id: $id) { id } }", json!({"id": draft})));
    assert_eq!(mine["event"]["id"], draft);
    // The other session is untouched.
    assert_eq!(data(server.gql(Some(token), ME, json!({})))["me"]["name"], "Ada");
    assert_eq!(error_code(&server.gql(None, "mutation { logout }", json!({}))), "UNAUTHENTICATED");
    assert_eq!(error_code(&server.gql(Some("mq_forged"), ME, json!({}))), "UNAUTHENTICATED");
}

#[test]
fn login_failures_are_indistinguishable() {
    let dir = TempDir::new("login");
    let server = Server::start(dir.path(), &[]);
    register(&server, "bob@example.com", "ATTENDEE");
    let wrong_password = server.gql(None, LOGIN, json!({"e": "bob@example.com", "p": "password124"}));
    let unknown_email = server.gql(None, LOGIN, json!({"e": "nobody@example.com", "p": "password123"}));
    assert_eq!(error_code(&wrong_password), "UNAUTHENTICATED");
    assert_eq!(error_code(&unknown_email), "UNAUTHENTICATED");
    assert_eq!(error_message(&wrong_password), error_message(&unknown_email));
}

#[test]
fn registration_rules_name_the_field() {
    let dir = TempDir::new("register-rules");
    let server = Server::start(dir.path(), &["--rate-limit-credentials", "0"]);
    register(&server, "taken@example.com", "ATTENDEE");
    let cases = [
        (json!({"e": "TAKEN@example.com", "p": "password123", "n": "X"}), "CONFLICT", "email"),
        (json!({"e": "not-an-email", "p": "password123", "n": "X"}), "BAD_USER_INPUT", "email"),
        (json!({"e": "a@example..com", "p": "password123", "n": "X"}), "BAD_USER_INPUT", "email"),
        (json!({"e": "\"quoted\"@example.com", "p": "password123", "n": "X"}), "BAD_USER_INPUT", "email"),
        (json!({"e": "spaces@example.com", "p": "        ", "n": "X"}), "BAD_USER_INPUT", "password"),
        (json!({"e": "short@example.com", "p": "1234567", "n": "X"}), "BAD_USER_INPUT", "password"),
        (json!({"e": "long@example.com", "p": "x".repeat(129), "n": "X"}), "BAD_USER_INPUT", "password"),
        (json!({"e": "blank@example.com", "p": "password123", "n": "   "}), "BAD_USER_INPUT", "name"),
        (json!({"e": "lines@example.com", "p": "password123", "n": "Ada\nAdmin"}), "BAD_USER_INPUT", "name"),
        (json!({"e": "unseen@example.com", "p": "password123", "n": "\u{200D}"}), "BAD_USER_INPUT", "name"),
        (json!({"e": "spoof@example.com", "p": "password123", "n": "\u{202E}nimda"}), "BAD_USER_INPUT", "name"),
        (json!({"e": "big@example.com", "p": "password123", "n": "n".repeat(101)}), "BAD_USER_INPUT", "name"),
        (json!({"e": "boss@example.com", "p": "password123", "n": "X", "r": "ADMIN"}), "BAD_USER_INPUT", "role"),
        (json!({"e": "api@example.com", "p": "password123", "n": "X", "r": "PARTNER"}), "BAD_USER_INPUT", "role"),
    ];
    for (variables, code, field) in cases {
        let response = server.gql(None, REGISTER, variables.clone());
        assert_eq!(error_code(&response), code, "{variables}");
        assert!(error_message(&response).starts_with(field), "message should name {field}: {response}");
    }
    // Default role is ATTENDEE.
    let plain = data(server.gql(None, REGISTER, json!({"e": "plain@example.com", "p": "password123", "n": "P"})));
    assert_eq!(plain["register"]["user"]["role"], "ATTENDEE");
}

#[test]
fn email_is_visible_only_to_its_owner_and_admins() {
    let dir = TempDir::new("email-visibility");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let (alice, alice_id) = register(&server, "alice@example.com", "ATTENDEE");
    let (bob, _) = register(&server, "bob@example.com", "ORGANIZER");
    let admin = login(&server, "root@example.com", "admin-password");
    let query = "query($id: ID!) { user(id: $id) { id name email } }";
    let vars = json!({"id": alice_id});
    assert_eq!(data(server.gql(Some(&alice), query, vars.clone()))["user"]["email"], "alice@example.com");
    assert_eq!(data(server.gql(Some(&admin), query, vars.clone()))["user"]["email"], "alice@example.com");
    assert_eq!(data(server.gql(Some(&bob), query, vars.clone()))["user"]["email"], json!(null));
    assert_eq!(data(server.gql(None, query, vars.clone()))["user"]["email"], json!(null));
    assert_eq!(data(server.gql(None, query, vars))["user"]["name"], "Test User");
    assert_eq!(data(server.gql(None, query, json!({"id": "999"})))["user"], json!(null));
    assert_eq!(error_code(&server.gql(None, query, json!({"id": "abc"}))), "BAD_USER_INPUT");
}

#[test]
fn only_admins_set_roles() {
    let dir = TempDir::new("roles");
    create_admin(dir.path(), "root@example.com");
    let server = Server::start(dir.path(), &[]);
    let (organizer, organizer_id) = register(&server, "org@example.com", "ORGANIZER");
    let (_, attendee_id) = register(&server, "att@example.com", "ATTENDEE");
    let admin = login(&server, "root@example.com", "admin-password");
    let set_role = "mutation($id: ID!, $r: Role!) { setRole(userId: $id, role: $r) { id role } }";

    let denied = server.gql(Some(&organizer), set_role, json!({"id": attendee_id, "r": "ADMIN"}));
    assert_eq!(error_code(&denied), "FORBIDDEN");
    assert_eq!(error_code(&server.gql(None, set_role, json!({"id": attendee_id, "r": "ADMIN"}))), "UNAUTHENTICATED");
    assert_eq!(error_code(&server.gql(Some(&admin), set_role, json!({"id": "9999", "r": "ADMIN"}))), "NOT_FOUND");

    let promoted = data(server.gql(Some(&admin), set_role, json!({"id": attendee_id, "r": "PARTNER"})));
    assert_eq!(promoted["setRole"]["role"], "PARTNER");
    // The change takes effect for the user's existing tokens at once.
    let demoted = data(server.gql(Some(&admin), set_role, json!({"id": organizer_id, "r": "ATTENDEE"})));
    assert_eq!(demoted["setRole"]["role"], "ATTENDEE");
    let create = "mutation { createVenue(name: \"Hall\", city: \"Oslo\") { id } }";
    assert_eq!(error_code(&server.gql(Some(&organizer), create, json!({}))), "FORBIDDEN");

    // An admin cannot demote themselves (the last one would lock everyone
    // out); another admin can.
    let root_id = data(server.gql(Some(&admin), ME, json!({})))["me"]["id"].as_str().unwrap().to_string();
    let own = server.gql(Some(&admin), set_role, json!({"id": root_id, "r": "ATTENDEE"}));
    assert_eq!(error_code(&own), "CONFLICT", "{own}");
    assert_eq!(data(server.gql(Some(&admin), ME, json!({})))["me"]["role"], "ADMIN");
    data(server.gql(Some(&admin), set_role, json!({"id": attendee_id, "r": "ADMIN"})));
    let second = login(&server, "att@example.com", "password123");
    let by_other = data(server.gql(Some(&second), set_role, json!({"id": root_id, "r": "ATTENDEE"})));
    assert_eq!(by_other["setRole"]["role"], "ATTENDEE");
}
