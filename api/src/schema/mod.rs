//! The GraphQL schema: a root per domain, merged; resolvers stay thin and
//! call `graph` (and later `ledger`) through [`crate::App`].

mod analytics;
pub(crate) mod bookings;
mod events;
mod identity;
mod notifications;
mod scalars;
mod social;
mod subscriptions;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;

use async_graphql::{Context, MergedObject, Schema, ID};

use crate::auth::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::App;

pub use scalars::DateTime;
pub use subscriptions::{Slot, SubscriptionBudget, SubscriptionRoot};

/// The served schema type.
pub type MarqueeSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// Every query field, by domain.
#[derive(MergedObject, Default)]
pub struct Query(
    identity::IdentityQuery,
    events::EventsQuery,
    bookings::BookingsQuery,
    social::SocialQuery,
    notifications::NotificationsQuery,
    webhooks::WebhooksQuery,
    analytics::AnalyticsQuery,
);

/// Every mutation, by domain.
#[derive(MergedObject, Default)]
pub struct Mutation(
    identity::IdentityMutation,
    events::EventsMutation,
    bookings::BookingsMutation,
    social::SocialMutation,
    notifications::NotificationsMutation,
    webhooks::WebhooksMutation,
);

/// Builds the schema with the app as shared data.
pub fn build(app: Arc<App>) -> MarqueeSchema {
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot).data(app).finish()
}

/// Query texts whose validated operations are kept.
const VALIDATED_DOCUMENTS_MAX: usize = 1_000;

/// The same schema for operations known to be valid (see
/// [`crate::validated`]): it skips GraphQL's validation rules.
pub fn build_for_known_operations(app: Arc<App>) -> MarqueeSchema {
    Schema::build(Query::default(), Mutation::default(), SubscriptionRoot)
        .data(app)
        .validation_mode(async_graphql::ValidationMode::Fast)
        .finish()
}

/// The operations known to be valid, empty, for this schema.
pub fn validated_operations() -> crate::validated::ValidatedOperations {
    crate::validated::ValidatedOperations::new::<Query, Mutation>(VALIDATED_DOCUMENTS_MAX)
}

/// The app, from the schema's data.
fn app<'a>(ctx: &Context<'a>) -> &'a Arc<App> {
    ctx.data_unchecked::<Arc<App>>()
}

/// The request's viewer (anonymous when none was attached).
fn viewer<'a>(ctx: &Context<'a>) -> &'a Viewer {
    ctx.data_opt::<Viewer>().unwrap_or(&Viewer::Anonymous)
}

/// Whether `user` acts for `event`'s side: an admin, or the event's
/// organizer (whoever made it, whatever their role now).
fn acts_for_event(user: &graph::model::User, event: &graph::model::Event) -> bool {
    user.role == graph::model::Role::Admin || event.organizer == user.id
}

/// Parses a GraphQL ID into a typed id, naming the argument when it is not one.
fn parse_id<T: FromStr>(field: &str, id: &ID) -> ApiResult<T> {
    id.as_str().parse().map_err(|_| ApiError::bad_input(field, "not a valid id"))
}

/// Runs blocking graph work (writes flush to disk) off the async workers.
async fn blocking<T, F>(work: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|join| {
        tracing::error!(error = %join, "blocking task failed");
        ApiError::Internal
    })?
}

/// `value` served as a GraphQL `Int`, which holds 32 bits: past them, a
/// field error naming `field` (the spec forbids serving a larger Int) that
/// points to its `...Exact` decimal string.
fn graphql_int(field: &str, value: i64) -> ApiResult<i32> {
    i32::try_from(value).map_err(|_| {
        ApiError::Conflict(format!(
            "{field} is {value}, past the 32 bits of a GraphQL Int; read {field}Exact, a decimal string, instead"
        ))
    })
}

/// Checks a page size argument; null (an absent variable) means the default.
fn page_size(first: Option<i64>, default: i64) -> ApiResult<usize> {
    page_size_up_to(first, default, 100)
}

/// A `first` argument bounded by `max`.
fn page_size_up_to(first: Option<i64>, default: i64, max: i64) -> ApiResult<usize> {
    let first = first.unwrap_or(default);
    if !(0..=max).contains(&first) {
        return Err(ApiError::bad_input("first", format!("must be between 0 and {max}")));
    }
    usize::try_from(first).map_err(|_| ApiError::bad_input("first", "out of range"))
}
