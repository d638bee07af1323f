//! The in-memory catalog of venues, events and ticket types: loaded from the
//! store at start-up, updated on every write, and the source of listings.
//!
//! Published events are indexed by (start, id) overall, by city, by tag and
//! by word (title, description, city and tags, split into lower-case
//! alphanumeric words). A listing walks the smallest index that applies, in
//! start order, and checks the other filters on each event it meets; a text
//! word matches every word it is a prefix of ("jaz" finds "jazz").

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use foldhash::HashMap;
use icu_properties::props::{GeneralCategory, GeneralCategoryGroup};
use icu_properties::CodePointMapData;

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
    /// Words that must each begin a word of the title, description, city or
    /// tags (case-insensitive).
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
    /// Distinct lower-case words of title, description, city and tags, sorted.
    words: Vec<String>,
    /// Its city and tags as filters compare them: lower-case, accents
    /// dropped ("Zürich" is "zurich").
    city_key: String,
    tag_keys: Vec<String>,
}

/// A published event's place in start order.
type Position = (i64, EventId);

#[derive(Default)]
pub(crate) struct Catalog {
    events: HashMap<EventId, Listed>,
    published: BTreeSet<Position>,
    published_by_city: HashMap<String, BTreeSet<Position>>,
    published_by_tag: HashMap<String, BTreeSet<Position>>,
    published_by_word: BTreeMap<String, BTreeSet<Position>>,
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
            if let Some(owned) = self.by_organizer.get_mut(&old.event.organizer) {
                owned.remove(&position);
            }
            if old.event.status == EventStatus::Published {
                self.unlist(&old, position);
            }
        }
        let position = (event.starts_at_ms, event.id);
        self.by_organizer.entry(event.organizer).or_default().insert(position);
        let event = Arc::new(event);
        let listed = Listed {
            words: words_of(&event),
            city_key: folded(&event.city),
            tag_keys: event.tags.iter().map(|tag| folded(tag)).collect(),
            event: event.clone(),
        };
        if event.status == EventStatus::Published {
            self.list(&listed, position);
        }
        self.events.insert(event.id, listed);
        event
    }

    fn list(&mut self, listed: &Listed, position: Position) {
        self.published.insert(position);
        self.published_by_city.entry(listed.city_key.clone()).or_default().insert(position);
        for tag in &listed.tag_keys {
            self.published_by_tag.entry(tag.clone()).or_default().insert(position);
        }
        for word in &listed.words {
            self.published_by_word.entry(word.clone()).or_default().insert(position);
        }
    }

    fn unlist(&mut self, listed: &Listed, position: Position) {
        self.published.remove(&position);
        remove_from(&mut self.published_by_city, &listed.city_key, position);
        for tag in &listed.tag_keys {
            remove_from(&mut self.published_by_tag, tag, position);
        }
        for word in &listed.words {
            if let Some(set) = self.published_by_word.get_mut(word) {
                set.remove(&position);
                if set.is_empty() {
                    self.published_by_word.remove(word);
                }
            }
        }
    }

    pub(crate) fn event(&self, id: EventId) -> Option<Arc<Event>> {
        self.events.get(&id).map(|listed| listed.event.clone())
    }

    pub(crate) fn event_status(&self, id: EventId) -> Option<crate::model::EventStatus> {
        self.events.get(&id).map(|listed| listed.event.status)
    }

    /// An event's status and when its sales close: at its end, or at its
    /// start when it has no end.
    pub(crate) fn event_sales(&self, id: EventId) -> Option<(crate::model::EventStatus, i64)> {
        self.events
            .get(&id)
            .map(|listed| (listed.event.status, listed.event.ends_at_ms.unwrap_or(listed.event.starts_at_ms)))
    }

    /// When a published event that starts after `now_ms` starts; `None`
    /// for any other event.
    pub(crate) fn upcoming_start(&self, id: EventId, now_ms: i64) -> Option<i64> {
        let event = &self.events.get(&id)?.event;
        (event.status == EventStatus::Published && event.starts_at_ms > now_ms).then_some(event.starts_at_ms)
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

    /// Published events matching `query`, one page of them: walks the
    /// smallest index that applies, within the time window.
    pub(crate) fn published(&self, query: &EventQuery) -> EventPage {
        let filter = Filter::new(query);
        if matches!((query.from_ms, query.to_ms), (Some(from), Some(to)) if from >= to) || filter.has_no_words(query) {
            return EventPage::default();
        }
        let lower = match query.from_ms {
            Some(from) => Bound::Included((from, EventId(0))),
            None => Bound::Unbounded,
        };
        let upper = match query.to_ms {
            Some(to) => Bound::Excluded((to, EventId(0))),
            None => Bound::Unbounded,
        };
        let empty = BTreeSet::new();
        let mut sources: Vec<Source<'_>> = Vec::new();
        if let Some(city) = &filter.city {
            sources.push(Source::Set(self.published_by_city.get(city).unwrap_or(&empty)));
        }
        if let Some(tag) = &filter.tag {
            sources.push(Source::Set(self.published_by_tag.get(tag).unwrap_or(&empty)));
        }
        if let Some(word) = filter.words.iter().min_by_key(|word| self.word_prefix_len(word)) {
            sources.push(Source::Words(self.events_with_word_prefix(word)));
        }
        let source = sources.into_iter().min_by_key(Source::len).unwrap_or(Source::Set(&self.published));
        let events = &self.events;
        match &source {
            Source::Set(set) => {
                let matching = set.range((lower, upper)).filter(|position| filter.matches(&events[&position.1]));
                self.page(matching, query)
            }
            Source::Words(positions) => {
                let in_window = |position: &&Position| std::ops::RangeBounds::contains(&(lower, upper), *position);
                let matching =
                    positions.iter().filter(in_window).filter(|position| filter.matches(&events[&position.1]));
                self.page(matching, query)
            }
        }
    }

    /// Index words starting with `prefix`.
    fn words_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a BTreeSet<Position>)> {
        self.published_by_word
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(word, _)| word.starts_with(prefix))
    }

    /// An upper bound of the events a text word matches.
    fn word_prefix_len(&self, prefix: &str) -> usize {
        self.words_with_prefix(prefix).map(|(_, set)| set.len()).sum()
    }

    /// Published events with a word starting with `prefix`, in start order.
    fn events_with_word_prefix(&self, prefix: &str) -> Vec<Position> {
        let mut positions: Vec<Position> =
            self.words_with_prefix(prefix).flat_map(|(_, set)| set.iter().copied()).collect();
        positions.sort_unstable();
        positions.dedup();
        positions
    }

    /// Every event `organizer` owns, in any status, one page of them.
    pub(crate) fn organized_by(&self, organizer: UserId, query: &EventQuery) -> EventPage {
        match self.by_organizer.get(&organizer) {
            Some(owned) => self.page(owned.iter(), query),
            None => EventPage::default(),
        }
    }

    fn page<'a>(&self, positions: impl Iterator<Item = &'a Position>, query: &EventQuery) -> EventPage {
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

/// Where a listing's candidates come from.
enum Source<'a> {
    /// An index in start order.
    Set(&'a BTreeSet<Position>),
    /// Events with a word, gathered and sorted.
    Words(Vec<Position>),
}

impl Source<'_> {
    fn len(&self) -> usize {
        match self {
            Source::Set(set) => set.len(),
            Source::Words(positions) => positions.len(),
        }
    }
}

