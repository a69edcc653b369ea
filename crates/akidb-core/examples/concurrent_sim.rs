//! Concurrent writers on an index in memory pages, as the soak's mixed load runs them on
//! the server: `threads` inserters (a share of their rows later deleted) and, with
//! `vacuum` 1, VACUUM in a loop alongside; afterwards, how many live elements no level-0
//! walk reaches and how many rows their own vector does not find, before and after one
//! more VACUUM. The index algorithms alone, so a change to them can be judged in seconds.
//!
//! cargo run --release -p akidb-core --example concurrent_sim -- [rows] [dims] [threads] [m] [efc] [vacuum] [seed]
//!
//! `vacuum` is 0 for none, else the pause in milliseconds between VACUUMs. With SIM_DEBUG
//! set, each row not found at ef 1000 is printed with the distance ranks of the elements
//! that link to it and of those it links to.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use akidb_core::hnsw::check::check;
use akidb_core::hnsw::format::Tid;
use akidb_core::hnsw::graph::PageGraph;
use akidb_core::hnsw::insert::insert;
use akidb_core::hnsw::pages::{empty_meta, read_meta, MemPages};
use akidb_core::hnsw::search::knn;
use akidb_core::hnsw::vacuum::{bulk_delete, elements, Host};
use akidb_core::hnsw::{splitmix64, Metric};
use parking_lot::{Mutex, RwLock};

#[derive(Default)]
struct SimHost {
    dead: Mutex<HashSet<Tid>>,
    inserts: RwLock<()>,
}

impl Host for SimHost {
    fn is_dead(&self, heap_tid: Tid) -> bool {
        self.dead.lock().contains(&heap_tid)
    }
    fn wait_for_inserts(&self) {
        drop(self.inserts.write());
    }
    fn delay(&self) {}
    fn memory(&self) -> usize {
        256 << 20
    }
}

fn row(i: usize) -> Tid {
    Tid { block: 1 + (i / 200) as u32, offset: 1 + (i % 200) as u16 }
}

