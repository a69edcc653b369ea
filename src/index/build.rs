//! CREATE INDEX: scan the heap, build the graph in memory on several threads, write it to
//! pages in one pass and WAL-log them as full page images. Rows that do not fit in
//! maintenance_work_mem are inserted into the on-disk graph one by one (with a NOTICE).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use akidb_core::hnsw::build::{build as build_graph, Graph};
use akidb_core::hnsw::format::{self, Element, Meta, PagePlanner, Tid, META_BLOCK, PAGE_GRAPH, PAGE_META};
use akidb_core::hnsw::error::IndexError;
use akidb_core::hnsw::{Metric, Params};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::{read_meta, Locked};
use super::{dimensions, insert, item_tid, metric, params, prepared_vector};

pub const PHASE_LOAD: i64 = 1;
pub const PHASE_GRAPH: i64 = 2;
pub const PHASE_WRITE: i64 = 3;
pub const PHASE_INSERT: i64 = 4;

// pg_stat_progress_create_index columns (commands/progress.h).
const PROGRESS_SUBPHASE: i32 = 10;
const PROGRESS_TUPLES_TOTAL: i32 = 11;
const PROGRESS_TUPLES_DONE: i32 = 12;

fn progress(param: i32, value: i64) {
    // SAFETY: reports into this backend's progress slot.
    unsafe { pg_sys::pgstat_progress_update_param(param, value) };
}

struct State {
    index: pg_sys::Relation,
    metric: Metric,
    dims: usize,
    params: Params,
    vectors: Vec<f32>,
    tids: Vec<Tid>,
    memory_limit: usize,
    on_disk: bool,
    heap_tuples: f64,
    index_tuples: f64,
}

impl State {
    fn per_row_bytes(&self) -> usize {
        // The vector, its heap tid, the links (about 2m on level 0, a few more above),
        // the de-duplication's sort entry and row lists, and the graph's per-node lists.
        self.dims * 4 + 8 + (2 * self.params.m + self.params.m / 2) * 4 + 16 + 40 + 96
    }
}

/// A failed allocation while building: an ERROR (the server goes on), never an abort.
fn out_of_memory(rows: usize) -> ! {
    crate::error::raise_index(IndexError::OutOfMemory { what: "building", rows });
}

fn check_dims(expected: usize, got: usize) {
    if expected != got {
        crate::error::raise_index(IndexError::DimMismatch { expected, got });
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn build_callback(
    _index: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    _alive: bool,
    state: *mut std::ffi::c_void,
) {
    // SAFETY: state is the State passed to table_index_build_scan; one indexed column.
    let st = unsafe { &mut *(state as *mut State) };
    st.heap_tuples += 1.0;
    if unsafe { *isnull } {
        return;
    }
    let Some(v) = prepared_vector(unsafe { *values }, st.metric) else { return };
    check_dims(st.dims, v.len());
    let heap_tid = item_tid(tid);
    if !st.on_disk && (st.tids.len() + 1) * st.per_row_bytes() > st.memory_limit {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("akidb_hnsw graph no longer fits into maintenance_work_mem after {} rows", st.tids.len()),
            "The remaining rows are inserted one by one, which is much slower. Raise maintenance_work_mem to build faster."
        );
        flush(st);
        st.on_disk = true;
        progress(PROGRESS_SUBPHASE, PHASE_INSERT);
    }
    if st.on_disk {
        insert::insert_vector(st.index, &read_meta(st.index), &v, heap_tid);
    } else {
        if st.vectors.try_reserve(v.len()).is_err() || st.tids.try_reserve(1).is_err() {
            out_of_memory(st.tids.len());
        }
        st.vectors.extend_from_slice(&v);
        st.tids.push(heap_tid);
        if st.tids.len() % 1024 == 0 {
            progress(PROGRESS_TUPLES_DONE, st.tids.len() as i64);
        }
    }
    st.index_tuples += 1.0;
}

/// Builds the graph of the rows collected so far (threads; this thread reports progress
/// and watches for cancel), then writes it.
fn flush(st: &mut State) {
    // Rows with identical vectors share one element (its first MAX_HEAP_TIDS rows in it,
    // the rest in heap-tid tuples): a graph of many equal points would link them only to
    // each other, and the later ones could not be reached.
    let groups = akidb_core::hnsw::build::dedupe(&mut st.vectors, st.dims).unwrap_or_else(|_| out_of_memory(st.tids.len()));
    let groups: Vec<Vec<Tid>> = groups.into_iter().map(|g| g.into_iter().map(|i| st.tids[i as usize]).collect()).collect();
    st.tids = Vec::new();
    let n = groups.len();
    progress(PROGRESS_SUBPHASE, PHASE_GRAPH);
    progress(PROGRESS_TUPLES_TOTAL, n as i64);
    progress(PROGRESS_TUPLES_DONE, 0);
    // SAFETY: a plain GUC read.
    let workers = unsafe { pg_sys::max_parallel_maintenance_workers }.max(0) as usize + 1;
    let threads = workers.min(std::thread::available_parallelism().map_or(1, |c| c.get())).max(1);
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (vectors, dims, metric, params) = (&st.vectors, st.dims, st.metric, st.params);
    let graph = std::thread::scope(|s| {
        let handle = akidb_core::threads::with_signals_blocked(|| {
            s.spawn(|| build_graph(vectors, dims, metric, params, threads, 0x5eed_a1d6, &done, &stop))
        });
        while !handle.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            progress(PROGRESS_TUPLES_DONE, done.load(Ordering::Relaxed) as i64);
            if crate::interrupt::cancel_pending() {
                stop.store(true, Ordering::Relaxed);
            }
        }
        handle.join().expect("HNSW build thread panicked")
    });
    let Some(graph) = graph else {
        pgrx::check_for_interrupts!();
        error!("akidb_hnsw: index build canceled");
    };
    progress(PROGRESS_SUBPHASE, PHASE_WRITE);
    write(st.index, &graph, &st.vectors, &groups, st.dims, st.metric, st.params);
    st.vectors = Vec::new();
}

