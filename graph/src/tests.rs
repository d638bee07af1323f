use super::*;

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("marquee-graph-{name}-{}-{}", std::process::id(), now_ms()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> Graph {
    Graph::open(&dir.0, Options { cache_bytes: 8 << 20 }).unwrap()
}

fn event_at(starts_at_ms: i64, city: &str, tags: &[&str]) -> NewEvent {
    NewEvent {
        title: format!("Gig at {starts_at_ms}"),
        city: city.into(),
        starts_at_ms,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..NewEvent::default()
    }
}

#[test]
fn email_is_unique_case_insensitively() {
    let dir = TempDir::new("email");
    let graph = open(&dir);
    graph.register("Ada@Example.com", "Ada", Role::Attendee, None).unwrap();
    assert!(matches!(graph.register(" ada@example.COM", "Other", Role::Attendee, None), Err(Error::EmailTaken)));
    let (user, hash) = graph.user_by_email("ADA@example.com").unwrap().unwrap();
    assert_eq!(user.email, "Ada@Example.com");
    assert_eq!(hash, None);
}

#[test]
fn data_dir_is_locked_against_a_second_opener() {
    let dir = TempDir::new("lock");
    let _graph = open(&dir);
    match Graph::open(&dir.0, Options::default()) {
        Err(Error::Locked { holder, .. }) => assert_eq!(holder, std::process::id().to_string()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a locked data dir succeeded"),
    }
}

#[test]
fn an_admin_always_remains() {
    let dir = TempDir::new("admins");
    let graph = open(&dir);
    let ann = graph.register("ann@example.com", "Ann", Role::Admin, None).unwrap();
    let bob = graph.register("bob@example.com", "Bob", Role::Admin, None).unwrap();
    assert!(matches!(graph.set_role_by(Some(ann.id), ann.id, Role::Attendee), Err(Error::Conflict(_))), "not oneself");
    graph.set_role_by(Some(ann.id), bob.id, Role::Attendee).unwrap();
    // Bob's demotion of Ann, decided when he was still an admin, is made
    // after his own: he is one no longer.
    assert!(matches!(graph.set_role_by(Some(bob.id), ann.id, Role::Attendee), Err(Error::Conflict(_))));
    assert_eq!(graph.user(ann.id).unwrap().unwrap().role, Role::Admin);
    // The CLI (no admin behind it) may change anyone.
    graph.set_role(ann.id, Role::Organizer).unwrap();
}

#[test]
fn everything_written_is_there_after_reopen() {
    let dir = TempDir::new("reopen");
    let (user, event, ticket_type, venue);
    {
        let graph = open(&dir);
        user = graph.register("org@example.com", "Org", Role::Organizer, Some("$argon2id$h".into())).unwrap();
        graph.set_role(user.id, Role::Admin).unwrap();
        graph.open_session([7; 32], user.id, i64::MAX).unwrap();
        graph.open_session([8; 32], user.id, i64::MAX).unwrap();
        graph.revoke_session([8; 32]).unwrap();
        graph.open_session([9; 32], user.id, 99).unwrap();
        venue = graph.create_venue(user.id, "Hall", "Berlin", Some(500)).unwrap();
        let draft = graph
            .create_event(user.id, NewEvent { venue: Some(venue.id), ..event_at(1_000, "Berlin", &["Jazz"]) })
            .unwrap();
        ticket_type = graph
            .add_ticket_type(
                draft.id,
                NewTicketType {
                    name: "GA".into(),
                    price_cents: 2500,
                    currency: "EUR".into(),
                    capacity: 100,
                    per_user_limit: Some(4),
                },
            )
            .unwrap();
        event = graph.publish_event(draft.id).unwrap();
    }
    let graph = open(&dir);
    assert_eq!(graph.user(user.id).unwrap().unwrap().role, Role::Admin);
    assert_eq!(graph.user_by_email("org@example.com").unwrap().unwrap().1.as_deref(), Some("$argon2id$h"));
    assert_eq!(graph.session(&[7; 32]).unwrap().unwrap().user, user.id);
    assert_eq!(graph.session(&[8; 32]).unwrap(), None);
    assert_eq!(graph.session(&[9; 32]).unwrap(), None, "expired sessions are not loaded");
    assert_eq!(*graph.venue(venue.id).unwrap(), *venue);
    assert_eq!(*graph.event(event.id).unwrap(), *event);
    assert_eq!(
        graph.ticket_types(event.id).iter().map(|t| (**t).clone()).collect::<Vec<_>>(),
        vec![(*ticket_type).clone()]
    );
    assert_eq!(graph.events(&EventQuery { first: 10, ..EventQuery::default() }).total, 1);
    // Ids keep counting after a restart instead of reusing old ones.
    let next = graph.register("second@example.com", "Second", Role::Attendee, None).unwrap();
    assert!(next.id > user.id);
    assert!(graph.store().head_seq() >= 10);
}

#[test]
fn listings_hold_published_events_in_start_order_with_filters() {
    let dir = TempDir::new("list");
    let graph = open(&dir);
    let org = graph.register("o@example.com", "O", Role::Organizer, None).unwrap();
    let mut published = Vec::new();
    for (i, city) in ["Berlin", "Paris", "berlin", "Rome"].iter().enumerate() {
        let start = 10_000 - i64::try_from(i).unwrap() * 1_000;
        let event = graph.create_event(org.id, event_at(start, city, &["rock"])).unwrap();
        published.push(graph.publish_event(event.id).unwrap());
    }
    let draft = graph.create_event(org.id, event_at(1, "Berlin", &[])).unwrap();
    let all = graph.events(&EventQuery { first: 2, ..EventQuery::default() });
    assert_eq!(all.total, 4);
    assert!(all.has_next);
    assert_eq!(all.events.iter().map(|e| e.starts_at_ms).collect::<Vec<_>>(), vec![7_000, 8_000]);
    let last = all.events.last().unwrap();
    let rest =
        graph.events(&EventQuery { first: 10, after: Some((last.starts_at_ms, last.id)), ..EventQuery::default() });
    assert_eq!(rest.events.len(), 2);
    assert!(!rest.has_next);
    let berlin = graph.events(&EventQuery { city: Some("BERLIN".into()), first: 10, ..EventQuery::default() });
    assert_eq!(berlin.total, 2);
    let window =
        graph.events(&EventQuery { from_ms: Some(8_000), to_ms: Some(10_000), first: 10, ..EventQuery::default() });
    assert_eq!(window.events.iter().map(|e| e.starts_at_ms).collect::<Vec<_>>(), vec![8_000, 9_000]);
    let text = graph.events(&EventQuery { text: Some("gig 9000".into()), first: 10, ..EventQuery::default() });
    assert_eq!(text.total, 1);
    let searched =
        |text: &str| graph.events(&EventQuery { text: Some(text.into()), first: 10, ..EventQuery::default() }).total;
    assert_eq!(searched("🎸"), 0, "a text with no words finds nothing");
    assert_eq!(searched("%"), 0);
    assert_eq!(searched("  "), searched(""), "a blank text searches nothing");
    let mine = graph.organized_by(org.id, &EventQuery { first: 10, ..EventQuery::default() });
    assert_eq!(mine.total, 5);
    assert_eq!(mine.events[0].id, draft.id);
    graph.cancel_event(published[0].id).unwrap();
    assert_eq!(graph.events(&EventQuery { first: 10, ..EventQuery::default() }).total, 3);
    let cafe = graph
        .create_event(org.id, NewEvent { title: "Café Müller".into(), ..event_at(9_500, "Köln", &["Bühne"]) })
        .unwrap();
    graph.publish_event(cafe.id).unwrap();
    for city in ["koln", "Ko\u{0308}ln"] {
        let in_koln = graph.events(&EventQuery { city: Some(city.into()), first: 10, ..EventQuery::default() });
        assert_eq!(
            in_koln.events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [cafe.id],
            "a city filter drops accents too"
        );
    }
    let tagged = graph.events(&EventQuery { tag: Some("BUHNE".into()), first: 10, ..EventQuery::default() });
    assert_eq!(tagged.events.iter().map(|e| e.id).collect::<Vec<_>>(), [cafe.id], "and a tag filter");
    for typed in ["cafe", "CAFÉ", "muller", "koln", "café müll", "cafe\u{0301}"] {
        let found = graph.events(&EventQuery { text: Some(typed.into()), first: 10, ..EventQuery::default() });
        assert_eq!(found.events.iter().map(|e| e.id).collect::<Vec<_>>(), [cafe.id], "{typed}");
    }
}

#[test]
fn search_folds_accents_typed_apart_and_of_every_latin_greek_and_cyrillic_letter() {
    let dir = TempDir::new("fold");
    let graph = open(&dir);
    let org = graph.register("o@example.com", "O", Role::Organizer, None).unwrap();
    let publish = |title: &str, city: &str| {
        let event = graph.create_event(org.id, NewEvent { title: title.into(), ..event_at(1_000, city, &[]) }).unwrap();
        graph.publish_event(event.id).unwrap().id
    };
    // Accents typed apart from their letters (as macOS gives them), and
    // letters a hand-made table of Latin accents lacked.
    let muller = publish("Cafe\u{0301} Mu\u{0308}ller Abend", "Zu\u{0308}rich");
    let bucuresti = publish("Muzică în Brașov și Timișoara", "București");
    let hanoi = publish("Đêm nhạc Hà Nội", "Hà Nội");
    let athens = publish("ΣΥΝΑΥΛΙΑ ΤΖΑΖ", "Αθήνα");
    let moscow = publish("Ёлка", "Москва");
    // Marks of other scripts stay with their letters: the Japanese voicing
    // mark (ガ is カ with it; half-width ｶﾞ types it apart), a Devanagari
    // nukta typed apart (क + ़) or precomposed (क़), Hangul syllables.
    let gas = publish("ガス展", "Tokyo");
    let sweets = publish("カフェ スイーツ", "Tokyo");
    let games = publish("ゲーム大会", "Tokyo");
    let fort = publish("\u{915}\u{93C}\u{93F}\u{932}\u{93E} tour", "Delhi");
    let concert = publish("콘서트", "Seoul");
    let drive = publish("🅰🅱 blood drive", "Oslo");
    let found = |query: EventQuery| {
        graph.events(&EventQuery { first: 10, ..query }).events.iter().map(|e| e.id).collect::<Vec<_>>()
    };
    let text = |text: &str| found(EventQuery { text: Some(text.into()), ..EventQuery::default() });
    let city = |city: &str| found(EventQuery { city: Some(city.into()), ..EventQuery::default() });
    for (typed, event) in [
        ("muller", muller),
        ("Müller", muller),
        ("zurich", muller),
        ("Zürich", muller),
        ("cafe", muller),
        ("brasov timisoara", bucuresti),
        ("Brașov", bucuresti),
        ("nhac", hanoi),
        ("dem ha noi", hanoi),
        ("συναυλια", athens),
        ("Συναυλία τζαζ", athens),
        ("елка", moscow),
        ("ガス", gas),
        ("ｶﾞｽ", gas),
        ("カフェ", sweets),
        ("ゲー", games),
        ("\u{958}\u{93F}\u{932}\u{93E}", fort),
        ("콘서", concert),
        ("🅰", drive),
    ] {
        assert_eq!(text(typed), [event], "text {typed:?}");
    }
    for typed in ["ケ", "ーム", "ツ", "\u{915}\u{93F}"] {
        assert_eq!(text(typed), [], "text {typed:?} begins no word");
    }
    for (typed, event) in [
        ("zurich", muller),
        ("Zürich", muller),
        ("Bucuresti", bucuresti),
        ("BUCUREȘTI", bucuresti),
        ("ha noi", hanoi),
        ("Αθηνα", athens),
        ("ΑΘΉΝΑ", athens),
    ] {
        assert_eq!(city(typed), [event], "city {typed:?}");
    }
}

#[test]
fn an_unfinished_snapshot_left_by_a_full_disk_does_not_stop_the_next_start() {
    let dir = TempDir::new("unfinished-snapshot");
    let user = {
        let graph = open(&dir);
        graph.register("ada@example.com", "Ada", Role::Attendee, None).unwrap()
    };
    // What sled leaves when a start runs out of space while it writes its
    // snapshot: the file under its temporary name, empty, newest by name.
    let unfinished = dir.0.join("db").join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"").unwrap();
    let graph = open(&dir);
    assert_eq!(graph.user(user.id).unwrap().unwrap().email, "ada@example.com");
    assert!(!unfinished.exists(), "the unfinished snapshot is removed");
}

#[test]
fn an_update_that_changes_nothing_is_not_logged() {
    let dir = TempDir::new("no-op-update");
    let graph = open(&dir);
    let org = graph.register("o@example.com", "O", Role::Organizer, None).unwrap();
    let event = graph.create_event(org.id, event_at(5, "Oslo", &[])).unwrap();
    let head = graph.store().head_seq();
    graph.update_event(event.id, EventChanges::default()).unwrap();
    let same = EventChanges { title: Some(event.title.clone()), starts_at_ms: Some(5), ..EventChanges::default() };
    assert_eq!(graph.update_event(event.id, same).unwrap(), event);
    assert_eq!(graph.store().head_seq(), head, "nothing logged, so nobody is told");
    let renamed = EventChanges { title: Some("Renamed".into()), ..EventChanges::default() };
    assert_eq!(graph.update_event(event.id, renamed).unwrap().title, "Renamed");
    assert_eq!(graph.store().head_seq(), head + 1);
}

#[test]
fn cancelled_events_refuse_changes() {
    let dir = TempDir::new("cancel");
    let graph = open(&dir);
    let org = graph.register("o@example.com", "O", Role::Organizer, None).unwrap();
    let event = graph.create_event(org.id, event_at(5, "Oslo", &[])).unwrap();
    graph.cancel_event(event.id).unwrap();
    assert!(matches!(graph.publish_event(event.id), Err(Error::Conflict(_))));
    assert!(matches!(graph.update_event(event.id, EventChanges::default()), Err(Error::Conflict(_))));
    let ticket =
        NewTicketType { name: "GA".into(), price_cents: 0, currency: "EUR".into(), capacity: 1, per_user_limit: None };
    assert!(matches!(graph.add_ticket_type(event.id, ticket), Err(Error::Conflict(_))));
}

#[test]
fn invalid_input_names_its_field() {
    let dir = TempDir::new("invalid");
    let graph = open(&dir);
    let org = graph.register("o@example.com", "O", Role::Organizer, None).unwrap();
    let bad_end = NewEvent { ends_at_ms: Some(5), ..event_at(5, "Oslo", &[]) };
    assert!(matches!(graph.create_event(org.id, bad_end), Err(Error::Invalid { field: "endsAt", .. })));
    let missing_venue = NewEvent { venue: Some(VenueId(99)), ..event_at(5, "Oslo", &[]) };
    assert!(matches!(graph.create_event(org.id, missing_venue), Err(Error::NotFound("venue"))));
    let event = graph.create_event(org.id, event_at(5, "Oslo", &[])).unwrap();
    let over_limit = NewTicketType {
        name: "GA".into(),
        price_cents: 0,
        currency: "EUR".into(),
        capacity: 2,
        per_user_limit: Some(3),
    };
    assert!(matches!(graph.add_ticket_type(event.id, over_limit), Err(Error::Invalid { field: "perUserLimit", .. })));
}

#[test]
fn concurrent_writers_share_flushes() {
    let dir = TempDir::new("group");
    let graph = Arc::new(open(&dir));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let graph = graph.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    graph.open_session([t * 32 + i; 32], UserId(1), 1).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let log = graph.store().read_log(1, 1_000).unwrap();
    assert_eq!(log.len(), 200);
    assert!(log.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1));
    assert!(graph.store().flush_count() <= 200);
}

