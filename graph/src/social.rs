//! The social index: FOLLOWS and ATTENDS adjacency in memory, and the
//! relationship queries answered from it (friends going, recommendations,
//! social distance, who's going).
//!
//! Each node's neighbours are one sorted `Vec<u32>`, in both directions: four
//! bytes per edge and direction, membership by binary search, and neighbour
//! walks that read contiguous memory. At two million users and forty million
//! follows that is about 0.4 GB; a petgraph `Graph` of the same edges costs
//! four times as much and walks linked lists, so petgraph serves here as the
//! vocabulary instead: [`SocialGraph::follows_view`] implements its visit
//! traits, and its generic algorithms (BFS, Dijkstra, ...) run on the index
//! as it is. The index is rebuilt from the stored rows at start-up and kept
//! current by the store, which applies every log record to it in log order
//! as the record is written.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, BinaryHeap};

use foldhash::{HashMap, HashMapExt};

use crate::ids::{EventId, UserId};

/// Most follow hops [`SocialGraph::distance`] looks through.
pub const DISTANCE_HOPS_MAX: u32 = 4;

/// Who's going for an event with too few notable attendees scores every
/// attendee; it walks the global follower ranking instead when that is
/// expected to be shorter, i.e. when `first * ranked users / attendees` (the
/// expected walk) is below the attendee count, and never for fewer
/// attendees than this.
const WHOS_GOING_SCAN_MIN: usize = 2_048;

/// About one ranked user in this many is notable (see
/// [`SocialGraph::choose_notable`]).
const NOTABLE_SHARE: usize = 32;

/// FOLLOWS edges from which the notable threshold is chosen again each time
/// their number doubles (start-up and import choose it at once).
const NOTABLE_REFRESH_FOLLOWS: u64 = 1 << 16;

/// Users, events and the FOLLOWS and ATTENDS edges between them.
#[derive(Debug, Default)]
pub struct SocialGraph {
    /// By user: the users they follow, ascending.
    following: Vec<Vec<u32>>,
    /// By user: the users following them, ascending.
    followers: Vec<Vec<u32>>,
    /// By user: the events they attend, ascending.
    attending: Vec<Vec<u32>>,
    /// By event: the users attending (a sorted list, or a B-tree for big
    /// events, where inserting into a sorted list would move megabytes).
    attendees: Vec<Attendees>,
    /// ATTENDS edges with more than one source (several confirmed bookings,
    /// or an imported attendance plus bookings): the sources beyond the first.
    extra_sources: HashMap<(u32, u32), u32>,
    /// Users with at least one follower, most followed first (then smallest
    /// id): who's going for big events reads it from the top.
    ranking: BTreeSet<Ranked>,
    /// Followers per user, dense: scoring thousands of attendees reads 4
    /// bytes each instead of a list header.
    follower_counts: Vec<u32>,
    /// Follower count from which a user is notable; 0 while nobody is.
    notable_min: u32,
    /// By event: its notable attendees ranked like `ranking` (most
    /// followers first, then smallest id). When an event has at least
    /// `first` of them, who's going reads its answer off the front: everyone
    /// else has fewer followers than each of them.
    notable_attendees: Vec<Vec<Ranked>>,
    /// FOLLOWS edges at which the notable threshold is chosen again.
    notable_refresh_at: u64,
    follow_count: u64,
    attend_count: u64,
}

/// Answer of [`SocialGraph::friends_going`] (benchmark query Q1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendsGoing {
    /// How many friends attend.
    pub count: usize,
    /// The smallest ids among them, ascending.
    pub first: Vec<UserId>,
}

/// Answer of [`SocialGraph::whos_going`] (benchmark query Q4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhosGoing {
    /// How many users attend.
    pub count: usize,
    /// The attendees with the most followers (then smallest id), with their follower counts.
    pub first: Vec<(UserId, u32)>,
}

/// A user with their follower count, ordered most followed first, then
/// smallest id.
type Ranked = (Reverse<u32>, u32);

/// The u32 slot of an id; ids are allocated from 1 and stay far below 2^32
/// (registration refuses beyond that).
pub(crate) fn slot(id: u64) -> u32 {
    u32::try_from(id).expect("ids stay below 2^32")
}

fn neighbours<T>(lists: &[Vec<T>], node: u32) -> &[T] {
    lists.get(node as usize).map_or(&[], Vec::as_slice)
}

