//! `akidb_hnsw`: the HNSW index access method. One module per phase, like pgvector:
//! * this file — the handler (what the AM can do), reloptions, cost estimate, opclasses;
//! * [`build`] — CREATE INDEX: the heap scan, the parallel in-memory graph, the pages;
//! * [`insert`] — one row into the on-disk graph;
//! * [`scan`] — ORDER BY col <op> constant LIMIT k, with iterative scans;
//! * [`vacuum`] — removing dead rows and repairing their neighbours' links;
//! * [`check`] — `akidb_hnsw_check(regclass)`;
//! * [`page`] and [`store`] — buffers, pages, WAL; the graph on disk for the core search.
//!
//! The on-disk format is `akidb_core::hnsw::format`.

pub mod build;
pub mod cache;
pub mod check;
pub mod insert;
pub mod page;
pub mod scan;
pub mod store;
pub mod vacuum;

use std::ffi::CStr;

use akidb_core::hnsw::error::IndexError;
use akidb_core::hnsw::format::Tid;
use akidb_core::hnsw::{Metric, Params};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings;

pub const DEFAULT_M: i32 = 16;
pub const DEFAULT_EF_CONSTRUCTION: i32 = 64;

/// `WITH (m = ..., ef_construction = ...)` as PostgreSQL stores it.
#[repr(C)]
struct Options {
    vl_len_: i32,
    m: i32,
    ef_construction: i32,
}

static mut RELOPT_KIND: pg_sys::relopt_kind::Type = 0;

/// Checks that the server's pages are the size the on-disk format is laid out for
/// (`format::BLOCK_SIZE`, PostgreSQL's default BLCKSZ); registers the reloptions. From
/// `_PG_init`: a server built with another block size refuses to load akidb.
pub fn init() {
    // SAFETY: block_size is a read-only GUC, set at startup; the string is PostgreSQL's.
    let server = unsafe {
        let v = pg_sys::GetConfigOption(c"block_size".as_ptr(), true, false);
        if v.is_null() { None } else { CStr::from_ptr(v).to_str().ok().and_then(|s| s.parse::<usize>().ok()) }
    };
    if server.is_some_and(|b| b != akidb_core::hnsw::format::BLOCK_SIZE) || pg_sys::BLCKSZ as usize != akidb_core::hnsw::format::BLOCK_SIZE {
        crate::error::raise_index(IndexError::BlockSize {
            server: server.unwrap_or(pg_sys::BLCKSZ as usize),
            format: akidb_core::hnsw::format::BLOCK_SIZE,
        });
    }
    // SAFETY: runs once at library load, on the main thread; the strings are 'static.
    unsafe {
        RELOPT_KIND = pg_sys::add_reloption_kind();
        pg_sys::add_int_reloption(
            RELOPT_KIND as _,
            c"m".as_ptr(),
            c"Neighbours per node on levels above 0 (twice as many on level 0)".as_ptr(),
            DEFAULT_M,
            2,
            100,
            pg_sys::AccessExclusiveLock as _,
        );
        pg_sys::add_int_reloption(
            RELOPT_KIND as _,
            c"ef_construction".as_ptr(),
            c"Size of the candidate list while building the graph".as_ptr(),
            DEFAULT_EF_CONSTRUCTION,
            4,
            1000,
            pg_sys::AccessExclusiveLock as _,
        );
    }
}

extern "C-unwind" {
    /// PostgreSQL's build_reloptions, called directly: a bad option value raises its own
    /// clean ERROR (pgrx's wrapper would add a Rust backtrace to it).
    #[link_name = "build_reloptions"]
    fn raw_build_reloptions(
        reloptions: pg_sys::Datum,
        validate: bool,
        kind: pg_sys::relopt_kind::Type,
        relopt_struct_size: usize,
        relopt_elems: *const pg_sys::relopt_parse_elt,
        num_relopt_elems: i32,
    ) -> *mut std::ffi::c_void;
}

