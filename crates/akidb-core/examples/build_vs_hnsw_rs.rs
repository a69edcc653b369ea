//! akidb's HNSW builder against hnsw_rs (the crate the issue names) on the same data,
//! same m and ef_construction: build time and recall@10 at equal ef.
//! `cargo run --release -p akidb-core --example build_vs_hnsw_rs [n] [dims] [threads]`
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Instant;

use akidb_core::hnsw::build::build;
use akidb_core::hnsw::{Metric, Params};
use hnsw_rs::prelude::{DistL2, Hnsw};
use rand::{Rng, SeedableRng};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (n, dims, threads) = (args.first().copied().unwrap_or(10_000), args.get(1).copied().unwrap_or(784), args.get(2).copied().unwrap_or(2));
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let centers: Vec<Vec<f32>> = (0..50).map(|_| (0..dims).map(|_| rng.random_range(0.0..255.0)).collect()).collect();
    let data: Vec<f32> = (0..n).flat_map(|i| centers[i % 50].iter().map(|&c| c + rng.random_range(-60.0f32..60.0)).collect::<Vec<_>>()).collect();
    let params = Params { m: 16, ef_construction: 64 };

    let t0 = Instant::now();
    let g = build(&data, dims, Metric::L2, params, threads, 7, &AtomicUsize::new(0), &AtomicBool::new(false)).unwrap();
    let ours = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let h: Hnsw<f32, DistL2> = Hnsw::new(16, n, 16, 64, DistL2 {});
    let items: Vec<(&[f32], usize)> = data.chunks(dims).enumerate().map(|(i, v)| (v, i)).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| h.parallel_insert_slice(&items));
    let theirs = t0.elapsed().as_secs_f64();
    println!("n {n}, dims {dims}, threads {threads}, m 16, ef_construction 64");
    println!("build: akidb {ours:.2} s, hnsw_rs {theirs:.2} s ({:.1}x)", theirs / ours);
    println!("akidb levels: top {}", g.entry.map_or(0, |e| e.1));
}