/// `node`'s entry in a per-node table, growing the table (with empty
/// entries) to reach it.
fn list_mut<T: Default>(lists: &mut Vec<T>, node: u32) -> &mut T {
    let index = node as usize;
    if lists.len() <= index {
        lists.resize_with(index + 1, T::default);
    }
    &mut lists[index]
}

/// Inserts into a sorted list; false when already there.
fn insert_sorted<T: Ord>(list: &mut Vec<T>, value: T) -> bool {
    match list.binary_search(&value) {
        Ok(_) => false,
        Err(at) => {
            list.insert(at, value);
            true
        }
    }
}

/// Removes from a sorted list; false when absent.
fn remove_sorted<T: Ord>(list: &mut Vec<T>, value: T) -> bool {
    match list.binary_search(&value) {
        Ok(at) => {
            list.remove(at);
            true
        }
        Err(_) => false,
    }
}

impl SocialGraph {
    /// Builds the index from whole adjacency lists at once (start-up and
    /// import): `following[u]` and `attending[u]` for every user, sorted
    /// ascending without duplicates. Reverse lists are derived.
    pub fn from_lists(following: Vec<Vec<u32>>, attending: Vec<Vec<u32>>) -> SocialGraph {
        let followers = reverse(&following);
        let attendees = reverse(&attending).into_iter().map(Attendees::from_sorted).collect();
        let follow_count = following.iter().map(|l| l.len() as u64).sum();
        let attend_count = attending.iter().map(|l| l.len() as u64).sum();
        let mut ranked: Vec<Ranked> = followers
            .iter()
            .enumerate()
            .filter(|(_, list)| !list.is_empty())
            .map(|(user, list)| (Reverse(list.len() as u32), slot(user as u64)))
            .collect();
        ranked.sort_unstable();
        let follower_counts = followers.iter().map(|list| list.len() as u32).collect();
        let mut index = SocialGraph {
            follower_counts,
            following,
            followers,
            attending,
            attendees,
            extra_sources: HashMap::new(),
            ranking: ranked.into_iter().collect(),
            notable_min: 0,
            notable_attendees: Vec::new(),
            notable_refresh_at: 0,
            follow_count,
            attend_count,
        };
        index.choose_notable();
        index
    }

    /// Chooses the notable threshold: the follower count of the user one
    /// 32nd (`NOTABLE_SHARE`) of the way down the ranking (ties make the
    /// share a little larger), and lists every event's notable attendees
    /// anew.
    pub fn choose_notable(&mut self) {
        let min = self.ranking.iter().nth(self.ranking.len() / NOTABLE_SHARE).map_or(0, |&(Reverse(f), _)| f);
        self.set_notable_min(min);
        self.notable_refresh_at = self.follow_count.saturating_mul(2).max(NOTABLE_REFRESH_FOLLOWS);
    }

    /// Makes users with at least `min` followers notable (nobody for 0) and
    /// lists every event's notable attendees anew.
    fn set_notable_min(&mut self, min: u32) {
        self.notable_min = min;
        self.notable_attendees = if min == 0 {
            Vec::new()
        } else {
            let counts = &self.follower_counts;
            let ranked = |user: u32| (Reverse(counts.get(user as usize).copied().unwrap_or(0)), user);
            let notable = |attendees: &Attendees| {
                let mut list: Vec<Ranked> = attendees.iter().map(ranked).filter(|&(Reverse(f), _)| f >= min).collect();
                list.sort_unstable();
                list
            };
            self.attendees.iter().map(notable).collect()
        };
    }

    /// `user` ranked by followers, when notable.
    fn notable(&self, user: u32) -> Option<Ranked> {
        let followers = self.follower_counts.get(user as usize).copied().unwrap_or(0);
        (self.notable_min != 0 && followers >= self.notable_min).then_some((Reverse(followers), user))
    }

    /// Moves `user` in the follower ranking after their count went from
    /// `before` to `after`.
    fn rerank(&mut self, user: u32, before: usize, after: usize) {
        let index = user as usize;
        if self.follower_counts.len() <= index {
            self.follower_counts.resize(index + 1, 0);
        }
        self.follower_counts[index] = after as u32;
        let min = self.notable_min as usize;
        if min != 0 && (before >= min || after >= min) {
            // Every event `user` attends ranks them anew.
            for &event in neighbours(&self.attending, user) {
                let notable = list_mut(&mut self.notable_attendees, event);
                if before >= min {
                    let removed = remove_sorted(notable, (Reverse(before as u32), user));
                    debug_assert!(removed, "notable attendees follow follower counts");
                }
                if after >= min {
                    let added = insert_sorted(notable, (Reverse(after as u32), user));
                    debug_assert!(added, "notable attendees follow follower counts");
                }
            }
        }
        if before > 0 {
            self.ranking.remove(&(Reverse(before as u32), user));
        }
        if after > 0 {
            self.ranking.insert((Reverse(after as u32), user));
        }
    }