// Not #[pg_guard]: nothing here owns a destructor, so PostgreSQL's longjmp on a bad value
// passes through this frame cleanly, exactly as through a C function.
unsafe extern "C-unwind" fn amoptions(reloptions: pg_sys::Datum, validate: bool) -> *mut pg_sys::bytea {
    let tab = [
        pg_sys::relopt_parse_elt {
            optname: c"m".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, m) as i32,
            ..Default::default()
        },
        pg_sys::relopt_parse_elt {
            optname: c"ef_construction".as_ptr(),
            opttype: pg_sys::relopt_type::RELOPT_TYPE_INT,
            offset: std::mem::offset_of!(Options, ef_construction) as i32,
            ..Default::default()
        },
    ];
    // SAFETY: the table describes `Options`; PostgreSQL allocates and fills it.
    unsafe {
        raw_build_reloptions(reloptions, validate, RELOPT_KIND, std::mem::size_of::<Options>(), tab.as_ptr(), tab.len() as i32)
            as *mut pg_sys::bytea
    }
}

/// The index's build parameters.
pub fn params(index: pg_sys::Relation) -> Params {
    // SAFETY: rd_options is null or the Options built by amoptions.
    let opts = unsafe { ((*index).rd_options as *const Options).as_ref() };
    let (m, ef) = opts.map_or((DEFAULT_M, DEFAULT_EF_CONSTRUCTION), |o| (o.m, o.ef_construction));
    Params { m: m as usize, ef_construction: ef as usize }
}

/// The metric of the index's operator class, from its distance support function.
pub fn metric(index: pg_sys::Relation) -> Metric {
    // SAFETY: index is open; support procedure 1 exists for every akidb_hnsw opclass.
    let name = unsafe {
        let proc_ = pg_sys::index_getprocid(index, 1, 1);
        let name = pg_sys::get_func_name(proc_);
        if name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    };
    match name.as_str() {
        "l2_distance" => Metric::L2,
        "vector_negative_inner_product" => Metric::InnerProduct,
        "cosine_distance" => Metric::Cosine,
        "l1_distance" => Metric::L1,
        other => crate::error::raise_index(IndexError::UnsupportedDistance(other.into())),
    }
}

/// The indexed column's declared dimensions.
pub fn dimensions(index: pg_sys::Relation) -> usize {
    // SAFETY: an open index's tuple descriptor, with at least one attribute.
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*index).rd_att) };
    let typmod = desc.get(0).map_or(-1, |a| a.atttypmod);
    if typmod < 1 {
        crate::error::raise_index(IndexError::NoDimensions);
    }
    typmod as usize
}

/// Sleeps as vacuum_cost_delay asks (the signature changed in PostgreSQL 18).
pub fn vacuum_delay() {
    // SAFETY: a plain call from a VACUUM callback.
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::vacuum_delay_point()
    };
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::vacuum_delay_point(false)
    };
}

/// A heap item pointer as the format's tid.
pub fn item_tid(tid: pg_sys::ItemPointer) -> Tid {
    // SAFETY: a valid heap item pointer.
    let (block, offset) = pgrx::itemptr::item_pointer_get_both(unsafe { *tid });
    Tid { block, offset }
}

/// Reads a vector datum and prepares it for `metric`; None for a vector the index does
/// not hold (a zero vector under cosine).
pub fn prepared_vector(datum: pg_sys::Datum, metric: Metric) -> Option<Vec<f32>> {
    // SAFETY: the datum is a non-null vector.
    let v = unsafe { <crate::types::datum::VectorRef as FromDatum>::from_polymorphic_datum(datum, false, pg_sys::InvalidOid) }?;
    let mut out = v.as_slice().to_vec();
    metric.prepare(&mut out).then_some(out)
}

