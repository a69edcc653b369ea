//! One vector into the graph on [`Pages`]: find its neighbours with the search, write
//! its tuples (into a free slot VACUUM left, else appended), link the neighbours back,
//! and raise the entry point if the new element is the highest.
//!
//! Every change of a tuple others may change too is a compare-and-swap of that one tuple
//! under its page's lock ([`replace_tuple`]), retried until it lands ([`Attempts`]): no
//! back-link and no row is ever dropped under contention, and at most one page is locked
//! at a time, so concurrent inserts, scans and VACUUM cannot deadlock.

use std::collections::HashSet;

use super::error::IndexError;
use super::format::{self, Element, Meta, Tid, META_BLOCK, PAGE_GRAPH};
use super::graph::{walk_chain, PageGraph};
use super::pages::{read_meta, read_tuple, update_meta, Change, PageRead, Pages};
use super::search::{descend, search_level, select_neighbors, Candidate, GraphStore};
use super::{level_from_random, Params};

use super::pages::replace_tuple;

/// Inserts one prepared vector (see [`super::Metric::prepare`]) for `heap_tid`; `meta` is
/// the metapage as just read, `random` a fresh random number (it draws the level).
pub fn insert<P: Pages + ?Sized>(pages: &P, meta: &Meta, v: &[f32], heap_tid: Tid, random: u64) -> Result<(), IndexError> {
    if v.len() != meta.dims as usize {
        return Err(IndexError::DimMismatch { expected: meta.dims as usize, got: v.len() });
    }
    let (m, metric) = (meta.m as usize, meta.metric);
    let params = Params { m, ef_construction: meta.ef_construction as usize };
    let level = level_from_random(random, m).min(format::max_level(m));
    let mut g = PageGraph::new(pages, m, metric);
    let Some(mut lists) = neighbor_lists(pages, &mut g, meta, v, heap_tid, level, &params, None)? else { return Ok(()) };
    let element = match reuse_slot(pages, meta, v, heap_tid, level, &lists)? {
        Some(at) => at,
        None => write_tuples(pages, meta, v, heap_tid, level, &lists)?,
    };
    if !meta.entry.is_valid() {
        // The graph looked empty: this element is the first, unless another insert that
        // saw it empty too got there first. Then both have no links, and the one that
        // is not the entry would stay cut off (a row no search finds): it searches again
        // from the entry the other made and links in as if it came after.
        let mut first = false;
        update_meta(pages, |now| {
            first = !now.entry.is_valid();
            if first {
                now.entry = element;
                now.entry_level = level;
            }
            first
        })?;
        if first {
            return Ok(());
        }
        let now = read_meta(pages)?;
        lists = neighbor_lists(pages, &mut g, &now, v, heap_tid, level, &params, Some(element))?.unwrap_or_default();
        for (l, list) in lists.iter().enumerate() {
            adopt(pages, &mut g, element, l as u8, list)?;
        }
    }
    link_in(pages, &mut g, element, &lists, &params)?;
    // The metapage read again, not `meta`: VACUUM may have moved the entry meanwhile (it
    // looks for higher elements once more after moving it, so one of the two sees this one).
    let now = read_meta(pages)?;
    if !now.entry.is_valid() || level > now.entry_level {
        raise_entry(pages, element, level)?;
    }
    Ok(())
}

/// The new element's neighbour lists, level by level up to `level`, searched from the
/// entry point of `meta` (none while the graph is empty). None if an identical vector is
/// already in the graph and took the row. `placed`: the element is already written (it
/// is left out of its own lists, and no other element takes its row).
#[allow(clippy::too_many_arguments)]
fn neighbor_lists<P: Pages + ?Sized>(
    pages: &P,
    g: &mut PageGraph<'_, P>,
    meta: &Meta,
    v: &[f32],
    heap_tid: Tid,
    level: u8,
    params: &Params,
    placed: Option<Tid>,
) -> Result<Option<Vec<Vec<Tid>>>, IndexError> {
    let mut lists: Vec<Vec<Tid>> = vec![Vec::new(); level as usize + 1];
    if !meta.entry.is_valid() {
        return Ok(Some(lists));
    }
    let start = Candidate { distance: g.distance(v, meta.entry.node()), node: meta.entry.node() };
    let mut entries = vec![descend(g, v, start, meta.entry_level, level)];
    for l in (0..=level.min(meta.entry_level)).rev() {
        let mut visited: HashSet<u64> = entries.iter().map(|e| e.node).collect();
        let found = search_level(g, v, &entries, params.ef_construction, l, &mut visited);
        g.check()?;
        let live: Vec<Candidate> = found.iter().copied().filter(|c| Some(Tid::from_node(c.node)) != placed && g.is_live(Tid::from_node(c.node))).collect();
        // Lists are kept full (the heuristic's picks, then the nearest of the rest):
        // with the build's fill of m on level 0, a graph that inserts make (months of
        // updates replace every element) came out sparser than a built one, and
        // recall fell round after round of UPDATE + VACUUM (bench-churn).
        let max = params.max_neighbors(l);
        let chosen = select_neighbors(&live, max, max, |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
        g.check()?;
        lists[l as usize] = chosen.iter().map(|c| Tid::from_node(c.node)).collect();
        // An identical vector already in the graph takes this row too.
        if l == 0 && placed.is_none() {
            for same in live.iter().take_while(|c| c.distance == 0.0).map(|c| Tid::from_node(c.node)) {
                if g.node(same).is_some_and(|n| n.vector == v) && add_heap_tid(pages, same, heap_tid)? {
                    return Ok(None);
                }
            }
        }
        entries = found;
    }
    Ok(Some(lists))
}

/// Links the new element `element` in from its neighbours `lists` (level by level).
fn link_in<P: Pages + ?Sized>(pages: &P, g: &mut PageGraph<'_, P>, element: Tid, lists: &[Vec<Tid>], params: &Params) -> Result<(), IndexError> {
    for (l, list) in lists.iter().enumerate() {
        let (mut linked, mut cut) = (false, Vec::new());
        for &n in list {
            linked |= link_back(pages, g, n, element, l as u8, params, false, &mut cut)?;
        }
        // No neighbour's heuristic took the new element: the nearest takes it all the
        // same, or it would have no way in at all.
        if let (false, Some(&n)) = (linked, list.first()) {
            link_back(pages, g, n, element, l as u8, params, true, &mut cut)?;
        }
        if !cut.is_empty() {
            adopt(pages, g, element, l as u8, &cut)?;
        }
    }
    Ok(())
}

/// Counts the attempts of a compare-and-swap loop, which retries until its change lands
/// (each failure means another writer's change landed): every few attempts it checks
/// for interrupts, so a statement that cannot get through can still be cancelled, and
/// a loop that never lands (which contention alone cannot cause) is an error, not a hang.
pub struct Attempts<'p, P: Pages + ?Sized> {
    pages: &'p P,
    count: u32,
}

