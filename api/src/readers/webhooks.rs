//! Webhooks: a durable outbox filled from the log, and a delivery worker.
//!
//! For each log record named booking.confirmed, booking.cancelled (of a
//! booking that was confirmed: a dropped hold sold nothing),
//! event.published, event.updated or event.cancelled, every active webhook
//! subscribed to it, allowed to see it (admins' webhooks see every event,
//! partners' every event but drafts and drafts withdrawn, organizers' only
//! events they organize) and made before
//! it gets a delivery row. A deleted webhook's rows go with it, and its id
//! is never given to another webhook. The worker POSTs the JSON body
//! `{"id","event","createdAt","data"}` with `X-Marquee-Event`, `X-Marquee-Delivery` (the same on every attempt)
//! and `X-Marquee-Signature: sha256=<hex HMAC-SHA256 of the body>`. Anything
//! but a 2xx within the timeout is retried after `base * 2^(attempt-1)`
//! (capped at [`RETRY_DELAY_MAX_MS`], +-20% jitter), up to
//! [`ATTEMPTS_MAX`] attempts by default (about a day at the default 5 s
//! base); then the
//! webhook is marked failing (inactive). Pending deliveries are rows, so a
//! restart resumes them. Deliveries to loopback, private, link-local and
//! similar addresses are refused unless the operator allows them, both for
//! IP literals and for every address a host name resolves to; redirects are
//! never followed.
//!
//! Rows (reader 3): `d|webhook|seq` a delivery; `q|due ms|webhook|seq` the
//! due queue of pending deliveries; `s|webhook` when a delivery of the
//! webhook last got through (unix ms, BE), which decides after a restart
//! too whether a delivery that ran out of attempts marks it failing.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graph::ids::{UserId, WebhookId};
use graph::log::{Entry, Record};
use graph::model::{Role, Webhook};
use graph::readers::{ReaderBatch, ReaderRows};
use graph::Graph;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{key, u64_at, Reader};
use crate::schema::DateTime;

/// Event names a webhook can subscribe to.
pub const EVENT_NAMES: [&str; 5] =
    ["booking.confirmed", "booking.cancelled", "event.published", "event.updated", "event.cancelled"];
/// Attempts before a delivery is given up and its webhook marked failing
/// (the default; with the default 5 s base they span about a day).
pub const ATTEMPTS_MAX: u32 = 20;
/// The longest wait between two attempts.
pub const RETRY_DELAY_MAX_MS: i64 = 2 * 3600 * 1000;
/// Deliveries in flight at once.
pub const CONCURRENT_DELIVERIES_MAX: usize = 128;
/// Deliveries of one account's webhooks in flight at once: an endpoint slow
/// to answer (or never answering; an account may have 20 webhooks at it)
/// holds at most these of the worker's slots, and other accounts'
/// deliveries go on.
pub const ACCOUNT_IN_FLIGHT_MAX: usize = 8;
/// Longest URL accepted.
pub const URL_CHARS_MAX: usize = 2048;
/// Due rows the worker looks at per scan of the due queue, and most
/// deliveries picked up (in flight, or waiting for a slot) at once.
const DUE_SCAN_MAX: usize = 4096;
/// Most deliveries of one account picked up at once: its slots' worth
/// waiting behind them. The rest of its due rows are passed over, and the
/// next scan goes on past them, so another account's rows are reached
/// however long one account's backlog.
const ACCOUNT_PICKED_MAX: usize = 8 * ACCOUNT_IN_FLIGHT_MAX;

const DELIVERY: u8 = b'd';
const DUE: u8 = b'q';
const LAST_SUCCESS: u8 = b's';
/// Deliveries read, newest first, to find when a webhook's last got
/// through when no `s|webhook` row says it (one written before the row
/// was kept).
const LAST_SUCCESS_SCAN_MAX: usize = 10_000;

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// First retry delay; doubles with every attempt.
    pub retry_base_ms: i64,
    /// How long one attempt may take.
    pub timeout_ms: u64,
    /// Deliver to loopback and private addresses (tests, private networks).
    pub allow_private: bool,
    /// Attempts before giving up and marking the webhook failing.
    pub attempts_max: u32,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings { retry_base_ms: 5_000, timeout_ms: 10_000, allow_private: false, attempts_max: ATTEMPTS_MAX }
    }
}

/// Where one delivery stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    /// `seq-webhook`: stable across retries.
    pub id: String,
    /// The webhook it goes to.
    pub webhook: u64,
    /// The event name.
    pub event: String,
    /// The exact body sent (and signed).
    pub body: String,
    /// Attempts made so far.
    pub attempt: u32,
    /// HTTP status of the last attempt, if it got one.
    pub status_code: Option<u16>,
    /// When it was delivered (a 2xx came back), unix ms.
    pub delivered_at_ms: Option<i64>,
    /// When the next attempt is due, while pending, unix ms.
    pub next_attempt_at_ms: Option<i64>,
    /// When the change it tells of was made, unix ms (0 in deliveries
    /// stored before it was kept).
    #[serde(default)]
    pub made_at_ms: i64,
    /// Why the last attempt got no HTTP status (it timed out, could not
    /// connect, or the address is refused); `None` when one came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The prefix of all of a webhook's delivery rows.
