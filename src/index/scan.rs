//! ORDER BY col <op> constant: descend from the entry point, search level 0 with
//! akidb.hnsw_ef_search candidates (comparing 8-bit codes where elements carry them),
//! return them nearest first by exact distance, re-ranking them as they are asked for.
//! With iterative scans (akidb.hnsw_iterative_scan) a scan that runs out searches again
//! with a larger list, returning only rows it has not returned yet, until
//! akidb.hnsw_max_scan_tuples.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};

use akidb_core::hnsw::error::IndexError;
use akidb_core::hnsw::format::{Meta, Tid};
use akidb_core::hnsw::search::{knn, NodeId};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::read_meta;
use super::store::{ScanGraph, TidSet};
use super::prepared_vector;
use crate::settings::{self, IterativeScan};

#[derive(Default)]
struct ScanState {
    started: bool,
    query: Vec<f32>,
    /// The graph, kept for the whole scan (results are re-ranked as they are asked for).
    graph: Option<ScanGraph>,
    /// This round's candidates not yet re-ranked: (lower bound of the exact distance,
    /// node), the lowest bound last.
    unranked: Vec<(f32, NodeId)>,
    /// Re-ranked candidates, nearest on top: (exact distance, node).
    ranked: BinaryHeap<Reverse<(OrderedF32, NodeId)>>,
    /// Heap rows of the element being returned: (distance, heap tid).
    pending: VecDeque<(f32, Tid)>,
    /// Elements already returned (iterative scans skip them).
    returned: HashSet<Tid>,
    first_round: bool,
    /// Elements this round returned (a round that returns none ends an iterative scan).
    round_returned: usize,
    /// Candidates this round has taken, returned or not.
    round_ranked: usize,
    ef: usize,
    /// No later round will search with a longer list (the list did not fill, or it
    /// reached akidb.hnsw_max_scan_tuples).
    final_round: bool,
    last_distance: f32,
    exhausted: bool,
}

/// An f32 ordered by `total_cmp`, for the heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedF32(f32);
impl Eq for OrderedF32 {}
impl PartialOrd for OrderedF32 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A scan's state, owned by the memory context the scan was begun in (the query's): a
/// reset callback there drops it when the query ends in an ERROR or a cancel, which never
/// reaches amendscan. amendscan drops it first on a normal end and leaves the callback
/// nothing to do.
#[repr(C)]
struct ScanSlot {
    callback: pg_sys::MemoryContextCallback,
    state: *mut ScanState,
}

#[pg_guard]
unsafe extern "C-unwind" fn drop_scan_state(arg: *mut std::ffi::c_void) {
    // SAFETY: arg is the ScanSlot registered in ambeginscan, alive until its context
    // is reset (now); its state is null once amendscan dropped it.
    unsafe {
        let slot = arg as *mut ScanSlot;
        let state = std::mem::replace(&mut (*slot).state, std::ptr::null_mut());
        if !state.is_null() {
            drop(Box::from_raw(state));
        }
    }
}

