//! `api` owns everything a client talks to: HTTP routing (axum on hyper),
//! the GraphQL schema (async-graphql), subscriptions over WebSockets (held
//! to the graphql-transport-ws protocol), authentication, and the mapping
//! of domain errors to the contract's error codes. It calls `graph` and
//! `ledger` and knows nothing of how they store data.
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
mod completion;
mod direct;
pub mod durable;
pub mod error;
mod export;
mod http;
pub mod limits;
pub mod metrics;
pub mod readers;
pub mod schema;
pub mod validated;
mod ws_protocol;

use std::sync::Arc;

use graph::ids::UserId;
use graph::Graph;

pub use error::{ApiError, ApiResult};
pub use http::{router, serve};

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
    /// Most WebSocket connections open at once from one client address.
    pub ws_connections_per_ip_max: usize,
    /// Most subscriptions one WebSocket connection may run at once.
    pub subscriptions_per_connection_max: usize,
    /// Requests per signed-in token.
    pub rate_per_token: limits::Rate,
    /// Requests per client address, for callers without a token.
    pub rate_per_ip: limits::Rate,
    /// Sign-in and registration requests per client address.
    pub rate_credentials_per_ip: limits::Rate,
    /// Failed sign-ins allowed per email in [`Settings::login_failures_window_s`].
    pub login_failures_max: u32,
    /// The window failed sign-ins are counted in, seconds.
    pub login_failures_window_s: u64,
    /// Take the client address from X-Forwarded-For (behind a trusted proxy only).
    pub trust_proxy_headers: bool,
    /// Depth, complexity, alias, root-field, batch and size limits.
    pub query_limits: limits::QueryLimits,
    /// Serve introspection (turn off in production if clients do not need it).
    pub introspection: bool,
    /// Longest a GraphQL request may run, milliseconds.
    pub request_timeout_ms: u64,
    /// Most HTTP connections open at once.
    pub connections_max: usize,
    /// Largest request head (request line and headers), bytes.
    pub header_bytes_max: usize,
    /// How long shutdown waits for requests in flight, milliseconds.
    pub shutdown_grace_ms: u64,
    /// Automatic persisted queries kept.
    pub persisted_queries_max: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            token_ttl_ms: 30 * 24 * 3600 * 1000,
            body_bytes_max: 1024 * 1024,
            webhooks: readers::webhooks::DeliverySettings::default(),
            ws_connections_max: 10_000,
            ws_connections_per_ip_max: 100,
            subscriptions_per_connection_max: 32,
            rate_per_token: limits::Rate { per_second: 100.0, burst: 200.0 },
            rate_per_ip: limits::Rate { per_second: 50.0, burst: 100.0 },
            rate_credentials_per_ip: limits::Rate::per(10, std::time::Duration::from_secs(60)),
            login_failures_max: 5,
            login_failures_window_s: 900,
            trust_proxy_headers: false,
            query_limits: limits::QueryLimits::default(),
            introspection: true,
            request_timeout_ms: 30_000,
            connections_max: 20_000,
            header_bytes_max: 64 * 1024,
            shutdown_grace_ms: 30_000,
            persisted_queries_max: 10_000,
        }
    }
}

/// The rate limiters, built from the settings.
pub struct RateLimits {
    /// Per signed-in token.
    pub per_token: limits::RateLimiter,
    /// Per client address, for anonymous callers.
    pub per_ip: limits::RateLimiter,
    /// Sign-in and registration per client address.
    pub credentials_per_ip: limits::RateLimiter,
    /// Failed sign-ins per email.
    pub login_failures: limits::RateLimiter,
}