fn deliveries_key(webhook: WebhookId) -> Vec<u8> {
    key(&[&[DELIVERY], &webhook.to_key()])
}

fn delivery_key(webhook: WebhookId, seq: u64) -> Vec<u8> {
    key(&[&[DELIVERY], &webhook.to_key(), &seq.to_be_bytes()])
}

fn last_success_key(webhook: WebhookId) -> Vec<u8> {
    key(&[&[LAST_SUCCESS], &webhook.to_key()])
}

fn due_key(due_ms: i64, webhook: WebhookId, seq: u64) -> Vec<u8> {
    key(&[&[DUE], &due_ms.max(0).to_be_bytes(), &webhook.to_key(), &seq.to_be_bytes()])
}

/// The outbox reader.
pub struct Outbox {
    graph: Arc<Graph>,
    /// Woken when new deliveries are committed.
    wake: Arc<tokio::sync::Notify>,
    created: bool,
    /// The highest webhook id whose creation the reader has applied: a
    /// webhook above it was made after the entry being applied (ids are
    /// given in log order), and does not hear of it. (The creation time
    /// could not tell a change made in the same millisecond, before it.)
    /// Worked out from the log at load, never stored: a store an older
    /// release wrote to meanwhile cannot leave it behind.
    created_through: u64,
}

impl Outbox {
    /// The reader; `wake` is notified when deliveries were added. The
    /// ids of webhooks whose deliveries are stored are never given to a new
    /// webhook (data written before the store kept the highest id given
    /// may hold deliveries of a deleted webhook under its id).
    pub fn new(graph: Arc<Graph>, wake: Arc<tokio::sync::Notify>) -> Result<Outbox, graph::Error> {
        let rows = graph.store().reader(Outbox::ID);
        if let Some((row, _)) = rows.scan(&[DELIVERY], true, 1)?.into_iter().next() {
            graph.webhook_ids_taken_through(u64_at(&row, 1, "webhook delivery key")?);
        }
        let mut outbox = Outbox { graph: graph.clone(), wake, created: false, created_through: 0 };
        outbox.reload(&rows)?;
        Ok(outbox)
    }

    /// Drops a deleted webhook's deliveries, pending or not, with their
    /// places in the due queue.
    fn forget(&self, rows: &ReaderRows<'_>, webhook: WebhookId, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        for (row, value) in rows.scan(&deliveries_key(webhook), false, usize::MAX)? {
            let seq = u64_at(&row, 9, "webhook delivery key")?;
            let pending = serde_json::from_slice::<Delivery>(&value).ok().and_then(|d| d.next_attempt_at_ms);
            if let Some(due_ms) = pending {
                batch.remove(rows, &due_key(due_ms, webhook, seq));
            }
            batch.remove(rows, &row);
        }
        batch.remove(rows, &last_success_key(webhook));
        Ok(())
    }

    /// Whether `webhook`'s owner may see a change of `organizer`'s event
    /// (partners not of a private one: a draft, or one withdrawn before it
    /// was published).
    fn may_see(&self, webhook: &Webhook, about: &About) -> bool {
        match self.graph.user(webhook.owner) {
            Ok(Some(owner)) => {
                owner.role == Role::Admin
                    || owner.id == about.organizer
                    || (owner.role == Role::Partner && !about.private)
            }
            _ => false,
        }
    }
}

/// Whose event a delivery is about, and whether it is private.
struct About {
    organizer: UserId,
    private: bool,
}

/// The `data` of a record's delivery, and whose event it is about.
fn payload(graph: &Graph, record: &Record) -> Option<(serde_json::Value, About)> {
    match record {
        // A hold dropped before it was confirmed sold nothing: partners
        // hear of cancelled sales only (an expired hold sends nothing either).
        Record::BookingCancelled(b) if b.confirmed_at_ms.is_none() => None,
        Record::BookingConfirmed(b) | Record::BookingCancelled(b) => {
            let event = graph.event(b.event)?;
            let data = serde_json::json!({
                "id": b.id.to_string(),
                "status": if matches!(record, Record::BookingConfirmed(_)) { "CONFIRMED" } else { "CANCELLED" },
                "eventId": b.event.to_string(),
                "ticketTypeId": b.ticket_type.to_string(),
                "userId": b.user.to_string(),
                "quantity": b.quantity,
                "totalCents": u64::from(b.quantity) * u64::from(b.unit_price_cents),
            });
            Some((data, About { organizer: event.organizer, private: event.status.is_private() }))
        }
        Record::EventPublished(e) | Record::EventUpdated(e) | Record::EventCancelled(e) => {
            let status = match e.status {
                graph::model::EventStatus::Draft => "DRAFT",
                graph::model::EventStatus::Published => "PUBLISHED",
                graph::model::EventStatus::Cancelled | graph::model::EventStatus::Withdrawn => "CANCELLED",
            };
            let data = serde_json::json!({
                "id": e.id.to_string(),
                "title": e.title,
                "status": status,
                "city": e.city,
                "startsAt": DateTime(e.starts_at_ms).to_rfc3339(),
                "endsAt": e.ends_at_ms.map(|at| DateTime(at).to_rfc3339()),
                "tags": e.tags,
            });
            Some((data, About { organizer: e.organizer, private: e.status.is_private() }))
        }
        _ => None,
    }
}

