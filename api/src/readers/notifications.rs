//! Notifications: a per-user inbox fed from the log, and a live feed for
//! the `notifications` subscription.
//!
//! Kinds: `booking.confirmed` and `booking.cancelled` to the booker;
//! `webhook.failing` to a webhook's owner when it is marked failing;
//! `event.updated` and `event.cancelled` to everyone holding a live (held or
//! confirmed) booking of the event when the change happened; `friend.going`
//! to the friends (mutual follows) of a user whose booking is confirmed, at
//! most [`FRIEND_FANOUT_MAX`] of them. Each inbox keeps its newest
//! [`INBOX_MAX`] notifications; older ones are dropped.
//!
//! A `booking.confirmed` is not stored: the inbox lists it from the booking
//! itself, which holds all it says (see [`DerivedConfirmations`]), and
//! stores only that its user read it (`r|user|booking`). Stores from before
//! keep the confirmations they had written as inbox rows.
//!
//! Rows (reader 2): `n|user|slot` a user's inbox, a ring of [`INBOX_MAX`]
//! slots (u16, BE) in which the newest notification takes the oldest one's
//! slot, so that a full inbox costs one write per notification and no scan;
//! each value holds the notification in a compact binary form (see
//! `encode`) with the log position that orders it (its id is `seq-k`, k
//! numbering the entry's notifications across all their users, so that no
//! two share an id).
//! Inbox rows are put ahead of the reader's batch (an on-sale writes one
//! per buyer, most of the rows the readers write), so a crash may keep some
//! of them without the checkpoint: on reload the reader notes, per user,
//! the newest stored notification past the checkpoint, and when it applies
//! those entries again it skips the notifications up to it.
//! `h|event|group` the live bookings (who holds tickets) of an event whose
//! ids share a group ([`BookingId::group`]: 16 bookings made one after
//! another), as `(booking (8 bytes, BE) | user (8 bytes, BE))*` in booking
//! order, so an on-sale rewrites one row per batch and group instead of
//! writing one per booking.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use graph::ids::{BookingId, EventId, UserId};
use graph::log::{Entry, Record};
use graph::model::{Booking, Event};
use graph::readers::{ReaderBatch, ReaderRows};
use graph::Graph;
use ledger::Ledger;
use serde::{Deserialize, Serialize};

use super::{key, u64_at, Reader};

/// Newest notifications kept per user.
pub const INBOX_MAX: usize = 200;
/// Most friends told about one confirmed booking.
pub const FRIEND_FANOUT_MAX: usize = 500;
/// Live notifications buffered per user for slow subscribers before they
/// skip ahead.
pub const LIVE_BUFFER: usize = 1_024;

const INBOX: u8 = b'n';
const HOLDER: u8 = b'h';
/// The row that says which confirmations are derived.
const DERIVED: u8 = b'c';
/// `r|user|booking`: a derived confirmation its user has read.
const READ_MARK: u8 = b'r';
/// A derived confirmation's id: this, then the booking's id.
const CONFIRMED_ID: &str = "confirmed-";
const CONFIRMED_KIND: &str = "booking.confirmed";

/// Slots in an inbox ring.
const SLOTS: u16 = INBOX_MAX as u16;
const _: () = assert!(INBOX_MAX > 0 && INBOX_MAX <= u16::MAX as usize);
/// Length of an inbox row's key, `n|user|slot`.
const RING_KEY_LEN: usize = 11;

/// One notification, as stored and served.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notification {
    /// `seq-k`: the log position that caused it and its number there.
    pub id: String,
    /// Who it is for.
    pub user: u64,
    /// e.g. `booking.confirmed`.
    pub kind: String,
    /// For people.
    pub message: String,
    /// The event it is about.
    pub event: Option<u64>,
    /// When it was created (the log entry's time), unix ms.
    pub created_at_ms: i64,
    /// Whether its user marked it read.
    pub read: bool,
}

/// The notifications reader.
pub struct Notifications {
    graph: Arc<Graph>,
    /// Live bookings by event, by booking id: who holds tickets.
    holders: HashMap<EventId, BTreeMap<BookingId, UserId>>,
    /// How many live bookings each holder has of each event (from
    /// `holders`).
    live_bookings: HashMap<(EventId, UserId), u32>,
    /// (event, booker) whose friends heard the booker is going, while the
    /// booker has a live booking of it: friends hear it once, not once per
    /// booking. (Not kept across a restart: then they may hear it again.)
    told_friends: HashSet<(EventId, UserId)>,
    /// Holder groups the current batch changed, written by `finish`.
    changed_holders: BTreeSet<(EventId, u64)>,
    /// Holder rows of the layout before groups (one per booking), removed
    /// by the next batch, which writes their groups.
    stale_holder_rows: Vec<Vec<u8>>,
    /// The slot each inbox's next notification takes (users with none
    /// yet are not here).
    next_slots: HashMap<UserId, u16>,
    /// Per user, the newest stored notification from past the checkpoint
    /// (put ahead of a batch that a crash lost): entries up to it are
    /// applied again without writing their notifications a second time.
    stored_ahead: HashMap<UserId, (u64, u16)>,
    /// Created in the current batch, published once it is committed.
    created: Vec<Notification>,
    live: Arc<LiveFeeds>,
    derived: Arc<DerivedConfirmations>,
}

impl Notifications {
    /// The reader, loaded from its rows; `live` receives every new
    /// notification; the confirmations `derived` names are not stored.
    pub fn load(
        graph: Arc<Graph>,
        rows: &ReaderRows<'_>,
        live: Arc<LiveFeeds>,
        derived: Arc<DerivedConfirmations>,
    ) -> Result<Notifications, graph::Error> {
        let mut reader = Notifications {
            graph,
            holders: HashMap::new(),
            live_bookings: HashMap::new(),
            told_friends: HashSet::new(),
            changed_holders: BTreeSet::new(),
            stale_holder_rows: Vec::new(),
            next_slots: HashMap::new(),
            stored_ahead: HashMap::new(),
            created: Vec::new(),
            live,
            derived,
        };
        reader.reload(rows)?;
        Ok(reader)
    }

    /// Notifies `note`'s users; their notifications are numbered from
    /// `first_k` within the entry (see [`Reader::apply`] below).
    fn notify(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch, entry: &Entry, note: Note, first_k: usize) {
        let Note { users, kind, message, event, derived_from } = note;
        for (k, user) in users.into_iter().enumerate() {
            let k = first_k + k;
            let k = u16::try_from(k).unwrap_or(u16::MAX);
            let to_store = derived_from.is_none();
            if to_store && self.stored_ahead.get(&user).is_some_and(|&stored| (entry.seq, k) <= stored) {
                continue;
            }
            let notification = Notification {
                // A derived one is listed from its booking, by its id.
                id: derived_from.map_or_else(|| format!("{}-{k}", entry.seq), confirmed_id),
                user: user.0,
                kind: kind.to_string(),
                message: message.clone(),
                event: event.map(|e| e.0),
                created_at_ms: entry.at_ms,
                read: false,
            };
            if to_store {
                // Rows are put in order, so an entry after the checkpoint (a
                // replay after a crash) takes the slot it took the first time.
                let next = self.next_slots.entry(user).or_default();
                let slot = *next;
                *next = (slot + 1) % SLOTS;
                batch.put_ahead(rows, &inbox_key(user, slot), &encode(entry.seq, k, &notification));
            }
            self.created.push(notification);
        }
    }

    fn hold(&mut self, booking: &Booking, live: bool) {
        let holders = self.holders.entry(booking.event).or_default();
        let counted = (booking.event, booking.user);
        if live {
            if holders.insert(booking.id, booking.user).is_none() {
                *self.live_bookings.entry(counted).or_default() += 1;
            }
        } else if holders.remove(&booking.id).is_some() {
            if let Some(count) = self.live_bookings.get_mut(&counted) {
                *count -= 1;
                if *count == 0 {
                    self.live_bookings.remove(&counted);
                    self.told_friends.remove(&counted);
                }
            }
        }
        self.changed_holders.insert((booking.event, booking.id.group()));
    }

