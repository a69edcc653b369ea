//! The graph on [`Pages`] as inserts and VACUUM's repair read it: elements with their
//! whole vectors (neighbour selection compares candidates with each other), cached for
//! one insert or repair, one share-locked page at a time. Every tid read comes from the
//! index itself; one beyond the end is the store's error (PostgreSQL's ERROR).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::error::IndexError;
use super::format::{self, Element, Tid};
use super::pages::{PageRead, Pages};
use super::search::{GraphStore, NodeId};
use super::Metric;

/// A multiplicative hash for item pointers (the default SipHash showed in profiles).
#[derive(Default)]
pub struct TidHasher(u64);

impl TidHasher {
    fn mix(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for TidHasher {
    fn finish(&self) -> u64 {
        // The table picks buckets by the low bits, which a product takes from the low
        // input bits only (an item pointer's offset): fold the high half in.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.mix(b as u64);
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.mix(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.mix(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.mix(v);
    }
}

pub type TidMap<V> = HashMap<Tid, V, BuildHasherDefault<TidHasher>>;
/// Visited nodes (encoded tids) of one search.
pub type TidSet = std::collections::HashSet<NodeId, BuildHasherDefault<TidHasher>>;

/// More heap-tid tuples than one element can have (2^16 blocks' worth): a longer chain
/// is damage.
pub const MAX_TIDS_HOPS: u64 = 1 << 20;

/// An element as read, with its whole vector.
pub struct Node {
    pub level: u8,
    pub deleted: bool,
    pub heap_tids: Vec<Tid>,
    pub neighbors: Tid,
    pub vector: Vec<f32>,
    /// The neighbour tuple, when it sat on the element's page.
    neighbor_bytes: Option<Vec<u8>>,
}

/// Walks a chain of tuples (see [`super::chain`]) that belongs to the element at
/// `owner`, from `first`, at most `limit` tuples: `visit` reads a link and returns the
/// one after it (Err: the tuple is missing or not what it should be). A loop, an overlong
/// chain or a bad link is a corruption error; a long chain calls `interrupts` (which
/// raises a pending cancel) every 1,024 tuples.
pub fn walk_chain(
    interrupts: &dyn Fn(),
    owner: Tid,
    what: &str,
    first: Tid,
    limit: u64,
    mut visit: impl FnMut(Tid) -> Result<Tid, String>,
) -> Result<u64, IndexError> {
    let mut steps = 0u32;
    super::chain::walk(first, limit, |at| {
        steps = steps.wrapping_add(1);
        if steps % 1024 == 0 {
            interrupts();
        }
        visit(at)
    })
    .map_err(|e| IndexError::at(owner, format!("its {what}: {e}")))
}

/// The element tuple `item` at `at`, decoded (its vector's inline part only).
fn element(item: &[u8], at: Tid) -> Result<Element, IndexError> {
    Element::decode_header(item).map_err(|e| IndexError::at(at, format!("element: {e}")))
}

/// The element at `tid` with its whole vector; None if the slot holds no tuple.
pub fn load_node<P: Pages + ?Sized>(pages: &P, tid: Tid) -> Result<Option<Node>, IndexError> {
    if !tid.is_valid() {
        return Ok(None);
    }
    let head = pages.read(tid.block, |page: &dyn PageRead| -> Result<_, IndexError> {
        let Some(item) = page.item(tid.offset) else { return Ok(None) };
        let header = element(item, tid)?;
        let mut vector = Vec::with_capacity(header.dims as usize);
        format::push_values(format::inline_values(item), &mut vector);
        let nb = (header.neighbors.block == tid.block).then(|| page.item(header.neighbors.offset).map(<[u8]>::to_vec)).flatten();
        let node = Node {
            level: header.level,
            deleted: header.deleted,
            heap_tids: header.heap_tids,
            neighbors: header.neighbors,
            vector,
            neighbor_bytes: nb,
        };
        Ok(Some((node, header.next_chunk, header.dims as usize)))
    })?;
    let Some((mut node, next, dims)) = head else { return Ok(None) };
    let inline = node.vector.len();
    walk_chain(&|| pages.check_for_interrupts(), tid, "vector chunks", next, format::chunk_count(dims, inline) as u64, |at| {
        pages.read(at.block, |page| {
            let item = page.item(at.offset).ok_or_else(|| format!("missing vector chunk ({}, {})", at.block, at.offset))?;
            let (values, after) = format::chunk_values(item).map_err(|e| e.to_string())?;
            format::push_values(values, &mut node.vector);
            Ok(after)
        })
    })?;
    if node.vector.len() != dims {
        return Err(IndexError::at(tid, format!("its vector has {} of its {dims} values", node.vector.len())));
    }
    Ok(Some(node))
}

/// The graph as inserts and VACUUM read it, over `pages`. The [`GraphStore`] methods
/// cannot fail, so the first error is kept and later calls see an empty graph:
/// [`PageGraph::check`] returns it (callers check after each search).
pub struct PageGraph<'p, P: Pages + ?Sized> {
    pub pages: &'p P,
    pub m: usize,
    pub metric: Metric,
    nodes: TidMap<Node>,
    /// The last element read that is not live. Not cached: VACUUM frees deleted
    /// elements' slots while inserts run, and an insert may fill one with another
    /// element meanwhile; a cached copy would give that element the old one's vector
    /// (its distances, so the pruning of lists it is in, went wrong: far links, and
    /// elements whose only ways in were cut). A live element is not freed while an
    /// insert that read it runs (VACUUM waits for the inserts in flight after marking).
    transient: Option<Node>,
    /// About how much memory the cached elements take.
    bytes: usize,
    error: Option<IndexError>,
}

impl<'p, P: Pages + ?Sized> PageGraph<'p, P> {
    pub fn new(pages: &'p P, m: usize, metric: Metric) -> Self {
        PageGraph { pages, m, metric, nodes: TidMap::default(), transient: None, bytes: 0, error: None }
    }

    /// The first error met since the last check.
    pub fn check(&mut self) -> Result<(), IndexError> {
        self.error.take().map_or(Ok(()), Err)
    }

    fn fail(&mut self, e: IndexError) {
        self.error.get_or_insert(e);
    }

    /// The element at `tid` (None if the slot holds no element, or reading it failed).
    /// Live elements are cached; others are read afresh each time (see `transient`).
    pub fn node(&mut self, tid: Tid) -> Option<&Node> {
        if self.error.is_some() {
            return None;
        }
        if !self.nodes.contains_key(&tid) {
            match load_node(self.pages, tid) {
                Ok(Some(n)) if !n.deleted => {
                    self.bytes += 96 + 4 * n.vector.len() + n.neighbor_bytes.as_ref().map_or(0, Vec::len) + 6 * n.heap_tids.len();
                    self.nodes.insert(tid, n);
                }
                Ok(n) => {
                    self.transient = n;
                    return self.transient.as_ref();
                }
                Err(e) => {
                    self.fail(e);
                    return None;
                }
            }
        }
        self.nodes.get(&tid)
    }

    /// Whether the element at `tid` is there and not deleted.
    pub fn is_live(&mut self, tid: Tid) -> bool {
        self.node(tid).is_some_and(|n| !n.deleted)
    }

    /// About how much memory the cached elements take.
    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }

    /// The distance between two elements; infinite if either slot holds no element.
    pub fn between(&mut self, a: Tid, b: Tid) -> f32 {
        let metric = self.metric;
        if self.node(a).is_none() {
            return f32::INFINITY;
        }
        if !self.nodes.contains_key(&a) {
            // Not live: its vector is only in `transient`, which reading `b` replaces.
            let va = self.transient.as_ref().map(|n| n.vector.clone()).unwrap_or_default();
            return self.node(b).map_or(f32::INFINITY, |y| metric.distance(&va, &y.vector));
        }
        if self.node(b).is_none() {
            return f32::INFINITY;
        }
        // `b` is cached if live, else it is the one in `transient` now.
        match (self.nodes.get(&a), self.nodes.get(&b).or(self.transient.as_ref())) {
            (Some(x), Some(y)) => metric.distance(&x.vector, &y.vector),
            _ => f32::INFINITY,
        }
    }

    /// The neighbours of `tid` on `level` (none if it is not an element, or on error).
    pub fn neighbor_list(&mut self, tid: Tid, level: u8) -> Vec<Tid> {
        let (m, pages) = (self.m, self.pages);
        let mut out = Vec::new();
        let Some(n) = self.node(tid) else { return out };
        let ntid = n.neighbors;
        let result = match &n.neighbor_bytes {
            Some(bytes) => format::neighbors_on(bytes, m, level, &mut out).map_err(|e| IndexError::at(ntid, e)),
            None if ntid.is_valid() => pages.read(ntid.block, |page| match page.item(ntid.offset) {
                Some(bytes) => format::neighbors_on(bytes, m, level, &mut out).map_err(|e| IndexError::at(ntid, e)),
                None => Err(IndexError::at(ntid, "missing neighbour tuple")),
            }),
            None => Err(IndexError::at(ntid, "invalid neighbour tuple pointer")),
        };
        if let Err(e) = result {
            self.fail(e);
            out.clear();
        }
        out
    }
}

impl<P: Pages + ?Sized> GraphStore for PageGraph<'_, P> {
    fn distance(&mut self, query: &[f32], node: NodeId) -> f32 {
        let metric = self.metric;
        self.node(Tid::from_node(node)).map_or(f32::INFINITY, |n| metric.distance(query, &n.vector))
    }

    fn neighbors(&mut self, node: NodeId, level: u8, out: &mut Vec<NodeId>) {
        out.extend(self.neighbor_list(Tid::from_node(node), level).into_iter().map(|t| t.node()));
    }
}
