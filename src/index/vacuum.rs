//! VACUUM: mark the elements of dead rows deleted, then repair every live element that
//! links to a deleted one (its list is rebuilt from its live neighbours and theirs, with
//! the heuristic), and move the entry point off a deleted element. Deleted elements stay
//! on their pages, unlinked, so concurrent scans and inserts that still hold their tids
//! read valid tuples; their space is not reused yet.

use std::collections::HashSet;

use akidb_core::hnsw::format::{self, Element, Tid, META_BLOCK, PAGE_GRAPH};
use akidb_core::hnsw::search::{search_level, select_neighbors, Candidate, GraphStore};
use akidb_core::hnsw::Params;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::insert::{raise_entry, replace_tuple};
use super::page::{nblocks, read_meta, read_tuple, update_meta, Locked, Wal};
use super::store::DiskGraph;

/// Every element: (tid, level, deleted, heap tid count in it, state); and the rows held
/// in heap-tid tuples.
fn elements(index: pg_sys::Relation) -> (Vec<(Tid, u8, bool, usize, u8)>, usize) {
    let mut out = Vec::new();
    let mut chained = 0;
    for block in META_BLOCK + 1..nblocks(index) {
        pgrx::check_for_interrupts!();
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page.kind() != Some(PAGE_GRAPH) {
            continue;
        }
        for off in 1..=page.max_offset() {
            if let Some(item) = page.item(off) {
                if item.first() == Some(&format::KIND_ELEMENT) {
                    if let Ok(e) = Element::decode_header(item) {
                        out.push((Tid { block, offset: off }, e.level, e.deleted, e.heap_tids.len(), format::element_state(item)));
                    }
                } else if let Ok((rows, _)) = format::decode_tids(item) {
                    chained += rows.len();
                }
            }
        }
    }
    (out, chained)
}

/// The rows the index holds: those of live elements and those in heap-tid tuples.
fn live_rows(all: &[(Tid, u8, bool, usize, u8)], chained: usize) -> f64 {
    (all.iter().filter(|e| !e.2).map(|e| e.3).sum::<usize>() + chained) as f64
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
    // Slots an insert claimed but never filled (it crashed): freed again in step 4.
    let mut stale_claims: Vec<Tid> = Vec::new();
    for block in META_BLOCK + 1..nblocks(index) {
        super::vacuum_delay();
        let b = Locked::read(index, block, true);
        if b.page().kind() != Some(PAGE_GRAPH) {
            continue;
        }
        let live = |t: &Tid| {
            let mut heap = pg_sys::ItemPointerData::default();
            pgrx::itemptr::item_pointer_set_all(&mut heap, t.block, t.offset);
            // SAFETY: the callback only looks the tid up in VACUUM's dead-tuple store.
            !unsafe { callback(&mut heap, callback_state) }
        };
        // (offset, the heap tids that stay, whether the element goes) for elements, and
        // (offset, the heap tids that stay) for heap-tid tuples.
        let mut changes: Vec<(u16, Vec<Tid>, bool)> = Vec::new();
        let mut tid_changes: Vec<(u16, Vec<Tid>)> = Vec::new();
        let page = b.page();
        for off in 1..=page.max_offset() {
            let Some(item) = page.item(off) else { continue };
            if item.first() == Some(&format::KIND_TIDS) {
                let Ok((rows, _)) = format::decode_tids(item) else { continue };
                let keep: Vec<Tid> = rows.iter().copied().filter(live).collect();
                if keep.len() != rows.len() {
                    removed += (rows.len() - keep.len()) as f64;
                    tid_changes.push((off, keep));
                }
                continue;
            }
            if item.first() != Some(&format::KIND_ELEMENT) {
                continue;
            }
            let Ok(e) = Element::decode_header(item) else { continue };
            if format::element_state(item) == format::STATE_CLAIMED {
                stale_claims.push(Tid { block, offset: off });
            }
            if e.deleted {
                continue;
            }
            let keep: Vec<Tid> = e.heap_tids.iter().copied().filter(live).collect();
            // The element goes only if none of its rows lives on, in it or in its
            // heap-tid tuples, read while this page stays locked (see insert's
            // add_heap_tid for why that is enough).
            let goes = keep.is_empty() && !more_rows_live(index, Tid { block, offset: off }, &page, e.more_tids, &live);
            if keep.len() != e.heap_tids.len() || goes {
                removed += (e.heap_tids.len() - keep.len()) as f64;
                changes.push((off, keep, goes));
            }
        }
        if !changes.is_empty() || !tid_changes.is_empty() {
            let mut wal = Wal::start(index);
            let mut page = wal.page(&b, false);
            for (off, keep, goes) in &changes {
                if let Some(item) = page.item_mut(*off) {
                    format::set_heap_tids(item, keep);
                    if *goes {
                        format::set_deleted(item);
                    }
                }
            }
            for (off, keep) in &tid_changes {
                if let Some(item) = page.item_mut(*off) {
                    format::set_tids(item, keep);
                }
            }
            wal.finish();
        }
    }

    // 2. Wait for the inserts in flight: they may have chosen an element just marked
    // deleted as a neighbour. Inserts from now on see the marks and never link to one
    // (and a claim seen in step 1 belongs to an insert that has ended).
    wait_for_inserts(index);

    // 3. Repair the links that point at deleted elements.
    let (all, chained) = elements(index);
    let deleted: HashSet<Tid> = all.iter().filter(|e| e.2).map(|e| e.0).collect();
    if !deleted.is_empty() {
        repair(index, &all, &deleted);
    }

    // 4. Deleting elements can leave live ones that no walk reaches (their in-links all
    // came through deleted ones, or pruning dropped them): link each back in.
    connect_unreachable(index);

    // 5. No live element links to the deleted ones now: their slots (element, neighbour
    // tuple, vector chunks) are free for inserts to reuse.
    let mut to_free: Vec<Tid> = all.iter().filter(|e| e.4 == format::STATE_DELETED).map(|e| e.0).collect();
    to_free.extend(stale_claims);
    free_slots(index, to_free);
    // SAFETY: stats is ours to fill.
    unsafe {
        (*stats).tuples_removed += removed;
        (*stats).num_index_tuples = live_rows(&all, chained);
        (*stats).num_pages = nblocks(index);
    }
    stats
}

