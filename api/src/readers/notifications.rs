//! Notifications: a per-user inbox fed from the log, and a live feed for
//! the `notifications` subscription.
//!
//! Kinds: `booking.confirmed` and `booking.cancelled` to the booker;
//! `event.updated` and `event.cancelled` to everyone holding a live (held or
//! confirmed) booking of the event when the change happened; `friend.going`
//! to the friends (mutual follows) of a user whose booking is confirmed, at
//! most [`FRIEND_FANOUT_MAX`] of them. Each inbox keeps its newest
//! [`INBOX_MAX`] notifications; older ones are dropped.
//!
//! Rows (reader 2): `n|user|seq|k` a notification (its id is `seq-k`);
//! `h|event|user|booking` a live booking (who holds tickets).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use graph::ids::{BookingId, EventId, UserId};
use graph::log::{Entry, Record};
use graph::model::{Booking, Event};
use graph::readers::{ReaderBatch, ReaderRows};
use graph::Graph;
use serde::{Deserialize, Serialize};

use super::{key, u64_at, Reader};

/// Newest notifications kept per user.
pub const INBOX_MAX: usize = 200;
/// Most friends told about one confirmed booking.
pub const FRIEND_FANOUT_MAX: usize = 500;
/// Live notifications buffered for slow subscribers before they skip ahead.
pub const LIVE_BUFFER: usize = 1_024;

const INBOX: u8 = b'n';
const HOLDER: u8 = b'h';

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
    /// Live bookings by event: who holds tickets.
    holders: HashMap<EventId, HashSet<(UserId, BookingId)>>,
    /// Notifications per user inbox.
    inbox_sizes: HashMap<UserId, usize>,
    /// Created in the current batch (with their rows), published once it is
    /// committed.
    created: Vec<(Vec<u8>, Notification)>,
    /// Inboxes the current batch took past [`INBOX_MAX`], and by how many.
    overflow: HashMap<UserId, usize>,
    live: tokio::sync::broadcast::Sender<Arc<Notification>>,
}

impl Notifications {
    /// The reader, loaded from its rows; `live` receives every new notification.
    pub fn load(
        graph: Arc<Graph>,
        rows: &ReaderRows<'_>,
        live: tokio::sync::broadcast::Sender<Arc<Notification>>,
    ) -> Result<Notifications, graph::Error> {
        let mut reader = Notifications {
            graph,
            holders: HashMap::new(),
            inbox_sizes: HashMap::new(),
            created: Vec::new(),
            overflow: HashMap::new(),
            live,
        };
        reader.reload(rows)?;
        Ok(reader)
    }

    fn notify(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch, entry: &Entry, note: Note) {
        let Note { users, kind, message, event } = note;
        for (k, user) in users.into_iter().enumerate() {
            let k = u16::try_from(k).unwrap_or(u16::MAX);
            // Rows and checkpoint are written in one batch, so an entry
            // after the checkpoint (a replay after a crash included) never
            // finds its notification already stored.
            let row = inbox_key(user, entry.seq, k);
            let notification = Notification {
                id: format!("{}-{k}", entry.seq),
                user: user.0,
                kind: kind.to_string(),
                message: message.clone(),
                event: event.map(|e| e.0),
                created_at_ms: entry.at_ms,
                read: false,
            };
            batch.put(rows, &row, &serde_json::to_vec(&notification).expect("notifications serialise"));
            self.created.push((row, notification));
            let size = self.inbox_sizes.entry(user).or_default();
            if *size < INBOX_MAX {
                *size += 1;
            } else {
                *self.overflow.entry(user).or_default() += 1;
            }
        }
    }

    /// Removes the oldest notifications of every inbox this batch took
    /// past [`INBOX_MAX`]: stored ones first, then this batch's own. One
    /// scan per inbox and batch, however many arrived.
    fn trim_inboxes(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        for (user, excess) in std::mem::take(&mut self.overflow) {
            let prefix = key(&[&[INBOX], &user.to_key()]);
            let stored = rows.scan(&prefix, false, excess)?;
            for (row, _) in &stored {
                batch.remove(rows, row);
            }
            for _ in stored.len()..excess {
                let Some(index) = self.created.iter().position(|(_, n)| n.user == user.0) else { break };
                let (row, _) = self.created.remove(index);
                batch.remove(rows, &row);
            }
        }
        Ok(())
    }

    fn hold(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch, booking: &Booking, live: bool) {
        let row = key(&[&[HOLDER], &booking.event.to_key(), &booking.user.to_key(), &booking.id.to_key()]);
        let holders = self.holders.entry(booking.event).or_default();
        if live {
            holders.insert((booking.user, booking.id));
            batch.put(rows, &row, &[]);
        } else {
            holders.remove(&(booking.user, booking.id));
            batch.remove(rows, &row);
        }
    }

