//! `graph` owns Marquee's entities and the one log. Users, venues, events and
//! ticket types live here, persisted in an embedded sled store as rkyv
//! records; every change is a typed, sequenced [`log::Record`] appended in the
//! same atomic write as the rows it changes, and is acknowledged only after a
//! (shared, group-committed) flush. Events, ticket types and venues are also
//! held in an in-memory catalog that serves listings without touching disk.
//!
//! Promises: an email belongs to at most one account (case-insensitively);
//! every acknowledged write survives a crash; the catalog always equals the
//! stored rows. The crate knows nothing of HTTP or GraphQL.
//!
//! ```no_run
//! use graph::{Graph, model::Role};
//! let graph = Graph::open(std::path::Path::new("./data"), graph::Options::default())?;
//! let ada = graph.register("ada@example.com", "Ada", Role::Organizer, None)?;
//! assert_eq!(graph.user(ada.id)?.unwrap().name, "Ada");
//! # Ok::<(), graph::Error>(())
//! ```
#![deny(missing_docs)]

pub mod background;
mod behind;
mod catalog;
pub mod codec;
mod error;
pub mod ids;
pub mod import;
pub mod log;
pub mod model;
pub mod readers;
pub mod rules;
pub mod social;
pub mod stats;
mod store;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use foldhash::{HashMap, HashMapExt};

pub use catalog::{EventPage, EventQuery};
pub use error::Error;
pub use social::SocialGraph;
pub use store::{DurableWatcher, Store};

use catalog::Catalog;
use codec::{decode, encode};
use ids::{EventId, TicketTypeId, UserId, VenueId, WebhookId};
use log::{Follow, Record, SessionOpened, SessionRevoked, UserRegistered};
use model::{Booking, Event, EventStatus, Role, Session, TicketType, User, Venue, Webhook};
use store::{key, table, RoundWrites};

/// Settings for opening a graph.
#[derive(Clone, Debug)]
pub struct Options {
    /// sled's page cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options { cache_bytes: 256 * 1024 * 1024 }
    }
}

/// A new event's details, as given by its organizer.
#[derive(Clone, Debug, Default)]
pub struct NewEvent {
    /// Title.
    pub title: String,
    /// Longer text.
    pub description: Option<String>,
    /// Start, unix ms.
    pub starts_at_ms: i64,
    /// End, unix ms.
    pub ends_at_ms: Option<i64>,
    /// City.
    pub city: String,
    /// Venue, which must exist.
    pub venue: Option<VenueId>,
    /// Tags.
    pub tags: Vec<String>,
}

/// Changes to an event; `None` leaves a field as it is, and for the two
/// optional fields `Some(None)` clears them.
#[derive(Clone, Debug, Default)]
pub struct EventChanges {
    /// New title.
    pub title: Option<String>,
    /// New description, or `Some(None)` to clear it.
    pub description: Option<Option<String>>,
    /// New start.
    pub starts_at_ms: Option<i64>,
    /// New end, or `Some(None)` to clear it.
    pub ends_at_ms: Option<Option<i64>>,
    /// New tags.
    pub tags: Option<Vec<String>>,
}

/// A new ticket type's details.
#[derive(Clone, Debug)]
pub struct NewTicketType {
    /// Name.
    pub name: String,
    /// Price of one seat in minor units.
    pub price_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Seats for sale.
    pub capacity: i64,
    /// Most seats per user, if limited.
    pub per_user_limit: Option<i64>,
}

/// The graph: the store, id counters and the in-memory catalog.
pub struct Graph {
    store: Store,
    /// Serialises writes so checks (unique email, event state) and the commit
    /// that depends on them see the same state.
    write: Mutex<()>,
    next_user: AtomicU64,
    next_venue: AtomicU64,
    next_event: AtomicU64,
    next_ticket_type: AtomicU64,
    next_webhook: AtomicU64,
    catalog: RwLock<Catalog>,
    /// In-memory state beside the rows; the store applies every record to
    /// it in log order.
    memory: Arc<Memory>,
}

/// Most users kept in the read cache; beyond it, reads go to the store.
const CACHED_USERS_MAX: usize = 1 << 20;

/// What the graph keeps in memory beside the stored rows, kept current by
/// [`materialize`] as each record is written.
#[derive(Default)]
struct Memory {
    /// FOLLOWS and ATTENDS.
    social: RwLock<SocialGraph>,
    /// Every unexpired session, by token hash (every request looks one up).
    sessions: RwLock<HashMap<[u8; 32], Session>>,
    /// Users read before, by id, up to [`CACHED_USERS_MAX`].
    users: RwLock<HashMap<UserId, User>>,
    /// Every webhook, by id (few; the outbox consults them per record).
    webhooks: RwLock<HashMap<WebhookId, Webhook>>,
}

