//! HTTP: the server loop (connection and header limits, graceful
//! shutdown), routes, the GraphQL endpoint with its protections, WebSocket
//! subscriptions, health, readiness, metrics and the bundled IDE.

use std::any::TypeId;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::futures_util::{FutureExt, SinkExt, StreamExt};
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse, Data, Request as GqlRequest, Response as GqlResponse};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};

use crate::auth::{self, Viewer};
use crate::completion::{is_subscription, unusable_variable_of, FieldTypes};
use crate::direct::{DirectAnswer, DirectRequest, PostBody};
use crate::error::ApiError;
use crate::limits::{self, TooComplex};
use crate::schema::{self, MarqueeSchema};
use crate::validated::{Check, ValidatedOperations};
use crate::ws_protocol::{Conformance, CONNECTION_INIT_WAIT};
use crate::{export, App};

/// The least time the listener stays open after shutdown begins.
const DRAIN_MIN: Duration = Duration::from_millis(500);

/// How long a connection may take to send a request's head: from its
/// acceptance to its first byte, and (hyper's timer) from a request's first
/// byte to the end of its head.
const HEAD_WAIT: Duration = Duration::from_secs(10);

/// Largest WebSocket message a client may send.
const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;

/// The address a connection came from (set by the server loop).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub SocketAddr);

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) app: Arc<App>,
    schema: MarqueeSchema,
    /// The schema for operations known to be valid: it skips validation.
    known_schema: MarqueeSchema,
    /// Which operations are known to be valid.
    validated: Arc<ValidatedOperations>,
    /// The fields' types, to give failed fields their nulls.
    field_types: Arc<FieldTypes>,
    /// WebSocket connections open now.
    ws_open: Arc<AtomicUsize>,
    /// WebSocket connections open now, by client address.
    ws_open_by_ip: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    /// The log lines of rate-limited requests.
    rate_limited_lines: Arc<LogThrottle>,
    /// The log lines of connections refused at the connection limit.
    refused_connection_lines: Arc<LogThrottle>,
}

/// Lines a client can make the server write at will (a rate-limited
/// request, a connection over the limit): at most one a second, the next
/// one written saying how many were left out. A flood of them (500,000
/// lines in 10 s from one client's 429s) would otherwise fill the disk, or
/// push other lines past the journal's rate limit.
#[derive(Default)]
struct LogThrottle {
    /// The second (since the epoch) of the last line written.
    second: std::sync::atomic::AtomicU64,
    /// Lines left out since then.
    left_out: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    /// Whether to write a line now; if so, how many were left out before it.
    fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.second.load(Ordering::Relaxed);
        if now != last && self.second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.left_out.swap(0, Ordering::Relaxed));
        }
        self.left_out.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Builds the router: `/graphql` (POST to execute; GET opens the IDE, or a
/// WebSocket for subscriptions), `/events/{id}/bookings.csv`, `/metrics`,
/// `/healthz` and `/readyz`.
pub fn router(app: Arc<App>) -> Router {
    router_and_state(app).0
}

/// The router, and the state its handlers share.
fn router_and_state(app: Arc<App>) -> (Router, HttpState) {
    let body_bytes_max = app.settings.body_bytes_max;
    let state = HttpState {
        schema: schema::build(app.clone()),
        known_schema: schema::build_for_known_operations(app.clone()),
        validated: Arc::new(schema::validated_operations()),
        field_types: Arc::new(FieldTypes::of_schema()),
        app,
        ws_open: Arc::new(AtomicUsize::new(0)),
        ws_open_by_ip: Arc::default(),
        rate_limited_lines: Arc::default(),
        refused_connection_lines: Arc::default(),
    };
    let router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql))
        .route("/events/{id}/bookings.csv", get(export::bookings_csv))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state.clone());
    (router, state)
}

/// What one connection serves. GraphQL requests (`POST /graphql`, nearly all
/// of the traffic, and queries sent with `GET /graphql?query=`) go straight
/// to the GraphQL handler; the router's matching, extractors and layers cost
/// more than a small query does. Everything else, the IDE and the WebSocket
/// upgrade of `GET /graphql` included, goes through the router.
#[derive(Clone)]
struct ConnectionService {
    state: HttpState,
    router: Router,
    peer: Peer,
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for ConnectionService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        let graphql = request.uri().path() == "/graphql";
        if graphql && request.method() == axum::http::Method::POST {
            let state = self.state.clone();
            let peer = self.peer;
            return Box::pin(async move {
                let (parts, body) = request.into_parts();
                let max = state.app.settings.body_bytes_max;
                let body = if announced_too_large(&parts.headers, max) {
                    // Refused before the client sends it: no `100 Continue`.
                    Err(BodyError::TooLarge)
                } else {
                    let within = Duration::from_millis(state.app.settings.request_timeout_ms);
                    tokio::time::timeout(within, read_body(body, max)).await.unwrap_or(Err(BodyError::TooSlow))
                };
                Ok(serve_graphql(&state, Some(peer), &parts.headers, Input::Body(body)).await)
            });
        }
        if graphql
            && request.method() == axum::http::Method::GET
            && !is_websocket_upgrade(request.headers())
            && carries_graphql(request.uri())
        {
            let state = self.state.clone();
            let peer = self.peer;
            return Box::pin(async move {
                let (parts, _) = request.into_parts();
                Ok(serve_graphql_get(&state, Some(peer), &parts.headers, parts.uri).await)
            });
        }
        let router = self.router.clone();
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(self.peer);
        Box::pin(tower::ServiceExt::oneshot(router, request))
    }
}

/// Where a request's GraphQL comes from.
enum Input {
    /// A POST body (JSON: one request or a batch).
    Body(Result<Bytes, BodyError>),
    /// A GET's query string (`query`, `operationName`, `variables`,
    /// `extensions`): queries only.
    Url(axum::http::Uri),
}

/// The parameters of a GraphQL request made with GET.
#[derive(serde::Deserialize)]
struct UrlParams {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

/// Whether a GET's query string holds a GraphQL request (a `query`, or a
/// persisted query's `extensions`) rather than asking for the IDE.
fn carries_graphql(uri: &axum::http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .map(|pair| pair.split('=').next().unwrap_or(""))
            .any(|key| key == "query" || key == "extensions")
    })
}

/// The GraphQL request in a GET's query string.
fn url_request(uri: &axum::http::Uri) -> Result<GqlRequest, String> {
    let axum::extract::Query(params) = axum::extract::Query::<UrlParams>::try_from_uri(uri)
        .map_err(|error| format!("the query string is not a GraphQL request: {}", error.body_text()))?;
    let mut request = GqlRequest::new(params.query.unwrap_or_default());
    if let Some(name) = params.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = params.variables.filter(|v| !v.is_empty()) {
        let variables: serde_json::Value =
            serde_json::from_str(&variables).map_err(|error| format!("variables: not JSON ({error})"))?;
        if !variables.is_object() && !variables.is_null() {
            return Err("variables: must be a JSON object".into());
        }
        request = request.variables(async_graphql::Variables::from_json(variables));
    }
    if let Some(extensions) = params.extensions.filter(|e| !e.is_empty()) {
        request.extensions =
            serde_json::from_str(&extensions).map_err(|error| format!("extensions: not a JSON object ({error})"))?;
    }
    Ok(request)
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Why a request body could not be had.
enum BodyError {
    TooLarge,
    Unreadable,
    /// It did not arrive within the request timeout (a client trickling it,
    /// or gone silent half-way, would hold its connection otherwise).
    TooSlow,
}

/// Whether the client waits for `100 Continue` before sending a body it
/// says is larger than `max` bytes: then it is refused unsent.
fn announced_too_large(headers: &HeaderMap, max: usize) -> bool {
    let expects_continue = headers
        .get(header::EXPECT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("100-continue"));
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    expects_continue && length.is_some_and(|length| length > max as u64)
}

/// Most bytes of an oversized body read past the limit, and dropped, before
/// it is refused. A client still sending when the connection closed with
/// its body unread would get a reset instead of the 413 (and, writing, a
/// broken pipe); read to the end, it reads the answer.
const OVERSIZED_DRAIN_MAX: usize = 16 << 20;

/// The whole body, refused once it grows past `max` bytes (after reading
/// the rest of it, up to [`OVERSIZED_DRAIN_MAX`] more).
async fn read_body(mut body: hyper::body::Incoming, max: usize) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    use hyper::body::Body;
    // Announced beyond what would be drained: refused before a byte is
    // read, instead of waiting (up to the request timeout) for a body the
    // answer would not wait for anyway.
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > max.saturating_add(OVERSIZED_DRAIN_MAX) {
        return Err(BodyError::TooLarge);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else { continue };
        length = length.saturating_add(data.len());
        if length <= max {
            chunks.push(data);
        } else if length > max.saturating_add(OVERSIZED_DRAIN_MAX) {
            return Err(BodyError::TooLarge);
        } else {
            chunks.clear();
        }
    }
    if length > max {
        return Err(BodyError::TooLarge);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

/// Serves HTTP on `listener` until `shutdown` completes. Then requests are
/// answered 503 (`Connection: close`) and /readyz says not ready while the
/// requests in flight finish; the listener stays open meanwhile, at least
/// `DRAIN_MIN` (500 ms), so clients and load balancers learn to go
/// elsewhere from an answer instead of a reset; WebSockets are closed with
/// 1001 (going away); after the grace period nothing is waited for any
/// longer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Connections::new(app.clone());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    connections.accept_until(&listener, shutdown, Some(&graceful)).await;
    app.begin_shutdown();
    tracing::info!(connections = graceful.count(), "shutting down: finishing requests in flight");
    let grace = Duration::from_millis(app.settings.shutdown_grace_ms);
    let deadline = tokio::time::Instant::now() + grace;
    // First the drain: connections accepted a moment ago get to read their
    // requests before anything is closed as idle.
    connections.accept_until(&listener, tokio::time::sleep(DRAIN_MIN.min(grace)), None).await;
    // Then close idle connections and wait for the requests in flight.
    let finished = async {
        if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
            tracing::warn!(?grace, "requests still in flight when the grace period ran out");
        }
    };
    connections.accept_until(&listener, finished, None).await;
    drop(listener);
    connections.finish_late(deadline).await;
    Ok(())
}

