//! The social index against a brute-force reference: random histories of
//! follows, unfollows and attendance changes, then every query for every
//! user and event compared with plain set arithmetic and with petgraph's
//! own algorithms on a separately built graph.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use petgraph::algo::dijkstra;
use petgraph::graphmap::DiGraphMap;
use proptest::prelude::*;

use super::*;

const USERS: u64 = 24;
const EVENTS: u64 = 6;

/// The reference: edge sets, answers computed by brute force.
#[derive(Default)]
struct Reference {
    follows: BTreeSet<(u64, u64)>,
    /// Sources per (user, event).
    attends: BTreeMap<(u64, u64), u32>,
}

impl Reference {
    fn attends(&self, user: u64, event: u64) -> bool {
        self.attends.get(&(user, event)).is_some_and(|&n| n > 0)
    }

    fn friends_going(&self, user: u64, event: u64) -> Vec<u64> {
        (1..=USERS)
            .filter(|&f| {
                self.follows.contains(&(user, f)) && self.follows.contains(&(f, user)) && self.attends(f, event)
            })
            .collect()
    }

    fn recommend(&self, user: u64) -> Vec<(u64, u32)> {
        let mut scored: Vec<(u64, u32)> = (1..=EVENTS)
            .filter(|&e| !self.attends(user, e))
            .map(|e| {
                (e, (1..=USERS).filter(|&f| self.follows.contains(&(user, f)) && self.attends(f, e)).count() as u32)
            })
            .filter(|&(_, score)| score >= 1)
            .collect();
        scored.sort_by_key(|&(e, score)| (std::cmp::Reverse(score), e));
        scored.truncate(10);
        scored
    }

    /// Hop counts from `from` to everyone reachable, by petgraph's Dijkstra
    /// on a graph built from the edge set alone.
    fn distances(&self, from: u64) -> HashMap<u64, u32> {
        let mut graph = DiGraphMap::<u64, ()>::new();
        for user in 1..=USERS {
            graph.add_node(user);
        }
        for &(a, b) in &self.follows {
            graph.add_edge(a, b, ());
        }
        dijkstra(&graph, from, None, |_| 1u32).into_iter().collect()
    }

