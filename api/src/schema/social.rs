//! The social graph: follow, unfollow, recommendations and social distance.
//! Every answer comes from the graph's in-memory index.

use async_graphql::{Context, Object, ID};
use graph::ids::UserId;

use super::events::EventObject;
use super::identity::UserObject;
use super::{app, blocking, page_size, parse_id, viewer};
use crate::error::{ApiError, ApiResult};

/// Users by id, in the order given; an id without a row is an internal fault.
pub(super) fn users(ctx: &Context<'_>, ids: Vec<UserId>) -> ApiResult<Vec<UserObject>> {
    let graph = &app(ctx).graph;
    ids.into_iter()
        .map(|id| match graph.user(id)? {
            Some(user) => Ok(UserObject::new(user)),
            None => {
                tracing::error!(user = %id, "the social index names a user with no row");
                Err(ApiError::Internal)
            }
        })
        .collect()
}

#[derive(Default)]
pub struct SocialQuery;

#[Object]
impl SocialQuery {
    /// Upcoming PUBLISHED events that people the viewer follows have
    /// CONFIRMED and the viewer has not, most such followees first, then
    /// startsAt, then id; [] when anonymous.
    async fn recommended_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(10)")] first: Option<i64>,
    ) -> ApiResult<Vec<EventObject>> {
        let first = page_size(first, 10)?;
        let Some(me) = viewer(ctx).optional()? else {
            return Ok(Vec::new());
        };
        // Events the viewer holds seats of are booked too, not only those
        // confirmed (which the index already leaves out).
        let app = app(ctx);
        let now_ms = graph::now_ms();
        let held = app
            .ledger
            .bookings_of(me.id)
            .iter()
            .filter(|booking| booking.status_at(now_ms) == graph::model::BookingStatus::Held)
            .map(|booking| booking.event)
            .collect();
        let events = app.graph.recommended_events(me.id, first, now_ms, &held);
        Ok(events.into_iter().map(EventObject).collect())
    }

    /// Fewest follow hops from the viewer to the user (0 = self), up to 4;
    /// null beyond.
    async fn social_distance(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<Option<u32>> {
        let me = viewer(ctx).require()?;
        let other: UserId = parse_id("userId", &user_id)?;
        let graph = &app(ctx).graph;
        if graph.user(other)?.is_none() {
            return Err(ApiError::NotFound("no such user".into()));
        }
        Ok(graph.social().distance(me.id, other, graph::social::DISTANCE_HOPS_MAX))
    }
}

#[derive(Default)]
pub struct SocialMutation;

#[Object]
impl SocialMutation {
    /// Follows a user; following twice changes nothing. Returns that user.
    async fn follow(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<UserObject> {
        change_follow(ctx, user_id, true).await
    }

    /// Stops following a user; unfollowing someone not followed changes
    /// nothing. Returns that user.
    async fn unfollow(&self, ctx: &Context<'_>, user_id: ID) -> ApiResult<UserObject> {
        change_follow(ctx, user_id, false).await
    }
}

async fn change_follow(ctx: &Context<'_>, user_id: ID, follow: bool) -> ApiResult<UserObject> {
    let me = viewer(ctx).require()?.id;
    let other: UserId = parse_id("userId", &user_id)?;
    let app = app(ctx).clone();
    blocking(move || {
        if follow {
            app.graph.follow(me, other)?;
        } else {
            app.graph.unfollow(me, other)?;
        }
        let user = app.graph.user(other)?.ok_or_else(|| ApiError::NotFound("no such user".into()))?;
        Ok(UserObject::new(user))
    })
    .await
}