impl Graph {
    /// Opens the graph in `dir` (created if missing) and loads the catalog.
    pub fn open(dir: &Path, options: Options) -> Result<Graph, Error> {
        let memory = Arc::new(Memory::default());
        let kept = memory.clone();
        let store = Store::open(
            dir,
            options.cache_bytes,
            Box::new(move |record, payload, writes| materialize(record, payload, writes, &kept)),
            row_written_behind,
            &[table::BOOKING],
        )?;
        let catalog = load_catalog(&store)?;
        *memory.social.write().expect("social index lock poisoned") = load_social(&store)?;
        *memory.sessions.write().expect("session table lock poisoned") = load_sessions(&store)?;
        *memory.webhooks.write().expect("webhook table lock poisoned") = load_webhooks(&store)?;
        let webhook_high = match store.get(&key(table::WEBHOOK_ID_HIGH, &[]))? {
            Some(value) => <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::Corrupt("webhook id high"))?,
            None => 0,
        };
        let next_webhook = AtomicU64::new(store.max_id(table::WEBHOOK)?.max(webhook_high) + 1);
        Ok(Graph {
            next_webhook,
            memory,
            next_user: AtomicU64::new(store.max_id(table::USER)? + 1),
            next_venue: AtomicU64::new(store.max_id(table::VENUE)? + 1),
            next_event: AtomicU64::new(store.max_id(table::EVENT)? + 1),
            next_ticket_type: AtomicU64::new(store.max_id(table::TICKET_TYPE)? + 1),
            store,
            write: Mutex::new(()),
            catalog: RwLock::new(catalog),
        })
    }

    /// The underlying store: the log, its head, flushing.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.write.lock().expect("graph write lock poisoned")
    }

    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.catalog.read().expect("catalog lock poisoned")
    }

    fn catalog_mut(&self) -> std::sync::RwLockWriteGuard<'_, Catalog> {
        self.catalog.write().expect("catalog lock poisoned")
    }

    /// Commits one record durably: append + apply, then a shared flush.
    fn commit_durably(&self, record: Record) -> Result<(), Error> {
        let seq = self.store.commit(now_ms(), &[record])?;
        self.store.sync(seq)
    }

    /// Commits one record decided under the writer's `guard`, lets the
    /// writer go, then waits for the shared flush.
    fn commit_released(&self, guard: MutexGuard<'_, ()>, record: Record) -> Result<(), Error> {
        let seq = self.store.commit(now_ms(), &[record])?;
        drop(guard);
        self.store.sync(seq)
    }

    /// Creates an account. `password_hash` is a PHC string, or `None` for an
    /// imported account that must reset its password before signing in.
    pub fn register(&self, email: &str, name: &str, role: Role, password_hash: Option<String>) -> Result<User, Error> {
        let email = rules::email(email)?;
        let name = rules::required_text("name", name, rules::NAME_CHARS_MAX)?;
        let guard = self.writer();
        if self.store.get(&key(table::EMAIL, rules::email_key(&email).as_bytes()))?.is_some() {
            return Err(Error::EmailTaken);
        }
        let id = UserId(self.next_user.fetch_add(1, Ordering::Relaxed));
        if id.0 > u64::from(u32::MAX) {
            return Err(Error::Conflict("no more user ids: the graph holds at most 2^32 users".into()));
        }
        let user = User { id, email, name, role, created_at_ms: now_ms() };
        let seq = self
            .store
            .commit(now_ms(), &[Record::UserRegistered(UserRegistered { user: user.clone(), password_hash })])?;
        drop(guard);
        self.store.sync(seq)?;
        Ok(user)
    }

    /// A user by id.
    pub fn user(&self, id: UserId) -> Result<Option<User>, Error> {
        if let Some(user) = self.memory.users.read().expect("user cache lock poisoned").get(&id) {
            return Ok(Some(user.clone()));
        }
        // Read and cache under the writer lock, so a role change cannot land
        // between the read and the insert and leave a stale copy behind.
        let _guard = self.writer();
        let Some(user) = self.stored_user(id)? else {
            return Ok(None);
        };
        let mut users = self.memory.users.write().expect("user cache lock poisoned");
        if users.len() < CACHED_USERS_MAX {
            users.insert(id, user.clone());
        }
        Ok(Some(user))
    }

    /// A user as stored, bypassing the cache.
    fn stored_user(&self, id: UserId) -> Result<Option<User>, Error> {
        match self.store.get(&key(table::USER, &id.to_key()))? {
            Some(bytes) => decode(&bytes, "user").map(Some),
            None => Ok(None),
        }
    }

    /// A user and their password hash, by email (case-insensitive).
    pub fn user_by_email(&self, email: &str) -> Result<Option<(User, Option<String>)>, Error> {
        let Some(id) = self.store.get(&key(table::EMAIL, rules::email_key(email).as_bytes()))? else {
            return Ok(None);
        };
        let id = UserId(u64::from_be_bytes(id.as_ref().try_into().map_err(|_| Error::Corrupt("email index"))?));
        let Some(user) = self.user(id)? else {
            return Err(Error::Corrupt("email index"));
        };
        let hash = self.store.get(&key(table::PASSWORD, &id.to_key()))?;
        let hash = hash
            .map(|bytes| String::from_utf8(bytes.to_vec()))
            .transpose()
            .map_err(|_| Error::Corrupt("password hash"))?;
        Ok(Some((user, hash)))
    }

    /// Changes a user's role.
    pub fn set_role(&self, id: UserId, role: Role) -> Result<User, Error> {
        self.set_role_by(None, id, role)
    }

    /// Changes a user's role on an admin's behalf: `by` must still be an
    /// admin when the change is made (two admins demoting each other at
    /// once: the second finds it is one no longer), and may not demote
    /// itself, so an admin always remains.
    pub fn set_role_by(&self, by: Option<UserId>, id: UserId, role: Role) -> Result<User, Error> {
        let guard = self.writer();
        if let Some(by) = by {
            if by == id && role != Role::Admin {
                return Err(Error::Conflict(
                    "an admin cannot take away their own admin role: another admin (or `marquee user set-role`) can"
                        .into(),
                ));
            }
            if self.stored_user(by)?.is_none_or(|admin| admin.role != Role::Admin) {
                return Err(Error::Conflict("you are no longer an admin".into()));
            }
        }
        let mut user = self.stored_user(id)?.ok_or(Error::NotFound("user"))?;
        if user.role == role {
            return Ok(user);
        }
        user.role = role;
        self.commit_released(guard, Record::RoleSet(user.clone()))?;
        Ok(user)
    }

    /// Records a session for the token whose SHA-256 is `token_hash`.
    pub fn open_session(&self, token_hash: [u8; 32], user: UserId, expires_at_ms: i64) -> Result<(), Error> {
        let session = Session { user, expires_at_ms };
        self.commit_durably(Record::SessionOpened(SessionOpened { token_hash, session }))
    }

    /// Records many sessions in one durable write (bulk token minting).
    pub fn open_sessions(&self, sessions: &[([u8; 32], UserId)], expires_at_ms: i64) -> Result<(), Error> {
        if sessions.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = sessions
            .iter()
            .map(|&(token_hash, user)| {
                Record::SessionOpened(SessionOpened { token_hash, session: Session { user, expires_at_ms } })
            })
            .collect();
        let seq = self.store.commit(now_ms(), &records)?;
        self.store.sync(seq)
    }

    /// The session of a token hash, if it exists; sessions that had expired
    /// before the last start are forgotten, later ones are returned expired.
    pub fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, Error> {
        Ok(self.memory.sessions.read().expect("session table lock poisoned").get(token_hash).cloned())
    }

    /// Revokes a session; revoking an unknown one is a no-op.
    pub fn revoke_session(&self, token_hash: [u8; 32]) -> Result<(), Error> {
        if self.session(&token_hash)?.is_none() {
            return Ok(());
        }
        self.commit_durably(Record::SessionRevoked(SessionRevoked { token_hash }))
    }

    /// Creates a venue.
    pub fn create_venue(&self, by: UserId, name: &str, city: &str, capacity: Option<i64>) -> Result<Arc<Venue>, Error> {
        let name = rules::required_text("name", name, rules::NAME_CHARS_MAX)?;
        let city = rules::required_text("city", city, rules::CITY_CHARS_MAX)?;
        let capacity =
            capacity.map(|c| rules::within("capacity", c, 1, rules::VENUE_CAPACITY_MAX.into())).transpose()?;
        let guard = self.writer();
        let id = VenueId(self.next_venue.fetch_add(1, Ordering::Relaxed));
        let venue = Venue { id, name, city, capacity, created_by: by };
        let seq = self.store.commit(now_ms(), &[Record::VenueCreated(venue.clone())])?;
        let venue = self.catalog_mut().put_venue(venue);
        drop(guard);
        self.store.sync(seq)?;
        Ok(venue)
    }

    /// A venue by id.
    pub fn venue(&self, id: VenueId) -> Option<Arc<Venue>> {
        self.catalog().venue(id)
    }

    /// Creates a draft event owned by `organizer`.
    pub fn create_event(&self, organizer: UserId, new: NewEvent) -> Result<Arc<Event>, Error> {
        let mut event = Event {
            id: EventId(0),
            organizer,
            title: rules::required_text("title", &new.title, rules::TITLE_CHARS_MAX)?,
            description: checked_description(new.description)?,
            starts_at_ms: new.starts_at_ms,
            ends_at_ms: new.ends_at_ms,
            city: rules::required_text("city", &new.city, rules::CITY_CHARS_MAX)?,
            venue: new.venue,
            tags: rules::tags(&new.tags)?,
            status: EventStatus::Draft,
            created_at_ms: now_ms(),
        };
        check_times(event.starts_at_ms, event.ends_at_ms)?;
        if let Some(venue) = new.venue {
            let venue = self.venue(venue).ok_or(Error::NotFound("venue"))?;
            // Compared as the city filter compares ("zurich" is Zürich);
            // the event takes the venue's spelling.
            if catalog::folded(&venue.city) != catalog::folded(&event.city) {
                return Err(Error::invalid("city", format!("must be the venue's city, {}", venue.city)));
            }
            event.city.clone_from(&venue.city);
        }
        let guard = self.writer();
        event.id = EventId(self.next_event.fetch_add(1, Ordering::Relaxed));
        if event.id.0 > u64::from(u32::MAX) {
            return Err(Error::Conflict("no more event ids: the graph holds at most 2^32 events".into()));
        }
        self.save_event(guard, Record::EventCreated, event)
    }

    /// Applies `changes` to an event that is not cancelled. Changes that
    /// change nothing are no change: nothing is logged, nobody is told.
    pub fn update_event(&self, id: EventId, changes: EventChanges) -> Result<Arc<Event>, Error> {
        let guard = self.writer();
        let stored = self.event(id).ok_or(Error::NotFound("event"))?;
        let mut event = Event::clone(&*stored);
        if event.status.is_cancelled() {
            return Err(Error::Conflict("event is cancelled and can no longer be changed".into()));
        }
        if let Some(title) = changes.title {
            event.title = rules::required_text("title", &title, rules::TITLE_CHARS_MAX)?;
        }
        if let Some(description) = changes.description {
            event.description = checked_description(description)?;
        }
        if let Some(tags) = changes.tags {
            event.tags = rules::tags(&tags)?;
        }
        event.starts_at_ms = changes.starts_at_ms.unwrap_or(event.starts_at_ms);
        event.ends_at_ms = changes.ends_at_ms.unwrap_or(event.ends_at_ms);
        check_times(event.starts_at_ms, event.ends_at_ms)?;
        if event == *stored {
            return Ok(stored);
        }
        self.save_event(guard, Record::EventUpdated, event)
    }

    /// Puts a draft event on sale; publishing a published event is a no-op.
    pub fn publish_event(&self, id: EventId) -> Result<Arc<Event>, Error> {
        let guard = self.writer();
        let event = self.event(id).ok_or(Error::NotFound("event"))?;
        match event.status {
            EventStatus::Published => Ok(event),
            EventStatus::Cancelled | EventStatus::Withdrawn => {
                Err(Error::Conflict("event is cancelled and cannot be published".into()))
            }
            EventStatus::Draft => {
                let event = Event { status: EventStatus::Published, ..Event::clone(&*event) };
                self.save_event(guard, Record::EventPublished, event)
            }
        }
    }

    /// Calls an event off; cancelling a cancelled event is a no-op. A
    /// draft called off stays private (withdrawn).
    pub fn cancel_event(&self, id: EventId) -> Result<Arc<Event>, Error> {
        let guard = self.writer();
        let event = self.event(id).ok_or(Error::NotFound("event"))?;
        let status = match event.status {
            EventStatus::Cancelled | EventStatus::Withdrawn => return Ok(event),
            EventStatus::Draft => EventStatus::Withdrawn,
            EventStatus::Published => EventStatus::Cancelled,
        };
        let event = Event { status, ..Event::clone(&*event) };
        self.save_event(guard, Record::EventCancelled, event)
    }

    fn save_event(
        &self,
        guard: MutexGuard<'_, ()>,
        record: fn(Event) -> Record,
        event: Event,
    ) -> Result<Arc<Event>, Error> {
        let seq = self.store.commit(now_ms(), &[record(event.clone())])?;
        let event = self.catalog_mut().put_event(event);
        drop(guard);
        self.store.sync(seq)?;
        Ok(event)
    }

    /// An event by id, in any status.
    pub fn event(&self, id: EventId) -> Option<Arc<Event>> {
        self.catalog().event(id)
    }

    /// An event's status, without copying the event.
    pub fn event_status(&self, id: EventId) -> Option<model::EventStatus> {
        self.catalog().event_status(id)
    }

    /// An event's status and when its sales close (unix ms: its end, or its
    /// start when it has no end), without copying the event.
    pub fn event_sales(&self, id: EventId) -> Option<(model::EventStatus, i64)> {
        self.catalog().event_sales(id)
    }

    /// Recommendations (Q2) for `user` as the API serves them: the best
    /// `first` events by how many of the people `user` follows attend,
    /// counting only published events that start after `now_ms` and are not
    /// in `left_out` (those `user` holds seats of); ties go to the earlier
    /// start, then the smaller id.
    pub fn recommended_events(
        &self,
        user: UserId,
        first: usize,
        now_ms: i64,
        left_out: &std::collections::HashSet<EventId>,
    ) -> Vec<Arc<Event>> {
        let social = self.social();
        // One catalog lock for all the candidates, none copied.
        let catalog = self.catalog();
        let ranked = social.recommend(user, first, |id| {
            if left_out.contains(&id) {
                return None;
            }
            catalog.upcoming_start(id, now_ms).map(|start| (start, id))
        });
        ranked.into_iter().filter_map(|(id, _)| catalog.event(id)).collect()
    }

    /// Adds a ticket type to an event that is not cancelled.
    pub fn add_ticket_type(&self, event: EventId, new: NewTicketType) -> Result<Arc<TicketType>, Error> {
        let capacity = rules::within("capacity", new.capacity, 1, rules::TICKET_CAPACITY_MAX.into())?;
        let per_user_limit =
            new.per_user_limit.map(|limit| rules::within("perUserLimit", limit, 1, capacity.into())).transpose()?;
        let mut ticket_type = TicketType {
            id: TicketTypeId(0),
            event,
            name: rules::required_text("name", &new.name, rules::NAME_CHARS_MAX)?,
            price_cents: rules::within("priceCents", new.price_cents, 0, rules::PRICE_CENTS_MAX.into())?,
            currency: rules::currency(&new.currency)?,
            capacity,
            per_user_limit,
        };
        let guard = self.writer();
        let owner = self.event(event).ok_or(Error::NotFound("event"))?;
        if owner.status.is_cancelled() {
            return Err(Error::Conflict("event is cancelled; no ticket types can be added".into()));
        }
        let existing = self.catalog().ticket_types_of(event);
        if existing.len() >= rules::TICKET_TYPES_PER_EVENT_MAX {
            return Err(Error::invalid(
                "eventId",
                format!("an event has at most {} ticket types", rules::TICKET_TYPES_PER_EVENT_MAX),
            ));
        }
        check_beside(&ticket_type, &existing, owner.venue.and_then(|venue| self.venue(venue)).as_deref())?;
        ticket_type.id = TicketTypeId(self.next_ticket_type.fetch_add(1, Ordering::Relaxed));
        let seq = self.store.commit(now_ms(), &[Record::TicketTypeAdded(ticket_type.clone())])?;
        let ticket_type = self.catalog_mut().put_ticket_type(ticket_type);
        drop(guard);
        self.store.sync(seq)?;
        Ok(ticket_type)
    }

    /// A ticket type by id.
    pub fn ticket_type(&self, id: TicketTypeId) -> Option<Arc<TicketType>> {
        self.catalog().ticket_type(id)
    }

    /// An event's ticket types, in the order they were added.
    pub fn ticket_types(&self, event: EventId) -> Vec<Arc<TicketType>> {
        self.catalog().ticket_types_of(event)
    }

    /// Every stored booking, in id order (for the ledger's recovery):
    /// first waits until every booking committed so far has its row.
    pub fn bookings(&self) -> Result<impl Iterator<Item = Result<Booking, Error>> + '_, Error> {
        self.store.settle_rows_behind()?;
        Ok(stored_bookings(&self.store))
    }

    /// Published events matching the query, by start time then id.
    pub fn events(&self, query: &EventQuery) -> EventPage {
        self.catalog().published(query)
    }

    /// Events `organizer` owns, in every status, by start time then id.
    /// Only the query's `after` and `first` apply.
    pub fn organized_by(&self, organizer: UserId, query: &EventQuery) -> EventPage {
        self.catalog().organized_by(organizer, query)
    }
}