    fn holders_of(&self, event: EventId) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.holders.get(&event).into_iter().flatten().map(|(user, _)| *user).collect();
        users.sort_unstable();
        users.dedup();
        users
    }

    fn title(&self, event: EventId) -> String {
        self.graph.event(event).map_or_else(|| format!("event {event}"), |e| e.title.clone())
    }

    /// What one record tells whom.
    fn notes(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch, record: &Record) -> Vec<Note> {
        match record {
            Record::BookingHeld(booking) => {
                self.hold(rows, batch, booking, true);
                Vec::new()
            }
            Record::BookingConfirmed(booking) => {
                self.hold(rows, batch, booking, true);
                self.confirmed(booking)
            }
            Record::BookingCancelled(booking) => {
                self.hold(rows, batch, booking, false);
                let message = format!("Your booking {} for {} was cancelled.", booking.id, self.title(booking.event));
                vec![Note { users: vec![booking.user], kind: "booking.cancelled", message, event: Some(booking.event) }]
            }
            Record::BookingExpired(booking) => {
                self.hold(rows, batch, booking, false);
                Vec::new()
            }
            Record::EventUpdated(event) => vec![self.event_note(event, "event.updated", "has changed")],
            Record::EventCancelled(event) => vec![self.event_note(event, "event.cancelled", "was cancelled")],
            _ => Vec::new(),
        }
    }

    fn confirmed(&self, booking: &Booking) -> Vec<Note> {
        let title = self.title(booking.event);
        let seats =
            if booking.quantity == 1 { "1 ticket".to_string() } else { format!("{} tickets", booking.quantity) };
        let mut notes = vec![Note {
            users: vec![booking.user],
            kind: "booking.confirmed",
            message: format!("Your booking of {seats} for {title} is confirmed."),
            event: Some(booking.event),
        }];
        let friends: Vec<UserId> = {
            let social = self.graph.social();
            let followees = social.following(booking.user).iter().map(|&f| UserId(f.into()));
            followees.filter(|&f| social.follows(f, booking.user)).take(FRIEND_FANOUT_MAX).collect()
        };
        if !friends.is_empty() {
            let name = self.graph.user(booking.user).ok().flatten().map_or_else(|| "A friend".into(), |u| u.name);
            let message = format!("{name} is going to {title}.");
            notes.push(Note { users: friends, kind: "friend.going", message, event: Some(booking.event) });
        }
        notes
    }

    fn event_note(&self, event: &Event, kind: &'static str, what: &str) -> Note {
        Note {
            users: self.holders_of(event.id),
            kind,
            message: format!("{} {what}.", event.title),
            event: Some(event.id),
        }
    }
}

/// One message to several users.
struct Note {
    users: Vec<UserId>,
    kind: &'static str,
    message: String,
    event: Option<EventId>,
}

impl Notifications {
    /// The reader's id in storage (same as [`Reader::ID`]).
    pub const ID_OF: u8 = <Notifications as Reader>::ID;
}

impl Reader for Notifications {
    const ID: u8 = 2;
    const NAME: &'static str = "notifications";

    fn apply(&mut self, rows: &ReaderRows<'_>, entry: &Entry, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        for note in self.notes(rows, batch, &entry.record) {
            self.notify(rows, batch, entry, note);
        }
        Ok(())
    }

    fn finish(&mut self, rows: &ReaderRows<'_>, batch: &mut ReaderBatch) -> Result<(), graph::Error> {
        self.trim_inboxes(rows, batch)
    }

    fn committed(&mut self, _checkpoint: u64) {
        for (_, notification) in self.created.drain(..) {
            // No subscriber is not an error.
            let _ = self.live.send(Arc::new(notification));
        }
    }

    fn reload(&mut self, rows: &ReaderRows<'_>) -> Result<(), graph::Error> {
        self.created.clear();
        self.overflow.clear();
        self.holders.clear();
        for (key, _) in rows.scan(&[HOLDER], false, usize::MAX)? {
            let id = |at: usize| u64_at(&key, at, "holder key");
            self.holders.entry(EventId(id(1)?)).or_default().insert((UserId(id(9)?), BookingId(id(17)?)));
        }
        self.inbox_sizes.clear();
        for (key, _) in rows.scan(&[INBOX], false, usize::MAX)? {
            *self.inbox_sizes.entry(UserId(u64_at(&key, 1, "inbox key")?)).or_default() += 1;
        }
        // An inbox stored over the bound (by an older version) is trimmed
        // with the next batch.
        for (&user, size) in &mut self.inbox_sizes {
            if *size > INBOX_MAX {
                self.overflow.insert(user, *size - INBOX_MAX);
                *size = INBOX_MAX;
            }
        }
        Ok(())
    }
}