fn remove_from(index: &mut HashMap<String, BTreeSet<Position>>, key: &str, position: Position) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&position);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

struct Filter {
    city: Option<String>,
    tag: Option<String>,
    words: Vec<String>,
}

impl Filter {
    fn new(query: &EventQuery) -> Filter {
        Filter {
            city: query.city.as_deref().map(|c| folded(c.trim())),
            tag: query.tag.as_deref().map(|t| folded(t.trim())),
            words: words(query.text.as_deref().unwrap_or("")),
        }
    }

    /// Whether the query searches a text with no words in it ("🎸", "%"):
    /// that finds nothing (a blank text searches nothing, and finds all).
    fn has_no_words(&self, query: &EventQuery) -> bool {
        self.words.is_empty() && query.text.as_deref().is_some_and(|text| !text.trim().is_empty())
    }

    fn matches(&self, listed: &Listed) -> bool {
        if self.city.as_ref().is_some_and(|city| *city != listed.city_key) {
            return false;
        }
        if self.tag.as_ref().is_some_and(|tag| !listed.tag_keys.contains(tag)) {
            return false;
        }
        self.words.iter().all(|word| has_word_with_prefix(&listed.words, word))
    }
}

/// Distinct lower-case words of `text` (runs of letters, digits and the
/// marks on them), their accents dropped ("Café" is "cafe"), sorted.
/// Folded before it is split, and a mark left after folding stays in its
/// word (a Devanagari nukta): a mark is not a letter, and would split it.
fn words(text: &str) -> Vec<String> {
    let folded = folded(text);
    let mut words: Vec<&str> = folded.split(|c: char| !in_word(c)).filter(|w| !w.is_empty()).collect();
    words.sort_unstable();
    words.dedup();
    words.into_iter().map(str::to_string).collect()
}