/// Accepted connections: the service, the HTTP settings, the connection
/// limit, and the connections accepted while shutting down.
struct Connections {
    state: HttpState,
    router: Router,
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    permits: Arc<tokio::sync::Semaphore>,
    late: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Connections {
    fn new(app: Arc<App>) -> Connections {
        let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder
            .http1()
            .max_buf_size(app.settings.header_bytes_max)
            .max_headers(100)
            .header_read_timeout(HEAD_WAIT)
            .timer(hyper_util::rt::TokioTimer::new());
        let (router, state) = router_and_state(app.clone());
        Connections {
            permits: Arc::new(tokio::sync::Semaphore::new(app.settings.connections_max)),
            state,
            router,
            builder,
            late: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// Accepts and serves connections until `until` completes.
    async fn accept_until(
        &self,
        listener: &tokio::net::TcpListener,
        until: impl Future<Output = ()>,
        graceful: Option<&hyper_util::server::graceful::GracefulShutdown>,
    ) {
        tokio::pin!(until);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.serve_one(stream, peer, graceful),
                    Err(error) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut until => return,
            }
        }
    }

    /// Serves one connection once its first byte arrives; watched for
    /// graceful shutdown when given one, else counted among the late ones.
    fn serve_one(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        graceful: Option<&hyper_util::server::graceful::GracefulShutdown>,
    ) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            if let Some(left_out) = self.state.refused_connection_lines.admit() {
                tracing::warn!(%peer, left_out, "connection limit reached; closing a new connection");
            }
            return;
        };
        tune_accepted(&stream);
        let service = ConnectionService { state: self.state.clone(), router: self.router.clone(), peer: Peer(peer) };
        let builder = self.builder.clone();
        let shutdown = self.state.app.shutdown_signal();
        let watcher = graceful.map(|graceful| graceful.watcher());
        let served = async move {
            let _permit = permit;
            match opening(&stream, shutdown).await {
                Opening::Http1 => {}
                Opening::Nothing => {
                    tracing::debug!(%peer, "closing a connection that sent nothing");
                    return;
                }
                Opening::Http2 => {
                    tracing::debug!(%peer, "refusing an HTTP/2 connection: HTTP/1.1 required");
                    refuse_http2(stream).await;
                    return;
                }
            }
            let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            let _ = match watcher {
                Some(watcher) => watcher.watch(connection).await,
                None => connection.await,
            };
        };
        if graceful.is_some() {
            tokio::spawn(served);
        } else {
            self.late.lock().expect("late connections lock poisoned").spawn(served);
        }
    }

    /// Waits (until `deadline`) for the connections accepted while shutting down.
    async fn finish_late(&self, deadline: tokio::time::Instant) {
        let mut late = std::mem::take(&mut *self.late.lock().expect("late connections lock poisoned"));
        let _ = tokio::time::timeout_at(deadline, async { while late.join_next().await.is_some() {} }).await;
    }
}

/// The bytes an HTTP/2 connection with prior knowledge opens with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What an HTTP/2 client hears: the server's preface (an empty SETTINGS
/// frame), then GOAWAY with the error HTTP_1_1_REQUIRED (RFC 9113, 7).
/// The server speaks HTTP/1.1 only: hyper's HTTP/2 (compiled in with the
/// auto connection builder, which sniffs the version) would serve without
/// the head timer, header limits and idle close that HTTP/1.1 connections
/// have, so a client could hold `--connections-max` slots with connections
/// that never send a request.
const HTTP2_REFUSAL: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS: empty, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY: 8 bytes, stream 0
    0, 0, 0, 0, // last stream id: none
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

/// Answers an HTTP/2 connection with [`HTTP2_REFUSAL`], then closes it
/// the polite way: its side shut first, what the client still sends read
/// and dropped (briefly), so that the close is not a reset that could
/// discard the GOAWAY before the client reads it.
async fn refuse_http2(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let refused = async {
        stream.write_all(&HTTP2_REFUSAL).await?;
        stream.shutdown().await?;
        let mut dropped = [0u8; 4096];
        while stream.read(&mut dropped).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), refused).await;
}

/// How an accepted connection opened.
enum Opening {
    /// Anything but HTTP/2's preface: served as HTTP/1.1 (hyper answers
    /// what is not HTTP).
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Nothing in time, or closed.
    Nothing,
}

/// Waits until an accepted connection has said which HTTP it speaks: its
/// first byte, or, while what came could still be the HTTP/2 preface, the
/// whole preface. Nothing when the peer closed, or did not say within
/// `HEAD_WAIT`, or within `DRAIN_MIN` of shutdown beginning: a socket that
/// never speaks (or stops inside the preface) gives its
/// `--connections-max` slot back. From there, hyper's head timer bounds
/// the rest of the head.
async fn opening(stream: &tokio::net::TcpStream, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Opening {
    let drained = async {
        let _ = shutdown.wait_for(|shutting_down| *shutting_down).await;
        tokio::time::sleep(DRAIN_MIN).await;
    };
    let spoken = async {
        let mut start = [0u8; HTTP2_PREFACE.len()];
        loop {
            let read = match stream.peek(&mut start).await {
                Ok(0) | Err(_) => return Opening::Nothing,
                Ok(read) => read,
            };
            if start[..read] != HTTP2_PREFACE[..read] {
                return Opening::Http1;
            }
            if read == HTTP2_PREFACE.len() {
                return Opening::Http2;
            }
            // Part of the preface: the rest is on its way (peeking again at
            // once would find the same bytes).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        spoken = spoken => spoken,
        () = tokio::time::sleep(HEAD_WAIT) => Opening::Nothing,
        () = drained => Opening::Nothing,
    }
}

/// The interactive GraphQL IDE; its script and styles are in the page, so
/// it works with no internet access.
async fn ide() -> impl IntoResponse {
    Html(include_str!("ide.html"))
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.app.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut text = state.app.metrics.render(&state.app);
    crate::metrics::counter(
        &mut text,
        "marquee_graphql_known_operations_total",
        "GraphQL requests over HTTP run without the validation rules: their operation passed them before.",
        state.validated.known(),
    );
    crate::metrics::counter(
        &mut text,
        "marquee_graphql_direct_operations_total",
        "GraphQL requests over HTTP run without the GraphQL executor: known bookTickets operations of a shape it follows.",
        state.validated.direct(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// GET /graphql through the router: a WebSocket upgrade for subscriptions,
/// a query in the query string, else the IDE.
async fn graphql_get(State(state): State<HttpState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if !is_websocket_upgrade(&parts.headers) {
        if !carries_graphql(&parts.uri) && accepts_html(&parts.headers) {
            return ide().await.into_response();
        }
        // A query, or none (refused, and logged, as a request without one).
        let peer = parts.extensions.get::<Peer>().copied();
        return serve_graphql_get(&state, peer, &parts.headers, parts.uri).await;
    }
    let Ok(protocol) = GraphQLProtocol::from_request_parts(&mut parts, &state).await else {
        let message = "Sec-WebSocket-Protocol must be graphql-transport-ws (or the legacy graphql-ws)";
        return error_response(StatusCode::BAD_REQUEST, &ApiError::BadUserInput(message.into()));
    };
    // The protocol spoken is the first the client offers (GraphQLProtocol's
    // choice); the handshake must name that one, not the first of ours.
    let Some(spoken) = first_offered_protocol(&parts.headers) else {
        return error_response(StatusCode::BAD_REQUEST, &ApiError::BadUserInput("no GraphQL subprotocol".into()));
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    if state.app.is_shutting_down() {
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &ApiError::Unavailable("shutting down".into()));
    }
    let ip = client_ip(&state.app, parts.extensions.get::<Peer>().copied(), &parts.headers);
    let Some(address_slot) = AddressSlot::take(&state.ws_open_by_ip, ip, state.app.settings.ws_connections_per_ip_max)
    else {
        let message = "too many WebSocket connections from this address; close some first";
        let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, &ApiError::RateLimited(message.into()));
        set_retry_after(&mut response, Duration::from_secs(10));
        return response;
    };
    let Some(slot) = ConnectionSlot::take(&state.ws_open, state.app.settings.ws_connections_max) else {
        let message = "too many WebSocket connections; retry later";
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &ApiError::Unavailable(message.into()));
    };
    let slot = (slot, address_slot);
    // Clients that can set headers on the upgrade (not browsers) may sign
    // in there; connection_init's payload is the usual place.
    let upgrade_authorization =
        parts.headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()).map(str::to_string);
    upgrade
        .protocols([spoken])
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| serve_websocket(state, socket, protocol, slot, ip, upgrade_authorization))
}

/// Whether the client takes HTML at least as gladly as JSON (a browser
/// asking for the IDE).
fn accepts_html(headers: &HeaderMap) -> bool {
    let (mut html, mut json) = (None::<f32>, 0.0_f32);
    for (essence, quality) in accepted_ranges(headers) {
        if essence.eq_ignore_ascii_case("text/html") {
            html = Some(html.map_or(quality, |q| q.max(quality)));
        } else if essence.eq_ignore_ascii_case("application/json")
            || essence.eq_ignore_ascii_case(Media::GRAPHQL_RESPONSE)
        {
            json = json.max(quality);
        }
    }
    html.is_some_and(|html| html > 0.0 && html >= json)
}

/// The media ranges of a request's Accept headers, each with its quality
/// (1 when it names none).
fn accepted_ranges(headers: &HeaderMap) -> impl Iterator<Item = (&str, f32)> + '_ {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|range| {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim();
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        (essence, quality)
    })
}

