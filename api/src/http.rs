//! HTTP: routes, the GraphQL endpoint, health checks and the bundled IDE.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse, Data, Response as GqlResponse};
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{self, Viewer};
use crate::error::ApiError;
use crate::schema::{self, MarqueeSchema};
use crate::{export, App};

/// Largest WebSocket message a client may send.
const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) app: Arc<App>,
    schema: MarqueeSchema,
    /// WebSocket connections open now.
    ws_open: Arc<AtomicUsize>,
}

/// Builds the router: `/graphql` (POST to execute; GET opens the IDE, or a
/// WebSocket for subscriptions), `/healthz` and `/readyz`.
pub fn router(app: Arc<App>) -> Router {
    let body_bytes_max = app.settings.body_bytes_max;
    let state = HttpState { schema: schema::build(app.clone()), app, ws_open: Arc::new(AtomicUsize::new(0)) };
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql))
        .route("/events/{id}/bookings.csv", get(export::bookings_csv))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(state)
}

/// The interactive GraphQL IDE; its script and styles are in the page, so
/// it works with no internet access.
async fn ide() -> impl IntoResponse {
    Html(include_str!("ide.html"))
}

/// GET /graphql: a WebSocket upgrade for subscriptions, else the IDE.
async fn graphql_get(State(state): State<HttpState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let upgrading = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrading {
        return ide().await.into_response();
    }
    let Ok(protocol) = GraphQLProtocol::from_request_parts(&mut parts, &state).await else {
        let message = "Sec-WebSocket-Protocol must be graphql-transport-ws (or the legacy graphql-ws)";
        return error_response(StatusCode::BAD_REQUEST, &ApiError::BadUserInput(message.into()));
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(slot) = ConnectionSlot::take(&state.ws_open, state.app.settings.ws_connections_max) else {
        let message = "too many WebSocket connections; retry later";
        return error_response(StatusCode::SERVICE_UNAVAILABLE, &ApiError::Unavailable(message.into()));
    };
    let budget = schema::SubscriptionBudget::new(state.app.settings.subscriptions_per_connection_max);
    upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS).max_message_size(WS_MESSAGE_BYTES_MAX).on_upgrade(
        move |socket| async move {
            let _slot = slot;
            let app = state.app.clone();
            let mut data = Data::default();
            data.insert(budget);
            GraphQLWebSocket::new(socket, state.schema.clone(), protocol)
                .with_data(data)
                .on_connection_init(move |payload| async move {
                    let mut data = Data::default();
                    data.insert(viewer_from_init(&app, &payload)?);
                    Ok(data)
                })
                .serve()
                .await
        },
    )
}

/// The viewer of a WebSocket connection, from its connection_init payload
/// (`{"authorization": "Bearer <token>"}`; no payload: anonymous).
fn viewer_from_init(app: &App, payload: &serde_json::Value) -> async_graphql::Result<Viewer> {
    let header = ["authorization", "Authorization"].iter().find_map(|name| payload.get(*name)).and_then(|v| v.as_str());
    let Some(header) = header else {
        return Ok(Viewer::Anonymous);
    };
    match auth::bearer(header).map(|token| viewer_of_token(app, token)) {
        Some(Ok(viewer @ Viewer::User { .. })) => Ok(viewer),
        Some(Err(error)) => Err(error.into()),
        _ => Err(auth::bad_token().into()),
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

async fn graphql(State(state): State<HttpState>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    format!("the request body is larger than {} bytes", state.app.settings.body_bytes_max)
                }
                _ => "the request body could not be read".to_string(),
            };
            return error_response(rejection.status(), &ApiError::BadUserInput(message));
        }
    };
    if !is_json(&headers) {
        return request_error("Content-Type must be application/json");
    }
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(error) => return request_error(&format!("the body is not a GraphQL request: {error}")),
    };
    let viewer = match resolve_viewer(&state.app, &headers) {
        Ok(viewer) => viewer,
        Err(error) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &error),
    };
    let schema = state.schema.clone();
    // A task of its own, so a panic in a resolver becomes a bland 500
    // instead of a dropped connection or a leaked message.
    let executed = tokio::spawn(async move { schema.execute_batch(batch.data(viewer)).await }).await;
    match executed {
        Ok(mut response) => {
            add_missing_codes(&mut response);
            json_response(StatusCode::OK, &response)
        }
        Err(join) => {
            tracing::error!(error = %join, "GraphQL execution panicked");
            error_response(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::Internal)
        }
    }
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
    let token_hash = auth::token_hash(token);
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
/// coercion) come without a code; they are all the caller's input.
fn add_missing_codes(response: &mut BatchResponse) {
    let responses: &mut [GqlResponse] = match response {
        BatchResponse::Single(single) => std::slice::from_mut(single),
        BatchResponse::Batch(many) => many,
    };
    for error in responses.iter_mut().flat_map(|r| r.errors.iter_mut()) {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "BAD_USER_INPUT");
        }
    }
}

/// A request that could not be executed at all: 400 with a GraphQL-shaped body.
fn request_error(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, &ApiError::BadUserInput(message.to_string()))
}

pub(crate) fn error_response(status: StatusCode, error: &ApiError) -> Response {
    let body = serde_json::json!({
        "errors": [{ "message": error.message(), "extensions": { "code": error.code() } }]
    });
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(error) => {
            tracing::error!(%error, "response did not serialise");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