/// A small record for log tests: a session revocation.
fn revoke(n: u8) -> Record {
    Record::SessionRevoked(SessionRevoked { token_hash: [n; 32] })
}

#[test]
fn appended_records_are_written_in_log_order_by_the_next_sync_or_commit() {
    let dir = TempDir::new("append");
    let graph = open(&dir);
    let store = graph.store();
    let head = store.head_seq();
    let first = store.append(1, revoke(1));
    let second = store.append(2, revoke(2));
    assert_eq!((first, second), (head + 1, head + 2));
    assert_eq!(store.head_seq(), head, "appends are not written before a sync");
    assert_eq!(store.appended_seq(), head + 2);
    // A direct commit writes the pending appends first, in seq order.
    let third = store.commit(3, &[revoke(3)]).unwrap();
    assert_eq!(third, head + 3);
    let fourth = store.append(4, revoke(4));
    store.sync(fourth).unwrap();
    assert!(store.durable_seq() >= fourth);
    let log = store.read_log(head + 1, 10).unwrap();
    let at: Vec<i64> = log.iter().map(|entry| entry.at_ms).collect();
    assert_eq!(at, [1, 2, 3, 4]);
    assert!(log.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1));
    drop(graph);
    let reopened = open(&dir);
    assert_eq!(reopened.store().head_seq(), fourth, "synced appends survive a reopen");
}