    /// Adds `follower` FOLLOWS `followee`; false when it already was.
    pub fn follow(&mut self, follower: UserId, followee: UserId) -> bool {
        let (src, dst) = (slot(follower.0), slot(followee.0));
        if !insert_sorted(list_mut(&mut self.following, src), dst) {
            return false;
        }
        let followers = list_mut(&mut self.followers, dst);
        let added = insert_sorted(followers, src);
        debug_assert!(added, "FOLLOWS directions agree");
        let after = followers.len();
        self.rerank(dst, after - 1, after);
        self.follow_count += 1;
        if self.follow_count >= self.notable_refresh_at.max(NOTABLE_REFRESH_FOLLOWS) {
            self.choose_notable();
        }
        true
    }

    /// Removes `follower` FOLLOWS `followee`; false when it was not there.
    pub fn unfollow(&mut self, follower: UserId, followee: UserId) -> bool {
        let (src, dst) = (slot(follower.0), slot(followee.0));
        if !remove_sorted(list_mut(&mut self.following, src), dst) {
            return false;
        }
        let followers = list_mut(&mut self.followers, dst);
        let removed = remove_sorted(followers, src);
        debug_assert!(removed, "FOLLOWS directions agree");
        let after = followers.len();
        self.rerank(dst, after + 1, after);
        self.follow_count -= 1;
        true
    }

    /// Counts one more source (a confirmed booking, an imported attendance)
    /// of `user` ATTENDS `event`, adding the edge with the first.
    pub fn add_attendance(&mut self, user: UserId, event: EventId) {
        let (u, e) = (slot(user.0), slot(event.0));
        if insert_sorted(list_mut(&mut self.attending, u), e) {
            let added = list_mut(&mut self.attendees, e).insert(u);
            debug_assert!(added, "ATTENDS directions agree");
            if let Some(ranked) = self.notable(u) {
                insert_sorted(list_mut(&mut self.notable_attendees, e), ranked);
            }
            self.attend_count += 1;
        } else {
            *self.extra_sources.entry((e, u)).or_insert(0) += 1;
        }
    }

    /// Counts one source of `user` ATTENDS `event` out, removing the edge
    /// with the last.
    pub fn remove_attendance(&mut self, user: UserId, event: EventId) {
        let (u, e) = (slot(user.0), slot(event.0));
        if let Entry::Occupied(mut extra) = self.extra_sources.entry((e, u)) {
            *extra.get_mut() -= 1;
            if *extra.get() == 0 {
                extra.remove();
            }
            return;
        }
        if remove_sorted(list_mut(&mut self.attending, u), e) {
            let removed = list_mut(&mut self.attendees, e).remove(u);
            debug_assert!(removed, "ATTENDS directions agree");
            if let Some(ranked) = self.notable(u) {
                remove_sorted(list_mut(&mut self.notable_attendees, e), ranked);
            }
            self.attend_count -= 1;
        }
    }

    /// The users `user` follows, ascending.
    pub fn following(&self, user: UserId) -> &[u32] {
        neighbours(&self.following, slot(user.0))
    }

    /// The users following `user`, ascending.
    pub fn followers(&self, user: UserId) -> &[u32] {
        neighbours(&self.followers, slot(user.0))
    }

    /// The events `user` attends, ascending.
    pub fn attending(&self, user: UserId) -> &[u32] {
        neighbours(&self.attending, slot(user.0))
    }

    /// The users attending `event`.
    pub fn attendees(&self, event: EventId) -> &Attendees {
        static NONE: Attendees = Attendees::Listed(Vec::new());
        self.attendees.get(slot(event.0) as usize).unwrap_or(&NONE)
    }

    /// Whether `follower` FOLLOWS `followee`.
    pub fn follows(&self, follower: UserId, followee: UserId) -> bool {
        self.following(follower).binary_search(&slot(followee.0)).is_ok()
    }