/// The first GraphQL subprotocol the client offers, as GraphQLProtocol
/// picks it (ignoring case), spelt as the client spelt it: the handshake
/// must echo one of the client's own values.
fn first_offered_protocol(headers: &HeaderMap) -> Option<String> {
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered
        .split(',')
        .map(str::trim)
        .find(|name| ALL_WEBSOCKET_PROTOCOLS.iter().any(|known| known.eq_ignore_ascii_case(name)))
        .map(str::to_string)
}

/// An idle connection is probed by TCP keepalive after this long.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Between keepalive probes; Linux drops the connection after 9 probes go
/// unanswered, about 2.5 minutes after the peer went silent.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Sets up an accepted connection: no Nagle delay on small answers, and
/// TCP keepalive, so that a peer that vanished (a phone off the network, a
/// host powered off) is found and its connection closed. A WebSocket with
/// nothing to send would otherwise keep its `--ws-connections-max` slot,
/// and a keep-alive HTTP connection its `--connections-max` one, for good.
fn tune_accepted(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%error, "TCP keepalive not set");
    }
}

/// Runs one subscription connection until the client leaves or the server
/// shuts down (then it says goodbye with close code 1001).
async fn serve_websocket(
    state: HttpState,
    socket: axum::extract::ws::WebSocket,
    protocol: GraphQLProtocol,
    slot: (ConnectionSlot, AddressSlot),
    ip: IpAddr,
    upgrade_authorization: Option<String>,
) {
    let _slot = slot;
    let app = state.app.clone();
    app.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    let mut data = Data::default();
    data.insert(schema::SubscriptionBudget::new(app.settings.subscriptions_per_connection_max, app.metrics.clone()));
    // The subprotocol the upgrade chose, as GraphQLProtocol keeps it private.
    let chosen = socket.protocol().and_then(|value| value.to_str().ok()?.parse().ok());
    let conformance = Conformance::new(chosen);
    let (sink, stream) = socket.split();
    let outgoing = conformance.clone();
    let mut sink = sink
        .with_flat_map(move |message| async_graphql::futures_util::stream::iter(outgoing.outgoing(message).map(Ok)));
    let mut shutdown = app.shutdown_signal();
    let incoming = conformance.clone();
    let input = stream
        .take_while(move |message| {
            std::future::ready(match message {
                Ok(message) => incoming.incoming(message),
                Err(error) => {
                    incoming.read_failed(error);
                    false
                }
            })
        })
        .take_until(conformance.clone().init_timeout(CONNECTION_INIT_WAIT))
        .take_until(async move {
            let _ = shutdown.wait_for(|&stopping| stopping).await;
        });
    let init_app = app.clone();
    let init_conformance = conformance.clone();
    let executor =
        GuardedSchema { schema: state.schema.clone(), app: app.clone(), field_types: state.field_types.clone(), ip };
    GraphQLWebSocket::new_with_pair(&mut sink, input, executor, protocol)
        .with_data(data)
        .on_connection_init(move |payload| async move {
            let viewer = viewer_from_init(&init_app, &payload, upgrade_authorization.as_deref())
                .inspect_err(|_| init_conformance.init_refused())?;
            let mut data = Data::default();
            data.insert(viewer);
            Ok(data)
        })
        .serve()
        .await;
    if let Some(broken) = conformance.closing() {
        let _ = sink.send(Message::Close(Some(broken))).await;
    } else if app.is_shutting_down() {
        let goodbye = CloseFrame { code: 1001, reason: "server shutting down".into() };
        let _ = sink.send(Message::Close(Some(goodbye))).await;
    }
    app.metrics.ws_connections.fetch_sub(1, Ordering::Relaxed);
}

/// The viewer of a WebSocket connection, from its connection_init payload
/// (`{"authorization": "Bearer <token>"}`; no payload: anonymous). The
/// shapes common clients' examples send are read too: the header inside
/// `headers` (Apollo's), `authToken` holding the token alone, and the
/// upgrade request's own `Authorization` header. Different tokens in two
/// of them are refused.
fn viewer_from_init(
    app: &App,
    payload: &serde_json::Value,
    upgrade_authorization: Option<&str>,
) -> async_graphql::Result<Viewer> {
    if !(payload.is_object() || payload.is_null()) {
        return Err(ApiError::BadUserInput("the connection_init payload must be an object".into()).into());
    }
    let headers = payload.get("headers").filter(|headers| headers.is_object());
    let headers = ["authorization", "Authorization"]
        .iter()
        .flat_map(|name| [payload.get(*name), headers.and_then(|headers| headers.get(*name))])
        .flatten()
        .map(|value| (value, true));
    let alone = payload.get("authToken").map(|value| (value, false));
    // Only a bearer token: a proxy in front may speak Basic on the upgrade.
    let upgraded = upgrade_authorization
        .filter(|header| auth::bearer(header).is_some())
        .map(|header| (serde_json::Value::String(header.to_string()), true));
    let mut tokens = Vec::new();
    let given = headers.chain(alone).chain(upgraded.as_ref().map(|(value, is_header)| (value, *is_header)));
    for (value, is_header) in given.filter(|(value, _)| !value.is_null()) {
        let Some(text) = value.as_str() else {
            return Err(ApiError::Unauthenticated("authorization must be a string: \"Bearer <token>\"".into()).into());
        };
        // A header says "Bearer <token>"; authToken may hold the token alone.
        match auth::bearer(text) {
            Some(token) => tokens.push(token),
            None if !is_header => tokens.push(text.trim()),
            None => return Err(auth::bad_token().into()),
        }
    }
    let Some(&token) = tokens.first() else { return Ok(Viewer::Anonymous) };
    if tokens.iter().any(|other| *other != token) {
        let message = "connection_init carries different tokens: send one";
        return Err(ApiError::Unauthenticated(message.into()).into());
    }
    match viewer_of_token(app, token) {
        Ok(viewer @ Viewer::User { .. }) => Ok(viewer),
        Ok(_) => Err(auth::bad_token().into()),
        Err(error) => Err(error.into()),
    }
}