/// Whether `c` belongs to a word: a letter, a number, or a mark on one,
/// or a symbol Unicode counts as alphabetic (the letters in squares and
/// circles, 🅰). One lookup in ICU's table first: `char::is_alphanumeric`
/// searches std's tables, and cost five times as much on Arabic text.
fn in_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    let category = CodePointMapData::<GeneralCategory>::new().get(c);
    [GeneralCategoryGroup::Letter, GeneralCategoryGroup::Number, GeneralCategoryGroup::Mark]
        .iter()
        .any(|group| group.contains(category))
        || c.is_alphanumeric()
}

/// `text` as filters and text search compare it: decomposed (Unicode NFKD,
/// so "é" precomposed and "e" followed by U+0301 are alike, and "ﬁ" is
/// "fi"), lower-case, its diacritical marks dropped (accents of Latin,
/// Greek and Cyrillic letters, Romanian "ș", Vietnamese "ộ"), the letters
/// that carry their mark inside them spelled plain (`ø`, `ł`, `đ`, `ß`),
/// and composed again (NFC): the marks of other scripts, which stay (the
/// Japanese voicing mark of "ガ", a Hangul syllable's parts), are one
/// character with their letter again, as typed.
pub(crate) fn folded(text: &str) -> String {
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    // Bounded: one character can decompose into eighteen (U+FDFA), and a
    // text of them would cost every search or write that folds it as much
    // as a text eighteen times as long. Twice as many characters as the
    // text has bytes leaves every real word whole.
    let bound = text.len().saturating_mul(2);
    let decomposed = icu_normalizer::DecomposingNormalizerBorrowed::new_nfkd().normalize_iter(text.chars()).take(bound);
    let mut plain = String::with_capacity(text.len());
    for c in decomposed.flat_map(char::to_lowercase) {
        if is_diacritical_mark(c) {
            continue;
        }
        match unaccented(c) {
            Some(letters) => plain.push_str(letters),
            None => plain.push(c),
        }
    }
    icu_normalizer::ComposingNormalizerBorrowed::new_nfc().normalize(&plain).into_owned()
}

/// The blocks of combining diacritical marks, which decomposition leaves
/// after the letters they accent.
fn is_diacritical_mark(c: char) -> bool {
    matches!(c, '\u{0300}'..='\u{036F}' | '\u{1AB0}'..='\u{1AFF}' | '\u{1DC0}'..='\u{1DFF}' | '\u{20D0}'..='\u{20FF}' | '\u{FE20}'..='\u{FE2F}')
}

/// A lower-case letter whose mark decomposition does not take off (`ø` is
/// `o`, `ß` is `ss`), and the final sigma (`ς` is `σ`, as a word typed
/// in capitals lower-cases); `None` for any other character.
fn unaccented(c: char) -> Option<&'static str> {
    Some(match c {
        'æ' => "ae",
        'đ' | 'ð' => "d",
        'ħ' => "h",
        'ı' => "i",
        'ł' => "l",
        'ø' => "o",
        'œ' => "oe",
        'ß' => "ss",
        'ŧ' => "t",
        'þ' => "th",
        'ς' => "σ",
        _ => return None,
    })
}

fn words_of(event: &Event) -> Vec<String> {
    let mut text = event.title.clone();
    for part in [event.description.as_deref().unwrap_or(""), &event.city] {
        text.push('\n');
        text.push_str(part);
    }
    for tag in &event.tags {
        text.push('\n');
        text.push_str(tag);
    }
    words(&text)
}