/// Whether any row in the heap-tid tuples of the element at `owner` is live; those on
/// `block` are read from its (locked) `page`, the others with a share lock each. A chain
/// that cannot be read to its end is a corruption ERROR: an element is never marked
/// deleted on a guess.
fn more_rows_live(index: pg_sys::Relation, owner: Tid, page: &super::page::Page<'_>, first: Tid, live: &dyn Fn(&Tid) -> bool) -> bool {
    let mut any = false;
    super::store::walk_chain(owner, "heap-tid tuples", first, super::store::MAX_TIDS_HOPS, |at| {
        let bytes = if at.block == owner.block { page.item(at.offset).map(|s| s.to_vec()) } else { read_tuple(index, at) };
        let bytes = bytes.ok_or_else(|| format!("missing heap-tid tuple ({}, {})", at.block, at.offset))?;
        let (rows, after) = format::decode_tids(&bytes).map_err(|e| format!("heap-tid tuple ({}, {}): {e}", at.block, at.offset))?;
        if rows.iter().any(live) {
            any = true;
            return Ok(Tid::INVALID);
        }
        Ok(after)
    });
    any
}

/// Waits until every insert in flight has ended (each holds the index's insert lock in
/// share mode; see insert's InsertLock).
fn wait_for_inserts(index: pg_sys::Relation) {
    // SAFETY: a heavyweight page lock on the open index, held by nobody else in this
    // backend; taken and released at once.
    unsafe {
        pg_sys::LockPage(index, super::insert::INSERT_LOCK_BLOCK, pg_sys::ExclusiveLock as i32);
        pg_sys::UnlockPage(index, super::insert::INSERT_LOCK_BLOCK, pg_sys::ExclusiveLock as i32);
    }
}

/// Marks the slots free (those still deleted, or still claimed), a page at a time, and
/// points the metapage's free block at the first of them.
fn free_slots(index: pg_sys::Relation, mut slots: Vec<Tid>) {
    slots.sort();
    let mut first = None;
    let mut i = 0;
    while i < slots.len() {
        super::vacuum_delay();
        let block = slots[i].block;
        let end = i + slots[i..].iter().take_while(|t| t.block == block).count();
        let b = Locked::read(index, block, true);
        {
            let mut wal = Wal::start(index);
            let mut page = wal.page(&b, false);
            let mut changed = false;
            for t in &slots[i..end] {
                if let Some(item) = page.item_mut(t.offset) {
                    let state = if item.first() == Some(&format::KIND_ELEMENT) { format::element_state(item) } else { format::STATE_LIVE };
                    if state == format::STATE_DELETED || state == format::STATE_CLAIMED {
                        format::set_state(item, format::STATE_FREE);
                        format::set_heap_tids(item, &[]);
                        changed = true;
                    }
                }
            }
            if changed {
                wal.finish();
                first.get_or_insert(block);
            }
        }
        i = end;
    }
    if let Some(first) = first {
        update_meta(index, |m| {
            let earlier = m.free_block == META_BLOCK || first < m.free_block;
            if earlier {
                m.free_block = first;
            }
            earlier
        });
    }
}

