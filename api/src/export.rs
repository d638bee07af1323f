//! The organizer's CSV export of an event's bookings and attendees:
//! `GET /events/{id}/bookings.csv` with `Authorization: Bearer <token>`
//! (the event's organizer or an admin). One row per booking, every status.
//! Buyers' emails are filled in for admins only, as `User.email` is shown
//! to nobody else: the column is there for everyone, empty for organizers.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use graph::ids::EventId;
use graph::model::{BookingStatus, Role};

use crate::auth::Viewer;
use crate::error::ApiError;
use crate::http::{error_response, resolve_viewer, HttpState};
use crate::schema::DateTime;

const HEADER: &str =
    "booking_id,status,user_id,user_name,user_email,ticket_type,quantity,total_cents,currency,created_at,confirmed_at,tickets_checked_in\n";

/// Quotes a field when it holds a separator, quote or line break, and
/// defuses spreadsheet formulas (a leading = + - @).
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_string() };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn status(status: BookingStatus) -> &'static str {
    match status {
        BookingStatus::Held => "HELD",
        BookingStatus::Confirmed => "CONFIRMED",
        BookingStatus::Cancelled => "CANCELLED",
        BookingStatus::Expired => "EXPIRED",
    }
}

/// GET /events/{id}/bookings.csv
pub(crate) async fn bookings_csv(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let app = state.app.clone();
    let viewer = match resolve_viewer(&app, &headers) {
        Ok(viewer) => viewer,
        Err(error) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, &error),
    };
    let user = match &viewer {
        Viewer::User { user, .. } => user.clone(),
        Viewer::Anonymous => return error_response(StatusCode::UNAUTHORIZED, &ApiError::sign_in()),
        Viewer::BadToken => return error_response(StatusCode::UNAUTHORIZED, &crate::auth::bad_token()),
    };
    let Some(event) = id.parse::<EventId>().ok().and_then(|id| app.graph.event(id)) else {
        return error_response(StatusCode::NOT_FOUND, &ApiError::NotFound("no such event".into()));
    };
    let admin = user.role == Role::Admin;
    let manages = admin || event.organizer == user.id;
    // Another organizer's draft is not there for them, as in `event(id)`.
    if event.status.is_private() && !manages {
        return error_response(StatusCode::NOT_FOUND, &ApiError::NotFound("no such event".into()));
    }
    if !manages {
        let error = ApiError::Forbidden("only the event's organizer or an admin may export its bookings".into());
        return error_response(StatusCode::FORBIDDEN, &error);
    }
    let event_id = event.id;
    let written = tokio::task::spawn_blocking(move || render(&app, event_id, admin)).await;
    match written {
        Ok(Ok((csv, rows))) => {
            tracing::info!(event = %event_id, user = %user.id, rows, "bookings exported as CSV");
            let disposition = format!("attachment; filename=\"event-{}-bookings.csv\"", event.id);
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                csv,
            )
                .into_response()
        }
        Ok(Err(error)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &error),
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, &ApiError::Internal),
    }
}

/// The CSV and its number of rows; buyers' emails only `with_emails`.
fn render(app: &Arc<crate::App>, event: EventId, with_emails: bool) -> Result<(String, usize), ApiError> {
    let mut csv = String::from(HEADER);
    let now_ms = graph::now_ms();
    let mut rows = 0;
    for booking in app.ledger.bookings_of_event(event) {
        let buyer = app.graph.user(booking.user)?;
        let (name, email) = buyer.map_or((String::new(), String::new()), |u| (u.name, u.email));
        let email = if with_emails { email } else { String::new() };
        let ticket_type = app.graph.ticket_type(booking.ticket_type);
        let (type_name, currency) =
            ticket_type.map_or((String::new(), String::new()), |t| (t.name.clone(), t.currency.clone()));
        let checked_in = booking.tickets.iter().filter(|t| t.checked_in_at_ms.is_some()).count();
        let row = [
            booking.id.to_string(),
            status(booking.status_at(now_ms)).to_string(),
            booking.user.to_string(),
            field(&name),
            field(&email),
            field(&type_name),
            booking.quantity.to_string(),
            (u64::from(booking.quantity) * u64::from(booking.unit_price_cents)).to_string(),
            currency,
            DateTime(booking.created_at_ms).to_rfc3339(),
            booking.confirmed_at_ms.map(|at| DateTime(at).to_rfc3339()).unwrap_or_default(),
            checked_in.to_string(),
        ];
        csv.push_str(&row.join(","));
        csv.push('\n');
        rows += 1;
    }
    Ok((csv, rows))
}