    /// Whether `user` ATTENDS `event`.
    pub fn attends(&self, user: UserId, event: EventId) -> bool {
        self.attending(user).binary_search(&slot(event.0)).is_ok()
    }

    /// FOLLOWS edges in all.
    pub fn follow_count(&self) -> u64 {
        self.follow_count
    }

    /// ATTENDS edges in all.
    pub fn attend_count(&self) -> u64 {
        self.attend_count
    }

    /// Bytes the index holds (capacity of every list plus list headers, and
    /// an estimate for the hash map and the ranking tree): what it costs in
    /// memory, for `bytes per edge` figures.
    pub fn adjacency_bytes(&self) -> u64 {
        let lists = [&self.following, &self.followers, &self.attending];
        let header = std::mem::size_of::<Vec<u32>>() as u64;
        lists.iter().flat_map(|l| l.iter()).map(|l| header + 4 * l.capacity() as u64).sum::<u64>()
            + self.attendees.iter().map(|a| header + a.bytes()).sum::<u64>()
            + self.extra_sources.capacity() as u64 * 12
            + self.ranking.len() as u64 * 16
            + self.follower_counts.capacity() as u64 * 4
            + self.notable_attendees.iter().map(|l| header + 8 * l.capacity() as u64).sum::<u64>()
    }

    /// Q1, friends going: the users who follow `user` back and attend `event`.
    pub fn friends_going(&self, user: UserId, event: EventId, first: usize) -> FriendsGoing {
        let me = slot(user.0);
        let event = slot(event.0);
        let mut answer = FriendsGoing { count: 0, first: Vec::new() };
        for &friend in self.following(user) {
            let attends = neighbours(&self.attending, friend).binary_search(&event).is_ok();
            if attends && neighbours(&self.following, friend).binary_search(&me).is_ok() {
                answer.count += 1;
                if answer.first.len() < first {
                    answer.first.push(UserId(friend.into()));
                }
            }
        }
        answer
    }

    /// Q2, recommendations: events the people `user` follows attend and
    /// `user` does not, scored by how many of them attend. `key` ranks
    /// ties (ascending) and drops events it returns `None` for; the best
    /// `first` come back as (event, score), score descending.
    pub fn recommend<K: Ord>(
        &self,
        user: UserId,
        first: usize,
        key: impl Fn(EventId) -> Option<K>,
    ) -> Vec<(EventId, u32)> {
        let mine = self.attending(user);
        let mut seen: Vec<u32> = Vec::new();
        for &followee in self.following(user) {
            seen.extend(neighbours(&self.attending, followee).iter().filter(|e| mine.binary_search(e).is_err()));
        }
        seen.sort_unstable();
        // Keep the best `first` in a max-heap of "worse first", popping the worst.
        let mut best: BinaryHeap<(std::cmp::Reverse<u32>, K, u32)> = BinaryHeap::with_capacity(first + 1);
        for run in seen.chunk_by(|a, b| a == b) {
            let event = run[0];
            let score = run.len() as u32;
            if first == 0 {
                break;
            }
            let Some(rank) = key(EventId(event.into())) else { continue };
            best.push((std::cmp::Reverse(score), rank, event));
            if best.len() > first {
                best.pop();
            }
        }
        let mut ranked = best.into_vec();
        ranked.sort_unstable();
        ranked.into_iter().map(|(std::cmp::Reverse(score), _, event)| (EventId(event.into()), score)).collect()
    }

    /// Q3, social distance: the fewest FOLLOWS hops from `from` to `to`,
    /// when at most `hops_max` (0 for the same user). Searches from both
    /// ends, always widening the smaller frontier.
    pub fn distance(&self, from: UserId, to: UserId, hops_max: u32) -> Option<u32> {
        let (source, target) = (slot(from.0), slot(to.0));
        if source == target {
            return Some(0);
        }
        let nodes = self.following.len().max(self.followers.len()).max(source.max(target) as usize + 1);
        MARKS.with_borrow_mut(|marks| {
            let (forward_mark, backward_mark) = marks.start(nodes);
            let stamps = &mut marks.stamps[..];
            let mut forward = Frontier::new(source, forward_mark, stamps);
            let mut backward = Frontier::new(target, backward_mark, stamps);
            for hops in 1..=hops_max {
                let widen_forward = forward.cost(&self.following) <= backward.cost(&self.followers);
                let (near, far, lists) = if widen_forward {
                    (&mut forward, &backward, &self.following)
                } else {
                    (&mut backward, &forward, &self.followers)
                };
                if near.widen(lists, far.mark, stamps) {
                    return Some(hops);
                }
                if near.current.is_empty() {
                    return None;
                }
            }
            None
        })
    }