impl Reader for Outbox {
    const ID: u8 = 3;
    const NAME: &'static str = "webhooks";

    fn apply(&mut self, rows: &ReaderRows<'_>, entry: &Entry, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        match &entry.record {
            Record::WebhookDeleted(webhook) => return self.forget(rows, webhook.id, batch),
            Record::WebhookCreated(webhook) => {
                self.created_through = self.created_through.max(webhook.id.0);
                return Ok(());
            }
            _ => {}
        }
        let name = entry.record.name();
        if !EVENT_NAMES.contains(&name) {
            return Ok(());
        }
        // Most records have no subscriber: the payload is built only for
        // one (at a peak on-sale, building it for every booking was most
        // of this reader's work).
        let webhooks = self.graph.webhooks_for(name);
        if webhooks.is_empty() {
            return Ok(());
        }
        let Some((data, about)) = payload(&self.graph, &entry.record) else { return Ok(()) };
        for webhook in webhooks {
            let row = delivery_key(webhook.id, entry.seq);
            // The reader runs behind the log, and the webhooks are today's:
            // one made after the change does not hear of it.
            let made_after = webhook.id.0 > self.created_through;
            if made_after || !self.may_see(&webhook, &about) || rows.get(&row)?.is_some() {
                continue;
            }
            let id = format!("{}-{}", entry.seq, webhook.id);
            let body = serde_json::json!({
                "id": id,
                "event": name,
                "createdAt": DateTime(entry.at_ms).to_rfc3339(),
                "data": data,
            });
            // A failing webhook's deliveries are kept, not sent: they go
            // out once its owner reactivates it.
            let due = webhook.active.then_some(entry.at_ms);
            let delivery = Delivery {
                id,
                webhook: webhook.id.0,
                event: name.to_string(),
                body: body.to_string(),
                attempt: 0,
                status_code: None,
                delivered_at_ms: None,
                next_attempt_at_ms: due,
                made_at_ms: entry.at_ms,
                error: None,
            };
            batch.put(rows, &row, &serde_json::to_vec(&delivery).expect("deliveries serialise"));
            if let Some(due) = due {
                batch.put(rows, &due_key(due, webhook.id, entry.seq), &[]);
                self.created = true;
            }
        }
        Ok(())
    }

    fn committed(&mut self, _checkpoint: u64) {
        if std::mem::take(&mut self.created) {
            self.wake.notify_one();
        }
    }

    fn reload(&mut self, rows: &ReaderRows<'_>) -> Result<(), graph::Error> {
        self.created = false;
        // Every webhook there is now was made by the entries up to the
        // checkpoint, but those made by the entries still to apply: the
        // lowest of these is the first the reader has yet to see made.
        let store = self.graph.store();
        let mut after = rows.checkpoint()?;
        let mut first_unmade: Option<u64> = None;
        loop {
            let entries = store.read_durable_log(after, 4_096)?;
            let Some(last) = entries.last() else { break };
            after = last.seq;
            for entry in &entries {
                if let Record::WebhookCreated(webhook) = &entry.record {
                    first_unmade = Some(first_unmade.map_or(webhook.id.0, |first| first.min(webhook.id.0)));
                }
            }
        }
        self.created_through = match first_unmade {
            Some(first) => first.saturating_sub(1),
            None => self.graph.webhooks_created_through(),
        };
        Ok(())
    }
}

/// Sends a reactivated webhook's undelivered deliveries again, from now,
/// their retries counted afresh: those given up and those kept while it
/// was failing. Returns how many.
pub fn resume(graph: &Graph, webhook: WebhookId) -> Result<usize, graph::Error> {
    let rows = graph.store().reader(Outbox::ID);
    let now = graph::now_ms();
    let mut batch = ReaderBatch::default();
    let mut resumed = 0;
    for (row, value) in rows.scan(&deliveries_key(webhook), false, usize::MAX)? {
        let mut delivery: Delivery =
            serde_json::from_slice(&value).map_err(|_| graph::Error::Corrupt("webhook delivery"))?;
        if delivery.delivered_at_ms.is_some() || delivery.next_attempt_at_ms.is_some() {
            continue;
        }
        let seq = u64_at(&row, 9, "webhook delivery key")?;
        delivery.attempt = 0;
        delivery.next_attempt_at_ms = Some(now);
        batch.put(&rows, &row, &serde_json::to_vec(&delivery).expect("deliveries serialise"));
        batch.put(&rows, &due_key(now, webhook, seq), &[]);
        resumed += 1;
    }
    rows.commit(batch, None)?;
    Ok(resumed)
}