/// Counts one open WebSocket connection; released when dropped.
struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<ConnectionSlot> {
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(open.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of a client address's WebSocket slots, given back when dropped.
struct AddressSlot {
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(
        open: &Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<AddressSlot> {
        let mut by_ip = open.lock().expect("WebSocket addresses lock poisoned");
        let count = by_ip.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot { open: open.clone(), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut by_ip = self.open.lock().expect("WebSocket addresses lock poisoned");
        if let Some(count) = by_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// A request id: the client's X-Request-Id when sane, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Read once: each `process::id()` is a system call.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let given = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            id.to_string()
        }
        _ => format!("{:x}-{:x}", PID.get_or_init(std::process::id), NEXT.fetch_add(1, Ordering::Relaxed)),
    }
}

/// The client's address: the connection's, or with trusted proxy headers
/// the last address in X-Forwarded-For (the one the proxy added).
fn client_ip(app: &App, peer: Option<Peer>, headers: &HeaderMap) -> IpAddr {
    let direct = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0.ip());
    if !app.settings.trust_proxy_headers {
        return direct;
    }
    let forwarded =
        headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    forwarded.rsplit(',').map(str::trim).find_map(|a| a.parse().ok()).unwrap_or(direct)
}

/// What one request came to, for the log line and metrics.
struct Outcome {
    status: StatusCode,
    operation: Option<String>,
    label: &'static str,
    /// The error codes of its answer, each once, comma-separated ("" when
    /// none).
    errors: String,
}

/// POST /graphql through the router (the server's connections take the
/// shorter way of [`ConnectionService`]).
async fn graphql(
    State(state): State<HttpState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => BodyError::TooLarge,
        _ => BodyError::Unreadable,
    });
    serve_graphql(&state, peer.map(|p| p.0), &headers, Input::Body(body)).await
}

/// A GraphQL query sent with GET. Its answer is never stored by caches on
/// the way: seats and sales change from one second to the next.
async fn serve_graphql_get(
    state: &HttpState,
    peer: Option<Peer>,
    headers: &HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut response = serve_graphql(state, peer, headers, Input::Url(uri)).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A GraphQL request over HTTP: runs it, then counts and logs it.
async fn serve_graphql(state: &HttpState, peer: Option<Peer>, headers: &HeaderMap, input: Input) -> Response {
    let started = Instant::now();
    let id = request_id(headers);
    let ip = client_ip(&state.app, peer, headers);
    let (response, outcome) = handle_graphql(state, ip, headers, input).await;
    let elapsed = started.elapsed();
    state.app.metrics.request(outcome.operation.as_deref(), outcome.label, elapsed.as_secs_f64());
    // Rate-limited requests (counted in marquee_rate_limited_total) are
    // logged at most once a second: a flood of them is the client's to make.
    let left_out = match outcome.label {
        "rate_limited" => match state.rate_limited_lines.admit() {
            Some(left_out) => Some(left_out),
            None => return with_request_id(response, &id),
        },
        _ => None,
    };
    // The common fields; a line names error codes only when there are some
    // (an extra field costs every request about a thousand instructions).
    macro_rules! access_line {
        ($($extra:tt)*) => {
            tracing::info!(
                request_id = %id,
                client = %ip,
                operation = outcome.operation.as_deref().unwrap_or("-"),
                status = outcome.status.as_u16(),
                outcome = outcome.label,
                micros = elapsed.as_micros() as u64,
                $($extra)*
                "graphql"
            )
        };
    }
    match left_out {
        _ if outcome.errors.is_empty() => access_line!(),
        None => access_line!(errors = outcome.errors.as_str(),),
        Some(left_out) => access_line!(errors = outcome.errors.as_str(), rate_limited_left_out = left_out,),
    }
    with_request_id(response, &id)
}

fn with_request_id(mut response: Response, id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn handle_graphql(state: &HttpState, ip: IpAddr, headers: &HeaderMap, input: Input) -> (Response, Outcome) {
    let media = Media::accepted(headers);
    let refused =
        |status: StatusCode, error: ApiError, label: &'static str| refused_answer(status, error, label, media);
    // Refused with the body's rest perhaps unread: the connection cannot
    // carry another request.
    let refused_closing = |status: StatusCode, error: ApiError| {
        let (mut response, outcome) = refused(status, error, "rejected");
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        (response, outcome)
    };
    let rate_limited = |wait: Duration| rate_limited_answer(wait, media);
    let app = &state.app;
    if app.is_shutting_down() {
        let mut response = error_response_as(
            StatusCode::SERVICE_UNAVAILABLE,
            &ApiError::Unavailable("the server is shutting down; retry shortly".into()),
            media,
        );
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        set_retry_after(&mut response, Duration::from_secs(1));
        return (
            response,
            Outcome {
                status: StatusCode::SERVICE_UNAVAILABLE,
                operation: None,
                label: "shutting_down",
                errors: "UNAVAILABLE".to_string(),
            },
        );
    }
    let (batch, method) = match input {
        Input::Body(body) => {
            let body = match body {
                Ok(body) => body,
                Err(BodyError::TooLarge) => {
                    let message = format!("the request body is larger than {} bytes", app.settings.body_bytes_max);
                    // Its rest may be unread (announced, or past the drain).
                    return refused_closing(StatusCode::PAYLOAD_TOO_LARGE, ApiError::BadUserInput(message));
                }
                Err(BodyError::Unreadable) => {
                    let message = "the request body could not be read".to_string();
                    return refused(StatusCode::BAD_REQUEST, ApiError::BadUserInput(message), "rejected");
                }
                Err(BodyError::TooSlow) => {
                    let message =
                        format!("the request body did not arrive within {} ms", app.settings.request_timeout_ms);
                    return refused_closing(StatusCode::REQUEST_TIMEOUT, ApiError::BadUserInput(message));
                }
            };
            if let Some(encoding) = content_encoding(headers) {
                let message = format!("Content-Encoding {encoding} is not supported: send the body uncompressed");
                return refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, ApiError::BadUserInput(message), "rejected");
            }
            if let Some(coding) = transfer_coding(headers) {
                let message = format!(
                    "Transfer-Encoding {coding} is not supported: send the body uncompressed (chunked is fine)"
                );
                return refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, ApiError::BadUserInput(message), "rejected");
            }
            if !is_json(headers) {
                return refused(
                    StatusCode::BAD_REQUEST,
                    ApiError::BadUserInput("Content-Type must be application/json".into()),
                    "rejected",
                );
            }
            // One operation of the usual members is read once, and run
            // directly when it can be (see [`crate::direct`]); anything
            // else is read as a whole.
            let variables_bytes_max = app.settings.query_limits.variables_bytes_max;
            let single = match PostBody::read(&body).map(|post| post.direct(&state.validated, variables_bytes_max)) {
                // Boxed, so that every other request's future does not
                // hold room for its state.
                Some(Ok(direct)) => return Box::pin(serve_direct(state, ip, headers, direct, media)).await,
                Some(Err(post)) => post.into_request(),
                None => None,
            };
            match single.map(|request| Ok(BatchRequest::Single(request))).unwrap_or_else(|| body_request(&body)) {
                Ok(batch) => (batch, Method::Post),
                Err(why) => {
                    let message = format!("the body is not a GraphQL request: {why}");
                    return refused(StatusCode::BAD_REQUEST, ApiError::BadUserInput(message), "rejected");
                }
            }
        }
        Input::Url(uri) => match url_request(&uri) {
            Ok(request) => (BatchRequest::Single(request), Method::Get),
            Err(message) => return refused(StatusCode::BAD_REQUEST, ApiError::BadUserInput(message), "rejected"),
        },
    };
    let viewer = match resolve_viewer(app, headers) {
        Ok(viewer) => viewer,
        Err(error) => return refused(StatusCode::INTERNAL_SERVER_ERROR, error, "internal"),
    };
    // Each operation of a batch is a request's worth of work (a batch of
    // ten expensive searches was charged as one); a batch past the batch
    // limit is refused below, charged as one request.
    let operations = match &batch {
        BatchRequest::Batch(requests) if requests.len() <= app.settings.query_limits.batch_max => requests.len().max(1),
        _ => 1,
    };
    if let Err(wait) = check_request_rate(app, &viewer, ip, operations) {
        return rate_limited(wait);
    }
    let (mut batch, operation) = match prepare(app, batch, ip, method) {
        Ok(prepared) => prepared,
        Err(Refusal::TooComplex(TooComplex(why))) => {
            app.metrics.error("QUERY_TOO_COMPLEX");
            return refused(StatusCode::BAD_REQUEST, ApiError::TooComplex(why), "rejected");
        }
        Err(Refusal::NotPersisted) => {
            // 200 whatever the media type: clients of the protocol take this
            // as the cue to send the query's text.
            let response = GqlResponse::from_errors(vec![persisted_query_not_found()]);
            let errors = PERSISTED_QUERY_NOT_FOUND.to_string();
            let outcome = Outcome { status: StatusCode::OK, operation: None, label: "rejected", errors };
            return (json_response(StatusCode::OK, &response, media), outcome);
        }
        Err(Refusal::NoQuery) => {
            let message = "the request has no query: send its text as `query` (or a persisted query's hash; \
                           a browser asking for HTML gets the IDE)";
            return refused(StatusCode::BAD_REQUEST, ApiError::BadUserInput(message.into()), "rejected");
        }
        Err(Refusal::NotOverGet) => {
            let message =
                "only queries can be sent with GET; send mutations with POST, and subscriptions over a WebSocket";
            let (mut response, outcome) =
                refused(StatusCode::METHOD_NOT_ALLOWED, ApiError::BadUserInput(message.into()), "rejected");
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return (response, outcome);
        }
        Err(Refusal::RateLimited(wait)) => return rate_limited(wait),
        Err(Refusal::Invalid(why)) => {
            // As a document that fails validation is answered.
            let status = match media {
                Media::GraphqlResponse => StatusCode::BAD_REQUEST,
                Media::Json => StatusCode::OK,
            };
            return refused(status, ApiError::BadUserInput(why), "rejected");
        }
        Err(Refusal::BadRequest(why)) => {
            return refused(StatusCode::BAD_REQUEST, ApiError::BadUserInput(why), "rejected");
        }
    };
    let check = match &mut batch {
        BatchRequest::Single(request) => state.validated.check(request),
        BatchRequest::Batch(_) => Check::Full,
    };
    let (response, label, errors) = execute(state, batch, check, viewer, media).await;
    let status = response.status();
    (response, Outcome { status, operation, label, errors })
}

