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
//! let app = std::sync::Arc::new(api::App::new(graph, ledger, api::Settings::default()).expect("readers start"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! api::serve(listener, app, std::future::pending()).await
//! # }
//! ```
#![deny(missing_docs)]

pub mod auth;
pub mod error;
mod export;
mod http;
pub mod readers;
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
    /// Webhook delivery: retry base, timeout, private addresses.
    pub webhooks: readers::webhooks::DeliverySettings,
    /// Most WebSocket connections open at once.
    pub ws_connections_max: usize,
    /// Most subscriptions one WebSocket connection may run at once.
    pub subscriptions_per_connection_max: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            token_ttl_ms: 30 * 24 * 3600 * 1000,
            body_bytes_max: 1024 * 1024,
            webhooks: readers::webhooks::DeliverySettings::default(),
            ws_connections_max: 10_000,
            subscriptions_per_connection_max: 32,
        }
    }
}

/// The log's readers and what they share with requests.
pub struct Readers {
    /// Sales figures by event (kept by the analytics reader).
    pub sales: readers::analytics::SalesBook,
    /// The analytics reader's position.
    pub analytics: readers::ReaderHandle,
    /// The notifications reader's position.
    pub notifications: readers::ReaderHandle,
    /// The webhook outbox reader's position.
    pub outbox: readers::ReaderHandle,
    /// New notifications, for the `notifications` subscription.
    pub live_notifications: tokio::sync::broadcast::Sender<Arc<readers::notifications::Notification>>,
    /// Availability and event-change channels.
    pub hub: Arc<readers::live::LiveHub>,
    _live: readers::live::LiveReader,
    stop_deliveries: tokio::sync::watch::Sender<bool>,
}

impl Readers {
    /// Starts every reader (and the webhook delivery worker on the current
    /// tokio runtime).
    fn start(graph: &Arc<Graph>, ledger: &Arc<ledger::Ledger>, settings: &Settings) -> Result<Readers, String> {
        let failed = |what: &'static str| move |e: graph::Error| format!("cannot start the {what} reader: {e}");
        let store = graph.store();
        let sales = readers::analytics::SalesBook::default();
        let analytics =
            readers::analytics::Analytics::load(&store.reader(readers::analytics::Analytics::ID_OF), sales.clone())
                .map_err(failed("analytics"))?;
        let analytics = readers::spawn(graph.clone(), analytics).map_err(failed("analytics"))?;
        let (live_notifications, _) = tokio::sync::broadcast::channel(readers::notifications::LIVE_BUFFER);
        let notifications = readers::notifications::Notifications::load(
            graph.clone(),
            &store.reader(readers::notifications::Notifications::ID_OF),
            live_notifications.clone(),
        )
        .map_err(failed("notifications"))?;
        let notifications = readers::spawn(graph.clone(), notifications).map_err(failed("notifications"))?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let outbox = readers::spawn(graph.clone(), readers::webhooks::Outbox::new(graph.clone(), wake.clone()))
            .map_err(failed("webhook outbox"))?;
        let deliverer = readers::webhooks::Deliverer::new(graph.clone(), settings.webhooks.clone())?;
        let (stop_deliveries, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(deliverer.run(wake, stopped));
        let hub = Arc::new(readers::live::LiveHub::default());
        let live = readers::live::LiveReader::spawn(graph.clone(), ledger.clone(), hub.clone())
            .map_err(|e| format!("cannot start the live reader: {e}"))?;
        Ok(Readers { sales, analytics, notifications, outbox, live_notifications, hub, _live: live, stop_deliveries })
    }

    /// Stops the readers after their current batches.
    pub fn stop(&mut self) {
        self.stop_deliveries.send_replace(true);
        self.analytics.stop();
        self.notifications.stop();
        self.outbox.stop();
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
    /// The log's readers.
    pub readers: Readers,
    /// The store's durable seq, as flushes announce it.
    durable: tokio::sync::watch::Receiver<u64>,
}

impl App {
    /// Wires the app together and starts the log's readers; call from
    /// within a tokio runtime.
    pub fn new(graph: Arc<Graph>, ledger: Arc<ledger::Ledger>, settings: Settings) -> Result<App, String> {
        let (announce, durable) = tokio::sync::watch::channel(graph.store().durable_seq());
        graph.store().watch_durable(Box::new(move |seq| {
            announce.send_replace(seq);
        }));
        let readers = Readers::start(&graph, &ledger, &settings)?;
        Ok(App { graph, ledger, settings, readers, durable })
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
