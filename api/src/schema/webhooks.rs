//! Webhooks: create, list, delete, and their deliveries.

use async_graphql::{Context, Object, SimpleObject, ID};
use graph::ids::WebhookId;
use graph::model::{Role, Webhook};

use super::{app, blocking, page_size, parse_id, viewer, DateTime};
use crate::error::{ApiError, ApiResult};
use crate::readers::webhooks::{self, Delivery, EVENT_NAMES};

const HOOKING: &[Role] = &[Role::Organizer, Role::Admin, Role::Partner];

/// A webhook (its secret is shown only once, at creation).
pub struct WebhookObject(Webhook);

#[Object(name = "Webhook", serial)]
impl WebhookObject {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn url(&self) -> &str {
        &self.0.url
    }
    async fn events(&self) -> &[String] {
        &self.0.events
    }
    /// False once deliveries kept failing until their retries ran out.
    async fn active(&self) -> bool {
        self.0.active
    }
}

/// A new webhook and its signing secret.
#[derive(SimpleObject)]
pub struct WebhookCreated {
    webhook: WebhookObject,
    /// Shown once: HMAC-SHA256 key for X-Marquee-Signature.
    secret: String,
}

/// One delivery of a webhook.
pub struct WebhookDeliveryObject(Delivery);

#[Object(name = "WebhookDelivery", serial)]
impl WebhookDeliveryObject {
    /// The same on every attempt (X-Marquee-Delivery).
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn event(&self) -> &str {
        &self.0.event
    }
    /// Attempts made so far.
    async fn attempt(&self) -> u32 {
        self.0.attempt
    }
    /// HTTP status of the last attempt; null when none came back.
    async fn status_code(&self) -> Option<u16> {
        self.0.status_code
    }
    async fn delivered_at(&self) -> Option<DateTime> {
        self.0.delivered_at_ms.map(DateTime)
    }
    /// When the next attempt is due; null once delivered or given up.
    async fn next_attempt_at(&self) -> Option<DateTime> {
        self.0.next_attempt_at_ms.map(DateTime)
    }
    /// Why the last attempt got no HTTP status (no answer in time, could
    /// not connect, a refused address); null when one came back.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

/// The webhook `id`, if the viewer owns it or is an admin.
fn owned_webhook(ctx: &Context<'_>, id: &ID, field: &str) -> ApiResult<Webhook> {
    let user = viewer(ctx).require()?;
    let id: WebhookId = parse_id(field, id)?;
    let webhook = app(ctx).graph.webhook(id).ok_or_else(|| ApiError::NotFound("no such webhook".into()))?;
    if webhook.owner != user.id && user.role != Role::Admin {
        // Someone else's webhook is none of the caller's business.
        return Err(ApiError::NotFound("no such webhook".into()));
    }
    Ok(webhook)
}

fn check_events(events: Vec<String>) -> ApiResult<Vec<String>> {
    if events.is_empty() {
        return Err(ApiError::bad_input("events", format!("name at least one of {}", EVENT_NAMES.join(", "))));
    }
    let mut checked: Vec<String> = Vec::new();
    for event in events {
        let event = event.trim().to_string();
        if !EVENT_NAMES.contains(&event.as_str()) {
            let known = EVENT_NAMES.join(", ");
            return Err(ApiError::bad_input("events", format!("{event:?} is not one of {known}")));
        }
        if !checked.contains(&event) {
            checked.push(event);
        }
    }
    Ok(checked)
}

/// A new signing secret: 256 random bits, like a session token.
fn new_secret() -> String {
    format!("whsec_{}", &crate::auth::new_token()[crate::auth::TOKEN_PREFIX.len()..])
}

#[derive(Default)]
pub struct WebhooksQuery;

#[Object]
impl WebhooksQuery {
    /// The caller's webhooks.
    async fn webhooks(&self, ctx: &Context<'_>) -> ApiResult<Vec<WebhookObject>> {
        let user = viewer(ctx).require()?;
        Ok(app(ctx).graph.webhooks_of(user.id).into_iter().map(WebhookObject).collect())
    }

    /// A webhook's deliveries, newest first (its owner and admins).
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        #[graphql(default_with = "Some(20)")] first: Option<i64>,
    ) -> ApiResult<Vec<WebhookDeliveryObject>> {
        let webhook = owned_webhook(ctx, &webhook_id, "webhookId")?;
        let first = page_size(first, 20)?;
        let app = app(ctx).clone();
        blocking(move || {
            let found = webhooks::deliveries(&app.graph, webhook.id, first)?;
            Ok(found.into_iter().map(WebhookDeliveryObject).collect())
        })
        .await
    }
}

#[derive(Default)]
pub struct WebhooksMutation;

#[Object]
impl WebhooksMutation {
    /// ORGANIZER, ADMIN, PARTNER. Organizers receive their own events' changes.
    async fn create_webhook(&self, ctx: &Context<'_>, url: String, events: Vec<String>) -> ApiResult<WebhookCreated> {
        let owner = viewer(ctx).require_role(HOOKING, "createWebhook")?.id;
        let app = app(ctx).clone();
        let url = webhooks::check_url(&url, app.settings.webhooks.allow_private)
            .map_err(|why| ApiError::bad_input("url", why))?;
        if !app.settings.webhooks.allow_private {
            webhooks::check_host_resolves_publicly(&url).await.map_err(|why| ApiError::bad_input("url", why))?;
        }
        let events = check_events(events)?;
        let secret = new_secret();
        let kept = secret.clone();
        let webhook = blocking(move || Ok(app.graph.create_webhook(owner, url, events, kept)?)).await?;
        Ok(WebhookCreated { webhook: WebhookObject(webhook), secret })
    }

    /// Replaces a webhook's signing secret (its owner, admins) and shows
    /// the new one, once. Every attempt from now on is signed with it,
    /// retries of earlier deliveries included; nothing pending is lost.
    async fn rotate_webhook_secret(&self, ctx: &Context<'_>, id: ID) -> ApiResult<WebhookCreated> {
        let webhook = owned_webhook(ctx, &id, "id")?;
        let app = app(ctx).clone();
        let secret = new_secret();
        let kept = secret.clone();
        let webhook = blocking(move || Ok(app.graph.rotate_webhook_secret(webhook.id, kept)?)).await?;
        Ok(WebhookCreated { webhook: WebhookObject(webhook), secret })
    }

    /// Makes a failing webhook active again (its owner, admins). Its
    /// undelivered deliveries, those given up and those kept while it was
    /// failing, go out again from now, their retries counted afresh.
    async fn reactivate_webhook(&self, ctx: &Context<'_>, id: ID) -> ApiResult<WebhookObject> {
        let webhook = owned_webhook(ctx, &id, "id")?;
        let app = app(ctx).clone();
        blocking(move || {
            let webhook = app.graph.reactivate_webhook(webhook.id)?;
            webhooks::resume(&app.graph, webhook.id)?;
            Ok(WebhookObject(webhook))
        })
        .await
    }

    /// Deletes a webhook (its owner, admins); pending deliveries are dropped.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let webhook = owned_webhook(ctx, &id, "id")?;
        let app = app(ctx).clone();
        blocking(move || Ok(app.graph.delete_webhook(webhook.id)?)).await
    }
}