    /// Writes every holder group the batch changed (and drops rows of the
    /// layout before groups).
    fn write_holders(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch) {
        for row in self.stale_holder_rows.drain(..) {
            batch.remove(rows, &row);
        }
        for (event, group) in std::mem::take(&mut self.changed_holders) {
            let row = key(&[&[HOLDER], &event.to_key(), &group.to_be_bytes()]);
            let mut value = Vec::new();
            let ids = BookingId::group_range(group);
            for (booking, user) in self.holders.get(&event).into_iter().flat_map(|held| held.range(ids.clone())) {
                value.extend_from_slice(&booking.to_key());
                value.extend_from_slice(&user.to_key());
            }
            if value.is_empty() {
                batch.remove(rows, &row);
            } else {
                batch.put(rows, &row, &value);
            }
        }
    }

    fn holders_of(&self, event: EventId) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.holders.get(&event).into_iter().flatten().map(|(_, user)| *user).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    fn title(&self, event: EventId) -> String {
        title(&self.graph, event)
    }

    /// What one record tells whom.
    fn notes(&mut self, record: &Record) -> Vec<Note> {
        match record {
            Record::BookingHeld(booking) => {
                self.hold(booking, true);
                Vec::new()
            }
            Record::BookingConfirmed(booking) => {
                self.hold(booking, true);
                self.confirmed(booking)
            }
            Record::BookingCancelled(booking) => {
                self.hold(booking, false);
                let message = format!("Your booking {} for {} was cancelled.", booking.id, self.title(booking.event));
                vec![Note {
                    users: vec![booking.user],
                    kind: "booking.cancelled",
                    message,
                    event: Some(booking.event),
                    derived_from: None,
                }]
            }
            Record::BookingExpired(booking) => {
                self.hold(booking, false);
                Vec::new()
            }
            Record::EventUpdated(event) => vec![self.event_note(event, "event.updated", "has changed")],
            Record::EventCancelled(event) => vec![self.event_note(event, "event.cancelled", "was cancelled")],
            // Its owner hears at once, rather than when they next look.
            // The host only: a URL's path or query may hold a credential.
            Record::WebhookFailing(webhook) => {
                let host = reqwest::Url::parse(&webhook.url).ok().and_then(|url| url.host_str().map(str::to_string));
                let message = format!(
                    "Your webhook {} to {} is failing: a delivery ran out of retries, and nothing more is sent \
                     until you reactivate it (reactivateWebhook sends everything it missed).",
                    webhook.id,
                    host.as_deref().unwrap_or("its endpoint")
                );
                vec![Note {
                    users: vec![webhook.owner],
                    kind: "webhook.failing",
                    message,
                    event: None,
                    derived_from: None,
                }]
            }
            _ => Vec::new(),
        }
    }

    fn confirmed(&mut self, booking: &Booking) -> Vec<Note> {
        let title = self.title(booking.event);
        let mut notes = vec![Note {
            users: vec![booking.user],
            kind: CONFIRMED_KIND,
            message: confirmed_message(booking.quantity, &title),
            event: Some(booking.event),
            derived_from: self.derived.derives(booking.id).then_some(booking.id),
        }];
        // Friends hear of the booker's going with the first confirmed one.
        let already_told = !self.told_friends.insert((booking.event, booking.user));
        let friends: Vec<UserId> = if already_told {
            Vec::new()
        } else {
            let social = self.graph.social();
            let followees = social.following(booking.user).iter().map(|&f| UserId(f.into()));
            followees.filter(|&f| social.follows(f, booking.user)).take(FRIEND_FANOUT_MAX).collect()
        };
        if !friends.is_empty() {
            let name = self.graph.user(booking.user).ok().flatten().map_or_else(|| "A friend".into(), |u| u.name);
            let message = format!("{name} is going to {title}.");
            notes.push(Note {
                users: friends,
                kind: "friend.going",
                message,
                event: Some(booking.event),
                derived_from: None,
            });
        }
        notes
    }

    fn event_note(&self, event: &Event, kind: &'static str, what: &str) -> Note {
        Note {
            users: self.holders_of(event.id),
            kind,
            message: format!("{} {what}.", event.title),
            event: Some(event.id),
            derived_from: None,
        }
    }
}

/// The live feed of new notifications, by user: a subscriber is woken by
/// its own user's notifications only (one feed for everyone woke every
/// subscriber for each notification of anyone, thousands a second at an
/// on-sale's peak). Each user's feed keeps the newest [`LIVE_BUFFER`]; a
/// subscriber further behind skips ahead (the inbox keeps them all).
#[derive(Default)]
pub struct LiveFeeds {
    by_user: std::sync::Mutex<HashMap<u64, Arc<Feed>>>,
}

/// One user's feed.
struct Feed {
    /// Notifications sent so far, and the newest of them.
    sent: std::sync::Mutex<(u64, std::collections::VecDeque<Arc<Notification>>)>,
    /// Bumped on each one, waking this user's subscribers.
    wake: tokio::sync::watch::Sender<()>,
}

impl LiveFeeds {
    /// A subscription to `user`'s notifications from now on.
    pub fn subscribe(&self, user: UserId) -> LiveFeed {
        let mut by_user = self.by_user.lock().expect("live feeds lock poisoned");
        if by_user.len() >= 1024 && by_user.len().is_power_of_two() {
            // Feeds nobody listens to any more.
            by_user.retain(|_, feed| feed.wake.receiver_count() > 0);
        }
        let feed = by_user
            .entry(user.0)
            .or_insert_with(|| {
                let (wake, _) = tokio::sync::watch::channel(());
                Arc::new(Feed { sent: std::sync::Mutex::new((0, Default::default())), wake })
            })
            .clone();
        let next = feed.sent.lock().expect("live feed lock poisoned").0;
        let woken = feed.wake.subscribe();
        LiveFeed { feed, woken, next }
    }

    /// Hands a new notification to its user's subscribers, if any.
    fn send(&self, notification: Notification) {
        let mut by_user = self.by_user.lock().expect("live feeds lock poisoned");
        let Some(feed) = by_user.get(&notification.user) else { return };
        if feed.wake.receiver_count() == 0 {
            by_user.remove(&notification.user);
            return;
        }
        let feed = feed.clone();
        drop(by_user);
        let mut sent = feed.sent.lock().expect("live feed lock poisoned");
        sent.0 += 1;
        sent.1.push_back(Arc::new(notification));
        if sent.1.len() > LIVE_BUFFER {
            sent.1.pop_front();
        }
        drop(sent);
        feed.wake.send_replace(());
    }
}

/// One subscriber's place in its user's feed.
pub struct LiveFeed {
    feed: Arc<Feed>,
    woken: tokio::sync::watch::Receiver<()>,
    /// The number of the next notification it takes.
    next: u64,
}

impl LiveFeed {
    /// The next notification (the oldest kept, when it fell behind); `None`
    /// once the feed is gone.
    pub async fn recv(&mut self) -> Option<Arc<Notification>> {
        loop {
            // Marked seen before looking, so a notification sent after the
            // look wakes the wait below.
            self.woken.borrow_and_update();
            {
                let mut sent = self.feed.sent.lock().expect("live feed lock poisoned");
                let (total, kept) = (sent.0, &sent.1);
                if self.next < total {
                    let first = total - kept.len() as u64;
                    self.next = self.next.max(first);
                    let notification = kept[(self.next - first) as usize].clone();
                    self.next += 1;
                    // The only subscriber: what it has taken need not be kept.
                    if self.feed.wake.receiver_count() == 1 {
                        let taken = (self.next - first) as usize;
                        sent.1.drain(..taken);
                    }
                    return Some(notification);
                }
            }
            self.woken.changed().await.ok()?;
        }
    }
}