/// One round of 1,000 appends spans many log segments; every entry reads
/// back in order, from any starting seq, and the head survives a reopen.
#[test]
fn a_large_round_is_stored_as_several_segments_that_read_back_in_order() {
    let dir = TempDir::new("segments");
    let graph = open(&dir);
    let store = graph.store();
    let head = store.head_seq();
    let mut last = head;
    for n in 1..=1_000 {
        last = store.append(n as i64, revoke((n % 251) as u8));
    }
    store.sync(last).unwrap();
    let segments = graph.store().scan(table::LOG).count();
    assert!(segments > 5, "1,000 records of about 50 bytes make more than one segment ({segments})");
    for from in [head + 1, head + 2, head + 77, last] {
        let log = store.read_log(from, 2_000).unwrap();
        let at: Vec<i64> = log.iter().map(|entry| entry.at_ms).collect();
        let expected: Vec<i64> = ((from - head) as i64..=1_000).collect();
        assert_eq!(at, expected, "reading from {from}");
        assert!(log.iter().zip(from..).all(|(entry, seq)| entry.seq == seq));
    }
    drop(graph);
    assert_eq!(open(&dir).store().head_seq(), last, "the last segment's count gives the head after a reopen");
}

#[test]
fn a_reader_row_is_replaced_only_while_it_holds_what_was_read() {
    let dir = TempDir::new("reader-replace");
    let graph = open(&dir);
    let rows = graph.store().reader(9);
    let mut batch = readers::ReaderBatch::default();
    batch.put(&rows, b"kept", b"unread");
    batch.put(&rows, b"dropped", b"unread");
    rows.commit(batch, Some(1)).unwrap();

    // Another writer drops one row and changes the other after they were read.
    let mut batch = readers::ReaderBatch::default();
    batch.remove(&rows, b"dropped");
    rows.commit(batch, Some(2)).unwrap();
    assert!(!rows.replace(b"dropped", b"unread", b"read").unwrap(), "a removed row stays removed");
    assert_eq!(rows.get(b"dropped").unwrap(), None);

    assert!(rows.replace(b"kept", b"unread", b"read").unwrap());
    assert!(!rows.replace(b"kept", b"unread", b"read again").unwrap(), "it no longer holds what was read");
    assert_eq!(rows.get(b"kept").unwrap().as_deref(), Some(&b"read"[..]));
    assert_eq!(rows.checkpoint().unwrap(), 2);
}

