//! The HNSW search over any graph store: in memory while building, buffer pages while
//! scanning or inserting inside PostgreSQL.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

/// A node: an index in memory, an encoded item pointer on disk.
pub type NodeId = u64;

/// What the search needs from a graph store.
pub trait GraphStore {
    /// Distance from the (prepared) query to `node`.
    fn distance(&mut self, query: &[f32], node: NodeId) -> f32;
    /// `node`'s neighbours on `level`, appended to `out`.
    fn neighbors(&mut self, node: NodeId, level: u8, out: &mut Vec<NodeId>);
    /// The search will next ask for the distances of `nodes`, in this order: a store may
    /// start loading them (memory prefetch), so that their cache misses overlap.
    fn prefetch(&mut self, _nodes: &[NodeId]) {}
}

/// Remembers which nodes a search has seen.
pub trait Visited {
    /// True the first time `node` is seen.
    fn first_visit(&mut self, node: NodeId) -> bool;
}

impl<S: std::hash::BuildHasher> Visited for HashSet<NodeId, S> {
    fn first_visit(&mut self, node: NodeId) -> bool {
        self.insert(node)
    }
}

/// Dense visited marks for nodes 0..n, cleared in O(1) by bumping a stamp.
pub struct StampVisited {
    marks: Vec<u32>,
    stamp: u32,
}

impl StampVisited {
    pub fn new(n: usize) -> Self {
        StampVisited { marks: vec![0; n], stamp: 1 }
    }
    pub fn clear(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.fill(0);
            self.stamp = 1;
        }
    }
}

impl Visited for StampVisited {
    fn first_visit(&mut self, node: NodeId) -> bool {
        let m = &mut self.marks[node as usize];
        if *m == self.stamp {
            false
        } else {
            *m = self.stamp;
            true
        }
    }
}

/// A node with its distance to the query; ordered by distance, then id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub distance: f32,
    pub node: NodeId,
}

impl Eq for Candidate {}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then(self.node.cmp(&other.node))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Best-first search of one level from `entries`, keeping the `ef` nearest; returns them
/// nearest first. `entries` must already be marked visited.
pub fn search_level<G: GraphStore + ?Sized, V: Visited + ?Sized>(
    graph: &mut G,
    query: &[f32],
    entries: &[Candidate],
    ef: usize,
    level: u8,
    visited: &mut V,
) -> Vec<Candidate> {
    let ef = ef.max(1);
    let mut frontier: BinaryHeap<std::cmp::Reverse<Candidate>> = entries.iter().map(|&c| std::cmp::Reverse(c)).collect();
    let mut best: BinaryHeap<Candidate> = entries.iter().copied().collect();
    while best.len() > ef {
        best.pop();
    }
    let mut neighbors = Vec::new();
    while let Some(std::cmp::Reverse(c)) = frontier.pop() {
        if best.len() >= ef && c.distance > best.peek().map_or(f32::INFINITY, |w| w.distance) {
            break;
        }
        neighbors.clear();
        graph.neighbors(c.node, level, &mut neighbors);
        neighbors.retain(|&n| visited.first_visit(n));
        graph.prefetch(&neighbors);
        for &n in &neighbors {
            let d = graph.distance(query, n);
            let worst = best.peek().map_or(f32::INFINITY, |w| w.distance);
            if best.len() < ef || d < worst {
                let cand = Candidate { distance: d, node: n };
                frontier.push(std::cmp::Reverse(cand));
                best.push(cand);
                if best.len() > ef {
                    best.pop();
                }
            }
        }
    }
    let mut out = best.into_vec();
    out.sort();
    out
}

/// Greedy descent from `entry` (at `top`) down to `bottom + 1`, returning the nearest
/// node found on level `bottom + 1` as the entry for level `bottom`. Each level is its
/// own search (a node seen above is looked at again below).
pub fn descend<G: GraphStore + ?Sized>(graph: &mut G, query: &[f32], entry: Candidate, top: u8, bottom: u8) -> Candidate {
    let mut cur = entry;
    let mut level = top;
    let mut seen = FewVisited(Vec::with_capacity(64));
    while level > bottom {
        seen.0.clear();
        seen.0.push(cur.node);
        cur = search_level(graph, query, &[cur], 1, level, &mut seen)[0];
        level -= 1;
    }
    cur
}

/// Visited marks for a search that sees few nodes (a greedy step on an upper level sees
/// a few dozen): a list, which beats hashing at that size.
struct FewVisited(Vec<NodeId>);

impl Visited for FewVisited {
    fn first_visit(&mut self, node: NodeId) -> bool {
        if self.0.contains(&node) {
            false
        } else {
            self.0.push(node);
            true
        }
    }
}

/// The HNSW neighbour-selection heuristic: walk the candidates nearest first and keep one
/// only if it is nearer to the base than to every neighbour kept so far (so the links
/// spread out in different directions); then, while fewer than `fill` are kept, add the
/// nearest of the pruned ones (hnswlib's and pgvector's "keep pruned connections", which
/// fill every list). `between(a, b)` is the distance of two candidates.
pub fn select_neighbors(
    candidates: &[Candidate],
    max: usize,
    fill: usize,
    mut between: impl FnMut(NodeId, NodeId) -> f32,
) -> Vec<Candidate> {
    let mut sorted: Vec<Candidate> = candidates.to_vec();
    sorted.sort();
    let mut kept: Vec<Candidate> = Vec::with_capacity(max);
    let mut pruned: Vec<Candidate> = Vec::new();
    for c in sorted {
        if kept.len() >= max {
            break;
        }
        if kept.iter().all(|k| between(c.node, k.node) > c.distance) {
            kept.push(c);
        } else {
            pruned.push(c);
        }
    }
    // Exact duplicates of the base (distance 0) are pruned by the rule above, since they
    // are also at distance 0 from each other; keep them in the free slots, or a cluster of
    // identical vectors ends up linked in a thin chain that searches cannot get through.
    let fill = fill.min(max);
    for p in pruned {
        if kept.len() >= max || (p.distance != 0.0 && kept.len() >= fill) {
            continue;
        }
        kept.push(p);
    }
    kept
}

/// Full k-NN search: descend from the entry point, then search level 0 with `ef`.
pub fn knn<G: GraphStore + ?Sized, V: Visited + ?Sized>(
    graph: &mut G,
    query: &[f32],
    entry: NodeId,
    entry_level: u8,
    ef: usize,
    visited: &mut V,
) -> Vec<Candidate> {
    let start = Candidate { distance: graph.distance(query, entry), node: entry };
    let cur = descend(graph, query, start, entry_level, 0);
    visited.first_visit(cur.node);
    search_level(graph, query, &[cur], ef, 0, visited)
}