/// The scan's state (made in ambeginscan).
///
/// # Safety
/// `scan` is a scan begun by [`ambeginscan`] and not yet ended.
unsafe fn state<'a>(scan: pg_sys::IndexScanDesc) -> &'a mut ScanState {
    // SAFETY: opaque is the ScanSlot of ambeginscan, whose state lives until amendscan.
    unsafe { &mut *(*((*scan).opaque as *mut ScanSlot)).state }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(index: pg_sys::Relation, nkeys: i32, norderbys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL's generic scan descriptor; our state hangs off `opaque`, in a
    // slot allocated in the same (current) memory context, which calls back when reset.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        let slot = pg_sys::palloc0(std::mem::size_of::<ScanSlot>()) as *mut ScanSlot;
        (*slot).state = Box::into_raw(Box::<ScanState>::default());
        (*slot).callback.func = Some(drop_scan_state);
        (*slot).callback.arg = slot as *mut std::ffi::c_void;
        pg_sys::MemoryContextRegisterResetCallback(pg_sys::CurrentMemoryContext, &mut (*slot).callback);
        (*scan).opaque = slot as *mut std::ffi::c_void;
        scan
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    // SAFETY: orderByData has room for norderbys keys (RelationGetIndexScan).
    unsafe {
        if !orderbys.is_null() && norderbys > 0 {
            std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
        }
        *state(scan) = ScanState::default();
    }
}

/// Counts a graph search for EXPLAIN ANALYZE's "Index Searches" (PostgreSQL 18).
fn count_search(scan: pg_sys::IndexScanDesc) {
    #[cfg(feature = "pg18")]
    // SAFETY: instrument is null or the executor's counters for this scan.
    unsafe {
        if let Some(i) = (*scan).instrument.as_mut() {
            i.nsearches += 1;
        }
    }
    #[cfg(not(feature = "pg18"))]
    let _ = scan;
}

/// One round: the ef nearest by the graph walk (on codes where elements carry them),
/// kept as candidates to re-rank.
fn search(index: pg_sys::Relation, meta: &Meta, st: &mut ScanState, max: usize) {
    st.unranked.clear();
    st.ranked.clear();
    st.first_round = st.returned.is_empty();
    st.round_returned = 0;
    st.round_ranked = 0;
    if !meta.entry.is_valid() {
        st.exhausted = true;
        return;
    }
    let g = st.graph.get_or_insert_with(|| ScanGraph::new(index, meta));
    // Fewer than 2 * ef * m elements are seen on level 0 (and 50-100 above).
    let expected = (2 * st.ef * meta.m as usize).max(256);
    g.reset(expected);
    let mut visited = TidSet::with_capacity_and_hasher(expected, Default::default());
    let found = knn(g, &st.query, meta.entry.node(), meta.entry_level, st.ef, &mut visited);
    if found.is_empty() {
        st.exhausted = true;
    }
    st.final_round = found.len() < st.ef || st.ef >= max;
    for c in found {
        match g.lower_bound(c.node) {
            Some(bound) => st.unranked.push((bound, c.node)),
            None => st.ranked.push(Reverse((OrderedF32(c.distance), c.node))),
        }
    }
    st.unranked.sort_by(|a, b| b.0.total_cmp(&a.0));
}

/// The nearest candidate of this round not yet returned, by exact distance: candidates
/// are re-ranked (their exact distance computed from their values) in the order of
/// their lower bounds, only until no bound is below the nearest exact distance known.
/// So a LIMIT 10 scan with a long list re-ranks little more than 10.
fn next_ranked(st: &mut ScanState) -> Option<(f32, NodeId)> {
    let g = st.graph.as_mut()?;
    while let Some(&(bound, node)) = st.unranked.last() {
        if st.ranked.peek().is_some_and(|Reverse((d, _))| d.0 <= bound) {
            break;
        }
        st.unranked.pop();
        let d = g.exact(&st.query, Tid::from_node(node));
        st.ranked.push(Reverse((OrderedF32(d), node)));
    }
    st.ranked.pop().map(|Reverse((d, n))| (d.0, n))
}

/// Queues the heap rows of the next element to return; false when this round has none left.
///
/// strict_order may never return a row nearer than one it returned before, so a later
/// round must not find rows that an earlier one missed but ranked past: a round that is
/// not the last returns only the nearer half of its list (which a walk with a list twice
/// as long finds again, nearly always, so the next round continues where it stopped).
/// Without that, a row that the first walk missed and the second found would be dropped.
fn queue_next(st: &mut ScanState) -> bool {
    let strict = settings::hnsw_iterative_scan() == IterativeScan::StrictOrder;
    let trusted = if strict && !st.final_round { st.ef.div_ceil(2) } else { usize::MAX };
    let mut rows = Vec::new();
    while let Some((d, node)) = next_ranked(st) {
        st.round_ranked += 1;
        if st.round_ranked > trusted {
            return false;
        }
        let tid = Tid::from_node(node);
        if st.returned.contains(&tid) || (strict && !st.first_round && d < st.last_distance) {
            continue;
        }
        rows.clear();
        let g = st.graph.as_mut().expect("a round has a graph");
        if g.rows(tid, &mut rows) != Some(false) {
            continue;
        }
        st.returned.insert(tid);
        st.round_returned += 1;
        st.pending.extend(rows.iter().map(|&h| (d, h)));
        if !st.pending.is_empty() {
            return true;
        }
    }
    false
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(scan: pg_sys::IndexScanDesc, _dir: pg_sys::ScanDirection::Type) -> bool {
    // SAFETY: a scan begun by ambeginscan; orderByData[0] holds the query after amrescan.
    let (index, st) = unsafe { ((*scan).indexRelation, state(scan)) };
    if !st.started {
        // The planner never picks a path without exactly one ORDER BY (amcostestimate);
        // anything else reaching here is refused, never read.
        // SAFETY: the scan descriptor PostgreSQL made in ambeginscan.
        let (norderbys, want_itup) = unsafe { ((*scan).numberOfOrderBys, (*scan).xs_want_itup) };
        if norderbys != 1 || unsafe { (*scan).orderByData.is_null() } || want_itup {
            crate::error::raise_index(IndexError::UnsupportedScan);
        }
        st.started = true;
        let meta = read_meta(index);
        let key = unsafe { &*(*scan).orderByData };
        st.query = if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
            vec![0.0; meta.dims as usize]
        } else {
            prepared_vector(key.sk_argument, meta.metric).unwrap_or_else(|| vec![0.0; meta.dims as usize])
        };
        if st.query.len() != meta.dims as usize {
            crate::error::raise_index(IndexError::QueryDims { query: st.query.len(), index: meta.dims as usize });
        }
        st.ef = settings::HNSW_EF_SEARCH.get() as usize;
        count_search(scan);
        search(index, &meta, st, settings::HNSW_MAX_SCAN_TUPLES.get() as usize);
    }
    loop {
        if let Some((d, heap)) = st.pending.pop_front() {
            st.last_distance = st.last_distance.max(d);
            // SAFETY: the scan descriptor is ours to fill.
            unsafe {
                pgrx::itemptr::item_pointer_set_all(&mut (*scan).xs_heaptid, heap.block, heap.offset);
                (*scan).xs_recheckorderby = false;
                (*scan).xs_recheck = false;
            }
            return true;
        }
        if queue_next(st) {
            continue;
        }
        if st.round_returned == 0 {
            st.exhausted = true;
        }
        let max = settings::HNSW_MAX_SCAN_TUPLES.get() as usize;
        if st.exhausted || settings::hnsw_iterative_scan() == IterativeScan::Off || st.returned.len() >= max || st.ef >= max {
            return false;
        }
        pgrx::check_for_interrupts!();
        st.ef = (st.ef * 2).min(max);
        count_search(scan);
        search(index, &read_meta(index), st, max);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: opaque is the ScanSlot of ambeginscan; its callback then finds it empty.
    unsafe {
        let slot = (*scan).opaque as *mut ScanSlot;
        if !slot.is_null() {
            drop_scan_state(slot as *mut std::ffi::c_void);
        }
    }
}
