//! Rounds of "update 20 % of the rows, then VACUUM" on an index in memory pages, with
//! recall@10 against exact results after each round: the index algorithms alone (insert,
//! link-back, VACUUM's repair and reconnect), without PostgreSQL, so that a change to
//! them can be measured in seconds. `make bench-churn` measures the real thing.
//!
//! cargo run --release -p akidb-core --example churn_sim -- [rows] [dims] [rounds] [m] [efc]

use std::collections::HashSet;

use akidb_core::hnsw::check::check;
use akidb_core::hnsw::format::Tid;
use akidb_core::hnsw::graph::PageGraph;
use akidb_core::hnsw::insert::insert;
use akidb_core::hnsw::pages::{empty_meta, read_meta, MemPages};
use akidb_core::hnsw::search::knn;
use akidb_core::hnsw::vacuum::{bulk_delete, elements, Host};
use akidb_core::hnsw::{splitmix64, Metric};
use parking_lot::Mutex;

struct SimHost {
    dead: Mutex<HashSet<Tid>>,
}

impl Host for SimHost {
    fn is_dead(&self, heap_tid: Tid) -> bool {
        self.dead.lock().contains(&heap_tid)
    }
    fn wait_for_inserts(&self) {}
    fn delay(&self) {}
    fn memory(&self) -> usize {
        256 << 20
    }
}

fn row(i: usize) -> Tid {
    Tid { block: 1 + (i / 200) as u32, offset: 1 + (i % 200) as u16 }
}

/// Standard normal values (Box-Muller over splitmix64).
fn normal(state: &mut u64) -> f32 {
    *state = splitmix64(*state);
    let u1 = ((*state >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    *state = splitmix64(*state);
    let u2 = (*state >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

fn vectors(n: usize, dims: usize, state: &mut u64) -> Vec<Vec<f32>> {
    (0..n).map(|_| (0..dims).map(|_| normal(state)).collect()).collect()
}

fn l2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// recall@10 of the graph at `ef` for `queries`, against the exact top 10 of `rows`.
fn recall(pages: &MemPages, rows: &[(usize, Vec<f32>)], queries: &[Vec<f32>], ef: usize) -> f64 {
    let meta = read_meta(pages).unwrap();
    let mut hits = 0;
    for q in queries {
        let mut exact: Vec<(f32, usize)> = rows.iter().map(|(i, v)| (l2(q, v), *i)).collect();
        exact.select_nth_unstable_by(10, |a, b| a.0.total_cmp(&b.0));
        let truth: HashSet<Tid> = exact[..10].iter().map(|e| row(e.1)).collect();
        let mut g = PageGraph::new(pages, meta.m as usize, meta.metric);
        let mut visited = HashSet::new();
        let found = knn(&mut g, q, meta.entry.node(), meta.entry_level, ef.max(10), &mut visited);
        let mut got = 0;
        for c in found {
            let Some(n) = g.node(Tid::from_node(c.node)) else { continue };
            if n.deleted {
                continue;
            }
            if got < 10 {
                hits += n.heap_tids.iter().filter(|t| truth.contains(t)).count();
                got += 1;
            }
        }
    }
    hits as f64 / (10 * queries.len()) as f64
}

/// Level-0 in-degrees of live elements: (share with at most 2 in-links, mean list length).
fn degrees(pages: &MemPages) -> (f64, f64) {
    let meta = read_meta(pages).unwrap();
    let mut g = PageGraph::new(pages, meta.m as usize, meta.metric);
    let live: Vec<Tid> = elements(pages, &|| ()).0.iter().filter(|e| !e.deleted && e.state == 0).map(|e| e.at).collect();
    let mut indeg: std::collections::HashMap<Tid, usize> = live.iter().map(|t| (*t, 0)).collect();
    let mut links = 0;
    for t in &live {
        let list = g.neighbor_list(*t, 0);
        links += list.len();
        for n in list {
            if let Some(d) = indeg.get_mut(&n) {
                *d += 1;
            }
        }
    }
    let low = indeg.values().filter(|&&d| d <= 2).count();
    (low as f64 / live.len() as f64, links as f64 / live.len() as f64)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (n, dims, rounds, m, efc) = (arg(0, 20_000), arg(1, 64), arg(2, 6), arg(3, 16), arg(4, 64));
    let mut state = 42u64;
    let pages = MemPages::new(&empty_meta(Metric::L2, dims, m, efc));
    let host = SimHost { dead: Mutex::new(HashSet::new()) };
    let mut rows: Vec<(usize, Vec<f32>)> = vectors(n, dims, &mut state).into_iter().enumerate().collect();
    let queries = vectors(200, dims, &mut state);
    let t = std::time::Instant::now();
    for (i, v) in &rows {
        let meta = read_meta(&pages).unwrap();
        insert(&pages, &meta, v, row(*i), splitmix64(*i as u64)).unwrap();
    }
    let report = |round: usize, secs: f64, pages: &MemPages, rows: &[(usize, Vec<f32>)]| {
        let (problems, stats) = check(pages, &|| ()).unwrap();
        let (low, mean) = degrees(pages);
        println!(
            "round {round:2}  {secs:6.1} s  blocks {:5}  in<=2 {:.4} mean out {:.2}  unreachable {:3}  problems {}  recall ef40 {:.4}  ef200 {:.4}",
            stats.pages,
            low,
            mean,
            stats.unreachable,
            problems.len(),
            recall(pages, rows, &queries, 40),
            recall(pages, rows, &queries, 200)
        );
    };
    report(0, t.elapsed().as_secs_f64(), &pages, &rows);
    let mut next = n;
    for round in 1..=rounds {
        let t = std::time::Instant::now();
        let fresh = vectors(n / 5, dims, &mut state);
        for v in fresh {
            state = splitmix64(state);
            let slot = (state % n as u64) as usize;
            host.dead.lock().insert(row(rows[slot].0));
            let meta = read_meta(&pages).unwrap();
            insert(&pages, &meta, &v, row(next), splitmix64(next as u64 ^ 0x9e37)).unwrap();
            rows[slot] = (next, v);
            next += 1;
        }
        bulk_delete(&pages, &host).unwrap();
        host.dead.lock().clear();
        report(round, t.elapsed().as_secs_f64(), &pages, &rows);
    }
    // The same rows inserted into a fresh index: what the churned one should match.
    let fresh = MemPages::new(&empty_meta(Metric::L2, dims, m, efc));
    for (i, v) in &rows {
        let meta = read_meta(&fresh).unwrap();
        insert(&fresh, &meta, v, row(*i), splitmix64(*i as u64)).unwrap();
    }
    report(99, 0.0, &fresh, &rows);
}
