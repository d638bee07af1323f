//! petgraph's visit traits over the FOLLOWS relation of the index, so
//! petgraph's generic algorithms (BFS, DFS, Dijkstra, strongly connected
//! components, ...) run on the live index without copying it. Nodes are
//! user slots (`u32`), edges are `(follower, followee)` pairs.

use petgraph::visit::{
    Data, GraphBase, GraphProp, GraphRef, IntoEdgeReferences, IntoEdges, IntoNeighbors, IntoNeighborsDirected,
    IntoNodeIdentifiers, NodeCount, NodeIndexable, Visitable,
};
use petgraph::{Directed, Direction};

use super::{neighbours, SocialGraph};

/// A borrowed, read-only view of FOLLOWS for petgraph's algorithms.
#[derive(Clone, Copy)]
pub struct FollowsView<'a> {
    graph: &'a SocialGraph,
}

impl SocialGraph {
    /// The FOLLOWS relation as a petgraph graph.
    pub fn follows_view(&self) -> FollowsView<'_> {
        FollowsView { graph: self }
    }
}

/// Edges out of one node, as `(source, target, &())` references.
pub struct Edges<'a> {
    source: u32,
    targets: std::slice::Iter<'a, u32>,
}

impl<'a> Iterator for Edges<'a> {
    type Item = (u32, u32, &'a ());
    fn next(&mut self) -> Option<Self::Item> {
        self.targets.next().map(|&target| (self.source, target, &()))
    }
}

/// Every FOLLOWS edge, source by source.
pub struct AllEdges<'a> {
    lists: &'a [Vec<u32>],
    source: usize,
    current: Edges<'a>,
}

impl<'a> Iterator for AllEdges<'a> {
    type Item = (u32, u32, &'a ());
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(edge) = self.current.next() {
                return Some(edge);
            }
            self.source += 1;
            let targets = self.lists.get(self.source)?;
            self.current = Edges { source: super::slot(self.source as u64), targets: targets.iter() };
        }
    }
}

impl GraphBase for FollowsView<'_> {
    type NodeId = u32;
    type EdgeId = (u32, u32);
}

impl GraphRef for FollowsView<'_> {}

impl Data for FollowsView<'_> {
    type NodeWeight = ();
    type EdgeWeight = ();
}

impl GraphProp for FollowsView<'_> {
    type EdgeType = Directed;
}

impl<'a> IntoNeighbors for FollowsView<'a> {
    type Neighbors = std::iter::Copied<std::slice::Iter<'a, u32>>;
    fn neighbors(self, node: u32) -> Self::Neighbors {
        neighbours(&self.graph.following, node).iter().copied()
    }
}

impl<'a> IntoNeighborsDirected for FollowsView<'a> {
    type NeighborsDirected = std::iter::Copied<std::slice::Iter<'a, u32>>;
    fn neighbors_directed(self, node: u32, direction: Direction) -> Self::NeighborsDirected {
        let lists = match direction {
            Direction::Outgoing => &self.graph.following,
            Direction::Incoming => &self.graph.followers,
        };
        neighbours(lists, node).iter().copied()
    }
}

impl<'a> IntoEdgeReferences for FollowsView<'a> {
    type EdgeRef = (u32, u32, &'a ());
    type EdgeReferences = AllEdges<'a>;
    fn edge_references(self) -> AllEdges<'a> {
        let first = self.graph.following.first().map_or(&[][..], Vec::as_slice);
        AllEdges { lists: &self.graph.following, source: 0, current: Edges { source: 0, targets: first.iter() } }
    }
}

impl<'a> IntoEdges for FollowsView<'a> {
    type Edges = Edges<'a>;
    fn edges(self, node: u32) -> Edges<'a> {
        Edges { source: node, targets: neighbours(&self.graph.following, node).iter() }
    }
}

impl IntoNodeIdentifiers for FollowsView<'_> {
    type NodeIdentifiers = std::ops::Range<u32>;
    fn node_identifiers(self) -> Self::NodeIdentifiers {
        0..super::slot(self.node_bound() as u64)
    }
}

impl NodeCount for FollowsView<'_> {
    fn node_count(&self) -> usize {
        self.node_bound()
    }
}

impl NodeIndexable for FollowsView<'_> {
    fn node_bound(&self) -> usize {
        self.graph.following.len().max(self.graph.followers.len())
    }
    fn to_index(&self, node: u32) -> usize {
        node as usize
    }
    fn from_index(&self, index: usize) -> u32 {
        super::slot(index as u64)
    }
}

impl Visitable for FollowsView<'_> {
    type Map = std::collections::HashSet<u32>;
    fn visit_map(&self) -> Self::Map {
        std::collections::HashSet::new()
    }
    fn reset_map(&self, map: &mut Self::Map) {
        map.clear();
    }
}
