//! What the graphql-transport-ws protocol asks of a server beyond what
//! async-graphql's WebSocket does, applied to the messages going in and out
//! of a connection (the legacy `graphql-ws` protocol gets only the last three
//! items):
//!
//! - a subscription refused before it runs (its document does not parse or
//!   validate, or is over the query limits: errors without a path and no
//!   data) gets an `error` message and nothing after it, not a `next`
//!   carrying the errors and a `complete`;
//! - after the client completes a subscription nothing more is sent for it
//!   (async-graphql answers with a `complete`, and a result already on its
//!   way would follow);
//! - the connection closes with the protocol's codes: 4403 when
//!   `connection_init` is refused (a bad token), 4400 for a message the
//!   protocol does not have (the legacy protocol's `start`, `stop` and
//!   `connection_terminate` included, which async-graphql takes on either
//!   protocol), 4401 for a `subscribe` before the connection
//!   was acknowledged, 4409 for a `subscribe` whose id is already running.
//!   async-graphql closes with 1002, 1011 or, for a reused id, silently
//!   replaces the running subscription;
//! - (both protocols) a connection that sends no `connection_init` within
//!   [`CONNECTION_INIT_WAIT`] closes with 4408;
//! - (both protocols) a message over the size limit closes the connection
//!   with 1009 (message too big), not a dropped connection;
//! - (both protocols) a close frame's reason is cut to the 123 bytes a
//!   close frame has room for.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_graphql::http::WebSocketProtocols;
use axum::extract::ws::{CloseFrame, Message};
use serde::Deserialize;

/// `connection_init` refused.
const FORBIDDEN: u16 = 4403;
/// A message the protocol does not have, or one it cannot read.
const BAD_REQUEST: u16 = 4400;
/// RFC 6455's close code for a message too big to take.
const MESSAGE_TOO_BIG: u16 = 1009;
/// A `subscribe` before the connection was acknowledged.
const UNAUTHORIZED: u16 = 4401;
/// A `subscribe` whose id is already running.
const SUBSCRIBER_EXISTS: u16 = 4409;
/// No `connection_init` in time.
const INIT_TIMEOUT: u16 = 4408;

/// How long a connection may stay open without `connection_init` (either
/// protocol): a socket that never sends it would hold one of the
/// `--ws-connections-max` slots for good. Clients send it as soon as the
/// socket opens (graphql-ws' own server waits 3 s).
pub(crate) const CONNECTION_INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest reason a close frame can carry: its payload (the 2-byte code
/// and the reason) must fit in 125 bytes, or clients drop the connection
/// as broken instead of reading the code. async-graphql puts a whole parse
/// error there.
const MAX_CLOSE_REASON: usize = 123;

/// The close codes async-graphql uses in place of the ones above.
const PROTOCOL_ERROR: u16 = 1002;
const HANDSHAKE_INCOMPLETE: u16 = 1011;

#[derive(Default)]
struct State {
    /// Subscriptions the client started that neither side has completed.
    running: HashSet<String>,
    /// Subscriptions that have had their first result (only the first can
    /// be a refusal).
    answered: HashSet<String>,
    /// Subscriptions refused with an `error` message: nothing more is sent
    /// for them.
    refused: HashSet<String>,
    /// Subscriptions the client completed while they ran: nothing more is
    /// sent for them (async-graphql answers with a `complete`).
    stopped: HashSet<String>,
    /// Whether the client sent `connection_init`.
    init_sent: bool,
    /// Whether `connection_init` was refused.
    init_refused: bool,
    /// The close the connection ends with after the input was ended here
    /// (see [`Conformance::closing`]).
    close: Option<(u16, String)>,
}

/// One connection's view of the protocol; clones share it.
#[derive(Clone)]
pub(crate) struct Conformance {
    strict: bool,
    state: Arc<Mutex<State>>,
}

/// Whether a `subscribe` message's payload holds its query's text.
fn holds_query(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|message| message["payload"]["query"].is_string())
}

/// The fields of a message that say what it is about.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

