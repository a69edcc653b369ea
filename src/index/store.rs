//! The graph on disk, as [`GraphStore`] for the core search: elements and neighbour
//! lists read through the buffer manager, one share-locked buffer at a time, and cached
//! for the life of one search or insert.

use std::collections::HashMap;

use akidb_core::hnsw::format::{self, Element, Tid};
use akidb_core::hnsw::search::{GraphStore, NodeId};
use akidb_core::hnsw::Metric;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::Locked;

pub struct Node {
    pub level: u8,
    pub deleted: bool,
    pub heap_tids: Vec<Tid>,
    pub neighbors: Tid,
    pub vector: Vec<f32>,
    /// The neighbour tuple, when it sat on the element's page.
    neighbor_bytes: Option<Vec<u8>>,
}

pub struct DiskGraph {
    pub rel: pg_sys::Relation,
    pub m: usize,
    pub metric: Metric,
    nodes: HashMap<Tid, Option<Node>>,
    pub reads: usize,
}

fn corrupted(what: String) -> ! {
    ereport!(ERROR, PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, format!("akidb_hnsw index is corrupted: {what}"), "REINDEX the index.");
}

impl DiskGraph {
    pub fn new(rel: pg_sys::Relation, m: usize, metric: Metric) -> Self {
        DiskGraph { rel, m, metric, nodes: HashMap::new(), reads: 0 }
    }

    /// The element at `tid` (None if the slot holds no element).
    pub fn node(&mut self, tid: Tid) -> Option<&Node> {
        if !self.nodes.contains_key(&tid) {
            let n = self.load(tid);
            self.nodes.insert(tid, n);
        }
        self.nodes.get(&tid).and_then(|n| n.as_ref())
    }

    /// Forgets cached nodes (their lists may have changed under us).
    pub fn forget(&mut self, tid: Tid) {
        self.nodes.remove(&tid);
    }

    fn load(&mut self, tid: Tid) -> Option<Node> {
        if !tid.is_valid() {
            return None;
        }
        self.reads += 1;
        let (mut vector, header, neighbor_bytes) = {
            let b = Locked::read(self.rel, tid.block, false);
            let page = b.page();
            let item = page.item(tid.offset)?;
            let header = Element::decode_header(item).unwrap_or_else(|e| corrupted(format!("element ({}, {}): {e}", tid.block, tid.offset)));
            let mut v = Vec::with_capacity(header.dims as usize);
            Element::read_inline(item, &mut v).unwrap_or_else(|e| corrupted(e.to_string()));
            let nb = (header.neighbors.block == tid.block).then(|| page.item(header.neighbors.offset).map(|s| s.to_vec())).flatten();
            (v, header, nb)
        };
        let mut next = header.next_chunk;
        while next.is_valid() {
            let b = Locked::read(self.rel, next.block, false);
            let page = b.page();
            let item = page.item(next.offset).unwrap_or_else(|| corrupted(format!("missing vector chunk ({}, {})", next.block, next.offset)));
            next = format::read_chunk(item, &mut vector).unwrap_or_else(|e| corrupted(e.to_string()));
        }
        if vector.len() != header.dims as usize {
            corrupted(format!("element ({}, {}) holds {} of {} values", tid.block, tid.offset, vector.len(), header.dims));
        }
        Some(Node { level: header.level, deleted: header.deleted, heap_tids: header.heap_tids, neighbors: header.neighbors, vector, neighbor_bytes })
    }

    /// The neighbours of `tid` on `level`.
    pub fn neighbor_list(&mut self, tid: Tid, level: u8) -> Vec<Tid> {
        let m = self.m;
        let (ntid, cached) = match self.node(tid) {
            Some(n) => (n.neighbors, n.neighbor_bytes.clone()),
            None => return Vec::new(),
        };
        let bytes = match cached {
            Some(b) => b,
            None => {
                let b = Locked::read(self.rel, ntid.block, false);
                match b.page().item(ntid.offset) {
                    Some(s) => s.to_vec(),
                    None => corrupted(format!("missing neighbour tuple ({}, {})", ntid.block, ntid.offset)),
                }
            }
        };
        let mut out = Vec::new();
        format::neighbors_on(&bytes, m, level, &mut out).unwrap_or_else(|e| corrupted(e.to_string()));
        out
    }
}

impl GraphStore for DiskGraph {
    fn distance(&mut self, query: &[f32], node: NodeId) -> f32 {
        let metric = self.metric;
        match self.node(Tid::from_node(node)) {
            Some(n) => metric.distance(query, &n.vector),
            None => f32::INFINITY,
        }
    }

    fn neighbors(&mut self, node: NodeId, level: u8, out: &mut Vec<NodeId>) {
        out.extend(self.neighbor_list(Tid::from_node(node), level).into_iter().map(|t| t.node()));
    }
}
