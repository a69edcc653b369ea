//! One row into the on-disk graph: find its neighbours with the core search over the
//! buffer pages, write its tuples, link the neighbours back, and raise the entry point if
//! the new node is the highest. Each page change is one GenericXLog record; at most one
//! buffer is locked at a time, so concurrent inserts, scans and VACUUM cannot deadlock.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use akidb_core::hnsw::format::{self, Element, Meta, Tid, META_BLOCK, PAGE_GRAPH};
use akidb_core::hnsw::search::{descend, search_level, select_neighbors, Candidate, GraphStore};
use akidb_core::hnsw::{level_from_random, splitmix64, Params};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::build::{check_dims, item_tid};
use super::page::{read_meta, update_meta, Locked, Wal};
use super::store::DiskGraph;
use super::prepared_vector;

#[pg_guard]
pub unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _check_unique: pg_sys::IndexUniqueCheck::Type,
    _index_unchanged: bool,
    _index_info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: one indexed column; PostgreSQL passes its value and null flag.
    if unsafe { *isnull } {
        return false;
    }
    let meta = read_meta(index);
    let Some(v) = prepared_vector(unsafe { *values }, meta.metric) else { return false };
    insert_vector(index, &meta, &v, item_tid(heap_tid));
    false
}

/// Inserts one prepared vector for `heap_tid`; `meta` is the metapage as just read.
pub fn insert_vector(index: pg_sys::Relation, meta: &Meta, v: &[f32], heap_tid: Tid) {
    check_dims(meta.dims as usize, v.len());
    let (m, metric) = (meta.m as usize, meta.metric);
    let params = Params { m, ef_construction: meta.ef_construction as usize };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let level = level_from_random(splitmix64(nanos ^ heap_tid.node().rotate_left(17)), m).min(format::max_level(m));
    let mut g = DiskGraph::new(index, m, metric);
    let mut lists: Vec<Vec<Tid>> = vec![Vec::new(); level as usize + 1];
    if meta.entry.is_valid() {
        let start = Candidate { distance: g.distance(v, meta.entry.node()), node: meta.entry.node() };
        let mut entries = vec![descend(&mut g, v, start, meta.entry_level, level)];
        for l in (0..=level.min(meta.entry_level)).rev() {
            let mut visited: HashSet<u64> = entries.iter().map(|e| e.node).collect();
            let found = search_level(&mut g, v, &entries, params.ef_construction, l, &mut visited);
            let live: Vec<Candidate> = found
                .iter()
                .copied()
                .filter(|c| g.node(Tid::from_node(c.node)).is_some_and(|n| !n.deleted))
                .collect();
            let chosen = select_neighbors(&live, params.max_neighbors(l), params.min_neighbors(l), |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
            lists[l as usize] = chosen.iter().map(|c| Tid::from_node(c.node)).collect();
            // An identical vector already in the graph takes this row too.
            if l == 0 {
                for same in live.iter().take_while(|c| c.distance == 0.0).map(|c| Tid::from_node(c.node)) {
                    if g.node(same).is_some_and(|n| n.vector == v) && add_heap_tid(index, same, heap_tid) {
                        return;
                    }
                }
            }
            entries = found;
        }
    }
    let element = write_tuples(index, meta, v, heap_tid, level, &lists);
    for (l, list) in lists.iter().enumerate() {
        for &n in list {
            link_back(index, &mut g, n, element, l as u8, &params);
        }
    }
    // The metapage read again, not `meta`: VACUUM may have moved the entry meanwhile (it
    // looks for higher elements once more after moving it, so one of the two sees this one).
    let now = read_meta(index);
    if !now.entry.is_valid() || level > now.entry_level {
        raise_entry(index, element, level);
    }
}

/// Adds `heap_tid` to the element at `element`: in the element while it has room, then
/// in its first heap-tid tuple, else in a new one put in front of the others. False if
/// the element is deleted (VACUUM got there first; the row then gets its own element).
///
/// Each change is a compare-and-swap of one tuple under its page's lock. VACUUM marks
/// an element deleted only while it holds the element's page and has read its heap-tid
/// tuples; a row added to a heap-tid tuple is kept only if the element is still live
/// when looked at afterwards, so one of the two always sees the other.
fn add_heap_tid(index: pg_sys::Relation, element: Tid, heap_tid: Tid) -> bool {
    use super::page::read_tuple;
    for _attempt in 0..20 {
        let Some(before) = read_tuple(index, element) else { return false };
        let Ok(e) = Element::decode_header(&before) else { return false };
        if e.deleted {
            return false;
        }
        if e.heap_tids.len() < format::MAX_HEAP_TIDS {
            let mut after = before.clone();
            let mut tids = e.heap_tids.clone();
            tids.push(heap_tid);
            format::set_heap_tids(&mut after, &tids);
            if replace_tuple(index, element, &before, &after) {
                return true;
            }
            continue;
        }
        if e.more_tids.is_valid() {
            let Some(first) = read_tuple(index, e.more_tids) else { return false };
            let Ok((mut rows, _)) = format::decode_tids(&first) else { return false };
            if rows.len() < format::TIDS_CAPACITY {
                rows.push(heap_tid);
                let mut after = first.clone();
                format::set_tids(&mut after, &rows);
                if replace_tuple(index, e.more_tids, &first, &after) {
                    return read_tuple(index, element).and_then(|t| Element::decode_header(&t).ok()).is_some_and(|e| !e.deleted);
                }
                continue;
            }
        }
        // A new heap-tid tuple in front of the others, then the element pointed at it.
        let new = append(index, &format::encode_tids(&[heap_tid], format::TIDS_CAPACITY, e.more_tids));
        for _link in 0..20 {
            let Some(cur) = read_tuple(index, element) else { return false };
            let Ok(ce) = Element::decode_header(&cur) else { return false };
            if ce.deleted {
                return false;
            }
            // Another insert may have put its own in front meanwhile: follow it.
            let Some(mine) = read_tuple(index, new) else { return false };
            let Ok((_, next)) = format::decode_tids(&mine) else { return false };
            if next != ce.more_tids {
                let mut after = mine.clone();
                format::set_next_tids(&mut after, ce.more_tids);
                if !replace_tuple(index, new, &mine, &after) {
                    continue;
                }
            }
            let mut after = cur.clone();
            format::set_more_tids(&mut after, new);
            if replace_tuple(index, element, &cur, &after) {
                return true;
            }
        }
        return false;
    }
    false
}

/// Finds a page with `total` bytes free (the insert hint, else a new page, which then
/// becomes the hint) and runs `write` on it under an exclusive lock.
fn with_room(index: pg_sys::Relation, total: usize, write: &dyn Fn(&Locked, bool) -> Tid) -> Tid {
    let hint = read_meta(index).insert_block;
    if hint != META_BLOCK && hint < super::page::nblocks(index) {
        let b = Locked::read(index, hint, true);
        let page = b.page();
        if !page.is_new() && page.kind() == Some(PAGE_GRAPH) && page.free_space() + 4 >= total {
            return write(&b, false);
        }
    }
    let b = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
    let at = write(&b, true);
    let block = b.block();
    drop(b);
    update_meta(index, |meta| {
        let later = block > meta.insert_block || meta.insert_block == META_BLOCK;
        if later {
            meta.insert_block = block;
        }
        later
    });
    at
}

/// Room a tuple takes on a page: MAXALIGNed data plus its line pointer.
fn room(len: usize) -> usize {
    len.div_ceil(8) * 8 + 4
}

/// Appends one tuple; returns its tid.
fn append(index: pg_sys::Relation, bytes: &[u8]) -> Tid {
    with_room(index, room(bytes.len()), &|b, fresh| {
        let mut wal = Wal::start(index);
        let page = wal.page(b, fresh);
        if fresh {
            page.init(PAGE_GRAPH);
        }
        let tid = Tid { block: b.block(), offset: page.add(bytes) };
        wal.finish();
        tid
    })
}

/// Writes the vector chunks (if any), then the element and its neighbour tuple together.
fn write_tuples(index: pg_sys::Relation, meta: &Meta, v: &[f32], heap_tid: Tid, level: u8, lists: &[Vec<Tid>]) -> Tid {
    let m = meta.m as usize;
    let inline = format::inline_count(v.len(), level, m);
    // Chunks last to first, each pointing at the one after it.
    let mut next = Tid::INVALID;
    let rest = &v[inline..];
    let starts: Vec<usize> = (0..rest.len()).step_by(format::MAX_CHUNK).collect();
    for &s in starts.iter().rev() {
        let end = (s + format::MAX_CHUNK).min(rest.len());
        next = append(index, &format::encode_chunk(&rest[s..end], next));
    }
    let neighbors = format::encode_neighbors(level, m, lists);
    let code_len = format::code_len(v.len(), level, m);
    let code = (code_len > 0).then(|| format::Code::of(v));
    let element = move |at: Tid| Element {
        level,
        deleted: false,
        heap_tids: vec![heap_tid],
        more_tids: Tid::INVALID,
        neighbors: Tid { block: at.block, offset: at.offset + 1 },
        next_chunk: next,
        dims: v.len() as u16,
        code: code.clone(),
        inline: v[..inline].to_vec(),
    };
    // The element's tid decides the neighbour tuple's (the next line pointer), so the
    // element is encoded once its page is known.
    append_pair(index, format::element_size(code_len, inline), &|at| element(at).encode(), &neighbors)
}

/// Adds the element (made from its tid) and, right after it, the neighbour tuple, on
/// one page in one WAL record.
fn append_pair(index: pg_sys::Relation, element_len: usize, element: &dyn Fn(Tid) -> Vec<u8>, neighbors: &[u8]) -> Tid {
    with_room(index, room(element_len) + room(neighbors.len()), &|b, fresh| {
        let mut wal = Wal::start(index);
        let page = wal.page(b, fresh);
        if fresh {
            page.init(PAGE_GRAPH);
        }
        let at = Tid { block: b.block(), offset: page.max_offset() + 1 };
        let off = page.add(&element(at));
        assert_eq!(off, at.offset, "akidb_hnsw: element placed at an unexpected offset");
        let noff = page.add(neighbors);
        assert_eq!(noff, at.offset + 1, "akidb_hnsw: neighbour tuple placed at an unexpected offset");
        wal.finish();
        at
    })
}

/// Adds `new` to `node`'s list on `level` (pruning with the heuristic when full). The list
/// is read, the new one computed with no lock held, and written only if nobody changed
/// the tuple meanwhile (else retried).
fn link_back(index: pg_sys::Relation, g: &mut DiskGraph, node: Tid, new: Tid, level: u8, params: &Params) {
    let (m, max) = (g.m, params.max_neighbors(level));
    for _attempt in 0..5 {
        let Some(ntid) = g.node(node).map(|n| n.neighbors) else { return };
        let Some(before) = super::page::read_tuple(index, ntid) else { return };
        let Some((own_level, mut lists)) = format::all_neighbors(&before, m) else { return };
        let Some(list) = lists.get_mut(level as usize) else { return };
        if list.contains(&new) {
            return;
        }
        if list.len() < max {
            list.push(new);
        } else {
            let cands: Vec<Candidate> =
                list.iter().chain([&new]).map(|&t| Candidate { distance: g.between(node, t), node: t.node() }).collect();
            let kept = select_neighbors(&cands, max, params.min_neighbors(level), |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
            if !kept.iter().any(|c| c.node == new.node()) {
                return;
            }
            *list = kept.iter().map(|c| Tid::from_node(c.node)).collect();
        }
        if replace_tuple(index, ntid, &before, &format::encode_neighbors(own_level, m, &lists)) {
            return;
        }
    }
}

/// Overwrites the tuple at `tid` with `after` (same size) if it still equals `before`.
pub fn replace_tuple(index: pg_sys::Relation, tid: Tid, before: &[u8], after: &[u8]) -> bool {
    let b = Locked::read(index, tid.block, true);
    let mut wal = Wal::start(index);
    let page = wal.page(&b, false);
    match page.item(tid.offset) {
        Some(item) if item == before && item.len() == after.len() => {
            item.copy_from_slice(after);
            wal.finish();
            true
        }
        _ => false,
    }
}

/// Makes `element` the entry point if it is higher than the current one.
pub fn raise_entry(index: pg_sys::Relation, element: Tid, level: u8) {
    update_meta(index, |meta| {
        let higher = !meta.entry.is_valid() || level > meta.entry_level;
        if higher {
            meta.entry = element;
            meta.entry_level = level;
        }
        higher
    });
}