/// More failed compare-and-swaps on one tuple than any contention makes.
pub const MAX_ATTEMPTS: u32 = 100_000;

impl<'p, P: Pages + ?Sized> Attempts<'p, P> {
    pub fn new(pages: &'p P) -> Self {
        Attempts { pages, count: 0 }
    }

    pub fn step(&mut self) -> Result<(), IndexError> {
        self.count += 1;
        if self.count % 16 == 0 {
            self.pages.check_for_interrupts();
        }
        if self.count > MAX_ATTEMPTS {
            return Err(IndexError::Corrupted(format!("a tuple could not be updated in {MAX_ATTEMPTS} attempts")));
        }
        Ok(())
    }
}

/// Adds `heap_tid` to the element at `element`: in the element while it has room, then
/// in its first heap-tid tuple, else in a new one put in front of the others. False if
/// the element is deleted (VACUUM got there first; the row then gets its own element).
///
/// VACUUM marks an element deleted only while it holds the element's page and has read
/// its heap-tid tuples; a row added to a heap-tid tuple is kept only if the element is
/// still live when looked at afterwards, so one of the two always sees the other.
pub fn add_heap_tid<P: Pages + ?Sized>(pages: &P, element: Tid, heap_tid: Tid) -> Result<bool, IndexError> {
    let live = |t: &[u8]| Element::decode_header(t).ok().filter(|e| !e.deleted);
    let mut attempts = Attempts::new(pages);
    loop {
        attempts.step()?;
        let Some(before) = read_tuple(pages, element) else { return Ok(false) };
        let Some(e) = live(&before) else { return Ok(false) };
        if e.heap_tids.len() < format::MAX_HEAP_TIDS {
            let mut after = before.clone();
            let mut tids = e.heap_tids.clone();
            tids.push(heap_tid);
            format::set_heap_tids(&mut after, &tids);
            if replace_tuple(pages, element, &before, &after) {
                return Ok(true);
            }
            continue;
        }
        if e.more_tids.is_valid() {
            let Some(first) = read_tuple(pages, e.more_tids) else { continue };
            let Ok((mut rows, _)) = format::decode_tids(&first) else { continue };
            if rows.len() < format::TIDS_CAPACITY {
                rows.push(heap_tid);
                let mut after = first.clone();
                format::set_tids(&mut after, &rows);
                if replace_tuple(pages, e.more_tids, &first, &after) {
                    if read_tuple(pages, element).is_some_and(|t| live(&t).is_some()) {
                        return Ok(true);
                    }
                    // VACUUM deleted the element meanwhile: take the row out again (the
                    // row then gets its own element).
                    remove_row(pages, e.more_tids, heap_tid)?;
                    return Ok(false);
                }
                continue;
            }
        }
        // A new heap-tid tuple in front of the others, then the element pointed at it.
        let new = append(pages, &format::encode_tids(&[heap_tid], format::TIDS_CAPACITY, e.more_tids))?;
        let mut link = Attempts::new(pages);
        loop {
            link.step()?;
            let cur = read_tuple(pages, element);
            let Some(ce) = cur.as_deref().and_then(live) else {
                // Deleted meanwhile: the new tuple stays unlinked; empty, it holds no row.
                remove_row(pages, new, heap_tid)?;
                return Ok(false);
            };
            let cur = cur.expect("read above");
            // Another insert may have put its own in front meanwhile: follow it.
            let Some(mine) = read_tuple(pages, new) else { return Ok(false) };
            let Ok((_, next)) = format::decode_tids(&mine) else { return Ok(false) };
            if next != ce.more_tids {
                let mut after = mine.clone();
                format::set_next_tids(&mut after, ce.more_tids);
                if !replace_tuple(pages, new, &mine, &after) {
                    continue;
                }
            }
            let mut after = cur.clone();
            format::set_more_tids(&mut after, new);
            if replace_tuple(pages, element, &cur, &after) {
                return Ok(true);
            }
        }
    }
}

