//! The viewer's notifications inbox.

use async_graphql::{Context, Object, ID};

use super::{app, blocking, page_size_up_to, viewer, DateTime};
use crate::error::{ApiError, ApiResult};
use crate::readers::notifications::{self, Notification};

/// Most ids one markNotificationsRead call may name.
const MARK_IDS_MAX: usize = notifications::INBOX_MAX;

/// A notification.
pub struct NotificationObject(pub Notification);

#[Object(name = "Notification", serial)]
impl NotificationObject {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// e.g. booking.confirmed, event.updated, event.cancelled, friend.going.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn message(&self) -> &str {
        &self.0.message
    }
    async fn event_id(&self) -> Option<ID> {
        self.0.event.map(|e| ID(e.to_string()))
    }
    async fn created_at(&self) -> DateTime {
        DateTime(self.0.created_at_ms)
    }
    async fn read(&self) -> bool {
        self.0.read
    }
}

#[derive(Default)]
pub struct NotificationsQuery;

#[Object]
impl NotificationsQuery {
    /// The viewer's notifications, newest first.
    async fn notifications(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
        #[graphql(default_with = "Some(false)")] unread_only: Option<bool>,
    ) -> ApiResult<Vec<NotificationObject>> {
        let user = viewer(ctx).require()?.id;
        // The whole inbox can be listed in one page.
        let first = page_size_up_to(first, 20, notifications::INBOX_MAX as i64)?;
        let app = app(ctx).clone();
        let unread_only = unread_only.unwrap_or(false);
        blocking(move || {
            let derived = &app.readers.derived_confirmations;
            let found = notifications::inbox(&app.graph, &app.ledger, derived, user, first, unread_only)?;
            Ok(found.into_iter().map(NotificationObject).collect())
        })
        .await
    }

    /// How many of the viewer's notifications are unread (for a badge).
    async fn unread_notification_count(&self, ctx: &Context<'_>) -> ApiResult<i32> {
        let user = viewer(ctx).require()?.id;
        let app = app(ctx).clone();
        blocking(move || {
            let derived = &app.readers.derived_confirmations;
            Ok(notifications::unread_count(&app.graph, &app.ledger, derived, user)? as i32)
        })
        .await
    }
}

#[derive(Default)]
pub struct NotificationsMutation;

#[Object]
impl NotificationsMutation {
    /// Marks the viewer's notifications read: those listed, or all when
    /// `ids` is null. Returns how many changed.
    async fn mark_notifications_read(&self, ctx: &Context<'_>, ids: Option<Vec<ID>>) -> ApiResult<usize> {
        let user = viewer(ctx).require()?.id;
        if ids.as_ref().is_some_and(|ids| ids.len() > MARK_IDS_MAX) {
            return Err(ApiError::bad_input("ids", format!("at most {MARK_IDS_MAX} ids at once")));
        }
        // Anything but a notification's id names none.
        if let Some(bad) = ids.iter().flatten().find(|id| !notifications::is_notification_id(id)) {
            return Err(ApiError::bad_input("ids", format!("{:?} is not a valid id", bad.as_str())));
        }
        let ids: Option<Vec<String>> = ids.map(|ids| ids.into_iter().map(|id| id.0).collect());
        let app = app(ctx).clone();
        blocking(move || {
            let derived = &app.readers.derived_confirmations;
            Ok(notifications::mark_read(&app.graph, &app.ledger, derived, user, ids.as_deref())?)
        })
        .await
    }
}
