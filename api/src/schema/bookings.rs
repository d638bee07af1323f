//! Bookings: book, confirm, cancel, check in, and the viewer's bookings.

use std::sync::Arc;

use async_graphql::{Context, Enum, InputObject, InputType, Name, Object, PathSegment, ServerError, ID};
use graph::ids::{BookingId, EventId, TicketTypeId};
use graph::model::{self, Role};

use super::events::{EventObject, TicketTypeObject};
use super::{acts_for_event, app, parse_id, viewer, DateTime};
use crate::auth::Viewer;
use crate::direct::{BookingField, Selected, TicketField};
use crate::error::{ApiError, ApiResult};
use crate::App;

/// Where a booking is in its life.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "BookingStatus")]
pub enum BookingStatus {
    /// Seats held until expiresAt.
    Held,
    /// Tickets issued.
    Confirmed,
    /// Cancelled; seats returned.
    Cancelled,
    /// The hold ran out; seats returned.
    Expired,
}

impl From<model::BookingStatus> for BookingStatus {
    fn from(status: model::BookingStatus) -> BookingStatus {
        match status {
            model::BookingStatus::Held => BookingStatus::Held,
            model::BookingStatus::Confirmed => BookingStatus::Confirmed,
            model::BookingStatus::Cancelled => BookingStatus::Cancelled,
            model::BookingStatus::Expired => BookingStatus::Expired,
        }
    }
}

fn ticket_type(ctx: &Context<'_>, id: TicketTypeId) -> ApiResult<TicketTypeObject> {
    app(ctx).graph.ticket_type(id).map(TicketTypeObject).ok_or_else(|| {
        tracing::error!(ticket_type = %id, "booking's ticket type is missing");
        ApiError::Internal
    })
}

/// One seat of a confirmed booking.
pub struct TicketObject {
    ticket: model::Ticket,
    ticket_type: TicketTypeId,
}

/// A ticket's fields, for its resolvers and for [`crate::direct`].
fn ticket_id(ticket: &model::Ticket) -> ID {
    ID(ticket.id.to_string())
}

fn ticket_checked_in_at(ticket: &model::Ticket) -> Option<DateTime> {
    ticket.checked_in_at_ms.map(DateTime)
}

#[Object(name = "Ticket", serial)]
impl TicketObject {
    async fn id(&self) -> ID {
        ticket_id(&self.ticket)
    }
    /// Unguessable; what a QR code at the door carries.
    async fn code(&self) -> &str {
        &self.ticket.code
    }
    async fn ticket_type(&self, ctx: &Context<'_>) -> ApiResult<TicketTypeObject> {
        ticket_type(ctx, self.ticket_type)
    }
    async fn checked_in_at(&self) -> Option<DateTime> {
        ticket_checked_in_at(&self.ticket)
    }
}

/// A booking.
pub struct BookingObject(pub std::sync::Arc<model::Booking>);

/// The booking's fields that take more than a read, for its resolvers and
/// for [`crate::direct`].
impl BookingObject {
    /// Whether it is a hold whose time has run out, though its expiry has
    /// yet to be written (see [`model::Booking::status_at`]).
    fn run_out(&self) -> bool {
        self.0.status != self.0.status_at(graph::now_ms())
    }

    fn id_now(&self) -> ID {
        ID(self.0.id.to_string())
    }

    fn status_now(&self) -> BookingStatus {
        if self.run_out() {
            return BookingStatus::Expired;
        }
        self.0.status.into()
    }

    fn total_cents_now(&self) -> ApiResult<i32> {
        super::graphql_int("totalCents", i64::from(self.0.quantity) * i64::from(self.0.unit_price_cents))
    }

    fn total_cents_exact_now(&self) -> String {
        (u64::from(self.0.quantity) * u64::from(self.0.unit_price_cents)).to_string()
    }

    fn expires_at_now(&self) -> Option<DateTime> {
        self.0.expires_at_ms.filter(|_| !self.run_out()).map(DateTime)
    }
}