/// Whether sorted `words` hold a word starting with `prefix`.
fn has_word_with_prefix(words: &[String], prefix: &str) -> bool {
    let at = words.partition_point(|word| word.as_str() < prefix);
    words.get(at).is_some_and(|word| word.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CITIES: [&str; 3] = ["Oslo", "Berlin", "Rome"];
    const TAGS: [&str; 4] = ["jazz", "rock", "jazzfunk", "film"];
    const WORDS: [&str; 5] = ["Late", "Jazz", "brunch", "rock-opera", "Gala"];

    fn event(id: u64, start: i64, city: usize, tags: &[usize], words: &[usize], status: EventStatus) -> Event {
        Event {
            id: EventId(id),
            organizer: UserId(1),
            title: words.iter().map(|&w| WORDS[w]).collect::<Vec<_>>().join(" "),
            description: None,
            starts_at_ms: start,
            ends_at_ms: None,
            city: CITIES[city].into(),
            venue: None,
            tags: tags.iter().map(|&t| TAGS[t].to_string()).collect(),
            status,
            created_at_ms: 0,
        }
    }

    /// The reference: filter every published event one by one.
    fn brute_force(events: &[Event], query: &EventQuery) -> Vec<EventId> {
        let text = words(query.text.as_deref().unwrap_or(""));
        if text.is_empty() && query.text.as_deref().is_some_and(|text| !text.trim().is_empty()) {
            return Vec::new();
        }
        let mut matching: Vec<&Event> = events
            .iter()
            .filter(|e| e.status == EventStatus::Published)
            .filter(|e| query.city.as_ref().is_none_or(|c| folded(&e.city) == folded(c.trim())))
            .filter(|e| query.tag.as_ref().is_none_or(|t| e.tags.iter().any(|tag| folded(tag) == folded(t.trim()))))
            .filter(|e| query.from_ms.is_none_or(|from| e.starts_at_ms >= from))
            .filter(|e| query.to_ms.is_none_or(|to| e.starts_at_ms < to))
            .filter(|e| text.iter().all(|w| words_of(e).iter().any(|ew| ew.starts_with(w.as_str()))))
            .collect();
        matching.sort_by_key(|e| (e.starts_at_ms, e.id));
        matching.iter().map(|e| e.id).collect()
    }

    fn all_pages(catalog: &Catalog, query: &EventQuery) -> (Vec<EventId>, usize) {
        let mut seen = Vec::new();
        let mut query = EventQuery { first: 2, ..query.clone() };
        loop {
            let page = catalog.published(&query);
            seen.extend(page.events.iter().map(|e| e.id));
            let Some(last) = page.events.last() else { return (seen, page.total) };
            if !page.has_next {
                return (seen, page.total);
            }
            query.after = Some((last.starts_at_ms, last.id));
        }
    }

    fn status() -> impl Strategy<Value = EventStatus> {
        prop_oneof![
            4 => Just(EventStatus::Published),
            1 => Just(EventStatus::Draft),
            1 => Just(EventStatus::Cancelled),
            1 => Just(EventStatus::Withdrawn)
        ]
    }

    #[test]
    fn folding_is_bounded_however_far_a_text_decomposes() {
        // U+FDFA decomposes into eighteen characters.
        let text = "\u{FDFA}".repeat(200);
        let folded = folded(&text);
        assert!(folded.chars().count() <= 2 * text.len(), "{} characters", folded.chars().count());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn indexed_listings_equal_a_full_scan(
            specs in proptest::collection::vec(
                (0..20i64, 0..3usize, proptest::collection::vec(0..4usize, 0..3), proptest::collection::vec(0..5usize, 1..4), status()),
                0..30,
            ),
            updates in proptest::collection::vec((0..30usize, 0..20i64, status()), 0..10),
            city in proptest::option::of(0..3usize),
            tag in proptest::option::of(0..4usize),
            text in proptest::option::of(prop_oneof![Just("jaz"), Just("ROCK opera"), Just("gala late"), Just("polka"), Just("")]),
            window in proptest::option::of((0..20i64, 0..20i64)),
        ) {
            let mut catalog = Catalog::default();
            let mut events: Vec<Event> = Vec::new();
            for (i, (start, city, mut tags, words, status)) in specs.into_iter().enumerate() {
                tags.sort_unstable();
                tags.dedup();
                let e = event(i as u64 + 1, start, city, &tags, &words, status);
                catalog.put_event(e.clone());
                events.push(e);
            }
            // Changes move events between index entries (start, status).
            for (nth, start, status) in updates {
                if let Some(e) = events.get_mut(nth) {
                    e.starts_at_ms = start;
                    e.status = status;
                    catalog.put_event(e.clone());
                }
            }
            let query = EventQuery {
                city: city.map(|c| CITIES[c].to_uppercase()),
                tag: tag.map(|t| TAGS[t].to_string()),
                text: text.map(str::to_string),
                from_ms: window.map(|w| w.0),
                to_ms: window.map(|w| w.1),
                after: None,
                first: 100,
            };
            let expected = brute_force(&events, &query);
            let (listed, total) = all_pages(&catalog, &query);
            prop_assert_eq!(&listed, &expected);
            prop_assert_eq!(total, expected.len());
        }
    }
}
