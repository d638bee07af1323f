//! Venues, events and ticket types: creation, changes, lifecycle, listings.

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, Enum, InputObject, MaybeUndefined, Object, SimpleObject, ID};
use graph::ids::{EventId, VenueId};
use graph::model::{self, Role};
use graph::{EventChanges, EventPage, EventQuery, NewEvent, NewTicketType};

use super::identity::UserObject;
use super::{acts_for_event, app, blocking, page_size, parse_id, viewer, DateTime, Viewer};
use crate::error::{ApiError, ApiResult};

/// Where an event is in its life.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "EventStatus")]
pub enum EventStatus {
    /// Visible to its organizer and admins only.
    Draft,
    /// Listed and on sale.
    Published,
    /// Called off.
    Cancelled,
}

impl From<model::EventStatus> for EventStatus {
    fn from(status: model::EventStatus) -> EventStatus {
        match status {
            model::EventStatus::Draft => EventStatus::Draft,
            model::EventStatus::Published => EventStatus::Published,
            model::EventStatus::Cancelled | model::EventStatus::Withdrawn => EventStatus::Cancelled,
        }
    }
}

/// A venue.
pub struct VenueObject(Arc<model::Venue>);

#[Object(name = "Venue", serial)]
impl VenueObject {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn city(&self) -> &str {
        &self.0.city
    }
    async fn capacity(&self) -> Option<u32> {
        self.0.capacity
    }
}

/// A ticket type.
pub struct TicketTypeObject(pub Arc<model::TicketType>);

#[Object(name = "TicketType", serial)]
impl TicketTypeObject {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn price_cents(&self) -> u32 {
        self.0.price_cents
    }
    /// ISO 4217, e.g. "EUR".
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn capacity(&self) -> u32 {
        self.0.capacity
    }
    /// null: no per-user limit.
    async fn per_user_limit(&self) -> Option<u32> {
        self.0.per_user_limit
    }
    /// Seats taken: CONFIRMED plus live HELD.
    async fn sold(&self, ctx: &Context<'_>) -> u32 {
        app(ctx).ledger.sold(self.0.id)
    }
    /// capacity - sold; never negative.
    async fn available(&self, ctx: &Context<'_>) -> u32 {
        self.0.capacity.saturating_sub(app(ctx).ledger.sold(self.0.id))
    }
}

/// An event.
pub struct EventObject(pub Arc<model::Event>);

#[Object(name = "Event", serial)]
impl EventObject {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn title(&self) -> &str {
        &self.0.title
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn starts_at(&self) -> DateTime {
        DateTime(self.0.starts_at_ms)
    }
    async fn ends_at(&self) -> Option<DateTime> {
        self.0.ends_at_ms.map(DateTime)
    }
    async fn city(&self) -> &str {
        &self.0.city
    }
    async fn tags(&self) -> &[String] {
        &self.0.tags
    }
    async fn status(&self) -> EventStatus {
        self.0.status.into()
    }
    async fn venue(&self, ctx: &Context<'_>) -> Option<VenueObject> {
        self.0.venue.and_then(|id| app(ctx).graph.venue(id)).map(VenueObject)
    }
    async fn organizer(&self, ctx: &Context<'_>) -> ApiResult<UserObject> {
        match app(ctx).graph.user(self.0.organizer)? {
            Some(user) => Ok(UserObject::new(user)),
            None => {
                tracing::error!(event = %self.0.id, "event's organizer is missing");
                Err(ApiError::Internal)
            }
        }
    }
    async fn ticket_types(&self, ctx: &Context<'_>) -> Vec<TicketTypeObject> {
        app(ctx).graph.ticket_types(self.0.id).into_iter().map(TicketTypeObject).collect()
    }
    /// Distinct users with a CONFIRMED booking.
    async fn attendee_count(&self, ctx: &Context<'_>) -> usize {
        if self.0.status.is_cancelled() {
            return 0; // see `whos_going`
        }
        app(ctx).graph.social().attendees(self.0.id).len()
    }

