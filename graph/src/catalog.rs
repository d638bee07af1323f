//! The in-memory catalog of venues, events and ticket types: loaded from the
//! store at start-up, updated on every write, and the source of listings.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crate::ids::{EventId, TicketTypeId, UserId, VenueId};
use crate::model::{Event, EventStatus, TicketType, Venue};

/// Filters and a page window over published events, ordered by start then id.
#[derive(Clone, Debug, Default)]
pub struct EventQuery {
    /// City, compared case-insensitively.
    pub city: Option<String>,
    /// A tag, compared case-insensitively.
    pub tag: Option<String>,
    /// Only events starting at or after this time (unix ms).
    pub from_ms: Option<i64>,
    /// Only events starting before this time (unix ms).
    pub to_ms: Option<i64>,
    /// Words that must all appear in the title, description, city or tags.
    pub text: Option<String>,
    /// Continue after this (start, id) position.
    pub after: Option<(i64, EventId)>,
    /// Page size.
    pub first: usize,
}

/// One page of events.
#[derive(Clone, Debug, Default)]
pub struct EventPage {
    /// The events of the page, in order.
    pub events: Vec<Arc<Event>>,
    /// Whether more match after the last one.
    pub has_next: bool,
    /// How many match the filters in all.
    pub total: usize,
}

struct Listed {
    event: Arc<Event>,
    /// Lower-case title, description, city and tags, for text search.
    haystack: String,
    city_key: String,
}

#[derive(Default)]
pub(crate) struct Catalog {
    events: HashMap<EventId, Listed>,
    published: BTreeSet<(i64, EventId)>,
    by_organizer: HashMap<UserId, BTreeSet<(i64, EventId)>>,
    ticket_types: HashMap<TicketTypeId, Arc<TicketType>>,
    event_ticket_types: HashMap<EventId, Vec<TicketTypeId>>,
    venues: HashMap<VenueId, Arc<Venue>>,
}

impl Catalog {
    pub(crate) fn put_venue(&mut self, venue: Venue) -> Arc<Venue> {
        let venue = Arc::new(venue);
        self.venues.insert(venue.id, venue.clone());
        venue
    }

    pub(crate) fn venue(&self, id: VenueId) -> Option<Arc<Venue>> {
        self.venues.get(&id).cloned()
    }

    /// Inserts or replaces an event, keeping every index in step.
    pub(crate) fn put_event(&mut self, event: Event) -> Arc<Event> {
        if let Some(old) = self.events.remove(&event.id) {
            let position = (old.event.starts_at_ms, old.event.id);
            self.published.remove(&position);
            if let Some(owned) = self.by_organizer.get_mut(&old.event.organizer) {
                owned.remove(&position);
            }
        }
        let position = (event.starts_at_ms, event.id);
        if event.status == EventStatus::Published {
            self.published.insert(position);
        }
        self.by_organizer.entry(event.organizer).or_default().insert(position);
        let event = Arc::new(event);
        let listed = Listed { haystack: haystack(&event), city_key: event.city.to_lowercase(), event: event.clone() };
        self.events.insert(event.id, listed);
        event
    }

    pub(crate) fn event(&self, id: EventId) -> Option<Arc<Event>> {
        self.events.get(&id).map(|listed| listed.event.clone())
    }

    pub(crate) fn event_status(&self, id: EventId) -> Option<crate::model::EventStatus> {
        self.events.get(&id).map(|listed| listed.event.status)
    }

    pub(crate) fn put_ticket_type(&mut self, ticket_type: TicketType) -> Arc<TicketType> {
        let ticket_type = Arc::new(ticket_type);
        let of_event = self.event_ticket_types.entry(ticket_type.event).or_default();
        if !of_event.contains(&ticket_type.id) {
            of_event.push(ticket_type.id);
        }
        self.ticket_types.insert(ticket_type.id, ticket_type.clone());
        ticket_type
    }

    pub(crate) fn ticket_type(&self, id: TicketTypeId) -> Option<Arc<TicketType>> {
        self.ticket_types.get(&id).cloned()
    }

    pub(crate) fn ticket_types_of(&self, event: EventId) -> Vec<Arc<TicketType>> {
        let ids = self.event_ticket_types.get(&event).map(Vec::as_slice).unwrap_or(&[]);
        ids.iter().filter_map(|id| self.ticket_types.get(id).cloned()).collect()
    }

    pub(crate) fn ticket_type_count(&self, event: EventId) -> usize {
        self.event_ticket_types.get(&event).map_or(0, Vec::len)
    }

    /// Published events matching `query`, one page of them.
    pub(crate) fn published(&self, query: &EventQuery) -> EventPage {
        let lower = match query.from_ms {
            Some(from) => Bound::Included((from, EventId(0))),
            None => Bound::Unbounded,
        };
        let upper = match query.to_ms {
            Some(to) => Bound::Excluded((to, EventId(0))),
            None => Bound::Unbounded,
        };
        if matches!((query.from_ms, query.to_ms), (Some(from), Some(to)) if from >= to) {
            return EventPage::default();
        }
        let filter = Filter::new(query);
        let matching =
            self.published.range((lower, upper)).filter(|position| filter.matches(&self.events[&position.1]));
        self.page(matching, query)
    }

    /// Every event `organizer` owns, in any status, one page of them.
    pub(crate) fn organized_by(&self, organizer: UserId, query: &EventQuery) -> EventPage {
        match self.by_organizer.get(&organizer) {
            Some(owned) => self.page(owned.iter(), query),
            None => EventPage::default(),
        }
    }

    fn page<'a>(&self, positions: impl Iterator<Item = &'a (i64, EventId)>, query: &EventQuery) -> EventPage {
        let mut page = EventPage::default();
        for position in positions {
            page.total += 1;
            if query.after.is_some_and(|after| *position <= after) {
                continue;
            }
            if page.events.len() < query.first {
                page.events.push(self.events[&position.1].event.clone());
            } else {
                page.has_next = true;
            }
        }
        page
    }
}

struct Filter {
    city: Option<String>,
    tag: Option<String>,
    words: Vec<String>,
}

impl Filter {
    fn new(query: &EventQuery) -> Filter {
        let words = query.text.as_deref().unwrap_or("").split_whitespace().map(str::to_lowercase).collect();
        Filter {
            city: query.city.as_deref().map(|c| c.trim().to_lowercase()),
            tag: query.tag.as_deref().map(|t| t.trim().to_lowercase()),
            words,
        }
    }

    fn matches(&self, listed: &Listed) -> bool {
        if self.city.as_ref().is_some_and(|city| *city != listed.city_key) {
            return false;
        }
        if self.tag.as_ref().is_some_and(|tag| !listed.event.tags.contains(tag)) {
            return false;
        }
        self.words.iter().all(|word| listed.haystack.contains(word.as_str()))
    }
}

fn haystack(event: &Event) -> String {
    let mut text = event.title.to_lowercase();
    for part in [event.description.as_deref().unwrap_or(""), &event.city] {
        text.push('\n');
        text.push_str(&part.to_lowercase());
    }
    for tag in &event.tags {
        text.push('\n');
        text.push_str(tag);
    }
    text
}