/// Refuses a URL whose host name resolves, now, only to addresses that
/// deliveries are refused (`localhost.`, a name for 10.0.0.5): its every
/// delivery would fail. A name that does not resolve (yet) is taken: DNS
/// may change, and each delivery checks again.
pub async fn check_host_resolves_publicly(url: &str) -> Result<(), String> {
    let Some(host) = reqwest::Url::parse(url).ok().and_then(|url| url.host_str().map(str::to_string)) else {
        return Ok(());
    };
    if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        return Ok(()); // checked as a literal by check_url
    }
    let lookup = allowed_addresses(&host, false);
    if let Ok(Ok(allowed)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
        if allowed.is_empty() {
            return Err(format!("{host} resolves only to loopback or private addresses, which deliveries are refused"));
        }
    }
    Ok(())
}

/// The addresses `host` resolves to that deliveries may go to (all of
/// them when private ones are allowed): what each delivery connects to, and
/// what a webhook's creation checks.
async fn allowed_addresses(host: &str, allow_private: bool) -> std::io::Result<Vec<SocketAddr>> {
    let found = tokio::net::lookup_host((host, 0)).await?;
    Ok(found.filter(|address| allow_private || !is_private(address.ip())).collect())
}

/// Why a delivery to a refused address was not sent.
const REFUSED_ADDRESS: &str =
    "the address is loopback or private, which the server refuses (the operator may allow them with --allow-private-webhooks)";

/// Whether a webhook whose delivery ran out of retries is failing: not
/// when another of its deliveries got through since that one was made (one
/// payload its endpoint refuses does not stop the rest).
fn is_failing(last_success_ms: Option<i64>, delivery_made_ms: i64) -> bool {
    last_success_ms.is_none_or(|success| success < delivery_made_ms)
}