fn vector(i: usize, dims: usize, seed: u64) -> Vec<f32> {
    let mut s = splitmix64(i as u64 ^ seed);
    (0..dims)
        .map(|_| {
            s = splitmix64(s);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Rows of `live` that their own vector does not find first at `ef`.
fn misses(pages: &MemPages, live: &[usize], dims: usize, seed: u64, ef: usize) -> Vec<usize> {
    let meta = read_meta(pages).unwrap();
    live.iter()
        .copied()
        .filter(|&i| {
            let v = vector(i, dims, seed);
            let mut g = PageGraph::new(pages, meta.m as usize, meta.metric);
            let mut visited = HashSet::new();
            let found = knn(&mut g, &v, meta.entry.node(), meta.entry_level, ef, &mut visited);
            let first = found.iter().find(|c| g.node(Tid::from_node(c.node)).is_some_and(|n| !n.deleted));
            !first.is_some_and(|c| g.node(Tid::from_node(c.node)).unwrap().heap_tids.contains(&row(i)))
        })
        .collect()
}

/// (unreachable, rows not found first by their own vector at ef 100, of those the rows
/// not found at ef 1000).
fn report(pages: &MemPages, live: &[usize], dims: usize, seed: u64) -> (i64, usize, Vec<usize>) {
    let (problems, stats) = check(pages, &|| ()).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let missed = misses(pages, live, dims, seed, 100);
    let lost = misses(pages, &missed, dims, seed, 1000);
    (stats.unreachable, missed.len(), lost)
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let arg = |i: usize, d: u64| args.get(i).copied().unwrap_or(d);
    let (n, dims, threads, m, efc, vacuum, seed) = (arg(0, 20_000) as usize, arg(1, 32) as usize, arg(2, 8) as usize, arg(3, 16) as usize, arg(4, 64) as usize, arg(5, 100), arg(6, 1));
    let pages = Arc::new(MemPages::new(&empty_meta(Metric::L2, dims, m, efc)));
    let host = Arc::new(SimHost::default());
    let done = Arc::new(AtomicBool::new(false));
    let t = std::time::Instant::now();
    let writers: Vec<_> = (0..threads)
        .map(|w| {
            let (pages, host) = (pages.clone(), host.clone());
            std::thread::spawn(move || {
                for i in (w..n).step_by(threads) {
                    let _insert = host.inserts.read();
                    let meta = read_meta(&*pages).unwrap();
                    insert(&*pages, &meta, &vector(i, dims, seed), row(i), splitmix64(i as u64 ^ seed ^ 0x5eed)).unwrap();
                    drop(_insert);
                    // A third of the rows die a while after they came in.
                    if i % 3 == 0 && i >= 300 && std::env::var_os("NO_DEAD").is_none() {
                        host.dead.lock().insert(row(i - 300));
                    }
                }
            })
        })
        .collect();
    let vacuums = if vacuum > 0 {
        let (pages, host, done) = (pages.clone(), host.clone(), done.clone());
        Some(std::thread::spawn(move || {
            let mut runs = 0;
            while !done.load(Ordering::Relaxed) {
                bulk_delete(&*pages, &*host).unwrap();
                runs += 1;
                std::thread::sleep(std::time::Duration::from_millis(vacuum));
            }
            runs
        }))
    } else {
        None
    };
    writers.into_iter().for_each(|h| h.join().unwrap());
    done.store(true, Ordering::Relaxed);
    let runs = vacuums.map_or(0, |h| h.join().unwrap());
    let dead = host.dead.lock().clone();
    let live: Vec<usize> = (0..n).filter(|&i| !dead.contains(&row(i))).collect();
    let (u, missed, lost) = report(&pages, &live, dims, seed);
    println!("{n} rows x {dims}, {threads} writers, m {m} efc {efc}, {runs} vacuums alongside, {:.1} s: unreachable {u}, missed at ef 100 {missed} of {}, at ef 1000 {}", t.elapsed().as_secs_f64(), live.len(), lost.len());
    if std::env::var_os("SIM_DEBUG").is_some() {
        let meta = read_meta(&*pages).unwrap();
        let mut g = PageGraph::new(&*pages, meta.m as usize, meta.metric);
        let all = elements(&*pages, &|| ()).0;
        let nodes: Vec<_> = all.iter().filter_map(|e| g.node(e.at).map(|n| (e, (n.heap_tids.clone(), n.vector.clone())))).collect();
        for &i in &lost {
            let v = vector(i, dims, seed);
            let Some(x) = nodes.iter().find(|(_, n)| n.0.contains(&row(i))).map(|(e, _)| e.at) else {
                println!("  row {i}: no element holds it");
                continue;
            };
            // Who links to it on level 0, and how near they are (rank among live elements).
            let mut by_dist: Vec<(f32, Tid)> = nodes.iter().filter(|(e, _)| !e.deleted && e.at != x).map(|(e, n)| (n.1.iter().zip(&v).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(), e.at)).collect();
            by_dist.sort_by(|a, b| a.0.total_cmp(&b.0));
            let rank = |t: Tid| by_dist.iter().position(|e| e.1 == t);
            let linkers: Vec<Tid> = nodes.iter().map(|(e, _)| e.at).filter(|&t| t != x).collect();
            let mut ins = Vec::new();
            for t in linkers {
                if g.neighbor_list(t, 0).contains(&x) {
                    ins.push((rank(t), g.node(t).unwrap().deleted));
                }
            }
            let outs: Vec<_> = g.neighbor_list(x, 0).into_iter().map(rank).collect();
            println!("  row {i} at {x:?} level {}: in-links from ranks {ins:?}; out-links to ranks {outs:?}", g.node(x).unwrap().level);
        }
    }
    let out = bulk_delete(&*pages, &*host).unwrap();
    let (u, missed, lost) = report(&pages, &live, dims, seed);
    println!("  after one more VACUUM (relinked {}): unreachable {u}, missed {missed}, at ef 1000 {}", out.relinked, lost.len());
}