impl Conformance {
    /// Checks graphql-transport-ws connections; lets the legacy protocol be.
    pub(crate) fn new(protocol: Option<WebSocketProtocols>) -> Conformance {
        Conformance {
            strict: protocol == Some(WebSocketProtocols::GraphQLWS),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("WebSocket protocol state lock poisoned")
    }

    /// Notes that `connection_init` was refused (the close that follows is
    /// 4403).
    pub(crate) fn init_refused(&self) {
        self.state().init_refused = true;
    }

    /// Notes why reading the client's next message failed: one over the
    /// size limit closes the connection with 1009 (message too big), so
    /// the client hears why instead of seeing the connection drop (which
    /// clients take as a cue to reconnect and send it again).
    pub(crate) fn read_failed(&self, error: &axum::Error) {
        let source = std::error::Error::source(error).and_then(|inner| inner.downcast_ref::<tungstenite::Error>());
        if let Some(tungstenite::Error::Capacity(capacity)) = source {
            self.state().close = Some((MESSAGE_TOO_BIG, capacity.to_string()));
        }
    }

    /// Looks at a client message on its way in (noting `connection_init`,
    /// see [`Conformance::init_timeout`]): false when it breaks the
    /// protocol in a way async-graphql lets pass (a `subscribe` reusing a
    /// running id); the input then ends and [`Conformance::closing`] says
    /// how to close.
    pub(crate) fn incoming(&self, message: &Message) -> bool {
        let Message::Text(text) = message else { return true };
        if !self.strict && self.state().init_sent {
            return true;
        }
        let Ok(Head { kind, id }) = serde_json::from_str::<Head>(text) else { return true };
        let mut state = self.state();
        if kind == "connection_init" {
            state.init_sent = true;
        }
        // async-graphql takes the legacy protocol's messages on either
        // protocol; graphql-transport-ws has none of them.
        if self.strict && matches!(kind.as_str(), "start" | "stop" | "connection_terminate") {
            state.close = Some((BAD_REQUEST, format!("Invalid message received: {kind}")));
            return false;
        }
        // A `subscribe` without its query is not one (async-graphql would
        // answer it with a parse error of the empty document).
        if self.strict && kind == "subscribe" && id.is_some() && !holds_query(text) {
            state.close = Some((BAD_REQUEST, "Invalid message received: subscribe needs payload.query".into()));
            return false;
        }
        let Some(id) = id.filter(|_| self.strict) else { return true };
        match kind.as_str() {
            "subscribe" if !state.running.insert(id.clone()) => {
                state.close = Some((SUBSCRIBER_EXISTS, format!("Subscriber for {id} already exists")));
                false
            }
            "complete" => {
                if state.running.remove(&id) {
                    state.stopped.insert(id.clone());
                }
                state.answered.remove(&id);
                true
            }
            _ => true,
        }
    }

    /// A server message on its way out, as the protocol wants it; None when
    /// it is not to be sent.
    pub(crate) fn outgoing(&self, message: Message) -> Option<Message> {
        if let Message::Close(Some(frame)) = &message {
            if frame.reason.len() > MAX_CLOSE_REASON {
                let mut reason = frame.reason.as_str();
                let mut end = MAX_CLOSE_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason = &reason[..end];
                let frame = CloseFrame { code: frame.code, reason: reason.into() };
                return self.outgoing(Message::Close(Some(frame)));
            }
        }
        if !self.strict {
            return Some(message);
        }
        match message {
            Message::Text(text) => {
                let Ok(Head { kind, id: Some(id) }) = serde_json::from_str::<Head>(&text) else {
                    return Some(Message::Text(text));
                };
                let mut state = self.state();
                match kind.as_str() {
                    "complete" if state.stopped.remove(&id) => None,
                    "next" if state.stopped.contains(&id) => None,
                    "next" if state.answered.insert(id.clone()) => match refusal(&text) {
                        Some(errors) => {
                            state.running.remove(&id);
                            state.refused.insert(id.clone());
                            let error = serde_json::json!({"id": id, "type": "error", "payload": errors});
                            Some(Message::Text(error.to_string().into()))
                        }
                        None => Some(Message::Text(text)),
                    },
                    "complete" => {
                        state.running.remove(&id);
                        state.answered.remove(&id);
                        (!state.refused.remove(&id)).then_some(Message::Text(text))
                    }
                    _ => Some(Message::Text(text)),
                }
            }
            Message::Close(Some(frame)) => {
                let code = match frame.code {
                    PROTOCOL_ERROR if self.state().init_refused => FORBIDDEN,
                    PROTOCOL_ERROR => BAD_REQUEST,
                    HANDSHAKE_INCOMPLETE => UNAUTHORIZED,
                    other => other,
                };
                Some(Message::Close(Some(CloseFrame { code, reason: frame.reason })))
            }
            other => Some(other),
        }
    }

    /// Resolves when `wait` ([`CONNECTION_INIT_WAIT`]) has passed without
    /// a `connection_init` (the input is then to end, and the connection to
    /// close with 4408); never resolves once one came.
    pub(crate) async fn init_timeout(self, wait: std::time::Duration) {
        tokio::time::sleep(wait).await;
        let init_sent = {
            let mut state = self.state();
            if !state.init_sent {
                state.close = Some((INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            state.init_sent
        };
        if init_sent {
            std::future::pending::<()>().await;
        }
    }

    /// The close to end with when the input was ended here: a client
    /// message broke the protocol, or `connection_init` did not come in
    /// time.
    pub(crate) fn closing(&self) -> Option<CloseFrame> {
        let (code, reason) = self.state().close.take()?;
        Some(CloseFrame { code, reason: reason.into() })
    }
}

/// The errors of a `next` message whose result is a refusal: errors, none
/// of them at a path, and no data (nothing ran).
fn refusal(text: &str) -> Option<serde_json::Value> {
    let message: serde_json::Value = serde_json::from_str(text).ok()?;
    let payload = message.get("payload")?;
    let errors = payload.get("errors")?.as_array()?;
    let ran = payload.get("data").is_some_and(|data| !data.is_null());
    let at_paths = errors.iter().any(|error| error.get("path").is_some());
    (!errors.is_empty() && !ran && !at_paths).then(|| serde_json::Value::Array(errors.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: serde_json::Value) -> Message {
        Message::Text(value.to_string().into())
    }

    fn parsed(message: Option<Message>) -> serde_json::Value {
        match message {
            Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    fn close_code(message: Option<Message>) -> u16 {
        match message {
            Some(Message::Close(Some(frame))) => frame.code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    fn close(code: u16) -> Message {
        Message::Close(Some(CloseFrame { code, reason: "why".into() }))
    }

    #[test]
    fn a_refused_subscription_gets_one_error_message_and_nothing_after() {
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        assert!(protocol.incoming(&text(
            serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )));
        let errors = serde_json::json!([{"message": "Unknown field", "extensions": {"code": "BAD_USER_INPUT"}}]);
        let next = text(serde_json::json!({"id": "1", "type": "next", "payload": {"data": null, "errors": errors}}));
        assert_eq!(parsed(protocol.outgoing(next)), serde_json::json!({"id": "1", "type": "error", "payload": errors}));
        assert!(protocol.outgoing(text(serde_json::json!({"id": "1", "type": "complete"}))).is_none());
        // The id is free again.
        assert!(protocol.incoming(&text(
            serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )));
    }

    #[test]
    fn results_and_field_errors_pass_as_they_are() {
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        let field_error = serde_json::json!({"id": "1", "type": "next", "payload": {
            "data": null, "errors": [{"message": "sign in first", "path": ["notifications"]}]}});
        assert_eq!(parsed(protocol.outgoing(text(field_error.clone()))), field_error);
        let result = serde_json::json!({"id": "2", "type": "next", "payload": {"data": {"a": 1}}});
        assert_eq!(parsed(protocol.outgoing(text(result.clone()))), result);
        // Only a subscription's first result can be a refusal.
        let later =
            serde_json::json!({"id": "2", "type": "next", "payload": {"data": null, "errors": [{"message": "x"}]}});
        assert_eq!(parsed(protocol.outgoing(text(later.clone()))), later);
        let complete = serde_json::json!({"id": "2", "type": "complete"});
        assert_eq!(parsed(protocol.outgoing(text(complete.clone()))), complete);
    }

    #[test]
    fn nothing_follows_the_clients_complete() {
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        assert!(protocol.incoming(&text(
            serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )));
        let result = serde_json::json!({"id": "1", "type": "next", "payload": {"data": {"a": 1}}});
        assert!(protocol.outgoing(text(result.clone())).is_some());
        assert!(protocol.incoming(&text(serde_json::json!({"id": "1", "type": "complete"}))));
        // Subscribed again at once, before the old one's echo went out.
        assert!(protocol.incoming(&text(
            serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )));
        assert!(protocol.outgoing(text(result.clone())).is_none(), "a result of the completed one");
        assert!(protocol.outgoing(text(serde_json::json!({"id": "1", "type": "complete"}))).is_none());
        // The new one is served, and running.
        assert!(protocol.outgoing(text(result.clone())).is_some());
        assert!(!protocol.incoming(&text(
            serde_json::json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { x }"}})
        )));
    }

    #[test]
    fn a_running_id_cannot_be_subscribed_again() {
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        let subscribe =
            text(serde_json::json!({"id": "7", "type": "subscribe", "payload": {"query": "subscription { x }"}}));
        assert!(protocol.incoming(&subscribe));
        assert!(protocol.closing().is_none());
        assert!(!protocol.incoming(&subscribe));
        let frame = protocol.closing().unwrap();
        assert_eq!((frame.code, frame.reason.as_str()), (4409, "Subscriber for 7 already exists"));
        // Completed by the client, it may be used again.
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        assert!(protocol.incoming(&subscribe));
        assert!(protocol.incoming(&text(serde_json::json!({"id": "7", "type": "complete"}))));
        assert!(protocol.incoming(&subscribe));
    }

    #[test]
    fn a_subscribe_without_its_query_closes_the_connection_with_4400() {
        for payload in [serde_json::json!({}), serde_json::json!({"query": null}), serde_json::Value::Null] {
            let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
            let mut message = serde_json::json!({"id": "1", "type": "subscribe"});
            if !payload.is_null() {
                message["payload"] = payload;
            }
            assert!(!protocol.incoming(&text(message)));
            let frame = protocol.closing().unwrap();
            assert_eq!(frame.code, 4400);
            assert!(frame.reason.contains("payload.query"), "{}", frame.reason);
        }
        // The legacy protocol is left to async-graphql.
        let legacy = Conformance::new(Some(WebSocketProtocols::SubscriptionsTransportWS));
        assert!(legacy.incoming(&text(serde_json::json!({"id": "1", "type": "start", "payload": {}}))));
    }

    #[test]
    fn closes_carry_the_protocols_codes() {
        let protocol = Conformance::new(Some(WebSocketProtocols::GraphQLWS));
        assert_eq!(close_code(protocol.outgoing(close(1002))), 4400);
        assert_eq!(close_code(protocol.outgoing(close(1011))), 4401);
        assert_eq!(close_code(protocol.outgoing(close(1001))), 1001);
        protocol.init_refused();
        assert_eq!(close_code(protocol.outgoing(close(1002))), 4403);
    }

    #[test]
    fn a_long_close_reason_is_cut_to_what_a_close_frame_holds() {
        for protocol in [WebSocketProtocols::GraphQLWS, WebSocketProtocols::SubscriptionsTransportWS] {
            let long = format!("{}é tail", "x".repeat(122));
            let frame = CloseFrame { code: 1002, reason: long.into() };
            match Conformance::new(Some(protocol)).outgoing(Message::Close(Some(frame))) {
                Some(Message::Close(Some(frame))) => assert_eq!(frame.reason.as_str(), "x".repeat(122)),
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_without_connection_init_times_out() {
        let wait = std::time::Duration::from_millis(20);
        for protocol in [WebSocketProtocols::GraphQLWS, WebSocketProtocols::SubscriptionsTransportWS] {
            let silent = Conformance::new(Some(protocol));
            let started = std::time::Instant::now();
            silent.clone().init_timeout(wait).await;
            assert!(started.elapsed() >= wait);
            let frame = silent.closing().expect("a close after the timeout");
            assert_eq!((frame.code, frame.reason.as_str()), (4408, "Connection initialisation timeout"));

            let polite = Conformance::new(Some(protocol));
            assert!(polite.incoming(&text(serde_json::json!({"type": "connection_init"}))));
            let waited = tokio::time::timeout(wait * 10, polite.clone().init_timeout(wait)).await;
            assert!(waited.is_err(), "no timeout once connection_init came");
            assert!(polite.closing().is_none());
        }
    }

    #[test]
    fn the_legacy_protocol_passes_untouched() {
        let protocol = Conformance::new(Some(WebSocketProtocols::SubscriptionsTransportWS));
        let data =
            serde_json::json!({"id": "1", "type": "data", "payload": {"data": null, "errors": [{"message": "x"}]}});
        assert_eq!(parsed(protocol.outgoing(text(data.clone()))), data);
        assert_eq!(close_code(protocol.outgoing(close(1002))), 1002);
        let subscribe = text(serde_json::json!({"id": "1", "type": "start"}));
        assert!(protocol.incoming(&subscribe) && protocol.incoming(&subscribe));
    }
}
