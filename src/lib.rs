//! akidb: semantic search inside PostgreSQL.
//!
//! This crate is the PostgreSQL side: it turns SQL calls into calls on `akidb-core` and
//! back. Layout:
//! * [`types`] — the `vector` type: on-disk/wire layout, I/O, operators, casts, aggregates.
//! * [`error`] — the one place where core errors become SQLSTATEs.

use pgrx::prelude::*;

pub mod error;
pub mod types;

::pgrx::pg_module_magic!(name, version);

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
