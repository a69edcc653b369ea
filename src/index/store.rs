//! The graph on disk as a scan reads it, as [`GraphStore`] for the core search: elements
//! and neighbour lists read through the buffer manager, one share-locked buffer at a time.
//! [`ScanGraph`] keeps nothing and computes distances on the page (a scan touches each
//! element once). Inserts and VACUUM's repair read the graph through the core's
//! [`akidb_core::hnsw::graph::PageGraph`] instead (elements cached with their vectors).

use std::hash::BuildHasherDefault;

use akidb_core::hnsw::format::{self, ElementHead, Tid};
pub use akidb_core::hnsw::graph::{TidHasher, TidSet, MAX_TIDS_HOPS};
use akidb_core::hnsw::search::{GraphStore, NodeId};
use akidb_core::hnsw::Metric;
use pgrx::pg_sys;

use super::cache::{Hints, UpperNode};
use super::page::Locked;

pub fn corrupted(what: String) -> ! {
    crate::error::raise_index(akidb_core::hnsw::error::IndexError::Corrupted(what))
}

/// The fixed fields of the element tuple `item` at `tid`; an ERROR if it is not one.
fn element_head(item: &[u8], tid: Tid) -> ElementHead {
    ElementHead::parse(item).unwrap_or_else(|e| corrupted(format!("element ({}, {}): {e}", tid.block, tid.offset)))
}

/// Walks a chain of tuples (see [`akidb_core::hnsw::chain`]) that belongs to the element
/// at `owner`, from `first`, at most `limit` tuples: `visit` reads a link and returns the
/// one after it (Err: the tuple is missing or not what it should be). A loop, an overlong
/// chain or a bad link is a corruption ERROR; a long chain checks for interrupts.
pub fn walk_chain(owner: Tid, what: &str, first: Tid, limit: u64, visit: impl FnMut(Tid) -> Result<Tid, String>) -> u64 {
    akidb_core::hnsw::graph::walk_chain(&|| { pgrx::check_for_interrupts!() }, owner, what, first, limit, visit)
        .unwrap_or_else(|e| crate::error::raise_index(e))
}

/// Walks the vector chunks of the element at `owner` (of `dims` values, `inline` of them
/// in the element) from `next` on, reading each block with `read` and giving each
/// chunk's values (bytes) to `each`.
fn walk_chunks(owner: Tid, dims: usize, inline: usize, next: Tid, mut read: impl FnMut(u32) -> Locked, mut each: impl FnMut(&[u8])) {
    walk_chain(owner, "vector chunks", next, format::chunk_count(dims, inline) as u64, |at| {
        let b = read(at.block);
        let page = b.page();
        let item = page.item(at.offset).ok_or_else(|| format!("missing vector chunk ({}, {})", at.block, at.offset))?;
        let (values, after) = format::chunk_values(item).map_err(|e| e.to_string())?;
        each(values);
        Ok(after)
    });
}

/// Little-endian f32s in page bytes, without a copy when aligned (they always are:
/// items are MAXALIGNed and the value offsets are multiples of 4); else copied into
/// `scratch`. The result lives no longer than either.
fn floats<'a>(bytes: &'a [u8], scratch: &'a mut Vec<f32>) -> &'a [f32] {
    if bytes.as_ptr().align_offset(4) == 0 && cfg!(target_endian = "little") {
        // SAFETY: aligned, in bounds, any bit pattern is an f32, and the slice borrows
        // the bytes.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, bytes.len() / 4) }
    } else {
        scratch.clear();
        scratch.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
        scratch.as_slice()
    }
}

/// The rows and the next link of the heap-tid tuple at `at`, on the locked block `b`.
pub fn read_tids(b: &Locked, at: Tid) -> Result<(Vec<Tid>, Tid), String> {
    let page = b.page();
    let item = page.item(at.offset).ok_or_else(|| format!("missing heap-tid tuple ({}, {})", at.block, at.offset))?;
    format::decode_tids(item).map_err(|e| format!("heap-tid tuple ({}, {}): {e}", at.block, at.offset))
}

/// How many elements ahead of the one being computed a scan starts loading.
const LOOKAHEAD: usize = 2;

/// The graph as a scan reads it: nothing kept between calls (each element is read where
/// it lies, its distance computed on the page from its 8-bit code, or its values if it
/// has none), buffers found through the backend's hints, and the pages of the next
/// neighbours prefetched while one is computed. [`ScanGraph::exact`] re-ranks.
pub struct ScanGraph {
    rel: pg_sys::Relation,
    m: usize,
    metric: Metric,
    hints: Hints,
    scratch: Vec<f32>,
    tids: Vec<Tid>,
    /// The nodes the search said it will read next, and how far it got.
    upcoming: Vec<NodeId>,
    next: usize,
    /// Whether some distance came from a code (the results need re-ranking).
    pub estimated: bool,
    /// For each element whose distance came from its code, a lower bound of the exact one.
    bounds: std::collections::HashMap<NodeId, f32, BuildHasherDefault<TidHasher>>,
    query_norm: Option<f32>,
    /// The level of the last neighbour list read: the distances asked for next are of
    /// nodes on that level (all upper-level nodes when it is above 0).
    level: u8,
}