/// A request refused before it ran.
fn refused_answer(status: StatusCode, error: ApiError, label: &'static str, media: Media) -> (Response, Outcome) {
    let errors = error.code().to_string();
    (error_response_as(status, &error, media), Outcome { status, operation: None, label, errors })
}

/// A request refused by a rate limit, to retry after `wait`.
fn rate_limited_answer(wait: Duration, media: Media) -> (Response, Outcome) {
    let errors = "RATE_LIMITED".to_string();
    let outcome = Outcome { status: StatusCode::TOO_MANY_REQUESTS, operation: None, label: "rate_limited", errors };
    (rate_limited_response(wait, media), outcome)
}

/// A POST body: one request (a JSON object) or a batch (an array of them).
/// Read as the one or the other by its first byte: parsing it as "either"
/// would buffer the whole document first and, on a mistake, say only that
/// it matched neither.
fn body_request(body: &[u8]) -> Result<BatchRequest, String> {
    // A byte order mark is not JSON, but RFC 8259 lets a reader skip it.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // serde names the type it expected; the client knows it as an object.
    let why = |error: serde_json::Error| error.to_string().replace("struct Request", "an operation object");
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(body).map(BatchRequest::Single).map_err(why),
        Some(b'[') => serde_json::from_slice(body).map(BatchRequest::Batch).map_err(why),
        _ => Err("it must be a JSON object (one operation) or an array of them (a batch)".into()),
    }
}

/// What running a batch came to.
enum Ran {
    Executed(BatchResponse),
    /// A direct run's success, written out (see [`crate::direct`]): no
    /// error, nothing left to do but send it.
    Written(Vec<u8>),
}

impl From<DirectAnswer> for Ran {
    fn from(answer: DirectAnswer) -> Ran {
        match answer {
            DirectAnswer::Written(body) => Ran::Written(body),
            DirectAnswer::Response(response) => Ran::Executed(BatchResponse::Single(response)),
        }
    }
}

/// Runs a checked batch; its response (in `media`), outcome label and
/// error codes (see [`Outcome::errors`]).
async fn execute(
    state: &HttpState,
    batch: BatchRequest,
    check: Check,
    viewer: Viewer,
    media: Media,
) -> (Response, &'static str, String) {
    let app = &state.app;
    let (schema, direct) = match &check {
        Check::Known(direct) => (&state.known_schema, direct.clone()),
        _ => (&state.schema, None),
    };
    // A panic in a resolver becomes a bland 500 instead of a dropped
    // connection or a leaked message. (Caught here rather than by running
    // the request as a task of its own: handing every request to another
    // task costs a wake-up on a second thread.)
    let field_types = &*state.field_types;
    let validated = &*state.validated;
    let run = async move {
        let ran = match batch {
            BatchRequest::Single(request) => match direct.and_then(|plan| Some((plan.input(&request)?, plan))) {
                Some((input, plan)) => {
                    validated.ran_direct();
                    let (query, operation_name) = (&request.query, request.operation_name.as_deref());
                    plan.run(app, &viewer, input, query, operation_name, field_types).await.into()
                }
                None => Ran::Executed(BatchResponse::Single(
                    run_completed(schema, field_types, &app.parsed, request.data(viewer)).await,
                )),
            },
            BatchRequest::Batch(requests) => Ran::Executed(BatchResponse::Batch(
                async_graphql::futures_util::stream::FuturesOrdered::from_iter(
                    requests
                        .into_iter()
                        .map(|request| run_completed(schema, field_types, &app.parsed, request.data(viewer.clone()))),
                )
                .collect()
                .await,
            )),
        };
        if let Ran::Executed(BatchResponse::Single(response)) = &ran {
            validated.settle(check, response);
        }
        ran
    };
    let timeout = Duration::from_millis(app.settings.request_timeout_ms);
    let ran = tokio::time::timeout(timeout, AssertUnwindSafe(run).catch_unwind()).await;
    answer(state, ran, timeout, media)
}

/// A POST body run directly (see [`crate::direct`]): as [`handle_graphql`]
/// runs a request, but without an async-graphql request, its query limits
/// (a known operation's text passed them, and its variables' text is
/// within theirs) or the check of a known operation (its input was read).
async fn serve_direct(
    state: &HttpState,
    ip: IpAddr,
    headers: &HeaderMap,
    direct: DirectRequest<'_>,
    media: Media,
) -> (Response, Outcome) {
    let app = &state.app;
    let viewer = match resolve_viewer(app, headers) {
        Ok(viewer) => viewer,
        Err(error) => return refused_answer(StatusCode::INTERNAL_SERVER_ERROR, error, "internal", media),
    };
    if let Err(wait) = check_request_rate(app, &viewer, ip, 1) {
        return rate_limited_answer(wait, media);
    }
    let operation = Some(direct.plan.label().to_string());
    let DirectRequest { query, operation_name, plan, input } = direct;
    let field_types = &*state.field_types;
    state.validated.ran_known_directly();
    let run =
        async move { Ran::from(plan.run(app, &viewer, input, &query, operation_name.as_deref(), field_types).await) };
    let timeout = Duration::from_millis(app.settings.request_timeout_ms);
    let ran = tokio::time::timeout(timeout, AssertUnwindSafe(run).catch_unwind()).await;
    let (response, label, errors) = answer(state, ran, timeout, media);
    let status = response.status();
    (response, Outcome { status, operation, label, errors })
}

/// How a run within `timeout`, its panic caught, came out: its response
/// (in `media`), outcome label and error codes (see [`Outcome::errors`]).
/// (Given the outcome rather than the run: an async fn given the run held
/// copies of its state, and every request paid for moving them.)
fn answer(
    state: &HttpState,
    ran: Result<std::thread::Result<Ran>, tokio::time::error::Elapsed>,
    timeout: Duration,
    media: Media,
) -> (Response, &'static str, String) {
    let app = &state.app;
    match ran {
        Ok(Ok(Ran::Written(body))) => {
            let response = (StatusCode::OK, [(header::CONTENT_TYPE, media.content_type())], body).into_response();
            (response, "ok", String::new())
        }
        Ok(Ok(Ran::Executed(mut response))) => {
            add_missing_codes(&mut response);
            let mut codes = error_codes(&response);
            for code in &codes {
                app.metrics.error(code);
            }
            codes.sort_unstable();
            codes.dedup();
            let errors = codes.join(",");
            if codes.iter().any(|code| code == "RATE_LIMITED") {
                // The wait its message names ("retry in N s"), else the window.
                let named = responses_of(&response)
                    .iter()
                    .flat_map(|response| &response.errors)
                    .filter_map(|error| error.message.rsplit_once("retry in ")?.1.strip_suffix(" s")?.parse().ok())
                    .max();
                let wait = Duration::from_secs(named.unwrap_or(app.settings.login_failures_window_s));
                let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &response, media);
                set_retry_after(&mut response, wait);
                return (response, "rate_limited", errors);
            }
            let label = if codes.iter().any(|c| c == "INTERNAL") {
                "internal"
            } else if codes.is_empty() {
                "ok"
            } else {
                "error"
            };
            (graphql_response(&response, media), label, errors)
        }
        Ok(Err(_panic)) => {
            tracing::error!("GraphQL execution panicked");
            let response = error_response_as(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::Internal, media);
            (response, "internal", ApiError::Internal.code().to_string())
        }
        Err(_) => {
            let message = format!(
                "the request took longer than {} ms; it may still complete (retry with the same idempotencyKey)",
                timeout.as_millis()
            );
            let error = ApiError::Unavailable(message);
            (error_response_as(StatusCode::SERVICE_UNAVAILABLE, &error, media), "timeout", error.code().to_string())
        }
    }
}