    fn whos_going(&self, event: u64) -> (usize, Vec<(u64, u32)>) {
        let followers = |u: u64| self.follows.iter().filter(|&&(_, b)| b == u).count() as u32;
        let mut going: Vec<(u64, u32)> =
            (1..=USERS).filter(|&u| self.attends(u, event)).map(|u| (u, followers(u))).collect();
        let count = going.len();
        going.sort_by_key(|&(u, f)| (std::cmp::Reverse(f), u));
        going.truncate(20);
        (count, going)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Follow(u64, u64),
    Unfollow(u64, u64),
    Attend(u64, u64),
    Leave(u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 1..=USERS;
    let event = 1..=EVENTS;
    prop_oneof![
        6 => (user.clone(), 1..=USERS).prop_map(|(a, b)| Op::Follow(a, b)),
        1 => (user.clone(), 1..=USERS).prop_map(|(a, b)| Op::Unfollow(a, b)),
        3 => (user.clone(), event.clone()).prop_map(|(u, e)| Op::Attend(u, e)),
        1 => (user, event).prop_map(|(u, e)| Op::Leave(u, e)),
    ]
}

fn apply(index: &mut SocialGraph, reference: &mut Reference, op: &Op) {
    match *op {
        Op::Follow(a, b) if a != b => {
            let added = index.follow(UserId(a), UserId(b));
            assert_eq!(added, reference.follows.insert((a, b)));
        }
        Op::Unfollow(a, b) => {
            let removed = index.unfollow(UserId(a), UserId(b));
            assert_eq!(removed, reference.follows.remove(&(a, b)));
        }
        Op::Attend(u, e) => {
            index.add_attendance(UserId(u), EventId(e));
            *reference.attends.entry((u, e)).or_insert(0) += 1;
        }
        Op::Leave(u, e) if reference.attends(u, e) => {
            index.remove_attendance(UserId(u), EventId(e));
            *reference.attends.get_mut(&(u, e)).unwrap() -= 1;
        }
        _ => {}
    }
}

fn assert_agrees(index: &SocialGraph, reference: &Reference) {
    for user in 1..=USERS {
        let u = UserId(user);
        for event in 1..=EVENTS {
            let expected = reference.friends_going(user, event);
            let answer = index.friends_going(u, EventId(event), 20);
            assert_eq!(answer.count, expected.len(), "Q1 count ({user}, {event})");
            assert_eq!(answer.first.iter().map(|f| f.0).collect::<Vec<_>>(), expected, "Q1 ({user}, {event})");
            assert_eq!(index.attends(u, EventId(event)), reference.attends(user, event));
        }
        let recommended: Vec<(u64, u32)> =
            index.recommend(u, 10, Some).into_iter().map(|(e, score)| (e.0, score)).collect();
        assert_eq!(recommended, reference.recommend(user), "Q2 ({user})");
        let distances = reference.distances(user);
        for other in 1..=USERS {
            let expected = distances.get(&other).copied().filter(|&d| d <= DISTANCE_HOPS_MAX);
            assert_eq!(index.distance(u, UserId(other), DISTANCE_HOPS_MAX), expected, "Q3 ({user}, {other})");
        }
        let followers = reference.follows.iter().filter(|&&(_, b)| b == user).count();
        assert_eq!(index.followers(u).len(), followers);
        assert_eq!(index.following(u).len(), reference.follows.iter().filter(|&&(a, _)| a == user).count());
    }
    for event in 1..=EVENTS {
        let (count, first) = reference.whos_going(event);
        for limit in [0, 1, 3, 20] {
            // With a smaller `first`, events have enough notable attendees
            // more often, so the notable path is checked too.
            let answer = index.whos_going(EventId(event), limit);
            let expected: Vec<(u64, u32)> = first.iter().take(limit).copied().collect();
            assert_eq!(answer.count, count, "Q4 count ({event})");
            assert_eq!(
                answer.first.iter().map(|&(u, f)| (u.0, f)).collect::<Vec<_>>(),
                expected,
                "Q4 ({event}, {limit})"
            );
            // The path big events take (the follower ranking) agrees too.
            let attendees = index.attendees(EventId(event));
            let walked = index.most_followed_attending(attendees, limit, usize::MAX);
            let expected: Vec<(u64, u32)> = first.iter().take(limit).copied().collect();
            let walked: Vec<(u64, u32)> = walked.unwrap().iter().map(|&(u, f)| (u.0, f)).collect();
            assert_eq!(walked, expected, "Q4 by ranking ({event}, first {limit})");
        }
    }
    assert_eq!(index.follow_count(), reference.follows.len() as u64);
    assert_eq!(index.attend_count(), reference.attends.values().filter(|&&n| n > 0).count() as u64);
    assert_notable_lists_current(index, reference);
}

/// Every event's notable attendees are exactly its attendees with at least
/// the threshold's followers, ranked by their current follower counts.
fn assert_notable_lists_current(index: &SocialGraph, reference: &Reference) {
    for event in 1..=EVENTS {
        let mut expected: Vec<Ranked> = (1..=USERS)
            .filter(|&u| reference.attends(u, event))
            .map(|u| (Reverse(reference.follows.iter().filter(|&&(_, b)| b == u).count() as u32), u as u32))
            .filter(|&(Reverse(followers), _)| index.notable_min != 0 && followers >= index.notable_min)
            .collect();
        expected.sort();
        assert_eq!(neighbours(&index.notable_attendees, event as u32), expected, "notable attendees of {event}");
    }
}

/// Rebuilding from whole lists (start-up) gives the same index as the
/// history that led to it.
fn rebuilt(reference: &Reference) -> SocialGraph {
    let mut following = vec![Vec::new(); USERS as usize + 1];
    for &(a, b) in &reference.follows {
        following[a as usize].push(b as u32);
    }
    let mut attending = vec![Vec::new(); USERS as usize + 1];
    for (&(u, e), &n) in &reference.attends {
        if n > 0 {
            attending[u as usize].push(e as u32);
        }
    }
    let mut index = SocialGraph::from_lists(following, attending);
    for (&(u, e), &n) in &reference.attends {
        for _ in 1..n {
            index.add_attendance(UserId(u), EventId(e));
        }
    }
    index
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn queries_match_a_brute_force_reference(
        ops in proptest::collection::vec(op(), 0..160),
        notable_min in 0u32..5,
    ) {
        let mut index = SocialGraph::default();
        index.set_notable_min(notable_min);
        let mut reference = Reference::default();
        for op in &ops {
            apply(&mut index, &mut reference, op);
        }
        assert_agrees(&index, &reference);
        let mut rebuilt = rebuilt(&reference);
        assert_agrees(&rebuilt, &reference);
        rebuilt.set_notable_min(notable_min);
        assert_agrees(&rebuilt, &reference);
    }
}

#[test]
fn mutual_follows_only_count_as_friends() {
    let mut index = SocialGraph::default();
    index.follow(UserId(1), UserId(2));
    index.follow(UserId(1), UserId(3));
    index.follow(UserId(3), UserId(1));
    index.add_attendance(UserId(2), EventId(9));
    index.add_attendance(UserId(3), EventId(9));
    let answer = index.friends_going(UserId(1), EventId(9), 20);
    assert_eq!(answer, FriendsGoing { count: 1, first: vec![UserId(3)] });
}

#[test]
fn attendance_with_two_sources_survives_losing_one() {
    let mut index = SocialGraph::default();
    index.add_attendance(UserId(1), EventId(1));
    index.add_attendance(UserId(1), EventId(1));
    index.remove_attendance(UserId(1), EventId(1));
    assert!(index.attends(UserId(1), EventId(1)));
    assert_eq!(index.attendees(EventId(1)).iter().collect::<Vec<_>>(), [1]);
    index.remove_attendance(UserId(1), EventId(1));
    assert!(!index.attends(UserId(1), EventId(1)));
    assert_eq!(index.attend_count(), 0);
}

#[test]
fn distance_stops_at_four_hops() {
    let mut index = SocialGraph::default();
    for user in 1..6 {
        index.follow(UserId(user), UserId(user + 1));
    }
    assert_eq!(index.distance(UserId(1), UserId(1), 4), Some(0));
    assert_eq!(index.distance(UserId(1), UserId(5), 4), Some(4));
    assert_eq!(index.distance(UserId(1), UserId(6), 4), None, "five hops is beyond the limit");
    assert_eq!(index.distance(UserId(5), UserId(1), 4), None, "FOLLOWS is directed");
    assert_eq!(index.distance(UserId(1), UserId(99), 4), None, "unknown users are unreachable");
}

#[test]
fn petgraph_algorithms_run_on_the_index() {
    let mut index = SocialGraph::default();
    let edges = [(1, 2), (2, 3), (3, 4), (1, 5), (5, 4), (6, 1)];
    for (a, b) in edges {
        index.follow(UserId(a), UserId(b));
    }
    let view = index.follows_view();
    let mut bfs = petgraph::visit::Bfs::new(view, 1);
    let mut reached = HashSet::new();
    while let Some(node) = bfs.next(view) {
        reached.insert(node);
    }
    assert_eq!(reached, HashSet::from([1, 2, 3, 4, 5]));
    let costs = dijkstra(view, 1, None, |_| 1u32);
    assert_eq!(costs[&4], 2);
    assert_eq!(index.distance(UserId(1), UserId(4), 4), Some(2));
    let incoming: Vec<u32> =
        petgraph::visit::IntoNeighborsDirected::neighbors_directed(view, 4, petgraph::Incoming).collect();
    assert_eq!(incoming, [3, 5]);
}

#[test]
fn a_big_event_keeps_exact_attendees_past_the_list_limit() {
    let mut index = SocialGraph::default();
    let mut reference = BTreeSet::new();
    let event = EventId(1);
    // Users arrive in a scattered order, as buyers of a hot on-sale do.
    for step in 0..(ATTENDEES_LISTED_MAX as u64 + 2_000) {
        let user = 1 + (step * 7_919) % 20_000;
        index.add_attendance(UserId(user), event);
        reference.insert(user as u32);
    }
    for user in (1..20_000u64).step_by(3) {
        if reference.remove(&(user as u32)) {
            index.remove_attendance(UserId(user), event);
        }
    }
    let attendees = index.attendees(event);
    assert!(matches!(attendees, Attendees::Tree(_)));
    assert_eq!(attendees.len(), reference.len());
    assert_eq!(attendees.iter().collect::<Vec<_>>(), reference.iter().copied().collect::<Vec<_>>());
    assert!(reference.iter().all(|&u| attendees.contains(u)));
    index.follow(UserId(*reference.iter().nth(10).unwrap() as u64), UserId(*reference.iter().nth(20).unwrap() as u64));
    let going = index.whos_going(event, 3);
    assert_eq!(going.count, reference.len());
    assert_eq!(going.first[0], (UserId(*reference.iter().nth(20).unwrap() as u64), 1));
    assert_eq!(going.first[1].0, UserId(*reference.iter().next().unwrap() as u64), "then the smallest ids");
}