/// A booking of one seat by user `n`, in `status`.
fn booking_of(n: u64, event: EventId, ticket_type: TicketTypeId, status: model::BookingStatus) -> Booking {
    // This test cancels only confirmed bookings, so cancelled ones keep tickets.
    let confirmed = matches!(status, model::BookingStatus::Confirmed | model::BookingStatus::Cancelled);
    Booking {
        id: ids::BookingId(n << 8),
        user: UserId(1_000 + n),
        event,
        ticket_type,
        quantity: 1,
        unit_price_cents: 4_500,
        idempotency_key: format!("key-{n}"),
        status,
        created_at_ms: 1,
        expires_at_ms: Some(600_001),
        confirmed_at_ms: confirmed.then_some(2),
        tickets: if confirmed {
            vec![model::Ticket { id: ids::TicketId(n << 14), code: format!("code-{n}"), checked_in_at_ms: None }]
        } else {
            Vec::new()
        },
    }
}

/// Hand-overs that queue while the row writer rests after a batch go in
/// its next batch together, not one batch (and one sled I/O buffer write)
/// each.
#[test]
fn the_row_writer_writes_what_queued_while_it_rested_in_one_batch() {
    let dir = TempDir::new("rows-rest");
    let graph = open(&dir);
    let store = graph.store();
    // Each commit is a round of its own and hands its booking over at once
    // (commit does not wait for a flush): 200 rounds within a few
    // milliseconds. A writer that does not rest writes them in dozens of
    // batches; one that rests in two (a few on a slow machine).
    for n in 1..=200u64 {
        let held = booking_of(n, EventId(1), TicketTypeId(1), model::BookingStatus::Held);
        store.commit(1, &[Record::BookingHeld(Arc::new(held))]).unwrap();
    }
    store.settle_rows_behind().unwrap();
    let batches = store.rows_behind_batches();
    assert!((1..=5).contains(&batches), "200 hand-overs took {batches} batches");
    assert_eq!(graph.bookings().unwrap().count(), 200);
}

