//! ORDER BY col <op> constant: descend from the entry point, search level 0 with
//! akidb.hnsw_ef_search candidates (comparing 8-bit codes where elements carry them),
//! re-rank those with their exact distances, return them nearest first. With iterative scans
//! (akidb.hnsw_iterative_scan) a scan that runs out searches again with a larger list,
//! returning only rows it has not returned yet, until akidb.hnsw_max_scan_tuples.

use std::collections::HashSet;

use akidb_core::hnsw::format::{Meta, Tid};
use akidb_core::hnsw::search::knn;
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
    /// (distance, heap tid) still to return, nearest first.
    pending: Vec<(f32, Tid)>,
    pos: usize,
    /// Elements already returned (iterative scans skip them).
    returned: HashSet<Tid>,
    ef: usize,
    last_distance: f32,
    exhausted: bool,
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(index: pg_sys::Relation, nkeys: i32, norderbys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL's generic scan descriptor; our state hangs off `opaque`.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        (*scan).opaque = Box::into_raw(Box::<ScanState>::default()) as *mut std::ffi::c_void;
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
        *((*scan).opaque as *mut ScanState) = ScanState::default();
    }
}

fn search(index: pg_sys::Relation, meta: &Meta, st: &mut ScanState) {
    st.pending.clear();
    st.pos = 0;
    if !meta.entry.is_valid() {
        st.exhausted = true;
        return;
    }
    let mut g = ScanGraph::new(index, meta.m as usize, meta.metric);
    let mut visited = TidSet::with_capacity_and_hasher(st.ef * 2 * meta.m as usize, Default::default());
    let mut found = knn(&mut g, &st.query, meta.entry.node(), meta.entry_level, st.ef, &mut visited);
    if g.estimated {
        // The walk compared codes: the ef found are re-ranked with their exact distances.
        for c in found.iter_mut() {
            c.distance = g.exact(&st.query, Tid::from_node(c.node));
        }
        found.sort();
    }
    let strict = settings::hnsw_iterative_scan() == IterativeScan::StrictOrder;
    let first_round = st.returned.is_empty();
    let mut rows = Vec::new();
    for c in found {
        let tid = Tid::from_node(c.node);
        if st.returned.contains(&tid) || (strict && !first_round && c.distance < st.last_distance) {
            continue;
        }
        rows.clear();
        if g.rows(tid, &mut rows) != Some(false) {
            continue;
        }
        for &h in &rows {
            st.pending.push((c.distance, h));
        }
        st.returned.insert(tid);
    }
    if st.pending.is_empty() {
        st.exhausted = true;
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(scan: pg_sys::IndexScanDesc, _dir: pg_sys::ScanDirection::Type) -> bool {
    // SAFETY: opaque is our ScanState; orderByData[0] holds the query after amrescan.
    let (index, st) = unsafe { ((*scan).indexRelation, &mut *((*scan).opaque as *mut ScanState)) };
    if !st.started {
        st.started = true;
        let meta = read_meta(index);
        let key = unsafe { &*(*scan).orderByData };
        st.query = if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
            vec![0.0; meta.dims as usize]
        } else {
            prepared_vector(key.sk_argument, meta.metric).unwrap_or_else(|| vec![0.0; meta.dims as usize])
        };
        if st.query.len() != meta.dims as usize {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
                format!("different vector dimensions {} and {}", meta.dims, st.query.len())
            );
        }
        st.ef = settings::HNSW_EF_SEARCH.get() as usize;
        search(index, &meta, st);
    }
    loop {
        if let Some(&(d, heap)) = st.pending.get(st.pos) {
            st.pos += 1;
            st.last_distance = st.last_distance.max(d);
            // SAFETY: the scan descriptor is ours to fill.
            unsafe {
                pgrx::itemptr::item_pointer_set_all(&mut (*scan).xs_heaptid, heap.block, heap.offset);
                (*scan).xs_recheckorderby = false;
                (*scan).xs_recheck = false;
            }
            return true;
        }
        let max = settings::HNSW_MAX_SCAN_TUPLES.get() as usize;
        if st.exhausted || settings::hnsw_iterative_scan() == IterativeScan::Off || st.returned.len() >= max || st.ef >= max {
            return false;
        }
        pgrx::check_for_interrupts!();
        st.ef = (st.ef * 2).min(max);
        search(index, &read_meta(index), st);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: opaque was made by Box::into_raw in ambeginscan.
    unsafe {
        let p = (*scan).opaque as *mut ScanState;
        if !p.is_null() {
            drop(Box::from_raw(p));
            (*scan).opaque = std::ptr::null_mut();
        }
    }
}
