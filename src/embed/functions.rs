//! The SQL functions. `embed` is IMMUTABLE (it feeds generated columns and expression
//! indexes; changing a model's files then needs REINDEX), STRICT and PARALLEL SAFE. The
//! optional arguments default to '' (akidb.default_model) and 0 (all dimensions), not
//! NULL: a STRICT function would turn a NULL default into a NULL result.

use akidb_embed::Purpose;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::registry;
use crate::types::datum::VectorOut;

fn dims_arg(dims: i32) -> Option<usize> {
    match dims {
        0 => None,
        d if d < 0 => {
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("dims must be positive, not {d}"),
                "Omit dims (or pass 0) for the model's full output."
            );
        }
        d => Some(d as usize),
    }
}

fn embed_one(input: &str, model: &str, dims: i32, purpose: Purpose) -> VectorOut {
    let name = registry::resolve_model(model);
    VectorOut::from_slice(&registry::embed_single(&name, input, purpose, dims_arg(dims)))
}

fn embed_many(inputs: Array<&str>, model: &str, dims: i32, purpose: Purpose) -> Vec<Option<VectorOut>> {
    let name = registry::resolve_model(model);
    let dims = dims_arg(dims);
    let texts: Vec<Option<&str>> = inputs.iter().collect();
    let present: Vec<&str> = texts.iter().flatten().copied().collect();
    let mut vectors = if present.is_empty() {
        // Nothing to embed, but a wrong model or dims is still an error, as it would be
        // for the same call with texts.
        registry::check_dims(&name, dims);
        Vec::new()
    } else {
        registry::embed_texts(&name, &present, purpose, dims)
    }
    .into_iter();
    texts.iter().map(|t| t.map(|_| VectorOut::from_slice(&vectors.next().expect("one vector per text")))).collect()
}

// cost = 10000: a model call takes milliseconds (all-MiniLM-L6-v2, one short text, 2-core
// CPU: about 3 ms), where one unit of COST is cpu_operator_cost (0.0025 by default). 10,000
// units (25 cost points, as much as 25 sequential page reads) tell the planner that a call
// per row is expensive, so a generic plan of `ORDER BY v <=> embed_query($1) LIMIT k` takes
// an index scan, while a bulk UPDATE of a few thousand rows stays below jit_above_cost.
// Should a plan still call it per row, the backend's recent-embedding cache answers the
// repeats (registry::embed_single).
/// The embedding of a document.
#[pg_extern(immutable, parallel_safe, name = "embed", cost = 10000, requires = ["vector_type"])]
fn embed_text(input: &str, model: default!(&str, "''"), dims: default!(i32, 0)) -> VectorOut {
    embed_one(input, model, dims, Purpose::Document)
}

/// The embedding of a query: the model's query instruction or prefix, then the text.
#[pg_extern(immutable, parallel_safe, cost = 10000, requires = ["vector_type"])]
fn embed_query(input: &str, model: default!(&str, "''"), dims: default!(i32, 0)) -> VectorOut {
    embed_one(input, model, dims, Purpose::Query)
}

/// The embeddings of many documents, in batches (the fast path for bulk work). NULL
/// elements give NULL elements.
#[pg_extern(immutable, parallel_safe, name = "embed", cost = 10000, requires = ["vector_type"])]
fn embed_texts(inputs: Array<&str>, model: default!(&str, "''"), dims: default!(i32, 0)) -> Vec<Option<VectorOut>> {
    embed_many(inputs, model, dims, Purpose::Document)
}

/// The model a name means: itself, or akidb.default_model for ''.
#[pg_extern(stable, parallel_safe)]
fn akidb_resolve_model(name: &str) -> String {
    registry::resolve_model(name)
}

/// How many dimensions `embed(text, model, dims)` returns; loads the model (an unknown or
/// broken model is an ERROR here, before any bulk work starts).
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_model_dims(model: default!(&str, "''"), dims: default!(i32, 0)) -> i32 {
    let name = registry::resolve_model(model);
    registry::embed_single(&name, "", Purpose::Document, dims_arg(dims)).len() as i32
}

/// Loads a model now (into this backend, or in worker mode into the worker) and returns
/// the execution provider it got.
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_load_model(name: &str) -> String {
    registry::load_model(&registry::resolve_model(name))
}

/// Frees a model's session in this backend; false if it was not loaded.
#[pg_extern(volatile, parallel_unsafe)]
fn akidb_unload_model(name: &str) -> bool {
    registry::unload_model(&registry::resolve_model(name))
}

/// Every model under akidb.model_path and, for this backend, its load state.
#[pg_extern(volatile, parallel_safe)]
fn akidb_models() -> TableIterator<
    'static,
    (
        name!(name, String),
        name!(provider, Option<String>),
        name!(dimensions, Option<i32>),
        name!(pooling, Option<String>),
        name!(max_tokens, Option<i32>),
        name!(loaded, bool),
        name!(execution_provider, Option<String>),
        name!(load_ms, Option<f64>),
        name!(memory_bytes, Option<i64>),
        name!(texts_embedded, Option<i64>),
        name!(error, Option<String>),
        name!(runs_in, String),
        name!(queue_depth, Option<i64>),
        name!(batches, Option<i64>),
    ),
> {
    TableIterator::new(registry::model_rows().into_iter().map(|r| {
        (
            r.name,
            r.provider,
            r.dimensions,
            r.pooling,
            r.max_tokens,
            r.loaded,
            r.execution_provider,
            r.load_ms,
            r.memory_bytes,
            r.texts_embedded,
            r.error,
            r.runs_in,
            r.queue_depth,
            r.batches,
        )
    }))
}

/// The shared embedding worker's process id; NULL when it does not run (akidb not in
/// shared_preload_libraries, or the worker is restarting).
#[pg_extern(volatile, parallel_safe)]
fn akidb_worker_pid() -> Option<i32> {
    super::worker::worker_pid()
}

extension_sql!(
    r#"
CREATE SCHEMA IF NOT EXISTS akidb;
COMMENT ON SCHEMA akidb IS 'akidb catalog views';
CREATE VIEW akidb.models AS SELECT * FROM akidb_models();
COMMENT ON VIEW akidb.models IS 'Embedding models under akidb.model_path, and whether the process that runs this session''s calls (this backend, or the shared worker) has loaded each';
"#,
    name = "akidb_models_view",
    requires = [akidb_models]
);

pgrx::extension_sql_file!(
    "../../sql/embed_column.sql",
    name = "embed_column",
    requires = ["akidb_models_view", embed_texts, akidb_resolve_model, akidb_model_dims]
);