impl ScanGraph {
    /// A scan's graph of the index as `meta` (just read) describes it.
    pub fn new(rel: pg_sys::Relation, meta: &format::Meta) -> Self {
        let mut hints = Hints::take(rel);
        hints.upper.validate((super::page::file_number(rel), meta.entry.node(), meta.entry_level, meta.insert_block, meta.reuse_epoch));
        ScanGraph {
            rel,
            m: meta.m as usize,
            metric: meta.metric,
            hints,
            scratch: Vec::new(),
            tids: Vec::new(),
            upcoming: Vec::new(),
            next: 0,
            estimated: false,
            bounds: Default::default(),
            query_norm: None,
            level: 0,
        }
    }

    /// An upper-level node to keep, from its element tuple and its page.
    fn upper_node(&self, page: &super::page::Page<'_>, item: &[u8], head: &format::ElementHead) -> Option<UpperNode> {
        let c = format::element_code(item)?;
        if head.level == 0 {
            return None;
        }
        let bytes = page.item(head.neighbors.offset).filter(|_| head.neighbors.is_valid())?;
        let mut lists = Vec::with_capacity(head.level as usize);
        for l in 1..=head.level {
            let mut list = Vec::new();
            format::neighbors_on(bytes, self.m, l, &mut list).ok()?;
            lists.push(list.iter().map(|t| t.node()).collect());
        }
        Some(UpperNode { min: c.min, scale: c.scale, err: c.err, code: c.bytes.into(), lists })
    }

    /// Notes a distance computed on a code: the lower bound of the exact one.
    fn noted(&mut self, query: &[f32], node: NodeId, estimate: f32, err: f32, scale: f32) -> f32 {
        self.estimated = true;
        let norm = *self.query_norm.get_or_insert_with(|| query.iter().map(|x| x * x).sum::<f32>().sqrt());
        self.bounds.insert(node, self.metric.lower_bound(estimate, err, norm, query.len(), scale));
        estimate
    }

    /// Whether the element at `tid` is deleted, and its heap rows (appended to `rows`);
    /// None if the slot holds no element.
    pub fn rows(&mut self, tid: Tid, rows: &mut Vec<Tid>) -> Option<bool> {
        if !tid.is_valid() {
            return None;
        }
        let (deleted, more) = {
            let b = self.hints.read(self.rel, tid.block);
            let page = b.page();
            let item = page.item(tid.offset)?;
            let head = element_head(item, tid);
            rows.extend(format::heap_tids(item));
            (head.deleted, head.more_tids)
        };
        // The rows beyond the first few, in heap-tid tuples (identical vectors).
        if !deleted {
            let (rel, hints) = (self.rel, &mut self.hints);
            walk_chain(tid, "heap-tid tuples", more, MAX_TIDS_HOPS, |at| {
                let b = hints.read(rel, at.block);
                let (tids, next) = read_tids(&b, at)?;
                rows.extend(tids);
                Ok(next)
            });
        }
        Some(deleted)
    }

    /// A lower bound of the exact distance of a node whose distance came from its code
    /// (None if it came from the values, so it is exact).
    pub fn lower_bound(&self, node: NodeId) -> Option<f32> {
        self.bounds.get(&node).copied()
    }

    /// Forgets what the last search learnt, before the next one, which computes about
    /// `distances` distances.
    pub fn reset(&mut self, distances: usize) {
        self.estimated = false;
        self.bounds.clear();
        self.bounds.reserve(distances);
    }

    /// The exact distance from `query` to the element at `tid`, from its float4 values.
    pub fn exact(&mut self, query: &[f32], tid: Tid) -> f32 {
        if !tid.is_valid() {
            return f32::INFINITY;
        }
        let metric = self.metric;
        let (mut sum, mut done, next) = {
            let b = self.hints.read(self.rel, tid.block);
            let page = b.page();
            let Some(item) = page.item(tid.offset) else { return f32::INFINITY };
            let head = element_head(item, tid);
            let v = floats(format::inline_values(item), &mut self.scratch);
            let n = v.len().min(query.len());
            (metric.partial(&query[..n], &v[..n]), v.len(), head.next_chunk)
        };
        let (rel, hints, scratch) = (self.rel, &mut self.hints, &mut self.scratch);
        let inline = done;
        walk_chunks(
            tid,
            query.len(),
            inline,
            next,
            |block| hints.read(rel, block),
            |values| {
                let v = floats(values, scratch);
                let end = (done + v.len()).min(query.len());
                if done < end {
                    sum += metric.partial(&query[done..end], &v[..end - done]);
                }
                done += v.len();
            },
        );
        if done != query.len() {
            corrupted(format!("element ({}, {}) holds {done} values, the index has {}", tid.block, tid.offset, query.len()));
        }
        metric.finish(sum)
    }
}