#[Object(name = "Booking", serial)]
impl BookingObject {
    async fn id(&self) -> ID {
        self.id_now()
    }
    /// A hold past its expiresAt is EXPIRED, also in the moment before the
    /// reaper (every half second) returns its seats: a confirm would
    /// already be HOLD_EXPIRED.
    async fn status(&self) -> BookingStatus {
        self.status_now()
    }
    async fn event(&self, ctx: &Context<'_>) -> ApiResult<EventObject> {
        app(ctx).graph.event(self.0.event).map(EventObject).ok_or(ApiError::Internal)
    }
    async fn ticket_type(&self, ctx: &Context<'_>) -> ApiResult<TicketTypeObject> {
        ticket_type(ctx, self.0.ticket_type)
    }
    async fn quantity(&self) -> u32 {
        self.0.quantity
    }
    async fn total_cents(&self) -> ApiResult<i32> {
        self.total_cents_now()
    }
    /// totalCents as a decimal string: exact past the 32 bits of an Int.
    async fn total_cents_exact(&self) -> String {
        self.total_cents_exact_now()
    }
    /// Issued on confirmation, one per seat; [] while HELD.
    async fn tickets(&self) -> Vec<TicketObject> {
        let ticket_type = self.0.ticket_type;
        self.0.tickets.iter().map(|ticket| TicketObject { ticket: ticket.clone(), ticket_type }).collect()
    }
    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at_ms)
    }
    /// Set while HELD.
    async fn expires_at(&self) -> Option<DateTime> {
        self.expires_at_now()
    }
    /// When it was confirmed (tickets issued); null until then.
    async fn confirmed_at(&self) -> Option<DateTime> {
        self.0.confirmed_at_ms.map(DateTime)
    }
}

/// A booking written out for [`crate::direct`] as the executor writes its
/// `selection`, each field as its resolver above has it, once none of them
/// fails (see [`BookingObject::failed_fields`]).
pub(crate) struct DirectBooking<'a> {
    pub booking: &'a BookingObject,
    pub selection: &'a [Selected<BookingField>],
}

impl BookingObject {
    /// The errors of the fields of `selection` that fail on this booking,
    /// as the executor reports them (their paths under `key`, the
    /// booking's response key); none when every field succeeds.
    pub(crate) fn failed_fields(&self, selection: &[Selected<BookingField>], key: &Name) -> Vec<ServerError> {
        let Err(error) = self.total_cents_now() else { return Vec::new() };
        let failed = selection.iter().filter(|selected| matches!(selected.field, BookingField::TotalCents));
        failed
            .map(|selected| {
                let path = vec![PathSegment::Field(key.to_string()), PathSegment::Field(selected.key.to_string())];
                ServerError { path, ..async_graphql::Error::from(error.clone()).into_server_error(selected.pos) }
            })
            .collect()
    }
}

impl serde::Serialize for DirectBooking<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let booking = self.booking;
        let mut map = serializer.serialize_map(Some(self.selection.len()))?;
        for selected in self.selection {
            let key = selected.key.as_str();
            match &selected.field {
                BookingField::Typename => map.serialize_entry(key, "Booking")?,
                BookingField::Id => map.serialize_entry(key, booking.id_now().as_str())?,
                BookingField::Status => map.serialize_entry(key, &booking.status_now().to_value())?,
                BookingField::Quantity => map.serialize_entry(key, &booking.0.quantity)?,
                BookingField::TotalCents => {
                    let total = booking.total_cents_now().map_err(|_| S::Error::custom("totalCents fails"))?;
                    map.serialize_entry(key, &total)?
                }
                BookingField::TotalCentsExact => map.serialize_entry(key, &booking.total_cents_exact_now())?,
                BookingField::CreatedAt => map.serialize_entry(key, &DateTime(booking.0.created_at_ms).to_value())?,
                BookingField::ExpiresAt => map.serialize_entry(key, &booking.expires_at_now().to_value())?,
                BookingField::ConfirmedAt => {
                    map.serialize_entry(key, &booking.0.confirmed_at_ms.map(DateTime).to_value())?
                }
                BookingField::Tickets(fields) => {
                    let tickets: Vec<DirectTicket<'_>> =
                        booking.0.tickets.iter().map(|ticket| DirectTicket { ticket, selection: fields }).collect();
                    map.serialize_entry(key, &tickets)?
                }
            }
        }
        map.end()
    }
}

/// A ticket written out as the executor writes its `selection`.
struct DirectTicket<'a> {
    ticket: &'a model::Ticket,
    selection: &'a [Selected<TicketField>],
}