/// Takes `row` out of the heap-tid tuple at `at` (compare-and-swap, retried).
pub fn remove_row<P: Pages + ?Sized>(pages: &P, at: Tid, row: Tid) -> Result<(), IndexError> {
    let mut attempts = Attempts::new(pages);
    loop {
        attempts.step()?;
        let Some(before) = read_tuple(pages, at) else { return Ok(()) };
        let Ok((rows, _)) = format::decode_tids(&before) else { return Ok(()) };
        if !rows.contains(&row) {
            return Ok(());
        }
        let keep: Vec<Tid> = rows.into_iter().filter(|&r| r != row).collect();
        let mut after = before.clone();
        format::set_tids(&mut after, &keep);
        if replace_tuple(pages, at, &before, &after) {
            return Ok(());
        }
    }
}

/// Room a tuple takes on a page: MAXALIGNed data plus its line pointer.
fn room(len: usize) -> usize {
    len.div_ceil(8) * 8 + 4
}

/// Finds a page with `total` bytes free (the insert hint, else a new page, which then
/// becomes the hint) and runs `write` on it, exclusively locked (`fresh`: a new page,
/// to initialise).
fn with_room<P: Pages + ?Sized>(
    pages: &P,
    total: usize,
    write: &dyn Fn(u32, &mut dyn super::pages::PageWrite, bool) -> Result<Tid, IndexError>,
) -> Result<Tid, IndexError> {
    let hint = read_meta(pages)?.insert_block;
    if hint != META_BLOCK && hint < pages.nblocks() {
        let done = pages.write(hint, |page| {
            if !page.is_new() && page.kind() == Some(PAGE_GRAPH) && page.free_space() + 4 >= total {
                match write(hint, page, false) {
                    Ok(at) => Change::Keep(Some(Ok(at))),
                    Err(e) => Change::Drop(Some(Err(e))),
                }
            } else {
                Change::Drop(None)
            }
        });
        if let Some(done) = done {
            return done;
        }
    }
    let (block, at) = pages.extend(|block, page| (block, write(block, page, true)));
    let at = at?;
    update_meta(pages, |meta| {
        let later = block > meta.insert_block || meta.insert_block == META_BLOCK;
        if later {
            meta.insert_block = block;
        }
        later
    })?;
    Ok(at)
}

/// Appends one tuple; returns its tid.
pub fn append<P: Pages + ?Sized>(pages: &P, bytes: &[u8]) -> Result<Tid, IndexError> {
    with_room(pages, room(bytes.len()), &|block, page, fresh| {
        if fresh {
            page.init(PAGE_GRAPH);
        }
        Ok(Tid { block, offset: page.add(bytes)? })
    })
}

/// Adds the element (made from its tid) and, right after it, the neighbour tuple, on
/// one page in one change.
fn append_pair<P: Pages + ?Sized>(pages: &P, element_len: usize, element: &dyn Fn(Tid) -> Vec<u8>, neighbors: &[u8]) -> Result<Tid, IndexError> {
    with_room(pages, room(element_len) + room(neighbors.len()), &|block, page, fresh| {
        if fresh {
            page.init(PAGE_GRAPH);
        }
        let at = Tid { block, offset: page.max_offset() + 1 };
        let off = page.add(&element(at))?;
        let noff = page.add(neighbors)?;
        if off != at.offset || noff != at.offset + 1 {
            return Err(IndexError::Corrupted(format!("element placed at ({block}, {off}), its neighbours at {noff}: the page's free line pointers are reused")));
        }
        Ok(at)
    })
}

/// Writes the vector chunks (if any), then the element and its neighbour tuple together.
fn write_tuples<P: Pages + ?Sized>(pages: &P, meta: &Meta, v: &[f32], heap_tid: Tid, level: u8, lists: &[Vec<Tid>]) -> Result<Tid, IndexError> {
    let m = meta.m as usize;
    let inline = format::inline_count(v.len(), level, m);
    // Chunks last to first, each pointing at the one after it.
    let mut next = Tid::INVALID;
    let rest = &v[inline..];
    let starts: Vec<usize> = (0..rest.len()).step_by(format::MAX_CHUNK).collect();
    for &s in starts.iter().rev() {
        let end = (s + format::MAX_CHUNK).min(rest.len());
        next = append(pages, &format::encode_chunk(&rest[s..end], next))?;
    }
    let neighbors = format::encode_neighbors(level, m, lists);
    let code_len = format::code_len(v.len(), level, m);
    let code = (code_len > 0).then(|| format::Code::of(v));
    let element = move |at: Tid| {
        Element {
            level,
            deleted: false,
            heap_tids: vec![heap_tid],
            more_tids: Tid::INVALID,
            neighbors: Tid { block: at.block, offset: at.offset + 1 },
            next_chunk: next,
            dims: v.len() as u16,
            code: code.clone(),
            inline: v[..inline].to_vec(),
        }
        .encode()
    };
    // The element's tid decides the neighbour tuple's (the next line pointer), so the
    // element is encoded once its page is known.
    append_pair(pages, format::element_size(code_len, inline), &element, &neighbors)
}

/// Pages an insert looks through for a free slot before it appends instead.
pub const REUSE_SCAN_PAGES: u32 = 16;

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
fn free_slot(page: &dyn PageRead, at: Tid, item: &[u8], layout: Layout) -> Option<Slot> {
    if item.first() != Some(&format::KIND_ELEMENT) || format::element_state(item) != format::STATE_FREE || item.len() != layout.element_len {
        return None;
    }
    let head = format::ElementHead::parse(item).ok()?;
    if format::element_code(item).map_or(0, |c| c.bytes.len()) != layout.code_len || format::inline_values(item).len() != 4 * layout.inline {
        return None;
    }
    if head.neighbors.block != at.block || page.item(head.neighbors.offset).is_none_or(|n| n.len() < layout.neighbors_len) {
        return None;
    }
    Some(Slot { at, level: head.level, neighbors: head.neighbors, next_chunk: head.next_chunk })
}