/// A webhook's deliveries, newest first.
pub fn deliveries(graph: &Graph, webhook: WebhookId, first: usize) -> Result<Vec<Delivery>, graph::Error> {
    let rows = graph.store().reader(Outbox::ID);
    let prefix = deliveries_key(webhook);
    rows.scan(&prefix, true, first)?
        .into_iter()
        .map(|(_, value)| serde_json::from_slice(&value).map_err(|_| graph::Error::Corrupt("webhook delivery")))
        .collect()
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`, as lower-case hex.
pub fn sign(key: &[u8], message: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether deliveries to `ip` are refused unless private ones are allowed:
/// loopback, private, link-local, shared (CGNAT), unspecified, broadcast,
/// multicast, documentation and unique-local addresses.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || a == 0
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            // IPv4-compatible (::a.b.c.d, deprecated) and NAT64
            // (64:ff9b::a.b.c.d) addresses reach the IPv4 address in their
            // last four bytes.
            let compatible = segments[..6].iter().all(|&s| s == 0) && !v6.is_loopback() && !v6.is_unspecified();
            let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if compatible || nat64 {
                let [.., a, b, c, d] = v6.octets();
                return is_private(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            let first = segments[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
        }
    }
}

/// Checks a webhook URL: http(s), a host, no credentials, bounded; an IP
/// literal must be public unless private ones are allowed. Returns the URL
/// normalised, or why not.
pub fn check_url(text: &str, allow_private: bool) -> Result<String, String> {
    if text.chars().count() > URL_CHARS_MAX {
        return Err(format!("must be at most {URL_CHARS_MAX} characters"));
    }
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http or https URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("must name a host")?;
    let literal = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let local_name = name == "localhost" || name.ends_with(".localhost");
    if (literal.is_some_and(is_private) || local_name) && !allow_private {
        return Err("must not point at a loopback, private or link-local address".into());
    }
    Ok(url.to_string())
}

/// Resolves host names for deliveries, dropping refused addresses.
struct PublicResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let allowed = allowed_addresses(&host, allow_private).await?;
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to refused (loopback/private) addresses").into();
                return Err(refused);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The deliveries the worker picked up, by (webhook, seq), and how many of
/// each account's.
#[derive(Default)]
struct Picked {
    deliveries: HashSet<(u64, u64)>,
    by_account: HashMap<UserId, usize>,
}

/// What became of a due row the worker looked at.
enum Pick {
    /// Picked up now.
    Taken,
    /// Picked up before, not done yet.
    Already,
    /// Its account has [`ACCOUNT_PICKED_MAX`] picked up: passed over.
    AccountFull,
    /// [`DUE_SCAN_MAX`] are picked up: nothing more this scan.
    Full,
}

impl Picked {
    fn pick(&mut self, webhook: u64, seq: u64, account: UserId) -> Pick {
        if self.deliveries.contains(&(webhook, seq)) {
            return Pick::Already;
        }
        if self.deliveries.len() >= DUE_SCAN_MAX {
            return Pick::Full;
        }
        let of_account = self.by_account.entry(account).or_default();
        if *of_account >= ACCOUNT_PICKED_MAX {
            return Pick::AccountFull;
        }
        *of_account += 1;
        self.deliveries.insert((webhook, seq));
        Pick::Taken
    }

    fn done(&mut self, webhook: u64, seq: u64, account: UserId) {
        self.deliveries.remove(&(webhook, seq));
        if let Some(count) = self.by_account.get_mut(&account) {
            *count -= 1;
            if *count == 0 {
                self.by_account.remove(&account);
            }
        }
    }
}

/// The delivery worker: sends due deliveries with bounded concurrency.
pub struct Deliverer {
    graph: Arc<Graph>,
    metrics: Arc<crate::metrics::Metrics>,
    client: reqwest::Client,
    settings: DeliverySettings,
    /// The deliveries picked up (in flight, or waiting for a slot), and
    /// how many of each account's.
    picked: Mutex<Picked>,
    /// Where the next scan of the due queue goes on from, when the last
    /// one stopped among rows it passed over.
    cursor: Mutex<Option<Vec<u8>>>,
    /// Slots of all webhooks: [`CONCURRENT_DELIVERIES_MAX`].
    permits: Arc<tokio::sync::Semaphore>,
    /// Slots of each account's webhooks: [`ACCOUNT_IN_FLIGHT_MAX`], taken
    /// before one of `permits`, so a slow endpoint's deliveries wait on
    /// their own account's.
    account_permits: Mutex<HashMap<UserId, Arc<tokio::sync::Semaphore>>>,
    /// When each webhook last had a delivery get through, as far as this
    /// process has read or written its `s|webhook` row.
    last_success_ms: Mutex<HashMap<u64, i64>>,
}

impl Deliverer {
    /// A worker with its HTTP client.
    pub fn new(
        graph: Arc<Graph>,
        settings: DeliverySettings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Deliverer>, String> {
        // rustls needs a process-wide crypto provider; a second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(settings.timeout_ms))
            .connect_timeout(Duration::from_millis(settings.timeout_ms))
            .user_agent(concat!("marquee-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PublicResolver { allow_private: settings.allow_private }))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Arc::new(Deliverer {
            graph,
            metrics,
            client,
            settings,
            picked: Mutex::new(Picked::default()),
            cursor: Mutex::new(None),
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_DELIVERIES_MAX)),
            account_permits: Mutex::new(HashMap::new()),
            last_success_ms: Mutex::new(HashMap::new()),
        }))
    }

    /// Runs until `stop` resolves: every wake-up or second, sends what is due.
    pub async fn run(self: Arc<Self>, wake: Arc<tokio::sync::Notify>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.clone().dispatch_due() {
                tracing::error!(%error, "webhook outbox scan failed");
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|&stop| stop) => return,
            }
        }
    }

    /// Starts a task for each due delivery not already in flight, oldest
    /// first, up to [`CONCURRENT_DELIVERIES_MAX`] in all and
    /// [`ACCOUNT_IN_FLIGHT_MAX`] per account.
    fn dispatch_due(self: Arc<Self>) -> Result<(), graph::Error> {
        let rows = self.graph.store().reader(Outbox::ID);
        let now = graph::now_ms();
        let after = self.cursor.lock().expect("cursor lock poisoned").take();
        let scanned = match &after {
            Some(after) => rows.scan_after(&[DUE], after, DUE_SCAN_MAX)?,
            None => rows.scan(&[DUE], false, DUE_SCAN_MAX)?,
        };
        // Whether this scan passed rows over for their account: then the
        // next goes on after the last row it looked at.
        let mut passed_over = false;
        let mut last = None;
        for (due, _) in scanned {
            let field = |at: usize| u64_at(&due, at, "webhook due key");
            let (due_ms, webhook, seq) = (field(1)?, field(9)?, field(17)?);
            if due_ms as i64 > now {
                passed_over = false;
                break;
            }
            last = Some(due.clone());
            // A deleted webhook's delivery is dropped without a send: any slot.
            let account = self.graph.webhook(WebhookId(webhook)).map_or(UserId(0), |w| w.owner);
            match self.picked.lock().expect("picked lock poisoned").pick(webhook, seq, account) {
                Pick::Taken => {}
                Pick::Already => continue,
                Pick::AccountFull => {
                    passed_over = true;
                    continue;
                }
                Pick::Full => {
                    passed_over = false;
                    break;
                }
            }
            let own = self
                .account_permits
                .lock()
                .expect("account permits lock poisoned")
                .entry(account)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(ACCOUNT_IN_FLIGHT_MAX)))
                .clone();
            let deliverer = self.clone();
            tokio::spawn(async move {
                let own = own.acquire_owned().await;
                let shared = deliverer.permits.clone().acquire_owned().await;
                if let Err(error) = deliverer.attempt(WebhookId(webhook), seq, due).await {
                    tracing::error!(%error, webhook, seq, "webhook delivery bookkeeping failed");
                }
                drop((shared, own));
                deliverer.picked.lock().expect("picked lock poisoned").done(webhook, seq, account);
            });
        }
        if passed_over {
            *self.cursor.lock().expect("cursor lock poisoned") = last;
        }
        Ok(())
    }

    /// Writes an attempt's bookkeeping. The commit waits for the row
    /// writer's next batch (up to 25 ms), so it waits on a blocking thread:
    /// on a request thread, sixteen deliveries in flight (a partner's
    /// endpoint down during an on-sale) held both request threads and
    /// bookings fell from 20,000 to 230 a second.
    async fn commit(&self, batch: ReaderBatch) -> Result<(), graph::Error> {
        let graph = self.graph.clone();
        tokio::task::spawn_blocking(move || graph.store().reader(Outbox::ID).commit(batch, None))
            .await
            .map_err(|e| graph::Error::Storage(e.to_string()))?
    }

    /// One attempt of one delivery, and its bookkeeping.
    async fn attempt(&self, webhook_id: WebhookId, seq: u64, due: Vec<u8>) -> Result<(), graph::Error> {
        let rows = self.graph.store().reader(Outbox::ID);
        let row = delivery_key(webhook_id, seq);
        let mut batch = ReaderBatch::default();
        batch.remove(&rows, &due);
        let (Some(webhook), Some(bytes)) = (self.graph.webhook(webhook_id), rows.get(&row)?) else {
            // The webhook was deleted: its pending deliveries go with it.
            return self.commit(batch).await;
        };
        let mut delivery: Delivery =
            serde_json::from_slice(&bytes).map_err(|_| graph::Error::Corrupt("webhook delivery"))?;
        if !webhook.active || delivery.delivered_at_ms.is_some() {
            delivery.next_attempt_at_ms = None;
            batch.put(&rows, &row, &serde_json::to_vec(&delivery).expect("deliveries serialise"));
            self.commit(batch).await?;
            // Reactivated meanwhile (its resume may have looked before this
            // row was kept): send it after all.
            if delivery.delivered_at_ms.is_none() && self.graph.webhook(webhook_id).is_some_and(|w| w.active) {
                let graph = self.graph.clone();
                tokio::task::spawn_blocking(move || resume(&graph, webhook_id))
                    .await
                    .map_err(|e| graph::Error::Storage(e.to_string()))??;
            }
            return Ok(());
        }
        let sent = self.send(&webhook, &delivery).await;
        delivery.attempt += 1;
        let status = sent.as_ref().ok().copied();
        delivery.status_code = status;
        delivery.error = sent.err();
        let now = graph::now_ms();
        let mut failing = false;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            delivery.delivered_at_ms = Some(now);
            delivery.next_attempt_at_ms = None;
            self.last_success_ms.lock().expect("last success lock poisoned").insert(webhook_id.0, now);
            batch.put(&rows, &last_success_key(webhook_id), &now.to_be_bytes());
            self.metrics.webhooks_delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else if delivery.attempt >= self.settings.attempts_max {
            delivery.next_attempt_at_ms = None;
            let last_success = self.last_success(&rows, webhook_id)?;
            failing = is_failing(last_success, delivery.made_at_ms);
            self.metrics.webhooks_given_up.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.metrics.webhooks_retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let next = now + retry_delay_ms(self.settings.retry_base_ms, delivery.attempt);
            delivery.next_attempt_at_ms = Some(next);
            batch.put(&rows, &due_key(next, webhook_id, seq), &[]);
        }
        batch.put(&rows, &row, &serde_json::to_vec(&delivery).expect("deliveries serialise"));
        self.commit(batch).await?;
        if failing {
            tracing::warn!(
                webhook = webhook_id.0,
                "webhook deliveries ran out of retries; marking it failing (reactivateWebhook resumes them)"
            );
            let graph = self.graph.clone();
            tokio::task::spawn_blocking(move || graph.set_webhook_failing(webhook_id))
                .await
                .map_err(|e| graph::Error::Storage(e.to_string()))??;
        }
        Ok(())
    }

    /// When a delivery of `webhook` last got through: kept in memory once
    /// known, read from its row after a restart, and without one (the
    /// deliveries of an older release) from its newest deliveries.
    fn last_success(&self, rows: &ReaderRows<'_>, webhook: WebhookId) -> Result<Option<i64>, graph::Error> {
        if let Some(&at) = self.last_success_ms.lock().expect("last success lock poisoned").get(&webhook.0) {
            return Ok(Some(at));
        }
        let at = match rows.get(&last_success_key(webhook))? {
            Some(value) => Some(i64::from_be_bytes(
                value.as_slice().try_into().map_err(|_| graph::Error::Corrupt("webhook last success"))?,
            )),
            None => rows
                .scan(&deliveries_key(webhook), true, LAST_SUCCESS_SCAN_MAX)?
                .into_iter()
                .filter_map(|(_, value)| serde_json::from_slice::<Delivery>(&value).ok()?.delivered_at_ms)
                .max(),
        };
        let Some(at) = at else { return Ok(None) };
        let mut known = self.last_success_ms.lock().expect("last success lock poisoned");
        Ok(Some(*known.entry(webhook.0).or_insert(at)))
    }

    /// POSTs the delivery; the status, or why no answer came.
    async fn send(&self, webhook: &Webhook, delivery: &Delivery) -> Result<u16, String> {
        if let Ok(url) = reqwest::Url::parse(&webhook.url) {
            let literal = url.host_str().and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok());
            if literal.is_some_and(is_private) && !self.settings.allow_private {
                tracing::warn!(webhook = webhook.id.0, "refusing a delivery to a private address");
                return Err(REFUSED_ADDRESS.into());
            }
        }
        let signature = format!("sha256={}", sign(webhook.secret.as_bytes(), delivery.body.as_bytes()));
        let sent = self
            .client
            .post(&webhook.url)
            .header("Content-Type", "application/json")
            .header("X-Marquee-Event", &delivery.event)
            .header("X-Marquee-Delivery", &delivery.id)
            .header("X-Marquee-Signature", signature)
            .body(delivery.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => Ok(response.status().as_u16()),
            Err(error) => {
                // Why, as the owner reads it, and not reqwest's text: that
                // names the URL, whose path or query may carry the
                // receiver's credential (the logs never hold secrets).
                let why = self.why(&error);
                tracing::info!(webhook = webhook.id.0, %why, "webhook delivery got no answer");
                Err(why)
            }
        }
    }

    /// Why a POST got no answer, for the webhook's owner.
    fn why(&self, error: &reqwest::Error) -> String {
        let mut innermost: &dyn std::error::Error = error;
        while let Some(source) = innermost.source() {
            innermost = source;
        }
        let detail = innermost.to_string();
        if detail.contains("refused (loopback/private)") {
            REFUSED_ADDRESS.into()
        } else if error.is_timeout() {
            format!("no answer within {} ms", self.settings.timeout_ms)
        } else if error.is_connect() {
            format!("could not connect: {detail}")
        } else {
            format!("no answer: {detail}")
        }
    }
}

/// `base * 2^(attempt-1)`, capped, with +-20% jitter.
pub fn retry_delay_ms(base_ms: i64, attempt: u32) -> i64 {
    let exponent = attempt.saturating_sub(1).min(30);
    let delay = base_ms.saturating_mul(1 << exponent).min(RETRY_DELAY_MAX_MS);
    let jitter = rand_fraction() * 0.4 - 0.2;
    ((delay as f64) * (1.0 + jitter)) as i64
}

/// A uniform number in [0, 1) from the OS's random source.
fn rand_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_webhook_takes_its_deliveries_with_it() {
        let dir = std::env::temp_dir().join(format!("marquee-outbox-forget-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let graph = Arc::new(Graph::open(&dir, graph::Options { cache_bytes: 8 << 20 }).unwrap());
            let admin = graph.register("root@example.com", "Root", Role::Admin, None).unwrap();
            let hook = |url: &str| {
                let events = vec!["event.published".to_string()];
                graph.create_webhook(admin.id, url.into(), events, "s".into()).unwrap()
            };
            let (kept, deleted) = (hook("https://example.com/a"), hook("https://example.com/b"));
            let event = graph
                .create_event(
                    admin.id,
                    graph::NewEvent {
                        title: "Gig".into(),
                        city: "Oslo".into(),
                        starts_at_ms: 4_102_444_800_000,
                        ..Default::default()
                    },
                )
                .unwrap();
            graph.publish_event(event.id).unwrap();
            let mut outbox = Outbox::new(graph.clone(), Arc::default()).unwrap();
            let rows = graph.store().reader(Outbox::ID);
            let entries = graph.store().read_log(0, 1_000).unwrap();
            crate::readers::apply_and_commit(&mut outbox, &rows, &entries).unwrap();
            let due = || rows.scan(&[DUE], false, usize::MAX).unwrap().len();
            assert_eq!(deliveries(&graph, deleted.id, 10).unwrap().len(), 1);
            assert_eq!(due(), 2, "one pending delivery per webhook");

            graph.delete_webhook(deleted.id).unwrap();
            let after = graph.store().read_log(entries.last().unwrap().seq, 1_000).unwrap();
            crate::readers::apply_and_commit(&mut outbox, &rows, &after).unwrap();
            assert_eq!(deliveries(&graph, deleted.id, 10).unwrap(), [], "its deliveries are gone");
            assert_eq!(due(), 1, "and so is its place in the due queue");
            assert_eq!(deliveries(&graph, kept.id, 10).unwrap().len(), 1, "the other webhook's stay");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn scratch_graph(name: &str) -> (std::path::PathBuf, Arc<Graph>, graph::model::User) {
        let dir = std::env::temp_dir().join(format!("marquee-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let graph = Arc::new(Graph::open(&dir, graph::Options { cache_bytes: 8 << 20 }).unwrap());
        let admin = graph.register("root@example.com", "Root", Role::Admin, None).unwrap();
        (dir, graph, admin)
    }

    /// A reader that starts behind the log (a crash, an older release's
    /// store) tells from the log which webhooks were made after a change:
    /// a webhook made between two publications hears of the second only.
    #[test]
    fn a_webhook_made_after_a_change_the_reader_has_yet_to_read_does_not_hear_of_it() {
        let (dir, graph, admin) = scratch_graph("made-after");
        {
            let hook = || {
                let events = vec!["event.published".to_string()];
                graph.create_webhook(admin.id, "https://example.com/h".into(), events, "s".into()).unwrap()
            };
            let publish = |title: &str| {
                let new = graph::NewEvent {
                    title: title.into(),
                    city: "Oslo".into(),
                    starts_at_ms: 4_102_444_800_000,
                    ..Default::default()
                };
                let event = graph.create_event(admin.id, new).unwrap();
                graph.publish_event(event.id).unwrap();
            };
            let early = hook();
            publish("First");
            let late = hook();
            publish("Second");
            let mut outbox = Outbox::new(graph.clone(), Arc::default()).unwrap();
            let rows = graph.store().reader(Outbox::ID);
            let entries = graph.store().read_log(0, 1_000).unwrap();
            crate::readers::apply_and_commit(&mut outbox, &rows, &entries).unwrap();
            let titles = |webhook: WebhookId| -> Vec<String> {
                let mut told: Vec<String> = deliveries(&graph, webhook, 10)
                    .unwrap()
                    .iter()
                    .map(|d| serde_json::from_str::<serde_json::Value>(&d.body).unwrap()["data"]["title"].to_string())
                    .collect();
                told.sort();
                told
            };
            assert_eq!(titles(early.id), ["\"First\"", "\"Second\""]);
            assert_eq!(titles(late.id), ["\"Second\""], "made after the first publication");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Without a row saying when a webhook's delivery last got through (one
    /// an older release delivered), its deliveries say it.
    #[test]
    fn when_a_delivery_last_got_through_is_found_in_the_deliveries_without_a_row() {
        let (dir, graph, admin) = scratch_graph("last-success");
        {
            let webhook = graph
                .create_webhook(admin.id, "https://example.com/h".into(), vec!["event.published".into()], "s".into())
                .unwrap();
            let rows = graph.store().reader(Outbox::ID);
            let delivery = |seq: u64, delivered_at_ms: Option<i64>| Delivery {
                id: format!("{seq}-{}", webhook.id),
                webhook: webhook.id.0,
                event: "event.published".into(),
                body: "{}".into(),
                attempt: 1,
                status_code: Some(200),
                delivered_at_ms,
                next_attempt_at_ms: None,
                made_at_ms: 1_000,
                error: None,
            };
            let mut batch = ReaderBatch::default();
            for (seq, delivered) in [(7, Some(2_000)), (9, Some(5_000)), (11, None)] {
                let value = serde_json::to_vec(&delivery(seq, delivered)).unwrap();
                batch.put(&rows, &delivery_key(webhook.id, seq), &value);
            }
            rows.commit(batch, None).unwrap();
            let deliverer = Deliverer::new(
                graph.clone(),
                DeliverySettings::default(),
                Arc::new(crate::metrics::Metrics::default()),
            )
            .unwrap();
            assert_eq!(deliverer.last_success(&rows, webhook.id).unwrap(), Some(5_000));
            assert_eq!(deliverer.last_success(&rows, WebhookId(webhook.id.0 + 1)).unwrap(), None);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_webhook_is_failing_only_when_nothing_got_through_since_the_given_up_change() {
        assert!(is_failing(None, 1_000), "nothing ever got through");
        assert!(is_failing(Some(999), 1_000), "the last success came before the change");
        assert!(!is_failing(Some(1_000), 1_000));
        assert!(!is_failing(Some(5_000), 1_000), "a later delivery got through: one payload is refused, not all");
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            sign(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn private_addresses_are_recognised() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "198.20.0.1"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/marquee", false).is_ok());
        assert!(check_url("ftp://example.com", false).is_err());
        assert!(check_url("https://user:pw@example.com", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/", false).is_err());
        assert!(check_url("http://[::1]/", false).is_err());
        assert!(check_url("http://localhost/", false).is_err());
        assert!(check_url("http://127.0.0.1:9000/", true).is_ok());
        assert!(check_url("not a url", true).is_err());
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_and_a_cap() {
        for attempt in 1..=ATTEMPTS_MAX {
            let nominal = (5_000i64 << (attempt - 1).min(30)).min(RETRY_DELAY_MAX_MS) as f64;
            let delay = retry_delay_ms(5_000, attempt) as f64;
            assert!(delay >= nominal * 0.8 - 1.0 && delay <= nominal * 1.2 + 1.0, "attempt {attempt}: {delay}");
        }
        let total: i64 = (1..ATTEMPTS_MAX).map(|a| (5_000i64 << (a - 1).min(30)).min(RETRY_DELAY_MAX_MS)).sum();
        assert!((18 * 3600 * 1000..30 * 3600 * 1000).contains(&total), "retries span about a day: {total} ms");
    }
}
