//! `akidb_hnsw_check(index)`: walks every page of an akidb_hnsw index and reports each
//! structural problem it finds (no rows: the index is sound), like amcheck; and
//! `akidb_hnsw_info(index)`. The rules are the core's ([`akidb_core::hnsw::check`]).
//! Both read every page of an index whatever the caller may read, so, like amcheck's
//! functions, they are revoked from PUBLIC (a superuser may grant them).

use std::ffi::CStr;

use akidb_core::hnsw::check::Stats;
use akidb_core::hnsw::error::IndexError;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::page::PgPages;

/// Checks the index; returns one row per problem (none when it is sound).
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_hnsw_check(index: pg_sys::Oid) -> TableIterator<'static, (name!(problem, String),)> {
    let (problems, _) = check(index);
    TableIterator::new(problems.into_iter().map(|p| (p,)))
}

pgrx::extension_sql!(
    r#"
REVOKE ALL ON FUNCTION akidb_hnsw_check(oid) FROM PUBLIC;
REVOKE ALL ON FUNCTION akidb_hnsw_info(oid) FROM PUBLIC;
"#,
    name = "akidb_hnsw_check_grants",
    requires = [akidb_hnsw_check, akidb_hnsw_info]
);

/// What the index holds: elements, live and deleted ones (of which `free`: slots VACUUM
/// left for inserts to reuse), heap rows, pages, the top level, and live elements no
/// search can reach (a crash between writing an element and
/// linking it leaves one; its row was never committed, and VACUUM removes it).
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_hnsw_info(
    index: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(elements, i64),
        name!(live, i64),
        name!(deleted, i64),
        name!(heap_tids, i64),
        name!(coded, i64),
        name!(unreachable, i64),
        name!(top_level, i32),
        name!(pages, i64),
        name!(free, i64),
    ),
> {
    let (_, s) = check(index);
    TableIterator::once((s.elements, s.live, s.deleted, s.heap_tids, s.coded, s.unreachable, s.top_level, s.pages, s.free))
}

fn check(oid: pg_sys::Oid) -> (Vec<String>, Stats) {
    // A lock that keeps writers out while we walk it; on a standby (read-only, writers
    // are WAL replay) only AccessShareLock may be taken.
    // SAFETY: plain calls; the index is closed by the guard below.
    let lock = if unsafe { pg_sys::RecoveryInProgress() } { pg_sys::AccessShareLock } else { pg_sys::ShareLock } as i32;
    // index_open refuses a relation that is not an index (42809).
    let index = unsafe { pg_sys::index_open(oid, lock) };
    struct Close(pg_sys::Relation, i32);
    impl Drop for Close {
        fn drop(&mut self) {
            // SAFETY: opened above.
            unsafe { pg_sys::index_close(self.0, self.1) };
        }
    }
    let _close = Close(index, lock);
    // SAFETY: an open index's pg_class row; get_am_oid errors if the AM is missing.
    if unsafe { (*(*index).rd_rel).relam != pg_sys::get_am_oid(c"akidb_hnsw".as_ptr(), false) } {
        // SAFETY: as above.
        let name = unsafe { CStr::from_ptr((*(*index).rd_rel).relname.data.as_ptr()) }.to_string_lossy();
        crate::error::raise_index(IndexError::NotAnAkidbIndex(name.into_owned()));
    }
    let checked = akidb_core::hnsw::check::check(&PgPages(index), &|| { pgrx::check_for_interrupts!() });
    checked.unwrap_or_else(|e| crate::error::raise_index(e))
}