    /// The viewer's friends (mutual follows) with a CONFIRMED booking,
    /// smallest ids first; [] when anonymous.
    async fn friends_going(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
    ) -> ApiResult<Vec<UserObject>> {
        let first = page_size(first, 20)?;
        let Some(me) = viewer(ctx).optional()?.filter(|_| !self.0.status.is_cancelled()) else {
            return Ok(Vec::new()); // anonymous, or see `whos_going`
        };
        let friends = app(ctx).graph.social().friends_going(me.id, self.0.id, first).first;
        super::social::users(ctx, friends)
    }

    /// Who's going: attendees with the most followers first (then smallest
    /// id). The event's organizer and admins only; attendeeCount is the total.
    async fn whos_going(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
    ) -> ApiResult<Vec<UserObject>> {
        let first = page_size(first, 20)?;
        let user = viewer(ctx).require()?;
        if !acts_for_event(user, &self.0) {
            return Err(ApiError::Forbidden("whosGoing: only the event's organizer or an admin".into()));
        }
        // A cancelled event has no one going. Its bookings' ATTENDS edges
        // go with the cascade that cancels them, but attendances imported
        // from another system (confirmed bookings made elsewhere) stay in
        // the index: they are the event's attendance history.
        if self.0.status.is_cancelled() {
            return Ok(Vec::new());
        }
        let going = app(ctx).graph.social().whos_going(self.0.id, first).first;
        super::social::users(ctx, going.into_iter().map(|(user, _)| user).collect())
    }
}

/// Where a page ends.
#[derive(SimpleObject)]
pub struct PageInfo {
    has_next_page: bool,
    end_cursor: Option<String>,
}

/// A page of events.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct EventConnection {
    #[graphql(skip)]
    page: EventPage,
    page_info: PageInfo,
}

#[ComplexObject]
impl EventConnection {
    async fn nodes(&self) -> Vec<EventObject> {
        self.page.events.iter().cloned().map(EventObject).collect()
    }
    async fn total_count(&self) -> usize {
        self.page.total
    }
}

impl From<EventPage> for EventConnection {
    fn from(page: EventPage) -> EventConnection {
        let end_cursor = page.events.last().map(|event| encode_cursor(event.starts_at_ms, event.id));
        let page_info = PageInfo { has_next_page: page.has_next, end_cursor };
        EventConnection { page, page_info }
    }
}

/// Cursors are opaque to clients: `<startsAt ms>:<id>`.
fn encode_cursor(starts_at_ms: i64, id: EventId) -> String {
    format!("{starts_at_ms}:{id}")
}

fn decode_cursor(cursor: &str) -> ApiResult<(i64, EventId)> {
    let invalid = || ApiError::bad_input("after", "not a cursor returned by this API");
    let (starts, id) = cursor.split_once(':').ok_or_else(invalid)?;
    Ok((starts.parse().map_err(|_| invalid())?, id.parse().map_err(|_| invalid())?))
}

/// Filters for `events`.
#[derive(InputObject, Default)]
pub struct EventFilter {
    city: Option<String>,
    tag: Option<String>,
    from: Option<DateTime>,
    to: Option<DateTime>,
    text: Option<String>,
}

/// A new event.
#[derive(InputObject)]
pub struct CreateEventInput {
    title: String,
    description: Option<String>,
    starts_at: DateTime,
    ends_at: Option<DateTime>,
    city: String,
    venue_id: Option<ID>,
    tags: Option<Vec<String>>,
}

/// Changes to an event; omitted fields stay, `description: null` and
/// `endsAt: null` clear those fields.
#[derive(InputObject)]
pub struct UpdateEventInput {
    title: Option<String>,
    description: MaybeUndefined<String>,
    starts_at: Option<DateTime>,
    ends_at: MaybeUndefined<DateTime>,
    tags: Option<Vec<String>>,
}

/// A new ticket type.
#[derive(InputObject)]
pub struct TicketTypeInput {
    name: String,
    price_cents: i64,
    currency: String,
    capacity: i64,
    per_user_limit: Option<i64>,
}

/// Absent: leave as is (`None`); null: clear (`Some(None)`); a value: set.
fn optional<T>(value: MaybeUndefined<T>) -> Option<Option<T>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(value) => Some(Some(value)),
    }
}