impl GraphStore for ScanGraph {
    fn distance(&mut self, query: &[f32], node: NodeId) -> f32 {
        let tid = Tid::from_node(node);
        if !tid.is_valid() {
            return f32::INFINITY;
        }
        // While this one is computed, the next one's tuple loads (its page header was
        // prefetched when the batch was announced).
        if self.upcoming.get(self.next) == Some(&node) {
            self.next += 1;
            if let Some(&after) = self.upcoming.get(self.next + LOOKAHEAD - 1) {
                self.hints.prefetch_tuple(Tid::from_node(after), 4 * query.len() + 128);
            }
        }
        if let Some(u) = self.hints.upper.nodes.get(&node) {
            if u.code.len() == query.len() {
                let estimate = self.metric.coded(query, &u.code, u.min, u.scale);
                let (err, scale) = (u.err, u.scale);
                return self.noted(query, node, estimate, err, scale);
            }
        }
        let mut keep = None;
        let coded = {
            let b = self.hints.read(self.rel, tid.block);
            let page = b.page();
            let Some(item) = page.item(tid.offset) else { return f32::INFINITY };
            let head = element_head(item, tid);
            match format::element_code(item) {
                Some(c) => {
                    if c.bytes.len() != query.len() {
                        corrupted(format!("element ({}, {}) has a code of {} values, the index has {}", tid.block, tid.offset, c.bytes.len(), query.len()));
                    }
                    // A node met on an upper level: kept for the next scans.
                    if self.level > 0 && head.neighbors.block == tid.block {
                        keep = self.upper_node(&page, item, &head);
                    }
                    Some((self.metric.coded(query, c.bytes, c.min, c.scale), c.err, c.scale))
                }
                None => None,
            }
        };
        if let Some(n) = keep {
            self.hints.upper.insert(node, n);
        }
        if let Some((estimate, err, scale)) = coded {
            return self.noted(query, node, estimate, err, scale);
        }
        self.exact(query, tid)
    }

    fn neighbors(&mut self, node: NodeId, level: u8, out: &mut Vec<NodeId>) {
        let tid = Tid::from_node(node);
        if !tid.is_valid() {
            return;
        }
        self.level = level;
        if level > 0 {
            if let Some(list) = self.hints.upper.nodes.get(&node).and_then(|u| u.lists.get(level as usize - 1)) {
                out.extend_from_slice(list);
                return;
            }
        }
        self.tids.clear();
        let m = self.m;
        let mut keep = None;
        let ntid = {
            let b = self.hints.read(self.rel, tid.block);
            let page = b.page();
            let Some(item) = page.item(tid.offset) else { return };
            let head = element_head(item, tid);
            if head.neighbors.block == tid.block {
                let bytes = page.item(head.neighbors.offset).unwrap_or_else(|| corrupted(format!("missing neighbour tuple ({}, {})", tid.block, head.neighbors.offset)));
                format::neighbors_on(bytes, m, level, &mut self.tids).unwrap_or_else(|e| corrupted(e.to_string()));
                // A node walked on an upper level: kept for the next scans.
                if level > 0 {
                    keep = self.upper_node(&page, item, &head);
                }
                None
            } else {
                Some(head.neighbors)
            }
        };
        if let Some(n) = keep {
            self.hints.upper.insert(node, n);
        }
        if let Some(ntid) = ntid {
            let b = self.hints.read(self.rel, ntid.block);
            let page = b.page();
            let bytes = page.item(ntid.offset).unwrap_or_else(|| corrupted(format!("missing neighbour tuple ({}, {})", ntid.block, ntid.offset)));
            format::neighbors_on(bytes, m, level, &mut self.tids).unwrap_or_else(|e| corrupted(e.to_string()));
        }
        out.extend(self.tids.iter().map(|t| t.node()));
    }

    fn prefetch(&mut self, nodes: &[NodeId]) {
        for &n in nodes {
            self.hints.prefetch(Tid::from_node(n).block);
        }
        self.upcoming.clear();
        self.upcoming.extend_from_slice(nodes);
        self.next = 0;
        for &n in nodes.iter().take(LOOKAHEAD) {
            self.hints.prefetch_tuple(Tid::from_node(n), 4 * 64);
        }
    }
}
