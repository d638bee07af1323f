//! Sales analytics for an event's organizer and admins, answered from the
//! analytics reader's figures (never by scanning bookings).

use std::time::Duration;

use async_graphql::{Context, Object, ID};

use super::events::{EventObject, TicketTypeObject};
use super::{acts_for_event, app, graphql_int, viewer, DateTime};
use crate::error::{ApiError, ApiResult};
use crate::readers::analytics::{self, EventSales, Sales};

/// Longest bucket: a week.
const BUCKET_MINUTES_MAX: i64 = 7 * 24 * 60;
/// Most points salesOverTime returns.
const SALES_POINTS_MAX: usize = 5_000;
/// How long an answer waits for the reader to catch up with the writes
/// made before the request.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

/// An event's figures.
pub struct EventAnalyticsObject {
    event: EventObject,
    sales: EventSales,
}

/// One ticket type's figures.
pub struct TicketTypeSalesObject {
    ticket_type: TicketTypeObject,
    sales: Sales,
}

#[Object(name = "TicketTypeSales", serial)]
impl TicketTypeSalesObject {
    async fn ticket_type(&self) -> &TicketTypeObject {
        &self.ticket_type
    }
    async fn sold(&self) -> i64 {
        self.sales.sold
    }
    async fn revenue_cents(&self) -> ApiResult<i32> {
        graphql_int("revenueCents", self.sales.revenue_cents)
    }
    /// revenueCents as a decimal string: exact past the 32 bits of an Int.
    async fn revenue_cents_exact(&self) -> String {
        self.sales.revenue_cents.to_string()
    }
    async fn checked_in(&self) -> i64 {
        self.sales.checked_in
    }
}

/// Seats confirmed in the bucket starting at `at` (still confirmed).
pub struct SalesPointObject {
    at_minute: i64,
    sold: i64,
    revenue_cents: i64,
}

#[Object(name = "SalesPoint", serial)]
impl SalesPointObject {
    async fn at(&self) -> DateTime {
        DateTime(self.at_minute * 60_000)
    }
    async fn sold(&self) -> i64 {
        self.sold
    }
    async fn revenue_cents(&self) -> ApiResult<i32> {
        graphql_int("revenueCents", self.revenue_cents)
    }
    /// revenueCents as a decimal string: exact past the 32 bits of an Int.
    async fn revenue_cents_exact(&self) -> String {
        self.revenue_cents.to_string()
    }
}

#[Object(name = "EventAnalytics", serial)]
impl EventAnalyticsObject {
    async fn event(&self) -> &EventObject {
        &self.event
    }
    /// CONFIRMED seats.
    async fn sold(&self) -> i64 {
        self.sales.total.sold
    }
    async fn revenue_cents(&self) -> ApiResult<i32> {
        graphql_int("revenueCents", self.sales.total.revenue_cents)
    }
    /// revenueCents as a decimal string: exact past the 32 bits of an Int.
    async fn revenue_cents_exact(&self) -> String {
        self.sales.total.revenue_cents.to_string()
    }
    async fn checked_in(&self) -> i64 {
        self.sales.total.checked_in
    }
    /// Every ticket type of the event, in the order they were added.
    async fn by_ticket_type(&self, ctx: &Context<'_>) -> Vec<TicketTypeSalesObject> {
        let types = app(ctx).graph.ticket_types(self.event.0.id);
        types
            .into_iter()
            .map(|t| {
                let sales = self.sales.by_ticket_type.get(&t.id).copied().unwrap_or_default();
                TicketTypeSalesObject { ticket_type: TicketTypeObject(t), sales }
            })
            .collect()
    }
    /// Seats and revenue by the time they were confirmed, in buckets of
    /// `bucketMinutes` (1..10080) aligned to the epoch; empty buckets left out.
    async fn sales_over_time(
        &self,
        #[graphql(default_with = "Some(60)")] bucket_minutes: Option<i64>,
    ) -> ApiResult<Vec<SalesPointObject>> {
        let bucket_minutes = bucket_minutes.unwrap_or(60);
        if !(1..=BUCKET_MINUTES_MAX).contains(&bucket_minutes) {
            return Err(ApiError::bad_input("bucketMinutes", format!("must be between 1 and {BUCKET_MINUTES_MAX}")));
        }
        let points = analytics::sales_over_time(&self.sales, bucket_minutes);
        if points.len() > SALES_POINTS_MAX {
            return Err(ApiError::bad_input(
                "bucketMinutes",
                format!("too small for this event: more than {SALES_POINTS_MAX} points; use larger buckets"),
            ));
        }
        Ok(points
            .into_iter()
            .map(|(at_minute, sold, revenue_cents)| SalesPointObject { at_minute, sold, revenue_cents })
            .collect())
    }
}

#[derive(Default)]
pub struct AnalyticsQuery;

#[Object]
impl AnalyticsQuery {
    /// The event's organizer and admins. Includes every write acknowledged
    /// before the request (waits briefly for the analytics to catch up).
    async fn event_analytics(&self, ctx: &Context<'_>, event_id: ID) -> ApiResult<EventAnalyticsObject> {
        let user = viewer(ctx).require()?;
        let app = app(ctx);
        let event = super::events::visible_event(ctx, "eventId", &event_id)?;
        let id = event.id;
        if !acts_for_event(user, &event) {
            return Err(ApiError::Forbidden("eventAnalytics: only the event's organizer or an admin".into()));
        }
        let written = app.graph.store().durable_seq();
        if !app.readers.analytics.caught_up(written, CATCH_UP_WAIT).await {
            tracing::warn!(event = %id, "analytics answered before catching up with the log");
        }
        let sales = app.readers.sales.read().expect("sales book lock poisoned").get(&id).cloned().unwrap_or_default();
        Ok(EventAnalyticsObject { event: EventObject(event), sales })
    }
}
