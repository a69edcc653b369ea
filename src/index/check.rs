//! `akidb_hnsw_check(index)`: walks every page of an akidb_hnsw index and reports each
//! structural problem it finds (no rows: the index is sound), like amcheck; and
//! `akidb_hnsw_info(index)`. Both read every page of an index whatever the caller may read,
//! so, like amcheck's functions, they are revoked from PUBLIC (a superuser may grant them).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CStr;

use akidb_core::hnsw::format::{self, Element, Tid, META_BLOCK, PAGE_GRAPH, PAGE_META};
use pgrx::pg_sys;
use pgrx::prelude::*;

use akidb_core::hnsw::chain;
use akidb_core::hnsw::error::IndexError;

use super::page::{nblocks, Locked};
use super::store::MAX_TIDS_HOPS;

/// A copy of page bytes; running out of memory is an ERROR, not an abort.
fn try_copy(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    if v.try_reserve_exact(bytes.len()).is_err() {
        crate::error::raise_index(IndexError::OutOfMemory { what: "checking", rows: 0 });
    }
    v.extend_from_slice(bytes);
    v
}

struct ElementInfo {
    level: u8,
    deleted: bool,
    state: u8,
    neighbors: Tid,
    next_chunk: Tid,
    more_tids: Tid,
    dims: usize,
    values: usize,
}

/// Checks the index; returns one row per problem (none when it is sound).
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_hnsw_check(index: pg_sys::Oid) -> TableIterator<'static, (name!(problem, String),)> {
    let (problems, _) = check(index);
    TableIterator::new(problems.into_iter().map(|p| (p,)))
}