impl serde::Serialize for DirectTicket<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.selection.len()))?;
        for selected in self.selection {
            let key = selected.key.as_str();
            match selected.field {
                TicketField::Typename => map.serialize_entry(key, "Ticket")?,
                TicketField::Id => map.serialize_entry(key, ticket_id(self.ticket).as_str())?,
                TicketField::Code => map.serialize_entry(key, &self.ticket.code)?,
                TicketField::CheckedInAt => map.serialize_entry(key, &ticket_checked_in_at(self.ticket).to_value())?,
            }
        }
        map.end()
    }
}

/// A request for seats.
#[derive(InputObject)]
pub struct BookInput {
    ticket_type_id: ID,
    quantity: i64,
    /// Same user + same key + same input: the same booking back, never a second one.
    idempotency_key: String,
    /// true: HELD until expiresAt; false: CONFIRMED at once.
    #[graphql(default_with = "Some(false)")]
    hold: Option<bool>,
}

/// Whether `viewer` may see the event of ticket type `id` (see
/// [`super::events::may_see_event`]); true for a ticket type there is not.
fn may_see_ticket_type(app: &App, viewer: &Viewer, id: TicketTypeId) -> bool {
    let graph = &app.graph;
    let event = graph.ticket_type(id).and_then(|ticket_type| graph.event(ticket_type.event));
    event.is_none_or(|event| super::events::may_see_event(viewer, &event))
}

/// What `bookTickets` was asked, read from its input (by async-graphql, or
/// by [`crate::direct`]).
pub(crate) struct BookArguments {
    pub ticket_type_id: String,
    pub quantity: i64,
    pub idempotency_key: String,
    pub hold: bool,
}

/// `bookTickets`: books for `viewer` and answers once the booking is
/// durable.
pub(crate) async fn book(app: &Arc<App>, viewer: &Viewer, input: BookArguments) -> ApiResult<Arc<model::Booking>> {
    let user = viewer.require()?.id;
    let ticket_type: TicketTypeId = parse_id("input.ticketTypeId", &ID(input.ticket_type_id))?;
    let quantity = u32::try_from(input.quantity).map_err(|_| {
        ApiError::bad_input("input.quantity", format!("must be between 1 and {}", ledger::QUANTITY_MAX))
    })?;
    let request =
        ledger::BookRequest { user, ticket_type, quantity, idempotency_key: input.idempotency_key, hold: input.hold };
    // The input's fields are named as the client wrote them.
    let logged = app.ledger.book_logged(&request, graph::now_ms()).map_err(|error| match error {
        ledger::Error::Invalid { field, reason } => ApiError::bad_input(&format!("input.{field}"), reason),
        // A private event's ticket type (a draft's, or one cancelled
        // before it was published) is not there for those who may not
        // see the event, as for `event(id)`: its CONFLICT would tell them
        // it exists. (Checked only on this refusal: bookings pay nothing.)
        ledger::Error::NotOnSale(_) if !may_see_ticket_type(app, viewer, ticket_type) => {
            ApiError::NotFound("no such ticket type".into())
        }
        other => other.into(),
    })?;
    match app.settle(logged).await {
        Ok(booking) => Ok(booking),
        Err(error) => {
            app.metrics.bookings_not_durable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(error)
        }
    }
}

/// Whether `user` acts for the side of the event `id` (see [`acts_for_event`]).
fn acts_for_event_id(ctx: &Context<'_>, user: &model::User, id: EventId) -> bool {
    user.role == Role::Admin || app(ctx).graph.event(id).is_some_and(|event| acts_for_event(user, &event))
}

/// The booking `id`, if the viewer may act on it as `action` allows (its
/// owner, an admin, or with `organizer_may` the event's organizer), and
/// whether they act for the event's side.
fn accessible_booking(
    ctx: &Context<'_>,
    id: &ID,
    organizer_may: bool,
    action: &str,
) -> ApiResult<(std::sync::Arc<model::Booking>, bool)> {
    let user = viewer(ctx).require()?;
    let id: BookingId = parse_id("id", id)?;
    let booking = app(ctx).ledger.booking(id).ok_or_else(|| ApiError::NotFound("no such booking".into()))?;
    let for_event = if organizer_may { acts_for_event_id(ctx, user, booking.event) } else { user.role == Role::Admin };
    if booking.user != user.id && !for_event {
        return Err(ApiError::Forbidden(format!("{action}: not your booking")));
    }
    Ok((booking, for_event))
}

#[derive(Default)]
pub struct BookingsQuery;

