//! The `vector` type, pgvector-compatible.
//!
//! * [`datum`] — the varlena layout (shared with pgvector) and the Rust handles for it.
//! * [`io`] — text and binary input/output, typmod.
//! * [`functions`] — distances, arithmetic, comparisons and the other SQL functions.
//! * [`casts`] — array ⇄ vector.
//! * [`aggregates`] — `avg` and `sum` support.
//!
//! Operators, the btree operator class, casts and aggregates are declared in
//! `sql/vector_operators.sql`.

pub mod aggregates;
pub mod casts;
pub mod datum;
pub mod functions;
pub mod io;

pub use datum::{Vector, VectorOut, VectorRef};

pgrx::extension_sql_file!(
    "../../sql/vector_operators.sql",
    name = "vector_operators",
    finalize
);