/// The rows-behind lag counts the log entries a start-up would read again:
/// none once the row writer has written what it was handed; an entry with
/// no row behind the log (a session revoked) until the checkpoint moves;
/// none after a restart, which brings the rows up to the log's head.
#[test]
fn the_rows_behind_lag_counts_what_a_start_up_reads_again() {
    let dir = TempDir::new("rows-lag");
    {
        let graph = open(&dir);
        let store = graph.store();
        let held = booking_of(1, EventId(1), TicketTypeId(1), model::BookingStatus::Held);
        store.commit(1, &[Record::BookingHeld(Arc::new(held))]).unwrap();
        store.settle_rows_behind().unwrap();
        assert_eq!(store.rows_behind_lag(), 0);
        store.commit(1, &[revoke(1), revoke(2)]).unwrap();
        assert_eq!(store.rows_behind_lag(), 2);
    }
    let graph = open(&dir);
    assert_eq!(graph.store().rows_behind_lag(), 0);
    assert_eq!(graph.bookings().unwrap().count(), 1);
}

/// Log readers commit through the row writer: readers that commit while
/// it rests after a batch share its next batch (and the I/O buffer writes
/// a sled batch costs) instead of writing one batch each, and each
/// commit returns only once its rows and checkpoint are in the tree.
#[test]
fn readers_committing_while_the_row_writer_rests_share_one_batch() {
    let dir = TempDir::new("reader-commits");
    let graph = open(&dir);
    let store = graph.store();
    // A hand-over of rows behind: the writer writes it at once, then rests.
    let held = booking_of(1, EventId(1), TicketTypeId(1), model::BookingStatus::Held);
    store.commit(1, &[Record::BookingHeld(Arc::new(held))]).unwrap();
    store.settle_rows_behind().unwrap();
    let before = store.rows_behind_batches();
    std::thread::scope(|scope| {
        for reader in 20..24u8 {
            scope.spawn(move || {
                let rows = store.reader(reader);
                let mut batch = readers::ReaderBatch::default();
                batch.put(&rows, b"row", &[reader]);
                rows.commit(batch, Some(u64::from(reader))).unwrap();
                assert_eq!(rows.get(b"row").unwrap(), Some(vec![reader]), "in the tree once commit returns");
                assert_eq!(rows.checkpoint().unwrap(), u64::from(reader));
            });
        }
    });
    // One batch when all four commits queue within the 25 ms rest; two on
    // a machine too slow to start four threads in that time.
    let batches = store.rows_behind_batches() - before;
    assert!((1..=2).contains(&batches), "four reader commits took {batches} batches");
}