#[Object]
impl BookingsQuery {
    /// The viewer's bookings, newest first.
    async fn my_bookings(&self, ctx: &Context<'_>) -> ApiResult<Vec<BookingObject>> {
        let user = viewer(ctx).require()?;
        Ok(app(ctx).ledger.bookings_of(user.id).into_iter().map(BookingObject).collect())
    }
}

#[derive(Default)]
pub struct BookingsMutation;

#[Object]
impl BookingsMutation {
    /// Books seats of a ticket type of a PUBLISHED event.
    async fn book_tickets(&self, ctx: &Context<'_>, input: BookInput) -> ApiResult<BookingObject> {
        let input = BookArguments {
            ticket_type_id: input.ticket_type_id.0,
            quantity: input.quantity,
            idempotency_key: input.idempotency_key,
            hold: input.hold.unwrap_or(false),
        };
        book(app(ctx), viewer(ctx), input).await.map(BookingObject)
    }

    /// Confirms the viewer's HELD booking: tickets are issued.
    async fn confirm_booking(&self, ctx: &Context<'_>, id: ID) -> ApiResult<BookingObject> {
        let (booking, _) = accessible_booking(ctx, &id, false, "confirmBooking")?;
        let app = app(ctx);
        let logged = app.ledger.confirm_logged(booking.id, graph::now_ms())?;
        Ok(BookingObject(app.settle(logged).await?))
    }

    /// Its owner, the event's organizer, ADMIN; seats return. Once a ticket
    /// of it was checked in, or (when confirmed) once the event's sales
    /// closed, its owner may no longer.
    async fn cancel_booking(&self, ctx: &Context<'_>, id: ID) -> ApiResult<BookingObject> {
        let (booking, for_event) = accessible_booking(ctx, &id, true, "cancelBooking")?;
        let app = app(ctx);
        // Once a ticket was used at the door, or the show is over, only the
        // event's side may cancel (and so put the seat back on sale).
        let by = if for_event { ledger::Canceller::EventSide } else { ledger::Canceller::Owner };
        let logged = app.ledger.cancel_logged(booking.id, graph::now_ms(), by)?;
        Ok(BookingObject(app.settle(logged).await?))
    }

    /// The event's organizer, ADMIN: admits a CONFIRMED ticket, once. The
    /// organizer is whoever made the event, whatever their role now, as for
    /// cancelling its bookings and reading its analytics.
    ///
    /// With `eventId` (beyond the contract), the event at the door: a ticket
    /// of another event is refused (CONFLICT) and stays unused, so a
    /// scanner at one of an organizer's events cannot use up a ticket for
    /// another. Codes are read in either case (scanners of upper-case QR
    /// codes), spaces around them ignored.
    async fn check_in(&self, ctx: &Context<'_>, code: String, event_id: Option<ID>) -> ApiResult<TicketObject> {
        let user = viewer(ctx).require()?;
        let app = app(ctx).clone();
        let forbidden = || ApiError::Forbidden("checkIn: only the event's organizer or an admin may check in".into());
        let at_door = match &event_id {
            Some(id) => {
                let event = super::events::visible_event(ctx, "eventId", id)?;
                if !acts_for_event(user, &event) {
                    return Err(forbidden());
                }
                Some(event)
            }
            None => None,
        };
        let code = code.trim().to_ascii_lowercase();
        let not_found = || ApiError::NotFound("no ticket with this code".into());
        let (booking, _) = app.ledger.booking_of_ticket(&code).ok_or_else(not_found)?;
        if let Some(at_door) = at_door.filter(|event| event.id != booking.event) {
            // Which other event, to those who act for it too.
            let other = app.graph.event(booking.event).filter(|event| acts_for_event(user, event));
            return Err(ApiError::Conflict(match other {
                Some(other) => format!(
                    "this ticket is for another event: {:?} on {}, not {:?}; it was not checked in",
                    other.title,
                    DateTime(other.starts_at_ms).to_rfc3339(),
                    at_door.title
                ),
                None => format!("this ticket is for another event, not {:?}; it was not checked in", at_door.title),
            }));
        }
        if !acts_for_event_id(ctx, user, booking.event) {
            return Err(forbidden());
        }
        let logged = app.ledger.check_in_logged(&code, graph::now_ms())?;
        let (booking, seat) = app.settle(logged).await?;
        Ok(TicketObject { ticket: booking.tickets[seat].clone(), ticket_type: booking.ticket_type })
    }
}