#[pg_guard]
unsafe extern "C-unwind" fn amcostestimate(
    _root: *mut pg_sys::PlannerInfo,
    path: *mut pg_sys::IndexPath,
    _loop_count: f64,
    startup: *mut pg_sys::Cost,
    total: *mut pg_sys::Cost,
    selectivity: *mut pg_sys::Selectivity,
    correlation: *mut f64,
    pages: *mut f64,
) {
    // SAFETY: the planner passes valid pointers.
    unsafe {
        *correlation = 0.0;
        // Only ORDER BY col <op> constant, one of them: any other path (no order at all,
        // as for count(*) or a partial index's WHERE, or a second ORDER BY key the graph
        // cannot break ties by) must never be chosen, not even over a disabled seq scan.
        if pgrx::PgList::<pg_sys::Node>::from_pg((*path).indexorderbys).len() != 1 {
            *startup = f64::INFINITY;
            *total = f64::INFINITY;
            *selectivity = 0.0;
            *pages = 0.0;
            // PostgreSQL 18 compares disabled nodes before costs: count this path as more
            // disabled than any seq scan that enable_seqscan = off disables.
            #[cfg(feature = "pg18")]
            {
                (*path).path.disabled_nodes = 2;
            }
            return;
        }
        let info = (*path).indexinfo;
        let tuples = (*info).tuples.max(1.0);
        let ef = settings::HNSW_EF_SEARCH.get() as f64;
        // The planner holds a lock on the index; open it only to read its m and dimensions.
        let index = pg_sys::index_open((*info).indexoid, pg_sys::NoLock as i32);
        let m = params(index).m;
        let dims = dimensions(index);
        pg_sys::index_close(index, pg_sys::NoLock as i32);
        let coded = akidb_core::hnsw::format::code_len(dims, 0, m) > 0;
        let p = cost_params();
        let cost = akidb_core::hnsw::cost::index_scan(p, tuples, dims, coded, ef, m as f64);
        // All the work happens before the first row comes back.
        *startup = cost;
        *total = cost;
        *selectivity = 1.0;
        *pages = akidb_core::hnsw::cost::visited(tuples, ef, m as f64).min((*info).pages as f64);
    }
}

/// The planner's cost parameters as this session has them.
pub fn cost_params() -> akidb_core::hnsw::cost::CostParams {
    // SAFETY: plain reads of PostgreSQL's cost GUC variables on the main thread.
    unsafe {
        akidb_core::hnsw::cost::CostParams {
            cpu_operator_cost: pg_sys::cpu_operator_cost,
            cpu_index_tuple_cost: pg_sys::cpu_index_tuple_cost,
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn amvalidate(_opclassoid: pg_sys::Oid) -> bool {
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn ambuildphasename(phase: i64) -> *mut std::ffi::c_char {
    let name: &CStr = match phase {
        build::PHASE_LOAD => c"loading tuples",
        build::PHASE_GRAPH => c"building graph",
        build::PHASE_WRITE => c"writing pages",
        build::PHASE_INSERT => c"inserting tuples that did not fit in memory",
        _ => return std::ptr::null_mut(),
    };
    // SAFETY: PostgreSQL copies the name; a static string outlives the call.
    name.as_ptr() as *mut _
}

/// pg_finfo record for the handler (a version-1 C function).
#[no_mangle]
pub extern "C" fn pg_finfo_akidb_hnsw_handler() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The access method handler: what akidb_hnsw can do, and its callbacks.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn akidb_hnsw_handler(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let mut am = unsafe { PgBox::<pg_sys::IndexAmRoutine>::alloc_node(pg_sys::NodeTag::T_IndexAmRoutine) };
    am.amstrategies = 0;
    am.amsupport = 1;
    am.amoptsprocnum = 0;
    am.amcanorder = false;
    am.amcanorderbyop = true;
    am.amcanbackward = false;
    am.amcanunique = false;
    am.amcanmulticol = false;
    am.amoptionalkey = true;
    am.amsearcharray = false;
    am.amsearchnulls = false;
    am.amstorage = false;
    am.amclusterable = false;
    am.ampredlocks = false;
    am.amcanparallel = false;
    am.amcaninclude = false;
    am.amusemaintenanceworkmem = true;
    am.amparallelvacuumoptions = pg_sys::VACUUM_OPTION_PARALLEL_BULKDEL as u8;
    am.amkeytype = pg_sys::InvalidOid;
    am.ambuild = Some(build::ambuild);
    am.ambuildempty = Some(build::ambuildempty);
    am.aminsert = Some(insert::aminsert);
    am.ambulkdelete = Some(vacuum::ambulkdelete);
    am.amvacuumcleanup = Some(vacuum::amvacuumcleanup);
    am.amcostestimate = Some(amcostestimate);
    am.amoptions = Some(amoptions);
    am.amvalidate = Some(amvalidate);
    am.ambuildphasename = Some(ambuildphasename);
    am.ambeginscan = Some(scan::ambeginscan);
    am.amrescan = Some(scan::amrescan);
    am.amgettuple = Some(scan::amgettuple);
    am.amendscan = Some(scan::amendscan);
    pg_sys::Datum::from(am.into_pg())
}

// The access method and its operator classes are created in sql/vector_operators.sql,
// after the operators they use.
