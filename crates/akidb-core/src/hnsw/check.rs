//! The structural check of an index (what `akidb_hnsw_check` and `akidb_hnsw_info`
//! report): every page read once, every rule of the format checked, like amcheck. Each
//! problem is one line of text; none means the index is sound.

use std::collections::{HashMap, HashSet, VecDeque};

use super::chain;
use super::error::IndexError;
use super::format::{self, Element, Tid, META_BLOCK, PAGE_GRAPH, PAGE_META};
use super::graph::MAX_TIDS_HOPS;
use super::pages::Pages;

/// A copy of page bytes; running out of memory is an error, not an abort.
fn try_copy(bytes: &[u8]) -> Result<Vec<u8>, IndexError> {
    let mut v = Vec::new();
    if v.try_reserve_exact(bytes.len()).is_err() {
        return Err(IndexError::OutOfMemory { what: "checking", rows: 0 });
    }
    v.extend_from_slice(bytes);
    Ok(v)
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

/// What the index holds (see `akidb_hnsw_info`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    pub elements: i64,
    pub live: i64,
    pub deleted: i64,
    pub heap_tids: i64,
    /// Elements that carry an 8-bit code (searches compare those on the code).
    pub coded: i64,
    /// Live elements no level-0 walk from the entry point reaches (not damage: a crash
    /// between writing an element and linking it leaves one, and VACUUM links it in).
    pub unreachable: i64,
    pub top_level: i32,
    pub pages: i64,
    /// Slots of deleted elements that inserts may reuse (counted in `deleted` too).
    pub free: i64,
}

/// Checks every page; `interrupts` raises a pending cancel (called once per page and
/// element). The caller keeps writers out meanwhile.
pub fn check<P: Pages + ?Sized>(pages: &P, interrupts: &dyn Fn()) -> Result<(Vec<String>, Stats), IndexError> {
    let mut stats = Stats::default();
    let mut problems = Vec::new();
    let n = pages.nblocks();
    stats.pages = n as i64;
    if n == 0 {
        return Ok((vec!["the index has no metapage".into()], stats));
    }
    let (kind, meta) = pages.read(META_BLOCK, |page| (page.kind(), page.meta()));
    if kind != Some(PAGE_META) {
        problems.push("block 0 is not a metapage".into());
    }
    let meta = match meta {
        Ok(m) => m,
        Err(e) => return Ok((vec![format!("metapage: {e}")], stats)),
    };
    let m = meta.m as usize;
    let mut elements: HashMap<Tid, ElementInfo> = HashMap::new();
    let mut neighbor_tuples: HashMap<Tid, Vec<u8>> = HashMap::new();
    let mut chunks: HashMap<Tid, (usize, Tid)> = HashMap::new();
    let mut tid_tuples: HashMap<Tid, (usize, Tid)> = HashMap::new();
    for block in META_BLOCK + 1..n {
        interrupts();
        pages.read(block, |page| -> Result<(), IndexError> {
            if page.is_new() {
                return Ok(());
            }
            if page.kind() != Some(PAGE_GRAPH) {
                problems.push(format!("block {block}: not an akidb_hnsw graph page"));
                return Ok(());
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
                        neighbor_tuples.insert(tid, try_copy(item)?);
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
            Ok(())
        })?;
    }
    // Vector chunks: each element's chain must add up to its dimensions.
    for (tid, e) in elements.iter_mut() {
        interrupts();
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
            // A deleted element stays readable until the VACUUM that marked it has moved
            // the entry point and freed it: a VACUUM cut short (a crash, a cancel) leaves
            // a deleted entry, which searches still start from and the next VACUUM
            // moves. A freed slot as the entry is damage.
            if e.state == format::STATE_FREE || e.state == format::STATE_CLAIMED {
                problems.push("entry point is a free slot".into());
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
    Ok((problems, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hnsw::pages::{empty_meta, update_meta, MemPages, PageRead, PageWrite};
    use crate::hnsw::testing::{elements, put, vectors};
    use crate::hnsw::{splitmix64, Metric};

    fn index(dims: usize, n: usize) -> MemPages {
        let pages = MemPages::new(&empty_meta(Metric::L2, dims, 4, 8));
        for (i, v) in vectors(n, dims, 21).iter().enumerate() {
            put(&pages, v, i, splitmix64(i as u64));
        }
        pages
    }

    fn problems(pages: &MemPages) -> Vec<String> {
        check(pages, &|| ()).unwrap().0
    }

    /// Changes the item at `at` with `f`.
    fn damage(pages: &MemPages, at: Tid, f: impl FnOnce(&mut [u8])) {
        let mut page = pages.get(at.block);
        f(page.item_mut(at.offset).unwrap());
        pages.put(at.block, page);
    }

    #[test]
    fn a_sound_index_has_no_problems_and_its_figures_add_up() {
        let pages = index(5, 500);
        let (problems, stats) = check(&pages, &|| ()).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((stats.elements, stats.live, stats.deleted, stats.heap_tids, stats.free), (500, 500, 0, 500, 0));
        assert_eq!(stats.pages, pages.nblocks() as i64);
        assert_eq!(stats.unreachable, 0);
    }

    #[test]
    fn each_kind_of_damage_is_reported() {
        let pages = index(5, 300);
        let all = elements(&pages);
        // A live element linked to from others, made a free slot.
        let (victim, _) = all[10];
        damage(&pages, victim, |i| format::set_state(i, format::STATE_FREE));
        assert!(problems(&pages).iter().any(|p| p.contains("links to the free slot")), "{:?}", problems(&pages));
        damage(&pages, victim, |i| format::set_state(i, 7));
        assert!(problems(&pages).iter().any(|p| p.contains("unknown element state 7")));
        damage(&pages, victim, |i| format::set_state(i, format::STATE_LIVE));
        assert!(problems(&pages).is_empty());
        // The entry point below the top level.
        let meta = crate::hnsw::pages::read_meta(&pages).unwrap();
        let low = all.iter().map(|e| e.0).find(|&t| t != meta.entry).unwrap();
        update_meta(&pages, |m| {
            m.entry = low;
            true
        })
        .unwrap();
        assert!(problems(&pages).iter().any(|p| p.contains("entry point")), "{:?}", problems(&pages));
        update_meta(&pages, |m| {
            *m = meta;
            true
        })
        .unwrap();
        // A neighbour tuple gone: its element's list is missing.
        let e = Element::decode_header(pages.get(victim.block).item(victim.offset).unwrap()).unwrap();
        damage(&pages, e.neighbors, |i| i[0] = format::KIND_CHUNK);
        let found = problems(&pages);
        assert!(found.iter().any(|p| p.contains("neighbour tuple") && p.contains("missing")), "{found:?}");
    }

    #[test]
    fn a_looping_chunk_chain_is_reported_not_followed_forever() {
        let dims = format::MAX_CHUNK + 10;
        let pages = index(dims, 3);
        for block in 1..pages.nblocks() {
            let page = pages.get(block);
            for off in 1..=page.max_offset() {
                let item = page.item(off).unwrap().to_vec();
                if item[0] == format::KIND_CHUNK {
                    let (values, _) = format::chunk_values(&item).unwrap();
                    let mut floats = Vec::new();
                    format::push_values(values, &mut floats);
                    let looped = format::encode_chunk(&floats, Tid { block, offset: off });
                    damage(&pages, Tid { block, offset: off }, |i| i.copy_from_slice(&looped));
                }
            }
        }
        let found = problems(&pages);
        assert!(found.iter().filter(|p| p.contains("vector chunks") && p.contains("loops back")).count() == 3, "{found:?}");
    }
}