fn changes(input: UpdateEventInput) -> EventChanges {
    EventChanges {
        title: input.title,
        description: optional(input.description),
        starts_at_ms: input.starts_at.map(|at| at.0),
        ends_at_ms: optional(input.ends_at.map_value(|at| at.0)),
        tags: input.tags,
    }
}

const TEXT_FILTER_CHARS_MAX: usize = 200;

fn event_query(filter: Option<EventFilter>, first: Option<i64>, after: Option<String>) -> ApiResult<EventQuery> {
    let filter = filter.unwrap_or_default();
    for (field, value) in [("filter.city", &filter.city), ("filter.tag", &filter.tag), ("filter.text", &filter.text)] {
        if value.as_ref().is_some_and(|v| v.chars().count() > TEXT_FILTER_CHARS_MAX) {
            return Err(ApiError::bad_input(field, format!("must be at most {TEXT_FILTER_CHARS_MAX} characters")));
        }
    }
    if let (Some(from), Some(to)) = (&filter.from, &filter.to) {
        if from.0 > to.0 {
            return Err(ApiError::bad_input("filter.to", "must not be before filter.from"));
        }
    }
    // A blank city or tag, like a blank text, filters nothing.
    let given = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    Ok(EventQuery {
        city: given(filter.city),
        tag: given(filter.tag),
        from_ms: filter.from.map(|at| at.0),
        to_ms: filter.to.map(|at| at.0),
        text: filter.text,
        after: after.as_deref().map(decode_cursor).transpose()?,
        first: page_size(first, 20)?,
    })
}

const ORGANIZING: &[Role] = &[Role::Organizer, Role::Admin];

/// An error of a mutation that takes an `input` object: an invalid field is
/// named as the client sent it, `input.<field>` (as `bookTickets` names
/// its fields, and `events` its `filter.<field>`).
fn in_input(error: graph::Error) -> ApiError {
    match error {
        graph::Error::Invalid { field, reason } => ApiError::bad_input(&format!("input.{field}"), reason),
        other => other.into(),
    }
}

/// The event `id`, if the viewer may manage it (its organizer or an admin).
fn managed_event(ctx: &Context<'_>, field: &str, id: &ID, action: &str) -> ApiResult<Arc<model::Event>> {
    let user = viewer(ctx).require_role(ORGANIZING, action)?;
    // Another organizer's draft is not there for them, as in `event(id)`.
    let event = visible_event(ctx, field, id)?;
    if !acts_for_event(user, &event) {
        return Err(ApiError::Forbidden(format!("{action}: only the event's organizer or an admin may do this")));
    }
    Ok(event)
}

/// The event `id` (the input `field`), if the viewer may see it; as absent
/// (NOT_FOUND) when not.
pub(crate) fn visible_event(ctx: &Context<'_>, field: &str, id: &ID) -> ApiResult<Arc<model::Event>> {
    let id: EventId = parse_id(field, id)?;
    let event = app(ctx).graph.event(id).ok_or_else(|| ApiError::NotFound("no such event".into()))?;
    if !may_see_event(viewer(ctx), &event) {
        return Err(ApiError::NotFound("no such event".into()));
    }
    Ok(event)
}

/// Whether `viewer` may see `event`: a private one (a draft, or one
/// cancelled before it was published) only its organizer and admins.
pub(crate) fn may_see_event(viewer: &Viewer, event: &model::Event) -> bool {
    !event.status.is_private() || viewer.is_admin() || viewer.user().is_some_and(|user| user.id == event.organizer)
}

#[derive(Default)]
pub struct EventsQuery;