/// Runs one request the way the GraphQL spec has it, where async-graphql
/// departs from it (see [`crate::completion`]): refused as a whole when a
/// required variable has no value, and with every failed field given its
/// null.
async fn run_completed(
    schema: &MarqueeSchema,
    field_types: &FieldTypes,
    parsed: &limits::ParsedQueries,
    mut request: GqlRequest,
) -> GqlResponse {
    let operation_name = request.operation_name.clone();
    // The document is parsed by now for nearly every request (the parsed
    // queries' cache attached it). async-graphql then reads only the
    // document, so the text can leave the request, to be parsed again only
    // should the response have failed fields.
    let query = match request.parsed_query() {
        Ok(_) => std::mem::take(&mut request.query),
        Err(_) => {
            let mut response = schema.execute(request).await;
            drop_repeated_errors(&mut response);
            return response;
        }
    };
    if let Some(error) = unusable_variable_of(&mut request) {
        return GqlResponse::from_errors(vec![error]);
    }
    let mut response = schema.execute(request).await;
    drop_repeated_errors(&mut response);
    if response.errors.iter().any(|error| !error.path.is_empty()) {
        // The kept parse of the text (a SOLD_OUT in a rush comes here), else
        // a new one.
        let document =
            parsed.document(&query).or_else(|| async_graphql::parser::parse_query(&query).ok().map(Arc::new));
        if let Some(document) = document {
            field_types.complete(&document, operation_name.as_deref(), &mut response);
        }
    }
    response
}

/// Lists an error of the request as a whole (no path) once: async-graphql
/// reports some documents twice, from two of its rules
/// (`subscription { __typename }`).
fn drop_repeated_errors(response: &mut GqlResponse) {
    if response.errors.len() < 2 {
        return;
    }
    let mut seen: Vec<(String, Vec<async_graphql::Pos>)> = Vec::new();
    response.errors.retain(|error| {
        if !error.path.is_empty() {
            return true;
        }
        let key = (error.message.clone(), error.locations.clone());
        let first = !seen.contains(&key);
        if first {
            seen.push(key);
        }
        first
    });
}

/// Why a request was refused before it ran.
enum Refusal {
    TooComplex(TooComplex),
    NotPersisted,
    /// A mutation or subscription sent with GET.
    NotOverGet,
    /// Neither a query's text nor a known persisted query's hash.
    NoQuery,
    /// Something else about the request is wrong: why.
    BadRequest(String),
    /// The document asks for what this server does not serve (as a
    /// validation error): why.
    Invalid(String),
    RateLimited(Duration),
}

/// How a GraphQL request came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Post,
    /// Queries only: a GET must not change anything.
    Get,
}

/// Per-caller budget: the token's for a signed-in viewer, the address's
/// for anyone else; `operations` requests' worth of it, all or none.
fn check_request_rate(app: &App, viewer: &Viewer, ip: IpAddr, operations: usize) -> Result<(), Duration> {
    let count = u32::try_from(operations).unwrap_or(u32::MAX);
    let limited = match viewer {
        Viewer::User { token_hash, .. } => {
            app.limits.per_token.check_up_to_burst(token_hash, count).map_err(|w| (w, "token"))
        }
        _ => app.limits.per_ip.check_up_to_burst(ip, count).map_err(|w| (w, "ip")),
    };
    limited.map_err(|(wait, scope)| {
        app.metrics.rate_limited(scope);
        wait
    })
}

/// The sign-in attempts an operation makes, each charged to the client's
/// address: one for each `login` and `register` a mutation holds (aliases
/// let one request hold many, and each costs a password hash).
fn sign_ins(cost: &limits::Cost) -> usize {
    if !cost.mutation {
        return 0;
    }
    cost.root_names.iter().filter(|name| *name == "login" || *name == "register").count()
}

/// Takes `count` sign-ins of the address's budget, all or none.
fn charge_sign_ins(app: &App, ip: IpAddr, count: usize) -> Result<(), Duration> {
    if count == 0 {
        return Ok(());
    }
    let count = u32::try_from(count).unwrap_or(u32::MAX);
    app.limits.credentials_per_ip.check_many(ip, count).inspect_err(|_| app.metrics.rate_limited("credentials"))
}

/// Applies persisted queries and the query limits to every operation of
/// the batch; returns it ready to run, with the first operation's name.
fn prepare(
    app: &App,
    batch: BatchRequest,
    ip: IpAddr,
    method: Method,
) -> Result<(BatchRequest, Option<String>), Refusal> {
    let limits = &app.settings.query_limits;
    // A batch of one is still a batch: its client reads an array back.
    let single = matches!(batch, BatchRequest::Single(_));
    let mut requests = match batch {
        BatchRequest::Single(request) => vec![request],
        BatchRequest::Batch(requests) => {
            if requests.is_empty() {
                return Err(Refusal::BadRequest("the batch is empty: send at least one operation".into()));
            }
            if requests.len() > limits.batch_max {
                let why =
                    format!("a batch holds {} operations, more than the {} allowed", requests.len(), limits.batch_max);
                return Err(Refusal::TooComplex(TooComplex(why)));
            }
            requests
        }
    };
    let mut first_name = None;
    let mut sign_in_attempts = 0;
    for request in &mut requests {
        apply_persisted_query(app, request)?;
        if request.query.trim().is_empty() {
            return Err(Refusal::NoQuery);
        }
        if !app.settings.introspection {
            *request = std::mem::replace(request, GqlRequest::new("")).disable_introspection();
        }
        let known = if request.query.len() <= limits.query_bytes_max {
            app.parsed.attach(request).map_err(Refusal::TooComplex)?
        } else {
            None
        };
        let measured_now = known.is_none();
        let Some(cost) = limits::inspect(request, limits, known).map_err(Refusal::TooComplex)? else { continue };
        if measured_now {
            app.parsed.remember(request, &cost);
        }
        if method == Method::Get && (cost.mutation || cost.subscription) {
            return Err(Refusal::NotOverGet);
        }
        if let Some(why) = introspection_refused(app, &cost) {
            return Err(Refusal::Invalid(why));
        }
        sign_in_attempts += sign_ins(&cost);
        first_name = first_name.or(cost.operation_name.clone().or_else(|| cost.root_names.first().cloned()));
    }
    // All of the batch's sign-ins or none: a refused batch costs nothing.
    charge_sign_ins(app, ip, sign_in_attempts).map_err(Refusal::RateLimited)?;
    let batch =
        if single { BatchRequest::Single(requests.pop().expect("one request")) } else { BatchRequest::Batch(requests) };
    Ok((batch, first_name))
}

/// Why an operation is refused when introspection is turned off and it
/// asks for the schema (`__schema` or `__type`; `__typename` is always
/// served): without this, async-graphql answers null and no error.
fn introspection_refused(app: &App, cost: &limits::Cost) -> Option<String> {
    if app.settings.introspection {
        return None;
    }
    let field = cost.root_names.iter().find(|name| *name == "__schema" || *name == "__type")?;
    Some(format!("introspection is turned off on this server (`--introspection`): {field} is not served"))
}