/// The row of notification `k` of log entry `seq` in `user`'s inbox.
fn inbox_key(user: UserId, seq: u64, k: u16) -> Vec<u8> {
    key(&[&[INBOX], &user.to_key(), &seq.to_be_bytes(), &k.to_be_bytes()])
}

/// A user's notifications, newest first, at most `first`.
pub fn inbox(graph: &Graph, user: UserId, first: usize, unread_only: bool) -> Result<Vec<Notification>, graph::Error> {
    let rows = graph.store().reader(Notifications::ID);
    let prefix = key(&[&[INBOX], &user.to_key()]);
    let mut found = Vec::new();
    for (_, value) in rows.scan(&prefix, true, INBOX_MAX * 2)? {
        let notification: Notification =
            serde_json::from_slice(&value).map_err(|_| graph::Error::Corrupt("notification"))?;
        if unread_only && notification.read {
            continue;
        }
        found.push(notification);
        if found.len() == first {
            break;
        }
    }
    Ok(found)
}

/// Marks a user's notifications read: the listed ids, or all; returns how
/// many changed. Ids that are not the user's are ignored.
pub fn mark_read(graph: &Graph, user: UserId, ids: Option<&[String]>) -> Result<usize, graph::Error> {
    let rows = graph.store().reader(Notifications::ID);
    let prefix = key(&[&[INBOX], &user.to_key()]);
    let wanted: Option<HashSet<&str>> = ids.map(|ids| ids.iter().map(String::as_str).collect());
    let mut changed = 0;
    for (row, value) in rows.scan(&prefix, false, usize::MAX)? {
        let mut notification: Notification =
            serde_json::from_slice(&value).map_err(|_| graph::Error::Corrupt("notification"))?;
        if notification.read || wanted.as_ref().is_some_and(|w| !w.contains(notification.id.as_str())) {
            continue;
        }
        notification.read = true;
        // The reader may drop this notification (a full inbox) while we
        // look: a plain write would bring it back, so replace it only if
        // it is still there as we read it.
        let read = serde_json::to_vec(&notification).expect("notifications serialise");
        if rows.replace(&row, &value, &read)? {
            changed += 1;
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

    fn confirmed(seq: u64, user: UserId) -> Entry {
        let booking = Booking {
            id: BookingId(seq),
            user,
            event: EventId(1),
            ticket_type: TicketTypeId(1),
            quantity: 1,
            unit_price_cents: 100,
            idempotency_key: format!("k{seq}"),
            status: BookingStatus::Confirmed,
            created_at_ms: 0,
            expires_at_ms: None,
            confirmed_at_ms: Some(0),
            tickets: Vec::new(),
        };
        Entry { seq, at_ms: seq as i64, record: Record::BookingConfirmed(Arc::new(booking)) }
    }

    fn ids(graph: &Graph, user: UserId) -> Vec<String> {
        inbox(graph, user, usize::MAX, false).unwrap().into_iter().map(|n| n.id).collect()
    }

    /// Batches of 1 to 3 * INBOX_MAX entries for two users: after each
    /// batch (and after a reload) every inbox holds exactly its newest
    /// INBOX_MAX notifications, however many arrived in one batch.
    #[test]
    fn an_inbox_keeps_its_newest_notifications_whatever_the_batch_size() {
        let dir = std::env::temp_dir().join(format!("marquee-inbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let graph = Arc::new(Graph::open(&dir, graph::Options { cache_bytes: 8 << 20 }).unwrap());
        let rows = graph.store().reader(Notifications::ID);
        let (live, _) = tokio::sync::broadcast::channel(LIVE_BUFFER);
        let mut reader = Notifications::load(graph.clone(), &rows, live.clone()).unwrap();
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
                entries.push(confirmed(seq, user));
            }
            apply_and_commit(&mut reader, &rows, &entries).unwrap();
            reader.committed(seq);
            if round == 4 {
                reader = Notifications::load(graph.clone(), &rows, live.clone()).unwrap();
            }
            for user in users {
                let newest: Vec<String> =
                    sent.get(&user).into_iter().flatten().rev().take(INBOX_MAX).cloned().collect();
                assert_eq!(ids(&graph, user), newest, "user {user} after batch {round} of {batch_size}");
            }
        }
        drop(reader);
        drop(graph);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