/// Appends `n` held bookings (ids from `first`) and asks for a flush.
fn append_held(store: &Store, first: u64, n: u64) -> u64 {
    let mut last = 0;
    for id in first..first + n {
        let held = booking_of(id, EventId(1), TicketTypeId(1), model::BookingStatus::Held);
        last = store.append(1, Record::BookingHeld(Arc::new(held)));
    }
    store.request_flush();
    last
}

/// Under load (the round before made 8 or more records durable) a round
/// gathers: a record appended while it waits joins it. A round after a
/// small one does not wait.
#[test]
fn a_round_under_load_gathers_what_is_appended_meanwhile() {
    let dir = TempDir::new("gather");
    let graph = open(&dir);
    let store = graph.store();
    store.set_gather(std::time::Duration::from_secs(3));
    let quiet = store.flush_count();
    let started = std::time::Instant::now();
    store.sync(append_held(store, 1, 1)).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "a round after a quiet spell waited");
    assert_eq!(store.flush_count(), quiet + 1);

    store.sync(append_held(store, 2, 8)).unwrap();
    let loaded = store.flush_count();
    let first = append_held(store, 10, 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let second = append_held(store, 11, 1);
    store.sync(second).unwrap();
    assert!(store.durable_seq() >= first);
    assert_eq!(store.flush_count(), loaded + 1, "the two records went in one round");
}

/// A gathering round starts as soon as three quarters as many records are
/// pending as the round before made durable (6 of 8 here), not after its
/// whole gather.
#[test]
fn a_gathering_round_starts_once_three_quarters_of_the_last_rounds_count_are_pending() {
    let dir = TempDir::new("gather-full");
    let graph = open(&dir);
    let store = graph.store();
    store.set_gather(std::time::Duration::from_secs(30));
    store.sync(append_held(store, 1, 8)).unwrap();
    let started = std::time::Instant::now();
    append_held(store, 9, 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    store.sync(append_held(store, 10, 5)).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the round waited out its gather");
    drop(graph);
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "closing waited out a gather");
}

/// What ends a gather follows the round before (three quarters of its
/// count), within 1..=128.
#[test]
fn a_gather_waits_for_three_quarters_of_the_last_rounds_count_within_bounds() {
    use crate::store::gather_enough;
    assert_eq!(gather_enough(40), 30);
    assert_eq!(gather_enough(31), 23);
    assert_eq!(gather_enough(8), 6);
    assert_eq!(gather_enough(1), 1);
    assert_eq!(gather_enough(0), 1);
    assert_eq!(gather_enough(5_000), 128, "a huge round does not make the next wait for as many");
    assert_eq!(gather_enough(u64::MAX), 128);
}