pgrx::extension_sql!(
    r#"
REVOKE ALL ON FUNCTION akidb_hnsw_check(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION akidb_hnsw_info(oid) FROM PUBLIC;
"#,
    name = "akidb_hnsw_check_grants",
    requires = [akidb_hnsw_check, akidb_hnsw_info]
);

/// What the index holds: elements, live and deleted ones (of which `free`: slots VACUUM
/// left for inserts to reuse), heap rows, pages, the top level, and live elements no
/// search can reach (a crash between writing an element and
/// linking it leaves one; its row was never committed, and VACUUM removes it).
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_hnsw_info(
    index: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(elements, i64),
        name!(live, i64),
        name!(deleted, i64),
        name!(heap_tids, i64),
        name!(coded, i64),
        name!(unreachable, i64),
        name!(top_level, i32),
        name!(pages, i64),
        name!(free, i64),
    ),
> {
    let (_, s) = check(index);
    TableIterator::once((s.elements, s.live, s.deleted, s.heap_tids, s.coded, s.unreachable, s.top_level, s.pages, s.free))
}

#[derive(Default)]
struct Stats {
    elements: i64,
    live: i64,
    deleted: i64,
    heap_tids: i64,
    /// Elements that carry an 8-bit code (searches compare those on the code).
    coded: i64,
    unreachable: i64,
    top_level: i32,
    pages: i64,
    /// Slots of deleted elements that inserts may reuse (counted in `deleted` too).
    free: i64,
}

fn check(oid: pg_sys::Oid) -> (Vec<String>, Stats) {
    let mut stats = Stats::default();
    let mut problems = Vec::new();
    // A lock that keeps writers out while we walk it; on a standby (read-only, writers
    // are WAL replay) only AccessShareLock may be taken.
    // SAFETY: plain calls; the index is closed by the guard below.
    let lock = if unsafe { pg_sys::RecoveryInProgress() } { pg_sys::AccessShareLock } else { pg_sys::ShareLock } as i32;
    // index_open refuses a relation that is not an index (42809).
    let index = unsafe { pg_sys::index_open(oid, lock) };
    struct Close(pg_sys::Relation, i32);
    impl Drop for Close {
        fn drop(&mut self) {
            // SAFETY: opened above.
            unsafe { pg_sys::index_close(self.0, self.1) };
        }
    }
    let _close = Close(index, lock);
    // SAFETY: an open index's pg_class row; get_am_oid errors if the AM is missing.
    if unsafe { (*(*index).rd_rel).relam != pg_sys::get_am_oid(c"akidb_hnsw".as_ptr(), false) } {
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr((*(*index).rd_rel).relname.data.as_ptr()) }.to_string_lossy();
        crate::error::raise_index(IndexError::NotAnAkidbIndex(name.into_owned()));
    }
    let n = nblocks(index);
    stats.pages = n as i64;
    if n == 0 {
        return (vec!["the index has no metapage".into()], stats);
    }
    let meta = {
        let b = Locked::read(index, META_BLOCK, false);
        if b.page().kind() != Some(PAGE_META) {
            problems.push("block 0 is not a metapage".into());
        }
        match b.page().meta() {
            Ok(m) => m,
            Err(e) => return (vec![format!("metapage: {e}")], stats),
        }
    };
    let m = meta.m as usize;
    let mut elements: HashMap<Tid, ElementInfo> = HashMap::new();
    let mut neighbor_tuples: HashMap<Tid, Vec<u8>> = HashMap::new();
    let mut chunks: HashMap<Tid, (usize, Tid)> = HashMap::new();
    let mut tid_tuples: HashMap<Tid, (usize, Tid)> = HashMap::new();
    for block in META_BLOCK + 1..n {
        pgrx::check_for_interrupts!();
        let b = Locked::read(index, block, false);
        let page = b.page();
        if page.is_new() {
            continue;
        }
        if page.kind() != Some(PAGE_GRAPH) {
            problems.push(format!("block {block}: not an akidb_hnsw graph page"));
            continue;
        }
        for off in 1..=page.max_offset() {
            let tid = Tid { block, offset: off };
            let Some(item) = page.item(off) else {
                problems.push(format!("({block},{off}): unused line pointer"));
                continue;
            };
            match item[0] {
                format::KIND_ELEMENT => match Element::decode_header(item) {
                    Ok(e) => {
                        stats.heap_tids += if e.deleted { 0 } else { e.heap_tids.len() as i64 };
                        if let Some(c) = format::element_code(item) {
                            stats.coded += 1;
                            if c.bytes.len() != e.dims as usize || !(c.scale >= 0.0 && c.scale.is_finite()) || c.err.is_nan() {
                                problems.push(format!("({block},{off}): a code of {} bytes (scale {}, error {}) for {} dimensions", c.bytes.len(), c.scale, c.err, e.dims));
                            }
                        }
                        let state = format::element_state(item);
                        if state > format::STATE_CLAIMED {
                            problems.push(format!("({block},{off}): unknown element state {state}"));
                        }
                        stats.free += (state == format::STATE_FREE) as i64;
                        let info = ElementInfo {
                            level: e.level,
                            deleted: e.deleted,
                            state,
                            neighbors: e.neighbors,
                            next_chunk: e.next_chunk,
                            more_tids: e.more_tids,
                            dims: e.dims as usize,
                            values: format::inline_values(item).len() / 4,
                        };
                        elements.insert(tid, info);
                    }
                    Err(err) => problems.push(format!("({block},{off}): element: {err}")),
                },
                format::KIND_NEIGHBORS => {
                    neighbor_tuples.insert(tid, try_copy(item));
                }
                format::KIND_CHUNK => {
                    match format::chunk_values(item) {
                        Ok((values, next)) => {
                            chunks.insert(tid, (values.len() / 4, next));
                        }
                        Err(err) => problems.push(format!("({block},{off}): chunk: {err}")),
                    }
                }
                format::KIND_TIDS => match format::decode_tids(item) {
                    Ok((rows, next)) => {
                        tid_tuples.insert(tid, (rows.len(), next));
                    }
                    Err(err) => problems.push(format!("({block},{off}): heap-tid tuple: {err}")),
                },
                k => problems.push(format!("({block},{off}): unknown tuple kind {k}")),
            }
        }
    }
    // Vector chunks: each element's chain must add up to its dimensions.
    for (tid, e) in elements.iter_mut() {
        pgrx::check_for_interrupts!();
        let limit = format::chunk_count(meta.dims as usize, e.values) as u64;
        let walked = chain::walk(e.next_chunk, limit, |at| {
            let &(count, after) = chunks.get(&at).ok_or_else(|| format!("vector chunk ({},{}) is missing", at.block, at.offset))?;
            e.values += count;
            Ok::<_, String>(after)
        });
        if let Err(err) = walked {
            problems.push(format!("({},{}): vector chunks: {err}", tid.block, tid.offset));
        } else if e.values != e.dims || e.dims != meta.dims as usize {
            problems.push(format!("({},{}): holds {} values of {} dimensions (index: {})", tid.block, tid.offset, e.values, e.dims, meta.dims));
        }
    }
    // Heap-tid tuples: each element's chain exists, ends, and shares no tuple with another.
    let mut owner: HashMap<Tid, Tid> = HashMap::new();
    for (tid, e) in &elements {
        let walked = chain::walk(e.more_tids, MAX_TIDS_HOPS, |at| {
            let &(count, after) = tid_tuples.get(&at).ok_or_else(|| format!("heap-tid tuple ({},{}) is missing", at.block, at.offset))?;
            if let Some(other) = owner.insert(at, *tid) {
                if other != *tid {
                    return Err(format!("heap-tid tuple ({},{}) is also in the chain of ({},{})", at.block, at.offset, other.block, other.offset));
                }
            }
            if !e.deleted {
                stats.heap_tids += count as i64;
            }
            Ok(after)
        });
        if let Err(err) = walked {
            problems.push(format!("({},{}): heap-tid tuples: {err}", tid.block, tid.offset));
        }
    }
    // Neighbour lists: present, of the element's level, pointing at elements.
    let mut links: HashMap<Tid, Vec<Tid>> = HashMap::new();
    for (tid, e) in &elements {
        let Some(bytes) = neighbor_tuples.get(&e.neighbors) else {
            problems.push(format!("({},{}): neighbour tuple ({},{}) is missing", tid.block, tid.offset, e.neighbors.block, e.neighbors.offset));
            continue;
        };
        if format::neighbors_level(bytes) != Some(e.level) {
            problems.push(format!("({},{}): neighbour tuple has level {:?}, element has {}", tid.block, tid.offset, format::neighbors_level(bytes), e.level));
            continue;
        }
        // A free (or claimed) slot's lists are left as they were: nothing reads them.
        if e.state == format::STATE_FREE || e.state == format::STATE_CLAIMED {
            continue;
        }
        for l in 0..=e.level {
            let mut list = Vec::new();
            if let Err(err) = format::neighbors_on(bytes, m, l, &mut list) {
                problems.push(format!("({},{}): {err}", tid.block, tid.offset));
            }
            for t in &list {
                match elements.get(t) {
                    None => problems.push(format!("({},{}) level {l}: neighbour ({},{}) is not an element", tid.block, tid.offset, t.block, t.offset)),
                    Some(o) if o.level < l => problems.push(format!("({},{}) level {l}: neighbour ({},{}) only reaches level {}", tid.block, tid.offset, t.block, t.offset, o.level)),
                    // VACUUM frees a slot only once no element links to it.
                    Some(o) if o.state == format::STATE_FREE || o.state == format::STATE_CLAIMED => {
                        problems.push(format!("({},{}) level {l}: links to the free slot ({},{})", tid.block, tid.offset, t.block, t.offset))
                    }
                    _ => {}
                }
                if *t == *tid {
                    problems.push(format!("({},{}) level {l}: links to itself", tid.block, tid.offset));
                }
            }
            if l == 0 {
                links.insert(*tid, list);
            }
        }
    }
    // Entry point: a live element on the top level, when there is any live element.
    let live: Vec<(&Tid, &ElementInfo)> = elements.iter().filter(|(_, e)| !e.deleted).collect();
    let top = live.iter().map(|(_, e)| e.level).max();
    stats.elements = elements.len() as i64;
    stats.live = live.len() as i64;
    stats.deleted = stats.elements - stats.live;
    stats.top_level = top.map_or(-1, |t| t as i32);
    match (meta.entry.is_valid(), elements.get(&meta.entry)) {
        (false, _) if !live.is_empty() => problems.push(format!("no entry point, but {} live elements", live.len())),
        (true, None) => problems.push(format!("entry point ({},{}) is not an element", meta.entry.block, meta.entry.offset)),
        (true, Some(e)) => {
            if e.level != meta.entry_level {
                problems.push(format!("entry point level {} but its element has level {}", meta.entry_level, e.level));
            }
            if e.deleted && !live.is_empty() {
                problems.push("entry point is a deleted element".into());
            }
            if let Some(top) = top {
                if e.level < top {
                    problems.push(format!("entry point is on level {}, below the top level {top}", e.level));
                }
            }
        }
        _ => {}
    }
    // Reachability on level 0: not damage (see akidb_hnsw_info), so counted, not reported.
    if meta.entry.is_valid() && elements.contains_key(&meta.entry) {
        let mut seen: HashSet<Tid> = HashSet::from([meta.entry]);
        let mut queue = VecDeque::from([meta.entry]);
        while let Some(t) = queue.pop_front() {
            for n in links.get(&t).map(|v| v.as_slice()).unwrap_or(&[]) {
                if seen.insert(*n) {
                    queue.push_back(*n);
                }
            }
        }
        stats.unreachable = live.iter().filter(|(t, _)| !seen.contains(t)).count() as i64;
    }
    (problems, stats)
}