/// Finds a free slot for an element of `level` from the metapage's free block on, and
/// claims it; moves the free block past pages that have no free slot at all.
/// `start` is the free block as the insert read the metapage (a stale one only costs a
/// longer look; the metapage is moved on only if nobody moved it meanwhile).
fn claim_slot<P: Pages + ?Sized>(pages: &P, start: u32, dims: usize, level: u8, m: usize) -> Result<Option<Slot>, IndexError> {
    let n = pages.nblocks();
    if start == META_BLOCK || start >= n {
        return Ok(None);
    }
    let (code_len, inline) = (format::code_len(dims, level, m), format::inline_count(dims, level, m));
    let layout = Layout { element_len: format::element_size(code_len, inline), code_len, inline, neighbors_len: format::neighbors_size(level, m) };
    // The first block seen with any free slot (of any size): the free block from now on.
    let mut first_free = None;
    let mut found = None;
    let end = n.min(start + REUSE_SCAN_PAGES);
    for block in start..end {
        let (any, slot) = pages.read(block, |page| {
            let mut any = false;
            if page.kind() == Some(PAGE_GRAPH) {
                for off in 1..=page.max_offset() {
                    let Some(item) = page.item(off) else { continue };
                    if item.first() == Some(&format::KIND_ELEMENT) && format::element_state(item) == format::STATE_FREE {
                        any = true;
                        if let Some(slot) = free_slot(page, Tid { block, offset: off }, item, layout) {
                            return (true, Some(slot));
                        }
                    }
                }
            }
            (any, None)
        });
        if any {
            first_free.get_or_insert(block);
        }
        if slot.is_some() {
            found = slot;
            break;
        }
    }
    let next_free = first_free.unwrap_or(if end >= n { META_BLOCK } else { end });
    if next_free != start {
        update_meta(pages, |meta| {
            let moved = meta.free_block == start;
            if moved {
                meta.free_block = next_free;
            }
            moved
        })?;
    }
    // Claim it under the exclusive lock, if nobody took it meanwhile.
    let Some(slot) = found else { return Ok(None) };
    Ok(pages.write(slot.at.block, |page| {
        let Some(slot) = page.item(slot.at.offset).and_then(|item| free_slot(page, slot.at, item, layout)) else {
            return Change::Drop(None);
        };
        match page.item_mut(slot.at.offset) {
            Some(item) => {
                format::set_state(item, format::STATE_CLAIMED);
                Change::Keep(Some(slot))
            }
            None => Change::Drop(None),
        }
    }))
}