/// Automatic persisted queries (the Apollo protocol): a request may carry
/// `extensions.persistedQuery.sha256Hash` instead of (or with) its text.
fn apply_persisted_query(app: &App, request: &mut GqlRequest) -> Result<(), Refusal> {
    let Some(persisted) = request.extensions.get("persistedQuery") else { return Ok(()) };
    let hash = match persisted.clone().into_json() {
        Ok(serde_json::Value::Object(fields)) => {
            fields.get("sha256Hash").and_then(|h| h.as_str()).map(str::to_ascii_lowercase)
        }
        _ => None,
    };
    let Some(hash) = hash.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) else {
        return Err(Refusal::BadRequest("extensions.persistedQuery.sha256Hash must be 64 hex digits".into()));
    };
    if request.query.is_empty() {
        let query = app.persisted.get(&hash).ok_or(Refusal::NotPersisted)?;
        request.query = query.to_string();
        return Ok(());
    }
    if limits::query_hash(&request.query) != hash {
        return Err(Refusal::BadRequest(
            "extensions.persistedQuery.sha256Hash is not the SHA-256 of the query sent with it".into(),
        ));
    }
    if request.query.len() <= app.settings.query_limits.query_bytes_max {
        app.persisted.put(hash, &request.query);
    }
    Ok(())
}

/// The automatic persisted queries protocol's code for "send the text".
const PERSISTED_QUERY_NOT_FOUND: &str = "PERSISTED_QUERY_NOT_FOUND";

fn persisted_query_not_found() -> async_graphql::ServerError {
    coded_error("PersistedQueryNotFound", PERSISTED_QUERY_NOT_FOUND)
}

/// An answer of one error raised outside a resolver, with its code.
fn error_answer(error: &ApiError) -> GqlResponse {
    GqlResponse::from_errors(vec![coded_error(error.message(), error.code())])
}

/// A GraphQL error raised outside a resolver, with its code.
fn coded_error(message: &str, code: &str) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

fn rate_limited_response(wait: Duration, media: Media) -> Response {
    let message = format!("too many requests; retry in {} s", limits::retry_seconds(wait));
    let mut response = error_response_as(StatusCode::TOO_MANY_REQUESTS, &ApiError::RateLimited(message), media);
    set_retry_after(&mut response, wait);
    response
}

fn set_retry_after(response: &mut Response, wait: Duration) {
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(limits::retry_seconds(wait)));
}

/// The responses of a batch (one for a single request).
fn responses_of(response: &BatchResponse) -> &[GqlResponse] {
    match response {
        BatchResponse::Single(single) => std::slice::from_ref(single),
        BatchResponse::Batch(many) => many,
    }
}

fn error_codes(response: &BatchResponse) -> Vec<String> {
    responses_of(response)
        .iter()
        .flat_map(|r| r.errors.iter())
        .filter_map(|e| {
            e.extensions.as_ref()?.get("code").and_then(|c| match c {
                async_graphql::Value::String(code) => Some(code.clone()),
                _ => None,
            })
        })
        .collect()
}

/// The body's content coding, unless it is none (`identity`): the server
/// reads bodies as they are, so a compressed one would be misread.
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_ENCODING)?;
    let value = value.to_str().unwrap_or("(not text)").trim();
    (!value.is_empty() && !value.eq_ignore_ascii_case("identity")).then(|| value.to_string())
}

/// The body's transfer codings other than `chunked` (the framing, undone
/// by hyper) and `identity`, if any: a `gzip, chunked` body would be
/// misread as JSON otherwise.
fn transfer_coding(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<&str> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("(not text)").split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty())
        .filter(|coding| !coding.eq_ignore_ascii_case("chunked") && !coding.eq_ignore_ascii_case("identity"))
        .collect();
    (!codings.is_empty()).then(|| codings.join(", "))
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("application/graphql-response+json")
}

/// Who the request acts as, from its Authorization header.
pub(crate) fn resolve_viewer(app: &App, headers: &HeaderMap) -> Result<Viewer, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Viewer::Anonymous);
    };
    let Some(token) = value.to_str().ok().and_then(auth::bearer) else {
        return Ok(Viewer::BadToken);
    };
    viewer_of_token(app, token)
}

/// Who a bearer token acts as.
fn viewer_of_token(app: &App, token: &str) -> Result<Viewer, ApiError> {
    viewer_of_token_hash(app, auth::token_hash(token))
}

/// The viewer a token (by its hash) stands for now: its user as stored
/// now, or [`Viewer::BadToken`] once it is revoked or expired.
fn viewer_of_token_hash(app: &App, token_hash: [u8; 32]) -> Result<Viewer, ApiError> {
    let Some(session) = app.graph.session(&token_hash)? else {
        return Ok(Viewer::BadToken);
    };
    if session.expires_at_ms <= graph::now_ms() {
        return Ok(Viewer::BadToken);
    }
    match app.graph.user(session.user)? {
        Some(user) => Ok(Viewer::User { user, token_hash }),
        None => Ok(Viewer::BadToken),
    }
}

/// Errors raised before a resolver runs (syntax, validation, argument
/// coercion) come without a code; they are all the caller's input. A
/// syntax error's message is the parser's drawing of the line, over
/// several lines; it is made one (its position is in `locations`).
fn add_missing_codes(response: &mut BatchResponse) {
    let responses: &mut [GqlResponse] = match response {
        BatchResponse::Single(single) => std::slice::from_mut(single),
        BatchResponse::Batch(many) => many,
    };
    responses.iter_mut().for_each(add_missing_code);
}

fn add_missing_code(response: &mut GqlResponse) {
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "BAD_USER_INPUT");
            if let Some(message) = one_line_syntax_error(&error.message) {
                error.message = message;
            }
        }
    }
}

/// The one-line form of the parser's syntax error (" --> 1:14 | ... = expected
/// selection_set, ..."): "syntax error at 1:14: expected selection_set, ...".
fn one_line_syntax_error(message: &str) -> Option<String> {
    let position = message.strip_prefix(" --> ")?.lines().next()?.trim();
    let expected = message.lines().rev().find_map(|line| line.trim_start().strip_prefix("= "))?;
    Some(format!("syntax error at {position}: {}", expected.trim()))
}

/// The schema as WebSocket connections run it, with what `POST /graphql`
/// holds every request to: the query limits (over them:
/// `QUERY_TOO_COMPLEX`, nothing runs), the rate limits, introspection as
/// configured, required variables, failed fields given their nulls, and a
/// code on every error. Each operation acts as its connection's token
/// stands when it starts, and a subscription ends once that changes.
#[derive(Clone)]
struct GuardedSchema {
    schema: MarqueeSchema,
    app: Arc<App>,
    field_types: Arc<FieldTypes>,
    /// The client's address, for the rate limits of callers without a token
    /// and of sign-ins.
    ip: IpAddr,
}

impl GuardedSchema {
    /// Readies `request` of `viewer`; its refusal, if it is refused before
    /// it runs.
    fn check(&self, request: &mut GqlRequest, viewer: &Viewer) -> Option<GqlResponse> {
        let app = &self.app;
        if !app.settings.introspection {
            *request = std::mem::replace(request, GqlRequest::new("")).disable_introspection();
        }
        let refusal = |error: ApiError| Some(error_answer(&error));
        let rate_limited = |wait: Duration| {
            refusal(ApiError::RateLimited(format!("too many requests; retry in {} s", limits::retry_seconds(wait))))
        };
        if let Err(wait) = check_request_rate(app, viewer, self.ip, 1) {
            return rate_limited(wait);
        }
        let cost = match limits::inspect(request, &app.settings.query_limits, None) {
            Ok(cost) => cost,
            Err(TooComplex(why)) => {
                app.metrics.error("QUERY_TOO_COMPLEX");
                return refusal(ApiError::TooComplex(why));
            }
        };
        if let Some(cost) = &cost {
            if let Some(why) = introspection_refused(app, cost) {
                return refusal(ApiError::BadUserInput(why));
            }
            if let Err(wait) = charge_sign_ins(app, self.ip, sign_ins(cost)) {
                return rate_limited(wait);
            }
            // The spec's "Single root field" rule, which async-graphql does
            // not check: it would stream each root field on its own.
            if cost.subscription && cost.root_fields > 1 {
                let why =
                    format!("a subscription selects exactly one root field; this one selects {}", cost.root_fields);
                return refusal(ApiError::BadUserInput(why));
            }
        }
        let mut refused = GqlResponse::from_errors(vec![unusable_variable_of(request)?]);
        add_missing_code(&mut refused);
        Some(refused)
    }

    /// The viewer the connection's token stands for now (see
    /// [`viewer_of_token_hash`]), from the viewer of its connection_init.
    fn current(&self, signed_in: Option<&Viewer>) -> Viewer {
        match signed_in {
            Some(Viewer::User { token_hash, .. }) => {
                viewer_of_token_hash(&self.app, *token_hash).unwrap_or(Viewer::BadToken)
            }
            Some(other) => other.clone(),
            None => Viewer::Anonymous,
        }
    }
}