/// A tuple of the build's plan, in page order.
#[derive(Debug, Clone, Copy)]
enum Placed {
    /// Element `i` and, right after it, its neighbour tuple.
    Element(usize),
    /// Vector chunk `k` of element `i`.
    Chunk(usize, usize),
    /// Heap-tid tuple `k` of element `i`.
    More(usize, usize),
}

/// Writes the metapage and the graph, block by block, then logs them as full images.
fn write(index: pg_sys::Relation, g: &Graph, vectors: &[f32], tids: &[Vec<Tid>], dims: usize, metric: Metric, params: Params) {
    let m = params.m;
    // Where every tuple goes, before writing any (neighbour lists point both ways). An
    // element and its neighbour tuple share a page; its vector chunks and heap-tid
    // tuples may go anywhere, so they fill the room the pairs leave (a coded 784-d
    // element is a 1.1 kB pair and a 3.2 kB chunk: kept in step, pages would hold 1.5
    // elements; this way about 1.75).
    let mut plan = PagePlanner::new(META_BLOCK + 1);
    let n = tids.len();
    let mut element_at = vec![Tid::INVALID; n];
    let mut neighbors_at = vec![Tid::INVALID; n];
    let mut chunks_at: Vec<Vec<Tid>> = Vec::with_capacity(n);
    let mut more_at: Vec<Vec<Tid>> = Vec::with_capacity(n);
    let tids_size = format::encode_tids(&[], format::TIDS_CAPACITY, Tid::INVALID).len();
    let mut order: Vec<Placed> = Vec::new();
    let mut loose: std::collections::VecDeque<(Placed, usize)> = std::collections::VecDeque::new();
    let place_loose = |plan: &mut PagePlanner, loose: &mut std::collections::VecDeque<(Placed, usize)>, order: &mut Vec<Placed>, chunks_at: &mut Vec<Vec<Tid>>, more_at: &mut Vec<Vec<Tid>>, all: bool| {
        while let Some(&(what, size)) = loose.front() {
            if !all && !plan.fits(&[size]) {
                break;
            }
            loose.pop_front();
            let at = plan.place(size);
            match what {
                Placed::Chunk(i, k) => chunks_at[i][k] = at,
                Placed::More(i, k) => more_at[i][k] = at,
                _ => unreachable!("only chunks and heap-tid tuples are loose"),
            }
            order.push(what);
        }
    };
    for i in 0..n {
        let more = tids[i].len().saturating_sub(format::MAX_HEAP_TIDS).div_ceil(format::TIDS_CAPACITY);
        more_at.push(vec![Tid::INVALID; more]);
        loose.extend((0..more).map(|k| (Placed::More(i, k), tids_size)));
        let inline = format::inline_count(dims, g.levels[i], m);
        let sizes = format::chunk_sizes(dims, inline);
        chunks_at.push(vec![Tid::INVALID; sizes.len()]);
        loose.extend(sizes.iter().enumerate().map(|(k, &size)| (Placed::Chunk(i, k), size)));
        let code = format::code_len(dims, g.levels[i], m);
        let (es, ns) = (format::element_size(code, inline), format::neighbors_size(g.levels[i], m));
        if !plan.fits(&[es, ns]) {
            place_loose(&mut plan, &mut loose, &mut order, &mut chunks_at, &mut more_at, false);
            plan.next_page();
        }
        element_at[i] = plan.place(es);
        neighbors_at[i] = plan.place(ns);
        order.push(Placed::Element(i));
        place_loose(&mut plan, &mut loose, &mut order, &mut chunks_at, &mut more_at, false);
    }
    place_loose(&mut plan, &mut loose, &mut order, &mut chunks_at, &mut more_at, true);
    let meta = Meta {
        dims: dims as u32,
        m: m as u16,
        ef_construction: params.ef_construction as u16,
        metric,
        entry: g.entry.map_or(Tid::INVALID, |(e, _)| element_at[e as usize]),
        entry_level: g.entry.map_or(0, |(_, l)| l),
        insert_block: if tids.is_empty() { META_BLOCK + 1 } else { plan.block },
        free_block: META_BLOCK,
        reuse_epoch: 0,
    };
    {
        let mut b = Locked::read(index, META_BLOCK, true);
        let mut page = b.page_mut();
        page.init(PAGE_META);
        page.set_meta(&meta);
        // SAFETY: we hold the buffer exclusively.
        unsafe { pg_sys::MarkBufferDirty(b.buf) };
    }
    let mut current: Option<Locked> = None;
    let mut put = |tid: Tid, bytes: &[u8]| {
        if current.as_ref().map(|b| b.block()) != Some(tid.block) {
            if let Some(b) = current.take() {
                // SAFETY: exclusively locked.
                unsafe { pg_sys::MarkBufferDirty(b.buf) };
            }
            let mut b = Locked::extend(index, pg_sys::ForkNumber::MAIN_FORKNUM);
            assert_eq!(b.block(), tid.block, "akidb_hnsw: index pages out of step with the plan");
            b.page_mut().init(PAGE_GRAPH);
            current = Some(b);
        }
        let off = current.as_mut().expect("a page was just set").page_mut().add(bytes);
        assert_eq!(off, tid.offset, "akidb_hnsw: tuple offset out of step with the plan");
    };
    for (done, what) in order.into_iter().enumerate() {
        match what {
            Placed::More(i, k) => {
                let rows = &tids[i][format::MAX_HEAP_TIDS..];
                let rows = &rows[k * format::TIDS_CAPACITY..((k + 1) * format::TIDS_CAPACITY).min(rows.len())];
                let next = more_at[i].get(k + 1).copied().unwrap_or(Tid::INVALID);
                put(more_at[i][k], &format::encode_tids(rows, format::TIDS_CAPACITY, next));
            }
            Placed::Chunk(i, k) => {
                let v = &vectors[i * dims..(i + 1) * dims];
                let rest = &v[format::inline_count(dims, g.levels[i], m)..];
                let values = &rest[k * format::MAX_CHUNK..((k + 1) * format::MAX_CHUNK).min(rest.len())];
                let next = chunks_at[i].get(k + 1).copied().unwrap_or(Tid::INVALID);
                put(chunks_at[i][k], &format::encode_chunk(values, next));
            }
            Placed::Element(i) => {
                let v = &vectors[i * dims..(i + 1) * dims];
                let inline = format::inline_count(dims, g.levels[i], m);
                let element = Element {
                    level: g.levels[i],
                    deleted: false,
                    heap_tids: tids[i][..tids[i].len().min(format::MAX_HEAP_TIDS)].to_vec(),
                    more_tids: more_at[i].first().copied().unwrap_or(Tid::INVALID),
                    neighbors: neighbors_at[i],
                    next_chunk: chunks_at[i].first().copied().unwrap_or(Tid::INVALID),
                    dims: dims as u16,
                    code: (format::code_len(dims, g.levels[i], m) > 0).then(|| format::Code::of(v)),
                    inline: v[..inline].to_vec(),
                };
                put(element_at[i], &element.encode());
                let lists: Vec<Vec<Tid>> = g.links[i].iter().map(|l| l.iter().map(|&n| element_at[n as usize]).collect()).collect();
                put(neighbors_at[i], &format::encode_neighbors(g.levels[i], m, &lists));
            }
        }
        if done % 1024 == 0 {
            pgrx::check_for_interrupts!();
        }
    }
    if let Some(b) = current.take() {
        // SAFETY: exclusively locked.
        unsafe { pg_sys::MarkBufferDirty(b.buf) };
    }
    log_all(index);
}