/// Links every live element that no level-0 walk from the entry point reaches into the
/// level-0 list of its nearest reachable element (one with room, else the nearest, which
/// gives up its farthest link), as the build's last pass does: so recall does not decay
/// as rows are updated and vacuumed. Reads every page once for the lists (skipped, with
/// a NOTICE, when they would not fit in maintenance_work_mem); returns how many it linked.
fn connect_unreachable(index: pg_sys::Relation) -> usize {
    let meta = read_meta(index);
    if !meta.entry.is_valid() {
        return 0;
    }
    let (m, metric) = (meta.m as usize, meta.metric);
    let params = Params { m, ef_construction: meta.ef_construction as usize };
    let max = params.max_neighbors(0);
    // SAFETY: a plain GUC read.
    let budget = unsafe { pg_sys::maintenance_work_mem } as usize * 1024;
    // Every live element's level-0 list, by dense number.
    let mut number: std::collections::HashMap<Tid, u32> = Default::default();
    let mut tids: Vec<Tid> = Vec::new();
    let mut live: Vec<bool> = Vec::new();
    let mut lists: Vec<Vec<Tid>> = Vec::new();
    let mut bytes = 0usize;
    for block in META_BLOCK + 1..nblocks(index) {
        super::vacuum_delay();
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page.kind() != Some(PAGE_GRAPH) {
            continue;
        }
        for off in 1..=page.max_offset() {
            let Some(item) = page.item(off) else { continue };
            if item.first() != Some(&format::KIND_ELEMENT) {
                continue;
            }
            let state = format::element_state(item);
            let Ok(head) = format::ElementHead::parse(item) else { continue };
            // Only live elements count: the deleted ones are freed next, and a walk
            // through them will not be there.
            if state != format::STATE_LIVE || head.neighbors.block != block {
                continue;
            }
            let mut list = Vec::new();
            if let Some(nb) = page.item(head.neighbors.offset) {
                let _ = format::neighbors_on(nb, m, 0, &mut list);
            }
            bytes += 48 + 6 * list.len();
            if bytes > budget {
                ereport!(
                    NOTICE,
                    PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                    "akidb_hnsw: the graph's links do not fit in maintenance_work_mem: unreachable elements were not looked for",
                    "Raise maintenance_work_mem for VACUUM to keep every element reachable."
                );
                return 0;
            }
            let tid = Tid { block, offset: off };
            number.insert(tid, tids.len() as u32);
            tids.push(tid);
            live.push(state == format::STATE_LIVE);
            lists.push(list);
        }
    }
    let Some(&entry) = number.get(&meta.entry) else { return 0 };
    let mut reach = vec![false; tids.len()];
    let mark = |from: u32, reach: &mut Vec<bool>, lists: &[Vec<Tid>]| {
        let mut stack = vec![from];
        reach[from as usize] = true;
        while let Some(u) = stack.pop() {
            for t in &lists[u as usize] {
                if let Some(&v) = number.get(t) {
                    if !reach[v as usize] {
                        reach[v as usize] = true;
                        stack.push(v);
                    }
                }
            }
        }
    };
    mark(entry, &mut reach, &lists);
    let mut linked = 0;
    for u in 0..tids.len() {
        if reach[u] || !live[u] {
            continue;
        }
        super::vacuum_delay();
        let mut g = DiskGraph::new(index, m, metric);
        let Some(v) = g.node(tids[u]).map(|n| n.vector.clone()) else { continue };
        let start = Candidate { distance: g.distance(&v, meta.entry.node()), node: meta.entry.node() };
        let mut visited: HashSet<u64> = HashSet::from([start.node]);
        let found = search_level(&mut g, &v, &[start], params.ef_construction.max(max), 0, &mut visited);
        let reachable: Vec<u32> = found
            .iter()
            .filter_map(|c| number.get(&Tid::from_node(c.node)).copied())
            .filter(|&t| reach[t as usize] && live[t as usize] && t as usize != u)
            .collect();
        let Some(&target) = reachable.iter().find(|&&t| lists[t as usize].len() < max).or(reachable.first()) else { continue };
        let Some(list) = link_in(index, &mut g, tids[target as usize], tids[u], max) else { continue };
        lists[target as usize] = list;
        linked += 1;
        mark(u as u32, &mut reach, &lists);
    }
    linked
}