/// Booking rows are written behind the log. After a crash that left them
/// behind (some missing, some stale, the checkpoint in the middle), the
/// next open brings every row, and the attendances built from them, up to
/// what the log says.
#[test]
fn booking_rows_left_behind_the_log_are_brought_up_to_date_at_open() {
    use model::BookingStatus::{Cancelled, Confirmed, Held};
    let dir = TempDir::new("rows-behind");
    let graph = open(&dir);
    let organizer = graph.register("org@example.com", "Org", Role::Organizer, None).unwrap().id;
    let event = graph.create_event(organizer, event_at(now_ms() + 86_400_000, "Oslo", &[])).unwrap().id;
    let new = NewTicketType {
        name: "GA".into(),
        price_cents: 4_500,
        currency: "EUR".into(),
        capacity: 1_000,
        per_user_limit: None,
    };
    let ticket_type = graph.add_ticket_type(event, new).unwrap().id;
    // Every booking is held; even ones are confirmed, every third of those
    // then cancelled; each record's seq is kept.
    let mut history: Vec<(u64, Booking)> = Vec::new();
    let store = graph.store();
    for n in 1..=300u64 {
        let held = booking_of(n, event, ticket_type, Held);
        history.push((store.append(1, Record::BookingHeld(Arc::new(held.clone()))), held));
    }
    for n in (2..=300u64).step_by(2) {
        let confirmed = booking_of(n, event, ticket_type, Confirmed);
        history.push((store.append(2, Record::BookingConfirmed(Arc::new(confirmed.clone()))), confirmed));
    }
    for n in (6..=300u64).step_by(6) {
        let cancelled = booking_of(n, event, ticket_type, Cancelled);
        history.push((store.append(3, Record::BookingCancelled(Arc::new(cancelled.clone()))), cancelled));
    }
    store.sync(store.appended_seq()).unwrap();
    let state_as_of = |seq: u64| -> Vec<Booking> {
        let mut latest = std::collections::BTreeMap::new();
        for (_, booking) in history.iter().filter(|(at, _)| *at <= seq) {
            latest.insert(booking.id, booking.clone());
        }
        latest.into_values().collect()
    };
    let final_state = state_as_of(u64::MAX);
    let read = |graph: &Graph| graph.bookings().unwrap().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(read(&graph), final_state, "bookings() waits for the rows just written");

    // The crash: rows as of a seq in the middle of the confirmations, and
    // the checkpoint there.
    let checkpoint = history[400].0;
    let mut batch = sled::Batch::default();
    for row in graph.store().scan(table::BOOKING) {
        batch.remove(row.unwrap().0);
    }
    graph.store().write_rows(batch).unwrap();
    let items = state_as_of(checkpoint).into_iter().map(|booking| {
        let (row, id) = row_written_behind(&Record::BookingHeld(Arc::new(booking.clone()))).unwrap();
        behind::Item { row, id, payload: encode(&booking) }
    });
    let mut batch = sled::Batch::default();
    behind::write(graph.store().tree(), items, checkpoint, &mut batch).unwrap();
    graph.store().write_rows(batch).unwrap();
    graph.store().flush_rows().unwrap();
    assert_ne!(read(&graph), final_state, "the rows were set back");
    drop(graph);

    let reopened = open(&dir);
    assert_eq!(read(&reopened), final_state);
    let social = reopened.social();
    for booking in &final_state {
        let attends = booking.status == Confirmed;
        assert_eq!(social.attends(booking.user, event), attends, "attendance of {:?}", booking.user);
    }
    assert_eq!(social.attendees(event).len(), final_state.iter().filter(|b| b.status == Confirmed).count());
    drop(social);
    drop(reopened);
    // Caught up and checkpointed: a second open reads the same rows.
    let reopened = open(&dir);
    assert_eq!(read(&reopened), final_state);

    // A directory from before rows were written behind the log: a row per
    // booking and no checkpoint. They are rebuilt from the whole log.
    let mut batch = sled::Batch::default();
    for row in reopened.store().scan(table::BOOKING) {
        batch.remove(row.unwrap().0);
    }
    for booking in state_as_of(checkpoint) {
        batch.insert(key(table::BOOKING, &booking.id.to_key()), encode(&booking));
    }
    batch.remove(vec![table::ROWS_BEHIND]);
    reopened.store().write_rows(batch).unwrap();
    reopened.store().flush_rows().unwrap();
    drop(reopened);
    assert_eq!(read(&open(&dir)), final_state);
}