#[Object]
impl EventsQuery {
    /// An event by id. DRAFT events (and drafts cancelled before they were
    /// published): only their organizer and admins.
    ///
    /// With a bad, expired or revoked token, an event that is not there for
    /// the viewer is UNAUTHENTICATED rather than null (its organizer would
    /// take their draft for gone), whether it is a draft or missing, so
    /// that the answer tells neither apart.
    async fn event(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<EventObject>> {
        let id: EventId = parse_id("id", &id)?;
        let event = app(ctx).graph.event(id).filter(|event| may_see_event(viewer(ctx), event));
        if event.is_none() {
            viewer(ctx).optional()?;
        }
        Ok(event.map(EventObject))
    }

    /// PUBLISHED events, by startsAt then id.
    async fn events(
        &self,
        ctx: &Context<'_>,
        filter: Option<EventFilter>,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
        after: Option<String>,
    ) -> ApiResult<EventConnection> {
        let query = event_query(filter, first, after)?;
        Ok(app(ctx).graph.events(&query).into())
    }

    /// Events the viewer organizes, every status. ORGANIZER, ADMIN.
    async fn my_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
        after: Option<String>,
    ) -> ApiResult<EventConnection> {
        let user = viewer(ctx).require_role(ORGANIZING, "myEvents")?;
        let query = event_query(None, first, after)?;
        Ok(app(ctx).graph.organized_by(user.id, &query).into())
    }
}

#[derive(Default)]
pub struct EventsMutation;

#[Object]
impl EventsMutation {
    /// ORGANIZER, ADMIN.
    async fn create_venue(
        &self,
        ctx: &Context<'_>,
        name: String,
        city: String,
        capacity: Option<i64>,
    ) -> ApiResult<VenueObject> {
        let user = viewer(ctx).require_role(ORGANIZING, "createVenue")?.id;
        let app = app(ctx).clone();
        blocking(move || Ok(VenueObject(app.graph.create_venue(user, &name, &city, capacity)?))).await
    }

    /// ORGANIZER, ADMIN; starts as DRAFT.
    async fn create_event(&self, ctx: &Context<'_>, input: CreateEventInput) -> ApiResult<EventObject> {
        let organizer = viewer(ctx).require_role(ORGANIZING, "createEvent")?.id;
        let venue: Option<VenueId> = input.venue_id.as_ref().map(|id| parse_id("input.venueId", id)).transpose()?;
        let new = NewEvent {
            title: input.title,
            description: input.description,
            starts_at_ms: input.starts_at.0,
            ends_at_ms: input.ends_at.map(|at| at.0),
            city: input.city,
            venue,
            tags: input.tags.unwrap_or_default(),
        };
        let app = app(ctx).clone();
        blocking(move || Ok(EventObject(app.graph.create_event(organizer, new).map_err(in_input)?))).await
    }

    /// Its organizer, ADMIN.
    async fn update_event(&self, ctx: &Context<'_>, id: ID, input: UpdateEventInput) -> ApiResult<EventObject> {
        let event = managed_event(ctx, "id", &id, "updateEvent")?;
        let app = app(ctx).clone();
        blocking(move || Ok(EventObject(app.graph.update_event(event.id, changes(input)).map_err(in_input)?))).await
    }

    /// Its organizer, ADMIN: DRAFT to PUBLISHED.
    async fn publish_event(&self, ctx: &Context<'_>, id: ID) -> ApiResult<EventObject> {
        let event = managed_event(ctx, "id", &id, "publishEvent")?;
        let app = app(ctx).clone();
        blocking(move || Ok(EventObject(app.graph.publish_event(event.id)?))).await
    }

    /// Its organizer, ADMIN: calls the event off.
    async fn cancel_event(&self, ctx: &Context<'_>, id: ID) -> ApiResult<EventObject> {
        let event = managed_event(ctx, "id", &id, "cancelEvent")?;
        let app = app(ctx).clone();
        blocking(move || {
            let cancelled = app.graph.cancel_event(event.id)?;
            app.ledger.cancel_event(event.id, graph::now_ms())?;
            Ok(EventObject(cancelled))
        })
        .await
    }

    /// Its organizer, ADMIN.
    async fn add_ticket_type(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
        input: TicketTypeInput,
    ) -> ApiResult<TicketTypeObject> {
        let event = managed_event(ctx, "eventId", &event_id, "addTicketType")?;
        let new = NewTicketType {
            name: input.name,
            price_cents: input.price_cents,
            currency: input.currency,
            capacity: input.capacity,
            per_user_limit: input.per_user_limit,
        };
        let app = app(ctx).clone();
        blocking(move || Ok(TicketTypeObject(app.graph.add_ticket_type(event.id, new).map_err(in_input)?))).await
    }
}
