//! `api` owns everything a client talks to: HTTP routing (axum on hyper),
//! the GraphQL schema (async-graphql), authentication, and the mapping of
//! domain errors to the contract's error codes. It calls `graph` and `ledger`
//! and knows nothing of how they store data.
//!
//! Promises: every GraphQL error carries an `extensions.code` from the
//! contract; no client ever sees a panic message, storage error or stack
//! trace; the router and schema are built by plain functions so tests can
//! drive them without a socket.
//!
//! ```no_run
//! # async fn run(graph: std::sync::Arc<graph::Graph>, ledger: std::sync::Arc<ledger::Ledger>) -> std::io::Result<()> {
//! let app = std::sync::Arc::new(api::App::new(graph, ledger, api::Settings::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! api::serve(listener, app, std::future::pending()).await
//! # }
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod error;
mod http;
pub mod schema;

use std::future::Future;
use std::sync::Arc;

use graph::ids::UserId;
use graph::Graph;

pub use error::{ApiError, ApiResult};
pub use http::router;

/// Settings of the front end.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a bearer token is accepted after sign-in, milliseconds.
    pub token_ttl_ms: i64,
    /// Largest request body accepted, bytes (413 beyond it).
    pub body_bytes_max: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { token_ttl_ms: 30 * 24 * 3600 * 1000, body_bytes_max: 1024 * 1024 }
    }
}

/// Everything a request handler needs, shared by all of them.
pub struct App {
    /// Entities and the log.
    pub graph: Arc<Graph>,
    /// Ticket inventory and bookings.
    pub ledger: Arc<ledger::Ledger>,
    /// Front-end settings.
    pub settings: Settings,
    /// The store's durable seq, as flushes announce it.
    durable: tokio::sync::watch::Receiver<u64>,
}

impl App {
    /// Wires the app together.
    pub fn new(graph: Arc<Graph>, ledger: Arc<ledger::Ledger>, settings: Settings) -> App {
        let (announce, durable) = tokio::sync::watch::channel(graph.store().durable_seq());
        graph.store().watch_durable(Box::new(move |seq| {
            announce.send_replace(seq);
        }));
        App { graph, ledger, settings, durable }
    }

    /// Waits, without holding a thread, until a logged change is durable,
    /// then returns it: the acknowledgement point of every ledger write.
    pub async fn settle<T>(&self, logged: ledger::Logged<T>) -> ApiResult<T> {
        let store = self.graph.store();
        if store.durable_seq() < logged.seq {
            store.request_flush();
            let mut durable = self.durable.clone();
            let reached = durable.wait_for(|&seq| seq >= logged.seq || !store.is_healthy()).await;
            if reached.is_err() || store.durable_seq() < logged.seq {
                tracing::error!(seq = logged.seq, "a logged change could not be made durable");
                return Err(ApiError::Internal);
            }
        }
        Ok(logged.value)
    }

    /// Opens a session for `user` and returns its new bearer token. Blocking.
    pub fn issue_token(&self, user: UserId) -> ApiResult<String> {
        auth::issue_token(&self.graph, user, self.settings.token_ttl_ms)
    }
}

/// Serves HTTP on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await
}
