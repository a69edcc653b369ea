//! One row into the on-disk graph: the core's insert ([`akidb_core::hnsw::insert`]:
//! neighbour search, tuples, back-links, entry point) over the buffer pages, each page
//! change one GenericXLog record, at most one buffer locked at a time; and the lock that
//! orders inserts against VACUUM.

use std::time::{SystemTime, UNIX_EPOCH};

use akidb_core::hnsw::format::{Meta, Tid, META_BLOCK};
use akidb_core::hnsw::splitmix64;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::{read_meta, PgPages};
use super::{item_tid, prepared_vector};

#[pg_guard]
pub unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    _heap: pg_sys::Relation,
    _check_unique: pg_sys::IndexUniqueCheck::Type,
    _index_unchanged: bool,
    _index_info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: one indexed column; PostgreSQL passes its value and null flag.
    if unsafe { *isnull } {
        return false;
    }
    let _lock = InsertLock::take(index);
    let meta = read_meta(index);
    let Some(v) = prepared_vector(unsafe { *values }, meta.metric) else { return false };
    insert_vector(index, &meta, &v, item_tid(heap_tid));
    false
}

/// The block whose heavyweight page lock orders inserts against VACUUM: each insert
/// holds it in share mode; VACUUM takes it exclusively for a moment to wait for the
/// inserts in flight (those that may link to an element it just marked deleted).
pub const INSERT_LOCK_BLOCK: u32 = META_BLOCK;

/// The insert lock, released on drop (an ERROR releases it with the transaction).
struct InsertLock(pg_sys::Relation);

impl InsertLock {
    fn take(index: pg_sys::Relation) -> InsertLock {
        // SAFETY: a heavyweight page lock on the open index.
        unsafe { pg_sys::LockPage(index, INSERT_LOCK_BLOCK, pg_sys::ShareLock as i32) };
        InsertLock(index)
    }
}

impl Drop for InsertLock {
    fn drop(&mut self) {
        // SAFETY: taken in `take`.
        unsafe { pg_sys::UnlockPage(self.0, INSERT_LOCK_BLOCK, pg_sys::ShareLock as i32) };
    }
}

/// Inserts one prepared vector for `heap_tid`; `meta` is the metapage as just read. The
/// algorithm is the core's ([`akidb_core::hnsw::insert`]), over the buffer pages.
pub fn insert_vector(index: pg_sys::Relation, meta: &Meta, v: &[f32], heap_tid: Tid) {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let random = splitmix64(nanos ^ heap_tid.node().rotate_left(17));
    if let Err(e) = akidb_core::hnsw::insert::insert(&PgPages(index), meta, v, heap_tid, random) {
        crate::error::raise_index(e);
    }
}