/// One message to several users.
struct Note {
    users: Vec<UserId>,
    kind: &'static str,
    message: String,
    event: Option<EventId>,
    /// A confirmation the inbox lists from this booking: not stored.
    derived_from: Option<BookingId>,
}

/// An event's title, for messages.
fn title(graph: &Graph, event: EventId) -> String {
    graph.event(event).map_or_else(|| format!("event {event}"), |e| e.title.clone())
}

/// What a `booking.confirmed` says.
fn confirmed_message(quantity: u32, title: &str) -> String {
    let seats = if quantity == 1 { "1 ticket".to_string() } else { format!("{quantity} tickets") };
    format!("Your booking of {seats} for {title} is confirmed.")
}

/// The id of the confirmation derived from `booking`.
fn confirmed_id(booking: BookingId) -> String {
    format!("{CONFIRMED_ID}{booking}")
}

/// Whether `id` has the form of a notification's id: `seq-k` (two numbers)
/// for a stored one, `confirmed-` and a booking's id for a derived one.
pub fn is_notification_id(id: &str) -> bool {
    if let Some(booking) = id.strip_prefix(CONFIRMED_ID) {
        return booking.parse::<u64>().is_ok();
    }
    id.split_once('-').is_some_and(|(seq, k)| [seq, k].iter().all(|n| n.parse::<u64>().is_ok()))
}

/// Which bookings' `booking.confirmed` the inbox lists from the booking
/// itself instead of storing it.
///
/// At an on-sale every buyer's confirmation went to a different inbox row,
/// the most the readers wrote: with the reader's other work it came to an
/// eighth of the server's CPU at the peak. The booking already holds what
/// the notification says (whose, which event, how many seats, when), so the
/// inbox lists confirmations from the ledger, and a read mark is stored
/// when its user reads one. A confirmation is listed as soon as the ledger
/// holds it, as `myBookings` lists the booking; the live feed hears of it
/// once it is durable, from the log.
///
/// A store from before holds the confirmations it had written as inbox
/// rows. Its first start with this layout notes, in row `c`, where bookings
/// stood: the next [`ledger::issue_order`], and the bookings held then,
/// whose confirmations were still to come. Those, and every booking issued
/// later, are derived; the others keep their rows. The row is flushed
/// before anything is served, so the split never moves.
pub struct DerivedConfirmations {
    issued_from: u64,
    held_then: HashSet<BookingId>,
}

impl DerivedConfirmations {
    /// The split stored in the reader's rows, or, on the first start with
    /// this layout, the ledger's present one, stored and flushed. Call with
    /// the ledger recovered and before anything is booked.
    pub fn open(rows: &ReaderRows<'_>, ledger: &Ledger) -> Result<DerivedConfirmations, graph::Error> {
        if let Some(value) = rows.get(&[DERIVED])? {
            return DerivedConfirmations::decode(&value);
        }
        let derived = DerivedConfirmations {
            issued_from: ledger.next_issue_order(),
            held_then: ledger.held_bookings().into_iter().collect(),
        };
        let mut batch = ReaderBatch::default();
        batch.put(rows, &[DERIVED], &derived.encode());
        rows.commit(batch, None)?;
        rows.flush()?;
        Ok(derived)
    }

    /// Whether `booking`'s confirmation is listed from the booking.
    pub fn derives(&self, booking: BookingId) -> bool {
        ledger::issue_order(booking) >= self.issued_from || self.held_then.contains(&booking)
    }

    /// `issued_from u64 | held booking u64 *`, big-endian.
    fn encode(&self) -> Vec<u8> {
        let mut held: Vec<BookingId> = self.held_then.iter().copied().collect();
        held.sort_unstable();
        let mut value = Vec::with_capacity(8 * (1 + held.len()));
        value.extend_from_slice(&self.issued_from.to_be_bytes());
        for booking in held {
            value.extend_from_slice(&booking.to_key());
        }
        value
    }

    fn decode(value: &[u8]) -> Result<DerivedConfirmations, graph::Error> {
        let what = "derived confirmations";
        if !value.len().is_multiple_of(8) {
            return Err(graph::Error::Corrupt(what));
        }
        let issued_from = u64_at(value, 0, what)?;
        let held_then =
            value[8..].chunks_exact(8).map(|id| u64_at(id, 0, what).map(BookingId)).collect::<Result<_, _>>()?;
        Ok(DerivedConfirmations { issued_from, held_then })
    }
}

impl Notifications {
    /// The reader's id in storage (same as [`Reader::ID`]).
    pub const ID_OF: u8 = <Notifications as Reader>::ID;
}

impl Reader for Notifications {
    const ID: u8 = 2;
    const NAME: &'static str = "notifications";

    fn apply(&mut self, rows: &ReaderRows<'_>, entry: &Entry, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        // One numbering across the entry's notes, so that no two
        // notifications share an id (`seq-k`), whoever they are for.
        let mut first_k = 0;
        for note in self.notes(&entry.record) {
            let count = note.users.len();
            self.notify(rows, batch, entry, note, first_k);
            first_k += count;
        }
        Ok(())
    }

    fn finish(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        self.write_holders(rows, batch);
        Ok(())
    }

    fn committed(&mut self, checkpoint: u64) {
        if !self.stored_ahead.is_empty() {
            self.stored_ahead.retain(|_, &mut (seq, _)| seq > checkpoint);
        }
        for notification in self.created.drain(..) {
            self.live.send(notification);
        }
    }

    fn reload(&mut self, rows: &ReaderRows<'_>) -> Result<(), graph::Error> {
        self.created.clear();
        self.holders.clear();
        self.changed_holders.clear();
        self.stale_holder_rows.clear();
        for (key, value) in rows.scan(&[HOLDER], false, usize::MAX)? {
            let id = |at: usize| u64_at(&key, at, "holder key");
            let event = EventId(id(1)?);
            match key.len() {
                // h|event|group: (booking, user) pairs.
                17 => {
                    let pairs = value.chunks_exact(16);
                    if !pairs.remainder().is_empty() {
                        return Err(graph::Error::Corrupt("holder group"));
                    }
                    let held = self.holders.entry(event).or_default();
                    for pair in pairs {
                        held.insert(
                            BookingId(u64_at(pair, 0, "holder group")?),
                            UserId(u64_at(pair, 8, "holder group")?),
                        );
                    }
                }
                // h|event|user|booking, the layout before groups.
                25 => {
                    let booking = BookingId(id(17)?);
                    self.holders.entry(event).or_default().insert(booking, UserId(id(9)?));
                    self.changed_holders.insert((event, booking.group()));
                    self.stale_holder_rows.push(key);
                }
                _ => return Err(graph::Error::Corrupt("holder key")),
            }
        }
        self.live_bookings.clear();
        self.told_friends.clear();
        for (&event, held) in &self.holders {
            for &user in held.values() {
                *self.live_bookings.entry((event, user)).or_default() += 1;
            }
        }
        self.next_slots.clear();
        self.stored_ahead.clear();
        let checkpoint = rows.checkpoint()?;
        let mut relaid = ReaderBatch::default();
        let stored = rows.scan(&[INBOX], false, usize::MAX)?;
        for user_rows in stored.chunk_by(|a, b| a.0.get(..9) == b.0.get(..9)) {
            let user = UserId(u64_at(&user_rows[0].0, 1, "inbox key")?);
            let slots: Option<Vec<u16>> = user_rows.iter().map(|(row, _)| ring_slot(row)).collect();
            if let Some(slots) = slots {
                // The newest notification's slot is the one before the next.
                let mut newest = None;
                for (slot, (_, value)) in slots.into_iter().zip(user_rows) {
                    let (_, order, _) = placed(user, value)?;
                    if newest.is_none_or(|(newest, _)| order > newest) {
                        newest = Some((order, slot));
                    }
                }
                if let Some((order, slot)) = newest {
                    self.next_slots.insert(user, (slot + 1) % SLOTS);
                    if order.0 > checkpoint {
                        self.stored_ahead.insert(user, order);
                    }
                }
            } else {
                // Rows of the layout before rings (`n|user|seq|k`, JSON
                // values): the newest INBOX_MAX go to slots 0.. in order.
                let mut inbox = Vec::with_capacity(user_rows.len());
                for (row, value) in user_rows {
                    inbox.push(decode(user, value)?);
                    relaid.remove(rows, row);
                }
                inbox.sort_unstable_by_key(Stored::order);
                let kept = &inbox[inbox.len().saturating_sub(INBOX_MAX)..];
                for (slot, stored) in (0..SLOTS).zip(kept) {
                    let value = encode(stored.seq, stored.k, &stored.notification);
                    relaid.put(rows, &inbox_key(user, slot), &value);
                }
                self.next_slots.insert(user, (kept.len() % INBOX_MAX) as u16);
            }
        }
        if !relaid.is_empty() {
            // Same notifications, new rows: the checkpoint stays.
            rows.commit(relaid, None)?;
        }
        Ok(())
    }
}