/// Adds `node` to the level-0 list of `target` (when full, in place of its farthest
/// link); returns the list as written, None if `target` is gone.
fn link_in(index: pg_sys::Relation, g: &mut DiskGraph, target: Tid, node: Tid, max: usize) -> Option<Vec<Tid>> {
    let m = g.m;
    let mut attempts = super::insert::Attempts::default();
    loop {
        attempts.next();
        let ntid = g.node(target).filter(|n| !n.deleted).map(|n| n.neighbors)?;
        let before = read_tuple(index, ntid)?;
        let (own_level, mut lists) = format::all_neighbors(&before, m)?;
        let list = &mut lists[0];
        if list.contains(&node) {
            return Some(list.clone());
        }
        if list.len() < max {
            list.push(node);
        } else {
            let far = (0..list.len()).max_by(|&a, &b| g.between(target, list[a]).total_cmp(&g.between(target, list[b])))?;
            list[far] = node;
        }
        let after = format::encode_neighbors_into(own_level, m, &lists, before.len());
        if replace_tuple(index, ntid, &before, &after) {
            return Some(lists.swap_remove(0));
        }
    }
}

fn repair(index: pg_sys::Relation, all: &[(Tid, u8, bool, usize, u8)], deleted: &HashSet<Tid>) {
    let meta = read_meta(index);
    let m = meta.m as usize;
    let params = Params { m, ef_construction: meta.ef_construction as usize };
    let metric = meta.metric;
    // Elements read for one repair are kept for the next ones (each repair's search
    // reads hundreds, and neighbourhoods overlap), up to half of maintenance_work_mem.
    // Their lists may go stale as repairs and inserts change them: fine for finding
    // candidates, and every write compares against the list as it is on the page.
    // SAFETY: a plain GUC read.
    let budget = unsafe { pg_sys::maintenance_work_mem } as usize * 512;
    let mut g = DiskGraph::new(index, m, metric);
    for &(tid, _level, is_deleted, _, _) in all {
        if is_deleted {
            continue;
        }
        super::vacuum_delay();
        if g.cached_bytes() > budget {
            g = DiskGraph::new(index, m, metric);
        }
        // Retried until it lands (see insert's Attempts): a repair is never dropped.
        let mut attempts = super::insert::Attempts::default();
        loop {
            attempts.next();
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
                let mut scored: Vec<Candidate> = cands
                    .iter()
                    .filter_map(|&t| {
                        g.node(t)?;
                        Some(Candidate { distance: g.between(tid, t), node: t.node() })
                    })
                    .collect();
                // Then a search on this level from those candidates, as an insert's (as
                // pgvector's repair does): the neighbourhood of the deleted neighbours
                // alone is too narrow, and recall decayed with every round of updates.
                if let Some(v) = g.node(tid).map(|n| n.vector.clone()) {
                    let mut visited: HashSet<u64> = scored.iter().map(|c| c.node).chain([tid.node()]).collect();
                    let found = search_level(&mut g, &v, &scored, params.ef_construction, l, &mut visited);
                    for c in found {
                        let t = Tid::from_node(c.node);
                        if t != tid && !deleted.contains(&t) && !cands.contains(&t) && g.node(t).is_some_and(|n| !n.deleted && n.level >= l) {
                            cands.insert(t);
                            scored.push(c);
                        }
                    }
                }
                // Refilled to full lists, as inserts keep them (see insert_vector).
                let kept = select_neighbors(&scored, params.max_neighbors(l), params.max_neighbors(l), |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
                lists[l as usize] = kept.iter().map(|c| Tid::from_node(c.node)).collect();
            }
            if !changed {
                break;
            }
            if replace_tuple(index, ntid, &before, &format::encode_neighbors_into(own_level, m, &lists, before.len())) {
                break;
            }
            // Someone changed the list meanwhile: read it (and its neighbourhood) afresh.
            g = DiskGraph::new(index, m, metric);
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
        if let Some(top) = elements(index).0.iter().filter(|e| !e.2).max_by_key(|e| e.1) {
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
            let (all, chained) = elements(index);
            (*s).num_index_tuples = live_rows(&all, chained);
            s
        } else {
            stats
        };
        (*stats).num_pages = nblocks(index);
        stats
    }
}
