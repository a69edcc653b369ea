//! Helpers for the unit tests of the algorithms over [`MemPages`].

use std::collections::HashSet;

use super::check::check;
use super::format::{self, Tid, KIND_ELEMENT};
use super::graph::PageGraph;
use super::insert::insert;
use super::pages::{read_meta, MemPages, PageRead, Pages};
use super::search::knn;
use super::splitmix64;

/// `n` vectors of `dims` values, uniform in [-0.5, 0.5).
pub fn vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            (0..dims)
                .map(|_| {
                    s = splitmix64(s);
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect()
        })
        .collect()
}

/// The heap tid of row `i`.
pub fn row(i: usize) -> Tid {
    Tid { block: 1 + (i / 100) as u32, offset: 1 + (i % 100) as u16 }
}

/// Inserts row `i`.
pub fn put(pages: &MemPages, v: &[f32], i: usize, random: u64) {
    let meta = read_meta(pages).unwrap();
    insert(pages, &meta, v, row(i), random).unwrap();
}

/// Every element tuple: (tid, state).
pub fn elements(pages: &MemPages) -> Vec<(Tid, u8)> {
    let mut out = Vec::new();
    for block in 1..pages.nblocks() {
        let page = pages.get(block);
        for off in 1..=page.max_offset() {
            if let Some(item) = page.item(off).filter(|i| i.first() == Some(&KIND_ELEMENT)) {
                out.push((Tid { block, offset: off }, format::element_state(item)));
            }
        }
    }
    out
}

/// Live elements not reachable from the entry point over level-0 links, as the checker
/// counts them; the checker must find nothing wrong.
pub fn unreachable(pages: &MemPages) -> usize {
    let (problems, stats) = check(pages, &|| ()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    stats.unreachable as usize
}

/// The nearest element to `v` through the graph, and its heap tids.
pub fn nearest(pages: &MemPages, v: &[f32], ef: usize) -> (f32, Vec<Tid>) {
    let meta = read_meta(pages).unwrap();
    let mut g = PageGraph::new(pages, meta.m as usize, meta.metric);
    let mut visited = HashSet::new();
    let found = knn(&mut g, v, meta.entry.node(), meta.entry_level, ef, &mut visited);
    let best = found[0];
    let tids = g.node(Tid::from_node(best.node)).unwrap().heap_tids.clone();
    (best.distance, tids)
}


/// Links from live elements (any level) to slots that hold no live element.
pub fn links_to_dead(pages: &MemPages) -> usize {
    let meta = read_meta(pages).unwrap();
    let mut g = PageGraph::new(pages, meta.m as usize, meta.metric);
    let all = elements(pages);
    let live: HashSet<Tid> = all.iter().filter(|e| e.1 == format::STATE_LIVE).map(|e| e.0).collect();
    let mut bad = 0;
    for &t in &live {
        let level = g.node(t).unwrap().level;
        for l in 0..=level {
            bad += g.neighbor_list(t, l).iter().filter(|n| !live.contains(n)).count();
        }
    }
    g.check().unwrap();
    bad
}