/// The row of slot `slot` of `user`'s inbox ring.
fn inbox_key(user: UserId, slot: u16) -> Vec<u8> {
    key(&[&[INBOX], &user.to_key(), &slot.to_be_bytes()])
}

/// The ring slot an inbox row is in; `None` for a row of another layout.
fn ring_slot(row: &[u8]) -> Option<u16> {
    let slot = u16::from_be_bytes(row.get(9..RING_KEY_LEN)?.try_into().ok()?);
    (row.len() == RING_KEY_LEN && slot < SLOTS).then_some(slot)
}

/// A stored notification and its place in the log.
struct Stored {
    seq: u64,
    k: u16,
    notification: Notification,
}

impl Stored {
    /// Older first.
    fn order(&self) -> (u64, u16) {
        (self.seq, self.k)
    }
}

/// First byte of a notification stored by [`encode`]; values of the layout
/// before rings are JSON objects, which start with `{`.
const ENCODED: u8 = 1;
/// Bytes before an encoded notification's kind.
const ENCODED_HEAD: usize = 29;

/// The stored form of notification `k` of log entry `seq` (its user is in
/// the row's key): `1 | seq u64 | k u16 | flags u8 (1: read, 2: has an
/// event) | event u64 | created_at_ms i64 | kind length u8 | kind | message`,
/// integers big-endian.
fn encode(seq: u64, k: u16, notification: &Notification) -> Vec<u8> {
    let kind = notification.kind.as_bytes();
    let kind_len = u8::try_from(kind.len()).expect("notification kinds are short names");
    let flags = u8::from(notification.read) | if notification.event.is_some() { 2 } else { 0 };
    let mut value = Vec::with_capacity(ENCODED_HEAD + kind.len() + notification.message.len());
    value.push(ENCODED);
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend_from_slice(&k.to_be_bytes());
    value.push(flags);
    value.extend_from_slice(&notification.event.unwrap_or(0).to_be_bytes());
    value.extend_from_slice(&notification.created_at_ms.to_be_bytes());
    value.push(kind_len);
    value.extend_from_slice(kind);
    value.extend_from_slice(notification.message.as_bytes());
    value
}

/// A notification stored by [`encode`], borrowed from its value.
struct Encoded<'a> {
    seq: u64,
    k: u16,
    flags: u8,
    event: u64,
    created_at_ms: i64,
    kind: &'a str,
    message: &'a str,
}

