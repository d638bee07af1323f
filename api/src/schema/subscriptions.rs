//! Subscriptions over WebSocket: availability, event changes and the
//! viewer's notifications. Each holds a slot of its connection's
//! subscription budget until its stream ends: the WebSocket executor takes
//! it as the `subscribe` message arrives (`api::http`), so that the ones
//! over the budget are the last sent, whichever stream first runs.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_graphql::futures_util::stream::{self, Stream};
use async_graphql::{ComplexObject, Context, SimpleObject, Subscription, ID};
use graph::ids::TicketTypeId;

use super::events::{EventObject, TicketTypeObject};
use super::notifications::NotificationObject;
use super::{app, viewer};
use crate::error::{ApiError, ApiResult};
use crate::readers::live::{Availability, Snapshot};

/// A connection's subscription budget, in its session data.
#[derive(Clone)]
pub struct SubscriptionBudget {
    running: Arc<AtomicUsize>,
    max: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

impl SubscriptionBudget {
    /// A budget of `max` subscriptions at once.
    pub fn new(max: usize, metrics: Arc<crate::metrics::Metrics>) -> SubscriptionBudget {
        SubscriptionBudget { running: Arc::new(AtomicUsize::new(0)), max, metrics }
    }
}

/// One subscription's slot; given back when dropped with its stream.
pub struct Slot(SubscriptionBudget);

impl SubscriptionBudget {
    /// Takes a slot of the budget, or says none is left.
    pub fn take(&self) -> ApiResult<Slot> {
        let running = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        if running > self.max {
            self.running.fetch_sub(1, Ordering::AcqRel);
            // Over a limit, nothing run: the contract's QUERY_TOO_COMPLEX
            // (its LIMIT_EXCEEDED is the per-user ticket limit).
            return Err(ApiError::TooComplex(format!("a connection runs at most {} subscriptions at once", self.max)));
        }
        self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A change of a ticket type's seats.
#[derive(SimpleObject, Clone)]
#[graphql(complex)]
pub struct AvailabilityUpdate {
    event_id: ID,
    ticket_type_id: ID,
    sold: u32,
    available: u32,
    #[graphql(skip)]
    ticket_type: TicketTypeId,
}

#[ComplexObject]
impl AvailabilityUpdate {
    /// The ticket type itself (beyond the contract), its figures as they
    /// are now: a client's normalized cache (Apollo, graphcache) takes the
    /// update in by its id and type, with no updater of its own.
    async fn ticket_type(&self, ctx: &Context<'_>) -> ApiResult<TicketTypeObject> {
        let ticket_type = app(ctx).graph.ticket_type(self.ticket_type);
        ticket_type.map(TicketTypeObject).ok_or_else(|| ApiError::NotFound("no such ticket type".into()))
    }
}

/// The shortest time between two availability snapshots of one
/// subscription.
pub const AVAILABILITY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Every subscription.
#[derive(Default)]
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// Every change of sold/available of the event's ticket types, after
    /// the current figures of each (so that a page opened between changes,
    /// or a client back after a dropped connection or a restart, shows the
    /// figures as they are). A slow subscriber gets the latest figures, not
    /// every step in between, and every subscriber at most one snapshot per
    /// [`AVAILABILITY_INTERVAL`]: at an on-sale's peak the figures change
    /// thousands of times a second, and each snapshot costs the server for
    /// each subscriber.
    async fn availability(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = AvailabilityUpdate>> {
        let event = super::events::visible_event(ctx, "eventId", &event_id)?;
        let app = app(ctx).clone();
        let mut receiver = app.readers.hub.watch_availability(event.id, || {
            let current = app.graph.ticket_types(event.id).into_iter().map(|t| {
                let sold = app.ledger.sold(t.id);
                (t.id, Availability { sold, available: t.capacity.saturating_sub(sold), version: 0 })
            });
            Arc::new(current.collect())
        });
        // What changed since `seen` (every ticket type, the first time),
        // as updates to send.
        let event_id = event.id;
        let changes = move |snapshot: &Snapshot, seen: &mut HashMap<TicketTypeId, u64>, pending: &mut VecDeque<_>| {
            for (ticket_type, figures) in snapshot.iter() {
                if seen.insert(*ticket_type, figures.version) != Some(figures.version) {
                    pending.push_back(AvailabilityUpdate {
                        event_id: ID(event_id.to_string()),
                        ticket_type_id: ID(ticket_type.to_string()),
                        sold: figures.sold,
                        available: figures.available,
                        ticket_type: *ticket_type,
                    });
                }
            }
        };
        let (mut seen, mut pending) = (HashMap::new(), VecDeque::new());
        changes(&receiver.borrow_and_update().clone(), &mut seen, &mut pending);
        let next_snapshot = Some(tokio::time::Instant::now() + AVAILABILITY_INTERVAL);
        let state = (receiver, seen, pending, next_snapshot);
        Ok(stream::unfold(state, move |(mut receiver, mut seen, mut pending, mut next_snapshot)| async move {
            loop {
                if let Some(update) = pending.pop_front() {
                    return Some((update, (receiver, seen, pending, next_snapshot)));
                }
                // Asleep, the subscriber is not woken by each change in
                // between; the next snapshot holds them all.
                if let Some(at) = next_snapshot {
                    tokio::time::sleep_until(at).await;
                }
                receiver.changed().await.ok()?;
                next_snapshot = Some(tokio::time::Instant::now() + AVAILABILITY_INTERVAL);
                let snapshot: Snapshot = receiver.borrow_and_update().clone();
                changes(&snapshot, &mut seen, &mut pending);
            }
        }))
    }

    /// The event, each time it changes (details, publication, cancellation,
    /// a new ticket type).
    async fn event_updated(
        &self,
        ctx: &Context<'_>,
        event_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = EventObject>> {
        let event = super::events::visible_event(ctx, "eventId", &event_id)?;
        let app = app(ctx).clone();
        let receiver = app.readers.hub.watch_event(event.id);
        // A cancelled event changes no more: the subscription completes
        // after the change that cancelled it, or at once if it already was.
        let ended = event.status.is_cancelled();
        Ok(stream::unfold((receiver, ended), move |(mut receiver, ended)| {
            let app = app.clone();
            let id = event.id;
            async move {
                if ended {
                    return None;
                }
                receiver.changed().await.ok()?;
                receiver.borrow_and_update();
                let event = app.graph.event(id)?;
                let ended = event.status.is_cancelled();
                Some((EventObject(event), (receiver, ended)))
            }
        }))
    }

    /// The viewer's notifications, as they are created. A subscriber too
    /// slow for the live buffer skips ahead (the inbox keeps them all).
    async fn notifications(&self, ctx: &Context<'_>) -> async_graphql::Result<impl Stream<Item = NotificationObject>> {
        let user = viewer(ctx).require()?.id;
        let receiver = app(ctx).readers.live_notifications.subscribe(user);
        Ok(stream::unfold(receiver, move |mut receiver| async move {
            let notification = receiver.recv().await?;
            Some((NotificationObject((*notification).clone()), receiver))
        }))
    }
}
