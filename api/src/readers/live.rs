//! The live reader: follows the durable log from the present on and feeds
//! the `availability` and `eventUpdated` subscriptions.
//!
//! Each watched event has one `watch` channel holding its ticket types'
//! latest sold/available and a version per ticket type; a subscriber sends
//! what changed since it last looked. A slow subscriber therefore skips
//! straight to the latest figures instead of queueing a backlog, memory
//! stays one snapshot per watched event, and publishing never waits for a
//! subscriber. Channels nobody watches any more are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use graph::ids::{EventId, TicketTypeId};
use graph::log::Record;
use graph::Graph;
use tokio::sync::watch;

/// One ticket type's figures and how often they changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Availability {
    /// Seats taken (confirmed plus live held).
    pub sold: u32,
    /// Seats left.
    pub available: u32,
    /// Bumped on every change.
    pub version: u64,
}

/// An event's ticket types, as last published.
pub type Snapshot = Arc<BTreeMap<TicketTypeId, Availability>>;

/// The channels subscriptions listen on.
#[derive(Default)]
pub struct LiveHub {
    availability: Mutex<HashMap<EventId, watch::Sender<Snapshot>>>,
    events: Mutex<HashMap<EventId, watch::Sender<u64>>>,
}

impl LiveHub {
    /// Listens to an event's availability; starts from its current figures.
    pub fn watch_availability(&self, event: EventId, current: impl FnOnce() -> Snapshot) -> watch::Receiver<Snapshot> {
        let mut channels = self.availability.lock().expect("live hub lock poisoned");
        match channels.get(&event) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(current());
                channels.insert(event, sender);
                receiver
            }
        }
    }

    /// Listens to an event's changes (a version number bumped per change).
    pub fn watch_event(&self, event: EventId) -> watch::Receiver<u64> {
        let mut channels = self.events.lock().expect("live hub lock poisoned");
        channels.entry(event).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Publishes a ticket type's new figures to the event's watchers.
    fn publish_availability(&self, event: EventId, ticket_type: TicketTypeId, sold: u32, capacity: u32) {
        let mut channels = self.availability.lock().expect("live hub lock poisoned");
        let Some(sender) = channels.get(&event) else { return };
        if sender.receiver_count() == 0 {
            channels.remove(&event);
            return;
        }
        sender.send_if_modified(|snapshot| {
            let previous = snapshot.get(&ticket_type).copied();
            let available = capacity.saturating_sub(sold);
            if previous.is_some_and(|p| p.sold == sold && p.available == available) {
                return false;
            }
            let version = previous.map_or(1, |p| p.version + 1);
            Arc::make_mut(snapshot).insert(ticket_type, Availability { sold, available, version });
            true
        });
    }

    fn publish_event(&self, event: EventId) {
        let mut channels = self.events.lock().expect("live hub lock poisoned");
        let Some(sender) = channels.get(&event) else { return };
        if sender.receiver_count() == 0 {
            channels.remove(&event);
            return;
        }
        sender.send_modify(|version| *version += 1);
    }

    /// Events with availability watchers (for metrics).
    pub fn watched_events(&self) -> usize {
        self.availability.lock().expect("live hub lock poisoned").len()
    }
}

/// The running live reader.
pub struct LiveReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LiveReader {
    /// Follows the log from the durable seq of now, publishing to `hub`.
    pub fn spawn(graph: Arc<Graph>, ledger: Arc<ledger::Ledger>, hub: Arc<LiveHub>) -> std::io::Result<LiveReader> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new().name("reader-live".into()).spawn(move || {
            graph::background::run_in_background();
            let store = graph.store();
            let mut at = store.durable_seq();
            while !stopping.load(Ordering::Acquire) {
                store.wait_durable_above(at, Duration::from_millis(200));
                let entries = match store.read_durable_log(at, super::BATCH_ENTRIES_MAX) {
                    Ok(entries) => entries,
                    Err(error) => {
                        tracing::error!(%error, "live reader cannot read the log");
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                for entry in &entries {
                    publish(&graph, &ledger, &hub, &entry.record);
                    at = entry.seq;
                }
                if !entries.is_empty() {
                    std::thread::sleep(super::LIVE_BATCH_PAUSE);
                }
            }
        })?;
        Ok(LiveReader { stop, thread: Some(thread) })
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn publish(graph: &Graph, ledger: &ledger::Ledger, hub: &LiveHub, record: &Record) {
    match record {
        Record::BookingHeld(booking)
        | Record::BookingConfirmed(booking)
        | Record::BookingCancelled(booking)
        | Record::BookingExpired(booking) => {
            if let Some(ticket_type) = graph.ticket_type(booking.ticket_type) {
                hub.publish_availability(
                    booking.event,
                    ticket_type.id,
                    ledger.sold(ticket_type.id),
                    ticket_type.capacity,
                );
            }
        }
        Record::TicketTypeAdded(ticket_type) => {
            hub.publish_availability(ticket_type.event, ticket_type.id, 0, ticket_type.capacity);
            hub.publish_event(ticket_type.event);
        }
        Record::EventUpdated(event) | Record::EventPublished(event) | Record::EventCancelled(event) => {
            hub.publish_event(event.id)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_that_does_not_look_sees_only_the_latest_figures() {
        let hub = LiveHub::default();
        let event = EventId(1);
        let ticket_type = TicketTypeId(7);
        let mut receiver = hub.watch_availability(event, || Arc::new(BTreeMap::new()));
        for sold in 1..=1_000 {
            hub.publish_availability(event, ticket_type, sold, 2_000);
        }
        assert!(receiver.has_changed().unwrap());
        let latest = receiver.borrow_and_update().clone();
        assert_eq!(latest[&ticket_type], Availability { sold: 1_000, available: 1_000, version: 1_000 });
        assert!(!receiver.has_changed().unwrap(), "a thousand changes, one snapshot to read");
        hub.publish_availability(event, ticket_type, 1_000, 2_000);
        assert!(!receiver.has_changed().unwrap(), "an unchanged figure is not news");
    }

    #[test]
    fn channels_nobody_watches_are_dropped() {
        let hub = LiveHub::default();
        let receiver = hub.watch_availability(EventId(1), || Arc::new(BTreeMap::new()));
        assert_eq!(hub.watched_events(), 1);
        drop(receiver);
        hub.publish_availability(EventId(1), TicketTypeId(1), 1, 10);
        assert_eq!(hub.watched_events(), 0);
    }
}
