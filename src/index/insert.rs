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
    let _lock = InsertLock::take(index);
    let meta = read_meta(index);
    let Some(v) = prepared_vector(unsafe { *values }, meta.metric) else { return false };
    insert_vector(index, &meta, &v, item_tid(heap_tid));
    false
}

/// The block whose heavyweight page lock orders inserts against VACUUM: each insert
/// holds it in share mode; VACUUM takes it exclusively for a moment to wait for the
/// inserts in flight (those that may link to an element it just marked deleted).
pub const INSERT_LOCK_BLOCK: u32 = META_BLOCK;

/// The insert lock, released on drop (an ERROR releases it with the transaction).
struct InsertLock(pg_sys::Relation);

impl InsertLock {
    fn take(index: pg_sys::Relation) -> InsertLock {
        // SAFETY: a heavyweight page lock on the open index.
        unsafe { pg_sys::LockPage(index, INSERT_LOCK_BLOCK, pg_sys::ShareLock as i32) };
        InsertLock(index)
    }
}

impl Drop for InsertLock {
    fn drop(&mut self) {
        // SAFETY: taken in `take`.
        unsafe { pg_sys::UnlockPage(self.0, INSERT_LOCK_BLOCK, pg_sys::ShareLock as i32) };
    }
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
            // Lists are kept full (the heuristic's picks, then the nearest of the rest):
            // with the build's fill of m on level 0, a graph that inserts make (months of
            // updates replace every element) came out sparser than a built one, and
            // recall fell round after round of UPDATE + VACUUM (bench-churn).
            let chosen = select_neighbors(&live, params.max_neighbors(l), params.max_neighbors(l), |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
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
    let element = reuse_slot(index, meta, v, heap_tid, level, &lists).unwrap_or_else(|| write_tuples(index, meta, v, heap_tid, level, &lists));
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
/// Each change is a compare-and-swap of one tuple under its page's lock, retried until
/// it lands (a failed one means another writer's change landed). VACUUM marks an element
/// deleted only while it holds the element's page and has read its heap-tid tuples; a
/// row added to a heap-tid tuple is kept only if the element is still live when looked
/// at afterwards, so one of the two always sees the other.
fn add_heap_tid(index: pg_sys::Relation, element: Tid, heap_tid: Tid) -> bool {
    use super::page::read_tuple;
    let live = |t: &[u8]| Element::decode_header(t).ok().filter(|e| !e.deleted);
    let mut attempts = Attempts::default();
    loop {
        attempts.next();
        let Some(before) = read_tuple(index, element) else { return false };
        let Some(e) = live(&before) else { return false };
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
            let Some(first) = read_tuple(index, e.more_tids) else { continue };
            let Ok((mut rows, _)) = format::decode_tids(&first) else { continue };
            if rows.len() < format::TIDS_CAPACITY {
                rows.push(heap_tid);
                let mut after = first.clone();
                format::set_tids(&mut after, &rows);
                if replace_tuple(index, e.more_tids, &first, &after) {
                    if read_tuple(index, element).is_some_and(|t| live(&t).is_some()) {
                        return true;
                    }
                    // VACUUM deleted the element meanwhile: take the row out again (the
                    // row then gets its own element).
                    remove_row(index, e.more_tids, heap_tid);
                    return false;
                }
                continue;
            }
        }
        // A new heap-tid tuple in front of the others, then the element pointed at it.
        let new = append(index, &format::encode_tids(&[heap_tid], format::TIDS_CAPACITY, e.more_tids));
        let mut link = Attempts::default();
        loop {
            link.next();
            let cur = read_tuple(index, element);
            let Some(ce) = cur.as_deref().and_then(live) else {
                // Deleted meanwhile: the new tuple stays unlinked; empty, it holds no row.
                remove_row(index, new, heap_tid);
                return false;
            };
            let cur = cur.expect("read above");
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
    }
}

/// Takes `row` out of the heap-tid tuple at `at` (compare-and-swap, retried).
fn remove_row(index: pg_sys::Relation, at: Tid, row: Tid) {
    let mut attempts = Attempts::default();
    loop {
        attempts.next();
        let Some(before) = super::page::read_tuple(index, at) else { return };
        let Ok((rows, _)) = format::decode_tids(&before) else { return };
        if !rows.contains(&row) {
            return;
        }
        let keep: Vec<Tid> = rows.into_iter().filter(|&r| r != row).collect();
        let mut after = before.clone();
        format::set_tids(&mut after, &keep);
        if replace_tuple(index, at, &before, &after) {
            return;
        }
    }
}

/// Counts the attempts of a compare-and-swap loop, which retries until its change lands
/// (each failure means another writer's change landed): every few attempts it checks
/// for interrupts, so a statement that cannot get through can still be cancelled, and
/// a loop that never lands (which contention alone cannot cause) is an ERROR, not a hang.
#[derive(Default)]
pub struct Attempts(u32);

/// More failed compare-and-swaps on one tuple than any contention makes.
const MAX_ATTEMPTS: u32 = 100_000;

impl Attempts {
    pub fn next(&mut self) {
        self.0 += 1;
        if self.0 % 16 == 0 {
            pgrx::check_for_interrupts!();
        }
        if self.0 > MAX_ATTEMPTS {
            super::store::corrupted(format!("a tuple could not be updated in {MAX_ATTEMPTS} attempts"));
        }
    }
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
        let mut page = wal.page(b, fresh);
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

/// Pages an insert looks through for a free slot before it appends instead.
const REUSE_SCAN_PAGES: u32 = 16;

/// A free slot (see [`format::STATE_FREE`]) an insert of `level` can fill: its element
/// tuple has the new element's size, its neighbour tuple (on the same page) is at least
/// the size the level needs, and its vector chunks hold the values the element does not.
struct Slot {
    at: Tid,
    level: u8,
    neighbors: Tid,
    next_chunk: Tid,
}

/// The layout a slot must have: element tuple size, code length, inline values, and
/// the least neighbour tuple size.
#[derive(Clone, Copy)]
struct Layout {
    element_len: usize,
    code_len: usize,
    inline: usize,
    neighbors_len: usize,
}

/// Whether the element tuple `item` at `at` on `page` is a free slot of `layout`.
fn free_slot(page: &super::page::Page<'_>, at: Tid, item: &[u8], layout: Layout) -> Option<Slot> {
    if item.first() != Some(&format::KIND_ELEMENT) || format::element_state(item) != format::STATE_FREE || item.len() != layout.element_len {
        return None;
    }
    let head = format::ElementHead::parse(item).ok()?;
    if format::element_code(item).map_or(0, |c| c.bytes.len()) != layout.code_len || format::inline_values(item).len() != 4 * layout.inline {
        return None;
    }
    let neighbors_len = layout.neighbors_len;
    if head.neighbors.block != at.block || page.item(head.neighbors.offset).is_none_or(|n| n.len() < neighbors_len) {
        return None;
    }
    Some(Slot { at, level: head.level, neighbors: head.neighbors, next_chunk: head.next_chunk })
}

/// Finds a free slot for an element of `level` from the metapage's free block on, and
/// claims it; moves the free block past pages that have no free slot at all.
/// `start` is the free block as the insert read the metapage (a stale one only costs a
/// longer look; the metapage is moved on only if nobody moved it meanwhile).
fn claim_slot(index: pg_sys::Relation, start: u32, dims: usize, level: u8, m: usize) -> Option<Slot> {
    let n = super::page::nblocks(index);
    if start == META_BLOCK || start >= n {
        return None;
    }
    let (code_len, inline) = (format::code_len(dims, level, m), format::inline_count(dims, level, m));
    let layout = Layout { element_len: format::element_size(code_len, inline), code_len, inline, neighbors_len: format::neighbors_size(level, m) };
    // The first block seen with any free slot (of any size): the free block from now on.
    let mut first_free = None;
    let mut found = None;
    for block in start..n.min(start + REUSE_SCAN_PAGES) {
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page.kind() != Some(PAGE_GRAPH) {
            continue;
        }
        for off in 1..=page.max_offset() {
            let Some(item) = page.item(off) else { continue };
            if item.first() == Some(&format::KIND_ELEMENT) && format::element_state(item) == format::STATE_FREE {
                first_free.get_or_insert(block);
                if let Some(slot) = free_slot(&page, Tid { block, offset: off }, item, layout) {
                    found = Some(slot);
                    break;
                }
            }
        }
        if found.is_some() {
            break;
        }
    }
    let scanned_to = n.min(start + REUSE_SCAN_PAGES);
    let next_free = first_free.unwrap_or(if scanned_to >= n { META_BLOCK } else { scanned_to });
    if next_free != start {
        update_meta(index, |meta| {
            let moved = meta.free_block == start;
            if moved {
                meta.free_block = next_free;
            }
            moved
        });
    }
    // Claim it under the exclusive lock, if nobody took it meanwhile.
    let slot = found?;
    let b = Locked::read(index, slot.at.block, true);
    let mut wal = Wal::start(index);
    let mut page = wal.page(&b, false);
    let view = page.view();
    let slot = free_slot(&view, slot.at, view.item(slot.at.offset)?, layout)?;
    format::set_state(page.item_mut(slot.at.offset)?, format::STATE_CLAIMED);
    wal.finish();
    Some(slot)
}

/// Puts the new element into a free slot VACUUM left, if one fits: claims it, writes
/// the vector into the slot's chunks, then the element and its neighbour lists in place
/// (one WAL record). Returns the element's tid; None if there was no slot (append then).
fn reuse_slot(index: pg_sys::Relation, meta: &Meta, v: &[f32], heap_tid: Tid, level: u8, lists: &[Vec<Tid>]) -> Option<Tid> {
    let m = meta.m as usize;
    let slot = claim_slot(index, meta.free_block, v.len(), level, m)?;
    let inline = format::inline_count(v.len(), level, m);
    // The values beyond the element's own, chunk by chunk along the slot's chain.
    let mut done = inline;
    super::store::walk_chain(slot.at, "vector chunks", slot.next_chunk, format::chunk_count(v.len(), inline) as u64, |at| {
        let b = Locked::read(index, at.block, true);
        let mut wal = Wal::start(index);
        let mut page = wal.page(&b, false);
        let item = page.item_mut(at.offset).ok_or_else(|| format!("missing vector chunk ({}, {})", at.block, at.offset))?;
        let (values, next) = format::chunk_values(item).map_err(|e| e.to_string())?;
        let count = values.len() / 4;
        if done + count > v.len() || !format::set_chunk_values(item, &v[done..done + count]) {
            return Err(format!("vector chunk ({}, {}) does not fit the slot's vector", at.block, at.offset));
        }
        wal.finish();
        done += count;
        Ok(next)
    });
    if done != v.len() {
        super::store::corrupted(format!("free slot ({}, {}) holds {done} values, the index has {}", slot.at.block, slot.at.offset, v.len()));
    }
    let code_len = format::code_len(v.len(), level, m);
    let element = Element {
        level,
        deleted: false,
        heap_tids: vec![heap_tid],
        more_tids: Tid::INVALID,
        neighbors: slot.neighbors,
        next_chunk: slot.next_chunk,
        dims: v.len() as u16,
        code: (code_len > 0).then(|| format::Code::of(v)),
        inline: v[..inline].to_vec(),
    }
    .encode();
    {
        let b = Locked::read(index, slot.at.block, true);
        let mut wal = Wal::start(index);
        let mut page = wal.page(&b, false);
        let ok = page.item_mut(slot.at.offset).filter(|i| i.len() == element.len() && format::element_state(i) == format::STATE_CLAIMED);
        let Some(item) = ok else {
            super::store::corrupted(format!("claimed slot ({}, {}) changed under its insert", slot.at.block, slot.at.offset));
        };
        item.copy_from_slice(&element);
        let nb = page.item_mut(slot.neighbors.offset).unwrap_or_else(|| super::store::corrupted(format!("missing neighbour tuple ({}, {})", slot.neighbors.block, slot.neighbors.offset)));
        let lists = format::encode_neighbors_into(level, m, lists, nb.len());
        nb.copy_from_slice(&lists);
        wal.finish();
    }
    // A scan's cache of upper-level nodes may hold the slot's old element.
    if slot.level > 0 {
        update_meta(index, |meta| {
            meta.reuse_epoch = meta.reuse_epoch.wrapping_add(1);
            true
        });
    }
    Some(slot.at)
}

/// Adds the element (made from its tid) and, right after it, the neighbour tuple, on
/// one page in one WAL record.
fn append_pair(index: pg_sys::Relation, element_len: usize, element: &dyn Fn(Tid) -> Vec<u8>, neighbors: &[u8]) -> Tid {
    with_room(index, room(element_len) + room(neighbors.len()), &|b, fresh| {
        let mut wal = Wal::start(index);
        let mut page = wal.page(b, fresh);
        if fresh {
            page.init(PAGE_GRAPH);
        }
        let at = Tid { block: b.block(), offset: page.view().max_offset() + 1 };
        let off = page.add(&element(at));
        assert_eq!(off, at.offset, "akidb_hnsw: element placed at an unexpected offset");
        let noff = page.add(neighbors);
        assert_eq!(noff, at.offset + 1, "akidb_hnsw: neighbour tuple placed at an unexpected offset");
        wal.finish();
        at
    })
}

/// Adds `new` to `node`'s list on `level` (pruning with the heuristic when full). The list
/// is read, the new one computed with no lock held (it reads other pages), and written
/// only if nobody changed the tuple meanwhile, else computed again: until it lands, so
/// no back-link is ever dropped under contention.
fn link_back(index: pg_sys::Relation, g: &mut DiskGraph, node: Tid, new: Tid, level: u8, params: &Params) {
    let (m, max) = (g.m, params.max_neighbors(level));
    let mut attempts = Attempts::default();
    loop {
        attempts.next();
        let Some(ntid) = g.node(node).map(|n| n.neighbors) else { return };
        let before = super::page::read_tuple(index, ntid)
            .unwrap_or_else(|| super::store::corrupted(format!("missing neighbour tuple ({}, {})", ntid.block, ntid.offset)));
        let Some((own_level, mut lists)) = format::all_neighbors(&before, m) else {
            super::store::corrupted(format!("({}, {}) is not a neighbour tuple", ntid.block, ntid.offset))
        };
        let Some(list) = lists.get_mut(level as usize) else { return };
        if list.contains(&new) {
            return;
        }
        if list.len() < max {
            list.push(new);
        } else {
            let cands: Vec<Candidate> =
                list.iter().chain([&new]).map(|&t| Candidate { distance: g.between(node, t), node: t.node() }).collect();
            // Kept full: one link gives way (see insert_vector).
            let kept = select_neighbors(&cands, max, max, |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
            if !kept.iter().any(|c| c.node == new.node()) {
                return;
            }
            *list = kept.iter().map(|c| Tid::from_node(c.node)).collect();
        }
        if replace_tuple(index, ntid, &before, &format::encode_neighbors_into(own_level, m, &lists, before.len())) {
            return;
        }
    }
}

/// Overwrites the tuple at `tid` with `after` (same size) if it still equals `before`.
pub fn replace_tuple(index: pg_sys::Relation, tid: Tid, before: &[u8], after: &[u8]) -> bool {
    let b = Locked::read(index, tid.block, true);
    let mut wal = Wal::start(index);
    let mut page = wal.page(&b, false);
    match page.item_mut(tid.offset) {
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