/// The newest entries are served from memory (64 of them in tests); every
/// read, inside, across and before that window, equals what sled holds.
#[test]
fn recent_entries_read_the_same_as_the_stored_log() {
    let dir = TempDir::new("recent");
    let graph = open(&dir);
    let store = graph.store();
    let head = store.head_seq();
    // Rounds of different sizes, by group commit and by direct commits.
    for round in 0..12u8 {
        if round % 3 == 0 {
            store.commit(i64::from(round), &[revoke(round), revoke(round + 100)]).unwrap();
        } else {
            let mut last = 0;
            for n in 0..(5 * round) {
                last = store.append(i64::from(round), revoke(n));
            }
            store.sync(last).unwrap();
        }
    }
    let last = store.head_seq();
    assert!(last - head > 64, "more entries than the window ({})", last - head);
    for from in [head + 1, last - 70, last - 64, last - 63, last - 10, last, last + 1] {
        for max in [1, 7, 100, 1_000] {
            let stored = store::read_log(store.tree(), from, max).unwrap();
            assert_eq!(store.read_log(from, max).unwrap(), stored, "from {from}, at most {max}");
        }
    }
    assert_eq!(store.read_log(last - 5, 1_000).unwrap().len(), 6);
}

/// A round's writes land as written: one key (a plain sled insert or
/// remove), log segments alone (inserted in seq order) or many (a batch),
/// the later of two writes of a key winning.
#[test]
fn round_writes_apply_one_key_or_many_with_the_last_write_of_a_key_winning() {
    let tree = sled::Config::new().temporary(true).open().unwrap().open_tree("t").unwrap();
    let get = |key: &str| tree.get(key).unwrap().map(|v| v.to_vec());

    let mut one = RoundWrites::default();
    one.insert("a", "1");
    one.apply(&tree).unwrap();
    assert_eq!(get("a"), Some(b"1".to_vec()));

    let mut one = RoundWrites::default();
    one.remove("a");
    one.apply(&tree).unwrap();
    assert_eq!(get("a"), None);

    let mut many = RoundWrites::default();
    many.insert("b", "1");
    many.insert("c", "1");
    many.insert("b", "2");
    many.remove("c");
    many.insert("d", "1");
    many.apply(&tree).unwrap();
    assert_eq!((get("b"), get("c"), get("d")), (Some(b"2".to_vec()), None, Some(b"1".to_vec())));

    RoundWrites::default().apply(&tree).unwrap();
    assert_eq!(tree.len(), 2, "no writes change nothing");

    // Log segments alone (a round of bookings) are inserted in seq order.
    let mut segments = RoundWrites::default();
    segments.log_segment(7, b"first".to_vec());
    segments.log_segment(9, b"second".to_vec());
    segments.apply(&tree).unwrap();
    let log: Vec<(Vec<u8>, Vec<u8>)> =
        tree.scan_prefix([table::LOG]).map(|row| row.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert_eq!(
        log,
        vec![
            (key(table::LOG, &7u64.to_be_bytes()), b"first".to_vec()),
            (key(table::LOG, &9u64.to_be_bytes()), b"second".to_vec())
        ]
    );
}

#[test]
fn a_deleted_webhooks_id_is_never_given_again_not_even_after_a_restart() {
    let dir = TempDir::new("webhook-ids");
    let hook = |graph: &Graph, owner: UserId| {
        graph
            .create_webhook(owner, "https://example.com/hook".into(), vec!["event.updated".into()], "s".into())
            .unwrap()
    };
    let (owner, newest) = {
        let graph = open(&dir);
        let owner = graph.register("org@example.com", "Org", Role::Organizer, None).unwrap().id;
        hook(&graph, owner);
        let newest = hook(&graph, owner).id;
        assert!(graph.delete_webhook(newest).unwrap());
        (owner, newest)
    };
    let graph = open(&dir);
    let next = hook(&graph, owner).id;
    assert!(next.0 > newest.0, "webhook {} was given again after its deletion and a restart", newest.0);
}

#[test]
fn a_hold_reads_expired_from_its_expiry_on_and_nothing_else_changes_with_time() {
    use model::BookingStatus::{Cancelled, Confirmed, Expired, Held};
    let (event, ticket_type) = (EventId(1), TicketTypeId(1));
    let held = booking_of(1, event, ticket_type, Held);
    assert_eq!((held.status_at(600_000), held.status_at(600_001), held.status_at(i64::MAX)), (Held, Expired, Expired));
    for status in [Confirmed, Cancelled, Expired] {
        assert_eq!(booking_of(2, event, ticket_type, status).status_at(i64::MAX), status);
    }
}