impl async_graphql::Executor for GuardedSchema {
    fn execute(&self, mut request: GqlRequest) -> impl Future<Output = GqlResponse> + Send {
        let viewer = self.current(request.data.get(&TypeId::of::<Viewer>()).and_then(|v| v.downcast_ref::<Viewer>()));
        let refused = self.check(&mut request, &viewer);
        request.data.insert(viewer);
        let schema = self.schema.clone();
        let field_types = self.field_types.clone();
        let app = self.app.clone();
        async move {
            if let Some(refused) = refused {
                return refused;
            }
            let mut response = run_completed(&schema, &field_types, &app.parsed, request).await;
            add_missing_code(&mut response);
            response
        }
    }

    fn execute_stream(
        &self,
        mut request: GqlRequest,
        session_data: Option<Arc<Data>>,
    ) -> async_graphql::futures_util::stream::BoxStream<'static, GqlResponse> {
        // The connection signed in once, at connection_init; each operation
        // acts as its token stands now (revoked, or the user's role changed).
        let signed_in = session_data.as_deref().and_then(|data| data.get(&TypeId::of::<Viewer>()));
        let viewer = self.current(signed_in.and_then(|viewer| viewer.downcast_ref::<Viewer>()));
        if let Some(refused) = self.check(&mut request, &viewer) {
            return async_graphql::futures_util::stream::once(async move { refused }).boxed();
        }
        let operation_name = request.operation_name.clone();
        // The document to complete results with, kept for the operation's
        // life (a subscription's results are completed each against it).
        let document = request.parsed_query().ok().cloned();
        let subscription = document.as_ref().is_some_and(|d| is_subscription(d, operation_name.as_deref()));
        // A subscription takes its slot of the connection's budget now, as
        // its message arrives: over the budget are the last to come.
        let budget = session_data.as_deref().and_then(|data| data.get(&TypeId::of::<schema::SubscriptionBudget>()));
        let slot = match budget.and_then(|budget| budget.downcast_ref::<schema::SubscriptionBudget>()) {
            Some(budget) if subscription => match budget.take() {
                Ok(slot) => Some(slot),
                Err(error) => {
                    let refused = error_answer(&error);
                    return async_graphql::futures_util::stream::once(async move { refused }).boxed();
                }
            },
            _ => None,
        };
        // A subscription runs as its viewer was when it started: it ends, in
        // place of its next result, once that changed (a query or mutation
        // ran as the viewer stood when it started, and its answer stands).
        let watched = match &viewer {
            Viewer::User { user, token_hash } if subscription => Some((*token_hash, user.role)),
            _ => None,
        };
        request.data.insert(viewer);
        let field_types = self.field_types.clone();
        let app = self.app.clone();
        let results =
            async_graphql::Executor::execute_stream(&self.schema, request, session_data).map(move |mut response| {
                // Held as long as the stream: dropped with it, the slot
                // goes back to the budget.
                let _slot = &slot;
                let changed = watched.and_then(|(token_hash, role)| {
                    match viewer_of_token_hash(&app, token_hash).unwrap_or(Viewer::BadToken) {
                        Viewer::User { user, .. } if user.role == role => None,
                        Viewer::User { .. } => Some(ApiError::Forbidden(
                            "the account's role changed since this subscription started; subscribe again".into(),
                        )),
                        _ => Some(auth::bad_token()),
                    }
                });
                if let Some(error) = &changed {
                    response = error_answer(error);
                } else if let Some(document) = &document {
                    field_types.complete(document, operation_name.as_deref(), &mut response);
                }
                drop_repeated_errors(&mut response);
                add_missing_code(&mut response);
                (response, changed.is_some())
            });
        // The result that ends a subscription is its last: the stream ends
        // right after it, without waiting for another event, so the client
        // hears `complete` and the subscription's slot comes back.
        async_graphql::futures_util::stream::unfold((results, false), |(mut results, ended)| async move {
            if ended {
                return None;
            }
            let (response, last) = results.next().await?;
            Some((response, (results, last)))
        })
        .boxed()
    }
}

pub(crate) fn error_response(status: StatusCode, error: &ApiError) -> Response {
    error_response_as(status, error, Media::Json)
}

fn error_response_as(status: StatusCode, error: &ApiError, media: Media) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": error.message(), "extensions": { "code": error.code() } }]
    });
    json_response(status, &body, media)
}

/// The media type of a GraphQL response, from the request's Accept header
/// (GraphQL over HTTP). `application/json` answers every well-formed request
/// with 200; `application/graphql-response+json` answers a request error
/// (the document does not parse or validate, variables do not coerce, no
/// such operation: nothing ran) with 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Media {
    Json,
    GraphqlResponse,
}

impl Media {
    const GRAPHQL_RESPONSE: &'static str = "application/graphql-response+json";

    /// `application/graphql-response+json` when the client lists it and
    /// does not prefer `application/json` to it; `application/json` for
    /// everyone else (no Accept header and `*/*` included).
    fn accepted(headers: &HeaderMap) -> Media {
        let (mut graphql_response, mut json) = (None::<f32>, None::<f32>);
        for (essence, quality) in accepted_ranges(headers) {
            let best = |seen: Option<f32>| Some(seen.map_or(quality, |q| q.max(quality)));
            if essence.eq_ignore_ascii_case(Self::GRAPHQL_RESPONSE) {
                graphql_response = best(graphql_response);
            } else if essence.eq_ignore_ascii_case("application/json") {
                json = best(json);
            }
        }
        match graphql_response {
            Some(q) if q > 0.0 && json.is_none_or(|json| q >= json) => Media::GraphqlResponse,
            _ => Media::Json,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Media::Json => "application/json",
            Media::GraphqlResponse => Self::GRAPHQL_RESPONSE,
        }
    }
}

/// Whether a response is a request error: raised before anything ran, so
/// it carries no data (its errors have no path; a field's error does).
fn is_request_error(response: &GqlResponse) -> bool {
    !response.errors.is_empty()
        && response.data == async_graphql::Value::Null
        && response.errors.iter().all(|error| error.path.is_empty())
}

/// An executed batch as HTTP: request errors leave out `data` (the GraphQL
/// spec: no data entry when nothing ran), and a single request error is a
/// 400 for `application/graphql-response+json`.
fn graphql_response(response: &BatchResponse, media: Media) -> Response {
    if !responses_of(response).iter().any(is_request_error) {
        return json_response(StatusCode::OK, response, media);
    }
    let without_data = |response: &GqlResponse| {
        let mut value = serde_json::to_value(response).unwrap_or_default();
        if is_request_error(response) {
            if let Some(fields) = value.as_object_mut() {
                fields.remove("data");
            }
        }
        value
    };
    match response {
        BatchResponse::Single(single) => {
            let status = match media {
                Media::GraphqlResponse => StatusCode::BAD_REQUEST,
                Media::Json => StatusCode::OK,
            };
            json_response(status, &without_data(single), media)
        }
        BatchResponse::Batch(many) => {
            let values: Vec<serde_json::Value> = many.iter().map(without_data).collect();
            json_response(StatusCode::OK, &values, media)
        }
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize, media: Media) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, media.content_type())], bytes).into_response(),
        Err(error) => {
            tracing::error!(%error, "response did not serialise");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Readiness and shutdown state.
#[derive(Default)]
pub struct Lifecycle {
    shutting_down: AtomicBool,
    signal: std::sync::OnceLock<tokio::sync::watch::Sender<bool>>,
}

impl Lifecycle {
    pub(crate) fn signal(&self) -> &tokio::sync::watch::Sender<bool> {
        self.signal.get_or_init(|| tokio::sync::watch::channel(false).0)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.signal().send_replace(true);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_keep_alive_and_send_without_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (accepted, _client) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(address));
        let (accepted, _) = accepted.unwrap();
        assert!(!socket2::SockRef::from(&accepted).keepalive().unwrap(), "off until tuned");
        super::tune_accepted(&accepted);
        assert!(socket2::SockRef::from(&accepted).keepalive().unwrap());
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn a_syntax_error_is_said_in_one_line() {
        let error = async_graphql::parser::parse_query("{ __typename ").unwrap_err();
        let mut response = async_graphql::Response::from_errors(vec![error.into()]);
        assert!(response.errors[0].message.contains('\n'), "the parser's drawing: {}", response.errors[0].message);
        super::add_missing_code(&mut response);
        let message = &response.errors[0].message;
        assert!(message.starts_with("syntax error at 1:14: expected "), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert_eq!(response.errors[0].locations.len(), 1);
        // Other messages are left as they are.
        assert_eq!(super::one_line_syntax_error("Unknown field \"nope\" on type \"Query\"."), None);
    }
}
