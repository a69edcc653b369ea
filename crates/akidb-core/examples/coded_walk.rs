//! Recall@10 of a graph walk on exact distances against one on 8-bit codes (both
//! re-ranked exactly), for one metric, on raw little-endian float4 files.
//! `cargo run --release -p akidb-core --example coded_walk BASE QUERIES DIMS METRIC(l2|ip|cos|l1) [EF]`
use std::sync::atomic::{AtomicBool, AtomicUsize};

use akidb_core::distance::Code;
use akidb_core::hnsw::build::build;
use akidb_core::hnsw::search::{knn, GraphStore, NodeId, StampVisited};
use akidb_core::hnsw::{Metric, Params};

fn load(p: &str) -> Vec<f32> {
    std::fs::read(p).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

struct Store<'a> {
    data: &'a [f32],
    codes: Option<&'a [Code]>,
    links: &'a [Vec<Vec<u32>>],
    dims: usize,
    metric: Metric,
    distances: usize,
}

impl GraphStore for Store<'_> {
    fn distance(&mut self, q: &[f32], n: NodeId) -> f32 {
        self.distances += 1;
        match self.codes {
            Some(c) => self.metric.coded(q, &c[n as usize].bytes, c[n as usize].min, c[n as usize].scale),
            None => self.metric.distance(q, &self.data[n as usize * self.dims..(n as usize + 1) * self.dims]),
        }
    }
    fn neighbors(&mut self, n: NodeId, level: u8, out: &mut Vec<NodeId>) {
        if let Some(l) = self.links[n as usize].get(level as usize) {
            out.extend(l.iter().map(|&x| x as NodeId));
        }
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let dims: usize = a[2].parse().unwrap();
    let metric = match a[3].as_str() {
        "l2" => Metric::L2,
        "ip" => Metric::InnerProduct,
        "cos" => Metric::Cosine,
        _ => Metric::L1,
    };
    let ef: usize = a.get(4).map_or(40, |e| e.parse().unwrap());
    let (mut base, mut qs) = (load(&a[0]), load(&a[1]));
    base.chunks_mut(dims).for_each(|v| {
        metric.prepare(v);
    });
    qs.chunks_mut(dims).for_each(|v| {
        metric.prepare(v);
    });
    let n = base.len() / dims;
    let g = build(&base, dims, metric, Params { m: 16, ef_construction: 64 }, 2, 7, &AtomicUsize::new(0), &AtomicBool::new(false)).unwrap();
    let codes: Vec<Code> = base.chunks(dims).map(Code::of).collect();
    let (entry, top) = g.entry.unwrap();
    for coded in [false, true] {
        let mut s = Store { data: &base, codes: coded.then_some(codes.as_slice()), links: &g.links, dims, metric, distances: 0 };
        let mut hits = 0;
        for q in qs.chunks(dims) {
            let mut truth: Vec<(f32, usize)> = base.chunks(dims).enumerate().map(|(i, v)| (metric.distance(q, v), i)).collect();
            truth.sort_by(|x, y| x.0.total_cmp(&y.0));
            let mut found: Vec<(f32, usize)> = knn(&mut s, q, entry as NodeId, top, ef, &mut StampVisited::new(n))
                .iter()
                .map(|c| (metric.distance(q, &base[c.node as usize * dims..(c.node as usize + 1) * dims]), c.node as usize))
                .collect();
            found.sort_by(|x, y| x.0.total_cmp(&y.0));
            hits += found.iter().take(10).filter(|f| truth[..10].iter().any(|t| t.1 == f.1)).count();
        }
        let nq = qs.len() / dims;
        println!("{} walk, ef {ef}: recall@10 {:.4}, {:.0} distances per query", if coded { "coded" } else { "exact" }, hits as f64 / (10 * nq) as f64, s.distances as f64 / nq as f64);
    }
}