impl Graph {
    /// The social index, for relationship queries. Hold the guard briefly:
    /// writers (follows, confirmed bookings) wait for it.
    pub fn social(&self) -> RwLockReadGuard<'_, SocialGraph> {
        self.memory.social.read().expect("social index lock poisoned")
    }

    /// `follower` starts following `followee`; following twice changes
    /// nothing. Returns whether it changed anything.
    pub fn follow(&self, follower: UserId, followee: UserId) -> Result<bool, Error> {
        self.change_follow(follower, followee, true)
    }

    /// `follower` stops following `followee`; unfollowing someone not
    /// followed changes nothing. Returns whether it changed anything.
    pub fn unfollow(&self, follower: UserId, followee: UserId) -> Result<bool, Error> {
        self.change_follow(follower, followee, false)
    }

    fn change_follow(&self, follower: UserId, followee: UserId, follow: bool) -> Result<bool, Error> {
        if follower == followee {
            let why = if follow { "you cannot follow yourself" } else { "you cannot unfollow yourself" };
            return Err(Error::invalid("userId", why));
        }
        self.user(followee)?.ok_or(Error::NotFound("user"))?;
        let guard = self.writer();
        if self.social().follows(follower, followee) == follow {
            return Ok(false);
        }
        let edge = Follow { follower, followee };
        let record = if follow { Record::Followed(edge) } else { Record::Unfollowed(edge) };
        self.commit_released(guard, record)?;
        Ok(true)
    }
}

