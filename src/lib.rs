//! akidb: semantic search inside PostgreSQL.
//!
//! This crate is the PostgreSQL side: it turns SQL calls into calls on `akidb-core` and
//! back. Layout:
//! * [`types`] — the `vector` type: on-disk/wire layout, I/O, operators, casts, aggregates.
//! * [`embed`] — `embed()`, `embed_query()`, the per-backend model cache, akidb.models.
//! * [`index`] — the `akidb_hnsw` index access method.
//! * [`settings`] — every GUC, in one place.
//! * [`error`] — the one place where core errors become SQLSTATEs.

use pgrx::prelude::*;

pub mod embed;
pub mod index;
pub mod interrupt;
pub mod error;
pub mod settings;
pub mod types;

::pgrx::pg_module_magic!(name, version);

/// Registers the settings, and where akidb is preloaded the embedding worker. Nothing
/// else: no threads, no ONNX Runtime (with shared_preload_libraries this runs in the
/// postmaster, and threads do not survive fork).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx appends a Rust backtrace to an ERROR's DETAIL when the server runs with
    // RUST_BACKTRACE set; no error a client can provoke may carry one. std reads
    // RUST_LIB_BACKTRACE before RUST_BACKTRACE, once, at the first capture: none has
    // happened yet, and no other thread runs during _PG_init.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    settings::init();
    index::init();
    // With shared_preload_libraries: the shared embedding worker and its request table.
    embed::worker::init();
}

/// The SIMD kernel set this backend uses for distances: `avx512`, `avx2`, `neon` or `scalar`.
#[pg_extern(immutable, parallel_safe)]
fn akidb_simd() -> &'static str {
    akidb_core::distance::kernels().name
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
