//! VACUUM: mark the elements of dead rows deleted, then repair every live element that
//! links to a deleted one (its list is rebuilt from its live neighbours and theirs, with
//! the heuristic), and move the entry point off a deleted element. Deleted elements stay
//! on their pages, unlinked, so concurrent scans and inserts that still hold their tids
//! read valid tuples; their space is not reused yet.

use std::collections::HashSet;

use akidb_core::hnsw::format::{self, Element, Tid, META_BLOCK, PAGE_GRAPH};
use akidb_core::hnsw::search::{select_neighbors, Candidate};
use akidb_core::hnsw::Params;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::insert::{raise_entry, replace_tuple};
use super::page::{nblocks, read_meta, read_tuple, update_meta, Locked, Wal};
use super::store::DiskGraph;

/// Every element: (tid, level, deleted, heap tid count).
fn elements(index: pg_sys::Relation) -> Vec<(Tid, u8, bool, usize)> {
    let mut out = Vec::new();
    for block in META_BLOCK + 1..nblocks(index) {
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page.kind() != Some(PAGE_GRAPH) {
            continue;
        }
        for off in 1..=page.max_offset() {
            if let Some(item) = page.item(off) {
                if item.first() == Some(&format::KIND_ELEMENT) {
                    if let Ok(e) = Element::decode_header(item) {
                        out.push((Tid { block, offset: off }, e.level, e.deleted, e.heap_tids.len()));
                    }
                }
            }
        }
    }
    out
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: VACUUM passes a valid info; stats is null the first time.
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() { unsafe { PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg() } } else { stats };
    let callback = callback.expect("VACUUM passes a callback");

    // 1. Mark the elements of dead rows deleted, a page at a time.
    let mut removed = 0.0;
    for block in META_BLOCK + 1..nblocks(index) {
        super::vacuum_delay();
        let b = Locked::read(index, block, true);
        if b.page().kind() != Some(PAGE_GRAPH) {
            continue;
        }
        // (offset, the heap tids that stay; empty: the element goes)
        let mut changes: Vec<(u16, Vec<Tid>)> = Vec::new();
        let page = b.page();
        for off in 1..=page.max_offset() {
            let Some(item) = page.item(off) else { continue };
            if item.first() != Some(&format::KIND_ELEMENT) {
                continue;
            }
            let Ok(e) = Element::decode_header(item) else { continue };
            if e.deleted {
                continue;
            }
            let keep: Vec<Tid> = e
                .heap_tids
                .iter()
                .copied()
                .filter(|t| {
                    let mut heap = pg_sys::ItemPointerData::default();
                    pgrx::itemptr::item_pointer_set_all(&mut heap, t.block, t.offset);
                    // SAFETY: the callback only looks the tid up in VACUUM's dead-tuple store.
                    !unsafe { callback(&mut heap, callback_state) }
                })
                .collect();
            if keep.len() != e.heap_tids.len() {
                removed += (e.heap_tids.len() - keep.len()) as f64;
                changes.push((off, keep));
            }
        }
        if !changes.is_empty() {
            let mut wal = Wal::start(index);
            let page = wal.page(&b, false);
            for (off, keep) in &changes {
                if let Some(item) = page.item(*off) {
                    format::set_heap_tids(item, keep);
                    if keep.is_empty() {
                        format::set_deleted(item);
                    }
                }
            }
            wal.finish();
        }
    }

    // 2. Repair the links that point at deleted elements.
    let all = elements(index);
    let deleted: HashSet<Tid> = all.iter().filter(|e| e.2).map(|e| e.0).collect();
    if !deleted.is_empty() {
        repair(index, &all, &deleted);
    }
    // SAFETY: stats is ours to fill.
    unsafe {
        (*stats).tuples_removed += removed;
        (*stats).num_index_tuples = all.iter().filter(|e| !e.2).map(|e| e.3).sum::<usize>() as f64;
        (*stats).num_pages = nblocks(index);
    }
    stats
}

fn repair(index: pg_sys::Relation, all: &[(Tid, u8, bool, usize)], deleted: &HashSet<Tid>) {
    let meta = read_meta(index);
    let m = meta.m as usize;
    let params = Params { m, ef_construction: meta.ef_construction as usize };
    let metric = meta.metric;
    for &(tid, _level, is_deleted, _) in all {
        if is_deleted {
            continue;
        }
        super::vacuum_delay();
        for _attempt in 0..5 {
            let mut g = DiskGraph::new(index, m, metric);
            let Some(ntid) = g.node(tid).map(|n| n.neighbors) else { break };
            let Some(before) = read_tuple(index, ntid) else { break };
            let Some((own_level, mut lists)) = format::all_neighbors(&before, m) else { break };
            let mut changed = false;
            for l in 0..=own_level {
                let list = &lists[l as usize];
                if !list.iter().any(|t| deleted.contains(t)) {
                    continue;
                }
                changed = true;
                // Candidates: the live neighbours, and the live neighbours of the deleted ones.
                let mut cands: HashSet<Tid> = list.iter().copied().filter(|t| !deleted.contains(t)).collect();
                for d in list.iter().filter(|t| deleted.contains(t)) {
                    for t in g.neighbor_list(*d, l) {
                        if !deleted.contains(&t) && t != tid {
                            cands.insert(t);
                        }
                    }
                }
                let scored: Vec<Candidate> = cands
                    .iter()
                    .filter_map(|&t| {
                        g.node(t)?;
                        Some(Candidate { distance: g.between(tid, t), node: t.node() })
                    })
                    .collect();
                let kept = select_neighbors(&scored, params.max_neighbors(l), params.min_neighbors(l), |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
                lists[l as usize] = kept.iter().map(|c| Tid::from_node(c.node)).collect();
            }
            if !changed || replace_tuple(index, ntid, &before, &format::encode_neighbors(own_level, m, &lists)) {
                break;
            }
        }
    }
    // The entry point must be live: else the highest live element (or none).
    if deleted.contains(&meta.entry) || !meta.entry.is_valid() {
        let best = all.iter().filter(|e| !e.2).max_by_key(|e| e.1);
        update_meta(index, |m| {
            let stale = deleted.contains(&m.entry);
            if stale {
                m.entry = best.map_or(Tid::INVALID, |e| e.0);
                m.entry_level = best.map_or(0, |e| e.1);
            }
            stale
        });
        // An insert that wrote a top-level element after `all` was read, and compared
        // its level with the old entry's, did not raise the entry: look again, now that
        // any later insert compares with the new entry.
        if let Some(top) = elements(index).iter().filter(|e| !e.2).max_by_key(|e| e.1) {
            raise_entry(index, top.0, top.1);
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    unsafe {
        if (*info).analyze_only {
            return stats;
        }
        let index = (*info).index;
        let stats = if stats.is_null() {
            let s = PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg();
            (*s).num_index_tuples = elements(index).iter().filter(|e| !e.2).map(|e| e.3).sum::<usize>() as f64;
            s
        } else {
            stats
        };
        (*stats).num_pages = nblocks(index);
        stats
    }
}
