//! VACUUM: the core's ([`akidb_core::hnsw::vacuum`]: mark, wait for inserts, repair,
//! reconnect, free the slots) over the buffer pages, with what only the server has: the
//! dead-tuple callback, the insert lock, the cost delay and maintenance_work_mem.

use akidb_core::hnsw::format::Tid;
use akidb_core::hnsw::vacuum::{self, Host};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::{nblocks, PgPages};

/// What the core's VACUUM asks of the server.
struct Server {
    index: pg_sys::Relation,
    callback: unsafe extern "C-unwind" fn(*mut pg_sys::ItemPointerData, *mut std::ffi::c_void) -> bool,
    state: *mut std::ffi::c_void,
}

impl Host for Server {
    fn is_dead(&self, heap_tid: Tid) -> bool {
        let mut heap = pg_sys::ItemPointerData::default();
        pgrx::itemptr::item_pointer_set_all(&mut heap, heap_tid.block, heap_tid.offset);
        // SAFETY: the callback only looks the tid up in VACUUM's dead-tuple store.
        unsafe { (self.callback)(&mut heap, self.state) }
    }

    fn wait_for_inserts(&self) {
        // Each insert holds the index's insert lock in share mode (see insert's
        // InsertLock). SAFETY: a heavyweight page lock on the open index, held by nobody
        // else in this backend; taken and released at once.
        unsafe {
            pg_sys::LockPage(self.index, super::insert::INSERT_LOCK_BLOCK, pg_sys::ExclusiveLock as i32);
            pg_sys::UnlockPage(self.index, super::insert::INSERT_LOCK_BLOCK, pg_sys::ExclusiveLock as i32);
        }
    }

    fn delay(&self) {
        super::vacuum_delay();
    }

    fn memory(&self) -> usize {
        // SAFETY: a plain GUC read.
        unsafe { pg_sys::maintenance_work_mem as usize * 1024 }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambulkdelete(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
    callback: pg_sys::IndexBulkDeleteCallback,
    callback_state: *mut std::ffi::c_void,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: VACUUM passes a valid info; stats is null the first time.
    let index = unsafe { (*info).index };
    let stats = if stats.is_null() { unsafe { PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg() } } else { stats };
    let server = Server { index, callback: callback.expect("VACUUM passes a callback"), state: callback_state };
    let done = vacuum::bulk_delete(&PgPages(index), &server).unwrap_or_else(|e| crate::error::raise_index(e));
    if !done.looked_for_unreachable {
        ereport!(
            NOTICE,
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            "akidb_hnsw: the graph's links do not fit in maintenance_work_mem: unreachable elements were not looked for",
            "Raise maintenance_work_mem for VACUUM to keep every element reachable."
        );
    }
    // SAFETY: stats is ours to fill.
    unsafe {
        (*stats).tuples_removed += done.removed as f64;
        (*stats).num_index_tuples = done.rows as f64;
        (*stats).num_pages = nblocks(index);
    }
    stats
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amvacuumcleanup(
    info: *mut pg_sys::IndexVacuumInfo,
    stats: *mut pg_sys::IndexBulkDeleteResult,
) -> *mut pg_sys::IndexBulkDeleteResult {
    // SAFETY: as above.
    unsafe {
        if (*info).analyze_only {
            return stats;
        }
        let index = (*info).index;
        let stats = if stats.is_null() {
            let s = PgBox::<pg_sys::IndexBulkDeleteResult>::alloc0().into_pg();
            let (all, chained) = vacuum::elements(&PgPages(index), &|| { pgrx::check_for_interrupts!() });
            (*s).num_index_tuples = vacuum::live_rows(&all, chained) as f64;
            s
        } else {
            stats
        };
        (*stats).num_pages = nblocks(index);
        stats
    }
}