/// Most webhooks one account may have.
pub const WEBHOOKS_PER_OWNER_MAX: usize = 20;

impl Graph {
    /// Creates a webhook; `url`, `events` and `secret` are checked by the caller.
    pub fn create_webhook(
        &self,
        owner: UserId,
        url: String,
        events: Vec<String>,
        secret: String,
    ) -> Result<Webhook, Error> {
        let guard = self.writer();
        if self.webhooks_of(owner).len() >= WEBHOOKS_PER_OWNER_MAX {
            return Err(Error::Conflict(format!("an account has at most {WEBHOOKS_PER_OWNER_MAX} webhooks")));
        }
        let id = WebhookId(self.next_webhook.fetch_add(1, Ordering::Relaxed));
        let webhook = Webhook { id, owner, url, events, secret, active: true, created_at_ms: now_ms() };
        self.commit_released(guard, Record::WebhookCreated(webhook.clone()))?;
        Ok(webhook)
    }

    /// Never gives a webhook id up to `id` again (they are taken by stored
    /// deliveries of webhooks deleted before the highest id given was kept).
    pub fn webhook_ids_taken_through(&self, id: u64) {
        self.next_webhook.fetch_max(id.saturating_add(1), Ordering::Relaxed);
    }

    /// Deletes a webhook; false when there was none.
    pub fn delete_webhook(&self, id: WebhookId) -> Result<bool, Error> {
        let guard = self.writer();
        let Some(webhook) = self.webhook(id) else { return Ok(false) };
        self.commit_released(guard, Record::WebhookDeleted(webhook))?;
        Ok(true)
    }