impl<'a> Encoded<'a> {
    /// Reads and checks the whole of an encoded value.
    fn parse(value: &'a [u8]) -> Result<Encoded<'a>, graph::Error> {
        let corrupt = || graph::Error::Corrupt("notification");
        if value.first() != Some(&ENCODED) || value.len() < ENCODED_HEAD {
            return Err(corrupt());
        }
        let kind_end = ENCODED_HEAD + usize::from(value[28]);
        let kind = value.get(ENCODED_HEAD..kind_end).ok_or_else(corrupt)?;
        let text = |bytes: &'a [u8]| std::str::from_utf8(bytes).map_err(|_| corrupt());
        Ok(Encoded {
            seq: u64_at(value, 1, "notification")?,
            k: u16::from_be_bytes([value[9], value[10]]),
            flags: value[11],
            event: u64_at(value, 12, "notification")?,
            created_at_ms: u64_at(value, 20, "notification")? as i64,
            kind: text(kind)?,
            message: text(&value[kind_end..])?,
        })
    }

    fn read(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// A stored notification of `user`, in either stored form.
fn decode(user: UserId, value: &[u8]) -> Result<Stored, graph::Error> {
    let corrupt = || graph::Error::Corrupt("notification");
    if value.first() == Some(&b'{') {
        let notification: Notification = serde_json::from_slice(value).map_err(|_| corrupt())?;
        let (seq, k) = notification.id.split_once('-').ok_or_else(corrupt)?;
        let (seq, k) = (seq.parse().map_err(|_| corrupt())?, k.parse().map_err(|_| corrupt())?);
        return Ok(Stored { seq, k, notification });
    }
    let encoded = Encoded::parse(value)?;
    let notification = Notification {
        id: format!("{}-{}", encoded.seq, encoded.k),
        user: user.0,
        kind: encoded.kind.to_string(),
        message: encoded.message.to_string(),
        event: (encoded.flags & 2 != 0).then_some(encoded.event),
        created_at_ms: encoded.created_at_ms,
        read: encoded.read(),
    };
    Ok(Stored { seq: encoded.seq, k: encoded.k, notification })
}

/// Where an inbox's notification comes from.
enum Source {
    /// A stored notification: its row and value.
    Row { key: Vec<u8>, value: Vec<u8> },
    /// A confirmation derived from its booking.
    Booking(Arc<Booking>),
}

/// One of an inbox's notifications, not yet decoded.
struct Listed {
    created_at_ms: i64,
    read: bool,
    source: Source,
}

impl Listed {
    fn notification(self, graph: &Graph, user: UserId) -> Result<Notification, graph::Error> {
        match self.source {
            Source::Row { value, .. } => decode(user, &value).map(|stored| stored.notification),
            Source::Booking(booking) => Ok(Notification {
                id: confirmed_id(booking.id),
                user: user.0,
                kind: CONFIRMED_KIND.to_string(),
                message: confirmed_message(booking.quantity, &title(graph, booking.event)),
                event: Some(booking.event.0),
                created_at_ms: self.created_at_ms,
                read: self.read,
            }),
        }
    }
}

/// A user's newest [`INBOX_MAX`] notifications, stored and derived, newest
/// first.
fn listed(
    graph: &Graph,
    ledger: &Ledger,
    derived: &DerivedConfirmations,
    user: UserId,
) -> Result<Vec<Listed>, graph::Error> {
    let rows = graph.store().reader(Notifications::ID);
    // Stored ones newest first in the log's order.
    let mut stored = Vec::new();
    for (key, value) in rows.scan(&key(&[&[INBOX], &user.to_key()]), false, usize::MAX)? {
        let (created_at_ms, order, read) = placed(user, &value)?;
        stored.push((order, Listed { created_at_ms, read, source: Source::Row { key, value } }));
    }
    stored.sort_unstable_by_key(|(order, _)| std::cmp::Reverse(*order));
    // Derived ones newest first by confirmation time (then booking).
    let mut confirmed: Vec<Arc<Booking>> =
        ledger.bookings_of(user).into_iter().filter(|b| b.confirmed_at_ms.is_some() && derived.derives(b.id)).collect();
    confirmed.sort_unstable_by_key(|b| std::cmp::Reverse((b.confirmed_at_ms, b.id)));
    let mut marked = HashSet::new();
    if !confirmed.is_empty() {
        for (row, _) in rows.scan(&key(&[&[READ_MARK], &user.to_key()]), false, usize::MAX)? {
            marked.insert(BookingId(u64_at(&row, 9, "read mark")?));
        }
    }
    let derived = confirmed.into_iter().map(|booking| Listed {
        created_at_ms: booking.confirmed_at_ms.unwrap_or(booking.created_at_ms),
        read: marked.contains(&booking.id),
        source: Source::Booking(booking),
    });
    // Merged by creation time, each kept in its own order (a clock set
    // back does not reorder the log's).
    let (mut stored, mut derived) = (stored.into_iter().map(|(_, item)| item).peekable(), derived.peekable());
    let mut listed = Vec::new();
    while listed.len() < INBOX_MAX {
        let stored_next = match (stored.peek(), derived.peek()) {
            (Some(row), Some(booking)) => row.created_at_ms >= booking.created_at_ms,
            (row, booking) => row.is_some() || booking.is_none(),
        };
        match if stored_next { stored.next() } else { derived.next() } {
            Some(item) => listed.push(item),
            None => break,
        }
    }
    Ok(listed)
}

/// A user's notifications, newest first, at most `first`. Only those
/// served are decoded into notifications.
pub fn inbox(
    graph: &Graph,
    ledger: &Ledger,
    derived: &DerivedConfirmations,
    user: UserId,
    first: usize,
    unread_only: bool,
) -> Result<Vec<Notification>, graph::Error> {
    let listed = listed(graph, ledger, derived, user)?;
    let served = listed.into_iter().filter(|item| !(unread_only && item.read)).take(first);
    served.map(|item| item.notification(graph, user)).collect()
}

/// How many of a user's notifications are unread.
pub fn unread_count(
    graph: &Graph,
    ledger: &Ledger,
    derived: &DerivedConfirmations,
    user: UserId,
) -> Result<usize, graph::Error> {
    Ok(listed(graph, ledger, derived, user)?.iter().filter(|item| !item.read).count())
}

/// When a stored notification was created, where it sorts among its
/// inbox's rows, and whether it is read, checked whole but without copying
/// its text.
fn placed(user: UserId, value: &[u8]) -> Result<(i64, (u64, u16), bool), graph::Error> {
    if value.first() == Some(&ENCODED) {
        let encoded = Encoded::parse(value)?;
        return Ok((encoded.created_at_ms, (encoded.seq, encoded.k), encoded.read()));
    }
    let stored = decode(user, value)?;
    Ok((stored.notification.created_at_ms, stored.order(), stored.notification.read))
}

/// The read mark of the confirmation derived from `booking`.
fn read_mark_key(user: UserId, booking: BookingId) -> Vec<u8> {
    key(&[&[READ_MARK], &user.to_key(), &booking.to_key()])
}

/// Marks a user's notifications read: the listed ids, or all; returns how
/// many changed. Ids that are not the user's are ignored.
pub fn mark_read(
    graph: &Graph,
    ledger: &Ledger,
    derived: &DerivedConfirmations,
    user: UserId,
    ids: Option<&[String]>,
) -> Result<usize, graph::Error> {
    let rows = graph.store().reader(Notifications::ID);
    let wanted: Option<HashSet<&str>> = ids.map(|ids| ids.iter().map(String::as_str).collect());
    let is_wanted = |id: &str| wanted.as_ref().is_none_or(|wanted| wanted.contains(id));
    let mut changed = 0;
    for item in listed(graph, ledger, derived, user)? {
        if item.read {
            continue;
        }
        match item.source {
            Source::Row { key: row, value } => {
                let mut stored = decode(user, &value)?;
                if !is_wanted(&stored.notification.id) {
                    continue;
                }
                stored.notification.read = true;
                // The reader may put a newer notification in this slot while
                // we look: a plain write would bring the old one back, so
                // replace it only if it is still there as we read it.
                if rows.replace(&row, &value, &encode(stored.seq, stored.k, &stored.notification))? {
                    changed += 1;
                }
            }
            Source::Booking(booking) => {
                if is_wanted(&confirmed_id(booking.id)) && rows.insert_new(&read_mark_key(user, booking.id), &[])? {
                    changed += 1;
                }
            }
        }
    }
    if changed > 0 {
        graph.store().request_flush();
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use graph::ids::TicketTypeId;
    use graph::model::BookingStatus;

    use super::*;
    use crate::readers::apply_and_commit;

    fn note_for(user: u64, n: usize) -> Notification {
        Notification {
            id: format!("{n}-0"),
            user,
            kind: "booking.confirmed".into(),
            message: String::new(),
            event: None,
            created_at_ms: 0,
            read: false,
        }
    }

    /// A subscriber hears its own user's notifications only, in order; one
    /// that fell behind by more than the buffer skips to the oldest kept.
    #[tokio::test]
    async fn live_feeds_are_per_user_and_a_late_subscriber_skips_ahead() {
        let feeds = LiveFeeds::default();
        let mut ann = feeds.subscribe(UserId(1));
        let mut bob = feeds.subscribe(UserId(2));
        feeds.send(note_for(1, 1));
        feeds.send(note_for(3, 2)); // nobody listens for user 3
        feeds.send(note_for(2, 3));
        feeds.send(note_for(1, 4));
        assert_eq!(ann.recv().await.unwrap().id, "1-0");
        assert_eq!(ann.recv().await.unwrap().id, "4-0");
        let kept = |user: u64| feeds.by_user.lock().unwrap()[&user].sent.lock().unwrap().1.len();
        assert_eq!(kept(1), 0, "a lone subscriber's feed keeps nothing it has taken");
        assert_eq!(bob.recv().await.unwrap().id, "3-0");
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(50), bob.recv()).await;
        assert!(quiet.is_err(), "nothing else is bob's");
        for n in 0..LIVE_BUFFER + 5 {
            feeds.send(note_for(1, 100 + n));
        }
        assert_eq!(ann.recv().await.unwrap().id, "105-0", "skipped to the oldest kept");
        let mut ann_too = feeds.subscribe(UserId(1));
        feeds.send(note_for(1, 7));
        assert_eq!(ann_too.recv().await.unwrap().id, "7-0");
        assert!(kept(1) > 1, "kept for the other subscriber, still behind");
        // A subscriber that is gone frees its user's feed at the next send.
        drop(bob);
        feeds.send(note_for(2, 9));
        assert!(!feeds.by_user.lock().unwrap().contains_key(&2));
    }

    /// A scratch data directory, removed when dropped: bound first in a
    /// test, it goes last, after the graph and readers that use it.
    struct ScratchDir(std::path::PathBuf);

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A scratch data directory, its graph and a live feed.
    fn scratch(name: &str) -> (ScratchDir, Arc<Graph>, Arc<LiveFeeds>) {
        let dir = std::env::temp_dir().join(format!("marquee-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let graph = Arc::new(Graph::open(&dir, graph::Options { cache_bytes: 8 << 20 }).unwrap());
        (ScratchDir(dir), graph, Arc::new(LiveFeeds::default()))
    }

    /// A booking record of user `user` for `event`.
    fn booking_entry(seq: u64, id: u64, user: u64, event: u64, status: BookingStatus) -> Entry {
        let booking = Booking {
            id: BookingId(id),
            user: UserId(user),
            event: EventId(event),
            ticket_type: TicketTypeId(event),
            quantity: 1,
            unit_price_cents: 100,
            idempotency_key: format!("k{id}"),
            status,
            created_at_ms: 0,
            expires_at_ms: None,
            confirmed_at_ms: None,
            tickets: Vec::new(),
        };
        let booking = Arc::new(booking);
        let record = match status {
            BookingStatus::Held => Record::BookingHeld(booking),
            BookingStatus::Confirmed => Record::BookingConfirmed(booking),
            BookingStatus::Cancelled => Record::BookingCancelled(booking),
            BookingStatus::Expired => Record::BookingExpired(booking),
        };
        Entry { seq, at_ms: seq as i64, record }
    }

    /// The holders of an event are exactly the users with live bookings,
    /// after any batch and after a reload, with bookings spread over many
    /// holder groups, and rows of the layout before groups are taken over.
    #[test]
    fn holders_are_the_live_bookings_across_batches_reloads_and_layouts() {
        let (_dir, graph, live) = scratch("holders");
        let rows = graph.store().reader(Notifications::ID);
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        // Booking n (id n << 8, so 16 to a group) by user n % 37, event 1 or 2.
        let event_of = |n: u64| 1 + n % 2;
        let mut live_bookings: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut seq = 0;
        let mut entries = Vec::new();
        for n in 1..=200u64 {
            seq += 1;
            let status = if n % 3 == 0 { BookingStatus::Held } else { BookingStatus::Confirmed };
            entries.push(booking_entry(seq, n << 8, n % 37, event_of(n), status));
            live_bookings.insert(n, (n % 37, event_of(n)));
            // Every fifth booking ends in the same batch or the next.
            if n % 5 == 0 {
                seq += 1;
                let end = if n % 10 == 0 { BookingStatus::Cancelled } else { BookingStatus::Expired };
                entries.push(booking_entry(seq, n << 8, n % 37, event_of(n), end));
                live_bookings.remove(&n);
            }
            if n % 64 == 0 || n == 200 {
                apply_and_commit(&mut reader, &rows, &entries).unwrap();
                entries.clear();
            }
        }
        let expected = |event: u64| -> Vec<UserId> {
            let users: BTreeSet<UserId> =
                live_bookings.values().filter(|(_, e)| *e == event).map(|(user, _)| UserId(*user)).collect();
            users.into_iter().collect()
        };
        for event in [1, 2] {
            assert_eq!(reader.holders_of(EventId(event)), expected(event), "event {event}");
        }
        let reloaded = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        for event in [1, 2] {
            assert_eq!(reloaded.holders_of(EventId(event)), expected(event), "event {event} after a reload");
        }

        // A holder stored one row per booking, the layout before groups.
        let mut batch = ReaderBatch::default();
        batch.put(
            &rows,
            &key(&[&[HOLDER], &EventId(3).to_key(), &UserId(5).to_key(), &BookingId(9 << 8).to_key()]),
            &[],
        );
        rows.commit(batch, None).unwrap();
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        assert_eq!(reader.holders_of(EventId(3)), [UserId(5)]);
        apply_and_commit(&mut reader, &rows, &[booking_entry(seq + 1, 500 << 8, 6, 3, BookingStatus::Held)]).unwrap();
        let keys: Vec<usize> = rows.scan(&[HOLDER], false, usize::MAX).unwrap().iter().map(|(k, _)| k.len()).collect();
        assert!(keys.iter().all(|&len| len == 17), "only group rows remain: {keys:?}");
        let reloaded = Notifications::load(graph.clone(), &rows, live, stored_layout()).unwrap();
        assert_eq!(reloaded.holders_of(EventId(3)), [UserId(5), UserId(6)]);
        for event in [1, 2] {
            assert_eq!(reloaded.holders_of(EventId(event)), expected(event));
        }
    }

    /// The layout before derived confirmations: every one is stored.
    fn stored_layout() -> Arc<DerivedConfirmations> {
        Arc::new(DerivedConfirmations { issued_from: u64::MAX, held_then: HashSet::new() })
    }

    /// A ledger over `graph` without bookings: the entries of the tests
    /// above make none in it.
    fn no_bookings(graph: &Arc<Graph>) -> Ledger {
        Ledger::open(graph.clone(), ledger::Options { durable: false, ..Default::default() }).unwrap()
    }

    /// An inbox of stored notifications only.
    fn stored_inbox(graph: &Arc<Graph>, user: UserId, first: usize, unread_only: bool) -> Vec<Notification> {
        inbox(graph, &no_bookings(graph), &stored_layout(), user, first, unread_only).unwrap()
    }

    fn stored_mark_read(graph: &Arc<Graph>, user: UserId, ids: Option<&[String]>) -> usize {
        mark_read(graph, &no_bookings(graph), &stored_layout(), user, ids).unwrap()
    }

    fn ids(graph: &Arc<Graph>, user: UserId) -> Vec<String> {
        stored_inbox(graph, user, usize::MAX, false).into_iter().map(|n| n.id).collect()
    }

    /// Batches of 1 to 3 * INBOX_MAX entries for two users: after each
    /// batch (and after a reload) every inbox holds exactly its newest
    /// INBOX_MAX notifications, however many arrived in one batch.
    #[test]
    fn an_inbox_keeps_its_newest_notifications_whatever_the_batch_size() {
        let (_dir, graph, live) = scratch("inbox");
        let rows = graph.store().reader(Notifications::ID);
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        let users = [UserId(7), UserId(8)];
        let mut sent: HashMap<UserId, Vec<String>> = HashMap::new();
        let mut seq = 0;
        for (round, batch_size) in [1, 150, 60, 1, 3 * INBOX_MAX, 2, 450, 1].into_iter().enumerate() {
            let mut entries = Vec::new();
            for i in 0..batch_size {
                seq += 1;
                // Mostly user 7; user 8 gets every third entry.
                let user = users[usize::from(i % 3 == 2)];
                sent.entry(user).or_default().push(format!("{seq}-0"));
                entries.push(booking_entry(seq, seq, user.0, 1, BookingStatus::Confirmed));
            }
            apply_and_commit(&mut reader, &rows, &entries).unwrap();
            reader.committed(seq);
            if round == 4 {
                reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
            }
            for user in users {
                let newest: Vec<String> =
                    sent.get(&user).into_iter().flatten().rev().take(INBOX_MAX).cloned().collect();
                assert_eq!(ids(&graph, user), newest, "user {user} after batch {round} of {batch_size}");
            }
        }
        let keys = rows.scan(&[INBOX], false, usize::MAX).unwrap();
        assert!(keys.iter().all(|(row, _)| ring_slot(row).is_some()), "only ring rows");
        assert_eq!(keys.len(), 2 * INBOX_MAX, "one row per kept notification");
    }

    /// A crash can keep inbox rows put ahead of a batch without the
    /// batch's checkpoint (a prefix of them: none, some, enough to wrap a
    /// ring, all). Applying those entries again after a reload writes none
    /// of them twice, and every inbox ends as if there had been no crash.
    #[test]
    fn inbox_rows_kept_without_their_checkpoint_are_not_written_twice() {
        const COMMITTED: u64 = 50;
        const LAST: u64 = 400;
        let users = [UserId(7), UserId(8)];
        // Mostly user 7 (so the lost part wraps its ring); every third to 8.
        let user_of = |seq: u64| users[usize::from(seq % 3 == 2)];
        let entry = |seq: u64| booking_entry(seq, seq, user_of(seq).0, 1, BookingStatus::Confirmed);
        let entries = |seqs: std::ops::RangeInclusive<u64>| -> Vec<Entry> { seqs.map(entry).collect() };
        for kept_up_to in [COMMITTED, COMMITTED + 1, 120, 300, LAST] {
            let (_dir, graph, live) = scratch(&format!("inbox-ahead-{kept_up_to}"));
            let rows = graph.store().reader(Notifications::ID);
            let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
            apply_and_commit(&mut reader, &rows, &entries(1..=COMMITTED)).unwrap();
            // The crashed run: it put the rows of the entries up to
            // `kept_up_to` ahead, and its batch and checkpoint were lost.
            let mut lost = ReaderBatch::default();
            for entry in entries(COMMITTED + 1..=kept_up_to) {
                reader.apply(&rows, &entry, &mut lost).unwrap();
            }
            reader.finish(&rows, &mut lost).unwrap();
            rows.write_ahead(&mut lost).unwrap();
            drop((lost, reader));
            assert_eq!(rows.checkpoint().unwrap(), COMMITTED);

            let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
            apply_and_commit(&mut reader, &rows, &entries(COMMITTED + 1..=LAST)).unwrap();
            reader.committed(LAST);
            assert!(reader.stored_ahead.is_empty(), "nothing left to skip past the checkpoint");
            // And one more each, into the slot after the newest.
            apply_and_commit(&mut reader, &rows, &entries(LAST + 1..=LAST + 2)).unwrap();
            let mut kept = 0;
            for user in users {
                let sent = (1..=LAST + 2).rev().filter(|&seq| user_of(seq) == user);
                let newest: Vec<String> = sent.take(INBOX_MAX).map(|seq| format!("{seq}-0")).collect();
                assert_eq!(ids(&graph, user), newest, "user {user}, rows kept up to entry {kept_up_to}");
                kept += newest.len();
            }
            assert_eq!(rows.scan(&[INBOX], false, usize::MAX).unwrap().len(), kept, "one row per notification kept");
        }
    }

    /// Inboxes stored one row per notification with JSON values (the
    /// layout before rings) are laid out as rings on load: the newest
    /// INBOX_MAX of each kept in order with their read marks, the old rows
    /// gone, and new notifications take the oldest slots from there on.
    #[test]
    fn inboxes_of_the_layout_before_rings_become_rings_on_load() {
        let (_dir, graph, live) = scratch("inbox-layout");
        let rows = graph.store().reader(Notifications::ID);
        let mut old_rows = ReaderBatch::default();
        let (many, few) = (UserId(3), UserId(4));
        let mut sent: HashMap<UserId, Vec<String>> = HashMap::new();
        for seq in 1..=(INBOX_MAX as u64 + 40) {
            for (user, k) in [(many, 0u16), (few, 1)] {
                if user == few && seq % 20 != 0 {
                    continue;
                }
                let notification = Notification {
                    id: format!("{seq}-{k}"),
                    user: user.0,
                    kind: "booking.confirmed".into(),
                    message: format!("booking {seq}"),
                    event: (seq % 2 == 0).then_some(seq),
                    created_at_ms: seq as i64 * 1000,
                    read: seq % 3 == 0,
                };
                let row = key(&[&[INBOX], &user.to_key(), &seq.to_be_bytes(), &k.to_be_bytes()]);
                old_rows.put(&rows, &row, &serde_json::to_vec(&notification).unwrap());
                sent.entry(user).or_default().push(notification.id);
            }
        }
        rows.commit(old_rows, None).unwrap();
        let before: HashMap<String, Notification> = [many, few]
            .into_iter()
            .flat_map(|user| stored_inbox(&graph, user, usize::MAX, false))
            .map(|n| (n.id.clone(), n))
            .collect();
        // Listed as they are, the newest INBOX_MAX of each user.
        assert_eq!(before.len(), INBOX_MAX + (INBOX_MAX + 40) / 20, "the old layout reads as it is");

        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        let stored = rows.scan(&[INBOX], false, usize::MAX).unwrap();
        assert!(stored.iter().all(|(row, _)| ring_slot(row).is_some()), "only ring rows remain");
        for user in [many, few] {
            let newest: Vec<String> = sent[&user].iter().rev().take(INBOX_MAX).cloned().collect();
            let now = stored_inbox(&graph, user, usize::MAX, false);
            assert_eq!(now.iter().map(|n| n.id.clone()).collect::<Vec<_>>(), newest, "user {user}");
            for notification in now {
                assert_eq!(notification, before[&notification.id], "kept as it was");
            }
        }

        // One more each: the oldest kept one of the full inbox goes.
        let seq = INBOX_MAX as u64 + 100;
        let entries = [
            booking_entry(seq, seq, many.0, 1, BookingStatus::Confirmed),
            booking_entry(seq + 1, seq + 1, few.0, 1, BookingStatus::Confirmed),
        ];
        apply_and_commit(&mut reader, &rows, &entries).unwrap();
        for (user, seq) in [(many, seq), (few, seq + 1)] {
            sent.get_mut(&user).unwrap().push(format!("{seq}-0"));
            let newest: Vec<String> = sent[&user].iter().rev().take(INBOX_MAX).cloned().collect();
            assert_eq!(ids(&graph, user), newest, "user {user} after a new notification");
        }
    }

    /// A scratch graph with an event on sale ("Gig", one ticket type of 100
    /// seats, holds of a minute) and a durable ledger over it.
    fn shop(name: &str) -> (ScratchDir, Arc<Graph>, Arc<LiveFeeds>, Ledger, TicketTypeId) {
        let (dir, graph, live) = scratch(name);
        let organizer = graph.register("org@example.com", "Org", graph::model::Role::Organizer, None).unwrap();
        let gig = graph::NewEvent {
            title: "Gig".into(),
            city: "Oslo".into(),
            starts_at_ms: 4_102_444_800_000,
            ..graph::NewEvent::default()
        };
        let event = graph.create_event(organizer.id, gig).unwrap();
        let seats = graph::NewTicketType {
            name: "GA".into(),
            price_cents: 1000,
            currency: "EUR".into(),
            capacity: 100,
            per_user_limit: None,
        };
        let ticket_type = graph.add_ticket_type(event.id, seats).unwrap();
        graph.publish_event(event.id).unwrap();
        let options = ledger::Options { shards: 2, hold_ttl_ms: 60_000, durable: true };
        let ledger = Ledger::open(graph.clone(), options).unwrap();
        (dir, graph, live, ledger, ticket_type.id)
    }

    /// `user` books `quantity` seats at `now_ms` (held or confirmed).
    fn book(ledger: &Ledger, ticket_type: TicketTypeId, user: u64, quantity: u32, hold: bool, now_ms: i64) -> Booking {
        let key = format!("{user}-{now_ms}");
        let request = ledger::BookRequest { user: UserId(user), ticket_type, quantity, idempotency_key: key, hold };
        Booking::clone(&ledger.book(&request, now_ms).unwrap())
    }

    /// Applies the log's entries after `at` to `reader`; returns the last seq.
    fn catch_up(graph: &Graph, reader: &mut Notifications, at: u64) -> u64 {
        let entries = graph.store().read_durable_log(at, usize::MAX).unwrap();
        let last = entries.last().map_or(at, |entry| entry.seq);
        apply_and_commit(reader, &graph.store().reader(Notifications::ID), &entries).unwrap();
        reader.committed(last);
        last
    }

    /// On a new store every confirmation is derived: none is stored, the
    /// live feed hears of each with the id the inbox lists, and the inbox
    /// lists it from its booking among the stored notifications, newest
    /// first. Only read marks are stored, for the user's own confirmations
    /// only, and they last.
    #[tokio::test]
    async fn confirmations_are_listed_from_their_bookings_and_only_their_read_marks_stored() {
        let (_dir, graph, live, ledger, ticket_type) = shop("inbox-derived");
        let rows = graph.store().reader(Notifications::ID);
        let derived = Arc::new(DerivedConfirmations::open(&rows, &ledger).unwrap());
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), derived.clone()).unwrap();
        let mut ann_feed = live.subscribe(UserId(7));

        let pair = book(&ledger, ticket_type, 7, 2, false, 1_000);
        let held = book(&ledger, ticket_type, 7, 1, true, 2_000);
        let held = Booking::clone(&ledger.confirm(held.id, 3_000).unwrap());
        let gone = book(&ledger, ticket_type, 7, 1, false, 4_000);
        ledger.cancel(gone.id, 5_000).unwrap();
        let bobs = book(&ledger, ticket_type, 8, 1, false, 6_000);
        catch_up(&graph, &mut reader, 0);

        let stored = rows.scan(&[INBOX], false, usize::MAX).unwrap();
        let stored: Vec<String> =
            stored.iter().map(|(_, value)| decode(UserId(7), value).unwrap().notification.kind).collect();
        assert_eq!(stored, ["booking.cancelled"], "only the cancellation is stored");
        let confirmed = |b: &Booking| confirmed_id(b.id);
        let mut heard = Vec::new();
        for _ in 0..4 {
            let notification = ann_feed.recv().await.unwrap();
            heard.push((notification.id.clone(), notification.created_at_ms));
        }
        let cancelled_id = stored_inbox_ids(&graph, &ledger, &derived, UserId(7))[0].clone();
        assert_eq!(
            heard,
            [(confirmed(&pair), 1_000), (confirmed(&held), 3_000), (confirmed(&gone), 4_000), (cancelled_id, 5_000)]
        );

        let listed = inbox(&graph, &ledger, &derived, UserId(7), usize::MAX, false).unwrap();
        let ids: Vec<&str> = listed.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids[1..], [confirmed(&gone), confirmed(&held), confirmed(&pair)], "newest first");
        let first = &listed[3];
        assert_eq!(first.kind, "booking.confirmed");
        assert_eq!(first.message, "Your booking of 2 tickets for Gig is confirmed.");
        assert_eq!((first.event, first.created_at_ms, first.read), (Some(pair.event.0), 1_000, false));
        assert_eq!(listed[1].message, "Your booking of 1 ticket for Gig is confirmed.", "cancelled since, still told");

        let unread = |user: u64| unread_count(&graph, &ledger, &derived, UserId(user)).unwrap();
        assert_eq!(unread(7), 4);
        let named = [confirmed(&pair), confirmed(&bobs), "999-0".to_string()];
        assert_eq!(mark_read(&graph, &ledger, &derived, UserId(7), Some(&named)).unwrap(), 1, "bob's is not ann's");
        assert_eq!(mark_read(&graph, &ledger, &derived, UserId(7), Some(&named)).unwrap(), 0, "read already");
        let unread_ids: Vec<String> =
            inbox(&graph, &ledger, &derived, UserId(7), usize::MAX, true).unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(unread_ids, ids[..3]);
        assert_eq!(mark_read(&graph, &ledger, &derived, UserId(7), None).unwrap(), 3);
        assert_eq!((unread(7), unread(8)), (0, 1));

        // The marks and the split outlast a restart.
        let derived = DerivedConfirmations::open(&rows, &ledger).unwrap();
        let listed = inbox(&graph, &ledger, &derived, UserId(7), usize::MAX, false).unwrap();
        assert!(listed.iter().all(|n| n.read), "{listed:?}");
        assert_eq!(inbox(&graph, &ledger, &derived, UserId(8), 1, true).unwrap()[0].id, confirmed(&bobs));
    }

    fn stored_inbox_ids(graph: &Graph, ledger: &Ledger, derived: &DerivedConfirmations, user: UserId) -> Vec<String> {
        let listed = inbox(graph, ledger, derived, user, usize::MAX, false).unwrap();
        listed.into_iter().filter(|n| !n.id.starts_with(CONFIRMED_ID)).map(|n| n.id).collect()
    }

    /// A store from before derived confirmations: its first start with them
    /// keeps the confirmations it stored, derives the ones still to come
    /// (of bookings held then and of later ones), lists each once, and
    /// keeps that split across restarts, when the held booking is no longer
    /// held. A damaged split row is an error.
    #[test]
    fn the_first_start_with_derived_confirmations_keeps_those_stored_before() {
        let (_dir, graph, live, ledger, ticket_type) = shop("inbox-split");
        let rows = graph.store().reader(Notifications::ID);
        let mut before = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        let early = book(&ledger, ticket_type, 7, 1, false, 1_000);
        let held = book(&ledger, ticket_type, 7, 3, true, 2_000);
        let at = catch_up(&graph, &mut before, 0);
        drop(before);

        let derived = Arc::new(DerivedConfirmations::open(&rows, &ledger).unwrap());
        assert!(!derived.derives(early.id), "stored before");
        assert!(derived.derives(held.id), "its confirmation was still to come");
        let mut reader = Notifications::load(graph.clone(), &rows, live, derived.clone()).unwrap();
        let held = Booking::clone(&ledger.confirm(held.id, 3_000).unwrap());
        let later = book(&ledger, ticket_type, 7, 1, false, 4_000);
        assert!(derived.derives(later.id));
        catch_up(&graph, &mut reader, at);

        let stored = rows.scan(&[INBOX], false, usize::MAX).unwrap();
        assert_eq!(stored.len(), 1, "the confirmation stored before, and nothing since");
        let early_id = decode(UserId(7), &stored[0].1).unwrap().notification.id;
        let listed: Vec<String> =
            inbox(&graph, &ledger, &derived, UserId(7), usize::MAX, false).unwrap().into_iter().map(|n| n.id).collect();
        assert_eq!(listed, [confirmed_id(later.id), confirmed_id(held.id), early_id]);

        // Restarted: the split is the stored one, not where bookings stand now.
        let again = DerivedConfirmations::open(&rows, &ledger).unwrap();
        assert!(again.derives(held.id) && !again.derives(early.id) && again.derives(later.id));
        let fresh = DerivedConfirmations::open(&graph.store().reader(Notifications::ID + 100), &ledger).unwrap();
        assert!(!fresh.derives(held.id), "now confirmed, it would be taken as stored");

        let mut damaged = ReaderBatch::default();
        damaged.put(&rows, &[DERIVED], &[0, 0, 0, 1, 2]);
        rows.commit(damaged, None).unwrap();
        assert!(matches!(DerivedConfirmations::open(&rows, &ledger), Err(graph::Error::Corrupt(_))));
    }

    /// Marking read changes only the named notifications of the user,
    /// survives a reload, and a value that does not decode is an error,
    /// not a panic.
    #[test]
    fn marks_read_and_rejects_damaged_values() {
        let (_dir, graph, live) = scratch("inbox-read");
        let rows = graph.store().reader(Notifications::ID);
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone(), stored_layout()).unwrap();
        let entries: Vec<Entry> = (1..=5).map(|seq| booking_entry(seq, seq, 9, 1, BookingStatus::Confirmed)).collect();
        apply_and_commit(&mut reader, &rows, &entries).unwrap();
        let named = ["2-0".to_string(), "4-0".to_string(), "7-0".to_string()];
        assert_eq!(stored_mark_read(&graph, UserId(9), Some(&named)), 2);
        assert_eq!(stored_mark_read(&graph, UserId(10), None), 0, "another user's inbox is empty");
        let _reloaded = Notifications::load(graph.clone(), &rows, live, stored_layout()).unwrap();
        let read: Vec<(String, bool)> =
            stored_inbox(&graph, UserId(9), usize::MAX, false).into_iter().map(|n| (n.id, n.read)).collect();
        let expected: Vec<(String, bool)> = (1..=5).rev().map(|seq| (format!("{seq}-0"), seq % 2 == 0)).collect();
        assert_eq!(read, expected);
        let unread: Vec<String> = stored_inbox(&graph, UserId(9), 2, true).into_iter().map(|n| n.id).collect();
        assert_eq!(unread, ["5-0", "3-0"]);

        let good = encode(1, 0, &stored_inbox(&graph, UserId(9), 1, false)[0]);
        for damaged in [&good[..ENCODED_HEAD - 1], &good[..ENCODED_HEAD + 2], &[7u8, 1, 2][..], b"{\"id\":\"x\"}"] {
            assert!(matches!(decode(UserId(9), damaged), Err(graph::Error::Corrupt(_))), "{damaged:?}");
        }
    }
}