    /// Q4, who's going: how many attend `event`, and the `first` attendees
    /// with the most followers (ties: smaller id first). The first of three
    /// exact ways that applies: read the front of the event's notable
    /// attendees (when at least `first` of them), walk the follower ranking
    /// (big events), score every attendee.
    pub fn whos_going(&self, event: EventId, first: usize) -> WhosGoing {
        let attendees = self.attendees(event);
        let notable = neighbours(&self.notable_attendees, slot(event.0));
        let first = if notable.len() >= first {
            notable[..first].iter().map(|&(Reverse(followers), user)| (UserId(user.into()), followers)).collect()
        } else {
            let expected_walk = first.saturating_mul(self.ranking.len()) / attendees.len().max(1);
            if attendees.len() > WHOS_GOING_SCAN_MIN && expected_walk < attendees.len() {
                self.most_followed_attending(attendees, first, attendees.len())
                    .unwrap_or_else(|| self.score_attendees(attendees, first))
            } else {
                self.score_attendees(attendees, first)
            }
        };
        WhosGoing { count: attendees.len(), first }
    }

    /// Who's going by scoring every attendee, keeping the best `first`.
    fn score_attendees(&self, attendees: &Attendees, first: usize) -> Vec<(UserId, u32)> {
        // A max-heap on (fewer followers, larger id): its top is the worst kept.
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(first + 1);
        for user in attendees.iter() {
            if first == 0 {
                break;
            }
            let followers = self.follower_counts.get(user as usize).copied().unwrap_or(0);
            let candidate = (Reverse(followers), user);
            if best.len() < first {
                best.push(candidate);
            } else if best.peek().is_some_and(|worst| candidate < *worst) {
                best.pop();
                best.push(candidate);
            }
        }
        let mut ranked = best.into_vec();
        ranked.sort_unstable();
        ranked.into_iter().map(|(Reverse(followers), user)| (UserId(user.into()), followers)).collect()
    }

    /// Who's going for a big event: the follower ranking read from the top,
    /// keeping attendees, then (if fewer than `first` have followers) the
    /// attendees without followers in id order. `None` when the walk passes
    /// `walk_max` users (scoring every attendee is cheaper then).
    fn most_followed_attending(
        &self,
        attendees: &Attendees,
        first: usize,
        walk_max: usize,
    ) -> Option<Vec<(UserId, u32)>> {
        let mut found = Vec::with_capacity(first);
        for (walked, &(Reverse(followers), user)) in self.ranking.iter().enumerate() {
            if found.len() == first {
                return Some(found);
            }
            if walked > walk_max {
                return None;
            }
            // The event's own list stays in cache for the whole walk; the
            // users' lists would each be a miss.
            if attendees.contains(user) {
                found.push((UserId(user.into()), followers));
            }
        }
        let unfollowed = attendees.iter().filter(|&user| neighbours(&self.followers, user).is_empty());
        found.extend(unfollowed.take(first - found.len()).map(|user| (UserId(user.into()), 0)));
        Some(found)
    }
}

/// Attendees of one event: a sorted list while small, a B-tree once big
/// (a hot on-sale adds attendees at random positions, and a sorted list of a
/// million would move megabytes per booking). Iteration is ascending in both.
#[derive(Debug, Clone)]
pub enum Attendees {
    /// Up to [`ATTENDEES_LISTED_MAX`], ascending.
    Listed(Vec<u32>),
    /// More than that.
    Tree(BTreeSet<u32>),
}

/// Attendees kept in a sorted list before the set becomes a B-tree.
pub const ATTENDEES_LISTED_MAX: usize = 4_096;

impl Default for Attendees {
    fn default() -> Attendees {
        Attendees::Listed(Vec::new())
    }
}

impl Attendees {
    fn from_sorted(list: Vec<u32>) -> Attendees {
        if list.len() > ATTENDEES_LISTED_MAX {
            Attendees::Tree(list.into_iter().collect())
        } else {
            Attendees::Listed(list)
        }
    }