/// Full-page WAL images of every block, for crash recovery and standbys (skipped for
/// unlogged and temporary indexes).
fn log_all(index: pg_sys::Relation) {
    // SAFETY: index is open; RelationNeedsWAL's test is on the persistence.
    unsafe {
        if (*(*index).rd_rel).relpersistence == pg_sys::RELPERSISTENCE_PERMANENT as std::ffi::c_char {
            let n = super::page::nblocks(index);
            pg_sys::log_newpage_range(index, pg_sys::ForkNumber::MAIN_FORKNUM, 0, n, true);
        }
    }
}

/// A new block 0 of `fork` holding the metapage of an empty index (locked, not yet dirty).
fn empty_metapage(index: pg_sys::Relation, fork: pg_sys::ForkNumber::Type, metric: Metric, dims: usize, params: Params) -> Locked {
    let mut b = Locked::extend(index, fork);
    let mut page = b.page_mut();
    page.init(PAGE_META);
    page.set_meta(&akidb_core::hnsw::pages::empty_meta(metric, dims, params.m, params.ef_construction));
    b
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambuild(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
) -> *mut pg_sys::IndexBuildResult {
    if super::page::nblocks(index) != 0 {
        crate::error::raise_index(IndexError::NotEmpty(unsafe { pgrx::name_data_to_str(&(*(*index).rd_rel).relname) }.to_string()));
    }
    let (metric, dims, params) = (metric(index), dimensions(index), build_params(index));
    // SAFETY: a plain GUC read (kilobytes).
    let memory_limit = unsafe { pg_sys::maintenance_work_mem } as usize * 1024;
    // The metapage is block 0, written for real at the end of the in-memory build.
    {
        let b = empty_metapage(index, pg_sys::ForkNumber::MAIN_FORKNUM, metric, dims, params);
        // SAFETY: exclusively locked.
        unsafe { pg_sys::MarkBufferDirty(b.buf) };
    }
    let mut st = State {
        index,
        metric,
        dims,
        params,
        vectors: Vec::new(),
        tids: Vec::new(),
        memory_limit,
        on_disk: false,
        heap_tuples: 0.0,
        index_tuples: 0.0,
    };
    progress(PROGRESS_SUBPHASE, PHASE_LOAD);
    // SAFETY: the callback gets `st` back as its state pointer.
    unsafe {
        pg_sys::table_index_build_scan(
            heap,
            index,
            index_info,
            true,
            true,
            Some(build_callback),
            &mut st as *mut State as *mut std::ffi::c_void,
            std::ptr::null_mut(),
        );
    }
    if !st.on_disk {
        flush(&mut st);
    }
    let mut result = unsafe { PgBox::<pg_sys::IndexBuildResult>::alloc0() };
    result.heap_tuples = st.heap_tuples;
    result.index_tuples = st.index_tuples;
    result.into_pg()
}

/// The index's parameters, checked as a build needs them: a candidate list shorter than
/// the 2 * m neighbours a level-0 node keeps would leave nodes short of links.
fn build_params(index: pg_sys::Relation) -> akidb_core::hnsw::Params {
    let p = params(index);
    if p.ef_construction < 2 * p.m {
        crate::error::raise_index(IndexError::EfConstructionTooSmall { m: p.m, ef_construction: p.ef_construction });
    }
    p
}

/// The init fork of an unlogged index: an empty metapage, WAL-logged (init forks always are).
#[pg_guard]
pub unsafe extern "C-unwind" fn ambuildempty(index: pg_sys::Relation) {
    let (metric, dims, params) = (metric(index), dimensions(index), build_params(index));
    let b = empty_metapage(index, pg_sys::ForkNumber::INIT_FORKNUM, metric, dims, params);
    // SAFETY: exclusively locked; log_newpage_buffer writes its full image.
    unsafe {
        pg_sys::MarkBufferDirty(b.buf);
        pg_sys::log_newpage_buffer(b.buf, true);
    }
}
