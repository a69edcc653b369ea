//! akidb-core: everything in akidb that does not need PostgreSQL.
//!
//! * [`vector`]   — the rules of the `vector` type: dimension limits, element checks,
//!   element-wise arithmetic, ordering, and the pgvector-compatible text format.
//! * [`distance`] — distance kernels with runtime-selected SIMD (AVX-512, AVX2+FMA, NEON)
//!   and a scalar reference that every SIMD path is tested against.
//! * [`hnsw`]     — the HNSW graph: search over any store, the parallel in-memory
//!   builder, and the on-disk tuple format of the `akidb_hnsw` index.
//! * [`threads`]  — starting threads inside a backend (signals blocked).
//!
//! The extension crate (`akidb`) wraps these in PostgreSQL datums and maps
//! [`vector::VectorError`] to SQLSTATEs; nothing here allocates through PostgreSQL or
//! raises PostgreSQL errors, so it is all testable with plain `cargo test`.

pub mod distance;
pub mod hnsw;
pub mod threads;
pub mod vector;