impl RateLimits {
    fn new(settings: &Settings) -> RateLimits {
        let window = std::time::Duration::from_secs(settings.login_failures_window_s.max(1));
        let failures = if settings.login_failures_max == 0 {
            limits::Rate::unlimited()
        } else {
            limits::Rate::per(settings.login_failures_max, window)
        };
        RateLimits {
            per_token: limits::RateLimiter::new(settings.rate_per_token),
            per_ip: limits::RateLimiter::new(settings.rate_per_ip),
            credentials_per_ip: limits::RateLimiter::new(settings.rate_credentials_per_ip),
            login_failures: limits::RateLimiter::new(failures),
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
    /// New notifications by user, for the `notifications` subscription.
    pub live_notifications: Arc<readers::notifications::LiveFeeds>,
    /// Which confirmations the inboxes list from the bookings.
    pub derived_confirmations: Arc<readers::notifications::DerivedConfirmations>,
    /// Availability and event-change channels.
    pub hub: Arc<readers::live::LiveHub>,
    _live: readers::live::LiveReader,
    stop_deliveries: tokio::sync::watch::Sender<bool>,
}

impl Readers {
    /// Starts every reader (and the webhook delivery worker on the current
    /// tokio runtime).
    fn start(
        graph: &Arc<Graph>,
        ledger: &Arc<ledger::Ledger>,
        settings: &Settings,
        metrics: &Arc<metrics::Metrics>,
    ) -> Result<Readers, String> {
        let failed = |what: &'static str| move |e: graph::Error| format!("cannot start the {what} reader: {e}");
        let store = graph.store();
        let sales = readers::analytics::SalesBook::default();
        let analytics =
            readers::analytics::Analytics::load(&store.reader(readers::analytics::Analytics::ID_OF), sales.clone())
                .map_err(failed("analytics"))?;
        let analytics = readers::spawn(graph.clone(), analytics).map_err(failed("analytics"))?;
        let live_notifications = Arc::new(readers::notifications::LiveFeeds::default());
        let notification_rows = store.reader(readers::notifications::Notifications::ID_OF);
        let derived_confirmations = readers::notifications::DerivedConfirmations::open(&notification_rows, ledger)
            .map_err(failed("notifications"))?;
        let derived_confirmations = Arc::new(derived_confirmations);
        let notifications = readers::notifications::Notifications::load(
            graph.clone(),
            &notification_rows,
            live_notifications.clone(),
            derived_confirmations.clone(),
        )
        .map_err(failed("notifications"))?;
        let notifications = readers::spawn(graph.clone(), notifications).map_err(failed("notifications"))?;
        let wake = Arc::new(tokio::sync::Notify::new());
        let outbox = readers::webhooks::Outbox::new(graph.clone(), wake.clone()).map_err(failed("webhook outbox"))?;
        let outbox = readers::spawn(graph.clone(), outbox).map_err(failed("webhook outbox"))?;
        let deliverer = readers::webhooks::Deliverer::new(graph.clone(), settings.webhooks.clone(), metrics.clone())?;
        let (stop_deliveries, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(deliverer.run(wake, stopped));
        let hub = Arc::new(readers::live::LiveHub::default());
        let live = readers::live::LiveReader::spawn(graph.clone(), ledger.clone(), hub.clone())
            .map_err(|e| format!("cannot start the live reader: {e}"))?;
        Ok(Readers {
            sales,
            analytics,
            notifications,
            outbox,
            live_notifications,
            derived_confirmations,
            hub,
            _live: live,
            stop_deliveries,
        })
    }

    /// Stops the readers after their current batches.
    pub fn stop(&self) {
        self.stop_deliveries.send_replace(true);
        self.analytics.stop();
        self.notifications.stop();
        self.outbox.stop();
    }
}

/// Parsed queries kept (each at most the query size limit).
const PARSED_QUERIES_MAX: usize = 1_000;

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
    /// Metrics for /metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Rate limiters.
    pub limits: RateLimits,
    /// Automatic persisted queries.
    pub persisted: limits::PersistedQueries,
    /// Parsed queries by text.
    pub parsed: limits::ParsedQueries,
    lifecycle: http::Lifecycle,
    /// Requests waiting for a flush, woken by the flushes that cover them.
    durable: Arc<durable::DurableWaiters>,
    /// Becomes true when a storage write fails.
    storage_failed: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// Wires the app together and starts the log's readers; call from
    /// within a tokio runtime.
    pub fn new(graph: Arc<Graph>, ledger: Arc<ledger::Ledger>, settings: Settings) -> Result<App, String> {
        let durable = Arc::new(durable::DurableWaiters::default());
        let announce = durable.clone();
        graph.store().watch_durable(Box::new(move |seq, healthy| announce.announce(seq, healthy)));
        // The watcher is told the store's health at once, then on its failure.
        let storage_failed = tokio::sync::watch::Sender::new(false);
        let failed = storage_failed.clone();
        graph.store().watch_durable(Box::new(move |_, healthy| {
            if !healthy {
                failed.send_replace(true);
            }
        }));
        let metrics = Arc::new(metrics::Metrics::default());
        let readers = Readers::start(&graph, &ledger, &settings, &metrics)?;
        let limits = RateLimits::new(&settings);
        let persisted = limits::PersistedQueries::new(settings.persisted_queries_max);
        Ok(App {
            graph,
            ledger,
            settings,
            readers,
            metrics,
            limits,
            persisted,
            parsed: limits::ParsedQueries::new(PARSED_QUERIES_MAX),
            lifecycle: http::Lifecycle::default(),
            durable,
            storage_failed,
        })
    }

    /// Ready to serve: storage healthy and not shutting down (recovery is
    /// done before the app exists).
    pub fn is_ready(&self) -> bool {
        self.graph.store().is_healthy() && !self.lifecycle.is_shutting_down()
    }

    /// Starts shutting down: unready, WebSockets told to close.
    pub fn begin_shutdown(&self) {
        self.lifecycle.begin_shutdown();
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle.is_shutting_down()
    }

    /// Becomes true when shutdown begins.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.lifecycle.signal().subscribe()
    }

    /// Becomes true when a storage write fails: the store refuses writes
    /// from then on, and memory may be ahead of the disk, so the server
    /// stops (and its supervisor starts it again: start-up recovers exactly
    /// the acknowledged state).
    pub fn storage_failure(&self) -> tokio::sync::watch::Receiver<bool> {
        self.storage_failed.subscribe()
    }

    /// Waits, without holding a thread, until a logged change is durable,
    /// then returns it: the acknowledgement point of every ledger write.
    /// UNAVAILABLE when storage failed first: the change is not
    /// acknowledged (the store logged why, once).
    pub async fn settle<T>(&self, logged: ledger::Logged<T>) -> ApiResult<T> {
        let store = self.graph.store();
        if store.durable_seq() < logged.seq {
            store.request_flush();
            if !self.durable.wait_for(logged.seq).await {
                tracing::debug!(seq = logged.seq, "a logged change could not be made durable");
                return Err(ApiError::storage_failed());
            }
        }
        Ok(logged.value)
    }

    /// Opens a session for `user` and returns its new bearer token. Blocking.
    pub fn issue_token(&self, user: UserId) -> ApiResult<String> {
        auth::issue_token(&self.graph, user, self.settings.token_ttl_ms)
    }
}