    /// Marks a webhook inactive after its deliveries ran out of retries
    /// (nothing when it is gone).
    pub fn set_webhook_failing(&self, id: WebhookId) -> Result<(), Error> {
        match self.set_webhook_active(id, false) {
            Err(Error::NotFound(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Makes a failing webhook active again (a no-op for an active one).
    pub fn reactivate_webhook(&self, id: WebhookId) -> Result<Webhook, Error> {
        self.set_webhook_active(id, true)
    }

    /// Gives a webhook a new signing secret (checked by the caller): every
    /// attempt from now on, retries included, is signed with it.
    pub fn rotate_webhook_secret(&self, id: WebhookId, secret: String) -> Result<Webhook, Error> {
        let guard = self.writer();
        let mut webhook = self.webhook(id).ok_or(Error::NotFound("webhook"))?;
        webhook.secret = secret;
        self.commit_released(guard, Record::WebhookSecretRotated(webhook.clone()))?;
        Ok(webhook)
    }

    /// Sets a webhook's `active`, logged as failing or reactivated; a
    /// no-op when it already is so.
    fn set_webhook_active(&self, id: WebhookId, active: bool) -> Result<Webhook, Error> {
        let guard = self.writer();
        let mut webhook = self.webhook(id).ok_or(Error::NotFound("webhook"))?;
        if webhook.active == active {
            return Ok(webhook);
        }
        webhook.active = active;
        let record =
            if active { Record::WebhookReactivated(webhook.clone()) } else { Record::WebhookFailing(webhook.clone()) };
        self.commit_released(guard, record)?;
        Ok(webhook)
    }

    /// The highest id of a webhook there is now (0 for none).
    pub fn webhooks_created_through(&self) -> u64 {
        self.memory.webhooks.read().expect("webhook table lock poisoned").keys().map(|id| id.0).max().unwrap_or(0)
    }

    /// A webhook by id.
    pub fn webhook(&self, id: WebhookId) -> Option<Webhook> {
        self.memory.webhooks.read().expect("webhook table lock poisoned").get(&id).cloned()
    }

    /// An account's webhooks, by id.
    pub fn webhooks_of(&self, owner: UserId) -> Vec<Webhook> {
        let webhooks = self.memory.webhooks.read().expect("webhook table lock poisoned");
        let mut owned: Vec<Webhook> = webhooks.values().filter(|w| w.owner == owner).cloned().collect();
        owned.sort_by_key(|w| w.id);
        owned
    }

    /// Every webhook subscribed to `event_name`, failing or not, by id.
    pub fn webhooks_for(&self, event_name: &str) -> Vec<Webhook> {
        let webhooks = self.memory.webhooks.read().expect("webhook table lock poisoned");
        let mut found: Vec<Webhook> =
            webhooks.values().filter(|w| w.events.iter().any(|e| e == event_name)).cloned().collect();
        found.sort_by_key(|w| w.id);
        found
    }
}

fn checked_description(description: Option<String>) -> Result<Option<String>, Error> {
    let text =
        description.map(|d| rules::optional_text("description", &d, rules::DESCRIPTION_CHARS_MAX)).transpose()?;
    Ok(text.filter(|d| !d.is_empty()))
}

/// A new ticket type beside an event's `existing` ones: one currency per
/// event (so that its revenue adds up), names distinct (ignoring case), and
/// no more seats in all than its venue holds, when the venue says.
fn check_beside(new: &TicketType, existing: &[Arc<TicketType>], venue: Option<&Venue>) -> Result<(), Error> {
    if let Some(other) = existing.iter().find(|t| t.currency != new.currency) {
        let why = format!("must be {}, the currency of the event's other ticket types (one per event)", other.currency);
        return Err(Error::invalid("currency", why));
    }
    if existing.iter().any(|t| t.name.to_lowercase() == new.name.to_lowercase()) {
        return Err(Error::Conflict(format!("the event already has a ticket type named {:?}", new.name)));
    }
    if let Some((venue, holds)) = venue.and_then(|venue| venue.capacity.map(|holds| (venue, holds))) {
        let seats: u64 = existing.iter().map(|t| u64::from(t.capacity)).sum::<u64>() + u64::from(new.capacity);
        if seats > u64::from(holds) {
            let why =
                format!("the event's ticket types would hold {seats} seats, more than {} holds ({holds})", venue.name);
            return Err(Error::invalid("capacity", why));
        }
    }
    Ok(())
}

fn check_times(starts_at_ms: i64, ends_at_ms: Option<i64>) -> Result<(), Error> {
    match ends_at_ms {
        Some(ends) if ends <= starts_at_ms => Err(Error::invalid("endsAt", "must be after startsAt")),
        _ => Ok(()),
    }
}

/// Turns a record into the row writes it implies, and applies it to the
/// social index. The same function serves the live write path and any
/// replay of the log, so they cannot disagree. The store calls it in log
/// order, so the index moves through the same states as the log.
fn materialize(record: &Record, payload: &[u8], writes: &mut RoundWrites, memory: &Memory) {
    let social = || memory.social.write().expect("social index lock poisoned");
    let sessions = || memory.sessions.write().expect("session table lock poisoned");
    match record {
        Record::UserRegistered(registered) => {
            let user = &registered.user;
            writes.insert(key(table::USER, &user.id.to_key()), encode(user));
            writes.insert(key(table::EMAIL, rules::email_key(&user.email).as_bytes()), user.id.to_key().to_vec());
            if let Some(hash) = &registered.password_hash {
                writes.insert(key(table::PASSWORD, &user.id.to_key()), hash.as_bytes());
            }
        }
        Record::RoleSet(user) => {
            writes.insert(key(table::USER, &user.id.to_key()), payload);
            if let Some(cached) = memory.users.write().expect("user cache lock poisoned").get_mut(&user.id) {
                *cached = user.clone();
            }
        }
        Record::SessionOpened(opened) => {
            writes.insert(key(table::SESSION, &opened.token_hash), encode(&opened.session));
            sessions().insert(opened.token_hash, opened.session.clone());
        }
        Record::SessionRevoked(revoked) => {
            writes.remove(key(table::SESSION, &revoked.token_hash));
            sessions().remove(&revoked.token_hash);
        }
        Record::VenueCreated(venue) => writes.insert(key(table::VENUE, &venue.id.to_key()), payload),
        Record::EventCreated(event)
        | Record::EventUpdated(event)
        | Record::EventPublished(event)
        | Record::EventCancelled(event) => writes.insert(key(table::EVENT, &event.id.to_key()), payload),
        Record::TicketTypeAdded(ticket_type) => {
            writes.insert(key(table::TICKET_TYPE, &ticket_type.id.to_key()), payload)
        }
        Record::BookingHeld(booking)
        | Record::BookingConfirmed(booking)
        | Record::BookingCancelled(booking)
        | Record::BookingExpired(booking)
        | Record::TicketCheckedIn(booking) => {
            // The booking row is written behind the log: see row_written_behind.
            match record {
                Record::BookingConfirmed(_) => social().add_attendance(booking.user, booking.event),
                // Tickets are issued at confirmation and never taken back, so
                // a cancelled booking with tickets was confirmed until now.
                Record::BookingCancelled(_) if !booking.tickets.is_empty() => {
                    social().remove_attendance(booking.user, booking.event)
                }
                _ => {}
            }
        }
        Record::Followed(edge) | Record::Unfollowed(edge) => {
            let mut social = social();
            if matches!(record, Record::Followed(_)) {
                social.follow(edge.follower, edge.followee);
            } else {
                social.unfollow(edge.follower, edge.followee);
            }
            let row = key(table::FOLLOWING, &edge.follower.to_key());
            match social.following(edge.follower) {
                [] => writes.remove(row),
                following => writes.insert(row, codec::pack_ids(following)),
            }
        }
        Record::Imported(_) => {}
        Record::WebhookCreated(webhook)
        | Record::WebhookFailing(webhook)
        | Record::WebhookReactivated(webhook)
        | Record::WebhookSecretRotated(webhook) => {
            if matches!(record, Record::WebhookCreated(_)) {
                // Ids are given in order: the newest is the highest.
                writes.insert(key(table::WEBHOOK_ID_HIGH, &[]), webhook.id.to_key().to_vec());
            }
            writes.insert(key(table::WEBHOOK, &webhook.id.to_key()), payload);
            memory.webhooks.write().expect("webhook table lock poisoned").insert(webhook.id, webhook.clone());
        }
        Record::WebhookDeleted(webhook) => {
            writes.remove(key(table::WEBHOOK, &webhook.id.to_key()));
            memory.webhooks.write().expect("webhook table lock poisoned").remove(&webhook.id);
        }
    }
}

/// Booking rows are read only at start-up (the ledger keeps bookings in
/// memory), and a peak on-sale writes one per booking: they are written
/// behind the log (see [`behind`]), 16 bookings with consecutive ids to a
/// row.
fn row_written_behind(record: &Record) -> Option<(Vec<u8>, u64)> {
    match record {
        Record::BookingHeld(booking)
        | Record::BookingConfirmed(booking)
        | Record::BookingCancelled(booking)
        | Record::BookingExpired(booking)
        | Record::TicketCheckedIn(booking) => {
            Some((key(table::BOOKING, &booking.id.group().to_be_bytes()), booking.id.0))
        }
        _ => None,
    }
}

/// Every booking in the booking rows, in id order.
fn stored_bookings(store: &Store) -> impl Iterator<Item = Result<Booking, Error>> + '_ {
    store.scan(table::BOOKING).flat_map(|row| -> Vec<Result<Booking, Error>> {
        let group = row.and_then(|(_, group)| {
            let items = behind::decode_group(&group)?;
            Ok(items.into_iter().map(|(_, payload)| decode(payload, "booking")).collect())
        });
        group.unwrap_or_else(|error| vec![Err(error)])
    })
}

fn load_webhooks(store: &Store) -> Result<HashMap<WebhookId, Webhook>, Error> {
    let mut webhooks = HashMap::new();
    for row in store.scan(table::WEBHOOK) {
        let webhook: Webhook = decode(&row?.1, "webhook")?;
        webhooks.insert(webhook.id, webhook);
    }
    Ok(webhooks)
}

/// Rebuilds the social index from the stored rows: follow lists, imported
/// attendances and confirmed bookings.
fn load_social(store: &Store) -> Result<SocialGraph, Error> {
    let mut following = Vec::new();
    for row in store.scan(table::FOLLOWING) {
        let (key, value) = row?;
        put_list(&mut following, &key, codec::unpack_ids(&value, "follow list")?)?;
    }
    let mut attending = Vec::new();
    for row in store.scan(table::IMPORTED_ATTENDANCE) {
        let (key, value) = row?;
        put_list(&mut attending, &key, codec::unpack_ids(&value, "imported attendance")?)?;
    }
    let mut social = SocialGraph::from_lists(following, attending);
    for booking in stored_bookings(store) {
        let booking = booking?;
        if booking.status == model::BookingStatus::Confirmed {
            social.add_attendance(booking.user, booking.event);
        }
    }
    Ok(social)
}

/// Every session not yet expired. Expired ones stay on disk until a
/// revocation removes them; they are simply not loaded.
fn load_sessions(store: &Store) -> Result<HashMap<[u8; 32], Session>, Error> {
    let now = now_ms();
    let mut sessions = HashMap::new();
    for row in store.scan(table::SESSION) {
        let (key, value) = row?;
        let hash: [u8; 32] = key.get(1..).and_then(|k| k.try_into().ok()).ok_or(Error::Corrupt("session key"))?;
        let session: Session = decode(&value, "session")?;
        if session.expires_at_ms > now {
            sessions.insert(hash, session);
        }
    }
    Ok(sessions)
}

/// Puts one node's list at its slot (the id in the row key).
fn put_list(lists: &mut Vec<Vec<u32>>, key: &[u8], list: Vec<u32>) -> Result<(), Error> {
    let slot = usize::try_from(store::key_id(key, "adjacency key")?).map_err(|_| Error::Corrupt("adjacency key"))?;
    if slot > u32::MAX as usize {
        return Err(Error::Corrupt("adjacency key"));
    }
    if lists.len() <= slot {
        lists.resize_with(slot + 1, Vec::new);
    }
    lists[slot] = list;
    Ok(())
}

fn load_catalog(store: &Store) -> Result<Catalog, Error> {
    let mut catalog = Catalog::default();
    for row in store.scan(table::VENUE) {
        catalog.put_venue(decode(&row?.1, "venue")?);
    }
    for row in store.scan(table::EVENT) {
        catalog.put_event(decode(&row?.1, "event")?);
    }
    for row in store.scan(table::TICKET_TYPE) {
        catalog.put_ticket_type(decode(&row?.1, "ticket type")?);
    }
    Ok(catalog)
}

/// Wall-clock time, unix milliseconds.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
