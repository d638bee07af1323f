//! A GraphQL WebSocket client for the end-to-end tests:
//! graphql-transport-ws (or the legacy graphql-ws) over tungstenite.

use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// A GraphQL WebSocket client.
pub struct Ws {
    pub socket: WebSocket<TcpStream>,
    pub legacy: bool,
}

/// Opens a WebSocket to /graphql with `protocol`; returns the handshake error
/// status instead when the server refuses the upgrade.
pub fn open(addr: &str, protocol: &str) -> Result<WebSocket<TcpStream>, u16> {
    open_with(addr, protocol, &[])
}

/// [`open`], with more headers on the upgrade request.
pub fn open_with(addr: &str, protocol: &str, headers: &[(&'static str, &str)]) -> Result<WebSocket<TcpStream>, u16> {
    let mut request = format!("ws://{addr}/graphql").into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("WebSocket handshake failed: {other}"),
    }
}

impl Ws {
    /// Connects and initialises; `token` goes in the connection_init payload.
    pub fn connect(addr: &str, token: Option<&str>) -> Ws {
        Ws::connect_with(addr, "graphql-transport-ws", token)
    }

    pub fn connect_with(addr: &str, protocol: &str, token: Option<&str>) -> Ws {
        let socket = open(addr, protocol).expect("the upgrade is accepted");
        let mut ws = Ws { socket, legacy: protocol == "graphql-ws" };
        let payload = token.map_or(json!({}), |t| json!({"authorization": format!("Bearer {t}")}));
        ws.send(json!({"type": "connection_init", "payload": payload}));
        ws
    }

    pub fn acknowledged(mut self) -> Ws {
        assert_eq!(self.next()["type"], "connection_ack");
        self
    }

    pub fn send(&mut self, message: Value) {
        self.socket.send(Message::text(message.to_string())).unwrap();
    }

    pub fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}));
    }

    /// The next protocol message (keep-alives answered and skipped); Null
    /// when the server closed the connection.
    pub fn next(&mut self) -> Value {
        loop {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    match message["type"].as_str() {
                        Some("ping") => self.send(json!({"type": "pong"})),
                        Some("ka") => {}
                        _ => return message,
                    }
                }
                Ok(Message::Close(frame)) => return json!({"type": "closed", "code": frame.map(|f| u16::from(f.code))}),
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return json!({"type": "closed"})
                }
                Err(error) => panic!("WebSocket read failed: {error}"),
            }
        }
    }

    /// The error code of the next message, a result of subscription `id`
    /// that carries errors (a field's error: the subscription ran).
    pub fn next_error_code(&mut self, id: &str) -> String {
        let message = self.next();
        assert_eq!((message["id"].as_str(), message["type"].as_str()), (Some(id), Some("next")), "{message}");
        let errors = &message["payload"]["errors"];
        errors[0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no code in {message}")).to_string()
    }

    /// The error code of the next message, the refusal of subscription
    /// `id` before it ran (graphql-transport-ws: an `error` message, after
    /// which nothing more comes for it).
    pub fn next_refusal_code(&mut self, id: &str) -> String {
        let message = self.next();
        assert_eq!((message["id"].as_str(), message["type"].as_str()), (Some(id), Some("error")), "{message}");
        let errors = &message["payload"];
        assert!(errors.as_array().is_some_and(|errors| !errors.is_empty()), "{message}");
        errors[0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no code in {message}")).to_string()
    }

    /// The data of the next result for subscription `id`.
    pub fn next_data(&mut self, id: &str) -> Value {
        let message = self.next();
        let kind = if self.legacy { "data" } else { "next" };
        assert_eq!(message["type"], kind, "expected a result, got {message}");
        assert_eq!(message["id"], id);
        assert!(message["payload"].get("errors").is_none(), "errors: {message}");
        message["payload"]["data"].clone()
    }
}