    /// How many attend.
    pub fn len(&self) -> usize {
        match self {
            Attendees::Listed(list) => list.len(),
            Attendees::Tree(tree) => tree.len(),
        }
    }

    /// Whether nobody attends.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `user` attends.
    pub fn contains(&self, user: u32) -> bool {
        match self {
            Attendees::Listed(list) => list.binary_search(&user).is_ok(),
            Attendees::Tree(tree) => tree.contains(&user),
        }
    }

    /// The attendees, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (listed, tree) = match self {
            Attendees::Listed(list) => (Some(list.iter().copied()), None),
            Attendees::Tree(tree) => (None, Some(tree.iter().copied())),
        };
        listed.into_iter().flatten().chain(tree.into_iter().flatten())
    }

    fn insert(&mut self, user: u32) -> bool {
        match self {
            Attendees::Listed(list) => {
                let added = insert_sorted(list, user);
                if list.len() > ATTENDEES_LISTED_MAX {
                    *self = Attendees::Tree(std::mem::take(list).into_iter().collect());
                }
                added
            }
            Attendees::Tree(tree) => tree.insert(user),
        }
    }

    fn remove(&mut self, user: u32) -> bool {
        match self {
            Attendees::Listed(list) => remove_sorted(list, user),
            Attendees::Tree(tree) => tree.remove(&user),
        }
    }

    /// Bytes held: four per entry listed, about twelve in the tree.
    fn bytes(&self) -> u64 {
        match self {
            Attendees::Listed(list) => 4 * list.capacity() as u64,
            Attendees::Tree(tree) => 12 * tree.len() as u64,
        }
    }
}

thread_local! {
    /// Per thread, which side of a social-distance search has reached each
    /// user: cleared in O(1) per search by moving on to fresh marks.
    static MARKS: std::cell::RefCell<Marks> = const { std::cell::RefCell::new(Marks { stamps: Vec::new(), last: 0 }) };
}

/// One mark per user slot; a slot holding neither of the current search's
/// two marks is unvisited by it.
struct Marks {
    stamps: Vec<u32>,
    /// The larger mark the last search used (0: none yet).
    last: u32,
}

impl Marks {
    /// Two marks no slot holds yet, for a search over `nodes` slots.
    fn start(&mut self, nodes: usize) -> (u32, u32) {
        if self.stamps.len() < nodes {
            self.stamps.resize(nodes, 0);
        }
        if self.last > u32::MAX - 2 {
            self.stamps.fill(0);
            self.last = 0;
        }
        self.last += 2;
        (self.last - 1, self.last)
    }
}

/// One side of the two-ended search: the users it reached last, and the
/// mark it leaves on every user it reaches.
struct Frontier {
    mark: u32,
    current: Vec<u32>,
}

impl Frontier {
    fn new(start: u32, mark: u32, stamps: &mut [u32]) -> Frontier {
        stamps[start as usize] = mark;
        Frontier { mark, current: vec![start] }
    }

    /// Edges the next widening would walk.
    fn cost(&self, lists: &[Vec<u32>]) -> usize {
        self.current.iter().map(|&node| neighbours(lists, node).len()).sum()
    }

    /// Moves one hop outwards; true when it touches a user marked `other`.
    fn widen(&mut self, lists: &[Vec<u32>], other: u32, stamps: &mut [u32]) -> bool {
        let mut next = Vec::new();
        for &node in &self.current {
            for &neighbour in neighbours(lists, node) {
                let stamp = &mut stamps[neighbour as usize];
                if *stamp == other {
                    return true;
                }
                if *stamp != self.mark {
                    *stamp = self.mark;
                    next.push(neighbour);
                }
            }
        }
        self.current = next;
        false
    }
}

/// Reverses adjacency lists: the result's lists come out sorted because
/// sources are visited in ascending order.
fn reverse(lists: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut degree: Vec<u32> = Vec::new();
    for targets in lists {
        for &target in targets {
            let index = target as usize;
            if degree.len() <= index {
                degree.resize(index + 1, 0);
            }
            degree[index] += 1;
        }
    }
    let mut reversed: Vec<Vec<u32>> = degree.iter().map(|&d| Vec::with_capacity(d as usize)).collect();
    for (source, targets) in lists.iter().enumerate() {
        for &target in targets {
            reversed[target as usize].push(slot(source as u64));
        }
    }
    reversed
}

pub mod visit;

#[cfg(test)]
mod tests;