/// Puts the new element into a free slot VACUUM left, if one fits: claims it, writes
/// the vector into the slot's chunks, then the element and its neighbour lists in place
/// (one change). Returns the element's tid; None if there was no slot (append then).
fn reuse_slot<P: Pages + ?Sized>(pages: &P, meta: &Meta, v: &[f32], heap_tid: Tid, level: u8, lists: &[Vec<Tid>]) -> Result<Option<Tid>, IndexError> {
    let m = meta.m as usize;
    let Some(slot) = claim_slot(pages, meta.free_block, v.len(), level, m)? else { return Ok(None) };
    let inline = format::inline_count(v.len(), level, m);
    // The values beyond the element's own, chunk by chunk along the slot's chain.
    let mut done = inline;
    walk_chain(&|| pages.check_for_interrupts(), slot.at, "vector chunks", slot.next_chunk, format::chunk_count(v.len(), inline) as u64, |at| {
        pages.write(at.block, |page| {
            let Some(item) = page.item_mut(at.offset) else {
                return Change::Drop(Err(format!("missing vector chunk ({}, {})", at.block, at.offset)));
            };
            let (count, next) = match format::chunk_values(item) {
                Ok((values, next)) => (values.len() / 4, next),
                Err(e) => return Change::Drop(Err(e.to_string())),
            };
            if done + count > v.len() || !format::set_chunk_values(item, &v[done..done + count]) {
                return Change::Drop(Err(format!("vector chunk ({}, {}) does not fit the slot's vector", at.block, at.offset)));
            }
            done += count;
            Change::Keep(Ok(next))
        })
    })?;
    if done != v.len() {
        return Err(IndexError::at(slot.at, format!("a free slot of {done} values, the index has {}", v.len())));
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
    pages.write(slot.at.block, |page| {
        match page.item_mut(slot.at.offset) {
            Some(item) if item.len() == element.len() && format::element_state(item) == format::STATE_CLAIMED => item.copy_from_slice(&element),
            _ => return Change::Drop(Err(IndexError::at(slot.at, "a claimed slot changed under its insert"))),
        }
        let Some(nb) = page.item_mut(slot.neighbors.offset) else {
            return Change::Drop(Err(IndexError::at(slot.neighbors, "missing neighbour tuple")));
        };
        let encoded = format::encode_neighbors_into(level, m, lists, nb.len());
        nb.copy_from_slice(&encoded);
        Change::Keep(Ok(()))
    })?;
    // A scan's cache of upper-level nodes may hold the slot's old element.
    if slot.level > 0 {
        update_meta(pages, |meta| {
            meta.reuse_epoch = meta.reuse_epoch.wrapping_add(1);
            true
        })?;
    }
    Ok(Some(slot.at))
}

/// Adds `new` to `node`'s list on `level` (pruning with the heuristic when full; `force`:
/// whatever the heuristic says, in place of the farthest link). The list is read, the
/// new one computed with no lock held (it reads other pages), and written only if nobody
/// changed the tuple meanwhile, else computed again: until it lands, so no back-link is
/// ever dropped under contention. Returns whether `new` was linked.
///
/// A full list gives one link away, and HNSW's heuristic does not ask whether that was
/// the element's last way in: inserts one by one into a built index left some elements
/// unreachable until VACUUM. An element given away that no other member of the list
/// links to is pushed to `cut`, for the new element to link to (see [`adopt`]).
#[allow(clippy::too_many_arguments)]
pub fn link_back<P: Pages + ?Sized>(pages: &P, g: &mut PageGraph<'_, P>, node: Tid, new: Tid, level: u8, params: &Params, force: bool, cut: &mut Vec<Tid>) -> Result<bool, IndexError> {
    let max = params.max_neighbors(level);
    let mut attempts = Attempts::new(pages);
    loop {
        attempts.step()?;
        let Some(ntid) = g.node(node).map(|n| n.neighbors) else { return g.check().map(|()| false) };
        let before = read_tuple(pages, ntid).ok_or_else(|| IndexError::at(ntid, "missing neighbour tuple"))?;
        let Some((own_level, mut lists)) = format::all_neighbors(&before, g.m) else {
            return Err(IndexError::at(ntid, "not a neighbour tuple"));
        };
        let Some(list) = lists.get_mut(level as usize) else { return Ok(false) };
        if list.contains(&new) {
            return Ok(true);
        }
        let mut dropped = None;
        if list.len() < max {
            list.push(new);
        } else {
            let cands: Vec<Candidate> = list.iter().chain([&new]).map(|&t| Candidate { distance: g.between(node, t), node: t.node() }).collect();
            // Kept full: one link gives way (see insert).
            let mut kept = select_neighbors(&cands, max, max, |a, b| g.between(Tid::from_node(a), Tid::from_node(b)));
            g.check()?;
            if !kept.iter().any(|c| c.node == new.node()) {
                if !force {
                    return Ok(false);
                }
                kept.pop();
                kept.push(cands[cands.len() - 1]);
            }
            let next: Vec<Tid> = kept.iter().map(|c| Tid::from_node(c.node)).collect();
            dropped = list.iter().copied().find(|t| !next.contains(t));
            *list = next;
        }
        // (Not counting the new element's own link: `adopt` may give that one away.)
        let others: Vec<Tid> = lists[level as usize].iter().copied().filter(|&t| t != new).collect();
        if replace_tuple(pages, ntid, &before, &format::encode_neighbors_into(own_level, g.m, &lists, before.len())) {
            if let Some(d) = dropped.filter(|&d| live_at(pages, d, level) && !linked_from(pages, g, d, &others, level)) {
                cut.push(d);
            }
            return Ok(true);
        }
    }
}

/// Links the new element `element` to each of `cut` on `level` (elements its back-links
/// took a way in from), in place of its own farthest links when its list is full: those
/// are links that did not exist before this insert, so no element depended on them.
pub fn adopt<P: Pages + ?Sized>(pages: &P, g: &mut PageGraph<'_, P>, element: Tid, level: u8, cut: &[Tid]) -> Result<(), IndexError> {
    let mut attempts = Attempts::new(pages);
    loop {
        attempts.step()?;
        let Some(ntid) = g.node(element).map(|n| n.neighbors) else { return g.check() };
        let before = read_tuple(pages, ntid).ok_or_else(|| IndexError::at(ntid, "missing neighbour tuple"))?;
        let Some((own_level, mut lists)) = format::all_neighbors(&before, g.m) else {
            return Err(IndexError::at(ntid, "not a neighbour tuple"));
        };
        let Some(list) = lists.get_mut(level as usize) else { return Ok(()) };
        let max = Params { m: g.m, ef_construction: 0 }.max_neighbors(level);
        for &d in cut {
            if d == element || list.contains(&d) {
                continue;
            }
            if list.len() < max {
                list.push(d);
                continue;
            }
            // The farthest link that is not itself one adopted.
            let far = (0..list.len()).filter(|&i| !cut.contains(&list[i])).max_by(|&a, &b| g.between(element, list[a]).total_cmp(&g.between(element, list[b])));
            match far {
                Some(i) => list[i] = d,
                None => break,
            }
        }
        g.check()?;
        if replace_tuple(pages, ntid, &before, &format::encode_neighbors_into(own_level, g.m, &lists, before.len())) {
            return Ok(());
        }
    }
}

/// Whether `at` holds a live element that reaches `level`, as the page is now (a slot
/// VACUUM freed may hold another element since the list that named it was read).
fn live_at<P: Pages + ?Sized>(pages: &P, at: Tid, level: u8) -> bool {
    read_tuple(pages, at).is_some_and(|b| {
        b.first() == Some(&format::KIND_ELEMENT) && format::element_state(&b) == format::STATE_LIVE && format::Element::decode_header(&b).is_ok_and(|e| !e.deleted && e.level >= level)
    })
}

/// Whether one of `from` links to `element` on `level` (as their lists are now).
fn linked_from<P: Pages + ?Sized>(pages: &P, g: &mut PageGraph<'_, P>, element: Tid, from: &[Tid], level: u8) -> bool {
    let mut list = Vec::new();
    from.iter().any(|&f| {
        let Some(ntid) = g.node(f).map(|n| n.neighbors) else { return false };
        list.clear();
        read_tuple(pages, ntid).is_some_and(|b| format::neighbors_on(&b, g.m, level, &mut list).is_ok() && list.contains(&element))
    })
}

/// Makes `element` the entry point if it is higher than the current one.
pub fn raise_entry<P: Pages + ?Sized>(pages: &P, element: Tid, level: u8) -> Result<(), IndexError> {
    update_meta(pages, |meta| {
        let higher = !meta.entry.is_valid() || level > meta.entry_level;
        if higher {
            meta.entry = element;
            meta.entry_level = level;
        }
        higher
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hnsw::format::KIND_CHUNK;
    use crate::hnsw::pages::PageWrite;
    use crate::hnsw::pages::{empty_meta, MemPages};
    use crate::hnsw::search::knn;
    use crate::hnsw::testing::{elements, nearest, put, row, unreachable, vectors};
    use crate::hnsw::{splitmix64, Metric};
    use std::sync::{Arc, Barrier};

    #[test]
    fn inserts_one_by_one_keep_every_element_reachable_and_found() {
        let pages = MemPages::new(&empty_meta(Metric::L2, 12, 8, 32));
        let data = vectors(1500, 12, 1);
        for (i, v) in data.iter().enumerate() {
            put(&pages, v, i, splitmix64(i as u64 + 77));
        }
        assert_eq!(elements(&pages).len(), 1500);
        assert_eq!(unreachable(&pages), 0);
        let missed = data.iter().enumerate().filter(|(i, v)| nearest(&pages, v, 40) != (0.0, vec![row(*i)])).count();
        assert_eq!(missed, 0, "rows whose own vector does not find them");
        // The entry point is the highest element.
        let meta = read_meta(&pages).unwrap();
        let top = elements(&pages).iter().map(|(t, _)| PageGraph::new(&pages, 8, Metric::L2).node(*t).unwrap().level).max();
        assert_eq!(Some(meta.entry_level), top);
    }

    #[test]
    fn no_insert_cuts_an_element_off() {
        // Few links (m 4) in 32 dimensions: before an element that a link-back gave
        // away was adopted by the new one, 65 of these 2,000 (L2) were unreachable once
        // inserted one by one.
        for metric in [Metric::L2, Metric::Cosine] {
            let pages = MemPages::new(&empty_meta(metric, 32, 4, 32));
            let mut data = vectors(2000, 32, 9);
            for v in &mut data {
                metric.prepare(v);
            }
            for (i, v) in data.iter().enumerate() {
                put(&pages, v, i, splitmix64(i as u64 + 9));
            }
            assert_eq!(unreachable(&pages), 0, "{metric:?}");
        }
    }

    #[test]
    fn concurrent_inserts_keep_every_row_and_vacuum_reconnects_what_they_cut_off() {
        let pages = Arc::new(MemPages::new(&empty_meta(Metric::Cosine, 8, 8, 32)));
        let mut data = vectors(2400, 8, 2);
        for v in &mut data {
            Metric::Cosine.prepare(v);
        }
        let data = Arc::new(data);
        let threads = 6;
        let start = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (pages, data, start) = (pages.clone(), data.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for i in (t..data.len()).step_by(threads) {
                        put(&pages, &data[i], i, splitmix64(i as u64 ^ 0xabc));
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(elements(&pages).len(), data.len());
        // HNSW does not promise that an element stays reachable when the links into it
        // give way to nearer ones, and concurrent inserts that have not seen each other
        // prune each other out more often (under qemu's interleavings a few in a
        // thousand); VACUUM's last step links them in again.
        let lost = unreachable(&pages);
        assert!(lost <= data.len() / 200, "{lost} elements unreachable");
        // (It also links in an element with few ways in that its own vector does not find.)
        let linked = crate::hnsw::vacuum::connect_unreachable(&*pages, &NoRows).unwrap().unwrap();
        assert!(lost == 0 || linked > 0, "{linked} links for {lost} unreachable");
        assert_eq!(unreachable(&pages), 0);
        // Every row found by its own vector: at ef 32 a search may still miss one whose
        // ways in are long (CI's loaded runs missed 1 of 2,400, the interleavings differ
        // from run to run); a row the graph lost is not found at any ef.
        let missed: Vec<usize> = (0..data.len()).filter(|&i| nearest(&pages, &data[i], 32).1 != vec![row(i)]).collect();
        assert!(missed.len() <= data.len() / 400, "{} rows missed at ef 32", missed.len());
        // None lost: at ef 400 every row is found. (1 run in 8 lost one: two inserts into
        // the empty graph left the one that was not the entry with no links at all, and
        // elements cut off again and again kept only far ways in; issue 12.)
        let lost: Vec<usize> = missed.into_iter().filter(|&i| nearest(&pages, &data[i], 400).1 != vec![row(i)]).collect();
        assert!(lost.is_empty(), "rows not found by their own vector at ef 400: {lost:?}");
    }

    /// A VACUUM host for which no row is dead.
    struct NoRows;

    impl crate::hnsw::vacuum::Host for NoRows {
        fn is_dead(&self, _: Tid) -> bool {
            false
        }
        fn wait_for_inserts(&self) {}
        fn delay(&self) {}
        fn memory(&self) -> usize {
            64 << 20
        }
    }

    #[test]
    fn inserts_that_all_saw_the_graph_empty_link_each_other() {
        // Concurrent first inserts: each read the metapage before any other had made an
        // entry point. The one that is not the entry must not stay with no links.
        for seed in 0..8u64 {
            let pages = MemPages::new(&empty_meta(Metric::L2, 4, 8, 32));
            let empty = read_meta(&pages).unwrap();
            let data = vectors(40, 4, seed);
            for (i, v) in data.iter().enumerate() {
                insert(&pages, &empty, v, row(i), splitmix64(i as u64 ^ seed)).unwrap();
            }
            assert_eq!(elements(&pages).len(), data.len());
            assert_eq!(unreachable(&pages), 0, "seed {seed}");
            for (i, v) in data.iter().enumerate() {
                assert_eq!(nearest(&pages, v, 40).1, vec![row(i)], "seed {seed}, row {i}");
            }
        }
    }

    #[test]
    fn vacuum_gives_an_element_with_no_links_a_way_in_and_its_way_out() {
        // An element written with no links at all (a crash before the first insert took
        // the entry point, or before its links were written): VACUUM links it in from a
        // near element and gives it its nearest, so a search finds it.
        let pages = MemPages::new(&empty_meta(Metric::L2, 8, 8, 32));
        let data = vectors(301, 8, 5);
        for (i, v) in data.iter().take(300).enumerate() {
            put(&pages, v, i, splitmix64(i as u64));
        }
        let meta = read_meta(&pages).unwrap();
        let alone = write_tuples(&pages, &meta, &data[300], row(300), 0, &[vec![]]).unwrap();
        assert_eq!(unreachable(&pages), 1);
        assert_ne!(nearest(&pages, &data[300], 400).1, vec![row(300)]);
        assert_eq!(crate::hnsw::vacuum::connect_unreachable(&pages, &NoRows).unwrap(), Some(1));
        assert_eq!(unreachable(&pages), 0);
        let mut g = PageGraph::new(&pages, 8, Metric::L2);
        assert!(!g.neighbor_list(alone, 0).is_empty());
        assert_eq!(nearest(&pages, &data[300], 32).1, vec![row(300)]);
    }

    #[test]
    fn vacuum_links_in_an_element_whose_only_way_in_is_far() {
        // Reachable, but only from the element farthest from it: no search for its own
        // vector comes near that one. VACUUM's last step searches for elements with few
        // ways in and links in those it does not find.
        let pages = MemPages::new(&empty_meta(Metric::L2, 8, 8, 32));
        let data = vectors(401, 8, 6);
        for (i, v) in data.iter().take(400).enumerate() {
            put(&pages, v, i, splitmix64(i as u64));
        }
        let meta = read_meta(&pages).unwrap();
        let mut g = PageGraph::new(&pages, 8, Metric::L2);
        let live: Vec<Tid> = elements(&pages).iter().map(|e| e.0).collect();
        let far = *live.iter().max_by(|&&a, &&b| g.distance(&data[400], a.node()).total_cmp(&g.distance(&data[400], b.node()))).unwrap();
        let alone = write_tuples(&pages, &meta, &data[400], row(400), 0, &[vec![far]]).unwrap();
        let params = Params { m: 8, ef_construction: 32 };
        assert!(link_back(&pages, &mut g, far, alone, 0, &params, true, &mut Vec::new()).unwrap());
        assert_eq!(unreachable(&pages), 0);
        assert_ne!(nearest(&pages, &data[400], 100).1, vec![row(400)]);
        assert!(crate::hnsw::vacuum::connect_unreachable(&pages, &NoRows).unwrap().unwrap() >= 1);
        assert_eq!(nearest(&pages, &data[400], 32).1, vec![row(400)]);
        // Every other row is still found too.
        for (i, v) in data.iter().take(400).enumerate() {
            assert_eq!(nearest(&pages, v, 100).1, vec![row(i)], "row {i}");
        }
    }

    #[test]
    fn back_links_land_under_contention() {
        // Many inserts link back to one element at once: each must land (a list with
        // room takes every one), however often their compare-and-swaps collide.
        for round in 0..40 {
            let pages = Arc::new(MemPages::new(&empty_meta(Metric::L2, 2, 8, 16)));
            put(&pages, &[0.0, 0.0], 0, 1);
            let target = read_meta(&*pages).unwrap().entry;
            let threads = 8;
            let mut news = Vec::new();
            for t in 0..threads {
                let v = [1.0 + t as f32, round as f32];
                let meta = read_meta(&*pages).unwrap();
                news.push(write_tuples(&*pages, &meta, &v, row(t + 1), 0, &[vec![]]).unwrap());
            }
            let start = Arc::new(Barrier::new(threads));
            let handles: Vec<_> = news
                .iter()
                .map(|&new| {
                    let (pages, start) = (pages.clone(), start.clone());
                    std::thread::spawn(move || {
                        let mut g = PageGraph::new(&*pages, 8, Metric::L2);
                        start.wait();
                        link_back(&*pages, &mut g, target, new, 0, &Params { m: 8, ef_construction: 16 }, true, &mut Vec::new()).unwrap();
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
            let mut g = PageGraph::new(&*pages, 8, Metric::L2);
            let mut list = g.neighbor_list(target, 0);
            list.sort_by_key(|t| t.node());
            news.sort_by_key(|t| t.node());
            assert_eq!(list, news, "round {round}");
        }
    }

    #[test]
    fn identical_vectors_share_one_element_and_keep_every_row() {
        let pages = Arc::new(MemPages::new(&empty_meta(Metric::L2, 4, 8, 16)));
        for (i, v) in vectors(50, 4, 3).iter().enumerate() {
            put(&pages, v, i, i as u64);
        }
        // More rows than the element and one heap-tid tuple hold, from 4 writers at once.
        let same = [0.25f32, -0.5, 0.125, 0.0];
        let rows = 50..50 + 2 * format::TIDS_CAPACITY + 3 * format::MAX_HEAP_TIDS;
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (pages, rows) = (pages.clone(), rows.clone());
                std::thread::spawn(move || {
                    for i in rows.skip(t).step_by(4) {
                        put(&pages, &same, i, 12345 + i as u64);
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        let meta = read_meta(&*pages).unwrap();
        let mut g = PageGraph::new(&*pages, 8, Metric::L2);
        let mut visited = HashSet::new();
        let found = knn(&mut g, &same, meta.entry.node(), meta.entry_level, 20, &mut visited);
        // Writers that searched before any of them had written the vector each wrote an
        // element of their own (as many as there are writers at most); all later rows
        // joined one of those.
        let at: Vec<Tid> = found.iter().filter(|c| c.distance == 0.0).map(|c| Tid::from_node(c.node)).collect();
        assert!((1..=4).contains(&at.len()), "{} elements hold the vector", at.len());
        // Their rows: in the elements, then along their heap-tid tuples.
        let mut got = Vec::new();
        for &e_at in &at {
            let e = Element::decode_header(&read_tuple(&*pages, e_at).unwrap()).unwrap();
            got.extend(e.heap_tids.clone());
            walk_chain(&|| (), e_at, "heap-tid tuples", e.more_tids, 100, |t| {
                let (tids, next) = format::decode_tids(&read_tuple(&*pages, t).unwrap()).map_err(|e| e.to_string())?;
                got.extend(tids);
                Ok(next)
            })
            .unwrap();
        }
        got.sort_by_key(|t| t.node());
        let want: Vec<Tid> = rows.map(row).collect();
        assert_eq!(got, want, "each row once");
    }

    #[test]
    fn inserts_fill_free_slots_before_they_append() {
        let pages = MemPages::new(&empty_meta(Metric::L2, 6, 8, 16));
        let data = vectors(400, 6, 4);
        // All on level 0 (random 0 never climbs), so every slot fits every later insert.
        let level0 = |i: usize| splitmix64(i as u64) | (u64::MAX << 11);
        for (i, v) in data.iter().enumerate() {
            put(&pages, v, i, level0(i));
        }
        let blocks = pages.nblocks();
        // Free 100 slots the way VACUUM leaves them (nobody links to them any more: here
        // they are only marked, which is enough for the slot logic).
        let freed: Vec<Tid> = elements(&pages).iter().map(|e| e.0).step_by(4).collect();
        for &t in &freed {
            let mut page = pages.get(t.block);
            format::set_state(page.item_mut(t.offset).unwrap(), format::STATE_FREE);
            pages.put(t.block, page);
        }
        update_meta(&pages, |m| {
            m.free_block = 1;
            true
        })
        .unwrap();
        let more = vectors(freed.len(), 6, 5);
        for (i, v) in more.iter().enumerate() {
            put(&pages, v, 1000 + i, level0(1000 + i));
        }
        assert_eq!(pages.nblocks(), blocks, "no page appended");
        let states = elements(&pages);
        assert_eq!(states.len(), data.len(), "no element appended");
        assert!(states.iter().all(|(_, s)| *s == format::STATE_LIVE), "every slot filled");
        let mut reused: Vec<Tid> = more.iter().map(|v| {
            let at = states.iter().find(|(t, _)| PageGraph::new(&pages, 8, Metric::L2).node(*t).unwrap().vector == *v);
            at.expect("every new vector stored").0
        }).collect();
        reused.sort_by_key(|t| t.node());
        assert_eq!(reused, freed);
        // The next insert finds no slot left, appends, and moves the free block past the end.
        put(&pages, &vectors(1, 6, 8)[0], 2000, level0(2000));
        assert_eq!(elements(&pages).len(), data.len() + 1);
        assert_eq!(read_meta(&pages).unwrap().free_block, META_BLOCK);
    }

    #[test]
    fn a_chunk_chain_that_loops_is_an_error_not_a_hang() {
        let dims = format::MAX_CHUNK + 300;
        let pages = MemPages::new(&empty_meta(Metric::L2, dims, 4, 8));
        for (i, v) in vectors(3, dims, 6).iter().enumerate() {
            put(&pages, v, i, i as u64 | (u64::MAX << 11));
        }
        // Point every chunk at itself.
        for block in 1..pages.nblocks() {
            let mut page = pages.get(block);
            for off in 1..=page.max_offset() {
                let item = page.item(off).unwrap().to_vec();
                if item[0] == KIND_CHUNK {
                    let (values, _) = format::chunk_values(&item).unwrap();
                    let mut floats = Vec::new();
                    format::push_values(values, &mut floats);
                    let looped = format::encode_chunk(&floats, Tid { block, offset: off });
                    page.item_mut(off).unwrap().copy_from_slice(&looped);
                }
            }
            pages.put(block, page);
        }
        let meta = read_meta(&pages).unwrap();
        match insert(&pages, &meta, &vectors(1, dims, 7)[0], row(9), 5) {
            Err(IndexError::Corrupted(what)) => assert!(what.contains("loops back"), "{what}"),
            other => panic!("expected a corruption error, got {other:?}"),
        }
    }
}
